//! The task plane end to end over HTTP, on SQLite and PostgreSQL: the task lifecycle,
//! idempotency, privacy between keys, fallback, cancel, deadlines, signed webhooks with
//! retries, dead letters and redelivery, bad input, and recovery of a dead node's tasks.

mod common;

use std::time::Duration;

use common::{Engine, Harness, KEY_ONE, KEY_SOLO, KEY_TWO};
use serde_json::{json, Value};
use switchyard_core::tasks::webhook::{SignedHeaders, WebhookSecret};

const LIMIT: Duration = Duration::from_secs(20);

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn verify(secret: &str, received: &common::Received) -> Value {
    let h = |name: &str| received.headers.get(name).and_then(|v| v.to_str().ok());
    WebhookSecret::parse(secret)
        .unwrap()
        .verify(
            &SignedHeaders {
                id: h("webhook-id"),
                timestamp: h("webhook-timestamp"),
                signature: h("webhook-signature"),
            },
            &received.body,
            now_s(),
            300,
        )
        .expect("the webhook signature verifies");
    serde_json::from_slice(&received.body).unwrap()
}

async fn chat_task_runs_bills_once_and_sends_a_signed_webhook(engine: Engine) {
    let h = Harness::start(engine).await;
    let secret = h.secret(KEY_ONE).await;
    assert!(secret.starts_with("whsec_"));
    let submitted = h
        .submit_chat(KEY_ONE, "hello tasks", Some(&h.receiver.url()))
        .await;
    let id = submitted["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("task_"));
    assert_eq!(submitted["object"], "task");
    assert_eq!(submitted["operation"], "chat.completions");
    assert!(["queued", "running"].contains(&submitted["status"].as_str().unwrap()));

    let task = h.wait_final(KEY_ONE, &id, LIMIT).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(
        task["result"]["choices"][0]["message"]["content"],
        "echo: hello tasks"
    );
    assert_eq!(task["usage"]["input_tokens"], 11);
    assert_eq!(task["usage"]["output_tokens"], 3);
    let expected_cost = (11.0 * 2.0 + 3.0 * 8.0) / 1e6;
    assert!((task["cost_usd"].as_f64().unwrap() - expected_cost).abs() < 1e-12);
    assert_eq!(
        task["attempts"],
        json!([{"deployment": "primary/up-chat", "outcome": "succeeded"}])
    );
    assert_eq!(task["progress"], 1.0);

    // Exactly one ledger record, with the provider's tokens and the price's cost.
    let records = h.ledger(&id).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].0, 200);
    assert_eq!((records[0].2, records[0].3), (11, 3));
    assert!((records[0].1 - expected_cost).abs() < 1e-12);

    // One webhook, signed with the key's secret, carrying the final task.
    let received = h.receiver.wait_for(1, LIMIT).await;
    let payload = verify(&secret, &received[0]);
    assert_eq!(payload["type"], "task.succeeded");
    assert_eq!(payload["data"]["id"], id.as_str());
    assert_eq!(payload["data"]["status"], "succeeded");
    assert_eq!(payload["data"]["result"], task["result"]);
    let webhook_id = received[0].headers["webhook-id"].to_str().unwrap();
    assert!(webhook_id.starts_with("msg_"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.receiver.received().len(), 1, "delivered once");

    let deliveries = h.wait_webhook_settled(KEY_ONE, &id, LIMIT).await;
    assert_eq!(deliveries["data"][0]["id"], webhook_id);
    assert_eq!(deliveries["data"][0]["status"], "delivered");
    assert_eq!(deliveries["data"][0]["attempts"], 1);
}

async fn embeddings_and_anthropic_messages_run_as_tasks(engine: Engine) {
    let h = Harness::start(engine).await;
    let embed = h
        .post(
            "/v1/tasks",
            KEY_ONE,
            json!({"model": "embed", "input": {"input": "hi"}}),
        )
        .await;
    assert_eq!(embed.status, 202);
    let task = h
        .wait_final(KEY_ONE, embed.json()["id"].as_str().unwrap(), LIMIT)
        .await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["operation"], "embeddings");
    assert_eq!(task["result"]["data"][0]["embedding"], json!([0.25, -0.5]));
    assert_eq!(task["usage"]["input_tokens"], 2);

    // An Anthropic Messages request through the endpoint-shaped submission, answered async.
    let reply = h
        .call(
            "POST",
            "/v1/tasks",
            Some(KEY_ONE),
            &[
                ("x-switchyard-operation", "messages"),
                ("prefer", "respond-async"),
            ],
            Some(
                json!({"model": "chat", "max_tokens": 20,
                       "messages": [{"role": "user", "content": "bonjour"}]})
                .to_string()
                .into_bytes(),
            ),
        )
        .await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let id = reply.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/tasks/{id}").as_str())
    );
    let task = h.wait_final(KEY_ONE, &id, LIMIT).await;
    assert_eq!(task["operation"], "messages");
    assert_eq!(task["result"]["type"], "message");
    assert_eq!(task["result"]["content"][0]["text"], "echo: bonjour");

    // Without `Prefer: respond-async` the same submission waits and answers like the endpoint.
    let reply = h
        .call(
            "POST",
            "/v1/tasks",
            Some(KEY_ONE),
            &[("x-switchyard-operation", "chat.completions")],
            Some(
                json!({"model": "chat", "messages": [{"role": "user", "content": "sync"}]})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "echo: sync"
    );
    assert!(reply
        .header("x-switchyard-task-id")
        .unwrap()
        .starts_with("task_"));
}

async fn idempotency_key_returns_the_same_task(engine: Engine) {
    let h = Harness::start(engine).await;
    let body =
        json!({"model": "chat", "input": {"messages": [{"role": "user", "content": "once"}]}});
    let submit = |key: &'static str, body: Value| {
        let h = &h;
        async move {
            h.call(
                "POST",
                "/v1/tasks",
                Some(key),
                &[("idempotency-key", "order-42")],
                Some(body.to_string().into_bytes()),
            )
            .await
        }
    };
    let first = submit(KEY_ONE, body.clone()).await;
    let again = submit(KEY_ONE, body.clone()).await;
    assert_eq!(first.status, 202);
    assert_eq!(again.status, 202);
    assert_eq!(first.json()["id"], again.json()["id"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.header("idempotent-replayed"), None);
    let id = first.json()["id"].as_str().unwrap().to_string();
    h.wait_final(KEY_ONE, &id, LIMIT).await;
    assert_eq!(h.primary.calls(), 1, "a replayed submit runs nothing");
    // After it finished, a retry still finds it (now succeeded).
    let late = submit(KEY_ONE, body.clone()).await;
    assert_eq!(late.json()["id"], id.as_str());
    assert_eq!(late.json()["status"], "succeeded");

    let mut different = body.clone();
    different["input"]["messages"][0]["content"] = json!("twice");
    let reused = submit(KEY_ONE, different).await;
    assert_eq!(reused.status, 409);
    assert_eq!(reused.json()["error"]["code"], "idempotency_key_reused");
    // Another key's idempotency keys are its own.
    let other = submit(KEY_TWO, body).await;
    assert_eq!(other.status, 202);
    assert_ne!(other.json()["id"], id.as_str());
}

async fn tasks_are_private_to_their_key(engine: Engine) {
    let h = Harness::start(engine).await;
    let mine = h.submit_chat(KEY_ONE, "mine", None).await;
    let id = mine["id"].as_str().unwrap();
    h.wait_final(KEY_ONE, id, LIMIT).await;
    let unknown = h
        .get("/v1/tasks/task_000000000000000000000000", KEY_TWO)
        .await;
    let foreign = h.get(&format!("/v1/tasks/{id}"), KEY_TWO).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(foreign.status, 404);
    assert_eq!(foreign.json()["error"]["code"], "task_not_found");
    assert_eq!(
        foreign.json()["error"]["type"],
        unknown.json()["error"]["type"]
    );
    for path in [
        format!("/v1/tasks/{id}/cancel"),
        format!("/v1/tasks/{id}/webhooks/redeliver"),
    ] {
        let reply = h.call("POST", &path, Some(KEY_TWO), &[], None).await;
        assert_eq!(reply.status, 404, "{path}");
    }
    assert_eq!(
        h.get(&format!("/v1/tasks/{id}/webhooks"), KEY_TWO)
            .await
            .status,
        404
    );

    // Lists: only the key's own, newest first, paged.
    let second = h.submit_chat(KEY_ONE, "mine too", None).await;
    let theirs = h.submit_chat(KEY_TWO, "theirs", None).await;
    let page = h.get("/v1/tasks?limit=1", KEY_ONE).await.json();
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["id"], second["id"]);
    assert_eq!(page["has_more"], true);
    let next = h
        .get(
            &format!("/v1/tasks?limit=1&after={}", second["id"].as_str().unwrap()),
            KEY_ONE,
        )
        .await
        .json();
    assert_eq!(next["data"][0]["id"], id);
    assert_eq!(next["has_more"], false);
    let all_two = h.get("/v1/tasks", KEY_TWO).await.json();
    let ids: Vec<&Value> = all_two["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["id"])
        .collect();
    assert_eq!(ids, vec![&theirs["id"]]);
    let succeeded = h.get("/v1/tasks?status=succeeded", KEY_ONE).await.json();
    assert!(succeeded["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["status"] == "succeeded"));
    // Another key's task is not a cursor either.
    let cursor = h
        .get(
            &format!("/v1/tasks?after={}", theirs["id"].as_str().unwrap()),
            KEY_ONE,
        )
        .await;
    assert_eq!(cursor.status, 400);
}

async fn bad_input_is_refused_in_the_callers_dialect(engine: Engine) {
    let h = Harness::start(engine).await;
    let chat = |model: &str| json!({"model": model, "input": {"messages": [{"role": "user", "content": "x"}]}});
    let cases: Vec<(Value, u16, &str)> = vec![
        (chat("no-such-model"), 404, "model_not_found"),
        (json!({"model": "chat", "input": {"prompt": "?"}}), 400, ""),
        (json!({"model": "chat"}), 400, ""),
        (
            json!({"model": "chat", "input": {"messages": "nope"}}),
            400,
            "",
        ),
        (
            json!({"model": "chat", "input": {"messages": []}, "extra": 1}),
            400,
            "",
        ),
        (
            json!({"model": "chat", "input": {"messages": [{"role": "user", "content": "x"}], "stream": true}}),
            400,
            "",
        ),
    ];
    for (body, status, code) in cases {
        let reply = h.post("/v1/tasks", KEY_ONE, body.clone()).await;
        assert_eq!(
            reply.status,
            status,
            "{body}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let error = &reply.json()["error"];
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        if !code.is_empty() {
            assert_eq!(error["code"], code);
        }
    }
    for url in [
        "ftp://example.com/hook",
        "not a url",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.8/hook",
        "https://user:pw@example.com/",
    ] {
        let mut body = chat("chat");
        body["webhook"] = json!(url);
        let reply = h.post("/v1/tasks", KEY_ONE, body).await;
        assert_eq!(reply.status, 400, "{url}");
        assert_eq!(reply.json()["error"]["code"], "invalid_webhook_url");
        assert_eq!(reply.json()["error"]["param"], "webhook");
    }
    let malformed = h
        .call(
            "POST",
            "/v1/tasks",
            Some(KEY_ONE),
            &[],
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_eq!(malformed.status, 400);
    let no_key = h
        .call(
            "POST",
            "/v1/tasks",
            None,
            &[],
            Some(chat("chat").to_string().into_bytes()),
        )
        .await;
    assert_eq!(no_key.status, 401);
    assert_eq!(no_key.json()["error"]["type"], "authentication_error");
    let wrong_key = h.post("/v1/tasks", "sk-wrong", chat("chat")).await;
    assert_eq!(wrong_key.status, 401);
    let not_allowed = h.post("/v1/tasks", KEY_SOLO, chat("chat")).await;
    assert_eq!(not_allowed.status, 403);
    assert_eq!(not_allowed.json()["error"]["code"], "model_not_allowed");
    assert_eq!(
        h.post("/v1/tasks", KEY_SOLO, chat("solo")).await.status,
        202
    );
    let mut huge = chat("chat");
    huge["input"]["messages"][0]["content"] = json!("x".repeat(100 * 1024));
    let too_large = h.post("/v1/tasks", KEY_ONE, huge).await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.json()["error"]["code"], "request_too_large");
    let long_key = "k".repeat(300);
    let bad_idem = h
        .call(
            "POST",
            "/v1/tasks",
            Some(KEY_ONE),
            &[("idempotency-key", &long_key)],
            Some(chat("chat").to_string().into_bytes()),
        )
        .await;
    assert_eq!(bad_idem.status, 400);
    let bad_op = h
        .call(
            "POST",
            "/v1/tasks",
            Some(KEY_ONE),
            &[("x-switchyard-operation", "teleport")],
            Some(chat("chat").to_string().into_bytes()),
        )
        .await;
    assert_eq!(bad_op.status, 400);
    // An Anthropic-dialect submission is refused in Anthropic's shape.
    let anthropic = h
        .call(
            "POST",
            "/v1/tasks",
            Some(KEY_ONE),
            &[
                ("x-switchyard-operation", "messages"),
                ("prefer", "respond-async"),
            ],
            Some(
                json!({"model": "chat", "messages": "no"})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(anthropic.status, 400);
    assert_eq!(anthropic.json()["type"], "error");
    assert_eq!(anthropic.json()["error"]["type"], "invalid_request_error");
    for query in ["limit=0", "limit=101", "status=done", "colour=red"] {
        assert_eq!(
            h.get(&format!("/v1/tasks?{query}"), KEY_ONE).await.status,
            400,
            "{query}"
        );
    }
    let settings = h
        .post(
            "/v1/webhook-settings",
            KEY_ONE,
            json!({"url": "gopher://x"}),
        )
        .await;
    assert_eq!(settings.status, 400);
    // The edge's key id header means nothing without the edge token.
    let spoofed = h
        .call(
            "GET",
            "/v1/tasks",
            Some("sk-wrong"),
            &[("x-switchyard-key-id", "one")],
            None,
        )
        .await;
    assert_eq!(spoofed.status, 401);
}

async fn edge_callers_are_trusted_only_with_the_edge_token(engine: Engine) {
    let h = Harness::start(engine).await;
    let mine = h.submit_chat(KEY_ONE, "via key", None).await;
    let id = mine["id"].as_str().unwrap();
    let via_edge = h
        .call(
            "GET",
            &format!("/v1/tasks/{id}"),
            Some(common::EDGE_TOKEN),
            &[("x-switchyard-key-id", "one")],
            None,
        )
        .await;
    assert_eq!(via_edge.status, 200);
    assert_eq!(via_edge.json()["id"], id);
    let other = h
        .call(
            "GET",
            &format!("/v1/tasks/{id}"),
            Some(common::EDGE_TOKEN),
            &[("x-switchyard-key-id", "two")],
            None,
        )
        .await;
    assert_eq!(other.status, 404);
    let nameless = h
        .call("GET", "/v1/tasks", Some(common::EDGE_TOKEN), &[], None)
        .await;
    assert_eq!(nameless.status, 401);
}

async fn a_failed_attempt_falls_back_once_then_the_task_fails_with_the_reason(engine: Engine) {
    let h = Harness::start(engine).await;
    h.primary.fail_next(&[503]);
    let id = h.submit_chat(KEY_ONE, "fall back", None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let task = h.wait_final(KEY_ONE, &id, LIMIT).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(
        task["attempts"],
        json!([{"deployment": "primary/up-chat", "outcome": "status 503"},
               {"deployment": "backup/up-chat-b", "outcome": "succeeded"}])
    );
    // Billed at the backup's price.
    assert!((task["cost_usd"].as_f64().unwrap() - (11.0 + 3.0 * 4.0) / 1e6).abs() < 1e-12);

    h.primary.fail_next(&[503]);
    h.backup.fail_next(&[500]);
    let secret = h.secret(KEY_ONE).await;
    let id = h
        .submit_chat(KEY_ONE, "no luck", Some(&h.receiver.url()))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let task = h.wait_final(KEY_ONE, &id, LIMIT).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error"]["code"], "all_attempts_failed");
    assert_eq!(task["error"]["status"], 502);
    let message = task["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("primary/up-chat (status 503)"),
        "{message}"
    );
    assert!(
        message.contains("backup/up-chat-b (status 500)"),
        "{message}"
    );
    assert_eq!(h.ledger(&id).await.len(), 1);
    assert_eq!(h.ledger(&id).await[0].0, 502);
    let received = h.receiver.wait_for(1, LIMIT).await;
    let payload = verify(&secret, &received[0]);
    assert_eq!(payload["type"], "task.failed");
    assert_eq!(payload["data"]["error"]["code"], "all_attempts_failed");

    // A final (non-retryable) provider error is the answer, without fallback.
    h.primary.fail_next(&[400]);
    let id = h.submit_chat(KEY_ONE, "refused", None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let task = h.wait_final(KEY_ONE, &id, LIMIT).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error"]["status"], 400);
    assert_eq!(task["attempts"].as_array().unwrap().len(), 1);
}

async fn a_task_that_never_finishes_fails_at_its_deadline(engine: Engine) {
    let h = Harness::start_with(
        engine,
        task_plane::Settings {
            task_timeout_ms: 1_500,
            ..common::test_settings()
        },
    )
    .await;
    h.primary.delay(10_000);
    h.backup.delay(10_000);
    let id = h.submit_chat(KEY_ONE, "slow", None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let task = h.wait_final(KEY_ONE, &id, LIMIT).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "task_timeout");
    assert_eq!(task["error"]["status"], 504);
    assert!(task["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1500 ms"));
    assert_eq!(h.ledger(&id).await[0].0, 504);
}

async fn cancel_ends_queued_tasks_and_refuses_finished_ones(engine: Engine) {
    let h = Harness::start_with(
        engine,
        task_plane::Settings {
            concurrency: 1,
            ..common::test_settings()
        },
    )
    .await;
    let secret = h.secret(KEY_ONE).await;
    h.primary.delay(1_500);
    let busy = h.submit_chat(KEY_ONE, "busy", None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = h
        .submit_chat(KEY_ONE, "waiting", Some(&h.receiver.url()))
        .await;
    let waiting_id = waiting["id"].as_str().unwrap();
    let canceled = h
        .call(
            "POST",
            &format!("/v1/tasks/{waiting_id}/cancel"),
            Some(KEY_ONE),
            &[],
            None,
        )
        .await;
    assert_eq!(
        canceled.status,
        200,
        "{}",
        String::from_utf8_lossy(&canceled.body)
    );
    assert_eq!(canceled.json()["status"], "canceled");
    assert_eq!(canceled.json()["error"]["code"], "task_canceled");
    let received = h.receiver.wait_for(1, LIMIT).await;
    assert_eq!(verify(&secret, &received[0])["type"], "task.canceled");
    assert_eq!(h.ledger(waiting_id).await, vec![(499, 0.0, 0, 0)]);
    h.wait_final(KEY_ONE, &busy, LIMIT).await;
    assert_eq!(h.primary.calls(), 1, "the canceled task never ran");
    let again = h
        .call(
            "POST",
            &format!("/v1/tasks/{busy}/cancel"),
            Some(KEY_ONE),
            &[],
            None,
        )
        .await;
    assert_eq!(again.status, 409);
    assert_eq!(again.json()["error"]["code"], "task_already_finished");
}

async fn webhooks_retry_with_backoff_honour_retry_after_then_dead_letter_and_redeliver(
    engine: Engine,
) {
    let h = Harness::start(engine).await;
    let secret = h.secret(KEY_ONE).await;
    h.receiver
        .state
        .lock()
        .unwrap()
        .answers
        .extend([(503, Some("1".to_string())), (500, None)]);
    let id = h
        .submit_chat(KEY_ONE, "retry me", Some(&h.receiver.url()))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let received = h.receiver.wait_for(3, LIMIT).await;
    let gap = received[1].at - received[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 honoured, got {gap:?}"
    );
    let ids: Vec<&str> = received
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one webhook-id across retries: {ids:?}"
    );
    for r in &received {
        assert_eq!(verify(&secret, r)["data"]["id"], id.as_str());
    }
    let deliveries = h.wait_webhook_settled(KEY_ONE, &id, LIMIT).await;
    assert_eq!(deliveries["data"][0]["status"], "delivered");
    assert_eq!(deliveries["data"][0]["attempts"], 3);

    // Every attempt fails: dead after the configured 4, then redelivered on request.
    h.receiver.state.lock().unwrap().always = Some(500);
    let id = h
        .submit_chat(KEY_ONE, "doomed", Some(&h.receiver.url()))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.receiver.wait_for(3 + 4, LIMIT).await;
    let dead = h.wait_webhook_settled(KEY_ONE, &id, LIMIT).await;
    assert_eq!(dead["data"][0]["status"], "dead");
    assert_eq!(dead["data"][0]["attempts"], 4);
    assert_eq!(dead["data"][0]["last_status"], 500);
    assert!(dead["data"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("gave up after 4 attempts"));
    h.receiver.state.lock().unwrap().always = None;
    let redeliver = h
        .call(
            "POST",
            &format!("/v1/tasks/{id}/webhooks/redeliver"),
            Some(KEY_ONE),
            &[],
            None,
        )
        .await;
    assert_eq!(redeliver.status, 202);
    assert_eq!(redeliver.json()["redelivered"], 1);
    let received = h.receiver.wait_for(3 + 4 + 1, LIMIT).await;
    let last = received.last().unwrap();
    assert_eq!(verify(&secret, last)["data"]["id"], id.as_str());
    assert_eq!(
        last.headers["webhook-id"], received[3].headers["webhook-id"],
        "a redelivery keeps the webhook-id"
    );

    // 410 Gone is final at once.
    h.receiver
        .state
        .lock()
        .unwrap()
        .answers
        .push_back((410, None));
    let id = h
        .submit_chat(KEY_ONE, "gone", Some(&h.receiver.url()))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.wait_final(KEY_ONE, &id, LIMIT).await;
    let gone = h.wait_webhook_settled(KEY_ONE, &id, LIMIT).await;
    assert_eq!(gone["data"][0]["status"], "dead");
    assert_eq!(gone["data"][0]["attempts"], 1);
    // A task without a webhook has nothing to redeliver.
    let quiet = h.submit_chat(KEY_TWO, "quiet", None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.wait_final(KEY_TWO, &quiet, LIMIT).await;
    let none = h
        .call(
            "POST",
            &format!("/v1/tasks/{quiet}/webhooks/redeliver"),
            Some(KEY_TWO),
            &[],
            None,
        )
        .await;
    assert_eq!(none.status, 409);
}

async fn webhook_settings_give_a_default_url_and_rotate_the_secret(engine: Engine) {
    let h = Harness::start(engine).await;
    let first = h.secret(KEY_TWO).await;
    assert_eq!(h.secret(KEY_TWO).await, first, "stable until rotated");
    let updated = h
        .post(
            "/v1/webhook-settings",
            KEY_TWO,
            json!({"url": h.receiver.url(), "rotate_secret": true}),
        )
        .await
        .json();
    let rotated = updated["secret"].as_str().unwrap().to_string();
    assert_ne!(rotated, first);
    assert_eq!(updated["url"], h.receiver.url().as_str());
    // The key's default URL is used when a task names none.
    let id = h.submit_chat(KEY_TWO, "default hook", None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let received = h.receiver.wait_for(1, LIMIT).await;
    assert_eq!(verify(&rotated, &received[0])["data"]["id"], id.as_str());
    assert!(WebhookSecret::parse(&first)
        .unwrap()
        .verify(
            &SignedHeaders {
                id: received[0]
                    .headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok()),
                timestamp: received[0]
                    .headers
                    .get("webhook-timestamp")
                    .and_then(|v| v.to_str().ok()),
                signature: received[0]
                    .headers
                    .get("webhook-signature")
                    .and_then(|v| v.to_str().ok()),
            },
            &received[0].body,
            now_s(),
            300
        )
        .is_err());
    let cleared = h
        .post("/v1/webhook-settings", KEY_TWO, json!({"url": null}))
        .await
        .json();
    assert_eq!(cleared["url"], Value::Null);
    assert_eq!(cleared["secret"], rotated.as_str());
}

async fn a_dead_nodes_task_is_picked_up_after_its_lease(engine: Engine) {
    let h = Harness::start_with(
        engine,
        task_plane::Settings {
            concurrency: 1,
            ..common::test_settings()
        },
    )
    .await;
    h.primary.delay(600);
    let busy = h.submit_chat(KEY_ONE, "busy", None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The only worker slot is busy, so this one waits queued; a node that "claimed" it
    // then died leaves only its lease in the store.
    let id = h.submit_chat(KEY_ONE, "orphan", None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let orphan = id.clone();
    let lease_ms = 2_500;
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + lease_ms;
    let taken = h
        .store
        .transact(move |tx| {
            tx.execute(
                "UPDATE tasks SET state = 'running', lease_owner = 'dead-node:0', lease_until_ms = $2 \
                 WHERE id = $1 AND lease_owner IS NULL",
                &[orphan.as_str().into(), until.into()],
            )
        })
        .await
        .unwrap();
    assert_eq!(taken, 1, "the orphan was still unclaimed");
    let started = std::time::Instant::now();
    h.wait_final(KEY_ONE, &busy, LIMIT).await;
    let task = h.wait_final(KEY_ONE, &id, LIMIT).await;
    assert_eq!(task["status"], "succeeded");
    assert!(
        started.elapsed() >= Duration::from_millis(lease_ms as u64 - 200),
        "nobody touched it while the dead node's lease held ({:?})",
        started.elapsed()
    );
    assert_eq!(h.ledger(&id).await.len(), 1);
    assert_eq!(h.primary.calls(), 2);
}

async fn two_nodes_share_the_work_and_bill_each_task_once(engine: Engine) {
    let h = Harness::start(engine).await;
    let h = h.with_plane(common::test_settings()).await; // a second node, same database
    h.primary.delay(20);
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            h.submit_chat(KEY_ONE, &format!("n{i}"), None).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &ids {
        assert_eq!(
            h.wait_final(KEY_ONE, id, LIMIT).await["status"],
            "succeeded"
        );
        assert_eq!(h.ledger(id).await.len(), 1);
    }
    assert_eq!(h.primary.calls(), 40, "each task ran once");
}

on_both_engines!(
    chat_task_runs_bills_once_and_sends_a_signed_webhook,
    embeddings_and_anthropic_messages_run_as_tasks,
    idempotency_key_returns_the_same_task,
    tasks_are_private_to_their_key,
    bad_input_is_refused_in_the_callers_dialect,
    edge_callers_are_trusted_only_with_the_edge_token,
    a_failed_attempt_falls_back_once_then_the_task_fails_with_the_reason,
    a_task_that_never_finishes_fails_at_its_deadline,
    cancel_ends_queued_tasks_and_refuses_finished_ones,
    webhooks_retry_with_backoff_honour_retry_after_then_dead_letter_and_redeliver,
    webhook_settings_give_a_default_url_and_rotate_the_secret,
    a_dead_nodes_task_is_picked_up_after_its_lease,
    two_nodes_share_the_work_and_bill_each_task_once,
);
