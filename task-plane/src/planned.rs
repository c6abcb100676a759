//! Operations the core plans end to end — chat (either dialect) and embeddings — run as
//! tasks: the core builds each attempt's native request and reads its answer; this module
//! only sends it. The attempt order is fixed per task (seeded by its id), and a failed or
//! timed-out attempt falls back to the next deployment once before the task fails.

use std::time::{Duration, Instant};

use control_plane::ledger::Price as LedgerPrice;
use sha2::{Digest, Sha256};
use switchyard_core::routing::NoHealth;
use switchyard_core::{Admitted, ErrorKind, GatewayError, Plan, UpstreamRequest};

use crate::model::{AttemptEntry, Task, TaskState, Usage};
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
    let body = serde_json::to_vec(&task.input).unwrap_or_default();
    gateway.plan(&admitted, &body, seed(&task.id), now_ms() / 1000, &NoHealth)
}

/// How one attempt went.
enum Attempted {
    /// A 2xx answer, translated for the client, with its usage.
    Answered(Vec<u8>, switchyard_core::canonical::TokenUsage),
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
            image: None,
            second: None,
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
        Attempted::Answered(body, tokens) => {
            log_attempt(task, &billing.deployment, "succeeded".into());
            let record = plan.usage_record(
                index,
                tokens,
                200,
                task.attempts_log.len() as u32,
                Some(latency_ms),
            );
            // The endpoint's own answer is the result; there are no media outputs.
            task.result = serde_json::from_slice(&body).ok();
            task.usage = Usage {
                input_tokens: tokens.input,
                cached_input_tokens: tokens.cached_input,
                output_tokens: tokens.output,
                images: 0,
                seconds: 0.0,
            };
            task.cost = record.cost;
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
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(err) => return transport_failure(&err),
    };
    if (200..300).contains(&status) {
        return match plan.translate_response(index, &body) {
            Ok((out, usage)) => Attempted::Answered(out, usage),
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
