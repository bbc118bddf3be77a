//! aiopg.sa's `ResultProxy` and `RowProxy`, over a row stream (bounded memory).

use std::fmt;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use aiopg_conn::{Row, RowStream};
use aiopg_core::from_row::FromRow;
use aiopg_core::types::FromSqlOwned;
use aiopg_core::{Error, Result};

/// One row of a [`ResultProxy`]: read by index or by column name
/// (`row.get::<i32>("id")`; an unknown name is an error listing the known ones), or into a
/// [`FromRow`] type. It derefs to aiopg's [`Row`].
#[derive(Debug)]
pub struct RowProxy(Row);

impl RowProxy {
    /// The row as a `FromRow` type.
    pub fn to<T: FromRow>(&self) -> Result<T> {
        T::from_row(&self.0)
    }

    /// The column names, in order (aiopg.sa's `keys()`).
    pub fn keys(&self) -> Vec<&str> {
        self.0.columns().iter().map(|c| c.name()).collect()
    }

    /// The underlying row.
    pub fn into_row(self) -> Row {
        self.0
    }
}

impl Deref for RowProxy {
    type Target = Row;

    fn deref(&self) -> &Row {
        &self.0
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
pub struct ResultProxy {
    source: Source,
    keys: Vec<String>,
    returns_rows: bool,
    rowcount: i64,
    closed: bool,
}

impl fmt::Debug for ResultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResultProxy")
            .field("keys", &self.keys)
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
        let keys: Vec<String> = stream
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        if keys.is_empty() {
            while let Some(row) = next(&mut stream).await {
                row?;
            }
            return Ok(ResultProxy {
                rowcount: stream.rows_affected().map_or(-1, |n| n as i64),
                source: Source::Done,
                keys,
                returns_rows: false,
                closed: true,
            });
        }
        Ok(ResultProxy {
            source: Source::Rows(stream),
            keys,
            returns_rows: true,
            rowcount: -1,
            closed: false,
        })
    }

    /// A result with no rows (a schema statement).
    pub(crate) fn empty() -> ResultProxy {
        ResultProxy {
            source: Source::Done,
            keys: Vec::new(),
            returns_rows: false,
            rowcount: -1,
            closed: true,
        }
    }

    /// The column names.
    pub fn keys(&self) -> &[String] {
        &self.keys
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
    pub async fn fetchone(&mut self) -> Result<Option<RowProxy>> {
        if self.closed {
            return Err(closed_error());
        }
        let Source::Rows(stream) = &mut self.source else {
            return Err(closed_error());
        };
        match next(stream).await {
            Some(Ok(row)) => Ok(Some(RowProxy(row))),
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
    pub async fn fetchmany(&mut self, n: usize) -> Result<Vec<RowProxy>> {
        let mut out = Vec::with_capacity(n.min(1024));
        while out.len() < n {
            match self.fetchone().await? {
                Some(row) => out.push(row),
                None => break,
            }
        }
        Ok(out)
    }

    /// Every remaining row; the result closes.
    pub async fn fetchall(&mut self) -> Result<Vec<RowProxy>> {
        let mut out = Vec::new();
        while let Some(row) = self.fetchone().await? {
            out.push(row);
        }
        Ok(out)
    }

    /// The first row, and the result closes (the rest is discarded).
    pub async fn first(&mut self) -> Result<Option<RowProxy>> {
        let row = self.fetchone().await?;
        self.close();
        Ok(row)
    }

    /// The first column of the first row (`None` without rows, or for NULL); the result
    /// closes.
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
            Poll::Ready(Some(Ok(row))) => Poll::Ready(Some(Ok(RowProxy(row)))),
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
