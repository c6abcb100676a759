//! Secrets: generated from the operating system's random source, shown once, stored only as
//! SHA-256 hex.

use sha2::{Digest, Sha256};

use crate::Error;

/// Prefix of every virtual key the control plane issues.
pub const KEY_PREFIX: &str = "sk-sy-";
/// Prefix of admin keys, so one is never mistaken for a gateway key.
pub const ADMIN_KEY_PREFIX: &str = "sk-sy-admin-";

/// `bytes` random bytes as lower-case hex.
pub fn random_hex(bytes: usize) -> Result<String, Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| Error::Random(e.to_string()))?;
    Ok(to_hex(&buf))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new secret with `prefix` and 192 random bits.
pub fn new_secret(prefix: &str) -> Result<String, Error> {
    Ok(format!("{prefix}{}", random_hex(24)?))
}

/// Lower-case hex SHA-256 of `secret`: the only form in which a secret is stored.
pub fn sha256_hex(secret: &str) -> String {
    to_hex(&Sha256::digest(secret.as_bytes()))
}

/// Whether `text` is 64 hex digits (a SHA-256 as the edge and the config expect it).
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What the admin API shows instead of a secret: its last four characters.
pub fn hint(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

/// Compares two strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The credential of `Authorization: Bearer <credential>`, if present.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let (scheme, rest) = authorization?.trim().split_once(' ')?;
    let credential = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_random_and_hash_to_hex() {
        let a = new_secret(KEY_PREFIX).unwrap();
        let b = new_secret(KEY_PREFIX).unwrap();
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 48);
        assert_ne!(a, b);
        assert!(is_sha256_hex(&sha256_hex(&a)));
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hint("sk-sy-0123abcd"), "…abcd");
    }

    #[test]
    fn bearer_and_comparison() {
        assert_eq!(bearer(Some("Bearer  tok ")), Some("tok"));
        assert_eq!(bearer(Some("bearer tok")), Some("tok"));
        assert_eq!(bearer(Some("Basic tok")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }
}
