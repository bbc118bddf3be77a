//! The one error type of every aiopg layer.
//!
//! [`Error`] is opaque: branch on [`Error::kind`] or on the predicates
//! ([`Error::is_closed`], [`Error::is_timeout`], [`Error::code`], [`Error::as_db_error`]).
//! The `source()` chain keeps the underlying cause (an `io::Error`, a server
//! [`DbError`], a type conversion error).

mod db;
mod sqlstate;

use std::error::Error as StdError;
use std::fmt;
use std::io;

pub use db::{DbError, ErrorPosition, Severity};
pub use sqlstate::SqlState;

/// A boxed error usable as the cause of an [`Error`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong, in the categories callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The server reported an error ([`Error::as_db_error`] has every field it sent).
    Db,
    /// An operation outlived its timeout.
    Timeout,
    /// The connection is closed: by [`close()`](https://docs.rs/aiopg), by the server, or by a
    /// broken link. A new connection is needed.
    Closed,
    /// No pooled connection became free within the pool's acquire timeout.
    PoolTimeout,
    /// The pool is closed.
    PoolClosed,
    /// Authentication failed or the server asked for a method the client cannot do.
    Auth,
    /// TLS negotiation failed.
    Tls,
    /// A connection string, environment variable or option is invalid.
    Config,
    /// An I/O error on the socket (connection refused, reset, ...).
    Io,
    /// The server sent something the protocol does not allow, or a message could not be parsed.
    Protocol,
    /// A value could not be converted from its PostgreSQL form into the Rust type asked for.
    Decode,
    /// A parameter could not be converted into its PostgreSQL form.
    Encode,
    /// The API was used out of order (for example fetching before executing).
    Usage,
    /// The statement never ran: an earlier statement of the same pipeline failed, and the
    /// server skipped the rest of it.
    Aborted,
    /// A statement returned another number of rows than the call expects (`query_one` got
    /// none or several).
    RowCount,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::Db => "database error",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Closed => "connection closed",
            ErrorKind::PoolTimeout => "timed out waiting for a pooled connection",
            ErrorKind::PoolClosed => "pool closed",
            ErrorKind::Auth => "authentication failed",
            ErrorKind::Tls => "TLS error",
            ErrorKind::Config => "invalid configuration",
            ErrorKind::Io => "I/O error",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Decode => "cannot decode value",
            ErrorKind::Encode => "cannot encode parameter",
            ErrorKind::Usage => "invalid use",
            ErrorKind::Aborted => "not run",
            ErrorKind::RowCount => "unexpected number of rows",
        }
    }
}

struct Inner {
    kind: ErrorKind,
    message: Option<String>,
    source: Option<BoxError>,
}

/// An error from any aiopg layer.
///
/// Messages say what happened and, where it helps, what to do next. They never contain a
/// password or a bound parameter's value.
pub struct Error(Box<Inner>);

/// A `Result` with aiopg's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Creates an error of `kind` with a message and an optional cause.
    ///
    /// Layers built on aiopg-core use this; applications rarely need to.
    pub fn new(kind: ErrorKind, message: impl Into<String>, source: Option<BoxError>) -> Error {
        Error(Box::new(Inner {
            kind,
            message: Some(message.into()),
            source,
        }))
    }

    fn bare(kind: ErrorKind, source: Option<BoxError>) -> Error {
        Error(Box::new(Inner {
            kind,
            message: None,
            source,
        }))
    }

    /// A server error.
    pub fn db(err: DbError) -> Error {
        Error::bare(ErrorKind::Db, Some(Box::new(err)))
    }

    /// An operation outlived its timeout; `what` names the operation.
    pub fn timeout(what: impl Into<String>) -> Error {
        Error::new(ErrorKind::Timeout, what, None)
    }

    /// The connection is closed; `why` says how it came to be closed.
    pub fn closed(why: impl Into<String>) -> Error {
        Error::new(ErrorKind::Closed, why, None)
    }

    /// The connection is closed because of an I/O error.
    pub fn closed_by(why: impl Into<String>, cause: io::Error) -> Error {
        Error::new(ErrorKind::Closed, why, Some(Box::new(cause)))
    }

    /// An I/O error, with what was being done when it happened.
    pub fn io(context: impl Into<String>, cause: io::Error) -> Error {
        Error::new(ErrorKind::Io, context, Some(Box::new(cause)))
    }

    /// An invalid setting: `key` names the offending parameter.
    pub fn config(key: &str, message: impl fmt::Display) -> Error {
        Error::new(ErrorKind::Config, format!("`{key}`: {message}"), None)
    }

    /// Authentication failed.
    pub fn auth(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Auth, message, None)
    }

    /// Authentication failed because the server rejected the credentials.
    pub fn auth_db(message: impl Into<String>, err: DbError) -> Error {
        Error::new(ErrorKind::Auth, message, Some(Box::new(err)))
    }

    /// The server broke the protocol.
    pub fn protocol(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Protocol, message, None)
    }

    /// A value could not be decoded.
    pub fn decode(message: impl Into<String>, source: Option<BoxError>) -> Error {
        Error::new(ErrorKind::Decode, message, source)
    }

    /// A parameter could not be encoded.
    pub fn encode(message: impl Into<String>, source: Option<BoxError>) -> Error {
        Error::new(ErrorKind::Encode, message, source)
    }

    /// The API was used out of order.
    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Usage, message, None)
    }

    /// A pipelined statement that never ran because an earlier one failed.
    pub fn aborted(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Aborted, message, None)
    }

    /// Prefixes the message with where the error happened (`"db1:5432"`), keeping its kind
    /// and cause.
    pub fn context(mut self, context: impl std::fmt::Display) -> Error {
        self.0.message = Some(match self.0.message.take() {
            Some(m) => format!("{context}: {m}"),
            None => context.to_string(),
        });
        self
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// True when the connection is closed and a new one is needed.
    pub fn is_closed(&self) -> bool {
        self.0.kind == ErrorKind::Closed
    }

    /// True when an operation outlived its timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self.0.kind, ErrorKind::Timeout | ErrorKind::PoolTimeout)
    }

    /// The server error behind this error, if there is one.
    pub fn as_db_error(&self) -> Option<&DbError> {
        let source = self.0.source.as_deref()?;
        if let Some(db) = source.downcast_ref::<DbError>() {
            return Some(db);
        }
        // An error may wrap another aiopg error (a failed host among several, say).
        source.downcast_ref::<Error>()?.as_db_error()
    }

    /// The SQLSTATE of the server error behind this error, if there is one.
    pub fn code(&self) -> Option<&SqlState> {
        self.as_db_error().map(DbError::code)
    }

    /// The `io::Error` behind this error, if there is one.
    pub fn as_io_error(&self) -> Option<&io::Error> {
        self.0
            .source
            .as_deref()
            .and_then(|s| s.downcast_ref::<io::Error>())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind);
        if let Some(m) = &self.0.message {
            d.field("message", m);
        }
        if let Some(s) = &self.0.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.0.message, self.0.kind) {
            (None, ErrorKind::Db) => {
                // The server's own words are the message.
                if let Some(db) = self.as_db_error() {
                    return fmt::Display::fmt(db, f);
                }
                f.write_str(self.0.kind.describe())
            }
            (Some(m), ErrorKind::Db) => {
                // A server error with context: the context, then the server's words.
                f.write_str(m)?;
                if let Some(db) = self.as_db_error() {
                    write!(f, ": {db}")?;
                }
                return Ok(());
            }
            (None, kind) => f.write_str(kind.describe()),
            (Some(m), kind) => write!(f, "{}: {m}", kind.describe()),
        }?;
        // Say what caused it, unless it is a server error already shown above.
        match &self.0.source {
            Some(s) if self.0.kind != ErrorKind::Db => write!(f, ": {s}"),
            _ => Ok(()),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_follow_kind() {
        assert!(Error::timeout("query").is_timeout());
        assert!(Error::closed("server went away").is_closed());
        assert!(!Error::closed("x").is_timeout());
        assert_eq!(Error::config("port", "bad").kind(), ErrorKind::Config);
    }

    #[test]
    fn display_names_kind_message_and_cause() {
        let e = Error::io(
            "connecting to 127.0.0.1:1",
            io::Error::new(io::ErrorKind::ConnectionRefused, "refused"),
        );
        assert_eq!(
            e.to_string(),
            "I/O error: connecting to 127.0.0.1:1: refused"
        );
        assert!(e.as_io_error().is_some());
        assert!(e.source().is_some());
    }
}
