//! Tasks, webhook deliveries and webhook settings in the control plane's store (SQLite or
//! PostgreSQL), over its synchronous transaction API.
//!
//! **Claiming.** Workers claim due rows by setting a lease (`lease_owner` = a claim token,
//! `lease_until_ms`) in one `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING …`; on
//! PostgreSQL the inner select takes `FOR UPDATE SKIP LOCKED`, so nodes sharing a database
//! never claim the same row and never wait on each other; SQLite has a single writer, so the
//! statement alone is atomic. Every write of a worker's outcome is fenced by its token: a
//! worker whose lease lapsed (it stalled, or was presumed dead) writes nothing, and the row's
//! new owner redoes the step. A killed worker's rows are claimed again when its lease ends.
//!
//! **Exactly once.** A task's final state, its ledger record (request id = task id, so the
//! ledger stores it once) and its webhook message are written in one transaction.

use control_plane::ledger::{self, UsageRecord};
use control_plane::store::{EngineKind, Row, SqlValue, Tx};
use switchyard_core::GatewayError;

use crate::error::Error;
use crate::model::{
    load_error, store_error, AttemptEntry, Operation, Output, Task, TaskState, Usage,
};

const TASK_COLUMNS: &str = "id, key_id, team, model, operation, dialect, input, metadata, \
     webhook_url, idempotency_key, request_hash, state, progress, attempt, attempts_log, \
     deployments, handle, polls, cancel_requested, result, outputs, error, error_status, usage, \
     cost, created_at_ms, started_at_ms, attempt_started_at_ms, completed_at_ms, \
     deadline_at_ms, next_run_at_ms";

fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

fn ms(value: i64) -> u64 {
    value.max(0) as u64
}

fn task_from_row(row: &Row) -> Result<Task, Error> {
    let operation = row.text(4)?;
    let state = row.text(11)?;
    Ok(Task {
        id: row.text(0)?,
        key_id: row.text(1)?,
        team: row.opt_text(2)?,
        model: row.text(3)?,
        operation: Operation::parse(&operation)
            .ok_or_else(|| Error::Corrupt(format!("operation `{operation}`")))?,
        input: parse_json(&row.text(6)?, "input")?,
        metadata: row
            .opt_text(7)?
            .map(|t| parse_json(&t, "metadata"))
            .transpose()?,
        webhook_url: row.opt_text(8)?,
        idempotency_key: row.opt_text(9)?,
        request_hash: row.text(10)?,
        state: TaskState::parse(&state)
            .ok_or_else(|| Error::Corrupt(format!("state `{state}`")))?,
        progress: row.opt_real(12)?,
        attempt: row.int(13)? as u32,
        attempts_log: parse_json::<Vec<AttemptEntry>>(&row.text(14)?, "attempts_log")?,
        deployments: parse_json::<Vec<String>>(&row.text(15)?, "deployments")?,
        handle: row
            .opt_text(16)?
            .map(|t| parse_json(&t, "handle"))
            .transpose()?,
        polls: row.int(17)? as u32,
        cancel_requested: row.int(18)? != 0,
        result: row
            .opt_text(19)?
            .map(|t| parse_json(&t, "result"))
            .transpose()?,
        outputs: row
            .opt_text(20)?
            .map(|t| parse_json::<Vec<Output>>(&t, "outputs"))
            .transpose()?
            .unwrap_or_default(),
        error: row.opt_text(21)?.as_deref().and_then(load_error),
        usage: row
            .opt_text(23)?
            .map(|t| parse_json::<Usage>(&t, "usage"))
            .transpose()?
            .unwrap_or_default(),
        cost: row.opt_real(24)?.unwrap_or(0.0),
        created_at_ms: ms(row.int(25)?),
        started_at_ms: row.opt_int(26)?.map(ms),
        attempt_started_at_ms: row.opt_int(27)?.map(ms),
        completed_at_ms: row.opt_int(28)?.map(ms),
        deadline_at_ms: ms(row.int(29)?),
        next_run_at_ms: ms(row.int(30)?),
    })
}

/// Whether a submit found an earlier task under the same idempotency key.
#[derive(Debug, Clone)]
pub struct Inserted {
    /// The task (new, or the one a previous submit created).
    pub task: Task,
    /// `true` when it already existed.
    pub replayed: bool,
}

/// Stores a new task, unless the key already submitted one under the same idempotency key:
/// then that one is returned (the same request), or a 409 when the request differs.
pub fn insert_task(tx: &mut dyn Tx, task: &Task) -> Result<Inserted, Error> {
    if let Some(key) = &task.idempotency_key {
        let existing = tx.query_opt(
            &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE key_id = $1 AND idempotency_key = $2"),
            &[task.key_id.as_str().into(), key.as_str().into()],
        )?;
        if let Some(row) = existing {
            let existing = task_from_row(&row)?;
            if existing.request_hash != task.request_hash {
                return Err(Error::Refused(
                    GatewayError::invalid(
                        "this Idempotency-Key was already used with a different request",
                    )
                    .with_status(409)
                    .with_code("idempotency_key_reused"),
                ));
            }
            return Ok(Inserted {
                task: existing,
                replayed: true,
            });
        }
    }
    tx.execute(
        &format!(
            "INSERT INTO tasks ({TASK_COLUMNS}, lease_owner, lease_until_ms, updated_at_ms) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
              $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, NULL, NULL, $26)"
        ),
        &[
            task.id.as_str().into(),
            task.key_id.as_str().into(),
            task.team.as_deref().into(),
            task.model.as_str().into(),
            task.operation.as_str().into(),
            dialect_name(task.operation).into(),
            json_text(&task.input).into(),
            task.metadata.as_ref().map(json_text).into(),
            task.webhook_url.as_deref().into(),
            task.idempotency_key.as_deref().into(),
            task.request_hash.as_str().into(),
            task.state.as_str().into(),
            task.progress.into(),
            i64::from(task.attempt).into(),
            json_text(&task.attempts_log).into(),
            json_text(&task.deployments).into(),
            task.handle.as_ref().map(json_text).into(),
            i64::from(task.polls).into(),
            i64::from(task.cancel_requested).into(),
            task.result.as_ref().map(json_text).into(),
            json_text(&task.outputs).into(),
            task.error.as_ref().map(store_error).into(),
            task.error.as_ref().map(|e| i64::from(e.status)).into(),
            json_text(&task.usage).into(),
            task.cost.into(),
            (task.created_at_ms as i64).into(),
            task.started_at_ms.map(|v| v as i64).into(),
            task.attempt_started_at_ms.map(|v| v as i64).into(),
            task.completed_at_ms.map(|v| v as i64).into(),
            (task.deadline_at_ms as i64).into(),
            (task.next_run_at_ms as i64).into(),
        ],
    )?;
    Ok(Inserted {
        task: task.clone(),
        replayed: false,
    })
}

fn dialect_name(operation: Operation) -> &'static str {
    match operation.dialect() {
        switchyard_core::Dialect::Anthropic => "anthropic",
        _ => "openai",
    }
}

/// The task `id` if `key_id` owns it.
pub fn get_task(tx: &mut dyn Tx, id: &str, key_id: &str) -> Result<Option<Task>, Error> {
    tx.query_opt(
        &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 AND key_id = $2"),
        &[id.into(), key_id.into()],
    )?
    .map(|row| task_from_row(&row))
    .transpose()
}

/// The task `id`, whoever owns it (for workers and provider webhooks).
pub fn get_task_any(tx: &mut dyn Tx, id: &str) -> Result<Option<Task>, Error> {
    tx.query_opt(
        &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"),
        &[id.into()],
    )?
    .map(|row| task_from_row(&row))
    .transpose()
}

/// A page of a key's tasks, newest first.
pub struct Page {
    /// The tasks.
    pub tasks: Vec<Task>,
    /// Whether older tasks follow.
    pub has_more: bool,
}

/// The key's tasks, newest first: at most `limit`, older than the task `after` when given,
/// in state `state` when given.
pub fn list_tasks(
    tx: &mut dyn Tx,
    key_id: &str,
    state: Option<TaskState>,
    after: Option<&Task>,
    limit: u32,
) -> Result<Page, Error> {
    let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE key_id = $1");
    let mut params: Vec<SqlValue> = vec![key_id.into()];
    if let Some(state) = state {
        params.push(state.as_str().into());
        sql.push_str(&format!(" AND state = ${}", params.len()));
    }
    if let Some(after) = after {
        params.push((after.created_at_ms as i64).into());
        params.push(after.id.as_str().into());
        let (c, i) = (params.len() - 1, params.len());
        sql.push_str(&format!(
            " AND (created_at_ms < ${c} OR (created_at_ms = ${c} AND id < ${i}))"
        ));
    }
    params.push(i64::from(limit + 1).into());
    sql.push_str(&format!(
        " ORDER BY created_at_ms DESC, id DESC LIMIT ${}",
        params.len()
    ));
    let mut tasks = tx
        .query(&sql, &params)?
        .iter()
        .map(task_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let has_more = tasks.len() > limit as usize;
    tasks.truncate(limit as usize);
    Ok(Page { tasks, has_more })
}

/// Claims up to `limit` due tasks for `token` until `lease_until_ms`.
pub fn claim_tasks(
    tx: &mut dyn Tx,
    token: &str,
    now_ms: u64,
    lease_until_ms: u64,
    limit: u32,
) -> Result<Vec<Task>, Error> {
    let due = Due {
        table: "tasks",
        pending: "state IN ('queued', 'running')",
        due_column: "next_run_at_ms",
        columns: TASK_COLUMNS,
        // A claimed task is being worked on: a client polling it must see `running` (with
        // its start time) while the step runs, not `queued` until the step is saved.
        on_claim: ", state = 'running', started_at_ms = COALESCE(started_at_ms, $3)",
    };
    claim_due(tx, &due, token, now_ms, lease_until_ms, limit)?
        .iter()
        .map(task_from_row)
        .collect()
}

/// A table of leased work items: which rows are pending, and when each is due.
struct Due {
    table: &'static str,
    pending: &'static str,
    due_column: &'static str,
    columns: &'static str,
    /// More `SET` assignments for a claimed row (`, col = …`; `$3` is now).
    on_claim: &'static str,
}

/// Leases up to `limit` pending rows of `due.table` that are due and not leased (or whose
/// lease ran out) to `token` until `lease_until_ms`, earliest first; on PostgreSQL rows other
/// nodes hold are skipped (`FOR UPDATE SKIP LOCKED`), SQLite's write lock serialises claims.
fn claim_due(
    tx: &mut dyn Tx,
    due: &Due,
    token: &str,
    now_ms: u64,
    lease_until_ms: u64,
    limit: u32,
) -> Result<Vec<Row>, Error> {
    let lock = match tx.engine() {
        EngineKind::Postgres => " FOR UPDATE SKIP LOCKED",
        EngineKind::Sqlite => "",
    };
    let Due {
        table,
        pending,
        due_column,
        columns,
        on_claim,
    } = due;
    let sql = format!(
        "UPDATE {table} SET lease_owner = $1, lease_until_ms = $2, updated_at_ms = $3{on_claim} \
         WHERE id IN (SELECT id FROM {table} WHERE {pending} \
           AND {due_column} <= $3 AND (lease_until_ms IS NULL OR lease_until_ms < $3) \
           ORDER BY {due_column} LIMIT $4{lock}) \
         RETURNING {columns}"
    );
    Ok(tx.query(
        &sql,
        &[
            token.into(),
            (lease_until_ms as i64).into(),
            (now_ms as i64).into(),
            i64::from(limit).into(),
        ],
    )?)
}

/// Extends a held lease; `None` when it is no longer this token's, else whether the
/// client asked to cancel the task meanwhile.
pub fn renew_task_lease(
    tx: &mut dyn Tx,
    id: &str,
    token: &str,
    lease_until_ms: u64,
) -> Result<Option<bool>, Error> {
    if tx.execute(
        "UPDATE tasks SET lease_until_ms = $3 WHERE id = $1 AND lease_owner = $2",
        &[id.into(), token.into(), (lease_until_ms as i64).into()],
    )? != 1
    {
        return Ok(None);
    }
    let rows = tx.query(
        "SELECT cancel_requested FROM tasks WHERE id = $1",
        &[id.into()],
    )?;
    Ok(Some(match rows.first() {
        Some(row) => row.int(0)? != 0,
        None => false,
    }))
}

/// What a final state brings along, written in the same transaction.
pub struct Finale {
    /// The task's one ledger record.
    pub record: UsageRecord,
    /// The webhook message, when the task has a webhook URL.
    pub webhook: Option<NewDelivery>,
}

/// A webhook message to store.
pub struct NewDelivery {
    /// `msg_…`: the `webhook-id`.
    pub id: String,
    /// Where it goes.
    pub url: String,
    /// `task.succeeded`, `task.failed`, `task.canceled`.
    pub event_type: String,
    /// The exact body.
    pub payload: String,
}

/// Writes a worker's outcome for `task` if `token` still holds its lease, and releases the
/// lease; returns `false` (writing nothing) when the lease was lost. A final state also
/// writes its ledger record and webhook message. A cancel requested meanwhile keeps the task
/// due now, so the next claim acts on it.
pub fn save_task(
    tx: &mut dyn Tx,
    task: &Task,
    token: &str,
    now_ms: u64,
    finale: Option<&Finale>,
) -> Result<bool, Error> {
    let changed = tx.execute(
        "UPDATE tasks SET state = $3, progress = $4, attempt = $5, attempts_log = $6, \
           deployments = $7, handle = $8, polls = $9, result = $10, outputs = $11, error = $12, \
           error_status = $13, usage = $14, cost = $15, started_at_ms = $16, \
           attempt_started_at_ms = $17, completed_at_ms = $18, \
           next_run_at_ms = CASE WHEN cancel_requested = 1 THEN CAST($19 AS BIGINT) \
             ELSE CAST($20 AS BIGINT) END, \
           lease_owner = NULL, lease_until_ms = NULL, updated_at_ms = $19 \
         WHERE id = $1 AND lease_owner = $2",
        &[
            task.id.as_str().into(),
            token.into(),
            task.state.as_str().into(),
            task.progress.into(),
            i64::from(task.attempt).into(),
            json_text(&task.attempts_log).into(),
            json_text(&task.deployments).into(),
            task.handle.as_ref().map(json_text).into(),
            i64::from(task.polls).into(),
            task.result.as_ref().map(json_text).into(),
            json_text(&task.outputs).into(),
            task.error.as_ref().map(store_error).into(),
            task.error.as_ref().map(|e| i64::from(e.status)).into(),
            json_text(&task.usage).into(),
            task.cost.into(),
            task.started_at_ms.map(|v| v as i64).into(),
            task.attempt_started_at_ms.map(|v| v as i64).into(),
            task.completed_at_ms.map(|v| v as i64).into(),
            (now_ms as i64).into(),
            (task.next_run_at_ms as i64).into(),
        ],
    )?;
    if changed != 1 {
        return Ok(false);
    }
    if let Some(finale) = finale {
        write_finale(tx, finale, now_ms)?;
    }
    Ok(true)
}

/// Records a step's progress mid-step (an asynchronous provider's attempt: before its submit
/// and with the provider's task id after it) while `token` keeps the lease, so a node killed
/// right after a submit never loses the provider's task nor submits it twice. `false` when
/// the lease was lost.
pub fn checkpoint_task(
    tx: &mut dyn Tx,
    task: &Task,
    token: &str,
    now_ms: u64,
) -> Result<bool, Error> {
    Ok(tx.execute(
        "UPDATE tasks SET attempt = $3, attempts_log = $4, deployments = $5, handle = $6, \
           polls = $7, attempt_started_at_ms = $8, updated_at_ms = $9 \
         WHERE id = $1 AND lease_owner = $2",
        &[
            task.id.as_str().into(),
            token.into(),
            i64::from(task.attempt).into(),
            json_text(&task.attempts_log).into(),
            json_text(&task.deployments).into(),
            task.handle.as_ref().map(json_text).into(),
            i64::from(task.polls).into(),
            task.attempt_started_at_ms.map(|v| v as i64).into(),
            (now_ms as i64).into(),
        ],
    )? == 1)
}

/// Makes an unfinished task due now (a provider's webhook said it changed); `false` when
/// it is finished already. A step in flight saves its own next time over this one: its
/// poll's backoff is then the safety net.
pub fn nudge_task(tx: &mut dyn Tx, id: &str, now_ms: u64) -> Result<bool, Error> {
    Ok(tx.execute(
        "UPDATE tasks SET next_run_at_ms = $2, updated_at_ms = $2 \
         WHERE id = $1 AND state IN ('queued', 'running')",
        &[id.into(), (now_ms as i64).into()],
    )? == 1)
}

fn write_finale(tx: &mut dyn Tx, finale: &Finale, now_ms: u64) -> Result<(), Error> {
    ledger::ingest(tx, std::slice::from_ref(&finale.record), now_ms as i64)?;
    if let Some(delivery) = &finale.webhook {
        insert_delivery(
            tx,
            delivery,
            &finale.record.key_id,
            &finale.record.request_id,
            now_ms,
        )?;
    }
    Ok(())
}

/// What a cancel request found.
pub enum CancelOutcome {
    /// The task is canceled now (it had not started); its finale was written.
    Canceled(Task),
    /// A worker will cancel it at the provider and finish it.
    Requested(Task),
    /// It had already finished.
    AlreadyFinal(Task),
}

/// Cancels the key's task `id`: a queued task that no worker holds ends here, with
/// `finale(task)` written beside it; any other unfinished task is marked for its worker.
pub fn request_cancel(
    tx: &mut dyn Tx,
    id: &str,
    key_id: &str,
    now_ms: u64,
    finale: &dyn Fn(&Task) -> Finale,
) -> Result<Option<CancelOutcome>, Error> {
    let Some(mut task) = get_task(tx, id, key_id)? else {
        return Ok(None);
    };
    if task.state.is_final() {
        return Ok(Some(CancelOutcome::AlreadyFinal(task)));
    }
    let unheld = tx.execute(
        "UPDATE tasks SET state = 'canceled', completed_at_ms = $2, error = $3, \
           error_status = 499, cancel_requested = 1, updated_at_ms = $2 \
         WHERE id = $1 AND state = 'queued' AND (lease_until_ms IS NULL OR lease_until_ms < $2)",
        &[
            id.into(),
            (now_ms as i64).into(),
            store_error(&crate::worker::canceled_error()).into(),
        ],
    )? == 1;
    task.cancel_requested = true;
    if unheld {
        task.state = TaskState::Canceled;
        task.completed_at_ms = Some(now_ms);
        task.error = Some(crate::worker::canceled_error());
        write_finale(tx, &finale(&task), now_ms)?;
        return Ok(Some(CancelOutcome::Canceled(task)));
    }
    tx.execute(
        "UPDATE tasks SET cancel_requested = 1, next_run_at_ms = $2, updated_at_ms = $2 WHERE id = $1",
        &[id.into(), (now_ms as i64).into()],
    )?;
    Ok(Some(CancelOutcome::Requested(task)))
}

// ---- webhook deliveries ----

/// Where a webhook message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not delivered yet; retried at `next_attempt_at_ms`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up (attempts exhausted, or 410 Gone): dead-lettered, redeliverable.
    Dead,
}

impl DeliveryState {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "dead" => DeliveryState::Dead,
            _ => return None,
        })
    }
}

/// A webhook message as stored.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The `webhook-id`.
    pub id: String,
    /// The key whose secret signs it.
    pub key_id: String,
    /// Where it goes.
    pub url: String,
    /// Its event type.
    pub event_type: String,
    /// The exact body.
    pub payload: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// Next attempt, unix ms (pending only).
    pub next_attempt_at_ms: u64,
    /// Status of the last attempt, when it got one.
    pub last_status: Option<u16>,
    /// What went wrong last, when something did.
    pub last_error: Option<String>,
    /// Created, unix ms.
    pub created_at_ms: u64,
    /// Delivered, unix ms.
    pub delivered_at_ms: Option<u64>,
}

const DELIVERY_COLUMNS: &str = "id, key_id, url, event_type, payload, state, attempts, \
     next_attempt_at_ms, last_status, last_error, created_at_ms, delivered_at_ms";

fn delivery_from_row(row: &Row) -> Result<Delivery, Error> {
    let state = row.text(5)?;
    Ok(Delivery {
        id: row.text(0)?,
        key_id: row.text(1)?,
        url: row.text(2)?,
        event_type: row.text(3)?,
        payload: row.text(4)?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| Error::Corrupt(format!("delivery state `{state}`")))?,
        attempts: row.int(6)? as u32,
        next_attempt_at_ms: ms(row.int(7)?),
        last_status: row.opt_int(8)?.map(|s| s as u16),
        last_error: row.opt_text(9)?,
        created_at_ms: ms(row.int(10)?),
        delivered_at_ms: row.opt_int(11)?.map(ms),
    })
}

fn insert_delivery(
    tx: &mut dyn Tx,
    delivery: &NewDelivery,
    key_id: &str,
    task_id: &str,
    now_ms: u64,
) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO webhook_deliveries (id, task_id, key_id, url, event_type, payload, state, \
           attempts, next_attempt_at_ms, created_at_ms, updated_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7, $7) ON CONFLICT (id) DO NOTHING",
        &[
            delivery.id.as_str().into(),
            task_id.into(),
            key_id.into(),
            delivery.url.as_str().into(),
            delivery.event_type.as_str().into(),
            delivery.payload.as_str().into(),
            (now_ms as i64).into(),
        ],
    )?;
    Ok(())
}

/// Claims up to `limit` due deliveries for `token` until `lease_until_ms`.
pub fn claim_deliveries(
    tx: &mut dyn Tx,
    token: &str,
    now_ms: u64,
    lease_until_ms: u64,
    limit: u32,
) -> Result<Vec<Delivery>, Error> {
    let due = Due {
        table: "webhook_deliveries",
        pending: "state = 'pending'",
        due_column: "next_attempt_at_ms",
        columns: DELIVERY_COLUMNS,
        on_claim: "",
    };
    claim_due(tx, &due, token, now_ms, lease_until_ms, limit)?
        .iter()
        .map(delivery_from_row)
        .collect()
}

/// What one delivery attempt came to.
pub struct AttemptResult {
    /// The state after it.
    pub state: DeliveryState,
    /// When to try again (pending only).
    pub next_attempt_at_ms: u64,
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// What went wrong, when something did.
    pub error: Option<String>,
}

/// Records an attempt of a delivery held by `token`, releasing it.
pub fn record_attempt(
    tx: &mut dyn Tx,
    id: &str,
    token: &str,
    result: &AttemptResult,
    now_ms: u64,
) -> Result<bool, Error> {
    let delivered = (result.state == DeliveryState::Delivered).then_some(now_ms as i64);
    Ok(tx.execute(
        "UPDATE webhook_deliveries SET state = $3, attempts = attempts + 1, \
           next_attempt_at_ms = $4, last_status = $5, last_error = $6, delivered_at_ms = $7, \
           lease_owner = NULL, lease_until_ms = NULL, updated_at_ms = $8 \
         WHERE id = $1 AND lease_owner = $2",
        &[
            id.into(),
            token.into(),
            result.state.as_str().into(),
            (result.next_attempt_at_ms as i64).into(),
            result.status.map(i64::from).into(),
            result.error.as_deref().into(),
            delivered.into(),
            (now_ms as i64).into(),
        ],
    )? == 1)
}

/// The deliveries of the key's task `task_id`, oldest first.
pub fn task_deliveries(
    tx: &mut dyn Tx,
    task_id: &str,
    key_id: &str,
) -> Result<Vec<Delivery>, Error> {
    tx.query(
        &format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE task_id = $1 AND key_id = $2 \
             ORDER BY created_at_ms, id"
        ),
        &[task_id.into(), key_id.into()],
    )?
    .iter()
    .map(delivery_from_row)
    .collect()
}

/// Queues every delivery of the key's task `task_id` again (same `webhook-id`, so a receiver
/// that already has it can drop it); returns how many.
pub fn redeliver(tx: &mut dyn Tx, task_id: &str, key_id: &str, now_ms: u64) -> Result<u64, Error> {
    Ok(tx.execute(
        "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at_ms = $3, \
           lease_owner = NULL, lease_until_ms = NULL, updated_at_ms = $3 \
         WHERE task_id = $1 AND key_id = $2",
        &[task_id.into(), key_id.into(), (now_ms as i64).into()],
    )?)
}

// ---- webhook settings ----

/// A key's webhook settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// The key.
    pub key_id: String,
    /// Its default webhook URL.
    pub url: Option<String>,
    /// Its signing secret, `whsec_…`.
    pub secret: String,
}

/// The key's settings, if it has any.
pub fn webhook_settings(tx: &mut dyn Tx, key_id: &str) -> Result<Option<WebhookSettings>, Error> {
    tx.query_opt(
        "SELECT key_id, url, secret FROM webhook_settings WHERE key_id = $1",
        &[key_id.into()],
    )?
    .map(|row| {
        Ok(WebhookSettings {
            key_id: row.text(0)?,
            url: row.opt_text(1)?,
            secret: row.text(2)?,
        })
    })
    .transpose()
}

/// The key's settings, created with `new_secret` when it has none.
pub fn ensure_webhook_settings(
    tx: &mut dyn Tx,
    key_id: &str,
    new_secret: &str,
    now_ms: u64,
) -> Result<WebhookSettings, Error> {
    tx.execute(
        "INSERT INTO webhook_settings (key_id, url, secret, created_at_ms, updated_at_ms) \
         VALUES ($1, NULL, $2, $3, $3) ON CONFLICT (key_id) DO NOTHING",
        &[key_id.into(), new_secret.into(), (now_ms as i64).into()],
    )?;
    webhook_settings(tx, key_id)?.ok_or_else(|| Error::Corrupt("webhook settings vanished".into()))
}

/// Sets the key's default URL (`Some(None)` clears it) and/or replaces its secret.
pub fn update_webhook_settings(
    tx: &mut dyn Tx,
    key_id: &str,
    url: Option<Option<&str>>,
    secret: Option<&str>,
    now_ms: u64,
) -> Result<(), Error> {
    if let Some(url) = url {
        tx.execute(
            "UPDATE webhook_settings SET url = $2, updated_at_ms = $3 WHERE key_id = $1",
            &[key_id.into(), url.into(), (now_ms as i64).into()],
        )?;
    }
    if let Some(secret) = secret {
        tx.execute(
            "UPDATE webhook_settings SET secret = $2, updated_at_ms = $3 WHERE key_id = $1",
            &[key_id.into(), secret.into(), (now_ms as i64).into()],
        )?;
    }
    Ok(())
}

/// Counts for the metrics endpoint: tasks by state, deliveries by state.
pub fn counts(tx: &mut dyn Tx) -> Result<Vec<(String, String, i64)>, Error> {
    let mut out = Vec::new();
    for (table, what) in [("tasks", "tasks"), ("webhook_deliveries", "deliveries")] {
        for row in tx.query(
            &format!("SELECT state, CAST(COUNT(*) AS BIGINT) FROM {table} GROUP BY state"),
            &[],
        )? {
            out.push((what.to_string(), row.text(0)?, row.int(1)?));
        }
    }
    Ok(out)
}

/// The final webhook's payload value for a task (the Standard Webhooks envelope).
pub fn webhook_payload(event_type: &str, task: &Task, now_ms: u64) -> String {
    serde_json::json!({
        "type": event_type,
        "timestamp": crate::time::rfc3339(now_ms),
        "data": task.view(),
    })
    .to_string()
}
