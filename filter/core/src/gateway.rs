//! The gateway facade: what a host calls, phase by phase.
//!
//! 1. [`Gateway::on_request_head`] — endpoint, dialect, key check, size limit. Answers locally
//!    (401, 404, 413, `GET /v1/models`) or admits the request to read its body.
//! 2. [`Gateway::plan`] — parse and validate the body, check the key may use the model, and
//!    order the deployments into the attempt chain.
//! 3. [`Plan::upstream_request`] per attempt — the native request for that deployment.
//! 4. [`Plan::response_stream`] / [`Plan::translate_response`] / [`Plan::translate_error`] —
//!    the answer back in the caller's dialect, with usage.
//!
//! The host owns all I/O, clocks and randomness and passes them in.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};

use crate::canonical::{ChatRequest, EmbeddingsRequest, TokenUsage};
use crate::config::{
    ConfigError, FallbackPolicy, GatewayConfig, ModelConfig, Price, ProviderConfig,
};
use crate::error::{Dialect, ErrorKind, GatewayError};
use crate::ingress;
use crate::ingress::media::{MediaKind, MediaRequest};
use crate::json_patch::patch_top_level;
use crate::keys::{authenticate, presented_key};
use crate::providers::passthrough::FastPath;
use crate::providers::{openai, BaseUrl, ProviderKind};
use crate::routing::{deployment_id, ordered_attempts, HealthView, IgnoringBackOffs};
use crate::stream::{ResponseStream, TranslatingStream};
use crate::usage::{cost, UsageRecord};

/// The API endpoints the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/messages` (Anthropic).
    Messages,
    /// `POST /v1/responses` (OpenAI Responses).
    Responses,
    /// `POST /v1beta/models/{model}:generateContent` (Gemini; `stream`:
    /// `:streamGenerateContent`).
    GenerateContent {
        /// Whether the method streams.
        stream: bool,
    },
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/images/generations`, `/v1/audio/speech`, `/v1/audio/transcriptions`.
    Media(ingress::media::MediaKind),
    /// `GET /v1/models` (`GET /v1beta/models` for Gemini clients).
    Models,
}

/// What the host knows after the request headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHead<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path, query included.
    pub path: &'a str,
    /// `Authorization` header.
    pub authorization: Option<&'a str>,
    /// `x-api-key` header.
    pub x_api_key: Option<&'a str>,
    /// `x-goog-api-key` header (how the Gemini SDK sends its key).
    pub x_goog_api_key: Option<&'a str>,
    /// `anthropic-version` header (marks an Anthropic SDK client on shared paths).
    pub anthropic_version: Option<&'a str>,
    /// `Content-Length`, when sent.
    pub content_length: Option<u64>,
    /// `x-request-id`, when the client or the proxy in front set one.
    pub request_id: Option<&'a str>,
    /// The client's headers named in [`crate::tasks::edge::FORWARDED_HEADERS`] that it sent
    /// (`Prefer`, `Idempotency-Key`, …): what the task plane needs.
    pub forwarded: &'a [(&'a str, &'a str)],
}

/// A response the host sends without contacting any upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
}

impl LocalReply {
    /// The reply for an error, in `dialect`.
    pub fn error(err: &GatewayError, dialect: Dialect) -> Self {
        LocalReply {
            status: err.status,
            headers: err
                .headers()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            body: err.body(dialect),
        }
    }

    fn json(status: u16, body: Vec<u8>) -> Self {
        LocalReply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        }
    }
}

/// A request that passed the header checks and may send its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// The caller's dialect.
    pub dialect: Dialect,
    /// The model named by the path (Gemini's `models/{model}:generateContent`).
    pub path_model: Option<String>,
    /// Id of the authenticated key.
    pub key_id: String,
    /// The key's team.
    pub team: Option<String>,
}

/// Outcome of the header phase.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadOutcome {
    /// Answer now.
    Reply(LocalReply),
    /// Read the body (at most [`Gateway::max_request_bytes`]) and call [`Gateway::plan`].
    ReadBody(Admitted),
}

/// A provider credential, resolved by the host from its secret store or synced from the
/// control plane. Never printed.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A model the configuration names but no deployment of which can be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnservableModel {
    /// The public model name.
    pub model: String,
    /// Why, naming the secrets to set and where.
    pub reason: String,
}

/// The gateway core, built once per configuration.
#[derive(Debug, Clone)]
pub struct Gateway {
    config: GatewayConfig,
    /// Credential values by secret name, for the secrets the host could resolve.
    secrets: BTreeMap<String, Secret>,
    /// Keys from the control plane, beside the config's static keys.
    managed_keys: Vec<crate::keys::GatewayKey>,
    /// The version of `managed_keys` (the control plane's key-set version).
    managed_version: Option<u64>,
    /// Team limits from the control plane (over the config's, for the same team).
    managed_teams: BTreeMap<String, crate::limits::Quota>,
    /// Provider credentials the control plane minted (e.g. Vertex access tokens from a
    /// service-account key), by secret name; they take precedence over the host's own.
    synced_secrets: BTreeMap<String, Secret>,
    /// The deployments whose health records some routing reads: those of the models with more
    /// than one deployment (a model with one tries it whatever its health,
    /// `routing::attempt_order`). Nothing reads another deployment's record, so its outcomes
    /// are not stored: on the edge that is a shared-data read (and at times a write) per
    /// request, about 15k instructions of Envoy's per request on the fast path.
    health_read: std::collections::BTreeSet<String>,
    /// Each model's deployments resolved against the config and the credentials in force
    /// (by model index, then deployment index), built on the model's first plan and shared by
    /// every request's attempts: a plan no longer clones a provider's whole config, its
    /// headers and credentials, nor parses its base URL, per request. Per model, so a gateway
    /// built for one request (the Spin component's) resolves only the model it serves. Reset
    /// whenever the credentials change (`resolve_secrets`; `with_managed_keys` builds a new
    /// gateway).
    resolved: Vec<OnceLock<Vec<Resolved>>>,
}

/// One deployment as the attempts on it need it: `None` when its provider is not in the
/// config (the plan skips it), an error when its base URL is not one.
type Resolved = Option<Result<Arc<ResolvedDeployment>, String>>;

/// One empty slot per model of `config` for `Gateway::resolved`.
fn unresolved(config: &GatewayConfig) -> Vec<OnceLock<Vec<Resolved>>> {
    config.models.iter().map(|_| OnceLock::new()).collect()
}

impl Gateway {
    /// Wraps a validated configuration. Providers that need a credential stay unusable until
    /// [`Gateway::resolve_secrets`] finds it.
    pub fn new(config: GatewayConfig) -> Self {
        let health_read = config
            .models
            .iter()
            .filter(|m| m.deployments.len() > 1)
            .flat_map(|m| m.deployments.iter().map(deployment_id))
            .collect();
        Gateway {
            health_read,
            resolved: unresolved(&config),
            config,
            secrets: BTreeMap::new(),
            managed_keys: Vec::new(),
            managed_version: None,
            managed_teams: BTreeMap::new(),
            synced_secrets: BTreeMap::new(),
        }
    }

    /// This gateway with the control plane's key set (replacing any earlier one; the static
    /// config keys stay).
    pub fn with_managed_keys(&self, snapshot: crate::control::KeySnapshot) -> Gateway {
        Gateway {
            health_read: self.health_read.clone(),
            config: self.config.clone(),
            resolved: unresolved(&self.config),
            secrets: self.secrets.clone(),
            managed_keys: snapshot.keys,
            managed_version: Some(snapshot.version),
            managed_teams: snapshot.teams,
            synced_secrets: snapshot.credentials,
        }
    }

    /// The version of the control plane's key set in force, once one was applied.
    pub fn managed_keys_version(&self) -> Option<u64> {
        self.managed_version
    }

    /// The control plane settings and the resolved edge token, when configured.
    pub fn control_plane(&self) -> Option<(&crate::control::ControlPlaneConfig, Option<&str>)> {
        let cp = self.config.control_plane.as_ref()?;
        let token = self.secret(&cp.token_secret).map(|s| s.0.as_str());
        Some((cp, token))
    }

    /// Resolves every credential the config names, once, through the host's secret store
    /// (environment, Envoy `vm_config.environment_variables`, Spin variables). Deployments
    /// whose provider lacks its credential are left out of every attempt chain, and models
    /// with no servable deployment left are hidden from `/v1/models` and answered with a 503
    /// that names the missing secret.
    pub fn resolve_secrets(mut self, resolve: &dyn Fn(&str) -> Option<String>) -> Self {
        let names: std::collections::BTreeSet<&str> = self
            .config
            .providers
            .values()
            .flat_map(|p| p.secret_names())
            .chain(
                self.config
                    .control_plane
                    .iter()
                    .map(|cp| cp.token_secret.as_str()),
            )
            .chain(
                self.config
                    .tasks
                    .iter()
                    .filter_map(|t| t.token_secret.as_deref()),
            )
            .chain(
                self.config
                    .task_providers
                    .providers
                    .values()
                    .flat_map(|p| p.secret_names()),
            )
            .collect();
        let mut secrets = BTreeMap::new();
        for name in names {
            if let Some(value) = resolve(name).filter(|v| !v.trim().is_empty()) {
                secrets.insert(name.to_string(), Secret(value));
            }
        }
        self.secrets = secrets;
        self.resolved = unresolved(&self.config);
        self
    }

    /// The deployments of the model at `model_index`, resolved (see `Gateway::resolved`).
    fn resolved(&self, model_index: usize) -> &[Resolved] {
        self.resolved[model_index].get_or_init(|| {
            self.config.models[model_index]
                .deployments
                .iter()
                .map(|d| self.resolve_deployment(d))
                .collect()
        })
    }

    fn resolve_deployment(&self, d: &crate::config::DeploymentConfig) -> Resolved {
        let provider = self.config.providers.get(&d.provider)?;
        let base = match provider.base_url().and_then(|url| BaseUrl::parse(&url)) {
            Ok(base) => base,
            Err(e) => return Some(Err(e.to_string())),
        };
        let id = deployment_id(d);
        Some(Ok(Arc::new(ResolvedDeployment {
            health_read: self.health_read.contains(&id),
            deployment_id: id,
            provider: d.provider.clone(),
            kind: provider.kind,
            upstream_model: d.model.clone(),
            cluster: provider
                .cluster
                .clone()
                .unwrap_or_else(|| d.provider.clone()),
            base,
            price: d.price,
            limits: d.limits,
            api_key: provider
                .api_key_secret
                .as_ref()
                .and_then(|name| self.secret(name).cloned()),
            static_headers: provider
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            aws: provider.signing_credentials(&|name| self.secret(name).map(|s| s.0.clone())),
            settings: provider.clone(),
        })))
    }

    /// A credential by secret name: the control plane's, else the host's.
    fn secret(&self, name: &str) -> Option<&Secret> {
        self.synced_secrets
            .get(name)
            .or_else(|| self.secrets.get(name))
    }

    /// The task model called `name` and its deployments in fallback order, credentials
    /// resolved (see `crate::tasks::providers::deployments`).
    pub fn task_route(
        &self,
        name: &str,
    ) -> Option<(
        &crate::tasks::providers::deployments::TaskModelConfig,
        Vec<crate::tasks::providers::deployments::TaskDeployment>,
    )> {
        let providers = &self.config.task_providers;
        let model = providers.model(name)?;
        let secret = |n: &str| self.secret(n).map(|s| s.0.clone());
        Some((model, providers.route(model, &secret)))
    }

    /// Every key that may authenticate: the config's and the control plane's.
    fn keys(&self) -> impl Iterator<Item = &crate::keys::GatewayKey> + Clone {
        self.config.keys.iter().chain(&self.managed_keys)
    }

    /// The secret a provider still needs, if any.
    fn missing_secret(&self, provider: &str) -> Option<&str> {
        self.config
            .providers
            .get(provider)?
            .required_secrets()
            .into_iter()
            .find(|name| self.secret(name).is_none())
    }

    /// Why `model` cannot be served, or `None` when some deployment can serve it.
    fn unservable_reason(&self, model: &ModelConfig) -> Option<String> {
        let mut missing: Vec<String> = Vec::new();
        for d in &model.deployments {
            match self.missing_secret(&d.provider) {
                None => return None,
                Some(name) => missing.push(missing_secret_hint(&d.provider, name)),
            }
        }
        missing.dedup();
        Some(missing.join("; "))
    }

    /// Every configured model that cannot be served, for the host to report at start.
    pub fn unservable_models(&self) -> Vec<UnservableModel> {
        self.config
            .models
            .iter()
            .filter_map(|m| {
                self.unservable_reason(m).map(|reason| UnservableModel {
                    model: m.name.clone(),
                    reason,
                })
            })
            .collect()
    }

    /// Parses, validates and wraps a configuration document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        GatewayConfig::from_json(bytes).map(Gateway::new)
    }

    /// The configuration in force.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Largest request body accepted.
    pub fn max_request_bytes(&self) -> usize {
        self.config.limits.max_request_bytes
    }

    /// The header phase: route, authenticate, check declared size.
    pub fn on_request_head(&self, head: &RequestHead, now_unix: u64) -> HeadOutcome {
        let path = head.path.split('?').next().unwrap_or("");
        let path = path.trim_end_matches('/');
        let gemini = ingress::gemini::route(path);
        // `GET /v1/models/{id}`: one model of the listing (not Gemini's `…:generateContent`,
        // which Google's SDK may also send under `/v1/models/`).
        let model_id = path
            .strip_prefix("/v1/models/")
            .filter(|id| !id.is_empty() && gemini.is_none());
        let (endpoint, method) = match path {
            _ if model_id.is_some() => (Some(Endpoint::Models), "GET"),
            "/v1/chat/completions" => (Some(Endpoint::ChatCompletions), "POST"),
            "/v1/messages" => (Some(Endpoint::Messages), "POST"),
            "/v1/responses" => (Some(Endpoint::Responses), "POST"),
            "/v1/embeddings" => (Some(Endpoint::Embeddings), "POST"),
            "/v1/images/generations" => (Some(Endpoint::Media(MediaKind::Images)), "POST"),
            "/v1/images/edits" => (Some(Endpoint::Media(MediaKind::ImageEdit)), "POST"),
            "/v1/audio/speech" => (Some(Endpoint::Media(MediaKind::Speech)), "POST"),
            "/v1/audio/transcriptions" => (Some(Endpoint::Media(MediaKind::Transcription)), "POST"),
            "/v1/models" => (Some(Endpoint::Models), "GET"),
            _ => match &gemini {
                Some(ingress::gemini::Route::Generate { stream, .. }) => {
                    (Some(Endpoint::GenerateContent { stream: *stream }), "POST")
                }
                Some(ingress::gemini::Route::List) => (Some(Endpoint::Models), "GET"),
                None => (None, ""),
            },
        };
        let dialect = request_dialect(head);
        let reply = |err: GatewayError| HeadOutcome::Reply(LocalReply::error(&err, dialect));
        let Some(endpoint) = endpoint else {
            return reply(GatewayError::new(
                ErrorKind::NotFound,
                format!("unknown endpoint `{} {path}`", head.method),
            ));
        };
        if !head.method.eq_ignore_ascii_case(method) {
            return reply(GatewayError::new(
                ErrorKind::MethodNotAllowed,
                format!("`{path}` accepts {method} only"),
            ));
        }
        let presented = presented_key(head.authorization, head.x_api_key)
            .or_else(|| presented_key(None, head.x_goog_api_key))
            .or_else(|| {
                // Google also takes the key as `?key=`; only on its own paths.
                (dialect == Dialect::Gemini)
                    .then(|| ingress::gemini::query_key(head.path))
                    .flatten()
            });
        let key = match authenticate(self.keys(), presented, now_unix) {
            Ok(key) => key,
            Err(err) => return reply(err),
        };
        if head
            .content_length
            .is_some_and(|n| n > self.max_request_bytes() as u64)
        {
            return reply(self.too_large());
        }
        if endpoint == Endpoint::Models {
            return HeadOutcome::Reply(self.models_reply(key, dialect, model_id));
        }
        HeadOutcome::ReadBody(Admitted {
            endpoint,
            dialect,
            path_model: match gemini {
                Some(ingress::gemini::Route::Generate { model, .. }) => Some(model),
                _ => None,
            },
            key_id: key.id.clone(),
            team: key.team.clone(),
        })
    }

    /// The 413 error, for hosts that count body bytes as they arrive.
    pub fn too_large(&self) -> GatewayError {
        GatewayError::new(
            ErrorKind::RequestTooLarge,
            format!(
                "request body exceeds the limit of {} bytes",
                self.max_request_bytes()
            ),
        )
        .with_code("request_too_large")
    }

    /// Every model the key may use that the gateway can route, with what it does: the
    /// synchronous models that have a servable deployment, and, when a task plane is
    /// configured, the models of asynchronous providers (served through `/v1/tasks` only).
    fn listed_models(&self, key: &crate::keys::GatewayKey) -> Vec<ListedModel<'_>> {
        let sync = self
            .config
            .models
            .iter()
            .filter(|m| self.unservable_reason(m).is_none())
            .flat_map(|m| {
                // Described by its first deployment's catalog entry, if any.
                let entry = m.deployments.iter().find_map(|d| d.catalog_entry);
                let mode = self.config.mode_of(m);
                std::iter::once(m.name.as_str())
                    .chain(m.aliases.iter().map(String::as_str))
                    .map(move |name| ListedModel {
                        name,
                        mode,
                        entry,
                        tasks_only: false,
                    })
            });
        let tasks = &self.config.task_providers;
        let task_models = tasks
            .models
            .iter()
            .filter(|_| self.tasks().is_some())
            .flat_map(|m| {
                let mode = tasks.mode_of(m);
                std::iter::once(m.name.as_str())
                    .chain(m.aliases.iter().map(String::as_str))
                    .map(move |name| ListedModel {
                        name,
                        mode,
                        entry: None,
                        tasks_only: true,
                    })
            });
        sync.chain(task_models)
            .filter(|m| key.allows(m.name))
            .collect()
    }

    /// `GET /v1/models` (the list) or `GET /v1/models/{id}` (one, else 404) in the caller's
    /// dialect. OpenAI's shape stays what its SDK reads (`{object: "list", data: [{id,
    /// object: "model", created, owned_by}]}`); each entry adds `mode` (chat, embedding,
    /// image, speech, transcription, video), `tasks_only` for models served through
    /// `/v1/tasks` alone, and its catalog entry's fields when it has one.
    fn models_reply(
        &self,
        key: &crate::keys::GatewayKey,
        dialect: Dialect,
        id: Option<&str>,
    ) -> LocalReply {
        let mut listed = self.listed_models(key);
        if let Some(id) = id {
            listed.retain(|m| m.name == id);
            if listed.is_empty() {
                let err =
                    GatewayError::new(ErrorKind::NotFound, format!("model `{id}` does not exist"))
                        .with_code("model_not_found")
                        .with_param("model");
                return LocalReply::error(&err, dialect);
            }
        }
        let describe = |mut item: Value, m: &ListedModel<'_>| {
            if let Some(obj) = item.as_object_mut() {
                if let Some(Value::Object(fields)) = m.entry.map(|e| e.describe()) {
                    obj.extend(fields);
                }
                obj.insert("mode".into(), json!(m.mode.as_str()));
                obj.insert("tasks_only".into(), json!(m.tasks_only));
            }
            item
        };
        let names: Vec<&str> = listed.iter().map(|m| m.name).collect();
        let items: Vec<Value> = listed
            .iter()
            .map(|m| match dialect {
                Dialect::OpenAi | Dialect::Responses => describe(
                    json!({"id": m.name, "object": "model", "created": 0, "owned_by": "switchyard"}),
                    m,
                ),
                Dialect::Anthropic => describe(
                    json!({"type": "model", "id": m.name, "display_name": m.name,
                           "created_at": "1970-01-01T00:00:00Z"}),
                    m,
                ),
                Dialect::Gemini => {
                    let mut item = json!({
                        "name": format!("models/{}", m.name), "displayName": m.name,
                        "supportedGenerationMethods": ["generateContent", "streamGenerateContent"],
                    });
                    if let Some(e) = m.entry {
                        item["inputTokenLimit"] = json!(e.context_window);
                        item["outputTokenLimit"] = json!(e.max_output);
                    }
                    item
                }
            })
            .collect();
        let body = match (id, dialect) {
            (Some(_), _) => items.into_iter().next().unwrap_or_default(),
            (None, Dialect::OpenAi | Dialect::Responses) => {
                json!({"object": "list", "data": items})
            }
            (None, Dialect::Anthropic) => json!({
                "data": items,
                "has_more": false,
                "first_id": names.first(),
                "last_id": names.last(),
            }),
            (None, Dialect::Gemini) => json!({"models": items}),
        };
        LocalReply::json(200, serde_json::to_vec(&body).unwrap_or_default())
    }

    /// The body phase: parse, authorise the model, and build the attempt chain.
    ///
    /// `random` seeds weighted routing and ids; `now_unix` stamps responses.
    pub fn plan(
        &self,
        admitted: &Admitted,
        body: &[u8],
        random: u64,
        now_unix: u64,
        health: &dyn HealthView,
    ) -> Result<Plan, GatewayError> {
        if body.len() > self.max_request_bytes() {
            return Err(self.too_large());
        }
        let mut request = decode_request(admitted, body)?;
        let public_model = request.model().to_string();
        let model_index = self.config.model_index(&public_model).ok_or_else(|| {
            GatewayError::new(
                ErrorKind::NotFound,
                format!("model `{public_model}` does not exist"),
            )
            .with_code("model_not_found")
            .with_param("model")
        })?;
        let model = &self.config.models[model_index];
        let mut body = Cow::Borrowed(body);
        if let Some(with_defaults) = apply_defaults(&body, &model.defaults, admitted.dialect)? {
            request = decode_request(admitted, &with_defaults)?;
            body = Cow::Owned(with_defaults);
        }
        let key = self
            .keys()
            .find(|k| k.id == admitted.key_id)
            .ok_or_else(|| GatewayError::new(ErrorKind::Authentication, "invalid API key"))?;
        if !key.allows(&public_model) && !key.allows(&model.name) {
            return Err(GatewayError::new(
                ErrorKind::PermissionDenied,
                format!("this API key may not use model `{public_model}`"),
            )
            .with_code("model_not_allowed"));
        }
        if let PlannedRequest::Chat(chat) = &request {
            // `n` is OpenAI Chat's: another dialect's answer has no list of choices to fill.
            if chat.choices() > 1 && admitted.dialect != Dialect::OpenAi {
                return Err(GatewayError::invalid(
                    "`n` is an OpenAI Chat Completions parameter; this API answers one choice",
                )
                .with_param("n"));
            }
        }
        if let Some(reason) = self.unservable_reason(model) {
            return Err(GatewayError::new(
                ErrorKind::Unavailable,
                format!("model `{public_model}` cannot be served: {reason}"),
            )
            .with_code("provider_credential_missing"));
        }
        let mut attempts = Vec::new();
        // The first catalog capability or request field a deployment lacks (the refusal and
        // the field at fault), answered if no deployment is left.
        let mut refused: Option<(String, String)> = None;
        let mut backing_off = Vec::new();
        let ignoring_back_offs = IgnoringBackOffs(health);
        let health = if self.config.fallback_for(model).share_retry_after {
            health
        } else {
            &ignoring_back_offs
        };
        for (i, back_off_until_ms) in ordered_attempts(model, health, random) {
            let d = &model.deployments[i];
            let Some(provider) = self.config.providers.get(&d.provider) else {
                continue;
            };
            if self.missing_secret(&d.provider).is_some() {
                continue;
            }
            if matches!(request, PlannedRequest::Embeddings(_))
                && !provider.kind.supports_embeddings()
            {
                continue;
            }
            if matches!(request, PlannedRequest::Media(_)) && !provider.kind.supports_media() {
                refused.get_or_insert_with(|| {
                    (
                        format!("provider `{}` does not serve this endpoint", d.provider),
                        "model".to_string(),
                    )
                });
                continue;
            }
            if let Some(entry) = d.catalog_entry {
                let served = match &request {
                    PlannedRequest::Chat(c) => entry.serves_chat(c),
                    PlannedRequest::Embeddings(_) => entry.serves_embeddings(),
                    PlannedRequest::Media(m) => entry.serves_mode(m.kind.mode()),
                };
                if let Err(why) = served {
                    refused.get_or_insert_with(|| (why.to_string(), why.param().to_string()));
                    continue;
                }
            }
            if let PlannedRequest::Chat(chat) = &request {
                let translated =
                    FastPath::between(admitted.dialect, provider.kind, provider).is_none();
                if let Some(why) = translated
                    .then(|| crate::fields::refusal(provider.kind, chat))
                    .flatten()
                {
                    refused.get_or_insert_with(|| (why.to_string(), why.field));
                    continue;
                }
            }
            match &self.resolved(model_index)[i] {
                Some(Ok(deployment)) => {
                    if let Some(until_ms) = back_off_until_ms {
                        backing_off.push((attempts.len(), until_ms));
                    }
                    attempts.push(Attempt(Arc::clone(deployment)));
                }
                Some(Err(e)) => return Err(GatewayError::new(ErrorKind::Internal, e.clone())),
                None => continue,
            }
        }
        if let (true, Some((why, param))) = (attempts.is_empty(), refused) {
            return Err(GatewayError::invalid(format!(
                "model `{public_model}` cannot serve this request: {why}"
            ))
            .with_code("unsupported_by_model")
            .with_param(param));
        }
        if attempts.is_empty() {
            return Err(GatewayError::invalid(format!(
                "model `{public_model}` has no deployment that serves this endpoint"
            ))
            .with_param("model"));
        }
        let scopes = self.limit_scopes(key);
        let estimate = estimate(&request, body.len(), model, &attempts);
        let (stream, client_wants_usage) = match &request {
            PlannedRequest::Chat(c) => (c.stream, c.wants_stream_usage()),
            PlannedRequest::Embeddings(_) | PlannedRequest::Media(_) => (false, false),
        };
        Ok(Plan {
            endpoint: admitted.endpoint,
            dialect: admitted.dialect,
            key_id: admitted.key_id.clone(),
            public_model,
            stream,
            client_wants_usage,
            request,
            raw: body.into_owned(),
            attempts,
            backing_off,
            fallback: self.config.fallback_for(model).clone(),
            scopes,
            estimate,
            model: model.name.clone(),
            queue: self.config.queue_for(model),
            route_complete_answers: self.config.edge.route_complete_answers,
            response_id: format!("{:016x}", random ^ 0x5157_4954_4348_5944),
            created: now_unix,
        })
    }
}

/// The dialect a request is answered in: each endpoint's own (Google's on the Gemini API's
/// paths), and on shared or unknown paths (`/v1/models`, a typo) Anthropic for a client that
/// sends `anthropic-version` (the Anthropic SDK) or aims under `/v1/messages`, OpenAI
/// otherwise.
pub fn request_dialect(head: &RequestHead<'_>) -> Dialect {
    let path = head.path.split('?').next().unwrap_or("");
    match path.trim_end_matches('/') {
        "/v1/messages" => Dialect::Anthropic,
        "/v1/responses" => Dialect::Responses,
        "/v1/chat/completions"
        | "/v1/embeddings"
        | "/v1/images/generations"
        | "/v1/audio/speech"
        | "/v1/audio/transcriptions" => Dialect::OpenAi,
        p if ingress::gemini::is_gemini_path(p) => Dialect::Gemini,
        p if p.starts_with("/v1/messages") || head.anthropic_version.is_some() => {
            Dialect::Anthropic
        }
        _ => Dialect::OpenAi,
    }
}

/// Decodes the body of an admitted request.
fn decode_request(admitted: &Admitted, body: &[u8]) -> Result<PlannedRequest, GatewayError> {
    Ok(match admitted.endpoint {
        Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses => {
            PlannedRequest::Chat(Box::new(ingress::decode_chat(admitted.dialect, body)?))
        }
        Endpoint::GenerateContent { stream } => {
            PlannedRequest::Chat(Box::new(ingress::gemini::decode_request(
                body,
                admitted.path_model.as_deref().unwrap_or_default(),
                stream,
            )?))
        }
        Endpoint::Embeddings => PlannedRequest::Embeddings(decode_embeddings(body)?),
        Endpoint::Media(kind) => PlannedRequest::Media(ingress::media::decode(kind, body)?),
        Endpoint::Models => {
            return Err(GatewayError::new(
                ErrorKind::MethodNotAllowed,
                "`/v1/models` has no body",
            ))
        }
    })
}

/// Upper bounds of a request's tokens and cost: input tokens at most one per body byte (a
/// byte-level tokenizer never makes more), plus a flat count per image; output tokens at most
/// `max_tokens`, or the model's `max_output_tokens`; both times `n` (several choices are
/// several answers, and emulated ones several requests); the cost at the most expensive
/// deployment of the chain (a fallback may land there).
fn estimate(
    request: &PlannedRequest,
    body_bytes: usize,
    model: &ModelConfig,
    attempts: &[Attempt],
) -> crate::limits::Estimate {
    use crate::limits::{Estimate, DEFAULT_MAX_OUTPUT_TOKENS, IMAGE_TOKENS_ESTIMATE};
    let (images, output, choices) = match request {
        PlannedRequest::Chat(chat) => {
            let images = chat
                .messages
                .iter()
                .flat_map(|m| m.parts())
                .filter(|p| matches!(p, crate::canonical::ContentPart::ImageUrl { .. }))
                .count() as u64;
            let output = chat
                .output_limit()
                .map(u64::from)
                .unwrap_or(model.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS));
            (images, output, u64::from(chat.choices()))
        }
        PlannedRequest::Embeddings(_) | PlannedRequest::Media(_) => (0, 0, 1),
    };
    let input = (body_bytes as u64 + images * IMAGE_TOKENS_ESTIMATE) * choices;
    let output = output * choices;
    let cost = attempts
        .iter()
        .map(|a| (input as f64 * a.price.input + output as f64 * a.price.output) / 1e6)
        .fold(0.0, f64::max);
    Estimate {
        tokens: input + output,
        cost_nano: crate::limits::usd_to_nano(cost),
    }
}

/// The message part that says which secret a provider needs, and where each host reads it.
fn missing_secret_hint(provider: &str, secret: &str) -> String {
    format!(
        "provider `{provider}` needs the secret `{secret}`, which is not set (host-runner: \
         `--env {secret}=...`; Envoy: `vm_config.environment_variables`; Spin: the variable \
         `{}`)",
        secret.to_ascii_lowercase()
    )
}

/// The body with the model's default parameters added where the client left them out, or
/// `None` when nothing is missing. Defaults use OpenAI Chat names; an Anthropic client's body
/// gets the Anthropic name of each.
fn apply_defaults(
    body: &[u8],
    defaults: &serde_json::Map<String, Value>,
    dialect: Dialect,
) -> Result<Option<Vec<u8>>, GatewayError> {
    if defaults.is_empty() {
        return Ok(None);
    }
    if dialect == Dialect::Gemini {
        return ingress::gemini::apply_defaults(body, defaults);
    }
    let present: BTreeMap<String, serde::de::IgnoredAny> = serde_json::from_slice(body)
        .map_err(|e| GatewayError::invalid(format!("request body is not a JSON object: {e}")))?;
    let patches: Vec<(&str, String)> = defaults
        .iter()
        .filter_map(|(name, value)| {
            let name = match (dialect, name.as_str()) {
                (Dialect::Anthropic, "stop") => "stop_sequences",
                (Dialect::Anthropic, "max_completion_tokens") => "max_tokens",
                (Dialect::Responses, "max_tokens" | "max_completion_tokens") => "max_output_tokens",
                // The Responses API has no such parameter: nothing to default.
                (Dialect::Responses, other) if !ingress::responses::TUNABLE.contains(&other) => {
                    return None
                }
                (_, other) => other,
            };
            Some((name, value.to_string()))
        })
        .filter(|(name, _)| !present.contains_key(*name))
        .collect();
    if patches.is_empty() {
        return Ok(None);
    }
    patch_top_level(body, &patches)
        .map(Some)
        .map_err(|e| GatewayError::invalid(format!("request body is not a JSON object: {e}")))
}

/// A pass-through answer's usage, read in the same parse that checks the answer is JSON: the
/// parse keeps the `usage` object's bytes, and the provider's usage reader reads only those
/// (not the whole answer a second time).
fn passthrough_usage(fast: Option<FastPath>, body: &[u8]) -> Result<TokenUsage, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct UsageField<'a> {
        #[serde(borrow, default)]
        usage: Option<&'a serde_json::value::RawValue>,
    }
    let Some(raw) = serde_json::from_slice::<UsageField>(body)?.usage else {
        return Ok(TokenUsage::default());
    };
    Ok(usage_value_of(fast, raw.get().as_bytes()))
}

/// A pass-through answer's usage from the bytes of its top-level `usage` value alone.
fn usage_value_of(fast: Option<FastPath>, raw: &[u8]) -> TokenUsage {
    let mut only = Vec::with_capacity(raw.len() + 10);
    only.extend_from_slice(b"{\"usage\":");
    only.extend_from_slice(raw);
    only.push(b'}');
    // Embeddings (no fast path) report OpenAI's usage.
    fast.map_or_else(|| openai::usage_of(&only), |f| f.usage_of(&only))
}

fn decode_embeddings(body: &[u8]) -> Result<EmbeddingsRequest, GatewayError> {
    let req: EmbeddingsRequest = serde_json::from_slice(body)
        .map_err(|e| GatewayError::invalid(format!("invalid embeddings request: {e}")))?;
    let ok = match &req.input {
        Value::String(_) => true,
        Value::Array(items) => !items.is_empty(),
        _ => false,
    };
    if !ok {
        return Err(
            GatewayError::invalid("`input` must be a string or a non-empty array")
                .with_param("input"),
        );
    }
    Ok(req)
}

/// The parsed request a plan carries.
#[derive(Debug, Clone, PartialEq)]
pub enum PlannedRequest {
    /// Chat (from either dialect).
    Chat(Box<ChatRequest>),
    /// Embeddings.
    Embeddings(EmbeddingsRequest),
    /// Images or audio.
    Media(MediaRequest),
}

impl PlannedRequest {
    fn model(&self) -> &str {
        match self {
            PlannedRequest::Chat(c) => &c.model,
            PlannedRequest::Embeddings(e) => &e.model,
            PlannedRequest::Media(m) => &m.model,
        }
    }
}

/// One deployment in the attempt chain: a shared handle on the deployment as the gateway
/// resolved it (its fields through `Deref`), so a plan's attempts cost a reference count each.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt(Arc<ResolvedDeployment>);

impl std::ops::Deref for Attempt {
    type Target = ResolvedDeployment;

    fn deref(&self) -> &ResolvedDeployment {
        &self.0
    }
}

/// One deployment of a model, resolved against the config and the credentials in force: what
/// every attempt on it needs, built once per gateway (see `Gateway::resolved`).
#[derive(Debug, PartialEq)]
pub struct ResolvedDeployment {
    /// `provider/upstream-model`.
    pub deployment_id: String,
    /// Whether some routing reads this deployment's health record (it is in a model with more
    /// than one deployment): only then are its outcomes stored.
    pub health_read: bool,
    /// Provider name from the config.
    pub provider: String,
    /// Wire format.
    pub kind: ProviderKind,
    /// The provider's model name.
    pub upstream_model: String,
    /// The host's upstream name.
    pub cluster: String,
    /// Where it lives.
    pub base: BaseUrl,
    /// Its price.
    pub price: Price,
    /// The provider's quota for it.
    pub limits: Option<crate::limits::DeploymentLimits>,
    api_key: Option<Secret>,
    static_headers: Vec<(String, String)>,
    /// The provider's configuration: the wire-format options its translator reads.
    pub(crate) settings: ProviderConfig,
    /// AWS credentials, for providers whose requests are signed (Bedrock).
    aws: Option<crate::providers::bedrock::sigv4::Credentials>,
}

/// A request ready to send upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRequest {
    /// The host's upstream name (Envoy cluster / host-runner cluster).
    pub cluster: String,
    /// `http` or `https`.
    pub scheme: String,
    /// `:authority` / `Host`.
    pub authority: String,
    /// Always `POST` today.
    pub method: &'static str,
    /// Full path with query.
    pub path: String,
    /// Headers, credentials included (never log these).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Per-attempt timeout.
    pub timeout_ms: u64,
}

/// Everything decided about one request; the host walks `attempts` in order.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Endpoint.
    pub endpoint: Endpoint,
    /// Caller's dialect.
    pub dialect: Dialect,
    /// Authenticated key id.
    pub key_id: String,
    /// Model name as the client sent it.
    pub public_model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    client_wants_usage: bool,
    request: PlannedRequest,
    raw: Vec<u8>,
    /// The fallback chain, in order.
    pub attempts: Vec<Attempt>,
    /// Attempts (indices into `attempts`) whose provider asked every caller to back off, with
    /// the end of the back-off (unix ms): not to be asked before then.
    pub backing_off: Vec<(usize, u64)>,
    /// Retry statuses and timeouts in force.
    pub fallback: FallbackPolicy,
    /// The key's and its team's limits that apply.
    pub scopes: Vec<crate::limits::Scope>,
    /// Upper bounds of the tokens and cost, for admission.
    pub estimate: crate::limits::Estimate,
    /// The model's configured name (its queue's name, whatever alias the client used).
    pub model: String,
    /// How long and how many requests may wait when every deployment is at its limits.
    pub queue: crate::queue::QueuePolicy,
    /// Whether the chain's last attempt of a complete answer may go through the proxy's
    /// router (the gateway's `edge.route_complete_answers`, see
    /// [`crate::config::EdgeOptions`]).
    pub route_complete_answers: bool,
    response_id: String,
    created: u64,
}

impl Plan {
    /// The fast path to `attempt`, when request and answer pass through as the client
    /// wrote them (same wire format).
    fn fast_path(&self, attempt: &Attempt) -> Option<FastPath> {
        FastPath::between(self.dialect, attempt.kind, &attempt.settings)
    }

    /// How many times attempt `index` is sent to fill the client's choices: `n` when an
    /// OpenAI Chat client asks a translated provider for several choices of a complete
    /// answer (the field matrix's `n` emulation; a stream with `n` is refused before), else
    /// 1 (one request; a same-format provider answers `n` itself).
    pub fn fan_out(&self, index: usize) -> u32 {
        let (PlannedRequest::Chat(chat), Some(attempt)) = (&self.request, self.attempts.get(index))
        else {
            return 1;
        };
        if self.stream || self.dialect != Dialect::OpenAi || self.fast_path(attempt).is_some() {
            return 1;
        }
        chat.choices()
    }

    /// The native request for attempt `index`, credentials included.
    pub fn upstream_request(&self, index: usize) -> Result<UpstreamRequest, GatewayError> {
        let attempt = self
            .attempts
            .get(index)
            .ok_or_else(|| GatewayError::new(ErrorKind::Internal, "attempt index out of range"))?;
        let egress = match (&self.request, self.fast_path(attempt)) {
            (PlannedRequest::Embeddings(_), _) => crate::providers::EgressRequest {
                path: openai::EMBEDDINGS_PATH.to_string(),
                headers: vec![("content-type".into(), "application/json".into())],
                body: self.patch_raw(attempt, false)?,
            },
            (PlannedRequest::Media(media), _) => self.media_egress(attempt, media)?,
            (PlannedRequest::Chat(_), Some(fast)) => {
                let (path, headers) = fast.egress(&attempt.settings, &attempt.upstream_model);
                let force_usage = self.stream && fast.forces_stream_usage(&attempt.settings);
                crate::providers::EgressRequest {
                    path,
                    headers,
                    body: fast
                        .finish_body(&attempt.settings, self.patch_raw(attempt, force_usage)?)?,
                }
            }
            (PlannedRequest::Chat(chat), None) if self.fan_out(index) > 1 => {
                // One choice per request: the exchange asks `n` times.
                let mut one = chat.as_ref().clone();
                one.extra.remove("n");
                attempt.settings.build_chat(&one, &attempt.upstream_model)?
            }
            (PlannedRequest::Chat(chat), None) => {
                attempt.settings.build_chat(chat, &attempt.upstream_model)?
            }
        };
        let mut headers = egress.headers;
        headers.extend(attempt.static_headers.iter().cloned());
        let path = format!("{}{}", attempt.base.prefix, egress.path);
        if let Some(credentials) = &attempt.aws {
            // Signed for the time the plan was made (see `providers::bedrock`).
            crate::providers::sign_aws(
                &attempt.settings,
                credentials,
                &attempt.base.authority,
                &path,
                &mut headers,
                &egress.body,
                self.created,
            )?;
        } else if let Some(Secret(key)) = &attempt.api_key {
            headers.extend(attempt.kind.auth_headers(key));
        }
        Ok(UpstreamRequest {
            cluster: attempt.cluster.clone(),
            scheme: attempt.base.scheme.clone(),
            authority: attempt.base.authority.clone(),
            method: "POST",
            path,
            headers,
            body: egress.body,
            timeout_ms: self
                .fallback
                .attempt_timeout_ms
                .min(self.fallback.total_timeout_ms),
        })
    }

    /// The media request for `attempt`: OpenAI's path (Azure's under the deployment), the
    /// client's body with `model` swapped for the deployment's (a transcription's multipart
    /// body otherwise byte for byte, boundary included).
    fn media_egress(
        &self,
        attempt: &Attempt,
        media: &MediaRequest,
    ) -> Result<crate::providers::EgressRequest, GatewayError> {
        let path = match attempt.kind {
            ProviderKind::Azure => format!(
                "/openai/deployments/{}/{}?api-version={}",
                crate::providers::encode_segment(&attempt.upstream_model),
                media.kind.azure_suffix(),
                crate::providers::encode_segment(attempt.settings.api_version())
            ),
            _ => media.kind.openai_path().to_string(),
        };
        let (content_type, body) = match &media.boundary {
            Some(boundary) => (
                format!("multipart/form-data; boundary={boundary}"),
                ingress::media::replace_field(
                    &self.raw,
                    boundary,
                    "model",
                    &attempt.upstream_model,
                )
                .map_err(|e| GatewayError::invalid(format!("malformed multipart body: {e}")))?,
            ),
            None => (
                "application/json".to_string(),
                self.patch_raw(attempt, false)?,
            ),
        };
        Ok(crate::providers::EgressRequest {
            path,
            headers: vec![("content-type".into(), content_type)],
            body,
        })
    }

    /// The client's body with `model` swapped (and usage forced on for streams).
    fn patch_raw(&self, attempt: &Attempt, force_usage: bool) -> Result<Vec<u8>, GatewayError> {
        let mut patches = vec![(
            "model",
            serde_json::to_string(&attempt.upstream_model).unwrap_or_default(),
        )];
        if force_usage && !self.client_wants_usage {
            let mut opts = match &self.request {
                PlannedRequest::Chat(c) => c.stream_options.clone().unwrap_or_default(),
                PlannedRequest::Embeddings(_) | PlannedRequest::Media(_) => Default::default(),
            };
            opts.include_usage = Some(true);
            patches.push((
                "stream_options",
                serde_json::to_string(&opts).unwrap_or_default(),
            ));
        }
        patch_top_level(&self.raw, &patches)
            .map_err(|e| GatewayError::invalid(format!("request body is not a JSON object: {e}")))
    }

    /// Whether an upstream status should move on to the next attempt.
    pub fn should_retry_status(&self, status: u16) -> bool {
        self.fallback.retry_on.contains(&status)
    }

    /// Content type of a successful answer to the client.
    pub fn response_content_type(&self) -> &'static str {
        if let PlannedRequest::Media(media) = &self.request {
            return ingress::media::default_content_type(media);
        }
        if self.stream {
            "text/event-stream"
        } else {
            "application/json"
        }
    }

    /// The stream translator for attempt `index`'s successful streamed answer.
    pub fn response_stream(&self, index: usize) -> Box<dyn ResponseStream> {
        let kind = self
            .attempts
            .get(index)
            .map_or(ProviderKind::Openai, |a| a.kind);
        if let Some(fast) = self.attempts.get(index).and_then(|a| self.fast_path(a)) {
            return fast.stream(self.client_wants_usage);
        }
        let encoder = ingress::stream_encoder(
            self.dialect,
            &ingress::AnswerContext {
                id: &self.response_id(),
                model: &self.public_model,
                created: self.created,
                include_usage: self.client_wants_usage,
                request: &self.raw,
            },
        );
        Box::new(TranslatingStream::new(kind.stream_decoder(), encoder))
    }

    fn response_id(&self) -> String {
        match self.dialect {
            Dialect::OpenAi => format!("chatcmpl-{}", self.response_id),
            Dialect::Anthropic => format!("msg_{}", self.response_id),
            Dialect::Responses => format!("resp_{}", self.response_id),
            Dialect::Gemini => self.response_id.clone(),
        }
    }

    /// Whether attempt `index`'s successful complete answer reaches the client as the
    /// upstream's bytes, unchanged (the same-format fast path of a chat, or embeddings), so
    /// a host may relay it as it arrives instead of holding it ([`crate::relay`]).
    pub fn answer_passes_through(&self, index: usize) -> bool {
        let Some(attempt) = self.attempts.get(index) else {
            return false;
        };
        match &self.request {
            PlannedRequest::Chat(_) => !self.stream && self.fast_path(attempt).is_some(),
            PlannedRequest::Embeddings(_) => true,
            PlannedRequest::Media(_) => false,
        }
    }

    /// The usage of attempt `index`'s pass-through answer from the bytes of its top-level
    /// `usage` value (as [`crate::relay::UsageScanner`] found them): what
    /// [`Plan::translate_response`] meters for the same answer held whole.
    pub fn passed_through_usage(&self, index: usize, raw: &[u8]) -> TokenUsage {
        let fast = self.attempts.get(index).and_then(|a| self.fast_path(a));
        usage_value_of(fast, raw)
    }

    /// Translates attempt `index`'s successful, complete answer for the client.
    pub fn translate_response(
        &self,
        index: usize,
        body: &[u8],
    ) -> Result<(Vec<u8>, TokenUsage), GatewayError> {
        let attempt = self
            .attempts
            .get(index)
            .ok_or_else(|| GatewayError::new(ErrorKind::Internal, "attempt index out of range"))?;
        if let PlannedRequest::Media(media) = &self.request {
            // Audio bytes or the provider's JSON, passed through; JSON must parse.
            let usage = ingress::media::usage_of(media, body).map_err(|e| {
                GatewayError::new(
                    ErrorKind::BadGateway,
                    format!("upstream returned invalid JSON: {e}"),
                )
            })?;
            return Ok((body.to_vec(), usage.tokens));
        }
        let fast = self.fast_path(attempt);
        if matches!(self.request, PlannedRequest::Embeddings(_)) || fast.is_some() {
            // Validate it is JSON so a garbage 200 becomes a clean 502.
            let usage = passthrough_usage(fast, body).map_err(|e| {
                GatewayError::new(
                    ErrorKind::BadGateway,
                    format!("upstream returned invalid JSON: {e}"),
                )
            })?;
            return Ok((body.to_vec(), usage));
        }
        let mut resp = attempt.kind.parse_chat(body)?;
        if resp.id.is_empty() {
            resp.id = self.response_id();
        }
        if resp.created == 0 {
            resp.created = self.created;
        }
        if resp.model.is_empty() {
            resp.model = self.public_model.clone();
        }
        Ok((
            ingress::encode_chat_response(self.dialect, &resp, &self.raw),
            resp.usage,
        ))
    }

    /// Translates attempt `index`'s error answer into the caller's dialect.
    pub fn translate_error(&self, index: usize, status: u16, body: &[u8]) -> GatewayError {
        let kind = self
            .attempts
            .get(index)
            .map_or(ProviderKind::Openai, |a| a.kind);
        let mut err = kind.parse_error(status, body);
        if let Some(a) = self.attempts.get(index) {
            err.message = format!("{} (from {})", err.message, a.provider);
        }
        err
    }

    /// What a successful media answer consumed (images, seconds, tokens); `None` for chat
    /// and embeddings, and for an answer that cannot be read.
    pub fn media_usage(&self, body: &[u8]) -> Option<ingress::media::MediaUsage> {
        match &self.request {
            PlannedRequest::Media(media) => ingress::media::usage_of(media, body).ok(),
            _ => None,
        }
    }

    /// The content type of a successful answer: the provider's for audio bytes (the format
    /// it produced), else the one the request decides ([`Plan::response_content_type`]).
    pub fn answer_content_type(&self, upstream: Option<&str>) -> String {
        match (&self.request, upstream) {
            (PlannedRequest::Media(_), Some(ct)) if !ct.trim().is_empty() => ct.to_string(),
            _ => self.response_content_type().to_string(),
        }
    }

    /// The usage record for the request as it ended.
    pub fn usage_record(
        &self,
        index: usize,
        usage: TokenUsage,
        status: u16,
        attempts: u32,
        latency_ms: Option<u64>,
    ) -> UsageRecord {
        let attempt = self
            .attempts
            .get(index.min(self.attempts.len().saturating_sub(1)));
        UsageRecord {
            request_id: String::new(),
            timestamp_ms: 0,
            key_id: self.key_id.clone(),
            team: None,
            model: self.public_model.clone(),
            provider: attempt.map(|a| a.provider.clone()).unwrap_or_default(),
            deployment: attempt.map(|a| a.deployment_id.clone()).unwrap_or_default(),
            input_tokens: usage.input,
            cached_input_tokens: usage.cached_input,
            output_tokens: usage.output,
            images: 0,
            media_seconds: 0.0,
            cost: attempt.map_or(0.0, |a| cost(&usage, &a.price)),
            price: attempt.map(|a| a.price),
            status,
            attempts,
            stream: self.stream,
            latency_ms,
            ttft_ms: None,
        }
    }
}

/// What a native plane beside the edges (the task plane) asks of the key set.
impl Gateway {
    /// The key's and its team's limits that apply to a request made with `key` (a planned
    /// request's, and a task submission's at the edge).
    pub fn limit_scopes(&self, key: &crate::keys::GatewayKey) -> Vec<crate::limits::Scope> {
        let mut scopes = Vec::new();
        if let Some(quota) = key.limits.as_ref().filter(|q| q.is_limited()) {
            scopes.push(crate::limits::Scope::key(&key.id, quota));
        }
        if let Some((team, quota)) = key.team.as_ref().and_then(|t| {
            let quota = self
                .managed_teams
                .get(t)
                .or_else(|| self.config.limits.teams.get(t))?;
            Some((t, quota))
        }) {
            scopes.push(crate::limits::Scope::team(team, quota));
        }
        scopes
    }

    /// Every counter record this gateway's limits can use, known ahead of any request: the
    /// deployments' limits and their models' queues, and the config's and the control
    /// plane's keys and teams. A host whose store cannot create a record atomically
    /// (proxy-wasm shared data takes a compare-and-swap token only for a record that exists,
    /// so two workers creating one at once both succeed and one count is lost) creates these
    /// empty before traffic.
    pub fn counter_records(&self) -> Vec<String> {
        let mut records = std::collections::BTreeSet::new();
        for model in &self.config.models {
            if self.config.queues(model) {
                records.insert(crate::queue::record_key(&model.name));
            }
            for deployment in &model.deployments {
                if let Some(limits) = &deployment.limits {
                    let scope =
                        crate::limits::Scope::deployment(&deployment_id(deployment), limits);
                    records.extend(scope.records());
                }
            }
        }
        for key in self.config.keys.iter().chain(&self.managed_keys) {
            for scope in self.limit_scopes(key) {
                records.extend(scope.records());
            }
        }
        for (team, quota) in self.config.limits.teams.iter().chain(&self.managed_teams) {
            records.extend(crate::limits::Scope::team(team, quota).records());
        }
        records.into_iter().collect()
    }

    /// Authenticates a key presented as `Authorization: Bearer` or `x-api-key` against the
    /// config's and the control plane's keys, as the header phase does.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        x_api_key: Option<&str>,
        now_unix: u64,
    ) -> Result<&crate::keys::GatewayKey, GatewayError> {
        authenticate(
            self.keys(),
            presented_key(authorization, x_api_key),
            now_unix,
        )
    }

    /// The key with this id, if it is in the key set.
    pub fn key(&self, id: &str) -> Option<&crate::keys::GatewayKey> {
        self.keys().find(|k| k.id == id)
    }

    /// Where the task plane is and the resolved edge token, when the config has `tasks`.
    pub fn tasks(&self) -> Option<(crate::tasks::edge::TaskPlaneLocation, Option<&str>)> {
        let location = self
            .config
            .tasks
            .as_ref()?
            .resolve(self.config.control_plane.as_ref())
            .ok()?;
        let token = self
            .secrets
            .get(&location.token_secret)
            .map(|s| s.0.as_str());
        Some((location, token))
    }
}

/// One entry of `/v1/models`.
struct ListedModel<'a> {
    /// The name (or alias) clients send.
    name: &'a str,
    /// What it does.
    mode: crate::catalog::Mode,
    /// Its catalog entry, whose fields describe it.
    entry: Option<&'static crate::catalog::CatalogModel>,
    /// Served through `/v1/tasks` only (an asynchronous provider's model).
    tasks_only: bool,
}
