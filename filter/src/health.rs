//! The core's health records in proxy-wasm shared data, shared by every worker's VM.
//!
//! The policy (when to eject, for how long, the latency EWMA, when a change is worth a
//! write) is the core's ([`switchyard_core::health`]); this is only its store. Updates use the
//! host's compare-and-swap, so concurrent workers never lose a count.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use switchyard_core::health::{HealthRecord, HealthStore};

/// Attempts at a compare-and-swap write before giving the update up (only under heavy
/// contention on one record; losing one health sample then is harmless).
const CAS_TRIES: usize = 8;

/// Health records in the host's shared data.
pub struct SharedDataHealth;

fn read(key: &str) -> (Option<HealthRecord>, Option<u32>) {
    match hostcalls::get_shared_data(key) {
        Ok((bytes, cas)) => (bytes.and_then(|b| HealthRecord::decode(&b)), cas),
        Err(_) => (None, None),
    }
}

impl HealthStore for SharedDataHealth {
    fn load(&self, deployment: &str) -> Option<HealthRecord> {
        read(&HealthRecord::key(deployment)).0
    }

    fn update(
        &self,
        deployment: &str,
        change: &mut dyn FnMut(HealthRecord) -> Option<HealthRecord>,
    ) {
        let key = HealthRecord::key(deployment);
        for _ in 0..CAS_TRIES {
            let (stored, cas) = read(&key);
            let Some(next) = change(stored.unwrap_or_default()) else {
                return;
            };
            match hostcalls::set_shared_data(&key, Some(next.encode().as_bytes()), cas) {
                Err(Status::CasMismatch) => continue,
                _ => return,
            }
        }
    }
}
