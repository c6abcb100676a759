//! `serve-component`: serves a wasi-http component — the Spin `edge-worker` — the way Spin
//! does, so the edge deployment can be run and tested without Spin.
//!
//! What a released Spin (3.x, 4.x) gives an HTTP component, this host gives too: the
//! `wasi:http/proxy@0.2` world (incoming handler, outbound HTTP, clocks, random, stdio), the
//! rest of WASI 0.2 that Rust's std imports, `fermyon:spin/variables@2.0.0`, answered from
//! `--var` values, and `fermyon:spin/key-value@2.0.0` with the `default` store (what spin.toml's
//! `key_value_stores = ["default"]` grants), kept in memory for as long as the server runs.
//! As in Spin, every request gets a fresh instance of a pre-instantiated component
//! ([`ProxyPre`]): nothing leaks between requests but what the component puts in the
//! key-value store, and instantiation costs microseconds. Outbound HTTP is
//! wasmtime-wasi-http's default client (loopback included), optionally limited to
//! `--allow-outbound` origins like Spin's `allowed_outbound_hosts`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

/// Bindings for Spin's variables and key-value interfaces, vendored from Spin's WIT
/// (`fermyon:spin@2.0.0`).
mod spin {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, PoisonError};

    wasmtime::component::bindgen!({
        inline: "
            package fermyon:spin@2.0.0;

            interface variables {
                /// Get an application variable value for the current component.
                get: func(name: string) -> result<string, error>;

                /// The set of errors which may be raised by functions in this interface.
                variant error {
                    invalid-name(string),
                    undefined(string),
                    provider(string),
                    other(string),
                }
            }

            interface key-value {
                /// An open key-value store
                resource store {
                    /// Open the store with the specified label.
                    open: static func(label: string) -> result<store, error>;

                    /// Get the value associated with the specified `key`; `ok(none)` if unset.
                    get: func(key: string) -> result<option<list<u8>>, error>;

                    /// Set the `value` associated with the specified `key`, overwriting any.
                    set: func(key: string, value: list<u8>) -> result<_, error>;

                    /// Delete the tuple with the specified `key` (no error if there is none).
                    delete: func(key: string) -> result<_, error>;

                    /// Return whether a tuple exists for the specified `key`
                    exists: func(key: string) -> result<bool, error>;

                    /// Return a list of all the keys
                    get-keys: func() -> result<list<string>, error>;
                }

                /// The set of errors which may be raised by functions in this interface
                variant error {
                    store-table-full,
                    no-such-store,
                    access-denied,
                    other(string),
                }
            }

            world spin-host {
                import variables;
                import key-value;
            }
        ",
        with: {
            "fermyon:spin/key-value.store": crate::component::spin::KeyValueStore,
        },
        // A handle the guest forged or already dropped is a trap, as in Spin.
        imports: { "fermyon:spin/key-value": trappable },
    });

    /// One key-value store, shared by every instance of the server (the `store` resource's
    /// host side). In memory: unlike Spin's SQLite-backed `default` store it is gone when the
    /// server stops, which is what tests and local runs want.
    #[derive(Debug, Clone, Default)]
    pub struct KeyValueStore(Arc<Mutex<HashMap<String, Vec<u8>>>>);

    impl KeyValueStore {
        /// Runs `f` on the map.
        pub fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Vec<u8>>) -> R) -> R {
            // Nothing done under the lock can leave the map half-updated, so a lock poisoned
            // by a panic still guards a consistent map.
            f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
        }
    }
}

use spin::fermyon::spin::{key_value, variables};
use spin::KeyValueStore;

/// The key-value stores every instance may open, by label: only `default`, as for a Spin
/// component with `key_value_stores = ["default"]`.
const KEY_VALUE_LABELS: &[&str] = &["default"];

/// How many stores one instance may hold open at once; Spin's limit too.
const MAX_OPEN_STORES: u32 = 256;

/// The stores, by label.
fn key_value_stores() -> HashMap<String, KeyValueStore> {
    KEY_VALUE_LABELS
        .iter()
        .map(|label| (label.to_string(), KeyValueStore::default()))
        .collect()
}

/// What `serve-component` serves and how.
#[derive(Debug, Clone)]
pub struct ComponentConfig {
    /// The component file (`edge_worker.wasm`, built for `wasm32-wasip2`).
    pub component: PathBuf,
    /// Where to listen (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Spin variables, by (lower-case) name.
    pub variables: HashMap<String, String>,
    /// The component's environment.
    pub env: Vec<(String, String)>,
    /// Origins outbound HTTP may reach (`https://api.openai.com`, `http://127.0.0.1:8100`,
    /// `http://127.0.0.1:*`, `*`); empty allows every destination.
    pub allow_outbound: Vec<String>,
}

/// The `serve-component` command line (parsed by the binary, turned into a
/// [`ComponentConfig`] here so tests and the CLI share the rules).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeComponentArgs {
    /// The Spin HTTP component (`edge-worker/target/wasm32-wasip2/release/edge_worker.wasm`).
    #[arg(long, value_name = "FILE")]
    pub component: PathBuf,

    /// Address to serve on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,

    /// A Spin variable, NAME=VALUE (lower-case name, as in spin.toml), e.g.
    /// `gateway_config=<json>` or `openai_api_key=sk-...`. Repeatable. Unset variables are
    /// `undefined` to the component, as in Spin.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,

    /// The component's environment: NAME forwards host-runner's NAME (skipped if unset),
    /// NAME=VALUE sets it. Repeatable. Nothing else is visible to the component.
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,

    /// An origin outbound HTTP may reach, like spin.toml's `allowed_outbound_hosts`
    /// (`https://api.openai.com`, `http://127.0.0.1:*`, `*`). Repeatable; none allows all.
    #[arg(long = "allow-outbound", value_name = "ORIGIN")]
    pub allow_outbound: Vec<String>,
}

impl ServeComponentArgs {
    /// Checks the flags and builds the configuration.
    pub fn into_config(self) -> Result<ComponentConfig, ComponentError> {
        let mut variables = HashMap::new();
        for spec in &self.vars {
            let invalid = |reason| ComponentError::InvalidFlag {
                flag: "--var",
                value: spec.clone(),
                reason,
            };
            let (name, value) = spec
                .split_once('=')
                .ok_or_else(|| invalid("expected NAME=VALUE"))?;
            if !valid_variable_name(name) {
                return Err(invalid(
                    "names are lower-case letters, digits and `_`, starting with a letter",
                ));
            }
            variables.insert(name.to_string(), value.to_string());
        }
        let mut env = Vec::new();
        for spec in &self.env {
            match spec.split_once('=') {
                Some(("", _)) => {
                    return Err(ComponentError::InvalidFlag {
                        flag: "--env",
                        value: spec.clone(),
                        reason: "empty variable name",
                    })
                }
                Some((name, value)) => env.push((name.to_string(), value.to_string())),
                None => match std::env::var(spec) {
                    Ok(value) => env.push((spec.clone(), value)),
                    Err(_) => tracing::warn!(
                        "--env {spec}: not set in host-runner's environment; the component will not see it"
                    ),
                },
            }
        }
        Ok(ComponentConfig {
            component: self.component,
            listen: self.listen,
            variables,
            env,
            allow_outbound: self.allow_outbound,
        })
    }
}

/// Spin's rule for variable names: `[a-z][a-z0-9_]*`.
fn valid_variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Why the component could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The file could not be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid component (a core module, a WASI 0.3 component, garbage).
    #[error("invalid component {path}: {message}")]
    Invalid {
        /// The path given.
        path: PathBuf,
        /// Wasmtime's explanation.
        message: String,
    },
    /// The component needs something this host does not provide, or does not export
    /// `wasi:http/incoming-handler@0.2.x`.
    #[error("cannot run component {path} as a Spin HTTP component: {message}")]
    Link {
        /// The path given.
        path: PathBuf,
        /// Wasmtime's explanation.
        message: String,
    },
    /// A `--var` or `--env` flag is malformed.
    #[error("invalid {flag} {value:?}: {reason}")]
    InvalidFlag {
        /// The flag (`--var`, `--env`).
        flag: &'static str,
        /// What was given.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A `--allow-outbound` entry is not an origin.
    #[error("invalid outbound origin {0:?} (expected SCHEME://HOST[:PORT] or *)")]
    InvalidOrigin(String),
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The engine could not be set up.
    #[error("cannot set up wasmtime: {0}")]
    Engine(String),
}

/// A running `serve-component` listener; dropping it stops accepting connections.
pub struct RunningComponent {
    /// The bound address (useful with port 0).
    pub listen_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl RunningComponent {
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
    let engine = Engine::new(&wasmtime::Config::new())
        .map_err(|e| ComponentError::Engine(format!("{e:#}")))?;
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
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ComponentError::Bind {
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
    });
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
    })
}

/// Links everything a Spin HTTP component may import and checks the component against it.
fn link(engine: &Engine, component: &Component) -> wasmtime::Result<ProxyPre<RequestState>> {
    let mut linker = Linker::<RequestState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    variables::add_to_linker::<RequestState, HasSelf<RequestState>>(&mut linker, |s| s)?;
    key_value::add_to_linker::<RequestState, HasSelf<RequestState>>(&mut linker, |s| s)?;
    ProxyPre::new(linker.instantiate_pre(component)?)
}

struct Server {
    pre: ProxyPre<RequestState>,
    variables: Arc<HashMap<String, String>>,
    key_value: Arc<HashMap<String, KeyValueStore>>,
    env: Vec<(String, String)>,
    origins: Arc<Vec<Origin>>,
}

impl Server {
    async fn serve_connection(self: Arc<Self>, stream: tokio::net::TcpStream) {
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

    /// Runs one request in a fresh instance.
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

    async fn dispatch(
        &self,
        request: hyper::Request<Incoming>,
    ) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>> {
        let wasi = WasiCtx::builder()
            .inherit_stdout()
            .inherit_stderr()
            .envs(&self.env)
            .build();
        let mut store = Store::new(
            self.pre.engine(),
            RequestState {
                wasi,
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                hooks: OutboundPolicy {
                    origins: self.origins.clone(),
                },
                variables: self.variables.clone(),
                key_value: self.key_value.clone(),
                open_stores: 0,
            },
        );
        let (sender, receiver) = oneshot::channel();
        let request = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let pre = self.pre.clone();
        // The guest keeps running after it sets the response head: it streams the body.
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, out)
                .await
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
struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundPolicy,
    variables: Arc<HashMap<String, String>>,
    /// The server's key-value stores, by label.
    key_value: Arc<HashMap<String, KeyValueStore>>,
    /// Stores this instance holds open.
    open_stores: u32,
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

impl variables::Host for RequestState {
    /// Spin's semantics: names are lower-case `[a-z][a-z0-9_]*`; an unset one is `undefined`.
    fn get(&mut self, name: String) -> Result<String, variables::Error> {
        if !valid_variable_name(&name) {
            return Err(variables::Error::InvalidName(name));
        }
        self.variables
            .get(&name)
            .cloned()
            .ok_or_else(|| variables::Error::Undefined(format!("no variable for {name:?}")))
    }
}

impl key_value::Host for RequestState {}

/// Spin's semantics: a label the component was not granted is `access-denied` (what Spin
/// answers for a label missing from `key_value_stores`); keys are any string.
impl key_value::HostStore for RequestState {
    fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<KeyValueStore>, key_value::Error>> {
        let Some(store) = self.key_value.get(&label).cloned() else {
            return Ok(Err(key_value::Error::AccessDenied));
        };
        if self.open_stores >= MAX_OPEN_STORES {
            return Ok(Err(key_value::Error::StoreTableFull));
        }
        let handle = self.table.push(store)?;
        self.open_stores += 1;
        Ok(Ok(handle))
    }

    fn get(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, key_value::Error>> {
        let value = self.table.get(&store)?.with(|map| map.get(&key).cloned());
        Ok(Ok(value))
    }

    fn set(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), key_value::Error>> {
        self.table.get(&store)?.with(|map| map.insert(key, value));
        Ok(Ok(()))
    }

    fn delete(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), key_value::Error>> {
        self.table.get(&store)?.with(|map| map.remove(&key));
        Ok(Ok(()))
    }

    fn exists(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, key_value::Error>> {
        let exists = self.table.get(&store)?.with(|map| map.contains_key(&key));
        Ok(Ok(exists))
    }

    fn get_keys(
        &mut self,
        store: Resource<KeyValueStore>,
    ) -> wasmtime::Result<Result<Vec<String>, key_value::Error>> {
        let keys = self
            .table
            .get(&store)?
            .with(|map| map.keys().cloned().collect());
        Ok(Ok(keys))
    }

    fn drop(&mut self, store: Resource<KeyValueStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        self.open_stores -= 1;
        Ok(())
    }
}

/// An allowed outbound origin; `None` parts match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
}

impl Origin {
    fn parse(spec: &str) -> Result<Origin, ComponentError> {
        let invalid = || ComponentError::InvalidOrigin(spec.to_string());
        if spec == "*" {
            return Ok(Origin {
                scheme: None,
                host: None,
                port: None,
            });
        }
        let (scheme, rest) = spec.split_once("://").ok_or_else(invalid)?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, Some(p)),
            _ => (rest, None),
        };
        if host.is_empty() || scheme.is_empty() {
            return Err(invalid());
        }
        let any = |s: &str| (s != "*").then(|| s.to_ascii_lowercase());
        let scheme = any(scheme);
        let port = match port {
            Some("*") => None,
            Some(p) => Some(p.parse().map_err(|_| invalid())?),
            None => match scheme.as_deref() {
                Some("http") => Some(80),
                Some("https") => Some(443),
                _ => None,
            },
        };
        Ok(Origin {
            scheme,
            host: any(host),
            port,
        })
    }

    fn allows(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let Some(host) = uri.host() else { return false };
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        self.scheme.as_ref().is_none_or(|s| *s == scheme)
            && self
                .host
                .as_ref()
                .is_none_or(|h| h.eq_ignore_ascii_case(host))
            && self.port.is_none_or(|p| p == port)
    }
}

/// Outbound HTTP: wasmtime-wasi-http's default client, limited to the allowed origins.
struct OutboundPolicy {
    origins: Arc<Vec<Origin>>,
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let allowed =
            self.origins.is_empty() || self.origins.iter().any(|o| o.allows(request.uri()));
        Box::new(async move {
            if !allowed {
                tracing::warn!(
                    "serve-component: outbound request to {} denied (not in --allow-outbound)",
                    request.uri()
                );
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_like_spin_allowed_outbound_hosts() {
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        let openai = Origin::parse("https://api.openai.com").unwrap();
        assert!(openai.allows(&uri("https://api.openai.com/v1/chat/completions")));
        assert!(!openai.allows(&uri("http://api.openai.com/v1")));
        assert!(!openai.allows(&uri("https://api.openai.com:8443/v1")));
        let local = Origin::parse("http://127.0.0.1:*").unwrap();
        assert!(local.allows(&uri("http://127.0.0.1:8100/v1")));
        assert!(!local.allows(&uri("http://10.0.0.1:8100/v1")));
        assert!(Origin::parse("*")
            .unwrap()
            .allows(&uri("https://x.example")));
        assert!(Origin::parse("api.openai.com").is_err());
        assert!(Origin::parse("http://h:notaport").is_err());
    }

    fn request_state(key_value: &Arc<HashMap<String, KeyValueStore>>) -> RequestState {
        RequestState {
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundPolicy {
                origins: Arc::new(Vec::new()),
            },
            variables: Arc::new(HashMap::new()),
            key_value: key_value.clone(),
            open_stores: 0,
        }
    }

    /// The guest's view of a handle it owns, as the bindings pass it to methods.
    fn borrow(store: &Resource<KeyValueStore>) -> Resource<KeyValueStore> {
        Resource::new_borrow(store.rep())
    }

    #[test]
    fn key_value_default_store_is_shared_by_every_instance() {
        use key_value::{Error, HostStore};
        let stores = Arc::new(key_value_stores());
        let (mut one, mut two) = (request_state(&stores), request_state(&stores));
        assert!(matches!(
            one.open("other".into()).unwrap(),
            Err(Error::AccessDenied)
        ));
        let a = one.open("default".into()).unwrap().unwrap();
        let b = two.open("default".into()).unwrap().unwrap();
        let key = || "switchyard/health/p/m".to_string();
        assert_eq!(one.get(borrow(&a), key()).unwrap().unwrap(), None);
        assert!(!one.exists(borrow(&a), key()).unwrap().unwrap());
        one.set(borrow(&a), key(), b"1,0,,0".to_vec())
            .unwrap()
            .unwrap();
        // Another instance sees it.
        assert_eq!(
            two.get(borrow(&b), key()).unwrap().unwrap().as_deref(),
            Some(&b"1,0,,0"[..])
        );
        assert!(two.exists(borrow(&b), key()).unwrap().unwrap());
        assert_eq!(two.get_keys(borrow(&b)).unwrap().unwrap(), vec![key()]);
        two.delete(borrow(&b), key()).unwrap().unwrap();
        two.delete(borrow(&b), key()).unwrap().unwrap();
        assert!(!one.exists(borrow(&a), key()).unwrap().unwrap());
        // A dropped handle is gone: using it traps.
        let stale = borrow(&a);
        HostStore::drop(&mut one, a).unwrap();
        assert!(one.get(stale, key()).is_err());
        assert_eq!(one.open_stores, 0);
    }

    #[test]
    fn key_value_open_stores_are_limited_per_instance() {
        use key_value::{Error, HostStore};
        let mut state = request_state(&Arc::new(key_value_stores()));
        let handles: Vec<_> = (0..MAX_OPEN_STORES)
            .map(|_| state.open("default".into()).unwrap().unwrap())
            .collect();
        assert!(matches!(
            state.open("default".into()).unwrap(),
            Err(Error::StoreTableFull)
        ));
        for handle in handles {
            HostStore::drop(&mut state, handle).unwrap();
        }
        assert!(state.open("default".into()).unwrap().is_ok());
    }
}
