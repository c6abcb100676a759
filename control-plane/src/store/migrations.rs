//! Versioned schema migrations, applied in order at start and recorded in
//! `schema_migrations`. A migration is never edited once released; changes are new ones.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{EngineKind, SqlValue, StoreError, Tx};

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "keys, teams, admin keys, usage ledger",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "tasks, webhook deliveries and settings; media units in the ledger",
        sql: include_str!("migrations/0002_tasks.sql"),
    },
    Migration {
        version: 3,
        name: "key and team limits, limit counters, admissions",
        sql: include_str!("migrations/0003_limits.sql"),
    },
];

/// Any fixed number: the advisory lock that serialises nodes migrating one PostgreSQL database.
const POSTGRES_MIGRATION_LOCK: i64 = 0x5359_4d49_4752;

pub(super) fn run(tx: &mut dyn Tx) -> Result<(), StoreError> {
    if tx.engine() == EngineKind::Postgres {
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[POSTGRES_MIGRATION_LOCK.into()],
        )?;
    }
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
           version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)",
    )?;
    let applied = tx
        .query("SELECT version FROM schema_migrations", &[])?
        .iter()
        .map(|row| row.int(0))
        .collect::<Result<Vec<_>, _>>()?;
    let newest_known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(newer) = applied.iter().find(|v| **v > newest_known) {
        return Err(StoreError::Open(format!(
            "the database has schema version {newer}, newer than this binary knows ({newest_known})"
        )));
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        tx.execute_batch(migration.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)",
            &[
                migration.version.into(),
                migration.name.into(),
                SqlValue::Int(now_ms),
            ],
        )?;
    }
    Ok(())
}
