//! The request lifecycle (`Exchange`) as every host drives it: the decided semantics — what
//! falls back, what the client gets, what health counts and the status that is metered —
//! each pinned by a test, plus a property test over random event orders.

mod common;

use common::{header, reply};
use proptest::prelude::*;
use serde_json::{json, Value};
use switchyard_core::exchange::{
    Action, Ctx, Ending, Event, Exchange, Failure, UpstreamHead, CLIENT_CLOSED,
};
use switchyard_core::health::{HealthSnapshot, HealthStore, MemoryHealthStore};
use switchyard_core::keys::hash_key;
use switchyard_core::limits::{charge, usd_to_nano, MemoryCounters, Quota, Scope};
use switchyard_core::routing::{HealthView, Standing};
use switchyard_core::{Gateway, RequestHead};

const KEY: &str = "sk-exchange-test";

fn gateway() -> Gateway {
    gateway_from(config())
}

/// The test gateway's config document (see [`gateway`]).
fn config() -> Value {
    json!({
        "keys": [{"id": "k1", "sha256": hash_key(KEY), "models": ["*"], "team": "blue"}],
        "providers": {
            "a": {"kind": "openai", "base_url": "http://a.test"},
            "b": {"kind": "openai", "base_url": "http://b.test"},
            "c": {"kind": "anthropic", "base_url": "http://c.test", "api_key_secret": "C_KEY"}
        },
        "models": [
            {"name": "solo", "deployments": [{"provider": "a", "model": "m-a"}]},
            {"name": "claude", "deployments": [{"provider": "c", "model": "m-c"}]},
            {"name": "chain", "deployments": [
                {"provider": "a", "model": "m-a", "price": {"input": 1.0, "output": 2.0}},
                {"provider": "b", "model": "m-b", "price": {"input": 1.0, "output": 2.0}},
                {"provider": "c", "model": "m-c"}]}
        ],
        "fallback": {"attempt_timeout_ms": 1000, "total_timeout_ms": 2500,
                     "eject_after_failures": 2, "cooldown_ms": 10000}
    })
}

fn gateway_from(config: Value) -> Gateway {
    Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&|_| Some("sk-c".to_string()))
}

const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13}}"#;

fn sse_stream() -> String {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",
                   "choices":[{"index":0,"delta":delta,"finish_reason":finish}]})
        )
    };
    let mut s = chunk(json!({"role":"assistant","content":"Hel"}), Value::Null);
    s += &chunk(json!({"content":"lo"}), json!("stop"));
    s += &usage_frame();
    s + "data: [DONE]\n\n"
}

/// The usage chunk the gateway asks for (`include_usage`) and keeps from clients that did not.
fn usage_frame() -> String {
    format!(
        "data: {}\n\n",
        json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],
               "usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}})
    )
}

/// A test host: a clock, a health store, and the exchange.
struct Host {
    gw: Gateway,
    health: MemoryHealthStore,
    counters: MemoryCounters,
    now_ms: u64,
    ex: Exchange,
}

impl Host {
    fn new() -> Self {
        Self::with(gateway())
    }

    /// A host whose gateway opts in to routing complete answers
    /// (`edge.route_complete_answers`).
    fn routing_complete_answers() -> Self {
        let mut config = config();
        config["edge"] = json!({"route_complete_answers": true});
        Self::with(gateway_from(config))
    }

    fn with(gw: Gateway) -> Self {
        Host {
            gw,
            health: MemoryHealthStore::default(),
            counters: MemoryCounters::default(),
            now_ms: 1_700_000_000_000,
            ex: Exchange::new(),
        }
    }

    fn feed(&mut self, event: Event<'_>) -> Vec<Action> {
        let cx = Ctx {
            now_ms: self.now_ms,
            random: 42,
            health: &self.health,
            counters: &self.counters,
        };
        self.ex.handle(&self.gw, event, &cx)
    }

    /// Head and body of a chat request; returns the actions after the body.
    fn request(&mut self, path: &str, body: Value) -> Vec<Action> {
        let auth = format!("Bearer {KEY}");
        let head = RequestHead {
            method: "POST",
            path,
            authorization: Some(&auth),
            ..Default::default()
        };
        let actions = self.feed(Event::RequestHead(head));
        assert!(
            matches!(actions.as_slice(), [Action::ReadBody { .. }]),
            "{actions:?}"
        );
        let body = serde_json::to_vec(&body).unwrap();
        self.feed(Event::RequestBody(&body))
    }

    fn chat(&mut self, model: &str, stream: bool) -> Vec<Action> {
        self.request(
            "/v1/chat/completions",
            json!({"model": model, "stream": stream,
                   "messages": [{"role": "user", "content": "hi"}]}),
        )
    }

    fn head(&mut self, status: u16, content_type: &str) -> Vec<Action> {
        self.feed(Event::UpstreamHead(UpstreamHead {
            status,
            content_type: Some(content_type),
            ..Default::default()
        }))
    }

    fn finish(&mut self, ending: Ending) -> switchyard_core::usage::UsageRecord {
        let cx = Ctx {
            now_ms: self.now_ms,
            random: 42,
            health: &self.health,
            counters: &self.counters,
        };
        let record = self.ex.finish(ending, &cx).expect("one record");
        assert!(self.ex.finish(ending, &cx).is_none(), "exactly one record");
        record
    }

    fn ejected(&self, deployment: &str) -> bool {
        HealthSnapshot {
            store: &self.health,
            now_ms: self.now_ms,
        }
        .is_ejected(deployment)
    }

    fn backing_off(&self, deployment: &str) -> bool {
        let standing = HealthSnapshot {
            store: &self.health,
            now_ms: self.now_ms,
        }
        .standing(deployment);
        matches!(standing, Standing::BackingOff(_))
    }
}

fn sent(actions: &[Action]) -> Vec<(usize, String, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(s) => Some((s.attempt, s.request.authority.clone(), s.timeout_ms)),
            _ => None,
        })
        .collect()
}

fn data(actions: &[Action]) -> String {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Data(d) => Some(String::from_utf8_lossy(d).into_owned()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_complete_answer_is_read_whole_then_replied_with_ids_and_usage() {
    let mut h = Host::new();
    let actions = h.chat("solo", false);
    assert_eq!(sent(&actions), [(0, "a.test".to_string(), 1000)]);
    assert_eq!(h.head(200, "application/json"), [Action::ReadUpstreamBody]);
    h.now_ms += 40;
    let (status, body, headers) = reply(&h.feed(Event::UpstreamBody(COMPLETION.as_bytes())));
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["message"]["content"], "Hello!");
    let request_id = header(&headers, "x-request-id").unwrap().to_string();
    assert_eq!(request_id.len(), 32);
    assert_eq!(
        header(&headers, "x-switchyard-attempts"),
        Some("a/m-a;200;40ms")
    );
    let record = h.finish(Ending::default());
    assert_eq!(record.request_id, request_id);
    assert_eq!((record.status, record.attempts), (200, 1));
    assert_eq!((record.input_tokens, record.output_tokens), (10, 3));
    assert_eq!(record.team.as_deref(), Some("blue"));
    assert_eq!(record.latency_ms, Some(40));
    // A success is counted for the deployment's latency.
    let latency = HealthSnapshot {
        store: &h.health,
        now_ms: h.now_ms,
    }
    .latency_ms("a/m-a");
    assert_eq!(latency, Some(40.0));
}

#[test]
fn a_deployment_no_routing_reads_keeps_no_health_record() {
    // `lone` is the only deployment of its model and in no chain: its health is never read
    // (a single-deployment model tries it whatever its record says), so neither a success nor
    // a retryable failure is stored. `a/m-a` is also in `chain`, so its outcomes are.
    let mut config = config();
    config["providers"]["d"] = json!({"kind": "openai", "base_url": "http://d.test"});
    config["models"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "lone", "deployments": [{"provider": "d", "model": "m-d"}]}));
    let mut h = Host::with(gateway_from(config.clone()));
    assert_eq!(
        sent(&h.chat("lone", false)),
        [(0, "d.test".to_string(), 1000)]
    );
    h.head(200, "application/json");
    let (status, _, _) = reply(&h.feed(Event::UpstreamBody(COMPLETION.as_bytes())));
    assert_eq!(status, 200);
    assert_eq!(h.health.load("d/m-d"), None, "no read, no write on success");

    let mut h = Host::with(gateway_from(config.clone()));
    h.chat("lone", false);
    let (status, _, _) = reply(&h.feed(Event::UpstreamFailed(&Failure::Reset)));
    assert_eq!(status, 502);
    assert_eq!(h.health.load("d/m-d"), None, "nor on a failure");

    let mut h = Host::with(gateway_from(config));
    h.chat("solo", false);
    h.head(200, "application/json");
    h.now_ms += 25;
    h.feed(Event::UpstreamBody(COMPLETION.as_bytes()));
    let stored = h
        .health
        .load("a/m-a")
        .expect("a chain reads this deployment's record");
    assert_eq!(stored.latency_ms, Some(25.0));
}

#[test]
fn n_from_a_provider_with_one_choice_is_asked_n_times_and_merged_with_usage_summed() {
    let mut h = Host::new();
    let mut actions = h.request(
        "/v1/chat/completions",
        json!({"model": "claude", "n": 3, "messages": [{"role": "user", "content": "hi"}]}),
    );
    for i in 0..3 {
        let sends: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(sends.len(), 1, "choice {i}: {actions:?}");
        assert_eq!(sends[0].attempt, 0);
        let sent: Value = serde_json::from_slice(&sends[0].request.body).unwrap();
        assert!(sent.get("n").is_none(), "one choice per request: {sent}");
        assert_eq!(h.head(200, "application/json"), [Action::ReadUpstreamBody]);
        h.now_ms += 10;
        let answer = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m-c",
            "content": [{"type": "text", "text": format!("choice {i}")}],
            "stop_reason": if i == 1 { "max_tokens" } else { "end_turn" }, "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 3 + i}});
        actions = h.feed(Event::UpstreamBody(&serde_json::to_vec(&answer).unwrap()));
    }
    let (status, body, _) = reply(&actions);
    assert_eq!(status, 200);
    let choices = body["choices"].as_array().unwrap();
    let summary: Vec<(u64, &str, &str)> = choices
        .iter()
        .map(|c| {
            (
                c["index"].as_u64().unwrap(),
                c["message"]["content"].as_str().unwrap(),
                c["finish_reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (0, "choice 0", "stop"),
            (1, "choice 1", "length"),
            (2, "choice 2", "stop")
        ]
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
               "prompt_tokens_details": {"cached_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 0}})
    );
    let record = h.finish(Ending::default());
    assert_eq!((record.status, record.attempts), (200, 3));
    assert_eq!((record.input_tokens, record.output_tokens), (30, 12));
}

#[test]
fn a_request_id_from_the_proxy_is_kept_and_a_bad_one_replaced() {
    for (given, kept) in [
        ("0f8fad5b-d9cb-469f-a165-70867728950e", true),
        ("bad id\r\nx: y", false),
    ] {
        let mut h = Host::new();
        let auth = format!("Bearer {KEY}");
        h.feed(Event::RequestHead(RequestHead {
            method: "GET",
            path: "/v1/models",
            authorization: Some(&auth),
            request_id: Some(given),
            ..Default::default()
        }));
        let record = h.finish(Ending::default());
        assert_eq!(record.request_id == given, kept, "{given}");
        assert_eq!(record.status, 200);
    }
}

#[test]
fn retryable_statuses_fall_back_with_deadlines_from_the_remaining_total() {
    let mut h = Host::new();
    assert_eq!(sent(&h.chat("chain", false))[0].2, 1000);
    h.now_ms += 1000;
    // 503 from a: b is tried with a full attempt timeout (1.5 s of the 2.5 s total left).
    let actions = h.head(503, "application/json");
    assert_eq!(sent(&actions), [(1, "b.test".to_string(), 1000)]);
    h.now_ms += 1000;
    // b times out: c gets only what is left of the total.
    let actions = h.feed(Event::UpstreamFailed(&Failure::Timeout));
    assert_eq!(sent(&actions), [(2, "c.test".to_string(), 500)]);
    h.now_ms += 10;
    assert_eq!(h.head(200, "application/json"), [Action::ReadUpstreamBody]);
    let anthropic = json!({"id":"msg_1","type":"message","role":"assistant","model":"m-c",
        "content":[{"type":"text","text":"Hi from c"}],"stop_reason":"end_turn",
        "usage":{"input_tokens":5,"output_tokens":4}});
    let (status, body, headers) = reply(&h.feed(Event::UpstreamBody(
        &serde_json::to_vec(&anthropic).unwrap(),
    )));
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["message"]["content"], "Hi from c");
    assert_eq!(
        header(&headers, "x-switchyard-attempts"),
        Some("a/m-a;503;1000ms, b/m-b;timeout;1000ms, c/m-c;200;10ms")
    );
    let record = h.finish(Ending::default());
    assert_eq!((record.status, record.attempts), (200, 3));
    assert_eq!(record.deployment, "c/m-c");
    assert_eq!(record.provider, "c");
}

#[test]
fn the_only_attempts_retryable_error_is_the_answer_with_its_retry_after() {
    let mut h = Host::new();
    h.chat("solo", false);
    let actions = h.feed(Event::UpstreamHead(UpstreamHead {
        status: 429,
        content_type: Some("application/json"),
        retry_after: Some("7"),
        body_complete: false,
    }));
    assert_eq!(actions, [Action::ReadUpstreamBody]);
    let (status, body, headers) = reply(&h.feed(Event::UpstreamBody(
        br#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#,
    )));
    assert_eq!(status, 429);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("slow down"));
    assert_eq!(header(&headers, "retry-after"), Some("7"));
    assert_eq!(h.finish(Ending::default()).status, 429);
}

#[test]
fn a_final_error_is_the_answer_and_counts_neither_way_for_health() {
    let mut h = Host::new();
    h.chat("chain", false);
    h.head(400, "application/json");
    let (status, body, _) = reply(&h.feed(Event::UpstreamBody(
        br#"{"error":{"message":"bad tool schema","type":"invalid_request_error"}}"#,
    )));
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bad tool schema"));
    assert_eq!(h.health.load("a/m-a"), None, "no health write");
    assert_eq!(h.finish(Ending::default()).status, 400);
}

#[test]
fn a_body_cut_short_falls_back_while_nothing_reached_the_client() {
    let mut h = Host::new();
    h.chat("chain", false);
    assert_eq!(h.head(200, "application/json"), [Action::ReadUpstreamBody]);
    let actions = h.feed(Event::UpstreamFailed(&Failure::Reset));
    assert_eq!(sent(&actions)[0].1, "b.test");
    h.head(200, "application/json");
    let (status, _, headers) = reply(&h.feed(Event::UpstreamBody(COMPLETION.as_bytes())));
    assert_eq!(status, 200);
    assert!(header(&headers, "x-switchyard-attempts")
        .unwrap()
        .starts_with("a/m-a;reset;"));
    assert_eq!(h.health.load("a/m-a").unwrap().failures, 1);
}

#[test]
fn a_body_cut_short_with_nowhere_to_go_is_a_dialect_502_and_metered_so() {
    for (path, anthropic) in [("/v1/chat/completions", false), ("/v1/messages", true)] {
        let mut h = Host::new();
        h.request(
            path,
            json!({"model": "solo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        );
        h.head(200, "application/json");
        let (status, body, _) = reply(&h.feed(Event::UpstreamFailed(&Failure::Reset)));
        assert_eq!(status, 502);
        if anthropic {
            assert_eq!(body["type"], "error");
        } else {
            assert!(body["error"]["message"].as_str().unwrap().contains("reset"));
        }
        assert_eq!(h.finish(Ending::default()).status, 502);
    }
}

/// Which attempts a host may route (`Send::route`).
fn routes(actions: &[Action]) -> Vec<(usize, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(s) => Some((s.attempt, s.route)),
            _ => None,
        })
        .collect()
}

/// A chain walked to its last deployment by retryable statuses, with the route of each attempt.
fn chain_routes(h: &mut Host, stream: bool) -> Vec<(usize, bool)> {
    let mut seen = routes(&h.chat("chain", stream));
    seen.extend(routes(&h.head(503, "application/json")));
    seen.extend(routes(&h.head(503, "application/json")));
    seen
}

#[test]
fn by_default_only_streams_go_through_a_router() {
    // A complete answer is always a call, even where nothing can follow it: a connection
    // that breaks mid-body must still get the dialect's 502 (main's behaviour).
    assert_eq!(routes(&Host::new().chat("solo", false)), [(0, false)]);
    assert_eq!(
        chain_routes(&mut Host::new(), false),
        [(0, false), (1, false), (2, false)]
    );
    // A stream may be routed wherever it is in the chain (no switching after the first byte;
    // the host routes only the client's own request, i.e. the first attempt).
    assert_eq!(routes(&Host::new().chat("solo", true)), [(0, true)]);
    assert_eq!(routes(&Host::new().chat("chain", true)), [(0, true)]);
}

#[test]
fn opted_in_attempts_nothing_can_follow_may_go_through_a_router() {
    // One deployment, complete answer: nothing can follow it.
    let solo = routes(&Host::routing_complete_answers().chat("solo", false));
    assert_eq!(solo, [(0, true)]);
    // A chain: the primary may still be fallen back from (a body cut mid-way included),
    // so it stays a call; the last deployment may be routed.
    assert_eq!(
        chain_routes(&mut Host::routing_complete_answers(), false),
        [(0, false), (1, false), (2, true)]
    );
    // Streams as by default.
    let stream = routes(&Host::routing_complete_answers().chat("chain", true));
    assert_eq!(stream, [(0, true)]);
    // `n` emulated by asking again: the first ask is followed by more.
    let mut h = Host::routing_complete_answers();
    let actions = h.request(
        "/v1/chat/completions",
        json!({"model": "claude", "n": 2, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(routes(&actions), [(0, false)]);
}

/// The opted-in last attempt's pass-through answer, relayed: its head, and the core's
/// answer to each chunk (nothing: the chunk passes unchanged).
fn relay(h: &mut Host, chunks: &[&[u8]]) -> switchyard_core::exchange::ResponseHead {
    let actions = h.head(200, "application/json");
    let [Action::RelayResponse(head)] = actions.as_slice() else {
        panic!("not relayed: {actions:?}");
    };
    for chunk in chunks {
        assert_eq!(
            h.feed(Event::UpstreamData(chunk)),
            [],
            "a relayed chunk passes as it is"
        );
    }
    head.clone()
}

#[test]
fn an_opted_in_last_pass_through_answer_is_relayed_and_its_usage_found_on_the_way() {
    let (a, b) = COMPLETION.as_bytes().split_at(COMPLETION.len() - 20);
    let mut h = Host::routing_complete_answers();
    assert_eq!(routes(&h.chat("solo", false)), [(0, true)]);
    let head = relay(&mut h, &[a, b]);
    assert_eq!(head.status, 200);
    assert_eq!(
        header(&head.headers, "content-type"),
        Some("application/json")
    );
    assert!(header(&head.headers, "x-request-id").is_some());
    assert!(header(&head.headers, "x-switchyard-attempts").is_some());
    assert_eq!(h.feed(Event::UpstreamEnd), [Action::EndResponse]);
    assert!(h.ex.answered());
    let record = h.finish(Ending::default());
    assert_eq!(
        (record.status, record.input_tokens, record.output_tokens),
        (200, 10, 3)
    );
    assert_eq!(h.health.load("a/m-a").unwrap().failures, 0);
}

#[test]
fn a_relayed_answer_without_usage_is_metered_as_one_held_whole() {
    let no_usage = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}]}"#;
    let mut held = Host::new();
    held.chat("solo", false);
    held.head(200, "application/json");
    held.feed(Event::UpstreamBody(no_usage.as_bytes()));
    let held = held.finish(Ending::default());
    let mut h = Host::routing_complete_answers();
    h.chat("solo", false);
    relay(&mut h, &[no_usage.as_bytes()]);
    assert_eq!(h.feed(Event::UpstreamEnd), [Action::EndResponse]);
    let relayed = h.finish(Ending::default());
    assert_eq!(relayed.status, 200);
    assert_eq!(
        (relayed.input_tokens, relayed.output_tokens, relayed.cost),
        (held.input_tokens, held.output_tokens, held.cost)
    );
}

#[test]
fn a_relayed_answer_that_is_malformed_or_cut_is_passed_on_and_metered_502() {
    // Bytes went out: nothing can replace them with the dialect's error any more (the
    // trade the opt-in makes); the record says the answer failed.
    // A whole answer that is not JSON, and a JSON answer cut by a reset.
    let cut = &COMPLETION.as_bytes()[..40];
    for (body, end) in [
        (&b"<html>oops</html>"[..], Event::UpstreamEnd),
        (cut, Event::UpstreamFailed(&Failure::Reset)),
    ] {
        let mut h = Host::routing_complete_answers();
        h.chat("solo", false);
        relay(&mut h, &[body]);
        let actions = h.feed(end);
        assert!(
            matches!(actions.as_slice(), [Action::Log(_), Action::EndResponse]),
            "{actions:?}"
        );
        assert_eq!(h.finish(Ending::default()).status, 502);
    }

    // The client went away mid-answer.
    let mut h = Host::routing_complete_answers();
    h.chat("solo", false);
    relay(&mut h, &[&COMPLETION.as_bytes()[..40]]);
    let gone = Ending {
        client_gone: true,
        ..Default::default()
    };
    assert_eq!(h.finish(gone).status, CLIENT_CLOSED);
}

#[test]
fn fallback_attempts_translated_answers_and_calls_are_still_held_whole() {
    // The chain's primary (a fallback may follow it) is held and judged.
    let mut h = Host::routing_complete_answers();
    h.chat("chain", false);
    assert_eq!(h.head(200, "application/json"), [Action::ReadUpstreamBody]);
    // The last deployment translates (Anthropic): its answer is not the upstream's bytes.
    let mut h = Host::routing_complete_answers();
    assert_eq!(chain_routes(&mut h, false).last(), Some(&(2, true)));
    assert_eq!(h.head(200, "application/json"), [Action::ReadUpstreamBody]);
    // A host that made a call already holds the whole body.
    let mut h = Host::routing_complete_answers();
    h.chat("solo", false);
    let actions = h.feed(Event::UpstreamHead(UpstreamHead {
        status: 200,
        content_type: Some("application/json"),
        body_complete: true,
        ..Default::default()
    }));
    assert_eq!(actions, [Action::ReadUpstreamBody]);
    // An error status is the provider's error, translated, as before.
    let mut h = Host::routing_complete_answers();
    h.chat("solo", false);
    assert_eq!(h.head(400, "application/json"), [Action::ReadUpstreamBody]);
    // By default nothing is relayed.
    let mut h = Host::new();
    h.chat("solo", false);
    assert_eq!(h.head(200, "application/json"), [Action::ReadUpstreamBody]);
}

#[test]
fn an_unreadable_2xx_is_the_deployments_failure_and_falls_back() {
    let mut h = Host::new();
    h.chat("chain", false);
    h.head(200, "application/json");
    let actions = h.feed(Event::UpstreamBody(b"{\"id\": \"half a bo"));
    assert_eq!(sent(&actions)[0].1, "b.test");
    assert_eq!(h.health.load("a/m-a").unwrap().failures, 1);
    h.head(200, "application/json");
    let actions = h.feed(Event::UpstreamBody(b"<html>oops</html>"));
    assert_eq!(sent(&actions)[0].1, "c.test");
    assert_eq!(h.health.load("b/m-b").unwrap().failures, 1);
    assert!(!h.ejected("a/m-a"), "one failure of two needed");
}

#[test]
fn repeated_failures_eject_and_routing_skips_the_deployment() {
    let mut h = Host::new();
    for _ in 0..2 {
        h.ex = Exchange::new();
        h.chat("chain", false);
        h.feed(Event::UpstreamFailed(&Failure::ConnectionFailed));
        h.feed(Event::UpstreamHead(UpstreamHead {
            status: 200,
            content_type: Some("application/json"),
            ..Default::default()
        }));
        h.feed(Event::UpstreamBody(COMPLETION.as_bytes()));
        h.finish(Ending::default());
    }
    assert!(h.ejected("a/m-a"));
    h.ex = Exchange::new();
    assert_eq!(sent(&h.chat("chain", false))[0].1, "b.test");
}

#[test]
fn a_providers_back_off_steers_every_request_down_the_chain_until_it_is_over() {
    let mut h = Host::new();
    let rate_limited = |h: &mut Host, retry_after| {
        h.feed(Event::UpstreamHead(UpstreamHead {
            status: 429,
            content_type: Some("application/json"),
            retry_after,
            body_complete: false,
        }))
    };
    // a answers 429 asking for 20 s: this request goes on to b...
    assert_eq!(sent(&h.chat("chain", false))[0].1, "a.test");
    let actions = rate_limited(&mut h, Some("20"));
    assert_eq!(sent(&actions)[0].1, "b.test");
    assert!(
        actions.iter().any(|a| matches!(a,
            Action::Log(line) if line == "switchyard: deployment a/m-a backs off for 20000 ms \
                                        (its provider's Retry-After)")),
        "{actions:?}"
    );
    h.head(200, "application/json");
    h.feed(Event::UpstreamBody(COMPLETION.as_bytes()));
    h.finish(Ending::default());
    // ...and so does every request for the next 20 s, without asking a again (one 429 is
    // not the two failures in a row the policy ejects after).
    h.now_ms += 19_999;
    h.ex = Exchange::new();
    assert_eq!(sent(&h.chat("chain", false))[0].1, "b.test");
    // Tried last, it is still not asked while the back-off runs: b and c failing leaves the
    // request nowhere to go.
    let actions = h.head(500, "application/json");
    assert_eq!(sent(&actions)[0].1, "c.test");
    let (status, _, headers) = reply(&h.head(500, "application/json"));
    assert_eq!(status, 502);
    assert_eq!(
        header(&headers, "x-switchyard-attempts"),
        Some("b/m-b;500;0ms, c/m-c;500;0ms, a/m-a;saturated;0ms")
    );
    h.finish(Ending::default());
    h.now_ms += 1;
    h.ex = Exchange::new();
    assert_eq!(sent(&h.chat("chain", false))[0].1, "a.test");

    // A 429 without a back-off in seconds (none, or an HTTP-date) holds only this request
    // back; the next one asks a again.
    for retry_after in [None, Some("Wed, 21 Oct 2026 07:28:00 GMT")] {
        let mut h = Host::new();
        h.chat("chain", false);
        assert_eq!(sent(&rate_limited(&mut h, retry_after))[0].1, "b.test");
        h.ex = Exchange::new();
        assert_eq!(
            sent(&h.chat("chain", false))[0].1,
            "a.test",
            "{retry_after:?}"
        );
    }

    // The chain's last deployment answering 429: the client is answered 429 with the
    // provider's back-off, and c is skipped by other requests for it too.
    let mut h = Host::new();
    h.chat("chain", false);
    h.feed(Event::UpstreamFailed(&Failure::ConnectionFailed));
    h.feed(Event::UpstreamFailed(&Failure::ConnectionFailed));
    let (status, _, headers) = reply(&rate_limited(&mut h, Some("30")));
    assert_eq!((status, header(&headers, "retry-after")), (429, Some("30")));
    assert_eq!(h.finish(Ending::default()).status, 429);
    assert!(h.backing_off("c/m-c"));
    h.now_ms += 29_999;
    assert!(h.backing_off("c/m-c"));
    h.now_ms += 1;
    assert!(!h.backing_off("c/m-c"));

    // The same when the chain's total deadline leaves no fallback: the provider's error is
    // the answer, and its back-off is shared.
    let mut h = Host::new();
    h.chat("chain", false);
    h.now_ms += 2_500;
    assert_eq!(rate_limited(&mut h, Some("15")), [Action::ReadUpstreamBody]);
    let actions = h.feed(Event::UpstreamBody(
        br#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#,
    ));
    let (status, _, headers) = reply(&actions);
    assert_eq!((status, header(&headers, "retry-after")), (429, Some("15")));
    assert!(h.backing_off("a/m-a"));
    h.now_ms += 15_000;
    assert!(!h.backing_off("a/m-a"));

    // `fallback.share_retry_after: false`: the back-off holds only the request it
    // answered; the next request asks a again.
    let mut config = config();
    config["fallback"]["share_retry_after"] = json!(false);
    let mut h = Host::with(gateway_from(config));
    h.chat("chain", false);
    assert_eq!(sent(&rate_limited(&mut h, Some("20")))[0].1, "b.test");
    assert!(!h.backing_off("a/m-a"));
    assert_eq!(
        h.health.load("a/m-a").unwrap().failures,
        1,
        "an ordinary failure"
    );
    h.ex = Exchange::new();
    assert_eq!(sent(&h.chat("chain", false))[0].1, "a.test");
}

#[test]
fn streams_pass_chunk_by_chunk_and_record_time_to_first_token() {
    let mut h = Host::new();
    h.chat("solo", true);
    h.now_ms += 5;
    let actions = h.head(200, "text/event-stream");
    let [Action::StartResponse(head)] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert_eq!(head.status, 200);
    assert!(header(&head.headers, "x-request-id").is_some());
    let stream = sse_stream();
    // The first chunk holds the first whole frame and a few bytes of the next.
    let (first, rest) = stream.split_at(stream.find("\n\n").unwrap() + 5);
    h.now_ms += 7;
    let out1 = data(&h.feed(Event::UpstreamData(first.as_bytes())));
    h.now_ms += 100;
    let mut out2 = h.feed(Event::UpstreamData(rest.as_bytes()));
    out2.extend(h.feed(Event::UpstreamEnd));
    assert_eq!(out2.last(), Some(&Action::EndResponse));
    assert_eq!(
        out1 + &data(&out2),
        stream.replace(&usage_frame(), ""),
        "the pass-through keeps every byte but the usage the client did not ask for"
    );
    let record = h.finish(Ending::default());
    assert_eq!((record.status, record.stream), (200, true));
    assert_eq!(record.output_tokens, 2);
    assert_eq!(record.ttft_ms, Some(12), "the first bytes left at +12 ms");
    assert_eq!(record.latency_ms, Some(112));
}

#[test]
fn a_stream_failing_after_its_first_byte_ends_with_an_error_event_metered_502() {
    let mut h = Host::new();
    h.chat("chain", true);
    h.head(200, "text/event-stream");
    let stream = sse_stream();
    h.feed(Event::UpstreamData(&stream.as_bytes()[..60]));
    let actions = h.feed(Event::UpstreamFailed(&Failure::Reset));
    assert!(data(&actions).contains("error"), "{actions:?}");
    assert_eq!(actions.last(), Some(&Action::EndResponse));
    assert!(
        sent(&actions).is_empty(),
        "no switching after the first byte"
    );
    assert_eq!(h.finish(Ending::default()).status, 502);
}

/// The two endings the host copies disagreed on, decided once.
#[test]
fn a_client_that_hangs_up_mid_stream_is_metered_499_everywhere() {
    let mut h = Host::new();
    h.chat("solo", true);
    h.head(200, "text/event-stream");
    h.feed(Event::UpstreamData(&sse_stream().as_bytes()[..60]));
    let record = h.finish(Ending {
        client_gone: true,
        client_status: None,
    });
    assert_eq!(record.status, CLIENT_CLOSED);
    // ... unless it already had the terminal event (SDKs stop reading at `[DONE]`).
    let mut h = Host::new();
    h.chat("solo", true);
    h.head(200, "text/event-stream");
    h.feed(Event::UpstreamData(sse_stream().as_bytes()));
    let record = h.finish(Ending {
        client_gone: true,
        client_status: None,
    });
    assert_eq!(record.status, 200);
    // A host that cannot tell who broke the stream meters the failure it is.
    let mut h = Host::new();
    h.chat("solo", true);
    h.head(200, "text/event-stream");
    h.feed(Event::UpstreamData(&sse_stream().as_bytes()[..60]));
    assert_eq!(h.finish(Ending::default()).status, 502);
}

#[test]
fn a_held_answer_the_host_gave_up_on_is_metered_as_the_client_saw_it() {
    let mut h = Host::new();
    h.chat("solo", false);
    h.head(200, "application/json");
    let record = h.finish(Ending {
        client_gone: false,
        client_status: Some(503),
    });
    assert_eq!(record.status, 503);
}

#[test]
fn a_buffered_stream_is_judged_whole_before_anything_is_sent() {
    // A fallback a proxy-wasm host fetched whole: cut short, it is a failed attempt...
    let mut h = Host::new();
    h.chat("chain", true);
    let buffered = |h: &mut Host| {
        h.feed(Event::UpstreamHead(UpstreamHead {
            status: 200,
            content_type: Some("text/event-stream"),
            body_complete: true,
            ..Default::default()
        }))
    };
    assert_eq!(buffered(&mut h), [Action::ReadUpstreamBody]);
    let stream = sse_stream();
    let actions = h.feed(Event::UpstreamBody(&stream.as_bytes()[..70]));
    assert_eq!(sent(&actions)[0].1, "b.test");
    // ...and whole, it is the answer, as one event-stream body.
    assert_eq!(buffered(&mut h), [Action::ReadUpstreamBody]);
    let actions = h.feed(Event::UpstreamBody(stream.as_bytes()));
    let reply = actions
        .iter()
        .find_map(|a| match a {
            Action::Reply(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        header(&reply.headers, "content-type"),
        Some("text/event-stream")
    );
    assert_eq!(
        String::from_utf8(reply.body).unwrap(),
        stream.replace(&usage_frame(), "")
    );
    let record = h.finish(Ending::default());
    assert_eq!((record.status, record.output_tokens), (200, 2));
}

#[test]
fn local_answers_are_metered_too() {
    // A bad key.
    let mut h = Host::new();
    let actions = h.feed(Event::RequestHead(RequestHead {
        method: "POST",
        path: "/v1/messages",
        x_api_key: Some("sk-wrong"),
        ..Default::default()
    }));
    let (status, body, headers) = reply(&actions);
    assert_eq!((status, body["type"].as_str()), (401, Some("error")));
    assert!(header(&headers, "x-request-id").is_some());
    let record = h.finish(Ending::default());
    assert_eq!((record.status, record.key_id.as_str()), (401, ""));
    // An unknown model, after the body.
    let mut h = Host::new();
    let (status, _, _) = reply(&h.chat("nope", false));
    assert_eq!(status, 404);
    let record = h.finish(Ending::default());
    assert_eq!((record.status, record.key_id.as_str()), (404, "k1"));
    // A body over the limit.
    let mut h = Host::new();
    let auth = format!("Bearer {KEY}");
    h.feed(Event::RequestHead(RequestHead {
        method: "POST",
        path: "/v1/chat/completions",
        authorization: Some(&auth),
        ..Default::default()
    }));
    let (status, _, _) = reply(&h.feed(Event::RequestBodyTooLarge));
    assert_eq!(status, 413);
    // No body at all.
    let mut h = Host::new();
    h.feed(Event::RequestHead(RequestHead {
        method: "POST",
        path: "/v1/chat/completions",
        authorization: Some(&auth),
        ..Default::default()
    }));
    let (status, _, _) = reply(&h.feed(Event::RequestBody(b"")));
    assert_eq!(status, 400);
}

#[test]
fn an_unreadable_request_body_gets_a_fixed_message_and_the_detail_goes_to_the_log() {
    let mut h = Host::new();
    let auth = format!("Bearer {KEY}");
    h.feed(Event::RequestHead(RequestHead {
        method: "POST",
        path: "/v1/chat/completions",
        authorization: Some(&auth),
        ..Default::default()
    }));
    let detail = "error reading body: stream reset at wasmtime::runtime::func::Func::call";
    let actions = h.feed(Event::RequestBodyUnreadable(detail));
    let (status, body, _) = reply(&actions);
    assert_eq!(status, 400);
    let text = body.to_string();
    assert!(
        !text.contains("wasmtime") && !text.contains("reset"),
        "{text}"
    );
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Log(l) if l.contains(detail))));
}

#[test]
fn an_attempt_that_cannot_be_sent_is_not_held_against_the_deployment() {
    let mut h = Host::new();
    h.chat("chain", false);
    let actions = h.feed(Event::UpstreamFailed(&Failure::NotSent(
        "unknown cluster".into(),
    )));
    assert_eq!(sent(&actions)[0].1, "b.test");
    assert_eq!(h.health.load("a/m-a"), None);
}

#[test]
fn the_total_deadline_stops_the_chain() {
    let mut h = Host::new();
    h.chat("chain", false);
    h.now_ms += 2_600;
    let (status, body, _) = reply(&h.feed(Event::UpstreamFailed(&Failure::Timeout)));
    assert_eq!(status, 504);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("all 1 deployments failed"));
}

// ---- property: any order of events ------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Head(u8),
    Body(u8),
    TooLarge,
    Unreadable,
    UpHead(u16, bool, bool),
    UpBody(u8),
    UpData(u8),
    UpEnd,
    UpFailed(u8),
    Tick(u16),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..4).prop_map(Step::Head),
        (0u8..5).prop_map(Step::Body),
        Just(Step::TooLarge),
        Just(Step::Unreadable),
        (
            prop_oneof![Just(200u16), Just(400), Just(429), Just(503), 100u16..600],
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(s, sse, whole)| Step::UpHead(s, sse, whole)),
        (0u8..4).prop_map(Step::UpBody),
        (0u8..4).prop_map(Step::UpData),
        Just(Step::UpEnd),
        (0u8..4).prop_map(Step::UpFailed),
        (0u16..2000).prop_map(Step::Tick),
    ]
}

/// What the client has seen, tracked from the actions alone.
#[derive(Default, Debug)]
struct ClientView {
    status: Option<u16>,
    streamed: String,
    ended: bool,
    replies: u32,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn any_event_order_ends_in_one_record_whose_status_is_what_the_client_saw(
        // Mostly a well-formed start (a head and a body), so the upstream phases are reached.
        start in prop::option::weighted(0.8, (0u8..2, 0u8..2)),
        rest in prop::collection::vec(arb_step(), 0..14),
        client_gone in any::<bool>(),
    ) {
        let mut h = Host::new();
        let auth = format!("Bearer {KEY}");
        let stream = sse_stream();
        let mut client = ClientView::default();
        let mut steps: Vec<Step> = start
            .map(|(head, body)| vec![Step::Head(head), Step::Body(body)])
            .unwrap_or_default();
        steps.extend(rest);
        for step in &steps {
            let bodies = [
                serde_json::to_vec(&json!({"model": "chain", "messages": [{"role": "user", "content": "hi"}]})).unwrap(),
                serde_json::to_vec(&json!({"model": "solo", "stream": true, "messages": [{"role": "user", "content": "hi"}]})).unwrap(),
                b"{not json".to_vec(),
                serde_json::to_vec(&json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]})).unwrap(),
                Vec::new(),
            ];
            let up_bodies = [COMPLETION.as_bytes(), stream.as_bytes(), b"garbage", &stream.as_bytes()[..50]];
            let failures = [Failure::Timeout, Failure::ConnectionFailed, Failure::Reset, Failure::NotSent("x".into())];
            let paths = ["/v1/chat/completions", "/v1/messages", "/v1/models", "/nope"];
            let actions = match step {
                Step::Head(i) => h.feed(Event::RequestHead(RequestHead {
                    method: if *i == 2 { "GET" } else { "POST" },
                    path: paths[*i as usize % 4],
                    authorization: Some(&auth),
                    ..Default::default()
                })),
                Step::Body(i) => h.feed(Event::RequestBody(&bodies[*i as usize % 5])),
                Step::TooLarge => h.feed(Event::RequestBodyTooLarge),
                Step::Unreadable => h.feed(Event::RequestBodyUnreadable("boom")),
                Step::UpHead(status, sse, whole) => h.feed(Event::UpstreamHead(UpstreamHead {
                    status: *status,
                    content_type: Some(if *sse { "text/event-stream" } else { "application/json" }),
                    retry_after: None,
                    body_complete: *whole,
                })),
                Step::UpBody(i) => h.feed(Event::UpstreamBody(up_bodies[*i as usize % 4])),
                Step::UpData(i) => h.feed(Event::UpstreamData(up_bodies[*i as usize % 4])),
                Step::UpEnd => h.feed(Event::UpstreamEnd),
                Step::UpFailed(i) => h.feed(Event::UpstreamFailed(&failures[*i as usize % 4])),
                Step::Tick(ms) => { h.now_ms += u64::from(*ms); Vec::new() }
            };
            for action in actions {
                match action {
                    Action::Reply(r) => {
                        prop_assert!(client.status.is_none(), "a second answer: {r:?}");
                        client.status = Some(r.status);
                        client.replies += 1;
                    }
                    Action::StartResponse(head) => {
                        prop_assert!(client.status.is_none(), "a second answer: {head:?}");
                        client.status = Some(head.status);
                    }
                    Action::Data(d) => {
                        prop_assert!(client.status.is_some() && !client.ended, "data outside a response");
                        client.streamed.push_str(&String::from_utf8_lossy(&d));
                    }
                    Action::EndResponse => client.ended = true,
                    _ => {}
                }
            }
        }
        let ending = Ending { client_gone, client_status: None };
        let cx = Ctx { now_ms: h.now_ms, random: 42, health: &h.health, counters: &h.counters };
        let record = h.ex.finish(ending, &cx);
        prop_assert!(record.is_some());
        prop_assert!(h.ex.finish(ending, &cx).is_none());
        let record = record.unwrap();
        let terminal = client.streamed.contains("[DONE]");
        let failed_stream = client.streamed.contains("\"error\"");
        let expected = match client.status {
            Some(_) if failed_stream => 502,
            Some(s) if client.replies == 1 || client.ended || terminal => s,
            Some(_) if client_gone => CLIENT_CLOSED,
            Some(_) => 502,
            None if client_gone => CLIENT_CLOSED,
            None => 502,
        };
        prop_assert_eq!(record.status, expected, "client saw {:?}", client);
    }
}

#[test]
fn every_answer_in_every_dialect_carries_a_request_id() {
    // Local answers before a body: a bad key on each dialect's path.
    for path in [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/responses",
        "/v1beta/models/solo:generateContent",
    ] {
        let mut h = Host::new();
        let actions = h.feed(Event::RequestHead(RequestHead {
            method: "POST",
            path,
            authorization: Some("Bearer sk-wrong"),
            ..Default::default()
        }));
        let (status, _, headers) = reply(&actions);
        assert_eq!(status, 401, "{path}");
        assert!(header(&headers, "x-request-id").is_some(), "{path}");
    }
    // Local answers after the body: an unknown model, and a field the provider refuses.
    let cases = [
        (
            "/v1/responses",
            json!({"model": "solo", "input": "hi", "truncation": "auto"}),
            400,
        ),
        (
            "/v1/messages",
            json!({"model": "nope", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}),
            404,
        ),
        (
            "/v1beta/models/nope:generateContent",
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
            404,
        ),
    ];
    for (path, body, expected) in cases {
        let mut h = Host::new();
        let (status, body, headers) = reply(&h.request(path, body));
        assert_eq!(status, expected, "{path}: {body}");
        assert!(header(&headers, "x-request-id").is_some(), "{path}");
    }
}

#[test]
fn provider_account_headers_are_stripped_unless_passed() {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key(KEY), "models": ["*"]}],
        "providers": {
            "a": {"kind": "openai", "base_url": "http://a.test"},
            "p": {"kind": "openai", "base_url": "http://p.test",
                  "pass_response_headers": ["OpenAI-Organization"]}
        },
        "models": [
            {"name": "solo", "deployments": [{"provider": "a", "model": "m-a"}]},
            {"name": "passing", "deployments": [{"provider": "p", "model": "m-p"}]}
        ]
    });
    let gw = Gateway::from_json(&serde_json::to_vec(&config).unwrap()).unwrap();
    for (model, passes_org) in [("solo", false), ("passing", true)] {
        let mut h = Host::new();
        h.gw = gw.clone();
        h.chat(model, false);
        for name in [
            "openai-organization",
            "OpenAI-Organization",
            "openai-project",
            "anthropic-organization-id",
            "x-ratelimit-remaining-tokens",
            "anthropic-ratelimit-requests-limit",
        ] {
            let expected = !(passes_org && name.eq_ignore_ascii_case("openai-organization"));
            assert_eq!(
                h.ex.strips_upstream_header(name),
                expected,
                "{model}: {name}"
            );
        }
        for name in [
            "content-type",
            "retry-after",
            "x-request-id",
            "openai-processing-ms",
        ] {
            assert!(!h.ex.strips_upstream_header(name), "{model}: {name}");
        }
    }
}

// ---- limits and budgets -----------------------------------------------------------------

fn limited_gateway(key_limits: Value) -> Gateway {
    Gateway::from_json(&serde_json::to_vec(&limited_config(key_limits)).unwrap()).unwrap()
}

fn limited_config(key_limits: Value) -> Value {
    json!({
        "keys": [
            {"id": "k1", "sha256": hash_key(KEY), "models": ["*"], "team": "blue",
             "limits": key_limits},
        ],
        "providers": {
            "a": {"kind": "openai", "base_url": "http://a.test"},
            "b": {"kind": "openai", "base_url": "http://b.test"}
        },
        "models": [
            {"name": "priced", "max_output_tokens": 1000, "deployments": [
                {"provider": "a", "model": "m-a", "price": {"input": 1.0, "output": 4.0}}]},
            {"name": "busy", "queue": {"max_wait_ms": 0}, "deployments": [
                {"provider": "a", "model": "m-a", "limits": {"concurrent": 1}},
                {"provider": "b", "model": "m-b", "limits": {"concurrent": 1}}]}
        ],
        "limits": {"teams": {"blue": {"concurrent": 10}}}
    })
}

#[test]
fn over_the_rate_limit_is_a_429_with_openai_headers_and_every_answer_has_them() {
    let mut h = Host::new();
    h.gw = limited_gateway(json!({"rpm": 2}));
    let request_once = |h: &mut Host| {
        h.ex = Exchange::new();
        let actions = h.request(
            "/v1/chat/completions",
            json!({"model": "priced", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
        );
        if sent(&actions).is_empty() {
            return reply(&actions);
        }
        h.head(200, "application/json");
        reply(&h.feed(Event::UpstreamBody(COMPLETION.as_bytes())))
    };
    let (status, _, headers) = request_once(&mut h);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(
        header(&headers, "x-ratelimit-remaining-requests"),
        Some("1")
    );
    h.finish(Ending::default());
    assert_eq!(request_once(&mut h).0, 200);
    h.finish(Ending::default());
    let (status, body, headers) = request_once(&mut h);
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        header(&headers, "x-ratelimit-remaining-requests"),
        Some("0")
    );
    assert_eq!(header(&headers, "retry-after"), Some("30"));
    assert_eq!(h.finish(Ending::default()).status, 429);
}

#[test]
fn a_task_submit_counts_against_the_keys_request_limit() {
    let mut config = limited_config(json!({"rpm": 2}));
    config["tasks"] = json!({"base_url": "http://tasks.test", "token_secret": "EDGE_TOKEN"});
    let mut h = Host::new();
    h.gw = Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&|_| Some("edge-token".to_string()));
    let submit =
        json!({"model": "priced", "input": {"messages": [{"role": "user", "content": "hi"}]}});
    // A sync request and a task submit each take one of the two requests a minute.
    let sync = h.request(
        "/v1/chat/completions",
        json!({"model": "priced", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(sent(&sync).len(), 1, "{sync:?}");
    h.finish(Ending::default());
    h.ex = Exchange::new();
    let actions = h.request("/v1/tasks", submit.clone());
    assert_eq!(sent(&actions)[0].1, "tasks.test", "{actions:?}");
    h.finish(Ending::default());
    // The third, a submit, is over the limit: a 429 in the caller's dialect, never sent.
    h.ex = Exchange::new();
    let actions = h.request("/v1/tasks", submit);
    assert!(sent(&actions).is_empty(), "{actions:?}");
    let (status, body, headers) = reply(&actions);
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        header(&headers, "x-ratelimit-remaining-requests"),
        Some("0")
    );
}

/// A limited gateway with a task plane, and a control plane when `control_plane` is set.
fn task_gateway(key_limits: Value, control_plane: bool) -> Gateway {
    let mut config = limited_config(key_limits);
    config["tasks"] = json!({"base_url": "http://tasks.test", "token_secret": "EDGE_TOKEN"});
    if control_plane {
        config["control_plane"] =
            json!({"base_url": "http://cp.test", "token_secret": "EDGE_TOKEN"});
    }
    Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&|_| Some("edge-token".to_string()))
}

/// The three ways a request reaches admission: a synchronous chat request, `POST /v1/tasks`,
/// and an Anthropic client's `/v1/messages` with `Prefer: respond-async`.
#[derive(Clone, Copy, Debug)]
enum Way {
    Sync,
    Submit,
    RespondAsync,
}

impl Host {
    /// Sends one request the `way` says, for model `priced`; the actions after its body.
    fn send_way(&mut self, way: Way) -> Vec<Action> {
        self.ex = Exchange::new();
        let messages = json!([{"role": "user", "content": "hi"}]);
        match way {
            Way::Sync => self.request(
                "/v1/chat/completions",
                json!({"model": "priced", "max_tokens": 10, "messages": messages}),
            ),
            Way::Submit => self.request(
                "/v1/tasks",
                json!({"model": "priced", "input": {"messages": messages}}),
            ),
            Way::RespondAsync => {
                let forwarded = [("prefer", "respond-async")];
                let actions = self.feed(Event::RequestHead(RequestHead {
                    method: "POST",
                    path: "/v1/messages",
                    x_api_key: Some(KEY),
                    anthropic_version: Some("2023-06-01"),
                    forwarded: &forwarded,
                    ..Default::default()
                }));
                assert!(
                    matches!(actions.as_slice(), [Action::ReadBody { .. }]),
                    "{actions:?}"
                );
                let body = json!({"model": "priced", "max_tokens": 10, "messages": messages});
                self.feed(Event::RequestBody(&serde_json::to_vec(&body).unwrap()))
            }
        }
    }
}

/// The one admission call in `actions`: its path and its body.
fn admit_call(actions: &[Action]) -> (String, Value) {
    match actions {
        [Action::Admit(request)] => (
            format!("{}{}", request.authority, request.path),
            serde_json::from_slice(&request.body).unwrap(),
        ),
        other => panic!("expected one admission call, got {other:?}"),
    }
}

#[test]
fn a_task_submit_asks_the_control_plane_as_a_sync_request_does() {
    let mut h = Host::with(task_gateway(json!({"rpm": 5}), true));
    let mut calls = Vec::new();
    for way in [Way::Sync, Way::Submit, Way::RespondAsync] {
        let (target, call) = admit_call(&h.send_way(way));
        assert_eq!(target, "cp.test/edge/v1/admit", "{way:?}");
        assert_eq!(call["request_id"], h.ex.request_id(), "{way:?}");
        calls.push(call);
    }
    // The same scopes, with their quotas, whichever way the request came.
    assert_eq!(calls[0]["scopes"], calls[1]["scopes"]);
    assert_eq!(calls[0]["scopes"], calls[2]["scopes"]);
    let names: Vec<&str> = calls[0]["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["key:k1", "team:blue"]);
    // A submission is one request and nothing more: its tokens and cost are the task plane's.
    assert!(calls[0]["estimate"]["tokens"].as_u64().unwrap() > 0);
    for call in &calls[1..] {
        assert_eq!(call["estimate"], json!({"tokens": 0, "cost_nano": 0}));
    }
}

#[test]
fn a_task_submit_the_control_plane_admits_goes_to_the_task_plane_and_settles_by_its_record() {
    let mut h = Host::with(task_gateway(json!({"rpm": 5}), true));
    for way in [Way::Submit, Way::RespondAsync] {
        let (_, call) = admit_call(&h.send_way(way));
        let answer = json!({"headers": [["x-ratelimit-limit-requests", "5"],
                                        ["x-ratelimit-remaining-requests", "3"]]});
        let actions = h.feed(Event::AdmitAnswer(Some((
            200,
            &serde_json::to_vec(&answer).unwrap(),
        ))));
        assert_eq!(
            sent(&actions),
            [(0, "tasks.test".to_string(), 10_000)],
            "{way:?}"
        );
        h.head(202, "application/json");
        let task = br#"{"id":"task_1","object":"task","status":"queued"}"#;
        let (status, _, headers) = reply(&h.feed(Event::UpstreamBody(task)));
        assert_eq!(status, 202, "{way:?}");
        assert_eq!(
            header(&headers, "x-ratelimit-remaining-requests"),
            Some("3"),
            "{way:?}"
        );
        // Its usage record carries the admitted request id: the ledger settles the
        // control plane's reservation with it.
        let record = h.finish(Ending::default());
        assert_eq!(record.request_id, call["request_id"].as_str().unwrap());
        assert_eq!((record.key_id.as_str(), record.cost), ("k1", 0.0));
    }
}

#[test]
fn a_task_submit_the_control_plane_refuses_is_its_429_in_the_callers_dialect() {
    let mut h = Host::with(task_gateway(json!({"rpm": 5}), true));
    let refusals = [
        (
            "rate_limit_exceeded",
            "too many requests for key:k1",
            Some(30),
        ),
        (
            "insufficient_quota",
            "the budget of $1 per day for key:k1 is spent",
            Some(3600),
        ),
    ];
    for way in [Way::Submit, Way::RespondAsync] {
        for (code, message, retry_after) in refusals {
            admit_call(&h.send_way(way));
            let answer = json!({
                "headers": [["x-ratelimit-limit-requests", "5"],
                            ["x-ratelimit-remaining-requests", "0"]],
                "refusal": {"message": message, "code": code, "retry_after": retry_after}
            });
            let actions = h.feed(Event::AdmitAnswer(Some((
                429,
                &serde_json::to_vec(&answer).unwrap(),
            ))));
            assert!(sent(&actions).is_empty(), "{way:?}: {actions:?}");
            let (status, body, headers) = reply(&actions);
            assert_eq!(status, 429, "{way:?} {code}");
            assert_eq!(
                header(&headers, "x-ratelimit-remaining-requests"),
                Some("0")
            );
            assert_eq!(
                header(&headers, "retry-after").map(str::to_string),
                retry_after.map(|s: u64| s.to_string())
            );
            match way {
                Way::RespondAsync => {
                    // Anthropic's error shape.
                    assert_eq!(body["type"], "error", "{body}");
                    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
                    assert_eq!(body["error"]["message"], message);
                }
                _ => {
                    assert_eq!(body["error"]["code"], code, "{body}");
                    assert_eq!(body["error"]["message"], message);
                }
            }
            assert_eq!(h.finish(Ending::default()).status, 429);
        }
    }
}

#[test]
fn without_an_answer_from_the_control_plane_a_task_submit_is_admitted_locally() {
    // One request a minute: the control plane cannot be reached twice, so this instance's
    // own counters admit the first submit and refuse the second.
    let mut h = Host::with(task_gateway(json!({"rpm": 1}), true));
    admit_call(&h.send_way(Way::Submit));
    let actions = h.feed(Event::AdmitAnswer(None));
    assert!(
        matches!(&actions[0], Action::Log(line) if line.contains("own limits apply")),
        "{actions:?}"
    );
    assert_eq!(sent(&actions)[0].1, "tasks.test");
    h.finish(Ending::default());
    admit_call(&h.send_way(Way::RespondAsync));
    let (status, body, _) = reply(&h.feed(Event::AdmitAnswer(Some((503, b"busy")))));
    assert_eq!(
        (status, &body["error"]["type"]),
        (429, &json!("rate_limit_error"))
    );
}

#[test]
fn without_a_control_plane_task_submits_and_sync_requests_share_local_limits() {
    let mut h = Host::with(task_gateway(json!({"rpm": 3}), false));
    for way in [Way::Sync, Way::Submit, Way::RespondAsync] {
        let actions = h.send_way(way);
        assert_eq!(sent(&actions).len(), 1, "{way:?}: {actions:?}");
        h.finish(Ending::default());
    }
    for way in [Way::Submit, Way::RespondAsync] {
        let (status, body, headers) = reply(&h.send_way(way));
        assert_eq!(status, 429, "{way:?}");
        assert_eq!(header(&headers, "retry-after"), Some("20"), "{way:?}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("key:k1"),
            "{body}"
        );
        h.finish(Ending::default());
    }
}

#[test]
fn a_spent_budget_refuses_task_submits_with_the_budget_error() {
    let limits = json!({"budget": {"usd": 0.01, "period": "total"}});
    let mut h = Host::with(task_gateway(limits.clone(), false));
    // Requests spent the key's whole budget, to the nano-dollar: nothing is left, so even a
    // submit estimated at nothing is refused (its cost is metered by the task plane later).
    let scope = Scope::key("k1", &serde_json::from_value::<Quota>(limits).unwrap());
    charge(&h.counters, &scope, 0, usd_to_nano(0.01), h.now_ms);
    for way in [Way::Submit, Way::RespondAsync] {
        let actions = h.send_way(way);
        assert!(sent(&actions).is_empty(), "{way:?}: {actions:?}");
        let (status, body, _) = reply(&actions);
        assert_eq!(status, 429, "{way:?}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("is spent"), "{message}");
        if let Way::Submit = way {
            assert_eq!(body["error"]["code"], "insufficient_quota");
        }
        h.finish(Ending::default());
    }
}

#[test]
fn a_budget_reserves_the_upper_estimate_and_settles_the_real_cost() {
    let mut h = Host::new();
    h.gw = limited_gateway(json!({"budget": {"usd": 0.01, "period": "day"}}));
    // Without max_tokens the model's max_output_tokens (1000 × $4/M = $0.004) plus the body
    // bound the estimate: two such requests fit in $0.01 at once, a third does not.
    let body = json!({"model": "priced", "messages": [{"role": "user", "content": "hi"}]});
    let mut open = Vec::new();
    for _ in 0..2 {
        h.ex = Exchange::new();
        let actions = h.request("/v1/chat/completions", body.clone());
        assert_eq!(sent(&actions).len(), 1, "{actions:?}");
        open.push(std::mem::take(&mut h.ex));
    }
    h.ex = Exchange::new();
    let (status, err, _) = reply(&h.request("/v1/chat/completions", body.clone()));
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (429, Some("insufficient_quota"))
    );
    h.finish(Ending::default());
    // The first two finish having cost far less than their estimates: room again.
    for ex in open {
        h.ex = ex;
        h.head(200, "application/json");
        h.feed(Event::UpstreamBody(COMPLETION.as_bytes()));
        let record = h.finish(Ending::default());
        assert!(record.cost > 0.0 && record.cost < 0.0001, "{record:?}");
    }
    h.ex = Exchange::new();
    assert_eq!(sent(&h.request("/v1/chat/completions", body)).len(), 1);
}

#[test]
fn a_deployment_at_its_limit_is_skipped_and_all_saturated_is_a_429() {
    let mut h = Host::new();
    h.gw = limited_gateway(json!({"concurrent": 5}));
    let body = json!({"model": "busy", "messages": [{"role": "user", "content": "hi"}]});
    let first = h.request("/v1/chat/completions", body.clone());
    assert_eq!(sent(&first)[0].1, "a.test");
    let held_a = std::mem::take(&mut h.ex);
    // a holds its one slot: the next request goes straight to b, a marked saturated.
    let second = h.request("/v1/chat/completions", body.clone());
    assert_eq!(sent(&second)[0].1, "b.test");
    h.head(200, "application/json");
    let (_, _, headers) = reply(&h.feed(Event::UpstreamBody(COMPLETION.as_bytes())));
    assert!(header(&headers, "x-switchyard-attempts")
        .unwrap()
        .starts_with("a/m-a;saturated;"));
    // b's request ended, so b is free again: hold a new one there, then a third request
    // finds both full.
    h.finish(Ending::default());
    h.ex = Exchange::new();
    assert_eq!(
        sent(&h.request("/v1/chat/completions", body.clone()))[0].1,
        "b.test"
    );
    let _held_b = std::mem::replace(&mut h.ex, Exchange::new());
    let second_b = h.request("/v1/chat/completions", body.clone());
    assert!(sent(&second_b).is_empty());
    let (status, err, headers) = reply(&second_b);
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (429, Some("deployments_saturated"))
    );
    assert!(header(&headers, "retry-after").is_some());
    // a's request ends: its slot is free again.
    h.ex = held_a;
    h.head(200, "application/json");
    h.feed(Event::UpstreamBody(COMPLETION.as_bytes()));
    h.finish(Ending::default());
    h.ex = Exchange::new();
    assert_eq!(
        sent(&h.request("/v1/chat/completions", body))
            .first()
            .map(|s| s.1.as_str()),
        Some("a.test")
    );
}

/// Where a dialect's answer carries its text.
type AnswerText = fn(&Value) -> &Value;

/// Every ingress dialect goes through the same admission: the model's defaults reach the
/// provider whichever dialect the client spoke, every answer carries the request id and the
/// `x-ratelimit-*` headers, and a request over the key's rate limit is a 429 with
/// `Retry-After` in the client's own error shape.
#[test]
fn limits_defaults_and_request_ids_hold_in_every_dialect() {
    let text_of: [(&str, Value, AnswerText); 4] = [
        (
            "/v1/chat/completions",
            json!({"model": "capped", "messages": [{"role": "user", "content": "hi"}]}),
            |b| &b["choices"][0]["message"]["content"],
        ),
        (
            "/v1/messages",
            json!({"model": "capped", "messages": [{"role": "user", "content": "hi"}]}),
            |b| &b["content"][0]["text"],
        ),
        (
            "/v1/responses",
            json!({"model": "capped", "input": "hi"}),
            |b| &b["output"][0]["content"][0]["text"],
        ),
        (
            "/v1beta/models/capped:generateContent",
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
            |b| &b["candidates"][0]["content"]["parts"][0]["text"],
        ),
    ];
    for (path, body, text) in text_of {
        let config = json!({
            "keys": [{"id": "k1", "sha256": hash_key(KEY), "models": ["*"],
                      "limits": {"rpm": 1}}],
            "providers": {"a": {"kind": "openai", "base_url": "http://a.test"}},
            "models": [{"name": "capped", "defaults": {"temperature": 0.25, "max_tokens": 77},
                        "deployments": [{"provider": "a", "model": "m-a"}]}]
        });
        let mut h = Host::new();
        h.gw = Gateway::from_json(&serde_json::to_vec(&config).unwrap()).unwrap();
        let actions = h.request(path, body.clone());
        let upstream: Value = actions
            .iter()
            .find_map(|a| match a {
                Action::Send(s) => Some(serde_json::from_slice(&s.request.body).unwrap()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{path}: nothing sent: {actions:?}"));
        assert_eq!(upstream["temperature"], 0.25, "{path}: {upstream}");
        let max = upstream
            .get("max_completion_tokens")
            .or(upstream.get("max_tokens"));
        assert_eq!(max, Some(&json!(77)), "{path}: {upstream}");
        h.head(200, "application/json");
        let (status, answer, headers) = reply(&h.feed(Event::UpstreamBody(COMPLETION.as_bytes())));
        assert_eq!((status, text(&answer)), (200, &json!("Hello!")), "{path}");
        assert_eq!(header(&headers, "x-request-id").map(str::len), Some(32));
        assert_eq!(
            header(&headers, "x-ratelimit-remaining-requests"),
            Some("0"),
            "{path}"
        );
        h.finish(Ending::default());

        h.ex = Exchange::new();
        let (status, err, headers) = reply(&h.request(path, body));
        assert_eq!(status, 429, "{path}");
        assert!(header(&headers, "retry-after").is_some(), "{path}");
        assert!(header(&headers, "x-request-id").is_some(), "{path}");
        assert_eq!(
            header(&headers, "x-ratelimit-limit-requests"),
            Some("1"),
            "{path}"
        );
        match path {
            "/v1/messages" => {
                assert_eq!(err["type"], "error");
                assert_eq!(err["error"]["type"], "rate_limit_error");
            }
            "/v1beta/models/capped:generateContent" => {
                assert_eq!(err["error"]["code"], 429);
                assert_eq!(err["error"]["status"], "RESOURCE_EXHAUSTED");
            }
            _ => assert_eq!(err["error"]["code"], "rate_limit_exceeded", "{path}"),
        }
        assert_eq!(h.finish(Ending::default()).status, 429, "{path}");
    }
}
