//! The gateway configuration document, read the same way by every host.
//!
//! One JSON document holds keys (as SHA-256 hashes only), providers (with credentials named,
//! never inlined), models with their deployments and prices, limits and the fallback policy.
//! [`GatewayConfig::from_json`] validates everything up front so a bad config fails at load
//! time, never at request time.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::keys::GatewayKey;
use crate::providers::ProviderKind;
use crate::routing::Strategy;

/// Why a configuration document was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, or not the expected shape.
    #[error("gateway config is not valid JSON for the expected schema: {0}")]
    Parse(#[from] serde_json::Error),
    /// Parsed, but inconsistent.
    #[error("gateway config is invalid: {0}")]
    Invalid(String),
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Gateway keys (hashes only).
    #[serde(default)]
    pub keys: Vec<GatewayKey>,
    /// Upstream providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Public models.
    pub models: Vec<ModelConfig>,
    /// Request limits.
    #[serde(default)]
    pub limits: Limits,
    /// Default fallback policy (models may override).
    #[serde(default)]
    pub fallback: FallbackPolicy,
    /// Default wait queue for models whose every deployment is at its limits (models may
    /// override): 10 s for up to 1,000 requests per model unless set.
    #[serde(default)]
    pub queue: crate::queue::QueuePolicy,
    /// The control plane this edge syncs keys from and ships usage to (optional: the static
    /// config works alone).
    #[serde(default)]
    pub control_plane: Option<crate::control::ControlPlaneConfig>,
    /// The task plane this edge forwards `/v1/tasks` and async requests to (optional:
    /// without it those answer 404).
    #[serde(default)]
    pub tasks: Option<crate::tasks::edge::TasksConfig>,
    /// Asynchronous providers and the models they serve, taken out of `providers` and
    /// `models` at load (see `crate::tasks::providers::deployments`): only the task plane runs
    /// them.
    #[serde(skip)]
    pub task_providers: crate::tasks::providers::deployments::TaskProviders,
    /// How the proxy hosts (Envoy, host-runner) carry attempts: a transport trade-off,
    /// off by default in favour of the dialect's error for every failure.
    #[serde(default)]
    pub edge: EdgeOptions,
}

/// How the edge hosts carry answers (see [`EdgeOptions::route_complete_answers`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeOptions {
    /// Let the chain's *last* attempt of a complete (non-streamed) chat or embeddings answer
    /// asked once (a single-deployment model's only one) skip being held: the proxy hosts
    /// (Envoy, host-runner) send it through their router as the client's own request
    /// rewritten in place, instead of a filter call (`dispatch_http_call`) and a local reply
    /// (≈10% of Envoy's CPU per request, BENCHMARKS.md #17); and every host relays a
    /// same-format answer (the upstream's bytes are the client's answer) as it arrives,
    /// its usage found on the way ([`crate::relay`]). The cost: nothing can replace bytes
    /// that went out, so an answer that breaks mid-body reaches the client cut short (its
    /// `Content-Length` unmet; before its head, the proxy's own error) and a 2xx that is
    /// not JSON reaches it as sent, both metered 502, instead of the dialect's 502 that a
    /// held answer gets. Off by default; streamed attempts are routed either way (after
    /// their first byte nothing can switch anyway).
    #[serde(default)]
    pub route_complete_answers: bool,
}

/// One upstream provider account or server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Which wire format it speaks.
    pub kind: ProviderKind,
    /// Scheme, authority and optional path prefix, e.g. `https://api.openai.com` or
    /// `http://127.0.0.1:8100`. Defaults to the provider's public endpoint.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The host's upstream name (Envoy cluster, host-runner cluster). Defaults to the
    /// provider's name.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Name of the secret holding the API key (an environment variable, Envoy
    /// `vm_config.environment_variables` entry, or Spin variable). Never the key itself.
    #[serde(default)]
    pub api_key_secret: Option<String>,
    /// Extra static headers sent upstream (e.g. `anthropic-version`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `openai` kind only: the provider also serves the Responses API (`/v1/responses`), as
    /// OpenAI itself does, so Responses clients pass through to it untouched.
    #[serde(default)]
    pub responses_api: bool,
    /// `bedrock` kind: the region and the secrets holding the AWS credentials requests are
    /// signed with (SigV4). Without credential secrets, `api_key_secret` may name a Bedrock
    /// API key instead.
    #[serde(default)]
    pub aws: Option<crate::providers::bedrock::AwsConfig>,
    /// `azure` kind: the `api-version` query parameter (default `2024-10-21`).
    #[serde(default)]
    pub api_version: Option<String>,
    /// `openai` and `azure` kinds: how the server departs from OpenAI's API (output-limit
    /// name, `stream_options` support, fields it rejects).
    #[serde(default)]
    pub compat: Option<crate::providers::openai::Compat>,
    /// `vertex` kind: the Google Cloud project and region; the access token is the secret
    /// `api_key_secret` names (refreshing it is the host's job, see `providers::vertex`).
    #[serde(default)]
    pub vertex: Option<crate::providers::vertex::VertexConfig>,
    /// The model-catalog namespace its models are found under (`groq`, `bedrock`...):
    /// defaults to the provider's name when that is a namespace of its kind, else its kind's
    /// (see `crate::catalog`).
    #[serde(default)]
    pub catalog: Option<String>,
    /// Serve every chat and embedding model of its catalog namespace as
    /// `<provider>/<model>`, with the catalog's prices, limits and capabilities.
    #[serde(default)]
    pub expose_catalog: bool,
    /// Provider response headers that reach clients although they name the provider
    /// account (`openai-organization`, `anthropic-organization-id`, rate limits, ...), which
    /// the gateway otherwise strips. Names, case-insensitive.
    #[serde(default)]
    pub pass_response_headers: Vec<String>,
}

/// Price per one million tokens, in the config's currency (USD by convention).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Uncached input tokens.
    #[serde(default)]
    pub input: f64,
    /// Cached input tokens; defaults to the input price.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Output tokens.
    #[serde(default)]
    pub output: f64,
    /// Per image generated (`/v1/images/generations`), in whole currency units, not per 1M.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<f64>,
    /// Per second of audio spoken or transcribed (`/v1/audio/*`), in whole currency units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second: Option<f64>,
}

/// A public model and where it can be served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients send in `model`.
    pub name: String,
    /// Other names for it.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// What it does, as `/v1/models` reports it (`chat`, `embedding`, `image`, `speech`,
    /// `transcription`, `video`). Defaults to its catalog entry's mode, else `image` when
    /// its deployments are priced per image, else `chat`: set it for speech, transcription and
    /// embedding models that have no catalog entry.
    #[serde(default)]
    pub mode: Option<crate::catalog::Mode>,
    /// How deployments are ordered per request.
    #[serde(default)]
    pub strategy: Strategy,
    /// Candidates, in priority order.
    pub deployments: Vec<DeploymentConfig>,
    /// Overrides the global fallback policy.
    #[serde(default)]
    pub fallback: Option<FallbackPolicy>,
    /// Overrides the global wait queue.
    #[serde(default)]
    pub queue: Option<crate::queue::QueuePolicy>,
    /// Output tokens a request without `max_tokens` is assumed to use at most, for budget and
    /// token-limit estimates (the model's real maximum output).
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// Request parameters applied when the client leaves them out (OpenAI Chat names, e.g.
    /// `{"temperature": 0, "max_tokens": 256}`). A small model's sampling defaults can make
    /// it ramble; an operator fixes that here instead of in every client.
    #[serde(default)]
    pub defaults: Map<String, Value>,
}

/// Request fields that shape the request itself rather than tune it: never defaultable.
const STRUCTURAL_FIELDS: [&str; 8] = [
    "model",
    "messages",
    "input",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "system",
];

/// One place a model is served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Provider name (a key of `providers`); with `catalog`, defaults to the one provider
    /// serving the entry's namespace.
    #[serde(default)]
    pub provider: String,
    /// The provider's own model name; with `catalog`, defaults to the entry's upstream id
    /// (for Azure: name the deployment after the model, or set this).
    #[serde(default)]
    pub model: String,
    /// A model-catalog id (`anthropic/claude-sonnet-4-6`): limits, prices and capabilities
    /// come from the catalog (see `crate::catalog`).
    #[serde(default)]
    pub catalog: Option<String>,
    /// Relative weight for the weighted strategy.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Price for metering and the cheapest strategy (with `catalog`: the catalog's unless
    /// set).
    #[serde(default)]
    pub price: Price,
    /// The catalog entry, once resolved at load.
    #[serde(skip)]
    pub catalog_entry: Option<&'static crate::catalog::CatalogModel>,
    /// The provider's quota for this deployment: at its limit the deployment is skipped.
    #[serde(default)]
    pub limits: Option<crate::limits::DeploymentLimits>,
}

fn default_weight() -> u32 {
    1
}

/// Request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted request body in bytes (larger → 413).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Rate limits and budgets per team id (a key's own are on the key).
    #[serde(default)]
    pub teams: BTreeMap<String, crate::limits::Quota>,
}

fn default_max_request_bytes() -> usize {
    4 * 1024 * 1024
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: default_max_request_bytes(),
            teams: BTreeMap::new(),
        }
    }
}

/// When to move on to the next deployment, and how long to wait.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FallbackPolicy {
    /// Upstream statuses that trigger the next attempt.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<u16>,
    /// Per-attempt timeout.
    #[serde(default = "default_attempt_timeout_ms")]
    pub attempt_timeout_ms: u64,
    /// Timeout for the whole request, all attempts together.
    #[serde(default = "default_total_timeout_ms")]
    pub total_timeout_ms: u64,
    /// Consecutive failures after which a deployment is ejected.
    #[serde(default = "default_eject_after")]
    pub eject_after_failures: u32,
    /// How long an ejected deployment is skipped.
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
    /// Whether a provider's 429 with a `Retry-After` in seconds holds back every request for
    /// that long (at most 60 s; the deployment is tried after the others and asked by no
    /// request before then): its quota is the provider account's, so the next request would
    /// most likely meet the same 429. Off, the back-off holds only the request that was
    /// answered 429. Either way the 429 counts as a failure toward ejection.
    #[serde(default = "default_share_retry_after")]
    pub share_retry_after: bool,
}

fn default_retry_on() -> Vec<u16> {
    vec![408, 429, 500, 502, 503, 504, 529]
}
fn default_attempt_timeout_ms() -> u64 {
    30_000
}
fn default_total_timeout_ms() -> u64 {
    120_000
}
fn default_eject_after() -> u32 {
    3
}
fn default_cooldown_ms() -> u64 {
    30_000
}
fn default_share_retry_after() -> bool {
    true
}

impl Default for FallbackPolicy {
    fn default() -> Self {
        FallbackPolicy {
            retry_on: default_retry_on(),
            attempt_timeout_ms: default_attempt_timeout_ms(),
            total_timeout_ms: default_total_timeout_ms(),
            eject_after_failures: default_eject_after(),
            cooldown_ms: default_cooldown_ms(),
            share_retry_after: default_share_retry_after(),
        }
    }
}

impl GatewayConfig {
    /// Parses and validates a configuration document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        // Most configs name no asynchronous provider, and those read straight into the types:
        // no `Value` tree (its allocations were most of a parse, and the Spin component parses
        // its config in every request's fresh instance). An asynchronous provider's `kind` is
        // no `ProviderKind`, so such a config (or a broken one) fails here and takes the path
        // that splits the task providers out, with that path's errors. The text is checked as
        // UTF-8 once, so the reader need not check each string again.
        let direct = std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| serde_json::from_str::<GatewayConfig>(text).ok());
        let mut config = match direct {
            Some(config) => config,
            None => Self::from_document(bytes)?,
        };
        crate::catalog::resolve(&mut config)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a config through a `Value` document, taking the asynchronous providers (and the
    /// models using them) out before the typed read.
    fn from_document(bytes: &[u8]) -> Result<Self, ConfigError> {
        let mut document: Value = serde_json::from_slice(bytes)?;
        let task_providers = crate::tasks::providers::deployments::split(
            &mut document,
            std::str::from_utf8(bytes).ok(),
        )
        .map_err(ConfigError::Invalid)?;
        let mut config: GatewayConfig = serde_json::from_value(document)?;
        config.task_providers = task_providers;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut key_ids = HashSet::new();
        for (team, quota) in &self.limits.teams {
            quota
                .validate(&format!("limits.teams.{team}"))
                .map_err(ConfigError::Invalid)?;
        }
        for key in &self.keys {
            key.validate().map_err(ConfigError::Invalid)?;
            if !key_ids.insert(key.id.as_str()) {
                return invalid(format!("duplicate key id `{}`", key.id));
            }
        }
        for (name, provider) in &self.providers {
            if provider.responses_api && provider.kind != ProviderKind::Openai {
                return invalid(format!(
                    "provider `{name}`: `responses_api` is for `openai` providers"
                ));
            }
            if provider.compat.is_some()
                && !matches!(provider.kind, ProviderKind::Openai | ProviderKind::Azure)
            {
                return invalid(format!(
                    "provider `{name}`: `compat` is for `openai` and `azure` providers"
                ));
            }
            if provider.kind == ProviderKind::Vertex && provider.vertex.is_none() {
                return invalid(format!(
                    "provider `{name}`: a `vertex` provider needs `vertex` (`project` and `location`)"
                ));
            }
            if provider.kind == ProviderKind::Bedrock && provider.aws.is_none() {
                return invalid(format!(
                    "provider `{name}`: a `bedrock` provider needs `aws` (at least its `region`)"
                ));
            }
            let url = provider
                .base_url()
                .map_err(|e| ConfigError::Invalid(format!("provider `{name}`: {e}")))?;
            crate::providers::BaseUrl::parse(&url)
                .map_err(|e| ConfigError::Invalid(format!("provider `{name}`: {e}")))?;
            if let Some(aws) = &provider.aws {
                if aws.access_key_id_secret.is_some() != aws.secret_access_key_secret.is_some() {
                    return invalid(format!(
                        "provider `{name}`: `aws` needs both `access_key_id_secret` and \
                         `secret_access_key_secret`, or neither"
                    ));
                }
            }
        }
        let mut names = HashSet::new();
        for model in &self.models {
            if model.deployments.is_empty() {
                return invalid(format!("model `{}` has no deployments", model.name));
            }
            for alias in std::iter::once(&model.name).chain(&model.aliases) {
                if alias.is_empty() {
                    return invalid("empty model name".into());
                }
                if !names.insert(alias.as_str()) {
                    return invalid(format!("model name `{alias}` is defined twice"));
                }
            }
            for d in &model.deployments {
                if let (Some(mode), Some(entry)) = (model.mode, d.catalog_entry) {
                    if entry.mode != mode {
                        return invalid(format!(
                            "model `{}`: mode `{}` but its catalog entry `{}` is a {} model",
                            model.name,
                            mode.as_str(),
                            entry.id,
                            entry.mode.as_str()
                        ));
                    }
                }
                if !self.providers.contains_key(&d.provider) {
                    return invalid(format!(
                        "model `{}` uses unknown provider `{}`",
                        model.name, d.provider
                    ));
                }
                let p = d.price;
                if [
                    p.input,
                    p.output,
                    p.cached_input.unwrap_or(0.0),
                    p.image.unwrap_or(0.0),
                    p.second.unwrap_or(0.0),
                ]
                .iter()
                .any(|x| !x.is_finite() || *x < 0.0)
                {
                    return invalid(format!("model `{}`: prices must be >= 0", model.name));
                }
            }
            if let Some(field) = model
                .defaults
                .keys()
                .find(|k| STRUCTURAL_FIELDS.contains(&k.as_str()))
            {
                return invalid(format!(
                    "model `{}`: `{field}` cannot have a default (defaults tune requests, they do not shape them)",
                    model.name
                ));
            }
            if model.strategy == Strategy::Weighted
                && model.deployments.iter().all(|d| d.weight == 0)
            {
                return invalid(format!("model `{}`: all weights are zero", model.name));
            }
        }
        crate::tasks::providers::deployments::check_names(&self.task_providers, &mut names)
            .map_err(ConfigError::Invalid)?;
        if self.limits.max_request_bytes == 0 {
            return invalid("limits.max_request_bytes must be > 0".into());
        }
        if let Some(cp) = &self.control_plane {
            cp.validate().map_err(ConfigError::Invalid)?;
        }
        if let Some(tasks) = &self.tasks {
            tasks
                .resolve(self.control_plane.as_ref())
                .map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }

    /// The model config for a public name or alias.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.model_index(name).map(|i| &self.models[i])
    }

    /// Where in `models` the model called `name` (or aliased so) is.
    pub fn model_index(&self, name: &str) -> Option<usize> {
        self.models
            .iter()
            .position(|m| m.name == name || m.aliases.iter().any(|a| a == name))
    }

    /// The canonical name of the model (synchronous or served by asynchronous providers)
    /// called `name` or aliased so.
    pub fn model_name(&self, name: &str) -> Option<&str> {
        self.model(name)
            .map(|m| m.name.as_str())
            .or_else(|| self.task_providers.model(name).map(|m| m.name.as_str()))
    }

    /// What `model` does: its configured mode, else its catalog entry's, else `image` when
    /// it is priced per image, else `chat`.
    pub fn mode_of(&self, model: &ModelConfig) -> crate::catalog::Mode {
        use crate::catalog::Mode;
        model
            .mode
            .or_else(|| {
                model
                    .deployments
                    .iter()
                    .find_map(|d| d.catalog_entry.map(|e| e.mode))
            })
            .unwrap_or(
                if model.deployments.iter().any(|d| d.price.image.is_some()) {
                    Mode::Image
                } else {
                    Mode::Chat
                },
            )
    }

    /// The fallback policy in force for `model`.
    pub fn fallback_for<'a>(&'a self, model: &'a ModelConfig) -> &'a FallbackPolicy {
        model.fallback.as_ref().unwrap_or(&self.fallback)
    }

    /// The wait queue in force for `model`.
    pub fn queue_for(&self, model: &ModelConfig) -> crate::queue::QueuePolicy {
        model.queue.unwrap_or(self.queue)
    }

    /// Whether a request may ever wait in a queue: some model has deployment limits and its
    /// queue on (a host that wakes waiting requests on a timer needs it only then).
    pub fn may_queue(&self) -> bool {
        self.models.iter().any(|m| self.queues(m))
    }

    /// Whether requests for `model` may wait in its queue: it has deployment limits to wait
    /// for, and its queue on.
    pub fn queues(&self, model: &ModelConfig) -> bool {
        self.queue_for(model).enabled() && model.deployments.iter().any(|d| d.limits.is_some())
    }

    /// Every distinct cluster name the hosts must provide, with the base URL it points at.
    pub fn clusters(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .providers
            .iter()
            .map(|(name, p)| {
                (
                    p.cluster.clone().unwrap_or_else(|| name.clone()),
                    // Every provider's URL was checked at load.
                    p.base_url().unwrap_or_default(),
                )
            })
            .collect();
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SAMPLE: &str = r#"{
      "keys": [{"id":"k1","sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","models":["*"]}],
      "providers": {"local": {"kind":"openai","base_url":"http://127.0.0.1:8100"}},
      "models": [{"name":"m","aliases":["mm"],"deployments":[{"provider":"local","model":"up"}]}]
    }"#;

    #[test]
    fn parses_sample() {
        let c = GatewayConfig::from_json(SAMPLE.as_bytes()).unwrap();
        assert_eq!(c.model("mm").unwrap().name, "m");
        assert_eq!(
            c.clusters(),
            vec![("local".into(), "http://127.0.0.1:8100".into())]
        );
        assert_eq!(c.limits.max_request_bytes, 4 * 1024 * 1024);
    }

    /// Configs without an asynchronous provider are read straight into the types; the result
    /// must be what the `Value` path (which every config took before) makes of them.
    #[test]
    fn the_direct_read_and_the_document_read_agree() {
        let rich = r#"{
          "keys": [{"id":"k1","sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "models":["*"],"team":"blue","limits":{"rpm":5,"tpm":1000,"concurrent":2}}],
          "providers": {
            "a": {"kind":"openai","base_url":"http://a.test","cluster":"a"},
            "c": {"kind":"anthropic","base_url":"http://c.test","api_key_secret":"C_KEY"}
          },
          "models": [
            {"name":"chain","aliases":["ch"],"max_output_tokens":1000,"queue":{"max_wait_ms":0},
             "deployments":[
               {"provider":"a","model":"m-a","price":{"input":1.0,"output":2.5},
                "limits":{"concurrent":1}},
               {"provider":"c","model":"m-c"}]}
          ],
          "fallback": {"attempt_timeout_ms":1000,"total_timeout_ms":2500,
                       "eject_after_failures":2,"cooldown_ms":10000},
          "limits": {"max_request_bytes":12000,"teams":{"blue":{"concurrent":10}}},
          "tasks": {"base_url":"http://tasks.test","token_secret":"EDGE_TOKEN"},
          "control_plane": {"base_url":"http://cp.test","token_secret":"EDGE_TOKEN"},
          "edge": {"route_complete_answers":true}
        }"#;
        let demo = include_str!("../../../config/demo.json");
        for text in [SAMPLE, rich, demo] {
            let direct = serde_json::from_str::<GatewayConfig>(text).expect("direct read");
            let document = GatewayConfig::from_document(text.as_bytes()).expect("document read");
            assert_eq!(format!("{direct:?}"), format!("{document:?}"));
            let parsed = GatewayConfig::from_json(text.as_bytes()).unwrap();
            let mut resolved = document;
            crate::catalog::resolve(&mut resolved).unwrap();
            assert_eq!(format!("{parsed:?}"), format!("{resolved:?}"));
        }
    }

    /// A config the direct read refuses takes the document path: an asynchronous provider
    /// still parses (split out as a task provider), and a broken config keeps that path's
    /// error.
    #[test]
    fn configs_the_direct_read_refuses_take_the_document_path() {
        let with_task_provider = SAMPLE.replace(
            r#""providers": {"#,
            r#""providers": {"ws": {"kind":"wavespeed","api_key_secret":"WS_KEY"},"#,
        );
        assert!(serde_json::from_str::<GatewayConfig>(&with_task_provider).is_err());
        let c = GatewayConfig::from_json(with_task_provider.as_bytes()).unwrap();
        assert!(c.task_providers.providers.contains_key("ws"));
        assert!(!c.providers.contains_key("ws"));
        let broken = SAMPLE.replace("\"models\":[\"*\"]", "\"models\":7");
        let err = GatewayConfig::from_json(broken.as_bytes()).unwrap_err();
        let document_err = GatewayConfig::from_document(broken.as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), document_err.to_string());
        assert!(GatewayConfig::from_json(b"\xff{}").is_err());
    }

    #[test]
    fn rejects_inconsistent_configs() {
        for (bad, why) in [
            (
                SAMPLE.replace("\"provider\":\"local\"", "\"provider\":\"nope\""),
                "unknown provider",
            ),
            (
                SAMPLE.replace("\"aliases\":[\"mm\"]", "\"aliases\":[\"m\"]"),
                "defined twice",
            ),
            (SAMPLE.replace("9f86", "zz86"), "sha256"),
            (
                SAMPLE.replace("\"aliases\":[\"mm\"]", "\"defaults\":{\"messages\":[]}"),
                "cannot have a default",
            ),
            (
                SAMPLE.replace("\"models\":[\"*\"]", "\"models\":[\"*\"],\"bogus\":1"),
                "unknown field",
            ),
        ] {
            let err = GatewayConfig::from_json(bad.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err} should mention {why}");
        }
    }
}
