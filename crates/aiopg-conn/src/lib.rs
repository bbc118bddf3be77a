//! aiopg's PostgreSQL connection: start-up and authentication (trust, password, MD5,
//! SCRAM-SHA-256), the simple and extended query protocols, pipelining, and cancel requests.
//!
//! ```no_run
//! # async fn f() -> aiopg_core::Result<()> {
//! let conn = aiopg_conn::connect("postgresql://app:secret@localhost/app").await?;
//! let rows = conn.query("SELECT $1::int4 * 2", &[&21i32]).await?;
//! assert_eq!(rows[0].get::<i32>(0), 42);
//! conn.close().await;
//! # Ok(()) }
//! ```
//!
//! # Design: the caller drives the socket
//!
//! There is no background task. A query's future, when polled, writes its request and reads
//! the socket itself, so one caller issuing one query at a time pays no hop between tasks or
//! threads. Several callers (clones of the [`Connection`], or tasks sharing one) pipeline:
//! requests go out in the order they were issued, whoever is polling reads the answers and
//! hands each to its owner.
//!
//! # Cancel safety
//!
//! A query future may be dropped at any point. Its request is either queued whole or not at
//! all; once queued it runs on the server, and its answer is read and thrown away, so later
//! queries always get their own answers. To stop a running statement on the server, use
//! [`Connection::cancel`].
//!
//! # Row streams
//!
//! [`Connection::query_stream`] hands rows out as they arrive, in bounded memory: when its
//! owner stops taking rows, the connection stops reading the socket. [`Connection::query_as`]
//! decodes into typed rows the same way.
//!
//! # Timeouts
//!
//! [`Connection::with_timeout`] cancels a statement on the server only when it is the one the
//! server is running; a request still queued behind other callers is withdrawn instead, so a
//! timeout never stops a neighbour's statement. It returns within the timeout plus
//! [`CANCEL_GRACE`].
//!
//! # Statements
//!
//! A [`Statement`] belongs to the connection that prepared it; using it on another is an
//! [`ErrorKind::Usage`] error.
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
    pub process_id: i32,
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
