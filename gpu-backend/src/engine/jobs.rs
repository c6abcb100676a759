//! What the engine is asked and what it answers: chat requests and their event stream, and
//! the jobs that carry them (with their queue ticket and worker-load guard) to a worker.

use std::time::Instant;

use switchyard_core::canonical::{FinishReason, TokenUsage};
use tokio::sync::{mpsc as tmpsc, oneshot};

use super::queue::{LoadGuard, QueueTicket};
use crate::chat_model::ChatMessage;
use crate::embedder::Embeddings;
use crate::error::ApiError;
use crate::whisper::{TranscribeOptions, Transcript};

/// How the next token is drawn.
#[derive(Debug, Clone, Copy)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus mass; 1 disables it.
    pub top_p: f64,
    /// Seeds the sampler, so a seeded request is reproducible.
    pub seed: u64,
}

/// A chat completion as the engine sees it: already validated by the API layer.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Model id.
    pub model: String,
    /// The conversation, flattened to text.
    pub messages: Vec<ChatMessage>,
    /// Completion token limit; `None` = up to the context window.
    pub max_tokens: Option<usize>,
    /// How tokens are drawn.
    pub sampling: SamplingParams,
    /// Strings that end the completion (not included in the output).
    pub stop: Vec<String>,
}

/// What a chat request's receiver sees, in order: `Started` (or `Failed`), any number of
/// `Delta`s, then `Finished` (or `Failed`).
#[derive(Debug)]
pub enum ChatEvent {
    /// The sequence joined a batch (admission errors can no longer happen).
    Started,
    /// New completion text (whole UTF-8 characters).
    Delta(String),
    /// The completion ended; `usage` counts its prompt and completion tokens.
    Finished {
        /// Stop (end of turn or a stop string) or length.
        reason: FinishReason,
        /// Prompt (`input`) and completion (`output`) tokens.
        usage: TokenUsage,
    },
    /// The request failed (before or during generation); nothing follows.
    Failed(ApiError),
}

pub(super) struct ChatJob {
    pub(super) request: GenerateRequest,
    pub(super) events: tmpsc::UnboundedSender<ChatEvent>,
    pub(super) admitted_at: Instant,
    /// Held while the job waits; released when it joins a batch.
    pub(super) ticket: Option<QueueTicket>,
    pub(super) _load: LoadGuard,
}

pub(super) struct EmbedJob {
    pub(super) model: String,
    pub(super) inputs: Vec<String>,
    pub(super) reply: oneshot::Sender<Result<Embeddings, ApiError>>,
    pub(super) _ticket: QueueTicket,
    pub(super) _load: LoadGuard,
}

pub(super) struct TranscribeJob {
    pub(super) model: String,
    /// 16 kHz mono samples, already bounded in length by the API layer.
    pub(super) samples: Vec<f32>,
    pub(super) options: TranscribeOptions,
    pub(super) reply: oneshot::Sender<Result<Transcript, ApiError>>,
    /// Held until the transcription is done, so running ones count against the queue.
    pub(super) ticket: QueueTicket,
    pub(super) load: LoadGuard,
}

pub(super) enum Job {
    Chat(ChatJob),
    Embed(EmbedJob),
    Transcribe(TranscribeJob),
}

impl Job {
    pub(super) fn model(&self) -> &str {
        match self {
            Job::Chat(j) => &j.request.model,
            Job::Embed(j) => &j.model,
            Job::Transcribe(j) => &j.model,
        }
    }

    pub(super) fn cancelled(&self) -> bool {
        match self {
            Job::Chat(j) => j.events.is_closed(),
            Job::Embed(j) => j.reply.is_closed(),
            Job::Transcribe(j) => j.reply.is_closed(),
        }
    }

    pub(super) fn fail(self, error: ApiError) {
        match self {
            Job::Chat(j) => {
                let _ = j.events.send(ChatEvent::Failed(error));
            }
            Job::Embed(j) => {
                let _ = j.reply.send(Err(error));
            }
            Job::Transcribe(j) => {
                let _ = j.reply.send(Err(error));
            }
        }
    }
}
