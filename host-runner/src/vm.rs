//! VM instances: one per worker thread, like Envoy's per-worker Wasm VMs.
//!
//! Each worker thread owns one instance (a wasmtime `Store`) and runs *jobs* sent to it by the
//! async side: stream callbacks, HTTP call responses, queue notifications and ticks. Guest code
//! therefore runs on a plain OS thread, never inside a tokio task: WASI preview1's sync
//! bindings block on their own runtime, which would panic inside ours, and a long guest call
//! must not stall the I/O reactor.
//!
//! A trap poisons an instance (its memory may be inconsistent), so the worker replaces it
//! with a fresh one — `proxy_on_vm_start` and `proxy_on_configure` run again — and every stream
//! of the old instance fails (its contexts are gone), while the worker keeps serving.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, ExternType, Instance, InstancePre, Linker, Module, Store, TypedFunc, Val,
    ValType, WasmParams, WasmResults,
};
use wasmtime_wasi::WasiCtxBuilder;

use crate::abi::{self, Action, Status};
use crate::clusters::Clusters;
use crate::config::RunnerConfig;
use crate::context::{CallResponse, Control, HostState, StreamInfo, StreamState};
use crate::error::{HostError, VmError};
use crate::headers::Headers;
use crate::memory::GuestMemory;
use crate::metrics::{MetricKind, Metrics};
use crate::shared::{QueueWaker, SharedData, SharedQueues};

/// How often the epoch advances; the guest timeout is counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Process-wide state shared by all VMs and the proxy.
pub struct World {
    /// The runner configuration (plugin and VM configuration, limits, properties).
    pub config: RunnerConfig,
    /// The upstream clusters streams and HTTP calls are routed to.
    pub clusters: Clusters,
    /// Shared data (`proxy_get/set_shared_data`), seen by every VM as in Envoy.
    pub shared_data: SharedData,
    /// Shared queues (`proxy_register/enqueue/dequeue_shared_queue`).
    pub queues: SharedQueues,
    /// Guest-defined metrics, rendered on the admin listener.
    pub metrics: Metrics,
    /// Runtime for I/O started on behalf of the guest (HTTP calls).
    pub runtime: tokio::runtime::Handle,
    /// Host counter of guest traps (`host_runner_wasm_traps`).
    pub traps_metric: u32,
}

impl World {
    /// Build the shared state; cluster definitions are validated here.
    pub fn new(config: RunnerConfig, runtime: tokio::runtime::Handle) -> Result<Self, HostError> {
        let clusters = Clusters::new(&config.clusters)?;
        let metrics = Metrics::default();
        let traps_metric = metrics.define(MetricKind::Counter, "host_runner_wasm_traps");
        Ok(Self {
            config,
            clusters,
            shared_data: SharedData::default(),
            queues: SharedQueues::default(),
            metrics,
            runtime,
            traps_metric,
        })
    }
}

/// The compiled filter, shared by all workers: compiled once, instantiated per worker.
pub struct Plugin {
    engine: Engine,
    pre: InstancePre<HostState>,
    deadline_ticks: u64,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Plugin {
    /// Compile and link the module; checks that it is a proxy-wasm 0.2.x module.
    pub fn compile(config: &RunnerConfig) -> Result<Self, HostError> {
        let mut cfg = Config::new();
        cfg.epoch_interruption(true);
        crate::profile_if_asked(&mut cfg);
        let engine = Engine::new(&cfg).map_err(|e| HostError::InvalidWasm(format!("{e:?}")))?;
        let module = load_module(&engine, &config.wasm, config.cache_dir.as_deref())?;
        let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
        if !exports
            .iter()
            .any(|e| *e == "proxy_abi_version_0_2_1" || *e == "proxy_abi_version_0_2_0")
        {
            return Err(HostError::NotProxyWasm(
                "it exports neither proxy_abi_version_0_2_1 nor proxy_abi_version_0_2_0 \
                 (build it with the proxy-wasm Rust SDK 0.2.x for wasm32-wasip1)"
                    .into(),
            ));
        }
        if !exports.contains(&"memory") {
            return Err(HostError::NotProxyWasm("it exports no memory".into()));
        }
        if !exports
            .iter()
            .any(|e| *e == "proxy_on_memory_allocate" || *e == "malloc")
        {
            return Err(HostError::NotProxyWasm(
                "it exports neither proxy_on_memory_allocate nor malloc".into(),
            ));
        }
        let mut linker: Linker<HostState> = Linker::new(&engine);
        let link_err = |e: wasmtime::Error| HostError::Instantiate(format!("{e:?}"));
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut HostState| &mut s.wasi)
            .map_err(link_err)?;
        abi::add_to_linker(&mut linker).map_err(link_err)?;
        // proxy_* imports of other SDKs/ABI versions answer Unimplemented; anything else
        // unknown traps if (and only if) it is called.
        for import in module.imports() {
            if import.module() != "env"
                || !import.name().starts_with("proxy_")
                || abi::IMPLEMENTED.contains(&import.name())
            {
                continue;
            }
            if let ExternType::Func(ty) = import.ty() {
                let results: Vec<ValType> = ty.results().collect();
                if results.len() == 1 && matches!(results[0], ValType::I32) {
                    let name = import.name().to_string();
                    tracing::warn!(
                        import = name,
                        "unsupported proxy-wasm import; it will return Unimplemented"
                    );
                    linker
                        .func_new("env", &name, ty.clone(), |_, _, results| {
                            results[0] = Val::I32(Status::Unimplemented as i32);
                            Ok(())
                        })
                        .map_err(link_err)?;
                }
            }
        }
        linker
            .define_unknown_imports_as_traps(&module)
            .map_err(link_err)?;
        let pre = linker.instantiate_pre(&module).map_err(link_err)?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (e, stop) = (engine.clone(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e.increment_epoch();
                }
            })
            .map_err(|e| HostError::Worker(e.to_string()))?;
        let deadline_ticks =
            (config.guest_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        Ok(Self {
            engine,
            pre,
            deadline_ticks,
            stop_ticker,
        })
    }
}

/// Compile `wasm`, or load the result of an earlier compilation of the same bytes by the
/// same engine configuration from `cache_dir`. Compiling a multi-megabyte filter takes
/// seconds (tens of seconds in a debug build); test suites and scripts restart the runner
/// many times with the same filter.
fn load_module(
    engine: &Engine,
    wasm: &[u8],
    cache_dir: Option<&Path>,
) -> Result<Module, HostError> {
    let compile =
        || Module::new(engine, wasm).map_err(|e| HostError::InvalidWasm(format!("{e:?}")));
    let Some(dir) = cache_dir else {
        return compile();
    };
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let digest = Sha256::digest(wasm);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("{hex}-{:016x}.cwasm", engine_hash.finish()));
    if path.is_file() {
        // SAFETY: the file was written by `Module::serialize` below for exactly these wasm
        // bytes and this engine configuration (both are in its name), into the runner's own
        // cache directory; wasmtime still checks the header and compatibility on load.
        match unsafe { Module::deserialize_file(engine, &path) } {
            Ok(m) => return Ok(m),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unusable compile cache entry: {e}")
            }
        }
    }
    let module = compile()?;
    if let Ok(bytes) = module.serialize() {
        // Write then rename, so a concurrent reader never sees a partial file.
        let tmp = dir.join(format!(".{hex}.{}.tmp", std::process::id()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&tmp, bytes))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(dir = %dir.display(), "not caching the compiled module: {e}");
        }
    }
    Ok(module)
}

/// The guest's exported callbacks; missing ones get Envoy's defaults (Continue / true).
struct Exports {
    on_context_create: Option<TypedFunc<(u32, u32), ()>>,
    on_vm_start: Option<TypedFunc<(u32, u32), u32>>,
    on_configure: Option<TypedFunc<(u32, u32), u32>>,
    on_request_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    on_request_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    on_response_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    on_response_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    on_log: Option<TypedFunc<u32, ()>>,
    on_done: Option<TypedFunc<u32, u32>>,
    on_delete: Option<TypedFunc<u32, ()>>,
    on_tick: Option<TypedFunc<u32, ()>>,
    on_queue_ready: Option<TypedFunc<(u32, u32), ()>>,
    on_http_call_response: Option<CallResponseFn>,
}

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponseFn = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// One step of the end-of-stream sequence.
type FinishStep = fn(&Exports, &mut Store<HostState>, u32) -> wasmtime::Result<()>;

fn export<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, HostError> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f.typed::<P, R>(&*store).map(Some).map_err(|e| {
            HostError::NotProxyWasm(format!("export {name} has an unexpected signature: {e}"))
        }),
    }
}

impl Exports {
    fn load(instance: &Instance, store: &mut Store<HostState>) -> Result<Self, HostError> {
        Ok(Self {
            on_context_create: export(instance, store, "proxy_on_context_create")?,
            on_vm_start: export(instance, store, "proxy_on_vm_start")?,
            on_configure: export(instance, store, "proxy_on_configure")?,
            on_request_headers: export(instance, store, "proxy_on_request_headers")?,
            on_request_body: export(instance, store, "proxy_on_request_body")?,
            on_response_headers: export(instance, store, "proxy_on_response_headers")?,
            on_response_body: export(instance, store, "proxy_on_response_body")?,
            on_log: export(instance, store, "proxy_on_log")?,
            on_done: export(instance, store, "proxy_on_done")?,
            on_delete: export(instance, store, "proxy_on_delete")?,
            on_tick: export(instance, store, "proxy_on_tick")?,
            on_queue_ready: export(instance, store, "proxy_on_queue_ready")?,
            on_http_call_response: export(instance, store, "proxy_on_http_call_response")?,
        })
    }
}

struct Live {
    store: Store<HostState>,
    ex: Exports,
    root_id: u32,
}

/// A job run on a worker thread against its VM.
pub type Job = Box<dyn FnOnce(&mut Vm) + Send>;

/// A stream context, tied to the instance generation that created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRef {
    generation: u64,
    /// The proxy-wasm context id.
    pub id: u32,
}

/// The result of a stream callback: the verdict plus whatever the guest asked for.
#[derive(Debug, Clone)]
pub struct Step {
    /// What the callback returned (`Continue` or `Pause`).
    pub action: Action,
    /// What the guest asked for through host calls during the callback.
    pub control: Control,
}

/// One worker's VM.
pub struct Vm {
    plugin: Arc<Plugin>,
    world: Arc<World>,
    jobs: mpsc::Sender<Job>,
    live: Option<Live>,
    generation: u64,
    next_context: u32,
    /// Tick period and next deadline.
    tick: Option<(Duration, Instant)>,
    stop: bool,
    worker: usize,
}

impl Vm {
    fn new(plugin: Arc<Plugin>, world: Arc<World>, jobs: mpsc::Sender<Job>, worker: usize) -> Self {
        Self {
            plugin,
            world,
            jobs,
            live: None,
            generation: 0,
            next_context: 1,
            tick: None,
            stop: false,
            worker,
        }
    }

    /// Instantiate and run the start sequence: `_initialize`, root context creation,
    /// `proxy_on_vm_start(vm config)`, `proxy_on_configure(plugin config)`.
    fn start(&mut self) -> Result<(), HostError> {
        self.live = None;
        self.tick = None;
        self.generation += 1;
        let root_id = self.alloc_context();
        let mut live = self.instantiate(root_id)?;
        let ticks = self.plugin.deadline_ticks;
        let trap = |what: &str, e: wasmtime::Error| {
            HostError::Instantiate(format!("{what} trapped: {e:?}"))
        };
        if let Some(f) = &live.ex.on_context_create {
            live.store.set_epoch_deadline(ticks);
            f.call(&mut live.store, (root_id, 0))
                .map_err(|e| trap("proxy_on_context_create", e))?;
        }
        if let Some(f) = &live.ex.on_vm_start {
            live.store.set_epoch_deadline(ticks);
            let size = self.world.config.vm_config.len() as u32;
            if f.call(&mut live.store, (root_id, size))
                .map_err(|e| trap("proxy_on_vm_start", e))?
                == 0
            {
                return Err(HostError::VmStartRejected);
            }
        }
        if let Some(f) = &live.ex.on_configure {
            live.store.set_epoch_deadline(ticks);
            let size = self.world.config.plugin_config.len() as u32;
            if f.call(&mut live.store, (root_id, size))
                .map_err(|e| trap("proxy_on_configure", e))?
                == 0
            {
                return Err(HostError::ConfigureRejected);
            }
        }
        self.live = Some(live);
        self.after_callback(None);
        Ok(())
    }

    fn instantiate(&mut self, root_id: u32) -> Result<Live, HostError> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.inherit_stdout().inherit_stderr();
        for (k, v) in &self.world.config.env {
            wasi.env(k, v);
        }
        let tx = self.jobs.clone();
        let waker: QueueWaker = Arc::new(move |queue_id| {
            let _ = tx.send(Box::new(move |vm: &mut Vm| vm.queue_ready(queue_id)));
        });
        let mut state = HostState::new(wasi.build_p1(), self.world.clone(), waker);
        state.root_id = root_id;
        state.effective = root_id;
        let mut store = Store::new(&self.plugin.engine, state);
        store.set_epoch_deadline(self.plugin.deadline_ticks);
        let instance = self
            .plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| HostError::Instantiate(format!("{e:?}")))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| HostError::NotProxyWasm("it exports no memory".into()))?;
        let alloc = match export::<u32, u32>(&instance, &mut store, "proxy_on_memory_allocate")? {
            Some(f) => f,
            None => export::<u32, u32>(&instance, &mut store, "malloc")?.ok_or_else(|| {
                HostError::NotProxyWasm(
                    "it exports neither proxy_on_memory_allocate nor malloc".into(),
                )
            })?,
        };
        store.data_mut().guest = Some(GuestMemory { memory, alloc });
        // Reactor modules (the SDK's `main!`) initialise in `_initialize`; command-style
        // modules in `_start`. Envoy's host calls whichever exists.
        for name in ["_initialize", "_start"] {
            if let Some(f) = export::<(), ()>(&instance, &mut store, name)? {
                store.set_epoch_deadline(self.plugin.deadline_ticks);
                f.call(&mut store, ())
                    .map_err(|e| HostError::Instantiate(format!("{name} trapped: {e:?}")))?;
                break;
            }
        }
        let ex = Exports::load(&instance, &mut store)?;
        Ok(Live { store, ex, root_id })
    }

    fn alloc_context(&mut self) -> u32 {
        let id = self.next_context;
        self.next_context = self.next_context.wrapping_add(1).max(1);
        id
    }

    /// Replace a poisoned instance. Streams of the old one see their contexts vanish: their
    /// signal senders are dropped with the old store, which wakes their drivers.
    fn reset(&mut self) {
        let _ = self.world.metrics.increment(self.world.traps_metric, 1);
        match self.start() {
            Ok(()) => tracing::warn!(
                worker = self.worker,
                "replaced the wasm VM instance after a trap"
            ),
            Err(e) => {
                tracing::error!(worker = self.worker, error = %e, "could not restart the wasm VM after a trap; retrying on the next request")
            }
        }
    }

    /// Run one guest callback on context `ctx`. `notify_self` wakes `ctx`'s own driver if the
    /// guest changed its control state (needed when the callback was not started by it).
    fn call<R>(
        &mut self,
        ctx: u32,
        notify_self: bool,
        f: impl FnOnce(&Exports, &mut Store<HostState>, u32) -> wasmtime::Result<R>,
    ) -> Result<R, VmError> {
        let ticks = self.plugin.deadline_ticks;
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| VmError::Unavailable("the instance failed to restart".into()))?;
        live.store.set_epoch_deadline(ticks);
        live.store.data_mut().effective = ctx;
        let result = f(&live.ex, &mut live.store, live.root_id);
        match result {
            Ok(v) => {
                self.after_callback((!notify_self).then_some(ctx));
                Ok(v)
            }
            Err(e) => {
                let msg = format!("{e:?}");
                tracing::error!(worker = self.worker, context = ctx, "wasm trap: {msg}");
                self.reset();
                Err(VmError::Trap(msg))
            }
        }
    }

    /// Work that follows every callback: wake streams the guest acted on, start dispatched
    /// HTTP calls, apply tick period changes.
    fn after_callback(&mut self, skip: Option<u32>) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let state = live.store.data_mut();
        for id in std::mem::take(&mut state.touched) {
            if Some(id) != skip {
                if let Some(s) = state.streams.get(&id) {
                    let _ = s.signal.send(());
                }
            }
        }
        let calls = std::mem::take(&mut state.pending_calls);
        let period = state.tick_period;
        if period != self.tick.map(|(p, _)| p) {
            self.tick = period.map(|p| (p, Instant::now() + p));
        }
        for call in calls {
            let world = self.world.clone();
            let jobs = self.jobs.clone();
            let generation = self.generation;
            self.world.runtime.spawn(async move {
                let response = crate::proxy::http_call(&world, &call).await;
                let _ = jobs.send(Box::new(move |vm: &mut Vm| {
                    vm.deliver_http_call(generation, call.context_id, call.token, response)
                }));
            });
        }
    }

    fn check(&mut self, s: StreamRef) -> Result<&mut StreamState, VmError> {
        if s.generation != self.generation {
            return Err(VmError::ContextGone);
        }
        self.live
            .as_mut()
            .and_then(|l| l.store.data_mut().streams.get_mut(&s.id))
            .ok_or(VmError::ContextGone)
    }

    fn take_control_of(&mut self, s: StreamRef) -> Control {
        self.check(s)
            .map(|st| std::mem::take(&mut st.control))
            .unwrap_or_default()
    }

    /// Create an HTTP stream context (`proxy_on_context_create(id, root)`).
    pub fn create_stream(
        &mut self,
        info: StreamInfo,
        request_headers: Headers,
        signal: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Result<StreamRef, VmError> {
        if self.live.is_none() {
            // A previous restart failed; try again for this request.
            self.reset();
        }
        let id = self.alloc_context();
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| VmError::Unavailable("the instance failed to restart".into()))?;
        live.store
            .data_mut()
            .streams
            .insert(id, StreamState::new(info, request_headers, signal));
        self.call(id, false, |ex, store, root| match &ex.on_context_create {
            Some(f) => f.call(store, (id, root)),
            None => Ok(()),
        })?;
        Ok(StreamRef {
            generation: self.generation,
            id,
        })
    }

    fn stream_callback(
        &mut self,
        s: StreamRef,
        pick: impl FnOnce(&Exports) -> Option<&TypedFunc<(u32, u32, u32), u32>>,
        size: u32,
        eos: bool,
    ) -> Result<Step, VmError> {
        self.check(s)?;
        let verdict = self.call(s.id, false, |ex, store, _| match pick(ex) {
            Some(f) => f.call(store, (s.id, size, eos as u32)),
            None => Ok(0),
        })?;
        Ok(Step {
            action: Action::from_abi(verdict),
            control: self.take_control_of(s),
        })
    }

    /// `proxy_on_request_headers`.
    pub fn on_request_headers(&mut self, s: StreamRef, eos: bool) -> Result<Step, VmError> {
        let n = self.check(s)?.request_headers.len() as u32;
        self.stream_callback(s, |ex| ex.on_request_headers.as_ref(), n, eos)
    }

    /// Append a chunk to the request buffer and run `proxy_on_request_body` with the buffered
    /// size, as Envoy does for StopIterationAndBuffer.
    pub fn on_request_body(
        &mut self,
        s: StreamRef,
        chunk: &[u8],
        eos: bool,
    ) -> Result<Step, VmError> {
        let st = self.check(s)?;
        st.request_body.extend_from_slice(chunk);
        let n = st.request_body.len() as u32;
        self.stream_callback(s, |ex| ex.on_request_body.as_ref(), n, eos)
    }

    /// Set the response headers and run `proxy_on_response_headers`.
    pub fn on_response_headers(
        &mut self,
        s: StreamRef,
        headers: Headers,
        eos: bool,
    ) -> Result<Step, VmError> {
        let st = self.check(s)?;
        let n = headers.len() as u32;
        st.response_headers = headers;
        self.stream_callback(s, |ex| ex.on_response_headers.as_ref(), n, eos)
    }

    /// Append a chunk to the response buffer and run `proxy_on_response_body`.
    pub fn on_response_body(
        &mut self,
        s: StreamRef,
        chunk: &[u8],
        eos: bool,
    ) -> Result<Step, VmError> {
        let st = self.check(s)?;
        st.response_body.extend_from_slice(chunk);
        let n = st.response_body.len() as u32;
        self.stream_callback(s, |ex| ex.on_response_body.as_ref(), n, eos)
    }

    /// What the guest asked for outside the stream's own callbacks.
    pub fn take_control(&mut self, s: StreamRef) -> Result<Control, VmError> {
        self.check(s)?;
        Ok(self.take_control_of(s))
    }

    /// The request headers as the filter left them.
    pub fn request_headers(&mut self, s: StreamRef) -> Result<Headers, VmError> {
        Ok(self.check(s)?.request_headers.clone())
    }

    /// The response headers as the filter left them.
    pub fn response_headers(&mut self, s: StreamRef) -> Result<Headers, VmError> {
        Ok(self.check(s)?.response_headers.clone())
    }

    /// Take the buffered request body (it is being forwarded).
    pub fn take_request_body(&mut self, s: StreamRef) -> Result<Bytes, VmError> {
        Ok(Bytes::from(std::mem::take(
            &mut self.check(s)?.request_body,
        )))
    }

    /// Take the buffered response body (it is being forwarded).
    pub fn take_response_body(&mut self, s: StreamRef) -> Result<Bytes, VmError> {
        Ok(Bytes::from(std::mem::take(
            &mut self.check(s)?.response_body,
        )))
    }

    /// Remember the chosen cluster (for properties).
    pub fn set_cluster(&mut self, s: StreamRef, cluster: &str) -> Result<(), VmError> {
        self.check(s)?.cluster = Some(cluster.to_string());
        Ok(())
    }

    /// End of stream: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`, then forget it.
    /// `response_flags` (Envoy's bits) is what the `response.flags` property reads from then.
    pub fn finish_stream(&mut self, s: StreamRef, response_flags: u64) {
        match self.check(s) {
            Ok(state) => state.response_flags = response_flags,
            Err(_) => return,
        }
        let id = s.id;
        let steps: [FinishStep; 3] = [
            |ex, st, id| ex.on_log.as_ref().map_or(Ok(()), |f| f.call(st, id)),
            |ex, st, id| {
                ex.on_done
                    .as_ref()
                    .map_or(Ok(()), |f| f.call(st, id).map(drop))
            },
            |ex, st, id| ex.on_delete.as_ref().map_or(Ok(()), |f| f.call(st, id)),
        ];
        for step in steps {
            if self.call(id, false, |ex, st, _| step(ex, st, id)).is_err() {
                return;
            }
        }
        if let Some(live) = self.live.as_mut() {
            live.store.data_mut().streams.remove(&id);
        }
    }

    fn root_id(&self) -> Option<u32> {
        self.live.as_ref().map(|l| l.root_id)
    }

    fn queue_ready(&mut self, queue_id: u32) {
        let Some(root) = self.root_id() else { return };
        let _ = self.call(root, true, |ex, st, root| {
            ex.on_queue_ready
                .as_ref()
                .map_or(Ok(()), |f| f.call(st, (root, queue_id)))
        });
    }

    fn fire_tick(&mut self) {
        if let Some((period, _)) = self.tick {
            self.tick = Some((period, Instant::now() + period));
        }
        let Some(root) = self.root_id() else { return };
        let _ = self.call(root, true, |ex, st, root| {
            ex.on_tick.as_ref().map_or(Ok(()), |f| f.call(st, root))
        });
    }

    fn deliver_http_call(
        &mut self,
        generation: u64,
        ctx: u32,
        token: u32,
        response: Option<CallResponse>,
    ) {
        if generation != self.generation {
            return; // The instance that dispatched it is gone; the new one never knew the token.
        }
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let response = response.unwrap_or_default();
        let (nh, nb, nt) = (
            response.headers.len() as u32,
            response.body.len() as u32,
            response.trailers.len() as u32,
        );
        let state = live.store.data_mut();
        let known = ctx == live.root_id || state.streams.contains_key(&ctx);
        let target = if known { ctx } else { live.root_id };
        state.call_response = Some(response);
        let _ = self.call(target, true, |ex, st, _| {
            ex.on_http_call_response
                .as_ref()
                .map_or(Ok(()), |f| f.call(st, (ctx, token, nh, nb, nt)))
        });
        if let Some(live) = self.live.as_mut() {
            live.store.data_mut().call_response = None;
        }
    }

    fn run(&mut self, jobs: mpsc::Receiver<Job>) {
        while !self.stop {
            let job = match self.tick {
                Some((_, deadline)) => {
                    let now = Instant::now();
                    if deadline <= now {
                        self.fire_tick();
                        continue;
                    }
                    match jobs.recv_timeout(deadline - now) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            job(self);
        }
    }
}

/// The async side's handle to a worker's VM.
#[derive(Clone)]
pub struct VmHandle {
    jobs: mpsc::Sender<Job>,
}

impl VmHandle {
    /// Run `f` on the worker thread and wait for its result.
    pub async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vm) -> R + Send + 'static,
    ) -> Result<R, VmError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |vm: &mut Vm| {
                let _ = tx.send(f(vm));
            }))
            .map_err(|_| VmError::Stopped)?;
        rx.await.map_err(|_| VmError::Stopped)
    }

    /// Ask the worker to exit after the jobs already queued.
    pub fn stop(&self) {
        let _ = self.jobs.send(Box::new(|vm: &mut Vm| vm.stop = true));
    }
}

/// Start worker `index`: a thread with its own instance, configured before this returns.
/// A filter that rejects its configuration fails here, so the runner refuses to start.
pub async fn spawn_worker(
    index: usize,
    plugin: Arc<Plugin>,
    world: Arc<World>,
) -> Result<VmHandle, HostError> {
    let (tx, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let jobs = tx.clone();
    std::thread::Builder::new()
        .name(format!("wasm-worker-{index}"))
        .spawn(move || {
            let mut vm = Vm::new(plugin, world, jobs, index);
            match vm.start() {
                Ok(()) => {
                    let _ = ready_tx.send(Ok(()));
                    vm.run(rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| HostError::Worker(e.to_string()))?;
    ready_rx
        .await
        .map_err(|_| HostError::Worker(format!("worker {index} died during startup")))??;
    Ok(VmHandle { jobs: tx })
}
