//! aiopg's PostgreSQL connection: start-up and authentication (trust, password, MD5,
//! SCRAM-SHA-256 with or without channel binding), TLS, the simple and extended query
//! protocols, pipelining, transactions, COPY, LISTEN/NOTIFY and cancel requests.
//!
//! ```no_run
//! # async fn f() -> aiopg_core::Result<()> {
//! use std::time::Duration;
//! use futures_util::TryStreamExt;
//!
//! let conn = aiopg_conn::connect("postgresql://app:secret@localhost/app").await?;
//!
//! // One statement: parameters are bound in binary, the statement is cached.
//! let n: i32 = conn.query_scalar("SELECT $1::int4 * 2", &[&21i32]).await?;
//! assert_eq!(n, 42);
//!
//! // A transaction: dropping `tx` without commit() rolls it back.
//! let mut tx = conn.begin().await?;
//! conn.execute("INSERT INTO items (name) VALUES ($1)", &[&"pear"]).await?;
//! tx.commit().await?;
//!
//! // A result of any size in bounded memory, cancelled on the server after 5 s.
//! let total = conn
//!     .with_timeout(Some(Duration::from_secs(5)), async {
//!         let mut rows = conn.query_stream("SELECT id FROM items", &[]).await?;
//!         let mut total = 0i64;
//!         while let Some(row) = rows.try_next().await? {
//!             total += i64::from(row.get::<i32>(0));
//!         }
//!         Ok::<_, aiopg_core::Error>(total)
//!     })
//!     .await?;
//! println!("{total}");
//! conn.close().await;
//! # Ok(()) }
//! ```
//!
//! # Design: the caller drives the socket
//!
//! There is no background task by default. A query's future, when polled, writes its request
//! and reads the socket itself, so one caller issuing one query at a time pays no hop between
//! tasks or threads. A future that is not polled makes no progress: await it (or hold it in a
//! `join`/`select`) for its request to be answered.
//!
//! An opt-in driver task ([`Connection::spawn_driver`], [`ConnectOptions::driver_task`]) does
//! the reading and writing instead, as tokio-postgres' connection task does: callers encode
//! their requests and wait. It pays one hop per answer, and wins where many futures of one
//! task share a connection on tokio's multi-threaded runtime (`docs/round-trips.md`).
//!
//! # Pipelining
//!
//! A [`Connection`] is cheap to clone, and every clone shares one socket. Requests issued
//! while others are in flight (from clones, tasks, or one task's `join`) are queued in the
//! order they were issued. A lone request is written at once; requests issued while an
//! answer is due are held back and written together as soon as that answer has been read (or
//! once 16 KiB of them wait), so many requests issued at once cost about two round trips,
//! not one each. Whoever is polling reads the answers and hands each to its owner. Each
//! request keeps its own Sync, so one failing never affects another, and each gets exactly
//! its own answer.
//!
//! ```no_run
//! # async fn f(conn: &aiopg_conn::Connection) -> aiopg_core::Result<()> {
//! // Both queries are in flight on the one socket at the same time.
//! let (a, b) = futures_util::future::try_join(
//!     conn.query_scalar::<i32>("SELECT 1", &[]),
//!     conn.query_scalar::<i32>("SELECT 2", &[]),
//! )
//! .await?;
//! assert_eq!((a, b), (1, 2));
//! # Ok(()) }
//! ```
//!
//! [`Connection::pipeline`] is the explicit form (libpq's pipeline mode): many statements
//! under one Sync, answered in one round trip, one implicit transaction outside a
//! transaction block. [`Pipeline::transaction`] sends a whole transaction (`BEGIN`, the
//! statements, `COMMIT`) in one round trip and reports its exact outcome.
//! [`Connection::execute_many`] runs one statement for many parameter sets the same way. The
//! server runs one connection's statements one after another: pipelining saves round trips,
//! it does not run statements in parallel.
//!
//! A transaction needs its connection to itself: what other clones issue while it is open
//! runs inside it.
//!
//! # Cancel safety
//!
//! Dropping any future of this crate at any point never desynchronises the connection: every
//! later request still gets its own answer. What a drop does to the request itself depends on
//! how far it got:
//!
//! - **Not a byte of it written yet** (it was queued behind other requests, or the future was
//!   never polled): the request is taken back. Nothing reaches the server and nothing runs.
//! - **Partly or wholly written**: the request stays. It runs on the server to its end, and
//!   its answer is read and discarded by whoever drives the connection next. Dropping a
//!   future is not a cancel: to stop a running statement, use [`Connection::cancel`] or
//!   [`Connection::with_timeout`].
//!
//! So dropping a read is harmless, while a dropped write may or may not have happened:
//! nothing tells the caller which. Outside a transaction block such a statement commits on
//! its own. Inside one it is part of the transaction: if it failed, the transaction is
//! aborted, and [`Connection::transaction_status`] says so once its answer has been read.
//!
//! Below, a method is *cancel safe* when dropping its future loses nothing and leaves
//! nothing half-done: calling it again carries on. *Keeps the connection in step* means the
//! rule above: taken back if unsent, otherwise run with its answer discarded.
//!
//! | Method | Dropped before it completes |
//! |---|---|
//! | [`query`](Connection::query), [`query_result`](Connection::query_result), [`query_one`](Connection::query_one), [`query_opt`](Connection::query_opt), [`query_scalar`](Connection::query_scalar), [`query_as`](Connection::query_as), [`query_prepared`](Connection::query_prepared), [`query_unprepared`](Connection::query_unprepared), [`execute`](Connection::execute), [`execute_prepared`](Connection::execute_prepared), [`simple_query`](Connection::simple_query), [`batch_execute`](Connection::batch_execute) | Keeps the connection in step; a sent statement runs, unseen. |
//! | [`prepare`](Connection::prepare) | Cancel safe: nothing is cached, a statement prepared for nobody is closed later. |
//! | [`execute_many`](Connection::execute_many), [`Pipeline::run`] | Keeps the connection in step; a sent batch runs as sent, and outside a transaction block (one implicit transaction) may commit unseen. |
//! | [`Pipeline::transaction`], [`Pipeline::transaction_with_retry`] | Keeps the connection in step; a sent transaction runs to its end: it may commit unseen. |
//! | [`query_stream`](Connection::query_stream); dropping a [`RowStream`] | The rest of the result is read and discarded. [`RowStream`]'s `poll_next` is cancel safe. |
//! | [`begin`](Connection::begin), [`begin_with`](Connection::begin_with), [`Transaction::begin`] | Cancel safe: a `BEGIN` that may have run is followed by a `ROLLBACK`. |
//! | [`Transaction::commit`], [`Transaction::rollback`] | Taken back unsent: nothing ended, and the guard still rolls back when dropped. Dropped once sent: it runs, and a `COMMIT`'s outcome is unknown to the caller (see each method). |
//! | [`Transaction::savepoint`], [`Transaction::point`], [`Savepoint::point`] | Cancel safe: a `SAVEPOINT` that may have run is undone; one taken back unsent queues no undo. |
//! | [`Transaction::release_savepoint`], [`Savepoint::commit`] | The savepoint's work is kept either way. |
//! | [`Transaction::rollback_savepoint`], [`Savepoint::rollback`] | Taken back unsent: the savepoint stays open (and its guard still undoes it when dropped); once sent, the work is undone. |
//! | [`transact`](Connection::transact) | As its transaction's parts: dropped before `COMMIT`, rolled back. |
//! | [`copy_in`](Connection::copy_in); dropping a [`CopyInWriter`] | The COPY is ended with CopyFail: nothing is copied. |
//! | [`BinaryCopyInWriter::write`] | Cancel safe: the row is written if and only if the call returns `Ok`. |
//! | [`CopyInWriter::write`] | A drop after part of the data was taken makes the writer refuse all further data (`Usage`), so no torn row is copied; dropping the writer then ends the COPY with CopyFail. |
//! | [`CopyInWriter::flush`], [`CopyInWriter::abort`] | Cancel safe. |
//! | [`CopyInWriter::finish`], [`BinaryCopyInWriter::finish`] | Not cancel safe: once polled, the COPY may complete unseen. |
//! | [`copy_out`](Connection::copy_out); dropping a [`CopyOutReader`] or [`BinaryCopyOutStream`] | The rest of the data is read and discarded. Their `poll_next` is cancel safe. |
//! | [`with_timeout`](Connection::with_timeout) | As the future it wraps; a cancel already sent may still land. |
//! | [`cancel`](Connection::cancel) | Not cancel safe: a cancel request already sent still stops the running statement. |
//! | [`settle`](Connection::settle), [`close`](Connection::close) | Cancel safe. |
//! | [`connect`], [`ConnectOptions::connect`], [`Listener::connect`] | Cancel safe: the socket is closed, nothing is left behind. |
//! | [`Listener::recv`], [`Listener::unlisten`], [`Listener::unlisten_all`], [`Listener::close`]; [`Notifies`], [`Notices`], [`ListenerStream`] | Cancel safe: no notification is lost. |
//! | [`Listener::listen`] | Not cancel safe: the channel is not recorded; call it again. |
//!
//! Clean-up on drop never blocks. A [`Transaction`] or [`Savepoint`] dropped while open queues
//! its `ROLLBACK` (or `ROLLBACK TO SAVEPOINT`) at once, ahead of anything issued later on the
//! connection, and a task spawned on the connection's runtime drives it, so it runs even if
//! the connection then sits idle (see [`Connection::detach`]). Where no task can be spawned
//! (tokio's adapter outside a tokio runtime), the statement still goes out first with the
//! connection's next request.
//!
//! # Timeouts and cancellation
//!
//! No method of [`Connection`] has a timeout of its own. Bound a call with
//! [`Connection::with_timeout`]: when the time is up and the call's statement is the one the
//! server is running, a CancelRequest stops it and the call fails with
//! [`ErrorKind::Timeout`] once the server has confirmed; the connection stays usable. A
//! request still queued behind other callers' is withdrawn instead (taken back if unsent), so
//! a timeout never stops a neighbour's statement; a COPY still taking data is ended with
//! CopyFail, since the server, waiting for the client, would not notice a cancel. The call
//! returns within the timeout plus [`CANCEL_GRACE`] (2 s): that grace bounds sending the
//! cancel request and reading the cancelled statement's answer together, and past it the
//! connection is closed. A committing request (see below) that was wholly sent when the call
//! gives up on it fails with [`ErrorKind::CommitUnknown`] (it may have committed), and the
//! connection is closed, as that kind always means; one taken back unsent is a `Timeout`
//! that ended nothing (a `COMMIT`'s transaction is still active).
//!
//! The server's own `statement_timeout` needs no client involvement: set it per session
//! (`SET statement_timeout = '5s'`, or `options='-c statement_timeout=5s'` in the DSN) or per
//! transaction (`SET LOCAL`). A statement that outlives it fails with SQLSTATE 57014
//! ([`Error::is_query_canceled`]) and the connection stays usable. Inside a transaction
//! block, a statement cancelled either way aborts the transaction.
//!
//! [`Connection::timeout`] is the default that aiopg-cursor's cursors apply
//! ([`DEFAULT_TIMEOUT`], 60 s, as Python aiopg); this crate's own methods do not use it.
//!
//! [`Connection::cancel`] sends a CancelRequest on a new socket (over TLS when the
//! connection uses it) and waits until the server has closed that socket, bounded by
//! `connect_timeout` (10 s when unset). PostgreSQL's cancel names a session, not a statement:
//! one that lands just after its statement finished can stop the next statement on the
//! connection. `connect_timeout` (or [`ConnectOptions::connect_timeout`]) bounds each
//! address's connection attempt, TCP, TLS and authentication included.
//!
//! When the connection is lost, every request waiting for its answer fails with
//! [`ErrorKind::Closed`], except a *committing* request whose bytes were all on the socket:
//! it fails with [`ErrorKind::CommitUnknown`], because the server may have committed it. A
//! request counts as committing when it holds `COMMIT`, `END` or `PREPARE TRANSACTION`
//! (`COMMIT PREPARED` included); when it is [`Connection::execute_many`], [`Pipeline::run`]
//! or a COPY FROM STDIN run outside a transaction block (each is one implicit transaction);
//! and for every [`Pipeline::transaction`]. A single statement outside a transaction block
//! is not marked so: it commits on its own, and when its answer is lost it fails with
//! `Closed`, although it may have run.
//!
//! # TLS
//!
//! TLS uses rustls, with ring as the crypto provider, TLS 1.2 and 1.3. The DSN settings
//! follow libpq's:
//!
//! | `sslmode` | TLS | Certificate chain | Host name |
//! |---|---|---|---|
//! | `disable` | never | | |
//! | `allow` | only if the server refuses plaintext | no | no |
//! | `prefer` (default) | if the server agrees; plaintext otherwise | no | no |
//! | `require` | always | no, unless a root certificate is at hand (then as `verify-ca`) | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes |
//!
//! - `sslrootcert`: the certificate authorities' PEM file (default `~/.postgresql/root.crt`),
//!   or `system` for the system's store, which implies `verify-full`.
//! - `sslcert` and `sslkey`: a client certificate and its key (defaults
//!   `~/.postgresql/postgresql.crt` and `.key`). Encrypted keys are not supported, and
//!   `sslpassword` is refused: decrypt the key file.
//! - `sslcrl`: revocation lists (default `~/.postgresql/root.crl`), checked with `verify-ca`
//!   and `verify-full` only; set with a weaker mode, it is an error.
//! - `sslsni` (on by default) sends the host name; `sslnegotiation=direct` starts TLS at once
//!   with ALPN `postgresql` (PostgreSQL 17 and later) instead of an SSLRequest.
//! - `channel_binding` (`prefer` by default; `require`, `disable`) binds SCRAM to the TLS
//!   session (SCRAM-SHA-256-PLUS). `require_auth` limits what the server may ask for; both
//!   are checked before any credential is sent.
//!
//! TLS is never used over a Unix socket: `require` and stronger fail there with
//! [`ErrorKind::Tls`]. Cancel requests go the way their connection went.
//!
//! # Several hosts and failover
//!
//! A DSN may name several hosts (`host=db1,db2 port=5432,5433`, or
//! `postgresql://db1:5432,db2:5433/app`). They are tried in order, each address a name
//! resolves to in turn, each attempt bounded by `connect_timeout`; `hostaddr` skips name
//! resolution. `load_balance_hosts=random` shuffles the hosts and each host's addresses.
//! `target_session_attrs` (`any`, the default; `read-write`, `read-only`, `primary`,
//! `standby`, `prefer-standby`) makes a server of the wrong kind send the search on to the
//! next host, judged from what the server reports (`in_hot_standby`,
//! `default_transaction_read_only`) or, for servers that report neither, by asking it;
//! `prefer-standby` looks for a standby on every host first, then takes any server. When
//! every host fails, the error lists each host's failure. An established connection does not
//! follow a failover: [`Connection::matches_target_session_attrs`] tells whether the server
//! still is what was asked for (a pool uses it to retire connections).
//!
//! # LISTEN/NOTIFY
//!
//! [`Connection::notifies`] is a stream of the notifications the connection receives; polling
//! it reads the socket when no query does, so notifications arrive on an idle connection.
//! Every open stream sees every notification, at most
//! [`ConnectOptions::event_capacity`] ([`DEFAULT_EVENT_CAPACITY`]) wait for a slow consumer,
//! and one that falls further behind gets one [`ErrorKind::Lagged`] error with the count of
//! what it missed. [`Connection::notices`] does the same for notices. A [`Listener`] owns a
//! dedicated connection, reconnects with back-off when it is lost, runs `LISTEN` again on
//! every channel and reports [`ListenerEvent::Reconnected`], since notifications sent
//! meanwhile are gone.
//!
//! # COPY
//!
//! [`Connection::copy_in`] returns a [`CopyInWriter`] (a `Sink<Bytes>` and an `AsyncWrite`):
//! data goes out in CopyData messages of about 64 KiB, and writing waits while more than
//! 64 KiB is unsent, so memory stays bounded. [`Connection::copy_out`] returns a
//! [`CopyOutReader`] (a `Stream` of `Bytes` and an `AsyncRead`) with a row stream's
//! backpressure. [`BinaryCopyInWriter`] and [`BinaryCopyOutStream`] speak the binary format
//! with typed values. While a COPY FROM STDIN runs, other requests on the connection wait
//! behind it, and another COPY waits for it to end.
//!
//! # Row streams
//!
//! [`Connection::query_stream`] hands rows out as they arrive, in bounded memory: when its
//! owner stops taking rows, the connection stops reading the socket. Requests behind a stream
//! wait for it, since the server answers in order. [`Connection::query_as`] decodes into
//! typed rows the same way.
//!
//! # Statements
//!
//! A [`Statement`] belongs to the connection that prepared it; using it on another is an
//! [`ErrorKind::Usage`] error. Prepared statements are cached per connection
//! ([`DEFAULT_STATEMENT_CACHE_SIZE`]); [`ConnectOptions::transaction_pooling`] turns the
//! cache off for PgBouncer's transaction mode.
//!
//! # Runtimes
//!
//! This crate names no runtime: it uses [`aiopg_rt::Runtime`], chosen by the facade's
//! features or passed with [`ConnectOptions::runtime`].
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]

mod collect;
mod connect;
mod connection;
mod copy;
mod driver;
mod events;
mod exclusive;
mod io;
mod listener;
#[cfg(test)]
mod model_tests;
mod notify;
mod pipeline;
mod pooling;
mod state;
mod statement;
mod stream;
mod tls;
mod trace;
mod transaction;
mod typeinfo;

use std::sync::Arc;

pub use aiopg_core::row::{Column, Row, SimpleRow};
pub use aiopg_core::{Error, ErrorKind, Result, TransactionStatus};
pub use connect::{connect, ConnectOptions, DEFAULT_STATEMENT_CACHE_SIZE, DEFAULT_TIMEOUT};
pub use connection::{Connection, Param, QueryResult, CANCEL_GRACE};
pub use copy::{
    BinaryCopyInWriter, BinaryCopyOutStream, BinaryCopyRow, CopyInWriter, CopyOutReader,
};
pub use driver::Driver;
pub use events::DEFAULT_EVENT_CAPACITY;
pub use listener::{Listener, ListenerEvent, ListenerStream};
pub use notify::{Notices, Notifies};
pub use pipeline::{Pipeline, TransactionOutcome, TransactionStep};
pub use statement::Statement;
pub use stream::RowStream;
pub use transaction::{IsolationLevel, RetryPolicy, Savepoint, Transaction, TransactionOptions};

/// One part of a simple query's answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum SimpleQueryMessage {
    /// A row, with its values as text.
    Row(SimpleRow),
    /// A statement finished.
    CommandComplete {
        /// The command tag (`INSERT 0 1`, `CREATE TABLE`, ...).
        tag: String,
        /// The rows it affected or returned, for commands that say.
        rows: Option<u64>,
    },
}

/// A `NOTIFY` received on a channel this connection `LISTEN`s to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The notifying server process.
    pub pid: i32,
    /// The channel.
    pub channel: String,
    /// The payload (empty when none was given).
    pub payload: String,
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Connection>();
    is::<Arc<Connection>>();
}
