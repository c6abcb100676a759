//! The core's rate-limit, concurrency and budget counters in Spin's key-value store.
//!
//! The rules are the core's (`switchyard_core::limits`); this is only their store. An update
//! is a compare-and-swap through `wasi:keyvalue/atomics` (which Spin 3+/4 serve over the same
//! `default` store), retried on a conflict, so limits hold exactly across instances, as under
//! Envoy. Without the store, limits are counted in instance memory (per request, on Spin: no
//! limit at all), which `spin.toml`'s `key_value_stores = ["default"]` prevents.

use std::cell::RefCell;

use spin_sdk::wit::wasi::keyvalue::{atomics, store::Bucket};
use switchyard_core::limits::{CounterStore, MemoryCounters, RecordChange};

thread_local! {
    static STORE: RefCell<Option<Result<Bucket, ()>>> = const { RefCell::new(None) };
    static LOCAL: MemoryCounters = MemoryCounters::default();
}

/// Forgets a failed open of the store, so this request tries again: an instance that serves
/// several requests (a host that reuses instances) does not count limits in its own memory for
/// the rest of its life after one failure, as a fresh instance per request would not.
pub fn new_request() {
    STORE.with_borrow_mut(|store| {
        if matches!(store, Some(Err(()))) {
            *store = None;
        }
    });
}

/// Runs `f` on the `default` bucket, opened once per instance (`None`: not granted).
fn with_store<T>(f: impl FnOnce(Option<&Bucket>) -> T) -> T {
    STORE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let store = cell.get_or_insert_with(|| {
            spin_sdk::wit::wasi::keyvalue::store::open("default").map_err(|_| ())
        });
        f(store.as_ref().ok())
    })
}

/// Counters in the app's `default` key-value store.
pub struct KeyValueCounters;

impl CounterStore for KeyValueCounters {
    fn update(&self, key: &str, change: &mut RecordChange<'_>) {
        with_store(|store| match store {
            Some(bucket) => {
                if let Err(err) = cas_update(bucket, key, change) {
                    crate::log::line(&format!(
                        "switchyard: key-value update of {key} failed ({err}); one limit update lost"
                    ));
                }
            }
            None => LOCAL.with(|local| local.update(key, change)),
        })
    }

    fn load(&self, key: &str) -> Option<Vec<u8>> {
        with_store(|store| match store {
            Some(store) => store.get(key).ok().flatten(),
            None => LOCAL.with(|local| local.load(key)),
        })
    }
}

/// How many times one update retries after losing a compare-and-swap before giving up (each
/// loss means another instance's update went in, so the store always makes progress).
const CAS_ATTEMPTS: usize = 64;

/// `change` applied with `wasi:keyvalue/atomics` compare-and-swap: retried on a conflict.
fn cas_update(bucket: &Bucket, key: &str, change: &mut RecordChange<'_>) -> Result<(), String> {
    let mut cas = atomics::Cas::new(bucket, key).map_err(|e| format!("{e:?}"))?;
    for _ in 0..CAS_ATTEMPTS {
        let current = cas.current().map_err(|e| format!("{e:?}"))?;
        let Some(next) = change(current.as_deref()) else {
            return Ok(());
        };
        match atomics::swap(cas, &next) {
            Ok(()) => return Ok(()),
            Err(atomics::CasError::CasFailed(newer)) => cas = newer,
            Err(atomics::CasError::StoreError(e)) => return Err(format!("{e:?}")),
        }
    }
    Err(format!(
        "{CAS_ATTEMPTS} compare-and-swap conflicts in a row"
    ))
}
