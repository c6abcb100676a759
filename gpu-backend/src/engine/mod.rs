//! The worker pool and its continuous-batching scheduler.
//!
//! Each worker is an OS thread that owns a device and the models loaded on it; inference never
//! runs on the async runtime, so a long batch step cannot stall the HTTP server. Requests
//! reach a worker through admission: a bounded count of queued requests (not a bounded
//! channel, so the limit is exact across workers) whose overflow is answered 503 with
//! `Retry-After` instead of piling up without bound.
//!
//! The engine is split by concern: [`queue`] (admission), [`jobs`] (requests and their
//! events), [`worker`] (the thread and its continuous-batching scheduler), [`sequence`]
//! (one running chat sequence), [`prefix`] (reuse of a shared prompt prefix's keys and
//! values) and [`registry`] (model load states, loading, eviction).

mod jobs;
mod prefix;
mod queue;
mod registry;
mod sequence;
mod worker;

pub use jobs::{ChatEvent, GenerateRequest, SamplingParams};
pub use registry::{ModelInfo, ModelState};

use crate::whisper::{TranscribeOptions, Transcript};

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::Device;
use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::catalog::{ModelKind, ModelSpec};
use crate::embedder::Embeddings;
use crate::error::{ApiError, ModelError};
use crate::metrics::{Metrics, ModelGauge};
use jobs::{ChatJob, EmbedJob, Job, TranscribeJob};
use queue::{LoadGuard, QueueTicket};
use registry::WorkerModelStatus;
use worker::{Worker, WorkerMsg};

/// Called on a loader thread just before a model loads; tests use it to hold a load open.
pub type LoadHook = Arc<dyn Fn(&str) + Send + Sync>;

/// How the pool is sized and what it keeps warm.
#[derive(Clone)]
pub struct EngineConfig {
    /// Most sequences one worker runs in a batch step.
    pub max_batch: usize,
    /// Most requests admitted but not yet running; beyond it, 503.
    pub queue_capacity: usize,
    /// Models loaded at start on every worker and never evicted.
    pub pinned: Vec<String>,
    /// Bytes of weights a worker keeps loaded before evicting unpinned models; 0 = no limit.
    pub memory_budget_bytes: u64,
    /// Worker threads, each with its own copy of the models it serves.
    pub workers: usize,
    /// Bytes of keys and values each worker keeps per chat model for prompts that start like
    /// earlier sequences (the prefix cache); 0 turns reuse off.
    pub prefix_cache_bytes: u64,
    /// Where the models run (CPU, or a CUDA device with the `cuda` feature).
    pub device: Device,
    /// Test hook run before each load.
    pub before_load: Option<LoadHook>,
}

/// State shared by the API side and every worker.
struct Shared {
    catalog: HashMap<String, ModelSpec>,
    pinned: HashSet<String>,
    config: EngineConfig,
    queue_depth: AtomicUsize,
    metrics: Metrics,
    status: Mutex<HashMap<(usize, String), WorkerModelStatus>>,
}

impl Shared {
    fn set_status(&self, worker: usize, model: &str, state: ModelState, load_ms: Option<u64>) {
        if let Ok(mut map) = self.status.lock() {
            let entry = map
                .entry((worker, model.to_owned()))
                .or_insert(WorkerModelStatus {
                    state,
                    load_ms: None,
                });
            entry.state = state;
            if load_ms.is_some() {
                entry.load_ms = load_ms;
            }
        }
    }
}

struct WorkerHandle {
    tx: mpsc::Sender<WorkerMsg>,
    load: Arc<AtomicUsize>,
}

/// The pool: admission, dispatch to workers, and model state for the API.
pub struct Engine {
    shared: Arc<Shared>,
    workers: Vec<WorkerHandle>,
}

impl Engine {
    /// Starts the workers and begins loading the pinned models in the background.
    pub fn start(specs: Vec<ModelSpec>, config: EngineConfig) -> Result<Self, ModelError> {
        let catalog: HashMap<String, ModelSpec> =
            specs.into_iter().map(|s| (s.id.clone(), s)).collect();
        for pin in &config.pinned {
            if !catalog.contains_key(pin) {
                return Err(ModelError::UnknownModel(pin.clone()));
            }
        }
        let shared = Arc::new(Shared {
            pinned: config.pinned.iter().cloned().collect(),
            catalog,
            config: config.clone(),
            queue_depth: AtomicUsize::new(0),
            metrics: Metrics::default(),
            status: Mutex::new(HashMap::new()),
        });
        let mut workers = Vec::new();
        for index in 0..config.workers.max(1) {
            let (tx, rx) = mpsc::channel();
            for id in shared.catalog.keys() {
                shared.set_status(index, id, ModelState::Cold, None);
            }
            for pin in &config.pinned {
                let _ = tx.send(WorkerMsg::Load(pin.clone()));
            }
            let worker = Worker {
                index,
                shared: shared.clone(),
                device: config.device.clone(),
                tx: tx.clone(),
                rx,
                models: HashMap::new(),
                loading: HashSet::new(),
                waiting: VecDeque::new(),
                running: Vec::new(),
                published_running: 0,
                transcribing: false,
            };
            std::thread::Builder::new()
                .name(format!("gpu-backend-worker-{index}"))
                .spawn(move || worker.run())
                .map_err(|source| ModelError::Io {
                    path: "worker thread".into(),
                    source,
                })?;
            workers.push(WorkerHandle {
                tx,
                load: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(Self { shared, workers })
    }

    /// Queues a chat completion; events arrive on the returned receiver. Dropping the
    /// receiver cancels the sequence and frees its queue place or batch slot.
    pub fn generate(
        &self,
        request: GenerateRequest,
    ) -> Result<tmpsc::UnboundedReceiver<ChatEvent>, ApiError> {
        let (worker, ticket, load) = self.admit(&request.model, ModelKind::Chat)?;
        let (events, rx) = tmpsc::unbounded_channel();
        self.send(
            worker,
            Job::Chat(ChatJob {
                request,
                events,
                admitted_at: Instant::now(),
                ticket: Some(ticket),
                _load: load,
            }),
        )?;
        Ok(rx)
    }

    /// Embeds `inputs` with `model`, waiting in the same queue as chat requests.
    pub async fn embed(&self, model: &str, inputs: Vec<String>) -> Result<Embeddings, ApiError> {
        let (worker, ticket, load) = self.admit(model, ModelKind::Embedding)?;
        let (reply, rx) = oneshot::channel();
        self.send(
            worker,
            Job::Embed(EmbedJob {
                model: model.to_owned(),
                inputs,
                reply,
                _ticket: ticket,
                _load: load,
            }),
        )?;
        rx.await
            .map_err(|_| ApiError::Internal("the worker stopped".into()))?
    }

    /// Transcribes 16 kHz mono `samples` with `model`, waiting in the same queue as chat
    /// requests; the queue place is held until the transcription is done.
    pub async fn transcribe(
        &self,
        model: &str,
        samples: Vec<f32>,
        options: TranscribeOptions,
    ) -> Result<Transcript, ApiError> {
        let (worker, ticket, load) = self.admit(model, ModelKind::Transcription)?;
        let (reply, rx) = oneshot::channel();
        self.send(
            worker,
            Job::Transcribe(TranscribeJob {
                model: model.to_owned(),
                samples,
                options,
                reply,
                ticket,
                load,
            }),
        )?;
        rx.await
            .map_err(|_| ApiError::Internal("the worker stopped".into()))?
    }

    fn send(&self, worker: usize, job: Job) -> Result<(), ApiError> {
        self.workers[worker]
            .tx
            .send(WorkerMsg::Job(job))
            .map_err(|_| ApiError::Internal("the worker stopped".into()))
    }

    fn admit(
        &self,
        model: &str,
        kind: ModelKind,
    ) -> Result<(usize, QueueTicket, LoadGuard), ApiError> {
        let spec = self
            .shared
            .catalog
            .get(model)
            .ok_or_else(|| ApiError::ModelNotFound(model.to_owned()))?;
        if spec.kind != kind {
            let endpoint = match kind {
                ModelKind::Chat => "chat completions",
                ModelKind::Embedding => "embeddings",
                ModelKind::Transcription => "audio transcriptions",
            };
            return Err(ApiError::WrongEndpoint {
                model: model.to_owned(),
                endpoint,
            });
        }
        let ticket = QueueTicket::take(&self.shared)?;
        let (index, handle) = self
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.load.load(Ordering::Acquire))
            .ok_or_else(|| ApiError::Internal("no workers".into()))?;
        Ok((index, ticket, LoadGuard::new(&handle.load)))
    }

    /// Every model the backend can serve, with its load state (the best across workers).
    pub fn models(&self) -> Vec<ModelInfo> {
        let status = self
            .shared
            .status
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let mut out: Vec<ModelInfo> = self
            .shared
            .catalog
            .values()
            .map(|spec| {
                let per_worker: Vec<WorkerModelStatus> = (0..self.workers.len())
                    .filter_map(|w| status.get(&(w, spec.id.clone())).copied())
                    .collect();
                let has = |s: ModelState| per_worker.iter().any(|st| st.state == s);
                let state = [ModelState::Warm, ModelState::Loading, ModelState::Failed]
                    .into_iter()
                    .find(|s| has(*s))
                    .unwrap_or(ModelState::Cold);
                ModelInfo {
                    id: spec.id.clone(),
                    kind: spec.kind,
                    state,
                    load_ms: per_worker.iter().filter_map(|s| s.load_ms).max(),
                    pinned: self.shared.pinned.contains(&spec.id),
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// True when every pinned model is warm on every worker.
    pub fn ready(&self) -> bool {
        let Ok(status) = self.shared.status.lock() else {
            return false;
        };
        self.shared.pinned.iter().all(|m| {
            (0..self.workers.len()).all(|w| {
                status
                    .get(&(w, m.clone()))
                    .is_some_and(|s| s.state == ModelState::Warm)
            })
        })
    }

    /// Requests admitted but not yet running.
    pub fn queue_depth(&self) -> usize {
        self.shared.queue_depth.load(Ordering::Acquire)
    }

    /// Sequences currently in running batches.
    pub fn running(&self) -> usize {
        self.shared.metrics.running.load(Ordering::Acquire)
    }

    /// Prometheus text for `/metrics`.
    pub fn render_metrics(&self) -> String {
        let gauges: Vec<ModelGauge> = self
            .models()
            .into_iter()
            .map(|m| ModelGauge {
                warm: m.state == ModelState::Warm,
                load_ms: m.load_ms,
                id: m.id,
            })
            .collect();
        self.shared.metrics.render(
            self.queue_depth(),
            self.shared.config.queue_capacity,
            &gauges,
        )
    }
}

impl Drop for Engine {
    /// Workers keep a sender to their own channel (for loader threads), so closing the
    /// channel cannot stop them; they are told explicitly.
    fn drop(&mut self) {
        for w in &self.workers {
            let _ = w.tx.send(WorkerMsg::Shutdown);
        }
    }
}
