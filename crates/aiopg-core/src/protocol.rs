//! The wire protocol, on top of `postgres-protocol`: framing backend messages out of a buffer
//! and encoding the frontend messages aiopg sends. No I/O happens here.

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use postgres_types::{ToSql, Type};

use crate::error::{Error, Result};

pub use postgres_protocol::message::backend;

/// Frames the next complete backend message out of `buf`, or `None` when more bytes are needed.
///
/// The message borrows nothing: its body is a reference-counted slice split off `buf`, so row
/// data is never copied. Check the header with [`check_header`] first: this function believes
/// the length a message declares.
#[inline]
pub fn decode(buf: &mut BytesMut) -> Result<Option<Message>> {
    Message::parse(buf).map_err(|e| Error::protocol(format!("malformed message from server: {e}")))
}

/// The longest backend message accepted, length word included: 1 GiB, PostgreSQL's own limit
/// on one value.
pub const MAX_MESSAGE_LEN: u32 = 1 << 30;

/// libpq's rule (`fe-protocol3.c`): a message longer than this is believed only for the types
/// that can legitimately be long (rows, row descriptions, copy data, function results,
/// errors, notices, notifications).
const SHORT_MESSAGE_LEN: u32 = 30_000;

/// libpq's bound on an authentication request (`fe-connect.c`): even GSS tokens stay below it.
const AUTH_MESSAGE_LEN: u32 = 2_000;

/// The longest ParameterDescription: a 16-bit count and 65535 type OIDs. libpq caps it at
/// 30000 bytes, which refuses statements with more than 7499 parameters; aiopg takes them.
const PARAMETER_DESCRIPTION_LEN: u32 = 4 + 2 + 4 * 65_535;

/// Where in a connection's life a backend message arrives. Start-up and authentication
/// take fewer message types than a running session, and shorter ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// From the StartupMessage to the first ReadyForQuery.
    Startup,
    /// After the first ReadyForQuery.
    Session,
}

/// What a message of one type may declare as its length (the length word, which counts
/// itself but not the type byte).
struct Bounds {
    name: &'static str,
    min: u32,
    max: u32,
}

const fn exactly(name: &'static str, len: u32) -> Bounds {
    Bounds {
        name,
        min: len,
        max: len,
    }
}

const fn up_to(name: &'static str, max: u32) -> Bounds {
    Bounds { name, min: 4, max }
}

/// The PostgreSQL name of a backend message type, if `tag` is one.
pub fn message_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'R' => "Authentication",
        b'K' => "BackendKeyData",
        b'2' => "BindComplete",
        b'3' => "CloseComplete",
        b'C' => "CommandComplete",
        b'W' => "CopyBothResponse",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'G' => "CopyInResponse",
        b'H' => "CopyOutResponse",
        b'D' => "DataRow",
        b'I' => "EmptyQueryResponse",
        b'E' => "ErrorResponse",
        b'V' => "FunctionCallResponse",
        b'v' => "NegotiateProtocolVersion",
        b'n' => "NoData",
        b'N' => "NoticeResponse",
        b'A' => "NotificationResponse",
        b't' => "ParameterDescription",
        b'S' => "ParameterStatus",
        b'1' => "ParseComplete",
        b's' => "PortalSuspended",
        b'Z' => "ReadyForQuery",
        b'T' => "RowDescription",
        _ => return None,
    })
}

/// The bounds of a message type aiopg reads in `phase`, or `None` when such a message has no
/// place there.
#[inline]
fn bounds(tag: u8, phase: Phase) -> Option<Bounds> {
    let b = match (tag, phase) {
        // Authentication requests are small whenever they come; start-up errors and notices
        // are held to libpq's short limit (a server that sends more is not speaking protocol
        // 3.0, or is not a PostgreSQL server at all).
        (b'R', _) => Bounds {
            name: "Authentication",
            min: 8,
            max: AUTH_MESSAGE_LEN,
        },
        (b'K', _) => exactly("BackendKeyData", 12),
        (b'S', _) => up_to("ParameterStatus", SHORT_MESSAGE_LEN),
        (b'Z', _) => exactly("ReadyForQuery", 5),
        (b'E', Phase::Startup) => up_to("ErrorResponse", SHORT_MESSAGE_LEN),
        (b'N', Phase::Startup) => up_to("NoticeResponse", SHORT_MESSAGE_LEN),
        (_, Phase::Startup) => return None,
        // The long-capable types: only the overall limit applies.
        (b'D', _) => up_to("DataRow", MAX_MESSAGE_LEN),
        (b'T', _) => up_to("RowDescription", MAX_MESSAGE_LEN),
        (b'd', _) => up_to("CopyData", MAX_MESSAGE_LEN),
        (b'E', _) => up_to("ErrorResponse", MAX_MESSAGE_LEN),
        (b'N', _) => up_to("NoticeResponse", MAX_MESSAGE_LEN),
        (b'A', _) => up_to("NotificationResponse", MAX_MESSAGE_LEN),
        // Messages without a body, and the short ones.
        (b'1', _) => exactly("ParseComplete", 4),
        (b'2', _) => exactly("BindComplete", 4),
        (b'3', _) => exactly("CloseComplete", 4),
        (b'n', _) => exactly("NoData", 4),
        (b's', _) => exactly("PortalSuspended", 4),
        (b'I', _) => exactly("EmptyQueryResponse", 4),
        (b'c', _) => exactly("CopyDone", 4),
        (b'C', _) => up_to("CommandComplete", SHORT_MESSAGE_LEN),
        (b'G', _) => up_to("CopyInResponse", SHORT_MESSAGE_LEN),
        (b'H', _) => up_to("CopyOutResponse", SHORT_MESSAGE_LEN),
        (b't', _) => up_to("ParameterDescription", PARAMETER_DESCRIPTION_LEN),
        // CopyBothResponse (replication), FunctionCallResponse (the fast-path interface) and
        // NegotiateProtocolVersion (a newer protocol or `_pq_` options) answer requests aiopg
        // never makes.
        _ => return None,
    };
    Some(b)
}

/// Checks a backend message header before its body is read: the type must be one aiopg
/// reads in `phase`, and `len` (the length word) within what that type can take. A header is
/// believed only as far as its type allows, so a broken or hostile server cannot make the
/// client wait for, or make room for, a body that no real server would send.
#[inline]
pub fn check_header(tag: u8, len: u32, phase: Phase) -> Result<()> {
    match bounds(tag, phase) {
        Some(b) if (b.min..=b.max).contains(&len) => Ok(()),
        Some(b) => Err(bad_length(tag, len, &b)),
        None => Err(unexpected_type(tag, phase)),
    }
}

/// `'Z'`, or `0x00` for a byte that is not a printable character.
fn show_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

#[cold]
fn bad_length(tag: u8, len: u32, b: &Bounds) -> Error {
    let what = format!(
        "the server sent a {} ({}) message declaring {len} bytes",
        b.name,
        show_tag(tag)
    );
    Error::protocol(if b.min == b.max {
        format!("{what}; that message is always {} bytes", b.min)
    } else if len < b.min {
        format!("{what}; that message is at least {} bytes", b.min)
    } else if b.max == MAX_MESSAGE_LEN {
        format!("{what}, more than the 1 GiB aiopg accepts for one message")
    } else {
        format!(
            "{what}, more than such a message can take ({} bytes)",
            b.max
        )
    })
}

#[cold]
fn unexpected_type(tag: u8, phase: Phase) -> Error {
    let what = match message_name(tag) {
        Some(name) => format!("a {name} ({}) message", show_tag(tag)),
        None => format!("a message of unknown type {}", show_tag(tag)),
    };
    Error::protocol(match phase {
        Phase::Startup => format!(
            "the server sent {what} during start-up, where only authentication requests, \
             errors and session parameters belong; is it a PostgreSQL server (check the host \
             and port)?"
        ),
        Phase::Session if message_name(tag).is_some() => {
            format!("the server sent {what}, which aiopg never asks for")
        }
        Phase::Session => format!("the server sent {what}"),
    })
}

/// The server's transaction state, from its last `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionStatus {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InTransaction,
    /// In a failed transaction block: statements are rejected until it ends.
    InError,
}

impl TransactionStatus {
    /// Reads the status byte of a `ReadyForQuery` message.
    #[doc(hidden)]
    pub fn from_byte(b: u8) -> Result<TransactionStatus> {
        match b {
            b'I' => Ok(TransactionStatus::Idle),
            b'T' => Ok(TransactionStatus::InTransaction),
            b'E' => Ok(TransactionStatus::InError),
            other => Err(Error::protocol(format!(
                "unknown transaction status {:?} in ReadyForQuery",
                other as char
            ))),
        }
    }
}

/// The number of rows a command affected or returned, from its `CommandComplete` tag
/// (`INSERT 0 5`, `UPDATE 3`, `SELECT 10`, `COPY 7`, ...). `None` for commands without a count.
pub fn rows_from_tag(tag: &str) -> Option<u64> {
    let mut words = tag.split(' ');
    let verb = words.next()?;
    match verb {
        "INSERT" | "UPDATE" | "DELETE" | "SELECT" | "MOVE" | "FETCH" | "COPY" | "MERGE" => {
            tag.rsplit(' ').next()?.parse().ok()
        }
        _ => None,
    }
}

/// Parses the `server_version` parameter (`15.18 (Debian 15.18-0+deb12u1)`, `9.6.24`,
/// `17devel`) into libpq's integer form (`150018`, `90624`, `170000`).
pub fn server_version_number(s: &str) -> Option<u32> {
    let digits_end = |p: &str| p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len());
    let mut parts = s.split('.');
    let first = parts.next()?;
    let major: u32 = first[..digits_end(first)].parse().ok()?;
    let mut next = || -> u32 {
        parts
            .next()
            .and_then(|p| p[..digits_end(p)].parse().ok())
            .unwrap_or(0)
    };
    if major >= 10 {
        Some(major * 10000 + next())
    } else {
        let minor = next();
        let patch = next();
        Some(major * 10000 + minor * 100 + patch)
    }
}

/// Writes a `Bind` message for an unnamed portal over `statement`, with every parameter and
/// every result column in binary format.
///
/// On error nothing is left in `buf`, so a failed bind never desynchronises a connection.
pub fn bind(
    buf: &mut BytesMut,
    statement: &str,
    param_types: &[Type],
    params: &[&(dyn ToSql + Sync)],
) -> Result<()> {
    if param_types.len() != params.len() {
        return Err(Error::encode(
            format!(
                "the statement has {} parameter{} but {} {} given",
                param_types.len(),
                if param_types.len() == 1 { "" } else { "s" },
                params.len(),
                if params.len() == 1 { "was" } else { "were" },
            ),
            None,
        ));
    }
    let start = buf.len();
    let mut failed = None;
    let mut index = 0usize;
    let r = frontend::bind(
        "",
        statement,
        Some(1),
        params.iter().zip(param_types),
        |(param, ty), out| {
            index += 1;
            match param.to_sql_checked(ty, out) {
                Ok(postgres_types::IsNull::Yes) => Ok(IsNull::Yes),
                Ok(postgres_types::IsNull::No) => Ok(IsNull::No),
                Err(e) => {
                    // The first failure is the one reported.
                    failed.get_or_insert((index, ty.clone(), e));
                    Ok(IsNull::Yes)
                }
            }
        },
        Some(1),
        buf,
    );
    if let Some((i, ty, e)) = failed {
        buf.truncate(start);
        return Err(Error::encode(
            format!("parameter ${i} (PostgreSQL type {ty}) could not be encoded: {e}"),
            Some(e),
        ));
    }
    if let Err(e) = r {
        buf.truncate(start);
        return Err(match e {
            frontend::BindError::Conversion(e) => {
                Error::encode(format!("a parameter could not be encoded: {e}"), Some(e))
            }
            frontend::BindError::Serialization(e) => Error::encode(
                format!("a parameter is too large to send: {e}"),
                Some(Box::new(e)),
            ),
        });
    }
    Ok(())
}

/// True when `sql` holds a statement that ends a transaction with a commit: `COMMIT` (and
/// `COMMIT PREPARED`), `END`, or `PREPARE TRANSACTION`, at the start of any of its
/// `;`-separated statements (after whitespace and comments). Used to tell a lost commit's
/// "may or may not have committed" from a plain failure. A `;` inside a string can make it
/// see a statement start that is not one: it errs towards "may have committed", never the
/// other way.
pub fn may_commit(sql: &str) -> bool {
    sql.split(';').any(|stmt| {
        let mut words = words_after_comments(stmt);
        match words.next() {
            Some(w) if w.eq_ignore_ascii_case("commit") || w.eq_ignore_ascii_case("end") => true,
            Some(w) if w.eq_ignore_ascii_case("prepare") => words
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case("transaction")),
            _ => false,
        }
    })
}

/// True when the statement `sql` begins or ends a transaction block: `BEGIN`, `START
/// TRANSACTION`, `COMMIT`, `END`, `ROLLBACK` (`ROLLBACK TO SAVEPOINT` included), `ABORT`,
/// `PREPARE TRANSACTION`. Only its first statement is looked at (after whitespace and
/// comments): this is for statements sent with the extended protocol, which holds one.
pub fn controls_transaction(sql: &str) -> bool {
    let mut words = words_after_comments(sql);
    match words.next() {
        Some(w) => {
            ["begin", "start", "commit", "end", "rollback", "abort"]
                .iter()
                .any(|k| w.eq_ignore_ascii_case(k))
                || (w.eq_ignore_ascii_case("prepare")
                    && words
                        .next()
                        .is_some_and(|w| w.eq_ignore_ascii_case("transaction")))
        }
        None => false,
    }
}

/// True when the statement `sql` is a `COPY` (its first word, after whitespace and comments).
pub fn is_copy(sql: &str) -> bool {
    words_after_comments(sql)
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("copy"))
}

/// The leading words of a statement, skipping whitespace and `--` / `/* */` comments.
fn words_after_comments(stmt: &str) -> impl Iterator<Item = &str> {
    let mut rest = stmt;
    std::iter::from_fn(move || loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, after)| after);
        } else {
            let end = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            let (word, after) = rest.split_at(end);
            rest = after;
            return Some(word);
        }
    })
}

/// Runs an encoder that may fail part-way, leaving `buf` as it was on error.
pub fn encode_or_rollback(
    buf: &mut BytesMut,
    f: impl FnOnce(&mut BytesMut) -> std::io::Result<()>,
) -> Result<()> {
    let start = buf.len();
    f(buf).map_err(|e| {
        buf.truncate(start);
        Error::encode(
            format!("a message could not be encoded: {e}"),
            Some(Box::new(e)),
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn controls_transaction_looks_at_the_first_word_only() {
        for sql in [
            "BEGIN",
            " /* x */ begin isolation level serializable",
            "START TRANSACTION",
            "-- c\ncommit",
            "END",
            "ROLLBACK TO SAVEPOINT a",
            "abort",
            "PREPARE TRANSACTION 'x'",
        ] {
            assert!(super::controls_transaction(sql), "{sql}");
        }
        for sql in [
            "SELECT 'begin'",
            "UPDATE t SET x = 1; COMMIT",
            "PREPARE p AS SELECT 1",
            "INSERT INTO commit_log VALUES (1)",
            "",
            "beginning",
        ] {
            assert!(!super::controls_transaction(sql), "{sql}");
        }
    }

    #[test]
    fn may_commit_finds_commits_at_statement_starts() {
        for sql in [
            "COMMIT",
            "  commit work",
            "END",
            "end transaction;",
            "INSERT INTO t VALUES (1); COMMIT",
            "-- done\n/* really */ COMMIT",
            "COMMIT PREPARED 'x'",
            "PREPARE TRANSACTION 'x'",
        ] {
            assert!(may_commit(sql), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "ROLLBACK",
            "SELECT CASE WHEN true THEN 1 END",
            "PREPARE p AS SELECT 1",
            "-- COMMIT\nSELECT 1",
            "/* COMMIT */ SELECT 1",
            "committed",
            "",
        ] {
            assert!(!may_commit(sql), "{sql}");
        }
    }

    use super::*;

    #[test]
    fn rows_from_tags() {
        assert_eq!(rows_from_tag("INSERT 0 5"), Some(5));
        assert_eq!(rows_from_tag("UPDATE 3"), Some(3));
        assert_eq!(rows_from_tag("SELECT 10"), Some(10));
        assert_eq!(rows_from_tag("MERGE 2"), Some(2));
        assert_eq!(rows_from_tag("CREATE TABLE"), None);
        assert_eq!(rows_from_tag("BEGIN"), None);
    }

    #[test]
    fn server_versions() {
        assert_eq!(
            server_version_number("15.18 (Debian 15.18-0+deb12u1)"),
            Some(150018)
        );
        assert_eq!(server_version_number("9.6.24"), Some(90624));
        assert_eq!(server_version_number("17devel"), Some(170000));
        assert_eq!(server_version_number("16beta1"), Some(160000));
        assert_eq!(server_version_number("garbage"), None);
    }

    #[test]
    fn bind_rejects_wrong_type_and_leaves_buffer() {
        let mut buf = BytesMut::from(&b"xyz"[..]);
        let v: i64 = 5;
        let err = bind(&mut buf, "s", &[Type::BOOL], &[&v]).unwrap_err();
        assert_eq!(&buf[..], b"xyz");
        assert!(err.to_string().contains("$1"), "{err}");
        let err = bind(&mut buf, "s", &[Type::INT8, Type::INT8], &[&v]).unwrap_err();
        assert!(
            err.to_string().contains("2 parameters but 1 was given"),
            "{err}"
        );
        bind(&mut buf, "s", &[Type::INT8], &[&v]).unwrap();
        assert_eq!(buf[3], b'B');
    }

    #[test]
    fn decode_frames_and_waits_for_more() {
        // ReadyForQuery('I') split across two reads.
        let mut buf = BytesMut::from(&b"Z\0\0"[..]);
        assert!(decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"\0\x05I");
        match decode(&mut buf).unwrap() {
            Some(Message::ReadyForQuery(b)) => assert_eq!(b.status(), b'I'),
            _ => panic!("expected ReadyForQuery"),
        }
        assert!(buf.is_empty());
        let mut bad = BytesMut::from(&b"Z\0\0\0\x01"[..]);
        assert!(decode(&mut bad).is_err());
    }

    #[test]
    fn headers_are_believed_only_as_far_as_their_type_allows() {
        use Phase::{Session, Startup};
        let err = |tag, len, phase| check_header(tag, len, phase).unwrap_err().to_string();
        // The long-capable types take anything up to 1 GiB, the rest libpq's 30000 bytes.
        for tag in *b"DTdENA" {
            check_header(tag, MAX_MESSAGE_LEN, Session).unwrap();
            assert!(err(tag, MAX_MESSAGE_LEN + 1, Session).contains("1 GiB"));
        }
        for (tag, name) in [(b'S', "ParameterStatus"), (b'C', "CommandComplete")] {
            check_header(tag, 30_000, Session).unwrap();
            let e = err(tag, 30_001, Session);
            assert!(e.contains(name) && e.contains("30001"), "{e}");
        }
        // Fixed sizes are exact.
        check_header(b'Z', 5, Session).unwrap();
        let e = err(b'Z', 1 << 30, Session);
        assert!(
            e.contains("ReadyForQuery ('Z')") && e.contains("always 5"),
            "{e}"
        );
        assert!(err(b'1', 5, Session).contains("ParseComplete"));
        assert!(err(b'K', 8, Startup).contains("BackendKeyData"));
        // Statements may have up to 65535 parameters.
        check_header(b't', 6 + 4 * 65_535, Session).unwrap();
        assert!(check_header(b't', 7 + 4 * 65_535, Session).is_err());
        // A length word below its own size.
        assert!(err(b'D', 3, Session).contains("at least 4"));
        // Unknown and unasked-for types fail on their header.
        let e = err(b'q', 8, Session);
        assert!(e.contains("unknown type 'q'"), "{e}");
        assert!(err(0, 8, Session).contains("unknown type 0x00"));
        assert!(err(b'W', 8, Session).contains("CopyBothResponse"));
        assert!(err(b'V', 8, Session).contains("never asks for"));
    }

    #[test]
    fn start_up_takes_fewer_and_shorter_messages() {
        use Phase::{Session, Startup};
        // Authentication requests are small at any time.
        check_header(b'R', 2_000, Startup).unwrap();
        let e = check_header(b'R', 1 << 30, Startup)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Authentication ('R')"), "{e}");
        assert!(check_header(b'R', 2_001, Session).is_err());
        // Errors are short during start-up, long after it.
        assert!(check_header(b'E', 30_001, Startup).is_err());
        check_header(b'E', 30_001, Session).unwrap();
        // Rows and the like have no place in start-up; neither has an HTTP answer.
        for tag in *b"DT12CHn" {
            let e = check_header(tag, 8, Startup).unwrap_err().to_string();
            assert!(e.contains("during start-up"), "{e}");
        }
        let http = u32::from_be_bytes(*b"TTP/");
        let e = check_header(b'H', http, Startup).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Protocol);
        assert!(e.to_string().contains("host and port"), "{e}");
    }
}
