//! Passive health, kept in the component instance's memory.
//!
//! The same rules as the Envoy filter's shared-data record: `eject_after_failures` failures in
//! a row eject a deployment for `cooldown_ms`, and latency is an EWMA for the lowest-latency
//! strategy. Spin gives each request a fresh instance, so the record mostly lives for one
//! request (where it still keeps a deployment that just failed out of nothing); on hosts that
//! reuse instances it carries over between requests for free. Cross-instance health would need
//! a key-value store round trip per request, which costs more than the fallback it saves.

use std::cell::RefCell;
use std::collections::HashMap;

use switchyard_core::config::FallbackPolicy;
use switchyard_core::routing::HealthView;

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    failures: u32,
    ejected_until_ms: u64,
    latency_ms: Option<f64>,
}

thread_local! {
    static HEALTH: RefCell<HashMap<String, Entry>> = RefCell::new(HashMap::new());
}

fn update(deployment: &str, change: impl FnOnce(&mut Entry)) {
    HEALTH.with(|h| change(h.borrow_mut().entry(deployment.to_string()).or_default()));
}

fn read(deployment: &str) -> Entry {
    HEALTH.with(|h| h.borrow().get(deployment).copied().unwrap_or_default())
}

/// Records a failed attempt; ejects after too many in a row.
pub fn record_failure(deployment: &str, policy: &FallbackPolicy, now_ms: u64) {
    update(deployment, |e| {
        e.failures += 1;
        if e.failures >= policy.eject_after_failures.max(1) {
            e.ejected_until_ms = now_ms.saturating_add(policy.cooldown_ms);
            e.failures = 0;
            eprintln!(
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
        let latency = latency_ms as f64;
        e.latency_ms = Some(e.latency_ms.map_or(latency, |l| 0.8 * l + 0.2 * latency));
    });
}

/// The routing core's view of this instance's health at one instant.
pub struct InstanceHealth {
    /// Current time, unix ms.
    pub now_ms: u64,
}

impl HealthView for InstanceHealth {
    fn is_ejected(&self, deployment_id: &str) -> bool {
        read(deployment_id).ejected_until_ms > self.now_ms
    }

    fn latency_ms(&self, deployment_id: &str) -> Option<f64> {
        read(deployment_id).latency_ms
    }
}
