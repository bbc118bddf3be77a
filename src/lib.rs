//! # aiopg: an asynchronous PostgreSQL client with aiopg's API, on any runtime
//!
//! aiopg re-creates Python's [aiopg](https://aiopg.readthedocs.io) for Rust: `connect`, cursors,
//! pools, transactions, LISTEN/NOTIFY and timeouts, on tokio, smol or async-std, with one API.
//!
//! ```no_run
//! use aiopg::prelude::*;
//! # async fn f() -> aiopg::Result<()> {
//! let dsn = std::env::var("AIOPG_DSN").unwrap_or_else(|_| "dbname=aiopg user=aiopg".into());
//! let conn = aiopg::connect(&dsn).await?;
//! let mut cur = conn.cursor().await?;
//! cur.execute("SELECT 1", &[]).await?;
//! let mut rows = Vec::new();
//! while let Some(row) = cur.next().await? {
//!     rows.push(row.get::<i32>(0));
//! }
//! assert_eq!(rows, [1]);
//!
//! // Real transactions, with savepoints.
//! let mut tx = conn.begin().await?;
//! cur.execute("INSERT INTO t VALUES ($1)", &[&1i32]).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! # Runtimes
//!
//! | feature     | runtime | |
//! |-------------|---------|---|
//! | `tokio` (default) | tokio | |
//! | `smol`      | smol | recommended when you do not use tokio |
//! | `async-std` | async-std | discontinued upstream: prefer `smol` |
//!
//! With one runtime feature, that runtime is used. With several, aiopg uses tokio when called
//! from inside a tokio runtime, else smol, else async-std; [`ConnectOptions::runtime`] picks
//! one explicitly.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `tokio`, `smol`, `async-std` | `tokio` | the runtimes (above) |
//! | `derive` | yes | `#[derive(FromRow)]` |
//! | `sa` | | `aiopg::sa`: Python's `aiopg.sa` on sea-query |
//! | `metrics` | | the pool's metrics through the `metrics` crate ([`Pool`]'s docs, "Metrics") |
//! | `derive-types` | | `#[derive(ToSql, FromSql)]` for enums, composites and domains |
//! | `with-serde_json-1` (alias `json`) | | json, jsonb ⇄ `serde_json::Value`, `Json<T>` |
//! | `with-uuid-1` (alias `uuid`) | | uuid ⇄ `uuid::Uuid` |
//! | `with-chrono-0_4`, `with-time-0_3`, `with-jiff-0_2` | | date, time, timestamp, timestamptz |
//! | `with-rust_decimal-1` | | numeric ⇄ `rust_decimal::Decimal` |
//! | `with-cidr-0_2`, `with-cidr-0_3` | | inet, cidr ⇄ `cidr::IpInet`, `IpCidr` |
//! | `with-eui48-1` | | macaddr ⇄ `eui48::MacAddress` |
//! | `with-bit-vec-0_6` to `with-bit-vec-0_9` | | bit, varbit ⇄ `bit_vec::BitVec` |
//! | `with-geo-types-0_7` | | point, box, path ⇄ geo-types |
//! | `with-smol_str-01` | | text ⇄ `smol_str::SmolStr` |
//! | `array-impls` | | one-dimensional arrays ⇄ `[T; N]` |
//!
//! TLS is always built in (rustls with ring: no OpenSSL, no C toolchain); `sslmode` decides
//! whether it is used. Without a type feature, the built-in mappings apply: integers,
//! floats, `bool`, `String`/`&str`, `Vec<u8>`, `SystemTime`, `IpAddr`, `HashMap` for hstore,
//! `Vec<T>` for arrays, `Option<T>` for NULL. postgres-types' older majors (time 0.2, uuid
//! 0.8, eui48 0.4, geo-types 0.6, jiff 0.1) are not forwarded.
//!
//! # Pipelining and cancel safety
//!
//! A [`Connection`] is cheap to clone; queries issued at once from clones or tasks are
//! pipelined on the one socket, and any query future may be dropped at any point without
//! desynchronising the connection. See [`aiopg_conn`]'s documentation for the design.
//!
//! # Where aiopg for Rust differs from Python's aiopg on purpose
//!
//! - `commit()` and `rollback()` work ([`Transaction`]); Python aiopg's raise.
//! - A statement that outlives its timeout is cancelled on the server (a CancelRequest), the
//!   call fails with a `Timeout` error, and the connection stays usable; Python aiopg closes
//!   the connection.
//! - The timeout can be disabled (`None`), which Python aiopg cannot (its issue #670).
//!   Precedence is aiopg's: per call, then cursor, then connection ([`DEFAULT_TIMEOUT`]).
//! - A second statement while one runs on the same connection is pipelined, not an error.
//! - `executemany` works (one pipelined batch, one round trip), and so do server-side cursors
//!   ([`CursorOptions::name`]), which stream any result in bounded memory.
//! - Parameters are `$1, $2, ...`, bound server-side in binary; `mogrify` renders what the
//!   server would run.
//! - Errors carry the server's SQLSTATE and every field it sent ([`Error::as_db_error`]).
//!
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use aiopg_conn::{
    connect, BinaryCopyInWriter, BinaryCopyOutStream, BinaryCopyRow, Column, ConnectOptions,
    Connection, CopyInWriter, CopyOutReader, IsolationLevel, Listener, ListenerEvent,
    ListenerStream, Notices, Notification, Notifies, Param, Pipeline, QueryResult, RetryPolicy,
    Row, RowStream, Savepoint, SimpleQueryMessage, SimpleRow, Statement, Transaction,
    TransactionOptions, TransactionOutcome, TransactionStep, CANCEL_GRACE, DEFAULT_EVENT_CAPACITY,
    DEFAULT_STATEMENT_CACHE_SIZE, DEFAULT_TIMEOUT,
};
pub use aiopg_core::config::{self, Config};
pub use aiopg_core::error::{DbError, ErrorPosition, Severity, SqlState};
pub use aiopg_core::from_row::FromRow;
pub use aiopg_core::types;
pub use aiopg_core::{Error, ErrorKind, Result, RowIndex, TransactionStatus};
pub use aiopg_cursor::{
    CopyFile, CopyOptions, Cursor, CursorExt, CursorOptions, Description, ScrollMode,
};
#[cfg(feature = "derive")]
pub use aiopg_derive::FromRow;
pub use aiopg_pool::{
    create_pool, IntoConnectOptions, OnConnect, Pool, PoolBuilder, PoolStats, PooledConnection,
    PooledCursor, Reuse, DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE,
    DEFAULT_TEST_AFTER_IDLE,
};

/// Python's `aiopg.sa`: an engine over the pool, sea-query statements bound as parameters,
/// result proxies (feature `sa`).
#[cfg(feature = "sa")]
pub use aiopg_sa as sa;

/// What the code `#[derive(FromRow)]` generates names; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use aiopg_core::from_row::__derive::{field_error, try_from_failed};
    pub use aiopg_core::from_row::{check_column_count, has_column, FromRow};
    pub use aiopg_core::types::FromSqlOwned;
    pub use aiopg_core::{Error, Result, Row};
}

/// The traits most programs want in scope: `use aiopg::prelude::*;`.
pub mod prelude {
    pub use crate::FromRow;
    pub use aiopg_cursor::CursorExt;
}

/// The runtime seam: the [`rt::Runtime`] trait and the adapters the enabled features provide.
pub mod rt {
    pub use aiopg_rt::*;
}

/// The README's examples, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The examples of `docs/round-trips.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/round-trips.md")]
pub struct RoundTripsDoctests;

/// The examples of `docs/migrating-from-aiopg.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/migrating-from-aiopg.md")]
pub struct MigratingDoctests;

/// The examples of `docs/guide/01-getting-started.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide/01-getting-started.md")]
pub struct GuideGettingStartedDoctests;

/// The examples of `docs/guide/02-connections.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide/02-connections.md")]
pub struct GuideConnectionsDoctests;

/// The examples of `docs/guide/03-queries-and-types.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide/03-queries-and-types.md")]
pub struct GuideQueriesDoctests;

/// The examples of `docs/guide/04-cursors.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide/04-cursors.md")]
pub struct GuideCursorsDoctests;

/// The examples of `docs/guide/05-row-streams.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide/05-row-streams.md")]
pub struct GuideRowStreamsDoctests;

/// The examples of `docs/guide/06-transactions.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide/06-transactions.md")]
pub struct GuideTransactionsDoctests;

/// The examples of `docs/guide/07-pool.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide/07-pool.md")]
pub struct GuidePoolDoctests;

/// The examples of `docs/guide/08-timeouts.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide/08-timeouts.md")]
pub struct GuideTimeoutsDoctests;

/// The examples of `docs/guide/09-tls-and-hosts.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide/09-tls-and-hosts.md")]
pub struct GuideTlsAndHostsDoctests;

/// The examples of `docs/guide/10-listen-notify.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide/10-listen-notify.md")]
pub struct GuideListenNotifyDoctests;

/// The examples of `docs/guide/11-copy.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide/11-copy.md")]
pub struct GuideCopyDoctests;

/// The examples of `docs/guide/12-sa.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide/12-sa.md")]
pub struct GuideSaDoctests;

/// The examples of `docs/guide/13-observability.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide/13-observability.md")]
pub struct GuideObservabilityDoctests;

/// The examples of `docs/guide/14-errors.md`, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide/14-errors.md")]
pub struct GuideErrorsDoctests;
