//! Virtual keys: created with a secret shown once, stored as SHA-256 only, updated, revoked,
//! rotated with an optional grace period, and published to edges as a versioned snapshot.
//!
//! Every function here runs inside one store transaction, and every change to what an edge
//! would see bumps the snapshot version in that same transaction, so an edge polling
//! `GET /edge/v1/keys` never holds a version whose content it has not seen.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_core::limits::Quota;

use crate::secrets::{self, KEY_PREFIX};
use crate::store::{Row, SqlValue, Tx};
use crate::{validate, Error};

/// Body of `POST /admin/v1/keys`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Chosen id (appears in usage records); generated (`key_…`) when absent.
    pub id: Option<String>,
    /// Free-form description.
    pub label: Option<String>,
    /// Team id the key belongs to.
    pub team: Option<String>,
    /// Model-name globs the key may use; default `["*"]`.
    pub models: Option<Vec<String>>,
    /// Unix seconds after which the key stops working.
    pub expires_at: Option<u64>,
    /// Any JSON object, kept for the operator.
    pub metadata: Option<Value>,
    /// Rate limits and budget (`rpm`, `tpm`, `concurrent`, `budget: {usd, period}`).
    pub limits: Option<Quota>,
}

/// Body of `PATCH /admin/v1/keys/{id}`: absent fields stay, `null` clears.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    /// New label, or `null` to clear.
    #[serde(default, deserialize_with = "validate::nullable")]
    pub label: Option<Option<String>>,
    /// New team id, or `null` to leave every team.
    #[serde(default, deserialize_with = "validate::nullable")]
    pub team: Option<Option<String>>,
    /// New model globs (`null` is refused: use `["*"]` for every model).
    #[serde(default, deserialize_with = "validate::nullable")]
    pub models: Option<Option<Vec<String>>>,
    /// New expiry (unix seconds), or `null` for none.
    #[serde(default, deserialize_with = "validate::nullable")]
    pub expires_at: Option<Option<u64>>,
    /// New metadata object (replaces the old one; `null` is refused, `{}` empties it).
    #[serde(default, deserialize_with = "validate::nullable")]
    pub metadata: Option<Option<Value>>,
    /// New limits (replace the old ones), or `null` for none.
    #[serde(default, deserialize_with = "validate::nullable")]
    pub limits: Option<Option<Quota>>,
}

/// Body of `POST /admin/v1/keys/{id}/rotate`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Seconds the old secret keeps working; 0 (default) stops it at once.
    #[serde(default)]
    pub grace_period_s: u64,
}

/// Longest grace period accepted: 30 days.
const MAX_GRACE_S: u64 = 30 * 86_400;

/// A key as the admin API shows it: never its secret, only the secret's last characters.
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    /// Stable id.
    pub id: String,
    /// Description.
    pub label: Option<String>,
    /// Team id.
    pub team: Option<String>,
    /// Model globs.
    pub models: Vec<String>,
    /// Unix seconds after which the key stops working.
    pub expires_at: Option<i64>,
    /// Operator's JSON object.
    pub metadata: Value,
    /// Rate limits and budget.
    pub limits: Option<Quota>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last change.
    pub updated_at: i64,
    /// Unix seconds of revocation.
    pub revoked_at: Option<i64>,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
    /// `…` and the last four characters of the current secret.
    pub secret_hint: String,
    /// When a rotated-out secret still works: the end of its grace period.
    pub previous_secret_expires_at: Option<i64>,
}

/// A key with the secret that was just made for it (create and rotate answer this, once).
#[derive(Debug, Clone, Serialize)]
pub struct KeyWithSecret {
    /// The key.
    pub key: KeyView,
    /// The new secret; shown only in this response.
    pub secret: String,
}

/// One entry of the edge snapshot: one usable secret of one key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EdgeKey {
    /// Key id (the same for every secret of a key).
    pub id: String,
    /// SHA-256 hex of the secret.
    pub sha256: String,
    /// Model globs.
    pub models: Vec<String>,
    /// Unix seconds after which this secret must be refused (the key's expiry or, for a
    /// rotated-out secret, the end of its grace period, whichever is first).
    pub expires_at: Option<i64>,
    /// Description.
    pub label: Option<String>,
    /// Team id.
    pub team: Option<String>,
    /// The key's rate limits and budget, when it has some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Quota>,
}

/// What `GET /edge/v1/keys` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeySnapshot {
    /// Increases with every key or team-limit change.
    pub version: u64,
    /// Every usable secret of every live key.
    pub keys: Vec<EdgeKey>,
    /// The limits of every team that has some, by team id.
    #[serde(default)]
    pub teams: BTreeMap<String, Quota>,
    /// Provider credentials minted here, by secret name ([`crate::credentials`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, String>,
}

const KEY_COLUMNS: &str =
    "id, label, team_id, models, expires_at, metadata, created_at, updated_at, revoked_at, limits";

struct KeyRow {
    id: String,
    label: Option<String>,
    team: Option<String>,
    models: Vec<String>,
    expires_at: Option<i64>,
    metadata: Value,
    created_at: i64,
    updated_at: i64,
    revoked_at: Option<i64>,
    limits: Option<Quota>,
}

impl KeyRow {
    fn from_row(row: &Row) -> Result<Self, Error> {
        Ok(Self {
            id: row.text(0)?,
            label: row.opt_text(1)?,
            team: row.opt_text(2)?,
            models: json_column(&row.text(3)?)?,
            expires_at: row.opt_int(4)?,
            metadata: json_column(&row.text(5)?)?,
            created_at: row.int(6)?,
            updated_at: row.int(7)?,
            revoked_at: row.opt_int(8)?,
            limits: row.opt_text(9)?.map(|t| json_column(&t)).transpose()?,
        })
    }

    fn view(self, secrets: &[LiveSecret], now: i64) -> KeyView {
        let status = if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|t| t <= now) {
            "expired"
        } else {
            "active"
        };
        KeyView {
            secret_hint: secrets
                .iter()
                .find(|s| s.expires_at.is_none())
                .map(|s| s.hint.clone())
                .unwrap_or_default(),
            previous_secret_expires_at: secrets.iter().filter_map(|s| s.expires_at).max(),
            id: self.id,
            label: self.label,
            team: self.team,
            models: self.models,
            expires_at: self.expires_at,
            metadata: self.metadata,
            limits: self.limits,
            created_at: self.created_at,
            updated_at: self.updated_at,
            revoked_at: self.revoked_at,
            status,
        }
    }
}

/// Checks limits from the admin API and turns them into their stored form.
pub(crate) fn limits_column(limits: Option<&Quota>) -> Result<Option<String>, Error> {
    let Some(limits) = limits else {
        return Ok(None);
    };
    limits
        .validate("limits")
        .map_err(|e| Error::invalid(e, "invalid_value"))?;
    Ok(limits
        .is_limited()
        .then(|| serde_json::to_string(limits).unwrap_or_default()))
}

/// Parses a JSON document the store holds as text.
pub(crate) fn json_column<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| {
        Error::Store(crate::store::StoreError::Decode(format!(
            "stored JSON is invalid: {e}"
        )))
    })
}

struct LiveSecret {
    hint: String,
    expires_at: Option<i64>,
}

/// Secrets still usable at `now`, by key id.
fn live_secrets(
    tx: &mut dyn Tx,
    key_id: Option<&str>,
    now: i64,
) -> Result<HashMap<String, Vec<LiveSecret>>, Error> {
    let mut sql = "SELECT key_id, hint, expires_at FROM key_secrets \
                   WHERE (expires_at IS NULL OR expires_at > $1)"
        .to_string();
    let mut params = vec![SqlValue::Int(now)];
    if let Some(id) = key_id {
        sql.push_str(" AND key_id = $2");
        params.push(id.into());
    }
    let mut by_key: HashMap<String, Vec<LiveSecret>> = HashMap::new();
    for row in tx.query(&sql, &params)? {
        by_key.entry(row.text(0)?).or_default().push(LiveSecret {
            hint: row.text(1)?,
            expires_at: row.opt_int(2)?,
        });
    }
    Ok(by_key)
}

fn load_row(tx: &mut dyn Tx, id: &str) -> Result<KeyRow, Error> {
    let row = tx
        .query_opt(
            &format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"),
            &[id.into()],
        )?
        .ok_or_else(|| Error::not_found("key", id, "key_not_found"))?;
    KeyRow::from_row(&row)
}

/// The key `id` as the admin API shows it.
pub fn get(tx: &mut dyn Tx, id: &str, now: i64) -> Result<KeyView, Error> {
    let row = load_row(tx, id)?;
    let secrets = live_secrets(tx, Some(id), now)?;
    Ok(row.view(secrets.get(id).map_or(&[], Vec::as_slice), now))
}

/// Keys, newest first; only those of `team` when given; revoked ones only when asked.
pub fn list(
    tx: &mut dyn Tx,
    team: Option<&str>,
    include_revoked: bool,
    now: i64,
) -> Result<Vec<KeyView>, Error> {
    let mut sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE 1 = 1");
    let mut params = Vec::new();
    if let Some(team) = team {
        params.push(SqlValue::from(team));
        sql.push_str(&format!(" AND team_id = ${}", params.len()));
    }
    if !include_revoked {
        sql.push_str(" AND revoked_at IS NULL");
    }
    sql.push_str(" ORDER BY created_at DESC, id");
    let rows = tx.query(&sql, &params)?;
    let secrets = live_secrets(tx, None, now)?;
    rows.iter()
        .map(|row| {
            let key = KeyRow::from_row(row)?;
            let live = secrets.get(&key.id).map_or(&[][..], Vec::as_slice);
            Ok(key.view(live, now))
        })
        .collect()
}

fn require_team(tx: &mut dyn Tx, team: &str) -> Result<(), Error> {
    if tx
        .query_opt("SELECT id FROM teams WHERE id = $1", &[team.into()])?
        .is_none()
    {
        return Err(Error::not_found("team", team, "team_not_found"));
    }
    Ok(())
}

/// Marks a change edges must see.
pub(crate) fn bump_version(tx: &mut dyn Tx) -> Result<(), Error> {
    tx.execute(
        "UPDATE key_snapshot_version SET version = version + 1 WHERE id = 1",
        &[],
    )?;
    Ok(())
}

fn add_secret(tx: &mut dyn Tx, key_id: &str, now: i64) -> Result<String, Error> {
    let secret = secrets::new_secret(KEY_PREFIX)?;
    tx.execute(
        "INSERT INTO key_secrets (sha256, key_id, hint, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, NULL)",
        &[
            secrets::sha256_hex(&secret).into(),
            key_id.into(),
            secrets::hint(&secret).into(),
            now.into(),
        ],
    )?;
    Ok(secret)
}

/// Creates a key and its first secret.
pub fn create(tx: &mut dyn Tx, request: CreateKey, now: i64) -> Result<KeyWithSecret, Error> {
    let id = match request.id {
        Some(id) => {
            validate::id("id", &id)?;
            id
        }
        None => format!("key_{}", secrets::random_hex(8)?),
    };
    if let Some(label) = &request.label {
        validate::text("label", label, true)?;
    }
    let models = request.models.unwrap_or_else(|| vec!["*".to_string()]);
    validate::models(&models)?;
    let expires_at = request
        .expires_at
        .map(|t| validate::unix_seconds("expires_at", t))
        .transpose()?;
    let metadata = validate::metadata(
        &request
            .metadata
            .unwrap_or_else(|| Value::Object(Default::default())),
    )?;
    let limits = limits_column(request.limits.as_ref())?;
    if let Some(team) = &request.team {
        require_team(tx, team)?;
    }
    if tx
        .query_opt("SELECT id FROM keys WHERE id = $1", &[id.as_str().into()])?
        .is_some()
    {
        return Err(Error::conflict(
            format!("a key with id `{id}` already exists"),
            "duplicate_id",
        ));
    }
    tx.execute(
        &format!(
            "INSERT INTO keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, NULL, $8)"
        ),
        &[
            id.as_str().into(),
            request.label.into(),
            request.team.into(),
            serde_json::to_string(&models).unwrap_or_default().into(),
            expires_at.into(),
            metadata.into(),
            now.into(),
            limits.into(),
        ],
    )?;
    let secret = add_secret(tx, &id, now)?;
    bump_version(tx)?;
    Ok(KeyWithSecret {
        key: get(tx, &id, now)?,
        secret,
    })
}

fn require_live(key: &KeyRow) -> Result<(), Error> {
    if key.revoked_at.is_some() {
        return Err(Error::conflict(
            format!("key `{}` is revoked", key.id),
            "key_revoked",
        ));
    }
    Ok(())
}

/// Applies an update to a live key.
pub fn update(tx: &mut dyn Tx, id: &str, patch: UpdateKey, now: i64) -> Result<KeyView, Error> {
    let mut key = load_row(tx, id)?;
    require_live(&key)?;
    if let Some(label) = patch.label {
        if let Some(label) = &label {
            validate::text("label", label, true)?;
        }
        key.label = label;
    }
    if let Some(team) = patch.team {
        if let Some(team) = &team {
            require_team(tx, team)?;
        }
        key.team = team;
    }
    if let Some(models) = patch.models {
        let models = validate::not_null("models", models)?;
        validate::models(&models)?;
        key.models = models;
    }
    if let Some(expires_at) = patch.expires_at {
        key.expires_at = expires_at
            .map(|t| validate::unix_seconds("expires_at", t))
            .transpose()?;
    }
    let metadata = match patch.metadata {
        Some(metadata) => validate::not_null("metadata", metadata)?,
        None => key.metadata,
    };
    let metadata = validate::metadata(&metadata)?;
    if let Some(limits) = patch.limits {
        key.limits = limits;
    }
    let limits = limits_column(key.limits.as_ref())?;
    tx.execute(
        "UPDATE keys SET label = $2, team_id = $3, models = $4, expires_at = $5, \
         metadata = $6, updated_at = $7, limits = $8 WHERE id = $1",
        &[
            id.into(),
            key.label.into(),
            key.team.into(),
            serde_json::to_string(&key.models)
                .unwrap_or_default()
                .into(),
            key.expires_at.into(),
            metadata.into(),
            now.into(),
            limits.into(),
        ],
    )?;
    bump_version(tx)?;
    get(tx, id, now)
}

/// Revokes a key: every secret of it stops at once. Revoking a revoked key changes nothing.
pub fn revoke(tx: &mut dyn Tx, id: &str, now: i64) -> Result<KeyView, Error> {
    let key = load_row(tx, id)?;
    if key.revoked_at.is_none() {
        tx.execute(
            "UPDATE keys SET revoked_at = $2, updated_at = $2 WHERE id = $1",
            &[id.into(), now.into()],
        )?;
        bump_version(tx)?;
    }
    get(tx, id, now)
}

/// Gives a key a new secret; the current one keeps working for `grace_period_s` seconds.
pub fn rotate(
    tx: &mut dyn Tx,
    id: &str,
    request: RotateKey,
    now: i64,
) -> Result<KeyWithSecret, Error> {
    if request.grace_period_s > MAX_GRACE_S {
        return Err(Error::invalid(
            format!("`grace_period_s` must be at most {MAX_GRACE_S} (30 days)"),
            "invalid_value",
        ));
    }
    let key = load_row(tx, id)?;
    require_live(&key)?;
    // Secrets whose grace is over are of no use to anyone; drop them.
    tx.execute(
        "DELETE FROM key_secrets WHERE key_id = $1 AND expires_at IS NOT NULL AND expires_at <= $2",
        &[id.into(), now.into()],
    )?;
    tx.execute(
        "UPDATE key_secrets SET expires_at = $2 WHERE key_id = $1 AND expires_at IS NULL",
        &[id.into(), (now + request.grace_period_s as i64).into()],
    )?;
    let secret = add_secret(tx, id, now)?;
    tx.execute(
        "UPDATE keys SET updated_at = $2 WHERE id = $1",
        &[id.into(), now.into()],
    )?;
    bump_version(tx)?;
    Ok(KeyWithSecret {
        key: get(tx, id, now)?,
        secret,
    })
}

/// The current snapshot version.
pub fn version(tx: &mut dyn Tx) -> Result<u64, Error> {
    let row = tx
        .query_opt("SELECT version FROM key_snapshot_version WHERE id = 1", &[])?
        .ok_or_else(|| {
            Error::Store(crate::store::StoreError::Decode(
                "the key snapshot version row is missing".into(),
            ))
        })?;
    Ok(row.int(0)? as u64)
}

/// Every secret an edge must accept at `now`, with the version it belongs to.
///
/// The version is read before the keys: a change committed in between shows up in the keys
/// under the older version, so the edge fetches it again at the next bump, harmlessly. Time
/// alone (a grace period or expiry passing) drops entries without a new version: edges
/// enforce each entry's `expires_at` themselves.
pub fn snapshot(tx: &mut dyn Tx, now: i64) -> Result<KeySnapshot, Error> {
    let version = version(tx)?;
    let rows = tx.query(
        "SELECT k.id, s.sha256, k.models, k.expires_at, s.expires_at, k.label, k.team_id, \
         k.limits \
         FROM key_secrets s JOIN keys k ON k.id = s.key_id \
         WHERE k.revoked_at IS NULL \
           AND (k.expires_at IS NULL OR k.expires_at > $1) \
           AND (s.expires_at IS NULL OR s.expires_at > $1) \
         ORDER BY k.id, s.created_at, s.sha256",
        &[now.into()],
    )?;
    let keys = rows
        .iter()
        .map(|row| {
            let key_expiry = row.opt_int(3)?;
            let secret_expiry = row.opt_int(4)?;
            Ok(EdgeKey {
                id: row.text(0)?,
                sha256: row.text(1)?,
                models: json_column(&row.text(2)?)?,
                expires_at: match (key_expiry, secret_expiry) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                label: row.opt_text(5)?,
                team: row.opt_text(6)?,
                limits: row.opt_text(7)?.map(|t| json_column(&t)).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let teams = tx
        .query(
            "SELECT id, limits FROM teams WHERE limits IS NOT NULL ORDER BY id",
            &[],
        )?
        .iter()
        .map(|row| Ok((row.text(0)?, json_column(&row.text(1)?)?)))
        .collect::<Result<_, Error>>()?;
    Ok(KeySnapshot {
        version,
        keys,
        teams,
        credentials: BTreeMap::new(),
    })
}
