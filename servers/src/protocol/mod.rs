//! Wire formats shared by the companions and their clients (the bench): the WebTransport
//! length-prefixed frames, Server-Sent Events, and the token content of Ollama's streams.
pub mod framing;
pub mod ollama_stream;
pub mod sse;
