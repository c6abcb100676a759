//! What the exchange bench (`benches/exchange.rs`) and the callgrind profile
//! (`examples/exchange_profile.rs`) share: the gateway, the 1 KB request, the providers'
//! answers, and one whole exchange as a host drives it.

use serde_json::json;
use switchyard_core::exchange::{Action, Ctx, Ending, Event, Exchange, UpstreamHead};
use switchyard_core::health::NoHealthStore;
use switchyard_core::keys::hash_key;
use switchyard_core::limits::NoCounters;
use switchyard_core::{Gateway, RequestHead};

/// A ~1 KB chat request (the edge benchmark's shape).
pub const REQUEST: &str = r#"{"model":"MODEL","temperature":0.3,"max_tokens":512,"messages":[
{"role":"system","content":"You are a concise assistant for a travel company. Answer in two sentences at most and never invent prices."},
{"role":"user","content":"I am flying from Lisbon to Tokyo in March. Which airports should I consider, and how long is the trip?"},
{"role":"assistant","content":"Tokyo has two airports, Haneda (HND) and Narita (NRT); Haneda is closer to the city. Flights from Lisbon take about 17 to 20 hours with one stop."},
{"role":"user","content":"What is the weather like there in March? Please check before answering."}],"user":"customer-42"}"#;

pub const OPENAI_ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"March in Tokyo is mild, around 10 to 14 °C, with cherry blossoms late in the month."},"finish_reason":"stop"}],"usage":{"prompt_tokens":120,"completion_tokens":24,"total_tokens":144}}"#;

pub const ANTHROPIC_ANSWER: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[{"type":"text","text":"March in Tokyo is mild, around 10 to 14 °C, with cherry blossoms late in the month."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":120,"output_tokens":24}}"#;

pub fn gateway() -> Gateway {
    gateway_with(false)
}

/// The same gateway with `edge.route_complete_answers` on: the fast path's answer is relayed.
#[allow(dead_code)]
pub fn routed_gateway() -> Gateway {
    gateway_with(true)
}

fn gateway_with(route_complete_answers: bool) -> Gateway {
    let config = json!({
        "edge": {"route_complete_answers": route_complete_answers},
        "keys": [{"id": "bench", "sha256": hash_key("sk-bench"), "models": ["*"]}],
        "providers": {
            "up": {"kind": "openai", "base_url": "http://127.0.0.1:18000", "cluster": "upstream"},
            "claude": {"kind": "anthropic", "base_url": "http://127.0.0.1:18001", "cluster": "claude"}
        },
        "models": [
            {"name": "fast", "deployments": [{"provider": "up", "model": "gpt-4o", "price": {"input": 1.0, "output": 2.0}}]},
            {"name": "translated", "deployments": [{"provider": "claude", "model": "claude-sonnet-4", "price": {"input": 3.0, "output": 15.0}}]}
        ]
    });
    Gateway::from_json(&serde_json::to_vec(&config).unwrap()).unwrap()
}

/// The host's context for every exchange here: a fixed clock, no health or limit stores.
pub fn ctx() -> Ctx<'static> {
    Ctx {
        now_ms: 1_700_000_000_000,
        random: 7,
        health: &NoHealthStore,
        counters: &NoCounters,
    }
}

/// An exchange fed the client's head and `body`: waiting for its upstream, as a host leaves
/// it once the attempt is sent (the actions, which the host would copy out, are dropped).
pub fn sent(gw: &Gateway, body: &[u8], cx: &Ctx<'_>) -> Exchange {
    let mut ex = Exchange::new();
    let head = RequestHead {
        method: "POST",
        path: "/v1/chat/completions",
        authorization: Some("Bearer sk-bench"),
        content_length: Some(body.len() as u64),
        ..Default::default()
    };
    ex.handle(gw, Event::RequestHead(head), cx);
    ex.handle(gw, Event::RequestBody(body), cx);
    ex
}

/// One request: returns the client's body length (so nothing is optimised away).
pub fn one(gw: &Gateway, body: &[u8], answer: &[u8]) -> usize {
    let cx = ctx();
    let mut ex = sent(gw, body, &cx);
    // The head comes before the body (as through a router): a relayed answer is fed as it
    // arrives, a held one whole.
    let head = ex.handle(
        gw,
        Event::UpstreamHead(UpstreamHead {
            status: 200,
            content_type: Some("application/json"),
            body_complete: false,
            ..Default::default()
        }),
        &cx,
    );
    let actions = if matches!(head.as_slice(), [Action::RelayResponse(_)]) {
        ex.handle(gw, Event::UpstreamData(answer), &cx);
        ex.handle(gw, Event::UpstreamEnd, &cx);
        vec![]
    } else {
        ex.handle(gw, Event::UpstreamBody(answer), &cx)
    };
    let record = ex.finish(Ending::default(), &cx).unwrap();
    let out = actions
        .iter()
        .map(|a| match a {
            Action::Reply(r) => r.body.len(),
            _ => 0,
        })
        .sum::<usize>()
        .max(answer.len());
    out + record.to_json().len()
}
