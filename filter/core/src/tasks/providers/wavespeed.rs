//! WaveSpeedAI: `POST /api/v3/{model}`, poll `GET /api/v3/predictions/{id}/result`.
//!
//! Wire format: <https://wavespeed.ai/docs/docs-api/submit-task> and
//! <https://wavespeed.ai/docs/docs-api/get-result>; webhooks:
//! <https://wavespeed.ai/docs/docs-api/verifying_webhook>. Traps:
//! - every answer is HTTP **200** with a `{code, message, data}` envelope; a refused call has
//!   `code` ≠ 200 (and `data` null), a failed task is `code: 200` with `data.status: "failed"`
//!   and `data.error` — the HTTP status says nothing;
//! - states are `created | processing | completed | failed`;
//! - the webhook (`?webhook=` on submit) carries the prediction itself (no envelope), with
//!   `webhook-id`, `webhook-timestamp` and `webhook-signature: v3,<hex HMAC-SHA256>` over
//!   `{id}.{timestamp}.{body}`, keyed with the secret's text after `whsec_` as raw bytes
//!   (not base64-decoded, unlike Standard Webhooks); older than 300 s is refused;
//! - there is no cancel call.

use serde_json::Value;

use super::{
    completed, json_answer, malformed, parse_json, query_escape, Headers, InboundError,
    ProviderCall, ProviderError, ProviderFailure, ProviderState, ProviderTask, SubmitSpec,
};
use crate::tasks::webhook::{
    check_timestamp, hex, hmac_sha256, hmac_verify, signed_content, unhex, DEFAULT_TOLERANCE_S,
    ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};

const NAME: &str = "wavespeed";

/// The submit call: the input is the model's own JSON body.
pub fn submit(spec: &SubmitSpec<'_>) -> ProviderCall {
    let mut path = format!("/api/v3/{}", spec.model.trim_start_matches('/'));
    if let Some(url) = spec.webhook_url {
        path.push_str("?webhook=");
        path.push_str(&query_escape(url));
    }
    ProviderCall::post_json(path, spec.input)
}

/// The poll call.
pub fn poll(task_id: &str) -> ProviderCall {
    ProviderCall::get(format!("/api/v3/predictions/{task_id}/result"))
}

/// Reads a submit or poll answer (the same envelope).
pub fn read_task(status: u16, body: &[u8]) -> Result<ProviderTask, ProviderError> {
    let envelope = json_answer(NAME, status, body)?;
    let code = envelope["code"]
        .as_u64()
        .ok_or_else(|| malformed(NAME, "no numeric `code` in the envelope"))?;
    if code != 200 {
        return Err(ProviderError::Refused {
            provider: NAME,
            status: u16::try_from(code).unwrap_or(500),
            message: envelope["message"].as_str().unwrap_or_default().to_string(),
        });
    }
    prediction(&envelope["data"], Some(code))
}

/// Reads a webhook body: the prediction without the envelope.
pub fn read_webhook(body: &[u8]) -> Result<ProviderTask, ProviderError> {
    prediction(&parse_json(NAME, body)?, None)
}

fn prediction(data: &Value, code: Option<u64>) -> Result<ProviderTask, ProviderError> {
    let id = data["id"]
        .as_str()
        .ok_or_else(|| malformed(NAME, "prediction without `id`"))?;
    let state = match data["status"].as_str() {
        Some("created") => ProviderState::Queued,
        Some("processing") => ProviderState::Running,
        Some("completed") => ProviderState::Succeeded,
        Some("failed") => ProviderState::Failed,
        other => return Err(malformed(NAME, format!("unknown status {other:?}"))),
    };
    if state == ProviderState::Failed {
        let message = data["error"].as_str().filter(|e| !e.is_empty());
        let code = code.map_or_else(|| "failed".to_string(), |c| c.to_string());
        return Ok(ProviderTask::failed(
            id,
            ProviderFailure::new(code, message.unwrap_or("the task failed")),
        ));
    }
    if state == ProviderState::Succeeded {
        return Ok(completed(id, &data["outputs"], &data["input"]));
    }
    Ok(ProviderTask::new(id, state))
}

/// Verifies `webhook-signature: v3,<hex>` (see the module docs for the key's form).
pub fn verify_webhook(
    secret: &str,
    headers: Headers<'_>,
    body: &[u8],
    now_s: u64,
) -> Result<(), InboundError> {
    let id = headers.required(ID_HEADER)?;
    let timestamp = headers.required(TIMESTAMP_HEADER)?;
    let signatures = headers.required(SIGNATURE_HEADER)?;
    let timestamp = check_timestamp(timestamp, now_s, DEFAULT_TOLERANCE_S)?;
    let content = signed_content(id, timestamp, body);
    let matched = signatures
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v3")
        .filter_map(|(_, sig)| unhex(sig))
        .any(|sig| hmac_verify(key_of(secret), &content, &sig));
    if matched {
        Ok(())
    } else {
        Err(crate::tasks::webhook::WebhookError::NoMatchingSignature.into())
    }
}

/// Signs a webhook as WaveSpeed does (for test doubles and round-trip tests).
pub fn sign_webhook(secret: &str, id: &str, timestamp: u64, body: &[u8]) -> String {
    let content = signed_content(id, timestamp, body);
    format!("v3,{}", hex(&hmac_sha256(key_of(secret), &content)))
}

/// The HMAC key: the secret's text after `whsec_`, as bytes (not base64-decoded).
fn key_of(secret: &str) -> &[u8] {
    let secret = secret.trim();
    secret.strip_prefix("whsec_").unwrap_or(secret).as_bytes()
}
