//! Rows and their columns.
//!
//! A [`Row`] keeps the `DataRow` message body it came from (a reference-counted slice of the
//! connection's read buffer, never a copy) and decodes a value only when asked.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use postgres_protocol::message::backend::{DataRowBody, RowDescriptionBody};
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
    /// `pg_attribute.atttypmod`: the type modifier (varchar length, numeric precision...), -1
    /// when none.
    pub fn type_modifier(&self) -> i32 {
        self.type_modifier
    }
}

/// Builds a type for an OID: the built-in type, or a placeholder naming the OID for types the
/// client does not know (enums, composites and domains are resolved by higher layers).
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

/// One row of a result, in PostgreSQL's binary format.
#[derive(Clone)]
pub struct Row {
    columns: Arc<[Column]>,
    body: Bytes,
}

impl Row {
    /// Wraps a `DataRow` message, checking that it holds one well-formed value per column.
    pub fn new(columns: Arc<[Column]>, body: DataRowBody) -> Result<Row> {
        let buf = body.buffer_bytes();
        // One pass over the length words now means `get` never meets a malformed row later.
        let mut pos = 0usize;
        for _ in 0..columns.len() {
            let len = read_len(buf, pos)
                .ok_or_else(|| Error::protocol("DataRow is shorter than its RowDescription"))?;
            pos += 4;
            if len >= 0 {
                pos += len as usize;
            }
        }
        if pos != buf.len() {
            return Err(Error::protocol(
                "DataRow does not match its RowDescription (column count or lengths differ)",
            ));
        }
        Ok(Row {
            columns,
            body: buf.clone(),
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

    /// Decodes a column's value.
    ///
    /// # Panics
    ///
    /// When the column does not exist or its value cannot be decoded as `T`; [`Row::try_get`]
    /// returns those as errors instead.
    ///
    /// ```no_run
    /// # async fn f(conn: &aiopg_core::row::Row) {
    /// let id: i32 = conn.get(0);
    /// let name: Option<String> = conn.get("name");
    /// # }
    /// ```
    #[track_caller]
    pub fn get<'a, T: FromSql<'a>>(&'a self, idx: impl RowIndex) -> T {
        match self.try_get(idx) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// Decodes a column's value, with an error naming the column and both types when it cannot.
    pub fn try_get<'a, T: FromSql<'a>>(&'a self, idx: impl RowIndex) -> Result<T> {
        let i = match idx.index(&self.columns) {
            Some(i) => i,
            None => return Err(self.unknown_column(&idx)),
        };
        let column = &self.columns[i];
        let ty = &column.type_;
        if !T::accepts(ty) {
            return Err(Error::decode(
                format!(
                    "column {i} `{}` has PostgreSQL type {}, which cannot be read as Rust type {}",
                    column.name,
                    ty,
                    std::any::type_name::<T>()
                ),
                None,
            ));
        }
        let raw = self.raw(i);
        T::from_sql_nullable(ty, raw).map_err(|e| {
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
                        ty,
                        std::any::type_name::<T>()
                    ),
                    Some(e),
                )
            }
        })
    }

    /// The raw binary value of column `i` (`None` for NULL).
    ///
    /// # Panics
    ///
    /// When `i` is out of range.
    pub fn raw(&self, i: usize) -> Option<&[u8]> {
        self.range(i).map(|r| &self.body[r])
    }

    #[inline]
    fn range(&self, i: usize) -> Option<Range<usize>> {
        assert!(i < self.columns.len(), "column index {i} out of range");
        // Walking the length words is cheaper than storing offsets for the narrow rows most
        // queries return, and saves an allocation per row; `new` already checked the layout.
        let mut pos = 0usize;
        let mut col = 0usize;
        loop {
            let len = read_len(&self.body, pos).unwrap_or(-1);
            pos += 4;
            if col == i {
                return (len >= 0).then(|| pos..pos + len as usize);
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
    /// Wraps a `DataRow` message of a simple query.
    pub fn new(columns: Arc<[Column]>, body: DataRowBody) -> Result<SimpleRow> {
        use fallible_iterator::FallibleIterator;
        let ranges: Vec<_> = body
            .ranges()
            .collect()
            .map_err(|e| Error::protocol(format!("malformed DataRow: {e}")))?;
        if ranges.len() != columns.len() {
            return Err(Error::protocol(
                "DataRow column count differs from its RowDescription",
            ));
        }
        for r in ranges.iter().flatten() {
            std::str::from_utf8(&body.buffer()[r.clone()])
                .map_err(|e| Error::decode("a text value is not valid UTF-8", Some(Box::new(e))))?;
        }
        Ok(SimpleRow {
            columns,
            body: body.buffer_bytes().clone(),
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
