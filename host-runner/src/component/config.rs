//! What `serve-component` serves and how: the configuration and the command line that builds
//! it, shared by the binary and the tests so both follow the same rules.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::variables::valid_variable_name;
use super::ComponentError;

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
    /// Instances alive at once (one per request in flight), kept in wasmtime's pooling
    /// allocator; requests beyond it wait for a free slot. `None` allocates every instance's
    /// memory on demand (mmap and munmap per request) instead.
    pub pooled_instances: Option<u32>,
    /// How long an idle outbound connection stays open for the next request of any
    /// instance; `None` opens a connection per outbound request.
    pub outbound_idle: Option<Duration>,
    /// How an instance is reused: each request in a fresh one (Spin's and wasmtime's default
    /// for a `wasi:http@0.2` component), or up to a number of requests, one after another.
    pub reuse: InstanceReuse,
}

/// How many requests one instance serves, one after another, before it is dropped
/// (`--max-instance-reuse-count`, the flag `wasmtime serve` and Spin's HTTP trigger have).
///
/// With `max_requests` 1, every request gets a fresh instance: nothing a request leaves in
/// the instance's memory can reach another. Above 1, an instance that answered without a
/// trap waits, idle, for the next request, which then skips instantiation and finds what the
/// component kept in its memory (the edge worker keeps its parsed gateway config); an
/// instance that trapped is always dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceReuse {
    /// Requests one instance serves at most (1: a fresh instance per request).
    pub max_requests: u32,
    /// How long an idle instance waits for its next request before it is dropped (its pool
    /// slot and memory freed).
    pub idle_timeout: Duration,
}

impl InstanceReuse {
    /// A fresh instance for every request.
    pub const FRESH: InstanceReuse = InstanceReuse {
        max_requests: 1,
        idle_timeout: Duration::from_millis(DEFAULT_IDLE_INSTANCE_TIMEOUT_MS),
    };
}

impl Default for InstanceReuse {
    fn default() -> Self {
        Self::FRESH
    }
}

/// Requests one instance serves unless `--max-instance-reuse-count` says otherwise: 1, a
/// fresh instance per request, as Spin and `wasmtime serve` give a WASIp2 component by
/// default.
pub const DEFAULT_MAX_INSTANCE_REUSE_COUNT: u32 = 1;

/// How long an idle reusable instance is kept unless `--idle-instance-timeout-ms` says
/// otherwise: a steady stream of requests finds it warm, a pause gives its memory back.
pub const DEFAULT_IDLE_INSTANCE_TIMEOUT_MS: u64 = 1_000;

/// How long `serve-component` keeps an idle outbound connection unless
/// `--outbound-idle-ms` says otherwise: long enough to carry a steady stream of requests,
/// shorter than the keep-alive public HTTP servers commonly allow, so the pool, not the
/// server, closes an idle connection (a close from the server can race a request sent on it).
pub const DEFAULT_OUTBOUND_IDLE_MS: u64 = 30_000;

/// Requests a pooled `serve-component` runs at once unless `--max-instances` says otherwise
/// (wasmtime's own default pool size; Spin's too).
pub const DEFAULT_POOLED_INSTANCES: u32 = 1000;

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

    /// Requests served at once, each in its own instance from a pool reserved at start (as
    /// Spin's pooling allocator does); more wait for a free instance. The pool reserves
    /// address space (not memory) for this many linear memories.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_POOLED_INSTANCES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_instances: u32,

    /// Allocate each request's instance on demand instead of from a pool (slower: an mmap
    /// and munmap per request; for hosts that limit address space).
    #[arg(long)]
    pub no_pooling: bool,

    /// Milliseconds an idle outbound connection is kept for the next request (every
    /// instance shares the pool); 0 opens a new connection for each outbound request.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_OUTBOUND_IDLE_MS)]
    pub outbound_idle_ms: u64,

    /// Requests one instance serves, one after another, before it is dropped (as
    /// `wasmtime serve`'s flag of the same name). 1 (the default; `wasmtime serve`'s too for a
    /// WASIp2 component) gives every request a fresh instance; more saves the instantiation
    /// and lets the component keep what it built (its parsed config) for the next request,
    /// and lets one request see what an earlier one left in the instance's memory. An
    /// instance that trapped is never reused.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_INSTANCE_REUSE_COUNT,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_instance_reuse_count: u32,

    /// Milliseconds an idle instance waits for another request before it is dropped (with
    /// `--max-instance-reuse-count` above 1).
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_IDLE_INSTANCE_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_instance_timeout_ms: u64,
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
            pooled_instances: (!self.no_pooling).then_some(self.max_instances),
            outbound_idle: (self.outbound_idle_ms > 0)
                .then(|| Duration::from_millis(self.outbound_idle_ms)),
            reuse: InstanceReuse {
                max_requests: self.max_instance_reuse_count,
                idle_timeout: Duration::from_millis(self.idle_instance_timeout_ms),
            },
        })
    }
}
