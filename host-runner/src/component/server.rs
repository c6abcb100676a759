//! The wasi-http server side: compile and link the component, accept connections, and run
//! every request in an instance of it (`wasi:http/incoming-handler`): a fresh one, as Spin
//! does by default, or one that served earlier requests (`--max-instance-reuse-count`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::fermyon::spin::{key_value, variables};
use super::bindings::wasi::keyvalue as wasi_keyvalue;
use super::key_value::{key_value_stores, KeyValueStore};
use super::outbound::{Origin, OutboundClient, OutboundPolicy};
use super::{ComponentConfig, ComponentError, InstanceReuse};
use crate::shared::lock;

/// A running `serve-component` listener; dropping it stops accepting connections.
pub struct RunningComponent {
    /// The bound address (useful with port 0).
    pub listen_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    instances: Arc<Instances>,
}

impl RunningComponent {
    /// Instances created so far (one per request unless instances are reused).
    pub fn instantiations(&self) -> u64 {
        self.instances.created.load(Ordering::Relaxed)
    }

    /// Instances waiting, idle, for their next request (only with reuse).
    pub fn idle_instances(&self) -> usize {
        lock(&self.instances.idle).len()
    }

    /// Stops accepting connections; requests in flight finish.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for RunningComponent {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Compiles and links the component, binds the listener and serves until shut down.
/// Must be called inside a tokio runtime.
pub async fn start_component(config: ComponentConfig) -> Result<RunningComponent, ComponentError> {
    let path = config.component.clone();
    // A one-off read of a local file at startup: blocking the runtime briefly is harmless.
    let bytes = std::fs::read(&path).map_err(|source| ComponentError::Read {
        path: path.clone(),
        source,
    })?;
    let origins = config
        .allow_outbound
        .iter()
        .map(|o| Origin::parse(o))
        .collect::<Result<Vec<_>, _>>()?;
    let outbound = config.outbound_idle.map(OutboundClient::new).transpose()?;
    let (engine, pooled) = engine(config.pooled_instances)?;
    let compile_engine = engine.clone();
    let component = tokio::task::spawn_blocking(move || Component::new(&compile_engine, &bytes))
        .await
        .map_err(|e| ComponentError::Engine(e.to_string()))?
        .map_err(|e| ComponentError::Invalid {
            path: path.clone(),
            message: format!("{e:#}"),
        })?;
    let pre = link(&engine, &component).map_err(|e| ComponentError::Link {
        path: path.clone(),
        message: format!("{e:#}"),
    })?;
    let listener = crate::listener::bind(config.listen).map_err(|source| ComponentError::Bind {
        addr: config.listen,
        source,
    })?;
    let listen_addr = listener
        .local_addr()
        .map_err(|source| ComponentError::Bind {
            addr: config.listen,
            source,
        })?;
    let server = Arc::new(Server {
        pre,
        variables: Arc::new(config.variables),
        key_value: Arc::new(key_value_stores()),
        env: config.env,
        origins: Arc::new(origins),
        outbound,
        instances: Arc::new(Instances {
            slots: pooled.map(|n| Arc::new(Semaphore::new(n as usize))),
            reuse: config.reuse,
            idle: Mutex::new(Vec::new()),
            went_idle: Notify::new(),
            created: AtomicU64::new(0),
        }),
    });
    server.instances.sweep_idle();
    let instances = server.instances.clone();
    let (shutdown, mut stop) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let server = server.clone();
                        tokio::spawn(async move { server.serve_connection(stream).await });
                    }
                    Err(e) => tracing::warn!("serve-component: accept failed: {e}"),
                },
            }
        }
    });
    Ok(RunningComponent {
        listen_addr,
        shutdown,
        instances,
    })
}

/// Core instances, tables and memories a pool slot may hold per component instance: a
/// Rust `wasm32-wasip2` component is one core module plus the small shim modules
/// `wit-component` adds, so a handful each.
const CORE_INSTANCES_PER_COMPONENT: u32 = 8;

/// Bytes at the bottom of each pooled linear memory and table that stay resident between
/// requests (a request through the edge worker dirties a few MiB of its stack and heap).
/// Within them a returning slot's dirty pages are reset in place — found with Linux's
/// `PAGEMAP_SCAN`, so untouched pages cost nothing — and pages above are given back with
/// `madvise`. Without the scan (Linux before 6.7) all of them are reset with `memset`.
const KEEP_RESIDENT_BYTES: usize = 4 << 20;

/// The engine, with wasmtime's pooling allocator for `pooled` instances at once when asked
/// and the host allows it (the number actually pooled comes back). Spin does the same: a fresh instance per
/// request then reuses a warm slot (its linear memory reset copy-on-write) instead of an mmap,
/// page faults from zero and an munmap with its TLB shootdown per request, which dominated the
/// kernel's share of `serve-component`'s profile.
fn engine(pooled: Option<u32>) -> Result<(Engine, Option<u32>), ComponentError> {
    if let Some(n) = pooled {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        let per = CORE_INSTANCES_PER_COMPONENT;
        pool.total_component_instances(n)
            .total_stacks(n)
            .max_core_instances_per_component(per)
            .max_memories_per_component(per)
            .max_tables_per_component(per)
            .total_core_instances(n.saturating_mul(per))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(per))
            // Reset a returning slot's first pages in place rather than drop them: the next
            // request touches them again, and each page dropped is a fault to refill.
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES)
            // Reset only the pages the request dirtied, not all the kept ones: the memset of
            // the whole 4 MiB was 12 % of serve-component's CPU (`auto`: where the kernel has
            // the ioctl).
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut cfg = wasmtime::Config::new();
        cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        crate::profile_if_asked(&mut cfg);
        match Engine::new(&cfg) {
            Ok(engine) => return Ok((engine, Some(n))),
            // E.g. an address-space limit (`ulimit -v`) too small for the reservation.
            Err(e) => tracing::warn!(
                "serve-component: no instance pool ({e:#}); allocating instances on demand"
            ),
        }
    }
    let mut cfg = wasmtime::Config::new();
    crate::profile_if_asked(&mut cfg);
    let engine = Engine::new(&cfg).map_err(|e| ComponentError::Engine(format!("{e:#}")))?;
    Ok((engine, None))
}

/// Links everything a Spin HTTP component may import and checks the component against it.
fn link(engine: &Engine, component: &Component) -> wasmtime::Result<ProxyPre<RequestState>> {
    let mut linker = Linker::<RequestState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    variables::add_to_linker::<RequestState, HasSelf<RequestState>>(&mut linker, |s| s)?;
    key_value::add_to_linker::<RequestState, HasSelf<RequestState>>(&mut linker, |s| s)?;
    wasi_keyvalue::store::add_to_linker::<RequestState, HasSelf<RequestState>>(&mut linker, |s| s)?;
    wasi_keyvalue::atomics::add_to_linker::<RequestState, HasSelf<RequestState>>(
        &mut linker,
        |s| s,
    )?;
    ProxyPre::new(linker.instantiate_pre(component)?)
}

struct Server {
    pre: ProxyPre<RequestState>,
    variables: Arc<HashMap<String, String>>,
    key_value: Arc<HashMap<String, KeyValueStore>>,
    env: Vec<(String, String)>,
    origins: Arc<Vec<Origin>>,
    /// The outbound connection pool every instance shares; `None`: a connection per request.
    outbound: Option<OutboundClient>,
    /// Where a request gets its instance: a pool slot for a fresh one, or an idle one.
    instances: Arc<Instances>,
}

/// An instantiated component between requests (only with reuse).
struct Warm {
    store: Store<RequestState>,
    proxy: Proxy,
    /// Requests it has served.
    served: u32,
    /// When it last went idle.
    idle_since: Instant,
    /// Its pool slot, held while the instance lives.
    slot: Option<OwnedSemaphorePermit>,
}

/// What a request runs in.
enum Lease {
    /// A new instance, in this pool slot (`None` without a pool).
    Fresh(Option<OwnedSemaphorePermit>),
    /// An idle instance that served earlier requests.
    Reused(Warm),
}

/// The instances: pool slots for fresh ones, and, with reuse, the idle ones waiting for
/// their next request.
struct Instances {
    /// One permit per pool slot: a request waits here rather than fail to instantiate when
    /// every slot is taken. `None` without a pool.
    slots: Option<Arc<Semaphore>>,
    reuse: InstanceReuse,
    /// Idle instances, the most recently used last (taken first: its pages are warm).
    idle: Mutex<Vec<Warm>>,
    /// Signalled when an instance goes idle, for a request waiting on a full pool: an idle
    /// instance holds its slot, so that request may take the instance instead.
    went_idle: Notify,
    /// Instances created so far.
    created: AtomicU64,
}

/// Drops instances off the request path: after a burst a whole pool's worth can go stale at
/// once, and each store's teardown (its instance's slot reset) takes a while.
fn retire(instances: Vec<Warm>) {
    if !instances.is_empty() {
        tokio::task::spawn_blocking(move || drop(instances));
    }
}

impl Instances {
    /// An idle instance if one is waiting, otherwise a slot for a fresh one (waiting, when
    /// the pool is full, for whichever comes first).
    async fn lease(&self) -> wasmtime::Result<Lease> {
        loop {
            let went_idle = self.went_idle.notified();
            tokio::pin!(went_idle);
            // Registered before the check, so an instance going idle after it wakes us.
            went_idle.as_mut().enable();
            if let Some(warm) = self.take_idle() {
                return Ok(Lease::Reused(warm));
            }
            let Some(slots) = &self.slots else {
                return Ok(Lease::Fresh(None));
            };
            tokio::select! {
                permit = slots.clone().acquire_owned() => return Ok(Lease::Fresh(Some(permit?))),
                _ = went_idle => continue,
            }
        }
    }

    /// The most recently idle instance that has not waited too long.
    fn take_idle(&self) -> Option<Warm> {
        if self.reuse.max_requests <= 1 {
            return None;
        }
        let mut idle = lock(&self.idle);
        let warm = idle.pop()?;
        if warm.idle_since.elapsed() < self.reuse.idle_timeout {
            return Some(warm);
        }
        // This one, the newest, is stale, so every one below it is too.
        let mut stale = std::mem::take(&mut *idle);
        drop(idle);
        stale.push(warm);
        retire(stale);
        None
    }

    /// After a request: keeps the instance for the next one if it may serve more, drops it
    /// (and frees its slot) otherwise.
    fn give_back(&self, warm: Warm) {
        if warm.served >= self.reuse.max_requests {
            return;
        }
        lock(&self.idle).push(warm);
        self.went_idle.notify_one();
    }

    /// Drops the instances idle for longer than the timeout.
    fn drop_stale(&self) {
        let timeout = self.reuse.idle_timeout;
        let mut idle = lock(&self.idle);
        let fresh_from = idle
            .iter()
            .position(|warm| warm.idle_since.elapsed() < timeout)
            .unwrap_or(idle.len());
        let stale: Vec<Warm> = idle.drain(..fresh_from).collect();
        drop(idle);
        retire(stale);
    }

    /// With reuse, drops idle instances past their timeout every so often, until the server
    /// is gone: a burst's instances give their memory and slots back once it is over.
    fn sweep_idle(self: &Arc<Self>) {
        if self.reuse.max_requests <= 1 {
            return;
        }
        let instances = Arc::downgrade(self);
        let period = (self.reuse.idle_timeout / 2).max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match instances.upgrade() {
                    Some(instances) => instances.drop_stale(),
                    None => break,
                }
            }
        });
    }
}

impl Server {
    async fn serve_connection(self: Arc<Self>, stream: tokio::net::TcpStream) {
        // An event stream's last small write would otherwise wait for the client's delayed
        // ACK (Nagle), ~40 ms per streamed answer; `host-runner serve` does the same.
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn(move |request| {
            let server = self.clone();
            async move { Ok::<_, Infallible>(server.handle(request).await) }
        });
        if let Err(e) = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!("serve-component: connection ended: {e}");
        }
    }

    /// Runs one request in an instance.
    async fn handle(
        &self,
        request: hyper::Request<Incoming>,
    ) -> hyper::Response<HyperOutgoingBody> {
        match self.dispatch(request).await {
            Ok(response) => response,
            Err(e) => {
                tracing::error!("serve-component: {e:#}");
                let body = Full::new(Bytes::from_static(b"component failed to answer\n"))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                let mut response = hyper::Response::new(body);
                *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                response
            }
        }
    }

    /// A store for a fresh instance.
    fn new_store(&self) -> Store<RequestState> {
        let wasi = WasiCtx::builder()
            .inherit_stdout()
            .inherit_stderr()
            .envs(&self.env)
            .build();
        Store::new(
            self.pre.engine(),
            RequestState {
                wasi,
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                hooks: OutboundPolicy {
                    origins: self.origins.clone(),
                    pool: self.outbound.clone(),
                },
                variables: self.variables.clone(),
                key_value: self.key_value.clone(),
                open_stores: 0,
            },
        )
    }

    async fn dispatch(
        &self,
        request: hyper::Request<Incoming>,
    ) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>> {
        let lease = self.instances.lease().await?;
        let (mut store, proxy, served, slot) = match lease {
            Lease::Reused(warm) => (warm.store, Some(warm.proxy), warm.served, warm.slot),
            Lease::Fresh(slot) => (self.new_store(), None, 0, slot),
        };
        let (sender, receiver) = oneshot::channel();
        let resources = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .and_then(|request| {
                let out = store.data_mut().http().new_response_outparam(sender)?;
                Ok((request, out))
            });
        let (request, out) = match resources {
            Ok(resources) => resources,
            // A request wasi-http cannot represent (no authority, say). The instance, if one
            // was leased, goes before its slot, so no other request finds the slot free while
            // the instance still holds its pool memory.
            Err(e) => {
                drop(store);
                drop(slot);
                return Err(e);
            }
        };
        let pre = self.pre.clone();
        let instances = self.instances.clone();
        if proxy.is_none() {
            instances.created.fetch_add(1, Ordering::Relaxed);
        }
        // The guest keeps running after it sets the response head: it streams the body.
        let task = tokio::spawn(async move {
            let result = async {
                let proxy = match proxy {
                    Some(proxy) => proxy,
                    None => pre.instantiate_async(&mut store).await?,
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, out)
                    .await?;
                Ok::<_, wasmtime::Error>(proxy)
            }
            .await;
            match result {
                // The handler returned: its answer is written whole, so the instance may
                // take the next request (if it may serve more).
                Ok(proxy) => {
                    instances.give_back(Warm {
                        store,
                        proxy,
                        served: served + 1,
                        idle_since: Instant::now(),
                        slot,
                    });
                    Ok(())
                }
                // A trap (or a failed instantiation): the instance is never run again; its
                // slot is free once it is gone with its store.
                Err(e) => {
                    drop(store);
                    drop(slot);
                    Err(e)
                }
            }
        });
        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(wasmtime::Error::msg(format!(
                "component answered with error {code:?}"
            ))),
            Err(_) => {
                let reason = match task.await {
                    Ok(Ok(())) => wasmtime::Error::msg("component returned without answering"),
                    Ok(Err(e)) => e,
                    Err(e) => wasmtime::Error::msg(e.to_string()),
                };
                Err(reason.context("component did not set a response"))
            }
        }
    }
}

/// Per-request store data.
pub(super) struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    pub(super) table: ResourceTable,
    hooks: OutboundPolicy,
    pub(super) variables: Arc<HashMap<String, String>>,
    /// The server's key-value stores, by label.
    pub(super) key_value: Arc<HashMap<String, KeyValueStore>>,
    /// Stores this instance holds open.
    pub(super) open_stores: u32,
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

#[cfg(test)]
pub(super) mod test_support {
    use super::*;

    /// The store data of an instance that was never run, for host-side unit tests.
    pub(in crate::component) fn request_state(
        key_value: &Arc<HashMap<String, KeyValueStore>>,
    ) -> RequestState {
        RequestState {
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundPolicy {
                origins: Arc::new(Vec::new()),
                pool: None,
            },
            variables: Arc::new(HashMap::new()),
            key_value: key_value.clone(),
            open_stores: 0,
        }
    }
}
