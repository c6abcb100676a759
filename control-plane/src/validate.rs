//! Checks shared by the admin API's request bodies; each names the field it refuses.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::Error;

/// Longest label, name or glob accepted.
const MAX_TEXT: usize = 200;
/// Largest metadata document accepted, serialized.
const MAX_METADATA_BYTES: usize = 16 * 1024;

/// An id chosen by the caller: 1–64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit
/// (ids appear in URLs, usage records and CSV, so they stay plain).
pub fn id(field: &str, id: &str) -> Result<(), Error> {
    let plain = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if id.is_empty() || id.len() > 64 || !plain || !id.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(Error::invalid(
            format!("`{field}` must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-', starting with a letter or digit"),
            "invalid_id",
        ));
    }
    Ok(())
}

/// A short free text (label, name): at most 200 characters, no control characters.
pub fn text(field: &str, text: &str, allow_empty: bool) -> Result<(), Error> {
    if (!allow_empty && text.trim().is_empty())
        || text.chars().count() > MAX_TEXT
        || text.chars().any(char::is_control)
    {
        return Err(Error::invalid(
            format!(
                "`{field}` must be {}at most {MAX_TEXT} characters without control characters",
                if allow_empty { "" } else { "non-empty, " }
            ),
            "invalid_value",
        ));
    }
    Ok(())
}

/// Model globs: at least one, each a non-empty text.
pub fn models(models: &[String]) -> Result<(), Error> {
    if models.is_empty() || models.len() > 100 {
        return Err(Error::invalid(
            "`models` must list 1-100 globs (use [\"*\"] for every model)",
            "invalid_value",
        ));
    }
    models
        .iter()
        .try_for_each(|glob| text("models[]", glob, false))
}

/// Metadata: a JSON object of at most 16 KiB; returned serialized for storage.
pub fn metadata(metadata: &Value) -> Result<String, Error> {
    if !metadata.is_object() {
        return Err(Error::invalid(
            "`metadata` must be a JSON object",
            "invalid_value",
        ));
    }
    let serialized = metadata.to_string();
    if serialized.len() > MAX_METADATA_BYTES {
        return Err(Error::invalid(
            format!("`metadata` must be at most {MAX_METADATA_BYTES} bytes"),
            "invalid_value",
        ));
    }
    Ok(serialized)
}

/// A unix time in seconds that fits the store's signed 64-bit columns.
pub fn unix_seconds(field: &str, value: u64) -> Result<i64, Error> {
    i64::try_from(value)
        .ok()
        .filter(|v| *v < i64::MAX / 1000)
        .ok_or_else(|| Error::invalid(format!("`{field}` is out of range"), "invalid_value"))
}

/// An update field that may be absent but not `null`.
pub fn not_null<T>(field: &str, value: Option<T>) -> Result<T, Error> {
    value.ok_or_else(|| Error::invalid(format!("`{field}` cannot be null"), "invalid_value"))
}

/// For optional fields of an update: absent → `None` (leave as is), `null` → `Some(None)`
/// (clear), a value → `Some(Some(v))`. Use with `#[serde(default, deserialize_with = …)]`.
pub fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Parses a JSON request body, answering malformed JSON, wrong types, unknown and missing
/// fields with a 400 that names the field.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| described(e.path().to_string(), e.into_inner()))?;
    deserializer.end().map_err(|e| described(".".into(), e))?;
    Ok(value)
}

/// Deserializes `value`, naming the field of a failure as `{context}.{field}`.
pub fn from_value<T: serde::de::DeserializeOwned>(value: Value, context: &str) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let error = described(path, e.into_inner());
        match error {
            Error::InvalidRequest { message, code } => Error::InvalidRequest {
                message: format!("{context}: {message}"),
                code,
            },
            other => other,
        }
    })
}

/// A serde_json error as a 400: `at `field`: what` (the path is `.` for the whole body).
fn described(path: String, error: serde_json::Error) -> Error {
    let text = error.to_string();
    let code = match error.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            return Error::invalid(format!("malformed JSON: {text}"), "invalid_json");
        }
        _ if text.starts_with("missing field") => "missing_field",
        _ => "invalid_value",
    };
    if path == "." {
        Error::invalid(format!("invalid body: {text}"), code)
    } else {
        Error::invalid(format!("invalid body at `{path}`: {text}"), code)
    }
}
