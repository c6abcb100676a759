//! Passive health shared by every instance of the component, in Spin's key-value store.
//!
//! The same rules as the Envoy filter's shared-data record: `eject_after_failures` failures in
//! a row eject a deployment for `cooldown_ms`, and latency is an EWMA for the lowest-latency
//! strategy. Spin gives each request a fresh instance, so instance memory forgets an ejection
//! when the request ends; the records live in the app's `default` key-value store instead
//! (spin.toml grants it with `key_value_stores`), one key per deployment —
//! `switchyard/health/<deployment id>` — so instances updating different deployments never
//! touch each other's records. A record is a short text line,
//! `failures,ejected_until_ms,latency_ms,latency_at_ms` (latency empty until measured).
//!
//! Cost per request: planning reads each of the model's deployments once (one `get` each; the
//! strategy's repeated questions are answered from a short-lived instance cache). Recording an
//! attempt's outcome reads its record again when the cache has expired — any attempt longer
//! than [`CACHE_TTL`], so nearly every real model call — and writes only if the record changes
//! meaningfully: a failure, an ejection, the end of a failure run, the first latency sample,
//! latency moving by more than 10%, or a stored latency older than a second (without that
//! refresh, a provider slowing down by a few percent per request would never move the stored
//! EWMA); a write is one more `get` and a `set`. A steadily healthy deployment costs about
//! two `get`s per request, plus a `get` and a `set` about once a second.
//!
//! Spin's key-value API (2.0) has no compare-and-swap, so two instances updating one record
//! at the same moment may lose one update (the filter retries on CAS mismatch instead). For
//! passive health that is acceptable: a lost failure delays an ejection by one failure, a lost
//! latency sample is one sample of many. Reading the record again right before each write
//! keeps that window to the `get`→`set` gap instead of the length of an attempt, so a success
//! that took seconds does not overwrite an ejection another instance made meanwhile. (The
//! decision *whether* to write uses the cached record, up to [`CACHE_TTL`] old: a success
//! that changes nothing there skips its write even if another instance counted a failure in
//! that window, so that failure run is not reset — one more lost update of the same kind.)
//!
//! Without the store — an app that does not list it in `key_value_stores`, a host that denies
//! it — or after a store error, health falls back to instance memory (and says so once per
//! instance on stderr, which on Spin means once per request): still enough to keep a
//! deployment that just failed out of the rest of the request, forgotten after it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spin_sdk::key_value::Store;
use switchyard_core::config::FallbackPolicy;
use switchyard_core::routing::HealthView;

/// Prefix of the records' keys; the deployment id (`provider/model`) follows.
const KEY_PREFIX: &str = "switchyard/health/";
/// Relative latency change that is worth a write.
const LATENCY_MOVE: f64 = 0.1;
/// Age after which a stored latency is refreshed even if it barely moved.
const LATENCY_REFRESH_MS: u64 = 1_000;
/// How long a record read from the store serves routing decisions. Far longer than planning
/// one request takes, far shorter than any cooldown; it matters only on hosts that reuse an
/// instance for several requests (Spin does not).
const CACHE_TTL: Duration = Duration::from_millis(100);

/// One deployment's passive health.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Entry {
    /// Consecutive failures (reset by a success or an ejection).
    failures: u32,
    /// Unix ms until which the deployment is skipped.
    ejected_until_ms: u64,
    /// Latency EWMA in ms, once measured.
    latency_ms: Option<f64>,
    /// Unix ms of the latest latency sample in the EWMA.
    latency_at_ms: u64,
}

impl Entry {
    /// The stored form: `failures,ejected_until_ms,latency_ms,latency_at_ms`, latency to 0.1 ms.
    fn encode(&self) -> String {
        let latency = self
            .latency_ms
            .map(|l| format!("{l:.1}"))
            .unwrap_or_default();
        format!(
            "{},{},{latency},{}",
            self.failures, self.ejected_until_ms, self.latency_at_ms
        )
    }

    /// Parses [`Entry::encode`]'s form; `None` for anything else.
    fn decode(bytes: &[u8]) -> Option<Entry> {
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
        parts.next().is_none().then_some(Entry {
            failures,
            ejected_until_ms,
            latency_ms,
            latency_at_ms,
        })
    }

    fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms > now_ms
    }

    /// After a failed attempt: one more failure, or an ejection once there are enough.
    fn failed(mut self, policy: &FallbackPolicy, now_ms: u64) -> Entry {
        self.failures += 1;
        if self.failures >= policy.eject_after_failures.max(1) {
            self.ejected_until_ms = now_ms.saturating_add(policy.cooldown_ms);
            self.failures = 0;
        }
        self
    }

    /// After a successful attempt: the failure run ends and the latency joins the EWMA.
    fn succeeded(mut self, latency_ms: u64, now_ms: u64) -> Entry {
        let latency = latency_ms as f64;
        self.failures = 0;
        self.latency_ms = Some(self.latency_ms.map_or(latency, |l| 0.8 * l + 0.2 * latency));
        self.latency_at_ms = now_ms;
        self
    }

    /// Whether this record differs enough from the stored one to be worth a write.
    fn worth_writing(&self, stored: &Entry, now_ms: u64) -> bool {
        if self.failures != stored.failures || self.ejected_until_ms != stored.ejected_until_ms {
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

/// Where the records live for this instance.
enum Backend {
    /// Not needed yet: the store is opened on first use.
    Unopened,
    /// The app's `default` key-value store; `records` caches what was read.
    Shared(Store),
    /// No store: `records` is the only copy.
    Local,
}

/// A record and when it was read from the store.
#[derive(Clone, Copy)]
struct Cached {
    entry: Entry,
    read_at: Instant,
}

struct Health {
    backend: Backend,
    records: HashMap<String, Cached>,
}

thread_local! {
    static HEALTH: RefCell<Health> = RefCell::new(Health {
        backend: Backend::Unopened,
        records: HashMap::new(),
    });
}

impl Health {
    /// The shared store, opened on first use; `None` when health is instance-local.
    fn store(&mut self) -> Option<&Store> {
        if matches!(self.backend, Backend::Unopened) {
            self.backend = match Store::open_default() {
                Ok(store) => Backend::Shared(store),
                Err(err) => {
                    eprintln!(
                        "switchyard: key-value store \"default\" unavailable ({err:?}); passive \
                         health stays in instance memory (grant it with key_value_stores = \
                         [\"default\"] in spin.toml)"
                    );
                    Backend::Local
                }
            };
        }
        match &self.backend {
            Backend::Shared(store) => Some(store),
            _ => None,
        }
    }

    /// Gives up on the store after an error: from now on health is instance-local, starting
    /// from what this instance has read.
    fn degrade(&mut self, what: &str, err: impl std::fmt::Debug) {
        eprintln!(
            "switchyard: key-value {what} failed ({err:?}); passive health stays in instance \
             memory for the rest of this instance"
        );
        self.backend = Backend::Local;
    }

    /// Reads a record from the store; `None` when health is instance-local (or just became so).
    fn fetch(&mut self, deployment: &str) -> Option<Entry> {
        let result = self.store()?.get(&format!("{KEY_PREFIX}{deployment}"));
        match result {
            Ok(bytes) => Some(bytes.as_deref().and_then(Entry::decode).unwrap_or_default()),
            Err(err) => {
                self.degrade("get", err);
                None
            }
        }
    }

    /// Stores a record (and caches it).
    fn write(&mut self, deployment: &str, entry: Entry) {
        let result = match self.store() {
            Some(store) => store.set(
                &format!("{KEY_PREFIX}{deployment}"),
                entry.encode().as_bytes(),
            ),
            None => Ok(()),
        };
        if let Err(err) = result {
            self.degrade("set", err);
        }
        self.remember(deployment, entry);
    }

    fn remember(&mut self, deployment: &str, entry: Entry) {
        let cached = Cached {
            entry,
            read_at: Instant::now(),
        };
        self.records.insert(deployment.to_string(), cached);
    }

    /// The record as routing sees it: the cached copy while it is recent, else the store's.
    fn view(&mut self, deployment: &str) -> Entry {
        let local = matches!(self.backend, Backend::Local);
        if let Some(cached) = self.records.get(deployment) {
            if local || cached.read_at.elapsed() < CACHE_TTL {
                return cached.entry;
            }
        }
        match self.fetch(deployment) {
            Some(entry) => {
                self.remember(deployment, entry);
                entry
            }
            // Instance-local: what this instance knows, if anything.
            None => self
                .records
                .get(deployment)
                .map_or_else(Entry::default, |c| c.entry),
        }
    }

    /// Applies `change` to a record, writing it back when that is worth it. Returns the
    /// record before and after (the same twice when the change was not worth keeping).
    fn update(
        &mut self,
        deployment: &str,
        now_ms: u64,
        change: impl Fn(Entry) -> Entry,
    ) -> (Entry, Entry) {
        let before = self.view(deployment);
        let after = change(before);
        if matches!(self.backend, Backend::Local) {
            self.remember(deployment, after);
            return (before, after);
        }
        if !after.worth_writing(&before, now_ms) {
            return (before, before);
        }
        // Another instance may have written since `before` was read: apply the change to the
        // current record, so as to overwrite as little as possible (there is no CAS).
        let Some(before) = self.fetch(deployment) else {
            self.remember(deployment, after);
            return (before, after);
        };
        let after = change(before);
        if !after.worth_writing(&before, now_ms) {
            self.remember(deployment, before);
            return (before, before);
        }
        self.write(deployment, after);
        (before, after)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Records a failed attempt; ejects after too many in a row.
pub fn record_failure(deployment: &str, policy: &FallbackPolicy, now_ms: u64) {
    let (before, after) = HEALTH.with(|h| {
        h.borrow_mut()
            .update(deployment, now_ms, |e| e.failed(policy, now_ms))
    });
    if after.ejected_until_ms != before.ejected_until_ms {
        eprintln!(
            "switchyard: ejecting deployment {deployment} for {} ms",
            policy.cooldown_ms
        );
    }
}

/// Records a successful attempt and its latency.
pub fn record_success(deployment: &str, latency_ms: u64) {
    let now_ms = unix_ms();
    HEALTH.with(|h| {
        h.borrow_mut()
            .update(deployment, now_ms, |e| e.succeeded(latency_ms, now_ms))
    });
}

/// The routing core's view of the deployments' health at one instant.
pub struct InstanceHealth {
    /// Current time, unix ms.
    pub now_ms: u64,
}

impl HealthView for InstanceHealth {
    fn is_ejected(&self, deployment_id: &str) -> bool {
        HEALTH.with(|h| h.borrow_mut().view(deployment_id).is_ejected(self.now_ms))
    }

    fn latency_ms(&self, deployment_id: &str) -> Option<f64> {
        HEALTH.with(|h| h.borrow_mut().view(deployment_id).latency_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(eject_after_failures: u32, cooldown_ms: u64) -> FallbackPolicy {
        FallbackPolicy {
            eject_after_failures,
            cooldown_ms,
            ..FallbackPolicy::default()
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_rejected() {
        let measured = Entry {
            failures: 2,
            ejected_until_ms: 1_700_000_000_123,
            latency_ms: Some(12.5),
            latency_at_ms: 1_700_000_000_000,
        };
        assert_eq!(measured.encode(), "2,1700000000123,12.5,1700000000000");
        assert_eq!(Entry::decode(measured.encode().as_bytes()), Some(measured));
        let fresh = Entry::default();
        assert_eq!(fresh.encode(), "0,0,,0");
        assert_eq!(Entry::decode(fresh.encode().as_bytes()), Some(fresh));
        let rounded = Entry {
            latency_ms: Some(1.0 / 3.0),
            ..fresh
        };
        assert_eq!(rounded.encode(), "0,0,0.3,0");
        for garbage in [
            &b""[..],
            b"garbage",
            b"1,2,3",
            b"1,2,3,4,5",
            b"-1,0,,0",
            b"0,0,NaN,0",
            b"0,0,-5,0",
            b"0,0,inf,0",
            b"\xff,0,,0",
        ] {
            assert_eq!(Entry::decode(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn enough_failures_in_a_row_eject_for_the_cooldown() {
        let three = policy(3, 5_000);
        let once = Entry::default().failed(&three, 1_000);
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
        assert!(Entry::default().failed(&policy(0, 10), 0).is_ejected(5));
    }

    #[test]
    fn latency_is_an_ewma() {
        let first = Entry::default().succeeded(100, 1);
        assert_eq!(first.latency_ms, Some(100.0));
        let second = first.succeeded(200, 2);
        assert_eq!(second.latency_ms, Some(120.0));
        assert_eq!(second.latency_at_ms, 2);
    }

    #[test]
    fn only_meaningful_changes_are_written() {
        let now = 10_000;
        let stored = Entry::default().succeeded(100, now - 10);
        let three = policy(3, 1_000);
        // Failures and ejections always are.
        assert!(stored.failed(&three, now).worth_writing(&stored, now));
        let failing = stored.failed(&three, now);
        assert!(failing.succeeded(100, now).worth_writing(&failing, now));
        // The first latency sample is.
        let unmeasured = Entry::default();
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
}
