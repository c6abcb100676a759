//! Google Vertex AI (Gemini on Vertex): the Gemini `generateContent` wire format behind
//! project- and region-scoped URLs
//! (`/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse`) and an OAuth 2 access token.
//!
//! Wire format: <https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/inference>
//! and <https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.publishers.models/generateContent>;
//! bodies, answers and streams are the Gemini API's, so [`crate::providers::gemini`]
//! translates them (fixtures in `filter/core/tests/fixtures/vertex/` note their source).
//!
//! Credentials: the access token comes from the secret `api_key_secret` names and is sent as
//! `Authorization: Bearer`. Vertex tokens live an hour. Minting them from a service-account
//! key (an RS256 JWT exchanged at the key's `token_uri`) is I/O and key custody, so it runs on
//! the native side, the same for every host: the control plane (`--service-account
//! NAME=key.json`, `control_plane::credentials`) mints the token, refreshes it before it
//! expires, and sends it to the edges in the key-sync snapshot (`KeySnapshot::credentials`),
//! where it takes precedence over the host's own secret of that name. Envoy and host-runner
//! (filter.wasm) apply it on their key-sync tick, the Spin component with the snapshot it
//! keeps between requests; a token set directly on the host still works without a control
//! plane.

use serde::Deserialize;

use crate::canonical::ChatRequest;
use crate::error::{ErrorKind, GatewayError};
use crate::providers::{encode_segment, gemini, EgressRequest};

/// A Vertex provider's project and region (`"vertex"` in the provider config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VertexConfig {
    /// The Google Cloud project id.
    pub project: String,
    /// The region (`us-central1`, `europe-west4`, ...) or `global`.
    pub location: String,
}

impl VertexConfig {
    /// The regional endpoint (`global` has none in its host name).
    pub fn default_base_url(&self) -> String {
        if self.location == "global" {
            "https://aiplatform.googleapis.com".to_string()
        } else {
            format!("https://{}-aiplatform.googleapis.com", self.location)
        }
    }
}

/// The native path of a model's `generateContent` (or streaming) method.
pub fn chat_path(vertex: &VertexConfig, upstream_model: &str, stream: bool) -> String {
    let model = upstream_model
        .rsplit_once("/models/")
        .map_or(upstream_model, |(_, m)| m);
    let method = if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    format!(
        "/v1/projects/{}/locations/{}/publishers/google/models/{}:{method}",
        encode_segment(&vertex.project),
        encode_segment(&vertex.location),
        encode_segment(model),
    )
}

/// Builds a Vertex request from canonical form.
pub fn build_chat(
    req: &ChatRequest,
    upstream_model: &str,
    vertex: Option<&VertexConfig>,
) -> Result<EgressRequest, GatewayError> {
    let vertex = vertex.ok_or_else(|| {
        GatewayError::new(
            ErrorKind::Internal,
            "a `vertex` provider needs `vertex.project` and `vertex.location`",
        )
    })?;
    let body = gemini::request_body(req)?;
    let body = serde_json::to_vec(&body)
        .map_err(|e| GatewayError::new(ErrorKind::Internal, format!("encoding request: {e}")))?;
    Ok(EgressRequest {
        path: chat_path(vertex, upstream_model, req.stream),
        headers: vec![("content-type".into(), "application/json".into())],
        body,
    })
}
