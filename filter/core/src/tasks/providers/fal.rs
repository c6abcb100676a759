//! fal queue API: submit `POST https://queue.fal.run/{model}`, status
//! `GET /{app}/requests/{id}/status`, result `GET /{app}/requests/{id}`, cancel
//! `PUT /{app}/requests/{id}/cancel`, where `{app}` is the model's first two path segments
//! (`fal-ai/flux/dev` → `fal-ai/flux`), as the submit answer's `status_url` shows.
//!
//! Wire format: <https://docs.fal.ai/model-endpoints/queue>; webhooks:
//! <https://docs.fal.ai/model-endpoints/webhooks>. Traps:
//! - the status call answers **202** with `IN_QUEUE` or `IN_PROGRESS` and 200 with
//!   `COMPLETED`; the outputs are *not* in it — a second call fetches the result, and a
//!   failed request shows as a non-2xx result (`{"detail": ...}`);
//! - the webhook (`?fal_webhook=` on submit) sends `{request_id, gateway_request_id,
//!   status: "OK" | "ERROR", payload, error, payload_error}`;
//! - it is signed with **Ed25519**: headers `X-Fal-Webhook-Request-Id`, `-User-Id`,
//!   `-Timestamp` and `-Signature` (hex), over `request_id \n user_id \n timestamp \n
//!   hex(sha256(body))`, verified with any key of the JWKS at
//!   `https://rest.alpha.fal.ai/.well-known/jwks.json` (`x`: base64url, sometimes padded);
//!   a timestamp more than 300 s away is refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{
    error_message, json_answer, malformed, parse_json, query_escape, Headers, InboundError,
    PollAnswer, ProviderCall, ProviderError, ProviderFailure, ProviderState, ProviderTask,
    SubmitSpec,
};
use crate::tasks::webhook::{check_timestamp, hex, unhex, WebhookError, DEFAULT_TOLERANCE_S};

const NAME: &str = "fal";

/// Where fal publishes its webhook keys.
pub const JWKS_URL: &str = "https://rest.alpha.fal.ai/.well-known/jwks.json";
/// Request id header.
pub const REQUEST_ID_HEADER: &str = "x-fal-webhook-request-id";
/// User id header.
pub const USER_ID_HEADER: &str = "x-fal-webhook-user-id";
/// Timestamp header (unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-fal-webhook-timestamp";
/// Signature header (hex Ed25519).
pub const SIGNATURE_HEADER: &str = "x-fal-webhook-signature";

/// fal's webhook keys, parsed from its JWKS document.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    keys: Vec<VerifyingKey>,
}

impl Jwks {
    /// Parses a JWKS document, keeping its Ed25519 (`kty: OKP`, `crv: Ed25519`) keys.
    pub fn parse(document: &[u8]) -> Result<Jwks, InboundError> {
        let doc: Value = serde_json::from_slice(document)
            .map_err(|e| InboundError::Malformed(format!("JWKS is not JSON: {e}")))?;
        let keys = doc["keys"]
            .as_array()
            .ok_or_else(|| InboundError::Malformed("JWKS without `keys`".into()))?
            .iter()
            .filter(|k| k["kty"] == "OKP" && k["crv"] == "Ed25519")
            .filter_map(|k| k["x"].as_str())
            .map(|x| {
                let bytes = URL_SAFE_NO_PAD
                    .decode(x.trim_end_matches('='))
                    .map_err(|_| InboundError::Malformed("JWKS `x` is not base64url".into()))?;
                let bytes: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| InboundError::Malformed("Ed25519 keys are 32 bytes".into()))?;
                VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| InboundError::Malformed("not an Ed25519 point".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(InboundError::NoKey);
        }
        Ok(Jwks { keys })
    }
}

/// The app part of a model id: its first two path segments.
fn app(model: &str) -> &str {
    let model = model.trim_matches('/');
    match model.match_indices('/').nth(1) {
        Some((at, _)) => &model[..at],
        None => model,
    }
}

/// The submit call: the input is the model's own JSON body.
pub fn submit(spec: &SubmitSpec<'_>) -> ProviderCall {
    let mut path = format!("/{}", spec.model.trim_matches('/'));
    if let Some(url) = spec.webhook_url {
        path.push_str("?fal_webhook=");
        path.push_str(&query_escape(url));
    }
    ProviderCall::post_json(path, spec.input)
}

/// Reads the submit answer (`request_id`, status URLs).
pub fn read_submit(status: u16, body: &[u8]) -> Result<ProviderTask, ProviderError> {
    let answer = json_answer(NAME, status, body)?;
    let id = answer["request_id"]
        .as_str()
        .ok_or_else(|| malformed(NAME, "submit answer without `request_id`"))?;
    Ok(ProviderTask::new(id, ProviderState::Queued))
}

/// The status call.
pub fn poll(model: &str, task_id: &str) -> ProviderCall {
    ProviderCall::get(format!("/{}/requests/{task_id}/status", app(model)))
}

/// Reads a status answer; `COMPLETED` asks for the result call.
pub fn read_status(
    model: &str,
    task_id: &str,
    status: u16,
    body: &[u8],
) -> Result<PollAnswer, ProviderError> {
    let answer = json_answer(NAME, status, body)?;
    let state = match answer["status"].as_str() {
        Some("IN_QUEUE") => ProviderState::Queued,
        Some("IN_PROGRESS") => ProviderState::Running,
        Some("COMPLETED") => {
            return Ok(PollAnswer::FetchResult(ProviderCall::get(format!(
                "/{}/requests/{task_id}",
                app(model)
            ))))
        }
        other => return Err(malformed(NAME, format!("unknown status {other:?}"))),
    };
    Ok(PollAnswer::Task(ProviderTask::new(task_id, state)))
}

/// Reads the result call's answer: the model's output, or its error.
pub fn read_result(task_id: &str, status: u16, body: &[u8]) -> Result<ProviderTask, ProviderError> {
    if !(200..300).contains(&status) {
        return Ok(ProviderTask::failed(
            task_id,
            ProviderFailure::new(status.to_string(), error_message(body)),
        ));
    }
    Ok(succeeded(task_id, &parse_json(NAME, body)?))
}

fn succeeded(task_id: &str, payload: &Value) -> ProviderTask {
    let mut task = ProviderTask::new(task_id, ProviderState::Succeeded);
    let mut images = 0;
    if let Value::Object(fields) = payload {
        for (name, value) in fields {
            let urls: Vec<String> = match value {
                Value::Object(o) => o
                    .get("url")
                    .and_then(Value::as_str)
                    .map(String::from)
                    .into_iter()
                    .collect(),
                Value::Array(items) => items
                    .iter()
                    .filter_map(|i| i.get("url").and_then(Value::as_str).map(String::from))
                    .collect(),
                _ => Vec::new(),
            };
            if name.starts_with("image") {
                images += urls.len() as u32;
            }
            task.outputs.extend(urls);
        }
    }
    task.usage.images = images;
    task.progress = Some(1.0);
    task
}

/// Reads a webhook body.
pub fn read_webhook(body: &[u8]) -> Result<ProviderTask, ProviderError> {
    let hook = parse_json(NAME, body)?;
    let id = hook["request_id"]
        .as_str()
        .ok_or_else(|| malformed(NAME, "webhook without `request_id`"))?;
    match hook["status"].as_str() {
        Some("OK") => Ok(succeeded(id, &hook["payload"])),
        Some("ERROR") => {
            let message = hook["error"]
                .as_str()
                .or(hook["payload_error"].as_str())
                .unwrap_or("the request failed");
            Ok(ProviderTask::failed(
                id,
                ProviderFailure::new("ERROR", message),
            ))
        }
        other => Err(malformed(NAME, format!("unknown webhook status {other:?}"))),
    }
}

/// The cancel call.
pub fn cancel(model: &str, task_id: &str) -> ProviderCall {
    ProviderCall {
        method: super::Method::Put,
        path: format!("/{}/requests/{task_id}/cancel", app(model)),
        headers: Vec::new(),
        body: Vec::new(),
    }
}

/// The signed message of a webhook.
pub fn signed_message(request_id: &str, user_id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    format!(
        "{request_id}\n{user_id}\n{timestamp}\n{}",
        hex(&Sha256::digest(body))
    )
    .into_bytes()
}

/// Verifies a webhook's Ed25519 signature against any of the JWKS keys.
pub fn verify_webhook(
    jwks: &Jwks,
    headers: Headers<'_>,
    body: &[u8],
    now_s: u64,
) -> Result<(), InboundError> {
    let request_id = headers.required(REQUEST_ID_HEADER)?;
    let user_id = headers.required(USER_ID_HEADER)?;
    let timestamp = headers.required(TIMESTAMP_HEADER)?;
    let signature = headers.required(SIGNATURE_HEADER)?;
    check_timestamp(timestamp, now_s, DEFAULT_TOLERANCE_S)?;
    let signature = unhex(signature)
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or(WebhookError::NoMatchingSignature)?;
    let message = signed_message(request_id, user_id, timestamp, body);
    if jwks
        .keys
        .iter()
        .any(|key| key.verify_strict(&message, &signature).is_ok())
    {
        Ok(())
    } else {
        Err(WebhookError::NoMatchingSignature.into())
    }
}
