//! The engine (aiopg.sa's `create_engine`) and its connections.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aiopg_core::types::FromSqlOwned;
use aiopg_core::Result;
use aiopg_pool::{IntoConnectOptions, Pool, PoolBuilder, PooledConnection, Reuse};
use aiopg_rt::{BoxFuture, Runtime};

use aiopg_conn::TransactionOptions;

use crate::result::ResultProxy;
use crate::statement::{Built, Executable};
use crate::transaction::SATransaction;

/// A pool of connections speaking PostgreSQL: aiopg.sa's `Engine`.
#[derive(Clone)]
pub struct Engine {
    pool: Pool,
    server_version: u32,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("server_version", &self.server_version)
            .field("size", &self.pool.size())
            .field("free_size", &self.pool.free_size())
            .finish_non_exhaustive()
    }
}

/// An engine over a new pool for `options` (a DSN or `ConnectOptions`), with the pool's
/// defaults; [`Engine::builder`] takes every pool option. It connects once to learn the
/// server's version, so a wrong DSN or password fails here.
///
/// # Cancel safety
///
/// This method is cancel safe, as [`EngineBuilder::build`]: nothing is left behind.
pub async fn create_engine(options: impl IntoConnectOptions) -> Result<Engine> {
    Engine::builder(options).build().await
}

/// Builds an [`Engine`] with any of the pool's options (the same names and defaults as
/// [`PoolBuilder`]'s, aiopg's `minsize`, `maxsize`, `timeout`, `pool_recycle` among them).
///
/// ```no_run
/// # async fn f() -> aiopg_core::Result<()> {
/// use std::time::Duration;
///
/// let engine = aiopg_sa::Engine::builder("postgresql://app@localhost/app")
///     .min_size(2)
///     .max_size(20)
///     .timeout(Duration::from_secs(5))
///     .build()
///     .await?;
/// assert_eq!(engine.max_size(), 20);
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "an EngineBuilder does nothing until build() is awaited"]
pub struct EngineBuilder(PoolBuilder);

macro_rules! pool_option {
    ($($(#[$doc:meta])* $name:ident($ty:ty);)*) => {$(
        $(#[$doc])*
        pub fn $name(self, value: $ty) -> Self {
            EngineBuilder(self.0.$name(value))
        }
    )*};
}

impl EngineBuilder {
    pool_option! {
        /// [`PoolBuilder::min_size`]: connections opened at creation and kept open.
        min_size(usize);
        /// [`PoolBuilder::max_size`]: the most connections, idle and in use.
        max_size(usize);
        /// [`PoolBuilder::timeout`]: how long `acquire()` may take (`None`: no limit).
        timeout(impl Into<Option<Duration>>);
        /// [`PoolBuilder::recycle`]: replace connections older than this.
        recycle(impl Into<Option<Duration>>);
        /// [`PoolBuilder::idle_timeout`]: close connections idle longer than this.
        idle_timeout(impl Into<Option<Duration>>);
        /// [`PoolBuilder::max_lifetime`]: replace and close connections older than this.
        max_lifetime(impl Into<Option<Duration>>);
        /// [`PoolBuilder::test_on_acquire`]: check connections idle this long before use.
        test_on_acquire(impl Into<Option<Duration>>);
        /// [`PoolBuilder::reset_on_release`]: `UNLISTEN *` and `RESET ALL` on release.
        reset_on_release(bool);
        /// [`PoolBuilder::reuse`]: which idle connection goes out first.
        reuse(Reuse);
        /// [`PoolBuilder::runtime`]: the runtime for timers, tasks and connections.
        runtime(Arc<dyn Runtime>);
        /// [`PoolBuilder::name`]: the pool's name, in its metrics (feature `metrics`).
        name(impl Into<String>);
    }

    /// [`PoolBuilder::on_connect`]: runs on every new connection before it is used.
    pub fn on_connect<F>(self, callback: F) -> Self
    where
        F: for<'a> Fn(&'a aiopg_conn::Connection) -> BoxFuture<'a, Result<()>>
            + Send
            + Sync
            + 'static,
    {
        EngineBuilder(self.0.on_connect(callback))
    }

    /// Creates the pool and the engine; connects once to learn the server's version.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropped while the pool's first connections are being opened,
    /// those opened so far are dropped (their sockets close) and no pool exists yet; dropped
    /// while the engine acquires its first connection, as [`Engine::from_pool`], and the pool
    /// is dropped with the future (its idle connections close).
    pub async fn build(self) -> Result<Engine> {
        Engine::from_pool(self.0.build().await?).await
    }
}

/// Awaiting the builder builds the engine: `Engine::builder(dsn).max_size(8).await` is
/// `.build().await`, with the same cancel safety.
impl std::future::IntoFuture for EngineBuilder {
    type Output = Result<Engine>;
    type IntoFuture = BoxFuture<'static, Result<Engine>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.build())
    }
}

impl Engine {
    /// A builder taking every pool option.
    pub fn builder(options: impl IntoConnectOptions) -> EngineBuilder {
        EngineBuilder(Pool::builder(options))
    }

    /// An engine over `pool`; acquires a connection once to learn the server's version.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: the connection it acquires goes back to the pool (or, not yet
    /// handed out, to the pool's next caller), and this handle on the pool is dropped.
    pub async fn from_pool(pool: Pool) -> Result<Engine> {
        let server_version = pool.acquire().await?.server_version();
        Ok(Engine {
            pool,
            server_version,
        })
    }

    /// The server's version in libpq's integer form (`150010` for 15.10), learned when the
    /// engine was created.
    pub fn server_version(&self) -> u32 {
        self.server_version
    }

    /// The SQL dialect: always `"postgresql"`.
    pub fn dialect(&self) -> &'static str {
        "postgresql"
    }

    /// A connection from the pool, given back when dropped (or [`release`](Self::release)d).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`Pool::acquire`]: dropped while waiting, the call leaves
    /// the queue, and a connection meant for it goes to the next caller.
    pub async fn acquire(&self) -> Result<SAConnection> {
        Ok(SAConnection {
            conn: self.pool.acquire().await?,
            tx: Default::default(),
        })
    }

    /// Gives a connection back to the pool now.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropped before its clean-up is done, the connection still goes
    /// back to the pool, as when an [`SAConnection`] is dropped (a transaction left open gets a
    /// detached `ROLLBACK`, which runs before the connection's next use).
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
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: it only waits.
    pub async fn wait_closed(&self) -> Result<()> {
        self.pool.wait_closed().await
    }

    /// The pool underneath.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The connection string, a password shown as `********` (aiopg.sa's `engine.dsn`).
    pub fn dsn(&self) -> String {
        self.pool.dsn()
    }

    /// The bound on [`acquire`](Self::acquire) (aiopg.sa's `engine.timeout`; `None`: no
    /// limit). Statements have their own, the connections' [`Connection::timeout`](aiopg_conn::Connection::timeout).
    pub fn timeout(&self) -> Option<Duration> {
        self.pool.timeout()
    }

    /// True once [`close`](Self::close) or [`terminate`](Self::terminate) was called
    /// (aiopg.sa's `engine.closed`).
    pub fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }

    /// The pool's name ([`EngineBuilder::name`]).
    pub fn name(&self) -> &str {
        self.pool.name()
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
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step. Dropped while the statement is being
    /// prepared, nothing runs. Dropped while it waits to be written, it is taken back. Dropped
    /// after, it runs to its end on the server and its answer is discarded: a write may have
    /// happened, and outside a transaction block it commits on its own. For a statement without
    /// result columns this call reads its answer to the end before returning; a drop meanwhile
    /// is the same. Once the call has returned, the [`ResultProxy`] owns the rest.
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

    /// The statement as one SQL string with its values written out as literals, for logs and
    /// debugging (what runs is always the statement with its values bound). A builder
    /// statement's values are rendered from their own types (`Value::Int` as `5::int4`,
    /// `Value::String` as `'...'::text`), following the connection's
    /// `standard_conforming_strings`; raw SQL's parameters as `Cursor::mogrify` renders them.
    ///
    /// # Errors
    ///
    /// An `Encode` error naming the parameter when a value cannot be written as a literal (a
    /// NUL in text, a type mogrify does not know).
    pub fn mogrify(&self, stmt: impl Executable) -> Result<String> {
        let scs = self
            .conn
            .parameter_status("standard_conforming_strings")
            .is_none_or(|v| v == "on");
        match stmt.build() {
            Built::Raw { sql, params } => aiopg_core::mogrify::mogrify(sql, params, scs),
            Built::Query { sql, values } => {
                aiopg_core::mogrify::mogrify_typed(&sql, &values.as_typed(), scs)
            }
            Built::Schema(sql) => Ok(sql),
        }
    }

    /// The first column of the first row a statement returns (`None` without rows, or for
    /// NULL).
    ///
    /// # Cancel safety
    ///
    /// As [`execute`](Self::execute): a statement already sent runs, unseen; the rest of its rows
    /// are read and discarded.
    pub async fn scalar<T: FromSqlOwned>(&self, stmt: impl Executable) -> Result<Option<T>> {
        self.execute(stmt).await?.scalar().await
    }

    /// Begins a transaction (`BEGIN`). Inside an open one, it joins it instead, as aiopg.sa
    /// does: the returned transaction's `commit()` does nothing (the outer one commits) and
    /// its `rollback()` rolls the whole transaction back.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. Joining an open transaction does no I/O. Opening one sends
    /// `BEGIN`; dropped before the server answered, a `ROLLBACK` is queued behind it (detached:
    /// driven by a task on the runtime, ahead of anything issued later on the connection), so
    /// a `BEGIN` that ran leaves no transaction open, and one taken back unsent makes that
    /// `ROLLBACK` a harmless warning. No transaction is recorded, and the next `begin()` begins.
    pub async fn begin(&self) -> Result<SATransaction> {
        SATransaction::begin(&self.conn, &self.tx, None, false).await
    }

    /// Begins a transaction with an isolation level, `READ ONLY` or `DEFERRABLE`; a `Usage`
    /// error inside an open transaction, whose options cannot change.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`begin`](Self::begin): a `BEGIN` dropped before its
    /// answer is followed by a `ROLLBACK`, so no transaction is left open.
    pub async fn begin_with(&self, options: TransactionOptions) -> Result<SATransaction> {
        SATransaction::begin(&self.conn, &self.tx, Some(options), false).await
    }

    /// Begins a nested transaction: a `SAVEPOINT` inside an open transaction (any depth), or
    /// a transaction when none is open.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. Inside a transaction, dropped once its `SAVEPOINT` was
    /// written, the savepoint exists on the server unused until the transaction ends, which is
    /// harmless. Outside one, as [`begin`](Self::begin): a `BEGIN` dropped before its answer is
    /// followed by a `ROLLBACK`.
    pub async fn begin_nested(&self) -> Result<SATransaction> {
        SATransaction::begin(&self.conn, &self.tx, None, true).await
    }

    /// Begins a transaction to be committed in two phases: `BEGIN`, then
    /// [`SATransaction::prepare`] (`PREPARE TRANSACTION xid`), then `commit()` / `rollback()`
    /// (`COMMIT PREPARED` / `ROLLBACK PREPARED`). `xid` names it (1 to 199 bytes, no NUL);
    /// `None` makes a unique one ([`SATransaction::xid`] tells it). The server must allow
    /// prepared transactions (`max_prepared_transactions` > 0).
    ///
    /// # Errors
    ///
    /// `Usage` inside a transaction (a two-phase transaction is the outermost one) and for an
    /// invalid `xid`.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`begin`](Self::begin): a `BEGIN` dropped before its
    /// answer is followed by a `ROLLBACK`, so no transaction is left open (nothing is prepared
    /// before [`SATransaction::prepare`]).
    pub async fn begin_twophase(&self, xid: Option<&str>) -> Result<SATransaction> {
        SATransaction::begin_twophase(&self.conn, &self.tx, xid).await
    }

    /// The identifiers of the transactions prepared in this database and not yet committed or
    /// rolled back (prepared transactions of other databases cannot be finished from here, so
    /// they are not listed), oldest first.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: it only reads.
    pub async fn recover_twophase(&self) -> Result<Vec<String>> {
        let rows = self
            .conn
            .query(
                "SELECT gid FROM pg_catalog.pg_prepared_xacts \
                 WHERE database = pg_catalog.current_database() ORDER BY prepared",
                &[],
            )
            .await?;
        rows.iter().map(|r| r.try_get::<String>(0)).collect()
    }

    /// Commits a prepared transaction (`COMMIT PREPARED`), whichever session prepared it.
    /// Outside a transaction block only (the server's error says so otherwise).
    ///
    /// # Cancel safety
    ///
    /// This method is not cancel safe: dropped once its statement was written, it runs and its
    /// answer is discarded, so whether the transaction was committed is not known.
    /// [`recover_twophase`](Self::recover_twophase) tells whether `xid` is still prepared.
    pub async fn commit_prepared(&self, xid: &str) -> Result<()> {
        crate::transaction::check_xid(xid)?;
        let sql = format!("COMMIT PREPARED {}", crate::transaction::xid_literal(xid));
        self.conn.batch_execute(&sql).await
    }

    /// Rolls back a prepared transaction (`ROLLBACK PREPARED`), whichever session prepared it.
    ///
    /// # Cancel safety
    ///
    /// This method is not cancel safe, as [`commit_prepared`](Self::commit_prepared):
    /// [`recover_twophase`](Self::recover_twophase) tells whether `xid` is still prepared.
    pub async fn rollback_prepared(&self, xid: &str) -> Result<()> {
        crate::transaction::check_xid(xid)?;
        let sql = format!("ROLLBACK PREPARED {}", crate::transaction::xid_literal(xid));
        self.conn.batch_execute(&sql).await
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
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping the future drops the connection all the same, which
    /// gives it back to the pool.
    pub async fn close(self) {
        drop(self.conn);
    }
}
