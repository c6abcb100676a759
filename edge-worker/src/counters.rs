//! The core's rate-limit, concurrency and budget counters in Spin's key-value store.
//!
//! The rules are the core's (`switchyard_core::limits`); this is only their store. Spin's
//! key-value API (2.0) has no compare-and-swap, so an update is a read, the core's change and
//! a write: instances updating the same counter in the same moment can each read the value
//! before the other's write. Limits therefore hold exactly for requests that do not overlap
//! that window, and can be exceeded by at most one request per instance racing inside it —
//! a bound of (concurrent instances − 1) requests per scope, against zero under Envoy's
//! compare-and-swap. Without the store, limits are counted in instance memory (per request,
//! on Spin: no limit at all), which `spin.toml`'s `key_value_stores = ["default"]` prevents.

use std::cell::RefCell;

use spin_sdk::key_value::Store;
use switchyard_core::limits::{CounterStore, MemoryCounters, RecordChange};

thread_local! {
    static STORE: RefCell<Option<Result<Store, ()>>> = const { RefCell::new(None) };
    static LOCAL: MemoryCounters = MemoryCounters::default();
}

fn with_store<T>(f: impl FnOnce(Option<&Store>) -> T) -> T {
    STORE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let store = cell.get_or_insert_with(|| Store::open_default().map_err(|_| ()));
        f(store.as_ref().ok())
    })
}

/// Counters in the app's `default` key-value store.
pub struct KeyValueCounters;

impl CounterStore for KeyValueCounters {
    fn update(&self, key: &str, change: &mut RecordChange<'_>) {
        with_store(|store| match store {
            Some(store) => {
                let current = store.get(key).ok().flatten();
                if let Some(next) = change(current.as_deref()) {
                    if let Err(err) = store.set(key, &next) {
                        crate::log::line(&format!(
                            "switchyard: key-value set of {key} failed ({err:?}); one limit update lost"
                        ));
                    }
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
