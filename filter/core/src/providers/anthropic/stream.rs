//! The Anthropic Messages event stream → canonical stream events, and the Anthropic →
//! Anthropic pass-through stream.

use serde::Deserialize;

use super::{error::kind_of_error_type, finish_reason, WireBlock, WireUsage};
use crate::canonical::{FinishReason, TokenUsage, ANTHROPIC_REASONING};
use crate::error::GatewayError;
use crate::ingress::anthropic::AnthropicStreamEncoder;
use crate::providers::passthrough::{FrameKind, PassthroughFormat};
use crate::providers::redact;
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

/// A `content_block_delta` event with a `text_delta`, as [`WireStreamEvent`] reads it,
/// borrowing its tags.
#[derive(Deserialize)]
struct TextDeltaEvent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[allow(dead_code)] // Read (a number is required) but not needed: text has one place.
    index: u64,
    #[serde(borrow)]
    delta: TextDelta<'a>,
}

#[derive(Deserialize)]
struct TextDelta<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    text: String,
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
    ThinkingDelta {
        #[serde(default)]
        thinking: String,
    },
    SignatureDelta {
        #[serde(default)]
        signature: String,
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

impl SseFrameDecoder for AnthropicStreamFrames {
    fn decode_frame(
        &mut self,
        _event: Option<&str>,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), GatewayError> {
        if let Ok(TextDeltaEvent {
            kind: "content_block_delta",
            index: _,
            delta:
                TextDelta {
                    kind: "text_delta",
                    text,
                },
        }) = serde_json::from_str(data)
        {
            // Most of a stream: read in one typed pass, without `WireStreamEvent`'s
            // buffering of an internally tagged enum; every other event (or one this does
            // not read) goes the general way below.
            if !text.is_empty() {
                out.push(StreamEvent::Text(text));
            }
            return Ok(());
        }
        let event: WireStreamEvent = serde_json::from_str(data).map_err(malformed)?;
        match event {
            WireStreamEvent::MessageStart { message } => {
                out.push(StreamEvent::Start {
                    id: message.id,
                    model: message.model,
                });
                if let Some(u) = message.usage {
                    self.usage.merge(u);
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
                        signature: None,
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
                b @ (WireBlock::Thinking { .. } | WireBlock::RedactedThinking { .. }) => {
                    if let Some(part) = b.reasoning() {
                        StreamEvent::push_reasoning(out, part, ANTHROPIC_REASONING);
                    }
                }
                _ => {}
            },
            WireStreamEvent::ContentBlockDelta { index, delta } => match delta {
                WireDelta::TextDelta { text } if !text.is_empty() => {
                    out.push(StreamEvent::Text(text))
                }
                WireDelta::ThinkingDelta { thinking } if !thinking.is_empty() => {
                    out.push(StreamEvent::Reasoning(thinking))
                }
                WireDelta::SignatureDelta { signature } if !signature.is_empty() => {
                    out.push(StreamEvent::ReasoningSignature {
                        signature,
                        format: ANTHROPIC_REASONING,
                    })
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
                    self.usage.merge(u);
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

/// The Anthropic → Anthropic stream fast path's view of events (for
/// [`crate::providers::passthrough::PassthroughStream`]): `message_stop` is the terminal
/// event, `error` an upstream error; usage is read on the way.
#[derive(Default)]
pub struct AnthropicPassthrough {
    usage: WireUsage,
}

impl PassthroughFormat for AnthropicPassthrough {
    fn inspect(&mut self, _event: Option<&str>, data: &str) -> Result<FrameKind, GatewayError> {
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
        let peek: Peek = serde_json::from_str(data).map_err(malformed)?;
        if let Some(u) = peek.usage.or(peek.message.and_then(|m| m.usage)) {
            self.usage.merge(u);
        }
        Ok(match peek.kind.as_str() {
            "message_stop" => FrameKind::Terminal,
            "error" => FrameKind::Error,
            _ => FrameKind::Event,
        })
    }

    fn usage(&self) -> TokenUsage {
        self.usage.canonical()
    }

    fn write_error(&self, err: &GatewayError, out: &mut Vec<u8>) {
        AnthropicStreamEncoder::new(String::new(), String::new()).error(err, out);
    }
}
