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
//! Transactions: [`SAConnection::begin`] (an inner `begin()` joins the open transaction, as
//! in aiopg.sa), [`SAConnection::begin_nested`] (savepoints), and
//! [`SAConnection::begin_twophase`] with [`SATransaction::prepare`],
//! [`SAConnection::recover_twophase`], [`SAConnection::commit_prepared`] and
//! [`SAConnection::rollback_prepared`].
//!
//! Builder values are bound checked against the parameter types the server reports (see
//! [`Values`]): a value that does not fit is an `Encode` error, never bytes the server
//! misreads. A parameter with no context to type it (`SELECT $1`) is `text` to the server,
//! so a non-text value there needs a cast (`Expr::val(7).cast_as("int4")`).
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
