//! The model registry of a worker: load states as the API reports them, loading off the
//! worker thread, and least-recently-used eviction under the memory budget.
//!
//! Pinned models are loaded at start and never evicted. Other models load on first use and
//! are evicted least-recently-used when loading another one would exceed the memory budget;
//! a model in use (running sequences or waiting jobs) is never evicted, so the budget is soft
//! when everything loaded is busy. Loads run on their own threads so that a cold model never
//! blocks the sequences of warm ones.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;

use super::prefix::PrefixCache;
use super::worker::{Worker, WorkerMsg};
use crate::catalog::{ModelKind, ModelSpec};
use crate::chat_model::ChatModel;
use crate::embedder::Embedder;
use crate::whisper::Transcriber;

/// Load state of a model, as `/v1/models` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    /// Not loaded (never, or evicted).
    Cold,
    /// Loading on a loader thread; its requests wait.
    Loading,
    /// Loaded and serving.
    Warm,
    /// The last load failed; requests for it get 503.
    Failed,
}

impl ModelState {
    /// The name `/v1/models` and `/healthz` use.
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
pub(super) struct WorkerModelStatus {
    pub(super) state: ModelState,
    pub(super) load_ms: Option<u64>,
}

/// A model's entry in `/v1/models`.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Model id.
    pub id: String,
    /// Chat or embedding.
    pub kind: ModelKind,
    /// The best state across workers (warm on one is warm).
    pub state: ModelState,
    /// The slowest last load across workers.
    pub load_ms: Option<u64>,
    /// Loaded at start and never evicted.
    pub pinned: bool,
}

pub(super) enum Loaded {
    Chat(Arc<ChatModel>),
    Embedding(Arc<Embedder>),
    Transcription(Arc<Transcriber>),
}

pub(super) struct Resident {
    pub(super) model: Loaded,
    pub(super) size: u64,
    pub(super) last_used: Instant,
    /// Reusable histories of a chat model's finished sequences; they go with the model.
    pub(super) prefixes: PrefixCache,
}

pub(super) fn load_model(spec: &ModelSpec, device: &Device) -> Result<Loaded, String> {
    match spec.kind {
        ModelKind::Chat => ChatModel::load(&spec.path, device).map(|m| Loaded::Chat(Arc::new(m))),
        ModelKind::Embedding => {
            Embedder::load(&spec.path, device).map(|m| Loaded::Embedding(Arc::new(m)))
        }
        ModelKind::Transcription => {
            Transcriber::load(&spec.path, device).map(|m| Loaded::Transcription(Arc::new(m)))
        }
    }
    .map_err(|e| e.to_string())
}

impl Worker {
    /// Loads `model` on its own thread; the result comes back as a `Loaded` message.
    pub(super) fn start_load(&mut self, model: &str) {
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
    pub(super) fn make_room(&mut self, incoming: u64) {
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
                            Loaded::Transcription(m) => Arc::strong_count(m) == 1,
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
}
