//! Wire formats shared by the companions and their clients (the bench): the WebTransport
//! length-prefixed frames, Server-Sent Events, the token content of Ollama's streams, and
//! the gRPC service (generated from proto/chat.proto).
pub mod framing;
pub mod grpc;
pub mod ollama_stream;
pub mod sse;
