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
/// fields with a 400 that says which.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| {
        let (what, code) = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                ("malformed JSON", "invalid_json")
            }
            _ if e.to_string().starts_with("missing field") => ("invalid body", "missing_field"),
            _ => ("invalid body", "invalid_value"),
        };
        Error::invalid(format!("{what}: {e}"), code)
    })
}
