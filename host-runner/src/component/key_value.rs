//! The `default` store a Spin component gets with `key_value_stores = ["default"]`, shared by
//! every instance of the server and kept in memory, behind both interfaces Spin serves it
//! through: `fermyon:spin/key-value@2.0.0` and `wasi:keyvalue@0.2.0-draft2` (whose atomics
//! add the compare-and-swap the limit counters need). The Spin component keeps its
//! passive-health state and counters here, so they outlive the per-request instances just as
//! they do in Spin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use wasmtime::component::Resource;

use super::bindings::fermyon::spin::key_value;
use super::bindings::wasi::keyvalue::{atomics, store as wasi_store};
use super::server::RequestState;

/// One key-value store, shared by every instance of the server (the `store` resource's
/// host side). In memory: unlike Spin's SQLite-backed `default` store it is gone when the
/// server stops, which is what tests and local runs want.
#[derive(Debug, Clone, Default)]
pub struct KeyValueStore(Arc<Mutex<HashMap<String, Vec<u8>>>>);

impl KeyValueStore {
    /// Runs `f` on the map.
    pub fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Vec<u8>>) -> R) -> R {
        // Nothing done under the lock can leave the map half-updated, so a lock poisoned
        // by a panic still guards a consistent map.
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.with(|map| map.get(key).cloned())
    }

    fn set(&self, key: String, value: Vec<u8>) {
        self.with(|map| map.insert(key, value));
    }

    fn delete(&self, key: &str) {
        self.with(|map| map.remove(key));
    }

    fn exists(&self, key: &str) -> bool {
        self.with(|map| map.contains_key(key))
    }

    fn keys(&self) -> Vec<String> {
        self.with(|map| map.keys().cloned().collect())
    }
}

/// The key-value stores every instance may open, by label: only `default`, as for a Spin
/// component with `key_value_stores = ["default"]`.
const KEY_VALUE_LABELS: &[&str] = &["default"];

/// How many stores one instance may hold open at once; Spin's limit too.
const MAX_OPEN_STORES: u32 = 256;

/// The stores, by label.
pub(super) fn key_value_stores() -> HashMap<String, KeyValueStore> {
    KEY_VALUE_LABELS
        .iter()
        .map(|label| (label.to_string(), KeyValueStore::default()))
        .collect()
}

/// Why a store could not be opened, before each interface names it in its own error type.
enum OpenRefused {
    /// A label the component was not granted.
    NotGranted,
    /// [`MAX_OPEN_STORES`] already open in this instance.
    TooMany,
}

impl RequestState {
    /// A handle on the store labelled `label`, counted against [`MAX_OPEN_STORES`]: what both
    /// interfaces' `open` do.
    fn open_store(
        &mut self,
        label: &str,
    ) -> wasmtime::Result<Result<Resource<KeyValueStore>, OpenRefused>> {
        let Some(store) = self.key_value.get(label).cloned() else {
            return Ok(Err(OpenRefused::NotGranted));
        };
        if self.open_stores >= MAX_OPEN_STORES {
            return Ok(Err(OpenRefused::TooMany));
        }
        let handle = self.table.push(store)?;
        self.open_stores += 1;
        Ok(Ok(handle))
    }

    /// Drops a handle [`RequestState::open_store`] made.
    fn close_store(&mut self, store: Resource<KeyValueStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        self.open_stores -= 1;
        Ok(())
    }
}

impl key_value::Host for RequestState {}

/// Spin's semantics: a label the component was not granted is `access-denied` (what Spin
/// answers for a label missing from `key_value_stores`); keys are any string.
impl key_value::HostStore for RequestState {
    fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<KeyValueStore>, key_value::Error>> {
        Ok(self.open_store(&label)?.map_err(|refused| match refused {
            OpenRefused::NotGranted => key_value::Error::AccessDenied,
            OpenRefused::TooMany => key_value::Error::StoreTableFull,
        }))
    }

    fn get(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, key_value::Error>> {
        Ok(Ok(self.table.get(&store)?.get(&key)))
    }

    fn set(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), key_value::Error>> {
        self.table.get(&store)?.set(key, value);
        Ok(Ok(()))
    }

    fn delete(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), key_value::Error>> {
        self.table.get(&store)?.delete(&key);
        Ok(Ok(()))
    }

    fn exists(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, key_value::Error>> {
        Ok(Ok(self.table.get(&store)?.exists(&key)))
    }

    fn get_keys(
        &mut self,
        store: Resource<KeyValueStore>,
    ) -> wasmtime::Result<Result<Vec<String>, key_value::Error>> {
        let keys = self.table.get(&store)?.keys();
        Ok(Ok(keys))
    }

    fn drop(&mut self, store: Resource<KeyValueStore>) -> wasmtime::Result<()> {
        self.close_store(store)
    }
}

/// A compare-and-swap in progress (the `cas` resource's host side): the value the guest saw
/// when it began. The swap succeeds only if the key still holds exactly that value (or is
/// still absent). Comparing values rather than versions lets an A→B→A change in between pass;
/// for records whose next value is a pure function of the current one, as every counter and
/// health record here is, that is the same outcome.
#[derive(Debug)]
pub struct KeyValueCas {
    store: KeyValueStore,
    key: String,
    seen: Option<Vec<u8>>,
}

impl wasi_store::Host for RequestState {
    /// Spin's semantics again: an identifier is a store label, and one the component was not
    /// granted is `access-denied`.
    fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<KeyValueStore>, wasi_store::Error>> {
        Ok(self
            .open_store(&identifier)?
            .map_err(|refused| match refused {
                OpenRefused::NotGranted => wasi_store::Error::AccessDenied,
                OpenRefused::TooMany => {
                    wasi_store::Error::Other("too many open key-value stores".into())
                }
            }))
    }
}

impl wasi_store::HostBucket for RequestState {
    fn get(
        &mut self,
        bucket: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_store::Error>> {
        Ok(Ok(self.table.get(&bucket)?.get(&key)))
    }

    fn set(
        &mut self,
        bucket: Resource<KeyValueStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        self.table.get(&bucket)?.set(key, value);
        Ok(Ok(()))
    }

    fn delete(
        &mut self,
        bucket: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        self.table.get(&bucket)?.delete(&key);
        Ok(Ok(()))
    }

    fn exists(
        &mut self,
        bucket: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, wasi_store::Error>> {
        Ok(Ok(self.table.get(&bucket)?.exists(&key)))
    }

    /// Every key in one page (no cursor), as Spin's own stores answer.
    fn list_keys(
        &mut self,
        bucket: Resource<KeyValueStore>,
        _cursor: Option<String>,
    ) -> wasmtime::Result<Result<wasi_store::KeyResponse, wasi_store::Error>> {
        let keys = self.table.get(&bucket)?.keys();
        Ok(Ok(wasi_store::KeyResponse { keys, cursor: None }))
    }

    fn drop(&mut self, bucket: Resource<KeyValueStore>) -> wasmtime::Result<()> {
        self.close_store(bucket)
    }
}

impl atomics::Host for RequestState {
    /// Adds `delta` to the key's value, an 8-byte little-endian `i64` (absent: 0); a value of
    /// any other shape is an error rather than silently replaced.
    fn increment(
        &mut self,
        bucket: Resource<KeyValueStore>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, wasi_store::Error>> {
        let result = self.table.get(&bucket)?.with(|map| {
            let current = match map.get(&key) {
                None => 0,
                Some(bytes) => match <[u8; 8]>::try_from(bytes.as_slice()) {
                    Ok(bytes) => i64::from_le_bytes(bytes),
                    Err(_) => {
                        return Err(wasi_store::Error::Other(format!(
                            "{key} does not hold an 8-byte integer"
                        )))
                    }
                },
            };
            let next = current
                .checked_add(delta)
                .ok_or_else(|| wasi_store::Error::Other(format!("{key} would overflow an i64")))?;
            map.insert(key.clone(), next.to_le_bytes().to_vec());
            Ok(next)
        });
        Ok(result)
    }

    fn swap(
        &mut self,
        cas: Resource<KeyValueCas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let cas = self.table.delete(cas)?;
        let current = cas.store.with(|map| {
            let current = map.get(&cas.key);
            if current == cas.seen.as_ref() {
                map.insert(cas.key.clone(), value);
                None
            } else {
                Some(current.cloned())
            }
        });
        match current {
            None => Ok(Ok(())),
            // Lost the race: a fresh handle that has seen the newer value, for the retry.
            Some(seen) => {
                let retry = self.table.push(KeyValueCas { seen, ..cas })?;
                Ok(Err(atomics::CasError::CasFailed(retry)))
            }
        }
    }
}

impl atomics::HostCas for RequestState {
    fn new(
        &mut self,
        bucket: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<KeyValueCas>, wasi_store::Error>> {
        let store = self.table.get(&bucket)?.clone();
        let seen = store.get(&key);
        Ok(Ok(self.table.push(KeyValueCas { store, key, seen })?))
    }

    fn current(
        &mut self,
        cas: Resource<KeyValueCas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_store::Error>> {
        Ok(Ok(self.table.get(&cas)?.seen.clone()))
    }

    fn drop(&mut self, cas: Resource<KeyValueCas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::server::test_support::request_state;

    /// The guest's view of a handle it owns, as the bindings pass it to methods.
    fn borrow<T: 'static>(handle: &Resource<T>) -> Resource<T> {
        Resource::new_borrow(handle.rep())
    }

    #[test]
    fn key_value_default_store_is_shared_by_every_instance() {
        use key_value::{Error, HostStore};
        let stores = Arc::new(key_value_stores());
        let (mut one, mut two) = (request_state(&stores), request_state(&stores));
        assert!(matches!(
            one.open("other".into()).unwrap(),
            Err(Error::AccessDenied)
        ));
        let a = one.open("default".into()).unwrap().unwrap();
        let b = two.open("default".into()).unwrap().unwrap();
        let key = || "switchyard/health/p/m".to_string();
        assert_eq!(one.get(borrow(&a), key()).unwrap().unwrap(), None);
        assert!(!one.exists(borrow(&a), key()).unwrap().unwrap());
        one.set(borrow(&a), key(), b"1,0,,0".to_vec())
            .unwrap()
            .unwrap();
        // Another instance sees it.
        assert_eq!(
            two.get(borrow(&b), key()).unwrap().unwrap().as_deref(),
            Some(&b"1,0,,0"[..])
        );
        assert!(two.exists(borrow(&b), key()).unwrap().unwrap());
        assert_eq!(two.get_keys(borrow(&b)).unwrap().unwrap(), vec![key()]);
        two.delete(borrow(&b), key()).unwrap().unwrap();
        two.delete(borrow(&b), key()).unwrap().unwrap();
        assert!(!one.exists(borrow(&a), key()).unwrap().unwrap());
        // A dropped handle is gone: using it traps.
        let stale = borrow(&a);
        HostStore::drop(&mut one, a).unwrap();
        assert!(one.get(stale, key()).is_err());
        assert_eq!(one.open_stores, 0);
    }

    #[test]
    fn key_value_open_stores_are_limited_per_instance() {
        use key_value::{Error, HostStore};
        let mut state = request_state(&Arc::new(key_value_stores()));
        let handles: Vec<_> = (0..MAX_OPEN_STORES)
            .map(|_| state.open("default".into()).unwrap().unwrap())
            .collect();
        assert!(matches!(
            state.open("default".into()).unwrap(),
            Err(Error::StoreTableFull)
        ));
        for handle in handles {
            HostStore::drop(&mut state, handle).unwrap();
        }
        assert!(state.open("default".into()).unwrap().is_ok());
    }

    #[test]
    fn wasi_keyvalue_bucket_shares_the_spin_store() {
        use wasi_store::{Error, Host, HostBucket};
        let stores = Arc::new(key_value_stores());
        let (mut spin, mut wasi) = (request_state(&stores), request_state(&stores));
        assert!(matches!(
            Host::open(&mut wasi, "other".into()).unwrap(),
            Err(Error::AccessDenied)
        ));
        let bucket = Host::open(&mut wasi, "default".into()).unwrap().unwrap();
        let store = key_value::HostStore::open(&mut spin, "default".into())
            .unwrap()
            .unwrap();
        let key = || "switchyard/limits/k".to_string();
        HostBucket::set(&mut wasi, borrow(&bucket), key(), b"v".to_vec())
            .unwrap()
            .unwrap();
        // The same key, seen through the other interface by another instance.
        assert_eq!(
            key_value::HostStore::get(&mut spin, borrow(&store), key())
                .unwrap()
                .unwrap()
                .as_deref(),
            Some(&b"v"[..])
        );
        let listed = HostBucket::list_keys(&mut wasi, borrow(&bucket), None)
            .unwrap()
            .unwrap();
        assert_eq!((listed.keys, listed.cursor), (vec![key()], None));
        HostBucket::delete(&mut wasi, borrow(&bucket), key())
            .unwrap()
            .unwrap();
        assert!(!HostBucket::exists(&mut wasi, borrow(&bucket), key())
            .unwrap()
            .unwrap());
        HostBucket::drop(&mut wasi, bucket).unwrap();
        assert_eq!(wasi.open_stores, 0);
    }

    #[test]
    fn compare_and_swap_fails_after_a_concurrent_write_and_retries_from_the_newer_value() {
        use atomics::{CasError, Host as _, HostCas};
        use wasi_store::{Host, HostBucket};
        let stores = Arc::new(key_value_stores());
        let (mut one, mut two) = (request_state(&stores), request_state(&stores));
        let a = Host::open(&mut one, "default".into()).unwrap().unwrap();
        let b = Host::open(&mut two, "default".into()).unwrap().unwrap();
        let key = || "switchyard/concurrency/m".to_string();

        // Both instances begin from "key absent".
        let first = HostCas::new(&mut one, borrow(&a), key()).unwrap().unwrap();
        let second = HostCas::new(&mut two, borrow(&b), key()).unwrap().unwrap();
        assert_eq!(
            HostCas::current(&mut two, borrow(&second))
                .unwrap()
                .unwrap(),
            None
        );
        // The first swap wins, and consumes its handle ...
        let consumed = borrow(&first);
        one.swap(first, b"1".to_vec()).unwrap().unwrap();
        assert!(HostCas::current(&mut one, consumed).is_err());
        // ... so the second, which saw the key absent, must fail rather than overwrite it,
        // and hands back a handle that has seen the value the winner wrote.
        let Err(CasError::CasFailed(retry)) = two.swap(second, b"1".to_vec()).unwrap() else {
            panic!("a swap from a stale value succeeded");
        };
        assert_eq!(
            HostCas::current(&mut two, borrow(&retry))
                .unwrap()
                .unwrap()
                .as_deref(),
            Some(&b"1"[..])
        );
        two.swap(retry, b"2".to_vec()).unwrap().unwrap();
        assert_eq!(
            HostBucket::get(&mut one, borrow(&a), key())
                .unwrap()
                .unwrap()
                .as_deref(),
            Some(&b"2"[..])
        );
        HostBucket::drop(&mut one, a).unwrap();
        HostBucket::drop(&mut two, b).unwrap();
    }

    #[test]
    fn increment_counts_from_zero_and_refuses_a_value_that_is_not_an_integer() {
        use atomics::Host as _;
        use wasi_store::{Error, Host, HostBucket};
        let mut state = request_state(&Arc::new(key_value_stores()));
        let bucket = Host::open(&mut state, "default".into()).unwrap().unwrap();
        let key = || "n".to_string();
        assert_eq!(
            state.increment(borrow(&bucket), key(), 5).unwrap().unwrap(),
            5
        );
        assert_eq!(
            state
                .increment(borrow(&bucket), key(), -7)
                .unwrap()
                .unwrap(),
            -2
        );
        assert_eq!(
            HostBucket::get(&mut state, borrow(&bucket), key())
                .unwrap()
                .unwrap(),
            Some((-2i64).to_le_bytes().to_vec())
        );
        HostBucket::set(&mut state, borrow(&bucket), key(), b"12".to_vec())
            .unwrap()
            .unwrap();
        assert!(matches!(
            state.increment(borrow(&bucket), key(), 1).unwrap(),
            Err(Error::Other(_))
        ));
        // The refused increment left the value as it was.
        assert_eq!(
            HostBucket::get(&mut state, borrow(&bucket), key())
                .unwrap()
                .unwrap()
                .as_deref(),
            Some(&b"12"[..])
        );
        HostBucket::set(
            &mut state,
            borrow(&bucket),
            key(),
            i64::MAX.to_le_bytes().to_vec(),
        )
        .unwrap()
        .unwrap();
        assert!(matches!(
            state.increment(borrow(&bucket), key(), 1).unwrap(),
            Err(Error::Other(_))
        ));
    }
}
