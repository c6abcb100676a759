//! Admission: the bounded count of requests that wait for a batch slot, and the per-worker
//! load used to dispatch.
//!
//! The bound is a shared counter rather than a bounded channel so that it is exact across
//! workers; a request past it is answered 503 with `Retry-After` at once instead of piling
//! up. Both counters are held by guards, so every way a job can end (finished, failed,
//! cancelled, dropped at shutdown) gives its place back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Shared;
use crate::error::ApiError;

/// A place in the admission queue; dropping it gives the place back.
pub(super) struct QueueTicket(Arc<Shared>);

impl QueueTicket {
    /// Takes a place if the queue has room, else counts the rejection and says when to retry.
    pub(super) fn take(shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let capacity = shared.config.queue_capacity;
        let admitted =
            shared
                .queue_depth
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |depth| {
                    (depth < capacity).then_some(depth + 1)
                });
        if admitted.is_err() {
            shared
                .metrics
                .requests_rejected_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::QueueFull { retry_after_s: 1 });
        }
        Ok(QueueTicket(shared.clone()))
    }
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.0.queue_depth.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a job against its worker until the job is done, for least-loaded dispatch.
pub(super) struct LoadGuard(Arc<AtomicUsize>);

impl LoadGuard {
    /// Counts one more job on the worker whose load is `load`.
    pub(super) fn new(load: &Arc<AtomicUsize>) -> Self {
        load.fetch_add(1, Ordering::AcqRel);
        LoadGuard(load.clone())
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
