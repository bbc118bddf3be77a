//! Row streams, and the query shapes users reach for (`query_one`, `query_opt`, `query_as`,
//! `query_scalar`).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_core::Stream;

use aiopg_core::from_row::FromRow;
use aiopg_core::row::{Column, Row};
use aiopg_core::types::FromSqlOwned;
use aiopg_core::{Error, ErrorKind, Result, TransactionStatus};

use crate::collect::{Collector, StreamRows};
use crate::connection::{encode_execute, is_stale_statement, Param};
use crate::trace::{self, StatementTrace};
use crate::{Connection, Statement};

/// The rows of one statement, decoded as they arrive: from [`Connection::query_stream`].
///
/// Memory stays bounded whatever the result size: the stream takes the rows the connection
/// has read in batches, and when 256 rows (or 256 KiB of them) wait in the connection beside
/// the batch being handed out, the connection stops reading the socket until the owner takes
/// them. Other requests on the connection wait behind the stream meanwhile
/// (the server answers in order), so poll it to the end or drop it.
///
/// # Cancel safety
///
/// `poll_next` is cancel safe: a row is taken from the connection only when it is returned,
/// so dropping a `next()` future (in a `select!`, say) loses no row, and polling again goes
/// on where it stopped.
///
/// Dropping the stream before its end keeps the connection in step: the statement runs to
/// its end on the server, and the rest of the result is read and discarded by whoever drives
/// the connection next (requests issued after the stream wait until then). The server still
/// sends it all: to stop a long result early, use `LIMIT`, a named cursor, or
/// [`Connection::cancel`]. Dropping it before its request was written takes the request
/// back, and nothing runs.
pub struct RowStream {
    conn: Connection,
    id: u64,
    /// Rows taken from the connection in one go, handed out without its lock.
    rows: std::vec::IntoIter<Row>,
    columns: Arc<[Column]>,
    done: bool,
    rows_affected: Option<u64>,
    tag: Option<String>,
    /// The statement's span, open until the last row (or an error) is read, or the drop.
    trace: StatementTrace,
}

impl fmt::Debug for RowStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowStream")
            .field("columns", &self.columns.len())
            .field("done", &self.done)
            .field("tag", &self.tag)
            .finish()
    }
}

impl RowStream {
    /// The result columns.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The result columns, shared (every row of the stream holds the same list).
    pub fn shared_columns(&self) -> Arc<[Column]> {
        self.columns.clone()
    }

    /// Rows returned or affected, once the stream has ended (`None` before, and for commands
    /// without a count).
    pub fn rows_affected(&self) -> Option<u64> {
        self.rows_affected
    }

    /// The command tag (`SELECT 5`), once the stream has ended.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
}

impl RowStream {
    /// Up to `max` rows at once, as many as the stream holds now (at least one), or waits for
    /// some: the bulk form of `poll_next`, for a caller that collects rows (aiopg.sa's
    /// `fetchall`) and would otherwise pay a poll per row. `Ready(None)` once the result has
    /// ended; `Ready(Some(Err(..)))` for the error that ended it. With `max` 0 it returns an
    /// empty batch at once.
    ///
    /// When `max` covers the batch the stream holds, the returned `Vec` is that batch itself:
    /// the rows are not copied, and the caller owns them without another allocation.
    ///
    /// # Cancel safety
    ///
    /// As `poll_next`: rows leave the stream only when they are returned.
    pub fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Option<Result<Vec<Row>>>> {
        if max > 0 && self.rows.len() == 0 {
            return Poll::Ready(match ready!(self.poll_fill(cx)) {
                Some(Ok(batch)) if batch.len() <= max => Some(Ok(batch)),
                Some(Ok(batch)) => {
                    self.rows = batch.into_iter();
                    Some(Ok(self.rows.by_ref().take(max).collect()))
                }
                Some(Err(e)) => Some(Err(e)),
                None => None,
            });
        }
        let rows = if max >= self.rows.len() {
            // Collecting a whole `vec::IntoIter` reuses its buffer.
            std::mem::take(&mut self.rows).collect()
        } else {
            self.rows.by_ref().take(max).collect()
        };
        Poll::Ready(Some(Ok(rows)))
    }

    /// The next batch from the connection (the stream's own is empty): `Some(Ok(..))` with at
    /// least one row, the error that ended the result, or `None` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Vec<Row>>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut batch = Vec::new();
        let mut st = self.conn.shared.lock();
        match st.poll_buffered::<StreamRows>(self.id, cx, &mut batch) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(()))) => {
                drop(st);
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                drop(st);
                self.trace.finish(Some(&e));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let (affected, tag) = st
                    .finish_buffered::<StreamRows>(self.id)
                    .unwrap_or_default();
                drop(st);
                self.done = true;
                self.rows_affected = affected;
                self.tag = tag;
                self.trace.finish(None);
                Poll::Ready(None)
            }
        }
    }
}

impl Stream for RowStream {
    type Item = Result<Row>;

    #[inline]
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Row>>> {
        let this = &mut *self;
        if let Some(row) = this.rows.next() {
            return Poll::Ready(Some(Ok(row)));
        }
        Poll::Ready(match ready!(this.poll_fill(cx)) {
            Some(Ok(batch)) => {
                this.rows = batch.into_iter();
                this.rows.next().map(Ok)
            }
            Some(Err(e)) => Some(Err(e)),
            None => None,
        })
    }
}

impl Drop for RowStream {
    fn drop(&mut self) {
        if !self.done {
            self.conn.shared.lock().abandon(self.id);
        }
    }
}

impl Connection {
    /// Runs a statement and streams its rows as they arrive, in bounded memory (see
    /// [`RowStream`]); tokio-postgres calls this `query_raw`, sqlx `fetch`.
    ///
    /// ```no_run
    /// # async fn f(conn: &aiopg_conn::Connection) -> aiopg_core::Result<()> {
    /// use futures_util::TryStreamExt;
    /// let mut rows = conn.query_stream("SELECT g FROM generate_series(1, $1) g", &[&1_000_000i32]).await?;
    /// let mut sum = 0i64;
    /// while let Some(row) = rows.try_next().await? {
    ///     sum += i64::from(row.get::<i32>(0));
    /// }
    /// assert_eq!(rows.rows_affected(), Some(1_000_000));
    /// # Ok(()) }
    /// ```
    ///
    /// Unlike [`query`](Self::query), a statement gone stale after a schema change is not run
    /// again transparently (rows may already have been handed out): the stream yields the
    /// error, and the statement is prepared afresh on the next call.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step. Dropped while the statement is being
    /// prepared, nothing runs (a statement the server prepared for nobody is closed later). The
    /// execution is queued in the poll that returns the stream, so once this future has completed
    /// the [`RowStream`] owns it; see its cancel safety.
    pub async fn query_stream(&self, sql: &str, params: &[Param<'_>]) -> Result<RowStream> {
        // The stream's span covers the statement's preparation too.
        let mut trace = StatementTrace::start(&self.shared, sql);
        match trace::in_span(&trace.span, self.prepare_cached(sql)).await {
            Ok(stmt) => self.stream(&stmt, params, trace),
            Err(e) => {
                trace.finish(Some(&e));
                Err(e)
            }
        }
    }

    /// [`query_stream`](Self::query_stream) for a prepared statement. The request is queued
    /// at once; rows arrive as the stream is polled.
    ///
    /// Not async: there is nothing to cancel. Dropping the returned [`RowStream`] is covered in its
    /// [cancel safety](RowStream#cancel-safety) section.
    pub fn query_stream_prepared(
        &self,
        stmt: &Statement,
        params: &[Param<'_>],
    ) -> Result<RowStream> {
        self.stream(
            stmt,
            params,
            StatementTrace::start(&self.shared, stmt.sql()),
        )
    }

    /// Queues `stmt`'s execution; its rows go to the stream returned, which ends `trace`.
    fn stream(
        &self,
        stmt: &Statement,
        params: &[Param<'_>],
        mut trace: StatementTrace,
    ) -> Result<RowStream> {
        let columns = stmt.columns_arc().clone();
        let id = self
            .issue(|st| {
                encode_execute(st, stmt, params)?;
                Ok(Collector::stream(columns.clone()))
            })
            .inspect_err(|e| trace.finish(Some(e)))?;
        Ok(RowStream {
            conn: self.clone(),
            id,
            rows: Vec::new().into_iter(),
            columns,
            done: false,
            rows_affected: None,
            tag: None,
            trace,
        })
    }

    /// Runs a statement that returns exactly one row, and returns it. Zero rows or more than
    /// one is an error of kind [`ErrorKind::RowCount`].
    ///
    /// # Cancel safety
    ///
    /// As [`query`](Self::query): taken back if unsent, otherwise run to its end with its rows
    /// discarded.
    pub async fn query_one(&self, sql: &str, params: &[Param<'_>]) -> Result<Row> {
        let mut rows = self.query(sql, params).await?;
        match rows.len() {
            1 => Ok(rows.pop().expect("one row")),
            n => Err(row_count(n, "exactly one")),
        }
    }

    /// Runs a statement that returns at most one row: `None` for none, an error of kind
    /// [`ErrorKind::RowCount`] for more than one.
    ///
    /// # Cancel safety
    ///
    /// As [`query`](Self::query): taken back if unsent, otherwise run to its end with its rows
    /// discarded.
    pub async fn query_opt(&self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>> {
        let mut rows = self.query(sql, params).await?;
        match rows.len() {
            0 => Ok(None),
            1 => Ok(rows.pop()),
            n => Err(row_count(n, "at most one")),
        }
    }

    /// Runs a statement and builds a `T` out of each row ([`FromRow`]: tuples, or
    /// `#[derive(FromRow)]` structs), decoding rows as they arrive: the raw rows are never all
    /// held at once, so the peak memory is about the `Vec<T>` alone.
    ///
    /// ```no_run
    /// # async fn f(conn: &aiopg_conn::Connection) -> aiopg_core::Result<()> {
    /// let users: Vec<(i32, String)> = conn.query_as("SELECT id, name FROM users", &[]).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// A cached statement gone stale is prepared and run again once, as with
    /// [`query`](Self::query) (no row has reached the caller by then).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step: as [`query`](Self::query) before the
    /// rows start, and as a dropped [`RowStream`] after (the rows decoded so far are dropped, the
    /// rest is read and discarded).
    pub async fn query_as<T: FromRow>(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<T>> {
        trace::statement(&self.shared, sql, self.query_as_inner(sql, params)).await
    }

    async fn query_as_inner<T: FromRow>(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<T>> {
        let mut retried = false;
        loop {
            let stmt = self.prepare_cached(sql).await?;
            // The statement's span is query_as's own.
            let mut rows = self.stream(&stmt, params, StatementTrace::none())?;
            let mut out = Vec::new();
            loop {
                match std::future::poll_fn(|cx| Pin::new(&mut rows).poll_next(cx)).await {
                    Some(Ok(row)) => out.push(T::from_row(&row)?),
                    None => return Ok(out),
                    Some(Err(e)) if !retried && out.is_empty() && is_stale_statement(&e) => {
                        drop(rows);
                        self.shared.lock().statements.remove(sql);
                        if self.transaction_status() != TransactionStatus::Idle {
                            return Err(e);
                        }
                        retried = true;
                        break;
                    }
                    Some(Err(e)) => return Err(e),
                }
            }
        }
    }

    /// Runs a statement that returns one row, and returns its first column.
    ///
    /// ```no_run
    /// # async fn f(conn: &aiopg_conn::Connection) -> aiopg_core::Result<()> {
    /// let n: i64 = conn.query_scalar("SELECT count(*) FROM pg_class", &[]).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As [`query`](Self::query): taken back if unsent, otherwise run to its end with its answer
    /// discarded.
    pub async fn query_scalar<T: FromSqlOwned>(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<T> {
        let row = self.query_one(sql, params).await?;
        if row.is_empty() {
            return Err(Error::new(
                ErrorKind::RowCount,
                "query_scalar: the statement returns no columns",
                None,
            ));
        }
        row.try_get(0)
    }
}

fn row_count(n: usize, wanted: &str) -> Error {
    Error::new(
        ErrorKind::RowCount,
        format!("the statement returned {n} rows, but {wanted} was expected"),
        None,
    )
}
