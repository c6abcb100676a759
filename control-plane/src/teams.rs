//! Teams group keys; usage records carry the team id, so invoices are per team.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_core::limits::Quota;

use crate::keys::{bump_version, json_column, limits_column};
use crate::store::{Row, Tx};
use crate::{secrets, validate, Error};

/// Body of `POST /admin/v1/teams`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    /// Chosen id; generated (`team_…`) when absent.
    pub id: Option<String>,
    /// Unique display name.
    pub name: String,
    /// Any JSON object.
    pub metadata: Option<Value>,
    /// Rate limits and budget shared by every key of the team.
    pub limits: Option<Quota>,
}

/// Body of `PATCH /admin/v1/teams/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTeam {
    /// New unique name.
    pub name: Option<String>,
    /// New metadata object (replaces the old one).
    pub metadata: Option<Value>,
    /// New limits (replace the old ones), or `null` for none.
    #[serde(default, deserialize_with = "crate::validate::nullable")]
    pub limits: Option<Option<Quota>>,
}

/// A team as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TeamView {
    /// Stable id (appears in keys and usage records).
    pub id: String,
    /// Unique display name.
    pub name: String,
    /// Operator's JSON object.
    pub metadata: Value,
    /// Rate limits and budget shared by the team's keys.
    pub limits: Option<Quota>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last change.
    pub updated_at: i64,
    /// Keys of this team not revoked.
    pub active_keys: i64,
}

const TEAM_SELECT: &str = "SELECT t.id, t.name, t.metadata, t.created_at, t.updated_at, \
     (SELECT COUNT(*) FROM keys k WHERE k.team_id = t.id AND k.revoked_at IS NULL), t.limits \
     FROM teams t";

fn from_row(row: &Row) -> Result<TeamView, Error> {
    Ok(TeamView {
        id: row.text(0)?,
        name: row.text(1)?,
        metadata: json_column(&row.text(2)?)?,
        created_at: row.int(3)?,
        updated_at: row.int(4)?,
        active_keys: row.int(5)?,
        limits: row.opt_text(6)?.map(|t| json_column(&t)).transpose()?,
    })
}

/// Every team, by name.
pub fn list(tx: &mut dyn Tx) -> Result<Vec<TeamView>, Error> {
    tx.query(&format!("{TEAM_SELECT} ORDER BY t.name"), &[])?
        .iter()
        .map(from_row)
        .collect()
}

/// The team `id`.
pub fn get(tx: &mut dyn Tx, id: &str) -> Result<TeamView, Error> {
    let row = tx
        .query_opt(&format!("{TEAM_SELECT} WHERE t.id = $1"), &[id.into()])?
        .ok_or_else(|| Error::not_found("team", id, "team_not_found"))?;
    from_row(&row)
}

fn require_unique_name(tx: &mut dyn Tx, name: &str, except_id: &str) -> Result<(), Error> {
    if tx
        .query_opt(
            "SELECT id FROM teams WHERE name = $1 AND id <> $2",
            &[name.into(), except_id.into()],
        )?
        .is_some()
    {
        return Err(Error::conflict(
            format!("a team named `{name}` already exists"),
            "duplicate_name",
        ));
    }
    Ok(())
}

/// Creates a team.
pub fn create(tx: &mut dyn Tx, request: CreateTeam, now: i64) -> Result<TeamView, Error> {
    let id = match request.id {
        Some(id) => {
            validate::id("id", &id)?;
            id
        }
        None => format!("team_{}", secrets::random_hex(6)?),
    };
    validate::text("name", &request.name, false)?;
    let metadata = validate::metadata(
        &request
            .metadata
            .unwrap_or_else(|| Value::Object(Default::default())),
    )?;
    if tx
        .query_opt("SELECT id FROM teams WHERE id = $1", &[id.as_str().into()])?
        .is_some()
    {
        return Err(Error::conflict(
            format!("a team with id `{id}` already exists"),
            "duplicate_id",
        ));
    }
    require_unique_name(tx, &request.name, &id)?;
    let limits = limits_column(request.limits.as_ref())?;
    let limited = limits.is_some();
    tx.execute(
        "INSERT INTO teams (id, name, metadata, created_at, updated_at, limits) \
         VALUES ($1, $2, $3, $4, $4, $5)",
        &[
            id.as_str().into(),
            request.name.into(),
            metadata.into(),
            now.into(),
            limits.into(),
        ],
    )?;
    if limited {
        bump_version(tx)?;
    }
    get(tx, &id)
}

/// Renames a team or replaces its metadata.
pub fn update(tx: &mut dyn Tx, id: &str, patch: UpdateTeam, now: i64) -> Result<TeamView, Error> {
    let team = get(tx, id)?;
    let name = patch.name.unwrap_or(team.name);
    validate::text("name", &name, false)?;
    require_unique_name(tx, &name, id)?;
    let metadata = validate::metadata(&patch.metadata.unwrap_or(team.metadata))?;
    let limits_changed = patch.limits.is_some();
    let limits = limits_column(patch.limits.unwrap_or(team.limits).as_ref())?;
    tx.execute(
        "UPDATE teams SET name = $2, metadata = $3, updated_at = $4, limits = $5 WHERE id = $1",
        &[
            id.into(),
            name.into(),
            metadata.into(),
            now.into(),
            limits.into(),
        ],
    )?;
    if limits_changed {
        // Edges carry team limits in the key snapshot.
        bump_version(tx)?;
    }
    get(tx, id)
}

/// Deletes a team that has no active key (revoked keys keep the team id for history).
pub fn delete(tx: &mut dyn Tx, id: &str) -> Result<(), Error> {
    let team = get(tx, id)?;
    if team.active_keys > 0 {
        return Err(Error::conflict(
            format!(
                "team `{id}` still has {} active key(s); revoke or move them first",
                team.active_keys
            ),
            "team_not_empty",
        ));
    }
    tx.execute("DELETE FROM teams WHERE id = $1", &[id.into()])?;
    if team.limits.is_some() {
        bump_version(tx)?;
    }
    Ok(())
}
