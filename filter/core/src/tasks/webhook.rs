//! Webhook signatures: the Standard Webhooks scheme (what Switchyard signs its own webhooks
//! with, and what Replicate signs its webhooks with) and the HMAC helpers other providers'
//! schemes are built from.
//!
//! Standard Webhooks (<https://www.standardwebhooks.com/>, spec at
//! <https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>):
//! every delivery carries `webhook-id` (the message id, the same on every retry, so a
//! receiver deduplicates by it), `webhook-timestamp` (unix seconds of this attempt) and
//! `webhook-signature`: a space-separated list of `v1,<base64 HMAC-SHA256>` over
//! `{id}.{timestamp}.{body}`, keyed with the base64-decoded part of a `whsec_<base64>` secret.
//! A receiver rejects a timestamp outside its tolerance (replay protection) and accepts the
//! message when any listed `v1` signature matches (several appear while a secret rotates).
//!
//! Sans-I/O: the caller passes the clock.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// How far a webhook's timestamp may be from now, either way, by default (the spec's
/// suggestion and what the reference libraries use).
pub const DEFAULT_TOLERANCE_S: u64 = 5 * 60;
/// Header carrying the message id.
pub const ID_HEADER: &str = "webhook-id";
/// Header carrying the attempt's unix timestamp.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Header carrying the signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

type HmacSha256 = Hmac<Sha256>;

/// Why a webhook secret or delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The secret is not `whsec_` followed by base64.
    #[error("a webhook secret is `whsec_` followed by base64")]
    BadSecret,
    /// A required header is missing or empty.
    #[error("missing `{0}` header")]
    MissingHeader(&'static str),
    /// The timestamp is not an integer.
    #[error("`webhook-timestamp` is not a unix timestamp")]
    BadTimestamp,
    /// The timestamp is outside the tolerance: an old message replayed, or a skewed clock.
    #[error("the webhook timestamp is {age_s} s away from now (tolerance {tolerance_s} s)")]
    Stale {
        /// Distance from now, in seconds.
        age_s: u64,
        /// The tolerance in force.
        tolerance_s: u64,
    },
    /// No signature matched.
    #[error("no matching signature")]
    NoMatchingSignature,
}

/// A Standard Webhooks signing secret. Its `Debug` form never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>` (the prefix is optional, as the reference libraries accept).
    pub fn parse(text: &str) -> Result<Self, WebhookError> {
        let encoded = text.trim();
        let encoded = encoded.strip_prefix(SECRET_PREFIX).unwrap_or(encoded);
        let key = BASE64
            .decode(encoded)
            .map_err(|_| WebhookError::BadSecret)?;
        if key.is_empty() {
            return Err(WebhookError::BadSecret);
        }
        Ok(WebhookSecret(key))
    }

    /// A secret over these key bytes (from a random source).
    pub fn from_bytes(key: &[u8]) -> Self {
        WebhookSecret(key.to_vec())
    }

    /// The `whsec_<base64>` form, to hand to the receiver.
    pub fn encode(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.0))
    }

    /// `v1,<base64 signature>` of a message.
    pub fn sign(&self, msg_id: &str, timestamp: u64, body: &[u8]) -> String {
        let tag = hmac_sha256(&self.0, &signed_content(msg_id, timestamp, body));
        format!("v1,{}", BASE64.encode(tag))
    }

    /// The three headers of a delivery, in order: id, timestamp, signature.
    pub fn headers(
        &self,
        msg_id: &str,
        timestamp: u64,
        body: &[u8],
    ) -> [(&'static str, String); 3] {
        [
            (ID_HEADER, msg_id.to_string()),
            (TIMESTAMP_HEADER, timestamp.to_string()),
            (SIGNATURE_HEADER, self.sign(msg_id, timestamp, body)),
        ]
    }

    /// Verifies a delivery: the timestamp within `tolerance_s` of `now_s`, and one of the
    /// `v1` signatures matching. Signatures of other versions are ignored, as the spec says.
    pub fn verify(
        &self,
        headers: &SignedHeaders<'_>,
        body: &[u8],
        now_s: u64,
        tolerance_s: u64,
    ) -> Result<(), WebhookError> {
        let msg_id = required(headers.id, ID_HEADER)?;
        let timestamp = check_timestamp(
            required(headers.timestamp, TIMESTAMP_HEADER)?,
            now_s,
            tolerance_s,
        )?;
        let signatures = required(headers.signature, SIGNATURE_HEADER)?;
        let content = signed_content(msg_id, timestamp, body);
        let matched = signatures
            .split(' ')
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, sig)| BASE64.decode(sig).ok())
            .any(|sig| hmac_verify(&self.0, &content, &sig));
        if matched {
            Ok(())
        } else {
            Err(WebhookError::NoMatchingSignature)
        }
    }
}

/// The three Standard Webhooks headers of a received delivery, as the host read them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignedHeaders<'a> {
    /// `webhook-id`.
    pub id: Option<&'a str>,
    /// `webhook-timestamp`.
    pub timestamp: Option<&'a str>,
    /// `webhook-signature`.
    pub signature: Option<&'a str>,
}

/// A header's trimmed value, or why it is missing.
pub(crate) fn required<'a>(
    value: Option<&'a str>,
    name: &'static str,
) -> Result<&'a str, WebhookError> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(WebhookError::MissingHeader(name))
}

/// Parses a unix-seconds timestamp and checks it is within `tolerance_s` of `now_s`.
pub fn check_timestamp(text: &str, now_s: u64, tolerance_s: u64) -> Result<u64, WebhookError> {
    let timestamp: u64 = text
        .trim()
        .parse()
        .map_err(|_| WebhookError::BadTimestamp)?;
    let age_s = now_s.abs_diff(timestamp);
    if age_s > tolerance_s {
        return Err(WebhookError::Stale { age_s, tolerance_s });
    }
    Ok(timestamp)
}

/// `{id}.{timestamp}.{body}`: what Standard Webhooks (and WaveSpeed, with its own MAC
/// encoding) sign.
pub(crate) fn signed_content(msg_id: &str, timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(msg_id.len() + 24 + body.len());
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.to_string().as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Whether `tag` is the HMAC-SHA256 of `message` under `key`, compared in constant time.
pub fn hmac_verify(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    mac.verify_slice(tag).is_ok()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string (either case), or `None` when it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries' test suites (the secret,
    /// message id, timestamp, payload and the signature they expect).
    const REF_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const REF_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const REF_TS: u64 = 1614265330;
    const REF_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const REF_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    #[test]
    fn signs_the_reference_example() {
        let secret = WebhookSecret::parse(REF_SECRET).unwrap();
        assert_eq!(secret.sign(REF_ID, REF_TS, REF_BODY), REF_SIG);
        assert_eq!(secret.encode(), REF_SECRET);
        let ts = REF_TS.to_string();
        secret
            .verify(&headers(REF_ID, &ts, REF_SIG), REF_BODY, REF_TS + 10, 300)
            .unwrap();
    }

    #[test]
    fn accepts_any_listed_v1_signature_and_ignores_other_versions() {
        let secret = WebhookSecret::parse(REF_SECRET).unwrap();
        let ts = REF_TS.to_string();
        let list = format!("v2,abc v1,AAAA {REF_SIG}");
        secret
            .verify(&headers(REF_ID, &ts, &list), REF_BODY, REF_TS, 300)
            .unwrap();
        let wrong_version = REF_SIG.replacen("v1,", "v2,", 1);
        assert_eq!(
            secret.verify(&headers(REF_ID, &ts, &wrong_version), REF_BODY, REF_TS, 300),
            Err(WebhookError::NoMatchingSignature)
        );
    }

    #[test]
    fn refuses_tampering_staleness_and_missing_parts() {
        let secret = WebhookSecret::parse(REF_SECRET).unwrap();
        let ts = REF_TS.to_string();
        let verify =
            |h: SignedHeaders<'_>, body: &[u8], now: u64| secret.verify(&h, body, now, 300);
        assert_eq!(
            verify(
                headers(REF_ID, &ts, REF_SIG),
                br#"{"test": 2432232315}"#,
                REF_TS
            ),
            Err(WebhookError::NoMatchingSignature)
        );
        assert_eq!(
            verify(headers("msg_other", &ts, REF_SIG), REF_BODY, REF_TS),
            Err(WebhookError::NoMatchingSignature)
        );
        assert_eq!(
            verify(headers(REF_ID, &ts, REF_SIG), REF_BODY, REF_TS + 301),
            Err(WebhookError::Stale {
                age_s: 301,
                tolerance_s: 300
            })
        );
        assert!(matches!(
            verify(headers(REF_ID, &ts, REF_SIG), REF_BODY, REF_TS - 400),
            Err(WebhookError::Stale { .. })
        ));
        assert_eq!(
            verify(headers(REF_ID, "soon", REF_SIG), REF_BODY, REF_TS),
            Err(WebhookError::BadTimestamp)
        );
        let mut missing = headers(REF_ID, &ts, REF_SIG);
        missing.signature = None;
        assert_eq!(
            verify(missing, REF_BODY, REF_TS),
            Err(WebhookError::MissingHeader(SIGNATURE_HEADER))
        );
        assert_eq!(
            verify(headers(REF_ID, &ts, "v1,not base64!"), REF_BODY, REF_TS),
            Err(WebhookError::NoMatchingSignature)
        );
    }

    #[test]
    fn secrets_parse_strictly_and_never_print() {
        assert_eq!(
            WebhookSecret::parse("whsec_***"),
            Err(WebhookError::BadSecret)
        );
        assert_eq!(WebhookSecret::parse("whsec_"), Err(WebhookError::BadSecret));
        let secret = WebhookSecret::from_bytes(b"0123456789abcdef");
        assert_eq!(WebhookSecret::parse(&secret.encode()).unwrap(), secret);
        assert!(!format!("{secret:?}").contains("MDEy"));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(unhex("00ABff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
