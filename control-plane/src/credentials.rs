//! Provider credentials the control plane mints for the edges: Google access tokens (Vertex
//! AI) from a service-account key.
//!
//! Why here: a service-account key is a long-lived private key, and minting a token is a
//! signed JWT exchanged over HTTPS (RFC 7523, Google's "OAuth 2.0 for server to server
//! applications"). The native side already holds secrets and talks to the edges; the edges
//! (Envoy and host-runner running filter.wasm, the Spin component) only receive the
//! short-lived token with the key sync (`GET /edge/v1/keys`, [`crate::keys::KeySnapshot`]'s
//! `credentials`), under the secret name the provider config gives (`api_key_secret`). So the
//! same code serves every host, no private key reaches a wasm sandbox, and a refreshed token
//! reaches every edge within one key-sync interval.
//!
//! Each service account gets a task that mints a token at start, then again before it
//! expires (5 minutes before, or at half its life for short ones); a failed exchange is
//! retried with backoff while the last token, if any, stays in force.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::Deserialize;

/// The OAuth scope Vertex AI needs.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Where Google exchanges a signed assertion for a token, unless the key file says otherwise.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// Lifetime asked for in the assertion (Google's maximum).
const ASSERTION_LIFETIME_S: u64 = 3600;

/// Why a service account cannot mint tokens.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The key file could not be read or is not a service-account key.
    #[error("service-account key {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token endpoint refused or could not be reached.
    #[error("token exchange at {uri}: {reason}")]
    Exchange {
        /// The token endpoint.
        uri: String,
        /// What happened (never the assertion or a token).
        reason: String,
    },
}

/// The fields of a Google service-account key file (`"type": "service_account"`) used here.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

/// A service account that can sign assertions. Its private key is never printed.
pub struct ServiceAccount {
    client_email: String,
    key_id: Option<String>,
    token_uri: String,
    key: RsaKeyPair,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Reads a service-account key file (JSON, as Google Cloud issues it).
    pub fn from_file(path: &Path) -> Result<Self, CredentialError> {
        let fail = |reason: String| CredentialError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        Self::from_json(&text).map_err(fail)
    }

    /// Parses a service-account key (the key file's JSON).
    pub fn from_json(json: &[u8]) -> Result<Self, String> {
        let file: KeyFile = serde_json::from_slice(json)
            .map_err(|e| format!("not a service-account key file: {e}"))?;
        if file.kind != "service_account" {
            return Err(format!("`type` is `{}`, not `service_account`", file.kind));
        }
        let der = pem_body(&file.private_key, "PRIVATE KEY")
            .ok_or("`private_key` is not a PEM `PRIVATE KEY` (PKCS #8)")?;
        let key = RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| format!("`private_key` is not a usable RSA key: {e}"))?;
        Ok(ServiceAccount {
            client_email: file.client_email,
            key_id: file.private_key_id,
            token_uri: file
                .token_uri
                .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string()),
            key,
        })
    }

    /// The account's e-mail (its id in logs).
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// The signed JWT (RS256) that asks for a token with `scope`, issued at `now_s`.
    pub fn assertion(&self, scope: &str, now_s: u64) -> Result<String, String> {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = kid.clone().into();
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": scope,
            "aud": self.token_uri,
            "iat": now_s,
            "exp": now_s + ASSERTION_LIFETIME_S,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "signing the assertion failed".to_string())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    /// Exchanges a fresh assertion for an access token; returns it and its lifetime.
    pub async fn mint(
        &self,
        http: &reqwest::Client,
        now_s: u64,
    ) -> Result<(String, u64), CredentialError> {
        let fail = |reason: String| CredentialError::Exchange {
            uri: self.token_uri.clone(),
            reason,
        };
        let assertion = self.assertion(CLOUD_PLATFORM_SCOPE, now_s).map_err(fail)?;
        let form = serde_urlencoded::to_string([
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ])
        .map_err(|e| fail(e.to_string()))?;
        let answer = http
            .post(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| fail(format!("no answer: {e}")))?;
        let status = answer.status();
        let body = answer
            .bytes()
            .await
            .map_err(|e| fail(format!("reading the answer: {e}")))?;
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
            #[serde(default = "default_expires_in")]
            expires_in: u64,
        }
        #[derive(Deserialize)]
        struct OauthError {
            error: String,
            #[serde(default)]
            error_description: String,
        }
        if !status.is_success() {
            let why = serde_json::from_slice::<OauthError>(&body)
                .map(|e| format!("{} {}", e.error, e.error_description))
                .unwrap_or_default();
            return Err(fail(format!("HTTP {status} {}", why.trim())));
        }
        let token: Token =
            serde_json::from_slice(&body).map_err(|e| fail(format!("unreadable answer: {e}")))?;
        if token.access_token.is_empty() {
            return Err(fail("the answer has an empty `access_token`".into()));
        }
        Ok((token.access_token, token.expires_in))
    }
}

fn default_expires_in() -> u64 {
    ASSERTION_LIFETIME_S
}

/// The DER inside a PEM block labelled `label`.
fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(b64).ok()
}

/// When to mint again after a token that lives `expires_in_s`: 5 minutes before it expires,
/// or at half its life when that is shorter.
pub fn refresh_after(expires_in_s: u64) -> Duration {
    let s = if expires_in_s > 600 {
        expires_in_s - 300
    } else {
        expires_in_s / 2
    };
    Duration::from_secs(s.max(1))
}

/// The minted credentials in force, by secret name, and a stamp that changes with them.
#[derive(Default)]
pub struct Minted {
    tokens: RwLock<BTreeMap<String, String>>,
    /// Unix ms of the last change (0: none yet); part of the key-sync version, so an edge
    /// sees a new token as a new snapshot.
    stamp_ms: AtomicU64,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("names", &self.snapshot().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Minted {
    /// Every credential in force.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes whenever a credential does (0 before the first).
    pub fn stamp_ms(&self) -> u64 {
        self.stamp_ms.load(Ordering::Acquire)
    }

    /// Puts `token` in force under `name`.
    pub fn set(&self, name: &str, token: String, now_ms: u64) {
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), token);
        // Strictly increasing, also for two changes within one millisecond.
        let _ = self
            .stamp_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some(now_ms.max(old + 1))
            });
    }
}

/// Keeps `name`'s token fresh for as long as the process runs.
pub fn spawn_refresher(name: String, account: Arc<ServiceAccount>, minted: Arc<Minted>) {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        let mut backoff = Duration::from_secs(1);
        loop {
            let now_ms = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
            match account.mint(&http, now_ms / 1000).await {
                Ok((token, expires_in)) => {
                    minted.set(&name, token, now_ms);
                    backoff = Duration::from_secs(1);
                    println!(
                        "control plane: `{name}`: access token for {} minted, valid {expires_in} s",
                        account.client_email()
                    );
                    tokio::time::sleep(refresh_after(expires_in)).await;
                }
                Err(err) => {
                    eprintln!("control plane: `{name}`: {err}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

    const KEY: &str = include_str!("../tests/fixtures/test-service-account.json");

    #[test]
    fn the_assertion_is_an_rs256_jwt_the_public_key_verifies() {
        let account = ServiceAccount::from_json(KEY.as_bytes()).unwrap();
        let jwt = account
            .assertion(CLOUD_PLATFORM_SCOPE, 1_700_000_000)
            .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], "0123456789abcdef-test");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims["iss"],
            "switchyard-test@example.iam.gserviceaccount.com"
        );
        assert_eq!(claims["aud"], "https://oauth2.googleapis.com/token");
        assert_eq!(claims["scope"], CLOUD_PLATFORM_SCOPE);
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            3600
        );

        let public = UnparsedPublicKey::new(
            &RSA_PKCS1_2048_8192_SHA256,
            account.key.public().as_ref().to_vec(),
        );
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        public.verify(signed.as_bytes(), &signature).unwrap();
        // Another message does not verify: the signature covers the claims.
        let forged = format!("{}.{}", parts[0], URL_SAFE_NO_PAD.encode(b"{}"));
        assert!(public.verify(forged.as_bytes(), &signature).is_err());
    }

    #[test]
    fn bad_key_files_say_what_is_wrong_without_the_key() {
        let not_sa = br#"{"type":"authorized_user","client_email":"a","private_key":"x"}"#;
        assert!(ServiceAccount::from_json(not_sa)
            .unwrap_err()
            .contains("not `service_account`"));
        let not_pem =
            br#"{"type":"service_account","client_email":"a","private_key":"secretstuff"}"#;
        let err = ServiceAccount::from_json(not_pem).unwrap_err();
        assert!(err.contains("PEM") && !err.contains("secretstuff"), "{err}");
        assert!(ServiceAccount::from_json(b"{")
            .unwrap_err()
            .contains("not a service-account"));
    }

    #[test]
    fn refresh_comes_before_expiry() {
        assert_eq!(refresh_after(3600), Duration::from_secs(3300));
        assert_eq!(refresh_after(120), Duration::from_secs(60));
        assert_eq!(refresh_after(0), Duration::from_secs(1));
    }

    #[test]
    fn the_stamp_changes_with_every_token() {
        let minted = Minted::default();
        assert_eq!(minted.stamp_ms(), 0);
        minted.set("A", "t1".into(), 1000);
        minted.set("A", "t2".into(), 1000);
        assert_eq!(minted.stamp_ms(), 1001);
        assert_eq!(minted.snapshot()["A"], "t2");
        assert!(!format!("{minted:?}").contains("t2"));
    }
}
