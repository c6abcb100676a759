//! Property tests: translation keeps meaning, and no parser panics on any input.

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use switchyard_core::canonical::{ChatRequest, Content, ContentPart, Message, Role, ToolCall};
use switchyard_core::providers::{anthropic, gemini, ProviderKind};
use switchyard_core::sse::SseParser;
use switchyard_core::stream::ResponseStream;
use switchyard_core::{ingress, Dialect};

// ---- generators -------------------------------------------------------------------------

/// One assistant turn's tool calls and their results.
#[derive(Debug, Clone)]
struct Turn {
    user: String,
    assistant_text: String,
    calls: Vec<(String, Map<String, Value>, String)>, // (name, args, result text)
    follow_up: Option<String>,
}

fn arb_args() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(
        "[a-z]{1,6}",
        prop_oneof![
            any::<i32>().prop_map(|n| json!(n)),
            "\\PC{0,12}".prop_map(|s| json!(s)),
            any::<bool>().prop_map(|b| json!(b)),
        ],
        0..4,
    )
    .prop_map(|m| m.into_iter().collect())
}

fn arb_turn() -> impl Strategy<Value = Turn> {
    (
        "\\PC{1,30}",
        "\\PC{0,30}",
        prop::collection::vec(("[a-z_]{1,10}", arb_args(), "[a-zA-Z0-9 .]{0,20}"), 0..3),
        prop::option::of("\\PC{1,20}"),
    )
        .prop_map(|(user, assistant_text, calls, follow_up)| Turn {
            user,
            assistant_text,
            calls,
            follow_up,
        })
}

fn conversation(system: &[String], turns: &[Turn]) -> ChatRequest {
    let mut messages: Vec<Message> = system
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let role = if i % 2 == 0 {
                Role::System
            } else {
                Role::Developer
            };
            Message::text(role, s.clone())
        })
        .collect();
    let mut n = 0;
    for turn in turns {
        messages.push(Message::text(Role::User, turn.user.clone()));
        let mut calls = Vec::new();
        for (name, args, _) in &turn.calls {
            calls.push(ToolCall::function(
                format!("call_{n}"),
                name.clone(),
                Value::Object(args.clone()).to_string(),
            ));
            n += 1;
        }
        let first_id = n - calls.len();
        messages.push(Message {
            role: Role::Assistant,
            content: Some(Content::Text(turn.assistant_text.clone())),
            name: None,
            tool_calls: (!calls.is_empty()).then_some(calls),
            tool_call_id: None,
            reasoning: Vec::new(),
        });
        for (i, (_, _, result)) in turn.calls.iter().enumerate() {
            messages.push(Message {
                role: Role::Tool,
                content: Some(Content::Text(result.clone())),
                name: None,
                tool_calls: None,
                tool_call_id: Some(format!("call_{}", first_id + i)),
                reasoning: Vec::new(),
            });
        }
        if let Some(f) = &turn.follow_up {
            messages.push(Message::text(Role::User, f.clone()));
        }
    }
    serde_json::from_value(json!({"model": "m", "messages": messages})).unwrap()
}

/// A conversation flattened to what it means, independent of message grouping.
#[derive(Debug, PartialEq)]
enum Item {
    UserText(String),
    AssistantText(String),
    /// (call key, name, args). The key is the id, or the name where the wire has no ids.
    Call(String, String, Value),
    /// (call key, result text).
    Result(String, String),
}

fn flatten(req: &ChatRequest, key_by_name: bool) -> (Vec<String>, Vec<Item>) {
    let mut system = Vec::new();
    let mut items = Vec::new();
    let mut names = std::collections::HashMap::new();
    for m in &req.messages {
        let texts = m.parts().into_iter().filter_map(|p| match p {
            ContentPart::Text { text } if !text.is_empty() => Some(text),
            _ => None,
        });
        match m.role {
            Role::System | Role::Developer => system.extend(texts),
            Role::User => items.extend(texts.map(Item::UserText)),
            Role::Assistant => {
                items.extend(texts.map(Item::AssistantText));
                for c in m.tool_calls.iter().flatten() {
                    names.insert(c.id.clone(), c.function.name.clone());
                    let key = if key_by_name {
                        c.function.name.clone()
                    } else {
                        c.id.clone()
                    };
                    let args = serde_json::from_str(&c.function.arguments).unwrap();
                    items.push(Item::Call(key, c.function.name.clone(), args));
                }
            }
            Role::Tool => {
                let id = m.tool_call_id.clone().unwrap();
                let key = if key_by_name { names[&id].clone() } else { id };
                items.push(Item::Result(key, m.text_content()));
            }
        }
    }
    (system, items)
}

/// Reads a Gemini request body back into meaning (test-side; the gateway never needs it).
fn flatten_gemini(body: &Value) -> (Vec<String>, Vec<Item>) {
    let system = body["systemInstruction"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["text"].as_str().unwrap().to_string())
        .collect();
    let mut items = Vec::new();
    for content in body["contents"].as_array().unwrap() {
        let model = match content["role"].as_str().unwrap() {
            "model" => true,
            "user" => false,
            other => panic!("unexpected role {other}"),
        };
        for part in content["parts"].as_array().unwrap() {
            if let Some(t) = part["text"].as_str() {
                items.push(if model {
                    Item::AssistantText(t.to_string())
                } else {
                    Item::UserText(t.to_string())
                });
            } else if let Some(fc) = part.get("functionCall") {
                assert!(model);
                let name = fc["name"].as_str().unwrap().to_string();
                items.push(Item::Call(name.clone(), name, fc["args"].clone()));
            } else if let Some(fr) = part.get("functionResponse") {
                assert!(!model);
                let text = fr["response"]["result"].as_str().unwrap().to_string();
                items.push(Item::Result(fr["name"].as_str().unwrap().to_string(), text));
            } else {
                panic!("unexpected part {part}");
            }
        }
    }
    (system, items)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// canonical → Anthropic request → (Anthropic ingress) → canonical keeps roles, text,
    /// tool calls (id, name, arguments) and tool results.
    #[test]
    fn anthropic_round_trip_keeps_meaning(
        system in prop::collection::vec("\\PC{1,20}", 0..3),
        turns in prop::collection::vec(arb_turn(), 1..4),
    ) {
        let req = conversation(&system, &turns);
        let body = anthropic::request_body(&req, "claude").unwrap();
        let back = ingress::decode_chat(Dialect::Anthropic, &serde_json::to_vec(&body).unwrap());
        let back = back.unwrap();
        let (sys_a, items_a) = flatten(&req, false);
        let (sys_b, items_b) = flatten(&back, false);
        prop_assert_eq!(sys_a.join("\n\n"), sys_b.join("\n\n"));
        prop_assert_eq!(items_a, items_b);
        // Anthropic's alternation rule holds.
        let roles: Vec<&str> = body["messages"].as_array().unwrap().iter()
            .map(|m| m["role"].as_str().unwrap()).collect();
        prop_assert!(roles.windows(2).all(|w| w[0] != w[1]), "{:?}", roles);
    }

    /// canonical → Gemini request keeps roles, text, calls (by name) and results.
    #[test]
    fn gemini_translation_keeps_meaning(
        system in prop::collection::vec("\\PC{1,20}", 0..3),
        turns in prop::collection::vec(arb_turn(), 1..4),
    ) {
        let req = conversation(&system, &turns);
        let body = gemini::request_body(&req).unwrap();
        let (sys_a, items_a) = flatten(&req, true);
        let (sys_b, items_b) = flatten_gemini(&body);
        prop_assert_eq!(sys_a, sys_b);
        prop_assert_eq!(items_a, items_b);
    }

    /// The SSE parser never panics, whatever the bytes and however they are split.
    #[test]
    fn sse_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), cut in any::<prop::sample::Index>()) {
        let cut = cut.index(bytes.len() + 1);
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let _ = p.push(&bytes[..cut], &mut out);
        let _ = p.push(&bytes[cut..], &mut out);
        let _ = p.finish(&mut out);
    }

    /// Ingress decoders never panic on arbitrary JSON (or arbitrary bytes).
    #[test]
    fn ingress_decoders_never_panic(v in arb_json(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let body = serde_json::to_vec(&v).unwrap();
        for dialect in Dialect::ALL {
            let _ = ingress::decode_chat(dialect, &body);
            let _ = ingress::decode_chat(dialect, &bytes);
        }
        // Anthropic-shaped requests with arbitrary messages.
        let shaped = serde_json::to_vec(&json!({"model": "m", "max_tokens": 5, "messages": [v.clone()], "system": v, "tools": [v], "tool_choice": v})).unwrap();
        let _ = ingress::decode_chat(Dialect::Anthropic, &shaped);
        let _ = ingress::gemini::decode_request(&body, "m", true);
        let _ = ingress::gemini::decode_request(&bytes, "m", false);
        // Responses- and Gemini-shaped requests with arbitrary items, parts and tools.
        let shaped = serde_json::to_vec(&json!({"model": "m", "input": [v.clone()], "tools": [v.clone()], "tool_choice": v.clone(), "text": {"format": v.clone()}})).unwrap();
        let _ = ingress::decode_chat(Dialect::Responses, &shaped);
        let shaped = serde_json::to_vec(&json!({"contents": [{"role": "model", "parts": [v.clone()]}, {"role": "user", "parts": [v.clone()]}], "tools": [v.clone()], "generationConfig": v.clone(), "systemInstruction": v})).unwrap();
        let _ = ingress::gemini::decode_request(&shaped, "m", false);
    }

    /// Provider response parsers, error parsers and stream decoders never panic, and
    /// translated streams stay well-formed for both dialects.
    #[test]
    fn provider_parsers_never_panic(v in arb_json(), status in 100u16..600) {
        let body = serde_json::to_vec(&v).unwrap();
        let mut sse = b"data: ".to_vec();
        sse.extend_from_slice(&body);
        sse.extend_from_slice(b"\n\n");
        for kind in ProviderKind::ALL {
            if let Ok(resp) = kind.parse_chat(&body) {
                for dialect in Dialect::ALL {
                    let out = ingress::encode_chat_response(dialect, &resp, b"{}");
                    prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
                }
            }
            let _ = kind.parse_error(status, &body);
            for dialect in Dialect::ALL {
                let mut t = switchyard_core::stream::TranslatingStream::new(
                    kind.stream_decoder(),
                    ingress::stream_encoder(dialect, &ingress::AnswerContext {
                        id: "id", model: "m", created: 0, include_usage: true, request: b"{}",
                    }),
                );
                let mut out = t.push(&sse);
                out.extend(t.push(&sse));
                out.extend(t.finish());
                let mut p = SseParser::new();
                let mut events = Vec::new();
                prop_assert!(p.push(&out, &mut events).is_ok());
            }
        }
    }
}

/// Arbitrary JSON biased towards the field names and values the parsers look at.
fn arb_json() -> impl Strategy<Value = Value> {
    const KEYS: &[&str] = &[
        "type",
        "text",
        "content",
        "role",
        "messages",
        "model",
        "id",
        "name",
        "input",
        "tool_use_id",
        "is_error",
        "source",
        "media_type",
        "data",
        "url",
        "system",
        "tools",
        "tool_choice",
        "candidates",
        "parts",
        "functionCall",
        "args",
        "output",
        "choices",
        "message",
        "tool_calls",
        "function",
        "arguments",
        "index",
        "delta",
        "usage",
        "input_tokens",
        "output_tokens",
        "error",
        "finish_reason",
        "stop_reason",
        "partial_json",
        "content_block",
        "usageMetadata",
        "promptTokenCount",
        "finishReason",
        "input_schema",
        "max_tokens",
        "stream",
        "code",
        "request_id",
        "thought",
        "functionResponse",
        "functionDeclarations",
        "inlineData",
        "mimeType",
        "response",
        "call_id",
        "instructions",
    ];
    const WORDS: &[&str] = &[
        "text",
        "image",
        "tool_use",
        "tool_result",
        "base64",
        "url",
        "user",
        "assistant",
        "message_start",
        "content_block_start",
        "content_block_delta",
        "text_delta",
        "input_json_delta",
        "message_delta",
        "message_stop",
        "error",
        "auto",
        "any",
        "tool",
        "none",
        "STOP",
        "MAX_TOKENS",
        "SAFETY",
        "null",
        "stop",
        "tool_calls",
        "{\"a\":1}",
        "message",
        "function_call",
        "function_call_output",
        "input_text",
        "input_image",
        "function",
        "model",
        "OBJECT",
        "",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        prop::sample::select(WORDS).prop_map(|s| json!(s)),
        "\\PC{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

// ---- ingress A → canonical → provider B → canonical → ingress A ---------------------------

/// A client request in `dialect`'s wire format for the conversation (test-side writers; the
/// Anthropic and Gemini request formats are the providers' own, so their egress writes them).
fn client_request(dialect: Dialect, req: &ChatRequest) -> Vec<u8> {
    let body = match dialect {
        Dialect::OpenAi => serde_json::to_value(req).unwrap(),
        Dialect::Anthropic => anthropic::request_body(req, "m").unwrap(),
        Dialect::Gemini => gemini::request_body(req).unwrap(),
        Dialect::Responses => {
            let mut input = Vec::new();
            for m in &req.messages {
                let text = m.text_content();
                match m.role {
                    Role::System => input.push(json!({"role": "system", "content": text})),
                    Role::Developer => input.push(json!({"role": "developer", "content": text})),
                    Role::User => input.push(json!({"type": "message", "role": "user",
                        "content": [{"type": "input_text", "text": text}]})),
                    Role::Assistant => {
                        if !text.is_empty() {
                            input.push(json!({"type": "message", "role": "assistant",
                                "content": [{"type": "output_text", "text": text}]}));
                        }
                        for c in m.tool_calls.iter().flatten() {
                            input.push(json!({"type": "function_call", "call_id": c.id,
                                "name": c.function.name, "arguments": c.function.arguments}));
                        }
                    }
                    Role::Tool => input.push(json!({"type": "function_call_output",
                        "call_id": m.tool_call_id, "output": text})),
                }
            }
            let tools: Vec<Value> = req
                .tools
                .iter()
                .flatten()
                .map(|t| {
                    json!({"type": "function",
                "name": t.function.name, "parameters": t.function.parameters})
                })
                .collect();
            json!({"model": "m", "input": input, "tools": tools})
        }
    };
    serde_json::to_vec(&body).unwrap()
}

fn decode_client(dialect: Dialect, body: &[u8]) -> ChatRequest {
    match dialect {
        Dialect::Gemini => ingress::gemini::decode_request(body, "m", false).unwrap(),
        d => ingress::decode_chat(d, body).unwrap(),
    }
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Reads an OpenAI-shaped message list (OpenAI, Azure, Mistral, Cohere v2, DashScope) back
/// into meaning. Cohere writes an assistant's text beside tool calls as `tool_plan`.
fn flatten_openai_like(messages: &Value) -> (Vec<String>, Vec<Item>) {
    let mut system = Vec::new();
    let mut items = Vec::new();
    for m in messages.as_array().unwrap() {
        // Each text part on its own (a Gemini system instruction's parts stay apart).
        let nonempty: Vec<String> = match &m["content"] {
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .map(String::from)
                .collect(),
            other => vec![text_of(other)],
        }
        .into_iter()
        .chain(m["tool_plan"].as_str().map(String::from))
        .filter(|t| !t.is_empty())
        .collect();
        match m["role"].as_str().unwrap() {
            "system" | "developer" => system.extend(nonempty),
            "user" => items.extend(nonempty.into_iter().map(Item::UserText)),
            "assistant" => {
                items.extend(nonempty.into_iter().map(Item::AssistantText));
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    let f = &c["function"];
                    let args = serde_json::from_str(f["arguments"].as_str().unwrap()).unwrap();
                    let name = f["name"].as_str().unwrap().to_string();
                    items.push(Item::Call(c["id"].as_str().unwrap().into(), name, args));
                }
            }
            "tool" => items.push(Item::Result(
                m["tool_call_id"].as_str().unwrap().into(),
                text_of(&m["content"]),
            )),
            other => panic!("unexpected role {other}"),
        }
    }
    (system, items)
}

/// Reads a Bedrock Converse request back into meaning.
fn flatten_bedrock(body: &Value) -> (Vec<String>, Vec<Item>) {
    let system = body["system"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b["text"].as_str().unwrap().to_string())
        .collect();
    let mut items = Vec::new();
    for m in body["messages"].as_array().unwrap() {
        let assistant = m["role"] == "assistant";
        for block in m["content"].as_array().unwrap() {
            if let Some(t) = block["text"].as_str() {
                items.push(if assistant {
                    Item::AssistantText(t.into())
                } else {
                    Item::UserText(t.into())
                });
            } else if let Some(u) = block.get("toolUse") {
                let name = u["name"].as_str().unwrap().to_string();
                items.push(Item::Call(
                    u["toolUseId"].as_str().unwrap().into(),
                    name,
                    u["input"].clone(),
                ));
            } else if let Some(r) = block.get("toolResult") {
                let text = text_of(&r["content"]);
                items.push(Item::Result(r["toolUseId"].as_str().unwrap().into(), text));
            } else {
                panic!("unexpected block {block}");
            }
        }
    }
    (system, items)
}

/// What provider `kind` was asked, read from its native request body.
fn flatten_egress(kind: ProviderKind, body: &Value) -> (Vec<String>, Vec<Item>) {
    match kind {
        ProviderKind::Openai
        | ProviderKind::Azure
        | ProviderKind::Mistral
        | ProviderKind::Cohere => flatten_openai_like(&body["messages"]),
        ProviderKind::Dashscope => flatten_openai_like(&body["input"]["messages"]),
        ProviderKind::Anthropic => flatten(
            &ingress::decode_chat(Dialect::Anthropic, &serde_json::to_vec(body).unwrap()).unwrap(),
            false,
        ),
        ProviderKind::Gemini | ProviderKind::Vertex => flatten_gemini(body),
        ProviderKind::Bedrock => flatten_bedrock(body),
    }
}

/// Call keys renamed to their order of first appearance, so ids rewritten consistently
/// (Mistral's 9-character ids) or keyed by name (Gemini) compare equal; consecutive texts of
/// one author joined, since formats group a turn's text blocks differently (Anthropic merges
/// consecutive user turns into one message's blocks, DashScope takes one string).
fn relabel(items: Vec<Item>, by_name: bool) -> Vec<Item> {
    let items = items
        .into_iter()
        .fold(Vec::new(), |mut acc: Vec<Item>, item| {
            match (acc.last_mut(), item) {
                (Some(Item::UserText(a)), Item::UserText(b))
                | (Some(Item::AssistantText(a)), Item::AssistantText(b)) => a.push_str(&b),
                (_, item) => acc.push(item),
            }
            acc
        });
    let mut seen: Vec<String> = Vec::new();
    let mut names = std::collections::HashMap::new();
    let mut label = |key: String| {
        let i = seen.iter().position(|k| *k == key).unwrap_or_else(|| {
            seen.push(key);
            seen.len() - 1
        });
        format!("#{i}")
    };
    items
        .into_iter()
        .map(|item| match item {
            Item::Call(key, name, args) => {
                names.insert(key.clone(), name.clone());
                let key = if by_name { name.clone() } else { key };
                Item::Call(label(key), name, args)
            }
            Item::Result(key, text) => {
                let key = if by_name {
                    names.get(&key).cloned().unwrap_or(key)
                } else {
                    key
                };
                Item::Result(label(key), text)
            }
            other => other,
        })
        .collect()
}

/// An answer's meaning: text, calls (name, arguments) and usage.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    text: String,
    calls: Vec<(String, Value)>,
    usage: (u64, u64, u64),
}

fn arb_answer() -> impl Strategy<Value = Answer> {
    (
        prop::option::of("\\PC{1,30}"),
        prop::collection::vec(("[a-z_]{1,10}", arb_args()), 0..3),
        (0u64..1_000_000, 0u64..100_000, 0u64..1_000_000),
    )
        .prop_map(|(text, calls, (input, output, cached))| Answer {
            text: text.unwrap_or_default(),
            calls: calls
                .into_iter()
                .map(|(n, a)| (n, Value::Object(a)))
                .collect(),
            usage: (input + cached, output, cached),
        })
}

fn canonical_answer(a: &Answer) -> switchyard_core::canonical::ChatResponse {
    use switchyard_core::canonical::{ChatResponse, FinishReason, TokenUsage};
    ChatResponse {
        id: "resp_1".into(),
        model: "m".into(),
        created: 1_700_000_000,
        text: (!a.text.is_empty()).then(|| a.text.clone()),
        tool_calls: a
            .calls
            .iter()
            .enumerate()
            .map(|(i, (name, args))| {
                ToolCall::function(format!("call_{i}"), name.clone(), args.to_string())
            })
            .collect(),
        reasoning: Vec::new(),
        finish_reason: Some(if a.calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        }),
        usage: TokenUsage {
            input: a.usage.0,
            output: a.usage.1,
            cached_input: a.usage.2,
            reasoning: 0,
        },
    }
}

/// Provider `kind`'s native answer (test-side writers for the formats no ingress speaks,
/// after their documented shapes, as in the fixtures).
fn provider_answer(kind: ProviderKind, a: &Answer) -> Vec<u8> {
    let resp = canonical_answer(a);
    let (input, output, cached) = a.usage;
    let calls = |id_key: &str| -> Vec<Value> {
        resp.tool_calls
            .iter()
            .map(|c| {
                json!({id_key: c.id, "type": "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments}})
            })
            .collect()
    };
    let body = match kind {
        ProviderKind::Openai | ProviderKind::Azure | ProviderKind::Mistral => {
            return ingress::encode_chat_response(Dialect::OpenAi, &resp, b"{}")
        }
        ProviderKind::Anthropic => {
            return ingress::encode_chat_response(Dialect::Anthropic, &resp, b"{}")
        }
        ProviderKind::Gemini | ProviderKind::Vertex => {
            return ingress::encode_chat_response(Dialect::Gemini, &resp, b"{}")
        }
        ProviderKind::Bedrock => {
            let mut content = Vec::new();
            if !a.text.is_empty() {
                content.push(json!({"text": a.text}));
            }
            for c in &resp.tool_calls {
                let input: Value = serde_json::from_str(&c.function.arguments).unwrap();
                content.push(json!({"toolUse": {"toolUseId": c.id, "name": c.function.name, "input": input}}));
            }
            json!({"output": {"message": {"role": "assistant", "content": content}},
                   "stopReason": if a.calls.is_empty() { "end_turn" } else { "tool_use" },
                   "usage": {"inputTokens": input - cached, "outputTokens": output,
                             "totalTokens": input + output, "cacheReadInputTokens": cached,
                             "cacheWriteInputTokens": 0},
                   "metrics": {"latencyMs": 10}})
        }
        ProviderKind::Cohere => {
            let mut message = json!({"role": "assistant"});
            if a.calls.is_empty() {
                message["content"] = json!([{"type": "text", "text": a.text}]);
            } else {
                message["tool_calls"] = json!(calls("id"));
                if !a.text.is_empty() {
                    message["tool_plan"] = json!(a.text);
                }
            }
            json!({"id": "c1", "message": message,
                   "finish_reason": if a.calls.is_empty() { "COMPLETE" } else { "TOOL_CALL" },
                   "usage": {"billed_units": {"input_tokens": input, "output_tokens": output},
                             "tokens": {"input_tokens": input, "output_tokens": output},
                             "cached_tokens": cached}})
        }
        ProviderKind::Dashscope => {
            let mut message = json!({"role": "assistant", "content": a.text});
            if !a.calls.is_empty() {
                message["tool_calls"] = json!(calls("id"));
            }
            json!({"output": {"choices": [{"message": message,
                       "finish_reason": if a.calls.is_empty() { "stop" } else { "tool_calls" }}]},
                   "usage": {"input_tokens": input, "output_tokens": output,
                             "total_tokens": input + output,
                             "prompt_tokens_details": {"cached_tokens": cached}},
                   "request_id": "r1"})
        }
    };
    serde_json::to_vec(&body).unwrap()
}

/// What a client of `dialect` reads from the gateway's answer.
fn client_answer(dialect: Dialect, body: &[u8]) -> Answer {
    let resp = match dialect {
        Dialect::OpenAi => ProviderKind::Openai.parse_chat(body).unwrap(),
        Dialect::Anthropic => ProviderKind::Anthropic.parse_chat(body).unwrap(),
        Dialect::Gemini => ProviderKind::Gemini.parse_chat(body).unwrap(),
        Dialect::Responses => {
            let v: Value = serde_json::from_slice(body).unwrap();
            let mut text = String::new();
            let mut calls = Vec::new();
            for item in v["output"].as_array().unwrap() {
                match item["type"].as_str().unwrap() {
                    "message" => {
                        for part in item["content"].as_array().unwrap() {
                            text.push_str(part["text"].as_str().unwrap());
                        }
                    }
                    "function_call" => calls.push((
                        item["name"].as_str().unwrap().to_string(),
                        serde_json::from_str(item["arguments"].as_str().unwrap()).unwrap(),
                    )),
                    other => panic!("unexpected output item {other}"),
                }
            }
            let u = &v["usage"];
            return Answer {
                text,
                calls,
                usage: (
                    u["input_tokens"].as_u64().unwrap(),
                    u["output_tokens"].as_u64().unwrap(),
                    u["input_tokens_details"]["cached_tokens"].as_u64().unwrap(),
                ),
            };
        }
    };
    Answer {
        text: resp.text.unwrap_or_default(),
        calls: resp
            .tool_calls
            .iter()
            .map(|c| {
                (
                    c.function.name.clone(),
                    serde_json::from_str(&c.function.arguments).unwrap(),
                )
            })
            .collect(),
        usage: (resp.usage.input, resp.usage.output, resp.usage.cached_input),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A conversation a client of dialect A sends reaches every provider B with the same
    /// system text, user and assistant text, tool calls (name, arguments) and results paired
    /// with their calls; and B's answer (text, calls, usage with cached tokens) reaches the
    /// client of A unchanged in meaning.
    #[test]
    fn every_ingress_to_every_provider_and_back_keeps_meaning(
        system in prop::collection::vec("\\PC{1,20}", 0..3),
        turns in prop::collection::vec(arb_turn(), 1..4),
        answer in arb_answer(),
    ) {
        let mut req = conversation(&system, &turns);
        // Clients declare the tools their conversation calls (Bedrock requires it).
        let mut names: Vec<&String> = turns.iter().flat_map(|t| t.calls.iter().map(|c| &c.0)).collect();
        names.sort();
        names.dedup();
        if !names.is_empty() {
            req.tools = Some(serde_json::from_value(json!(names.iter().map(|n| json!({
                "type": "function",
                "function": {"name": n, "parameters": {"type": "object", "properties": {}}},
            })).collect::<Vec<_>>())).unwrap());
        }
        for dialect in Dialect::ALL {
            let body = client_request(dialect, &req);
            let canonical = decode_client(dialect, &body);
            for kind in ProviderKind::ALL {
                let mut provider = switchyard_core::config::ProviderConfig::of_kind(kind);
                provider.vertex = Some(serde_json::from_value(
                    json!({"project": "p", "location": "us-central1"})).unwrap());
                let egress = provider.build_chat(&canonical, "up").unwrap();
                let sent: Value = serde_json::from_slice(&egress.body).unwrap();
                let by_name = matches!(dialect, Dialect::Gemini)
                    || matches!(kind, ProviderKind::Gemini | ProviderKind::Vertex);
                let (sys_a, items_a) = flatten(&req, false);
                let (sys_b, items_b) = flatten_egress(kind, &sent);
                // A Gemini client's system instruction is one content whose parts read as
                // one text; elsewhere system messages stay apart.
                let sep = if dialect == Dialect::Gemini { "" } else { "\n\n" };
                prop_assert_eq!(sys_a.join(sep), sys_b.join(sep), "{:?} → {:?}", dialect, kind);
                prop_assert_eq!(
                    relabel(items_a, by_name), relabel(items_b, by_name),
                    "{:?} → {:?}", dialect, kind
                );

                let native = provider_answer(kind, &answer);
                let parsed = kind.parse_chat(&native).unwrap();
                let out = ingress::encode_chat_response(dialect, &parsed, &body);
                prop_assert_eq!(client_answer(dialect, &out), answer.clone(), "{:?} ← {:?}", dialect, kind);
            }
        }
    }
}
