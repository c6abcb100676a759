//! Passive health shared by every worker's VM, in proxy-wasm shared data.
//!
//! A deployment that fails `eject_after_failures` times in a row is ejected for
//! `cooldown_ms`; the routing core skips it meanwhile. Latency is kept as an EWMA for the
//! lowest-latency strategy. Updates use the host's compare-and-swap so concurrent workers
//! never lose a count.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use switchyard_core::config::FallbackPolicy;
use switchyard_core::routing::HealthView;

const PREFIX: &str = "switchyard:health:";

/// Consecutive failures, and the time (unix ms) until which the deployment is ejected.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Entry {
    failures: u32,
    ejected_until_ms: u64,
    latency_ms: f64,
}

impl Entry {
    fn decode(bytes: &[u8]) -> Entry {
        let text = String::from_utf8_lossy(bytes);
        let mut parts = text.split(',');
        Entry {
            failures: parts.next().and_then(|p| p.parse().ok()).unwrap_or(0),
            ejected_until_ms: parts.next().and_then(|p| p.parse().ok()).unwrap_or(0),
            latency_ms: parts.next().and_then(|p| p.parse().ok()).unwrap_or(-1.0),
        }
    }

    fn encode(&self) -> String {
        format!(
            "{},{},{}",
            self.failures, self.ejected_until_ms, self.latency_ms
        )
    }
}

fn read(deployment: &str) -> (Entry, Option<u32>) {
    match hostcalls::get_shared_data(&format!("{PREFIX}{deployment}")) {
        Ok((Some(bytes), cas)) => (Entry::decode(&bytes), cas),
        Ok((None, cas)) => (
            Entry {
                latency_ms: -1.0,
                ..Entry::default()
            },
            cas,
        ),
        Err(_) => (
            Entry {
                latency_ms: -1.0,
                ..Entry::default()
            },
            None,
        ),
    }
}

fn update(deployment: &str, change: impl Fn(&mut Entry)) {
    let key = format!("{PREFIX}{deployment}");
    for _ in 0..8 {
        let (mut entry, cas) = read(deployment);
        change(&mut entry);
        match hostcalls::set_shared_data(&key, Some(entry.encode().as_bytes()), cas) {
            Err(Status::CasMismatch) => continue,
            _ => return,
        }
    }
}

/// Records a failed attempt; ejects after too many in a row.
pub fn record_failure(deployment: &str, policy: &FallbackPolicy, now_ms: u64) {
    update(deployment, |e| {
        e.failures += 1;
        if e.failures >= policy.eject_after_failures.max(1) {
            e.ejected_until_ms = now_ms + policy.cooldown_ms;
            e.failures = 0;
            log::warn!(
                "switchyard: ejecting deployment {deployment} for {} ms",
                policy.cooldown_ms
            );
        }
    });
}

/// Records a successful attempt and its latency.
pub fn record_success(deployment: &str, latency_ms: u64) {
    update(deployment, |e| {
        e.failures = 0;
        e.latency_ms = if e.latency_ms < 0.0 {
            latency_ms as f64
        } else {
            0.8 * e.latency_ms + 0.2 * latency_ms as f64
        };
    });
}

/// The routing core's view of shared health at one instant.
pub struct SharedHealth {
    /// Current time, unix ms.
    pub now_ms: u64,
}

impl HealthView for SharedHealth {
    fn is_ejected(&self, deployment_id: &str) -> bool {
        read(deployment_id).0.ejected_until_ms > self.now_ms
    }

    fn latency_ms(&self, deployment_id: &str) -> Option<f64> {
        let l = read(deployment_id).0.latency_ms;
        (l >= 0.0).then_some(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_tolerate_garbage() {
        let e = Entry {
            failures: 2,
            ejected_until_ms: 99,
            latency_ms: 12.5,
        };
        assert_eq!(Entry::decode(e.encode().as_bytes()), e);
        assert_eq!(Entry::decode(b"garbage").failures, 0);
    }
}
