//! Bad input of every kind gets a clear JSON error with the right status and never changes
//! anything, on SQLite and on PostgreSQL.

mod common;

use common::{record, with, Engine, Plane, ADMIN_KEY, EDGE_TOKEN, START_MS};
use serde_json::{json, Value};

async fn raw_admin(plane: &Plane, method: &str, path: &str, body: &str) -> common::Reply {
    plane
        .send(method, path, Some(ADMIN_KEY), &[], Some(body))
        .await
}

async fn admin_api_refuses_bad_bodies(engine: Engine) {
    let plane = Plane::new(engine).await;
    let version = plane.edge_keys().await["version"].clone();

    let cases: &[(&str, &str, &str, &str)] = &[
        ("POST", "/admin/v1/keys", "{\"id\": ", "invalid_json"),
        ("POST", "/admin/v1/keys", "not json", "invalid_json"),
        ("POST", "/admin/v1/keys", "", "invalid_json"),
        ("POST", "/admin/v1/keys", "[]", "invalid_value"),
        (
            "POST",
            "/admin/v1/keys",
            r#"{"models": "gpt-*"}"#,
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/keys",
            r#"{"expires_at": "tomorrow"}"#,
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/keys",
            r#"{"expires_at": -5}"#,
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/keys",
            r#"{"modles": ["*"]}"#,
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/keys",
            r#"{"models": []}"#,
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/keys",
            r#"{"models": [""]}"#,
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/keys",
            r#"{"id": "has space"}"#,
            "invalid_id",
        ),
        (
            "POST",
            "/admin/v1/keys",
            r#"{"id": "../etc"}"#,
            "invalid_id",
        ),
        (
            "POST",
            "/admin/v1/keys",
            r#"{"metadata": [1, 2]}"#,
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/keys",
            r#"{"label": "line\nbreak"}"#,
            "invalid_value",
        ),
        ("POST", "/admin/v1/teams", r#"{}"#, "missing_field"),
        (
            "POST",
            "/admin/v1/teams",
            r#"{"name": "   "}"#,
            "invalid_value",
        ),
        ("POST", "/admin/v1/teams", r#"{"name": 7}"#, "invalid_value"),
        (
            "POST",
            "/admin/v1/admin-keys",
            r#"{"name": "x", "role": "root"}"#,
            "invalid_value",
        ),
        (
            "POST",
            "/admin/v1/admin-keys",
            r#"{"name": "x"}"#,
            "missing_field",
        ),
    ];
    for (method, path, body, code) in cases {
        let error = raw_admin(&plane, method, path, body).await.error(400);
        assert_eq!(error["code"], *code, "{method} {path} {body}: {error}");
        assert_eq!(error["type"], "invalid_request_error");
    }
    // The message names the culprit.
    let error = raw_admin(&plane, "POST", "/admin/v1/keys", r#"{"modles": ["*"]}"#)
        .await
        .error(400);
    assert!(
        error["message"].as_str().unwrap().contains("modles"),
        "{error}"
    );
    let error = raw_admin(&plane, "POST", "/admin/v1/teams", "{}")
        .await
        .error(400);
    assert!(
        error["message"].as_str().unwrap().contains("name"),
        "{error}"
    );

    plane
        .admin_ok("POST", "/admin/v1/keys", Some(json!({"id": "k"})), 201)
        .await;
    let after_create = plane.edge_keys().await["version"].clone();
    for (method, path, body) in [
        ("PATCH", "/admin/v1/keys/k", r#"{"models": null}"#),
        ("PATCH", "/admin/v1/keys/k", r#"{"grace_period_s": 1}"#),
        (
            "POST",
            "/admin/v1/keys/k/rotate",
            r#"{"grace_period_s": -1}"#,
        ),
        (
            "POST",
            "/admin/v1/keys/k/rotate",
            r#"{"grace_period_s": 99999999}"#,
        ),
    ] {
        raw_admin(&plane, method, path, body).await.error(400);
    }
    // Nothing above changed what edges see.
    assert_eq!(plane.edge_keys().await["version"], after_create);
    assert_ne!(version, after_create);
}

async fn unknown_ids_and_conflicts(engine: Engine) {
    let plane = Plane::new(engine).await;
    for (method, path, body) in [
        ("GET", "/admin/v1/keys/nope", None),
        ("PATCH", "/admin/v1/keys/nope", Some(json!({"label": "x"}))),
        ("POST", "/admin/v1/keys/nope/revoke", None),
        ("POST", "/admin/v1/keys/nope/rotate", None),
        ("GET", "/admin/v1/teams/nope", None),
        ("PATCH", "/admin/v1/teams/nope", Some(json!({"name": "x"}))),
        ("DELETE", "/admin/v1/teams/nope", None),
        ("DELETE", "/admin/v1/admin-keys/nope", None),
        ("POST", "/admin/v1/keys", Some(json!({"team": "nope"}))),
        ("GET", "/admin/v1/no-such-thing", None),
    ] {
        let error = plane.admin(method, path, body).await.error(404);
        assert_eq!(error["type"], "not_found_error", "{method} {path}");
    }
    plane
        .admin_ok("POST", "/admin/v1/keys", Some(json!({"id": "dup"})), 201)
        .await;
    let error = plane
        .admin("POST", "/admin/v1/keys", Some(json!({"id": "dup"})))
        .await
        .error(409);
    assert_eq!(error["code"], "duplicate_id");
    plane
        .admin_ok("POST", "/admin/v1/keys/dup/revoke", None, 200)
        .await;
    for (method, path) in [
        ("POST", "/admin/v1/keys/dup/rotate"),
        ("PATCH", "/admin/v1/keys/dup"),
    ] {
        let error = plane.admin(method, path, Some(json!({}))).await.error(409);
        assert_eq!(error["code"], "key_revoked");
    }
}

async fn admin_authentication(engine: Engine) {
    let plane = Plane::new(engine).await;
    for (authorization, why) in [
        (None, "missing"),
        (Some("Bearer sk-sy-admin-wrong"), "wrong key"),
        (Some(format!("Basic {ADMIN_KEY}").as_str()), "wrong scheme"),
        (Some(format!("Bearer {EDGE_TOKEN}").as_str()), "edge token"),
    ]
    .map(|(a, why)| (a.map(str::to_string), why))
    {
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("authorization", a.as_str()))
            .collect();
        for (method, path) in [
            ("GET", "/admin/v1/keys"),
            ("POST", "/admin/v1/keys"),
            ("GET", "/admin/v1/usage"),
        ] {
            let reply = plane.send(method, path, None, &headers, Some("{}")).await;
            let error = reply.error(401);
            assert_eq!(error["type"], "authentication_error", "{why}");
        }
    }
    // Authentication is checked before the body is read: a bad body without a key is a 401.
    plane
        .send("POST", "/admin/v1/keys", None, &[], Some("not json"))
        .await
        .error(401);
}

async fn bad_queries(engine: Engine) {
    let plane = Plane::new(engine).await;
    for path in [
        "/admin/v1/usage?group_by=colour",
        "/admin/v1/usage?bucket=week",
        "/admin/v1/usage?from=yesterday",
        "/admin/v1/usage?from=2026-02-30",
        "/admin/v1/usage?from=2026-02-01&to=2026-01-01",
        "/admin/v1/invoices?from=2026-01-01&to=2026-02-01",
        "/admin/v1/invoices?team=a&to=2026-02-01",
        "/admin/v1/invoices?team=a&from=2026-01-01&to=2026-02-01&format=xml",
        "/admin/v1/requests?limit=0",
        "/admin/v1/requests?limit=lots",
        "/admin/v1/requests?limit=100000",
        "/admin/v1/keys?include_revoked=maybe",
    ] {
        let error = plane.admin("GET", path, None).await.error(400);
        assert!(!error["message"].as_str().unwrap().is_empty(), "{path}");
    }
}

async fn bad_usage_batches_store_nothing(engine: Engine) {
    let plane = Plane::new(engine).await;
    let good = record("good", START_MS, "k", None, 1.0);
    let mut missing = record("missing", START_MS, "k", None, 1.0);
    missing.as_object_mut().unwrap().remove("key_id");
    let cases: Vec<(Value, &str)> = vec![
        (missing, "key_id"),
        (
            with(
                record("x", START_MS, "k", None, 1.0),
                json!({"input_tokens": "many"}),
            ),
            "input_tokens",
        ),
        (
            with(
                record("x", START_MS, "k", None, 1.0),
                json!({"input_tokens": -1}),
            ),
            "input_tokens",
        ),
        (
            with(
                record("x", START_MS, "k", None, 1.0),
                json!({"status": 70000}),
            ),
            "status",
        ),
        (
            with(
                record("x", START_MS, "k", None, 1.0),
                json!({"stream": "yes"}),
            ),
            "stream",
        ),
        (
            with(record("x", START_MS, "k", None, 1.0), json!({"cost": -0.5})),
            "cost",
        ),
        (
            with(record("x", START_MS, "k", None, 1.0), json!({"cost": null})),
            "cost",
        ),
        (
            with(
                record("x", START_MS, "k", None, 1.0),
                json!({"price": {"input": 1.0}}),
            ),
            "output",
        ),
        (
            with(
                record("x", START_MS, "k", None, 1.0),
                json!({"request_id": ""}),
            ),
            "request_id",
        ),
        (
            with(
                record("x", START_MS, "k", None, 1.0),
                json!({"timestamp_ms": u64::MAX}),
            ),
            "timestamp_ms",
        ),
    ];
    for (bad, field) in cases {
        let reply = plane.post_usage(&[good.clone(), bad.clone()]).await;
        let error = reply.error(400);
        let message = error["message"].as_str().unwrap();
        assert!(
            message.starts_with("records[1]") && message.contains(field),
            "{field}: {message}"
        );
    }
    for body in ["", "{", r#"{"records": {}}"#, r#"{"recs": []}"#, "[]"] {
        plane
            .send("POST", "/edge/v1/usage", Some(EDGE_TOKEN), &[], Some(body))
            .await
            .error(400);
    }
    // None of the rejected batches stored their good record.
    let usage = plane.admin_ok("GET", "/admin/v1/usage", None, 200).await;
    assert_eq!(usage["totals"]["requests"], 0);
    // The good record alone goes in.
    let reply = plane.post_usage(&[good]).await;
    assert_eq!(reply.json(), json!({"accepted": 1, "duplicates": 0}));

    // A batch over the limit is refused as too large.
    let many: Vec<Value> = (0..10_001)
        .map(|i| record(&format!("m{i}"), START_MS, "k", None, 0.0))
        .collect();
    plane.post_usage(&many).await.error(413);
}

on_both_engines!(
    admin_api_refuses_bad_bodies,
    unknown_ids_and_conflicts,
    admin_authentication,
    bad_queries,
    bad_usage_batches_store_nothing,
);
