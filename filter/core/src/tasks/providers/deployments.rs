//! Models served by asynchronous providers ("task models"): their configuration, validated at
//! load, and the resolved form the task plane drives.
//!
//! They are declared in the same `providers` and `models` sections as every other provider,
//! with an asynchronous `kind`:
//!
//! ```json
//! "providers": {
//!   "ws": {"kind": "wavespeed", "api_key_secret": "WAVESPEED_API_KEY",
//!          "webhook_secret_secret": "WAVESPEED_WEBHOOK_SECRET"},
//!   "fal": {"kind": "fal", "api_key_secret": "FAL_KEY",
//!           "webhook_jwks_url": "https://rest.alpha.fal.ai/.well-known/jwks.json"}
//! },
//! "models": [{"name": "flux-dev", "deployments": [
//!   {"provider": "ws", "model": "wavespeed-ai/flux-dev", "price": {"image": 0.025}},
//!   {"provider": "fal", "model": "fal-ai/flux/dev", "price": {"image": 0.03}}]}]
//! ```
//!
//! [`split`] takes such providers and the models whose deployments use them out of the
//! document before the synchronous part is read, so the request path (chat, embeddings) never
//! sees them: they are run only by the task plane (`POST /v1/tasks`). A model mixing both
//! kinds of provider is refused: its fallback chain could not be run by either side alone.
//! DashScope's synchronous text API already owns the kind `dashscope`, so its task API is
//! `dashscope_tasks`.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use serde_json::Value;

use super::AsyncProvider;

/// One asynchronous provider account.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsyncProviderConfig {
    /// Which provider API it speaks.
    #[serde(deserialize_with = "kind")]
    pub kind: AsyncProvider,
    /// Scheme, authority and optional path prefix; defaults to the provider's public API.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of the secret holding the API key (never the key itself).
    #[serde(default)]
    pub api_key_secret: Option<String>,
    /// Name of the secret holding the `whsec_…` secret its webhooks are signed with
    /// (WaveSpeed, Replicate). Without one (or a JWKS URL for fal), the provider is not asked
    /// to call back and its tasks are polled only.
    #[serde(default)]
    pub webhook_secret_secret: Option<String>,
    /// fal: where its webhook signing keys (a JWKS document) are published.
    #[serde(default)]
    pub webhook_jwks_url: Option<String>,
}

impl AsyncProviderConfig {
    /// The configured base URL, else the provider's public one (without a trailing `/`).
    pub fn base_url(&self) -> String {
        self.base_url
            .as_deref()
            .unwrap_or(self.kind.default_base_url())
            .trim_end_matches('/')
            .to_string()
    }

    /// Every secret name this provider uses.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.api_key_secret
            .iter()
            .chain(&self.webhook_secret_secret)
            .map(String::as_str)
    }

    /// Whether the provider's webhooks can be verified (so it may be asked to send them).
    pub fn verifies_webhooks(&self) -> bool {
        self.kind.has_webhooks()
            && match self.kind {
                AsyncProvider::Fal => self.webhook_jwks_url.is_some(),
                _ => self.webhook_secret_secret.is_some(),
            }
    }
}

/// The kinds a config writes, by name.
const KINDS: [(&str, AsyncProvider); 5] = [
    ("wavespeed", AsyncProvider::Wavespeed),
    ("replicate", AsyncProvider::Replicate),
    ("fal", AsyncProvider::Fal),
    ("dashscope_tasks", AsyncProvider::Dashscope),
    ("veo", AsyncProvider::Veo),
];

/// The asynchronous provider a config's `kind` names, if it names one.
pub fn kind_named(name: &str) -> Option<AsyncProvider> {
    KINDS.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

/// The name a config writes for `provider`'s kind.
pub fn kind_name(provider: AsyncProvider) -> &'static str {
    KINDS
        .iter()
        .find(|(_, p)| *p == provider)
        .map_or("", |(n, _)| n)
}

fn kind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<AsyncProvider, D::Error> {
    let name = String::deserialize(d)?;
    kind_named(&name).ok_or_else(|| {
        serde::de::Error::custom(format!("`{name}` is not an asynchronous provider kind"))
    })
}

/// What a task model's deployment costs: per image, per second of video or audio, per task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskPrice {
    /// Per image produced.
    #[serde(default)]
    pub image: Option<f64>,
    /// Per second of video or audio produced.
    #[serde(default)]
    pub second: Option<f64>,
    /// Per finished task, whatever it produced.
    #[serde(default)]
    pub task: Option<f64>,
}

impl TaskPrice {
    /// The cost of a succeeded task with this usage.
    pub fn cost(&self, images: u64, seconds: f64) -> f64 {
        self.image.unwrap_or(0.0) * images as f64
            + self.second.unwrap_or(0.0) * seconds
            + self.task.unwrap_or(0.0)
    }
}

/// One place a task model is served.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDeploymentConfig {
    /// The provider (a key of `providers` with an asynchronous kind).
    pub provider: String,
    /// The provider's own model name (WaveSpeed `wavespeed-ai/flux-dev`, fal `fal-ai/…`,
    /// Replicate `owner/name` or a version id, DashScope `wanx2.1-t2i-turbo`, Veo
    /// `veo-3.0-generate-001`).
    pub model: String,
    /// Prices for metering.
    #[serde(default)]
    pub price: TaskPrice,
}

/// A public model served by asynchronous providers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskModelConfig {
    /// The name clients send in `model`.
    pub name: String,
    /// Other names for it.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// What it makes, as `/v1/models` reports it; defaults to `video` when it is priced per
    /// second or served by Veo, else `image`.
    #[serde(default)]
    pub mode: Option<crate::catalog::Mode>,
    /// Candidates in order: a task that fails or times out on one is resubmitted to the next
    /// once.
    pub deployments: Vec<TaskDeploymentConfig>,
    /// Overrides the config's fallback policy; its `total_timeout_ms` is how long a
    /// synchronous media request naming this model waits for the task (the facade).
    #[serde(default)]
    pub fallback: Option<crate::config::FallbackPolicy>,
}

impl TaskModelConfig {
    /// Whether clients may call it `name`.
    pub fn is_named(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|a| a == name)
    }
}

/// The asynchronous part of a config document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskProviders {
    /// Asynchronous providers by name.
    pub providers: BTreeMap<String, AsyncProviderConfig>,
    /// Models served by them.
    pub models: Vec<TaskModelConfig>,
}

impl TaskProviders {
    /// The task model called `name` (or an alias).
    pub fn model(&self, name: &str) -> Option<&TaskModelConfig> {
        self.models.iter().find(|m| m.is_named(name))
    }

    /// What `model` makes: its configured mode, else `video` when a deployment is priced
    /// per second or is on Veo, else `image`.
    pub fn mode_of(&self, model: &TaskModelConfig) -> crate::catalog::Mode {
        use crate::catalog::Mode;
        model.mode.unwrap_or_else(|| {
            let video = model.deployments.iter().any(|d| {
                d.price.second.is_some()
                    || self
                        .providers
                        .get(&d.provider)
                        .is_some_and(|p| p.kind == AsyncProvider::Veo)
            });
            if video {
                Mode::Video
            } else {
                Mode::Image
            }
        })
    }
}

/// A task model's deployment as the task plane drives it: provider, address, credentials.
#[derive(Clone, PartialEq)]
pub struct TaskDeployment {
    /// `provider/model`, as deployments are named in ledgers and attempt logs.
    pub id: String,
    /// The provider's name in the config.
    pub provider_name: String,
    /// Its API.
    pub provider: AsyncProvider,
    /// Its base URL, without a trailing `/`.
    pub base_url: String,
    /// The provider's model name.
    pub model: String,
    /// Prices.
    pub price: TaskPrice,
    /// The API key, when the provider has one configured and the host resolved it.
    pub api_key: Option<String>,
    /// The `whsec_…` webhook secret, resolved.
    pub webhook_secret: Option<String>,
    /// fal's JWKS URL.
    pub webhook_jwks_url: Option<String>,
    /// A secret the deployment needs but the host could not resolve.
    pub missing_secret: Option<String>,
}

impl std::fmt::Debug for TaskDeployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskDeployment")
            .field("id", &self.id)
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("missing_secret", &self.missing_secret)
            .finish_non_exhaustive()
    }
}

impl TaskDeployment {
    /// Whether the provider should be asked to call back (else it is only polled).
    pub fn wants_webhooks(&self) -> bool {
        self.provider.has_webhooks()
            && match self.provider {
                AsyncProvider::Fal => self.webhook_jwks_url.is_some(),
                _ => self.webhook_secret.is_some(),
            }
    }

    /// The provider's headers for a call: credentials and the call's own.
    pub fn headers(&self, call: &super::ProviderCall) -> Vec<(String, String)> {
        let mut headers = self
            .api_key
            .as_deref()
            .map(|k| self.provider.auth_headers(k))
            .unwrap_or_default();
        headers.extend(call.headers.iter().cloned());
        headers
    }
}

impl TaskProviders {
    /// `model`'s deployments in fallback order, their secrets looked up with `secret`.
    pub fn route(
        &self,
        model: &TaskModelConfig,
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<TaskDeployment> {
        model
            .deployments
            .iter()
            .filter_map(|d| {
                let p = self.providers.get(&d.provider)?;
                let api_key = p.api_key_secret.as_deref().and_then(secret);
                let webhook_secret = p.webhook_secret_secret.as_deref().and_then(secret);
                let missing_secret = p.api_key_secret.iter().find(|_| api_key.is_none()).cloned();
                Some(TaskDeployment {
                    id: format!("{}/{}", d.provider, d.model),
                    provider_name: d.provider.clone(),
                    provider: p.kind,
                    base_url: p.base_url(),
                    model: d.model.clone(),
                    price: d.price,
                    api_key,
                    webhook_secret,
                    webhook_jwks_url: p.webhook_jwks_url.clone(),
                    missing_secret,
                })
            })
            .collect()
    }
}

/// The task part's entries as they are written in the config's text, so a schema error is
/// reported with its line and column (the document was parsed into a [`Value`] first, which
/// keeps no positions).
#[derive(Deserialize)]
struct SourceEntries<'a> {
    #[serde(borrow, default)]
    providers: BTreeMap<String, &'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    models: Vec<&'a serde_json::value::RawValue>,
}

/// `value` as a `T`; when it is not one, the error names where in `source` (the config's
/// text) the entry `find` picks out went wrong, by line and column of the whole text.
fn typed<T: serde::de::DeserializeOwned>(
    value: Value,
    source: Option<&str>,
    find: impl for<'s> Fn(&'s SourceEntries<'s>) -> Option<&'s serde_json::value::RawValue>,
) -> Result<T, String> {
    let err = match serde_json::from_value(value) {
        Ok(typed) => return Ok(typed),
        Err(err) => err,
    };
    let positioned = source.and_then(|source| {
        let entries: SourceEntries<'_> = serde_json::from_str(source).ok()?;
        let raw = find(&entries)?.get();
        let err = serde_json::from_str::<T>(raw).err()?;
        // Where the entry starts in the whole text (it is a slice of it).
        let offset = (raw.as_ptr() as usize).checked_sub(source.as_ptr() as usize)?;
        let before = source.get(..offset)?;
        let line = before.matches('\n').count() + err.line();
        let column = if err.line() == 1 {
            offset - before.rfind('\n').map_or(0, |nl| nl + 1) + err.column()
        } else {
            err.column()
        };
        let text = err.to_string();
        let message = text
            .rsplit_once(" at line ")
            .map_or(text.as_str(), |(m, _)| m);
        Some(format!("{message} at line {line} column {column}"))
    });
    Err(positioned.unwrap_or_else(|| err.to_string()))
}

/// Takes the asynchronous providers, and the models using them, out of a config `document`
/// (which then holds only the synchronous part), validating them. `source` is the document's
/// text, when the caller has it: schema errors then carry their line and column.
pub fn split(document: &mut Value, source: Option<&str>) -> Result<TaskProviders, String> {
    let mut out = TaskProviders::default();
    if let Some(providers) = document.get_mut("providers").and_then(Value::as_object_mut) {
        let names: Vec<String> = providers
            .iter()
            .filter(|(_, p)| p["kind"].as_str().and_then(kind_named).is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let value = providers.remove(&name).unwrap_or_default();
            let config: AsyncProviderConfig = typed(value, source, |entries| {
                entries.providers.get(&name).copied()
            })
            .map_err(|e| format!("provider `{name}`: {e}"))?;
            if let Some(url) = &config.base_url {
                crate::providers::BaseUrl::parse(url)
                    .map_err(|e| format!("provider `{name}`: {e}"))?;
            }
            if config.webhook_jwks_url.is_some() && config.kind != AsyncProvider::Fal {
                return Err(format!(
                    "provider `{name}`: `webhook_jwks_url` is for `fal` providers"
                ));
            }
            if config.webhook_secret_secret.is_some()
                && !matches!(
                    config.kind,
                    AsyncProvider::Wavespeed | AsyncProvider::Replicate
                )
            {
                return Err(format!(
                    "provider `{name}`: `webhook_secret_secret` is for `wavespeed` and \
                     `replicate` providers ({} {})",
                    kind_name(config.kind),
                    if config.kind.has_webhooks() {
                        "webhooks are verified with `webhook_jwks_url`"
                    } else {
                        "sends no webhooks"
                    }
                ));
            }
            if let Some(url) = &config.webhook_jwks_url {
                crate::providers::BaseUrl::parse(url)
                    .map_err(|e| format!("provider `{name}`: webhook_jwks_url: {e}"))?;
            }
            out.providers.insert(name, config);
        }
    }
    if out.providers.is_empty() {
        return Ok(out);
    }
    if let Some(models) = document.get_mut("models").and_then(Value::as_array_mut) {
        let mut kept = Vec::with_capacity(models.len());
        for (index, model) in models.drain(..).enumerate() {
            let uses = |async_side: bool| {
                model["deployments"].as_array().is_some_and(|ds| {
                    ds.iter().any(|d| {
                        d["provider"]
                            .as_str()
                            .is_some_and(|p| out.providers.contains_key(p) == async_side)
                            || (!async_side && d["provider"].is_null())
                    })
                })
            };
            match (uses(true), uses(false)) {
                (false, _) => kept.push(model),
                (true, true) => {
                    return Err(format!(
                        "model `{}` mixes asynchronous providers with synchronous ones: \
                         give each kind its own model",
                        model["name"].as_str().unwrap_or_default()
                    ))
                }
                (true, false) => {
                    let name = model["name"].as_str().unwrap_or_default().to_string();
                    let parsed: TaskModelConfig =
                        typed(model, source, |entries| entries.models.get(index).copied())
                            .map_err(|e| format!("model `{name}`: {e}"))?;
                    out.models.push(parsed);
                }
            }
        }
        *models = kept;
    }
    validate_models(&out.models)?;
    Ok(out)
}

fn validate_models(models: &[TaskModelConfig]) -> Result<(), String> {
    for model in models {
        for d in &model.deployments {
            if d.model.trim().is_empty() {
                return Err(format!(
                    "model `{}`: a deployment on `{}` needs the provider's `model`",
                    model.name, d.provider
                ));
            }
            let p = d.price;
            if [p.image, p.second, p.task]
                .iter()
                .flatten()
                .any(|x| !x.is_finite() || *x < 0.0)
            {
                return Err(format!("model `{}`: prices must be >= 0", model.name));
            }
        }
    }
    Ok(())
}

/// Checks task model names against each other and the synchronous models' `names`.
pub fn check_names<'a>(
    task: &'a TaskProviders,
    names: &mut HashSet<&'a str>,
) -> Result<(), String> {
    for model in &task.models {
        if model.deployments.is_empty() {
            return Err(format!("model `{}` has no deployments", model.name));
        }
        for alias in std::iter::once(&model.name).chain(&model.aliases) {
            if alias.is_empty() {
                return Err("empty model name".into());
            }
            if !names.insert(alias.as_str()) {
                return Err(format!("model name `{alias}` is defined twice"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "providers": {
                "local": {"kind": "openai", "base_url": "http://127.0.0.1:8100"},
                "ws": {"kind": "wavespeed", "base_url": "http://127.0.0.1:9001",
                       "api_key_secret": "WS_KEY", "webhook_secret_secret": "WS_HOOK"},
                "ds": {"kind": "dashscope_tasks", "api_key_secret": "DS_KEY"}
            },
            "models": [
                {"name": "chat", "deployments": [{"provider": "local", "model": "m"}]},
                {"name": "flux", "aliases": ["flux-dev"], "deployments": [
                    {"provider": "ws", "model": "wavespeed-ai/flux-dev", "price": {"image": 0.02}},
                    {"provider": "ds", "model": "wanx2.1-t2i-turbo", "price": {"task": 0.05}}]}
            ]
        })
    }

    #[test]
    fn async_providers_and_their_models_are_taken_out() {
        let mut document = doc();
        let task = split(&mut document, None).unwrap();
        assert_eq!(task.providers.len(), 2);
        assert_eq!(task.providers["ds"].kind, AsyncProvider::Dashscope);
        assert_eq!(
            task.providers["ds"].base_url(),
            "https://dashscope-intl.aliyuncs.com"
        );
        assert!(task.providers["ws"].verifies_webhooks());
        assert!(!task.providers["ds"].verifies_webhooks());
        assert_eq!(task.model("flux-dev").unwrap().deployments.len(), 2);
        assert_eq!(document["providers"].as_object().unwrap().len(), 1);
        assert_eq!(document["models"].as_array().unwrap().len(), 1);
        let price = task.models[0].deployments[1].price;
        assert_eq!(price.cost(3, 0.0), 0.05);
        assert!((task.models[0].deployments[0].price.cost(3, 0.0) - 0.06).abs() < 1e-9);
    }

    #[test]
    fn mixed_models_and_misplaced_settings_are_refused() {
        let mut mixed = doc();
        mixed["models"][1]["deployments"][1]["provider"] = json!("local");
        assert!(split(&mut mixed, None).unwrap_err().contains("mixes"));

        let mut jwks = doc();
        jwks["providers"]["ws"]["webhook_jwks_url"] = json!("https://example.com/jwks");
        assert!(split(&mut jwks, None).unwrap_err().contains("`fal`"));

        let mut secret = doc();
        secret["providers"]["ds"]["webhook_secret_secret"] = json!("X");
        assert!(split(&mut secret, None)
            .unwrap_err()
            .contains("sends no webhooks"));

        let mut url = doc();
        url["providers"]["ws"]["base_url"] = json!("ftp://x");
        assert!(split(&mut url, None).unwrap_err().contains("scheme"));

        let mut price = doc();
        price["models"][1]["deployments"][0]["price"]["image"] = json!(-1);
        assert!(split(&mut price, None).unwrap_err().contains(">= 0"));

        let mut unknown = doc();
        unknown["models"][1]["deployments"][0]["weight"] = json!(2);
        assert!(split(&mut unknown, None)
            .unwrap_err()
            .contains("unknown field"));
    }

    #[test]
    fn schema_errors_name_their_line_and_column_in_the_config_text() {
        let text = r#"{
  "providers": {
    "local": {"kind": "openai", "base_url": "http://127.0.0.1:8100"},
    "ws": {"kind": "wavespeed",
           "api_key_secret": "WS_KEY", "webhook_secret": "WS_HOOK"}
  },
  "models": [
    {"name": "chat", "deployments": [{"provider": "local", "model": "m"}]},
    {"name": "flux", "deployments": [
      {"provider": "ws", "model": "wavespeed-ai/flux-dev",
       "price": {"image": "cheap"}}]}
  ]
}"#;
        let split_text = |text: &str| {
            let mut document: Value = serde_json::from_str(text).unwrap();
            split(&mut document, Some(text)).unwrap_err()
        };
        // The provider's unknown field: line 5, where `"webhook_secret"` ends.
        let err = split_text(text);
        assert!(
            err.starts_with("provider `ws`: unknown field `webhook_secret`"),
            "{err}"
        );
        let column = text.lines().nth(4).unwrap().find(": \"WS_HOOK\"").unwrap();
        assert!(
            err.ends_with(&format!("at line 5 column {column}")),
            "{err}"
        );
        // The model's price of the wrong type: line 11, in its model's entry.
        let fixed = text.replace("\"webhook_secret\"", "\"webhook_secret_secret\"");
        let err = split_text(&fixed);
        assert!(
            err.starts_with("model `flux`: invalid type: string \"cheap\""),
            "{err}"
        );
        assert!(err.contains("at line 11 column "), "{err}");
        // Through the gateway's own loader, too.
        let err = crate::config::GatewayConfig::from_json(text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("at line 5 column"), "{err}");
    }

    #[test]
    fn kind_names_round_trip() {
        for provider in AsyncProvider::ALL {
            assert_eq!(kind_named(kind_name(provider)), Some(provider));
        }
        assert_eq!(
            kind_named("dashscope"),
            None,
            "the synchronous text API's kind"
        );
    }
}
