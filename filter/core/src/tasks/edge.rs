//! The edge's side of the task plane: which requests go to it, and how.
//!
//! `/v1/tasks…` and `/v1/webhook-settings`, and any generation endpoint (chat completions,
//! Anthropic messages, embeddings, images, speech, transcriptions) sent with `Prefer: respond-async` (RFC 7240), are
//! authenticated here like every request, then forwarded to the task plane with the edge
//! token as `Authorization: Bearer` and the client's key id (`x-switchyard-key-id`) and team;
//! the task plane trusts those headers only with that token. A submission's `model` is
//! checked here too (known, and allowed for the key), so the task plane never sees a request
//! the edge would refuse. The task plane's answer is the client's, as it came (its errors
//! are already in the caller's dialect), with a `Location` for an accepted task; when the
//! task plane cannot be reached the client gets a 502/504 in its dialect.
//!
//! The exchange ([`crate::exchange`]) drives this: one buffered call, never a fallback.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Dialect, ErrorKind, GatewayError};
use crate::exchange::Failure;
use crate::gateway::{Gateway, LocalReply, RequestHead, UpstreamRequest};
use crate::providers::BaseUrl;

/// Client headers a host passes in [`RequestHead::forwarded`] (only these reach the task
/// plane; credentials never do).
pub const FORWARDED_HEADERS: [&str; 4] =
    ["content-type", "prefer", "idempotency-key", WEBHOOK_HEADER];

/// Header carrying the authenticated key id to the task plane.
pub const KEY_ID_HEADER: &str = "x-switchyard-key-id";
/// Header carrying the key's team to the task plane.
pub const TEAM_HEADER: &str = "x-switchyard-team";
/// Header naming the endpoint whose request a submission carries (an edge forwarding a
/// generation endpoint, or a direct caller doing the same).
pub const OPERATION_HEADER: &str = "x-switchyard-operation";
/// Header with the webhook URL for an endpoint-shaped submission (its body is the
/// endpoint's own request, with no room for one).
pub const WEBHOOK_HEADER: &str = "x-switchyard-webhook";
/// Header bounding how long a synchronous submission (the facade) waits for its result.
pub const WAIT_HEADER: &str = "x-switchyard-wait-ms";
/// Header naming a synchronous submission's task: the id an edge chose for it (trusted with
/// the edge token only), and the task of a facade answer to the client.
pub const TASK_ID_HEADER: &str = "x-switchyard-task-id";

/// Where the task plane is (the gateway config's `tasks` section). Every field defaults to
/// the `control_plane` section's, since both usually live in the same `gpu-backend`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TasksConfig {
    /// Scheme, host and optional path prefix of the task plane.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The host's upstream name for it.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Name of the secret holding the edge token.
    #[serde(default)]
    pub token_secret: Option<String>,
    /// Deadline of one call to the task plane.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
}

fn default_call_timeout_ms() -> u64 {
    10_000
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            base_url: None,
            cluster: None,
            token_secret: None,
            call_timeout_ms: default_call_timeout_ms(),
        }
    }
}

/// The task plane's location with every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPlaneLocation {
    /// Where it is.
    pub base: BaseUrl,
    /// The host's upstream name.
    pub cluster: String,
    /// The secret naming the edge token.
    pub token_secret: String,
    /// Deadline of one call.
    pub call_timeout_ms: u64,
}

impl TasksConfig {
    /// This section with the control plane's values filling the gaps; an error names what
    /// is missing.
    pub fn resolve(
        &self,
        control_plane: Option<&crate::control::ControlPlaneConfig>,
    ) -> Result<TaskPlaneLocation, String> {
        let base_url = self
            .base_url
            .clone()
            .or_else(|| control_plane.map(|cp| cp.base_url.clone()))
            .ok_or("tasks: `base_url` is required without a `control_plane` section")?;
        let base = BaseUrl::parse(&base_url).map_err(|e| format!("tasks.base_url: {e}"))?;
        let cluster = self
            .cluster
            .clone()
            .or_else(|| control_plane.map(|cp| cp.cluster.clone()))
            .unwrap_or_else(|| "task_plane".to_string());
        let token_secret = self
            .token_secret
            .clone()
            .or_else(|| control_plane.map(|cp| cp.token_secret.clone()))
            .ok_or("tasks: `token_secret` is required without a `control_plane` section")?;
        if cluster.is_empty() || token_secret.is_empty() || self.call_timeout_ms == 0 {
            return Err(
                "tasks: `cluster` and `token_secret` must not be empty, `call_timeout_ms` > 0"
                    .into(),
            );
        }
        Ok(TaskPlaneLocation {
            base,
            cluster,
            token_secret,
            call_timeout_ms: self.call_timeout_ms,
        })
    }
}

/// Which task-plane request a client request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The task API itself: the path and method pass through.
    Api,
    /// A generation endpoint's request submitted as a task (this operation).
    Operation(&'static str),
}

/// A client request bound for the task plane, between its head and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    route: Route,
    method: String,
    path: String,
    dialect: Dialect,
    key_id: String,
    team: Option<String>,
    headers: Vec<(String, String)>,
    /// The model a submission names, once read (for the usage record).
    pub model: Option<String>,
    /// The key's and team's limits a submission counts against (empty for reads of the
    /// task API): a submit is a request like a synchronous one, refused with 429 when over.
    pub scopes: Vec<crate::limits::Scope>,
    /// The task plane's answer's content type, from its head.
    answer_type: Option<String>,
    /// A synchronous media request for a task model (the facade): how long the task plane
    /// waits for the task's result.
    wait_ms: Option<u64>,
    /// The facade's task id, chosen here so the client's answer can name it.
    task_id: Option<String>,
}

fn prefers_async(head: &RequestHead<'_>) -> bool {
    head.forwarded
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("prefer"))
        .flat_map(|(_, value)| value.split(','))
        .any(|p| {
            p.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("respond-async")
        })
}

/// The route and the methods it accepts, for a request the task plane serves.
fn route(head: &RequestHead<'_>) -> Option<(Route, &'static [&'static str])> {
    let path = head.path.split('?').next().unwrap_or("");
    let path = path.trim_end_matches('/');
    let rest = path.strip_prefix("/v1/tasks");
    match rest {
        Some("") => return Some((Route::Api, &["GET", "POST"])),
        Some(rest) if rest.starts_with('/') => {
            let segments: Vec<&str> = rest[1..].split('/').collect();
            return match segments.as_slice() {
                [id] if !id.is_empty() => Some((Route::Api, &["GET"])),
                [id, "cancel"] if !id.is_empty() => Some((Route::Api, &["POST"])),
                [id, "webhooks"] if !id.is_empty() => Some((Route::Api, &["GET"])),
                [id, "webhooks", "redeliver"] if !id.is_empty() => Some((Route::Api, &["POST"])),
                _ => None,
            };
        }
        _ => {}
    }
    if path == "/v1/webhook-settings" {
        return Some((Route::Api, &["GET", "POST"]));
    }
    if !prefers_async(head) {
        return None;
    }
    let operation = match path {
        "/v1/chat/completions" => "chat.completions",
        "/v1/messages" => "messages",
        "/v1/embeddings" => "embeddings",
        "/v1/images/generations" => "images.generations",
        "/v1/images/edits" => IMAGE_EDITS,
        "/v1/audio/speech" => "audio.speech",
        "/v1/audio/transcriptions" => TRANSCRIPTIONS,
        _ => return None,
    };
    Some((Route::Operation(operation), &["POST"]))
}

impl Forward {
    /// The forward for a request the task plane serves, or `None` for any other request. An
    /// `Err` is the client's answer (no key, wrong method, no task plane configured).
    pub fn from_head(
        gateway: &Gateway,
        head: &RequestHead<'_>,
        dialect: Dialect,
        now_unix: u64,
    ) -> Option<Result<Forward, GatewayError>> {
        let (route, methods) = route(head)?;
        Some((|| {
            if !methods.iter().any(|m| head.method.eq_ignore_ascii_case(m)) {
                return Err(GatewayError::new(
                    ErrorKind::MethodNotAllowed,
                    format!(
                        "`{}` accepts {} only",
                        head.path.split('?').next().unwrap_or(""),
                        methods.join(" and ")
                    ),
                ));
            }
            let key = gateway.authenticate(head.authorization, head.x_api_key, now_unix)?;
            if gateway.tasks().is_none() {
                return Err(GatewayError::new(
                    ErrorKind::NotFound,
                    "async tasks are not enabled on this gateway (no `tasks` section in its config)",
                )
                .with_code("tasks_not_enabled"));
            }
            let headers = head
                .forwarded
                .iter()
                .filter(|(name, _)| {
                    FORWARDED_HEADERS
                        .iter()
                        .any(|f| f.eq_ignore_ascii_case(name))
                })
                .map(|(name, value)| (name.to_ascii_lowercase(), value.to_string()))
                .collect();
            Ok(Forward {
                route,
                method: head.method.to_ascii_uppercase(),
                path: head.path.to_string(),
                dialect,
                key_id: key.id.clone(),
                team: key.team.clone(),
                headers,
                model: None,
                scopes: Vec::new(),
                answer_type: None,
                wait_ms: None,
                task_id: None,
            })
        })())
    }

    /// The forward of a synchronous media request (already authenticated: `admitted`) whose
    /// model is served by asynchronous providers: the task plane runs it as a task and
    /// answers with the endpoint's own answer once it finished, waiting up to the model's
    /// `fallback.total_timeout_ms` (the config's when the model sets none). `None` when the
    /// body names no such model (the request is planned as usual). `entropy` makes the task
    /// id, which the client's answer carries in `x-switchyard-task-id`.
    pub fn facade(
        gateway: &Gateway,
        admitted: &crate::gateway::Admitted,
        body: &[u8],
        entropy: (&str, u64),
    ) -> Option<Result<Forward, GatewayError>> {
        let crate::gateway::Endpoint::Media(kind) = admitted.endpoint else {
            return None;
        };
        let media = crate::ingress::media::decode(kind, body).ok()?;
        let model = gateway.config().task_providers.model(&media.model)?;
        let wait_ms = model
            .fallback
            .as_ref()
            .unwrap_or(&gateway.config().fallback)
            .total_timeout_ms;
        if gateway.tasks().is_none() {
            return Some(Err(GatewayError::new(
                ErrorKind::NotFound,
                format!(
                    "model `{}` is served by asynchronous providers, through the task plane, \
                     which this gateway has no `tasks` section for",
                    media.model
                ),
            )
            .with_code("tasks_not_enabled")));
        }
        let content_type = match media.boundary {
            Some(boundary) => format!("multipart/form-data; boundary={boundary}"),
            None => "application/json".to_string(),
        };
        Some(Ok(Forward {
            route: Route::Operation(crate::tasks::facade::operation(kind)),
            method: "POST".into(),
            path: kind.openai_path().into(),
            dialect: admitted.dialect,
            key_id: admitted.key_id.clone(),
            team: admitted.team.clone(),
            headers: vec![("content-type".into(), content_type)],
            model: None,
            scopes: Vec::new(),
            answer_type: None,
            wait_ms: Some(wait_ms),
            task_id: Some(crate::tasks::facade::task_id(entropy.0, entropy.1)),
        }))
    }

    /// The dialect the client is answered in.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The key the request was authenticated with.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// That key's team.
    pub fn team(&self) -> Option<&str> {
        self.team.as_deref()
    }

    /// Notes the task plane's answer head (its content type travels with the body).
    pub fn answer_head(&mut self, content_type: Option<&str>) {
        self.answer_type = content_type.map(str::to_string);
    }

    /// Whether the request has a body to read.
    pub fn wants_body(&self) -> bool {
        self.method == "POST"
    }

    /// The call to the task plane for this request and its `body`. A submission's model must
    /// exist and be allowed for the key.
    pub fn request(
        &mut self,
        gateway: &Gateway,
        body: &[u8],
        request_id: &str,
    ) -> Result<UpstreamRequest, GatewayError> {
        let submits = matches!(self.route, Route::Operation(_))
            || (self.method == "POST"
                && self
                    .path
                    .split('?')
                    .next()
                    .unwrap_or("")
                    .trim_end_matches('/')
                    == "/v1/tasks");
        if submits {
            let multipart = match self.route {
                Route::Operation(TRANSCRIPTIONS) => {
                    Some(crate::ingress::media::MediaKind::Transcription)
                }
                Route::Operation(IMAGE_EDITS) => Some(crate::ingress::media::MediaKind::ImageEdit),
                _ => None,
            };
            let model = if let Some(kind) = multipart {
                // Multipart: the model is a form field.
                crate::ingress::media::decode(kind, body)?.model
            } else {
                submitted_model(body)?
            };
            let canonical = gateway.config().model_name(&model).ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::NotFound,
                    format!("model `{model}` does not exist"),
                )
                .with_code("model_not_found")
                .with_param("model")
            })?;
            let allowed = gateway
                .key(&self.key_id)
                .is_some_and(|k| k.allows(&model) || k.allows(canonical));
            if !allowed {
                return Err(GatewayError::new(
                    ErrorKind::PermissionDenied,
                    format!("this API key may not use model `{model}`"),
                )
                .with_code("model_not_allowed"));
            }
            if let (Route::Operation(operation), Some(task_model)) =
                (self.route, gateway.config().task_providers.model(&model))
            {
                if let Some(kind) = crate::tasks::facade::media_kind(operation) {
                    let media = crate::ingress::media::decode(kind, body)?;
                    crate::tasks::facade::check(
                        kind,
                        task_model,
                        &gateway.config().task_providers,
                        media.response_format.as_deref(),
                    )?;
                }
            }
            self.model = Some(model);
            if let Some(key) = gateway.key(&self.key_id) {
                self.scopes = gateway.limit_scopes(key);
            }
        }
        let (location, token) = gateway.tasks().ok_or_else(|| {
            GatewayError::new(
                ErrorKind::NotFound,
                "async tasks are not enabled on this gateway",
            )
        })?;
        let token = token.ok_or_else(|| {
            GatewayError::new(
                ErrorKind::Unavailable,
                format!(
                    "the task plane's edge token is not set (secret `{}`)",
                    location.token_secret
                ),
            )
            .with_code("provider_credential_missing")
        })?;
        let mut headers = vec![
            ("authorization".to_string(), format!("Bearer {token}")),
            (KEY_ID_HEADER.to_string(), self.key_id.clone()),
            ("x-request-id".to_string(), request_id.to_string()),
        ];
        if let Some(team) = &self.team {
            headers.push((TEAM_HEADER.to_string(), team.clone()));
        }
        headers.extend(self.headers.iter().cloned());
        let mut timeout_ms = location.call_timeout_ms;
        if let Some(wait_ms) = self.wait_ms {
            // The task plane answers by itself once the wait is over (a 504 naming the task).
            headers.push((WAIT_HEADER.to_string(), wait_ms.to_string()));
            timeout_ms = timeout_ms.saturating_add(wait_ms);
        }
        if let Some(id) = &self.task_id {
            headers.push((TASK_ID_HEADER.to_string(), id.clone()));
        }
        let (method, path) = match self.route {
            Route::Api => (self.method.clone(), self.path.clone()),
            Route::Operation(operation) => {
                headers.push((OPERATION_HEADER.to_string(), operation.to_string()));
                ("POST".to_string(), "/v1/tasks".to_string())
            }
        };
        Ok(UpstreamRequest {
            cluster: location.cluster.clone(),
            scheme: location.base.scheme.clone(),
            authority: location.base.authority.clone(),
            method: if method == "GET" { "GET" } else { "POST" },
            path: format!("{}{path}", location.base.prefix),
            headers,
            body: if self.wants_body() {
                body.to_vec()
            } else {
                Vec::new()
            },
            timeout_ms,
        })
    }

    /// The client's answer from the task plane's: as it came, JSON or not, with a
    /// `Location` for an accepted task. A 5xx that is not the task plane's own JSON error
    /// (a proxy's page) becomes a 502 in the client's dialect.
    pub fn answer(&self, status: u16, body: &[u8]) -> LocalReply {
        let content_type = self.answer_type.as_deref();
        let json = content_type.is_some_and(|ct| ct.trim_start().starts_with("application/json"));
        if status >= 500 && !json {
            return LocalReply::error(
                &GatewayError::new(
                    ErrorKind::BadGateway,
                    format!("the task plane answered {status}"),
                ),
                self.dialect,
            );
        }
        let mut headers = vec![(
            "content-type".to_string(),
            content_type.unwrap_or("application/json").to_string(),
        )];
        if let Some(id) = &self.task_id {
            headers.push((TASK_ID_HEADER.to_string(), id.clone()));
        }
        if status == 202 {
            if let Some(id) = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("id")?.as_str().map(str::to_string))
                .filter(|id| id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            {
                headers.push(("location".to_string(), format!("/v1/tasks/{id}")));
            }
        }
        LocalReply {
            status,
            headers,
            body: body.to_vec(),
        }
    }

    /// The client's error when the call to the task plane failed.
    pub fn failure(&self, failure: &Failure) -> GatewayError {
        match failure {
            Failure::Timeout => {
                GatewayError::new(ErrorKind::Timeout, "the task plane did not answer in time")
            }
            _ => GatewayError::new(ErrorKind::BadGateway, "the task plane could not be reached"),
        }
    }
}

/// The `model` of a submission: the task body's, or the endpoint request's.
/// The operation of a transcription submitted with `Prefer: respond-async` (its body is
/// `multipart/form-data`, not JSON).
const TRANSCRIPTIONS: &str = "audio.transcriptions";
/// The operation of an image edit submitted with `Prefer: respond-async` (multipart too).
const IMAGE_EDITS: &str = "images.edits";

fn submitted_model(body: &[u8]) -> Result<String, GatewayError> {
    #[derive(Deserialize)]
    struct WithModel {
        model: Option<Value>,
    }
    let parsed: WithModel = serde_json::from_slice(body)
        .map_err(|e| GatewayError::invalid(format!("request body is not a JSON object: {e}")))?;
    match parsed.model {
        Some(Value::String(m)) if !m.is_empty() => Ok(m),
        _ => Err(GatewayError::invalid("`model` must be a non-empty string").with_param("model")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(
        method: &'a str,
        path: &'a str,
        forwarded: &'a [(&'a str, &'a str)],
    ) -> RequestHead<'a> {
        RequestHead {
            method,
            path,
            forwarded,
            ..Default::default()
        }
    }

    #[test]
    fn routes_the_task_api_and_async_generation_requests() {
        let prefer: &[(&str, &str)] = &[("prefer", "wait=10, respond-async")];
        for (method, path, fwd, expected) in [
            ("POST", "/v1/tasks", &[][..], Some(Route::Api)),
            ("GET", "/v1/tasks?limit=2", &[][..], Some(Route::Api)),
            ("GET", "/v1/tasks/task_1", &[][..], Some(Route::Api)),
            ("POST", "/v1/tasks/task_1/cancel", &[][..], Some(Route::Api)),
            (
                "POST",
                "/v1/tasks/task_1/webhooks/redeliver",
                &[][..],
                Some(Route::Api),
            ),
            ("GET", "/v1/webhook-settings", &[][..], Some(Route::Api)),
            (
                "POST",
                "/v1/chat/completions",
                prefer,
                Some(Route::Operation("chat.completions")),
            ),
            (
                "POST",
                "/v1/messages",
                prefer,
                Some(Route::Operation("messages")),
            ),
            (
                "POST",
                "/v1/embeddings",
                prefer,
                Some(Route::Operation("embeddings")),
            ),
            (
                "POST",
                "/v1/images/generations",
                prefer,
                Some(Route::Operation("images.generations")),
            ),
            (
                "POST",
                "/v1/audio/transcriptions",
                prefer,
                Some(Route::Operation("audio.transcriptions")),
            ),
            ("POST", "/v1/audio/speech", &[][..], None),
            ("POST", "/v1/chat/completions", &[][..], None),
            (
                "POST",
                "/v1/chat/completions",
                &[("prefer", "return=minimal")][..],
                None,
            ),
            ("GET", "/v1/tasks/a/b/c", &[][..], None),
            ("GET", "/v1/tasksx", &[][..], None),
            ("GET", "/v1/models", &[][..], None),
        ] {
            assert_eq!(
                route(&head(method, path, fwd)).map(|r| r.0),
                expected,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn tasks_section_defaults_to_the_control_plane() {
        let cp: crate::control::ControlPlaneConfig =
            serde_json::from_str(r#"{"base_url":"http://127.0.0.1:8100","token_secret":"EDGE"}"#)
                .unwrap();
        let loc = TasksConfig::default().resolve(Some(&cp)).unwrap();
        assert_eq!(loc.base.authority, "127.0.0.1:8100");
        assert_eq!(loc.cluster, "control_plane");
        assert_eq!(loc.token_secret, "EDGE");
        assert!(TasksConfig::default().resolve(None).is_err());
        let own = TasksConfig {
            base_url: Some("https://tasks.internal/prefix".into()),
            cluster: Some("tasks".into()),
            token_secret: Some("T".into()),
            call_timeout_ms: 5,
        };
        let loc = own.resolve(None).unwrap();
        assert_eq!(loc.base.prefix, "/prefix");
    }

    #[test]
    fn answers_pass_through_with_a_location() {
        let forward = Forward {
            route: Route::Api,
            method: "POST".into(),
            path: "/v1/tasks".into(),
            dialect: Dialect::OpenAi,
            key_id: "k".into(),
            team: None,
            headers: vec![],
            model: None,
            scopes: Vec::new(),
            answer_type: Some("application/json".into()),
            wait_ms: None,
            task_id: None,
        };
        let accepted = forward.answer(202, br#"{"id":"task_ab12"}"#);
        assert!(accepted
            .headers
            .contains(&("location".to_string(), "/v1/tasks/task_ab12".to_string())));
        let odd = forward.answer(202, br#"{"id":"../x"}"#);
        assert!(!odd.headers.iter().any(|(k, _)| k == "location"));
        let own_error = forward.answer(404, br#"{"error":{}}"#);
        assert_eq!(own_error.status, 404);
        assert_eq!(own_error.body, br#"{"error":{}}"#);
        let mut html = forward.clone();
        html.answer_head(Some("text/html"));
        assert_eq!(html.answer(503, b"<html>").status, 502);
    }
}
