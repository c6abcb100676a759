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
        let mut builder = Client::builder(TokioExecutor::new());
        if config.pool_idle_timeout_ms == 0 {
            builder.pool_max_idle_per_host(0);
        } else {
            builder.pool_idle_timeout(Duration::from_millis(config.pool_idle_timeout_ms));
        }
        let client = builder.build(connector);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A keep-alive HTTP/1.1 upstream that answers every request with an empty 200 and counts
    /// the connections it accepted.
    async fn counting_upstream() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        // Bodiless GETs: one request per blank line.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    async fn get(cluster: &Cluster) {
        let req = Request::get("/").body(HostBody::empty()).unwrap();
        let response = cluster.send(req, None).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    }

    /// Two requests 300 ms apart through a cluster with `pool_idle_timeout_ms`: how many
    /// upstream connections they took.
    async fn connections_for_two_requests(pool_idle_timeout_ms: u64) -> usize {
        let (address, accepted) = counting_upstream().await;
        let mut config = ClusterConfig::new("up", address);
        config.pool_idle_timeout_ms = pool_idle_timeout_ms;
        let cluster = Cluster::new(&config).unwrap();
        get(&cluster).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        get(&cluster).await;
        accepted.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn an_idle_connection_is_reused_within_the_pool_idle_timeout() {
        assert_eq!(connections_for_two_requests(60_000).await, 1);
    }

    #[tokio::test]
    async fn the_pool_closes_a_connection_idle_longer_than_its_timeout() {
        assert_eq!(connections_for_two_requests(50).await, 2);
    }

    #[tokio::test]
    async fn a_zero_pool_idle_timeout_keeps_no_connection() {
        assert_eq!(connections_for_two_requests(0).await, 2);
    }
}
