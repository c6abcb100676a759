//! Counters and gauges exported at `GET /metrics` in the Prometheus text format.
//!
//! Everything is a plain atomic so the worker threads can update it without locks on the
//! token path; the time-to-first-token histogram uses fixed buckets for the same reason.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Upper bounds (seconds) of the time-to-first-token histogram buckets.
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Process-wide serving metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Completion tokens sampled.
    pub tokens_generated: AtomicU64,
    /// Prompt tokens of sequences that joined a batch.
    pub prompt_tokens: AtomicU64,
    /// Of those, the tokens whose keys and values came from the prefix cache (not prefilled).
    pub prompt_tokens_cached: AtomicU64,
    /// Bytes of keys and values the prefix caches hold, all workers and models together
    /// (shared with each cache, which keeps it current as it fills and empties).
    pub prefix_cache_bytes: Arc<AtomicU64>,
    /// Chat and embedding requests answered in full.
    pub requests_completed: AtomicU64,
    /// Requests dropped because their client went away.
    pub requests_cancelled: AtomicU64,
    /// Requests answered 503 because the admission queue was full.
    pub requests_rejected_queue_full: AtomicU64,
    /// Forward steps run (one per model per scheduler iteration).
    pub batch_steps: AtomicU64,
    /// Sequences currently in a running batch, all workers together.
    pub running: AtomicUsize,
    ttft_buckets: [AtomicU64; TTFT_BUCKETS.len()],
    ttft_count: AtomicU64,
    ttft_sum_us: AtomicU64,
}

/// One model's line in the load-state gauges.
pub struct ModelGauge {
    /// Model id (the `model` label).
    pub id: String,
    /// Loaded on some worker.
    pub warm: bool,
    /// How long its last load took.
    pub load_ms: Option<u64>,
}

impl Metrics {
    /// Records the delay between admission and a sequence's first generated token.
    pub fn observe_ttft(&self, seconds: f64) {
        for (bound, bucket) in TTFT_BUCKETS.iter().zip(&self.ttft_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.ttft_count.fetch_add(1, Ordering::Relaxed);
        self.ttft_sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Renders all metrics; `queue_depth` and `models` come from the engine.
    pub fn render(
        &self,
        queue_depth: usize,
        queue_capacity: usize,
        models: &[ModelGauge],
    ) -> String {
        let mut s = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "gpu_backend_queue_depth",
            "gauge",
            "Admitted requests waiting for a batch slot.",
            queue_depth.to_string(),
        );
        metric(
            "gpu_backend_queue_capacity",
            "gauge",
            "Queue size beyond which requests get 503.",
            queue_capacity.to_string(),
        );
        metric(
            "gpu_backend_running_batch_size",
            "gauge",
            "Sequences in running batches.",
            self.running.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "gpu_backend_tokens_generated_total",
            "counter",
            "Completion tokens generated.",
            get(&self.tokens_generated).to_string(),
        );
        metric(
            "gpu_backend_prompt_tokens_total",
            "counter",
            "Prompt tokens processed.",
            get(&self.prompt_tokens).to_string(),
        );
        metric(
            "gpu_backend_prompt_tokens_cached_total",
            "counter",
            "Prompt tokens reused from the prefix cache instead of prefilled.",
            get(&self.prompt_tokens_cached).to_string(),
        );
        metric(
            "gpu_backend_prefix_cache_bytes",
            "gauge",
            "Bytes of keys and values held by the prefix caches.",
            get(&self.prefix_cache_bytes).to_string(),
        );
        metric(
            "gpu_backend_requests_completed_total",
            "counter",
            "Requests answered in full.",
            get(&self.requests_completed).to_string(),
        );
        metric(
            "gpu_backend_requests_cancelled_total",
            "counter",
            "Sequences dropped because the client went away.",
            get(&self.requests_cancelled).to_string(),
        );
        metric(
            "gpu_backend_requests_rejected_total",
            "counter",
            "Requests refused with 503 because the queue was full.",
            get(&self.requests_rejected_queue_full).to_string(),
        );
        metric(
            "gpu_backend_batch_steps_total",
            "counter",
            "Forward steps run by the batching scheduler.",
            get(&self.batch_steps).to_string(),
        );

        let name = "gpu_backend_time_to_first_token_seconds";
        let _ = writeln!(s, "# HELP {name} Time from admission to the first generated token.\n# TYPE {name} histogram");
        for (bound, bucket) in TTFT_BUCKETS.iter().zip(&self.ttft_buckets) {
            let _ = writeln!(s, "{name}_bucket{{le=\"{bound}\"}} {}", get(bucket));
        }
        let count = get(&self.ttft_count);
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(s, "{name}_sum {}", get(&self.ttft_sum_us) as f64 / 1e6);
        let _ = writeln!(s, "{name}_count {count}");

        let _ = writeln!(s, "# HELP gpu_backend_model_warm 1 when the model is loaded and serving.\n# TYPE gpu_backend_model_warm gauge");
        for m in models {
            let _ = writeln!(
                s,
                "gpu_backend_model_warm{{model=\"{}\"}} {}",
                m.id,
                u8::from(m.warm)
            );
        }
        let _ = writeln!(s, "# HELP gpu_backend_model_load_seconds Duration of the model's last load.\n# TYPE gpu_backend_model_load_seconds gauge");
        for m in models {
            if let Some(ms) = m.load_ms {
                let _ = writeln!(
                    s,
                    "gpu_backend_model_load_seconds{{model=\"{}\"}} {}",
                    m.id,
                    ms as f64 / 1e3
                );
            }
        }
        s
    }
}
