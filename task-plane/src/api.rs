//! The task API's HTTP handlers (see the crate docs for the contract).
//!
//! Bodies and queries are read by hand from bytes, so every failure is a [`GatewayError`]
//! rendered in the caller's dialect with the right status, never a framework's plain-text
//! rejection.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use switchyard_core::routing::NoHealth;
use switchyard_core::tasks::providers::{Headers, WebhookKey};
use switchyard_core::tasks::webhook::{unhex, WebhookSecret};
use switchyard_core::{Admitted, Dialect, ErrorKind, GatewayError, LocalReply};

use crate::auth::{self, Caller};
use crate::error::{invalid, task_not_found, Error};
use crate::metrics::Gauge;
use crate::model::{Operation, Task, TaskState, Usage, MULTIPART_FIELD};
use crate::store::{self, CancelOutcome};
use crate::time::now_ms;
use crate::worker::{finale, Billing};
use crate::Plane;

pub use switchyard_core::tasks::edge::{
    OPERATION_HEADER, TASK_ID_HEADER, WAIT_HEADER, WEBHOOK_HEADER,
};
/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Largest `metadata` accepted, serialized.
const MAX_METADATA_BYTES: usize = 16 * 1024;
/// How often a synchronous wait re-reads the task (a finish on another node has no waiter).
const WAIT_POLL: Duration = Duration::from_millis(250);
/// The default wait of a synchronous submission without `x-switchyard-wait-ms`.
const DEFAULT_WAIT_MS: u64 = 30_000;

type Shared = State<Arc<Plane>>;

pub(crate) fn router(plane: Arc<Plane>) -> Router {
    let limit = plane.settings.max_body_bytes;
    Router::new()
        .route("/v1/tasks", post(submit).get(list))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/cancel", post(cancel))
        .route("/v1/tasks/{id}/webhooks", get(deliveries))
        .route("/v1/tasks/{id}/webhooks/redeliver", post(redeliver))
        .route(
            "/v1/webhook-settings",
            get(get_settings).post(update_settings),
        )
        .route(
            "/v1/provider-webhooks/{provider}/{id}",
            post(provider_webhook),
        )
        .route("/task-plane/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(plane)
}

/// An error answer in `dialect`; the plane's own failures are logged, never shown.
fn error_response(err: Error, dialect: Dialect) -> Response {
    if err.is_internal() {
        eprintln!("task plane: {err}");
    }
    reply(LocalReply::error(&err.client_error(), dialect))
}

fn reply(local: LocalReply) -> Response {
    let mut response = (
        StatusCode::from_u16(local.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        local.body,
    )
        .into_response();
    for (name, value) in local.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(name),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn json_response(status: StatusCode, value: &Value, headers: &[(&str, String)]) -> Response {
    let mut response = (status, axum::Json(value)).into_response();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(*name),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn caller(plane: &Plane, headers: &HeaderMap) -> Result<Caller, Error> {
    Ok(auth::authenticate(
        headers,
        &plane.settings.edge_token_hashes,
        &plane.keyring.gateway(),
        now_ms() / 1000,
    )?)
}

fn body_bytes(plane: &Plane, body: Result<Bytes, BytesRejection>) -> Result<Bytes, Error> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::Refused(
                GatewayError::new(
                    ErrorKind::RequestTooLarge,
                    format!(
                        "request body exceeds the limit of {} bytes",
                        plane.settings.max_body_bytes
                    ),
                )
                .with_code("request_too_large"),
            )
        } else {
            Error::Refused(GatewayError::invalid("the request body could not be read"))
        }
    })
}

fn json_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, Error> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid(format!("{what} must be a JSON object"), "body")),
        Err(e) => Err(invalid(format!("{what} is not valid JSON: {e}"), "body")),
    }
}

/// `POST /v1/tasks`'s own body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskRequest {
    model: String,
    input: Map<String, Value>,
    #[serde(default)]
    webhook: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// What a submission asks for, once read.
struct Submission {
    operation: Operation,
    /// The endpoint request the task runs, `model` included.
    request: Map<String, Value>,
    model: String,
    webhook: Option<String>,
    metadata: Option<Map<String, Value>>,
}

fn read_submission(
    gateway: &switchyard_core::Gateway,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Submission, Error> {
    if let Some(name) = header(headers, OPERATION_HEADER) {
        let operation = Operation::parse(name)
            .filter(|op| *op != Operation::Generation)
            .ok_or_else(|| {
                invalid(
                    format!("`{OPERATION_HEADER}` names no operation the task plane runs"),
                    OPERATION_HEADER,
                )
            })?;
        if operation.multipart() {
            return multipart_submission(operation, headers, body);
        }
        let request = json_object(body, "the request body")?;
        let model = match request.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => return Err(invalid("`model` must be a non-empty string", "model")),
        };
        return Ok(Submission {
            operation,
            request,
            model,
            webhook: header(headers, WEBHOOK_HEADER).map(str::to_string),
            metadata: None,
        });
    }
    let parsed: TaskRequest = serde_json::from_slice(body).map_err(|e| {
        invalid(
            format!("invalid task request: {e}"),
            match e.classify() {
                serde_json::error::Category::Data => "input",
                _ => "body",
            },
        )
    })?;
    if parsed.model.is_empty() {
        return Err(invalid("`model` must be a non-empty string", "model"));
    }
    if gateway.task_route(&parsed.model).is_some() {
        // A model of asynchronous providers: the input is the provider's own request.
        return Ok(Submission {
            operation: Operation::Generation,
            request: parsed.input,
            model: parsed.model,
            webhook: parsed.webhook,
            metadata: parsed.metadata,
        });
    }
    // What the input is: a chat request (`messages`) or an embeddings request (`input`).
    let operation = if parsed.input.contains_key("messages") {
        Operation::ChatCompletions
    } else if parsed.input.contains_key("input") {
        Operation::Embeddings
    } else {
        return Err(invalid(
            "`input` must be a chat request (with `messages`) or an embeddings request (with `input`)",
            "input",
        ));
    };
    let mut request = parsed.input;
    request.insert("model".into(), Value::String(parsed.model.clone()));
    Ok(Submission {
        operation,
        request,
        model: parsed.model,
        webhook: parsed.webhook,
        metadata: parsed.metadata,
    })
}

/// A multipart endpoint's request (a transcription): its model read from the form as the
/// core reads it, its bytes kept whole, base64, under [`MULTIPART_FIELD`].
fn multipart_submission(
    operation: Operation,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Submission, Error> {
    let switchyard_core::Endpoint::Media(kind) = operation.endpoint() else {
        return Err(invalid("the operation takes no multipart body", "body"));
    };
    let media = switchyard_core::ingress::media::decode(kind, body).map_err(Error::Refused)?;
    let mut request = Map::new();
    request.insert("model".into(), Value::String(media.model.clone()));
    request.insert(
        MULTIPART_FIELD.into(),
        Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
    );
    Ok(Submission {
        operation,
        request,
        model: media.model,
        webhook: header(headers, WEBHOOK_HEADER).map(str::to_string),
        metadata: None,
    })
}

fn wants_async(headers: &HeaderMap) -> bool {
    // RFC 7240: `Prefer: respond-async[, wait=…]`, possibly among other preferences.
    headers.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|p| {
                p.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("respond-async")
            })
        })
    })
}

fn request_hash(s: &Submission) -> String {
    let mut hasher = Sha256::new();
    for part in [
        s.operation.as_str().to_string(),
        s.model.clone(),
        Value::Object(s.request.clone()).to_string(),
        s.webhook.clone().unwrap_or_default(),
        s.metadata
            .clone()
            .map(|m| Value::Object(m).to_string())
            .unwrap_or_default(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    switchyard_core::tasks::webhook::hex(&hasher.finalize())
}

async fn submit(
    State(plane): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let dialect = header(&headers, OPERATION_HEADER)
        .and_then(Operation::parse)
        .map_or(Dialect::OpenAi, Operation::dialect);
    match submit_inner(&plane, &headers, body).await {
        Ok(response) => response,
        Err(err) => error_response(err, dialect),
    }
}

async fn submit_inner(
    plane: &Arc<Plane>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let caller = caller(plane, headers)?;
    let body = body_bytes(plane, body)?;
    let gateway = plane.keyring.gateway();
    let submission = read_submission(&gateway, headers, &body)?;
    if submission.request.get("stream") == Some(&Value::Bool(true)) {
        return Err(invalid(
            "`stream` cannot be used with a task: its result arrives whole",
            "stream",
        ));
    }
    let task_model = gateway
        .task_route(&submission.model)
        .map(|(m, route)| (m.name.clone(), route));
    if !caller.allows(&gateway, &submission.model) {
        return Err(Error::Refused(
            GatewayError::new(
                ErrorKind::PermissionDenied,
                format!("this API key may not use model `{}`", submission.model),
            )
            .with_code("model_not_allowed"),
        ));
    }
    // The core validates the request as the edge would (shape, model, permission,
    // servability), so a bad request is refused now rather than failing later as a task.
    let admitted = Admitted {
        endpoint: submission.operation.endpoint(),
        dialect: submission.operation.dialect(),
        key_id: caller.key_id.clone(),
        team: caller.team.clone(),
        // Tasks name their model in the body, never in a path.
        path_model: None,
    };
    match &task_model {
        Some((name, route)) => {
            // An endpoint's request for a task model (the synchronous facade, or the same
            // with respond-async): only what its providers can answer.
            if let (Some(kind), Some(model)) = (
                switchyard_core::tasks::facade::media_kind(submission.operation.as_str()),
                gateway.config().task_providers.model(name),
            ) {
                let body = crate::planned::request_body(submission.operation, &submission.request)
                    .map_err(Error::Refused)?;
                let media =
                    switchyard_core::ingress::media::decode(kind, &body).map_err(Error::Refused)?;
                switchyard_core::tasks::facade::check(
                    kind,
                    model,
                    &gateway.config().task_providers,
                    media.response_format.as_deref(),
                )
                .map_err(Error::Refused)?;
            } else if submission.operation != Operation::Generation {
                return Err(invalid(
                    format!(
                        "model `{name}` is served by asynchronous providers: submit it with \
                         POST /v1/tasks or an image generation request"
                    ),
                    "model",
                ));
            }
            if let Some(missing) = route
                .iter()
                .map(|d| d.missing_secret.as_ref())
                .reduce(|a, b| a.and(b))
                .flatten()
            {
                return Err(Error::Refused(
                    GatewayError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "model `{name}` cannot be served: the secret `{missing}` is not set"
                        ),
                    )
                    .with_code("provider_credential_missing"),
                ));
            }
        }
        None => {
            let request_bytes =
                crate::planned::request_body(submission.operation, &submission.request)
                    .map_err(Error::Refused)?;
            gateway.plan(&admitted, &request_bytes, 0, now_ms() / 1000, &NoHealth)?;
        }
    }
    if let Some(metadata) = &submission.metadata {
        if Value::Object(metadata.clone()).to_string().len() > MAX_METADATA_BYTES {
            return Err(invalid(
                format!("`metadata` is at most {MAX_METADATA_BYTES} bytes"),
                "metadata",
            ));
        }
    }
    let webhook_url = match &submission.webhook {
        Some(url) => Some(
            plane
                .settings
                .webhook_policy
                .check(url)
                .map_err(|e| {
                    Error::Refused(
                        GatewayError::invalid(format!("invalid webhook URL: {e}"))
                            .with_param("webhook")
                            .with_code("invalid_webhook_url"),
                    )
                })?
                .url,
        ),
        None => {
            let key_id = caller.key_id.clone();
            plane
                .store
                .transact(move |tx| store::webhook_settings(tx, &key_id))
                .await?
                .and_then(|s| s.url)
        }
    };
    if webhook_url.is_some() {
        ensure_secret(plane, &caller.key_id).await?;
    }
    let idempotency_key = match header(headers, "idempotency-key") {
        Some(key)
            if key.len() <= MAX_IDEMPOTENCY_KEY
                && key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') =>
        {
            Some(key.to_string())
        }
        Some(_) => {
            return Err(invalid(
                format!(
                    "`Idempotency-Key` must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters"
                ),
                "Idempotency-Key",
            ))
        }
        None => None,
    };
    let synchronous = header(headers, OPERATION_HEADER).is_some() && !wants_async(headers);
    // A synchronous request's edge names its task (its answer carries the id).
    let id = match header(headers, TASK_ID_HEADER) {
        Some(id) if caller.via_edge && synchronous && valid_task_id(id) => id.to_string(),
        _ => format!("task_{}", control_plane::secrets::random_hex(12)?),
    };
    let now = now_ms();
    let task = Task {
        id,
        key_id: caller.key_id.clone(),
        team: caller.team.clone(),
        model: submission.model.clone(),
        operation: submission.operation,
        input: Value::Object(submission.request.clone()),
        metadata: submission.metadata.clone().map(Value::Object),
        webhook_url,
        idempotency_key,
        request_hash: request_hash(&submission),
        state: TaskState::Queued,
        progress: None,
        attempt: 0,
        attempts_log: Vec::new(),
        deployments: Vec::new(),
        handle: None,
        polls: 0,
        cancel_requested: false,
        result: None,
        outputs: Vec::new(),
        error: None,
        usage: Usage::default(),
        cost: 0.0,
        created_at_ms: now,
        started_at_ms: None,
        attempt_started_at_ms: None,
        completed_at_ms: None,
        deadline_at_ms: now + plane.settings.task_timeout_ms,
        next_run_at_ms: now,
    };
    let inserted = plane
        .store
        .transact(move |tx| store::insert_task(tx, &task))
        .await?;
    if !inserted.replayed {
        plane.metrics.inc(
            "switchyard_tasks_submitted_total",
            &[("operation", submission.operation.as_str())],
        );
        plane.wake_tasks.notify_one();
    }
    let task = inserted.task;
    if synchronous {
        let wait_ms = header(headers, WAIT_HEADER)
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_WAIT_MS);
        return wait_for_result(plane, task, wait_ms).await;
    }
    let mut extra = vec![("location", format!("/v1/tasks/{}", task.id))];
    if inserted.replayed {
        extra.push(("idempotent-replayed", "true".into()));
    }
    Ok(json_response(StatusCode::ACCEPTED, &task.view(), &extra))
}

/// Whether `id` is a task id as this plane makes them (`task_` and 24 hex digits).
fn valid_task_id(id: &str) -> bool {
    id.strip_prefix("task_")
        .is_some_and(|hex| hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The key's webhook secret, created on first use.
async fn ensure_secret(plane: &Plane, key_id: &str) -> Result<store::WebhookSettings, Error> {
    let secret = new_secret()?;
    let key_id = key_id.to_string();
    plane
        .store
        .transact(move |tx| store::ensure_webhook_settings(tx, &key_id, &secret, now_ms()))
        .await
}

fn new_secret() -> Result<String, Error> {
    let bytes = unhex(&control_plane::secrets::random_hex(32)?).unwrap_or_default();
    Ok(WebhookSecret::from_bytes(&bytes).encode())
}

/// The synchronous facade: the endpoint's own answer once the task finishes, or a 504 that
/// names the task (it goes on) when it does not finish within `wait_ms`.
async fn wait_for_result(plane: &Plane, task: Task, wait_ms: u64) -> Result<Response, Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let mut finished = plane.waiters.wait(&task.id);
    let mut current = task;
    loop {
        if current.state.is_final() {
            plane.waiters.forget(&current.id);
            return Ok(endpoint_answer(&current));
        }
        if tokio::time::Instant::now() >= deadline {
            plane.waiters.forget(&current.id);
            let err = GatewayError::new(
                ErrorKind::Timeout,
                format!(
                    "the result was not ready within {wait_ms} ms; the task goes on as {} (GET /v1/tasks/{})",
                    current.id, current.id
                ),
            )
            .with_code("task_timeout");
            let mut response = reply(LocalReply::error(&err, current.operation.dialect()));
            if let Ok(v) = HeaderValue::from_str(&current.id) {
                response.headers_mut().insert(TASK_ID_HEADER, v);
            }
            return Ok(response);
        }
        let sleep = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + WAIT_POLL));
        tokio::select! {
            _ = &mut finished => finished = plane.waiters.wait(&current.id),
            _ = sleep => {}
        }
        let id = current.id.clone();
        match plane
            .store
            .transact(move |tx| store::get_task_any(tx, &id))
            .await?
        {
            Some(task) => current = task,
            None => return Err(task_not_found(&current.id)),
        }
    }
}

/// A finished task as its endpoint would have answered: the JSON answer, speech's raw
/// audio with its content type, a transcription's text as text.
fn endpoint_answer(task: &Task) -> Response {
    let id_header = [(TASK_ID_HEADER, task.id.clone())];
    let output = task.outputs.first();
    match (&task.state, &task.result, &task.error) {
        (TaskState::Succeeded, _, _)
            if task.operation == Operation::AudioSpeech
                && output.is_some_and(|o| o.b64_json.is_some()) =>
        {
            let output = output.expect("checked above");
            let audio = base64::engine::general_purpose::STANDARD
                .decode(output.b64_json.as_deref().unwrap_or_default())
                .unwrap_or_default();
            raw_response(
                audio,
                output.content_type.as_deref().unwrap_or("audio/mpeg"),
                &task.id,
            )
        }
        (TaskState::Succeeded, Some(result), _) => {
            json_response(StatusCode::OK, result, &id_header)
        }
        (TaskState::Succeeded, None, _)
            if task.operation == Operation::AudioTranscriptions
                && output.is_some_and(|o| o.text.is_some()) =>
        {
            let output = output.expect("checked above");
            raw_response(
                output.text.clone().unwrap_or_default().into_bytes(),
                output
                    .content_type
                    .as_deref()
                    .unwrap_or("text/plain; charset=utf-8"),
                &task.id,
            )
        }
        (_, _, Some(err)) => {
            let mut response = reply(LocalReply::error(err, task.operation.dialect()));
            if let Ok(v) = HeaderValue::from_str(&task.id) {
                response.headers_mut().insert(TASK_ID_HEADER, v);
            }
            response
        }
        _ => json_response(StatusCode::OK, &task.view(), &id_header),
    }
}

/// A 200 with `body` as `content_type`, naming the task.
fn raw_response(body: Vec<u8>, content_type: &str, task_id: &str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    for (name, value) in [("content-type", content_type), (TASK_ID_HEADER, task_id)] {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

async fn get_task(State(plane): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let run = async {
        let caller = caller(&plane, &headers)?;
        let task = find(&plane, &id, &caller).await?;
        Ok::<_, Error>(json_response(StatusCode::OK, &task.view(), &[]))
    };
    run.await
        .unwrap_or_else(|e| error_response(e, Dialect::OpenAi))
}

async fn find(plane: &Plane, id: &str, caller: &Caller) -> Result<Task, Error> {
    let (task_id, key_id) = (id.to_string(), caller.key_id.clone());
    plane
        .store
        .transact(move |tx| store::get_task(tx, &task_id, &key_id))
        .await?
        .ok_or_else(|| task_not_found(id))
}

async fn list(
    State(plane): Shared,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let run = async {
        let caller = caller(&plane, &headers)?;
        let Query(pairs) = query.map_err(|_| invalid("the query string is malformed", "query"))?;
        let mut limit = 20u32;
        let mut after = None;
        let mut state = None;
        for (name, value) in pairs {
            match name.as_str() {
                "limit" => {
                    limit = value
                        .parse()
                        .ok()
                        .filter(|l| (1..=100).contains(l))
                        .ok_or_else(|| invalid("`limit` must be 1-100", "limit"))?
                }
                "after" => after = Some(value),
                "status" => {
                    state = Some(TaskState::parse(&value).ok_or_else(|| {
                        invalid(
                            "`status` must be queued, running, succeeded, failed or canceled",
                            "status",
                        )
                    })?)
                }
                other => return Err(invalid(format!("unknown query parameter `{other}`"), other)),
            }
        }
        let after = match after {
            Some(id) => Some(
                find(&plane, &id, &caller)
                    .await
                    .map_err(|_| invalid("`after` names no task of this key", "after"))?,
            ),
            None => None,
        };
        let key_id = caller.key_id.clone();
        let page = plane
            .store
            .transact(move |tx| store::list_tasks(tx, &key_id, state, after.as_ref(), limit))
            .await?;
        let data: Vec<Value> = page.tasks.iter().map(Task::view).collect();
        let body = json!({
            "object": "list",
            "data": data,
            "has_more": page.has_more,
            "first_id": page.tasks.first().map(|t| t.id.clone()),
            "last_id": page.tasks.last().map(|t| t.id.clone()),
        });
        Ok::<_, Error>(json_response(StatusCode::OK, &body, &[]))
    };
    run.await
        .unwrap_or_else(|e| error_response(e, Dialect::OpenAi))
}

async fn cancel(State(plane): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let run = async {
        let caller = caller(&plane, &headers)?;
        let (task_id, key_id) = (id.clone(), caller.key_id.clone());
        let outcome = plane
            .store
            .transact(move |tx| {
                store::request_cancel(tx, &task_id, &key_id, now_ms(), &|task| {
                    finale(task, &Billing::default(), now_ms())
                })
            })
            .await?
            .ok_or_else(|| task_not_found(&id))?;
        match outcome {
            CancelOutcome::Canceled(task) => {
                plane.metrics.inc(
                    "switchyard_tasks_finished_total",
                    &[
                        ("operation", task.operation.as_str()),
                        ("status", "canceled"),
                    ],
                );
                plane.waiters.finished(&task.id);
                plane.wake_deliveries.notify_one();
                Ok(json_response(StatusCode::OK, &task.view(), &[]))
            }
            CancelOutcome::Requested(task) => {
                plane.wake_tasks.notify_one();
                Ok(json_response(StatusCode::OK, &task.view(), &[]))
            }
            CancelOutcome::AlreadyFinal(task) => Err(Error::Refused(
                GatewayError::invalid(format!(
                    "task {} already finished ({}); it cannot be canceled",
                    task.id,
                    task.state.as_str()
                ))
                .with_status(409)
                .with_code("task_already_finished"),
            )),
        }
    };
    run.await
        .unwrap_or_else(|e| error_response(e, Dialect::OpenAi))
}

async fn deliveries(State(plane): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let run = async {
        let caller = caller(&plane, &headers)?;
        let task = find(&plane, &id, &caller).await?;
        let key_id = caller.key_id.clone();
        let list = plane
            .store
            .transact(move |tx| store::task_deliveries(tx, &task.id, &key_id))
            .await?;
        let data: Vec<Value> = list
            .iter()
            .map(|d| {
                let pending = d.state == store::DeliveryState::Pending;
                json!({
                    "id": d.id,
                    "object": "webhook_delivery",
                    "event_type": d.event_type,
                    "url": d.url,
                    "status": match d.state {
                        store::DeliveryState::Pending => "pending",
                        store::DeliveryState::Delivered => "delivered",
                        store::DeliveryState::Dead => "dead",
                    },
                    "attempts": d.attempts,
                    "last_status": d.last_status,
                    "last_error": d.last_error,
                    "created_at": d.created_at_ms / 1000,
                    "delivered_at": d.delivered_at_ms.map(|t| t / 1000),
                    "next_attempt_at": pending.then_some(d.next_attempt_at_ms / 1000),
                })
            })
            .collect();
        Ok::<_, Error>(json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": data}),
            &[],
        ))
    };
    run.await
        .unwrap_or_else(|e| error_response(e, Dialect::OpenAi))
}

async fn redeliver(State(plane): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let run = async {
        let caller = caller(&plane, &headers)?;
        let task = find(&plane, &id, &caller).await?;
        let key_id = caller.key_id.clone();
        let task_id = task.id.clone();
        let count = plane
            .store
            .transact(move |tx| store::redeliver(tx, &task_id, &key_id, now_ms()))
            .await?;
        if count == 0 {
            return Err(Error::Refused(
                GatewayError::invalid(format!(
                    "task {} has no webhook message to redeliver (no webhook URL, or not finished yet)",
                    task.id
                ))
                .with_status(409)
                .with_code("no_webhook_messages"),
            ));
        }
        plane.wake_deliveries.notify_one();
        Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({"redelivered": count}),
            &[],
        ))
    };
    run.await
        .unwrap_or_else(|e| error_response(e, Dialect::OpenAi))
}

fn settings_view(settings: &store::WebhookSettings) -> Value {
    json!({"object": "webhook_settings", "url": settings.url, "secret": settings.secret})
}

async fn get_settings(State(plane): Shared, headers: HeaderMap) -> Response {
    let run = async {
        let caller = caller(&plane, &headers)?;
        let settings = ensure_secret(&plane, &caller.key_id).await?;
        Ok::<_, Error>(json_response(
            StatusCode::OK,
            &settings_view(&settings),
            &[],
        ))
    };
    run.await
        .unwrap_or_else(|e| error_response(e, Dialect::OpenAi))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsUpdate {
    #[serde(default, deserialize_with = "present")]
    url: Option<Option<String>>,
    #[serde(default)]
    rotate_secret: bool,
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

async fn update_settings(
    State(plane): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let caller = caller(&plane, &headers)?;
        let body = body_bytes(&plane, body)?;
        let update: SettingsUpdate = serde_json::from_slice(&body)
            .map_err(|e| invalid(format!("invalid webhook settings: {e}"), "body"))?;
        let url = match update.url {
            Some(Some(url)) => Some(Some(
                plane
                    .settings
                    .webhook_policy
                    .check(&url)
                    .map_err(|e| {
                        Error::Refused(
                            GatewayError::invalid(format!("invalid webhook URL: {e}"))
                                .with_param("url")
                                .with_code("invalid_webhook_url"),
                        )
                    })?
                    .url,
            )),
            Some(None) => Some(None),
            None => None,
        };
        ensure_secret(&plane, &caller.key_id).await?;
        let secret = if update.rotate_secret {
            Some(new_secret()?)
        } else {
            None
        };
        let key_id = caller.key_id.clone();
        let settings = plane
            .store
            .transact(move |tx| {
                store::update_webhook_settings(
                    tx,
                    &key_id,
                    url.as_ref().map(|u| u.as_deref()),
                    secret.as_deref(),
                    now_ms(),
                )?;
                store::webhook_settings(tx, &key_id)
            })
            .await?
            .ok_or_else(|| Error::Corrupt("webhook settings vanished".into()))?;
        Ok::<_, Error>(json_response(
            StatusCode::OK,
            &settings_view(&settings),
            &[],
        ))
    };
    run.await
        .unwrap_or_else(|e| error_response(e, Dialect::OpenAi))
}

async fn metrics(State(plane): Shared) -> Response {
    let counts = plane.store.transact(store::counts).await;
    let gauges: Vec<Gauge> = match counts {
        Ok(counts) => counts
            .into_iter()
            .map(|(what, state, value)| Gauge {
                name: format!("switchyard_{what}_by_state"),
                labels: vec![("state".to_string(), state)],
                value,
            })
            .collect(),
        Err(err) => {
            eprintln!("task plane: counting for metrics failed: {err}");
            Vec::new()
        }
    };
    (
        [("content-type", "text/plain; version=0.0.4")],
        plane.metrics.render(&gauges),
    )
        .into_response()
}

/// Why a provider webhook was not taken, with the outcome it is counted as.
struct Refusal(&'static str, Error);

/// `POST /v1/provider-webhooks/{provider}/{id}`: an asynchronous provider says task `id`
/// changed. Verified with the provider's own scheme and checked against the task's current
/// provider task; then the task polls its provider now (the poll's answer, not the
/// webhook's body, is what the task records). Every call is counted by outcome.
async fn provider_webhook(
    State(plane): Shared,
    Path((provider, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (kind, outcome) = match provider_webhook_inner(&plane, &provider, &id, &headers, body).await
    {
        Ok((kind, nudged)) => (
            kind,
            Ok(if nudged {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            }),
        ),
        Err((kind, refusal)) => (kind, Err(refusal)),
    };
    let label = match &outcome {
        Ok(_) => "accepted",
        Err(Refusal(label, _)) => label,
    };
    plane.metrics.inc(
        "switchyard_provider_webhooks_total",
        &[("provider", kind), ("outcome", label)],
    );
    match outcome {
        Ok(status) => json_response(status, &json!({"received": true}), &[]),
        Err(Refusal(_, err)) => error_response(err, Dialect::OpenAi),
    }
}

type WebhookOutcome = Result<(&'static str, bool), (&'static str, Refusal)>;

async fn provider_webhook_inner(
    plane: &Arc<Plane>,
    provider: &str,
    id: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> WebhookOutcome {
    let unknown = |label| ("unknown", Refusal(label, task_not_found(id)));
    let body = body_bytes(plane, body).map_err(|e| ("unknown", Refusal("malformed", e)))?;
    let lookup = id.to_string();
    let task = plane
        .store
        .transact(move |tx| store::get_task_any(tx, &lookup))
        .await
        .map_err(|e| ("unknown", Refusal("error", e)))?
        .filter(|t| t.operation == Operation::Generation)
        .ok_or_else(|| unknown("unknown_task"))?;
    let (deployment, provider_task_id) = crate::provider::current(plane, &task)
        .filter(|(d, _)| d.provider_name == provider)
        .ok_or_else(|| unknown("unknown_task"))?;
    let kind = deployment.provider.name();
    let key = match (&deployment.webhook_secret, &deployment.webhook_jwks_url) {
        (Some(secret), _) => Some(WebhookKey::Secret(secret.clone())),
        (None, Some(url)) => crate::provider::jwks(plane, url)
            .await
            .map(WebhookKey::Jwks),
        (None, None) => None,
    };
    let pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let refused = |label, status: u16, message: String| {
        (
            kind,
            Refusal(
                label,
                Error::Refused(
                    GatewayError::new(ErrorKind::from_status(status), message).with_status(status),
                ),
            ),
        )
    };
    deployment
        .provider
        .verify_webhook(key.as_ref(), Headers(&borrowed), &body, now_ms() / 1000)
        .map_err(|e| refused("rejected", 401, format!("webhook refused: {e}")))?;
    let reported = deployment
        .provider
        .read_webhook(&body)
        .map_err(|e| refused("malformed", 400, format!("webhook unreadable: {e}")))?;
    // Before the submit's answer is recorded the id cannot be compared; the poll it triggers
    // asks about the recorded task anyway.
    if provider_task_id.is_some_and(|id| id != reported.id) {
        return Err(refused(
            "stale",
            400,
            "the webhook is about another provider task than the task's current one".into(),
        ));
    }
    let (lookup, now) = (id.to_string(), now_ms());
    let nudged = plane
        .store
        .transact(move |tx| store::nudge_task(tx, &lookup, now))
        .await
        .map_err(|e| (kind, Refusal("error", e)))?;
    if nudged {
        plane.wake_tasks.notify_one();
    }
    Ok((kind, nudged))
}
