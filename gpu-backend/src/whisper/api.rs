//! `POST /v1/audio/transcriptions` in OpenAI's shape: a multipart/form-data request with
//! `file`, `model`, `response_format` (`json`, `text`, `verbose_json`), `language`, `prompt`
//! and `temperature`; answers `{"text": …}`, plain text, or the verbose JSON with segments.
//!
//! Every bad input gets OpenAI's error JSON: no file or no model (400), a file that is not
//! WAV (400, naming the format when it is another audio container), a body over
//! `max_audio_bytes` (413), audio longer than `max_audio_seconds` (400), a model that is not
//! a speech model (400) or does not exist (404). Segments are Whisper's 30-second windows
//! (this backend decodes without timestamps), so `start`/`end` are window bounds.

use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::wav::{self, AudioError};
use super::{TranscribeOptions, Transcript, SAMPLE_RATE};
use crate::engine::Engine;
use crate::error::ApiError;

/// How much audio one request may carry.
#[derive(Debug, Clone, Copy)]
pub struct AudioLimits {
    /// Largest upload in bytes (OpenAI's limit is 25 MB); larger gets 413.
    pub max_bytes: usize,
    /// Longest audio in seconds; longer gets 400. Bounds the work of one request.
    pub max_seconds: f64,
}

impl Default for AudioLimits {
    fn default() -> Self {
        Self {
            max_bytes: 25 * 1024 * 1024,
            max_seconds: 120.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Json,
    Text,
    VerboseJson,
}

/// The form fields of a transcription request, checked.
#[derive(Debug)]
struct Form {
    file: Vec<u8>,
    model: String,
    format: Format,
    options: TranscribeOptions,
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge("The audio file is too large.".into())
    } else {
        ApiError::invalid(
            format!("Could not read the multipart body: {}", e.body_text()),
            None,
        )
    }
}

async fn read_form(multipart: Result<Multipart, MultipartRejection>) -> Result<Form, ApiError> {
    let mut multipart = multipart.map_err(|rejection| {
        ApiError::invalid(
            format!(
                "The request must be multipart/form-data with a 'file' and a 'model' ({}).",
                rejection.body_text()
            ),
            None,
        )
    })?;
    let mut file = None;
    let mut fields = std::collections::HashMap::new();
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field.bytes().await.map_err(multipart_error)?;
        if name == "file" {
            file = Some(bytes.to_vec());
        } else {
            let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                ApiError::invalid(format!("'{name}' must be UTF-8 text."), Some(&name))
            })?;
            fields.insert(name, text);
        }
    }
    let file = file.ok_or_else(|| {
        ApiError::invalid(
            "Missing required parameter: 'file'. Upload the audio as a form field named 'file'.",
            Some("file"),
        )
    })?;
    let model = fields
        .remove("model")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::invalid("Missing required parameter: 'model'.", Some("model")))?;
    let format = match fields.get("response_format").map(String::as_str) {
        None | Some("json") => Format::Json,
        Some("text") => Format::Text,
        Some("verbose_json") => Format::VerboseJson,
        Some(other) => {
            return Err(ApiError::invalid(
                format!(
                "response_format '{other}' is not supported; use 'json', 'text' or 'verbose_json'."
            ),
                Some("response_format"),
            ))
        }
    };
    if let Some(language) = fields.get("language") {
        if !matches!(language.to_ascii_lowercase().as_str(), "en" | "english") {
            return Err(ApiError::invalid(
                format!(
                    "language '{language}' is not supported: this model transcribes English ('en') only."
                ),
                Some("language"),
            ));
        }
    }
    if fields.get("stream").is_some_and(|s| s == "true") {
        return Err(ApiError::invalid(
            "Streaming transcriptions are not supported by this backend.",
            Some("stream"),
        ));
    }
    if fields
        .iter()
        .any(|(k, v)| k.starts_with("timestamp_granularities") && v != "segment")
    {
        return Err(ApiError::invalid(
            "Only 'segment' timestamp granularity is supported.",
            Some("timestamp_granularities"),
        ));
    }
    let temperature = match fields.get("temperature") {
        None => 0.0,
        Some(t) => t
            .parse::<f64>()
            .ok()
            .filter(|t| (0.0..=1.0).contains(t))
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("'temperature' must be a number between 0 and 1, not '{t}'."),
                    Some("temperature"),
                )
            })?,
    };
    Ok(Form {
        file,
        model,
        format,
        options: TranscribeOptions {
            prompt: fields.remove("prompt"),
            temperature,
        },
    })
}

/// Answers one transcription request.
pub async fn transcribe(
    engine: &Engine,
    limits: AudioLimits,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let form = read_form(multipart).await?;
    if form.file.len() > limits.max_bytes {
        return Err(ApiError::TooLarge(format!(
            "The audio file is {} bytes; at most {} are accepted.",
            form.file.len(),
            limits.max_bytes
        )));
    }
    let pcm = wav::decode(&form.file).map_err(|e| {
        let message = match e {
            AudioError::Unsupported(_) => e.to_string(),
            AudioError::Invalid(_) => format!("{e} Supported format: WAV (PCM)."),
        };
        ApiError::invalid(message, Some("file"))
    })?;
    let seconds = pcm.seconds();
    if seconds > limits.max_seconds {
        return Err(ApiError::invalid(
            format!(
                "The audio is {seconds:.1} s long; this backend transcribes at most {} s per request.",
                limits.max_seconds
            ),
            Some("file"),
        ));
    }
    if pcm.samples.is_empty() {
        return Err(ApiError::invalid("The audio file is empty.", Some("file")));
    }
    let samples =
        tokio::task::spawn_blocking(move || wav::resample(&pcm.samples, pcm.rate, SAMPLE_RATE))
            .await
            .map_err(|e| ApiError::Internal(format!("resampling failed: {e}")))?;
    let transcript = engine
        .transcribe(&form.model, samples, form.options.clone())
        .await?;
    Ok(render(&transcript, form.format, form.options.temperature))
}

fn usage(t: &Transcript) -> Value {
    json!({"type": "duration", "seconds": t.duration.ceil() as u64})
}

fn render(t: &Transcript, format: Format, temperature: f64) -> Response {
    match format {
        Format::Text => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", t.text),
        )
            .into_response(),
        Format::Json => axum::Json(json!({"text": t.text, "usage": usage(t)})).into_response(),
        Format::VerboseJson => {
            let segments: Vec<Value> = t
                .segments
                .iter()
                .enumerate()
                .map(|(id, s)| {
                    json!({
                        "id": id,
                        "seek": (s.start * 100.0) as u64,
                        "start": s.start,
                        "end": s.end,
                        "text": s.text,
                        "tokens": s.tokens,
                        "temperature": temperature,
                        "avg_logprob": s.avg_logprob,
                        "no_speech_prob": s.no_speech_prob,
                    })
                })
                .collect();
            axum::Json(json!({
                "task": "transcribe",
                "language": "english",
                "duration": t.duration,
                "text": t.text,
                "segments": segments,
                "usage": usage(t),
            }))
            .into_response()
        }
    }
}
