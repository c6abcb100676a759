//! A worker thread and its continuous-batching scheduler.
//!
//! A worker loop, between two token steps:
//! 1. takes new jobs and finished model loads off its channel;
//! 2. drops waiting jobs and running sequences whose client went away (the receiver of
//!    their event channel was dropped), freeing queue room and batch slots at once;
//! 3. answers embedding jobs whose model is warm, and starts the next transcription whose
//!    model is warm on a thread of its own (one at a time per worker: a 30-second window
//!    takes far longer than a token step, so it must not run inside the loop);
//! 4. admits waiting chat jobs into the running batch, up to `max_batch`;
//! 5. runs one forward step per chat model over all its running sequences — a whole prompt
//!    for a newly admitted sequence, one token for the others — samples one token for each,
//!    streams it out, and retires the sequences that finished.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;

use super::jobs::{ChatEvent, Job};
use super::prefix::{PrefixCache, Source};
use super::registry::{Loaded, ModelState, Resident};
use super::sequence::{start_sequence, Sequence};
use super::Shared;
use crate::chat_model::ChatModel;
use crate::error::{ApiError, ModelError};
use crate::llama::StepInput;

pub(super) enum WorkerMsg {
    Job(Job),
    /// The engine is gone: fail what is left and end the thread.
    Shutdown,
    Load(String),
    /// The transcription thread finished; the next one may start.
    TranscriptionDone,
    Loaded {
        model: String,
        result: Result<Loaded, String>,
        load_ms: u64,
    },
}

pub(super) struct Worker {
    pub(super) index: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) device: Device,
    pub(super) tx: mpsc::Sender<WorkerMsg>,
    pub(super) rx: mpsc::Receiver<WorkerMsg>,
    pub(super) models: HashMap<String, Resident>,
    pub(super) loading: HashSet<String>,
    pub(super) waiting: VecDeque<Job>,
    pub(super) running: Vec<Sequence>,
    pub(super) published_running: usize,
    /// A transcription thread is running.
    pub(super) transcribing: bool,
}

impl Worker {
    pub(super) fn run(mut self) {
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
            self.start_transcription();
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

    pub(super) fn has_ready_job(&self) -> bool {
        self.waiting.iter().any(|j| {
            self.models.contains_key(j.model())
                && !(self.transcribing && matches!(j, Job::Transcribe(_)))
        })
    }

    pub(super) fn handle(&mut self, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Job(job) => {
                let model = job.model().to_owned();
                if !self.models.contains_key(&model) && !self.loading.contains(&model) {
                    self.start_load(&model);
                }
                self.waiting.push_back(job);
            }
            WorkerMsg::Shutdown => {}
            WorkerMsg::TranscriptionDone => self.transcribing = false,
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
                        // A fresh store: histories from an earlier load of this model (or
                        // another model under its name) are never reused.
                        let prefixes = match &loaded {
                            Loaded::Chat(m) => PrefixCache::new(
                                self.shared.config.prefix_cache_bytes,
                                m.llama.config().kv_bytes_per_token(),
                                self.shared.metrics.prefix_cache_bytes.clone(),
                            ),
                            _ => PrefixCache::new(
                                0,
                                1,
                                self.shared.metrics.prefix_cache_bytes.clone(),
                            ),
                        };
                        self.models.insert(
                            model.clone(),
                            Resident {
                                model: loaded,
                                size,
                                last_used: Instant::now(),
                                prefixes,
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

    pub(super) fn drop_cancelled(&mut self) {
        let before = self.waiting.len() + self.running.len();
        self.waiting.retain(|j| !j.cancelled());
        self.running.retain(|s| !s.job.events.is_closed());
        let dropped = before - self.waiting.len() - self.running.len();
        self.shared
            .metrics
            .requests_cancelled
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }

    pub(super) fn run_embeddings(&mut self) {
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

    /// Hands the first waiting transcription whose model is warm to a thread, unless one runs.
    pub(super) fn start_transcription(&mut self) {
        if self.transcribing {
            return;
        }
        let ready = self
            .waiting
            .iter()
            .position(|j| matches!(j, Job::Transcribe(_)) && self.models.contains_key(j.model()));
        let Some(Job::Transcribe(job)) = ready.and_then(|i| self.waiting.remove(i)) else {
            return;
        };
        let Some(resident) = self.models.get_mut(&job.model) else {
            return;
        };
        resident.last_used = Instant::now();
        let Loaded::Transcription(transcriber) = &resident.model else {
            let _ = job
                .reply
                .send(Err(ApiError::Internal("not a transcription model".into())));
            return;
        };
        let transcriber = transcriber.clone();
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        self.transcribing = true;
        let spawned = std::thread::Builder::new()
            .name(format!("gpu-backend-transcribe-{}", self.index))
            .spawn(move || {
                let result = catch_unwind(AssertUnwindSafe(|| {
                    transcriber.transcribe(&job.samples, &job.options)
                }))
                .unwrap_or_else(|_| Err(ModelError::Format("transcription panicked".into())))
                .map_err(|e| ApiError::Internal(e.to_string()));
                if result.is_ok() {
                    shared
                        .metrics
                        .requests_completed
                        .fetch_add(1, Ordering::Relaxed);
                }
                let _ = job.reply.send(result);
                drop((job.ticket, job.load, transcriber));
                let _ = tx.send(WorkerMsg::TranscriptionDone);
            });
        if let Err(e) = spawned {
            eprintln!("gpu-backend: cannot start a transcription thread: {e}");
            self.transcribing = false;
        }
    }

    pub(super) fn admit_chats(&mut self) {
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
            let prefixes = &mut resident.prefixes;
            let running = &self.running;
            let reuse = |prompt: &[u32]| {
                let live = running
                    .iter()
                    .filter(|s| Arc::ptr_eq(&s.model, model))
                    .map(|s| Source {
                        tokens: &s.tokens,
                        cache: &s.cache,
                    });
                prefixes.lookup(prompt, live)
            };
            if let Some(seq) = start_sequence(model.clone(), job, reuse) {
                let metrics = &self.shared.metrics;
                metrics
                    .prompt_tokens
                    .fetch_add(seq.prompt_tokens as u64, Ordering::Relaxed);
                metrics
                    .prompt_tokens_cached
                    .fetch_add(seq.cached_tokens as u64, Ordering::Relaxed);
                self.running.push(seq);
            }
        }
        self.waiting = rest;
    }

    /// One forward step per chat model over all of its running sequences.
    pub(super) fn step(&mut self) {
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
        // Finished after a successful step: the cache holds exactly its tokens' history.
        let mut reusable = vec![false; self.running.len()];
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
                        tokens: &s.tokens[s.cache.len()..],
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
                    Ok(done) => {
                        reusable[i] = done;
                        done
                    }
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
        let mut kept = Vec::with_capacity(self.running.len());
        for (i, seq) in std::mem::take(&mut self.running).into_iter().enumerate() {
            if !finished[i] {
                kept.push(seq);
                continue;
            }
            if !reusable[i] {
                continue;
            }
            // Kept for the prompts that start like it, if its model is still this one.
            if let Some(r) = self.models.get_mut(&seq.job.request.model) {
                if matches!(&r.model, Loaded::Chat(m) if Arc::ptr_eq(m, &seq.model)) {
                    r.prefixes.insert(seq.tokens, seq.cache);
                }
            }
        }
        self.running = kept;
    }

    pub(super) fn publish_running(&mut self) {
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
