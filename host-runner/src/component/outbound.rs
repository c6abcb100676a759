//! Outbound HTTP from the component: wasmtime-wasi-http's default client, limited to the
//! `--allow-outbound` origins the way Spin's `allowed_outbound_hosts` limits a component.

use std::future::Future;
use std::sync::Arc;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

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

/// Outbound HTTP: wasmtime-wasi-http's default client, limited to the allowed origins.
pub(super) struct OutboundPolicy {
    pub(super) origins: Arc<Vec<Origin>>,
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
}
