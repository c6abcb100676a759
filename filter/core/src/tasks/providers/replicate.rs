//! Replicate predictions: `POST /v1/models/{owner}/{name}/predictions` (official models) or
//! `POST /v1/predictions` with a `version` (a model written `owner/name:version`), poll
//! `GET /v1/predictions/{id}`, cancel `POST /v1/predictions/{id}/cancel`.
//!
//! Wire format: <https://replicate.com/docs/reference/http#predictions.create> and
//! <https://replicate.com/docs/topics/predictions/lifecycle>; webhooks:
//! <https://replicate.com/docs/topics/webhooks/verify-webhook>. Submits answer **201** with the
//! prediction; states are `starting | processing | succeeded | failed | canceled`; `output`
//! is a URL, a list of URLs or model-specific JSON; webhooks carry the prediction and are
//! signed per Standard Webhooks (secret from `GET /v1/webhooks/default/secret`).
//! `webhook_events_filter: ["completed"]` asks for the terminal event only.

use serde_json::{json, Value};

use super::{
    completed, json_answer, malformed, Headers, InboundError, ProviderCall, ProviderError,
    ProviderFailure, ProviderState, ProviderTask, SubmitSpec,
};
use crate::tasks::webhook::{SignedHeaders, WebhookSecret, DEFAULT_TOLERANCE_S};

const NAME: &str = "replicate";

/// The submit call.
pub fn submit(spec: &SubmitSpec<'_>) -> ProviderCall {
    let mut body = json!({ "input": spec.input });
    if let Some(url) = spec.webhook_url {
        body["webhook"] = json!(url);
        body["webhook_events_filter"] = json!(["completed"]);
    }
    let path = match spec.model.split_once(':') {
        Some((_, version)) => {
            body["version"] = json!(version);
            "/v1/predictions".to_string()
        }
        None => format!("/v1/models/{}/predictions", spec.model),
    };
    ProviderCall::post_json(path, &body)
}

/// The poll call.
pub fn poll(task_id: &str) -> ProviderCall {
    ProviderCall::get(format!("/v1/predictions/{task_id}"))
}

/// The cancel call.
pub fn cancel(task_id: &str) -> ProviderCall {
    ProviderCall::post(format!("/v1/predictions/{task_id}/cancel"))
}

/// Reads a prediction (submit answer, poll answer or webhook body).
pub fn read_task(status: u16, body: &[u8]) -> Result<ProviderTask, ProviderError> {
    let prediction = json_answer(NAME, status, body)?;
    let id = prediction["id"]
        .as_str()
        .ok_or_else(|| malformed(NAME, "prediction without `id`"))?;
    let state = match prediction["status"].as_str() {
        Some("starting") => ProviderState::Queued,
        Some("processing") => ProviderState::Running,
        Some("succeeded") => ProviderState::Succeeded,
        Some("failed") => ProviderState::Failed,
        Some("canceled") | Some("aborted") => ProviderState::Canceled,
        other => return Err(malformed(NAME, format!("unknown status {other:?}"))),
    };
    if state == ProviderState::Failed {
        let message = match &prediction["error"] {
            Value::String(s) => s.clone(),
            Value::Null => "the prediction failed".to_string(),
            other => other.to_string(),
        };
        return Ok(ProviderTask::failed(
            id,
            ProviderFailure::new("failed", message),
        ));
    }
    if state == ProviderState::Succeeded {
        return Ok(completed(id, &prediction["output"], &prediction["input"]));
    }
    Ok(ProviderTask::new(id, state))
}

/// Verifies a webhook per Standard Webhooks.
pub fn verify_webhook(
    secret: &str,
    headers: Headers<'_>,
    body: &[u8],
    now_s: u64,
) -> Result<(), InboundError> {
    let secret = WebhookSecret::parse(secret)?;
    let signed = SignedHeaders {
        id: headers.get("webhook-id"),
        timestamp: headers.get("webhook-timestamp"),
        signature: headers.get("webhook-signature"),
    };
    Ok(secret.verify(&signed, body, now_s, DEFAULT_TOLERANCE_S)?)
}
