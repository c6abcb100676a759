//! Gateway keys: stored as SHA-256 hashes, compared in constant time.
//!
//! The config never holds a usable key, so leaking it leaks nothing. A presented key is hashed
//! and compared against every configured hash without early exit, so timing reveals neither
//! which key nearly matched nor how many bytes did.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{ErrorKind, GatewayError};

/// A configured gateway key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayKey {
    /// Stable id used in usage records and metrics (never the key).
    pub id: String,
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
    /// Globs (`*`, `?`) of the model names this key may use.
    #[serde(default = "all_models")]
    pub models: Vec<String>,
    /// Unix seconds after which the key is refused.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Free-form description.
    #[serde(default)]
    pub label: Option<String>,
    /// The team the key belongs to (usage and budgets roll up to it).
    #[serde(default)]
    pub team: Option<String>,
    /// The key's own rate limits and budget.
    #[serde(default)]
    pub limits: Option<crate::limits::Quota>,
    /// `sha256` decoded, once: authentication compares every key on every request.
    #[serde(skip)]
    decoded: std::sync::OnceLock<[u8; 32]>,
}

fn all_models() -> Vec<String> {
    vec!["*".to_string()]
}

impl GatewayKey {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() {
            return Err("a key has an empty id".into());
        }
        if let Some(quota) = &self.limits {
            quota.validate(&format!("key `{}`", self.id))?;
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "key `{}`: sha256 must be 64 hex characters (the hash, never the key)",
                self.id
            ));
        }
        Ok(())
    }

    fn digest(&self) -> &[u8; 32] {
        self.decoded.get_or_init(|| {
            let mut out = [0u8; 32];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&self.sha256[2 * i..2 * i + 2], 16).unwrap_or(0);
            }
            out
        })
    }

    /// Whether this key may use `model` (a public name).
    pub fn allows(&self, model: &str) -> bool {
        self.models.iter().any(|g| glob_match(g, model))
    }
}

/// Lower-case hex SHA-256 of `key`: what goes into the config for a new key.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Extracts the presented key from `Authorization: Bearer ...` or `x-api-key`.
pub fn presented_key<'a>(
    authorization: Option<&'a str>,
    x_api_key: Option<&'a str>,
) -> Option<&'a str> {
    let bearer = authorization.and_then(|v| {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    bearer
        .or(x_api_key.map(str::trim))
        .filter(|k| !k.is_empty())
}

/// Finds the key matching `presented`, in constant time over all configured keys.
pub fn authenticate<'a>(
    keys: impl IntoIterator<Item = &'a GatewayKey>,
    presented: Option<&str>,
    now_unix: u64,
) -> Result<&'a GatewayKey, GatewayError> {
    let Some(presented) = presented else {
        return Err(GatewayError::new(
            ErrorKind::Authentication,
            "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
        )
        .with_code("missing_api_key"));
    };
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for key in keys {
        let expected = key.digest();
        let diff = expected
            .iter()
            .zip(digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 && found.is_none() {
            found = Some(key);
        }
    }
    let key = found.ok_or_else(|| {
        GatewayError::new(ErrorKind::Authentication, "invalid API key").with_code("invalid_api_key")
    })?;
    if key.expires_at.is_some_and(|t| now_unix >= t) {
        return Err(
            GatewayError::new(ErrorKind::Authentication, "API key has expired")
                .with_code("expired_api_key"),
        );
    }
    Ok(key)
}

/// Glob match with `*` (any run) and `?` (any one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, secret: &str, models: &[&str], expires_at: Option<u64>) -> GatewayKey {
        GatewayKey {
            id: id.into(),
            sha256: hash_key(secret),
            models: models.iter().map(|s| s.to_string()).collect(),
            expires_at,
            label: None,
            team: None,
            limits: None,
            decoded: Default::default(),
        }
    }

    #[test]
    fn accepts_bearer_and_x_api_key() {
        assert_eq!(presented_key(Some("Bearer abc"), None), Some("abc"));
        assert_eq!(presented_key(Some("bearer  abc "), None), Some("abc"));
        assert_eq!(presented_key(None, Some("xyz")), Some("xyz"));
        assert_eq!(presented_key(Some("Basic abc"), None), None);
        assert_eq!(presented_key(Some("Bearer "), None), None);
    }

    #[test]
    fn authenticates_by_hash() {
        let keys = vec![
            key("a", "sk-a", &["gpt-*"], None),
            key("b", "sk-b", &["*"], Some(100)),
        ];
        assert_eq!(authenticate(&keys, Some("sk-a"), 0).unwrap().id, "a");
        assert_eq!(authenticate(&keys, Some("sk-b"), 99).unwrap().id, "b");
        assert_eq!(
            authenticate(&keys, Some("sk-b"), 100).unwrap_err().code,
            Some("expired_api_key")
        );
        assert_eq!(
            authenticate(&keys, Some("nope"), 0).unwrap_err().status,
            401
        );
        assert_eq!(authenticate(&keys, None, 0).unwrap_err().status, 401);
        assert!(keys[0].allows("gpt-4o") && !keys[0].allows("claude"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("gpt-?o*", "gpt-4o-mini"));
        assert!(!glob_match("gpt-?o", "gpt-4o-mini"));
        assert!(glob_match("*mini", "gpt-4o-mini"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_key("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
