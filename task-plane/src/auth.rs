//! Who is calling: a client with its gateway key, or an edge forwarding for one.
//!
//! An edge has already authenticated the client and checked its model; it forwards with the
//! edge token as `Authorization: Bearer` and the client's key id in `x-switchyard-key-id`
//! (team in `x-switchyard-team`). Those headers mean something only with the edge token;
//! from anyone else they are ignored and the bearer is checked as a gateway key.

use axum::http::HeaderMap;
use switchyard_core::{ErrorKind, Gateway, GatewayError};

pub use switchyard_core::tasks::edge::{KEY_ID_HEADER, TEAM_HEADER};

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The gateway key's id.
    pub key_id: String,
    /// Its team.
    pub team: Option<String>,
    /// Whether an edge vouches for it (and has checked its model).
    pub via_edge: bool,
}

impl Caller {
    /// Whether the caller may use `model`: the edge checked it already; a direct caller's
    /// key must allow the name it sent or the model's canonical name.
    pub fn allows(&self, gateway: &Gateway, model: &str) -> bool {
        if self.via_edge {
            return true;
        }
        let canonical = gateway.config().model_name(model);
        gateway
            .key(&self.key_id)
            .is_some_and(|k| k.allows(model) || canonical.is_some_and(|name| k.allows(name)))
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = header(headers, "authorization")?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Authenticates a request.
pub fn authenticate(
    headers: &HeaderMap,
    edge_token_hashes: &[String],
    gateway: &Gateway,
    now_s: u64,
) -> Result<Caller, GatewayError> {
    if let Some(token) = bearer(headers) {
        let hash = control_plane::secrets::sha256_hex(token);
        // Compare with every configured hash, without stopping early.
        let edge = edge_token_hashes.iter().fold(false, |found, expected| {
            found | control_plane::secrets::constant_time_eq(expected, &hash)
        });
        if edge {
            let key_id = header(headers, KEY_ID_HEADER)
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    GatewayError::new(
                        ErrorKind::Authentication,
                        format!("an edge request must name the client's key in `{KEY_ID_HEADER}`"),
                    )
                })?;
            return Ok(Caller {
                key_id: key_id.to_string(),
                team: header(headers, TEAM_HEADER)
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string),
                via_edge: true,
            });
        }
    }
    let key = gateway.authenticate(
        header(headers, "authorization"),
        header(headers, "x-api-key"),
        now_s,
    )?;
    Ok(Caller {
        key_id: key.id.clone(),
        team: key.team.clone(),
        via_edge: false,
    })
}
