//! The PostgreSQL engine: a small pool of synchronous connections.
//!
//! Store work already runs on blocking threads (see [`super::Store::transact`]), so the
//! synchronous `postgres` client fits without an async pool; the pool below only bounds how
//! many connections one node opens and reuses them.

use std::error::Error;
use std::str::FromStr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use postgres::error::SqlState;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, Config, NoTls};

use super::{EngineKind, Row, SqlValue, StoreError, Tx};

/// Connections one node keeps at most.
const MAX_CONNECTIONS: usize = 8;

pub(super) struct PostgresStore {
    config: Config,
    pool: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Client>,
    open: usize,
}

impl PostgresStore {
    /// Parses `url`; connections are opened on first use.
    pub(super) fn new(url: &str) -> Result<Self, StoreError> {
        let mut config = Config::from_str(url)
            .map_err(|e| StoreError::Open(format!("invalid PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        Ok(Self {
            config,
            pool: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
        })
    }

    fn lock_pool(&self) -> MutexGuard<'_, PoolState> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checkout(&self) -> Result<PooledClient<'_>, StoreError> {
        let mut pool = self.lock_pool();
        loop {
            if let Some(client) = pool.idle.pop() {
                if client.is_closed() {
                    pool.open -= 1;
                    continue;
                }
                return Ok(PooledClient {
                    store: self,
                    client: Some(client),
                });
            }
            if pool.open < MAX_CONNECTIONS {
                pool.open += 1;
                drop(pool);
                return match self.config.connect(NoTls) {
                    Ok(client) => Ok(PooledClient {
                        store: self,
                        client: Some(client),
                    }),
                    Err(e) => {
                        self.lock_pool().open -= 1;
                        self.returned.notify_one();
                        Err(StoreError::Open(format!("connecting to PostgreSQL: {e}")))
                    }
                };
            }
            pool = self.returned.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(super) fn transact<T, E: From<StoreError>>(
        &self,
        work: impl FnOnce(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut pooled = self.checkout()?;
        let client = pooled.client.as_mut().expect("a checked-out client");
        let tx = client.transaction().map_err(engine_error)?;
        let mut wrapped = PostgresTx { tx };
        // Dropping the transaction on an error rolls it back.
        let result = work(&mut wrapped)?;
        wrapped.tx.commit().map_err(engine_error)?;
        Ok(result)
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Closing a synchronous client blocks on its own runtime, which tokio forbids on an
        // async thread (where the last `Store` clone is usually dropped): close them on a
        // thread of their own.
        let idle = std::mem::take(&mut self.lock_pool().idle);
        if !idle.is_empty() {
            std::thread::spawn(move || drop(idle));
        }
    }
}

/// A connection on loan; back to the pool when dropped (closed ones are forgotten).
struct PooledClient<'s> {
    store: &'s PostgresStore,
    client: Option<Client>,
}

impl Drop for PooledClient<'_> {
    fn drop(&mut self) {
        let mut pool = self.store.lock_pool();
        match self.client.take() {
            Some(client) if !client.is_closed() => pool.idle.push(client),
            _ => pool.open -= 1,
        }
        self.store.returned.notify_one();
    }
}

struct PostgresTx<'c> {
    tx: postgres::Transaction<'c>,
}

fn engine_error(error: postgres::Error) -> StoreError {
    if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::UniqueViolation(error.to_string())
    } else {
        // The server's message is in the source; `Display` alone says only "db error".
        match error.source() {
            Some(source) => StoreError::Engine(format!("{error}: {source}")),
            None => StoreError::Engine(error.to_string()),
        }
    }
}

impl ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Int(v) => match *ty {
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            SqlValue::Real(v) => v.to_sql(ty, out),
            SqlValue::Text(v) => v.as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8
                | Type::INT4
                | Type::INT2
                | Type::FLOAT8
                | Type::TEXT
                | Type::VARCHAR
                | Type::BPCHAR
                | Type::NAME
        )
    }

    to_sql_checked!();
}

fn read_row(row: &postgres::Row) -> Result<Row, StoreError> {
    let decode = |e: postgres::Error| StoreError::Decode(e.to_string());
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let value: SqlValue = match *column.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(decode)?.into(),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)
                .map_err(decode)?
                .map(i64::from)
                .into(),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)
                .map_err(decode)?
                .map(i64::from)
                .into(),
            Type::FLOAT8 => row.try_get::<_, Option<f64>>(i).map_err(decode)?.into(),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                row.try_get::<_, Option<String>>(i).map_err(decode)?.into()
            }
            ref other => {
                return Err(StoreError::Decode(format!(
                    "column `{}` has unsupported type {other}",
                    column.name()
                )))
            }
        };
        values.push(value);
    }
    Ok(Row(values))
}

fn as_params(params: &[SqlValue]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl Tx for PostgresTx<'_> {
    fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64, StoreError> {
        self.tx
            .execute(sql, &as_params(params))
            .map_err(engine_error)
    }

    fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<Row>, StoreError> {
        self.tx
            .query(sql, &as_params(params))
            .map_err(engine_error)?
            .iter()
            .map(read_row)
            .collect()
    }

    fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.tx.batch_execute(sql).map_err(engine_error)
    }

    fn engine(&self) -> EngineKind {
        EngineKind::Postgres
    }
}
