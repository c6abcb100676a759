//! The synchronous facade over models of asynchronous providers: OpenAI's image endpoints
//! (`POST /v1/images/generations`, and `POST /v1/images/edits` for image-to-image models)
//! naming a model served by WaveSpeed, Replicate, fal or DashScope answer like OpenAI does,
//! while the task plane submits to the provider and waits.
//!
//! The edge forwards such a request to the task plane as that operation
//! ([`crate::tasks::edge::Forward::facade`]); the task plane translates the OpenAI request into
//! each deployment's own input with [`provider_input`] (per deployment: a fallback re-translates
//! for its provider) and the provider's outputs back into the endpoint's answer with
//! [`images_answer`]. What no provider here can do is refused before anything is submitted
//! ([`check`]): speech and transcriptions (these providers make images and video), video
//! models on the images endpoints, edits on DashScope (its image-to-image service is not
//! driven here), and `response_format: b64_json` — every provider here
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
//! An edit's images go as `data:` URLs where the provider takes an image URL (see
//! `edit_input`).
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

/// Whether the media endpoint `kind` can be served by task model `model`, the request
/// asking for `response_format`: a 400 in the caller's dialect names the model otherwise.
pub fn check(
    kind: MediaKind,
    model: &TaskModelConfig,
    providers: &TaskProviders,
    response_format: Option<&str>,
) -> Result<(), GatewayError> {
    let name = &model.name;
    let refuse = |message: String| {
        Err(GatewayError::invalid(message)
            .with_param("model")
            .with_code("model_not_supported"))
    };
    let kind_of = |provider: &str| providers.providers.get(provider).map(|p| p.kind);
    if kind == MediaKind::ImageEdit {
        let cannot = model.deployments.iter().find(|d| {
            !matches!(
                kind_of(&d.provider),
                Some(AsyncProvider::Wavespeed | AsyncProvider::Replicate | AsyncProvider::Fal)
            )
        });
        if let Some(d) = cannot {
            return refuse(format!(
                "model `{name}` cannot edit images: its deployment `{}` on `{}` takes no input \
                 image here",
                d.model, d.provider
            ));
        }
    } else if kind != MediaKind::Images {
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
    match response_format {
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

/// An image edit's form (`multipart/form-data`, as OpenAI takes it) as a JSON object the
/// providers' inputs are made from: its text fields, and its images (`image` / `image[]`)
/// under `image` as `data:` URLs, in order. A `mask` is refused: these providers take none
/// with the same meaning.
pub fn edit_request(form: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    use crate::ingress::media;
    use base64::Engine as _;
    let request = media::decode(MediaKind::ImageEdit, form)?;
    let boundary = request.boundary.unwrap_or_default();
    let parts = media::parse(form, &boundary)
        .map_err(|e| GatewayError::invalid(format!("malformed multipart body: {e}")))?;
    let mut out = Map::new();
    let mut images = Vec::new();
    for part in parts {
        let bytes = &form[part.value.clone()];
        match (part.name.as_str(), &part.filename) {
            ("image" | "image[]", Some(_)) => {
                let kind = image_type(bytes).ok_or_else(|| {
                    GatewayError::invalid("each image must be a PNG, JPEG or WEBP file")
                        .with_param("image")
                })?;
                images.push(Value::String(format!(
                    "data:{kind};base64,{}",
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                )));
            }
            ("mask", _) => {
                return Err(GatewayError::invalid(
                    "`mask` is not taken by this model's asynchronous providers: describe the \
                     edit in `prompt`",
                )
                .with_param("mask"))
            }
            (name, None) => {
                let text = String::from_utf8_lossy(bytes).trim().to_string();
                let value = match name {
                    "n" => text
                        .parse::<u64>()
                        .map(Value::from)
                        .unwrap_or(Value::String(text)),
                    _ => Value::String(text),
                };
                out.insert(name.to_string(), value);
            }
            _ => {}
        }
    }
    out.insert("image".into(), Value::Array(images));
    Ok(out)
}

/// The media type of an image by its magic bytes (PNG, JPEG, WEBP: what OpenAI's edits take).
fn image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(b"\xff\xd8\xff") {
        Some("image/jpeg")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
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

/// The input `provider` takes for an OpenAI image generation `request`, or an edit's (from
/// [`edit_request`]: its images under `image`), already checked with [`check`].
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
    if let Some(images) = request.get("image").and_then(Value::as_array) {
        return edit_input(provider, input, images, n, size);
    }
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

/// An edit's input: the images as each provider's image-to-image models take them (data URLs
/// where a URL goes: <https://wavespeed.ai/docs-api/flux-kontext-dev> `image`, and `images`
/// for its multi-image models; <https://replicate.com/docs/topics/predictions/input-files>
/// data URIs, FLUX Kontext's `input_image`; <https://docs.fal.ai/documentation/model-apis/fal-cdn>
/// data URIs, FLUX Kontext's `image_url` / `image_urls`).
fn edit_input(
    provider: AsyncProvider,
    mut input: Value,
    images: &[Value],
    n: u64,
    size: Option<(u32, u32)>,
) -> Result<Value, GatewayError> {
    let [first, rest @ ..] = images else {
        return Err(GatewayError::invalid("`image` is required").with_param("image"));
    };
    // One image under its single name, several under the list's.
    let (one, many) = match provider {
        AsyncProvider::Fal => ("image_url", "image_urls"),
        _ => ("image", "images"),
    };
    match provider {
        AsyncProvider::Wavespeed | AsyncProvider::Fal => {
            input["num_images"] = json!(n);
            if rest.is_empty() {
                input[one] = first.clone();
            } else {
                input[many] = json!(images);
            }
            if let (AsyncProvider::Wavespeed, Some((w, h))) = (provider, size) {
                input["size"] = json!(format!("{w}*{h}"));
            }
        }
        AsyncProvider::Replicate if rest.is_empty() => {
            input["input_image"] = first.clone();
            if let Some((w, h)) = size {
                let g = gcd(w, h);
                input["aspect_ratio"] = json!(format!("{}:{}", w / g, h / g));
            }
        }
        _ => {
            return Err(GatewayError::invalid(format!(
                "{} takes one input image here, not {}",
                provider.name(),
                images.len()
            ))
            .with_param("image"))
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
        assert!(check(MediaKind::Images, flux, &p, None).is_ok());
        assert!(check(MediaKind::ImageEdit, flux, &p, Some("url")).is_ok());
        let err = check(MediaKind::Speech, flux, &p, None).unwrap_err();
        assert_eq!((err.status, err.param.as_deref()), (400, Some("model")));
        assert!(err.message.contains("`flux`") && err.message.contains("/v1/audio/speech"));
        for video in ["veo-3", "wan-video"] {
            let err = check(MediaKind::Images, p.model(video).unwrap(), &p, None).unwrap_err();
            assert!(err.message.contains("makes video"), "{err:?}");
            let err = check(MediaKind::ImageEdit, p.model(video).unwrap(), &p, None).unwrap_err();
            assert!(err.message.contains("cannot edit"), "{err:?}");
        }
        let err = check(MediaKind::Images, flux, &p, Some("b64_json")).unwrap_err();
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
    fn edits_carry_their_images_as_data_urls() {
        let png = b"\x89PNG\r\n\x1a\n\x00";
        let mut form = Vec::new();
        for (name, file, value) in [
            ("model", None, &b"flux"[..]),
            ("prompt", None, b"add a hat"),
            ("n", None, b"2"),
            ("image[]", Some("a.png"), png),
        ] {
            form.extend_from_slice(b"--b0\r\nContent-Disposition: form-data; name=\"");
            form.extend_from_slice(name.as_bytes());
            form.extend_from_slice(b"\"");
            if let Some(f) = file {
                form.extend_from_slice(format!("; filename=\"{f}\"").as_bytes());
            }
            form.extend_from_slice(b"\r\n\r\n");
            form.extend_from_slice(value);
            form.extend_from_slice(b"\r\n");
        }
        form.extend_from_slice(b"--b0--\r\n");
        let edit = edit_request(&form).unwrap();
        let url = "data:image/png;base64,iVBORw0KGgoA";
        assert_eq!(edit["image"], json!([url]));
        assert_eq!(
            provider_input(AsyncProvider::Wavespeed, &edit).unwrap(),
            json!({"prompt": "add a hat", "num_images": 2, "image": url})
        );
        assert_eq!(
            provider_input(AsyncProvider::Fal, &edit).unwrap(),
            json!({"prompt": "add a hat", "num_images": 2, "image_url": url})
        );
        assert_eq!(
            provider_input(AsyncProvider::Replicate, &edit).unwrap(),
            json!({"prompt": "add a hat", "input_image": url})
        );
        let mut two = edit.clone();
        two["image"] = json!([url, url]);
        assert_eq!(
            provider_input(AsyncProvider::Fal, &two).unwrap()["image_urls"],
            json!([url, url])
        );
        assert_eq!(
            provider_input(AsyncProvider::Replicate, &two)
                .unwrap_err()
                .param
                .as_deref(),
            Some("image")
        );
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
