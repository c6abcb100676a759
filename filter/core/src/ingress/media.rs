//! OpenAI's media endpoints: `POST /v1/images/generations` (JSON), `POST /v1/images/edits`
//! (`multipart/form-data` in), `POST /v1/audio/speech` (JSON in, raw audio out) and
//! `POST /v1/audio/transcriptions` (`multipart/form-data` in).
//!
//! Wire format: <https://platform.openai.com/docs/api-reference/images/create>,
//! <https://platform.openai.com/docs/api-reference/images/createEdit> (`image`, or `image[]`
//! repeated for several images, `mask`, `prompt`, `model`, `n`, `size`, `response_format`…),
//! <https://platform.openai.com/docs/api-reference/audio/createSpeech>,
//! <https://platform.openai.com/docs/api-reference/audio/createTranscription>; multipart per
//! RFC 7578 (boundary syntax RFC 2046 §5.1.1).
//!
//! The gateway reads only what routing and metering need (the model, the answer's format,
//! how many images) and forwards the client's body otherwise unchanged: a transcription's
//! audio file is never copied into another shape, and its boundary stays the client's.

use serde_json::Value;

use crate::error::GatewayError;

/// Which media endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// `POST /v1/images/generations`.
    Images,
    /// `POST /v1/audio/speech`.
    Speech,
    /// `POST /v1/audio/transcriptions`.
    Transcription,
    /// `POST /v1/images/edits`.
    ImageEdit,
}

impl MediaKind {
    /// The endpoint's path on an OpenAI-shaped API (after the `/v1`-style prefix).
    pub fn openai_path(self) -> &'static str {
        match self {
            MediaKind::Images => "/v1/images/generations",
            MediaKind::Speech => "/v1/audio/speech",
            MediaKind::Transcription => "/v1/audio/transcriptions",
            MediaKind::ImageEdit => "/v1/images/edits",
        }
    }

    /// The path under an Azure OpenAI deployment (`/openai/deployments/{d}/…`).
    pub fn azure_suffix(self) -> &'static str {
        match self {
            MediaKind::Images => "images/generations",
            MediaKind::Speech => "audio/speech",
            MediaKind::Transcription => "audio/transcriptions",
            MediaKind::ImageEdit => "images/edits",
        }
    }

    /// The catalog mode of a model that serves it.
    pub fn mode(self) -> crate::catalog::Mode {
        match self {
            MediaKind::Images | MediaKind::ImageEdit => crate::catalog::Mode::Image,
            MediaKind::Speech => crate::catalog::Mode::Speech,
            MediaKind::Transcription => crate::catalog::Mode::Transcription,
        }
    }
}

/// A decoded media request: what the gateway needs to know of it.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaRequest {
    /// Which endpoint.
    pub kind: MediaKind,
    /// The model the client named.
    pub model: String,
    /// `response_format` as sent (speech: the audio format; transcription: the answer's).
    pub response_format: Option<String>,
    /// Images asked for (`n`, 1 when absent); 0 for audio.
    pub images: u64,
    /// A multipart request's boundary (transcriptions, image edits), read from its body.
    pub boundary: Option<String>,
}

/// Decodes a media request body.
pub fn decode(kind: MediaKind, body: &[u8]) -> Result<MediaRequest, GatewayError> {
    let req = match kind {
        MediaKind::Images | MediaKind::Speech => decode_json(kind, body)?,
        MediaKind::Transcription | MediaKind::ImageEdit => decode_multipart(kind, body)?,
    };
    if req.model.is_empty() {
        return Err(GatewayError::invalid("`model` must not be empty").with_param("model"));
    }
    Ok(req)
}

fn decode_json(kind: MediaKind, body: &[u8]) -> Result<MediaRequest, GatewayError> {
    let what = match kind {
        MediaKind::Images => "image generation",
        _ => "speech",
    };
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| GatewayError::invalid(format!("invalid {what} request: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(GatewayError::invalid(format!(
            "invalid {what} request: the body must be a JSON object"
        )));
    };
    let text = |name: &str| obj.get(name).and_then(Value::as_str);
    let required = match kind {
        MediaKind::Images => &["prompt"][..],
        _ => &["input", "voice"][..],
    };
    for name in required {
        if text(name).is_none_or(str::is_empty) {
            return Err(GatewayError::invalid(format!(
                "`{name}` is required and must be a string"
            ))
            .with_param(*name));
        }
    }
    let images = match (kind, obj.get("n")) {
        (MediaKind::Images, None | Some(Value::Null)) => 1,
        (MediaKind::Images, Some(n)) => {
            n.as_u64().filter(|n| (1..=10).contains(n)).ok_or_else(|| {
                GatewayError::invalid("`n` must be an integer from 1 to 10").with_param("n")
            })?
        }
        _ => 0,
    };
    Ok(MediaRequest {
        kind,
        model: text("model").unwrap_or_default().to_string(),
        response_format: text("response_format").map(str::to_string),
        images,
        boundary: None,
    })
}

fn decode_multipart(kind: MediaKind, body: &[u8]) -> Result<MediaRequest, GatewayError> {
    let boundary = boundary(body).ok_or_else(|| {
        GatewayError::invalid(format!(
            "malformed multipart body: {} request must be `multipart/form-data` starting with \
             its boundary line",
            if kind == MediaKind::ImageEdit {
                "an image edit"
            } else {
                "a transcription"
            }
        ))
    })?;
    let parts = parse(body, &boundary)
        .map_err(|e| GatewayError::invalid(format!("malformed multipart body: {e}")))?;
    let field = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name)
            .map(|p| String::from_utf8_lossy(&body[p.value.clone()]).into_owned())
    };
    let file = |names: &[&str]| {
        parts
            .iter()
            .any(|p| names.contains(&p.name.as_str()) && p.filename.is_some())
    };
    let images = if kind == MediaKind::ImageEdit {
        if !file(&["image", "image[]"]) {
            return Err(GatewayError::invalid(
                "`image` is required: the image file (or `image[]` files) to edit",
            )
            .with_param("image"));
        }
        if field("prompt").is_none_or(|p| p.trim().is_empty()) {
            return Err(GatewayError::invalid("`prompt` is required").with_param("prompt"));
        }
        match field("n") {
            None => 1,
            Some(n) => n
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=10).contains(n))
                .ok_or_else(|| {
                    GatewayError::invalid("`n` must be an integer from 1 to 10").with_param("n")
                })?,
        }
    } else {
        if !file(&["file"]) {
            return Err(
                GatewayError::invalid("`file` is required: the audio file to transcribe")
                    .with_param("file"),
            );
        }
        0
    };
    Ok(MediaRequest {
        kind,
        model: field("model").unwrap_or_default().trim().to_string(),
        response_format: field("response_format").map(|f| f.trim().to_string()),
        images,
        boundary: Some(boundary),
    })
}

/// The boundary of a `multipart/form-data` body, read from its first line (`--boundary`).
///
/// Reading it from the body rather than the `Content-Type` header keeps the hosts out of it
/// (they pass no request headers but the ones the core names) and cannot disagree with the
/// body; a body with a preamble before its first delimiter (RFC 2046 allows one, form clients
/// never send one) is refused as malformed.
pub fn boundary(body: &[u8]) -> Option<String> {
    let rest = body.strip_prefix(b"--")?;
    let end = find(rest, b"\r\n", 0)?;
    let line = std::str::from_utf8(&rest[..end]).ok()?;
    // Transport padding (spaces, tabs) may follow the delimiter.
    let boundary = line.trim_end_matches([' ', '\t']);
    // RFC 2046 §5.1.1: 1 to 70 characters, not ending in a space.
    (1..=70)
        .contains(&boundary.len())
        .then(|| boundary.to_string())
}

/// One part of a multipart body: its name and where its value lies in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The `name` of its `Content-Disposition: form-data`.
    pub name: String,
    /// The `filename`, for a file.
    pub filename: Option<String>,
    /// The value's byte range in the body.
    pub value: std::ops::Range<usize>,
}

/// Why a multipart body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// The body does not start with the boundary's delimiter.
    #[error("the body does not start with the boundary")]
    NoFirstBoundary,
    /// A part's headers never end (no blank line).
    #[error("a part's headers are not terminated")]
    UnterminatedHeaders,
    /// A part has no `Content-Disposition: form-data; name=…`.
    #[error("a part has no form-data name")]
    NoName,
    /// The closing delimiter (`--boundary--`) is missing.
    #[error("the closing boundary is missing")]
    NoClosingBoundary,
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Parses a `multipart/form-data` body (RFC 7578) into its parts, without copying values.
pub fn parse(body: &[u8], boundary: &str) -> Result<Vec<Part>, MultipartError> {
    let first = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    // No preamble from form clients; allow one anyway, as RFC 2046 does.
    let mut at = if body.starts_with(first.as_bytes()) {
        first.len()
    } else {
        find(body, delimiter.as_bytes(), 0).ok_or(MultipartError::NoFirstBoundary)?
            + delimiter.len()
    };
    let mut parts = Vec::new();
    loop {
        if body[at..].starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding, then the line break that ends the delimiter line.
        let line_end = find(body, b"\r\n", at).ok_or(MultipartError::NoClosingBoundary)?;
        let headers_start = line_end + 2;
        let headers_end =
            find(body, b"\r\n\r\n", headers_start).ok_or(MultipartError::UnterminatedHeaders)?;
        let headers = String::from_utf8_lossy(&body[headers_start..headers_end]);
        let value_start = headers_end + 4;
        let value_end = find(body, delimiter.as_bytes(), value_start)
            .ok_or(MultipartError::NoClosingBoundary)?;
        let disposition = headers
            .split("\r\n")
            .find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-disposition")
                    .then_some(v)
            })
            .ok_or(MultipartError::NoName)?;
        let name = disposition_param(disposition, "name").ok_or(MultipartError::NoName)?;
        parts.push(Part {
            name,
            filename: disposition_param(disposition, "filename"),
            value: value_start..value_end,
        });
        at = value_end + delimiter.len();
    }
}

/// A parameter of a `Content-Disposition` value (`name="model"`).
fn disposition_param(value: &str, param: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case(param) {
            return None;
        }
        let v = v.trim();
        Some(
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
                .replace("\\\"", "\""),
        )
    })
}

/// The multipart body with field `name`'s value replaced (the upstream model name), every
/// other byte (the audio, the boundary) as the client sent it.
pub fn replace_field(
    body: &[u8],
    boundary: &str,
    name: &str,
    value: &str,
) -> Result<Vec<u8>, MultipartError> {
    let parts = parse(body, boundary)?;
    let Some(part) = parts.iter().find(|p| p.name == name) else {
        return Ok(body.to_vec());
    };
    let mut out = Vec::with_capacity(body.len() + value.len());
    out.extend_from_slice(&body[..part.value.start]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&body[part.value.end..]);
    Ok(out)
}

/// The content type of a successful answer when the provider names none: speech by its
/// `response_format` (mp3 by default), a transcription's `text`/`srt`/`vtt` as text, JSON
/// otherwise.
pub fn default_content_type(req: &MediaRequest) -> &'static str {
    let format = req.response_format.as_deref();
    match req.kind {
        MediaKind::Speech => match format.unwrap_or("mp3") {
            "opus" => "audio/opus",
            "aac" => "audio/aac",
            "flac" => "audio/flac",
            "wav" => "audio/wav",
            "pcm" => "audio/pcm",
            _ => "audio/mpeg",
        },
        MediaKind::Transcription if matches!(format, Some("text" | "srt" | "vtt")) => {
            "text/plain; charset=utf-8"
        }
        _ => "application/json",
    }
}

/// What a media answer consumed, for metering.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MediaUsage {
    /// Tokens (`usage` of images and transcriptions where the provider reports it).
    pub tokens: crate::canonical::TokenUsage,
    /// Images generated.
    pub images: u64,
    /// Seconds of audio transcribed or spoken.
    pub seconds: f64,
}

/// Reads the usage of a successful media answer. A JSON answer (images, transcriptions)
/// must parse; audio bytes are measured when they are WAV (seconds from its header).
pub fn usage_of(req: &MediaRequest, body: &[u8]) -> Result<MediaUsage, serde_json::Error> {
    let json = match req.kind {
        MediaKind::Speech => {
            return Ok(MediaUsage {
                seconds: wav_seconds(body).unwrap_or(0.0),
                ..MediaUsage::default()
            })
        }
        MediaKind::Transcription
            if matches!(req.response_format.as_deref(), Some("text" | "srt" | "vtt")) =>
        {
            return Ok(MediaUsage::default())
        }
        _ => serde_json::from_slice::<Value>(body)?,
    };
    let mut usage = MediaUsage::default();
    if let Some(u) = json.get("usage") {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        usage.tokens.input = n("input_tokens");
        usage.tokens.output = n("output_tokens");
        // Transcription models billed by duration: `{"type": "duration", "seconds": …}`.
        if let Some(s) = u.get("seconds").and_then(Value::as_f64) {
            usage.seconds = s;
        }
    }
    match req.kind {
        MediaKind::Images | MediaKind::ImageEdit => {
            usage.images = json
                .get("data")
                .and_then(Value::as_array)
                .map_or(0, |d| d.len() as u64);
        }
        _ => {
            // The seconds the provider bills (`usage`) win over the audio's length.
            let duration = json.get("duration").and_then(Value::as_f64);
            if let (true, Some(d)) = (usage.seconds <= 0.0, duration) {
                usage.seconds = d;
            }
        }
    }
    Ok(usage)
}

/// The length of a PCM WAV file (RIFF `fmt ` and `data` chunks), when `audio` is one.
pub fn wav_seconds(audio: &[u8]) -> Option<f64> {
    if audio.len() < 12 || &audio[..4] != b"RIFF" || &audio[8..12] != b"WAVE" {
        return None;
    }
    let u32_at = |i: usize| Some(u32::from_le_bytes(audio.get(i..i + 4)?.try_into().ok()?));
    let mut at = 12;
    let mut byte_rate = None;
    while at + 8 <= audio.len() {
        let id = &audio[at..at + 4];
        let size = u32_at(at + 4)? as usize;
        match id {
            b"fmt " => byte_rate = u32_at(at + 16),
            b"data" => {
                // A streamed WAV may say 0xFFFFFFFF: count what arrived.
                let len = size.min(audio.len() - (at + 8));
                return byte_rate
                    .filter(|r| *r > 0)
                    .map(|r| len as f64 / f64::from(r));
            }
            _ => {}
        }
        at += 8 + size + (size & 1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(fields: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, filename, value) in fields {
            out.extend_from_slice(b"------sy0123\r\n");
            let disposition = match filename {
                Some(f) => format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: audio/wav\r\n"
                ),
                None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n"),
            };
            out.extend_from_slice(disposition.as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"------sy0123--\r\n");
        out
    }

    #[test]
    fn reads_the_boundary_from_the_first_line() {
        assert_eq!(
            boundary(b"------sy0123 \r\nx").as_deref(),
            Some("----sy0123")
        );
        assert_eq!(boundary(b"{\"model\":\"m\"}"), None);
        assert_eq!(boundary(b"--\r\n"), None);
        assert_eq!(boundary(b"----"), None);
    }

    #[test]
    fn parses_fields_and_binary_files_without_copying() {
        let audio: &[u8] = b"RIFF\x00\xff\r\n--not-a-boundary\r\n\x80";
        let b = body(&[
            ("model", None, b"whisper-1"),
            ("file", Some("a.wav"), audio),
            ("response_format", None, b"verbose_json"),
        ]);
        let req = decode(MediaKind::Transcription, &b).unwrap();
        assert_eq!(req.model, "whisper-1");
        assert_eq!(req.response_format.as_deref(), Some("verbose_json"));
        let parts = parse(&b, "----sy0123").unwrap();
        assert_eq!(parts[1].filename.as_deref(), Some("a.wav"));
        assert_eq!(&b[parts[1].value.clone()], audio);
    }

    #[test]
    fn replaces_only_the_model() {
        let b = body(&[
            ("file", Some("a.wav"), b"\x00\x01"),
            ("model", None, b"pub"),
        ]);
        let out = replace_field(&b, "----sy0123", "model", "whisper-large").unwrap();
        let req = decode(MediaKind::Transcription, &out).unwrap();
        assert_eq!(req.model, "whisper-large");
        assert_eq!(out.len(), b.len() - 3 + "whisper-large".len());
        assert!(out.starts_with(b"------sy0123\r\n"));
    }

    #[test]
    fn malformed_multipart_is_a_400() {
        let good = body(&[("model", None, b"m"), ("file", Some("a.wav"), b"x")]);
        for bytes in [
            &b"no boundary here"[..],
            &good[..good.len() - 18],
            &b"------sy0123\r\nX: y\r\n\r\nv\r\n------sy0123--"[..],
            &b"------sy0123\r\nContent-Disposition: form-data; name=\"m\""[..],
            b"{\"model\":\"whisper-1\"}",
        ] {
            let err = decode(MediaKind::Transcription, bytes).unwrap_err();
            assert_eq!(err.status, 400, "{err:?}");
        }
        let no_file = body(&[("model", None, b"m")]);
        let err = decode(MediaKind::Transcription, &no_file).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("file"));
    }

    #[test]
    fn image_edits_need_an_image_and_a_prompt() {
        let edit = body(&[
            ("model", None, b"gpt-image-1"),
            ("image[]", Some("a.png"), b"\x89PNG"),
            ("image[]", Some("b.png"), b"\x89PNG"),
            ("prompt", None, b"add a hat"),
            ("n", None, b"2"),
        ]);
        let req = decode(MediaKind::ImageEdit, &edit).unwrap();
        assert_eq!((req.model.as_str(), req.images), ("gpt-image-1", 2));
        assert_eq!(req.boundary.as_deref(), Some("----sy0123"));
        for (fields, param) in [
            (
                &[("model", None, &b"m"[..]), ("prompt", None, b"x")][..],
                "image",
            ),
            (
                &[("model", None, b"m"), ("image", Some("a.png"), b"x")],
                "prompt",
            ),
            (
                &[
                    ("model", None, b"m"),
                    ("image", Some("a.png"), b"x"),
                    ("prompt", None, b"x"),
                    ("n", None, b"11"),
                ],
                "n",
            ),
        ] {
            let err = decode(MediaKind::ImageEdit, &body(fields)).unwrap_err();
            assert_eq!((err.status, err.param.as_deref()), (400, Some(param)));
        }
    }

    #[test]
    fn json_media_requests_are_checked() {
        let req = decode(
            MediaKind::Images,
            br#"{"model":"gpt-image-1","prompt":"a cat","n":2}"#,
        )
        .unwrap();
        assert_eq!((req.model.as_str(), req.images), ("gpt-image-1", 2));
        for bad in [
            &br#"{"model":"m"}"#[..],
            br#"{"model":"m","prompt":"x","n":0}"#,
            br#"[1]"#,
            br#"{"prompt":"x"}"#,
        ] {
            assert_eq!(decode(MediaKind::Images, bad).unwrap_err().status, 400);
        }
        let speech = decode(
            MediaKind::Speech,
            br#"{"model":"tts-1","input":"hi","voice":"alloy","response_format":"wav"}"#,
        )
        .unwrap();
        assert_eq!(default_content_type(&speech), "audio/wav");
        let err = decode(MediaKind::Speech, br#"{"model":"tts-1","input":"hi"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("voice"));
    }

    #[test]
    fn meters_images_seconds_and_tokens() {
        let images = decode(MediaKind::Images, br#"{"model":"m","prompt":"x"}"#).unwrap();
        let u = usage_of(
            &images,
            br#"{"created":1,"data":[{"b64_json":"AA=="},{"b64_json":"AA=="}],
                "usage":{"input_tokens":5,"output_tokens":100,"total_tokens":105}}"#,
        )
        .unwrap();
        assert_eq!((u.images, u.tokens.input, u.tokens.output), (2, 5, 100));
        let mut wav = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0".to_vec();
        wav.extend_from_slice(&16_000u32.to_le_bytes());
        wav.extend_from_slice(&32_000u32.to_le_bytes());
        wav.extend_from_slice(b"\x02\0\x10\0data");
        wav.extend_from_slice(&16_000u32.to_le_bytes());
        wav.extend(std::iter::repeat_n(0u8, 16_000));
        assert_eq!(wav_seconds(&wav), Some(0.5));
        let speech = decode(
            MediaKind::Speech,
            br#"{"model":"m","input":"x","voice":"alloy"}"#,
        )
        .unwrap();
        assert_eq!(usage_of(&speech, &wav).unwrap().seconds, 0.5);
        let mut t = speech.clone();
        t.kind = MediaKind::Transcription;
        t.response_format = Some("verbose_json".into());
        let u = usage_of(&t, br#"{"task":"transcribe","duration":3.5,"text":"hi"}"#).unwrap();
        assert_eq!(u.seconds, 3.5);
        let billed = br#"{"duration":3.5,"text":"hi","usage":{"type":"duration","seconds":4}}"#;
        assert_eq!(usage_of(&t, billed).unwrap().seconds, 4.0);
        assert!(usage_of(&t, b"not json").is_err());
    }
}
