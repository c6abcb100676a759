//! The core's shared records — passive health, and rate-limit/budget counters — in
//! proxy-wasm shared data, common to every worker's VM.
//!
//! The policies are the core's (`switchyard_core::health`, `switchyard_core::limits`); these
//! are only their stores. Every update is a compare-and-swap loop over a record that
//! exists (see [`create`]), so concurrent workers never lose a count.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use switchyard_core::health::{HealthRecord, HealthStore};
use switchyard_core::limits::{CounterStore, RecordChange};

/// Attempts at a compare-and-swap write before giving the update up (only under heavy
/// contention on one record).
const CAS_TRIES: usize = 16;

/// Shared data as the records need it: Envoy's (and host-runner's) `get`/`set` semantics,
/// where a compare-and-swap token is checked only on a record that exists.
trait SharedStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status>;
}

/// The host's shared data.
struct Host;

impl SharedStore for Host {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        hostcalls::set_shared_data(key, Some(value), cas)
    }
}

/// A record's value and its compare-and-swap token; an empty value is "no record yet"
/// ([`create`] writes it), never a record of the core's (those are never empty).
fn read(store: &impl SharedStore, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    let (value, cas) = store.get(key);
    (value.filter(|v| !v.is_empty()), cas)
}

/// Creates the record under `key` in the host's shared data, empty, unless it exists.
///
/// Shared data checks a compare-and-swap token only on a record that exists: two workers
/// that both find a record missing and both write it both succeed, and one write is lost —
/// for a counter, a request counted by nobody. So a record is first created empty (two
/// creators write the same nothing), and values are only ever written compare-and-swap
/// over it. The filter creates the records its limits use when it is configured, before
/// traffic; what is left of the race is a record first met by two requests at once, one of
/// them creating it while the other's count lands between the first's two calls.
pub fn create(key: &str) {
    create_in(&Host, key);
}

fn create_in(store: &impl SharedStore, key: &str) {
    if store.get(key).1.is_none() {
        let _ = store.set(key, &[], None);
    }
}

/// Replaces the record under `key` with what `change` makes of it, compare-and-swap.
fn cas_update(store: &impl SharedStore, key: &str, change: &mut RecordChange<'_>) {
    for _ in 0..CAS_TRIES {
        let (stored, cas) = read(store, key);
        if cas.is_none() {
            // Missing: a write now could not be compare-and-swap (see `create`).
            create_in(store, key);
            continue;
        }
        let Some(next) = change(stored.as_deref()) else {
            return;
        };
        match store.set(key, &next, cas) {
            Err(Status::CasMismatch) => continue,
            _ => return,
        }
    }
    log::warn!("switchyard: shared record {key} stayed contended; one update was dropped");
}

/// Health records in the host's shared data.
pub struct SharedDataHealth;

impl HealthStore for SharedDataHealth {
    fn load(&self, deployment: &str) -> Option<HealthRecord> {
        read(&Host, &HealthRecord::key(deployment))
            .0
            .and_then(|b| HealthRecord::decode(&b))
    }

    fn update(
        &self,
        deployment: &str,
        change: &mut dyn FnMut(HealthRecord) -> Option<HealthRecord>,
    ) {
        cas_update(&Host, &HealthRecord::key(deployment), &mut |stored| {
            let current = stored.and_then(HealthRecord::decode).unwrap_or_default();
            change(current).map(|next| next.encode().into_bytes())
        });
    }
}

/// Rate-limit, concurrency and budget counters in the host's shared data: exact across
/// every worker of one Envoy (or host-runner).
pub struct SharedDataCounters;

impl CounterStore for SharedDataCounters {
    fn update(&self, key: &str, change: &mut RecordChange<'_>) {
        cas_update(&Host, key, change);
    }

    fn load(&self, key: &str) -> Option<Vec<u8>> {
        read(&Host, key).0
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use super::*;

    /// Another worker's calls, played against the store.
    type OtherWorker = Box<dyn Fn(&Fake)>;

    /// Shared data with Envoy's semantics, and a hook that plays another worker's calls
    /// right after this worker's `n`-th call.
    #[derive(Default)]
    struct Fake {
        records: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        version: Cell<u32>,
        calls: Cell<usize>,
        after_call: RefCell<Option<(usize, OtherWorker)>>,
        writes: RefCell<Vec<(Vec<u8>, Option<u32>)>>,
    }

    impl Fake {
        fn called(&self) {
            self.calls.set(self.calls.get() + 1);
            let hook = self.after_call.borrow_mut().take();
            match hook {
                Some((n, other)) if n == self.calls.get() => other(self),
                other => *self.after_call.borrow_mut() = other,
            }
        }

        fn raw_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
            let mut records = self.records.borrow_mut();
            if let (Some((_, current)), Some(cas)) = (records.get(key), cas) {
                if *current != cas {
                    return Err(Status::CasMismatch);
                }
            }
            self.version.set(self.version.get() + 1);
            records.insert(key.to_string(), (value.to_vec(), self.version.get()));
            Ok(())
        }

        fn value(&self, key: &str) -> Vec<u8> {
            self.records.borrow()[key].0.clone()
        }
    }

    impl SharedStore for Fake {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            let found = self.records.borrow().get(key).cloned();
            self.called();
            match found {
                Some((value, cas)) => (Some(value), Some(cas)),
                None => (None, None),
            }
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
            self.writes.borrow_mut().push((value.to_vec(), cas));
            let result = self.raw_set(key, value, cas);
            self.called();
            result
        }
    }

    /// Adds one to a decimal counter.
    fn increment(store: &Fake, key: &str) {
        cas_update(store, key, &mut |current| {
            let n: u64 = current
                .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
                .unwrap_or(0);
            Some((n + 1).to_string().into_bytes())
        });
    }

    #[test]
    fn a_count_is_never_written_without_a_compare_and_swap_token() {
        let store = Fake::default();
        increment(&store, "c");
        increment(&store, "c");
        assert_eq!(store.value("c"), b"2");
        for (value, cas) in store.writes.borrow().iter() {
            assert!(
                value.is_empty() || cas.is_some(),
                "{value:?} written with {cas:?}"
            );
        }
    }

    /// The lost update this protocol exists for: this worker finds the counter missing, and
    /// before its next call another worker creates it and counts one. Writing "1" without a
    /// token (what the filter did) would erase that count; now it ends at 2.
    #[test]
    fn another_workers_first_count_is_not_overwritten() {
        let store = Fake::default();
        *store.after_call.borrow_mut() = Some((
            1,
            Box::new(|s: &Fake| {
                s.raw_set("c", b"", None).unwrap();
                let cas = s.records.borrow()["c"].1;
                s.raw_set("c", b"1", Some(cas)).unwrap();
            }),
        ));
        increment(&store, "c");
        assert_eq!(store.value("c"), b"2");
    }

    #[test]
    fn a_created_record_reads_as_none_and_creating_again_keeps_a_value() {
        let store = Fake::default();
        create_in(&store, "c");
        assert_eq!(read(&store, "c"), (None, Some(1)));
        increment(&store, "c");
        create_in(&store, "c");
        assert_eq!(store.value("c"), b"1");
    }
}
