//! Switchyard's task plane: long or asynchronous generations as durable tasks, with signed
//! webhooks when they finish.
//!
//! A backend submits work (`POST /v1/tasks`, or any generation endpoint with
//! `Prefer: respond-async` at the edge), gets `202 Accepted` at once with a task object and a
//! `Location`, and receives the result by a signed webhook — or polls for it. Tasks live in
//! the control plane's store (SQLite by default, PostgreSQL for several nodes); workers claim
//! them with leases, so a killed node loses nothing: its tasks are claimed again when their
//! leases end, and every webhook is delivered at least once (deduplicable by `webhook-id`).
//!
//! It is a library: `gpu-backend` mounts [`TaskPlane::router`] beside the inference API and
//! the control plane (see [`cli::TaskPlaneArgs`]). Routing, translation, prices and
//! credentials come from the same gateway configuration the edges read, through the core
//! (`switchyard_core`); nothing is translated here.
//!
//! # API
//!
//! Callers authenticate as at the edge (`Authorization: Bearer <gateway key>` or
//! `x-api-key`), or — the edge forwarding for a client it authenticated — with the edge token
//! and `x-switchyard-key-id` (and `x-switchyard-team`); the key id header is trusted only
//! with the edge token. A caller sees only its key's tasks: another key's task is a 404,
//! exactly like an unknown one. Errors are the core's, in the caller's dialect.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /v1/tasks` | `{"model", "input": {…}, "webhook"?: url, "metadata"?: {…}}` → `202` + `Location: /v1/tasks/{id}` + the task. `Idempotency-Key` makes a retry return the same task (`Idempotent-Replayed: true`); reused with a different request → 409. With `x-switchyard-operation` the body is that endpoint's own request instead (see [`model::Operation`]), and without `Prefer: respond-async` the answer waits for the result (up to `x-switchyard-wait-ms`) and is that endpoint's own answer |
//! | `GET /v1/tasks` | the key's tasks, newest first: `?limit=` (1–100, default 20), `?after=<task id>`, `?status=` → `{"object":"list","data":[…],"has_more","last_id"}` |
//! | `GET /v1/tasks/{id}` | the task |
//! | `POST /v1/tasks/{id}/cancel` | cancel: a queued task ends at once, a running one when its worker next looks (the provider's own cancel is called); a finished one → 409 |
//! | `GET /v1/tasks/{id}/webhooks` | the task's webhook messages and their delivery state |
//! | `POST /v1/tasks/{id}/webhooks/redeliver` | send them again (same `webhook-id`) |
//! | `GET, POST /v1/webhook-settings` | the key's signing secret (`whsec_…`, created on first use) and default webhook URL; `POST {"url": url\|null, "rotate_secret": bool}` |
//! | `POST /v1/provider-webhooks/{provider}/{id}` | an asynchronous provider's webhook for task `id`: verified with the provider's own scheme (401 when forged or stale, counted in `switchyard_provider_webhooks_total`), it makes the task poll its provider now |
//! | `GET /task-plane/metrics` | Prometheus counters |
//!
//! A task: `{"id","object":"task","model","operation","status","progress","created_at",
//! "started_at","completed_at","outputs","result","error","usage","cost_usd","attempts",
//! "webhook_url","metadata"}` with `status` one of `queued | running | succeeded | failed |
//! canceled`, `error` in the operation's dialect (with its HTTP `status`), `usage` in tokens,
//! images and seconds.
//!
//! # Webhooks
//!
//! When a task finishes, its webhook URL (the request's, else the key's default) receives
//! `{"type": "task.succeeded" | "task.failed" | "task.canceled", "timestamp", "data": task}`
//! signed per Standard Webhooks with the key's secret (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`). A non-2xx answer, a
//! timeout or a refused connection is retried with exponential backoff and full jitter
//! (never sooner than the receiver's `Retry-After`), up to the configured attempts; then, or
//! at once on `410 Gone`, the message is dead-lettered and waits for a redelivery. Targets
//! are checked before every attempt (see `switchyard_core::tasks::target`); redirects are
//! not followed.
//!
//! # Billing
//!
//! Every task writes exactly one ledger record (request id = task id) in the same
//! transaction as its final state: tokens, images and seconds as the provider reported them,
//! priced by the deployment that served it.

#![warn(missing_docs)]

mod api;
mod auth;
pub mod cli;
mod error;
mod keyring;
mod metrics;
pub mod model;
mod planned;
mod provider;
mod store;
mod time;
mod webhooks;
mod worker;

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use axum::Router;
use control_plane::store::Store;
use switchyard_core::tasks::target::TargetPolicy;
use switchyard_core::Gateway;
use tokio::sync::Notify;

pub use error::Error;

/// How a task plane runs; see [`cli::TaskPlaneArgs`] for each setting's meaning.
#[derive(Debug, Clone)]
pub struct Settings {
    /// SHA-256 hex of each accepted edge token.
    pub edge_token_hashes: Vec<String>,
    /// Which non-public webhook targets are allowed.
    pub webhook_policy: TargetPolicy,
    /// Most task steps in flight on this node.
    pub concurrency: usize,
    /// How long a claimed task or delivery stays this node's without a heartbeat.
    pub lease_ms: u64,
    /// How long a task may take, all attempts together.
    pub task_timeout_ms: u64,
    /// Most attempts per webhook message.
    pub webhook_max_attempts: u32,
    /// First retry delay of a webhook message (doubling each time, with jitter).
    pub webhook_retry_base_ms: u64,
    /// Longest retry delay of a webhook message.
    pub webhook_retry_max_ms: u64,
    /// Deadline of one webhook attempt.
    pub webhook_timeout_ms: u64,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// The task plane's URL as asynchronous providers reach it, for their webhooks
    /// (`{public_url}/v1/provider-webhooks/{provider}/{task id}`); without it providers are
    /// only polled.
    pub public_url: Option<String>,
    /// First delay before polling a provider's task again (doubling per poll).
    pub provider_poll_ms: u64,
    /// Longest delay between two polls of a provider's task.
    pub provider_poll_max_ms: u64,
    /// How long one provider may take with a task before it is canceled there and the task
    /// falls back to the model's next deployment.
    pub provider_attempt_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            edge_token_hashes: Vec::new(),
            webhook_policy: TargetPolicy::default(),
            concurrency: 256,
            lease_ms: 15_000,
            task_timeout_ms: 3_600_000,
            webhook_max_attempts: 8,
            webhook_retry_base_ms: 1_000,
            webhook_retry_max_ms: 3_600_000,
            webhook_timeout_ms: 10_000,
            max_body_bytes: 25 * 1024 * 1024,
            public_url: None,
            provider_poll_ms: 1_000,
            provider_poll_max_ms: 30_000,
            provider_attempt_timeout_ms: 1_800_000,
        }
    }
}

/// What every part of the plane shares.
pub(crate) struct Plane {
    pub(crate) store: Store,
    pub(crate) keyring: keyring::Keyring,
    pub(crate) settings: Settings,
    /// Calls to providers (operator-configured endpoints).
    pub(crate) http: reqwest::Client,
    /// Calls to client webhook URLs: resolved names are checked, redirects not followed.
    pub(crate) webhook_http: reqwest::Client,
    /// This node's name in lease tokens.
    pub(crate) node: String,
    /// Claims made, for unique lease tokens.
    pub(crate) claims: AtomicU64,
    /// Task steps in flight.
    pub(crate) in_flight: AtomicUsize,
    /// Webhook attempts in flight.
    pub(crate) deliveries_in_flight: AtomicUsize,
    /// Wakes the task loop (a new task, a finished step).
    pub(crate) wake_tasks: Notify,
    /// Wakes the delivery loop (a new message).
    pub(crate) wake_deliveries: Notify,
    /// Requests waiting for a task to finish (the synchronous facade).
    pub(crate) waiters: worker::Waiters,
    pub(crate) metrics: metrics::Metrics,
}

/// A running task plane: its workers are started; mount its router.
pub struct TaskPlane {
    plane: Arc<Plane>,
}

impl TaskPlane {
    /// Starts the workers over `store`, routing with `gateway` (its secrets resolved) and
    /// authenticating with its keys plus the store's managed keys. Must run inside a tokio
    /// runtime.
    pub fn start(store: Store, gateway: Gateway, settings: Settings) -> Result<Self, Error> {
        let node = control_plane::secrets::random_hex(4)?;
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::Start(format!("HTTP client: {e}")))?;
        let webhook_http = webhooks::client(&settings)?;
        let plane = Arc::new(Plane {
            keyring: keyring::Keyring::new(gateway, store.clone()),
            store,
            settings,
            http,
            webhook_http,
            node,
            claims: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            deliveries_in_flight: AtomicUsize::new(0),
            wake_tasks: Notify::new(),
            wake_deliveries: Notify::new(),
            waiters: worker::Waiters::default(),
            metrics: metrics::Metrics::default(),
        });
        tokio::spawn(worker::task_loop(Arc::clone(&plane)));
        tokio::spawn(webhooks::delivery_loop(Arc::clone(&plane)));
        tokio::spawn(worker::key_refresh_loop(Arc::clone(&plane)));
        Ok(TaskPlane { plane })
    }

    /// The task API (see the crate docs). It has no fallback route, so it merges into a
    /// router that has one.
    pub fn router(&self) -> Router {
        api::router(Arc::clone(&self.plane))
    }
}
