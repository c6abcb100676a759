//! Gateway keys: stored as SHA-256 hashes, compared in constant time.
//!
//! The config never holds a usable key, so leaking it leaks nothing. A presented key is hashed
//! and compared against every configured hash without early exit, so timing reveals neither
//! which key nearly matched nor how many bytes did.
//!
//! Hashing the presented key is most of a key check's cost (about 3.5k instructions of a
//! fast-path exchange's ~67k), and the same few keys come back on every request, so each
//! thread keeps a small bounded cache from a presented key that authenticated to its digest
//! ([`DigestCache`]); the constant-time comparison against every configured hash still runs
//! on every request, so an expired, revoked or replaced key is refused as before.

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
    let cached = DIGESTS.with(|c| c.borrow().get(presented));
    let digest: [u8; 32] = cached.unwrap_or_else(|| Sha256::digest(presented.as_bytes()).into());
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
    if cached.is_none() {
        DIGESTS.with(|c| c.borrow_mut().insert(presented, digest));
    }
    if key.expires_at.is_some_and(|t| now_unix >= t) {
        return Err(
            GatewayError::new(ErrorKind::Authentication, "API key has expired")
                .with_code("expired_api_key"),
        );
    }
    Ok(key)
}

/// Slots of a thread's [`DigestCache`].
const DIGEST_SLOTS: usize = 256;
/// Longest presented key the cache keeps (longer ones are hashed every time).
const DIGEST_MAX_KEY: usize = 256;

std::thread_local! {
    /// This thread's cache of presented keys that authenticated (wasm hosts have one thread
    /// per VM; a native host's workers each keep their own, so no lock is taken).
    static DIGESTS: std::cell::RefCell<DigestCache> = std::cell::RefCell::new(DigestCache::default());
}

/// A bounded, direct-mapped cache from a presented key to its SHA-256 digest, so the keys
/// that come back on every request are not hashed again: what production gateways do.
///
/// - Bounded: [`DIGEST_SLOTS`] slots of at most [`DIGEST_MAX_KEY`] bytes each; a key whose
///   slot is taken replaces the one there (no growth, no eviction bookkeeping).
/// - Only keys that authenticated are kept, so a flood of wrong keys can neither grow nor
///   churn it; a hit only saves the hash: the digest is still compared, in constant time,
///   against every configured key, so a key removed from the config (or the control plane's
///   set) or expired is refused on its next request.
/// - A hit compares the stored key with the presented one in constant time over the key's
///   bytes (the slot is picked by a hash of the presented key, which the caller already
///   knows; only a length mismatch exits early, and key lengths are not secret).
/// - It holds plaintext keys that authenticated recently, in this process's memory only
///   (they pass through it on every request anyway); nothing writes them anywhere.
/// - Its slots are allocated at the second authentication of a thread, not the first: an
///   instance that serves one request (the Spin component's memory is reset per request)
///   pays nothing for a cache it could never hit.
#[derive(Default)]
struct DigestCache {
    slots: Vec<Option<CachedDigest>>,
    /// Keys that authenticated on this thread (counted up to 2).
    authenticated: u8,
}

/// A presented key that authenticated, and its digest.
type CachedDigest = (Box<[u8]>, [u8; 32]);

impl DigestCache {
    fn slot(presented: &str) -> usize {
        // FNV-1a: a cheap spread over the slots (the index is not a secret, see above).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in presented.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        (h as usize) % DIGEST_SLOTS
    }

    fn get(&self, presented: &str) -> Option<[u8; 32]> {
        let (stored, digest) = self.slots.get(Self::slot(presented))?.as_ref()?;
        let presented = presented.as_bytes();
        if stored.len() != presented.len() {
            return None;
        }
        let diff = stored
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (std::hint::black_box(diff) == 0).then_some(*digest)
    }

    fn insert(&mut self, presented: &str, digest: [u8; 32]) {
        if self.authenticated < 2 {
            self.authenticated += 1;
        }
        if self.authenticated < 2 || presented.len() > DIGEST_MAX_KEY {
            return;
        }
        if self.slots.is_empty() {
            self.slots.resize(DIGEST_SLOTS, None);
        }
        self.slots[Self::slot(presented)] = Some((presented.as_bytes().into(), digest));
    }
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
    fn cached_digest_still_checks_the_key_set() {
        let a = key("a", "sk-cache-a", &["*"], Some(100));
        let b = key("b", "sk-cache-b", &["*"], None);
        // The thread's first authentication allocates nothing, the second is cached; then
        // the cached key against a set without it.
        let twice = || {
            authenticate([&a, &b], Some("sk-cache-a"), 0)
                .unwrap()
                .id
                .clone()
        };
        assert_eq!(twice(), "a");
        assert!(DIGESTS.with(|c| c.borrow().slots.is_empty()));
        assert_eq!(twice(), "a");
        assert!(DIGESTS.with(|c| c.borrow().get("sk-cache-a")).is_some());
        assert_eq!(
            authenticate([&b], Some("sk-cache-a"), 0).unwrap_err().code,
            Some("invalid_api_key")
        );
        assert_eq!(
            authenticate([&a], Some("sk-cache-a"), 100)
                .unwrap_err()
                .code,
            Some("expired_api_key")
        );
        // A key that differs only in its last byte is not a hit, and a wrong key is never
        // cached.
        assert!(DIGESTS.with(|c| c.borrow().get("sk-cache-b")).is_none());
        assert!(authenticate([&a], Some("sk-cache-x"), 0).is_err());
        assert!(DIGESTS.with(|c| c.borrow().get("sk-cache-x")).is_none());
        assert!(authenticate([&a], Some("sk-cache-b"), 0).is_err());
        assert_eq!(authenticate([&b], Some("sk-cache-b"), 0).unwrap().id, "b");
    }

    #[test]
    fn digest_cache_is_bounded() {
        let mut cache = DigestCache::default();
        for i in 0..4 * DIGEST_SLOTS {
            cache.insert(&format!("sk-{i}"), [1; 32]);
        }
        assert_eq!(cache.slots.len(), DIGEST_SLOTS);
        let long = "k".repeat(DIGEST_MAX_KEY + 1);
        cache.insert(&long, [2; 32]);
        assert_eq!(cache.get(&long), None);
        // A colliding key replaces the one in its slot: the old one misses, the new one hits.
        let first = "sk-0";
        let other = (1..)
            .map(|i| format!("sk-other-{i}"))
            .find(|k| DigestCache::slot(k) == DigestCache::slot(first))
            .unwrap();
        cache.insert(first, [3; 32]);
        cache.insert(&other, [4; 32]);
        assert_eq!(cache.get(first), None);
        assert_eq!(cache.get(&other), Some([4; 32]));
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
