//! Passive health: one policy for every host, over a small store each host provides.
//!
//! A deployment that fails `eject_after_failures` attempts in a row is ejected for
//! `cooldown_ms`, and routing skips it meanwhile; one whose provider answered 429 with a
//! `Retry-After` in seconds backs off for that long ([`HealthRecord::backed_off`]: tried last,
//! and asked by no request before then); latency is an EWMA for the lowest-latency strategy.
//! The rules and the stored record live here; a host only supplies a
//! [`HealthStore`] — proxy-wasm shared data (Envoy, host-runner: compare-and-swap across
//! workers), Spin key-value (shared by every instance) — so the hosts cannot drift apart.
//!
//! Updates are written only when they change something routing cares about (a failure, an
//! ejection, the end of a failure run, the first latency sample, latency moving by more than
//! 10%, or a stored latency older than a second), which keeps writes — and compare-and-swap
//! contention, or key-value round trips — off nearly every successful request.

use crate::config::FallbackPolicy;
use crate::routing::{HealthView, Standing};

/// Relative latency change that is worth a write.
const LATENCY_MOVE: f64 = 0.1;
/// Age after which a stored latency is refreshed even if it barely moved (without it, a
/// provider slowing by a few percent per request would never move the stored EWMA).
const LATENCY_REFRESH_MS: u64 = 1_000;
/// Weight of the newest sample in the latency EWMA.
const LATENCY_ALPHA: f64 = 0.2;

/// One deployment's passive health, as stored.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct HealthRecord {
    /// Consecutive failures (reset by a success or an ejection).
    pub failures: u32,
    /// Unix ms until which the deployment is skipped.
    pub ejected_until_ms: u64,
    /// Latency EWMA in ms, once measured.
    pub latency_ms: Option<f64>,
    /// Unix ms of the latest latency sample in the EWMA.
    pub latency_at_ms: u64,
    /// Unix ms until which the deployment's provider asked callers to back off (a 429 with
    /// `Retry-After`): routing tries it last, and no request asks it before then.
    pub backed_off_until_ms: u64,
}

impl HealthRecord {
    /// The store key of `deployment`'s record.
    pub fn key(deployment: &str) -> String {
        format!("switchyard/health/{deployment}")
    }

    /// The stored form: `failures,ejected_until_ms,latency_ms,latency_at_ms`, latency to
    /// 0.1 ms and empty until measured, then `,backed_off_until_ms` when a back-off was ever
    /// recorded (so a record without one keeps the older, shorter form).
    pub fn encode(&self) -> String {
        let latency = self
            .latency_ms
            .map(|l| format!("{l:.1}"))
            .unwrap_or_default();
        let mut text = format!(
            "{},{},{latency},{}",
            self.failures, self.ejected_until_ms, self.latency_at_ms
        );
        if self.backed_off_until_ms > 0 {
            text.push_str(&format!(",{}", self.backed_off_until_ms));
        }
        text
    }

    /// Parses [`HealthRecord::encode`]'s form; `None` for anything else (a corrupt record is
    /// treated as no record).
    pub fn decode(bytes: &[u8]) -> Option<HealthRecord> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(',');
        let failures = parts.next()?.parse().ok()?;
        let ejected_until_ms = parts.next()?.parse().ok()?;
        let latency_ms = match parts.next()? {
            "" => None,
            l => match l.parse::<f64>() {
                Ok(l) if l.is_finite() && l >= 0.0 => Some(l),
                _ => return None,
            },
        };
        let latency_at_ms = parts.next()?.parse().ok()?;
        let backed_off_until_ms = match parts.next() {
            None => 0,
            Some(b) => b.parse().ok()?,
        };
        parts.next().is_none().then_some(HealthRecord {
            failures,
            ejected_until_ms,
            latency_ms,
            latency_at_ms,
            backed_off_until_ms,
        })
    }

    /// Whether routing skips the deployment at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms > now_ms
    }

    /// After a failed attempt: one more failure, or an ejection once there are enough.
    pub fn failed(self, policy: &FallbackPolicy, now_ms: u64) -> HealthRecord {
        let mut record = self.forget_past_back_off(now_ms);
        record.failures += 1;
        if record.failures >= policy.eject_after_failures.max(1) {
            // Never shorter than an ejection already running.
            record.ejected_until_ms = record
                .ejected_until_ms
                .max(now_ms.saturating_add(policy.cooldown_ms));
            record.failures = 0;
        }
        record
    }

    /// After a provider asked for a back-off (a 429 with `Retry-After`): nobody asks it before
    /// `until_ms` at least, so other requests go down the rest of the chain (or wait) instead
    /// of each asking the throttled provider again.
    pub fn backed_off(mut self, until_ms: u64) -> HealthRecord {
        self.backed_off_until_ms = self.backed_off_until_ms.max(until_ms);
        self
    }

    /// Where routing puts the deployment at `now_ms`.
    pub fn standing(&self, now_ms: u64) -> Standing {
        let backed_off_until_ms =
            (self.backed_off_until_ms > now_ms).then_some(self.backed_off_until_ms);
        if self.is_ejected(now_ms) {
            Standing::Ejected {
                backed_off_until_ms,
            }
        } else if let Some(until_ms) = backed_off_until_ms {
            Standing::BackingOff(until_ms)
        } else {
            Standing::Healthy
        }
    }

    /// A back-off that is over is dropped, so the record is stored in its shorter form again.
    fn forget_past_back_off(mut self, now_ms: u64) -> HealthRecord {
        if self.backed_off_until_ms <= now_ms {
            self.backed_off_until_ms = 0;
        }
        self
    }

    /// After a successful attempt: the failure run ends and the latency joins the EWMA.
    pub fn succeeded(self, latency_ms: u64, now_ms: u64) -> HealthRecord {
        let mut record = self.forget_past_back_off(now_ms);
        let latency = latency_ms as f64;
        record.failures = 0;
        record.latency_ms = Some(record.latency_ms.map_or(latency, |l| {
            (1.0 - LATENCY_ALPHA) * l + LATENCY_ALPHA * latency
        }));
        record.latency_at_ms = now_ms;
        record
    }

    /// Whether this record differs enough from `stored` to be worth a write.
    pub fn worth_writing(&self, stored: &HealthRecord, now_ms: u64) -> bool {
        if self.failures != stored.failures
            || self.ejected_until_ms != stored.ejected_until_ms
            || self.backed_off_until_ms != stored.backed_off_until_ms
        {
            return true;
        }
        match (stored.latency_ms, self.latency_ms) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(old), Some(new)) => {
                (new - old).abs() > LATENCY_MOVE * old
                    || now_ms.saturating_sub(stored.latency_at_ms) >= LATENCY_REFRESH_MS
            }
        }
    }
}

/// Where a host keeps health records: shared by every worker or instance that serves the
/// same gateway.
pub trait HealthStore {
    /// The record of `deployment`, if one is stored.
    fn load(&self, deployment: &str) -> Option<HealthRecord>;
    /// Stores what `change` makes of the current record (the default record when none is
    /// stored); `change` returns `None` when there is nothing worth writing. A store may call
    /// `change` more than once (on a compare-and-swap conflict, or to re-apply it to a fresher
    /// record), so it must be a pure function of its argument.
    fn update(
        &self,
        deployment: &str,
        change: &mut dyn FnMut(HealthRecord) -> Option<HealthRecord>,
    );
}

/// A store that remembers nothing: every deployment is always healthy.
pub struct NoHealthStore;

impl HealthStore for NoHealthStore {
    fn load(&self, _: &str) -> Option<HealthRecord> {
        None
    }
    fn update(&self, _: &str, _: &mut dyn FnMut(HealthRecord) -> Option<HealthRecord>) {}
}

/// What recording a failure changed: each instant (unix ms) is set when this failure started
/// or lengthened that state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FailureRecorded {
    /// Ejected (cooling down after failures) until then.
    pub ejected_until_ms: Option<u64>,
    /// Backing off (its provider's `Retry-After`) until then.
    pub backed_off_until_ms: Option<u64>,
}

/// Records a failed attempt of `deployment`: ejects it after too many in a row, and records
/// the back-off its provider asked for until `back_off_until_ms`, if any.
pub fn record_failure(
    store: &dyn HealthStore,
    deployment: &str,
    policy: &FallbackPolicy,
    now_ms: u64,
    back_off_until_ms: Option<u64>,
) -> FailureRecorded {
    let mut recorded = FailureRecorded::default();
    store.update(deployment, &mut |stored| {
        let mut next = stored.failed(policy, now_ms);
        if let Some(until_ms) = back_off_until_ms {
            next = next.backed_off(until_ms);
        }
        let longer = |next: u64, stored: u64| (next > stored && next > now_ms).then_some(next);
        recorded = FailureRecorded {
            ejected_until_ms: longer(next.ejected_until_ms, stored.ejected_until_ms),
            backed_off_until_ms: longer(next.backed_off_until_ms, stored.backed_off_until_ms),
        };
        Some(next)
    });
    recorded
}

/// Records a successful attempt of `deployment` and its latency.
pub fn record_success(store: &dyn HealthStore, deployment: &str, latency_ms: u64, now_ms: u64) {
    store.update(deployment, &mut |stored| {
        let next = stored.succeeded(latency_ms, now_ms);
        next.worth_writing(&stored, now_ms).then_some(next)
    });
}

/// The routing core's view of a store at one instant.
pub struct HealthSnapshot<'a> {
    /// The store.
    pub store: &'a dyn HealthStore,
    /// The instant, unix ms.
    pub now_ms: u64,
}

impl HealthView for HealthSnapshot<'_> {
    fn is_ejected(&self, deployment_id: &str) -> bool {
        self.store
            .load(deployment_id)
            .is_some_and(|r| r.is_ejected(self.now_ms))
    }

    fn latency_ms(&self, deployment_id: &str) -> Option<f64> {
        self.store.load(deployment_id).and_then(|r| r.latency_ms)
    }

    fn standing(&self, deployment_id: &str) -> Standing {
        self.store
            .load(deployment_id)
            .map_or(Standing::Healthy, |r| r.standing(self.now_ms))
    }
}

/// An in-memory store, for hosts without a shared one and for tests.
#[derive(Debug, Default)]
pub struct MemoryHealthStore {
    records: core::cell::RefCell<std::collections::BTreeMap<String, HealthRecord>>,
}

impl HealthStore for MemoryHealthStore {
    fn load(&self, deployment: &str) -> Option<HealthRecord> {
        self.records.borrow().get(deployment).copied()
    }

    fn update(
        &self,
        deployment: &str,
        change: &mut dyn FnMut(HealthRecord) -> Option<HealthRecord>,
    ) {
        let stored = self.load(deployment).unwrap_or_default();
        if let Some(next) = change(stored) {
            self.records
                .borrow_mut()
                .insert(deployment.to_string(), next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_after(after: u32) -> FallbackPolicy {
        FallbackPolicy {
            eject_after_failures: after,
            cooldown_ms: 1_000,
            ..FallbackPolicy::default()
        }
    }

    fn policy(eject_after_failures: u32, cooldown_ms: u64) -> FallbackPolicy {
        FallbackPolicy {
            eject_after_failures,
            cooldown_ms,
            ..FallbackPolicy::default()
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_rejected() {
        let measured = HealthRecord {
            failures: 2,
            ejected_until_ms: 1_700_000_000_123,
            latency_ms: Some(12.5),
            latency_at_ms: 1_700_000_000_000,
            backed_off_until_ms: 0,
        };
        assert_eq!(measured.encode(), "2,1700000000123,12.5,1700000000000");
        assert_eq!(
            HealthRecord::decode(measured.encode().as_bytes()),
            Some(measured)
        );
        let backing_off = HealthRecord {
            backed_off_until_ms: 1_700_000_030_000,
            ..measured
        };
        assert_eq!(
            backing_off.encode(),
            "2,1700000000123,12.5,1700000000000,1700000030000"
        );
        assert_eq!(
            HealthRecord::decode(backing_off.encode().as_bytes()),
            Some(backing_off)
        );
        let fresh = HealthRecord::default();
        assert_eq!(fresh.encode(), "0,0,,0");
        assert_eq!(HealthRecord::decode(fresh.encode().as_bytes()), Some(fresh));
        let rounded = HealthRecord {
            latency_ms: Some(1.0 / 3.0),
            ..fresh
        };
        assert_eq!(rounded.encode(), "0,0,0.3,0");
        for garbage in [
            &b""[..],
            b"garbage",
            b"1,2,3",
            b"1,2,3,4,x",
            b"1,2,3,4,5,6",
            b"-1,0,,0",
            b"0,0,NaN,0",
            b"0,0,-5,0",
            b"0,0,inf,0",
            b"\xff,0,,0",
        ] {
            assert_eq!(HealthRecord::decode(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn enough_failures_in_a_row_eject_for_the_cooldown() {
        let three = policy(3, 5_000);
        let once = HealthRecord::default().failed(&three, 1_000);
        let twice = once.failed(&three, 1_100);
        assert_eq!((twice.failures, twice.is_ejected(1_100)), (2, false));
        let ejected = twice.failed(&three, 1_200);
        assert_eq!(ejected.failures, 0, "the count starts over");
        assert!(ejected.is_ejected(1_200) && ejected.is_ejected(6_199));
        assert!(!ejected.is_ejected(6_200), "the cooldown is over");
        // A success in between ends the run.
        let reset = twice.succeeded(40, 1_150).failed(&three, 1_200);
        assert_eq!((reset.failures, reset.is_ejected(1_200)), (1, false));
        // `eject_after_failures: 0` ejects on the first failure, like 1.
        assert!(HealthRecord::default()
            .failed(&policy(0, 10), 0)
            .is_ejected(5));
    }

    #[test]
    fn latency_is_an_ewma() {
        let first = HealthRecord::default().succeeded(100, 1);
        assert_eq!(first.latency_ms, Some(100.0));
        let second = first.succeeded(200, 2);
        assert_eq!(second.latency_ms, Some(120.0));
        assert_eq!(second.latency_at_ms, 2);
    }

    #[test]
    fn only_meaningful_changes_are_written() {
        let now = 10_000;
        let stored = HealthRecord::default().succeeded(100, now - 10);
        let three = policy(3, 1_000);
        // Failures and ejections always are.
        assert!(stored.failed(&three, now).worth_writing(&stored, now));
        let failing = stored.failed(&three, now);
        assert!(failing.succeeded(100, now).worth_writing(&failing, now));
        // The first latency sample is.
        let unmeasured = HealthRecord::default();
        assert!(unmeasured.succeeded(5, now).worth_writing(&unmeasured, now));
        // A latency within 10% of a recent sample is not (EWMA 108); a larger move is (EWMA
        // 112, 88).
        assert!(!stored.succeeded(140, now).worth_writing(&stored, now));
        assert!(stored.succeeded(160, now).worth_writing(&stored, now));
        assert!(stored.succeeded(40, now).worth_writing(&stored, now));
        // A stale latency is refreshed even if it barely moved.
        let later = now - 10 + LATENCY_REFRESH_MS;
        assert!(stored.succeeded(100, later).worth_writing(&stored, later));
        // Nothing changed: nothing to write.
        assert!(!stored.worth_writing(&stored, now));
    }

    #[test]
    fn ejects_after_the_configured_run_and_recovers_after_cooldown() {
        let store = MemoryHealthStore::default();
        let view = |now_ms| HealthSnapshot {
            store: &store,
            now_ms,
        };
        let ejected = |until| FailureRecorded {
            ejected_until_ms: until,
            backed_off_until_ms: None,
        };
        assert_eq!(
            record_failure(&store, "a/x", &policy_after(2), 100, None),
            ejected(None)
        );
        assert!(!view(100).is_ejected("a/x"));
        assert_eq!(
            record_failure(&store, "a/x", &policy_after(2), 200, None),
            ejected(Some(1_200))
        );
        assert!(view(200).is_ejected("a/x"));
        assert!(view(1_199).is_ejected("a/x"));
        assert!(!view(1_200).is_ejected("a/x"));
        // A success ends a failure run: two more failures are needed again.
        record_failure(&store, "a/x", &policy_after(2), 1_300, None);
        record_success(&store, "a/x", 50, 1_400);
        assert_eq!(
            record_failure(&store, "a/x", &policy_after(2), 1_500, None),
            ejected(None)
        );
    }

    #[test]
    fn a_providers_back_off_is_recorded_at_once_and_never_shortened() {
        let store = MemoryHealthStore::default();
        let standing = |now_ms| {
            HealthSnapshot {
                store: &store,
                now_ms,
            }
            .standing("a/x")
        };
        let backed_off = |until| FailureRecorded {
            ejected_until_ms: None,
            backed_off_until_ms: until,
        };
        // One 429 asking for 30 s: backing off for 30 s, though one failure is not a run.
        assert_eq!(
            record_failure(&store, "a/x", &policy_after(3), 1_000, Some(31_000)),
            backed_off(Some(31_000))
        );
        assert_eq!(standing(30_999), Standing::BackingOff(31_000));
        assert_eq!(standing(31_000), Standing::Healthy);
        // A shorter back-off inside it changes nothing.
        assert_eq!(
            record_failure(&store, "a/x", &policy_after(3), 2_000, Some(5_000)),
            backed_off(None)
        );
        assert_eq!(standing(30_999), Standing::BackingOff(31_000));
        // The failures still count toward a run: the third in a row (no back-off of its own)
        // ejects for the cooldown and resets the run; the back-off is kept and outlasts it.
        assert_eq!(
            record_failure(&store, "a/x", &policy_after(3), 3_000, None),
            FailureRecorded {
                ejected_until_ms: Some(4_000),
                backed_off_until_ms: None
            }
        );
        assert_eq!(store.load("a/x").unwrap().failures, 0);
        assert_eq!(
            standing(3_999),
            Standing::Ejected {
                backed_off_until_ms: Some(31_000)
            }
        );
        assert_eq!(standing(4_000), Standing::BackingOff(31_000));
        // A longer back-off lengthens it.
        assert_eq!(
            record_failure(&store, "a/x", &policy_after(3), 5_000, Some(63_000)),
            backed_off(Some(63_000))
        );
        assert_eq!(standing(62_999), Standing::BackingOff(63_000));
        // Once over, the next update drops it: the record is stored in its shorter form.
        record_success(&store, "a/x", 40, 63_000);
        assert_eq!(store.load("a/x").unwrap().backed_off_until_ms, 0);
        assert_eq!(store.load("a/x").unwrap().encode().split(',').count(), 4);
        // A back-off already over when recorded changes nothing.
        let other = MemoryHealthStore::default();
        assert_eq!(
            record_failure(&other, "b/y", &policy_after(3), 5_000, Some(4_000)),
            backed_off(None)
        );
    }

    #[test]
    fn an_ejection_is_never_shortened_by_a_later_run() {
        // A 60 s ejection (a long cooldown), then a policy with a short one completes a run:
        // the deployment stays out for the longer of the two.
        let long = policy(1, 60_000);
        let short = policy(1, 1_000);
        let record = HealthRecord::default().failed(&long, 1_000);
        assert_eq!(record.ejected_until_ms, 61_000);
        assert_eq!(record.failed(&short, 2_000).ejected_until_ms, 61_000);
        assert_eq!(record.failed(&short, 70_000).ejected_until_ms, 71_000);
    }

    #[test]
    fn latency_is_an_ewma_written_only_when_it_moves_or_ages() {
        let store = MemoryHealthStore::default();
        record_success(&store, "a/x", 100, 0);
        assert_eq!(store.load("a/x").unwrap().latency_ms, Some(100.0));
        // 105 moves the EWMA by 1%: not worth a write within the refresh interval...
        record_success(&store, "a/x", 105, 10);
        assert_eq!(store.load("a/x").unwrap().latency_at_ms, 0);
        // ...but it is once the stored sample is old.
        record_success(&store, "a/x", 105, 2_000);
        let r = store.load("a/x").unwrap();
        assert_eq!((r.latency_ms, r.latency_at_ms), (Some(101.0), 2_000));
        // A large move is written at once.
        record_success(&store, "a/x", 1_000, 2_010);
        assert!(store.load("a/x").unwrap().latency_ms.unwrap() > 200.0);
        assert_eq!(
            HealthSnapshot {
                store: &store,
                now_ms: 0
            }
            .latency_ms("b/y"),
            None
        );
    }
}
