//! Ledger ingest rate: usage records per second through `POST /edge/v1/usage` (the real
//! router, in process: JSON parsing, validation and the batched insert transaction), on
//! SQLite and, when `SWITCHYARD_TEST_DATABASE_URL` is set, on PostgreSQL.
//!
//!   cargo bench -p control-plane --bench ingest
//!   SWITCHYARD_TEST_DATABASE_URL=$(scripts/postgres.sh) cargo bench -p control-plane --bench ingest
//!
//! Each configuration posts fresh records (no duplicates) into an empty database, one batch
//! at a time, as a single edge would.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use control_plane::clock::SystemClock;
use control_plane::secrets::{random_hex, sha256_hex};
use control_plane::store::Store;
use control_plane::ControlPlane;
use serde_json::json;
use tower::ServiceExt;

const EDGE_TOKEN: &str = "bench-edge-token";

async fn plane(store: Store) -> Router {
    ControlPlane::new(store, Arc::new(SystemClock), &[sha256_hex(EDGE_TOKEN)])
        .unwrap()
        .router()
}

fn batch_body(run: &str, first: usize, size: usize) -> String {
    let records: Vec<_> = (first..first + size)
        .map(|i| {
            json!({
                "request_id": format!("{run}-{i}"), "timestamp_ms": 1_768_435_200_000u64 + i as u64,
                "key_id": format!("key-{}", i % 50), "team": format!("team-{}", i % 5),
                "model": "chat", "provider": "openai", "deployment": "openai/gpt-4o-mini",
                "input_tokens": 1200, "cached_input_tokens": 200, "output_tokens": 300,
                "cost": 0.000_375 + i as f64 * 1e-9,
                "price": {"input": 0.15, "cached_input": 0.075, "output": 0.6},
                "status": 200, "attempts": 1, "stream": i % 2 == 0, "latency_ms": 840, "ttft_ms": 210
            })
        })
        .collect();
    json!({ "records": records }).to_string()
}

/// Posts `total` records in batches of `batch`; returns records per second.
async fn run(router: &Router, batch: usize, total: usize) -> f64 {
    let tag = random_hex(4).unwrap();
    let bodies: Vec<String> = (0..total / batch)
        .map(|b| batch_body(&tag, b * batch, batch))
        .collect();
    let started = Instant::now();
    for body in bodies {
        let request = Request::post("/edge/v1/usage")
            .header("authorization", format!("Bearer {EDGE_TOKEN}"))
            .body(Body::from(body))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn bench(engine: &str, router: Router) {
    for (batch, total) in [(1, 2_000), (100, 50_000), (1_000, 100_000)] {
        let rate = run(&router, batch, total).await;
        println!("{engine:<10} batch {batch:>5}: {total:>7} records, {rate:>9.0} records/s");
    }
}

async fn postgres_schema(url: &str) -> String {
    let schema = format!("bench_{}", random_hex(6).unwrap());
    let (connect_url, create) = (url.to_string(), format!("CREATE SCHEMA {schema}"));
    tokio::task::spawn_blocking(move || {
        postgres::Client::connect(&connect_url, postgres::NoTls)
            .expect("connecting to SWITCHYARD_TEST_DATABASE_URL")
            .batch_execute(&create)
            .expect("creating the bench schema");
    })
    .await
    .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

#[tokio::main]
async fn main() {
    let dir = std::env::temp_dir().join(format!("control-plane-bench-{}", random_hex(6).unwrap()));
    let sqlite = Store::open_sqlite(&dir.join("control-plane.sqlite3"))
        .await
        .unwrap();
    bench("sqlite", plane(sqlite).await).await;
    std::fs::remove_dir_all(&dir).ok();

    match std::env::var("SWITCHYARD_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            let store = Store::open_postgres(&postgres_schema(&url).await).await.unwrap();
            bench("postgres", plane(store).await).await;
        }
        _ => println!("postgres: not measured (set SWITCHYARD_TEST_DATABASE_URL, e.g. from scripts/postgres.sh)"),
    }
}
