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

/// Counts one finished request: requests, tokens and cost by key, model and provider.
pub fn record(r: &UsageRecord) {
    let tags = [
        ("key", r.key_id.as_str()),
        ("model", r.model.as_str()),
        ("provider", r.provider.as_str()),
    ];
    let status = r.status.to_string();
    let mut with_status = tags.to_vec();
    with_status.push(("status", status.as_str()));
    add(tagged_name("switchyard_requests_total", &with_status), 1);
    add(
        tagged_name("switchyard_input_tokens_total", &tags),
        r.input_tokens,
    );
    add(
        tagged_name("switchyard_output_tokens_total", &tags),
        r.output_tokens,
    );
    add(
        tagged_name("switchyard_cached_input_tokens_total", &tags),
        r.cached_input_tokens,
    );
    add(
        tagged_name("switchyard_cost_micro_usd_total", &tags),
        (r.cost * 1_000_000.0).round() as u64,
    );
    if r.attempts > 1 {
        add(
            tagged_name("switchyard_fallbacks_total", &tags),
            u64::from(r.attempts - 1),
        );
    }
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
