//! The embedded Ollama-compatible model: the default upstream of the companions, since a
//! real Ollama cannot run on every machine. It speaks Ollama's HTTP API byte for byte
//! (NDJSON `/api/chat` and `/api/generate`, SSE `/v1/chat/completions`) and "generates"
//! real o200k_base BPE pieces of a built-in text at a model-like pace.

pub mod api;
pub mod corpus;
pub mod cors;
mod encode;
pub mod generation;
mod server;

pub use generation::{DoneReason, Plan, Timing};
pub use server::{Model, ModelConfig, OPENAI_FORMAT_HEADER, OpenAiFormat};
