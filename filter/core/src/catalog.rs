//! The built-in model catalog: hundreds of current models of the providers the gateway
//! speaks, by name, with their limits, prices and capabilities.
//!
//! The data is `catalog/models.tsv` (sources, date and columns in `catalog/README.md`),
//! embedded as text: one tab-separated line per model is about 70 bytes, far smaller in
//! `filter.wasm` than any serialized structure, and it is parsed once, on first use.
//!
//! A config uses it two ways. A deployment may name a catalog entry
//! (`{"catalog": "anthropic/claude-sonnet-4-6"}`) instead of a provider and model: the
//! provider is the configured one whose catalog namespace matches, the upstream model is the
//! entry's id, and the price is the catalog's unless the deployment sets one. And a provider
//! with `expose_catalog` serves every chat and embedding model of its namespace as
//! `<provider>/<model>` without listing them. Either way the entry's capabilities are checked
//! before any provider is called (see [`CatalogModel::serves_chat`]), and `GET /v1/models`
//! describes the model with them ([`CatalogModel::describe`]).

use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::canonical::{ChatRequest, Content, ContentPart, ResponseFormat};
use crate::config::{ConfigError, DeploymentConfig, GatewayConfig, ModelConfig, Price};
use crate::providers::ProviderKind;

/// The catalog as shipped (see the module docs).
const DATA: &str = include_str!("../catalog/models.tsv");

/// What a model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Chat / text generation.
    Chat,
    /// Embeddings.
    Embedding,
    /// Image generation.
    Image,
    /// Speech to text.
    Transcription,
    /// Text to speech.
    Speech,
    /// Video generation (served as tasks by asynchronous providers).
    Video,
}

impl Mode {
    /// The mode called `s` (as [`Mode::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "chat" => Mode::Chat,
            "embedding" => Mode::Embedding,
            "image" => Mode::Image,
            "transcription" => Mode::Transcription,
            "speech" => Mode::Speech,
            "video" => Mode::Video,
            _ => return None,
        })
    }

    /// The name the catalog and `/v1/models` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Chat => "chat",
            Mode::Embedding => "embedding",
            Mode::Image => "image",
            Mode::Transcription => "transcription",
            Mode::Speech => "speech",
            Mode::Video => "video",
        }
    }
}

impl<'de> serde::Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Mode::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown mode `{name}`, expected one of chat, embedding, image, speech, \
                 transcription, video"
            ))
        })
    }
}

/// What a model supports beyond plain text in and out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Function / tool calling.
    pub tools: bool,
    /// Image input.
    pub vision: bool,
    /// JSON output (`response_format` JSON object or schema).
    pub json_mode: bool,
    /// Token usage at the end of a stream.
    pub stream_usage: bool,
    /// Cached input tokens (priced apart).
    pub prompt_caching: bool,
    /// Reasoning / thinking tokens.
    pub reasoning: bool,
}

impl Capabilities {
    fn parse(s: &str) -> Option<Capabilities> {
        let mut caps = Capabilities::default();
        if s == "-" {
            return Some(caps);
        }
        for c in s.chars() {
            let flag = match c {
                't' => &mut caps.tools,
                'v' => &mut caps.vision,
                'j' => &mut caps.json_mode,
                'u' => &mut caps.stream_usage,
                'c' => &mut caps.prompt_caching,
                'r' => &mut caps.reasoning,
                _ => return None,
            };
            *flag = true;
        }
        Some(caps)
    }
}

/// One catalog entry.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogModel {
    /// `namespace/upstream-id`, e.g. `bedrock/anthropic.claude-sonnet-4-6`.
    pub id: &'static str,
    /// What it does.
    pub mode: Mode,
    /// Input tokens it accepts, when published.
    pub context_window: Option<u64>,
    /// Output tokens it writes at most, when published.
    pub max_output: Option<u64>,
    /// Token prices per one million tokens (zero where it is priced otherwise).
    pub price: Price,
    /// Price per generated image.
    pub per_image: Option<f64>,
    /// Price per second of audio.
    pub per_second: Option<f64>,
    /// What it supports.
    pub capabilities: Capabilities,
}

/// Why a catalog line did not parse (only the unit tests see this: shipped data parses).
#[derive(Debug, thiserror::Error)]
#[error("catalog line `{0}` is malformed")]
struct MalformedLine(String);

impl CatalogModel {
    fn parse(line: &'static str) -> Result<CatalogModel, MalformedLine> {
        let bad = || MalformedLine(line.to_string());
        let f: Vec<&'static str> = line.split('\t').collect();
        let [id, mode, context, max_output, input, cached, output, per_image, per_second, caps] =
            f[..]
        else {
            return Err(bad());
        };
        let int = |s: &str| -> Result<Option<u64>, MalformedLine> {
            (s != "-").then(|| s.parse().map_err(|_| bad())).transpose()
        };
        let num = |s: &str| -> Result<Option<f64>, MalformedLine> {
            (s != "-")
                .then(|| s.parse::<f64>().map_err(|_| bad()))
                .transpose()
        };
        if !id.contains('/') {
            return Err(bad());
        }
        Ok(CatalogModel {
            id,
            mode: Mode::parse(mode).ok_or_else(bad)?,
            context_window: int(context)?,
            max_output: int(max_output)?,
            price: Price {
                input: num(input)?.unwrap_or(0.0),
                cached_input: num(cached)?,
                output: num(output)?.unwrap_or(0.0),
                image: num(per_image)?,
                second: num(per_second)?,
            },
            per_image: num(per_image)?,
            per_second: num(per_second)?,
            capabilities: Capabilities::parse(caps).ok_or_else(bad)?,
        })
    }

    /// The namespace: the part of the id before the first `/`.
    pub fn namespace(&self) -> &'static str {
        self.id.split_once('/').map_or(self.id, |(ns, _)| ns)
    }

    /// The provider's own model id: the part after the first `/`.
    pub fn upstream(&self) -> &'static str {
        self.id.split_once('/').map_or(self.id, |(_, m)| m)
    }

    /// Whether this model can serve `request`, judged before any provider is called.
    pub fn serves_chat(&self, request: &ChatRequest) -> Result<(), Unsupported> {
        let model = self.id;
        if self.mode != Mode::Chat {
            return Err(Unsupported::Mode {
                model,
                mode: self.mode.as_str(),
                wanted: "chat",
            });
        }
        let caps = self.capabilities;
        if request.tools.as_ref().is_some_and(|t| !t.is_empty()) && !caps.tools {
            return Err(Unsupported::Tools { model });
        }
        if !caps.vision && has_images(request) {
            return Err(Unsupported::Vision { model });
        }
        if !caps.json_mode
            && matches!(
                request.response_format,
                Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. })
            )
        {
            return Err(Unsupported::JsonMode { model });
        }
        if let (Some(asked), Some(max)) = (request.output_limit(), self.max_output) {
            if u64::from(asked) > max {
                return Err(Unsupported::MaxOutput { model, asked, max });
            }
        }
        Ok(())
    }

    /// Whether this model answers embeddings requests.
    pub fn serves_embeddings(&self) -> Result<(), Unsupported> {
        self.serves_mode(Mode::Embedding)
    }

    /// Whether this model answers requests of `wanted`'s kind (a chat model asked for images
    /// is refused before any provider is called).
    pub fn serves_mode(&self, wanted: Mode) -> Result<(), Unsupported> {
        if self.mode == wanted {
            return Ok(());
        }
        Err(Unsupported::Mode {
            model: self.id,
            mode: self.mode.as_str(),
            wanted: wanted.as_str(),
        })
    }

    /// The fields `GET /v1/models` adds for this model (OpenAI and Anthropic dialects).
    pub fn describe(&self) -> Value {
        let caps = self.capabilities;
        json!({
            "catalog_id": self.id,
            "mode": self.mode.as_str(),
            "context_window": self.context_window,
            "max_output_tokens": self.max_output,
            "pricing": {
                "currency": "USD",
                "input_per_million": self.price.input,
                "cached_input_per_million": self.price.cached_input,
                "output_per_million": self.price.output,
                "per_image": self.per_image,
                "per_second": self.per_second,
            },
            "capabilities": {
                "tools": caps.tools,
                "vision": caps.vision,
                "json_mode": caps.json_mode,
                "stream_usage": caps.stream_usage,
                "prompt_caching": caps.prompt_caching,
                "reasoning": caps.reasoning,
            },
        })
    }
}

fn has_images(request: &ChatRequest) -> bool {
    request.messages.iter().any(|m| match &m.content {
        Some(Content::Parts(parts)) => parts
            .iter()
            .any(|p| matches!(p, ContentPart::ImageUrl { .. })),
        _ => false,
    })
}

/// Why a catalog model cannot serve a request: the gateway answers 400 with this when no
/// deployment of the public model can.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unsupported {
    /// The request has tools; the model cannot call them.
    #[error("`{model}` does not support tools")]
    Tools {
        /// Catalog id.
        model: &'static str,
    },
    /// The request has images; the model reads text only.
    #[error("`{model}` does not accept images")]
    Vision {
        /// Catalog id.
        model: &'static str,
    },
    /// The request asks for JSON output; the model has no JSON mode.
    #[error("`{model}` does not support `response_format` JSON output")]
    JsonMode {
        /// Catalog id.
        model: &'static str,
    },
    /// The request's output limit is above the model's.
    #[error("`{model}` writes at most {max} output tokens; the request asks for {asked}")]
    MaxOutput {
        /// Catalog id.
        model: &'static str,
        /// The request's limit.
        asked: u32,
        /// The model's.
        max: u64,
    },
    /// Wrong endpoint for the model.
    #[error("`{model}` is a {mode} model, not a {wanted} model")]
    Mode {
        /// Catalog id.
        model: &'static str,
        /// What it is.
        mode: &'static str,
        /// What the endpoint needs.
        wanted: &'static str,
    },
}

impl Unsupported {
    /// The request field the refusal is about.
    pub fn param(&self) -> &'static str {
        match self {
            Unsupported::Tools { .. } => "tools",
            Unsupported::Vision { .. } => "messages",
            Unsupported::JsonMode { .. } => "response_format",
            Unsupported::MaxOutput { .. } => "max_tokens",
            Unsupported::Mode { .. } => "model",
        }
    }
}

/// Every catalog entry, parsed on first use.
pub fn models() -> &'static [CatalogModel] {
    static MODELS: OnceLock<Vec<CatalogModel>> = OnceLock::new();
    MODELS.get_or_init(|| {
        data_lines()
            .filter_map(|l| CatalogModel::parse(l).ok())
            .collect()
    })
}

fn data_lines() -> impl Iterator<Item = &'static str> {
    DATA.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The entry with this id (`namespace/upstream-id`).
pub fn lookup(id: &str) -> Option<&'static CatalogModel> {
    models().iter().find(|m| m.id == id)
}

/// The provider kind that serves a catalog namespace (the OpenAI-compatible clouds are
/// `openai` kind providers with their own namespaces).
pub fn namespace_kind(namespace: &str) -> Option<ProviderKind> {
    Some(match namespace {
        "openai" | "groq" | "deepseek" | "together" | "fireworks" | "xai" => ProviderKind::Openai,
        "anthropic" => ProviderKind::Anthropic,
        "gemini" => ProviderKind::Gemini,
        "vertex" => ProviderKind::Vertex,
        "bedrock" => ProviderKind::Bedrock,
        "azure" => ProviderKind::Azure,
        "mistral" => ProviderKind::Mistral,
        "cohere" => ProviderKind::Cohere,
        "dashscope" => ProviderKind::Dashscope,
        _ => return None,
    })
}

/// The catalog namespace a provider's models are found under: its `catalog` setting, else
/// its own name when that is a namespace of its kind (a provider named `groq`), else its
/// kind's.
pub fn provider_namespace<'a>(
    name: &'a str,
    provider: &'a crate::config::ProviderConfig,
) -> &'a str {
    if let Some(ns) = &provider.catalog {
        return ns;
    }
    if namespace_kind(name) == Some(provider.kind) {
        return name;
    }
    provider.kind.name()
}

/// Resolves a loaded config against the catalog: checks providers' namespaces, fills
/// `catalog` deployments (provider, model, price, entry) and adds the `provider/model`
/// models of providers with `expose_catalog`. Runs before validation.
pub(crate) fn resolve(config: &mut GatewayConfig) -> Result<(), ConfigError> {
    let invalid = |m: String| ConfigError::Invalid(m);
    for (name, provider) in &config.providers {
        if let Some(ns) = &provider.catalog {
            if namespace_kind(ns) != Some(provider.kind) {
                return Err(invalid(format!(
                    "provider `{name}`: `catalog` namespace `{ns}` is not one of its kind's \
                     (see filter/core/catalog/README.md)"
                )));
            }
        }
    }
    let namespaces: Vec<(&String, &str)> = config
        .providers
        .iter()
        .map(|(name, p)| (name, provider_namespace(name, p)))
        .collect();
    for model in &mut config.models {
        for d in &mut model.deployments {
            let Some(id) = &d.catalog else {
                if d.provider.is_empty() || d.model.is_empty() {
                    return Err(invalid(format!(
                        "model `{}`: a deployment needs `provider` and `model`, or `catalog`",
                        model.name
                    )));
                }
                continue;
            };
            let entry = lookup(id).ok_or_else(|| {
                invalid(format!(
                    "model `{}`: `{id}` is not in the model catalog",
                    model.name
                ))
            })?;
            if d.provider.is_empty() {
                let mut serving = namespaces.iter().filter(|(_, ns)| *ns == entry.namespace());
                d.provider = match (serving.next(), serving.next()) {
                    (Some((name, _)), None) => name.to_string(),
                    (None, _) => {
                        return Err(invalid(format!(
                            "model `{}`: no provider serves the catalog namespace `{}`",
                            model.name,
                            entry.namespace()
                        )))
                    }
                    (Some(_), Some(_)) => {
                        return Err(invalid(format!(
                            "model `{}`: several providers serve `{}`; name one with `provider`",
                            model.name,
                            entry.namespace()
                        )))
                    }
                };
            }
            if d.model.is_empty() {
                d.model = entry.upstream().to_string();
            }
            if d.price == Price::default() {
                d.price = entry.price;
            }
            d.catalog_entry = Some(entry);
        }
        // Budget and token-limit estimates assume a request without `max_tokens` uses the
        // model's maximum output: the catalog knows it when every deployment is catalogued.
        if model.max_output_tokens.is_none() {
            model.max_output_tokens = model
                .deployments
                .iter()
                .map(|d| d.catalog_entry.and_then(|e| e.max_output))
                .collect::<Option<Vec<u64>>>()
                .and_then(|outputs| outputs.into_iter().max());
        }
    }
    let mut synthesized = Vec::new();
    for (name, provider) in &config.providers {
        if !provider.expose_catalog {
            continue;
        }
        let ns = provider_namespace(name, provider);
        for entry in models()
            .iter()
            .filter(|m| m.namespace() == ns && matches!(m.mode, Mode::Chat | Mode::Embedding))
        {
            let public = format!("{name}/{}", entry.upstream());
            if config.model(&public).is_some() {
                continue;
            }
            synthesized.push(ModelConfig {
                name: public,
                aliases: Vec::new(),
                mode: Some(entry.mode),
                strategy: Default::default(),
                deployments: vec![DeploymentConfig {
                    provider: name.clone(),
                    model: entry.upstream().to_string(),
                    catalog: Some(entry.id.to_string()),
                    weight: 1,
                    price: entry.price,
                    catalog_entry: Some(entry),
                    limits: None,
                }],
                fallback: None,
                max_output_tokens: entry.max_output,
                queue: None,
                defaults: Default::default(),
            });
        }
    }
    config.models.extend(synthesized);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_data_parses_whole_and_is_large() {
        let lines: Vec<&str> = data_lines().collect();
        for line in &lines {
            CatalogModel::parse(line).unwrap();
        }
        assert_eq!(models().len(), lines.len());
        assert!(models().len() >= 300, "{} models", models().len());
        let mut ids: Vec<&str> = models().iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), models().len(), "ids are unique");
        for m in models() {
            assert!(namespace_kind(m.namespace()).is_some(), "{}", m.id);
        }
    }

    #[test]
    fn every_provider_kind_has_models() {
        for kind in ProviderKind::ALL {
            assert!(
                models()
                    .iter()
                    .any(|m| namespace_kind(m.namespace()) == Some(kind) && m.mode == Mode::Chat),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn parses_a_line() {
        let m = CatalogModel::parse("bedrock/x.y-v1:0\tchat\t200000\t8192\t3\t0.3\t15\t-\t-\ttvu")
            .unwrap();
        assert_eq!(m.namespace(), "bedrock");
        assert_eq!(m.upstream(), "x.y-v1:0");
        assert_eq!(m.context_window, Some(200_000));
        assert_eq!(m.price.cached_input, Some(0.3));
        assert!(m.capabilities.tools && m.capabilities.vision && !m.capabilities.json_mode);
        for bad in [
            "x\tchat\t1\t1\t1\t1\t1\t-\t-\tt",
            "a/x\tchat\t1\t1\t1\t1\t1\t-\t-",
            "a/x\tpoem\t1\t1\t1\t1\t1\t-\t-\tt",
            "a/x\tchat\tlots\t1\t1\t1\t1\t-\t-\tt",
            "a/x\tchat\t1\t1\t1\t1\t1\t-\t-\tz",
        ] {
            assert!(CatalogModel::parse(bad).is_err(), "{bad}");
        }
    }
}
