//! ConverseStream → canonical stream events: the binary event-stream frames decoded by
//! [`super::eventstream`], each event's JSON payload by its `:event-type`.
//!
//! Events: `messageStart`, `contentBlockStart` (a `toolUse` start carries id and name),
//! `contentBlockDelta` (`text`, or `toolUse.input` as a JSON fragment), `contentBlockStop`,
//! `messageStop` (`stopReason`), `metadata` (`usage`), and exceptions
//! (`:message-type: exception`).

use serde::Deserialize;

use super::error::stream_exception;
use super::eventstream::{Decoder, Message};
use super::response::WireReasoning;
use super::{finish_reason, WireUsage};
use crate::canonical::{FinishReason, ANTHROPIC_REASONING};
use crate::error::GatewayError;
use crate::stream::{malformed, StreamDecoder, StreamEvent};

/// Decodes a ConverseStream response.
#[derive(Default)]
pub struct BedrockStreamDecoder {
    frames: Decoder,
    messages: Vec<Message>,
    started: bool,
    /// Content-block index → tool-call index, for the blocks that are `toolUse`.
    tool_blocks: Vec<(u64, u32)>,
    next_tool: u32,
    stop_reason: Option<FinishReason>,
    finished: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStart {
    #[serde(default)]
    content_block_index: u64,
    #[serde(default)]
    start: Option<StartBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartBody {
    #[serde(default)]
    tool_use: Option<ToolUseStart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolUseStart {
    #[serde(default)]
    tool_use_id: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockDelta {
    #[serde(default)]
    content_block_index: u64,
    #[serde(default)]
    delta: Option<DeltaBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeltaBody {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<ToolUseDelta>,
    /// Claude's thinking: `text` pieces, then the `signature` (or `redactedContent`).
    #[serde(default)]
    reasoning_content: Option<WireReasoning>,
}

#[derive(Deserialize)]
struct ToolUseDelta {
    #[serde(default)]
    input: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stop {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    usage: Option<WireUsage>,
}

fn payload<'a, T: Deserialize<'a>>(message: &'a Message) -> Result<T, GatewayError> {
    serde_json::from_slice(&message.payload).map_err(malformed)
}

impl BedrockStreamDecoder {
    fn decode(
        &mut self,
        message: &Message,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), GatewayError> {
        match message.header(":message-type") {
            Some("event") => {}
            Some("exception") => {
                let kind = message.header(":exception-type").unwrap_or("exception");
                out.push(StreamEvent::Error(stream_exception(kind, &message.payload)));
                return Ok(());
            }
            Some("error") => {
                let code = message.header(":error-code").unwrap_or("error");
                let text = message.header(":error-message").unwrap_or("");
                let body = serde_json::json!({"message": text}).to_string();
                out.push(StreamEvent::Error(stream_exception(code, body.as_bytes())));
                return Ok(());
            }
            other => return Err(malformed(format!("event-stream message of type {other:?}"))),
        }
        if !self.started {
            self.started = true;
            // Converse streams name neither message nor model: the gateway's stand.
            out.push(StreamEvent::Start {
                id: String::new(),
                model: String::new(),
            });
        }
        match message.header(":event-type").unwrap_or("") {
            "contentBlockStart" => {
                let start: BlockStart = payload(message)?;
                if let Some(tool) = start.start.and_then(|s| s.tool_use) {
                    let index = self.next_tool;
                    self.next_tool += 1;
                    self.tool_blocks.push((start.content_block_index, index));
                    out.push(StreamEvent::ToolCallStart {
                        index,
                        id: tool.tool_use_id,
                        name: tool.name,
                        signature: None,
                    });
                }
            }
            "contentBlockDelta" => {
                let delta: BlockDelta = payload(message)?;
                let Some(body) = delta.delta else {
                    return Ok(());
                };
                if let Some(text) = body.text.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::Text(text));
                }
                if let Some(r) = body.reasoning_content.and_then(WireReasoning::canonical) {
                    StreamEvent::push_reasoning(out, r, ANTHROPIC_REASONING);
                }
                if let Some(tool) = body.tool_use.filter(|t| !t.input.is_empty()) {
                    let block = delta.content_block_index;
                    if let Some(&(_, index)) = self.tool_blocks.iter().find(|(b, _)| *b == block) {
                        out.push(StreamEvent::ToolCallArgs {
                            index,
                            arguments: tool.input,
                        });
                    }
                }
            }
            "messageStop" => {
                let stop: Stop = payload(message)?;
                self.stop_reason = Some(
                    stop.stop_reason
                        .as_deref()
                        .map_or(FinishReason::Stop, finish_reason),
                );
            }
            "metadata" => {
                let meta: Metadata = payload(message)?;
                if let Some(usage) = meta.usage {
                    out.push(StreamEvent::Usage(usage.canonical()));
                }
                if let Some(reason) = self.stop_reason.filter(|_| !self.finished) {
                    self.finished = true;
                    out.push(StreamEvent::Finish(reason));
                }
            }
            // `messageStart`, `contentBlockStop` and events added later carry nothing the
            // canonical stream needs.
            _ => {}
        }
        Ok(())
    }

    fn decode_all(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), GatewayError> {
        for message in std::mem::take(&mut self.messages) {
            self.decode(&message, out)?;
        }
        Ok(())
    }
}

impl StreamDecoder for BedrockStreamDecoder {
    fn push(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), GatewayError> {
        let framed = self.frames.push(bytes, &mut self.messages);
        // Messages completed before a bad frame still count.
        self.decode_all(out)?;
        framed.map_err(malformed)
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), GatewayError> {
        self.frames.finish().map_err(malformed)?;
        self.decode_all(out)
    }
}
