//! The workers: claim due tasks, advance each by one step, write the outcome.
//!
//! A step is what one look at a task does: start it (submit to a deployment, or run it when
//! the deployment answers synchronously), poll it, cancel it, or give up on it at its
//! deadline. Steps are safe to repeat — a node killed mid-step leaves its lease behind and the
//! next claim after the lease repeats the step — and a heartbeat extends the lease while a
//! step is in flight, so a long call is not mistaken for a dead node.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control_plane::ledger::{Price as LedgerPrice, UsageRecord};
use switchyard_core::{ErrorKind, GatewayError};
use tokio::sync::oneshot;

use crate::model::{Operation, Task, TaskState};
use crate::store::{self, Finale, NewDelivery};
use crate::time::now_ms;
use crate::Plane;

/// Most tasks claimed in one statement.
const CLAIM_BATCH: usize = 200;
/// How often an idle loop looks for due work (new work wakes it at once).
const IDLE_TICK: Duration = Duration::from_millis(200);
/// How often the managed key set is checked for changes.
const KEY_REFRESH: Duration = Duration::from_secs(1);

/// Requests waiting for tasks to finish.
#[derive(Default)]
pub(crate) struct Waiters(Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>);

impl Waiters {
    /// A receiver that fires when `task_id` finishes on this node.
    pub(crate) fn wait(&self, task_id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(task_id.to_string())
            .or_default()
            .push(tx);
        rx
    }

    /// Wakes everyone waiting for `task_id`.
    pub(crate) fn finished(&self, task_id: &str) {
        let waiting = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task_id);
        for tx in waiting.into_iter().flatten() {
            let _ = tx.send(());
        }
    }

    /// Forgets a waiter that gave up.
    pub(crate) fn forget(&self, task_id: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get_mut(task_id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                map.remove(task_id);
            }
        }
    }
}

/// The error of a canceled task.
pub(crate) fn canceled_error() -> GatewayError {
    GatewayError::new(ErrorKind::InvalidRequest, "the task was canceled")
        .with_status(499)
        .with_code("task_canceled")
}

/// Who served a task, for its ledger record.
#[derive(Debug, Clone, Default)]
pub(crate) struct Billing {
    pub(crate) provider: String,
    pub(crate) deployment: String,
    pub(crate) price: Option<LedgerPrice>,
}

/// The status a finished task is metered with: 200, its error's status (499 canceled).
fn metered_status(task: &Task) -> u16 {
    match (task.state, &task.error) {
        (TaskState::Succeeded, _) => 200,
        (_, Some(err)) => err.status,
        (TaskState::Canceled, None) => 499,
        _ => 502,
    }
}

/// The ledger record and webhook message of a task that just finished.
pub(crate) fn finale(task: &Task, billing: &Billing, now_ms: u64) -> Finale {
    let record = UsageRecord {
        request_id: task.id.clone(),
        timestamp_ms: task.created_at_ms,
        key_id: task.key_id.clone(),
        team: task.team.clone(),
        model: task.model.clone(),
        provider: billing.provider.clone(),
        deployment: billing.deployment.clone(),
        input_tokens: task.usage.input_tokens,
        cached_input_tokens: task.usage.cached_input_tokens,
        output_tokens: task.usage.output_tokens,
        images: task.usage.images,
        media_seconds: task.usage.seconds,
        cost: task.cost,
        price: billing.price,
        status: metered_status(task),
        attempts: task.attempts_log.len() as u32,
        stream: false,
        latency_ms: Some(now_ms.saturating_sub(task.created_at_ms)),
        ttft_ms: None,
    };
    let webhook = task.webhook_url.as_ref().map(|url| {
        let event_type = format!("task.{}", task.state.as_str());
        NewDelivery {
            id: format!(
                "msg_{}_{}",
                task.id.trim_start_matches("task_"),
                task.state.as_str()
            ),
            url: url.clone(),
            payload: store::webhook_payload(&event_type, task, now_ms),
            event_type,
        }
    });
    Finale { record, webhook }
}

/// Claims due tasks and runs their steps, forever.
pub(crate) async fn task_loop(plane: Arc<Plane>) {
    loop {
        let free = plane
            .settings
            .concurrency
            .saturating_sub(plane.in_flight.load(Ordering::SeqCst));
        let mut claimed = 0;
        if free > 0 {
            let want = free.min(CLAIM_BATCH);
            let token = format!(
                "{}:{}",
                plane.node,
                plane.claims.fetch_add(1, Ordering::SeqCst)
            );
            let now = now_ms();
            let lease_until = now + plane.settings.lease_ms;
            let claim_token = token.clone();
            match plane
                .store
                .transact(move |tx| {
                    store::claim_tasks(tx, &claim_token, now, lease_until, want as u32)
                })
                .await
            {
                Ok(tasks) => {
                    claimed = tasks.len();
                    for task in tasks {
                        plane.in_flight.fetch_add(1, Ordering::SeqCst);
                        let plane = Arc::clone(&plane);
                        let token = token.clone();
                        tokio::spawn(async move {
                            step(&plane, task, &token).await;
                            plane.in_flight.fetch_sub(1, Ordering::SeqCst);
                            plane.wake_tasks.notify_one();
                        });
                    }
                }
                Err(err) => eprintln!("task plane: claiming tasks failed: {err}"),
            }
        }
        if claimed == free.min(CLAIM_BATCH) && claimed > 0 {
            continue; // more may be due right now
        }
        tokio::select! {
            _ = plane.wake_tasks.notified() => {}
            _ = tokio::time::sleep(IDLE_TICK) => {}
        }
    }
}

/// Keeps the managed key set current.
pub(crate) async fn key_refresh_loop(plane: Arc<Plane>) {
    loop {
        if let Err(err) = plane.keyring.refresh((now_ms() / 1000) as i64).await {
            eprintln!("task plane: reading the managed keys failed: {err}");
        }
        tokio::time::sleep(KEY_REFRESH).await;
    }
}

/// One step of one claimed task, its lease kept alive meanwhile. A cancel requested while
/// the step runs (seen by the heartbeat) ends it at once: the attempt in flight is dropped
/// and the task is canceled, whatever that attempt would have answered.
async fn step(plane: &Arc<Plane>, mut task: Task, token: &str) {
    let (canceled_tx, canceled_rx) = oneshot::channel::<()>();
    let heartbeat = {
        let plane = Arc::clone(plane);
        let (id, token) = (task.id.clone(), token.to_string());
        let mut canceled_tx = Some(canceled_tx);
        tokio::spawn(async move {
            let every = Duration::from_millis((plane.settings.lease_ms / 3).max(100));
            loop {
                tokio::time::sleep(every).await;
                let until = now_ms() + plane.settings.lease_ms;
                let (id, token) = (id.clone(), token.clone());
                let renewed = plane
                    .store
                    .transact(move |tx| store::renew_task_lease(tx, &id, &token, until))
                    .await;
                match renewed {
                    Ok(Some(false)) => {}
                    Ok(Some(true)) => {
                        if let Some(tx) = canceled_tx.take() {
                            let _ = tx.send(());
                        }
                        // Keep the lease while the step winds down and saves.
                    }
                    _ => return,
                }
            }
        })
    };
    let outcome = tokio::select! {
        billing = advance(plane, &mut task, token) => Some(billing),
        Ok(()) = canceled_rx => None,
    };
    let billing = match outcome {
        Some(billing) => billing,
        None => {
            crate::provider::cancel_remote(plane, &task).await;
            Some(cancel(&mut task, now_ms()))
        }
    };
    heartbeat.abort();
    let now = now_ms();
    let finale = task
        .state
        .is_final()
        .then(|| finale(&task, &billing.unwrap_or_default(), now));
    let token = token.to_string();
    let saved_task = task.clone();
    let saved = plane
        .store
        .transact(move |tx| store::save_task(tx, &saved_task, &token, now, finale.as_ref()))
        .await;
    match saved {
        Ok(true) if task.state.is_final() => {
            plane.metrics.inc(
                "switchyard_tasks_finished_total",
                &[
                    ("operation", task.operation.as_str()),
                    ("status", task.state.as_str()),
                ],
            );
            plane.waiters.finished(&task.id);
            plane.wake_deliveries.notify_one();
        }
        Ok(true) => {}
        Ok(false) => eprintln!(
            "task plane: task {}: lease lost during a step; its new owner repeats it",
            task.id
        ),
        Err(err) => eprintln!("task plane: task {}: saving a step failed: {err}", task.id),
    }
}

/// Ends `task` as canceled (nothing is billed).
fn cancel(task: &mut Task, now: u64) -> Billing {
    task.state = TaskState::Canceled;
    task.cancel_requested = true;
    task.error = Some(canceled_error());
    task.completed_at_ms = Some(now);
    Billing::default()
}

/// Advances `task` by one step; when it finished, returns who served it.
async fn advance(plane: &Plane, task: &mut Task, token: &str) -> Option<Billing> {
    let now = now_ms();
    if task.cancel_requested {
        crate::provider::cancel_remote(plane, task).await;
        return Some(cancel(task, now));
    }
    if now >= task.deadline_at_ms {
        crate::provider::cancel_remote(plane, task).await;
        task.state = TaskState::Failed;
        task.error = Some(
            GatewayError::new(
                ErrorKind::Timeout,
                format!(
                    "the task did not finish within {} ms",
                    task.deadline_at_ms.saturating_sub(task.created_at_ms)
                ),
            )
            .with_code("task_timeout"),
        );
        task.completed_at_ms = Some(now);
        return Some(Billing::default());
    }
    if task.started_at_ms.is_none() {
        task.started_at_ms = Some(now);
    }
    task.state = TaskState::Running;
    // A task model's task runs on its providers, whatever endpoint submitted it (the
    // synchronous facade's images go there too).
    let task_model = plane.keyring.gateway().task_route(&task.model).is_some();
    if task.operation == Operation::Generation || task_model {
        crate::provider::run(plane, task, token).await
    } else {
        crate::planned::run(plane, task).await
    }
}
