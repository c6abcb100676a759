//! `fermyon:spin/key-value@2.0.0`: the `default` store a Spin component gets with
//! `key_value_stores = ["default"]`, shared by every instance of the server and kept in
//! memory. The Spin component keeps its passive-health state here, so that state outlives the
//! per-request instances just as it does in Spin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use wasmtime::component::Resource;

use super::bindings::fermyon::spin::key_value;
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

impl key_value::Host for RequestState {}

/// Spin's semantics: a label the component was not granted is `access-denied` (what Spin
/// answers for a label missing from `key_value_stores`); keys are any string.
impl key_value::HostStore for RequestState {
    fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<KeyValueStore>, key_value::Error>> {
        let Some(store) = self.key_value.get(&label).cloned() else {
            return Ok(Err(key_value::Error::AccessDenied));
        };
        if self.open_stores >= MAX_OPEN_STORES {
            return Ok(Err(key_value::Error::StoreTableFull));
        }
        let handle = self.table.push(store)?;
        self.open_stores += 1;
        Ok(Ok(handle))
    }

    fn get(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, key_value::Error>> {
        let value = self.table.get(&store)?.with(|map| map.get(&key).cloned());
        Ok(Ok(value))
    }

    fn set(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), key_value::Error>> {
        self.table.get(&store)?.with(|map| map.insert(key, value));
        Ok(Ok(()))
    }

    fn delete(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), key_value::Error>> {
        self.table.get(&store)?.with(|map| map.remove(&key));
        Ok(Ok(()))
    }

    fn exists(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, key_value::Error>> {
        let exists = self.table.get(&store)?.with(|map| map.contains_key(&key));
        Ok(Ok(exists))
    }

    fn get_keys(
        &mut self,
        store: Resource<KeyValueStore>,
    ) -> wasmtime::Result<Result<Vec<String>, key_value::Error>> {
        let keys = self
            .table
            .get(&store)?
            .with(|map| map.keys().cloned().collect());
        Ok(Ok(keys))
    }

    fn drop(&mut self, store: Resource<KeyValueStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        self.open_stores -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::server::test_support::request_state;

    /// The guest's view of a handle it owns, as the bindings pass it to methods.
    fn borrow(store: &Resource<KeyValueStore>) -> Resource<KeyValueStore> {
        Resource::new_borrow(store.rep())
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
}
