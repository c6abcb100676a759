//! Key lifecycle, rotation, revocation, teams, admin roles and the edge snapshot, on SQLite
//! and on PostgreSQL.

mod common;

use common::{Engine, Plane, ADMIN_KEY, EDGE_TOKEN};
use control_plane::secrets::sha256_hex;
use serde_json::{json, Value};

/// The snapshot entries of key `id`.
fn entries<'a>(snapshot: &'a Value, id: &str) -> Vec<&'a Value> {
    snapshot["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["id"] == id)
        .collect()
}

fn version(snapshot: &Value) -> u64 {
    snapshot["version"].as_u64().unwrap()
}

async fn key_lifecycle(engine: Engine) {
    let plane = Plane::new(engine).await;
    let v0 = version(&plane.edge_keys().await);
    plane
        .admin_ok(
            "POST",
            "/admin/v1/teams",
            Some(json!({"id": "research", "name": "Research"})),
            201,
        )
        .await;

    let created = plane
        .admin_ok(
            "POST",
            "/admin/v1/keys",
            Some(
                json!({"id": "alice", "label": "Alice's laptop", "team": "research",
                        "models": ["gpt-*", "smollm2"], "metadata": {"owner": "alice"}}),
            ),
            201,
        )
        .await;
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("sk-sy-") && secret.len() > 40,
        "{secret}"
    );
    assert_eq!(created["key"]["id"], "alice");
    assert_eq!(created["key"]["status"], "active");
    assert_eq!(
        created["key"]["secret_hint"],
        format!("…{}", &secret[secret.len() - 4..])
    );

    // The edge sees exactly the secret's hash, with the key's settings.
    let snapshot = plane.edge_keys().await;
    assert!(version(&snapshot) > v0);
    assert_eq!(
        entries(&snapshot, "alice"),
        vec![
            &json!({"id": "alice", "sha256": sha256_hex(&secret), "models": ["gpt-*", "smollm2"],
                     "expires_at": null, "label": "Alice's laptop", "team": "research"})
        ]
    );

    // After creation the admin API never shows the secret, nor its hash.
    for path in [
        "/admin/v1/keys/alice",
        "/admin/v1/keys",
        "/admin/v1/keys?team=research",
    ] {
        let reply = plane.admin("GET", path, None).await;
        assert_eq!(reply.status, 200);
        let text = reply.text();
        assert!(text.contains("\"alice\""), "{path}: {text}");
        assert!(
            !text.contains(&secret) && !text.contains(&sha256_hex(&secret)),
            "{path} leaks: {text}"
        );
    }

    // Update: each field, and null clears.
    let before = version(&plane.edge_keys().await);
    let expires_at = plane.now_s() + 3600;
    let updated = plane
        .admin_ok(
            "PATCH",
            "/admin/v1/keys/alice",
            Some(
                json!({"models": ["*"], "label": null, "team": null, "expires_at": expires_at,
                        "metadata": {"owner": "bob"}}),
            ),
            200,
        )
        .await;
    assert_eq!(updated["models"], json!(["*"]));
    assert_eq!(updated["label"], Value::Null);
    assert_eq!(updated["team"], Value::Null);
    assert_eq!(updated["expires_at"], expires_at);
    assert_eq!(updated["metadata"], json!({"owner": "bob"}));
    let snapshot = plane.edge_keys().await;
    assert!(version(&snapshot) > before);
    assert_eq!(entries(&snapshot, "alice")[0]["expires_at"], expires_at);
    assert_eq!(entries(&snapshot, "alice")[0]["models"], json!(["*"]));

    // Past its expiry the key leaves the snapshot and shows as expired.
    plane.clock.advance_ms(3601 * 1000);
    assert!(entries(&plane.edge_keys().await, "alice").is_empty());
    let key = plane
        .admin_ok("GET", "/admin/v1/keys/alice", None, 200)
        .await;
    assert_eq!(key["status"], "expired");
    plane
        .admin_ok(
            "PATCH",
            "/admin/v1/keys/alice",
            Some(json!({"expires_at": null})),
            200,
        )
        .await;
    assert_eq!(entries(&plane.edge_keys().await, "alice").len(), 1);

    // Revoke: gone from the snapshot, version bumped, listed only with include_revoked.
    let before = version(&plane.edge_keys().await);
    let revoked = plane
        .admin_ok("POST", "/admin/v1/keys/alice/revoke", None, 200)
        .await;
    assert_eq!(revoked["status"], "revoked");
    let snapshot = plane.edge_keys().await;
    assert!(entries(&snapshot, "alice").is_empty());
    assert!(version(&snapshot) > before);
    let listed = plane.admin_ok("GET", "/admin/v1/keys", None, 200).await;
    assert!(listed["keys"].as_array().unwrap().is_empty(), "{listed}");
    let listed = plane
        .admin_ok("GET", "/admin/v1/keys?include_revoked=true", None, 200)
        .await;
    assert_eq!(listed["keys"][0]["id"], "alice");
    // Revoking again changes nothing, not even the version.
    plane
        .admin_ok("POST", "/admin/v1/keys/alice/revoke", None, 200)
        .await;
    assert_eq!(version(&plane.edge_keys().await), version(&snapshot));

    // A generated id when none is given.
    let generated = plane
        .admin_ok("POST", "/admin/v1/keys", Some(json!({})), 201)
        .await;
    assert!(generated["key"]["id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(generated["key"]["models"], json!(["*"]));
}

async fn rotation_with_grace(engine: Engine) {
    let plane = Plane::new(engine).await;
    let created = plane
        .admin_ok("POST", "/admin/v1/keys", Some(json!({"id": "svc"})), 201)
        .await;
    let old_secret = created["secret"].as_str().unwrap().to_string();
    let before = version(&plane.edge_keys().await);

    let rotated = plane
        .admin_ok(
            "POST",
            "/admin/v1/keys/svc/rotate",
            Some(json!({"grace_period_s": 60})),
            200,
        )
        .await;
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, old_secret);
    let grace_end = plane.now_s() + 60;
    assert_eq!(rotated["key"]["previous_secret_expires_at"], grace_end);

    // In the grace period: both hashes under the same id, the old one ending with the grace.
    let snapshot = plane.edge_keys().await;
    assert!(version(&snapshot) > before);
    let svc = entries(&snapshot, "svc");
    assert_eq!(svc.len(), 2, "{snapshot}");
    let by_hash = |secret: &str| {
        svc.iter()
            .find(|k| k["sha256"] == sha256_hex(secret))
            .unwrap_or_else(|| panic!("no entry for a secret in {snapshot}"))
            .to_owned()
    };
    assert_eq!(by_hash(&old_secret)["expires_at"], grace_end);
    assert_eq!(by_hash(&new_secret)["expires_at"], Value::Null);

    // After the grace period only the new secret is left.
    plane.clock.advance_ms(61 * 1000);
    let snapshot = plane.edge_keys().await;
    let svc = entries(&snapshot, "svc");
    assert_eq!(svc.len(), 1);
    assert_eq!(svc[0]["sha256"], sha256_hex(&new_secret));

    // Without a grace period (an empty body) the old secret stops at once.
    let rotated = plane
        .admin_ok("POST", "/admin/v1/keys/svc/rotate", None, 200)
        .await;
    let newest = rotated["secret"].as_str().unwrap();
    let svc_entries = plane.edge_keys().await;
    let svc = entries(&svc_entries, "svc");
    assert_eq!(svc.len(), 1);
    assert_eq!(svc[0]["sha256"], sha256_hex(newest));

    // A key's expiry caps the grace of its old secret.
    let expires_at = plane.now_s() + 10;
    plane
        .admin_ok(
            "PATCH",
            "/admin/v1/keys/svc",
            Some(json!({"expires_at": expires_at})),
            200,
        )
        .await;
    plane
        .admin_ok(
            "POST",
            "/admin/v1/keys/svc/rotate",
            Some(json!({"grace_period_s": 600})),
            200,
        )
        .await;
    let snapshot = plane.edge_keys().await;
    for entry in entries(&snapshot, "svc") {
        assert_eq!(entry["expires_at"], expires_at, "{snapshot}");
    }
}

async fn etag_and_not_modified(engine: Engine) {
    let plane = Plane::new(engine).await;
    let first = plane
        .send("GET", "/edge/v1/keys", Some(EDGE_TOKEN), &[], None)
        .await;
    assert_eq!(first.status, 200);
    let etag = first.headers["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", first.json()["version"]));

    for if_none_match in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"999999\", {etag}"),
        "*".into(),
    ] {
        let cached = plane
            .send(
                "GET",
                "/edge/v1/keys",
                Some(EDGE_TOKEN),
                &[("if-none-match", &if_none_match)],
                None,
            )
            .await;
        assert_eq!(cached.status, 304, "If-None-Match: {if_none_match}");
        assert!(cached.body.is_empty());
        assert_eq!(cached.headers["etag"], etag.as_str());
    }

    plane
        .admin_ok("POST", "/admin/v1/keys", Some(json!({"id": "k1"})), 201)
        .await;
    let changed = plane
        .send(
            "GET",
            "/edge/v1/keys",
            Some(EDGE_TOKEN),
            &[("if-none-match", &etag)],
            None,
        )
        .await;
    assert_eq!(changed.status, 200);
    let new_etag = changed.headers["etag"].to_str().unwrap();
    assert_ne!(new_etag, etag);
    assert_eq!(entries(&changed.json(), "k1").len(), 1);
}

async fn edge_authentication(engine: Engine) {
    let plane = Plane::new(engine).await;
    for token in [None, Some("wrong-token"), Some(ADMIN_KEY)] {
        let keys = plane.send("GET", "/edge/v1/keys", token, &[], None).await;
        assert_eq!(keys.error(401)["type"], "authentication_error");
        let usage = plane
            .send(
                "POST",
                "/edge/v1/usage",
                token,
                &[],
                Some(r#"{"records":[]}"#),
            )
            .await;
        usage.error(401);
    }
    // The edge token opens nothing on the admin side.
    plane
        .send("GET", "/admin/v1/keys", Some(EDGE_TOKEN), &[], None)
        .await
        .error(401);

    // A control plane without any edge token refuses every edge call.
    let store = plane.location.open().await;
    let closed = control_plane::ControlPlane::new(
        store,
        std::sync::Arc::new(control_plane::clock::SystemClock),
        &[],
    )
    .unwrap();
    let request = axum::http::Request::builder()
        .uri("/edge/v1/keys")
        .header("authorization", format!("Bearer {EDGE_TOKEN}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(closed.router(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

async fn teams_lifecycle(engine: Engine) {
    let plane = Plane::new(engine).await;
    let team = plane
        .admin_ok(
            "POST",
            "/admin/v1/teams",
            Some(json!({"name": "Platform", "metadata": {"cc": "42"}})),
            201,
        )
        .await;
    let id = team["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("team_"));
    assert_eq!(team["active_keys"], 0);

    plane
        .admin("POST", "/admin/v1/teams", Some(json!({"name": "Platform"})))
        .await
        .error(409);
    plane
        .admin(
            "POST",
            "/admin/v1/teams",
            Some(json!({"id": id, "name": "Other"})),
        )
        .await
        .error(409);

    let renamed = plane
        .admin_ok(
            "PATCH",
            &format!("/admin/v1/teams/{id}"),
            Some(json!({"name": "Platform eng"})),
            200,
        )
        .await;
    assert_eq!(renamed["name"], "Platform eng");
    assert_eq!(renamed["metadata"], json!({"cc": "42"}));
    plane
        .admin_ok(
            "POST",
            "/admin/v1/teams",
            Some(json!({"name": "Data"})),
            201,
        )
        .await;
    plane
        .admin(
            "PATCH",
            &format!("/admin/v1/teams/{id}"),
            Some(json!({"name": "Data"})),
        )
        .await
        .error(409);

    plane
        .admin_ok(
            "POST",
            "/admin/v1/keys",
            Some(json!({"id": "pk", "team": id})),
            201,
        )
        .await;
    let team = plane
        .admin_ok("GET", &format!("/admin/v1/teams/{id}"), None, 200)
        .await;
    assert_eq!(team["active_keys"], 1);
    let error = plane
        .admin("DELETE", &format!("/admin/v1/teams/{id}"), None)
        .await
        .error(409);
    assert_eq!(error["code"], "team_not_empty");

    plane
        .admin_ok("POST", "/admin/v1/keys/pk/revoke", None, 200)
        .await;
    plane
        .admin_ok("DELETE", &format!("/admin/v1/teams/{id}"), None, 200)
        .await;
    plane
        .admin("GET", &format!("/admin/v1/teams/{id}"), None)
        .await
        .error(404);
    let teams = plane.admin_ok("GET", "/admin/v1/teams", None, 200).await;
    let names: Vec<&str> = teams["teams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Data"]);
}

async fn admin_roles(engine: Engine) {
    let plane = Plane::new(engine).await;
    let me = plane.admin_ok("GET", "/admin/v1/me", None, 200).await;
    assert_eq!(me["role"], "admin");

    let reader = plane
        .admin_ok(
            "POST",
            "/admin/v1/admin-keys",
            Some(json!({"name": "auditor", "role": "read_only"})),
            201,
        )
        .await;
    let reader_secret = reader["secret"].as_str().unwrap().to_string();
    assert!(reader_secret.starts_with("sk-sy-admin-"));
    let reader_id = reader["admin_key"]["id"].as_str().unwrap().to_string();
    plane
        .admin(
            "POST",
            "/admin/v1/admin-keys",
            Some(json!({"name": "auditor", "role": "admin"})),
        )
        .await
        .error(409);

    // read_only reads everything but admin keys, and writes nothing.
    for path in [
        "/admin/v1/me",
        "/admin/v1/keys",
        "/admin/v1/teams",
        "/admin/v1/usage",
        "/admin/v1/requests",
    ] {
        let reply = plane.admin_as(&reader_secret, "GET", path, None).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }
    for (method, path, body) in [
        ("POST", "/admin/v1/keys", json!({})),
        ("POST", "/admin/v1/teams", json!({"name": "x"})),
        ("GET", "/admin/v1/admin-keys", Value::Null),
        (
            "POST",
            "/admin/v1/admin-keys",
            json!({"name": "y", "role": "admin"}),
        ),
    ] {
        let body = (!body.is_null()).then_some(body);
        let error = plane
            .admin_as(&reader_secret, method, path, body)
            .await
            .error(403);
        assert_eq!(error["type"], "permission_error");
    }

    // The admin list never shows secrets or hashes.
    let list = plane.admin("GET", "/admin/v1/admin-keys", None).await;
    assert_eq!(list.status, 200);
    assert!(
        !list.text().contains(&reader_secret) && !list.text().contains(&sha256_hex(&reader_secret))
    );
    assert!(!list.text().contains(&sha256_hex(ADMIN_KEY)));
    assert_eq!(list.json()["admin_keys"].as_array().unwrap().len(), 2);

    // A revoked admin key stops working.
    plane
        .admin_ok(
            "DELETE",
            &format!("/admin/v1/admin-keys/{reader_id}"),
            None,
            200,
        )
        .await;
    plane
        .admin_as(&reader_secret, "GET", "/admin/v1/me", None)
        .await
        .error(401);

    // The last admin cannot be revoked; with a second admin it can.
    let me_id = me["id"].as_str().unwrap().to_string();
    let error = plane
        .admin("DELETE", &format!("/admin/v1/admin-keys/{me_id}"), None)
        .await
        .error(409);
    assert_eq!(error["code"], "last_admin");
    let second = plane
        .admin_ok(
            "POST",
            "/admin/v1/admin-keys",
            Some(json!({"name": "second", "role": "admin"})),
            201,
        )
        .await;
    plane
        .admin_ok(
            "DELETE",
            &format!("/admin/v1/admin-keys/{me_id}"),
            None,
            200,
        )
        .await;
    plane.admin("GET", "/admin/v1/me", None).await.error(401);
    let second_secret = second["secret"].as_str().unwrap();
    let me = plane
        .admin_as(second_secret, "GET", "/admin/v1/me", None)
        .await;
    assert_eq!(me.json()["name"], "second");
}

async fn restart_keeps_state_and_migrates_once(engine: Engine) {
    let plane = Plane::new(engine).await;
    let created = plane
        .admin_ok(
            "POST",
            "/admin/v1/keys",
            Some(json!({"id": "durable"})),
            201,
        )
        .await;
    let secret = created["secret"].as_str().unwrap().to_string();
    let version_before = version(&plane.edge_keys().await);

    // A second plane over the same database: migrations find nothing to do; state survives.
    let restarted = Plane::at(plane.location.clone()).await;
    let snapshot = restarted.edge_keys().await;
    assert_eq!(version(&snapshot), version_before);
    assert_eq!(
        entries(&snapshot, "durable")[0]["sha256"],
        sha256_hex(&secret)
    );
    let store = restarted.location.open().await;
    let migrations = store
        .transact(|tx| {
            tx.query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .and_then(|rows| {
                rows.iter()
                    .map(|row| row.int(0))
                    .collect::<Result<Vec<_>, _>>()
            })
        })
        .await
        .unwrap();
    // Each migration applied exactly once.
    assert_eq!(migrations, vec![1, 2, 3]);
}

on_both_engines!(
    key_lifecycle,
    rotation_with_grace,
    etag_and_not_modified,
    edge_authentication,
    teams_lifecycle,
    admin_roles,
    restart_keeps_state_and_migrates_once,
);
