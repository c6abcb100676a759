//! Rate limits, concurrency limits and budgets: admitted before a request leaves the edge,
//! reconciled when it ends.
//!
//! Each limited scope — a key, a team, a deployment — has small counter records in a
//! [`CounterStore`] the host provides (proxy-wasm shared data with compare-and-swap across
//! Envoy's workers; Spin key-value). The rules are here:
//!
//! * **Requests and tokens per minute** are token buckets: a bucket holds up to a minute's
//!   allowance and refills continuously. A request takes 1 request and its *estimated* tokens
//!   up front; when it ends the estimate is replaced by the tokens the provider reported (the
//!   bucket may go into debt by the difference, which later requests wait out).
//! * **Concurrent requests** are a counter taken at admission and given back at the end.
//! * **Budgets** (USD per day, week, month or in total) are *reservations*: a request reserves
//!   an upper estimate of its cost (input tokens bounded by the body's size, output tokens by
//!   `max_tokens` or the model's `max_output_tokens`, at the most expensive deployment of its
//!   chain) and is refused when `spent + reserved + estimate` would pass the budget, or when
//!   nothing of it is left (so a request estimated at zero — a task submit, whose cost the
//!   task plane meters later, or an unpriced model — stops with the rest); at the end
//!   the reservation is released and the real cost added. Concurrent requests therefore
//!   cannot overshoot: within one store the worst case is `spent ≤ budget + Σ (actual −
//!   estimate)` over requests whose cost exceeded their estimate, which is zero while the
//!   estimate is an upper bound (a byte-level tokenizer never makes more tokens than bytes,
//!   and providers stop at `max_tokens`). Images are the exception: a short image URL can cost
//!   many tokens, so each image part is estimated at [`IMAGE_TOKENS_ESTIMATE`].
//!
//! Admission takes every scope in turn and gives back what it took when a later scope refuses,
//! so a refused request leaves no trace. Everything is integer arithmetic (milli-tokens,
//! nano-dollars) so records survive a round trip through the store exactly.

use serde::Deserialize;

use crate::error::{ErrorKind, GatewayError};

/// Tokens charged for one image part in an estimate (OpenAI's high-detail 2048×2048 tile
/// count, rounded up; other providers charge less).
pub const IMAGE_TOKENS_ESTIMATE: u64 = 1_600;
/// Output tokens assumed for a request that sets no limit and whose model names none.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4_096;

/// The limits of a key or a team.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens (input + output) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<u64>,
    /// A spending limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

impl Quota {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.rpm.is_some()
            || self.tpm.is_some()
            || self.concurrent.is_some()
            || self.budget.is_some()
    }

    /// Checks the limits are usable (`what` names the owner in the message): a 0 limit is
    /// refused, since leaving the limit out is how to say "none".
    pub fn validate(&self, what: &str) -> Result<(), String> {
        if [self.rpm, self.tpm, self.concurrent].contains(&Some(0)) {
            return Err(format!(
                "{what}: limits must be > 0 (leave a limit out for none)"
            ));
        }
        if let Some(b) = &self.budget {
            if !b.usd.is_finite() || b.usd < 0.0 {
                return Err(format!("{what}: budget.usd must be >= 0"));
            }
        }
        Ok(())
    }
}

/// A spending limit over a period.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// US dollars per period.
    pub usd: f64,
    /// The period it renews over (UTC).
    #[serde(default)]
    pub period: Period,
}

/// When a budget renews.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// Each UTC day.
    Day,
    /// Each week from Monday 00:00 UTC.
    Week,
    /// Each calendar month (UTC).
    #[default]
    Month,
    /// Never: a total.
    Total,
}

const DAY_MS: u64 = 86_400_000;

impl Period {
    /// The start of the period that contains `now_ms`, and the start of the next one.
    pub fn bounds(self, now_ms: u64) -> (u64, u64) {
        let day = now_ms / DAY_MS;
        match self {
            Period::Day => (day * DAY_MS, (day + 1) * DAY_MS),
            // 1970-01-01 was a Thursday: Monday-based weeks start 3 days later.
            Period::Week => {
                let monday = (day + 3) / 7 * 7 - 3;
                (monday * DAY_MS, (monday + 7) * DAY_MS)
            }
            Period::Month => {
                let (y, m, _) = civil_from_days(day as i64);
                let start = days_from_civil(y, m, 1) as u64;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                let next = days_from_civil(ny, nm, 1) as u64;
                (start * DAY_MS, next * DAY_MS)
            }
            Period::Total => (0, u64::MAX),
        }
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Per-deployment limits: the provider's own quota, so load spreads before it answers 429.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentLimits {
    /// Requests in flight at once.
    #[serde(default)]
    pub concurrent: Option<u64>,
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
}

impl DeploymentLimits {
    fn quota(&self) -> Quota {
        Quota {
            rpm: self.rpm,
            tpm: self.tpm,
            concurrent: self.concurrent,
            budget: None,
        }
    }
}

/// A change to one counter record: what the current record (`None`: none yet) becomes, or
/// `None` to leave it as it is.
pub type RecordChange<'a> = dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>> + 'a;

/// Where a host keeps counter records, shared by every worker or instance that enforces the
/// same limits.
pub trait CounterStore {
    /// Replaces the record under `key` with what `change` makes of the current one (`None`
    /// when there is none), atomically: a store with compare-and-swap retries `change` on a
    /// conflict, so it must be a pure function of its argument. `change` returns `None` to
    /// leave the record as it is.
    fn update(&self, key: &str, change: &mut RecordChange<'_>);
    /// The record under `key`, if any.
    fn load(&self, key: &str) -> Option<Vec<u8>>;
}

/// A store that limits nothing (hosts without one, and requests without limits).
pub struct NoCounters;

impl CounterStore for NoCounters {
    fn update(&self, _: &str, _: &mut RecordChange<'_>) {}
    fn load(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
}

/// An in-memory store, for tests and hosts without a shared one.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    records: core::cell::RefCell<std::collections::BTreeMap<String, Vec<u8>>>,
}

impl MemoryCounters {
    /// The names of the records written so far.
    pub fn record_names(&self) -> Vec<String> {
        self.records.borrow().keys().cloned().collect()
    }
}

impl CounterStore for MemoryCounters {
    fn update(&self, key: &str, change: &mut RecordChange<'_>) {
        let current = self.records.borrow().get(key).cloned();
        if let Some(next) = change(current.as_deref()) {
            self.records.borrow_mut().insert(key.to_string(), next);
        }
    }
    fn load(&self, key: &str) -> Option<Vec<u8>> {
        self.records.borrow().get(key).cloned()
    }
}

// ---- records --------------------------------------------------------------------------------

/// A token bucket: `level` in thousandths (a minute's allowance at most; negative is debt),
/// as of `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    level_milli: i64,
    at_ms: u64,
}

impl Bucket {
    fn decode(bytes: Option<&[u8]>, capacity: u64, now_ms: u64) -> Bucket {
        let parsed = bytes
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| t.split_once(','))
            .and_then(|(l, a)| Some((l.parse().ok()?, a.parse().ok()?)));
        match parsed {
            Some((level_milli, at_ms)) => Bucket { level_milli, at_ms },
            None => Bucket {
                level_milli: capacity as i64 * 1000,
                at_ms: now_ms,
            },
        }
    }

    fn encode(&self) -> Vec<u8> {
        format!("{},{}", self.level_milli, self.at_ms).into_bytes()
    }

    /// Refilled to `now_ms` at `capacity` per minute (capacity/60 000 per ms, in thousandths
    /// that is capacity/60 per ms).
    fn refilled(mut self, capacity: u64, now_ms: u64) -> Bucket {
        let full = capacity as i64 * 1000;
        let elapsed = now_ms.saturating_sub(self.at_ms) as i64;
        let gained = elapsed.saturating_mul(capacity as i64) / 60;
        self.level_milli = self.level_milli.saturating_add(gained).min(full);
        self.at_ms = now_ms.max(self.at_ms);
        self
    }

    /// Milliseconds until `amount` is available.
    fn wait_ms(&self, amount: u64, capacity: u64) -> u64 {
        let missing = amount as i64 * 1000 - self.level_milli;
        if missing <= 0 || capacity == 0 {
            return 0;
        }
        (missing as u64 * 60).div_ceil(capacity)
    }
}

/// A budget's state: the period it belongs to, what was spent and what is reserved, in nano
/// USD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Ledger {
    period_start_ms: u64,
    spent_nano: i64,
    reserved_nano: i64,
}

impl Ledger {
    fn decode(bytes: Option<&[u8]>, period_start_ms: u64) -> Ledger {
        let text = bytes
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("");
        let mut parts = text.split(',').map(|p| p.parse::<i64>().ok());
        let stored = match (parts.next(), parts.next(), parts.next()) {
            (Some(Some(start)), Some(Some(spent)), Some(Some(reserved))) => Ledger {
                period_start_ms: start as u64,
                spent_nano: spent,
                reserved_nano: reserved,
            },
            _ => Ledger {
                period_start_ms,
                ..Ledger::default()
            },
        };
        if stored.period_start_ms < period_start_ms {
            // A new period: what was spent stays in the old one; reservations in flight carry.
            Ledger {
                period_start_ms,
                spent_nano: 0,
                reserved_nano: stored.reserved_nano.max(0),
            }
        } else {
            stored
        }
    }

    fn encode(&self) -> Vec<u8> {
        format!(
            "{},{},{}",
            self.period_start_ms, self.spent_nano, self.reserved_nano
        )
        .into_bytes()
    }
}

fn counter(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

// ---- admission ------------------------------------------------------------------------------

/// A scope whose limits apply to a request.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct Scope {
    /// `key:<id>`, `team:<id>` or `deployment:<id>` — the records' key prefix.
    pub name: String,
    /// What is limited.
    pub quota: Quota,
}

impl Scope {
    /// A key's limits.
    pub fn key(id: &str, quota: &Quota) -> Scope {
        Scope {
            name: format!("key:{id}"),
            quota: quota.clone(),
        }
    }
    /// A team's limits.
    pub fn team(id: &str, quota: &Quota) -> Scope {
        Scope {
            name: format!("team:{id}"),
            quota: quota.clone(),
        }
    }
    /// A deployment's limits.
    pub fn deployment(id: &str, limits: &DeploymentLimits) -> Scope {
        Scope {
            name: format!("deployment:{id}"),
            quota: limits.quota(),
        }
    }

    fn record(&self, kind: &str) -> String {
        format!("switchyard/limits/{}/{kind}", self.name)
    }

    /// The counter records this scope's limits use. A store that locks records (a database)
    /// takes them all, in one order, before [`admit`] runs, so concurrent admissions cannot
    /// deadlock.
    pub fn records(&self) -> Vec<String> {
        let q = &self.quota;
        [
            ("rpm", q.rpm.is_some()),
            ("tpm", q.tpm.is_some()),
            ("concurrent", q.concurrent.is_some()),
            ("budget", q.budget.is_some()),
        ]
        .into_iter()
        .filter(|(_, limited)| *limited)
        .map(|(kind, _)| self.record(kind))
        .collect()
    }
}

/// What a request is expected to use, for admission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Estimate {
    /// Upper bound of input + output tokens.
    pub tokens: u64,
    /// Upper bound of the cost, nano-USD.
    pub cost_nano: i64,
}

/// What admission took from one scope, to give back or settle when the request ends.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
struct Taken {
    scope: Scope,
    /// One request was taken from the requests-per-minute bucket.
    request: bool,
    tokens: u64,
    concurrent: bool,
    reserved_nano: i64,
}

/// What a request holds after admission; settle it exactly once with [`Admission::settle`].
/// It serializes, so a control plane can keep it until the request's usage record arrives.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, Deserialize)]
pub struct Admission {
    taken: Vec<Taken>,
    /// The rate-limit headers for the answer (`x-ratelimit-*`), from the first scope with
    /// rate limits.
    pub headers: Vec<(String, String)>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The error for the client (429, with `Retry-After`).
    pub error: GatewayError,
    /// The rate-limit headers for the refusal.
    pub headers: Vec<(String, String)>,
}

/// Takes what `estimate` needs from every scope, or nothing.
pub fn admit(
    store: &dyn CounterStore,
    scopes: &[Scope],
    estimate: Estimate,
    now_ms: u64,
) -> Result<Admission, Refusal> {
    let mut admission = Admission::default();
    for scope in scopes {
        match take(store, scope, estimate, now_ms) {
            Ok((taken, headers)) => {
                if admission.headers.is_empty() {
                    admission.headers = headers;
                }
                admission.taken.push(taken);
            }
            Err(refusal) => {
                admission.release(store, now_ms);
                return Err(refusal);
            }
        }
    }
    Ok(admission)
}

impl Admission {
    /// Whether anything is held.
    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }

    /// The scopes something is held in.
    pub fn scopes(&self) -> impl Iterator<Item = &Scope> {
        self.taken.iter().map(|t| &t.scope)
    }

    /// The request ended having used `tokens` and cost `cost_nano`: concurrency is given back,
    /// the token estimate replaced by the real count, the budget reservation by the real cost.
    pub fn settle(self, store: &dyn CounterStore, tokens: u64, cost_nano: i64, now_ms: u64) {
        for taken in self.taken {
            give_back(store, &taken, Some((tokens, cost_nano)), now_ms);
        }
    }

    /// Gives back everything, as if the request never happened (a refusal further on).
    pub fn release(&mut self, store: &dyn CounterStore, now_ms: u64) {
        for taken in self.taken.drain(..) {
            give_back(store, &taken, None, now_ms);
        }
    }
}

fn take(
    store: &dyn CounterStore,
    scope: &Scope,
    estimate: Estimate,
    now_ms: u64,
) -> Result<(Taken, Vec<(String, String)>), Refusal> {
    let q = &scope.quota;
    let mut taken = Taken {
        scope: scope.clone(),
        request: false,
        tokens: 0,
        concurrent: false,
        reserved_nano: 0,
    };
    let mut headers = Vec::new();
    let mut refusal: Option<(GatewayError, u64)> = None;

    if let Some(rpm) = q.rpm {
        let mut after = Bucket::decode(None, rpm, now_ms);
        let mut ok = false;
        store.update(&scope.record("rpm"), &mut |cur| {
            let b = Bucket::decode(cur, rpm, now_ms).refilled(rpm, now_ms);
            ok = b.level_milli >= 1000;
            after = b;
            ok.then(|| {
                after.level_milli -= 1000;
                after.encode()
            })
        });
        headers.extend(rate_headers("requests", rpm, &after, rpm));
        taken.request = ok;
        if !ok {
            let wait = after.wait_ms(1, rpm);
            refusal = Some((
                GatewayError::new(
                    ErrorKind::RateLimited,
                    format!(
                        "rate limit of {rpm} requests per minute reached for {}",
                        scope.name
                    ),
                )
                .with_code("rate_limit_exceeded"),
                wait,
            ));
        }
    }
    if refusal.is_none() {
        if let Some(tpm) = q.tpm {
            let want = estimate.tokens.min(tpm);
            let mut after = Bucket::decode(None, tpm, now_ms);
            let mut ok = false;
            store.update(&scope.record("tpm"), &mut |cur| {
                let b = Bucket::decode(cur, tpm, now_ms).refilled(tpm, now_ms);
                ok = b.level_milli >= want as i64 * 1000;
                after = b;
                ok.then(|| {
                    after.level_milli -= want as i64 * 1000;
                    after.encode()
                })
            });
            headers.extend(rate_headers("tokens", tpm, &after, tpm));
            if ok {
                taken.tokens = want;
            } else {
                refusal = Some((
                    GatewayError::new(
                        ErrorKind::RateLimited,
                        format!(
                            "rate limit of {tpm} tokens per minute reached for {} (this request may use up to {} tokens)",
                            scope.name, estimate.tokens
                        ),
                    )
                    .with_code("rate_limit_exceeded"),
                    after.wait_ms(want, tpm),
                ));
            }
        }
    }
    if refusal.is_none() {
        if let Some(max) = q.concurrent {
            let mut ok = false;
            store.update(&scope.record("concurrent"), &mut |cur| {
                let n = counter(cur);
                ok = n < max;
                ok.then(|| (n + 1).to_string().into_bytes())
            });
            if ok {
                taken.concurrent = true;
            } else {
                refusal = Some((
                    GatewayError::new(
                        ErrorKind::RateLimited,
                        format!(
                            "{max} concurrent requests already in flight for {}",
                            scope.name
                        ),
                    )
                    .with_code("concurrency_limit_exceeded"),
                    1_000,
                ));
            }
        }
    }
    if refusal.is_none() {
        if let Some(budget) = q.budget {
            let (start, next) = budget.period.bounds(now_ms);
            let limit = usd_to_nano(budget.usd);
            let mut ok = false;
            let mut left = 0i64;
            store.update(&scope.record("budget"), &mut |cur| {
                let mut l = Ledger::decode(cur, start);
                left = limit - l.spent_nano - l.reserved_nano;
                ok = left > 0 && estimate.cost_nano <= left;
                ok.then(|| {
                    l.reserved_nano += estimate.cost_nano;
                    l.encode()
                })
            });
            if ok {
                taken.reserved_nano = estimate.cost_nano;
            } else {
                let renews = if budget.period == Period::Total {
                    "it does not renew".to_string()
                } else {
                    format!("it renews in {}", human_duration(next - now_ms))
                };
                let message = if left <= 0 {
                    format!(
                        "the budget of ${} per {} for {} is spent; {renews}",
                        budget.usd,
                        period_name(budget.period),
                        scope.name,
                    )
                } else {
                    format!(
                        "the budget of ${} per {} for {} cannot cover this request (up to ${} \
                         estimated, ${} left); {renews}",
                        budget.usd,
                        period_name(budget.period),
                        scope.name,
                        nano_to_usd(estimate.cost_nano),
                        nano_to_usd(left),
                    )
                };
                refusal = Some((
                    GatewayError::new(ErrorKind::RateLimited, message)
                        .with_code("insufficient_quota"),
                    if budget.period == Period::Total {
                        0
                    } else {
                        next - now_ms
                    },
                ));
            }
        }
    }
    match refusal {
        None => Ok((taken, headers)),
        Some((mut error, wait_ms)) => {
            give_back(store, &taken, None, now_ms);
            if wait_ms > 0 {
                error.retry_after = Some(wait_ms.div_ceil(1000).max(1));
            }
            Err(Refusal { error, headers })
        }
    }
}

/// Gives back what `taken` holds; with `used`, settles the real tokens and cost instead.
fn give_back(store: &dyn CounterStore, taken: &Taken, used: Option<(u64, i64)>, now_ms: u64) {
    let q = &taken.scope.quota;
    if let (Some(rpm), true, None) = (q.rpm, taken.request, used) {
        // A request refused further on never happened.
        store.update(&taken.scope.record("rpm"), &mut |cur| {
            let mut b = Bucket::decode(cur, rpm, now_ms).refilled(rpm, now_ms);
            b.level_milli = (b.level_milli + 1000).min(rpm as i64 * 1000);
            Some(b.encode())
        });
    }
    if let Some(tpm) = q.tpm {
        let delta = match used {
            // Replace the estimate by the real count (a debt when it was higher).
            Some((tokens, _)) => taken.tokens as i64 - tokens as i64,
            None => taken.tokens as i64,
        };
        if delta != 0 {
            store.update(&taken.scope.record("tpm"), &mut |cur| {
                let mut b = Bucket::decode(cur, tpm, now_ms).refilled(tpm, now_ms);
                b.level_milli = (b.level_milli + delta * 1000).min(tpm as i64 * 1000);
                Some(b.encode())
            });
        }
    }
    if taken.concurrent {
        store.update(&taken.scope.record("concurrent"), &mut |cur| {
            Some(counter(cur).saturating_sub(1).to_string().into_bytes())
        });
    }
    if let Some(budget) = q.budget {
        let (start, _) = budget.period.bounds(now_ms);
        let spent = used.map_or(0, |(_, cost)| cost);
        if taken.reserved_nano != 0 || spent != 0 {
            store.update(&taken.scope.record("budget"), &mut |cur| {
                let mut l = Ledger::decode(cur, start);
                l.reserved_nano = (l.reserved_nano - taken.reserved_nano).max(0);
                l.spent_nano += spent;
                Some(l.encode())
            });
        }
    }
}

/// Charges usage no reservation covers (or corrects one settled with a guess): `tokens` go
/// into the tokens-per-minute bucket (a debt when it is empty), `cost_nano` onto the budget's
/// spending. Negative amounts give back what a guess charged too much.
pub fn charge(store: &dyn CounterStore, scope: &Scope, tokens: i64, cost_nano: i64, now_ms: u64) {
    let q = &scope.quota;
    if let (Some(tpm), true) = (q.tpm, tokens != 0) {
        store.update(&scope.record("tpm"), &mut |cur| {
            let mut b = Bucket::decode(cur, tpm, now_ms).refilled(tpm, now_ms);
            b.level_milli = (b.level_milli - tokens * 1000).min(tpm as i64 * 1000);
            Some(b.encode())
        });
    }
    if let (Some(budget), true) = (q.budget, cost_nano != 0) {
        let (start, _) = budget.period.bounds(now_ms);
        store.update(&scope.record("budget"), &mut |cur| {
            let mut l = Ledger::decode(cur, start);
            l.spent_nano += cost_nano;
            Some(l.encode())
        });
    }
}

/// A scope's budget as stored now: (spent, reserved) in nano-USD for the current period.
pub fn budget_state(store: &dyn CounterStore, scope: &Scope, now_ms: u64) -> Option<(i64, i64)> {
    let budget = scope.quota.budget?;
    let (start, _) = budget.period.bounds(now_ms);
    let ledger = Ledger::decode(store.load(&scope.record("budget")).as_deref(), start);
    Some((ledger.spent_nano, ledger.reserved_nano))
}

/// Requests a scope has in flight now.
pub fn in_flight(store: &dyn CounterStore, scope: &Scope) -> u64 {
    counter(store.load(&scope.record("concurrent")).as_deref())
}

/// `x-ratelimit-{limit,remaining,reset}-{kind}`, in OpenAI's format.
fn rate_headers(kind: &str, limit: u64, bucket: &Bucket, capacity: u64) -> Vec<(String, String)> {
    let remaining = (bucket.level_milli.max(0) / 1000) as u64;
    let reset_ms = bucket.wait_ms(capacity, capacity);
    vec![
        (format!("x-ratelimit-limit-{kind}"), limit.to_string()),
        (
            format!("x-ratelimit-remaining-{kind}"),
            remaining.to_string(),
        ),
        (format!("x-ratelimit-reset-{kind}"), reset_format(reset_ms)),
    ]
}

/// OpenAI's reset format: `1s`, `6m0s`, `120ms`.
fn reset_format(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms.div_ceil(1000);
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} days {} h", s / 86_400, s % 86_400 / 3600),
    }
}

fn period_name(p: Period) -> &'static str {
    match p {
        Period::Day => "day",
        Period::Week => "week",
        Period::Month => "month",
        Period::Total => "all time",
    }
}

/// USD → nano-USD, rounded.
pub fn usd_to_nano(usd: f64) -> i64 {
    (usd * 1e9).round() as i64
}

fn nano_to_usd(nano: i64) -> String {
    let s = format!("{:.6}", nano as f64 / 1e9);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_764_806_400_000; // 2025-12-04T00:00:00Z, a Thursday

    fn quota(
        rpm: Option<u64>,
        tpm: Option<u64>,
        concurrent: Option<u64>,
        usd: Option<f64>,
    ) -> Quota {
        Quota {
            rpm,
            tpm,
            concurrent,
            budget: usd.map(|usd| Budget {
                usd,
                period: Period::Day,
            }),
        }
    }

    fn est(tokens: u64, usd: f64) -> Estimate {
        Estimate {
            tokens,
            cost_nano: usd_to_nano(usd),
        }
    }

    #[test]
    fn periods_start_where_the_calendar_says() {
        assert_eq!(Period::Day.bounds(T0 + 5), (T0, T0 + DAY_MS));
        // Thursday → the Monday three days before.
        assert_eq!(Period::Week.bounds(T0).0, T0 - 3 * DAY_MS);
        let (start, next) = Period::Month.bounds(T0);
        assert_eq!(start, T0 - 3 * DAY_MS, "2025-12-01");
        assert_eq!(next, T0 + 28 * DAY_MS, "2026-01-01");
        let feb = T0 + 60 * DAY_MS; // 2026-02-02
        let (start, next) = Period::Month.bounds(feb);
        assert_eq!((next - start) / DAY_MS, 28);
        assert_eq!(Period::Total.bounds(T0), (0, u64::MAX));
    }

    #[test]
    fn requests_per_minute_refill_continuously() {
        let store = MemoryCounters::default();
        let scopes = [Scope::key("k", &quota(Some(2), None, None, None))];
        let a = admit(&store, &scopes, est(1, 0.0), T0).unwrap();
        let header = |a: &Admission, name: &str| {
            a.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            header(&a, "x-ratelimit-limit-requests").as_deref(),
            Some("2")
        );
        assert_eq!(
            header(&a, "x-ratelimit-remaining-requests").as_deref(),
            Some("1")
        );
        admit(&store, &scopes, est(1, 0.0), T0).unwrap();
        let refused = admit(&store, &scopes, est(1, 0.0), T0 + 1).unwrap_err();
        assert_eq!(
            (refused.error.status, refused.error.retry_after),
            (429, Some(30))
        );
        assert!(refused
            .headers
            .contains(&("x-ratelimit-remaining-requests".into(), "0".into())));
        // Half a minute refills one request.
        assert!(admit(&store, &scopes, est(1, 0.0), T0 + 30_000).is_ok());
    }

    #[test]
    fn tokens_are_estimated_up_front_and_settled_to_the_real_count() {
        let store = MemoryCounters::default();
        let scopes = [Scope::key("k", &quota(None, Some(1_000), None, None))];
        let a = admit(&store, &scopes, est(600, 0.0), T0).unwrap();
        // 400 left: a second 600-token estimate waits...
        assert!(admit(&store, &scopes, est(600, 0.0), T0).is_err());
        // ...until the first settles at its real 100 tokens.
        a.settle(&store, 100, 0, T0);
        let b = admit(&store, &scopes, est(600, 0.0), T0).unwrap();
        // A request that used more than estimated leaves a debt later requests wait out.
        b.settle(&store, 1_500, 0, T0);
        let refused = admit(&store, &scopes, est(10, 0.0), T0).unwrap_err();
        assert!(refused.error.retry_after.unwrap() >= 36, "{refused:?}");
    }

    #[test]
    fn concurrency_is_given_back_at_the_end() {
        let store = MemoryCounters::default();
        let scopes = [Scope::team("t", &quota(None, None, Some(1), None))];
        let a = admit(&store, &scopes, est(1, 0.0), T0).unwrap();
        let refused = admit(&store, &scopes, est(1, 0.0), T0).unwrap_err();
        assert_eq!(refused.error.code, Some("concurrency_limit_exceeded"));
        a.settle(&store, 1, 0, T0);
        assert!(admit(&store, &scopes, est(1, 0.0), T0).is_ok());
    }

    #[test]
    fn budgets_reserve_estimates_settle_real_costs_and_renew() {
        let store = MemoryCounters::default();
        let scopes = [Scope::key("k", &quota(None, None, None, Some(1.0)))];
        let a = admit(&store, &scopes, est(10, 0.6), T0).unwrap();
        let refused = admit(&store, &scopes, est(10, 0.6), T0).unwrap_err();
        assert_eq!(
            (refused.error.status, refused.error.code),
            (429, Some("insufficient_quota"))
        );
        assert!(
            refused.error.message.contains("$0.4 left"),
            "{}",
            refused.error.message
        );
        // Settled at its real $0.1: $0.9 is left for the next one.
        a.settle(&store, 10, usd_to_nano(0.1), T0);
        let b = admit(&store, &scopes, est(10, 0.9), T0).unwrap();
        b.settle(&store, 10, usd_to_nano(0.9), T0);
        assert!(admit(&store, &scopes, est(1, 0.01), T0).is_err(), "spent");
        // Spent exactly: even a request estimated at nothing (a task submit) is refused.
        let spent = admit(&store, &scopes, est(0, 0.0), T0).unwrap_err();
        assert_eq!(spent.error.code, Some("insufficient_quota"));
        assert!(
            spent.error.message.contains("is spent"),
            "{}",
            spent.error.message
        );
        // The next day the budget is whole again.
        assert!(admit(&store, &scopes, est(1, 0.9), T0 + DAY_MS).is_ok());
    }

    #[test]
    fn a_refusal_in_a_later_scope_gives_back_what_earlier_ones_took() {
        let store = MemoryCounters::default();
        let scopes = [
            Scope::key("k", &quota(Some(10), Some(100), Some(5), Some(10.0))),
            Scope::team("t", &quota(None, None, Some(1), None)),
        ];
        let held = admit(&store, &scopes, est(50, 1.0), T0).unwrap();
        assert!(admit(&store, &scopes, est(50, 1.0), T0).is_err());
        // Only the held request's share is gone from the key's scope.
        let key = &scopes[0];
        assert_eq!(counter(store.load(&key.record("concurrent")).as_deref()), 1);
        let ledger = Ledger::decode(store.load(&key.record("budget")).as_deref(), T0);
        assert_eq!(ledger.reserved_nano, usd_to_nano(1.0));
        let bucket = Bucket::decode(store.load(&key.record("rpm")).as_deref(), 10, T0);
        assert_eq!(bucket.level_milli, 9_000);
        held.settle(&store, 50, usd_to_nano(1.0), T0);
        assert_eq!(counter(store.load(&key.record("concurrent")).as_deref()), 0);
    }

    #[test]
    fn records_name_every_limited_counter_and_charges_correct_a_guess() {
        let scope = Scope::key("k", &quota(None, Some(100), None, Some(1.0)));
        assert_eq!(
            scope.records(),
            [
                "switchyard/limits/key:k/tpm",
                "switchyard/limits/key:k/budget"
            ]
        );
        let store = MemoryCounters::default();
        let held = admit(&store, std::slice::from_ref(&scope), est(40, 0.5), T0).unwrap();
        assert_eq!(held.scopes().collect::<Vec<_>>(), [&scope]);
        // Settled with its estimate as a guess, then corrected to the real $0.1 and 10 tokens.
        held.settle(&store, 40, usd_to_nano(0.5), T0);
        charge(&store, &scope, -30, usd_to_nano(-0.4), T0);
        assert_eq!(
            budget_state(&store, &scope, T0),
            Some((usd_to_nano(0.1), 0))
        );
        let bucket = Bucket::decode(store.load(&scope.record("tpm")).as_deref(), 100, T0);
        assert_eq!(bucket.level_milli, 90_000);
    }
}
