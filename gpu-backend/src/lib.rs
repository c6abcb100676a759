//! `gpu-backend`: Switchyard's native inference service.
//!
//! It serves the models it hosts through an OpenAI-compatible API (`/v1/chat/completions`,
//! `/v1/embeddings`, `/v1/audio/transcriptions`, `/v1/models`), so the gateway routes to it like to any provider, plus
//! `/healthz` (200 only once pinned models are warm) and Prometheus `/metrics`.
//!
//! How a request flows:
//! - [`server`] parses it into `switchyard-core`'s canonical types, validates it, and
//!   answers with the core's OpenAI encoders (errors in OpenAI's JSON);
//! - [`engine`] admits it into a bounded queue (503 + `Retry-After` when full) and hands it
//!   to a worker thread that owns a device and the models loaded on it;
//! - the worker's continuous-batching scheduler runs every active sequence of a model in
//!   one step over [`llama`]'s quantized forward pass (on the CPU, the [`kernels`]: SIMD
//!   matmul tiles straight on the GGUF blocks, one matmul per layer for every sequence of the
//!   step), each sequence with its own KV cache, and streams tokens back as they are made;
//!   embeddings go through [`embedder`]; transcriptions run [`whisper`] on a thread of
//!   their own (one at a time per worker), so a long audio file never stalls chat steps.
//!
//! Models come from a directory laid out by `scripts/fetch-models.sh` ([`catalog`]): SmolLM2
//! as GGUF (its tokenizer is rebuilt from the GGUF metadata by [`gguf_tokenizer`]) and
//! all-MiniLM-L6-v2 as safetensors, Whisper tiny.en converted to safetensors. CPU is the
//! default device; the `cuda` cargo feature enables candle's CUDA backend ([`device`];
//! `--cuda-device N`), where chat models run on candle's ops instead of the CPU kernels.

#![warn(missing_docs)]

pub mod bert;
pub mod catalog;
pub mod chat_model;
pub mod device;
pub mod embedder;
pub mod engine;
pub mod error;
pub mod gguf_tokenizer;
pub mod kernels;
pub mod llama;
pub mod metrics;
pub mod sampler;
pub mod server;
pub mod whisper;
