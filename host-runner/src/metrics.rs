//! Guest-defined metrics (`proxy_define_metric` and friends), process-wide like Envoy stats:
//! every VM that defines the same name gets the same metric. Rendered as Prometheus text on
//! the admin listener.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::abi::Status;

/// The metric kinds of the proxy-wasm ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Only grows (`proxy_increment_metric` with positive steps); a Prometheus counter.
    Counter,
    /// Set or moved either way; a Prometheus gauge.
    Gauge,
    /// Each `proxy_record_metric` is one observation; a Prometheus histogram.
    Histogram,
}

impl MetricKind {
    /// Decode the ABI value (0 counter, 1 gauge, 2 histogram).
    pub fn from_abi(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Counter),
            1 => Some(Self::Gauge),
            2 => Some(Self::Histogram),
            _ => None,
        }
    }
}

/// Envoy's default histogram bucket bounds, so dashboards built against Envoy line up.
const BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

#[derive(Debug)]
enum Value {
    Counter(u64),
    Gauge(i64),
    Histogram {
        buckets: Vec<u64>,
        count: u64,
        sum: u64,
    },
}

#[derive(Debug)]
struct Metric {
    name: String,
    value: Value,
}

/// All metrics of the process.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_name: HashMap<(String, u8), u32>,
    metrics: Vec<Metric>,
}

fn kind_tag(kind: MetricKind) -> u8 {
    kind as u8
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::shared::lock(&self.inner)
    }

    /// Define (or look up) a metric; the id is stable for the process lifetime.
    pub fn define(&self, kind: MetricKind, name: &str) -> u32 {
        let mut inner = self.lock();
        let key = (name.to_string(), kind_tag(kind));
        if let Some(&id) = inner.by_name.get(&key) {
            return id;
        }
        let value = match kind {
            MetricKind::Counter => Value::Counter(0),
            MetricKind::Gauge => Value::Gauge(0),
            MetricKind::Histogram => Value::Histogram {
                buckets: vec![0; BUCKETS.len()],
                count: 0,
                sum: 0,
            },
        };
        let id = inner.metrics.len() as u32 + 1;
        inner.metrics.push(Metric {
            name: name.to_string(),
            value,
        });
        inner.by_name.insert(key, id);
        id
    }

    fn with<R>(&self, id: u32, f: impl FnOnce(&mut Value) -> R) -> Result<R, Status> {
        let mut inner = self.lock();
        let index = (id as usize).checked_sub(1).ok_or(Status::NotFound)?;
        let metric = inner.metrics.get_mut(index).ok_or(Status::NotFound)?;
        Ok(f(&mut metric.value))
    }

    /// Add `offset` to a counter (must be non-negative) or gauge.
    pub fn increment(&self, id: u32, offset: i64) -> Result<(), Status> {
        self.with(id, |v| match v {
            Value::Counter(c) if offset >= 0 => {
                *c = c.saturating_add(offset as u64);
                Ok(())
            }
            Value::Gauge(g) => {
                *g = g.saturating_add(offset);
                Ok(())
            }
            _ => Err(Status::BadArgument),
        })?
    }

    /// Record a value: adds to a counter, sets a gauge, observes a histogram (Envoy semantics).
    pub fn record(&self, id: u32, value: u64) -> Result<(), Status> {
        self.with(id, |v| match v {
            Value::Counter(c) => *c = c.saturating_add(value),
            Value::Gauge(g) => *g = value.min(i64::MAX as u64) as i64,
            Value::Histogram {
                buckets,
                count,
                sum,
            } => {
                for (bound, slot) in BUCKETS.iter().zip(buckets.iter_mut()) {
                    if value as f64 <= *bound {
                        *slot += 1;
                    }
                }
                *count += 1;
                *sum = sum.saturating_add(value);
            }
        })
    }

    /// Current value of a counter or gauge (histograms have no single value).
    pub fn get(&self, id: u32) -> Result<u64, Status> {
        self.with(id, |v| match v {
            Value::Counter(c) => Ok(*c),
            Value::Gauge(g) => Ok(*g as u64),
            Value::Histogram { .. } => Err(Status::BadArgument),
        })?
    }

    /// Prometheus text exposition (format 0.0.4). Names are sanitised to `[a-zA-Z0-9_:]`, as
    /// Envoy's `/stats/prometheus` does with dotted stat names, and Istio-style embedded tags
    /// (`key=.=demo;.;model=.=m;.;name`) become labels (`name{key="demo",model="m"}`), as the
    /// `stats_tags` rules of the project's `envoy.yaml` do. Series of one name share one
    /// `# TYPE` line, as the format requires.
    pub fn render_prometheus(&self) -> String {
        let inner = self.lock();
        let mut families: Vec<Family<'_>> = Vec::new();
        for m in &inner.metrics {
            let (labels, base) = split_tags(&m.name);
            let name = sanitize(base);
            let kind = match m.value {
                Value::Counter(_) => "counter",
                Value::Gauge(_) => "gauge",
                Value::Histogram { .. } => "histogram",
            };
            match families
                .iter_mut()
                .find(|(n, k, _)| *n == name && *k == kind)
            {
                Some((_, _, series)) => series.push((labels, &m.value)),
                None => families.push((name, kind, vec![(labels, &m.value)])),
            }
        }
        let mut out = String::new();
        for (name, kind, series) in families {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in series {
                let braces = |extra: &str| {
                    let all: Vec<&str> = [labels.as_str(), extra]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect();
                    if all.is_empty() {
                        String::new()
                    } else {
                        format!("{{{}}}", all.join(","))
                    }
                };
                match value {
                    Value::Counter(c) => {
                        let _ = writeln!(out, "{name}{} {c}", braces(""));
                    }
                    Value::Gauge(g) => {
                        let _ = writeln!(out, "{name}{} {g}", braces(""));
                    }
                    Value::Histogram {
                        buckets,
                        count,
                        sum,
                    } => {
                        for (bound, n) in BUCKETS.iter().zip(buckets) {
                            let le = format!("le=\"{bound}\"");
                            let _ = writeln!(out, "{name}_bucket{} {n}", braces(&le));
                        }
                        let _ = writeln!(out, "{name}_bucket{} {count}", braces("le=\"+Inf\""));
                        let _ = writeln!(out, "{name}_sum{} {sum}", braces(""));
                        let _ = writeln!(out, "{name}_count{} {count}", braces(""));
                    }
                }
            }
        }
        out
    }
}

/// One Prometheus metric family: name, type, and its (labels, value) series.
type Family<'a> = (String, &'static str, Vec<(String, &'a Value)>);

/// Split Istio-style embedded tags off a stat name: `a=.=1;.;b=.=2;.;name` gives
/// (`a="1",b="2"`, `name`). Anything that does not follow the pattern stays in the name.
fn split_tags(full: &str) -> (String, &str) {
    let mut labels = Vec::new();
    let mut rest = full;
    while let Some((key, after)) = rest.split_once("=.=") {
        let valid_key = !key.is_empty()
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !key.starts_with(|c: char| c.is_ascii_digit());
        let Some((value, tail)) = after.split_once(";.;") else {
            break;
        };
        if !valid_key {
            break;
        }
        let value = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        labels.push(format!("{key}=\"{value}\""));
        rest = tail;
    }
    (labels.join(","), rest)
}

fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) || s.is_empty() {
        s.insert(0, '_');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_histograms() {
        let m = Metrics::default();
        let c = m.define(MetricKind::Counter, "switchyard.requests");
        assert_eq!(m.define(MetricKind::Counter, "switchyard.requests"), c);
        let g = m.define(MetricKind::Gauge, "inflight");
        let h = m.define(MetricKind::Histogram, "latency_ms");
        m.increment(c, 2).unwrap();
        assert_eq!(m.increment(c, -1), Err(Status::BadArgument));
        m.increment(g, -3).unwrap();
        m.record(h, 7).unwrap();
        assert_eq!(m.get(c).unwrap(), 2);
        assert_eq!(m.get(g).unwrap() as i64, -3);
        assert_eq!(m.get(h), Err(Status::BadArgument));
        assert_eq!(m.get(999), Err(Status::NotFound));
        let text = m.render_prometheus();
        assert!(text.contains("# TYPE switchyard_requests counter\nswitchyard_requests 2\n"));
        assert!(text.contains("inflight -3\n"));
        assert!(text.contains("latency_ms_bucket{le=\"10\"} 1\n"));
        assert!(text.contains("latency_ms_bucket{le=\"5\"} 0\n"));
        assert!(text.contains("latency_ms_count 1\n"));
    }

    #[test]
    fn embedded_tags_become_labels_in_one_family() {
        let m = Metrics::default();
        let a = m.define(
            MetricKind::Counter,
            "key=.=demo;.;model=.=a.b;.;switchyard_requests_total",
        );
        let b = m.define(
            MetricKind::Counter,
            "key=.=other;.;model=.=c;.;switchyard_requests_total",
        );
        m.increment(a, 3).unwrap();
        m.increment(b, 1).unwrap();
        let text = m.render_prometheus();
        assert_eq!(
            text,
            "# TYPE switchyard_requests_total counter\n\
             switchyard_requests_total{key=\"demo\",model=\"a.b\"} 3\n\
             switchyard_requests_total{key=\"other\",model=\"c\"} 1\n"
        );
        assert_eq!(split_tags("plain.name"), (String::new(), "plain.name"));
        assert_eq!(
            split_tags("bad key=.=v;.;x"),
            (String::new(), "bad key=.=v;.;x")
        );
    }
}
