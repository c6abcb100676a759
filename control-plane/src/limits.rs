//! Limits and budgets shared by every edge instance: `POST /edge/v1/admit` reserves against
//! the store, and the request's usage record settles the reservation when it reaches the
//! ledger.
//!
//! The rules are the core's ([`switchyard_core::limits`]: token buckets for requests and
//! tokens per minute, in-flight counters, budget reservations of an upper-bound estimate);
//! this module only gives them a store every instance shares. Each admission runs in one
//! transaction that first locks every counter row it may touch, in name order (PostgreSQL:
//! `SELECT … FOR UPDATE` after making sure the rows exist; SQLite: the transaction holds the
//! database's write lock), runs [`switchyard_core::limits::admit`] against those rows in
//! memory, writes them back and records what the request holds in `limit_admissions`. Two
//! admissions that share a counter therefore run one after the other, and a settlement (which
//! locks its rows in the same order) cannot deadlock with them.
//!
//! * **Settlement.** When `/edge/v1/usage` stores a record, the admission with its
//!   `request_id` is settled in the same transaction: concurrency is given back, the token
//!   estimate is replaced by the record's input + output tokens and the budget reservation by
//!   its cost. A failed request's record carries its real (usually zero) cost, so it releases
//!   its reservation. A record seen twice finds no admission the second time.
//! * **Expiry.** An admission whose record has not arrived `admission_ttl` after admission
//!   (default [`DEFAULT_ADMISSION_TTL_MS`]; an edge that crashed, a record lost from a full
//!   buffer) expires: its concurrency is given back and its *estimate* is charged as spent —
//!   money is never assumed unspent. If the record arrives later (within
//!   [`EXPIRED_KEPT_MS`]), the difference between the real cost and the estimate is charged
//!   (usually given back). Expiry runs at most once a second, from the usage and admission
//!   endpoints (an admission refused for want of capacity looks for expired ones first).
//! * **Which limits.** The edge sends each scope with the quota it knows (a managed key's
//!   limits come from the key snapshot, which carries them, so an edge is at most one key
//!   sync behind the admin API; static-config keys have theirs from the config).
//!
//! # The bound across instances
//!
//! Let `B` be a scope's budget for one period, `N` the number of edge instances, and
//! `Δ = Σ max(0, actual − estimate)` over the period's requests (zero while estimates are
//! upper bounds, which the core guarantees for text: see [`switchyard_core::limits`]).
//!
//! * **The control plane answers every admission:** `spent ≤ B + Δ`, so the overshoot is
//!   `Δ = 0`. Admissions are serialised on the scope's row, and each is refused unless
//!   `spent + reserved + estimate ≤ B`; reservations leave only when settled with a real cost
//!   ≤ the estimate, or when expired with the estimate itself charged.
//! * **During an outage** (an admission call that fails or times out), each instance admits
//!   against its own counters, which know only what that instance admitted locally. Each
//!   instance keeps its local admissions within `B` (exactly, across its workers), so over a
//!   period `spent ≤ B + N·B + Δ`: the overshoot is at most `N × B` — instances × the local
//!   allowance, which is the whole limit. The same holds for requests and tokens per minute
//!   (`N × rpm` extra per minute of outage) and for concurrency (`N × concurrent` extra in
//!   flight).
//!
//! Locally admitted requests' records still reach the ledger when the control plane is back,
//! so invoices are exact; they are not charged to the shared counters (the instance's own
//! counters already held them to the bound above).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use switchyard_core::control::{AdmitAnswer, AdmitRequest, RefusalWire};
use switchyard_core::limits::{self as core_limits, Admission, CounterStore, RecordChange};

use crate::ledger::{nano_usd, UsageRecord};
use crate::store::{EngineKind, SqlValue, StoreError, Tx};
use crate::Error;

/// How long an admission waits for its usage record before it expires: 15 minutes, longer
/// than any request's deadline plus the edge's usage flush interval.
pub const DEFAULT_ADMISSION_TTL_MS: u64 = 15 * 60_000;
/// How long an expired admission is kept so a late record can correct its charge: 7 days.
pub const EXPIRED_KEPT_MS: u64 = 7 * 86_400_000;
/// Most admissions one expiry pass handles.
const EXPIRE_BATCH: i64 = 500;
/// Most scopes one admission may name (a key, its team, and room).
const MAX_SCOPES: usize = 8;
/// Longest request id or scope name.
const MAX_NAME: usize = 256;
/// Ids per `IN (…)` list.
const IDS_PER_QUERY: usize = 500;

/// `core::limits` counters over rows of `limit_counters`, inside one transaction. Rows are
/// locked up front ([`DbCounters::lock`]) and then read and changed in memory; [`flush`]
/// writes back the changed ones.
///
/// [`flush`]: DbCounters::flush
struct DbCounters<'a> {
    tx: RefCell<&'a mut dyn Tx>,
    /// Locked rows: name → value (`None`: no value yet).
    values: RefCell<BTreeMap<String, Option<Vec<u8>>>>,
    dirty: RefCell<BTreeSet<String>>,
    /// The first store failure inside `update`/`load`, which cannot return one.
    failed: RefCell<Option<StoreError>>,
}

impl<'a> DbCounters<'a> {
    fn new(tx: &'a mut dyn Tx) -> Self {
        Self {
            tx: RefCell::new(tx),
            values: RefCell::default(),
            dirty: RefCell::default(),
            failed: RefCell::default(),
        }
    }

    /// Locks the rows named (those not yet locked), in name order, and loads them.
    fn lock(&self, names: impl IntoIterator<Item = String>) -> Result<(), StoreError> {
        let names: BTreeSet<String> = names
            .into_iter()
            .filter(|n| !self.values.borrow().contains_key(n))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = names.into_iter().collect();
        let mut tx = self.tx.borrow_mut();
        let params: Vec<SqlValue> = names.iter().map(|n| n.as_str().into()).collect();
        let list = placeholders(1, names.len());
        let locking = if tx.engine() == EngineKind::Postgres {
            // A row must exist to be locked: create the missing ones (an insert racing with
            // another waits for it), then lock all of them in name order.
            let rows: Vec<String> = (1..=names.len()).map(|i| format!("(${i})")).collect();
            tx.execute(
                &format!(
                    "INSERT INTO limit_counters (name) VALUES {} ON CONFLICT (name) DO NOTHING",
                    rows.join(", ")
                ),
                &params,
            )?;
            " ORDER BY name FOR UPDATE"
        } else {
            ""
        };
        let found = tx.query(
            &format!("SELECT name, value FROM limit_counters WHERE name IN ({list}){locking}"),
            &params,
        )?;
        let mut values = self.values.borrow_mut();
        for name in names {
            values.insert(name, None);
        }
        for row in found {
            values.insert(row.text(0)?, row.opt_text(1)?.map(String::into_bytes));
        }
        Ok(())
    }

    /// Counters with every row `held` admissions touch locked.
    fn locked_for(tx: &'a mut dyn Tx, held: &[Held]) -> Result<Self, StoreError> {
        let counters = Self::new(tx);
        counters.lock(
            held.iter()
                .flat_map(|h| h.admission.scopes().flat_map(|s| s.records())),
        )?;
        Ok(counters)
    }

    /// Writes back every changed row.
    fn flush(self) -> Result<(), StoreError> {
        if let Some(e) = self.failed.into_inner() {
            return Err(e);
        }
        let values = self.values.into_inner();
        let tx = self.tx.into_inner();
        for name in self.dirty.into_inner() {
            let value = values
                .get(&name)
                .and_then(|v| v.as_deref())
                .map(|v| String::from_utf8_lossy(v).into_owned());
            tx.execute(
                "INSERT INTO limit_counters (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[name.into(), value.into()],
            )?;
        }
        Ok(())
    }

    fn ensure(&self, key: &str) {
        if !self.values.borrow().contains_key(key) {
            // Every record is locked up front; one that was not is locked now (correct, but
            // outside the name order).
            if let Err(e) = self.lock([key.to_string()]) {
                self.failed.borrow_mut().get_or_insert(e);
            }
        }
    }
}

impl CounterStore for DbCounters<'_> {
    fn update(&self, key: &str, change: &mut RecordChange<'_>) {
        self.ensure(key);
        let mut values = self.values.borrow_mut();
        let current = values.get(key).cloned().flatten();
        if let Some(next) = change(current.as_deref()) {
            values.insert(key.to_string(), Some(next));
            self.dirty.borrow_mut().insert(key.to_string());
        }
    }

    fn load(&self, key: &str) -> Option<Vec<u8>> {
        self.ensure(key);
        self.values.borrow().get(key).cloned().flatten()
    }
}

/// `$first, $first+1, …` (`count` of them).
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks an admission request before it touches the store.
fn validate(request: &AdmitRequest) -> Result<(), Error> {
    if request.request_id.is_empty() || request.request_id.len() > MAX_NAME {
        return Err(Error::invalid(
            format!("`request_id` must be 1 to {MAX_NAME} characters"),
            "invalid_value",
        ));
    }
    if request.scopes.len() > MAX_SCOPES {
        return Err(Error::invalid(
            format!("at most {MAX_SCOPES} scopes per admission"),
            "invalid_value",
        ));
    }
    for (i, scope) in request.scopes.iter().enumerate() {
        if scope.name.is_empty() || scope.name.len() > MAX_NAME {
            return Err(Error::invalid(
                format!("scopes[{i}].name must be 1 to {MAX_NAME} characters"),
                "invalid_value",
            ));
        }
        scope
            .quota
            .validate(&format!("scopes[{i}].quota"))
            .map_err(|e| Error::invalid(e, "invalid_value"))?;
    }
    if request.estimate.cost_nano < 0 {
        return Err(Error::invalid(
            "estimate.cost_nano must be >= 0",
            "invalid_value",
        ));
    }
    Ok(())
}

/// Parses the body of `POST /edge/v1/admit`.
pub fn parse_request(body: &[u8]) -> Result<AdmitRequest, Error> {
    let request: AdmitRequest = crate::validate::json_body(body)?;
    validate(&request)?;
    Ok(request)
}

/// Admits `request` against the shared counters, or refuses it: the status (200 or 429) and
/// the answer the edge reads. Asking twice for one request id admits it once.
pub fn admit(
    tx: &mut dyn Tx,
    request: &AdmitRequest,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<(u16, AdmitAnswer), Error> {
    if tx
        .query_opt(
            "SELECT request_id FROM limit_admissions WHERE request_id = $1",
            &[request.request_id.as_str().into()],
        )?
        .is_some()
    {
        // The edge retried after losing the answer: it is admitted already.
        return Ok((
            200,
            AdmitAnswer {
                headers: Vec::new(),
                refusal: None,
            },
        ));
    }
    let counters = DbCounters::new(&mut *tx);
    counters.lock(request.scopes.iter().flat_map(|s| s.records()))?;
    let outcome = core_limits::admit(&counters, &request.scopes, request.estimate, now_ms);
    counters.flush()?;
    match outcome {
        Ok(admission) => {
            let headers = admission.headers.clone();
            if !admission.is_empty() {
                tx.execute(
                    "INSERT INTO limit_admissions (request_id, admission, estimate_tokens, \
                     estimate_cost_nano, state, admitted_at_ms, expires_at_ms) \
                     VALUES ($1, $2, $3, $4, 'held', $5, $6)",
                    &[
                        request.request_id.as_str().into(),
                        serde_json::to_string(&admission).unwrap_or_default().into(),
                        SqlValue::Int(request.estimate.tokens.min(i64::MAX as u64) as i64),
                        SqlValue::Int(request.estimate.cost_nano),
                        SqlValue::Int(now_ms as i64),
                        SqlValue::Int(now_ms.saturating_add(ttl_ms) as i64),
                    ],
                )?;
            }
            Ok((
                200,
                AdmitAnswer {
                    headers,
                    refusal: None,
                },
            ))
        }
        Err(refusal) => Ok((
            429,
            AdmitAnswer {
                refusal: Some(RefusalWire::from(&refusal)),
                headers: refusal.headers,
            },
        )),
    }
}

/// An admission taken out of `limit_admissions` to settle.
struct Held {
    request_id: String,
    admission: Admission,
    estimate_tokens: i64,
    estimate_cost_nano: i64,
    expired: bool,
}

fn held_from_rows(rows: Vec<crate::store::Row>) -> Result<Vec<Held>, Error> {
    rows.into_iter()
        .map(|row| {
            Ok(Held {
                request_id: row.text(0)?,
                admission: crate::keys::json_column(&row.text(1)?)?,
                estimate_tokens: row.int(2)?,
                estimate_cost_nano: row.int(3)?,
                expired: row.text(4)? == "expired",
            })
        })
        .collect()
}

/// Settles the admissions of the records just stored in the ledger (in the same
/// transaction): the real tokens and cost replace the estimates. Returns how many settled.
pub fn settle(tx: &mut dyn Tx, records: &[UsageRecord], now_ms: u64) -> Result<usize, Error> {
    let mut held = Vec::new();
    for chunk in records.chunks(IDS_PER_QUERY) {
        let params: Vec<SqlValue> = chunk.iter().map(|r| r.request_id.as_str().into()).collect();
        let rows = tx.query(
            &format!(
                "DELETE FROM limit_admissions WHERE request_id IN ({}) \
                 RETURNING request_id, admission, estimate_tokens, estimate_cost_nano, state",
                placeholders(1, chunk.len())
            ),
            &params,
        )?;
        held.extend(held_from_rows(rows)?);
    }
    if held.is_empty() {
        return Ok(0);
    }
    let by_id: BTreeMap<&str, &UsageRecord> =
        records.iter().map(|r| (r.request_id.as_str(), r)).collect();
    let counters = DbCounters::locked_for(&mut *tx, &held)?;
    for h in &held {
        let Some(record) = by_id.get(h.request_id.as_str()) else {
            continue;
        };
        let tokens = record.input_tokens.saturating_add(record.output_tokens);
        let cost = nano_usd(record.cost);
        if h.expired {
            // Its estimate was charged when it expired; charge the difference.
            let tokens = tokens.min(i64::MAX as u64) as i64 - h.estimate_tokens;
            for scope in h.admission.scopes() {
                core_limits::charge(
                    &counters,
                    scope,
                    tokens,
                    cost - h.estimate_cost_nano,
                    now_ms,
                );
            }
        } else {
            h.admission.clone().settle(&counters, tokens, cost, now_ms);
        }
    }
    counters.flush()?;
    Ok(held.len())
}

/// Expires admissions whose record did not arrive by their deadline: each gives back its
/// concurrency and is charged its estimate. Also forgets expired admissions older than
/// [`EXPIRED_KEPT_MS`]. Returns how many expired now.
pub fn expire(tx: &mut dyn Tx, now_ms: u64) -> Result<usize, Error> {
    tx.execute(
        "DELETE FROM limit_admissions WHERE state = 'expired' AND expires_at_ms <= $1",
        &[SqlValue::Int(now_ms.saturating_sub(EXPIRED_KEPT_MS) as i64)],
    )?;
    let rows = tx.query(
        "UPDATE limit_admissions SET state = 'expired' WHERE request_id IN (\
           SELECT request_id FROM limit_admissions \
           WHERE state = 'held' AND expires_at_ms <= $1 ORDER BY expires_at_ms LIMIT $2) \
         AND state = 'held' \
         RETURNING request_id, admission, estimate_tokens, estimate_cost_nano, 'held'",
        &[SqlValue::Int(now_ms as i64), SqlValue::Int(EXPIRE_BATCH)],
    )?;
    let held = held_from_rows(rows)?;
    if held.is_empty() {
        return Ok(0);
    }
    let counters = DbCounters::locked_for(&mut *tx, &held)?;
    for h in &held {
        h.admission.clone().settle(
            &counters,
            h.estimate_tokens.max(0) as u64,
            h.estimate_cost_nano,
            now_ms,
        );
    }
    counters.flush()?;
    Ok(held.len())
}

/// A scope's state as the store holds it, for the admin API and tests.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct ScopeState {
    /// Spent in the current budget period, nano-USD.
    pub spent_nano: i64,
    /// Reserved by requests in flight, nano-USD.
    pub reserved_nano: i64,
    /// Requests in flight.
    pub in_flight: u64,
}

/// The budget and concurrency state of `scope` now.
pub fn scope_state(
    tx: &mut dyn Tx,
    scope: &core_limits::Scope,
    now_ms: u64,
) -> Result<ScopeState, Error> {
    let counters = DbCounters::new(tx);
    counters.lock(scope.records())?;
    let (spent_nano, reserved_nano) =
        core_limits::budget_state(&counters, scope, now_ms).unwrap_or((0, 0));
    let in_flight = core_limits::in_flight(&counters, scope);
    Ok(ScopeState {
        spent_nano,
        reserved_nano,
        in_flight,
    })
}
