//! The edge's bounded wait queue: a request that finds every deployment of its model at its
//! own limits waits here for capacity instead of being answered 429 at once.
//!
//! The queue itself — which requests wait, in which order they are woken — is the host's (the
//! Envoy filter keeps its paused streams in arrival order and wakes them on its tick; the Spin
//! component sleeps and retries). What is shared, and decided here, is its *depth*: one counter
//! per model in the host's [`CounterStore`], taken when a request starts waiting and given back
//! when it stops (it got capacity, its wait ran out, or its client went away), so the bound
//! holds across every worker that shares the store. The exchange
//! (`crate::exchange`) decides when a request joins, retries, gives up and leaves.
//!
//! **Fairness.** A request that arrives while others of its model wait joins the queue behind
//! them instead of taking capacity that just freed, so a newcomer never overtakes a waiting
//! request on the same store. Among waiting requests the order is the host's: see each host's
//! notes (Envoy and host-runner: first come, first served within a worker).

use serde::Deserialize;

use crate::limits::CounterStore;

/// How long and how many requests may wait for a saturated model's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuePolicy {
    /// The longest a request waits before it is answered 429 with `Retry-After`. `0` turns
    /// the queue off: a saturated model answers 429 at once.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// The most requests that wait at once for the model (across every worker sharing the
    /// counters); one more is answered 429 at once.
    #[serde(default = "default_max_depth")]
    pub max_depth: u64,
}

fn default_max_wait_ms() -> u64 {
    10_000
}

fn default_max_depth() -> u64 {
    1_000
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            max_wait_ms: default_max_wait_ms(),
            max_depth: default_max_depth(),
        }
    }
}

impl QueuePolicy {
    /// Whether saturated requests wait at all.
    pub fn enabled(&self) -> bool {
        self.max_wait_ms > 0 && self.max_depth > 0
    }
}

/// The depth record of `model`'s queue.
pub fn record_key(model: &str) -> String {
    format!("switchyard/queue/{model}/depth")
}

fn count(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// Takes a place in `model`'s queue if fewer than `max_depth` wait; `false` when it is full.
pub fn enter(store: &dyn CounterStore, model: &str, max_depth: u64) -> bool {
    let mut entered = false;
    store.update(&record_key(model), &mut |cur| {
        let n = count(cur);
        entered = n < max_depth;
        entered.then(|| (n + 1).to_string().into_bytes())
    });
    entered
}

/// Gives a place in `model`'s queue back.
pub fn leave(store: &dyn CounterStore, model: &str) {
    store.update(&record_key(model), &mut |cur| {
        Some(count(cur).saturating_sub(1).to_string().into_bytes())
    });
}

/// How many requests wait for `model` now.
pub fn depth(store: &dyn CounterStore, model: &str) -> u64 {
    count(store.load(&record_key(model)).as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MemoryCounters;

    #[test]
    fn the_depth_is_bounded_and_given_back() {
        let store = MemoryCounters::default();
        assert!(enter(&store, "m", 2));
        assert!(enter(&store, "m", 2));
        assert!(!enter(&store, "m", 2), "full");
        assert_eq!(depth(&store, "m"), 2);
        assert_eq!(depth(&store, "other"), 0, "one queue per model");
        leave(&store, "m");
        assert!(enter(&store, "m", 2));
        leave(&store, "m");
        leave(&store, "m");
        leave(&store, "m");
        assert_eq!(depth(&store, "m"), 0, "never below zero");
    }

    #[test]
    fn defaults_wait_ten_seconds_for_a_thousand_and_zero_turns_it_off() {
        let policy: QueuePolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(policy, QueuePolicy::default());
        assert_eq!((policy.max_wait_ms, policy.max_depth), (10_000, 1_000));
        assert!(policy.enabled());
        let off: QueuePolicy = serde_json::from_str(r#"{"max_wait_ms": 0}"#).unwrap();
        assert!(!off.enabled());
        assert!(serde_json::from_str::<QueuePolicy>(r#"{"wait": 1}"#).is_err());
    }
}
