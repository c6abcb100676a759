//! Usage metrics as proxy-wasm counters.
//!
//! proxy-wasm metrics have names, not labels, so labels travel inside the name in the
//! Istio convention (`key=.=<v>;.;`); Envoy's `stats_tags` regexes (see `envoy.yaml`) and
//! host-runner turn them back into Prometheus labels.

use std::cell::RefCell;
use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use switchyard_core::usage::UsageRecord;

thread_local! {
    static IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
}

/// Makes a label value safe inside the tag convention (no `;`, `=`, or whitespace).
fn clean(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The tagged metric name for `base` with `tags`.
pub fn tagged_name(base: &str, tags: &[(&str, &str)]) -> String {
    let mut name = String::new();
    for (k, v) in tags {
        name.push_str(k);
        name.push_str("=.=");
        name.push_str(&clean(v));
        name.push_str(";.;");
    }
    name.push_str(base);
    name
}

/// The id of metric `name`, defined on first use (ids are cached: names are built once per
/// label set, not per request).
fn metric_id(name: &str, kind: MetricType) -> Option<u32> {
    IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if let Some(id) = ids.get(name) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(kind, name).ok()?;
        ids.insert(name.to_string(), id);
        Some(id)
    })
}

fn add(name: String, value: u64) {
    if value == 0 {
        return;
    }
    if let Some(id) = metric_id(&name, MetricType::Counter) {
        let _ = hostcalls::increment_metric(id, i64::try_from(value).unwrap_or(i64::MAX));
    }
}

/// Adds `value` to the unlabelled counter `name`.
pub fn count(name: &str, value: u64) {
    add(name.to_string(), value);
}

/// Sets the unlabelled gauge `name`.
pub fn gauge(name: &str, value: i64) {
    if let Some(id) = metric_id(name, MetricType::Gauge) {
        let _ = hostcalls::record_metric(id, value as u64);
    }
}

/// The counters [`record`] moves, in the order of [`LabelSet::ids`].
const RECORDED: [&str; 6] = [
    "switchyard_requests_total",
    "switchyard_input_tokens_total",
    "switchyard_output_tokens_total",
    "switchyard_cached_input_tokens_total",
    "switchyard_cost_micro_usd_total",
    "switchyard_fallbacks_total",
];

/// One label set's counters: their ids once defined (a counter is defined on its first
/// non-zero value, as before), so a request builds no metric name and hashes no string but
/// its labels once.
struct LabelSet {
    key: String,
    model: String,
    provider: String,
    status: u16,
    ids: [Option<u32>; 6],
}

thread_local! {
    /// Label sets by a hash of their labels (collisions share a bucket).
    static SETS: RefCell<HashMap<u64, Vec<LabelSet>>> = RefCell::new(HashMap::new());
}

/// Counts one finished request: requests, tokens and cost by key, model and provider.
pub fn record(r: &UsageRecord) {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        r.key_id.as_str(),
        r.model.as_str(),
        r.provider.as_str(),
        r.status,
    )
        .hash(&mut hasher);
    let values = [
        1,
        r.input_tokens,
        r.output_tokens,
        r.cached_input_tokens,
        (r.cost * 1_000_000.0).round() as u64,
        u64::from(r.attempts.saturating_sub(1)),
    ];
    SETS.with(|sets| {
        let mut sets = sets.borrow_mut();
        let bucket = sets.entry(hasher.finish()).or_default();
        let index = match bucket.iter().position(|s| {
            s.status == r.status
                && s.key == r.key_id
                && s.model == r.model
                && s.provider == r.provider
        }) {
            Some(index) => index,
            None => {
                bucket.push(LabelSet {
                    key: r.key_id.clone(),
                    model: r.model.clone(),
                    provider: r.provider.clone(),
                    status: r.status,
                    ids: [None; 6],
                });
                bucket.len() - 1
            }
        };
        let set = &mut bucket[index];
        for (i, value) in values.into_iter().enumerate() {
            if value == 0 {
                continue;
            }
            let id = match set.ids[i] {
                Some(id) => id,
                None => {
                    let status = set.status.to_string();
                    let mut tags = vec![
                        ("key", set.key.as_str()),
                        ("model", set.model.as_str()),
                        ("provider", set.provider.as_str()),
                    ];
                    if i == 0 {
                        tags.push(("status", status.as_str()));
                    }
                    let name = tagged_name(RECORDED[i], &tags);
                    let Ok(id) = hostcalls::define_metric(MetricType::Counter, &name) else {
                        continue;
                    };
                    set.ids[i] = Some(id);
                    id
                }
            };
            let _ = hostcalls::increment_metric(id, i64::try_from(value).unwrap_or(i64::MAX));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_embed_tags_safely() {
        assert_eq!(
            tagged_name("m_total", &[("key", "demo"), ("model", "a b;c")]),
            "key=.=demo;.;model=.=a_b_c;.;m_total"
        );
    }
}
