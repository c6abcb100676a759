//! The same-format fast path for streams: when the client speaks the upstream's own wire
//! format, events pass through as the upstream wrote them (re-framed, never re-encoded).
//!
//! One state machine serves every format; a [`PassthroughFormat`] only says what each frame
//! is (an ordinary event, the terminal event, an upstream error, or a frame the client must
//! not see) and reads usage from it. So every format treats truncation, garbage and late
//! failures the same way:
//! - a stream that ends before its terminal event ends with an error event in the format;
//! - an upstream error event is forwarded and ends the stream as failed;
//! - a failure after the terminal event (a stall or reset before the body ends) adds
//!   nothing and fails nothing: the client already has the whole answer.

use crate::canonical::TokenUsage;
use crate::config::ProviderConfig;
use crate::error::{Dialect, GatewayError};
use crate::providers::{anthropic, openai, ProviderKind};
use crate::sse::{write_event, SseEvent, SseParser};
use crate::stream::{malformed, truncated, ResponseStream};

/// A route on which client and provider speak the same wire format: the client's body goes
/// upstream with only `model` patched (fields the canonical form does not model survive),
/// and the answer comes back as the upstream wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastPath {
    /// OpenAI Chat Completions to an OpenAI-compatible provider.
    OpenAiChat,
    /// Anthropic Messages to Anthropic.
    AnthropicMessages,
    /// OpenAI Responses to a provider marked `responses_api`.
    OpenAiResponses,
}

impl FastPath {
    /// The fast path between a client dialect and a provider, if they share a format.
    pub fn between(
        dialect: Dialect,
        kind: ProviderKind,
        provider: &ProviderConfig,
    ) -> Option<Self> {
        match (dialect, kind) {
            (Dialect::OpenAi, ProviderKind::Openai | ProviderKind::Azure) => {
                Some(FastPath::OpenAiChat)
            }
            (Dialect::Anthropic, ProviderKind::Anthropic) => Some(FastPath::AnthropicMessages),
            (Dialect::Responses, ProviderKind::Openai) if provider.responses_api => {
                Some(FastPath::OpenAiResponses)
            }
            _ => None,
        }
    }

    /// The native path (after the base URL prefix) of `upstream_model` at `provider`, and
    /// the headers the body needs.
    pub fn egress(
        self,
        provider: &ProviderConfig,
        upstream_model: &str,
    ) -> (String, Vec<(String, String)>) {
        let json = ("content-type".to_string(), "application/json".to_string());
        match self {
            FastPath::OpenAiChat => (provider.chat_path(upstream_model), vec![json]),
            FastPath::AnthropicMessages => (
                anthropic::MESSAGES_PATH.to_string(),
                vec![
                    json,
                    ("anthropic-version".into(), anthropic::API_VERSION.into()),
                ],
            ),
            FastPath::OpenAiResponses => (openai::RESPONSES_PATH.to_string(), vec![json]),
        }
    }

    /// Whether a streamed request must ask for usage (`stream_options.include_usage`),
    /// which only Chat Completions leaves out by default, and only from servers that take
    /// the option.
    pub fn forces_stream_usage(self, provider: &ProviderConfig) -> bool {
        self == FastPath::OpenAiChat && provider.compat().stream_usage
    }

    /// The patched client body as the provider must receive it (its quirks applied).
    pub fn finish_body(
        self,
        provider: &ProviderConfig,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, GatewayError> {
        match self {
            FastPath::OpenAiChat => provider.compat().adjust_bytes(body),
            FastPath::AnthropicMessages | FastPath::OpenAiResponses => Ok(body),
        }
    }

    /// The pass-through stream for a streamed answer.
    pub fn stream(self, client_wants_usage: bool) -> Box<dyn ResponseStream> {
        match self {
            FastPath::OpenAiChat => Box::new(PassthroughStream::new(
                openai::OpenAiPassthrough::new(client_wants_usage),
            )),
            FastPath::AnthropicMessages => Box::new(PassthroughStream::new(
                anthropic::AnthropicPassthrough::default(),
            )),
            FastPath::OpenAiResponses => Box::new(PassthroughStream::new(
                openai::ResponsesPassthrough::default(),
            )),
        }
    }

    /// The usage of a complete answer.
    pub fn usage_of(self, body: &[u8]) -> TokenUsage {
        match self {
            FastPath::OpenAiChat => openai::usage_of(body),
            FastPath::AnthropicMessages => anthropic::usage_of(body),
            FastPath::OpenAiResponses => openai::responses_usage_of(body),
        }
    }
}

/// What a pass-through stream does with one upstream frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// An ordinary event: forward it.
    Event,
    /// The stream's last event: forward it; the client then has the whole answer.
    Terminal,
    /// An upstream error event: forward it; it ends the stream as failed.
    Error,
    /// A frame the gateway asked for and the client did not (a forced usage chunk): drop it.
    Hidden,
}

/// One wire format's view of its own frames.
pub trait PassthroughFormat {
    /// Classifies one frame (`event:` name, trimmed non-empty data) and reads its usage.
    /// An error means the frame is not valid in this format.
    fn inspect(&mut self, event: Option<&str>, data: &str) -> Result<FrameKind, GatewayError>;
    /// Usage seen so far.
    fn usage(&self) -> TokenUsage;
    /// Writes a well-formed, terminal error event in this format.
    fn write_error(&self, err: &GatewayError, out: &mut Vec<u8>);
}

/// A [`ResponseStream`] that forwards an SSE stream of format `F` unchanged.
pub struct PassthroughStream<F> {
    sse: SseParser,
    frames: Vec<SseEvent>,
    format: F,
    terminal_seen: bool,
    done: bool,
    failed: bool,
}

impl<F: PassthroughFormat> PassthroughStream<F> {
    /// A pass-through stream at its start.
    pub fn new(format: F) -> Self {
        PassthroughStream {
            sse: SseParser::new(),
            frames: Vec::new(),
            format,
            terminal_seen: false,
            done: false,
            failed: false,
        }
    }

    fn forward(&mut self, out: &mut Vec<u8>) {
        for frame in std::mem::take(&mut self.frames) {
            if self.done {
                break;
            }
            let data = frame.data.trim();
            if data.is_empty() {
                continue;
            }
            match self.format.inspect(frame.event.as_deref(), data) {
                Ok(FrameKind::Event) => write_event(out, frame.event.as_deref(), &frame.data),
                Ok(FrameKind::Hidden) => {}
                Ok(FrameKind::Terminal) => {
                    write_event(out, frame.event.as_deref(), &frame.data);
                    self.terminal_seen = true;
                    self.done = true;
                }
                Ok(FrameKind::Error) => {
                    write_event(out, frame.event.as_deref(), &frame.data);
                    self.failed = true;
                    self.done = true;
                }
                Err(err) => self.fail_into(&err, out),
            }
        }
    }

    fn fail_into(&mut self, err: &GatewayError, out: &mut Vec<u8>) {
        if self.terminal_seen {
            // The client already has the whole answer: a failure after the terminal event
            // loses nothing, and an error event would follow the stream's own end.
            self.done = true;
            return;
        }
        if !self.done {
            self.format.write_error(err, out);
            self.done = true;
            self.failed = true;
        }
    }
}

impl<F: PassthroughFormat> ResponseStream for PassthroughStream<F> {
    fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        let result = self.sse.push(bytes, &mut self.frames);
        self.forward(&mut out);
        if let Err(e) = result {
            self.fail_into(&malformed(e), &mut out);
        }
        out
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        let result = self.sse.finish(&mut self.frames);
        self.forward(&mut out);
        match result {
            Err(e) => self.fail_into(&malformed(e), &mut out),
            Ok(()) if !self.terminal_seen => self.fail_into(&truncated(), &mut out),
            Ok(()) => self.done = true,
        }
        out
    }

    fn fail(&mut self, err: &GatewayError) -> Vec<u8> {
        let mut out = Vec::new();
        self.fail_into(err, &mut out);
        out
    }

    fn usage(&self) -> TokenUsage {
        self.format.usage()
    }

    fn failed(&self) -> bool {
        self.failed
    }

    fn complete(&self) -> bool {
        // The terminal event is forwarded as soon as it arrives.
        self.terminal_seen && !self.failed
    }
}
