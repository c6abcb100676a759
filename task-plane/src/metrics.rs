//! The task plane's counters, in Prometheus' text format (`GET /task-plane/metrics`).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// A value read at scrape time.
pub struct Gauge {
    /// Metric name.
    pub name: String,
    /// Its labels.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: i64,
}

/// Monotonic counters by series (`name{labels}`).
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<String, u64>>,
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Adds one to `name{labels}`.
    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let series = format!("{name}{{{}}}", labels.join(","));
        *self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(series)
            .or_default() += 1;
    }

    /// Every counter, plus `gauges` (name, labels, value), as Prometheus text.
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let mut out = String::new();
        for (series, value) in self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            out.push_str(&format!("{series} {value}\n"));
        }
        for Gauge {
            name,
            labels,
            value,
        } in gauges
        {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            out.push_str(&format!("{name}{{{}}} {value}\n", labels.join(",")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = Metrics::default();
        m.inc("switchyard_tasks_total", &[("state", "succeeded")]);
        m.inc("switchyard_tasks_total", &[("state", "succeeded")]);
        m.inc("switchyard_tasks_total", &[("state", "a\"b")]);
        let text = m.render(&[Gauge {
            name: "g".into(),
            labels: vec![("k".into(), "v".into())],
            value: 7,
        }]);
        assert!(text.contains("switchyard_tasks_total{state=\"succeeded\"} 2\n"));
        assert!(text.contains("switchyard_tasks_total{state=\"a\\\"b\"} 1\n"));
        assert!(text.contains("g{k=\"v\"} 7\n"));
    }
}
