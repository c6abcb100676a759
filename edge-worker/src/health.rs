//! The core's health records in Spin's key-value store, shared by every instance.
//!
//! The policy — `eject_after_failures` failures in a row eject a deployment for
//! `cooldown_ms`, latency is an EWMA, and which changes are worth a write — is the core's
//! ([`switchyard_core::health`], the same as the Envoy filter's); this is only its store.
//! Spin gives each request a fresh instance, so instance memory forgets an ejection
//! when the request ends; the records live in the app's `default` key-value store instead
//! (spin.toml grants it with `key_value_stores`), one key per deployment
//! ([`HealthRecord::key`]), so instances updating different deployments never touch each
//! other's records; a record is [`HealthRecord::encode`]'s short text line.
//!
//! Cost per request: planning reads each of the model's deployments once (one `get` each; the
//! strategy's repeated questions are answered from a short-lived instance cache). Recording an
//! attempt's outcome reads its record again when the cache has expired — any attempt longer
//! than [`CACHE_TTL`], so nearly every real model call — and writes only if the record changes
//! meaningfully (the core decides); a write is one more `get` and a `set`. A steadily healthy deployment costs about
//! two `get`s per request, plus a `get` and a `set` about once a second.
//!
//! Records are read and written with Spin's key-value API, without compare-and-swap, so two
//! instances updating one record at the same moment may lose one update (the limit counters,
//! which must be exact, use `wasi:keyvalue`'s compare-and-swap instead, see `counters`; the
//! filter retries on CAS mismatch). For passive health a lost update is acceptable: a lost
//! failure delays an ejection by one failure, a lost latency sample is one sample of many.
//! Reading the record again right before each write keeps that window to the `get`→`set` gap
//! instead of the length of an attempt, so a success that took seconds
//! does not overwrite an ejection another instance made meanwhile. (The
//! decision *whether* to write uses the cached record, up to [`CACHE_TTL`] old: a success
//! that changes nothing there skips its write even if another instance counted a failure in
//! that window, so that failure run is not reset — one more lost update of the same kind.)
//!
//! Without the store — an app that does not list it in `key_value_stores`, a host that denies
//! it — or after a store error, health falls back to instance memory for the rest of the
//! request (and says so on stderr): still enough to keep a deployment that just failed out of
//! the rest of the request. The next request tries the store again ([`new_request`]), also in
//! an instance a host reuses.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use spin_sdk::key_value::Store;
use switchyard_core::health::{HealthRecord, HealthStore};

/// How long a record read from the store serves routing decisions. Far longer than planning
/// one request takes, far shorter than any cooldown; it matters only on hosts that reuse an
/// instance for several requests (Spin does not).
const CACHE_TTL: Duration = Duration::from_millis(100);

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
    record: HealthRecord,
    read_at: Instant,
}

struct Records {
    backend: Backend,
    records: HashMap<String, Cached>,
}

thread_local! {
    static RECORDS: RefCell<Records> = RefCell::new(Records {
        backend: Backend::Unopened,
        records: HashMap::new(),
    });
}

/// Tries the store again in this request if an earlier one in this instance gave up on it:
/// an instance that serves several requests (a host that reuses instances) does not keep its
/// health local for the rest of its life after one failure, as a fresh instance would not.
/// What it read stays cached (for [`CACHE_TTL`]).
pub fn new_request() {
    RECORDS.with_borrow_mut(|records| {
        if matches!(records.backend, Backend::Local) {
            records.backend = Backend::Unopened;
        }
    });
}

impl Records {
    /// The shared store, opened on first use; `None` when health is instance-local.
    fn store(&mut self) -> Option<&Store> {
        if matches!(self.backend, Backend::Unopened) {
            self.backend = match Store::open_default() {
                Ok(store) => Backend::Shared(store),
                Err(err) => {
                    crate::log::line(&format!(
                        "switchyard: key-value store \"default\" unavailable ({err:?}); passive \
                         health stays in instance memory (grant it with key_value_stores = \
                         [\"default\"] in spin.toml)"
                    ));
                    Backend::Local
                }
            };
        }
        match &self.backend {
            Backend::Shared(store) => Some(store),
            _ => None,
        }
    }

    /// Gives up on the store after an error: for the rest of this request health is
    /// instance-local, starting from what this instance has read.
    fn degrade(&mut self, what: &str, err: impl std::fmt::Debug) {
        crate::log::line(&format!(
            "switchyard: key-value {what} failed ({err:?}); passive health stays in instance \
             memory for the rest of this request"
        ));
        self.backend = Backend::Local;
    }

    /// Reads a record from the store; `None` when health is instance-local (or just became so).
    fn fetch(&mut self, deployment: &str) -> Option<HealthRecord> {
        let result = self.store()?.get(&HealthRecord::key(deployment));
        match result {
            Ok(bytes) => Some(
                bytes
                    .as_deref()
                    .and_then(HealthRecord::decode)
                    .unwrap_or_default(),
            ),
            Err(err) => {
                self.degrade("get", err);
                None
            }
        }
    }

    /// Stores a record (and caches it).
    fn write(&mut self, deployment: &str, record: HealthRecord) {
        let result = match self.store() {
            Some(store) => store.set(&HealthRecord::key(deployment), record.encode().as_bytes()),
            None => Ok(()),
        };
        if let Err(err) = result {
            self.degrade("set", err);
        }
        self.remember(deployment, record);
    }

    fn remember(&mut self, deployment: &str, record: HealthRecord) {
        let cached = Cached {
            record,
            read_at: Instant::now(),
        };
        self.records.insert(deployment.to_string(), cached);
    }

    /// The record as routing sees it: the cached copy while it is recent, else the store's.
    fn view(&mut self, deployment: &str) -> HealthRecord {
        let local = matches!(self.backend, Backend::Local);
        if let Some(cached) = self.records.get(deployment) {
            if local || cached.read_at.elapsed() < CACHE_TTL {
                return cached.record;
            }
        }
        match self.fetch(deployment) {
            Some(record) => {
                self.remember(deployment, record);
                record
            }
            // Instance-local: what this instance knows, if anything.
            None => self
                .records
                .get(deployment)
                .map_or_else(HealthRecord::default, |c| c.record),
        }
    }

    /// Applies `change` to the (cached) record; when it proposes a write, applies it again to
    /// the record as stored right now — another instance may have written since the cached
    /// copy was read, and there is no compare-and-swap — and writes that.
    fn update(
        &mut self,
        deployment: &str,
        change: &mut dyn FnMut(HealthRecord) -> Option<HealthRecord>,
    ) {
        let cached = self.view(deployment);
        let Some(proposed) = change(cached) else {
            return;
        };
        if matches!(self.backend, Backend::Local) {
            self.remember(deployment, proposed);
            return;
        }
        let Some(current) = self.fetch(deployment) else {
            self.remember(deployment, proposed);
            return;
        };
        match change(current) {
            Some(next) => self.write(deployment, next),
            None => self.remember(deployment, current),
        }
    }
}

/// Health records in Spin's `default` key-value store (instance memory without it).
pub struct KeyValueHealth;

impl HealthStore for KeyValueHealth {
    fn load(&self, deployment: &str) -> Option<HealthRecord> {
        Some(RECORDS.with(|r| r.borrow_mut().view(deployment)))
    }

    fn update(
        &self,
        deployment: &str,
        change: &mut dyn FnMut(HealthRecord) -> Option<HealthRecord>,
    ) {
        RECORDS.with(|r| r.borrow_mut().update(deployment, change));
    }
}
