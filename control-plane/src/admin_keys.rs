//! Admin keys: who may use the admin API, and with which role.
//!
//! Stored as SHA-256 only. The first one comes from the operator at start
//! (`--admin-key-sha256`, or `SWITCHYARD_ADMIN_KEY` hashed at start); later ones are made
//! through the API by an admin.

use serde::{Deserialize, Serialize};

use crate::secrets::{self, ADMIN_KEY_PREFIX};
use crate::store::{Row, Tx};
use crate::{validate, Error};

/// What an admin key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including managing admin keys.
    Admin,
    /// Reads only: keys, teams, usage, invoices, requests; no admin keys.
    ReadOnly,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read_only",
        }
    }

    fn parse(text: &str) -> Result<Self, Error> {
        match text {
            "admin" => Ok(Role::Admin),
            "read_only" => Ok(Role::ReadOnly),
            other => Err(Error::Store(crate::store::StoreError::Decode(format!(
                "unknown stored role `{other}`"
            )))),
        }
    }
}

/// Body of `POST /admin/v1/admin-keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAdminKey {
    /// Unique name (who holds it).
    pub name: String,
    /// `admin` or `read_only`.
    pub role: Role,
}

/// An admin key as the API shows it (never its secret or hash).
#[derive(Debug, Clone, Serialize)]
pub struct AdminKeyView {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of revocation.
    pub revoked_at: Option<i64>,
}

/// A new admin key with its secret (shown once).
#[derive(Debug, Clone, Serialize)]
pub struct AdminKeyWithSecret {
    /// The key.
    pub admin_key: AdminKeyView,
    /// The secret; shown only in this response.
    pub secret: String,
}

const COLUMNS: &str = "id, name, role, created_at, revoked_at";

fn from_row(row: &Row) -> Result<AdminKeyView, Error> {
    Ok(AdminKeyView {
        id: row.text(0)?,
        name: row.text(1)?,
        role: Role::parse(&row.text(2)?)?,
        created_at: row.int(3)?,
        revoked_at: row.opt_int(4)?,
    })
}

/// The live admin key whose secret hashes to `sha256`, if any.
pub fn authenticate(tx: &mut dyn Tx, sha256: &str) -> Result<Option<AdminKeyView>, Error> {
    tx.query_opt(
        &format!("SELECT {COLUMNS} FROM admin_keys WHERE sha256 = $1 AND revoked_at IS NULL"),
        &[sha256.into()],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// Makes sure an admin key with this hash exists (the operator's bootstrap key). A key with
/// this hash that was revoked stays revoked: revocation through the API wins over a flag.
pub fn ensure_bootstrap(tx: &mut dyn Tx, sha256: &str, now: i64) -> Result<(), Error> {
    if !secrets::is_sha256_hex(sha256) {
        return Err(Error::invalid(
            "the bootstrap admin key hash must be 64 hex characters",
            "invalid_value",
        ));
    }
    let sha256 = sha256.to_ascii_lowercase();
    tx.execute(
        "INSERT INTO admin_keys (id, name, sha256, role, created_at, revoked_at) \
         VALUES ($1, $2, $3, 'admin', $4, NULL) ON CONFLICT DO NOTHING",
        &[
            format!("adm_{}", &sha256[..12]).into(),
            format!("bootstrap-{}", &sha256[..8]).into(),
            sha256.into(),
            now.into(),
        ],
    )?;
    Ok(())
}

/// Every admin key, revoked ones included.
pub fn list(tx: &mut dyn Tx) -> Result<Vec<AdminKeyView>, Error> {
    tx.query(
        &format!("SELECT {COLUMNS} FROM admin_keys ORDER BY created_at, name"),
        &[],
    )?
    .iter()
    .map(from_row)
    .collect()
}

/// Creates an admin key.
pub fn create(
    tx: &mut dyn Tx,
    request: CreateAdminKey,
    now: i64,
) -> Result<AdminKeyWithSecret, Error> {
    validate::text("name", &request.name, false)?;
    if tx
        .query_opt(
            "SELECT id FROM admin_keys WHERE name = $1",
            &[request.name.as_str().into()],
        )?
        .is_some()
    {
        return Err(Error::conflict(
            format!("an admin key named `{}` already exists", request.name),
            "duplicate_name",
        ));
    }
    let id = format!("adm_{}", secrets::random_hex(6)?);
    let secret = secrets::new_secret(ADMIN_KEY_PREFIX)?;
    tx.execute(
        &format!("INSERT INTO admin_keys ({COLUMNS}, sha256) VALUES ($1, $2, $3, $4, NULL, $5)"),
        &[
            id.as_str().into(),
            request.name.into(),
            request.role.as_str().into(),
            now.into(),
            secrets::sha256_hex(&secret).into(),
        ],
    )?;
    let row = tx
        .query_opt(
            &format!("SELECT {COLUMNS} FROM admin_keys WHERE id = $1"),
            &[id.into()],
        )?
        .ok_or_else(|| {
            Error::Store(crate::store::StoreError::Decode(
                "admin key vanished".into(),
            ))
        })?;
    Ok(AdminKeyWithSecret {
        admin_key: from_row(&row)?,
        secret,
    })
}

/// Revokes an admin key, unless it is the last live one with the `admin` role (that would
/// lock every operator out).
pub fn revoke(tx: &mut dyn Tx, id: &str, now: i64) -> Result<AdminKeyView, Error> {
    let row = tx
        .query_opt(
            &format!("SELECT {COLUMNS} FROM admin_keys WHERE id = $1"),
            &[id.into()],
        )?
        .ok_or_else(|| Error::not_found("admin key", id, "admin_key_not_found"))?;
    let key = from_row(&row)?;
    if key.revoked_at.is_some() {
        return Ok(key);
    }
    if key.role == Role::Admin {
        let admins = tx
            .query_opt(
                "SELECT COUNT(*) FROM admin_keys WHERE role = 'admin' AND revoked_at IS NULL",
                &[],
            )?
            .map(|r| r.int(0))
            .transpose()?
            .unwrap_or(0);
        if admins <= 1 {
            return Err(Error::conflict(
                "this is the last admin key with the admin role; create another first",
                "last_admin",
            ));
        }
    }
    tx.execute(
        "UPDATE admin_keys SET revoked_at = $2 WHERE id = $1",
        &[id.into(), now.into()],
    )?;
    Ok(AdminKeyView {
        revoked_at: Some(now),
        ..key
    })
}
