//! HTTP calls the filter dispatches itself (`proxy_dispatch_http_call`), outside any stream:
//! performed on the host's runtime against a configured cluster, their outcome delivered back
//! to the VM as `proxy_on_http_call_response`.

use http_body_util::BodyExt;

use super::convert::{response_header_map, upstream_request};
use crate::body::HostBody;
use crate::context::{CallResponse, PendingCall};
use crate::vm::World;

/// Perform an HTTP call dispatched by the guest. `None` is a failed call, which the guest
/// sees as a response without headers, body or trailers (as in Envoy).
pub(crate) async fn http_call(world: &World, call: &PendingCall) -> Option<CallResponse> {
    let cluster = world.clusters.get(&call.cluster)?;
    let length = (!call.body.is_empty()).then_some(call.body.len());
    let req = match upstream_request(&call.headers, HostBody::full(call.body.clone()), length) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = e, "invalid dispatch_http_call request");
            return None;
        }
    };
    let started = tokio::time::Instant::now();
    let resp = match cluster.send(req, Some(call.timeout)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(cluster = call.cluster, error = %e, "dispatch_http_call failed");
            return None;
        }
    };
    let (parts, body) = resp.into_parts();
    let remaining = call.timeout.saturating_sub(started.elapsed());
    let collected = match tokio::time::timeout(remaining, body.collect()).await {
        Ok(Ok(c)) => c,
        _ => {
            tracing::warn!(
                cluster = call.cluster,
                "dispatch_http_call response body failed"
            );
            return None;
        }
    };
    let trailers = collected
        .trailers()
        .map(|t| t.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect())
        .unwrap_or_default();
    Some(CallResponse {
        headers: response_header_map(&parts),
        body: collected.to_bytes(),
        trailers,
    })
}
