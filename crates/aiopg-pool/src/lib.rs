//! aiopg's connection pool (Python aiopg's `create_pool` and `Pool`), on any runtime.
//!
//! ```no_run
//! # async fn f() -> aiopg_core::Result<()> {
//! use std::time::Duration;
//! use aiopg_cursor::CursorExt;
//!
//! let pool = aiopg_pool::Pool::builder("postgresql://app@localhost/app")
//!     .min_size(1)
//!     .max_size(10)
//!     .timeout(Duration::from_secs(10))
//!     .build()
//!     .await?;
//! {
//!     let conn = pool.acquire().await?; // back to the pool when dropped
//!     let mut cur = conn.cursor().await?;
//!     cur.execute("SELECT 1", &[]).await?;
//!     assert_eq!(cur.fetchone().await?.unwrap().get::<i32>(0), 1);
//! }
//! pool.close();
//! pool.wait_closed().await?;
//! # Ok(()) }
//! ```
//!
//! # Behaviour
//!
//! - **Acquire** ([`Pool::acquire`]): an idle connection is handed out at once, with no
//!   task hop and one short lock: the one given back longest ago, as Python aiopg does, or
//!   the most recent one with [`PoolBuilder::reuse`]`(`[`Reuse::Lifo`]`)`. Otherwise the caller queues, strictly first come first
//!   served, and a connection is opened for it (in a task on the pool's runtime) while the
//!   pool is below `max_size`. A connection given back goes straight to the oldest waiter.
//!   The pool's `timeout` bounds the whole call, connecting included, and its
//!   [`ErrorKind::PoolTimeout`](aiopg_core::ErrorKind::PoolTimeout) error states the pool's
//!   size and how many connections were in use and how many callers waited. A connection
//!   is handed out settled: requests its previous user left on the wire (the `ROLLBACK` a
//!   release queues) are answered first, so `transaction_status()` right after `acquire`
//!   is what the next statement sees.
//! - **Health**: a dead connection is never handed out. Before handing out an idle one,
//!   `acquire` reads, without waiting, whatever its socket received while it sat idle: the
//!   FATAL error of a backend terminated with `pg_terminate_backend`, or the end of stream a
//!   server restart leaves, is found without a round trip, and the connection is replaced
//!   (counted in [`PoolStats::connections_broken`]). One idle for at least
//!   [`PoolBuilder::test_on_acquire`] (5 s by default) is also checked with a round trip,
//!   for links that die silently. Connections older than `recycle` / `max_lifetime` are
//!   replaced when acquired or released; idle ones past `idle_timeout` or `max_lifetime` are
//!   closed by a background task. The pool refills to `min_size` in the background, backing
//!   off while connecting fails.
//! - **Release**: dropping a [`PooledConnection`] returns it without blocking, from any
//!   thread. A transaction left open is rolled back (queued ahead of the next user's
//!   statements) and the connection reused; a closed one is discarded and its slot freed at
//!   once; with [`PoolBuilder::reset_on_release`], `UNLISTEN *` and `RESET ALL` run too.
//!   [`Pool::release`] is the explicit form, which waits for that clean-up. What the guard
//!   derefs to is a lease ([`aiopg_conn::Connection::lease`]): clones of it, and cursors and
//!   transactions opened on it, fail with
//!   [`ErrorKind::Usage`](aiopg_core::ErrorKind::Usage) once the guard is back, instead of
//!   sharing the socket with the connection's next user.
//! - **Shutdown**: [`Pool::close`] fails waiting and later acquires with
//!   [`ErrorKind::PoolClosed`](aiopg_core::ErrorKind::PoolClosed) and closes idle
//!   connections (those in use when they come back); [`Pool::terminate`] also closes the
//!   connections in use; [`Pool::wait_closed`] resolves once every connection is closed.
//! - **Cancellation**: dropping an `acquire` future at any point leaks neither a connection
//!   nor a slot; a connection opened or handed to it goes to the next caller.
//!
//! # Cancel safety
//!
//! | method | dropped before it finishes |
//! |---|---|
//! | [`Pool::acquire`], [`Pool::cursor`], [`Pool::cursor_with`] | cancel safe: nothing is lost; a connection opened for the call, or handed to it, goes to the next caller (or back to the idle list) |
//! | [`PoolBuilder::build`] (and awaiting the builder) | cancel safe: the connections opened so far are dropped, which closes their sockets; no pool exists and no task was started |
//! | [`Pool::release`] | cancel safe: the connection still goes back, as a dropped guard does: the `ROLLBACK` (and reset) it was waiting for is queued ahead of the next user's statements instead |
//! | [`Pool::clear`] | cancel safe: every idle connection has left the pool before the first `.await`; those not yet closed politely are dropped, which closes their sockets |
//! | [`Pool::wait_closed`] | cancel safe: it only waits |
//! | [`Pool::listener`] | cancel safe: the dedicated connection being opened is dropped |
//!
//! # Metrics
//!
//! [`Pool::stats`] reads the pool's gauges and counters ([`PoolStats`]) at any time, for a
//! health endpoint or a periodic log line. With the feature `metrics`, the pool also
//! publishes them through the [`metrics`](https://docs.rs/metrics) crate, to whatever
//! recorder the application installs (a Prometheus or OpenTelemetry exporter), under
//! OpenTelemetry's names for database client connection pools:
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `db.client.connection.count` | gauge, label `db.client.connection.state` = `idle` / `used` | open connections by state |
//! | `db.client.connection.pending_requests` | gauge | callers waiting in [`Pool::acquire`] |
//! | `db.client.connection.max`, `db.client.connection.idle.min` | gauges | `max_size`, `min_size` |
//! | `db.client.connection.timeouts` | counter | acquires that failed with `PoolTimeout` |
//! | `db.client.connection.wait_time` | histogram, seconds | how long each successful acquire took |
//! | `db.client.connection.create_time` | histogram, seconds | how long opening a connection took (`on_connect` included) |
//! | `db.client.connection.use_time` | histogram, seconds | how long each connection was lent out |
//!
//! Each series is labelled `db.client.connection.pool.name` with [`Pool::name`]
//! ([`PoolBuilder::name`]; unnamed pools are called `host:port/dbname`, so name pools that
//! share a database). The handles are registered when the pool is built: install the
//! recorder first. Gauges are published each time the pool's lock is released, which costs
//! three atomic stores with a recorder installed and nothing without the feature.
//!
//! # Runtimes
//!
//! This crate names no runtime: timers and background tasks go through
//! [`aiopg_rt::Runtime`], given by [`PoolBuilder::runtime`], else the connections' runtime.
//! On tokio, background work (refills, connection attempts for waiters, the `ROLLBACK` after
//! a release) needs the guard to be dropped inside the tokio runtime or the next `acquire`
//! to run there; a guard dropped on a foreign thread still returns its connection.
//!
//! # Where this differs from Python aiopg
//!
//! - A connection released inside a transaction is rolled back and reused, not closed
//!   (as asyncpg and psycopg_pool do); it is discarded only if the rollback fails.
//! - `recycle` counts from when the connection was opened; Python aiopg's `pool_recycle`
//!   counts from its last use (that is [`PoolBuilder::idle_timeout`] here).
//! - [`Pool::close`] and [`Pool::terminate`] close idle connections at once;
//!   [`Pool::is_closed`] is true from `close()` on.
//! - Acquiring is strictly FIFO; Python aiopg's is close to it but not guaranteed.
//! - A connection kept past its release (a clone, a cursor, a transaction) fails with a
//!   usage error; Python aiopg's keeps working, on the connection its next user now has.
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod metrics;
mod pool;

pub use builder::{
    create_pool, IntoConnectOptions, OnConnect, PoolBuilder, Reuse, DEFAULT_ACQUIRE_TIMEOUT,
    DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE, DEFAULT_TEST_AFTER_IDLE,
};
pub use pool::{Pool, PoolStats, PooledConnection, PooledCursor};

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Pool>();
    is::<PooledConnection>();
    is::<PoolStats>();
    fn is_send<T: Send>() {}
    is_send::<PooledCursor>();
}
