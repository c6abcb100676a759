//! Operations the core plans end to end — chat (either dialect), embeddings and the media
//! endpoints (images, speech, transcriptions) — run as tasks: the core builds each attempt's
//! native request and reads its answer, exactly as for the synchronous endpoint; this module
//! only sends it, and keeps a media answer as the task's outputs (images as the provider's
//! URLs or base64, speech as base64 audio with its content type, a transcription's text). The attempt order is fixed per task (seeded by its id), and a failed or
//! timed-out attempt falls back to the next deployment once before the task fails.

use std::time::{Duration, Instant};

use base64::Engine as _;
use control_plane::ledger::Price as LedgerPrice;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use switchyard_core::routing::NoHealth;
use switchyard_core::{Admitted, ErrorKind, GatewayError, Plan, UpstreamRequest};

use crate::model::{AttemptEntry, Operation, Output, Task, TaskState, Usage, MULTIPART_FIELD};
use crate::time::now_ms;
use crate::worker::Billing;
use crate::Plane;

/// Attempts per task: the primary, and one fallback.
pub(crate) const MAX_ATTEMPTS: u32 = 2;

/// A stable routing seed per task, so every step of it sees the same attempt order.
pub(crate) fn seed(task_id: &str) -> u64 {
    let digest = Sha256::digest(task_id.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
}

/// The core's plan for a task's request, as its key would get it at the edge.
pub(crate) fn plan(plane: &Plane, task: &Task) -> Result<Plan, GatewayError> {
    let gateway = plane.keyring.gateway();
    let admitted = Admitted {
        endpoint: task.operation.endpoint(),
        dialect: task.operation.dialect(),
        key_id: task.key_id.clone(),
        team: task.team.clone(),
        // Tasks name their model in the body, never in a path.
        path_model: None,
    };
    let input = task.input.as_object().cloned().unwrap_or_default();
    let body = request_body(task.operation, &input)?;
    gateway.plan(&admitted, &body, seed(&task.id), now_ms() / 1000, &NoHealth)
}

/// The endpoint's request body a task's input stands for: the JSON object itself, or for a
/// multipart operation the form's bytes kept base64 under [`MULTIPART_FIELD`].
pub(crate) fn request_body(
    operation: Operation,
    input: &Map<String, Value>,
) -> Result<Vec<u8>, GatewayError> {
    if !operation.multipart() {
        return serde_json::to_vec(input)
            .map_err(|e| GatewayError::invalid(format!("the request is not JSON: {e}")));
    }
    input
        .get(MULTIPART_FIELD)
        .and_then(Value::as_str)
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .ok_or_else(|| {
            GatewayError::invalid(format!(
                "`{MULTIPART_FIELD}` must hold the form's bytes, base64"
            ))
        })
}

/// What a media answer leaves as the task's outputs: each image (the provider's URL or its
/// base64), the speech audio (base64, with the provider's content type), a transcription's
/// text. Chat and embeddings have none (their answer is the `result`).
fn media_outputs(operation: Operation, body: &[u8], content_type: &str) -> Vec<Output> {
    let output = |kind: &str| Output {
        kind: kind.into(),
        url: None,
        b64_json: None,
        text: None,
        content_type: None,
    };
    match operation {
        Operation::ImagesGenerations | Operation::ImagesEdits => {
            let json: Value = serde_json::from_slice(body).unwrap_or_default();
            let format = json.get("output_format").and_then(Value::as_str);
            json.get("data")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|image| Output {
                    url: image.get("url").and_then(Value::as_str).map(str::to_string),
                    b64_json: image
                        .get("b64_json")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    content_type: Some(format!("image/{}", format.unwrap_or("png"))),
                    ..output("image")
                })
                .collect()
        }
        Operation::AudioSpeech => vec![Output {
            b64_json: Some(base64::engine::general_purpose::STANDARD.encode(body)),
            content_type: Some(content_type.to_string()),
            ..output("audio")
        }],
        Operation::AudioTranscriptions => {
            let text = match serde_json::from_slice::<Value>(body) {
                Ok(json) => json.get("text").and_then(Value::as_str).map(str::to_string),
                Err(_) => Some(String::from_utf8_lossy(body).into_owned()),
            };
            vec![Output {
                text,
                content_type: Some(content_type.to_string()),
                ..output("text")
            }]
        }
        // Chat and embeddings answer in `result`; asynchronous-provider generations never run
        // through this plan (`crate::provider` reads their outputs from the provider).
        Operation::ChatCompletions
        | Operation::Messages
        | Operation::Embeddings
        | Operation::Generation => Vec::new(),
    }
}

/// How one attempt went.
enum Attempted {
    /// A 2xx answer, translated for the client, with its usage and content type.
    Answered(Vec<u8>, switchyard_core::canonical::TokenUsage, String),
    /// A final error (the provider's own, translated): no fallback.
    Refused(GatewayError),
    /// A failure worth trying elsewhere: a retryable status, a timeout, a broken connection,
    /// an unreadable answer.
    Failed(String, GatewayError),
}

/// Runs the task's current attempt; returns who served it when the task finished.
pub(crate) async fn run(plane: &Plane, task: &mut Task) -> Option<Billing> {
    let plan = match plan(plane, task) {
        Ok(plan) => plan,
        Err(err) => return Some(fail(task, err, Billing::default())),
    };
    if task.deployments.is_empty() {
        task.deployments = plan
            .attempts
            .iter()
            .take(MAX_ATTEMPTS as usize)
            .map(|a| a.deployment_id.clone())
            .collect();
    }
    let index = task.attempt as usize;
    let Some(attempt) = plan.attempts.get(index) else {
        return Some(fail(task, all_failed(task), Billing::default()));
    };
    let billing = Billing {
        provider: attempt.provider.clone(),
        deployment: attempt.deployment_id.clone(),
        price: Some(LedgerPrice {
            input: attempt.price.input,
            cached_input: attempt.price.cached_input,
            output: attempt.price.output,
            image: attempt.price.image,
            second: attempt.price.second,
        }),
    };
    let now = now_ms();
    task.attempt_started_at_ms = Some(now);
    let remaining = task.deadline_at_ms.saturating_sub(now).max(1);
    let started = Instant::now();
    let attempted = match plan.upstream_request(index) {
        Ok(request) => send(plane, &plan, index, request, remaining).await,
        // The request cannot be built for this provider: the answer, not a fallback.
        Err(err) => Attempted::Refused(err),
    };
    let latency_ms = started.elapsed().as_millis() as u64;
    match attempted {
        Attempted::Answered(body, tokens, content_type) => {
            log_attempt(task, &billing.deployment, "succeeded".into());
            let record = plan.usage_record(
                index,
                tokens,
                200,
                task.attempts_log.len() as u32,
                Some(latency_ms),
            );
            // Metered as the synchronous endpoint is: tokens, plus images and seconds.
            let media = plan.media_usage(&body).unwrap_or_default();
            // The endpoint's own answer is the result when it is JSON (audio bytes and a
            // transcription's plain text are outputs only).
            task.result = serde_json::from_slice(&body).ok();
            task.outputs = media_outputs(task.operation, &body, &content_type);
            task.usage = Usage {
                input_tokens: tokens.input,
                cached_input_tokens: tokens.cached_input,
                output_tokens: tokens.output,
                images: media.images,
                seconds: media.seconds,
            };
            task.cost = record.cost
                + switchyard_core::usage::media_cost(media.images, media.seconds, &attempt.price);
            task.state = TaskState::Succeeded;
            task.progress = Some(1.0);
            task.completed_at_ms = Some(now_ms());
            Some(billing)
        }
        Attempted::Refused(err) => {
            log_attempt(task, &billing.deployment, format!("status {}", err.status));
            Some(fail(task, err, billing))
        }
        Attempted::Failed(outcome, err) => {
            log_attempt(task, &billing.deployment, outcome);
            if task.attempt + 1 < MAX_ATTEMPTS && index + 1 < plan.attempts.len() {
                // Fall back: the next step runs the next deployment, right away.
                task.attempt += 1;
                task.next_run_at_ms = now_ms();
                None
            } else if task.attempts_log.len() > 1 {
                Some(fail(task, all_failed(task), billing))
            } else {
                Some(fail(task, err, billing))
            }
        }
    }
}

pub(crate) fn log_attempt(task: &mut Task, deployment: &str, outcome: String) {
    task.attempts_log.push(AttemptEntry {
        deployment: deployment.to_string(),
        outcome,
    });
}

pub(crate) fn fail(task: &mut Task, err: GatewayError, billing: Billing) -> Billing {
    task.state = TaskState::Failed;
    task.error = Some(err);
    task.completed_at_ms = Some(now_ms());
    billing
}

/// The error of a task whose every attempt failed: 504 when all timed out, else 502.
pub(crate) fn all_failed(task: &Task) -> GatewayError {
    let all_timeouts =
        !task.attempts_log.is_empty() && task.attempts_log.iter().all(|a| a.outcome == "timeout");
    let listing = task
        .attempts_log
        .iter()
        .map(|a| format!("{} ({})", a.deployment, a.outcome))
        .collect::<Vec<_>>()
        .join("; ");
    GatewayError::new(
        if all_timeouts {
            ErrorKind::Timeout
        } else {
            ErrorKind::BadGateway
        },
        format!("all {} attempts failed: {listing}", task.attempts_log.len()),
    )
    .with_code("all_attempts_failed")
}

/// Sends one attempt and reads its whole answer.
async fn send(
    plane: &Plane,
    plan: &Plan,
    index: usize,
    request: UpstreamRequest,
    remaining_ms: u64,
) -> Attempted {
    let timeout = Duration::from_millis(request.timeout_ms.min(remaining_ms));
    let url = format!("{}://{}{}", request.scheme, request.authority, request.path);
    let mut builder = plane
        .http
        .post(&url)
        .timeout(timeout)
        .body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let response = match builder.send().await {
        Ok(response) => response,
        Err(err) => return transport_failure(&err),
    };
    let status = response.status().as_u16();
    let upstream_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(err) => return transport_failure(&err),
    };
    if (200..300).contains(&status) {
        return match plan.translate_response(index, &body) {
            Ok((out, usage)) => Attempted::Answered(
                out,
                usage,
                plan.answer_content_type(upstream_type.as_deref()),
            ),
            Err(err) => Attempted::Failed("malformed answer".into(), err),
        };
    }
    let err = plan.translate_error(index, status, &body);
    if plan.should_retry_status(status) {
        Attempted::Failed(format!("status {status}"), err)
    } else {
        Attempted::Refused(err)
    }
}

fn transport_failure(err: &reqwest::Error) -> Attempted {
    if err.is_timeout() {
        Attempted::Failed(
            "timeout".into(),
            GatewayError::new(ErrorKind::Timeout, "the deployment did not answer in time"),
        )
    } else if err.is_connect() {
        Attempted::Failed(
            "connection failed".into(),
            GatewayError::new(ErrorKind::BadGateway, "could not connect to the deployment"),
        )
    } else {
        Attempted::Failed(
            "reset".into(),
            GatewayError::new(
                ErrorKind::BadGateway,
                "the connection to the deployment broke",
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multipart_input_gives_back_the_forms_bytes() {
        let form = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n\xff\x00\r\n--b--\r\n";
        let mut input = Map::new();
        input.insert(
            MULTIPART_FIELD.into(),
            base64::engine::general_purpose::STANDARD
                .encode(form)
                .into(),
        );
        let body = request_body(Operation::AudioTranscriptions, &input).unwrap();
        assert_eq!(body, form.to_vec());
        input.insert(MULTIPART_FIELD.into(), "not base64!".into());
        let err = request_body(Operation::AudioTranscriptions, &input).unwrap_err();
        assert_eq!(err.status, 400);
    }

    #[test]
    fn media_answers_become_outputs() {
        let speech = media_outputs(Operation::AudioSpeech, b"RIFF\xff", "audio/wav");
        assert_eq!(speech[0].kind, "audio");
        assert_eq!(speech[0].content_type.as_deref(), Some("audio/wav"));
        assert_eq!(speech[0].b64_json.as_deref(), Some("UklGRv8="));
        let images = media_outputs(
            Operation::ImagesGenerations,
            br#"{"data":[{"url":"https://x.test/1.png"},{"b64_json":"iVBO"}]}"#,
            "application/json",
        );
        assert_eq!(images[0].url.as_deref(), Some("https://x.test/1.png"));
        assert_eq!(images[1].b64_json.as_deref(), Some("iVBO"));
        let text = media_outputs(Operation::AudioTranscriptions, b"hello\n", "text/plain");
        assert_eq!(text[0].text.as_deref(), Some("hello\n"));
        let json = media_outputs(
            Operation::AudioTranscriptions,
            br#"{"text":"hi"}"#,
            "application/json",
        );
        assert_eq!(json[0].text.as_deref(), Some("hi"));
        assert!(media_outputs(Operation::Embeddings, b"{}", "application/json").is_empty());
    }
}
