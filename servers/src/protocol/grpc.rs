//! The `grpc` approach's messages (`ChatRequest`, `Token`), its server (`chat_server`) and
//! client (`chat_client`), generated from proto/chat.proto by prost and tonic at build
//! time (build.rs).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("tokenwire.v1");

/// Bytes a gRPC message carries on its stream before its protobuf: the compressed flag and
/// the 4-byte length (the gRPC over HTTP/2 spec's Length-Prefixed-Message).
pub const MESSAGE_PREFIX: usize = 5;
