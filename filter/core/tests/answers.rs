//! The answer-side matrix against the code (`switchyard_core::answers`): recorded provider
//! answers through every provider's parser, with each native finish reason written in, and
//! each row's canonical sample through every dialect's encoder, checked at the pointers the
//! table (and so `docs/fields.md`) names.

mod common;

use common::fixture;
use serde_json::Value;
use switchyard_core::answers::{FIELDS, PROVIDERS};
use switchyard_core::canonical::FinishReason;
use switchyard_core::ingress;
use switchyard_core::providers::ProviderKind;
use switchyard_core::Dialect;

/// Evaluates a usage expression of the table (` + ` sums, ` | ` takes the first present;
/// an absent pointer counts 0).
fn native_count(answer: &Value, expr: &str) -> u64 {
    let read = |p: &str| answer.pointer(p.trim()).and_then(Value::as_u64);
    match expr.split_once(" | ") {
        Some(_) => expr.split(" | ").find_map(read).unwrap_or(0),
        None => expr.split(" + ").map(|p| read(p).unwrap_or(0)).sum(),
    }
}

#[test]
fn every_provider_is_in_the_table_once() {
    for kind in ProviderKind::ALL {
        assert_eq!(
            PROVIDERS.iter().filter(|p| p.kind == kind).count(),
            1,
            "{kind:?}"
        );
    }
}

#[test]
fn recorded_provider_answers_become_the_canonical_answer_the_table_says() {
    for p in PROVIDERS {
        let recorded: Value = serde_json::from_slice(&fixture(p.fixture)).unwrap();
        let canonical = p
            .kind
            .parse_chat(&serde_json::to_vec(&recorded).unwrap())
            .unwrap_or_else(|e| panic!("{:?} {}: {e}", p.kind, p.fixture));
        let context = format!("{:?} ({})", p.kind, p.fixture);
        assert!(
            canonical.text.is_some() || !canonical.tool_calls.is_empty(),
            "{context}: nothing read: {canonical:?}"
        );
        // Usage, read where the table says.
        let [input, output, cached, reasoning] = p.usage;
        let usage = canonical.usage;
        assert_eq!(
            usage.input,
            native_count(&recorded, input),
            "{context} input"
        );
        assert_eq!(
            usage.output,
            native_count(&recorded, output),
            "{context} output"
        );
        assert_eq!(
            usage.cached_input,
            native_count(&recorded, cached),
            "{context} cached"
        );
        assert_eq!(
            usage.reasoning,
            native_count(&recorded, reasoning),
            "{context} reasoning"
        );
        assert!(usage.reasoning <= usage.output, "{context}: {usage:?}");
        assert!(usage.input > 0 && usage.output > 0, "{context}: {usage:?}");
        // Every native finish reason, written into the recorded answer.
        assert!(recorded.pointer(p.finish_at).is_some(), "{context}");
        let has_calls = !canonical.tool_calls.is_empty();
        for (native, expected) in p.finish {
            let mut answer = recorded.clone();
            *answer.pointer_mut(p.finish_at).unwrap() = Value::String(native.to_string());
            let parsed = p
                .kind
                .parse_chat(&serde_json::to_vec(&answer).unwrap())
                .unwrap();
            // Gemini ends a function-calling turn with STOP: tool calls say `tool_calls`.
            let expected = match (p.kind, *expected) {
                (ProviderKind::Gemini | ProviderKind::Vertex, FinishReason::Stop) if has_calls => {
                    FinishReason::ToolCalls
                }
                (_, e) => e,
            };
            assert_eq!(
                parsed.finish_reason,
                Some(expected),
                "{context}: `{native}`"
            );
        }
    }
}

#[test]
fn an_openai_refusal_is_the_text_with_a_content_filter_finish() {
    let canonical = ProviderKind::Openai
        .parse_chat(&fixture("openai/response_refusal.json"))
        .unwrap();
    assert_eq!(
        canonical.text.as_deref(),
        Some("I'm sorry, I cannot assist with that request.")
    );
    assert_eq!(canonical.finish_reason, Some(FinishReason::ContentFilter));
    assert_eq!(canonical.usage.cached_input, 64);
    let anthropic: Value = serde_json::from_slice(&ingress::encode_chat_response(
        Dialect::Anthropic,
        &canonical,
        b"{}",
    ))
    .unwrap();
    assert_eq!(anthropic["stop_reason"], "refusal");
    assert_eq!(
        anthropic["content"][0]["text"],
        "I'm sorry, I cannot assist with that request."
    );
}

#[test]
fn every_dialect_carries_every_answer_field_where_the_table_says() {
    for field in FIELDS {
        let sample = (field.sample)();
        for (dialect, carried) in Dialect::ALL.into_iter().zip(field.carried) {
            let encoded = ingress::encode_chat_response(dialect, &sample, b"{}");
            let answer: Value = serde_json::from_slice(&encoded).unwrap();
            let expected: Value = serde_json::from_str(carried.value)
                .unwrap_or_else(|e| panic!("`{}` {dialect:?}: {e}", field.name));
            assert_eq!(
                answer.pointer(carried.at),
                Some(&expected),
                "`{}` {dialect:?} at `{}`: {answer}",
                field.name,
                carried.at
            );
        }
    }
}

#[test]
fn a_streamed_openai_refusal_is_text_with_a_content_filter_finish() {
    use switchyard_core::stream::StreamEvent;
    let sse = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"refusal\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\"I'm sorry\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    );
    let events = common::decode_events(ProviderKind::Openai, sse.as_bytes());
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "I'm sorry");
    assert!(
        events.contains(&StreamEvent::Finish(FinishReason::ContentFilter)),
        "{events:?}"
    );
}
