//! The engine (aiopg.sa's `create_engine`) and its connections.

use std::fmt;

use aiopg_core::types::FromSqlOwned;
use aiopg_core::Result;
use aiopg_pool::{IntoConnectOptions, Pool, PooledConnection};

use aiopg_conn::TransactionOptions;

use crate::result::ResultProxy;
use crate::statement::{Built, Executable};
use crate::transaction::SATransaction;

/// A pool of connections speaking PostgreSQL: aiopg.sa's `Engine`.
#[derive(Clone)]
pub struct Engine {
    pool: Pool,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("size", &self.pool.size())
            .field("free_size", &self.pool.free_size())
            .finish_non_exhaustive()
    }
}

/// An engine over a new pool for `options` (a DSN or `ConnectOptions`), with the pool's
/// defaults; [`Engine::from_pool`] takes a pool built with any of its options.
pub async fn create_engine(options: impl IntoConnectOptions) -> Result<Engine> {
    Ok(Engine::from_pool(Pool::builder(options).build().await?))
}

impl Engine {
    /// An engine over `pool` (built with `Pool::builder(..)` and every option it has).
    pub fn from_pool(pool: Pool) -> Engine {
        Engine { pool }
    }

    /// The SQL dialect: always `"postgresql"`.
    pub fn dialect(&self) -> &'static str {
        "postgresql"
    }

    /// A connection from the pool, given back when dropped (or [`release`](Self::release)d).
    pub async fn acquire(&self) -> Result<SAConnection> {
        Ok(SAConnection {
            conn: self.pool.acquire().await?,
            tx: Default::default(),
        })
    }

    /// Gives a connection back to the pool now.
    pub async fn release(&self, conn: SAConnection) {
        self.pool.release(conn.conn).await;
    }

    /// Connections open or being opened, idle and in use.
    pub fn size(&self) -> usize {
        self.pool.size()
    }

    /// Idle connections.
    pub fn free_size(&self) -> usize {
        self.pool.free_size()
    }

    /// The pool's `min_size`.
    pub fn min_size(&self) -> usize {
        self.pool.min_size()
    }

    /// The pool's `max_size`.
    pub fn max_size(&self) -> usize {
        self.pool.max_size()
    }

    /// Stops handing out connections; idle ones close (see `Pool::close`).
    pub fn close(&self) {
        self.pool.close();
    }

    /// Closes every connection at once, in use or not.
    pub fn terminate(&self) {
        self.pool.terminate();
    }

    /// Waits until every connection is closed, after [`close`](Self::close).
    pub async fn wait_closed(&self) -> Result<()> {
        self.pool.wait_closed().await
    }

    /// The pool underneath.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// A connection of an [`Engine`]: aiopg.sa's `SAConnection`.
pub struct SAConnection {
    conn: PooledConnection,
    tx: crate::transaction::Shared,
}

impl fmt::Debug for SAConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SAConnection")
            .field("backend_pid", &self.conn.backend_pid())
            .finish_non_exhaustive()
    }
}

impl SAConnection {
    /// Runs a statement: raw SQL (`"..."` or `("... $1", &[&value])`) or a sea-query
    /// statement, whose values are bound as parameters. Rows are read as the result is
    /// fetched from.
    pub async fn execute(&self, stmt: impl Executable) -> Result<ResultProxy> {
        match stmt.build() {
            Built::Raw { sql, params } => {
                ResultProxy::new(self.conn.query_stream(sql, params).await?).await
            }
            Built::Query { sql, values } => {
                let params = values.as_params();
                ResultProxy::new(self.conn.query_stream(&sql, &params).await?).await
            }
            Built::Schema(sql) => {
                self.conn.batch_execute(&sql).await?;
                Ok(ResultProxy::empty())
            }
        }
    }

    /// The first column of the first row a statement returns (`None` without rows, or for
    /// NULL).
    pub async fn scalar<T: FromSqlOwned>(&self, stmt: impl Executable) -> Result<Option<T>> {
        self.execute(stmt).await?.scalar().await
    }

    /// Begins a transaction (`BEGIN`). Inside an open one, it joins it instead, as aiopg.sa
    /// does: the returned transaction's `commit()` does nothing (the outer one commits) and
    /// its `rollback()` rolls the whole transaction back.
    pub async fn begin(&self) -> Result<SATransaction> {
        SATransaction::begin(&self.conn, &self.tx, None, false).await
    }

    /// Begins a transaction with an isolation level, `READ ONLY` or `DEFERRABLE`; a `Usage`
    /// error inside an open transaction, whose options cannot change.
    pub async fn begin_with(&self, options: TransactionOptions) -> Result<SATransaction> {
        SATransaction::begin(&self.conn, &self.tx, Some(options), false).await
    }

    /// Begins a nested transaction: a `SAVEPOINT` inside an open transaction (any depth), or
    /// a transaction when none is open.
    pub async fn begin_nested(&self) -> Result<SATransaction> {
        SATransaction::begin(&self.conn, &self.tx, None, true).await
    }

    /// True inside a transaction block.
    pub fn in_transaction(&self) -> bool {
        self.conn.transaction_status() != aiopg_core::TransactionStatus::Idle
    }

    /// The aiopg connection underneath.
    pub fn connection(&self) -> &aiopg_conn::Connection {
        &self.conn
    }

    /// Gives the connection back to the pool; an open transaction is rolled back.
    pub async fn close(self) {
        drop(self.conn);
    }
}
