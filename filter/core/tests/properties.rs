//! Property tests: translation keeps meaning, and no parser panics on any input.

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use switchyard_core::canonical::{
    ChatRequest, Content, ContentPart, FunctionCall, Message, Role, ToolCall,
};
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
        "\\PC{0,30}",
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
            calls.push(ToolCall {
                id: format!("call_{n}"),
                kind: "function".into(),
                function: FunctionCall {
                    name: name.clone(),
                    arguments: Value::Object(args.clone()).to_string(),
                },
            });
            n += 1;
        }
        let first_id = n - calls.len();
        messages.push(Message {
            role: Role::Assistant,
            content: Some(Content::Text(turn.assistant_text.clone())),
            name: None,
            tool_calls: (!calls.is_empty()).then_some(calls),
            tool_call_id: None,
        });
        for (i, (_, _, result)) in turn.calls.iter().enumerate() {
            messages.push(Message {
                role: Role::Tool,
                content: Some(Content::Text(result.clone())),
                name: None,
                tool_calls: None,
                tool_call_id: Some(format!("call_{}", first_id + i)),
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
