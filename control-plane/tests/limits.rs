//! Limits and budgets across edge instances (`POST /edge/v1/admit`), on SQLite and on
//! PostgreSQL: key and team limits through the admin API and in the key snapshot, concurrent
//! admissions through two control-plane nodes over one database that never overshoot,
//! settlement by usage records (once; failures release), and expiry of admissions whose
//! record never arrives.

mod common;

use common::{record, with, Engine, Plane, EDGE_TOKEN};
use control_plane::limits::{scope_state, ScopeState, DEFAULT_ADMISSION_TTL_MS};
use serde_json::{json, Value};
use switchyard_core::limits::{Quota, Scope};

/// `POST /edge/v1/admit` through `router`; returns (status, body).
async fn admit_on(
    router: axum::Router,
    id: String,
    scopes: Value,
    tokens: u64,
    cost_nano: i64,
) -> (u16, Value) {
    let body = json!({
        "request_id": id,
        "scopes": scopes,
        "estimate": {"tokens": tokens, "cost_nano": cost_nano},
    })
    .to_string();
    let request = axum::http::Request::post("/edge/v1/admit")
        .header("authorization", format!("Bearer {EDGE_TOKEN}"))
        .body(axum::body::Body::from(body))
        .unwrap();
    let response = tower::ServiceExt::oneshot(router, request).await.unwrap();
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

/// `POST /edge/v1/admit` on `plane`, estimating `usd`.
async fn admit(plane: &Plane, id: &str, scopes: &Value, tokens: u64, usd: f64) -> (u16, Value) {
    admit_on(
        plane.router.clone(),
        id.into(),
        scopes.clone(),
        tokens,
        nano(usd),
    )
    .await
}

fn key_scope(id: &str, quota: Value) -> Value {
    json!([{"name": format!("key:{id}"), "quota": quota}])
}

/// The stored state of the key scope `id` with `quota`.
async fn state(plane: &Plane, id: &str, quota: Value) -> ScopeState {
    use control_plane::clock::Clock;
    let quota: Quota = serde_json::from_value(quota).unwrap();
    let scope = Scope::key(id, &quota);
    let now_ms = plane.clock.now_ms();
    plane
        .location
        .open()
        .await
        .transact(move |tx| scope_state(tx, &scope, now_ms))
        .await
        .unwrap()
}

fn nano(usd: f64) -> i64 {
    (usd * 1e9).round() as i64
}

async fn limits_are_set_through_the_admin_api_and_carried_in_the_snapshot(engine: Engine) {
    let plane = Plane::new(engine).await;
    let team = plane
        .admin_ok(
            "POST",
            "/admin/v1/teams",
            Some(json!({"id": "research", "name": "Research",
                        "limits": {"rpm": 600, "budget": {"usd": 50.0, "period": "day"}}})),
            201,
        )
        .await;
    assert_eq!(team["limits"]["budget"]["period"], "day");
    let key = plane
        .admin_ok(
            "POST",
            "/admin/v1/keys",
            Some(json!({"id": "k1", "team": "research",
                        "limits": {"tpm": 10000, "concurrent": 4}})),
            201,
        )
        .await;
    assert_eq!(key["key"]["limits"], json!({"tpm": 10000, "concurrent": 4}));
    let snapshot = plane.edge_keys().await;
    assert_eq!(
        snapshot["keys"][0]["limits"],
        json!({"tpm": 10000, "concurrent": 4})
    );
    assert_eq!(
        snapshot["teams"]["research"],
        json!({"rpm": 600, "budget": {"usd": 50.0, "period": "day"}})
    );
    // The edge's own parser takes the snapshot as it is.
    let parsed = switchyard_core::control::KeySnapshot::parse(snapshot.to_string().as_bytes())
        .expect("the edge parses the snapshot");
    assert_eq!(parsed.keys[0].limits.as_ref().unwrap().concurrent, Some(4));
    assert_eq!(parsed.teams["research"].rpm, Some(600));

    // A team's limits changing is a new snapshot version; `null` clears.
    let version = snapshot["version"].as_u64().unwrap();
    plane
        .admin_ok(
            "PATCH",
            "/admin/v1/teams/research",
            Some(json!({"limits": null})),
            200,
        )
        .await;
    let snapshot = plane.edge_keys().await;
    assert!(snapshot["version"].as_u64().unwrap() > version);
    assert_eq!(snapshot["teams"], json!({}));
    let key = plane
        .admin_ok(
            "PATCH",
            "/admin/v1/keys/k1",
            Some(json!({"limits": {"budget": {"usd": 1.5}}})),
            200,
        )
        .await;
    assert_eq!(
        key["limits"],
        json!({"budget": {"usd": 1.5, "period": "month"}})
    );
    assert_eq!(
        plane.edge_keys().await["keys"][0]["limits"],
        json!({"budget": {"usd": 1.5, "period": "month"}})
    );

    // Bad limits are refused with the field named.
    for (body, needle) in [
        (json!({"limits": {"rpm": 0}}), "limits"),
        (json!({"limits": {"rpm": -1}}), "rpm"),
        (json!({"limits": {"budget": {"usd": -2}}}), "budget"),
        (json!({"limits": {"rps": 3}}), "rps"),
    ] {
        let error = plane
            .admin("PATCH", "/admin/v1/keys/k1", Some(body.clone()))
            .await
            .error(400);
        assert!(
            error["message"].as_str().unwrap().contains(needle),
            "{body}: {error}"
        );
    }
}

async fn concurrent_admissions_through_two_nodes_never_overshoot_the_budget(engine: Engine) {
    let one = Plane::new(engine).await;
    let two = Plane::at(one.location.clone()).await;
    let quota = json!({"budget": {"usd": 0.5, "period": "day"}});
    let scopes = key_scope("burst", quota.clone());
    // 200 requests, each reserving up to $0.01, at once through both nodes: 50 fit.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let plane = if i % 2 == 0 { &one } else { &two };
        let router = plane.router.clone();
        let scopes = scopes.clone();
        tasks.spawn(async move {
            let (status, _) = admit_on(router, format!("r{i}"), scopes, 100, 10_000_000).await;
            (i, status)
        });
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (i, 200) => admitted.push(i),
            (_, 429) => refused += 1,
            (_, other) => panic!("admission answered {other}"),
        }
    }
    assert_eq!((admitted.len(), refused), (50, 150));
    assert_eq!(
        state(&one, "burst", quota.clone()).await,
        ScopeState {
            spent_nano: 0,
            reserved_nano: nano(0.5),
            in_flight: 0
        }
    );
    // Their records arrive (half at less than estimated, a few failed): reservations become
    // real spending, and what they did not use admits more.
    let records: Vec<Value> = admitted
        .iter()
        .enumerate()
        .map(|(n, i)| {
            let (cost, status) = match n % 10 {
                0 => (0.0, 502),
                1..=4 => (0.004, 200),
                _ => (0.01, 200),
            };
            with(
                record(&format!("r{i}"), common::START_MS, "burst", None, cost),
                json!({"status": status}),
            )
        })
        .collect();
    assert_eq!(two.post_usage(&records).await.status, 200);
    let spent: i64 = records
        .iter()
        .map(|r| nano(r["cost"].as_f64().unwrap()))
        .sum();
    assert_eq!(
        state(&one, "burst", quota.clone()).await,
        ScopeState {
            spent_nano: spent,
            reserved_nano: 0,
            in_flight: 0
        }
    );
    // Again the rest of the budget, and not a cent more, is admitted.
    let left = nano(0.5) - spent;
    let mut more = 0;
    for i in 200..400 {
        let plane = if i % 2 == 0 { &one } else { &two };
        if admit(plane, &format!("r{i}"), &scopes, 100, 0.01).await.0 == 200 {
            more += 1;
        }
    }
    assert_eq!(more, left / nano(0.01));
    // A retried batch settles nothing twice.
    assert_eq!(one.post_usage(&records).await.json()["duplicates"], 50);
    let after = state(&one, "burst", quota).await;
    assert_eq!(after.spent_nano, spent);
    assert!(after.spent_nano + after.reserved_nano <= nano(0.5));
}

async fn requests_per_minute_and_concurrency_hold_across_nodes(engine: Engine) {
    let one = Plane::new(engine).await;
    let two = Plane::at(one.location.clone()).await;
    let scopes = json!([
        {"name": "key:k", "quota": {"rpm": 10}},
        {"name": "team:t", "quota": {"concurrent": 100}},
    ]);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let router = if i % 2 == 0 { &one } else { &two }.router.clone();
        let scopes = scopes.clone();
        tasks.spawn(admit_on(router, format!("q{i}"), scopes, 10, 0));
    }
    let mut admitted = 0;
    while let Some(result) = tasks.join_next().await {
        let (status, body) = result.unwrap();
        let header = |name: &str| {
            body["headers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h[0] == name)
                .map(|h| h[1].clone())
        };
        assert_eq!(header("x-ratelimit-limit-requests"), Some(json!("10")));
        if status == 200 {
            admitted += 1;
        } else {
            assert_eq!(status, 429);
            assert_eq!(body["refusal"]["code"], "rate_limit_exceeded");
            assert_eq!(body["refusal"]["retry_after"], 6, "{body}");
        }
    }
    assert_eq!(admitted, 10);
    // The team's concurrency counted only the admitted ones (refusals leave no trace).
    let team: Quota = serde_json::from_value(json!({"concurrent": 100})).unwrap();
    let team = Scope::team("t", &team);
    let store = one.location.open().await;
    let in_flight = store
        .transact(move |tx| scope_state(tx, &team, common::START_MS))
        .await
        .unwrap()
        .in_flight;
    assert_eq!(in_flight, 10);
    // Six seconds refill one request.
    one.clock.advance_ms(6_000);
    assert_eq!(admit(&one, "q-late", &scopes, 10, 0.0).await.0, 200);
}

async fn a_record_settles_its_admission_once_and_a_failure_releases_it(engine: Engine) {
    let plane = Plane::new(engine).await;
    let quota = json!({"concurrent": 1, "budget": {"usd": 1.0, "period": "total"}});
    let scopes = key_scope("k", quota.clone());
    assert_eq!(admit(&plane, "a", &scopes, 100, 0.8).await.0, 200);
    // Asking again for the same request admits it once.
    assert_eq!(admit(&plane, "a", &scopes, 100, 0.8).await.0, 200);
    let (status, body) = admit(&plane, "b", &scopes, 100, 0.1).await;
    assert_eq!(status, 429);
    assert_eq!(body["refusal"]["code"], "concurrency_limit_exceeded");
    // `a` failed: its record costs nothing, which releases its reservation and its slot.
    let failed = with(
        record("a", common::START_MS, "k", None, 0.0),
        json!({"status": 502, "input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0}),
    );
    assert_eq!(
        plane.post_usage(std::slice::from_ref(&failed)).await.status,
        200
    );
    assert_eq!(
        state(&plane, "k", quota.clone()).await,
        ScopeState {
            spent_nano: 0,
            reserved_nano: 0,
            in_flight: 0
        }
    );
    assert_eq!(admit(&plane, "b", &scopes, 100, 0.9).await.0, 200);
    // The failed record again (a retried batch) frees nothing of `b`'s.
    plane.post_usage(&[failed]).await;
    let (status, body) = admit(&plane, "c", &scopes, 100, 0.05).await;
    assert_eq!(
        (status, &body["refusal"]["code"]),
        (429, &json!("concurrency_limit_exceeded"))
    );
    plane
        .post_usage(&[record("b", common::START_MS, "k", None, 0.9)])
        .await;
    let (status, body) = admit(&plane, "c", &scopes, 100, 0.2).await;
    assert_eq!(status, 429);
    assert_eq!(body["refusal"]["code"], "insufficient_quota");
    assert!(
        body["refusal"]["message"]
            .as_str()
            .unwrap()
            .contains("$0.1 left"),
        "{body}"
    );
}

async fn an_admission_whose_record_never_arrives_expires_charging_its_estimate(engine: Engine) {
    let plane = Plane::new(engine).await;
    let quota = json!({"concurrent": 1, "budget": {"usd": 1.0, "period": "total"}});
    let scopes = key_scope("k", quota.clone());
    assert_eq!(admit(&plane, "lost", &scopes, 100, 0.6).await.0, 200);
    plane.clock.advance_ms(DEFAULT_ADMISSION_TTL_MS - 1_000);
    assert_eq!(
        admit(&plane, "x", &scopes, 100, 0.3).await.0,
        429,
        "not yet"
    );
    plane.clock.advance_ms(2_000);
    // Expired: the slot is free, and its estimate counts as spent until its record says.
    assert_eq!(admit(&plane, "y", &scopes, 100, 0.3).await.0, 200);
    assert_eq!(
        state(&plane, "k", quota.clone()).await,
        ScopeState {
            spent_nano: nano(0.6),
            reserved_nano: nano(0.3),
            in_flight: 1
        }
    );
    // Its record arrives late after all: the real $0.1 replaces the estimate.
    plane
        .post_usage(&[record("lost", common::START_MS, "k", None, 0.1)])
        .await;
    assert_eq!(
        state(&plane, "k", quota).await,
        ScopeState {
            spent_nano: nano(0.1),
            reserved_nano: nano(0.3),
            in_flight: 1
        }
    );
}

async fn admission_refuses_bad_input_in_the_edge_dialect(engine: Engine) {
    let plane = Plane::new(engine).await;
    let ok = json!({"request_id": "r", "scopes": [], "estimate": {"tokens": 1, "cost_nano": 0}})
        .to_string();
    let reply = plane
        .send("POST", "/edge/v1/admit", None, &[], Some(&ok))
        .await;
    reply.error(401);
    let reply = plane
        .send("POST", "/edge/v1/admit", Some("wrong"), &[], Some(&ok))
        .await;
    reply.error(401);
    for (body, needle) in [
        ("{", "JSON"),
        (r#"{"request_id": "r", "scopes": []}"#, "estimate"),
        (
            r#"{"request_id": "", "scopes": [], "estimate": {"tokens": 1, "cost_nano": 0}}"#,
            "request_id",
        ),
        (
            r#"{"request_id": "r", "scopes": [{"name": "key:k", "quota": {"rpm": 0}}], "estimate": {"tokens": 1, "cost_nano": 0}}"#,
            "scopes[0]",
        ),
        (
            r#"{"request_id": "r", "scopes": [], "estimate": {"tokens": 1, "cost_nano": -5}}"#,
            "cost_nano",
        ),
    ] {
        let reply = plane
            .send("POST", "/edge/v1/admit", Some(EDGE_TOKEN), &[], Some(body))
            .await;
        let error = reply.error(400);
        assert!(
            error["message"].as_str().unwrap().contains(needle),
            "{body}: {error}"
        );
    }
    // No scopes: admitted, nothing held.
    let reply = plane
        .send("POST", "/edge/v1/admit", Some(EDGE_TOKEN), &[], Some(&ok))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json(), json!({"headers": [], "refusal": null}));
}

on_both_engines!(
    limits_are_set_through_the_admin_api_and_carried_in_the_snapshot,
    concurrent_admissions_through_two_nodes_never_overshoot_the_budget,
    requests_per_minute_and_concurrency_hold_across_nodes,
    a_record_settles_its_admission_once_and_a_failure_releases_it,
    an_admission_whose_record_never_arrives_expires_charging_its_estimate,
    admission_refuses_bad_input_in_the_edge_dialect,
);
