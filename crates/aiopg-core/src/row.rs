//! Rows and their columns.
//!
//! A [`Row`] keeps the `DataRow` message body it came from (a reference-counted slice of the
//! connection's read buffer, never a copy) and decodes a value only when asked.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use postgres_protocol::message::backend::RowDescriptionBody;
use postgres_types::{FromSql, Oid, Type, WasNull};

use crate::error::{Error, Result};

/// A result column: its name and type, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    name: String,
    type_: Type,
    table_oid: Option<Oid>,
    column_id: Option<i16>,
    type_size: i16,
    type_modifier: i32,
}

impl Column {
    /// The column's name (its alias when the query gives one).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The column's type.
    pub fn type_(&self) -> &Type {
        &self.type_
    }
    /// The OID of the table the column comes from, when it is a plain table column.
    pub fn table_oid(&self) -> Option<Oid> {
        self.table_oid
    }
    /// The column's attribute number in that table.
    pub fn column_id(&self) -> Option<i16> {
        self.column_id
    }
    /// `pg_type.typlen`: the type's size in bytes, negative for variable-length types.
    pub fn type_size(&self) -> i16 {
        self.type_size
    }
    /// The same column with its type replaced: layers that resolve types the client did not
    /// know (enums, composites, domains, extension types) use this.
    #[doc(hidden)]
    pub fn with_type(mut self, type_: Type) -> Column {
        self.type_ = type_;
        self
    }

    /// `pg_attribute.atttypmod`: the type modifier (varchar length, numeric precision...), -1
    /// when none.
    pub fn type_modifier(&self) -> i32 {
        self.type_modifier
    }
}

/// Builds a type for an OID: the built-in type, or a placeholder naming the OID for types the
/// client does not know (enums, composites and domains are resolved by higher layers).
#[doc(hidden)]
pub fn type_for_oid(oid: Oid) -> Type {
    Type::from_oid(oid).unwrap_or_else(|| {
        Type::new(
            format!("oid{oid}"),
            oid,
            postgres_types::Kind::Simple,
            "unknown".into(),
        )
    })
}

/// Parses a `RowDescription` message into columns.
#[doc(hidden)]
pub fn parse_row_description(body: &RowDescriptionBody) -> Result<Vec<Column>> {
    use fallible_iterator::FallibleIterator;
    let mut fields = body.fields();
    let mut columns = Vec::with_capacity(fields.size_hint().0);
    while let Some(f) = fields
        .next()
        .map_err(|e| Error::protocol(format!("malformed RowDescription: {e}")))?
    {
        columns.push(Column {
            name: f.name().to_owned(),
            type_: type_for_oid(f.type_oid()),
            table_oid: (f.table_oid() != 0).then_some(f.table_oid()),
            column_id: (f.column_id() != 0).then_some(f.column_id()),
            type_size: f.type_size(),
            type_modifier: f.type_modifier(),
        });
    }
    Ok(columns)
}

/// A column index: a position (`usize`) or a column name (`&str`).
pub trait RowIndex: fmt::Display + sealed::Sealed {
    /// The position of this column among `columns`, if there is one.
    fn index(&self, columns: &[Column]) -> Option<usize>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for usize {}
    impl Sealed for str {}
    impl<T: ?Sized + Sealed> Sealed for &T {}
}

impl RowIndex for usize {
    #[inline]
    fn index(&self, columns: &[Column]) -> Option<usize> {
        (*self < columns.len()).then_some(*self)
    }
}

impl RowIndex for str {
    #[inline]
    fn index(&self, columns: &[Column]) -> Option<usize> {
        // An exact match first, then a case-insensitive one, as psycopg does for dict rows.
        columns.iter().position(|c| c.name == self).or_else(|| {
            columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(self))
        })
    }
}

impl<T: ?Sized + RowIndex> RowIndex for &T {
    #[inline]
    fn index(&self, columns: &[Column]) -> Option<usize> {
        T::index(*self, columns)
    }
}

/// Where a `DataRow` message's values start: tag (1), length (4), column count (2).
const VALUES: usize = 7;
/// How many columns' positions a row remembers; later columns are found by walking on from
/// the last remembered one.
const REMEMBERED: usize = 8;

/// One row of a result, in PostgreSQL's binary format.
///
/// The row holds its whole `DataRow` message (a slice of the connection's read buffer) and the
/// positions of its first columns, so `get` finds a value without scanning and a row costs no
/// allocation of its own.
#[derive(Clone)]
pub struct Row {
    columns: Arc<[Column]>,
    frame: Bytes,
    /// Positions of the length words of the first [`REMEMBERED`] columns, when the message is
    /// short enough for `u16` positions.
    offsets: [u16; REMEMBERED],
}

impl Row {
    /// Wraps a whole `DataRow` message (tag and length included), checking that it holds one
    /// well-formed value per column.
    #[doc(hidden)]
    pub fn from_frame(columns: Arc<[Column]>, frame: Bytes) -> Result<Row> {
        let count = frame
            .get(5..7)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| Error::protocol("DataRow too short"))?;
        if count != columns.len() {
            return Err(Error::protocol(format!(
                "DataRow has {count} values but its RowDescription {} columns",
                columns.len()
            )));
        }
        let mut offsets = [0u16; REMEMBERED];
        let small = frame.len() <= u16::MAX as usize;
        // One pass over the length words now means `get` never meets a malformed row later.
        let mut pos = VALUES;
        for i in 0..count {
            if let Some(slot) = offsets.get_mut(i).filter(|_| small) {
                *slot = pos as u16;
            }
            let len = read_len(&frame, pos)
                .ok_or_else(|| Error::protocol("DataRow is shorter than its column count"))?;
            pos += 4;
            if len > 0 {
                pos += len as usize;
            } else if len < -1 {
                return Err(Error::protocol("DataRow has a negative value length"));
            }
        }
        if pos != frame.len() {
            return Err(Error::protocol(
                "DataRow lengths do not add up to the message length",
            ));
        }
        Ok(Row {
            columns,
            frame,
            offsets,
        })
    }

    /// The same row described by `columns`, which must be as many: for a layer that learns
    /// the columns' full types (an enum's labels, a composite's fields) after the row arrived.
    #[doc(hidden)]
    pub fn with_columns(self, columns: Arc<[Column]>) -> Result<Row> {
        if columns.len() != self.columns.len() {
            return Err(Error::protocol(format!(
                "{} columns given for a row of {}",
                columns.len(),
                self.columns.len()
            )));
        }
        Ok(Row { columns, ..self })
    }

    /// The row's columns.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// True when the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Decodes a column's value.
    ///
    /// # Panics
    ///
    /// When the column does not exist or its value cannot be decoded as `T`; [`Row::try_get`]
    /// returns those as errors instead.
    ///
    /// ```no_run
    /// # async fn f(row: &aiopg_core::row::Row) {
    /// let id: i32 = row.get(0);
    /// let name: Option<String> = row.get("name");
    /// # }
    /// ```
    #[track_caller]
    #[inline]
    pub fn get<'a, T: FromSql<'a>>(&'a self, idx: impl RowIndex) -> T {
        match self.try_get(idx) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// Decodes a column's value, with an error naming the column and both types when it cannot.
    #[inline]
    pub fn try_get<'a, T: FromSql<'a>>(&'a self, idx: impl RowIndex) -> Result<T> {
        let i = match idx.index(&self.columns) {
            Some(i) => i,
            None => return Err(self.unknown_column(&idx)),
        };
        let ty = &self.columns[i].type_;
        if !T::accepts(ty) {
            return Err(self.wrong_type::<T>(i));
        }
        T::from_sql_nullable(ty, self.raw(i)).map_err(|e| self.decode_failed::<T>(i, e))
    }

    #[cold]
    fn wrong_type<T>(&self, i: usize) -> Error {
        let column = &self.columns[i];
        Error::decode(
            format!(
                "column {i} `{}` has PostgreSQL type {}, which cannot be read as Rust type {}",
                column.name,
                column.type_,
                std::any::type_name::<T>()
            ),
            None,
        )
    }

    #[cold]
    fn decode_failed<T>(&self, i: usize, e: Box<dyn std::error::Error + Sync + Send>) -> Error {
        let column = &self.columns[i];
        if e.is::<WasNull>() {
            Error::decode(
                format!(
                    "column {i} `{}` is NULL, which Rust type {} cannot hold: read it as Option<_>",
                    column.name,
                    std::any::type_name::<T>()
                ),
                Some(e),
            )
        } else {
            Error::decode(
                format!(
                    "column {i} `{}` (PostgreSQL type {}) could not be decoded as Rust type {}",
                    column.name,
                    column.type_,
                    std::any::type_name::<T>()
                ),
                Some(e),
            )
        }
    }

    /// The raw binary value of column `i` (`None` for NULL).
    ///
    /// # Panics
    ///
    /// When `i` is out of range.
    #[inline]
    pub fn raw(&self, i: usize) -> Option<&[u8]> {
        assert!(i < self.columns.len(), "column index {i} out of range");
        let small = self.frame.len() <= u16::MAX as usize;
        let (mut col, mut pos) = if small {
            let k = i.min(REMEMBERED - 1);
            (k, self.offsets[k] as usize)
        } else {
            (0, VALUES)
        };
        // `from_frame` checked the layout, so these reads stay in bounds.
        loop {
            let len = read_len(&self.frame, pos).unwrap_or(-1);
            pos += 4;
            if col == i {
                return (len >= 0).then(|| &self.frame[pos..pos + len as usize]);
            }
            if len > 0 {
                pos += len as usize;
            }
            col += 1;
        }
    }

    fn unknown_column(&self, idx: &dyn fmt::Display) -> Error {
        let known: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        Error::usage(format!(
            "no column {idx} in this row (it has {} columns: {})",
            known.len(),
            known.join(", ")
        ))
    }
}

#[inline]
fn read_len(buf: &[u8], pos: usize) -> Option<i32> {
    let b = buf.get(pos..pos + 4)?;
    Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values are data the application may consider secret: show the shape only.
        f.debug_struct("Row")
            .field(
                "columns",
                &self
                    .columns
                    .iter()
                    .map(|c| (c.name.as_str(), c.type_.name()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A row of a simple-protocol query, whose values come back as text.
#[derive(Clone)]
pub struct SimpleRow {
    columns: Arc<[Column]>,
    body: Bytes,
    ranges: Vec<Option<Range<usize>>>,
}

impl SimpleRow {
    /// Wraps a whole `DataRow` message (tag and length included) of a simple query.
    #[doc(hidden)]
    pub fn from_frame(columns: Arc<[Column]>, frame: Bytes) -> Result<SimpleRow> {
        // The binary row's checks apply unchanged; text values are then checked for UTF-8.
        let row = Row::from_frame(columns, frame)?;
        let mut ranges = Vec::with_capacity(row.len());
        let base = row.frame.as_ptr() as usize;
        for i in 0..row.len() {
            let r = row.raw(i).map(|v| {
                let start = v.as_ptr() as usize - base;
                start..start + v.len()
            });
            if let Some(r) = &r {
                std::str::from_utf8(&row.frame[r.clone()]).map_err(|e| {
                    Error::decode("a text value is not valid UTF-8", Some(Box::new(e)))
                })?;
            }
            ranges.push(r);
        }
        Ok(SimpleRow {
            columns: row.columns,
            body: row.frame,
            ranges,
        })
    }

    /// The row's columns.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// True when the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The text of a column, `None` for NULL.
    ///
    /// # Panics
    ///
    /// When the column does not exist; [`SimpleRow::try_get`] returns an error instead.
    #[track_caller]
    pub fn get(&self, idx: impl RowIndex) -> Option<&str> {
        match self.try_get(idx) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// The text of a column, `None` for NULL, or an error naming the known columns.
    pub fn try_get(&self, idx: impl RowIndex) -> Result<Option<&str>> {
        let i = idx.index(&self.columns).ok_or_else(|| {
            let known: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
            Error::usage(format!(
                "no column {idx} in this row (it has {} columns: {})",
                known.len(),
                known.join(", ")
            ))
        })?;
        Ok(self.ranges[i].clone().map(|r| {
            // Checked in `new`.
            std::str::from_utf8(&self.body[r]).unwrap_or_default()
        }))
    }
}

impl fmt::Debug for SimpleRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleRow")
            .field("columns", &self.columns.len())
            .finish()
    }
}
