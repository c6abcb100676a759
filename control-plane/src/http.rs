//! The control plane's HTTP API: `/admin/v1/…` (admin keys), `/edge/v1/…` (edge token) and
//! `/dashboard`.
//!
//! Bodies and queries are parsed by hand from bytes, not with axum's extractors, so every
//! failure answers `{"error":{"message","type","code"}}` with the right status.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use serde_json::json;

use crate::admin_keys::{self, AdminKeyView, Role};
use crate::clock::Clock;
use crate::ledger::{self, Bucket, Filter, GroupBy};
use crate::store::Store;
use crate::{keys, limits, secrets, teams, time, validate, Error};

/// Largest admin request body.
const ADMIN_BODY_LIMIT: usize = 1024 * 1024;
/// Largest usage batch body (10 000 records of ~1 KiB, with room).
const EDGE_BODY_LIMIT: usize = 32 * 1024 * 1024;
/// Most rows `GET /admin/v1/requests` returns.
const MAX_RECENT: u32 = 1000;

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) store: Store,
    pub(crate) clock: Arc<dyn Clock>,
    /// SHA-256 hex (lower-case) of each accepted edge token.
    pub(crate) edge_token_hashes: Vec<String>,
    /// How long an admission waits for its usage record.
    pub(crate) admission_ttl_ms: u64,
    /// When admissions were last looked at for expiry, unix ms.
    pub(crate) last_expiry_ms: AtomicU64,
    /// Provider credentials minted for the edges (service-account tokens).
    pub(crate) minted: Arc<crate::credentials::Minted>,
}

type Shared = State<Arc<AppState>>;

/// Every route; no fallback, so the router merges with another that has one.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/admin/v1/me", get(me))
        .route("/admin/v1/keys", get(list_keys).post(create_key))
        .route("/admin/v1/keys/{id}", get(get_key).patch(update_key))
        .route("/admin/v1/keys/{id}/revoke", post(revoke_key))
        .route("/admin/v1/keys/{id}/rotate", post(rotate_key))
        .route("/admin/v1/teams", get(list_teams).post(create_team))
        .route(
            "/admin/v1/teams/{id}",
            get(get_team).patch(update_team).delete(delete_team),
        )
        .route(
            "/admin/v1/admin-keys",
            get(list_admin_keys).post(create_admin_key),
        )
        .route(
            "/admin/v1/admin-keys/{id}",
            axum::routing::delete(revoke_admin_key),
        )
        .route("/admin/v1/usage", get(usage))
        .route("/admin/v1/invoices", get(invoice))
        .route("/admin/v1/requests", get(recent_requests))
        .route("/admin/v1/{*path}", axum::routing::any(unknown_endpoint))
        .layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT));
    let edge = Router::new()
        .route("/edge/v1/keys", get(edge_keys))
        .route("/edge/v1/usage", post(edge_usage))
        .route("/edge/v1/admit", post(edge_admit))
        .route("/edge/v1/{*path}", axum::routing::any(unknown_endpoint))
        .layer(DefaultBodyLimit::max(EDGE_BODY_LIMIT));
    Router::new()
        .route("/dashboard", get(dashboard))
        .merge(admin)
        .merge(edge)
        .with_state(state)
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.status() == 500 {
            eprintln!("control plane: {self}");
        }
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.to_json())).into_response()
    }
}

type Answer = Result<Response, Error>;

fn ok<T: Serialize>(value: &T) -> Answer {
    Ok(axum::Json(value).into_response())
}

fn created<T: Serialize>(value: &T) -> Answer {
    Ok((StatusCode::CREATED, axum::Json(value)).into_response())
}

async fn unknown_endpoint() -> Error {
    Error::NotFound {
        message: "unknown endpoint".into(),
        code: "unknown_endpoint",
    }
}

/// The bytes of a body, or the 400/413 saying why they could not be read.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Error> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge("the request body is too large".into())
        } else {
            Error::invalid(
                format!("could not read the body: {rejection}"),
                "invalid_body",
            )
        }
    })
}

/// An empty body counts as `{}` (for POSTs whose every field is optional).
fn json_or_empty<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        validate::json_body(body)
    }
}

fn bearer_hash(headers: &HeaderMap) -> Option<String> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    secrets::bearer(authorization).map(secrets::sha256_hex)
}

/// What an admin request needs to be allowed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Any live admin key.
    Read,
    /// Role `admin`.
    Write,
}

impl AppState {
    fn now_s(&self) -> i64 {
        self.clock.now_s()
    }

    async fn authorize(&self, headers: &HeaderMap, access: Access) -> Result<AdminKeyView, Error> {
        let Some(hash) = bearer_hash(headers) else {
            return Err(Error::Unauthenticated(
                "missing admin key: send `Authorization: Bearer <admin key>`".into(),
            ));
        };
        let key = self
            .store
            .transact(move |tx| admin_keys::authenticate(tx, &hash))
            .await?
            .ok_or_else(|| Error::Unauthenticated("invalid admin key".into()))?;
        if access == Access::Write && key.role != Role::Admin {
            return Err(Error::PermissionDenied(format!(
                "admin key `{}` has the read_only role; this needs the admin role",
                key.name
            )));
        }
        Ok(key)
    }

    fn authorize_edge(&self, headers: &HeaderMap) -> Result<(), Error> {
        if self.edge_token_hashes.is_empty() {
            return Err(Error::Unauthenticated(
                "the edge API is disabled: start the control plane with --edge-token-sha256".into(),
            ));
        }
        let hash = bearer_hash(headers).ok_or_else(|| {
            Error::Unauthenticated(
                "missing edge token: send `Authorization: Bearer <token>`".into(),
            )
        })?;
        // Check every configured hash without stopping early.
        let matches = self
            .edge_token_hashes
            .iter()
            .fold(false, |found, expected| {
                found | secrets::constant_time_eq(expected, &hash)
            });
        if matches {
            Ok(())
        } else {
            Err(Error::Unauthenticated("invalid edge token".into()))
        }
    }
}

async fn me(State(state): Shared, headers: HeaderMap) -> Answer {
    ok(&state.authorize(&headers, Access::Read).await?)
}

// ---- keys ----

async fn list_keys(State(state): Shared, headers: HeaderMap, RawQuery(query): RawQuery) -> Answer {
    state.authorize(&headers, Access::Read).await?;
    let query = QueryParams::parse(query.as_deref())?;
    let team = query.get("team").map(str::to_string);
    let include_revoked = query.flag("include_revoked")?;
    let now = state.now_s();
    let keys = state
        .store
        .transact(move |tx| keys::list(tx, team.as_deref(), include_revoked, now))
        .await?;
    ok(&json!({ "keys": keys }))
}

async fn create_key(
    State(state): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    state.authorize(&headers, Access::Write).await?;
    let request = validate::json_body(&body_bytes(body)?)?;
    let now = state.now_s();
    created(
        &state
            .store
            .transact(move |tx| keys::create(tx, request, now))
            .await?,
    )
}

async fn get_key(State(state): Shared, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    state.authorize(&headers, Access::Read).await?;
    let now = state.now_s();
    ok(&state
        .store
        .transact(move |tx| keys::get(tx, &id, now))
        .await?)
}

async fn update_key(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    state.authorize(&headers, Access::Write).await?;
    let patch = validate::json_body(&body_bytes(body)?)?;
    let now = state.now_s();
    ok(&state
        .store
        .transact(move |tx| keys::update(tx, &id, patch, now))
        .await?)
}

async fn revoke_key(State(state): Shared, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    state.authorize(&headers, Access::Write).await?;
    let now = state.now_s();
    ok(&state
        .store
        .transact(move |tx| keys::revoke(tx, &id, now))
        .await?)
}

async fn rotate_key(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    state.authorize(&headers, Access::Write).await?;
    let request = json_or_empty(&body_bytes(body)?)?;
    let now = state.now_s();
    ok(&state
        .store
        .transact(move |tx| keys::rotate(tx, &id, request, now))
        .await?)
}

// ---- teams ----

async fn list_teams(State(state): Shared, headers: HeaderMap) -> Answer {
    state.authorize(&headers, Access::Read).await?;
    ok(&json!({ "teams": state.store.transact(teams::list).await? }))
}

async fn create_team(
    State(state): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    state.authorize(&headers, Access::Write).await?;
    let request = validate::json_body(&body_bytes(body)?)?;
    let now = state.now_s();
    created(
        &state
            .store
            .transact(move |tx| teams::create(tx, request, now))
            .await?,
    )
}

async fn get_team(State(state): Shared, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    state.authorize(&headers, Access::Read).await?;
    ok(&state.store.transact(move |tx| teams::get(tx, &id)).await?)
}

async fn update_team(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    state.authorize(&headers, Access::Write).await?;
    let patch = validate::json_body(&body_bytes(body)?)?;
    let now = state.now_s();
    ok(&state
        .store
        .transact(move |tx| teams::update(tx, &id, patch, now))
        .await?)
}

async fn delete_team(State(state): Shared, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    state.authorize(&headers, Access::Write).await?;
    let deleted = id.clone();
    state
        .store
        .transact(move |tx| teams::delete(tx, &id))
        .await?;
    ok(&json!({ "id": deleted, "deleted": true }))
}

// ---- admin keys (role admin only, reads included) ----

async fn list_admin_keys(State(state): Shared, headers: HeaderMap) -> Answer {
    state.authorize(&headers, Access::Write).await?;
    ok(&json!({ "admin_keys": state.store.transact(admin_keys::list).await? }))
}

async fn create_admin_key(
    State(state): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    state.authorize(&headers, Access::Write).await?;
    let request = validate::json_body(&body_bytes(body)?)?;
    let now = state.now_s();
    created(
        &state
            .store
            .transact(move |tx| admin_keys::create(tx, request, now))
            .await?,
    )
}

async fn revoke_admin_key(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    state.authorize(&headers, Access::Write).await?;
    let now = state.now_s();
    ok(&state
        .store
        .transact(move |tx| admin_keys::revoke(tx, &id, now))
        .await?)
}

// ---- usage, invoices, requests ----

/// A query string's parameters (the last of repeated ones wins).
struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    fn parse(query: Option<&str>) -> Result<Self, Error> {
        serde_urlencoded::from_str(query.unwrap_or(""))
            .map(QueryParams)
            .map_err(|e| Error::invalid(format!("malformed query string: {e}"), "invalid_query"))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn time(&self, name: &str) -> Result<Option<i64>, Error> {
        self.get(name)
            .map(|text| {
                time::parse_time(text).ok_or_else(|| {
                    Error::invalid(
                        format!("`{name}` must be unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC); got `{text}`"),
                        "invalid_query",
                    )
                })
            })
            .transpose()
    }

    fn flag(&self, name: &str) -> Result<bool, Error> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(Error::invalid(
                format!("`{name}` must be true or false; got `{other}`"),
                "invalid_query",
            )),
        }
    }

    fn one_of<T>(
        &self,
        name: &str,
        parse: fn(&str) -> Option<T>,
        allowed: &str,
    ) -> Result<Option<T>, Error> {
        self.get(name)
            .map(|text| {
                parse(text).ok_or_else(|| {
                    Error::invalid(
                        format!("`{name}` must be one of {allowed}; got `{text}`"),
                        "invalid_query",
                    )
                })
            })
            .transpose()
    }

    fn filter(&self) -> Result<Filter, Error> {
        let owned = |name| self.get(name).map(str::to_string);
        let filter = Filter {
            from_ms: self.time("from")?,
            to_ms: self.time("to")?,
            key: owned("key"),
            team: owned("team"),
            model: owned("model"),
            provider: owned("provider"),
        };
        if let (Some(from), Some(to)) = (filter.from_ms, filter.to_ms) {
            if from > to {
                return Err(Error::invalid("`from` is after `to`", "invalid_query"));
            }
        }
        Ok(filter)
    }
}

async fn usage(State(state): Shared, headers: HeaderMap, RawQuery(query): RawQuery) -> Answer {
    state.authorize(&headers, Access::Read).await?;
    let query = QueryParams::parse(query.as_deref())?;
    let filter = query.filter()?;
    let group_by = query.one_of(
        "group_by",
        GroupBy::parse,
        "key, team, model, provider, deployment",
    )?;
    let bucket = query.one_of("bucket", Bucket::parse, "hour, day, month")?;
    ok(&state
        .store
        .transact(move |tx| ledger::usage(tx, &filter, group_by, bucket))
        .await?)
}

async fn invoice(State(state): Shared, headers: HeaderMap, RawQuery(query): RawQuery) -> Answer {
    state.authorize(&headers, Access::Read).await?;
    let query = QueryParams::parse(query.as_deref())?;
    let required =
        |name: &str| Error::invalid(format!("`{name}` is required"), "missing_parameter");
    let team = query
        .get("team")
        .ok_or_else(|| required("team"))?
        .to_string();
    let from = query.time("from")?.ok_or_else(|| required("from"))?;
    let to = query.time("to")?.ok_or_else(|| required("to"))?;
    if from > to {
        return Err(Error::invalid("`from` is after `to`", "invalid_query"));
    }
    let csv = match query.get("format") {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(Error::invalid(
                format!("`format` must be json or csv; got `{other}`"),
                "invalid_query",
            ))
        }
    };
    let invoice = state
        .store
        .transact(move |tx| ledger::invoice(tx, &team, from, to))
        .await?;
    if !csv {
        return ok(&invoice);
    }
    let filename = format!(
        "attachment; filename=\"invoice-{}-{}.csv\"",
        invoice.team,
        &invoice.from[..10]
    );
    let mut response = invoice.to_csv().into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&filename) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

async fn recent_requests(
    State(state): Shared,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Answer {
    state.authorize(&headers, Access::Read).await?;
    let query = QueryParams::parse(query.as_deref())?;
    let filter = query.filter()?;
    let limit = match query.get("limit") {
        None => 50,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_RECENT).contains(n))
            .ok_or_else(|| {
                Error::invalid(
                    format!("`limit` must be a whole number from 1 to {MAX_RECENT}; got `{text}`"),
                    "invalid_query",
                )
            })?,
    };
    let requests = state
        .store
        .transact(move |tx| ledger::recent(tx, &filter, limit))
        .await?;
    ok(&json!({ "requests": requests }))
}

// ---- edge ----

/// Whether `If-None-Match` names the entity tag `etag` (or `*`).
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == etag)
}

async fn edge_keys(State(state): Shared, headers: HeaderMap) -> Answer {
    state.authorize_edge(&headers)?;
    // A new minted token is a new snapshot: the stamp (unix ms of the last token change, 0
    // without any) only grows, like the store's version, so their sum changes with either.
    let stamp = state.minted.stamp_ms();
    let version = state.store.transact(keys::version).await? + stamp;
    let etag = format!("\"{version}\"");
    let etag_header = |response: &mut Response, etag: &str| {
        if let Ok(value) = HeaderValue::from_str(etag) {
            response.headers_mut().insert(header::ETAG, value);
        }
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    };
    if etag_matches(&headers, &etag) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        etag_header(&mut response, &etag);
        return Ok(response);
    }
    let now = state.now_s();
    let mut snapshot = state
        .store
        .transact(move |tx| keys::snapshot(tx, now))
        .await?;
    snapshot.version += stamp;
    snapshot.credentials = state.minted.snapshot();
    let mut response = axum::Json(&snapshot).into_response();
    etag_header(&mut response, &format!("\"{}\"", snapshot.version));
    Ok(response)
}

async fn edge_usage(
    State(state): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    state.authorize_edge(&headers)?;
    let records = ledger::parse_batch(&body_bytes(body)?)?;
    let now_ms = state.clock.now_ms();
    let outcome = state
        .store
        .transact(move |tx| {
            let outcome = ledger::ingest(tx, &records, now_ms as i64)?;
            limits::settle(tx, &records, now_ms)?;
            Ok::<_, Error>(outcome)
        })
        .await?;
    state.expire_admissions().await?;
    ok(&outcome)
}

/// `POST /edge/v1/admit`: 200 admitted, 429 refused (see [`limits`]).
async fn edge_admit(
    State(state): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    state.authorize_edge(&headers)?;
    let request = Arc::new(limits::parse_request(&body_bytes(body)?)?);
    let ttl_ms = state.admission_ttl_ms;
    let mut retried = false;
    let (status, answer) = loop {
        let request = Arc::clone(&request);
        let now_ms = state.clock.now_ms();
        let answer = state
            .store
            .transact(move |tx| limits::admit(tx, &request, now_ms, ttl_ms))
            .await?;
        // Refused: reservations whose records never came may be what holds the capacity.
        if answer.0 == 429 && !retried && state.expire_admissions().await? > 0 {
            retried = true;
            continue;
        }
        break answer;
    };
    let mut response = axum::Json(&answer).into_response();
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok(response)
}

impl AppState {
    /// Expires admissions past their deadline, at most once a second; how many expired.
    async fn expire_admissions(&self) -> Result<usize, Error> {
        let now_ms = self.clock.now_ms();
        let last = self.last_expiry_ms.load(Ordering::Relaxed);
        if now_ms < last.saturating_add(1_000)
            || self
                .last_expiry_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(0);
        }
        self.store
            .transact(move |tx| limits::expire(tx, now_ms))
            .await
    }
}

// ---- dashboard ----

async fn dashboard() -> Response {
    let mut response =
        axum::response::Html(include_str!("../assets/dashboard.html")).into_response();
    // Everything the page needs is inline; it may talk only to this origin.
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    response
}
