//! Runner configuration: what the CLI (or a test) hands to [`crate::start`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::HostError;

/// Envoy's default cluster connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long an idle upstream connection is kept for reuse by default.
pub const DEFAULT_POOL_IDLE_TIMEOUT_MS: u64 = 60_000;
/// No response timeout by default, like the project's `envoy.yaml` (route `timeout: 0s`):
/// model responses can legitimately take minutes. Set one per cluster to get 504s.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 0;

/// One upstream cluster, the target of `x-switchyard-cluster: <name>`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The name the filter puts in `x-switchyard-cluster`.
    pub name: String,
    /// `host:port` of a plain HTTP/1.1 upstream (an `http://` prefix is accepted).
    pub address: String,
    /// TCP connect timeout; a connect failure or timeout answers 503.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Time allowed until the upstream's response headers arrive (504 after it); 0 (the
    /// default) disables it. It never caps a streaming response body.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// Longest silence allowed between response body chunks once the headers arrived, like
    /// Envoy's `per_try_idle_timeout`; 0 (the default) disables it. A stalled event stream
    /// then ends for the filter (which closes it with an error event); any other stalled body
    /// resets the client.
    #[serde(default)]
    pub idle_timeout_ms: u64,
    /// How long an idle upstream connection stays in the pool for the next request; 0 keeps
    /// none (a connection per request). Keep it below the upstream's own keep-alive timeout
    /// (Node's servers: 5 s; nginx: 75 s), so that the pool, not the server, closes idle
    /// connections: a request sent on a connection the server is closing that instant fails
    /// (a reset: a 502, or the next deployment).
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout_ms: u64,
}

fn default_connect_timeout() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}

fn default_pool_idle_timeout() -> u64 {
    DEFAULT_POOL_IDLE_TIMEOUT_MS
}

fn default_request_timeout() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_MS
}

impl ClusterConfig {
    /// A cluster with default timeouts.
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            address: address.into(),
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            idle_timeout_ms: 0,
            pool_idle_timeout_ms: DEFAULT_POOL_IDLE_TIMEOUT_MS,
        }
    }

    /// Parse the CLI form `NAME=HOST:PORT`.
    pub fn parse_flag(flag: &str) -> Result<Self, HostError> {
        let (name, address) = flag.split_once('=').ok_or_else(|| {
            HostError::InvalidCluster(format!("expected NAME=HOST:PORT, got {flag:?}"))
        })?;
        Ok(Self::new(name.trim(), address.trim()))
    }
}

/// The `--cluster-config` document (JSON or YAML):
///
/// ```yaml
/// clusters:
///   - name: openai
///     address: 127.0.0.1:9001
///     connect_timeout_ms: 1000   # optional, default 5000
///     request_timeout_ms: 60000  # optional, default 0 = no limit
///     idle_timeout_ms: 30000     # optional, default 0 = no limit
///     pool_idle_timeout_ms: 4000 # optional, default 60000; 0 = no reuse
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The clusters, in file order.
    pub clusters: Vec<ClusterConfig>,
}

impl ClusterFile {
    /// Parse JSON or YAML (YAML is a superset of JSON, so one parser reads both).
    pub fn parse(text: &str) -> Result<Self, HostError> {
        serde_yaml::from_str(text).map_err(|e| HostError::InvalidConfig {
            what: "cluster config",
            message: e.to_string(),
        })
    }

    /// Read and parse a file.
    pub fn load(path: &Path) -> Result<Self, HostError> {
        let text = std::fs::read_to_string(path).map_err(|source| HostError::ReadFile {
            what: "cluster config",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }
}

/// proxy-wasm log levels, as returned by `proxy_get_log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WasmLogLevel {
    /// Everything, including per-callback tracing.
    Trace = 0,
    /// Debugging detail.
    Debug = 1,
    /// Normal operation (the filter's usage records log here).
    Info = 2,
    /// Something unexpected that the filter handled.
    Warn = 3,
    /// A failure.
    Error = 4,
    /// A failure the filter cannot recover from.
    Critical = 5,
}

/// Everything needed to run a filter.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The compiled filter (`filter.wasm` bytes; WAT text is accepted too, for tests).
    pub wasm: Vec<u8>,
    /// Plugin configuration bytes given to `proxy_on_configure` (the gateway config file).
    pub plugin_config: Vec<u8>,
    /// VM configuration bytes given to `proxy_on_vm_start` (Envoy's `vm_config.configuration`).
    pub vm_config: Vec<u8>,
    /// Upstream clusters.
    pub clusters: Vec<ClusterConfig>,
    /// The WASI environment of the VM (Envoy's `vm_config.environment_variables`); nothing else
    /// from the host environment is visible to the guest.
    pub env: Vec<(String, String)>,
    /// Worker threads, each with its own VM instance (Envoy's `--concurrency`).
    pub workers: usize,
    /// Data-plane listener.
    pub listen: SocketAddr,
    /// Admin listener (`/metrics`, `/ready`), if any.
    pub admin: Option<SocketAddr>,
    /// Longest a single guest callback may run before it is interrupted (a trap → 500).
    pub guest_timeout: Duration,
    /// Largest body the filter may buffer (Envoy's buffer limit): 413 for requests, 500 for
    /// responses beyond it.
    pub max_buffer_bytes: usize,
    /// Level reported to the guest by `proxy_get_log_level`.
    pub wasm_log_level: WasmLogLevel,
    /// `plugin_name` property.
    pub plugin_name: String,
    /// `plugin_root_id` property.
    pub root_id: String,
    /// `plugin_vm_id` property; also the namespace of shared queues.
    pub vm_id: String,
    /// Where compiled modules are cached (keyed by the wasm's SHA-256 and the engine
    /// configuration); `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
}

impl RunnerConfig {
    /// A configuration with Envoy-like defaults: one worker, ephemeral loopback ports.
    pub fn new(wasm: Vec<u8>, plugin_config: Vec<u8>) -> Self {
        Self {
            wasm,
            plugin_config,
            vm_config: Vec::new(),
            clusters: Vec::new(),
            env: Vec::new(),
            workers: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            guest_timeout: Duration::from_secs(10),
            max_buffer_bytes: 32 * 1024 * 1024,
            wasm_log_level: WasmLogLevel::Info,
            plugin_name: "switchyard".to_string(),
            root_id: String::new(),
            vm_id: String::new(),
            cache_dir: Some(default_cache_dir()),
        }
    }
}

/// `$HOST_RUNNER_CACHE_DIR`, else `host-runner-cache` in the system temp directory.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("HOST_RUNNER_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("host-runner-cache"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_yaml_and_json_cluster_files() {
        let y = ClusterFile::parse(
            "clusters:\n  - name: a\n    address: 127.0.0.1:1\n    request_timeout_ms: 70\n    idle_timeout_ms: 9\n",
        )
        .unwrap();
        assert_eq!(y.clusters[0].request_timeout_ms, 70);
        assert_eq!(y.clusters[0].idle_timeout_ms, 9);
        assert_eq!(
            y.clusters[0].pool_idle_timeout_ms,
            DEFAULT_POOL_IDLE_TIMEOUT_MS
        );
        assert_eq!(y.clusters[0].connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS);
        let j = ClusterFile::parse(r#"{"clusters":[{"name":"b","address":"h:2"}]}"#).unwrap();
        assert_eq!(j.clusters[0], ClusterConfig::new("b", "h:2"));
        assert!(ClusterFile::parse("clusters: [{name: a}]").is_err());
        assert!(ClusterConfig::parse_flag("nope").is_err());
        assert_eq!(
            ClusterConfig::parse_flag("x=127.0.0.1:80").unwrap(),
            ClusterConfig::new("x", "127.0.0.1:80")
        );
    }
}
