//! The harness every task-plane test runs on: a real task plane served over HTTP on a
//! loopback port, over a fresh database of one engine, routing to OpenAI-wire doubles (the
//! providers are remote SaaS; the doubles answer in OpenAI's documented Chat Completions and
//! Embeddings shapes), and a webhook receiver that records what it gets.
//!
//! PostgreSQL tests take the server from `SWITCHYARD_TEST_DATABASE_URL` (scripts/postgres.sh
//! prints one) and fail without it; each test gets its own schema.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use control_plane::secrets::{random_hex, sha256_hex};
use control_plane::store::Store;
use serde_json::{json, Value};
use switchyard_core::tasks::target::{Cidr, TargetPolicy};
use switchyard_core::Gateway;
use task_plane::{Settings, TaskPlane};

pub const KEY_ONE: &str = "sk-task-test-one";
pub const KEY_TWO: &str = "sk-task-test-two";
/// May use the `solo` model only.
pub const KEY_SOLO: &str = "sk-task-test-solo";
pub const EDGE_TOKEN: &str = "edge-token-for-task-tests";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub enum Location {
    SqliteFile(PathBuf),
    PostgresUrl(String),
}

impl Location {
    pub async fn fresh(engine: Engine) -> Self {
        match engine {
            Engine::Sqlite => Location::SqliteFile(
                PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                    .join(format!("task-plane-{}", random_hex(8).unwrap()))
                    .join("store.sqlite3"),
            ),
            Engine::Postgres => Location::PostgresUrl(postgres_schema_url().await),
        }
    }

    pub async fn open(&self) -> Store {
        match self {
            Location::SqliteFile(path) => Store::open_sqlite(path).await,
            Location::PostgresUrl(url) => Store::open_postgres(url).await,
        }
        .expect("opening the store")
    }
}

async fn postgres_schema_url() -> String {
    let url = std::env::var("SWITCHYARD_TEST_DATABASE_URL").unwrap_or_default();
    assert!(
        url.starts_with("postgres://") || url.starts_with("postgresql://"),
        "SWITCHYARD_TEST_DATABASE_URL must name the PostgreSQL test database; \
         run `eval \"$(scripts/postgres.sh --env)\"` first (got `{url}`)"
    );
    let schema = format!("t_{}", random_hex(8).unwrap());
    let create = format!("CREATE SCHEMA {schema}");
    let admin_url = url.clone();
    tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&admin_url, postgres::NoTls)
            .expect("connecting to SWITCHYARD_TEST_DATABASE_URL");
        client.batch_execute(&create).expect("creating a schema");
    })
    .await
    .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

// ---- an OpenAI-wire provider double ----

#[derive(Default)]
pub struct UpstreamState {
    /// Statuses to answer with (an OpenAI error body), one per call, before answering well.
    pub fail: VecDeque<u16>,
    /// Delay before every answer.
    pub delay_ms: u64,
    pub calls: u64,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<UpstreamState>>,
}

impl Upstream {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(UpstreamState::default()));
        let router = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .with_state(Arc::clone(&state));
        Upstream {
            addr: serve(router).await,
            state,
        }
    }

    pub fn fail_next(&self, statuses: &[u16]) {
        self.state.lock().unwrap().fail.extend(statuses);
    }

    pub fn delay(&self, ms: u64) {
        self.state.lock().unwrap().delay_ms = ms;
    }

    pub fn calls(&self) -> u64 {
        self.state.lock().unwrap().calls
    }
}

async fn upstream_preamble(state: &Arc<Mutex<UpstreamState>>) -> Option<Response> {
    let (fail, delay) = {
        let mut s = state.lock().unwrap();
        s.calls += 1;
        (s.fail.pop_front(), s.delay_ms)
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    fail.map(|status| {
        (
            StatusCode::from_u16(status).unwrap(),
            axum::Json(json!({"error": {"message": "the double was told to fail",
                "type": "server_error", "param": null, "code": null}})),
        )
            .into_response()
    })
}

async fn chat(State(state): State<Arc<Mutex<UpstreamState>>>, body: Bytes) -> Response {
    if let Some(failure) = upstream_preamble(&state).await {
        return failure;
    }
    let request: Value = serde_json::from_slice(&body).unwrap();
    let last = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    axum::Json(json!({
        "id": "chatcmpl-double",
        "object": "chat.completion",
        "created": 1_768_435_200,
        "model": request["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("echo: {last}")},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }))
    .into_response()
}

async fn embeddings(State(state): State<Arc<Mutex<UpstreamState>>>, body: Bytes) -> Response {
    if let Some(failure) = upstream_preamble(&state).await {
        return failure;
    }
    let request: Value = serde_json::from_slice(&body).unwrap();
    axum::Json(json!({
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}],
        "model": request["model"],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }))
    .into_response()
}

// ---- a webhook receiver ----

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub at: Instant,
}

#[derive(Default)]
pub struct ReceiverState {
    pub received: Vec<Received>,
    /// (status, Retry-After) to answer with, one per delivery, before answering 204.
    pub answers: VecDeque<(u16, Option<String>)>,
    /// Answer every delivery with this status (after `answers`).
    pub always: Option<u16>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let router = Router::new()
            .route("/hook", post(receive))
            .with_state(Arc::clone(&state));
        Receiver {
            addr: serve(router).await,
            state,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub async fn wait_for(&self, count: usize, limit: Duration) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let got = self.received();
            if got.len() >= count {
                return got;
            }
            assert!(
                started.elapsed() < limit,
                "only {} of {count} webhooks arrived within {limit:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = state.lock().unwrap();
    s.received.push(Received {
        headers,
        body: body.to_vec(),
        at: Instant::now(),
    });
    let (status, retry_after) = s
        .answers
        .pop_front()
        .unwrap_or((s.always.unwrap_or(204), None));
    let mut response = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(value) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", value.parse().unwrap());
    }
    response
}

// ---- the plane ----

pub fn gateway_config(primary: &Upstream, backup: &Upstream) -> Value {
    json!({
        "keys": [
            {"id": "one", "sha256": sha256_hex(KEY_ONE), "team": "team-a"},
            {"id": "two", "sha256": sha256_hex(KEY_TWO)},
            {"id": "solo", "sha256": sha256_hex(KEY_SOLO), "models": ["solo"]},
        ],
        "providers": {
            "primary": {"kind": "openai", "base_url": format!("http://{}", primary.addr)},
            "backup": {"kind": "openai", "base_url": format!("http://{}", backup.addr)},
        },
        "models": [
            {"name": "chat", "deployments": [
                {"provider": "primary", "model": "up-chat", "price": {"input": 2.0, "output": 8.0}},
                {"provider": "backup", "model": "up-chat-b", "price": {"input": 1.0, "output": 4.0}}]},
            {"name": "solo", "deployments": [{"provider": "primary", "model": "up-solo"}]},
            {"name": "embed", "deployments": [
                {"provider": "primary", "model": "up-embed", "price": {"input": 0.5}}]},
        ],
        "fallback": {"attempt_timeout_ms": 5000},
    })
}

pub fn test_settings() -> Settings {
    Settings {
        edge_token_hashes: vec![sha256_hex(EDGE_TOKEN)],
        webhook_policy: TargetPolicy {
            allow: vec![Cidr::parse("127.0.0.0/8").unwrap()],
        },
        concurrency: 32,
        lease_ms: 1_000,
        task_timeout_ms: 60_000,
        webhook_max_attempts: 4,
        webhook_retry_base_ms: 100,
        webhook_retry_max_ms: 400,
        webhook_timeout_ms: 2_000,
        max_body_bytes: 64 * 1024,
        ..Settings::default()
    }
}

pub struct Harness {
    pub base: String,
    pub http: reqwest::Client,
    pub primary: Upstream,
    pub backup: Upstream,
    pub receiver: Receiver,
    pub location: Location,
    pub store: Store,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Harness {
    pub async fn start(engine: Engine) -> Self {
        Self::start_with(engine, test_settings()).await
    }

    pub async fn start_with(engine: Engine, settings: Settings) -> Self {
        let (primary, backup, receiver) = (
            Upstream::start().await,
            Upstream::start().await,
            Receiver::start().await,
        );
        let location = Location::fresh(engine).await;
        let harness = Harness {
            base: String::new(),
            http: reqwest::Client::new(),
            primary,
            backup,
            receiver,
            store: location.open().await,
            location,
        };
        harness.with_plane(settings).await
    }

    /// This harness with a (further) plane over the same database: `base` is the new one's.
    pub async fn with_plane(mut self, settings: Settings) -> Self {
        let config = gateway_config(&self.primary, &self.backup);
        let gateway = Gateway::from_json(config.to_string().as_bytes()).unwrap();
        let plane = TaskPlane::start(self.location.open().await, gateway, settings).unwrap();
        self.base = format!("http://{}", serve(plane.router()).await);
        self
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.unwrap();
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.bytes().await.unwrap().to_vec(),
        }
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> Reply {
        self.call(
            "POST",
            path,
            Some(key),
            &[],
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        self.call("GET", path, Some(key), &[], None).await
    }

    pub async fn submit_chat(&self, key: &str, text: &str, webhook: Option<&str>) -> Value {
        let mut body =
            json!({"model": "chat", "input": {"messages": [{"role": "user", "content": text}]}});
        if let Some(url) = webhook {
            body["webhook"] = json!(url);
        }
        let reply = self.post("/v1/tasks", key, body).await;
        assert_eq!(
            reply.status,
            202,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()
    }

    /// Polls the task until it is final.
    pub async fn wait_final(&self, key: &str, id: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let task = self.get(&format!("/v1/tasks/{id}"), key).await.json();
            if ["succeeded", "failed", "canceled"].contains(&task["status"].as_str().unwrap()) {
                return task;
            }
            assert!(
                started.elapsed() < limit,
                "task {id} not final within {limit:?}: {task}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The task's webhook deliveries once its first one is settled (`delivered` or `dead`):
    /// the worker records a delivery's outcome after the receiver has it, so a test polls.
    pub async fn wait_webhook_settled(&self, key: &str, id: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let deliveries = self
                .get(&format!("/v1/tasks/{id}/webhooks"), key)
                .await
                .json();
            if deliveries["data"][0]["status"] != "pending" {
                return deliveries;
            }
            assert!(
                started.elapsed() < limit,
                "task {id}'s webhook not settled within {limit:?}: {deliveries}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The webhook secret of a key (created on first call).
    pub async fn secret(&self, key: &str) -> String {
        let reply = self.get("/v1/webhook-settings", key).await;
        assert_eq!(reply.status, 200);
        reply.json()["secret"].as_str().unwrap().to_string()
    }

    /// The ledger's records for `request_id`: (status, cost, input, output tokens).
    pub async fn ledger(&self, request_id: &str) -> Vec<(i64, f64, i64, i64)> {
        let id = request_id.to_string();
        self.store
            .transact(move |tx| {
                tx.query(
                    "SELECT status, cost, input_tokens, output_tokens FROM usage_records WHERE request_id = $1",
                    &[id.as_str().into()],
                )
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            (
                                r.int(0).unwrap(),
                                r.opt_real(1).unwrap().unwrap(),
                                r.int(2).unwrap(),
                                r.int(3).unwrap(),
                            )
                        })
                        .collect()
                })
            })
            .await
            .unwrap()
    }
}

#[macro_export]
macro_rules! on_both_engines {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::common::Engine::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::common::Engine::Postgres).await
                }
            )*
        }
    };
}
