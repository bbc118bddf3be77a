//! aiopg's runtime-free core: the PostgreSQL wire protocol, types, DSN parsing and errors.
//!
//! This crate performs no I/O and knows no async runtime: bytes go in, messages come out.
//! `aiopg-conn` drives it over a socket.
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
pub mod error;
pub mod from_row;
// The wire protocol and literal rendering, for aiopg's own layers (aiopg-conn, aiopg-cursor):
// not a public API. Applications reach them through `Connection` and `Cursor::mogrify`.
#[doc(hidden)]
pub mod mogrify;
#[doc(hidden)]
pub mod protocol;
pub mod row;

pub use config::Config;
pub use error::{DbError, Error, ErrorKind, Result, SqlState};
pub use protocol::TransactionStatus;
pub use row::{Column, Row, RowIndex, SimpleRow};

/// PostgreSQL types and the traits that convert Rust values to and from them
/// (re-exported from `postgres-types`).
pub mod types {
    pub use postgres_types::{
        to_sql_checked, Field, FromSql, FromSqlOwned, IsNull, Kind, Oid, ToSql, Type, WasNull,
        WrongType,
    };
}
