//! Outbound HTTP from the component, limited to the `--allow-outbound` origins the way Spin's
//! `allowed_outbound_hosts` limits a component.
//!
//! Requests go through one connection pool shared by every instance ([`OutboundClient`]):
//! an instance lives for one request, so a client of its own would open (and, over TLS,
//! handshake) a new connection for every upstream call. wasmtime-wasi-http's default client
//! does exactly that; it is still used when pooling is off, and for a request that sets its
//! own connect timeout (a pooled connection may already be open, so that timeout could not
//! be honoured the same way).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::ComponentError;

/// An allowed outbound origin; `None` parts match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Origin {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
}

impl Origin {
    pub(super) fn parse(spec: &str) -> Result<Origin, ComponentError> {
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

/// wasmtime-wasi-http's default for each timeout a request leaves unset.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The pooled client every instance of one server shares (cheap to clone).
#[derive(Clone)]
pub(super) struct OutboundClient {
    client: Client<HttpsConnector<HttpConnector>, WasiBody>,
}

impl OutboundClient {
    /// A pool that keeps an idle connection open for `idle` (plain HTTP and HTTPS, HTTP/1.1,
    /// the server's certificate checked against the webpki roots, as the default client does).
    pub(super) fn new(idle: Duration) -> Result<OutboundClient, ComponentError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ComponentError::Engine(format!("outbound TLS: {e}")))?
            .with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            })
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        // A small request's last write must not wait for the upstream's delayed ACK.
        tcp.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle)
            .build(connector);
        Ok(OutboundClient { client })
    }

    /// Sends `request` on a pooled connection. Connecting counts against the first-byte
    /// timeout (a reused connection needs none).
    async fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> wasmtime_wasi_http::Result<http::Response<WasiBody>> {
        let first_byte = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let between_bytes = options
            .and_then(|o| o.between_bytes_timeout)
            .unwrap_or(DEFAULT_TIMEOUT)
            // tokio's interval panics on zero; 1 ns is as good as zero.
            .max(Duration::from_nanos(1));
        let response = tokio::time::timeout(first_byte, self.client.request(request))
            .await
            .map_err(|_| HttpError::ConnectionReadTimeout)?
            .map_err(|e| pooled_error(&e))?;
        let mut silence = tokio::time::interval(between_bytes);
        silence.reset();
        Ok(response.map(|incoming| TimedBody { incoming, silence }.boxed_unsync()))
    }
}

/// The error the default client would have given for what went wrong, so the component
/// sees the same `error-code` either way (a refused connection is `connection-refused`, a
/// bad certificate a TLS error, a failed lookup a DNS error).
fn pooled_error(error: &hyper_util::client::legacy::Error) -> HttpError {
    let mut io = None;
    let mut tls = false;
    let mut hyper_error = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<std::io::Error>() {
            io = Some(e);
        }
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            hyper_error = Some(e);
        }
        if let Some(e) = e.downcast_ref::<HttpError>() {
            // The guest's own request body failed (e.g. shorter than its Content-Length).
            return match e {
                HttpError::HttpRequestBodySize(size) => HttpError::HttpRequestBodySize(*size),
                other => HttpError::InternalError(Some(other.to_string())),
            };
        }
        tls |= e.is::<rustls::Error>();
        source = e.source();
    }
    if error.is_connect() {
        let cause = match io {
            Some(io) => std::io::Error::new(io.kind(), io.to_string()),
            None => std::io::Error::other(error.to_string()),
        };
        return if tls {
            HttpError::Tls(cause)
        } else {
            HttpError::Connect(cause)
        };
    }
    match hyper_error {
        Some(e) if e.is_timeout() => HttpError::HttpResponseTimeout,
        Some(e) if e.is_incomplete_message() || e.is_canceled() || e.is_closed() => {
            HttpError::ConnectionTerminated
        }
        _ if io.is_some() => HttpError::ConnectionTerminated,
        _ => HttpError::HttpProtocolError,
    }
}

/// A pooled response body with the request's between-bytes timeout, as the default client
/// gives its own.
struct TimedBody {
    incoming: Incoming,
    silence: tokio::time::Interval,
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.silence.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) if e.is_timeout() => {
                Poll::Ready(Some(Err(HttpError::HttpResponseTimeout)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::Hyper(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(self.silence.poll_tick(cx));
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// Outbound HTTP for one instance: the allowed origins, and the server's pool (`None`: a
/// connection per request, wasmtime-wasi-http's default client).
pub(super) struct OutboundPolicy {
    pub(super) origins: Arc<Vec<Origin>>,
    pub(super) pool: Option<OutboundClient>,
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
        let pool = self
            .pool
            .clone()
            .filter(|_| options.is_none_or(|o| o.connect_timeout.is_none()));
        Box::new(async move {
            if !allowed {
                tracing::warn!(
                    "serve-component: outbound request to {} denied (not in --allow-outbound)",
                    request.uri()
                );
                return Err(HttpError::HttpRequestDenied);
            }
            if let Some(pool) = pool {
                // The pool's own task drives the connection: nothing left for the caller.
                let response = pool.send(request, options).await?;
                return Ok((
                    response,
                    Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                ));
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
}
