//! The bounded wait queue as the exchange decides it: a request that finds every deployment
//! of its model at its limits waits (Action::Wait), retries (Event::Retry), is sent when
//! capacity frees or answered 429 with Retry-After when its wait is up or the queue is full;
//! the depth counter is exact and never leaks, and no request is answered twice. A provider's
//! 429 while the other deployment is at its limit counts as busy too (the request waits, and
//! that provider is left alone for the back-off it asked for).

mod common;

use common::{header, reply};
use proptest::prelude::*;
use serde_json::json;
use switchyard_core::exchange::{
    Action, Ctx, Ending, Event, Exchange, UpstreamHead, CLIENT_CLOSED, QUEUED_HEADER,
};
use switchyard_core::health::{HealthStore, MemoryHealthStore};
use switchyard_core::keys::hash_key;
use switchyard_core::limits::{in_flight, DeploymentLimits, MemoryCounters, Scope};
use switchyard_core::queue;
use switchyard_core::usage::UsageRecord;
use switchyard_core::{Gateway, RequestHead};

const KEY: &str = "sk-queue-test";
const T0: u64 = 1_700_000_000_000;
const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13}}"#;

/// `narrow`: two deployments of `slots` concurrent requests each, a queue of `depth` for
/// `wait_ms`.
fn gateway(slots: u64, wait_ms: u64, depth: u64) -> Gateway {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key(KEY), "models": ["*"]}],
        "providers": {
            "a": {"kind": "openai", "base_url": "http://a.test"},
            "b": {"kind": "openai", "base_url": "http://b.test"}
        },
        "models": [{"name": "narrow", "aliases": ["thin"],
            "queue": {"max_wait_ms": wait_ms, "max_depth": depth},
            "deployments": [
                {"provider": "a", "model": "m-a", "limits": {"concurrent": slots}},
                {"provider": "b", "model": "m-b", "limits": {"concurrent": slots}}]}],
        "fallback": {"attempt_timeout_ms": 1000, "total_timeout_ms": 2500}
    });
    Gateway::from_json(&serde_json::to_vec(&config).unwrap()).unwrap()
}

/// Many exchanges over one store and one clock, as one host's workers.
struct Host {
    gw: Gateway,
    health: MemoryHealthStore,
    counters: MemoryCounters,
    now_ms: u64,
}

impl Host {
    fn new(gw: Gateway) -> Self {
        Host {
            gw,
            health: MemoryHealthStore::default(),
            counters: MemoryCounters::default(),
            now_ms: T0,
        }
    }

    fn feed(&self, ex: &mut Exchange, event: Event<'_>) -> Vec<Action> {
        let cx = Ctx {
            now_ms: self.now_ms,
            random: 7,
            health: &self.health,
            counters: &self.counters,
        };
        ex.handle(&self.gw, event, &cx)
    }

    /// A new request for `model`; the actions after its body.
    fn arrive(&self, model: &str) -> (Exchange, Vec<Action>) {
        let mut ex = Exchange::new();
        let auth = format!("Bearer {KEY}");
        self.feed(
            &mut ex,
            Event::RequestHead(RequestHead {
                method: "POST",
                path: "/v1/chat/completions",
                authorization: Some(&auth),
                ..Default::default()
            }),
        );
        let body = serde_json::to_vec(
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap();
        let actions = self.feed(&mut ex, Event::RequestBody(&body));
        (ex, actions)
    }

    /// The sent attempt answers 200; the client's reply.
    fn complete(&self, ex: &mut Exchange) -> (u16, Vec<(String, String)>) {
        self.feed(
            ex,
            Event::UpstreamHead(UpstreamHead {
                status: 200,
                content_type: Some("application/json"),
                ..Default::default()
            }),
        );
        let (status, _, headers) =
            reply(&self.feed(ex, Event::UpstreamBody(COMPLETION.as_bytes())));
        (status, headers)
    }

    fn finish(&self, ex: &mut Exchange, ending: Ending) -> UsageRecord {
        let cx = Ctx {
            now_ms: self.now_ms,
            random: 7,
            health: &self.health,
            counters: &self.counters,
        };
        let record = ex.finish(ending, &cx).expect("one record");
        assert!(ex.finish(ending, &cx).is_none(), "exactly one record");
        record
    }

    fn depth(&self) -> u64 {
        queue::depth(&self.counters, "narrow")
    }

    fn in_flight(&self, deployment: &str, slots: u64) -> u64 {
        let limits = DeploymentLimits {
            concurrent: Some(slots),
            ..DeploymentLimits::default()
        };
        in_flight(&self.counters, &Scope::deployment(deployment, &limits))
    }
}

fn sent(actions: &[Action]) -> Option<String> {
    actions.iter().find_map(|a| match a {
        Action::Send(s) => Some(s.request.authority.clone()),
        _ => None,
    })
}

fn waits(actions: &[Action]) -> Option<(String, u64)> {
    actions.iter().find_map(|a| match a {
        Action::Wait { queue, until_ms } => Some((queue.clone(), *until_ms)),
        _ => None,
    })
}

#[test]
fn a_saturated_model_queues_then_sends_when_a_slot_frees() {
    let h = Host::new(gateway(1, 1_000, 2));
    let (mut a, first) = h.arrive("narrow");
    let (mut b, second) = h.arrive("narrow");
    assert_eq!(sent(&first).as_deref(), Some("a.test"));
    assert_eq!(sent(&second).as_deref(), Some("b.test"));
    // Both full: the third waits in the model's queue (an alias shares it), up to 1 s.
    let (mut c, third) = h.arrive("thin");
    assert_eq!(waits(&third), Some(("narrow".to_string(), T0 + 1_000)));
    assert!(c.queued() && sent(&third).is_none());
    assert_eq!(h.depth(), 1);
    // Still full: a retry keeps it waiting, its place kept.
    assert!(waits(&h.feed(&mut c, Event::Retry)).is_some());
    assert_eq!(h.depth(), 1);
    // a's request ends: the retry takes its slot and leaves the queue.
    let mut h = h;
    h.now_ms += 300;
    assert_eq!(h.complete(&mut a).0, 200);
    h.finish(&mut a, Ending::default());
    let retried = h.feed(&mut c, Event::Retry);
    assert_eq!(sent(&retried).as_deref(), Some("a.test"));
    assert_eq!(h.depth(), 0);
    let (status, headers) = h.complete(&mut c);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, QUEUED_HEADER), Some("300"));
    let record = h.finish(&mut c, Ending::default());
    // Latency is the client's: from arrival, the wait included.
    assert_eq!((record.status, record.latency_ms), (200, Some(300)));
    h.complete(&mut b);
    h.finish(&mut b, Ending::default());
    assert_eq!((h.in_flight("a/m-a", 1), h.in_flight("b/m-b", 1)), (0, 0));
}

#[test]
fn the_wait_is_bounded_and_so_is_the_queue() {
    let mut h = Host::new(gateway(1, 1_000, 2));
    let mut held: Vec<Exchange> = (0..2).map(|_| h.arrive("narrow").0).collect();
    let (mut w1, a1) = h.arrive("narrow");
    let (mut w2, a2) = h.arrive("narrow");
    assert!(waits(&a1).is_some() && waits(&a2).is_some());
    // A third waiter does not fit: 429 at once, in dialect, with Retry-After.
    let (mut full, a3) = h.arrive("narrow");
    let (status, err, headers) = reply(&a3);
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (429, Some("deployments_saturated"))
    );
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2 requests already wait"));
    assert!(header(&headers, "retry-after").is_some());
    assert_eq!(h.finish(&mut full, Ending::default()).status, 429);
    assert_eq!(h.depth(), 2);
    // The wait runs out: the retry answers 429 with Retry-After and gives the place back.
    h.now_ms += 1_000;
    let (status, err, headers) = reply(&h.feed(&mut w1, Event::Retry));
    assert_eq!(status, 429);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1000 ms"),
        "{err}"
    );
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert_eq!(header(&headers, QUEUED_HEADER), Some("1000"));
    assert_eq!(h.depth(), 1);
    let again = h.feed(&mut w1, Event::Retry);
    assert!(
        again.iter().all(|a| matches!(a, Action::Log(_))),
        "answered once: {again:?}"
    );
    assert_eq!(h.finish(&mut w1, Ending::default()).status, 429);
    // A client that goes away while waiting leaves the queue too, metered 499.
    assert_eq!(
        h.finish(
            &mut w2,
            Ending {
                client_gone: true,
                client_status: None
            }
        )
        .status,
        CLIENT_CLOSED
    );
    assert_eq!(h.depth(), 0);
    for ex in &mut held {
        h.complete(ex);
        h.finish(ex, Ending::default());
    }
}

#[test]
fn a_newcomer_does_not_overtake_a_waiting_request() {
    let h = Host::new(gateway(1, 5_000, 10));
    let (mut a, _) = h.arrive("narrow");
    let (mut b, _) = h.arrive("narrow");
    let (mut waiting, actions) = h.arrive("narrow");
    assert!(waits(&actions).is_some());
    h.complete(&mut a);
    h.finish(&mut a, Ending::default());
    // A slot is free, but a request waits: the newcomer queues behind it...
    let (mut newcomer, actions) = h.arrive("narrow");
    assert!(waits(&actions).is_some(), "{actions:?}");
    assert_eq!(h.depth(), 2);
    // ...and the waiting one gets the slot.
    assert_eq!(
        sent(&h.feed(&mut waiting, Event::Retry)).as_deref(),
        Some("a.test")
    );
    assert!(waits(&h.feed(&mut newcomer, Event::Retry)).is_some());
    for ex in [&mut b, &mut waiting] {
        h.complete(ex);
        h.finish(ex, Ending::default());
    }
    assert!(sent(&h.feed(&mut newcomer, Event::Retry)).is_some());
    h.complete(&mut newcomer);
    h.finish(&mut newcomer, Ending::default());
    assert_eq!(h.depth(), 0);
}

#[test]
fn with_the_queue_off_a_saturated_model_answers_at_once() {
    let h = Host::new(gateway(1, 0, 10));
    let _held: Vec<_> = (0..2).map(|_| h.arrive("narrow").0).collect();
    let (mut ex, actions) = h.arrive("narrow");
    assert!(waits(&actions).is_none());
    assert_eq!(reply(&actions).0, 429);
    h.finish(&mut ex, Ending::default());
    assert_eq!(h.depth(), 0);
}

/// The sent attempt's provider answers 429 with `retry_after` seconds; what follows.
fn provider_429(h: &Host, ex: &mut Exchange, retry_after: &str) -> Vec<Action> {
    h.feed(
        ex,
        Event::UpstreamHead(UpstreamHead {
            status: 429,
            content_type: Some("application/json"),
            retry_after: Some(retry_after),
            ..Default::default()
        }),
    )
}

/// Both slots taken, then a's freed: the next request is sent to a while b stays full.
/// Returns the request holding b and the one sent to a.
fn b_held_and_one_sent_to_a(h: &Host) -> (Exchange, Exchange) {
    let (mut first, _) = h.arrive("narrow");
    let (on_b, actions) = h.arrive("narrow");
    assert_eq!(sent(&actions).as_deref(), Some("b.test"));
    h.complete(&mut first);
    h.finish(&mut first, Ending::default());
    let (ex, actions) = h.arrive("narrow");
    assert_eq!(sent(&actions).as_deref(), Some("a.test"));
    (on_b, ex)
}

#[test]
fn a_providers_429_while_the_other_deployment_is_at_its_limit_waits_instead_of_failing() {
    let mut h = Host::new(gateway(1, 5_000, 10));
    let (mut first, _) = h.arrive("narrow");
    let (mut on_b, actions) = h.arrive("narrow");
    assert_eq!(sent(&actions).as_deref(), Some("b.test"));
    h.complete(&mut first);
    h.finish(&mut first, Ending::default());
    // a has a slot again and takes the next request; its provider answers 429 while b is
    // at its limit: the request waits for capacity instead of failing with 502.
    let (mut ex, actions) = h.arrive("narrow");
    assert_eq!(sent(&actions).as_deref(), Some("a.test"));
    let actions = provider_429(&h, &mut ex, "2");
    assert!(waits(&actions).is_some(), "{actions:?}");
    assert!(ex.queued() && h.depth() == 1);
    assert_eq!(
        h.in_flight("a/m-a", 1),
        0,
        "the refused attempt gave its slot back"
    );
    // Within the provider's back-off, a is skipped although it has a free slot, and b is
    // still full: the request keeps waiting, nothing is sent.
    h.now_ms += 500;
    let actions = h.feed(&mut ex, Event::Retry);
    assert!(
        waits(&actions).is_some() && sent(&actions).is_none(),
        "{actions:?}"
    );
    // b frees: the retry takes it.
    h.complete(&mut on_b);
    h.finish(&mut on_b, Ending::default());
    assert_eq!(
        sent(&h.feed(&mut ex, Event::Retry)).as_deref(),
        Some("b.test")
    );
    assert_eq!(h.depth(), 0);
    let (status, headers) = h.complete(&mut ex);
    assert_eq!(
        (status, header(&headers, QUEUED_HEADER)),
        (200, Some("500"))
    );
    assert_eq!(h.finish(&mut ex, Ending::default()).status, 200);
}

#[test]
fn after_the_providers_back_off_its_deployment_is_tried_again() {
    let mut h = Host::new(gateway(1, 5_000, 10));
    let (mut on_b, mut ex) = b_held_and_one_sent_to_a(&h);
    assert!(waits(&provider_429(&h, &mut ex, "2")).is_some());
    // b stays full; once the 2 s the provider asked for are over, a is asked again.
    h.now_ms += 2_000;
    assert_eq!(
        sent(&h.feed(&mut ex, Event::Retry)).as_deref(),
        Some("a.test")
    );
    assert_eq!(h.complete(&mut ex).0, 200);
    h.finish(&mut ex, Ending::default());
    h.complete(&mut on_b);
    h.finish(&mut on_b, Ending::default());
    assert_eq!(
        (h.depth(), h.in_flight("a/m-a", 1), h.in_flight("b/m-b", 1)),
        (0, 0, 0)
    );
}

#[test]
fn waiting_again_after_a_providers_429_stays_within_the_first_waits_bound() {
    let mut h = Host::new(gateway(1, 1_000, 10));
    let (mut on_a, _) = h.arrive("narrow");
    let (mut on_b, _) = h.arrive("narrow");
    let (mut ex, actions) = h.arrive("narrow");
    assert_eq!(waits(&actions), Some(("narrow".to_string(), T0 + 1_000)));
    h.now_ms += 300;
    h.complete(&mut on_a);
    h.finish(&mut on_a, Ending::default());
    assert_eq!(
        sent(&h.feed(&mut ex, Event::Retry)).as_deref(),
        Some("a.test")
    );
    // a's provider answers 429 while b is still full: the request waits again, but only
    // until its first wait's bound.
    let actions = provider_429(&h, &mut ex, "5");
    assert_eq!(waits(&actions), Some(("narrow".to_string(), T0 + 1_000)));
    h.now_ms = T0 + 1_000;
    let (status, err, headers) = reply(&h.feed(&mut ex, Event::Retry));
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (429, Some("deployments_saturated"))
    );
    // Both waits count, and the attempt that was sent stays on the record.
    assert_eq!(header(&headers, QUEUED_HEADER), Some("1000"));
    let attempts = header(&headers, "x-switchyard-attempts")
        .unwrap_or_default()
        .to_string();
    assert!(attempts.contains("429"), "{attempts}");
    assert_eq!(h.finish(&mut ex, Ending::default()).status, 429);
    h.complete(&mut on_b);
    h.finish(&mut on_b, Ending::default());
    assert_eq!(
        (h.depth(), h.in_flight("a/m-a", 1), h.in_flight("b/m-b", 1)),
        (0, 0, 0)
    );
}

#[test]
fn with_the_queue_off_a_providers_429_and_a_full_deployment_answer_429_not_502() {
    let h = Host::new(gateway(1, 0, 10));
    let (mut on_b, mut ex) = b_held_and_one_sent_to_a(&h);
    let (status, err, headers) = reply(&provider_429(&h, &mut ex, "7"));
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (429, Some("deployments_saturated")),
        "{err}"
    );
    let retry_after: u64 = header(&headers, "retry-after").unwrap().parse().unwrap();
    assert!((1..=7).contains(&retry_after), "{retry_after}");
    assert_eq!(h.finish(&mut ex, Ending::default()).status, 429);
    h.complete(&mut on_b);
    h.finish(&mut on_b, Ending::default());
    assert_eq!(h.depth(), 0);
}

/// What one step of the random schedule does.
#[derive(Debug, Clone)]
enum Op {
    Arrive,
    /// The sent request at this index (modulo) completes.
    Complete(usize),
    /// The waiting request at this index gets a retry (the host's wake-up, in any order).
    Retry(usize),
    /// The waiting request at this index loses its client.
    Gone(usize),
    /// The sent request at this index (modulo) is answered 429 by its provider.
    Throttled(usize),
    Tick(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Arrive),
        3 => any::<usize>().prop_map(Op::Complete),
        4 => any::<usize>().prop_map(Op::Retry),
        1 => any::<usize>().prop_map(Op::Gone),
        2 => any::<usize>().prop_map(Op::Throttled),
        2 => (0u16..400).prop_map(Op::Tick),
    ]
}

/// Whether a deployment of `ex`'s plan backs off (the shared record) until after `ms`.
fn backing_off_past(h: &Host, ex: &Exchange, ms: u64) -> bool {
    ex.plan().is_some_and(|plan| {
        plan.attempts.iter().any(|a| {
            h.health
                .load(&a.deployment_id)
                .is_some_and(|r| r.backed_off_until_ms > ms)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn the_queue_never_overflows_leaks_or_answers_twice(ops in prop::collection::vec(op(), 1..120)) {
        const SLOTS: u64 = 2;
        const DEPTH: u64 = 3;
        let mut h = Host::new(gateway(SLOTS, 1_000, DEPTH));
        let mut sent_ex: Vec<Exchange> = Vec::new();
        let mut queued: Vec<(Exchange, u64)> = Vec::new();
        let mut records = 0usize;
        let mut arrivals = 0usize;
        for op in ops {
            match op {
                Op::Arrive => {
                    arrivals += 1;
                    let (mut ex, actions) = h.arrive("narrow");
                    if sent(&actions).is_some() {
                        sent_ex.push(ex);
                    } else if let Some((_, until)) = waits(&actions) {
                        prop_assert_eq!(until, h.now_ms + 1_000);
                        queued.push((ex, until));
                    } else {
                        prop_assert_eq!(reply(&actions).0, 429);
                        prop_assert!(h.depth() == DEPTH || h.depth() == 0);
                        h.finish(&mut ex, Ending::default());
                        records += 1;
                    }
                }
                Op::Complete(i) if !sent_ex.is_empty() => {
                    let mut ex = sent_ex.remove(i % sent_ex.len());
                    prop_assert_eq!(h.complete(&mut ex).0, 200);
                    h.finish(&mut ex, Ending::default());
                    records += 1;
                }
                Op::Retry(i) if !queued.is_empty() => {
                    let (mut ex, until) = queued.remove(i % queued.len());
                    let actions = h.feed(&mut ex, Event::Retry);
                    if sent(&actions).is_some() {
                        sent_ex.push(ex);
                    } else if waits(&actions).is_some() {
                        prop_assert!(h.now_ms < until, "waited past its bound");
                        queued.push((ex, until));
                    } else {
                        let (status, err, headers) = reply(&actions);
                        prop_assert_eq!(status, 429);
                        // Before its bound only when providers' back-offs alone hold it and
                        // outlast the bound.
                        let message = err["error"]["message"].as_str().unwrap_or_default();
                        if h.now_ms < until {
                            prop_assert!(
                                message.contains("held back by its provider's Retry-After"),
                                "gave up early: {}", message
                            );
                            prop_assert!(
                                backing_off_past(&h, &ex, until),
                                "gave up early without a back-off that outlasts its wait"
                            );
                        }
                        prop_assert!(header(&headers, "retry-after").is_some());
                        h.finish(&mut ex, Ending::default());
                        records += 1;
                    }
                }
                Op::Throttled(i) if !sent_ex.is_empty() => {
                    let mut ex = sent_ex.remove(i % sent_ex.len());
                    let mut actions = provider_429(&h, &mut ex, "1");
                    if actions.contains(&Action::ReadUpstreamBody) {
                        // No fallback left in the time budget: the provider's answer passes.
                        actions = h.feed(&mut ex, Event::UpstreamBody(br#"{"error":{"message":"slow down"}}"#));
                    }
                    if sent(&actions).is_some() {
                        sent_ex.push(ex);
                    } else if let Some((_, until)) = waits(&actions) {
                        // A request that waited before keeps its first deadline.
                        prop_assert!(h.now_ms < until && until <= h.now_ms + 1_000);
                        queued.push((ex, until));
                    } else {
                        let (status, err, _) = reply(&actions);
                        prop_assert_eq!(status, 429, "{:?}", actions);
                        let message = err["error"]["message"].as_str().unwrap_or_default();
                        if message.contains("held back by its provider's Retry-After") {
                            prop_assert!(
                                backing_off_past(&h, &ex, h.now_ms),
                                "gave up early without a back-off that outlasts its wait"
                            );
                        }
                        h.finish(&mut ex, Ending::default());
                        records += 1;
                    }
                }
                Op::Gone(i) if !queued.is_empty() => {
                    let (mut ex, _) = queued.remove(i % queued.len());
                    let record = h.finish(&mut ex, Ending { client_gone: true, client_status: None });
                    prop_assert_eq!(record.status, CLIENT_CLOSED);
                    records += 1;
                }
                Op::Tick(ms) => h.now_ms += u64::from(ms),
                _ => {}
            }
            prop_assert_eq!(h.depth(), queued.len() as u64, "depth counts exactly the waiting");
            prop_assert!(h.depth() <= DEPTH);
            let busy = h.in_flight("a/m-a", SLOTS) + h.in_flight("b/m-b", SLOTS);
            prop_assert_eq!(busy, sent_ex.len() as u64);
            prop_assert!(busy <= 2 * SLOTS);
        }
        for (mut ex, _) in queued.drain(..) {
            h.finish(&mut ex, Ending { client_gone: true, client_status: None });
            records += 1;
        }
        for mut ex in sent_ex.drain(..) {
            h.complete(&mut ex);
            h.finish(&mut ex, Ending::default());
            records += 1;
        }
        prop_assert_eq!(records, arrivals, "one record per request");
        prop_assert_eq!(h.depth(), 0);
        prop_assert_eq!(h.in_flight("a/m-a", SLOTS) + h.in_flight("b/m-b", SLOTS), 0);
    }
}

/// Every counter record admission and the queue write is one the gateway lists ahead of
/// traffic (`Gateway::counter_records`, which the proxy-wasm filter creates at configure
/// time, because shared data cannot create a record atomically), and the list names the
/// config's keys, teams, deployments and queues.
#[test]
fn the_counter_records_listed_ahead_are_the_ones_requests_write() {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key(KEY), "models": ["*"], "team": "t1",
                  "limits": {"rpm": 100, "tpm": 100000, "concurrent": 5}}],
        "limits": {"teams": {"t1": {"concurrent": 10}, "t2": {"rpm": 7}}},
        "providers": {
            "a": {"kind": "openai", "base_url": "http://a.test"},
            "b": {"kind": "openai", "base_url": "http://b.test"}
        },
        "models": [{"name": "narrow",
            "queue": {"max_wait_ms": 1000, "max_depth": 4},
            "deployments": [
                {"provider": "a", "model": "m-a", "limits": {"concurrent": 1, "rpm": 50}},
                {"provider": "b", "model": "m-b", "limits": {"concurrent": 1}}]},
            {"name": "free", "deployments": [{"provider": "a", "model": "m-free"}]}],
        "fallback": {"attempt_timeout_ms": 1000, "total_timeout_ms": 2500}
    });
    let h = Host::new(Gateway::from_json(&serde_json::to_vec(&config).unwrap()).unwrap());
    let listed = h.gw.counter_records();
    for name in [
        "switchyard/limits/deployment:a/m-a/concurrent",
        "switchyard/limits/deployment:a/m-a/rpm",
        "switchyard/limits/deployment:b/m-b/concurrent",
        "switchyard/limits/key:k1/rpm",
        "switchyard/limits/key:k1/tpm",
        "switchyard/limits/key:k1/concurrent",
        "switchyard/limits/team:t1/concurrent",
        "switchyard/limits/team:t2/rpm",
        "switchyard/queue/narrow/depth",
    ] {
        assert!(listed.iter().any(|l| l == name), "{name} not in {listed:?}");
    }
    assert!(
        !listed
            .iter()
            .any(|l| l.contains("m-free") || l.contains("queue/free")),
        "an unlimited deployment has no records: {listed:?}"
    );

    // Two requests take both deployments, a third waits in the queue; all of them end.
    let (mut first, actions) = h.arrive("narrow");
    assert!(sent(&actions).is_some());
    let (mut second, actions) = h.arrive("narrow");
    assert!(sent(&actions).is_some());
    let (mut third, actions) = h.arrive("narrow");
    assert!(waits(&actions).is_some(), "{actions:?}");
    let (mut free, actions) = h.arrive("free");
    assert!(sent(&actions).is_some());
    for ex in [&mut first, &mut second, &mut free] {
        assert_eq!(h.complete(ex).0, 200);
        h.finish(ex, Ending::default());
    }
    h.finish(&mut third, Ending::default());

    let written = h.counters.record_names();
    assert!(written.len() >= 5, "{written:?}");
    for name in &written {
        assert!(
            listed.contains(name),
            "{name} was written but not listed in {listed:?}"
        );
    }
}

/// A provider's back-off (429 with `Retry-After`) that one request met holds back every
/// request of the model: one already waiting when it came does not ask that provider on its
/// next walk, one that arrives during it keeps the deployment for after it; once it is over,
/// each of them is sent there.
#[test]
fn a_providers_back_off_holds_back_every_waiting_request_until_it_is_over() {
    let mut h = Host::new(gateway(1, 30_000, 10));
    let (mut first, _) = h.arrive("narrow");
    let (mut on_b, _) = h.arrive("narrow");
    // Both deployments full: two requests wait.
    let (mut w1, actions) = h.arrive("narrow");
    assert!(waits(&actions).is_some(), "{actions:?}");
    let (mut w2, actions) = h.arrive("narrow");
    assert!(waits(&actions).is_some(), "{actions:?}");
    // a frees; the oldest waiter takes it, and a's provider answers it 429 for 5 s.
    h.complete(&mut first);
    h.finish(&mut first, Ending::default());
    assert_eq!(
        sent(&h.feed(&mut w1, Event::Retry)).as_deref(),
        Some("a.test")
    );
    assert!(waits(&provider_429(&h, &mut w1, "5")).is_some());
    // a has a free slot, b is full: the other waiter, queued before the 429, does not ask a.
    h.now_ms += 1_000;
    let actions = h.feed(&mut w2, Event::Retry);
    assert!(
        waits(&actions).is_some() && sent(&actions).is_none(),
        "{actions:?}"
    );
    // A request arriving during the back-off waits too.
    let (mut w3, actions) = h.arrive("narrow");
    assert!(
        waits(&actions).is_some() && sent(&actions).is_none(),
        "{actions:?}"
    );
    assert_eq!(h.depth(), 3);
    // The back-off is over: one after another, each waiter is sent to a (b stays full).
    h.now_ms += 4_000;
    for (i, ex) in [&mut w1, &mut w2, &mut w3].into_iter().enumerate() {
        let actions = h.feed(ex, Event::Retry);
        assert_eq!(
            sent(&actions).as_deref(),
            Some("a.test"),
            "w{}: {actions:?}",
            i + 1
        );
        assert_eq!(h.complete(ex).0, 200);
        h.finish(ex, Ending::default());
    }
    assert_eq!(h.depth(), 0);
    h.complete(&mut on_b);
    h.finish(&mut on_b, Ending::default());
}

/// The time a request spends waiting is not the chain's: a retry after a wait longer than
/// `total_timeout_ms` (2.5 s here) still falls back past a deployment that is full.
#[test]
fn a_long_wait_does_not_use_up_the_chains_total_timeout() {
    let mut h = Host::new(gateway(1, 30_000, 10));
    let (mut on_a, _) = h.arrive("narrow");
    let (mut on_b, _) = h.arrive("narrow");
    let (mut waiting, actions) = h.arrive("narrow");
    assert!(waits(&actions).is_some(), "{actions:?}");
    h.now_ms += 3_000;
    h.complete(&mut on_b);
    h.finish(&mut on_b, Ending::default());
    // a is still full; b, the chain's second deployment, takes it.
    let actions = h.feed(&mut waiting, Event::Retry);
    assert_eq!(sent(&actions).as_deref(), Some("b.test"), "{actions:?}");
    assert_eq!(h.complete(&mut waiting).0, 200);
    h.finish(&mut waiting, Ending::default());
    h.complete(&mut on_a);
    h.finish(&mut on_a, Ending::default());
    assert_eq!(h.depth(), 0);
}

/// When only providers' back-offs hold every deployment, and the soonest ends after the
/// request's wait would, the request is answered 429 at once with that back-off (waiting
/// could not help); a back-off that ends within the wait is waited out.
#[test]
fn a_back_off_longer_than_the_wait_is_answered_at_once() {
    let mut h = Host::new(gateway(1, 30_000, 10));
    // Both providers answer one request 429: a for 45 s, b for 40 s.
    let (mut first, actions) = h.arrive("narrow");
    assert_eq!(sent(&actions).as_deref(), Some("a.test"));
    assert_eq!(
        sent(&provider_429(&h, &mut first, "45")).as_deref(),
        Some("b.test")
    );
    let (status, _, headers) = reply(&provider_429(&h, &mut first, "40"));
    assert_eq!((status, header(&headers, "retry-after")), (429, Some("40")));
    h.finish(&mut first, Ending::default());
    // The next request waits for nothing: 429 with the soonest back-off, no place taken.
    let (mut next, actions) = h.arrive("narrow");
    assert!(
        waits(&actions).is_none() && sent(&actions).is_none(),
        "{actions:?}"
    );
    let (status, err, headers) = reply(&actions);
    assert_eq!(
        (
            status,
            err["error"]["code"].as_str(),
            header(&headers, "retry-after")
        ),
        (429, Some("deployments_saturated"), Some("40"))
    );
    assert_eq!(h.depth(), 0);
    h.finish(&mut next, Ending::default());
    // 15 s later b's back-off ends within a wait: the request waits, then goes to b.
    h.now_ms += 15_000;
    let (mut later, actions) = h.arrive("narrow");
    assert!(waits(&actions).is_some(), "{actions:?}");
    h.now_ms += 25_000;
    let actions = h.feed(&mut later, Event::Retry);
    assert_eq!(sent(&actions).as_deref(), Some("b.test"), "{actions:?}");
    assert_eq!(h.complete(&mut later).0, 200);
    h.finish(&mut later, Ending::default());
    assert_eq!(h.depth(), 0);
}

/// A deployment at its own limits can free at any moment: beside another whose provider's
/// back-off outlasts the wait, the request still waits for it, and is served when it frees.
#[test]
fn a_full_deployment_beside_a_long_back_off_is_waited_for() {
    let mut h = Host::new(gateway(1, 30_000, 10));
    let (mut on_b, mut ex) = b_held_and_one_sent_to_a(&h);
    // a's provider asks for 45 s, longer than the 30 s wait; b is full: the request waits.
    let actions = provider_429(&h, &mut ex, "45");
    assert!(waits(&actions).is_some(), "{actions:?}");
    h.now_ms += 1_000;
    assert!(waits(&h.feed(&mut ex, Event::Retry)).is_some());
    // b frees: the retry takes it.
    h.complete(&mut on_b);
    h.finish(&mut on_b, Ending::default());
    let actions = h.feed(&mut ex, Event::Retry);
    assert_eq!(sent(&actions).as_deref(), Some("b.test"), "{actions:?}");
    assert_eq!(h.complete(&mut ex).0, 200);
    h.finish(&mut ex, Ending::default());
    assert_eq!(h.depth(), 0);
}
