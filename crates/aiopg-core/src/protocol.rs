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
/// data is never copied.
#[inline]
pub fn decode(buf: &mut BytesMut) -> Result<Option<Message>> {
    Message::parse(buf).map_err(|e| Error::protocol(format!("malformed message from server: {e}")))
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
                    failed = Some((index, ty.clone(), e));
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
}
