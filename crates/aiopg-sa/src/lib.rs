//! Python's `aiopg.sa` for Rust: an [`Engine`] over aiopg's pool, statements built with
//! [sea-query](https://docs.rs/sea-query) and run with their values **bound as parameters**
//! (never spliced into SQL), and aiopg.sa's [`ResultProxy`] / [`RowProxy`].
//!
//! ```no_run
//! # async fn f() -> aiopg_core::Result<()> {
//! use aiopg_sa::sea_query::{Alias, Expr, ExprTrait, Query};
//!
//! let engine = aiopg_sa::create_engine("postgresql://app@localhost/app").await?;
//! let conn = engine.acquire().await?;
//! let insert = Query::insert()
//!     .into_table(Alias::new("tbl"))
//!     .columns([Alias::new("val")])
//!     .values_panic(["it's bound, not spliced".into()])
//!     .to_owned();
//! conn.execute(&insert).await?;
//! let select = Query::select()
//!     .columns([Alias::new("id"), Alias::new("val")])
//!     .from(Alias::new("tbl"))
//!     .and_where(Expr::col(Alias::new("id")).gt(0))
//!     .to_owned();
//! let mut result = conn.execute(&select).await?;
//! while let Some(row) = result.fetchone().await? {
//!     println!("{} {}", row.get::<i32>("id"), row.get::<&str>("val"));
//! }
//! # Ok(()) }
//! ```
//!
//! # Transactions
//!
//! [`SAConnection::begin`] opens a transaction; an inner `begin()` joins the open one, as in
//! aiopg.sa (its `commit()` does nothing, its `rollback()` ends the whole).
//! [`SAConnection::begin_nested`] is a savepoint, and [`SAConnection::begin_twophase`] a
//! two-phase transaction, finished with [`SATransaction::prepare`] and then `commit()` or
//! `rollback()`, or later, from any connection, with [`SAConnection::commit_prepared`] and
//! [`SAConnection::rollback_prepared`] ([`SAConnection::recover_twophase`] lists what is
//! prepared). Dropping an active outermost transaction or savepoint rolls it back without
//! blocking.
//!
//! # Binding
//!
//! Builder values are bound checked against the parameter types the server reports (see
//! [`Values`]): a value that does not fit is an `Encode` error, never bytes the server
//! misreads. A parameter with no context to type it (`SELECT $1`) is `text` to the server,
//! so a non-text value there needs a cast (`Expr::val(7).cast_as("int4")`).
//!
//! # Pool, timeouts and cancellation
//!
//! An [`Engine`] is an [`aiopg_pool::Pool`] with aiopg.sa's names: [`Engine::acquire`] waits
//! at most the pool's `timeout` ([`EngineBuilder::timeout`]), and a connection goes back to
//! the pool when its [`SAConnection`] is dropped, an open transaction rolled back first.
//! Statements have no timeout of their own. [`SAConnection::execute`] returns as soon as a
//! statement with rows is sent, and its [`ResultProxy`] reads the rows as they are fetched,
//! so bound the two together: pass an `async` block that executes and fetches to
//! [`Connection::with_timeout`](aiopg_conn::Connection::with_timeout) on
//! [`SAConnection::connection`], which cancels the statement on the server when it outlives
//! the timeout. The server's `statement_timeout` works too. Keep a [`ResultProxy`] open only
//! as long as needed: the connection's next statement waits behind it.
//!
//! # Cancel safety
//!
//! Dropping a future of this crate never desynchronises the connection: aiopg-conn's
//! [rules](aiopg_conn#cancel-safety) apply to every statement sent (taken back if none of it
//! was written, otherwise run to its end with its answer discarded). What a drop leaves
//! behind:
//!
//! | Method | Dropped before it completes |
//! |---|---|
//! | [`create_engine`], [`EngineBuilder::build`], [`Engine::from_pool`], [`Engine::acquire`], [`Engine::release`], [`Engine::wait_closed`], [`SAConnection::close`] | Cancel safe. |
//! | [`SAConnection::execute`], [`SAConnection::scalar`] | A sent statement runs, unseen. |
//! | [`SAConnection::recover_twophase`] | Cancel safe (a read). |
//! | [`SAConnection::begin`], [`SAConnection::begin_with`], [`SAConnection::begin_twophase`], [`SAConnection::begin_nested`] outside a transaction | Cancel safe: a `BEGIN` dropped before its answer is followed by a detached `ROLLBACK`. |
//! | [`SAConnection::begin_nested`] inside a transaction | A `SAVEPOINT` that ran stays, unused, until the transaction ends. |
//! | [`SATransaction::rollback`] | Cancel safe, except for a prepared two-phase transaction (see there): the work is undone. |
//! | [`SATransaction::commit`] | Not cancel safe: whether it committed is unknown. The connection is left outside the transaction, and the next `begin()` begins. |
//! | [`SATransaction::prepare`] | Not cancel safe, but knowable: the handle then counts the transaction as possibly prepared, and its `commit()` or `rollback()` finds out. The connection is left outside the transaction. |
//! | [`SAConnection::commit_prepared`], [`SAConnection::rollback_prepared`] | Not cancel safe: the outcome is unknown; [`SAConnection::recover_twophase`] tells. |
//! | [`ResultProxy::fetchone`], [`ResultProxy::first`], [`ResultProxy::scalar`], the `Stream` implementation | Cancel safe: no row is lost. |
//! | [`ResultProxy::fetchmany`], [`ResultProxy::fetchall`] | Not cancel safe: the rows this call had taken are lost. |
//!
//! After a dropped transaction method the [`SAConnection`] can go on: no transaction is left
//! open on it (a `ROLLBACK` queued behind the dropped statement sees to it), and its next
//! `begin()` begins a new one.
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]

mod bind;
mod engine;
mod result;
mod statement;
mod transaction;
mod value;

pub use bind::Values;
pub use engine::{create_engine, Engine, EngineBuilder, SAConnection};
pub use result::{ResultProxy, RowProxy};
pub use statement::{Built, Executable};
pub use transaction::SATransaction;
pub use value::SqlValue;

/// The query builder, re-exported so that its version always matches this crate's.
pub use sea_query;
