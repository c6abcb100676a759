//! One chat sequence in a running batch: its KV cache, sampler and incremental detokenizer,
//! and the rules that end it (end-of-turn token, stop strings, token limit). Text is
//! streamed as soon as it is final: a tail that could still become a stop string is held
//! back until it cannot.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use switchyard_core::canonical::{FinishReason, TokenUsage};

use super::jobs::{ChatEvent, ChatJob};
use crate::chat_model::ChatModel;
use crate::error::{ApiError, ModelError};
use crate::gguf_tokenizer::IncrementalDecoder;
use crate::llama::KvCache;
use crate::metrics::Metrics;
use crate::sampler::{Sampler, Sampling};

/// A chat sequence in the running batch.
pub(super) struct Sequence {
    pub(super) job: ChatJob,
    pub(super) model: Arc<ChatModel>,
    pub(super) cache: KvCache,
    /// The prompt, then each sampled token. The cache holds the first `cache.len()`; the
    /// rest are fed at the next step.
    pub(super) tokens: Vec<u32>,
    pub(super) sampler: Sampler,
    pub(super) decoder: IncrementalDecoder,
    /// Completion text so far, and how much of it has been streamed out.
    pub(super) text: String,
    pub(super) sent: usize,
    pub(super) prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub(super) cached_tokens: usize,
    pub(super) completion_tokens: usize,
    pub(super) max_tokens: usize,
}

/// Tokenizes a job's prompt, checks it against the context window and makes it a running
/// sequence, starting from the cache `reuse` finds for its tokens (how many it covers and
/// their keys and values) or from an empty one; on failure the client is told why and
/// `None` comes back.
pub(super) fn start_sequence(
    model: Arc<ChatModel>,
    mut job: ChatJob,
    reuse: impl FnOnce(&[u32]) -> Result<Option<(usize, KvCache)>, ModelError>,
) -> Option<Sequence> {
    // Leaving the queue: the place goes back whether the sequence starts or fails.
    job.ticket.take();
    let fail = |job: ChatJob, error: ApiError| {
        let _ = job.events.send(ChatEvent::Failed(error));
        None
    };
    let prompt = ChatModel::render_prompt(&job.request.messages);
    let tokens = match model.encode(&prompt) {
        Ok(t) => t,
        Err(e) => return fail(job, ApiError::Internal(e.to_string())),
    };
    let context = model.llama.config().context_length;
    let room = context.saturating_sub(tokens.len());
    let max_tokens = job.request.max_tokens.unwrap_or(room);
    if room == 0 || max_tokens > room {
        let msg = format!(
            "This model's maximum context length is {context} tokens. However, you requested {} tokens ({} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
            tokens.len() + max_tokens,
            tokens.len()
        );
        return fail(job, ApiError::ContextLengthExceeded(msg));
    }
    let p = job.request.sampling;
    let sampling = if p.temperature <= 0.0 {
        Sampling::ArgMax
    } else if p.top_p < 1.0 {
        Sampling::TopP {
            p: p.top_p,
            temperature: p.temperature,
        }
    } else {
        Sampling::All {
            temperature: p.temperature,
        }
    };
    let (cached_tokens, cache) = match reuse(&tokens) {
        Ok(Some(found)) => found,
        Ok(None) => (0, model.llama.new_cache()),
        Err(e) => return fail(job, ApiError::Internal(e.to_string())),
    };
    let prompt_tokens = tokens.len();
    if job.events.send(ChatEvent::Started).is_err() {
        // The client left while queued; nothing to run.
        return None;
    }
    Some(Sequence {
        cache,
        model,
        tokens,
        cached_tokens,
        sampler: Sampler::new(p.seed, sampling),
        decoder: IncrementalDecoder::default(),
        text: String::new(),
        sent: 0,
        prompt_tokens,
        completion_tokens: 0,
        max_tokens,
        job,
    })
}

impl Sequence {
    /// Takes the sampled `token`, streams what text is final, and says whether the
    /// sequence is done.
    pub(super) fn accept(&mut self, token: u32, metrics: &Metrics) -> Result<bool, ModelError> {
        if self.completion_tokens == 0 {
            metrics.observe_ttft(self.job.admitted_at.elapsed().as_secs_f64());
        }
        self.completion_tokens += 1;
        metrics.tokens_generated.fetch_add(1, Ordering::Relaxed);
        self.tokens.push(token);

        let mut reason = None;
        if self.model.is_stop_token(token) {
            reason = Some(FinishReason::Stop);
        } else {
            let piece = self.decoder.push(&self.model.tokenizer, token)?;
            self.text.push_str(&piece);
            if let Some(cut) = self.find_stop() {
                self.text.truncate(cut);
                reason = Some(FinishReason::Stop);
            } else if self.completion_tokens >= self.max_tokens {
                reason = Some(FinishReason::Length);
            }
        }
        // Hold back a tail that could still grow into a stop string.
        let safe = match reason {
            Some(_) => self.text.len(),
            None => self.safe_len(),
        };
        if safe > self.sent {
            let delta = self.text[self.sent..safe].to_owned();
            self.sent = safe;
            if self.job.events.send(ChatEvent::Delta(delta)).is_err() {
                metrics.requests_cancelled.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            }
        }
        let Some(reason) = reason else {
            return Ok(false);
        };
        let _ = self.job.events.send(ChatEvent::Finished {
            reason,
            usage: TokenUsage {
                input: self.prompt_tokens as u64,
                output: self.completion_tokens as u64,
                cached_input: self.cached_tokens as u64,
                reasoning: 0,
            },
        });
        metrics.requests_completed.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Byte offset of the earliest stop string in the text, if any.
    pub(super) fn find_stop(&self) -> Option<usize> {
        let stops = &self.job.request.stop;
        let longest = stops.iter().map(String::len).max()?;
        // Only text near the end can hold a stop string that was not there before.
        let mut from = self.sent.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|p| p + from))
            .min()
    }

    /// How much of the text can be streamed without risking part of a stop string.
    pub(super) fn safe_len(&self) -> usize {
        let hold = self
            .job
            .request
            .stop
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let mut safe = self.text.len().saturating_sub(hold).max(self.sent);
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        safe
    }
}
