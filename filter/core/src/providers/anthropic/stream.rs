//! The Anthropic Messages event stream → canonical stream events, and the Anthropic →
//! Anthropic pass-through stream.

use serde::Deserialize;

use super::{error::kind_of_error_type, finish_reason, WireBlock, WireUsage};
use crate::canonical::{FinishReason, TokenUsage};
use crate::error::GatewayError;
use crate::ingress::anthropic::AnthropicStreamEncoder;
use crate::providers::redact;
use crate::sse::{write_event, SseEvent, SseParser};
use crate::stream::{malformed, SseFrameDecoder, SseStreamDecoder, StreamEncoder, StreamEvent};

/// Decodes an Anthropic Messages event stream.
///
/// `Finish` is emitted at `message_stop` (with the `stop_reason` remembered from
/// `message_delta`), so a stream cut after `message_delta` still counts as truncated.
#[derive(Default)]
pub struct AnthropicStreamFrames {
    /// Content-block index → tool-call index, for the blocks that are `tool_use`.
    tool_blocks: Vec<(u64, u32)>,
    next_tool: u32,
    stop_reason: Option<FinishReason>,
    usage: WireUsage,
    finished: bool,
}

/// The Anthropic stream decoder: SSE framing plus [`AnthropicStreamFrames`].
pub type AnthropicStreamDecoder = SseStreamDecoder<AnthropicStreamFrames>;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireStreamEvent {
    MessageStart {
        message: WireStartMessage,
    },
    ContentBlockStart {
        index: u64,
        content_block: WireBlock,
    },
    ContentBlockDelta {
        index: u64,
        delta: WireDelta,
    },
    ContentBlockStop {},
    MessageDelta {
        #[serde(default)]
        delta: WireMessageDelta,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop {},
    Ping {},
    Error {
        #[serde(default)]
        error: WireErrorBody,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireStartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        #[serde(default)]
        text: String,
    },
    InputJsonDelta {
        #[serde(default)]
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default)]
struct WireMessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireErrorBody {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

impl AnthropicStreamFrames {
    fn merge_usage(&mut self, u: WireUsage) {
        let mine = &mut self.usage;
        mine.input_tokens = u.input_tokens.or(mine.input_tokens);
        mine.output_tokens = u.output_tokens.or(mine.output_tokens);
        mine.cache_read_input_tokens = u.cache_read_input_tokens.or(mine.cache_read_input_tokens);
        mine.cache_creation_input_tokens = u
            .cache_creation_input_tokens
            .or(mine.cache_creation_input_tokens);
    }
}

impl SseFrameDecoder for AnthropicStreamFrames {
    fn decode_frame(
        &mut self,
        _event: Option<&str>,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), GatewayError> {
        let event: WireStreamEvent = serde_json::from_str(data).map_err(malformed)?;
        match event {
            WireStreamEvent::MessageStart { message } => {
                out.push(StreamEvent::Start {
                    id: message.id,
                    model: message.model,
                });
                if let Some(u) = message.usage {
                    self.merge_usage(u);
                    out.push(StreamEvent::Usage(self.usage.canonical()));
                }
            }
            WireStreamEvent::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                WireBlock::ToolUse { id, name, input } => {
                    let tool = self.next_tool;
                    self.next_tool += 1;
                    self.tool_blocks.push((index, tool));
                    out.push(StreamEvent::ToolCallStart {
                        index: tool,
                        id,
                        name,
                    });
                    // The start block's `input` is `{}` by convention; anything else is a
                    // complete input sent up front.
                    if input.as_object().is_some_and(|o| !o.is_empty()) {
                        out.push(StreamEvent::ToolCallArgs {
                            index: tool,
                            arguments: input.to_string(),
                        });
                    }
                }
                WireBlock::Text { text } if !text.is_empty() => out.push(StreamEvent::Text(text)),
                _ => {}
            },
            WireStreamEvent::ContentBlockDelta { index, delta } => match delta {
                WireDelta::TextDelta { text } if !text.is_empty() => {
                    out.push(StreamEvent::Text(text))
                }
                WireDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                    if let Some(&(_, tool)) = self.tool_blocks.iter().find(|(b, _)| *b == index) {
                        out.push(StreamEvent::ToolCallArgs {
                            index: tool,
                            arguments: partial_json,
                        });
                    }
                }
                _ => {}
            },
            WireStreamEvent::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.stop_reason {
                    self.stop_reason = Some(finish_reason(&reason));
                }
                if let Some(u) = usage {
                    self.merge_usage(u);
                    out.push(StreamEvent::Usage(self.usage.canonical()));
                }
            }
            WireStreamEvent::MessageStop {} => {
                if !self.finished {
                    self.finished = true;
                    out.push(StreamEvent::Finish(
                        self.stop_reason.unwrap_or(FinishReason::Stop),
                    ));
                }
            }
            WireStreamEvent::Error { error } => {
                out.push(StreamEvent::Error(GatewayError::new(
                    kind_of_error_type(&error.kind),
                    if error.message.is_empty() {
                        "upstream reported an error".to_string()
                    } else {
                        redact(&error.message)
                    },
                )));
            }
            WireStreamEvent::ContentBlockStop {}
            | WireStreamEvent::Ping {}
            | WireStreamEvent::Other => {}
        }
        Ok(())
    }
}

/// The Anthropic → Anthropic stream fast path: events pass through as the upstream wrote
/// them (re-framed, not re-encoded); usage is read on the way, a stream cut before
/// `message_stop` ends in an `error` event, and an upstream `error` event ends the stream.
pub struct AnthropicPassthroughStream {
    sse: SseParser,
    frames: Vec<SseEvent>,
    usage: WireUsage,
    saw_stop: bool,
    done: bool,
    failed: bool,
}

impl Default for AnthropicPassthroughStream {
    fn default() -> Self {
        Self::new()
    }
}

impl AnthropicPassthroughStream {
    /// A pass-through stream at its start.
    pub fn new() -> Self {
        AnthropicPassthroughStream {
            sse: SseParser::new(),
            frames: Vec::new(),
            usage: WireUsage::default(),
            saw_stop: false,
            done: false,
            failed: false,
        }
    }

    fn forward(&mut self, out: &mut Vec<u8>) {
        #[derive(Deserialize)]
        struct Peek {
            #[serde(default, rename = "type")]
            kind: String,
            #[serde(default)]
            message: Option<PeekMessage>,
            #[serde(default)]
            usage: Option<WireUsage>,
        }
        #[derive(Deserialize)]
        struct PeekMessage {
            #[serde(default)]
            usage: Option<WireUsage>,
        }
        for frame in std::mem::take(&mut self.frames) {
            if self.done {
                break;
            }
            match serde_json::from_str::<Peek>(frame.data.trim()) {
                Ok(peek) => {
                    let usage = peek.usage.or(peek.message.and_then(|m| m.usage));
                    if let Some(u) = usage {
                        let mine = &mut self.usage;
                        mine.input_tokens = u.input_tokens.or(mine.input_tokens);
                        mine.output_tokens = u.output_tokens.or(mine.output_tokens);
                        mine.cache_read_input_tokens =
                            u.cache_read_input_tokens.or(mine.cache_read_input_tokens);
                        mine.cache_creation_input_tokens = u
                            .cache_creation_input_tokens
                            .or(mine.cache_creation_input_tokens);
                    }
                    write_event(out, frame.event.as_deref(), &frame.data);
                    match peek.kind.as_str() {
                        "message_stop" => {
                            self.saw_stop = true;
                            self.done = true;
                        }
                        "error" => {
                            self.failed = true;
                            self.done = true;
                        }
                        _ => {}
                    }
                }
                Err(e) => self.fail_into(&malformed(e), out),
            }
        }
    }

    fn fail_into(&mut self, err: &GatewayError, out: &mut Vec<u8>) {
        if self.saw_stop {
            // The client already has the whole answer: a failure after `message_stop` loses
            // nothing, and an error event would follow the stream's own end.
            self.done = true;
            return;
        }
        if !self.done {
            AnthropicStreamEncoder::new(String::new(), String::new()).error(err, out);
            self.done = true;
            self.failed = true;
        }
    }
}

impl crate::stream::ResponseStream for AnthropicPassthroughStream {
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
            Ok(()) if !self.saw_stop => self.fail_into(&crate::stream::truncated(), &mut out),
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
        self.usage.canonical()
    }

    fn failed(&self) -> bool {
        self.failed
    }

    fn complete(&self) -> bool {
        // `message_stop`, the last event, is forwarded as soon as it arrives.
        self.saw_stop && !self.failed
    }
}
