//! Typed rows: [`FromRow`] builds a Rust value out of a whole [`Row`].
//!
//! Tuples of up to 16 elements read the row's columns by position; structs get an
//! implementation from `#[derive(FromRow)]` (the `aiopg` crate's `derive` feature), which reads
//! each field from the column of the same name.
//!
//! ```no_run
//! use aiopg_core::from_row::FromRow;
//! use aiopg_core::Row;
//!
//! # fn f(row: &Row) -> aiopg_core::Result<()> {
//! // `SELECT id, name, email FROM users`
//! let (id, name, email) = <(i32, String, Option<String>)>::from_row(row)?;
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::row::{Row, RowIndex};
use postgres_types::FromSqlOwned;

/// A type built from a whole [`Row`].
///
/// Implemented for tuples of 1 to 16 elements, whose elements each implement
/// [`FromSqlOwned`] and are read by position, and for structs
/// with `#[derive(FromRow)]`. Decoding never panics: a missing column, a value of the wrong
/// type or a NULL read into a non-`Option` is an [`Error`] naming the column.
///
/// Implementing it by hand takes one function:
///
/// ```
/// use aiopg_core::from_row::FromRow;
/// use aiopg_core::{Result, Row};
///
/// struct User {
///     id: i32,
///     name: String,
/// }
///
/// impl FromRow for User {
///     fn from_row(row: &Row) -> Result<Self> {
///         Ok(User { id: row.try_get("id")?, name: row.try_get("name")? })
///     }
/// }
/// ```
pub trait FromRow: Sized {
    /// Builds a value out of `row`, or says which column could not be read and why.
    fn from_row(row: &Row) -> Result<Self>;
}

/// Checks that `row` has exactly `expected` columns, for a value of type `target` that reads
/// its columns by position (a tuple or a tuple struct).
///
/// The error is a decode error giving both counts and the row's column names.
pub fn check_column_count(row: &Row, expected: usize, target: &str) -> Result<()> {
    if row.len() == expected {
        Ok(())
    } else {
        Err(column_count_mismatch(row, expected, target))
    }
}

#[cold]
fn column_count_mismatch(row: &Row, expected: usize, target: &str) -> Error {
    let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    Error::decode(
        format!(
            "{target} reads {expected} column{} by position, but the row has {} column{}: {}",
            plural(expected),
            names.len(),
            plural(names.len()),
            if names.is_empty() {
                "(none)".to_owned()
            } else {
                names.join(", ")
            }
        ),
        None,
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// True when `row` has a column `name`, matched as [`Row::try_get`] matches names (exactly,
/// else ignoring ASCII case).
pub fn has_column(row: &Row, name: &str) -> bool {
    name.index(row.columns()).is_some()
}

/// Helpers for the code `#[derive(FromRow)]` generates; not a public API.
#[doc(hidden)]
pub mod __derive {
    use super::*;

    /// Says which field of which type an error happened in.
    #[cold]
    pub fn field_error(error: Error, ty: &str, field: &str) -> Error {
        error.context(format_args!("field `{field}` of `{ty}`"))
    }

    /// A `#[aiopg(try_from = "...")]` conversion failed. The value is not quoted (it may be
    /// secret), nor is the conversion's own error, which may quote it.
    #[cold]
    pub fn try_from_failed(from: &str, into: &str) -> Error {
        Error::decode(
            format!("the column's value, read as `{from}`, does not convert into `{into}`"),
            None,
        )
    }
}

macro_rules! tuple_impls {
    ($($len:literal => ($($idx:tt $t:ident),+))+) => {$(
        impl<$($t: FromSqlOwned),+> FromRow for ($($t,)+) {
            #[inline]
            fn from_row(row: &Row) -> Result<Self> {
                check_column_count(row, $len, std::any::type_name::<Self>())?;
                Ok(($(row.try_get::<$t>($idx)?,)+))
            }
        }
    )+};
}

tuple_impls! {
    1 => (0 T0)
    2 => (0 T0, 1 T1)
    3 => (0 T0, 1 T1, 2 T2)
    4 => (0 T0, 1 T1, 2 T2, 3 T3)
    5 => (0 T0, 1 T1, 2 T2, 3 T3, 4 T4)
    6 => (0 T0, 1 T1, 2 T2, 3 T3, 4 T4, 5 T5)
    7 => (0 T0, 1 T1, 2 T2, 3 T3, 4 T4, 5 T5, 6 T6)
    8 => (0 T0, 1 T1, 2 T2, 3 T3, 4 T4, 5 T5, 6 T6, 7 T7)
    9 => (0 T0, 1 T1, 2 T2, 3 T3, 4 T4, 5 T5, 6 T6, 7 T7, 8 T8)
    10 => (0 T0, 1 T1, 2 T2, 3 T3, 4 T4, 5 T5, 6 T6, 7 T7, 8 T8, 9 T9)
    11 => (0 T0, 1 T1, 2 T2, 3 T3, 4 T4, 5 T5, 6 T6, 7 T7, 8 T8, 9 T9, 10 T10)
    12 => (0 T0, 1 T1, 2 T2, 3 T3, 4 T4, 5 T5, 6 T6, 7 T7, 8 T8, 9 T9, 10 T10, 11 T11)
    13 => (0 T0, 1 T1, 2 T2, 3 T3, 4 T4, 5 T5, 6 T6, 7 T7, 8 T8, 9 T9, 10 T10, 11 T11, 12 T12)
    14 => (0 T0, 1 T1, 2 T2, 3 T3, 4 T4, 5 T5, 6 T6, 7 T7, 8 T8, 9 T9, 10 T10, 11 T11, 12 T12,
        13 T13)
    15 => (0 T0, 1 T1, 2 T2, 3 T3, 4 T4, 5 T5, 6 T6, 7 T7, 8 T8, 9 T9, 10 T10, 11 T11, 12 T12,
        13 T13, 14 T14)
    16 => (0 T0, 1 T1, 2 T2, 3 T3, 4 T4, 5 T5, 6 T6, 7 T7, 8 T8, 9 T9, 10 T10, 11 T11, 12 T12,
        13 T13, 14 T14, 15 T15)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::{BufMut, BytesMut};
    use postgres_protocol::message::backend::Message;
    use postgres_types::Type;

    use super::*;
    use crate::error::ErrorKind;
    use crate::row::parse_row_description;

    /// A row of `(name, type, value)` columns, built from the messages a server would send.
    fn row(cols: &[(&str, Type, Option<&[u8]>)]) -> Row {
        let mut body = BytesMut::new();
        body.put_i16(cols.len() as i16);
        for (name, ty, _) in cols {
            body.put_slice(name.as_bytes());
            body.put_u8(0);
            body.put_u32(0); // table
            body.put_i16(0); // column
            body.put_u32(ty.oid());
            body.put_i16(-1); // size
            body.put_i32(-1); // modifier
            body.put_i16(1); // binary
        }
        let mut msg = BytesMut::new();
        msg.put_u8(b'T');
        msg.put_i32(body.len() as i32 + 4);
        msg.put_slice(&body);
        let columns = match Message::parse(&mut msg).unwrap().unwrap() {
            Message::RowDescription(body) => parse_row_description(&body).unwrap(),
            _ => unreachable!(),
        };

        let mut body = BytesMut::new();
        body.put_i16(cols.len() as i16);
        for (_, _, value) in cols {
            match value {
                Some(v) => {
                    body.put_i32(v.len() as i32);
                    body.put_slice(v);
                }
                None => body.put_i32(-1),
            }
        }
        let mut frame = BytesMut::new();
        frame.put_u8(b'D');
        frame.put_i32(body.len() as i32 + 4);
        frame.put_slice(&body);
        Row::from_frame(Arc::from(columns), frame.freeze()).unwrap()
    }

    fn sample() -> Row {
        row(&[
            ("id", Type::INT4, Some(&7i32.to_be_bytes())),
            ("name", Type::TEXT, Some(b"ann")),
            ("note", Type::TEXT, None),
        ])
    }

    #[test]
    fn tuples_read_by_position() {
        let (id, name, note) = <(i32, String, Option<String>)>::from_row(&sample()).unwrap();
        assert_eq!((id, name.as_str(), note), (7, "ann", None));
        let one = row(&[("x", Type::BOOL, Some(&[1]))]);
        assert_eq!(<(bool,)>::from_row(&one).unwrap(), (true,));
    }

    #[test]
    fn tuple_of_wrong_arity_names_counts_and_columns() {
        let err = <(i32, String)>::from_row(&sample()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        let text = err.to_string();
        assert!(
            text.contains("reads 2 columns") && text.contains("has 3 columns: id, name, note"),
            "{text}"
        );
        let err = <(i32, String, Option<String>, i32)>::from_row(&sample()).unwrap_err();
        assert!(err.to_string().contains("reads 4 columns"), "{err}");
    }

    #[test]
    fn tuple_errors_name_the_column() {
        let err = <(i32, i32, Option<String>)>::from_row(&sample()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(err.to_string().contains("`name`"), "{err}");
        let err = <(i32, String, String)>::from_row(&sample()).unwrap_err();
        assert!(
            err.to_string().contains("`note` is NULL"),
            "NULL into String: {err}"
        );
    }

    #[test]
    fn sixteen_elements() {
        let cols: Vec<(String, [u8; 2])> = (0..16i16)
            .map(|i| (format!("c{i}"), i.to_be_bytes()))
            .collect();
        let spec: Vec<(&str, Type, Option<&[u8]>)> = cols
            .iter()
            .map(|(n, v)| (n.as_str(), Type::INT2, Some(&v[..])))
            .collect();
        type T16 = (
            i16,
            i16,
            i16,
            i16,
            i16,
            i16,
            i16,
            i16,
            i16,
            i16,
            i16,
            i16,
            i16,
            i16,
            i16,
            i16,
        );
        let t = T16::from_row(&row(&spec)).unwrap();
        assert_eq!(t.0, 0);
        assert_eq!(t.15, 15);
    }

    #[test]
    fn has_column_matches_like_try_get() {
        let r = sample();
        assert!(has_column(&r, "name"));
        assert!(has_column(&r, "NAME"));
        assert!(!has_column(&r, "missing"));
    }

    #[test]
    fn empty_row_is_reported() {
        let err = check_column_count(&row(&[]), 1, "(i32,)").unwrap_err();
        assert!(err.to_string().contains("has 0 columns: (none)"), "{err}");
    }
}
