//! The worker pool and its continuous-batching scheduler.
//!
//! Each worker is an OS thread that owns a device and the models loaded on it; inference never
//! runs on the async runtime, so a long batch step cannot stall the HTTP server. Requests
//! reach a worker through admission: a bounded count of queued requests (not a bounded
//! channel, so the limit is exact across workers) whose overflow is answered 503 with
//! `Retry-After` instead of piling up without bound.
//!
//! A worker loop, between two token steps:
//! 1. takes new jobs and finished model loads off its channel (loads run on their own
//!    threads, so a cold model never blocks sequences of warm ones; its requests wait);
//! 2. drops waiting jobs and running sequences whose client went away (the receiver of
//!    their event channel was dropped), freeing queue room and batch slots at once;
//! 3. answers embedding jobs whose model is warm;
//! 4. admits waiting chat jobs into the running batch, up to `max_batch`;
//! 5. runs one forward step per chat model over all its running sequences — a whole prompt
//!    for a newly admitted sequence, one token for the others — samples one token for each,
//!    streams it out, and retires the sequences that finished.
//!
//! Pinned models are loaded at start and never evicted. Other models load on first use and
//! are evicted least-recently-used when loading another one would exceed the memory budget;
//! a model in use (running sequences or waiting jobs) is never evicted, so the budget is soft
//! when everything loaded is busy.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::Device;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::catalog::{ModelKind, ModelSpec};
use crate::chat_model::{ChatMessage, ChatModel};
use crate::embedder::{Embedder, Embeddings};
use crate::error::{ApiError, ModelError};
use crate::gguf_tokenizer::IncrementalDecoder;
use crate::llama::{KvCache, StepInput};
use crate::metrics::{Metrics, ModelGauge};

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
    pub device: Device,
    pub before_load: Option<LoadHook>,
}

/// How the next token is drawn.
#[derive(Debug, Clone, Copy)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus mass; 1 disables it.
    pub top_p: f64,
    pub seed: u64,
}

/// A chat completion as the engine sees it: already validated by the API layer.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Completion token limit; `None` = up to the context window.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    /// Strings that end the completion (not included in the output).
    pub stop: Vec<String>,
}

/// Why a completion ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What a chat request's receiver sees, in order: `Started` (or `Failed`), any number of
/// `Delta`s, then `Finished` (or `Failed`).
#[derive(Debug)]
pub enum ChatEvent {
    /// The sequence joined a batch; its prompt is this long.
    Started {
        prompt_tokens: usize,
    },
    /// New completion text (whole UTF-8 characters).
    Delta(String),
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(ApiError),
}

/// Load state of a model, as `/v1/models` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    Cold,
    Loading,
    Warm,
    Failed,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Cold => "cold",
            ModelState::Loading => "loading",
            ModelState::Warm => "warm",
            ModelState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct WorkerModelStatus {
    state: ModelState,
    load_ms: Option<u64>,
}

/// A model's entry in `/v1/models`.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub id: String,
    pub kind: ModelKind,
    pub state: ModelState,
    pub load_ms: Option<u64>,
    pub pinned: bool,
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

/// A place in the admission queue; dropping it gives the place back.
struct QueueTicket(Arc<Shared>);

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.0.queue_depth.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a job against its worker until the job is done, for least-loaded dispatch.
struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct ChatJob {
    request: GenerateRequest,
    events: tmpsc::UnboundedSender<ChatEvent>,
    admitted_at: Instant,
    /// Held while the job waits; released when it joins a batch.
    ticket: Option<QueueTicket>,
    _load: LoadGuard,
}

struct EmbedJob {
    model: String,
    inputs: Vec<String>,
    reply: oneshot::Sender<Result<Embeddings, ApiError>>,
    _ticket: QueueTicket,
    _load: LoadGuard,
}

enum Job {
    Chat(ChatJob),
    Embed(EmbedJob),
}

impl Job {
    fn model(&self) -> &str {
        match self {
            Job::Chat(j) => &j.request.model,
            Job::Embed(j) => &j.model,
        }
    }

    fn cancelled(&self) -> bool {
        match self {
            Job::Chat(j) => j.events.is_closed(),
            Job::Embed(j) => j.reply.is_closed(),
        }
    }

    fn fail(self, error: ApiError) {
        match self {
            Job::Chat(j) => {
                let _ = j.events.send(ChatEvent::Failed(error));
            }
            Job::Embed(j) => {
                let _ = j.reply.send(Err(error));
            }
        }
    }
}

enum Loaded {
    Chat(Arc<ChatModel>),
    Embedding(Arc<Embedder>),
}

enum WorkerMsg {
    Job(Job),
    /// The engine is gone: fail what is left and end the thread.
    Shutdown,
    Load(String),
    Loaded {
        model: String,
        result: Result<Loaded, String>,
        load_ms: u64,
    },
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
            };
            return Err(ApiError::WrongEndpoint {
                model: model.to_owned(),
                endpoint,
            });
        }
        let capacity = self.shared.config.queue_capacity;
        let admitted =
            self.shared
                .queue_depth
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |depth| {
                    (depth < capacity).then_some(depth + 1)
                });
        if admitted.is_err() {
            self.shared
                .metrics
                .requests_rejected_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::QueueFull { retry_after_s: 1 });
        }
        let ticket = QueueTicket(self.shared.clone());
        let (index, handle) = self
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.load.load(Ordering::Acquire))
            .ok_or_else(|| ApiError::Internal("no workers".into()))?;
        handle.load.fetch_add(1, Ordering::AcqRel);
        Ok((index, ticket, LoadGuard(handle.load.clone())))
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

/// A chat sequence in the running batch.
struct Sequence {
    job: ChatJob,
    model: Arc<ChatModel>,
    cache: KvCache,
    /// Tokens to feed at the next step: the prompt, then each sampled token.
    pending: Vec<u32>,
    sampler: LogitsProcessor,
    decoder: IncrementalDecoder,
    /// Completion text so far, and how much of it has been streamed out.
    text: String,
    sent: usize,
    prompt_tokens: usize,
    completion_tokens: usize,
    max_tokens: usize,
}

struct Resident {
    model: Loaded,
    size: u64,
    last_used: Instant,
}

struct Worker {
    index: usize,
    shared: Arc<Shared>,
    device: Device,
    tx: mpsc::Sender<WorkerMsg>,
    rx: mpsc::Receiver<WorkerMsg>,
    models: HashMap<String, Resident>,
    loading: HashSet<String>,
    waiting: VecDeque<Job>,
    running: Vec<Sequence>,
    published_running: usize,
}

impl Worker {
    fn run(mut self) {
        loop {
            if self.running.is_empty() && !self.has_ready_job() {
                match self.rx.recv() {
                    Ok(WorkerMsg::Shutdown) | Err(_) => break,
                    Ok(msg) => self.handle(msg),
                }
            }
            let mut shutdown = false;
            while let Ok(msg) = self.rx.try_recv() {
                match msg {
                    WorkerMsg::Shutdown => shutdown = true,
                    msg => self.handle(msg),
                }
            }
            if shutdown {
                break;
            }
            self.drop_cancelled();
            self.run_embeddings();
            self.admit_chats();
            self.step();
            self.publish_running();
        }
        for job in self.waiting.drain(..) {
            job.fail(ApiError::Internal("the backend is shutting down".into()));
        }
        for seq in self.running.drain(..) {
            let _ = seq.job.events.send(ChatEvent::Failed(ApiError::Internal(
                "the backend is shutting down".into(),
            )));
        }
        self.publish_running();
    }

    fn has_ready_job(&self) -> bool {
        self.waiting
            .iter()
            .any(|j| self.models.contains_key(j.model()))
    }

    fn handle(&mut self, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Job(job) => {
                let model = job.model().to_owned();
                if !self.models.contains_key(&model) && !self.loading.contains(&model) {
                    self.start_load(&model);
                }
                self.waiting.push_back(job);
            }
            WorkerMsg::Shutdown => {}
            WorkerMsg::Load(model) => {
                if !self.models.contains_key(&model) && !self.loading.contains(&model) {
                    self.start_load(&model);
                }
            }
            WorkerMsg::Loaded {
                model,
                result,
                load_ms,
            } => {
                self.loading.remove(&model);
                match result {
                    Ok(loaded) => {
                        let size = self.shared.catalog.get(&model).map_or(0, |s| s.size_bytes);
                        self.models.insert(
                            model.clone(),
                            Resident {
                                model: loaded,
                                size,
                                last_used: Instant::now(),
                            },
                        );
                        self.shared
                            .set_status(self.index, &model, ModelState::Warm, Some(load_ms));
                        eprintln!(
                            "gpu-backend: worker {} loaded {model} in {load_ms} ms",
                            self.index
                        );
                    }
                    Err(reason) => {
                        self.shared
                            .set_status(self.index, &model, ModelState::Failed, None);
                        eprintln!(
                            "gpu-backend: worker {} failed to load {model}: {reason}",
                            self.index
                        );
                        let (failed, keep): (VecDeque<Job>, VecDeque<Job>) =
                            self.waiting.drain(..).partition(|j| j.model() == model);
                        self.waiting = keep;
                        for job in failed {
                            job.fail(ApiError::ModelUnavailable {
                                model: model.clone(),
                                reason: reason.clone(),
                            });
                        }
                    }
                }
            }
        }
    }

    /// Loads `model` on its own thread; the result comes back as a `Loaded` message.
    fn start_load(&mut self, model: &str) {
        let Some(spec) = self.shared.catalog.get(model).cloned() else {
            return;
        };
        self.make_room(spec.size_bytes);
        self.loading.insert(model.to_owned());
        self.shared
            .set_status(self.index, model, ModelState::Loading, None);
        let tx = self.tx.clone();
        let device = self.device.clone();
        let hook = self.shared.config.before_load.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("gpu-backend-load-{model}"))
            .spawn(move || {
                if let Some(hook) = hook {
                    hook(&spec.id);
                }
                let started = Instant::now();
                let result = catch_unwind(AssertUnwindSafe(|| load_model(&spec, &device)))
                    .unwrap_or_else(|_| Err("the loader panicked".into()));
                let _ = tx.send(WorkerMsg::Loaded {
                    model: spec.id.clone(),
                    result,
                    load_ms: started.elapsed().as_millis() as u64,
                });
            });
        if let Err(e) = spawned {
            let _ = self.tx.send(WorkerMsg::Loaded {
                model: model.to_owned(),
                result: Err(format!("cannot start a loader thread: {e}")),
                load_ms: 0,
            });
        }
    }

    /// Evicts least-recently-used, unpinned, idle models until `incoming` bytes fit the budget.
    fn make_room(&mut self, incoming: u64) {
        let budget = self.shared.config.memory_budget_bytes;
        if budget == 0 {
            return;
        }
        let loading: u64 = self
            .loading
            .iter()
            .filter_map(|m| self.shared.catalog.get(m))
            .map(|s| s.size_bytes)
            .sum();
        let mut used: u64 = self.models.values().map(|r| r.size).sum::<u64>() + loading;
        while used + incoming > budget {
            let victim = self
                .models
                .iter()
                .filter(|(id, r)| {
                    !self.shared.pinned.contains(*id)
                        && !self.waiting.iter().any(|j| j.model() == id.as_str())
                        && match &r.model {
                            Loaded::Chat(m) => Arc::strong_count(m) == 1,
                            Loaded::Embedding(m) => Arc::strong_count(m) == 1,
                        }
                })
                .min_by_key(|(_, r)| r.last_used)
                .map(|(id, _)| id.clone());
            let Some(victim) = victim else { break };
            if let Some(r) = self.models.remove(&victim) {
                used = used.saturating_sub(r.size);
            }
            self.shared
                .set_status(self.index, &victim, ModelState::Cold, None);
            eprintln!("gpu-backend: worker {} evicted {victim}", self.index);
        }
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len() + self.running.len();
        self.waiting.retain(|j| !j.cancelled());
        self.running.retain(|s| !s.job.events.is_closed());
        let dropped = before - self.waiting.len() - self.running.len();
        self.shared
            .metrics
            .requests_cancelled
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }

    fn run_embeddings(&mut self) {
        let mut rest = VecDeque::with_capacity(self.waiting.len());
        for job in std::mem::take(&mut self.waiting) {
            let Job::Embed(job) = job else {
                rest.push_back(job);
                continue;
            };
            let Some(resident) = self.models.get_mut(&job.model) else {
                rest.push_back(Job::Embed(job));
                continue;
            };
            resident.last_used = Instant::now();
            let Loaded::Embedding(embedder) = &resident.model else {
                let _ = job
                    .reply
                    .send(Err(ApiError::Internal("not an embedding model".into())));
                continue;
            };
            let result = catch_unwind(AssertUnwindSafe(|| embedder.embed(&job.inputs)))
                .unwrap_or_else(|_| Err(ModelError::Format("embedding panicked".into())))
                .map_err(|e| ApiError::Internal(e.to_string()));
            if result.is_ok() {
                self.shared
                    .metrics
                    .requests_completed
                    .fetch_add(1, Ordering::Relaxed);
            }
            let _ = job.reply.send(result);
        }
        self.waiting = rest;
    }

    fn admit_chats(&mut self) {
        let max_batch = self.shared.config.max_batch.max(1);
        let mut rest = VecDeque::with_capacity(self.waiting.len());
        for job in std::mem::take(&mut self.waiting) {
            let Job::Chat(job) = job else {
                rest.push_back(job);
                continue;
            };
            if self.running.len() >= max_batch {
                rest.push_back(Job::Chat(job));
                continue;
            }
            let Some(resident) = self.models.get_mut(&job.request.model) else {
                rest.push_back(Job::Chat(job));
                continue;
            };
            resident.last_used = Instant::now();
            let Loaded::Chat(model) = &resident.model else {
                let _ = job.events.send(ChatEvent::Failed(ApiError::Internal(
                    "not a chat model".into(),
                )));
                continue;
            };
            if let Some(seq) = start_sequence(model.clone(), job) {
                self.shared
                    .metrics
                    .prompt_tokens
                    .fetch_add(seq.prompt_tokens as u64, Ordering::Relaxed);
                self.running.push(seq);
            }
        }
        self.waiting = rest;
    }

    /// One forward step per chat model over all of its running sequences.
    fn step(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let mut groups: Vec<Arc<ChatModel>> = Vec::new();
        for s in &self.running {
            if !groups.iter().any(|m| Arc::ptr_eq(m, &s.model)) {
                groups.push(s.model.clone());
            }
        }
        let mut finished = vec![false; self.running.len()];
        for model in groups {
            let members: Vec<usize> = (0..self.running.len())
                .filter(|&i| Arc::ptr_eq(&self.running[i].model, &model))
                .collect();
            let result = {
                let mut inputs: Vec<StepInput<'_>> = self
                    .running
                    .iter_mut()
                    .filter(|s| Arc::ptr_eq(&s.model, &model))
                    .map(|s| StepInput {
                        tokens: &s.pending,
                        cache: &mut s.cache,
                    })
                    .collect();
                catch_unwind(AssertUnwindSafe(|| model.llama.forward(&mut inputs)))
                    .unwrap_or_else(|_| Err(ModelError::Format("forward step panicked".into())))
            };
            self.shared
                .metrics
                .batch_steps
                .fetch_add(1, Ordering::Relaxed);
            let logits = match result {
                Ok(l) => l,
                Err(e) => {
                    for &i in &members {
                        let _ = self.running[i]
                            .job
                            .events
                            .send(ChatEvent::Failed(ApiError::Internal(e.to_string())));
                        finished[i] = true;
                    }
                    continue;
                }
            };
            for (row, &i) in members.iter().enumerate() {
                let seq = &mut self.running[i];
                let done = logits
                    .get(row)
                    .map_err(ModelError::from)
                    .and_then(|l| seq.sampler.sample(&l).map_err(ModelError::from))
                    .and_then(|token| seq.accept(token, &self.shared.metrics));
                finished[i] = match done {
                    Ok(done) => done,
                    Err(e) => {
                        let _ = seq
                            .job
                            .events
                            .send(ChatEvent::Failed(ApiError::Internal(e.to_string())));
                        true
                    }
                };
            }
        }
        let mut i = 0;
        self.running.retain(|_| {
            let keep = !finished[i];
            i += 1;
            keep
        });
    }

    fn publish_running(&mut self) {
        let now = self.running.len();
        let m = &self.shared.metrics.running;
        if now > self.published_running {
            m.fetch_add(now - self.published_running, Ordering::AcqRel);
        } else {
            m.fetch_sub(self.published_running - now, Ordering::AcqRel);
        }
        self.published_running = now;
    }
}

fn load_model(spec: &ModelSpec, device: &Device) -> Result<Loaded, String> {
    match spec.kind {
        ModelKind::Chat => ChatModel::load(&spec.path, device).map(|m| Loaded::Chat(Arc::new(m))),
        ModelKind::Embedding => {
            Embedder::load(&spec.path, device).map(|m| Loaded::Embedding(Arc::new(m)))
        }
    }
    .map_err(|e| e.to_string())
}

/// Tokenizes a job's prompt, checks it against the context window and makes it a running
/// sequence; on failure the client is told why and `None` comes back.
fn start_sequence(model: Arc<ChatModel>, mut job: ChatJob) -> Option<Sequence> {
    // Leaving the queue: the place goes back whether the sequence starts or fails.
    job.ticket.take();
    let fail = |job: ChatJob, error: ApiError| {
        let _ = job.events.send(ChatEvent::Failed(error));
        None
    };
    let prompt = ChatModel::render_prompt(&job.request.messages);
    let tokens = match model.encode(&prompt) {
        Ok(t) => t,
        Err(e) => return fail(job, ApiError::Internal(e.to_string())),
    };
    let context = model.llama.config().context_length;
    let room = context.saturating_sub(tokens.len());
    let max_tokens = job.request.max_tokens.unwrap_or(room);
    if room == 0 || max_tokens > room {
        let msg = format!(
            "This model's maximum context length is {context} tokens. However, you requested {} tokens ({} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
            tokens.len() + max_tokens,
            tokens.len()
        );
        return fail(job, ApiError::ContextLengthExceeded(msg));
    }
    let p = job.request.sampling;
    let sampling = if p.temperature <= 0.0 {
        Sampling::ArgMax
    } else if p.top_p < 1.0 {
        Sampling::TopP {
            p: p.top_p,
            temperature: p.temperature,
        }
    } else {
        Sampling::All {
            temperature: p.temperature,
        }
    };
    let prompt_tokens = tokens.len();
    if job
        .events
        .send(ChatEvent::Started { prompt_tokens })
        .is_err()
    {
        // The client left while queued; nothing to run.
        return None;
    }
    Some(Sequence {
        cache: model.llama.new_cache(),
        model,
        pending: tokens,
        sampler: LogitsProcessor::from_sampling(p.seed, sampling),
        decoder: IncrementalDecoder::default(),
        text: String::new(),
        sent: 0,
        prompt_tokens,
        completion_tokens: 0,
        max_tokens,
        job,
    })
}

impl Sequence {
    /// Takes the sampled `token`, streams what text is final, and says whether the
    /// sequence is done.
    fn accept(&mut self, token: u32, metrics: &Metrics) -> Result<bool, ModelError> {
        if self.completion_tokens == 0 {
            metrics.observe_ttft(self.job.admitted_at.elapsed().as_secs_f64());
        }
        self.completion_tokens += 1;
        metrics.tokens_generated.fetch_add(1, Ordering::Relaxed);
        self.pending.clear();
        self.pending.push(token);

        let mut reason = None;
        if self.model.is_stop_token(token) {
            reason = Some(FinishReason::Stop);
        } else {
            let piece = self.decoder.push(&self.model.tokenizer, token)?;
            self.text.push_str(&piece);
            if let Some(cut) = self.find_stop() {
                self.text.truncate(cut);
                reason = Some(FinishReason::Stop);
            } else if self.completion_tokens >= self.max_tokens {
                reason = Some(FinishReason::Length);
            }
        }
        // Hold back a tail that could still grow into a stop string.
        let safe = match reason {
            Some(_) => self.text.len(),
            None => self.safe_len(),
        };
        if safe > self.sent {
            let delta = self.text[self.sent..safe].to_owned();
            self.sent = safe;
            if self.job.events.send(ChatEvent::Delta(delta)).is_err() {
                metrics.requests_cancelled.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            }
        }
        let Some(reason) = reason else {
            return Ok(false);
        };
        let _ = self.job.events.send(ChatEvent::Finished {
            reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        });
        metrics.requests_completed.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Byte offset of the earliest stop string in the text, if any.
    fn find_stop(&self) -> Option<usize> {
        let stops = &self.job.request.stop;
        let longest = stops.iter().map(String::len).max()?;
        // Only text near the end can hold a stop string that was not there before.
        let mut from = self.sent.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|p| p + from))
            .min()
    }

    /// How much of the text can be streamed without risking part of a stop string.
    fn safe_len(&self) -> usize {
        let hold = self
            .job
            .request
            .stop
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let mut safe = self.text.len().saturating_sub(hold).max(self.sent);
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        safe
    }
}
