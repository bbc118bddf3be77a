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

mod elide;

// For aiopg's own layers: how they quote user-supplied text in messages.
#[doc(hidden)]
pub use elide::{elide, Elided, ECHO_MAX};

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
    /// The server is not the kind `target_session_attrs` asks for (a standby where a
    /// read-write or primary server is wanted, or the other way round).
    WrongServer,
    /// A bounded stream of events (notifications, notices) dropped some because its consumer
    /// fell behind; [`Error::missed`] says how many. The stream goes on with the next one.
    Lagged,
    /// The connection was lost (or closed after a timeout) once a `COMMIT`, or an implicit
    /// transaction (`execute_many`, a pipeline outside a transaction block), had been sent
    /// whole, before its answer came: the transaction **may or may not have committed**.
    /// Check (for a row it wrote, say) before running it again. The connection is closed, as
    /// for [`Closed`](ErrorKind::Closed). A commit that provably never left the client fails
    /// with `Closed` (nothing was committed).
    CommitUnknown,
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
            ErrorKind::WrongServer => "server does not match target_session_attrs",
            ErrorKind::Lagged => "events dropped",
            ErrorKind::CommitUnknown => "commit outcome unknown",
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

/// The longest message an [`Error`] keeps, in characters; longer ones are cut, so that no
/// input can flood a log through an error.
pub const MESSAGE_MAX: usize = 4096;

// The constructors marked `#[doc(hidden)]` are for aiopg's own layers (aiopg-conn, aiopg-pool,
// ...), not a public API: an application receives errors, and builds one only in a `FromRow`
// or `FromSql` implementation, with [`Error::decode`].
impl Error {
    /// Creates an error of `kind` with a message and an optional cause.
    ///
    /// For aiopg's own layers; not a public API. The message may
    /// quote the cause (`format!("...: {e}")`): [`Display`](fmt::Display) then shows the
    /// cause once. Text the user supplied (host names, paths, identifiers) belongs in the
    /// message through [`elide`]; as a last guard, a message longer than [`MESSAGE_MAX`]
    /// characters is cut, so that no input can flood a log through an error.
    #[doc(hidden)]
    pub fn new(kind: ErrorKind, message: impl Into<String>, source: Option<BoxError>) -> Error {
        Error(Box::new(Inner {
            kind,
            message: Some(elide::bound(message.into())),
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
    #[doc(hidden)]
    pub fn db(err: DbError) -> Error {
        Error::bare(ErrorKind::Db, Some(Box::new(err)))
    }

    /// An operation outlived its timeout; `what` names the operation.
    #[doc(hidden)]
    pub fn timeout(what: impl Into<String>) -> Error {
        Error::new(ErrorKind::Timeout, what, None)
    }

    /// The connection is closed; `why` says how it came to be closed.
    #[doc(hidden)]
    pub fn closed(why: impl Into<String>) -> Error {
        Error::new(ErrorKind::Closed, why, None)
    }

    /// The connection is closed because of an I/O error.
    #[doc(hidden)]
    pub fn closed_by(why: impl Into<String>, cause: io::Error) -> Error {
        Error::new(ErrorKind::Closed, why, Some(Box::new(cause)))
    }

    /// An I/O error, with what was being done when it happened.
    #[doc(hidden)]
    pub fn io(context: impl Into<String>, cause: io::Error) -> Error {
        Error::new(ErrorKind::Io, context, Some(Box::new(cause)))
    }

    /// An invalid setting: `key` names the offending parameter.
    #[doc(hidden)]
    pub fn config(key: &str, message: impl fmt::Display) -> Error {
        Error::new(
            ErrorKind::Config,
            format!("`{}`: {message}", elide(key)),
            None,
        )
    }

    /// Authentication failed.
    #[doc(hidden)]
    pub fn auth(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Auth, message, None)
    }

    /// Authentication failed because the server rejected the credentials.
    #[doc(hidden)]
    pub fn auth_db(message: impl Into<String>, err: DbError) -> Error {
        Error::new(ErrorKind::Auth, message, Some(Box::new(err)))
    }

    /// The server broke the protocol.
    #[doc(hidden)]
    pub fn protocol(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Protocol, message, None)
    }

    /// A value could not be decoded: what a hand-written [`FromRow`](crate::from_row::FromRow)
    /// returns for a row it cannot use. The message says what (it must not quote a value the
    /// row holds, which may be secret); `source` is the cause, if any.
    pub fn decode(message: impl Into<String>, source: Option<BoxError>) -> Error {
        Error::new(ErrorKind::Decode, message, source)
    }

    /// A parameter could not be encoded.
    #[doc(hidden)]
    pub fn encode(message: impl Into<String>, source: Option<BoxError>) -> Error {
        Error::new(ErrorKind::Encode, message, source)
    }

    /// The API was used out of order.
    #[doc(hidden)]
    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Usage, message, None)
    }

    /// A pipelined statement that never ran because an earlier one failed.
    #[doc(hidden)]
    pub fn aborted(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Aborted, message, None)
    }

    /// A bounded event stream dropped `missed` of its events (`what`: "notifications") because
    /// its consumer fell behind.
    #[doc(hidden)]
    pub fn lagged(missed: u64, what: &str) -> Error {
        Error::new(
            ErrorKind::Lagged,
            format!(
                "{what}: {missed} dropped because the stream's consumer fell behind (its \
                 buffer was full); the stream goes on with the next ones"
            ),
            Some(Box::new(Missed(missed))),
        )
    }

    /// How many events a [`ErrorKind::Lagged`] error stands for.
    pub fn missed(&self) -> Option<u64> {
        self.0
            .source
            .as_deref()
            .and_then(|s| s.downcast_ref::<Missed>())
            .map(|m| m.0)
    }

    /// The message alone: what happened, without the kind before it or the cause after it.
    pub fn message(&self) -> Option<&str> {
        self.0.message.as_deref()
    }

    /// Prefixes the message with where the error happened (`"db1:5432"`), keeping its kind
    /// and cause.
    pub fn context(mut self, context: impl std::fmt::Display) -> Error {
        self.0.message = Some(elide::bound(match self.0.message.take() {
            Some(m) => format!("{context}: {m}"),
            None => context.to_string(),
        }));
        self
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// True when the connection is closed and a new one is needed (a
    /// [`CommitUnknown`](ErrorKind::CommitUnknown) error included).
    pub fn is_closed(&self) -> bool {
        matches!(self.0.kind, ErrorKind::Closed | ErrorKind::CommitUnknown)
    }

    /// True when a commit was sent but its answer never came: it may or may not have taken
    /// effect (see [`ErrorKind::CommitUnknown`]).
    pub fn is_commit_unknown(&self) -> bool {
        self.0.kind == ErrorKind::CommitUnknown
    }

    /// A commit sent whole whose answer never came; `why` says what happened (the connection
    /// closed, a timeout), `source` is the cause.
    #[doc(hidden)]
    pub fn commit_unknown(why: impl std::fmt::Display, source: Option<BoxError>) -> Error {
        Error::new(
            ErrorKind::CommitUnknown,
            format!(
                "{why} after a COMMIT (or an implicit transaction) was sent and before its \
                 answer came: the transaction may or may not have committed; check before \
                 running it again"
            ),
            source,
        )
    }

    /// True when an operation outlived its timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self.0.kind, ErrorKind::Timeout | ErrorKind::PoolTimeout)
    }

    /// True when no pooled connection became free within the pool's timeout
    /// ([`ErrorKind::PoolTimeout`]).
    pub fn is_pool_timeout(&self) -> bool {
        self.0.kind == ErrorKind::PoolTimeout
    }

    /// True when the server error's SQLSTATE is `code`.
    fn has_code(&self, code: &SqlState) -> bool {
        self.code() == Some(code)
    }

    /// A unique or primary key constraint was violated (SQLSTATE 23505).
    pub fn is_unique_violation(&self) -> bool {
        self.has_code(&SqlState::UNIQUE_VIOLATION)
    }

    /// A foreign key constraint was violated (SQLSTATE 23503).
    pub fn is_foreign_key_violation(&self) -> bool {
        self.has_code(&SqlState::FOREIGN_KEY_VIOLATION)
    }

    /// A NOT NULL constraint was violated (SQLSTATE 23502).
    pub fn is_not_null_violation(&self) -> bool {
        self.has_code(&SqlState::NOT_NULL_VIOLATION)
    }

    /// A CHECK constraint was violated (SQLSTATE 23514).
    pub fn is_check_violation(&self) -> bool {
        self.has_code(&SqlState::CHECK_VIOLATION)
    }

    /// The transaction could not be serialized with concurrent ones (SQLSTATE 40001).
    pub fn is_serialization_failure(&self) -> bool {
        self.has_code(&SqlState::T_R_SERIALIZATION_FAILURE)
    }

    /// The server broke a deadlock by failing this transaction (SQLSTATE 40P01).
    pub fn is_deadlock(&self) -> bool {
        self.has_code(&SqlState::T_R_DEADLOCK_DETECTED)
    }

    /// The errors PostgreSQL documents as "run the transaction again": a serialization
    /// failure (40001) or a deadlock (40P01). A [`CommitUnknown`](ErrorKind::CommitUnknown)
    /// is not retryable: the transaction may have committed.
    pub fn is_retryable(&self) -> bool {
        self.is_serialization_failure() || self.is_deadlock()
    }

    /// The statement was cancelled (SQLSTATE 57014: a cancel request, `statement_timeout`).
    pub fn is_query_canceled(&self) -> bool {
        self.has_code(&SqlState::QUERY_CANCELED)
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

/// The cause of a [`ErrorKind::Lagged`] error: how many events were dropped.
#[derive(Debug)]
struct Missed(u64);

impl fmt::Display for Missed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dropped", self.0)
    }
}

impl StdError for Missed {}

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
    /// The kind, the message, then the cause, each once: a cause whose text the message
    /// already quotes (`format!("...: {e}")` with `e` as the source) is not repeated, and a
    /// message that the cause's text contains (an authentication error worded as the
    /// server's) gives way to the cause. `source()` still returns the cause either way.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.0;
        // A server error speaks in the server's own words, without the kind before them.
        let (kind, cause) = match inner.kind {
            ErrorKind::Db => (None, self.as_db_error().map(DbError::to_string)),
            kind => (
                Some(kind.describe()),
                inner.source.as_ref().map(|s| s.to_string()),
            ),
        };
        let cause = cause.filter(|c| !c.is_empty());
        let (message, cause) = match (inner.message.as_deref(), cause.as_deref()) {
            (Some(m), Some(c)) if m.contains(c) => (Some(m), None),
            (Some(m), Some(c)) if c.contains(m) => (Some(c), None),
            (m, c) => (m, c),
        };
        let mut parts = [kind, message, cause].into_iter().flatten();
        match parts.next() {
            Some(first) => {
                f.write_str(first)?;
                parts.try_for_each(|p| write!(f, ": {p}"))
            }
            None => f.write_str(inner.kind.describe()),
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

    /// A server error with `fields`, parsed from an ErrorResponse as the server sends it.
    fn server_error(fields: &[(u8, &str)]) -> DbError {
        use postgres_protocol::message::backend::Message;
        let mut body = Vec::new();
        for (t, v) in fields {
            body.push(*t);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = bytes::BytesMut::new();
        msg.extend_from_slice(b"E");
        msg.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        msg.extend_from_slice(&body);
        match Message::parse(&mut msg) {
            Ok(Some(Message::ErrorResponse(e))) => DbError::parse(&mut e.fields()).unwrap(),
            _ => panic!("not an ErrorResponse"),
        }
    }

    fn refused() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused")
    }

    #[test]
    fn a_cause_the_message_quotes_is_shown_once() {
        let cause = refused();
        let e = Error::io(format!("reading from the server failed: {cause}"), cause);
        assert_eq!(
            e.to_string(),
            "I/O error: reading from the server failed: connection refused"
        );
        // The cause is still there for code that walks the chain.
        assert_eq!(
            e.source().unwrap().to_string(),
            "connection refused",
            "{e:?}"
        );
        assert!(e.as_io_error().is_some());
        // Quoted in the middle, too.
        let cause = refused();
        let e = Error::new(
            ErrorKind::Closed,
            format!("the link broke ({cause}); the connection was closed"),
            Some(Box::new(cause)),
        );
        assert_eq!(
            e.to_string(),
            "connection closed: the link broke (connection refused); the connection was closed"
        );
    }

    #[test]
    fn an_aiopg_cause_the_message_quotes_is_shown_once() {
        // A summary of several failures that names the last one, which is also the source.
        let last = Error::io("connecting to 10.0.0.2:5432", refused());
        let e = Error::new(
            ErrorKind::Io,
            format!("could not connect to any of 2 hosts (a: timed out; b: {last})"),
            Some(Box::new(last)),
        );
        let text = e.to_string();
        assert_eq!(text.matches("connection refused").count(), 1, "{text}");
        assert!(e.source().is_some());
    }

    #[test]
    fn a_message_the_cause_contains_gives_way_to_it() {
        let db = server_error(&[
            (b'S', "FATAL"),
            (b'C', "28P01"),
            (b'M', "password authentication failed for user \"u\""),
        ]);
        let e = Error::auth_db(db.message().to_owned(), db);
        let text = e.to_string();
        assert_eq!(
            text.matches("password authentication failed").count(),
            1,
            "{text}"
        );
        assert!(text.starts_with("authentication failed: FATAL: "), "{text}");
        assert!(e.as_db_error().is_some());
    }

    #[test]
    fn distinct_message_and_cause_are_both_shown() {
        let e = Error::encode("parameter $1 could not be encoded", Some("too big".into()));
        assert_eq!(
            e.to_string(),
            "cannot encode parameter: parameter $1 could not be encoded: too big"
        );
        assert_eq!(Error::bare(ErrorKind::Io, None).to_string(), "I/O error");
    }

    #[test]
    fn long_messages_and_keys_are_cut() {
        let host = "h".repeat(1 << 20);
        let e = Error::config(&host, "bad");
        assert!(e.to_string().len() < 300, "{}", e.to_string().len());
        let e = Error::protocol(format!("junk: {host}"));
        assert!(e.to_string().chars().count() <= MESSAGE_MAX + 20);
        assert!(e.to_string().ends_with('…'));
        let e = Error::closed("x").context(&host);
        assert!(e.to_string().chars().count() <= MESSAGE_MAX + 20);
    }
}
