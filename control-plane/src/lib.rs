//! Switchyard's control plane: managed virtual keys, one usage ledger, consolidated billing,
//! and a dashboard, over one store layer (SQLite embedded by default, PostgreSQL for several
//! nodes).
//!
//! It is a library: `gpu-backend` mounts [`ControlPlane::router`] beside its inference API
//! (see [`cli::ControlPlaneArgs`]), and each runs without the other.
//!
//! # Admin API (`/admin/v1`, `Authorization: Bearer <admin key>`)
//!
//! Admin keys are stored as SHA-256 only and have a role: `admin` (everything) or
//! `read_only` (every `GET` except admin keys). Errors are
//! `{"error":{"message","type","code"}}`: 400 malformed or invalid input, 401 missing or
//! wrong admin key, 403 role too weak, 404 unknown id, 409 duplicate id or name, revoked key,
//! non-empty team.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /admin/v1/me` | the calling admin key |
//! | `GET, POST /admin/v1/keys` | list (`?team=`, `?include_revoked=true`); create → 201 `{"key":…,"secret":"sk-sy-…"}` (the only time the secret is shown) |
//! | `GET, PATCH /admin/v1/keys/{id}` | get; update `label`, `team`, `models`, `expires_at`, `metadata` (`null` clears) |
//! | `POST /admin/v1/keys/{id}/revoke` | revoke (every secret stops) |
//! | `POST /admin/v1/keys/{id}/rotate` | new secret; `{"grace_period_s": n}` keeps the old one working n seconds |
//! | `GET, POST /admin/v1/teams`, `GET, PATCH, DELETE /admin/v1/teams/{id}` | teams (delete only without active keys) |
//! | `GET, POST /admin/v1/admin-keys`, `DELETE /admin/v1/admin-keys/{id}` | admin keys (role admin) |
//! | `GET /admin/v1/usage` | `group_by=key\|team\|model\|provider\|deployment`, `bucket=hour\|day\|month`, `from`, `to`, `key`, `team`, `model`, `provider` |
//! | `GET /admin/v1/invoices` | `team`, `from`, `to` (required), `format=json\|csv` |
//! | `GET /admin/v1/requests` | most recent records (`limit`, default 50, at most 1000; same filters as usage) |
//!
//! Times in queries are unix seconds, `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ` (UTC); `from`
//! is included, `to` excluded. Money is summed as integer nano-USD (`cost_nano_usd`) and
//! printed from it with 9 decimals (`cost_usd`), so totals equal the sum of their records.
//!
//! # Edge contract (`/edge/v1`, `Authorization: Bearer <edge token>`)
//!
//! The edge token is configured as its SHA-256 (`--edge-token-sha256 HEX`, repeatable, or
//! `SWITCHYARD_EDGE_TOKEN_SHA256=HEX[,HEX…]`); without one the edge API answers 401.
//!
//! `GET /edge/v1/keys` → 200
//! `{"version": u64, "keys": [{"id","sha256","models":[glob…],"expires_at": unix s|null,"label": str|null,"team": str|null}]}`
//! with `ETag: "<version>"`; a request with `If-None-Match: "<version>"` gets 304 and no
//! body. The version increases with every key change (create, update, revoke, rotate). A
//! rotated key in its grace period appears twice under the same `id`: the new hash, and the
//! old hash whose `expires_at` is the end of the grace period (or the key's expiry, if
//! sooner). Revoked keys, expired keys and secrets past their grace do not appear — that
//! happens by time alone, without a new version, so an edge must itself refuse an entry
//! whose `expires_at` has passed.
//!
//! `POST /edge/v1/usage` with `{"records": [UsageRecord…]}` (at most 10 000) → 200
//! `{"accepted": n, "duplicates": m}`. A record already stored (same `request_id`, or twice
//! in the batch) counts as a duplicate, so retrying a batch is safe. Any invalid record
//! rejects the whole batch with 400 naming it (`records[3]: missing field `key_id``);
//! unknown fields are ignored. See [`ledger::UsageRecord`] for the fields. Records settle
//! the admissions of their `request_id` in the same transaction.
//!
//! `POST /edge/v1/admit` with `{"request_id", "scopes": [{"name": "key:<id>"|"team:<id>",
//! "quota": {"rpm","tpm","concurrent","budget":{"usd","period"}}}], "estimate": {"tokens",
//! "cost_nano"}}` → 200 `{"headers": [[name, value]…]}` (admitted: the estimate is reserved
//! until the request's usage record arrives) or 429 `{"headers", "refusal": {"message",
//! "code", "retry_after"}}`. Asking again for the same `request_id` admits it once. See
//! [`limits`] for the rules and the bound on overshoot across edge instances.
//!
//! Keys (`limits` on create and `PATCH`) and teams (`limits` likewise) carry limits; the key
//! snapshot carries each key's `limits` and a `teams` map of the limits of teams that have
//! some, and a change to either bumps its version.
//!
//! With `--service-account SECRET=FILE` the snapshot also carries `credentials`: provider
//! access tokens minted here from a service-account key, by secret name (see
//! [`credentials`]); a new token changes the version too.

#![warn(missing_docs)]

pub mod admin_keys;
pub mod cli;
pub mod clock;
pub mod credentials;
mod error;
mod http;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod secrets;
pub mod store;
pub mod teams;
mod time;
mod validate;

use std::sync::Arc;

use axum::Router;

pub use error::Error;

use clock::Clock;
use store::Store;

/// A control plane over one store: build it, then mount [`ControlPlane::router`].
pub struct ControlPlane {
    state: Arc<http::AppState>,
}

impl ControlPlane {
    /// A control plane over `store`, reading time from `clock`, accepting edges that present
    /// a token whose SHA-256 hex is in `edge_token_hashes`.
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        edge_token_hashes: &[String],
    ) -> Result<Self, Error> {
        let edge_token_hashes = edge_token_hashes
            .iter()
            .map(|hash| {
                let hash = hash.trim().to_ascii_lowercase();
                if secrets::is_sha256_hex(&hash) {
                    Ok(hash)
                } else {
                    Err(Error::invalid(
                        "an edge token hash must be 64 hex characters (the SHA-256, never the token)",
                        "invalid_value",
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            state: Arc::new(http::AppState {
                store,
                clock,
                edge_token_hashes,
                admission_ttl_ms: limits::DEFAULT_ADMISSION_TTL_MS,
                last_expiry_ms: Default::default(),
                minted: Default::default(),
            }),
        })
    }

    /// Sets how long an admission waits for its usage record before it expires (default
    /// [`limits::DEFAULT_ADMISSION_TTL_MS`]). Call before [`ControlPlane::router`].
    pub fn with_admission_ttl_ms(mut self, ttl_ms: u64) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.admission_ttl_ms = ttl_ms.max(1);
        }
        self
    }

    /// Mints access tokens from `account` and hands them to the edges under the secret name
    /// `secret` (what the provider config's `api_key_secret` names), refreshed before they
    /// expire; see [`credentials`]. Needs a Tokio runtime.
    pub fn with_service_account(self, secret: &str, account: credentials::ServiceAccount) -> Self {
        credentials::spawn_refresher(
            secret.to_string(),
            Arc::new(account),
            Arc::clone(&self.state.minted),
        );
        self
    }

    /// Creates an admin key (role `admin`) with this SHA-256 hex unless one exists.
    pub async fn ensure_admin_key(&self, sha256: &str) -> Result<(), Error> {
        let sha256 = sha256.trim().to_string();
        let now = self.state.clock.now_s();
        self.state
            .store
            .transact(move |tx| admin_keys::ensure_bootstrap(tx, &sha256, now))
            .await
    }

    /// The admin API, the edge API and the dashboard. It has no fallback route, so it merges
    /// into a router that has one.
    pub fn router(&self) -> Router {
        http::router(Arc::clone(&self.state))
    }
}
