//! Conversions between hyper's requests and responses and the header maps the filter sees:
//! Envoy's pseudo headers, hop-by-hop headers that never cross a proxy, and the framing
//! (`content-length` or chunked) of what the host sends on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::{CLUSTER_HEADER, PER_TRY_TIMEOUT_HEADER, TIMEOUT_HEADER};
use crate::body::HostBody;
use crate::headers::Headers;

/// Connection-level headers that never cross a proxy.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "expect",
];

/// The request header map as Envoy presents it to filters.
pub(super) fn request_header_map(parts: &http::request::Parts) -> Headers {
    let mut h = Headers::new();
    let authority = parts
        .headers
        .get(http::header::HOST)
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| {
            parts
                .uri
                .authority()
                .map(|a| a.as_str().as_bytes().to_vec())
        })
        .unwrap_or_default();
    h.add(b":authority", &authority);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    h.add(b":path", path.as_bytes());
    h.add(b":method", parts.method.as_str().as_bytes());
    h.add(b":scheme", b"http");
    for (k, v) in &parts.headers {
        if k == http::header::HOST || HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        h.add(k.as_str().as_bytes(), v.as_bytes());
    }
    if h.get(b"x-forwarded-proto").is_none() {
        h.add(b"x-forwarded-proto", b"http");
    }
    if h.get(b"x-request-id").is_none() {
        h.add(b"x-request-id", new_request_id().as_bytes());
    }
    h
}

fn new_request_id() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) as u128;
    let x = nanos ^ (n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
    let hex = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The response header map as Envoy presents it: `:status` first.
pub(super) fn response_header_map(parts: &http::response::Parts) -> Headers {
    let mut h = Headers::new();
    h.add(b":status", parts.status.as_str().as_bytes());
    for (k, v) in &parts.headers {
        if HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        h.add(k.as_str().as_bytes(), v.as_bytes());
    }
    h
}

/// Copy regular headers from the filter's map into an http builder's header map.
pub(super) fn copy_headers(from: &Headers, to: &mut http::HeaderMap, skip: &[&str]) {
    for (k, v) in from.iter() {
        if k.first() == Some(&b':')
            || HOP_BY_HOP.iter().any(|h| h.as_bytes() == k)
            || skip.iter().any(|h| h.as_bytes() == k)
        {
            continue;
        }
        match (HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) {
            (Ok(name), Ok(value)) => {
                to.append(name, value);
            }
            _ => tracing::warn!(
                header = %String::from_utf8_lossy(k),
                "dropping a header the filter set that is not valid HTTP"
            ),
        }
    }
}

/// Build the upstream request from the filter's (possibly rewritten) headers.
pub(super) fn upstream_request(
    headers: &Headers,
    body: HostBody,
    content_length: Option<usize>,
) -> Result<Request<HostBody>, String> {
    let method = headers.get_str(":method").unwrap_or("GET");
    let path = headers.get_str(":path").unwrap_or("/");
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).map_err(|e| format!("bad :method: {e}"))?)
        .uri(path)
        .body(body)
        .map_err(|e| format!("bad :path {path:?}: {e}"))?;
    copy_headers(
        headers,
        req.headers_mut(),
        &[
            CLUSTER_HEADER,
            TIMEOUT_HEADER,
            PER_TRY_TIMEOUT_HEADER,
            "content-length",
            "host",
        ],
    );
    if let Some(authority) = headers.get(b":authority").filter(|a| !a.is_empty()) {
        let v = HeaderValue::from_bytes(authority).map_err(|e| format!("bad :authority: {e}"))?;
        req.headers_mut().insert(http::header::HOST, v);
    }
    if let Some(n) = content_length {
        req.headers_mut()
            .insert(http::header::CONTENT_LENGTH, n.into());
    }
    Ok(req)
}

/// Build the downstream response head from the filter's (possibly rewritten) headers.
pub(super) fn downstream_response(
    headers: &Headers,
    body: HostBody,
    content_length: ContentLength,
) -> Response<HostBody> {
    let status = headers
        .get_str(":status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let skip: &[&str] = match content_length {
        ContentLength::Keep => &[],
        _ => &["content-length"],
    };
    copy_headers(headers, resp.headers_mut(), skip);
    if let ContentLength::Set(n) = content_length {
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, n.into());
    }
    resp
}

#[derive(Clone, Copy)]
pub(super) enum ContentLength {
    /// Keep whatever the headers say (bodiless responses: HEAD, 204, 304).
    Keep,
    /// The body is complete: its exact length.
    Set(usize),
    /// The body streams and may be rewritten: no length, chunked framing.
    Remove,
}
