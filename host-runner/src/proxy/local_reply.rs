//! Local replies: answers the filter (`send_http_response`) or the host itself (no route,
//! upstream failure, buffer limits, a failing filter) makes instead of an upstream response.
//!
//! As in Envoy, a local reply still passes through the filter's response callbacks once, so
//! the filter can rewrite it (e.g. into the caller's error dialect) or meter it.

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};

use super::convert::{copy_headers, downstream_response, ContentLength};
use super::stream::Stream;
use crate::body::HostBody;
use crate::context::LocalReply;
use crate::error::VmError;
use crate::headers::Headers;

pub(super) fn plain(status: u16, text: &str) -> Response<HostBody> {
    let body = Bytes::from(format!("{text}\n"));
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("content-length", body.len())
        .body(HostBody::full(body))
        .expect("static response parts are valid")
}

/// A host-made reply as an upstream response, for the filter's response callbacks.
pub(super) fn reply_response(reply: LocalReply) -> Response<http_body_util::Full<Bytes>> {
    let mut resp = Response::new(http_body_util::Full::new(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    copy_headers(&reply.headers, resp.headers_mut(), &[]);
    if !resp.headers().contains_key(http::header::CONTENT_TYPE) {
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    resp
}

pub(super) fn text_reply(status: u16, body: &str) -> LocalReply {
    LocalReply {
        status,
        headers: Headers::new(),
        body: Bytes::from(format!("{body}\n")),
    }
}

impl Stream {
    /// Answer with a filter-made or host-made reply. With `run_filter`, the reply passes
    /// through the filter's response callbacks first, as Envoy's local replies do.
    pub(super) async fn local_reply(&mut self, reply: LocalReply, run_filter: bool) {
        if self.head.is_none() {
            self.reset("local reply after the response started").await;
            return;
        }
        let mut headers = Headers::new();
        headers.add(b":status", reply.status.to_string().as_bytes());
        for (k, v) in reply.headers.iter() {
            if k != b":status" {
                headers.add(k, v);
            }
        }
        if !reply.body.is_empty() && headers.get(b"content-type").is_none() {
            headers.add(b"content-type", b"text/plain");
        }
        let (headers, body) = if run_filter {
            let s = self.s;
            let body = reply.body.clone();
            let result = self
                .vm
                .with(move |vm| {
                    let eos = body.is_empty();
                    vm.on_response_headers(s, headers, eos)?;
                    if !eos {
                        vm.on_response_body(s, &body, true)?;
                    }
                    Ok::<_, VmError>((vm.response_headers(s)?, vm.take_response_body(s)?))
                })
                .await
                .and_then(|r| r);
            match result {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "local reply failed in the filter");
                    self.send_head(plain(500, "wasm filter failed"));
                    return;
                }
            }
        } else {
            (headers, reply.body)
        };
        let len = body.len();
        let resp = if self.bodiless_response {
            downstream_response(&headers, HostBody::empty(), ContentLength::Set(len))
        } else {
            downstream_response(&headers, HostBody::full(body), ContentLength::Set(len))
        };
        self.send_head(resp);
    }
}
