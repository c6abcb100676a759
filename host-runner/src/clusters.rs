//! Upstream clusters: the targets of Envoy-style `cluster_header` routing.
//!
//! The filter names a cluster in `x-switchyard-cluster`; the host forwards the request there.
//! Failures map to the statuses Envoy's router produces, so the filter's fallback logic sees
//! the same thing locally as in production: connect failure → 503, timeout → 504.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::HostBody;
use crate::config::ClusterConfig;
use crate::error::HostError;

/// Why an upstream request produced no response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No cluster of that name (or no `x-switchyard-cluster` header at all).
    #[error("cluster not found: {0:?}")]
    UnknownCluster(String),
    /// TCP connect failed or timed out.
    #[error("connection failure: {0}")]
    Connect(String),
    /// No response headers within the request timeout.
    #[error("upstream request timeout")]
    Timeout,
    /// The connection broke before response headers.
    #[error("connection termination: {0}")]
    Reset(String),
}

impl UpstreamError {
    /// The status and body Envoy's router would answer with.
    pub fn local_reply(&self) -> (u16, &'static str) {
        match self {
            UpstreamError::UnknownCluster(_) => (503, "no healthy upstream"),
            UpstreamError::Connect(_) => (
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            ),
            UpstreamError::Timeout => (504, "upstream request timeout"),
            UpstreamError::Reset(_) => (
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            ),
        }
    }
}

/// One upstream cluster with its own connection pool.
pub struct Cluster {
    /// The name the filter routes to (`x-switchyard-cluster`).
    pub name: String,
    /// `host:port`.
    pub authority: String,
    /// Longest wait for response headers (Envoy's route timeout); `None` waits forever.
    pub request_timeout: Option<Duration>,
    /// Longest silence between response body chunks.
    pub idle_timeout: Option<Duration>,
    client: Client<HttpConnector, HostBody>,
}

impl Cluster {
    fn new(config: &ClusterConfig) -> Result<Self, HostError> {
        let address = config.address.trim();
        if address.starts_with("https://") {
            return Err(HostError::InvalidCluster(format!(
                "cluster {:?}: TLS upstreams are not supported, use a plain http address",
                config.name
            )));
        }
        let authority = address
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let parsed: Result<http::uri::Authority, _> = authority.parse();
        match parsed {
            Ok(a) if a.port_u16().is_some() && !config.name.is_empty() => {}
            _ => {
                return Err(HostError::InvalidCluster(format!(
                    "cluster {:?}: address {:?} is not HOST:PORT",
                    config.name, config.address
                )))
            }
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self {
            name: config.name.clone(),
            authority,
            request_timeout: (config.request_timeout_ms > 0)
                .then(|| Duration::from_millis(config.request_timeout_ms)),
            idle_timeout: (config.idle_timeout_ms > 0)
                .then(|| Duration::from_millis(config.idle_timeout_ms)),
            client,
        })
    }

    /// Send `req` (whose URI holds only the path and query) to this cluster and wait for the
    /// response headers, within `timeout` if given (else the cluster's request timeout).
    pub async fn send(
        &self,
        mut req: Request<HostBody>,
        timeout: Option<Duration>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".to_string());
        let uri: Uri = format!("http://{}{}", self.authority, path)
            .parse()
            .map_err(|e| UpstreamError::Reset(format!("bad request path {path:?}: {e}")))?;
        *req.uri_mut() = uri;
        let fut = self.client.request(req);
        let result = match timeout.or(self.request_timeout) {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| UpstreamError::Timeout)?,
            None => fut.await,
        };
        result.map_err(|e| {
            let detail = error_chain(&e);
            if e.is_connect() {
                UpstreamError::Connect(detail)
            } else {
                UpstreamError::Reset(detail)
            }
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// All clusters by name.
#[derive(Default)]
pub struct Clusters {
    map: HashMap<String, Arc<Cluster>>,
}

impl Clusters {
    /// Build clusters from configuration; names must be unique.
    pub fn new(configs: &[ClusterConfig]) -> Result<Self, HostError> {
        let mut map = HashMap::new();
        for c in configs {
            let cluster = Cluster::new(c)?;
            if map.insert(c.name.clone(), Arc::new(cluster)).is_some() {
                return Err(HostError::InvalidCluster(format!(
                    "cluster {:?} is defined twice",
                    c.name
                )));
            }
        }
        Ok(Self { map })
    }

    /// Look a cluster up by name.
    pub fn get(&self, name: &str) -> Option<Arc<Cluster>> {
        self.map.get(name).cloned()
    }

    /// Cluster names and addresses, for the startup line.
    pub fn describe(&self) -> Vec<String> {
        let mut v: Vec<_> = self
            .map
            .values()
            .map(|c| format!("{}={}", c.name, c.authority))
            .collect();
        v.sort();
        v
    }
}
