//! Stream translation as push state machines.
//!
//! An upstream stream is decoded by its provider's [`StreamDecoder`] into canonical
//! [`StreamEvent`]s, which the ingress dialect's [`StreamEncoder`] turns back into SSE bytes.
//! Both sides are fed chunks as they arrive and keep only per-stream state (open blocks,
//! tool-call indices, usage), so nothing ever waits for the whole stream.

use crate::canonical::{FinishReason, Reasoning, TokenUsage};
use crate::error::{ErrorKind, GatewayError};
use crate::sse::{SseEvent, SseParser};

/// One canonical streaming event (the OpenAI chunk model, flattened).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The upstream opened the message.
    Start {
        /// Message id.
        id: String,
        /// Model that answers.
        model: String,
    },
    /// A piece of answer text.
    Text(String),
    /// A tool call begins. `index` counts tool calls within the message from 0.
    ToolCallStart {
        /// Position among this message's tool calls.
        index: u32,
        /// Call id.
        id: String,
        /// Function name.
        name: String,
        /// Gemini's thought signature on the call ([`crate::canonical::ToolCall::signature`]),
        /// which arrives with the call.
        signature: Option<String>,
    },
    /// More JSON text of a tool call's arguments.
    ToolCallArgs {
        /// Which tool call.
        index: u32,
        /// Argument fragment.
        arguments: String,
    },
    /// A piece of the model's reasoning text.
    Reasoning(String),
    /// The signature over the reasoning so far (Anthropic `signature_delta`, Gemini
    /// `thoughtSignature`); it closes that piece of reasoning.
    ReasoningSignature {
        /// The opaque signature.
        signature: String,
        /// Whose it is ([`crate::canonical::ANTHROPIC_REASONING`], ...).
        format: &'static str,
    },
    /// A piece of reasoning the provider sends encrypted (Anthropic `redacted_thinking`).
    ReasoningEncrypted {
        /// The opaque data.
        data: String,
        /// Whose it is.
        format: &'static str,
    },
    /// Generation ended.
    Finish(FinishReason),
    /// Token counts so far (may arrive several times; the largest counts win).
    Usage(TokenUsage),
    /// The upstream reported an error inside the stream.
    Error(GatewayError),
}

impl StreamEvent {
    /// Pushes the events of one piece of reasoning a provider streamed: its text, then its
    /// signature, or its encrypted data; `format` says whose signature or data it is.
    pub fn push_reasoning(out: &mut Vec<StreamEvent>, part: Reasoning, format: &'static str) {
        match part {
            Reasoning::Text {
                text, signature, ..
            } => {
                if !text.is_empty() {
                    out.push(StreamEvent::Reasoning(text));
                }
                if let Some(signature) = signature.filter(|s| !s.is_empty()) {
                    out.push(StreamEvent::ReasoningSignature { signature, format });
                }
            }
            Reasoning::Encrypted { data, .. } => {
                out.push(StreamEvent::ReasoningEncrypted { data, format })
            }
        }
    }
}

/// Decodes one provider's stream bytes into canonical events.
pub trait StreamDecoder {
    /// Feeds a chunk; emits the events completed by it.
    fn push(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), GatewayError>;
    /// The upstream closed the stream.
    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), GatewayError>;
}

/// Decodes the frames of one provider's SSE stream into canonical events.
///
/// Providers implement this and get their [`StreamDecoder`] from [`SseStreamDecoder`], which
/// owns the SSE framing (and skips frames without data), so every provider treats bad
/// framing the same way.
pub trait SseFrameDecoder {
    /// Decodes one frame: its `event:` name, if any, and its non-empty, trimmed data.
    fn decode_frame(
        &mut self,
        event: Option<&str>,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), GatewayError>;
}

/// A [`StreamDecoder`] for an SSE stream: splits the bytes into frames and hands each one
/// with data to the provider's [`SseFrameDecoder`].
#[derive(Default)]
pub struct SseStreamDecoder<D> {
    sse: SseParser,
    frames: Vec<SseEvent>,
    frame_decoder: D,
}

impl<D: SseFrameDecoder> SseStreamDecoder<D> {
    /// Decodes (and drains) the frames completed so far; after an error the rest are dropped.
    fn decode_frames(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), GatewayError> {
        for frame in self.frames.drain(..) {
            let data = frame.data.trim();
            if !data.is_empty() {
                self.frame_decoder
                    .decode_frame(frame.event.as_deref(), data, out)?;
            }
        }
        Ok(())
    }
}

impl<D: SseFrameDecoder> StreamDecoder for SseStreamDecoder<D> {
    fn push(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), GatewayError> {
        self.sse.push(bytes, &mut self.frames).map_err(malformed)?;
        self.decode_frames(out)
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), GatewayError> {
        self.sse.finish(&mut self.frames).map_err(malformed)?;
        self.decode_frames(out)
    }
}

/// Encodes canonical events into one ingress dialect's SSE bytes.
pub trait StreamEncoder {
    /// Encodes one event.
    fn encode(&mut self, event: &StreamEvent, out: &mut Vec<u8>);
    /// Writes the closing frames of a successful stream.
    fn finish(&mut self, out: &mut Vec<u8>);
    /// Writes a well-formed, terminal error event.
    fn error(&mut self, err: &GatewayError, out: &mut Vec<u8>);
}

/// A response stream as the host sees it: bytes in, bytes out, usage on the side.
pub trait ResponseStream {
    /// Translates a chunk of the upstream body.
    fn push(&mut self, bytes: &[u8]) -> Vec<u8>;
    /// The upstream body ended; returns the closing bytes.
    fn finish(&mut self) -> Vec<u8>;
    /// Fails the stream (upstream reset, timeout) with a terminal error event.
    fn fail(&mut self, err: &GatewayError) -> Vec<u8>;
    /// Usage seen so far.
    fn usage(&self) -> TokenUsage;
    /// Whether the stream ended in an error (for the usage record's status).
    fn failed(&self) -> bool;
    /// Whether the client already has the whole answer, terminal event included, so a
    /// connection closed from here on (a client that stops reading at `[DONE]`) loses
    /// nothing and the request still counts as a success.
    fn complete(&self) -> bool;
}

/// Decoder + encoder joined, with usage accounting and error termination.
pub struct TranslatingStream {
    decoder: Box<dyn StreamDecoder>,
    encoder: Box<dyn StreamEncoder>,
    events: Vec<StreamEvent>,
    usage: TokenUsage,
    finished_ok: bool,
    done: bool,
    failed: bool,
}

impl TranslatingStream {
    /// Joins a provider decoder with an ingress encoder.
    pub fn new(decoder: Box<dyn StreamDecoder>, encoder: Box<dyn StreamEncoder>) -> Self {
        TranslatingStream {
            decoder,
            encoder,
            events: Vec::new(),
            usage: TokenUsage::default(),
            finished_ok: false,
            done: false,
            failed: false,
        }
    }

    fn drain(&mut self, out: &mut Vec<u8>) {
        // The buffer goes back afterwards, so its capacity serves the next chunk.
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            if self.done {
                break;
            }
            match &event {
                StreamEvent::Usage(u) => self.usage.merge_max(*u),
                StreamEvent::Finish(_) => self.finished_ok = true,
                StreamEvent::Error(err) => {
                    let err = err.clone();
                    self.terminate(&err, out);
                    continue;
                }
                _ => {}
            }
            self.encoder.encode(&event, out);
        }
        self.events = events;
    }

    fn terminate(&mut self, err: &GatewayError, out: &mut Vec<u8>) {
        if !self.done {
            self.encoder.error(err, out);
            self.done = true;
            self.failed = true;
        }
    }
}

impl ResponseStream for TranslatingStream {
    fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        // Room for the translated events up front: a client event is about the size of
        // the upstream one, and growing the buffer from empty costs more than the JSON.
        let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 2 + 256);
        let result = self.decoder.push(bytes, &mut self.events);
        self.drain(&mut out);
        if let Err(err) = result {
            self.terminate(&err, &mut out);
        }
        out
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        let result = self.decoder.finish(&mut self.events);
        self.drain(&mut out);
        if let Err(err) = result {
            self.terminate(&err, &mut out);
        } else if !self.done && !self.finished_ok {
            self.terminate(&truncated(), &mut out);
        } else if !self.done {
            self.encoder.finish(&mut out);
            self.done = true;
        }
        out
    }

    fn fail(&mut self, err: &GatewayError) -> Vec<u8> {
        let mut out = Vec::new();
        self.terminate(err, &mut out);
        out
    }

    fn usage(&self) -> TokenUsage {
        self.usage
    }

    fn failed(&self) -> bool {
        self.failed
    }

    fn complete(&self) -> bool {
        // The closing frames are only written by `finish`.
        self.done && !self.failed
    }
}

/// The error for an upstream stream that closed before saying it was finished.
pub fn truncated() -> GatewayError {
    GatewayError::new(
        ErrorKind::BadGateway,
        "upstream stream ended before the response was complete",
    )
}

/// The error for an upstream stream that could not be parsed.
pub fn malformed(detail: impl std::fmt::Display) -> GatewayError {
    GatewayError::new(
        ErrorKind::BadGateway,
        format!("upstream sent a malformed stream: {detail}"),
    )
}
