//! Canonical request → Anthropic Messages request.
//!
//! The body is serialised straight from borrowed, typed structs (no `serde_json::Value` tree
//! per request: this runs on every translated request). Struct fields are declared in
//! alphabetical order, the order a `Value` object writes its keys, so the bytes are those the
//! earlier `Value`-built body had.

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{API_VERSION, DEFAULT_MAX_TOKENS, MESSAGES_PATH};
use crate::canonical::{
    ChatRequest, Content, ContentPart, ImageUrl, Message, RawJson, Reasoning, ResponseFormat, Role,
    Stop, ToolChoice, ANTHROPIC_REASONING,
};
use crate::error::{ErrorKind, GatewayError};
use crate::providers::{json_instruction, EgressRequest};

/// One Anthropic content block of a request.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Block<'a> {
    Text(TextBlock<'a>),
    Image(ImageBlock<'a>),
    ToolUse(ToolUseBlock<'a>),
    ToolResult(ToolResultBlock<'a>),
    Thinking(ThinkingBlock<'a>),
    RedactedThinking(RedactedThinkingBlock<'a>),
}

#[derive(Serialize)]
pub(crate) struct TextBlock<'a> {
    text: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
pub(crate) struct ImageBlock<'a> {
    source: ImageSource<'a>,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ImageSource<'a> {
    Base64 {
        data: &'a str,
        media_type: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
    },
    Url {
        #[serde(rename = "type")]
        kind: &'static str,
        url: &'a str,
    },
}

#[derive(Serialize)]
pub(crate) struct ToolUseBlock<'a> {
    id: &'a str,
    input: Value,
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
pub(crate) struct ToolResultBlock<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    content: Vec<Block<'a>>,
    tool_use_id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// Anthropic's signed thinking, sent back in an assistant turn.
#[derive(Serialize)]
pub(crate) struct ThinkingBlock<'a> {
    pub(crate) signature: &'a str,
    pub(crate) thinking: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// Anthropic's redacted thinking, sent back in an assistant turn.
#[derive(Serialize)]
pub(crate) struct RedactedThinkingBlock<'a> {
    pub(crate) data: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

fn text_block(text: &str) -> Block<'_> {
    Block::Text(TextBlock { text, kind: "text" })
}

fn image_block(image: &ImageUrl) -> Block<'_> {
    let source = match image.as_data() {
        Some((media_type, data)) => ImageSource::Base64 {
            data,
            media_type,
            kind: "base64",
        },
        None => ImageSource::Url {
            kind: "url",
            url: &image.url,
        },
    };
    Block::Image(ImageBlock {
        source,
        kind: "image",
    })
}

/// The Anthropic blocks of canonical reasoning sent back in an assistant turn. Only
/// Anthropic's own signed thinking can be (a `format` of another provider is left out;
/// none is taken as the client's word): Anthropic rejects thinking whose signature it
/// cannot check, so unsigned reasoning and another provider's are left out.
pub(crate) fn reasoning_blocks(parts: &[Reasoning]) -> impl Iterator<Item = Block<'_>> {
    parts
        .iter()
        .filter(|part| part.format().is_none_or(|f| f == ANTHROPIC_REASONING))
        .filter_map(|part| match part {
            Reasoning::Text {
                text,
                signature: Some(signature),
                ..
            } => Some(Block::Thinking(ThinkingBlock {
                signature,
                thinking: text,
                kind: "thinking",
            })),
            Reasoning::Text { .. } => None,
            Reasoning::Encrypted { data, .. } => {
                Some(Block::RedactedThinking(RedactedThinkingBlock {
                    data,
                    kind: "redacted_thinking",
                }))
            }
        })
}

/// Parses tool-call arguments (a JSON string) into the object Anthropic wants as `input`.
fn parse_arguments(arguments: &str) -> Result<Value, GatewayError> {
    if arguments.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(GatewayError::invalid(
            "tool call arguments must be a JSON object to be sent to an Anthropic model",
        )
        .with_param("messages")),
    }
}

/// One message of the request.
#[derive(Serialize)]
struct WireMessage<'a> {
    content: Vec<Block<'a>>,
    role: &'static str,
}

/// Appends blocks to the last message if it has the same role, else starts a new message.
fn push_blocks<'a>(
    messages: &mut Vec<WireMessage<'a>>,
    role: &'static str,
    blocks: impl IntoIterator<Item = Block<'a>>,
) {
    let mut blocks = blocks.into_iter().peekable();
    if blocks.peek().is_none() {
        return;
    }
    match messages.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => messages.push(WireMessage {
            content: blocks.collect(),
            role,
        }),
    }
}

/// A message's text and image parts as blocks (empty text left out), as
/// [`Message::parts`] lists them.
fn content_blocks(message: &Message) -> impl Iterator<Item = Block<'_>> {
    let (text, parts): (Option<&str>, &[ContentPart]) = match &message.content {
        None => (None, &[]),
        Some(Content::Text(t)) => (Some(t.as_str()), &[]),
        Some(Content::Parts(p)) => (None, p.as_slice()),
    };
    let parts = parts.iter().map(|part| match part {
        ContentPart::Text { text } => text_block(text),
        ContentPart::ImageUrl { image_url } => image_block(image_url),
    });
    text.map(text_block)
        .into_iter()
        .chain(parts)
        .filter(|b| !matches!(b, Block::Text(TextBlock { text: "", .. })))
}

/// The extended-thinking budget (tokens) standing for an OpenAI `reasoning_effort`; `none`
/// and `minimal` mean no thinking.
pub fn thinking_budget(effort: &str) -> Option<u32> {
    match effort {
        "low" => Some(1024),
        "medium" => Some(4096),
        "high" => Some(16384),
        _ => None,
    }
}

/// Claude's extended `thinking` for a request (its own, or one standing for
/// `reasoning_effort`), with the output limit to send beside it: Claude counts thinking in
/// the limit, so a budget from an effort is added to `limit`. Shared by the Anthropic API and
/// Claude on Bedrock (`additionalModelRequestFields.thinking`).
pub(crate) fn thinking(req: &ChatRequest, limit: u32) -> (Option<Value>, u32) {
    if let Some(thinking) = req.extra.get("thinking").filter(|v| !v.is_null()) {
        let mut thinking = thinking.clone();
        // The Gemini ingress's note that its client wants no thoughts back is not Claude's
        // to read (Claude returns its thinking either way).
        if let Some(t) = thinking.as_object_mut() {
            t.remove("include_thoughts");
        }
        return (Some(thinking), limit);
    }
    match req
        .extra
        .get("reasoning_effort")
        .and_then(Value::as_str)
        .and_then(thinking_budget)
    {
        Some(budget) => (
            Some(json!({"type": "enabled", "budget_tokens": budget})),
            limit.saturating_add(budget),
        ),
        None => (None, limit),
    }
}

/// Builds an Anthropic Messages request from canonical form.
pub fn build_chat(req: &ChatRequest, upstream_model: &str) -> Result<EgressRequest, GatewayError> {
    let body = Body::new(req, upstream_model)?;
    let mut bytes = Vec::with_capacity(1024);
    serde_json::to_writer(&mut bytes, &body)
        .map_err(|e| GatewayError::new(ErrorKind::Internal, format!("encoding request: {e}")))?;
    Ok(EgressRequest {
        path: MESSAGES_PATH.to_string(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("anthropic-version".into(), API_VERSION.into()),
        ],
        body: bytes,
    })
}

/// The Anthropic request body as JSON (exposed for tests and benchmarks).
pub fn request_body(req: &ChatRequest, upstream_model: &str) -> Result<Value, GatewayError> {
    serde_json::to_value(Body::new(req, upstream_model)?)
        .map_err(|e| GatewayError::new(ErrorKind::Internal, format!("encoding request: {e}")))
}

/// The request body, borrowing from the canonical request.
#[derive(Serialize)]
struct Body<'a> {
    max_tokens: u32,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<OutputConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<StopList<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    system: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
}

/// `stop` as the list Anthropic's `stop_sequences` is, whichever form the client used.
struct StopList<'a>(&'a Stop);

impl Serialize for StopList<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Stop::One(one) => serializer.collect_seq([one]),
            Stop::Many(list) => serializer.collect_seq(list),
        }
    }
}

#[derive(Serialize)]
struct Metadata<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct OutputConfig<'a> {
    format: OutputFormat<'a>,
}

#[derive(Serialize)]
struct OutputFormat<'a> {
    schema: Schema<'a>,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// A JSON schema, or `{"type": "object"}` (with `properties: {}` for a tool's input) where
/// the client gave none.
#[derive(Serialize)]
#[serde(untagged)]
enum Schema<'a> {
    Given(&'a Value),
    Raw(&'a RawJson),
    AnyObject {
        #[serde(skip_serializing_if = "Option::is_none")]
        properties: Option<Empty>,
        #[serde(rename = "type")]
        kind: &'static str,
    },
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: Schema<'a>,
    name: &'a str,
}

#[derive(Serialize)]
struct WireToolChoice<'a> {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disable_parallel_tool_use: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl<'a> Body<'a> {
    fn new(req: &'a ChatRequest, upstream_model: &'a str) -> Result<Self, GatewayError> {
        let mut system = String::new();
        let mut add_system = |text: &str| {
            if !text.is_empty() {
                if !system.is_empty() {
                    system.push_str("\n\n");
                }
                system.push_str(text);
            }
        };
        let mut messages: Vec<WireMessage<'a>> = Vec::with_capacity(req.messages.len());
        for message in &req.messages {
            match message.role {
                Role::System | Role::Developer => match &message.content {
                    Some(Content::Text(text)) => add_system(text),
                    _ => add_system(&message.text_content()),
                },
                Role::User => push_blocks(&mut messages, "user", content_blocks(message)),
                Role::Assistant => {
                    // Thinking comes first in an assistant turn, as Anthropic wrote it.
                    let mut blocks: Vec<Block<'a>> = reasoning_blocks(&message.reasoning).collect();
                    blocks.extend(content_blocks(message));
                    for call in message.tool_calls.iter().flatten() {
                        blocks.push(Block::ToolUse(ToolUseBlock {
                            id: &call.id,
                            input: parse_arguments(&call.function.arguments)?,
                            name: &call.function.name,
                            kind: "tool_use",
                        }));
                    }
                    push_blocks(&mut messages, "assistant", blocks);
                }
                Role::Tool => {
                    let id = message.tool_call_id.as_deref().ok_or_else(|| {
                        GatewayError::invalid("a `tool` message needs `tool_call_id`")
                            .with_param("messages")
                    })?;
                    let block = Block::ToolResult(ToolResultBlock {
                        content: content_blocks(message).collect(),
                        tool_use_id: id,
                        kind: "tool_result",
                    });
                    push_blocks(&mut messages, "user", [block]);
                }
            }
        }
        // A schema goes in Anthropic's native structured output (`output_config.format`),
        // which constrains the text of the answer; a schema-less JSON object can only be
        // asked for.
        let mut output_config = None;
        match &req.response_format {
            Some(ResponseFormat::JsonSchema { json_schema }) => {
                let schema = match &json_schema.schema {
                    Some(schema) => Schema::Given(schema),
                    None => Schema::AnyObject {
                        properties: None,
                        kind: "object",
                    },
                };
                output_config = Some(OutputConfig {
                    format: OutputFormat {
                        schema,
                        kind: "json_schema",
                    },
                });
            }
            Some(format) => {
                if let Some(instruction) = json_instruction(format) {
                    add_system(&instruction);
                }
            }
            None => {}
        }
        let (thinking, max_tokens) =
            thinking(req, req.output_limit().unwrap_or(DEFAULT_MAX_TOKENS));
        let stop_sequences = req
            .stop
            .as_ref()
            .filter(|stop| match stop {
                Stop::One(_) => true,
                Stop::Many(list) => !list.is_empty(),
            })
            .map(StopList);
        let tools = req
            .tools
            .iter()
            .flatten()
            .map(|t| WireTool {
                description: t.function.description.as_deref(),
                input_schema: match &t.function.parameters {
                    Some(schema) => Schema::Raw(schema),
                    None => Schema::AnyObject {
                        properties: Some(Empty {}),
                        kind: "object",
                    },
                },
                name: &t.function.name,
            })
            .collect();
        let parallel_off = req.extra.get("parallel_tool_calls") == Some(&Value::Bool(false));
        let choice = |kind: &'static str, name: Option<&'a str>| WireToolChoice {
            disable_parallel_tool_use: parallel_off && kind != "none",
            name,
            kind,
        };
        let tool_choice = match &req.tool_choice {
            None if parallel_off => Some(choice("auto", None)),
            None => None,
            Some(ToolChoice::Mode(m)) => Some(match m.as_str() {
                "none" => choice("none", None),
                "required" => choice("any", None),
                _ => choice("auto", None),
            }),
            Some(ToolChoice::Named { function, .. }) => {
                Some(choice("tool", Some(function.name.as_str())))
            }
        };
        Ok(Body {
            max_tokens,
            messages,
            metadata: req.user.as_deref().map(|user_id| Metadata { user_id }),
            model: upstream_model,
            output_config,
            stop_sequences,
            stream: req.stream,
            system,
            temperature: req.temperature,
            thinking,
            tool_choice,
            tools,
            top_k: req.extra.get("top_k").filter(|v| !v.is_null()),
            top_p: req.top_p,
        })
    }
}
