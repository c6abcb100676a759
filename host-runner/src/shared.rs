//! Shared data and shared queues: state that every VM instance of the process sees, like
//! Envoy's per-`vm_id` shared data and queues that span worker threads.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::abi::Status;

/// Called with a queue id when an item was enqueued: wakes the VM that registered the queue,
/// which then runs `proxy_on_queue_ready` on its own thread.
pub type QueueWaker = Arc<dyn Fn(u32) + Send + Sync>;

/// Locks `m`, recovering the guard if a panic poisoned it: the host's shared maps and lists
/// are only ever changed by single inserts and removals, so a panic cannot leave them
/// half-updated in a way that matters more than losing the whole process.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Key/value store with compare-and-swap versions (`proxy_get/set_shared_data`).
#[derive(Default)]
pub struct SharedData {
    inner: Mutex<SharedDataInner>,
}

#[derive(Default)]
struct SharedDataInner {
    entries: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl SharedData {
    /// The value and its CAS version.
    pub fn get(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        lock(&self.inner).entries.get(key).cloned()
    }

    /// Store `value`. A non-zero `cas` must match the version of an existing key, else
    /// `CasMismatch`; zero writes unconditionally. An absent key is created whatever the
    /// `cas`, as Envoy does (proxy-wasm-cpp-host `SharedData::set`): a guest gets no atomic
    /// create on either host, so it must not count on one here.
    pub fn set(&self, key: &[u8], value: Vec<u8>, cas: u32) -> Result<(), Status> {
        let mut inner = lock(&self.inner);
        if let (Some((_, current)), true) = (inner.entries.get(key), cas != 0) {
            if *current != cas {
                return Err(Status::CasMismatch);
            }
        }
        inner.next_cas = inner.next_cas.wrapping_add(1).max(1);
        let version = inner.next_cas;
        inner.entries.insert(key.to_vec(), (value, version));
        Ok(())
    }
}

/// Named FIFO queues (`proxy_register/resolve/enqueue/dequeue_shared_queue`).
#[derive(Default)]
pub struct SharedQueues {
    inner: Mutex<QueuesInner>,
}

#[derive(Default)]
struct QueuesInner {
    by_name: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
    next_id: u32,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    owner: QueueWaker,
}

impl SharedQueues {
    /// Register (or re-register, e.g. after a VM was replaced) a queue owned by the caller's
    /// VM. Items already queued are kept.
    pub fn register(&self, vm_id: &str, name: &str, owner: QueueWaker) -> u32 {
        let mut inner = lock(&self.inner);
        let key = (vm_id.to_string(), name.to_string());
        if let Some(&id) = inner.by_name.get(&key) {
            if let Some(q) = inner.queues.get_mut(&id) {
                q.owner = owner;
            }
            return id;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.by_name.insert(key, id);
        inner.queues.insert(
            id,
            Queue {
                items: VecDeque::new(),
                owner,
            },
        );
        id
    }

    /// Look a queue up by VM id and name.
    pub fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        lock(&self.inner)
            .by_name
            .get(&(vm_id.to_string(), name.to_string()))
            .copied()
    }

    /// Append an item and wake the owning VM.
    pub fn enqueue(&self, id: u32, item: Vec<u8>) -> Result<(), Status> {
        let owner = {
            let mut inner = lock(&self.inner);
            let q = inner.queues.get_mut(&id).ok_or(Status::NotFound)?;
            q.items.push_back(item);
            q.owner.clone()
        };
        owner(id);
        Ok(())
    }

    /// Take the oldest item; `Empty` when there is none.
    pub fn dequeue(&self, id: u32) -> Result<Vec<u8>, Status> {
        let mut inner = lock(&self.inner);
        let q = inner.queues.get_mut(&id).ok_or(Status::NotFound)?;
        q.items.pop_front().ok_or(Status::Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn cas_rejects_stale_versions() {
        let d = SharedData::default();
        d.set(b"k", b"1".to_vec(), 0).unwrap();
        let (_, v1) = d.get(b"k").unwrap();
        d.set(b"k", b"2".to_vec(), v1).unwrap();
        assert_eq!(d.set(b"k", b"3".to_vec(), v1), Err(Status::CasMismatch));
        let (value, v2) = d.get(b"k").unwrap();
        assert_eq!(value, b"2");
        assert_ne!(v1, v2);
        // As in Envoy, a CAS write to an absent key creates it.
        d.set(b"missing", b"x".to_vec(), 7).unwrap();
        assert_eq!(d.get(b"missing").unwrap().0, b"x");
    }

    #[test]
    fn queues_wake_their_owner() {
        let woken = Arc::new(AtomicU32::new(0));
        let w = woken.clone();
        let q = SharedQueues::default();
        let id = q.register(
            "",
            "jobs",
            Arc::new(move |id| w.store(id, Ordering::SeqCst)),
        );
        assert_eq!(q.resolve("", "jobs"), Some(id));
        assert_eq!(q.dequeue(id), Err(Status::Empty));
        q.enqueue(id, b"a".to_vec()).unwrap();
        assert_eq!(woken.load(Ordering::SeqCst), id);
        assert_eq!(q.dequeue(id).unwrap(), b"a");
        assert_eq!(q.enqueue(99, vec![]), Err(Status::NotFound));
    }
}
