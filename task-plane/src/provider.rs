//! Tasks of models served by asynchronous providers (WaveSpeed, Replicate, fal, DashScope,
//! Veo): submit to the provider, then follow its task until it ends — woken by the provider's
//! webhook where it sends one, and polled with backoff always (the safety net). The core
//! builds every call and reads every answer (`switchyard_core::tasks::providers`); this module
//! only sends them and keeps the task's record.
//!
//! Durability: before a submit the attempt is recorded (`handle` with no provider task id),
//! and right after it the provider's task id, both under the task's lease. A node killed
//! between the two leaves an attempt whose fate is unknown: it is never submitted again to
//! the same deployment (that could run and bill it twice) but counted as failed, and the task
//! falls back to the next deployment.

use std::time::Duration;

use control_plane::ledger::Price as LedgerPrice;
use serde::{Deserialize, Serialize};
use switchyard_core::tasks::providers::deployments::TaskDeployment;
use switchyard_core::tasks::providers::{
    fal, Method, PollAnswer, ProviderCall, ProviderError, ProviderState, ProviderTask, SubmitSpec,
};
use switchyard_core::{ErrorKind, GatewayError};

use crate::model::{Operation, Output, Task, TaskState, Usage};
use crate::planned::{all_failed, fail, log_attempt, MAX_ATTEMPTS};
use crate::store;
use crate::time::now_ms;
use crate::worker::Billing;
use crate::Plane;

/// How long one provider call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the task's record says of its current provider attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Handle {
    /// The attempt it belongs to.
    attempt: u32,
    /// The deployment (`provider/model`).
    deployment: String,
    /// The provider's task id, once its submit answered.
    provider_task_id: Option<String>,
}

impl Handle {
    fn of(task: &Task) -> Option<Handle> {
        task.handle
            .clone()
            .and_then(|v| serde_json::from_value::<Handle>(v).ok())
            .filter(|h| h.attempt == task.attempt)
    }
}

/// The deployment running `task`'s current attempt, and the provider's task id once its
/// submit answered (a webhook may come before that is recorded).
pub(crate) fn current(plane: &Plane, task: &Task) -> Option<(TaskDeployment, Option<String>)> {
    let handle = Handle::of(task)?;
    let (_, route) = plane.keyring.gateway().task_route(&task.model)?;
    let deployment = route.into_iter().find(|d| d.id == handle.deployment)?;
    Some((deployment, handle.provider_task_id))
}

/// The URL the provider is asked to call back, when it can be verified and the plane has a
/// public URL.
fn webhook_url(plane: &Plane, deployment: &TaskDeployment, task: &Task) -> Option<String> {
    let base = plane.settings.public_url.as_deref()?;
    deployment.wants_webhooks().then(|| {
        format!(
            "{}/v1/provider-webhooks/{}/{}",
            base.trim_end_matches('/'),
            deployment.provider_name,
            task.id
        )
    })
}

/// Why one attempt ended without a result.
struct AttemptFailure {
    /// For the attempts log.
    outcome: String,
    /// What the client sees when this was the last attempt.
    error: GatewayError,
    /// Whether another deployment may do better.
    retryable: bool,
}

impl AttemptFailure {
    fn from_provider(err: &ProviderError) -> Self {
        let (status, outcome) = match err {
            ProviderError::Refused { status, .. } => (
                if *status >= 500 || *status == 429 {
                    502
                } else {
                    *status
                },
                format!("status {status}"),
            ),
            ProviderError::Malformed { .. } => (502, "malformed answer".to_string()),
        };
        AttemptFailure {
            outcome,
            error: GatewayError::new(ErrorKind::from_status(status), err.to_string())
                .with_status(status)
                .with_code("upstream_error"),
            retryable: err.is_retryable(),
        }
    }

    fn transport(err: &reqwest::Error) -> Self {
        let outcome = if err.is_timeout() {
            "timeout"
        } else if err.is_connect() {
            "connection failed"
        } else {
            "reset"
        };
        AttemptFailure {
            outcome: outcome.into(),
            error: GatewayError::new(
                ErrorKind::BadGateway,
                format!("the provider could not be reached ({outcome})"),
            ),
            retryable: true,
        }
    }
}

/// Sends one provider call; its status and body.
async fn send(
    plane: &Plane,
    deployment: &TaskDeployment,
    call: &ProviderCall,
) -> Result<(u16, Vec<u8>), reqwest::Error> {
    let url = format!("{}{}", deployment.base_url, call.path);
    let method = match call.method {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
    };
    let mut builder = plane
        .http
        .request(method, &url)
        .timeout(CALL_TIMEOUT)
        .body(call.body.clone());
    for (name, value) in deployment.headers(call) {
        builder = builder.header(name, value);
    }
    let response = builder.send().await?;
    let status = response.status().as_u16();
    let body = response.bytes().await?;
    Ok((status, body.to_vec()))
}

/// Asks the provider to cancel the current attempt's task, where it can; best effort (the
/// task ends canceled on our side whatever the provider answers).
pub(crate) async fn cancel_remote(plane: &Plane, task: &Task) {
    let Some((deployment, Some(id))) = current(plane, task) else {
        return;
    };
    let Some(call) = deployment.provider.cancel(&deployment.model, &id) else {
        return;
    };
    match send(plane, &deployment, &call).await {
        Ok((status, _)) if (200..300).contains(&status) => {}
        Ok((status, _)) => eprintln!(
            "task plane: task {}: {} answered {status} to its cancel",
            task.id, deployment.id
        ),
        Err(err) => eprintln!(
            "task plane: task {}: canceling on {} failed: {err}",
            task.id, deployment.id
        ),
    }
}

/// fal's webhook keys from its JWKS document (fetched per webhook: fal rotates them).
pub(crate) async fn jwks(plane: &Plane, url: &str) -> Option<fal::Jwks> {
    let response = plane
        .http
        .get(url)
        .timeout(CALL_TIMEOUT)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    fal::Jwks::parse(&response.bytes().await.ok()?).ok()
}

/// Runs one step of a task-model task; who served it when it finished.
pub(crate) async fn run(plane: &Plane, task: &mut Task, token: &str) -> Option<Billing> {
    let gateway = plane.keyring.gateway();
    let Some((_, route)) = gateway.task_route(&task.model) else {
        return Some(fail(
            task,
            GatewayError::new(
                ErrorKind::NotFound,
                format!("model `{}` is no longer configured", task.model),
            )
            .with_code("model_not_found"),
            Billing::default(),
        ));
    };
    if task.deployments.is_empty() {
        task.deployments = route
            .iter()
            .take(MAX_ATTEMPTS as usize)
            .map(|d| d.id.clone())
            .collect();
    }
    let Some(deployment) = task
        .deployments
        .get(task.attempt as usize)
        .and_then(|id| route.iter().find(|d| &d.id == id))
        .cloned()
    else {
        return Some(fail(task, all_failed(task), Billing::default()));
    };
    let billing = Billing {
        provider: deployment.provider_name.clone(),
        deployment: deployment.id.clone(),
        price: Some(LedgerPrice {
            input: 0.0,
            cached_input: None,
            output: 0.0,
            image: deployment.price.image,
            second: deployment.price.second,
        }),
    };
    let answer = match Handle::of(task) {
        None => submit(plane, task, token, &deployment).await,
        Some(Handle {
            provider_task_id: None,
            ..
        }) => Err(AttemptFailure {
            outcome: "interrupted during submit".into(),
            error: GatewayError::new(
                ErrorKind::BadGateway,
                "the node submitting the task stopped before the provider's answer was recorded",
            ),
            retryable: true,
        }),
        Some(Handle {
            provider_task_id: Some(id),
            ..
        }) => poll(plane, task, &deployment, &id).await,
    };
    let answer = match answer {
        Ok(Some(provider_task)) => provider_task,
        // Lease lost: the step's save fails too, and the new owner repeats it.
        Ok(None) => return None,
        Err(failure) => return attempt_failed(task, &deployment, failure, billing),
    };
    match answer.state {
        ProviderState::Succeeded => {
            log_attempt(task, &deployment.id, "succeeded".into());
            let kind = if answer.usage.seconds.is_some() {
                "video"
            } else {
                "image"
            };
            if matches!(
                task.operation,
                Operation::ImagesGenerations | Operation::ImagesEdits
            ) {
                // The facade: the endpoint's own answer.
                task.result = Some(switchyard_core::tasks::facade::images_answer(
                    task.created_at_ms / 1000,
                    &answer.outputs,
                ));
            }
            task.outputs = answer
                .outputs
                .iter()
                .map(|url| Output {
                    kind: kind.into(),
                    url: Some(url.clone()),
                    b64_json: None,
                    text: None,
                    content_type: None,
                })
                .collect();
            task.usage = Usage {
                images: u64::from(answer.usage.images),
                seconds: answer.usage.seconds.unwrap_or(0.0),
                ..Usage::default()
            };
            task.cost = deployment.price.cost(task.usage.images, task.usage.seconds);
            task.progress = Some(1.0);
            task.state = TaskState::Succeeded;
            task.completed_at_ms = Some(now_ms());
            Some(billing)
        }
        ProviderState::Failed | ProviderState::Canceled => {
            let failure = answer.error.clone().unwrap_or_else(|| {
                switchyard_core::tasks::providers::ProviderFailure {
                    code: "canceled".into(),
                    message: "the provider canceled the task".into(),
                }
            });
            attempt_failed(
                task,
                &deployment,
                AttemptFailure {
                    outcome: format!("failed ({})", failure.code),
                    error: GatewayError::new(
                        ErrorKind::BadGateway,
                        format!("{} failed the task: {}", deployment.id, failure.message),
                    )
                    .with_code("upstream_error"),
                    retryable: true,
                },
                billing,
            )
        }
        ProviderState::Queued | ProviderState::Running => {
            if answer.progress.is_some() {
                task.progress = answer.progress;
            }
            let now = now_ms();
            let started = task.attempt_started_at_ms.unwrap_or(now);
            if now.saturating_sub(started) >= plane.settings.provider_attempt_timeout_ms {
                cancel_remote(plane, task).await;
                let failure = AttemptFailure {
                    outcome: "timeout".into(),
                    error: GatewayError::new(
                        ErrorKind::Timeout,
                        format!(
                            "{} did not finish the task within {} ms",
                            deployment.id, plane.settings.provider_attempt_timeout_ms
                        ),
                    )
                    .with_code("task_timeout"),
                    retryable: true,
                };
                return attempt_failed(task, &deployment, failure, billing);
            }
            // Poll again after a backoff (doubling, capped; never past the attempt's timeout
            // or the task's deadline); a webhook makes it due sooner.
            let delay = plane
                .settings
                .provider_poll_ms
                .saturating_mul(1u64 << task.polls.min(16))
                .min(plane.settings.provider_poll_max_ms);
            task.polls = task.polls.saturating_add(1);
            task.next_run_at_ms = (now + delay)
                .min(started + plane.settings.provider_attempt_timeout_ms)
                .min(task.deadline_at_ms);
            None
        }
    }
}

/// Records the attempt, submits it, records the provider's task id; `Ok(None)` when the
/// lease was lost before the submit.
async fn submit(
    plane: &Plane,
    task: &mut Task,
    token: &str,
    deployment: &TaskDeployment,
) -> Result<Option<ProviderTask>, AttemptFailure> {
    if let Some(secret) = &deployment.missing_secret {
        return Err(AttemptFailure {
            outcome: "credential missing".into(),
            error: GatewayError::new(
                ErrorKind::Unavailable,
                format!(
                    "provider `{}` needs the secret `{secret}`, which is not set",
                    deployment.provider_name
                ),
            )
            .with_code("provider_credential_missing"),
            retryable: true,
        });
    }
    let now = now_ms();
    task.attempt_started_at_ms = Some(now);
    task.polls = 0;
    task.handle = serde_json::to_value(Handle {
        attempt: task.attempt,
        deployment: deployment.id.clone(),
        provider_task_id: None,
    })
    .ok();
    if !checkpoint(plane, task, token).await {
        return Ok(None);
    }
    let webhook = webhook_url(plane, deployment, task);
    // An endpoint's request (the facade) in this provider's own vocabulary.
    let translated = match task.operation {
        Operation::Generation => None,
        operation => {
            Some(
                facade_input(operation, deployment, task).map_err(|error| AttemptFailure {
                    outcome: format!("status {}", error.status),
                    error,
                    retryable: false,
                })?,
            )
        }
    };
    let call = deployment.provider.submit(&SubmitSpec {
        model: &deployment.model,
        input: translated.as_ref().unwrap_or(&task.input),
        webhook_url: webhook.as_deref(),
    });
    let (status, body) = send(plane, deployment, &call)
        .await
        .map_err(|e| AttemptFailure::transport(&e))?;
    let answer = deployment
        .provider
        .read_submit(status, &body)
        .map_err(|e| AttemptFailure::from_provider(&e))?;
    task.handle = serde_json::to_value(Handle {
        attempt: task.attempt,
        deployment: deployment.id.clone(),
        provider_task_id: Some(answer.id.clone()),
    })
    .ok();
    // Not recorded means the lease is gone; the step's own save records it otherwise.
    checkpoint(plane, task, token).await;
    plane.metrics.inc(
        "switchyard_provider_tasks_submitted_total",
        &[("provider", deployment.provider.name())],
    );
    Ok(Some(answer))
}

/// An endpoint's request (the facade's images, or an edit's form with its images) as
/// `deployment`'s provider takes it.
fn facade_input(
    operation: Operation,
    deployment: &TaskDeployment,
    task: &Task,
) -> Result<serde_json::Value, GatewayError> {
    let input = task.input.as_object().cloned().unwrap_or_default();
    let request = if operation.multipart() {
        let form = crate::planned::request_body(operation, &input)?;
        switchyard_core::tasks::facade::edit_request(&form)?
    } else {
        input
    };
    switchyard_core::tasks::facade::provider_input(deployment.provider, &request)
}

async fn checkpoint(plane: &Plane, task: &Task, token: &str) -> bool {
    let (saved, token) = (task.clone(), token.to_string());
    match plane
        .store
        .transact(move |tx| store::checkpoint_task(tx, &saved, &token, now_ms()))
        .await
    {
        Ok(held) => held,
        Err(err) => {
            eprintln!(
                "task plane: task {}: recording a submit failed: {err}",
                task.id
            );
            false
        }
    }
}

/// One poll (two for fal once done: status, then result). An unreachable or erroring
/// provider is asked again later, within the attempt's timeout.
async fn poll(
    plane: &Plane,
    task: &Task,
    deployment: &TaskDeployment,
    id: &str,
) -> Result<Option<ProviderTask>, AttemptFailure> {
    let call = deployment.provider.poll(&deployment.model, id);
    let still = || {
        let mut same = ProviderTask {
            id: id.to_string(),
            state: ProviderState::Running,
            progress: None,
            outputs: Vec::new(),
            error: None,
            usage: Default::default(),
        };
        same.progress = task.progress;
        same
    };
    let (status, body) = match send(plane, deployment, &call).await {
        Ok(answer) => answer,
        Err(_) => return Ok(Some(still())),
    };
    let answer = deployment
        .provider
        .read_poll(&deployment.model, id, &task.input, status, &body);
    match answer {
        Ok(PollAnswer::Task(t)) => Ok(Some(t)),
        Ok(PollAnswer::FetchResult(call)) => match send(plane, deployment, &call).await {
            Ok((status, body)) => deployment
                .provider
                .read_result(id, status, &body)
                .map(Some)
                .map_err(|e| AttemptFailure::from_provider(&e)),
            Err(_) => Ok(Some(still())),
        },
        Err(e) if e.is_retryable() => Ok(Some(still())),
        Err(e) => Err(AttemptFailure::from_provider(&e)),
    }
}

/// Ends an attempt: falls back to the next deployment once, else fails the task.
fn attempt_failed(
    task: &mut Task,
    deployment: &TaskDeployment,
    failure: AttemptFailure,
    billing: Billing,
) -> Option<Billing> {
    log_attempt(task, &deployment.id, failure.outcome);
    let next = task.attempt as usize + 1;
    if failure.retryable && next < task.deployments.len() {
        task.attempt += 1;
        task.polls = 0;
        task.progress = None;
        task.next_run_at_ms = now_ms();
        return None;
    }
    let error = if task.attempts_log.len() > 1 {
        all_failed(task)
    } else {
        failure.error
    };
    Some(fail(task, error, billing))
}
