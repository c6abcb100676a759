//! The harness every control-plane test runs on: a control plane over a fresh database of
//! one engine, a clock the test moves, and helpers that speak HTTP to the real router.
//!
//! PostgreSQL tests take the server from `SWITCHYARD_TEST_DATABASE_URL` (scripts/postgres.sh
//! prints one) and fail when it is missing: nothing is skipped. Each test gets its own
//! schema, so tests run in parallel on one database.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request};
use axum::Router;
use control_plane::clock::ManualClock;
use control_plane::secrets::{random_hex, sha256_hex};
use control_plane::store::Store;
use control_plane::ControlPlane;
use serde_json::{json, Value};
use tower::ServiceExt;

/// The bootstrap admin key every plane starts with.
pub const ADMIN_KEY: &str = "sk-sy-admin-bootstrap-for-tests";
/// The edge token every plane accepts.
pub const EDGE_TOKEN: &str = "edge-token-for-tests";
/// Where the clock starts: 2026-01-15T00:00:00Z.
pub const START_MS: u64 = 1_768_435_200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Where a plane's data lives, so a second plane can open the same database.
#[derive(Debug, Clone)]
pub enum Location {
    SqliteFile(PathBuf),
    PostgresUrl(String),
}

impl Location {
    async fn fresh(engine: Engine) -> Self {
        match engine {
            Engine::Sqlite => {
                let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                    .join(format!("control-plane-{}", random_hex(8).unwrap()));
                Location::SqliteFile(dir.join("control-plane.sqlite3"))
            }
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

/// A new schema in the test database, and a URL whose connections use it.
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
        client
            .batch_execute(&create)
            .expect("creating a test schema");
    })
    .await
    .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

/// One control plane under test.
pub struct Plane {
    pub router: Router,
    pub clock: Arc<ManualClock>,
    pub location: Location,
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
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the status and the error JSON's shape; returns the `error` object.
    pub fn error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        let error = self.json()["error"].clone();
        for field in ["message", "type", "code"] {
            assert!(error[field].is_string(), "error.{field} missing: {error}");
        }
        error
    }
}

impl Plane {
    pub async fn new(engine: Engine) -> Self {
        Self::at(Location::fresh(engine).await).await
    }

    /// A plane over an existing database (as after a restart).
    pub async fn at(location: Location) -> Self {
        let store = location.open().await;
        let clock = Arc::new(ManualClock::new(START_MS));
        let plane = ControlPlane::new(store, clock.clone(), &[sha256_hex(EDGE_TOKEN)]).unwrap();
        plane
            .ensure_admin_key(&sha256_hex(ADMIN_KEY))
            .await
            .unwrap();
        Plane {
            router: plane.router(),
            clock,
            location,
        }
    }

    pub fn now_s(&self) -> i64 {
        use control_plane::clock::Clock;
        self.clock.now_s()
    }

    /// Sends a request; `body` is sent as is.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Body::from(body.unwrap_or("").to_string()))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// An admin API call with the bootstrap admin key.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.admin_as(ADMIN_KEY, method, path, body).await
    }

    pub async fn admin_as(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let body = body.map(|b| b.to_string());
        self.send(method, path, Some(key), &[], body.as_deref())
            .await
    }

    /// Like [`Plane::admin`], asserting `status` and returning the JSON.
    pub async fn admin_ok(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let reply = self.admin(method, path, body).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.text());
        reply.json()
    }

    /// `GET /edge/v1/keys` with the edge token.
    pub async fn edge_keys(&self) -> Value {
        let reply = self
            .send("GET", "/edge/v1/keys", Some(EDGE_TOKEN), &[], None)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()
    }

    /// `POST /edge/v1/usage` with the edge token.
    pub async fn post_usage(&self, records: &[Value]) -> Reply {
        let body = json!({ "records": records }).to_string();
        self.send("POST", "/edge/v1/usage", Some(EDGE_TOKEN), &[], Some(&body))
            .await
    }
}

/// A complete usage record; tests override fields with `with`.
pub fn record(
    request_id: &str,
    timestamp_ms: u64,
    key_id: &str,
    team: Option<&str>,
    cost: f64,
) -> Value {
    json!({
        "request_id": request_id,
        "timestamp_ms": timestamp_ms,
        "key_id": key_id,
        "team": team,
        "model": "chat",
        "provider": "openai",
        "deployment": "openai/gpt-4o-mini",
        "input_tokens": 100,
        "cached_input_tokens": 20,
        "output_tokens": 50,
        "cost": cost,
        "price": {"input": 0.15, "cached_input": 0.075, "output": 0.6},
        "status": 200,
        "attempts": 1,
        "stream": false,
        "latency_ms": 120,
        "ttft_ms": null
    })
}

/// `value` with `fields` replaced.
pub fn with(mut value: Value, fields: Value) -> Value {
    for (name, field) in fields.as_object().unwrap() {
        value[name] = field.clone();
    }
    value
}

/// Runs each named test (an `async fn(Engine)`) once per engine, in modules `sqlite` and
/// `postgres`.
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
