//! One store layer over two engines: SQLite embedded (the default, nothing to install) and
//! PostgreSQL (several gateway/backend nodes sharing one database).
//!
//! The control plane's logic is written once against [`Tx`], a synchronous transaction that
//! runs SQL with `$1`-style placeholders and returns rows of [`SqlValue`]s. Both engines run
//! it on tokio's blocking threads ([`Store::transact`]), so no query is written twice and no
//! async runs under a held database connection. The SQL sticks to what both engines share:
//! `BIGINT`, `TEXT` and `DOUBLE PRECISION` columns, `ON CONFLICT … DO NOTHING`, `RETURNING`,
//! integer division, and `CAST(… AS BIGINT)` around sums (PostgreSQL would widen them to
//! `NUMERIC`).

mod migrations;
mod postgres;
mod sqlite;

use std::path::Path;
use std::sync::Arc;

/// A value bound to a placeholder or read from a column.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// SQL `NULL`.
    Null,
    /// A `BIGINT` (and SQLite's integers).
    Int(i64),
    /// A `DOUBLE PRECISION`.
    Real(f64),
    /// A `TEXT`.
    Text(String),
}

impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        SqlValue::Int(v)
    }
}

impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        SqlValue::Real(v)
    }
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_string())
    }
}

impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// One result row: its values by column position.
#[derive(Debug, Clone)]
pub struct Row(pub(crate) Vec<SqlValue>);

impl Row {
    fn column(&self, index: usize) -> Result<&SqlValue, StoreError> {
        self.0
            .get(index)
            .ok_or_else(|| StoreError::Decode(format!("no column {index}")))
    }

    /// The integer in column `index` (`NULL` is an error).
    pub fn int(&self, index: usize) -> Result<i64, StoreError> {
        self.opt_int(index)?
            .ok_or_else(|| StoreError::Decode(format!("column {index} is NULL")))
    }

    /// The integer in column `index`, or `None` for `NULL`.
    pub fn opt_int(&self, index: usize) -> Result<Option<i64>, StoreError> {
        match self.column(index)? {
            SqlValue::Null => Ok(None),
            SqlValue::Int(v) => Ok(Some(*v)),
            other => Err(StoreError::Decode(format!(
                "column {index}: expected an integer, found {other:?}"
            ))),
        }
    }

    /// The float in column `index`, or `None` for `NULL` (SQLite may hand back an integer).
    pub fn opt_real(&self, index: usize) -> Result<Option<f64>, StoreError> {
        match self.column(index)? {
            SqlValue::Null => Ok(None),
            SqlValue::Real(v) => Ok(Some(*v)),
            SqlValue::Int(v) => Ok(Some(*v as f64)),
            other => Err(StoreError::Decode(format!(
                "column {index}: expected a float, found {other:?}"
            ))),
        }
    }

    /// The text in column `index` (`NULL` is an error).
    pub fn text(&self, index: usize) -> Result<String, StoreError> {
        self.opt_text(index)?
            .ok_or_else(|| StoreError::Decode(format!("column {index} is NULL")))
    }

    /// The text in column `index`, or `None` for `NULL`.
    pub fn opt_text(&self, index: usize) -> Result<Option<String>, StoreError> {
        match self.column(index)? {
            SqlValue::Null => Ok(None),
            SqlValue::Text(v) => Ok(Some(v.clone())),
            other => Err(StoreError::Decode(format!(
                "column {index}: expected text, found {other:?}"
            ))),
        }
    }
}

/// A failure of the store itself (as opposed to a request the control plane refuses).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A `UNIQUE` or primary-key constraint refused the write (a concurrent duplicate).
    #[error("unique constraint violated: {0}")]
    UniqueViolation(String),
    /// The engine failed (connection, SQL, I/O).
    #[error("database error: {0}")]
    Engine(String),
    /// A column did not hold what the code expected.
    #[error("unexpected column value: {0}")]
    Decode(String),
    /// The database URL or path could not be used.
    #[error("cannot open the store: {0}")]
    Open(String),
}

/// Which engine a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// SQLite, embedded, one file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// One database transaction; everything done through it commits or rolls back together.
pub trait Tx {
    /// Runs a statement and returns how many rows it changed.
    fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64, StoreError>;
    /// Runs a query and returns all its rows.
    fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<Row>, StoreError>;
    /// Runs several `;`-separated statements without parameters (migrations).
    fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError>;
    /// The engine behind this transaction.
    fn engine(&self) -> EngineKind;
}

impl dyn Tx + '_ {
    /// The first row of a query, if any.
    pub fn query_opt(&mut self, sql: &str, params: &[SqlValue]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

enum Engine {
    Sqlite(sqlite::SqliteStore),
    Postgres(Box<postgres::PostgresStore>),
}

/// The control plane's database: cheap to clone, safe to share.
#[derive(Clone)]
pub struct Store {
    engine: Arc<Engine>,
}

impl Store {
    /// Opens (creating if needed) the SQLite database file at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let store = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open(&path))
            .await
            .map_err(|e| StoreError::Engine(format!("store thread failed: {e}")))??;
        Self::migrated(Engine::Sqlite(store)).await
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://…`) and migrates it.
    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        let store = Box::new(postgres::PostgresStore::new(url)?);
        Self::migrated(Engine::Postgres(store)).await
    }

    /// Opens `database_url` when given (PostgreSQL), else SQLite at `sqlite_path`.
    pub async fn open(database_url: Option<&str>, sqlite_path: &Path) -> Result<Self, StoreError> {
        match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Self::open_postgres(url).await
            }
            Some(other) => Err(StoreError::Open(format!(
                "unsupported database URL scheme in `{}` (expected postgres://…)",
                other.split("://").next().unwrap_or(other)
            ))),
            None => Self::open_sqlite(sqlite_path).await,
        }
    }

    async fn migrated(engine: Engine) -> Result<Self, StoreError> {
        let store = Store {
            engine: Arc::new(engine),
        };
        store.transact(|tx| migrations::run(tx)).await?;
        Ok(store)
    }

    /// The engine behind this store.
    pub fn engine_kind(&self) -> EngineKind {
        match *self.engine {
            Engine::Sqlite(_) => EngineKind::Sqlite,
            Engine::Postgres(_) => EngineKind::Postgres,
        }
    }

    /// Runs `work` in one transaction on a blocking thread: committed when it returns `Ok`,
    /// rolled back when it returns `Err`.
    pub async fn transact<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, E> + Send + 'static,
    {
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_blocking(move || match &*engine {
            Engine::Sqlite(store) => store.transact(work),
            Engine::Postgres(store) => store.transact(work),
        })
        .await
        .map_err(|e| E::from(StoreError::Engine(format!("store thread failed: {e}"))))?
    }
}
