//! aiopg.sa's `ResultProxy` and `RowProxy`, over a row stream (bounded memory).

use std::fmt;
use std::ops::{Deref, Index};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use once_cell::race::OnceBox;

use aiopg_conn::{Column, Row, RowStream};
use aiopg_core::from_row::FromRow;
use aiopg_core::types::FromSqlOwned;
use aiopg_core::{Error, Result};

use crate::value::SqlValue;

/// One row of a [`ResultProxy`], read as aiopg.sa's rows are:
///
/// - `row["name"]` and `row[0]` give the value as a [`SqlValue`] whatever its type (and, as
///   indexing a map or a slice does, panic for a column that does not exist, naming the known
///   ones);
/// - `row.get::<T>("name")` / `row.try_get::<T>(0)` decode into a Rust type (`try_get`'s error
///   for an unknown column lists the known ones);
/// - `row.to::<T>()` reads the whole row into a [`FromRow`] type.
///
/// It derefs to aiopg's [`Row`].
pub struct RowProxy {
    row: Row,
    /// Every column as a [`SqlValue`], decoded on the first `row[..]`.
    values: OnceBox<Box<[SqlValue]>>,
}

impl fmt::Debug for RowProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RowProxy").field(&self.row).finish()
    }
}

impl RowProxy {
    fn new(row: Row) -> RowProxy {
        RowProxy {
            row,
            values: OnceBox::new(),
        }
    }

    /// The row as a `FromRow` type.
    pub fn to<T: FromRow>(&self) -> Result<T> {
        T::from_row(&self.row)
    }

    /// The column names, in order (aiopg.sa's `keys()`).
    pub fn keys(&self) -> Vec<&str> {
        self.row.columns().iter().map(|c| c.name()).collect()
    }

    /// The value of a column (by index or name) as a [`SqlValue`]; an unknown column is an
    /// error listing the known ones.
    pub fn value(&self, idx: impl aiopg_core::RowIndex) -> Result<&SqlValue> {
        match idx.index(self.row.columns()) {
            Some(i) => Ok(&self.decoded()[i]),
            // try_get's error names the known columns.
            None => Err(self
                .row
                .try_get::<SqlValue>(idx)
                .err()
                .unwrap_or_else(|| Error::usage("unknown column"))),
        }
    }

    /// The underlying row.
    pub fn into_row(self) -> Row {
        self.row
    }

    /// Every value, in column order, as [`SqlValue`]s (aiopg.sa's `row.values()`).
    pub fn values(&self) -> &[SqlValue] {
        self.decoded()
    }

    /// Every column's name beside its value, in order (aiopg.sa's `row.items()`).
    pub fn items(&self) -> Vec<(&str, &SqlValue)> {
        self.row
            .columns()
            .iter()
            .map(|c| c.name())
            .zip(self.decoded())
            .collect()
    }

    fn decoded(&self) -> &[SqlValue] {
        // Two threads reading one row at once may both decode it; one result is kept.
        self.values.get_or_init(|| {
            Box::new(
                self.row
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| SqlValue::decode(c.type_(), self.row.raw(i)))
                    .collect(),
            )
        })
    }

    fn lookup(&self, idx: impl aiopg_core::RowIndex) -> &SqlValue {
        match self.value(idx) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }
}

impl Deref for RowProxy {
    type Target = Row;

    fn deref(&self) -> &Row {
        &self.row
    }
}

impl Index<usize> for RowProxy {
    type Output = SqlValue;

    /// The column at `i`; panics past the last column (use [`RowProxy::value`] for an error).
    fn index(&self, i: usize) -> &SqlValue {
        self.lookup(i)
    }
}

impl Index<&str> for RowProxy {
    type Output = SqlValue;

    /// The column named `name`; panics, naming the known columns, if there is none (use
    /// [`RowProxy::value`] for an error).
    fn index(&self, name: &str) -> &SqlValue {
        self.lookup(name)
    }
}

enum Source {
    /// Rows still to come.
    Rows(RowStream),
    /// Nothing more: exhausted, closed, or a statement without rows.
    Done,
}

/// The result of [`SAConnection::execute`](crate::SAConnection::execute), as aiopg.sa's:
/// rows are fetched as they arrive (memory stays bounded whatever the result size), the
/// result closes itself when exhausted and at once for a statement that returns no rows, and
/// fetching from a closed result is an error saying so.
///
/// # Cancel safety
///
/// [`fetchone`](Self::fetchone), [`first`](Self::first), [`scalar`](Self::scalar) and the
/// `Stream` implementation's `poll_next` are cancel safe: a row is taken from the connection
/// only when it is returned. [`fetchmany`](Self::fetchmany) and
/// [`fetchall`](Self::fetchall) are not: the rows a dropped call had taken are lost, and the
/// result goes on after them. Dropping the result, or [`close`](Self::close), keeps the
/// connection in step: the statement runs to its end, and the rows not fetched are read and
/// discarded by whoever drives the connection next.
pub struct ResultProxy {
    source: Source,
    columns: Arc<[Column]>,
    returns_rows: bool,
    rowcount: i64,
    closed: bool,
}

impl fmt::Debug for ResultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResultProxy")
            .field("keys", &self.keys())
            .field("rowcount", &self.rowcount)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

fn closed_error() -> Error {
    Error::usage("this result is closed (it was exhausted, closed, or returned no rows)")
}

impl ResultProxy {
    /// A result reading `stream`; a statement without result columns is read to its end now.
    pub(crate) async fn new(mut stream: RowStream) -> Result<ResultProxy> {
        let columns = stream.shared_columns();
        if columns.is_empty() {
            while let Some(row) = next(&mut stream).await {
                row?;
            }
            return Ok(ResultProxy {
                rowcount: stream.rows_affected().map_or(-1, |n| n as i64),
                source: Source::Done,
                columns,
                returns_rows: false,
                closed: true,
            });
        }
        Ok(ResultProxy {
            source: Source::Rows(stream),
            columns,
            returns_rows: true,
            rowcount: -1,
            closed: false,
        })
    }

    /// A result with no rows (a schema statement).
    pub(crate) fn empty() -> ResultProxy {
        ResultProxy {
            source: Source::Done,
            columns: Arc::new([]),
            returns_rows: false,
            rowcount: -1,
            closed: true,
        }
    }

    /// The column names, in order.
    pub fn keys(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name()).collect()
    }

    /// Rows affected by a statement without rows; for one with rows, how many it returned
    /// once the result is exhausted (-1 before, and when the server does not say).
    pub fn rowcount(&self) -> i64 {
        self.rowcount
    }

    /// True when the statement returns rows (even none).
    pub fn returns_rows(&self) -> bool {
        self.returns_rows
    }

    /// True once closed: exhausted, [`close`](Self::close)d, or a statement without rows.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The next row; `None` (and the result closes) once exhausted.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping the future loses no row, and the result stays open.
    pub async fn fetchone(&mut self) -> Result<Option<RowProxy>> {
        if self.closed {
            return Err(closed_error());
        }
        let Source::Rows(stream) = &mut self.source else {
            return Err(closed_error());
        };
        match next(stream).await {
            Some(Ok(row)) => Ok(Some(RowProxy::new(row))),
            Some(Err(e)) => {
                self.finish();
                Err(e)
            }
            None => {
                self.finish();
                Ok(None)
            }
        }
    }

    /// Up to `n` more rows (fewer at the end).
    ///
    /// # Cancel safety
    ///
    /// This method is not cancel safe: the rows taken before the future was dropped are lost, and
    /// the result goes on after them. Use [`fetchone`](Self::fetchone) or the `Stream`
    /// implementation in a `select!`.
    pub async fn fetchmany(&mut self, n: usize) -> Result<Vec<RowProxy>> {
        self.fetch_up_to(n).await
    }

    /// Every remaining row; the result closes.
    ///
    /// # Cancel safety
    ///
    /// This method is not cancel safe: the rows taken before the future was dropped are lost, and
    /// the result goes on after them.
    pub async fn fetchall(&mut self) -> Result<Vec<RowProxy>> {
        self.fetch_up_to(usize::MAX).await
    }

    /// Up to `n` rows in one future (not one per row); the result closes at the end.
    async fn fetch_up_to(&mut self, n: usize) -> Result<Vec<RowProxy>> {
        if self.closed {
            return Err(closed_error());
        }
        let Source::Rows(stream) = &mut self.source else {
            return Err(closed_error());
        };
        // The stream's batches as they are (not a poll per row, and no copy): the result's
        // `Vec` is sized once, at the end, so that no row is moved twice by its growth. Most
        // results are one batch, kept without a list of batches.
        let (mut first, mut more, mut total) = (Vec::new(), Vec::new(), 0);
        let end = std::future::poll_fn(|cx| {
            while total < n {
                match stream.poll_take(cx, n - total) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(rows))) => {
                        total += rows.len();
                        if first.is_empty() {
                            first = rows;
                        } else {
                            more.push(rows);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => return Poll::Ready(None),
                }
            }
            Poll::Ready(Some(Ok(())))
        })
        .await;
        if let Some(Err(e)) = end {
            self.finish();
            return Err(e);
        }
        if end.is_none() {
            self.finish();
        }
        let mut out = Vec::with_capacity(total);
        for rows in std::iter::once(first).chain(more) {
            out.extend(rows.into_iter().map(RowProxy::new));
        }
        Ok(out)
    }

    /// The first row, and the result closes (the rest is discarded).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: as [`fetchone`](Self::fetchone), and the result closes only
    /// when the call returns.
    pub async fn first(&mut self) -> Result<Option<RowProxy>> {
        let row = self.fetchone().await?;
        self.close();
        Ok(row)
    }

    /// The first column of the first row (`None` without rows, or for NULL); the result
    /// closes.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`first`](Self::first).
    pub async fn scalar<T: FromSqlOwned>(&mut self) -> Result<Option<T>> {
        match self.first().await? {
            Some(row) => row.try_get::<Option<T>>(0),
            None => Ok(None),
        }
    }

    /// Closes the result; rows not fetched are read and discarded by the connection.
    pub fn close(&mut self) {
        self.source = Source::Done;
        self.closed = true;
    }

    fn finish(&mut self) {
        if let Source::Rows(stream) = &self.source {
            if let Some(n) = stream.rows_affected() {
                self.rowcount = n as i64;
            }
        }
        self.close();
    }
}

async fn next(stream: &mut RowStream) -> Option<Result<Row>> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

impl Stream for ResultProxy {
    type Item = Result<RowProxy>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Source::Rows(stream) = &mut this.source else {
            return Poll::Ready(None);
        };
        match Pin::new(stream).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(row))) => Poll::Ready(Some(Ok(RowProxy::new(row)))),
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
        }
    }
}
