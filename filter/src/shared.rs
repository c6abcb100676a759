//! The core's shared records — passive health, and rate-limit/budget counters — in
//! proxy-wasm shared data, common to every worker's VM.
//!
//! The policies are the core's (`switchyard_core::health`, `switchyard_core::limits`); these
//! are only their stores. Every update is a compare-and-swap loop, so concurrent workers
//! never lose a count.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use switchyard_core::health::{HealthRecord, HealthStore};
use switchyard_core::limits::{CounterStore, RecordChange};

/// Attempts at a compare-and-swap write before giving the update up (only under heavy
/// contention on one record).
const CAS_TRIES: usize = 16;

fn read(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or((None, None))
}

/// Replaces the record under `key` with what `change` makes of it, compare-and-swap.
fn cas_update(key: &str, change: &mut RecordChange<'_>) {
    for _ in 0..CAS_TRIES {
        let (stored, cas) = read(key);
        let Some(next) = change(stored.as_deref()) else {
            return;
        };
        match hostcalls::set_shared_data(key, Some(&next), cas) {
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
        read(&HealthRecord::key(deployment))
            .0
            .and_then(|b| HealthRecord::decode(&b))
    }

    fn update(
        &self,
        deployment: &str,
        change: &mut dyn FnMut(HealthRecord) -> Option<HealthRecord>,
    ) {
        cas_update(&HealthRecord::key(deployment), &mut |stored| {
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
        cas_update(key, change);
    }

    fn load(&self, key: &str) -> Option<Vec<u8>> {
        read(key).0
    }
}
