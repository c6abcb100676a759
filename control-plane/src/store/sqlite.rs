//! The SQLite engine: one connection to a file, in WAL mode, behind a mutex.
//!
//! One writer at a time is how SQLite works anyway; a single connection keeps that explicit
//! and makes every transaction see a consistent database.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, ToSql, TransactionBehavior};

use super::{EngineKind, Row, SqlValue, StoreError, Tx};

pub(super) struct SqliteStore {
    connection: Mutex<Connection>,
}

impl SqliteStore {
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Open(format!("creating {}: {e}", dir.display())))?;
        }
        let connection = Connection::open(path)
            .map_err(|e| StoreError::Open(format!("opening {}: {e}", path.display())))?;
        // WAL lets readers run beside the writer; NORMAL sync is durable across a process
        // crash (an OS crash may lose the last transactions, not corrupt the file).
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                 PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
            )
            .map_err(engine_error)?;
        // Room for every statement the control plane runs, ingest's batch sizes included.
        connection.set_prepared_statement_cache_capacity(128);
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    pub(super) fn transact<T, E: From<StoreError>>(
        &self,
        work: impl FnOnce(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // IMMEDIATE takes the write lock up front, so a read-then-write transaction never
        // fails half-way on a lock upgrade when another process shares the file.
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(engine_error)?;
        let mut wrapped = SqliteTx { tx };
        let result = work(&mut wrapped)?;
        wrapped.tx.commit().map_err(engine_error)?;
        Ok(result)
    }
}

struct SqliteTx<'c> {
    tx: rusqlite::Transaction<'c>,
}

/// Rewrites PostgreSQL's `$1` placeholders as SQLite's `?1` (same meaning: parameter 1).
/// The control plane's SQL has no `$` inside string literals.
fn sqlite_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

impl ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            SqlValue::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            SqlValue::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            SqlValue::Real(v) => ToSqlOutput::Borrowed(ValueRef::Real(*v)),
            SqlValue::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
        })
    }
}

fn engine_error(error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) if error.to_string().contains("UNIQUE") => {
            StoreError::UniqueViolation(error.to_string())
        }
        _ => StoreError::Engine(error.to_string()),
    }
}

fn read_value(value: ValueRef<'_>) -> Result<SqlValue, StoreError> {
    Ok(match value {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(v) => SqlValue::Int(v),
        ValueRef::Real(v) => SqlValue::Real(v),
        ValueRef::Text(bytes) => SqlValue::Text(
            String::from_utf8(bytes.to_vec()).map_err(|e| StoreError::Decode(e.to_string()))?,
        ),
        ValueRef::Blob(_) => return Err(StoreError::Decode("unexpected BLOB".into())),
    })
}

impl Tx for SqliteTx<'_> {
    fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64, StoreError> {
        let mut statement = self
            .tx
            .prepare_cached(&sqlite_sql(sql))
            .map_err(engine_error)?;
        let changed = statement
            .execute(rusqlite::params_from_iter(params))
            .map_err(engine_error)?;
        Ok(changed as u64)
    }

    fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<Row>, StoreError> {
        let mut statement = self
            .tx
            .prepare_cached(&sqlite_sql(sql))
            .map_err(engine_error)?;
        let columns = statement.column_count();
        let mut rows = statement
            .query(rusqlite::params_from_iter(params))
            .map_err(engine_error)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(engine_error)? {
            let values = (0..columns)
                .map(|i| read_value(row.get_ref(i).map_err(engine_error)?))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(Row(values));
        }
        Ok(out)
    }

    fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.tx.execute_batch(sql).map_err(engine_error)
    }

    fn engine(&self) -> EngineKind {
        EngineKind::Sqlite
    }
}

#[cfg(test)]
mod tests {
    use super::sqlite_sql;

    #[test]
    fn placeholders_become_numbered_question_marks() {
        assert_eq!(
            sqlite_sql("SELECT a FROM t WHERE b = $2 AND c = $10 OR d = $1"),
            "SELECT a FROM t WHERE b = ?2 AND c = ?10 OR d = ?1"
        );
        assert_eq!(sqlite_sql("SELECT '$' || x"), "SELECT '$' || x");
    }
}
