//! The synchronous facade over models of asynchronous providers: OpenAI's media endpoints
//! (`POST /v1/images/generations`) naming a model served by WaveSpeed, Replicate, fal or
//! DashScope answer like OpenAI does, while the task plane submits to the provider and waits.
//!
//! The edge forwards such a request to the task plane as that operation
//! ([`crate::tasks::edge::Forward::facade`]); the task plane translates the OpenAI request into
//! each deployment's own input with [`provider_input`] (per deployment: a fallback re-translates
//! for its provider) and the provider's outputs back into the endpoint's answer with
//! [`images_answer`]. What no provider here can do is refused before anything is submitted
//! ([`check`]): speech and transcriptions (these providers make images and video), video
//! models on the images endpoint, and `response_format: b64_json` — every provider here
//! answers with URLs of its own, and fetching a URL a provider's answer names would let that
//! answer point the gateway into its own network (SSRF), so the client is told to ask for
//! `url` instead.
//!
//! Provider inputs (OpenAI's `prompt`, `n`, `size` = `WxH`):
//! - WaveSpeed (<https://wavespeed.ai/docs/docs-api/wavespeed-ai/flux-dev>):
//!   `{prompt, num_images, size: "W*H"}`;
//! - Replicate (<https://replicate.com/black-forest-labs/flux-schnell/api/schema>):
//!   `{prompt, num_outputs, aspect_ratio: "W:H"}` (reduced);
//! - fal (<https://fal.ai/models/fal-ai/flux/dev/api>):
//!   `{prompt, num_images, image_size: {width, height}}`;
//! - DashScope (<https://www.alibabacloud.com/help/en/model-studio/text-to-image-v2-api-reference>):
//!   `{prompt, parameters: {n, size: "W*H"}}`.
//!
//! OpenAI's fields that only tune a rendering (`quality`, `style`, `background`,
//! `moderation`, `output_format`, `output_compression`) and `user` have no equivalent there and
//! are not sent.

use serde_json::{json, Map, Value};

use crate::error::{ErrorKind, GatewayError};
use crate::ingress::media::MediaKind;
use crate::tasks::providers::deployments::{TaskModelConfig, TaskProviders};
use crate::tasks::providers::{dashscope, AsyncProvider};

/// The task operation a media endpoint's request runs as (`x-switchyard-operation`).
pub fn operation(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Images => "images.generations",
        MediaKind::Speech => "audio.speech",
        MediaKind::Transcription => "audio.transcriptions",
        MediaKind::ImageEdit => "images.edits",
    }
}

/// The media endpoint an operation stands for (the inverse of [`operation`]).
pub fn media_kind(operation: &str) -> Option<MediaKind> {
    [
        MediaKind::Images,
        MediaKind::Speech,
        MediaKind::Transcription,
        MediaKind::ImageEdit,
    ]
    .into_iter()
    .find(|k| self::operation(*k) == operation)
}

/// A task id (`task_` and 24 hex digits, as the task plane makes them) for a facade
/// request, from its request id and fresh entropy: the edge names the task before it exists,
/// so the client's answer can carry it whatever the task plane answers.
pub fn task_id(request_id: &str, random: u64) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(request_id.as_bytes())
        .chain_update(random.to_le_bytes())
        .finalize();
    format!("task_{}", crate::tasks::webhook::hex(&digest[..12]))
}

/// Whether a deployment's provider model makes video (not images).
fn makes_video(provider: AsyncProvider, model: &str) -> bool {
    match provider {
        AsyncProvider::Veo => true,
        AsyncProvider::Dashscope => dashscope::is_video_model(model),
        _ => false,
    }
}

/// Whether the media endpoint `kind` can be served by task model `model` with this
/// `request` (its JSON body): a 400 in the caller's dialect names the model otherwise.
pub fn check(
    kind: MediaKind,
    model: &TaskModelConfig,
    providers: &TaskProviders,
    request: &Map<String, Value>,
) -> Result<(), GatewayError> {
    let name = &model.name;
    let refuse = |message: String| {
        Err(GatewayError::invalid(message)
            .with_param("model")
            .with_code("model_not_supported"))
    };
    if kind == MediaKind::ImageEdit {
        return refuse(format!(
            "model `{name}` cannot edit images: its asynchronous providers are driven with \
             text prompts here; use a model that serves `/v1/images/edits`"
        ));
    }
    if kind != MediaKind::Images {
        return refuse(format!(
            "model `{name}` is served by asynchronous image and video providers; it does not \
             serve `{}`",
            kind.openai_path()
        ));
    }
    let video = model.deployments.iter().find(|d| {
        providers
            .providers
            .get(&d.provider)
            .is_some_and(|p| makes_video(p.kind, &d.model))
    });
    if let Some(d) = video {
        return refuse(format!(
            "model `{name}` makes video (`{}` on `{}`), not images: submit it with \
             POST /v1/tasks",
            d.model, d.provider
        ));
    }
    match request.get("response_format").and_then(Value::as_str) {
        None | Some("url") => Ok(()),
        Some("b64_json") => Err(GatewayError::invalid(format!(
            "model `{name}` answers with URLs on its provider's host: `response_format` must \
             be `url` (the gateway does not fetch provider URLs)"
        ))
        .with_param("response_format")),
        Some(other) => Err(GatewayError::invalid(format!(
            "`response_format` must be `url` or `b64_json`, not `{other}`"
        ))
        .with_param("response_format")),
    }
}

/// OpenAI's `size` (`1024x1536`) as width and height; `None` for `auto` or absent.
fn size(request: &Map<String, Value>) -> Result<Option<(u32, u32)>, GatewayError> {
    let bad = || {
        GatewayError::invalid("`size` must be `auto` or `WIDTHxHEIGHT` (e.g. `1024x1024`)")
            .with_param("size")
    };
    match request.get("size") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "auto" => Ok(None),
        Some(Value::String(s)) => {
            let (w, h) = s.split_once('x').ok_or_else(bad)?;
            let (w, h) = (w.parse::<u32>(), h.parse::<u32>());
            match (w, h) {
                (Ok(w), Ok(h)) if (1..=8192).contains(&w) && (1..=8192).contains(&h) => {
                    Ok(Some((w, h)))
                }
                _ => Err(bad()),
            }
        }
        Some(_) => Err(bad()),
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The input `provider` takes for an OpenAI image generation `request` (already checked
/// with [`check`]).
pub fn provider_input(
    provider: AsyncProvider,
    request: &Map<String, Value>,
) -> Result<Value, GatewayError> {
    let prompt = request
        .get("prompt")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            GatewayError::invalid("`prompt` is required and must be a string").with_param("prompt")
        })?;
    let n = match request.get("n") {
        None | Some(Value::Null) => 1,
        Some(n) => n.as_u64().filter(|n| (1..=10).contains(n)).ok_or_else(|| {
            GatewayError::invalid("`n` must be an integer from 1 to 10").with_param("n")
        })?,
    };
    let size = size(request)?;
    let star = size.map(|(w, h)| format!("{w}*{h}"));
    let mut input = json!({ "prompt": prompt });
    match provider {
        AsyncProvider::Wavespeed => {
            input["num_images"] = json!(n);
            if let Some(s) = star {
                input["size"] = json!(s);
            }
        }
        AsyncProvider::Replicate => {
            input["num_outputs"] = json!(n);
            if let Some((w, h)) = size {
                let g = gcd(w, h);
                input["aspect_ratio"] = json!(format!("{}:{}", w / g, h / g));
            }
        }
        AsyncProvider::Fal => {
            input["num_images"] = json!(n);
            if let Some((w, h)) = size {
                input["image_size"] = json!({ "width": w, "height": h });
            }
        }
        AsyncProvider::Dashscope => {
            let mut parameters = json!({ "n": n });
            if let Some(s) = star {
                parameters["size"] = json!(s);
            }
            input["parameters"] = parameters;
        }
        AsyncProvider::Veo => {
            return Err(
                GatewayError::new(ErrorKind::InvalidRequest, "Veo makes video, not images")
                    .with_param("model"),
            )
        }
    }
    Ok(input)
}

/// OpenAI's image answer for a finished provider task's output URLs.
pub fn images_answer(created_s: u64, outputs: &[String]) -> Value {
    json!({
        "created": created_s,
        "data": outputs.iter().map(|url| json!({ "url": url })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn providers() -> TaskProviders {
        let mut doc = json!({
            "providers": {
                "ws": {"kind": "wavespeed"},
                "veo": {"kind": "veo"},
                "ds": {"kind": "dashscope_tasks"}
            },
            "models": [
                {"name": "flux", "deployments": [{"provider": "ws", "model": "wavespeed-ai/flux-dev"}]},
                {"name": "veo-3", "deployments": [{"provider": "veo", "model": "veo-3.0-generate-001"}]},
                {"name": "wan-video", "deployments": [{"provider": "ds", "model": "wan2.1-t2v-turbo"}]}
            ]
        });
        crate::tasks::providers::deployments::split(&mut doc, None).unwrap()
    }

    fn request(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn only_image_models_serve_images_by_url() {
        let p = providers();
        let flux = p.model("flux").unwrap();
        let ok = request(json!({"model": "flux", "prompt": "x"}));
        assert!(check(MediaKind::Images, flux, &p, &ok).is_ok());
        let err = check(MediaKind::Speech, flux, &p, &ok).unwrap_err();
        assert_eq!((err.status, err.param.as_deref()), (400, Some("model")));
        assert!(err.message.contains("`flux`") && err.message.contains("/v1/audio/speech"));
        for video in ["veo-3", "wan-video"] {
            let err = check(MediaKind::Images, p.model(video).unwrap(), &p, &ok).unwrap_err();
            assert!(err.message.contains("makes video"), "{err:?}");
        }
        let b64 = request(json!({"prompt": "x", "response_format": "b64_json"}));
        let err = check(MediaKind::Images, flux, &p, &b64).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("response_format"));
    }

    #[test]
    fn each_provider_gets_its_own_vocabulary() {
        let r = request(json!({"prompt": "a cat", "n": 2, "size": "1536x1024", "quality": "high"}));
        assert_eq!(
            provider_input(AsyncProvider::Wavespeed, &r).unwrap(),
            json!({"prompt": "a cat", "num_images": 2, "size": "1536*1024"})
        );
        assert_eq!(
            provider_input(AsyncProvider::Replicate, &r).unwrap(),
            json!({"prompt": "a cat", "num_outputs": 2, "aspect_ratio": "3:2"})
        );
        assert_eq!(
            provider_input(AsyncProvider::Fal, &r).unwrap(),
            json!({"prompt": "a cat", "num_images": 2, "image_size": {"width": 1536, "height": 1024}})
        );
        assert_eq!(
            provider_input(AsyncProvider::Dashscope, &r).unwrap(),
            json!({"prompt": "a cat", "parameters": {"n": 2, "size": "1536*1024"}})
        );
        let auto = request(json!({"prompt": "a", "size": "auto"}));
        assert_eq!(
            provider_input(AsyncProvider::Wavespeed, &auto).unwrap(),
            json!({"prompt": "a", "num_images": 1})
        );
        for bad in [
            json!({"prompt": "a", "size": "big"}),
            json!({"prompt": "a", "n": 11}),
            json!({"n": 1}),
        ] {
            let err = provider_input(AsyncProvider::Fal, &request(bad)).unwrap_err();
            assert_eq!(err.status, 400);
        }
    }

    #[test]
    fn task_ids_look_like_the_task_planes() {
        let id = task_id("req", 1);
        assert_eq!(id.len(), 5 + 24);
        assert!(id[5..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, task_id("req", 2));
        assert_eq!(media_kind("images.generations"), Some(MediaKind::Images));
        assert_eq!(media_kind("chat.completions"), None);
    }

    #[test]
    fn outputs_become_openais_answer() {
        let answer = images_answer(7, &["https://p.test/0.png".into()]);
        assert_eq!(
            answer,
            json!({"created": 7, "data": [{"url": "https://p.test/0.png"}]})
        );
    }
}
