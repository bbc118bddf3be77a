//! COPY: `copy_in` (a `Sink` and `AsyncWrite` of bytes) and `copy_out` (a `Stream` and
//! `AsyncRead` of bytes), and the typed binary format over them.
//!
//! `COPY ... FROM STDIN` is an exclusive request (`exclusive.rs`): once the server has
//! answered with CopyInResponse, the writer appends CopyData messages to the request's bytes,
//! and requests issued meanwhile wait, queued behind it, until CopyDone (or CopyFail) ends
//! it. `COPY ... TO STDOUT` holds the connection only until the server starts sending (so that
//! a statement that turns out to be `COPY FROM STDIN` can be refused cleanly); its data then
//! reaches the owner as a row stream's rows do, with the same backpressure.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_core::Stream;
use futures_io::{AsyncRead, AsyncWrite};
use futures_sink::Sink;
use postgres_protocol::message::frontend;

use aiopg_core::types::{FromSql, IsNull, Type};
use aiopg_core::{Error, Result, SqlState};

use crate::collect::{Collector, CopyInfo, CopyOut, Output};
use crate::connection::Param;
use crate::exclusive::Exclusive;
use crate::trace::{self, StatementTrace};
use crate::Connection;

/// Data is sent in CopyData messages of about this size.
#[cfg(not(test))]
const CHUNK: usize = 64 * 1024;
#[cfg(test)]
const CHUNK: usize = 3;
/// A writer waits (backpressure) while more than this much of its data is not on the socket.
/// One message's worth: with 256 KiB, bursts of four messages cost the server about 8% more
/// CPU per COPY FROM STDIN and the client on its own core lost as much in rows/s
/// (BENCHMARKS.md, 2026-12-06); on the server's core it made no difference.
#[cfg(not(test))]
const UNSENT: usize = 64 * 1024;
#[cfg(test)]
const UNSENT: usize = 10;
/// A CopyData message's header: type byte and length word.
const HEADER: usize = 5;

/// The signature that starts PostgreSQL's binary COPY format.
const BINARY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

fn copy_query(sql: &str) -> Result<BytesMut> {
    let mut buf = BytesMut::new();
    aiopg_core::protocol::encode_or_rollback(&mut buf, |w| frontend::query(sql, w))?;
    Ok(buf)
}

fn copy_fail(reason: &str) -> BytesMut {
    let mut buf = BytesMut::new();
    // A reason with a NUL byte cannot be sent as is.
    let reason = reason.replace('\0', " ");
    frontend::copy_fail(&reason, &mut buf).expect("a C string without NUL");
    buf
}

/// Issues an exclusive request, waiting while another COPY holds the connection.
async fn begin(
    conn: &Connection,
    sql: &str,
    collector: fn() -> Collector,
    on_abandon: BytesMut,
) -> Result<Exclusive> {
    let query = copy_query(sql)?;
    loop {
        poll_fn(|cx| conn.shared.lock().poll_hold_free(cx)).await;
        conn.shared.check_pooling(sql)?;
        let q = query.clone();
        match Exclusive::start(
            conn,
            move |st| {
                st.write.extend_from_slice(&q);
                Ok(collector())
            },
            on_abandon.clone(),
        ) {
            // Another COPY took the connection between the wake-up and now: wait again.
            Err(_) if conn.shared.lock().is_held() => continue,
            res => return res,
        }
    }
}

/// Starts a COPY: issues it and waits for the server to start it, in the COPY's statement
/// span, which the writer or reader returned holds until the COPY ends.
async fn start(
    conn: &Connection,
    sql: &str,
    collector: fn() -> Collector,
    on_abandon: BytesMut,
) -> Result<(Exclusive, CopyInfo, StatementTrace)> {
    let mut trace = StatementTrace::start(&conn.shared, sql);
    let started = trace::in_span(&trace.span, async {
        let mut ex = begin(conn, sql, collector, on_abandon).await?;
        let info = poll_fn(|cx| ex.poll_started(cx)).await?;
        Ok((ex, info))
    })
    .await;
    match started {
        Ok((ex, info)) => Ok((ex, info, trace)),
        Err(e) => {
            trace.finish(Some(&e));
            Err(e)
        }
    }
}

impl Connection {
    /// Starts `COPY ... FROM STDIN` (text, CSV or binary, as the statement says) and returns
    /// once the server is ready for data. Write the data through the returned
    /// [`CopyInWriter`] (a `Sink<Bytes>` and an `AsyncWrite`), then call
    /// [`finish`](CopyInWriter::finish) for the number of rows copied.
    ///
    /// While the COPY runs, other requests on the connection wait (they are queued, and sent
    /// once it ends); another COPY waits for this one to end before it starts.
    ///
    /// ```no_run
    /// # async fn f(conn: aiopg_conn::Connection) -> aiopg_core::Result<()> {
    /// let mut w = conn.copy_in("COPY items (id, name) FROM STDIN (FORMAT csv)").await?;
    /// w.write(b"1,apple\n2,pear\n").await?;
    /// assert_eq!(w.finish().await?, 2);
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step and copies nothing. Dropped while another
    /// COPY holds the connection, nothing was issued. Dropped while waiting for the server to start
    /// the COPY, the statement is taken back if none of it was written; otherwise a CopyFail
    /// follows it, so the server ends the COPY at once, and its answer is discarded. Once this
    /// future completes, the [`CopyInWriter`] owns the COPY (see its cancel safety).
    pub async fn copy_in(&self, sql: &str) -> Result<CopyInWriter> {
        let (ex, info, trace) = start(
            self,
            sql,
            || Collector::CopyIn(Default::default()),
            copy_fail("the COPY's writer was dropped before finish()"),
        )
        .await?;
        let mut buf = BytesMut::with_capacity(CHUNK + HEADER);
        buf.put_slice(&[b'd', 0, 0, 0, 0]);
        Ok(CopyInWriter {
            ex: Some(ex),
            info,
            buf,
            big: None,
            ending: false,
            torn: false,
            rows: None,
            trace,
        })
    }

    /// Starts `COPY ... TO STDOUT` (or `COPY (query) TO STDOUT`) and returns its data as a
    /// [`CopyOutReader`] (a `Stream` of `Bytes` and an `AsyncRead`), read in bounded memory:
    /// when the reader is not polled, the connection stops reading the socket. Dropping it
    /// mid-way keeps the connection usable (the rest is read and discarded).
    ///
    /// ```no_run
    /// # async fn f(conn: aiopg_conn::Connection) -> aiopg_core::Result<()> {
    /// use futures_util::TryStreamExt;
    /// let mut out = conn.copy_out("COPY items TO STDOUT (FORMAT csv)").await?;
    /// while let Some(chunk) = out.try_next().await? {
    ///     print!("{}", String::from_utf8_lossy(&chunk));
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step. Dropped while another COPY holds the
    /// connection, nothing was issued; before the statement was written, it is taken back;
    /// after, the COPY runs on the server and its data is read and discarded. Once this future
    /// completes, the [`CopyOutReader`] owns the COPY.
    pub async fn copy_out(&self, sql: &str) -> Result<CopyOutReader> {
        let (ex, info, trace) = start(
            self,
            sql,
            || Collector::CopyOut(Default::default()),
            // Should the statement turn out to be COPY FROM STDIN and its owner leave before
            // the server answers, this ends it (outside COPY mode the server ignores it).
            copy_fail("the COPY's reader was dropped before it started"),
        )
        .await?;
        let (conn, id) = ex.into_parts();
        Ok(CopyOutReader {
            conn,
            id,
            info,
            chunks: Vec::new().into_iter(),
            current: Bytes::new(),
            done: false,
            rows: None,
            trace,
        })
    }
}

/// The data side of `COPY ... FROM STDIN`: from [`Connection::copy_in`].
///
/// Bytes are framed into CopyData messages of about 64 KiB; while more than 64 KiB of them
/// wait for the socket, writing waits (backpressure), so memory stays bounded however fast the
/// data comes. End with [`finish`](Self::finish) (rows copied) or [`abort`](Self::abort).
///
/// # Errors
///
/// A server error mid-COPY (a malformed row, a constraint) is returned by the next write or
/// by `finish`, as a `Db` error whose `where_()` names the line; the connection stays usable.
///
/// # Cancel safety
///
/// Dropping the writer before [`finish`](Self::finish) ends the COPY with CopyFail: nothing
/// is copied, and the connection stays usable (requests queued behind the COPY go out after
/// the CopyFail). Data still buffered in the writer is not sent.
///
/// As a `Sink` and an `AsyncWrite` it follows those traits' contracts: `start_send` takes its
/// item at once, and `poll_write` takes bytes only when it returns `Ready(Ok(n))`, so a
/// `Pending` poll takes nothing. `poll_flush` may be dropped and polled again freely.
/// `poll_close` is [`finish`](Self::finish): once polled, CopyDone is queued, and the COPY
/// completes even if the writer is then dropped (see there). Helpers that loop over these
/// (`write_all`, `send_all`) are not cancel safe: part of their input may have been taken.
///
/// [`write`](Self::write) takes its data in pieces, waiting for room between them: dropped
/// after it took part of its data, it leaves the writer refusing any more (writes and
/// `finish` fail with a `Usage` error), so that a torn row is never copied; see there.
pub struct CopyInWriter {
    ex: Option<Exclusive>,
    info: CopyInfo,
    /// A CopyData message being filled: its header, then data.
    buf: BytesMut,
    /// A large item from `start_send`, sent as a message of its own without being copied
    /// into `buf`.
    big: Option<Bytes>,
    /// CopyDone (or CopyFail) is queued; only the answer remains.
    ending: bool,
    /// A [`write`](Self::write) was dropped after it had taken part of its data: what was
    /// taken may end mid-row, so the COPY may only be aborted.
    torn: bool,
    rows: Option<u64>,
    /// The COPY's span, open until it ends (or the writer is dropped).
    trace: StatementTrace,
}

impl fmt::Debug for CopyInWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CopyInWriter")
            .field("binary", &self.is_binary())
            .field("columns", &self.info.columns.len())
            .field("ending", &self.ending)
            .finish_non_exhaustive()
    }
}

fn ended() -> Error {
    Error::usage("the COPY has ended; start a new one")
}

fn torn() -> Error {
    Error::usage(
        "a write() on this COPY was dropped after it had taken part of its data, which may end \
         mid-row: the COPY cannot go on; abort() it or drop the writer (nothing is copied), and \
         copy again",
    )
}

impl CopyInWriter {
    /// True for `FORMAT binary`.
    pub fn is_binary(&self) -> bool {
        self.info.format == 1
    }

    /// How many columns each row has.
    pub fn column_count(&self) -> usize {
        self.info.columns.len()
    }

    /// Writes data (any split of it: rows need not be whole), waiting while too much is
    /// unsent.
    ///
    /// # Cancel safety
    ///
    /// This method is not cancel safe. `data` is taken in pieces (into the writer's buffer, or
    /// as CopyData messages of their own), and the call waits for room between them. Dropped
    /// while it waits before taking anything, nothing of `data` was taken, and the COPY goes on
    /// as if the call had not been made. Dropped after it took a part, an unknown prefix of
    /// `data` is queued, which may end mid-row: the writer then refuses to go on (later writes,
    /// [`finish`](Self::finish) and `poll_close` fail with a `Usage` error), so the torn data is
    /// never copied. End such a COPY with [`abort`](Self::abort) or by dropping the writer:
    /// nothing is copied. Rows are never torn through the `Sink` implementation, which takes
    /// each item whole, nor through [`BinaryCopyInWriter::write`], which is cancel safe.
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.torn {
            return Err(torn());
        }
        let mut rest = data;
        while !rest.is_empty() {
            let n = poll_fn(|cx| self.poll_write_data(cx, rest)).await?;
            rest = &rest[n..];
            // Until the rest is taken, a drop leaves a prefix of `data` queued.
            self.torn = !rest.is_empty();
        }
        Ok(())
    }

    /// Queues `data` as one message (after what is buffered), without waiting for room: the
    /// caller waits with [`poll_room`](Self::poll_room) before it queues more.
    fn queue_data(&mut self, data: &[u8]) -> Result<()> {
        if self.ending {
            return Err(ended());
        }
        self.push_buffered()?;
        self.append(data)
    }

    /// Waits until at most [`UNSENT`] bytes of the COPY are unsent (taking nothing).
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.ending {
            return Poll::Ready(Err(ended()));
        }
        self.poll_push(cx, UNSENT)
    }

    /// Sends what is buffered and waits until all of it is on the socket.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping it only stops the wait. What it queued stays queued and
    /// goes out in order.
    pub async fn flush(&mut self) -> Result<()> {
        if self.ending {
            return Err(ended());
        }
        poll_fn(|cx| self.poll_push(cx, 0)).await
    }

    fn poll_write_data(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<Result<usize>> {
        if self.ending {
            return Poll::Ready(Err(ended()));
        }
        if self.buf.len() >= HEADER + CHUNK || self.big.is_some() {
            ready!(self.poll_push(cx, UNSENT))?;
        }
        if self.buf.len() == HEADER && data.len() >= CHUNK {
            // A large write goes out as a message of its own: one copy, not two. Room is
            // made first, as nothing may be left pending once the data is taken.
            ready!(self.poll_push(cx, UNSENT))?;
            let n = data.len().min(4 * CHUNK);
            self.append(&data[..n])?;
            return Poll::Ready(Ok(n));
        }
        let n = data.len().min(HEADER + CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    /// Sends `data` as one CopyData message.
    fn append(&mut self, data: &[u8]) -> Result<()> {
        let Some(ex) = self.ex.as_ref() else {
            return Err(ended());
        };
        let res = ex.append_copy_data(data);
        if let Err(e) = &res {
            self.fail(e);
        }
        res
    }

    /// Sends the message being filled, then waits until at most `limit` bytes are unsent.
    fn poll_push(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<Result<()>> {
        if self.ex.is_none() {
            return Poll::Ready(Err(ended()));
        }
        if let Err(e) = self.push_buffered() {
            return Poll::Ready(Err(e));
        }
        let ex = self.ex.as_mut().expect("checked above");
        let res = ready!(ex.poll_drain(cx, limit));
        if let Err(e) = &res {
            self.fail(e);
        }
        Poll::Ready(res)
    }

    /// Queues what is buffered (the message being filled, then a large item) for sending.
    fn push_buffered(&mut self) -> Result<()> {
        let Some(ex) = self.ex.as_ref() else {
            return Err(ended());
        };
        let mut res = Ok(());
        if self.buf.len() > HEADER {
            let len = (self.buf.len() - 1) as i32;
            self.buf[1..HEADER].copy_from_slice(&len.to_be_bytes());
            res = ex.append(&self.buf, None);
            self.buf.truncate(HEADER);
        }
        if let (Ok(()), Some(big)) = (&res, self.big.take()) {
            res = ex.append_copy_data(&big);
        }
        if let Err(e) = &res {
            self.fail(e);
        }
        res
    }

    /// `poll_flush` of `Sink` and `AsyncWrite`: everything on the socket (nothing to do once
    /// the COPY is ending).
    fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.ending {
            return Poll::Ready(Ok(()));
        }
        self.poll_push(cx, 0)
    }

    /// The COPY failed with `e` (the server ended it, or the connection was lost): nothing
    /// more can be sent.
    fn fail(&mut self, e: &Error) {
        self.ending = true;
        self.ex = None;
        self.trace.finish(Some(e));
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<u64>> {
        if let Some(rows) = self.rows {
            return Poll::Ready(Ok(rows));
        }
        if self.torn && !self.ending {
            return Poll::Ready(Err(torn()));
        }
        if !self.ending {
            if let Err(e) = self.push_buffered() {
                return Poll::Ready(Err(e));
            }
            let Some(ex) = self.ex.as_mut() else {
                return Poll::Ready(Err(ended()));
            };
            self.buf.clear();
            frontend::copy_done(&mut self.buf);
            let res = ex.append(&self.buf, None);
            self.buf.clear();
            self.ending = true;
            if let Err(e) = res {
                self.fail(&e);
                return Poll::Ready(Err(e));
            }
            // With CopyDone the COPY commits (outside a transaction block): its outcome is
            // unknown if the answer is lost from here on.
            ex.commits_unless_in_block();
            ex.release();
        }
        let Some(ex) = self.ex.as_mut() else {
            return Poll::Ready(Err(ended()));
        };
        let res = ready!(ex.poll(cx));
        self.ex = None;
        let res = match res {
            Ok(Output::Copied(rows)) => {
                let rows = rows.unwrap_or(0);
                self.rows = Some(rows);
                Ok(rows)
            }
            Ok(_) => Err(Error::protocol("an unexpected answer to COPY")),
            Err(e) => Err(e),
        };
        self.trace.finish(res.as_ref().err());
        Poll::Ready(res)
    }

    /// Ends the data and waits for the server: the number of rows copied. A server error
    /// (a malformed row, a constraint) is returned here, and nothing was copied. After a
    /// [`write`](Self::write) dropped part-way this is a `Usage` error, and the COPY is ended
    /// with CopyFail (nothing is copied).
    ///
    /// # Cancel safety
    ///
    /// This method is not cancel safe. Dropped before its first poll, the writer goes with it:
    /// CopyFail, nothing is copied. From its first poll on, CopyDone is queued: the COPY then
    /// completes (or fails) on the server even if the future is dropped, and its answer is
    /// discarded, so the caller does not learn whether rows were copied, nor how many. Outside a
    /// transaction block a completed COPY is committed.
    pub async fn finish(mut self) -> Result<u64> {
        poll_fn(|cx| self.poll_finish(cx)).await
    }

    /// Ends the COPY without copying anything (CopyFail with `reason`) and waits until the
    /// server has rolled it back.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: nothing is copied whether or not the future completes. Dropped
    /// before its first poll, the writer's drop sends CopyFail; from its first poll on, this
    /// call's CopyFail is queued, and only the wait for the server's answer is skipped.
    pub async fn abort(mut self, reason: &str) -> Result<()> {
        if self.ending {
            return Err(ended());
        }
        let Some(ex) = self.ex.as_mut() else {
            return Err(ended());
        };
        self.ending = true;
        if let Err(e) = ex.append(&copy_fail(reason), None) {
            self.trace.finish(Some(&e));
            return Err(e);
        }
        ex.release();
        // Aborted as asked: the span ends without an error.
        let res = match poll_fn(|cx| ex.poll(cx)).await {
            Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        };
        self.trace.finish(res.as_ref().err());
        res
    }
}

impl Sink<Bytes> for CopyInWriter {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.ending {
            return Poll::Ready(Err(ended()));
        }
        if self.torn {
            return Poll::Ready(Err(torn()));
        }
        if self.buf.len() >= HEADER + CHUNK || self.big.is_some() {
            return self.poll_push(cx, UNSENT);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> Result<()> {
        if self.ending {
            return Err(ended());
        }
        if self.torn {
            return Err(torn());
        }
        if self.big.is_none() && item.len() >= CHUNK {
            // Sent as a message of its own by the next poll, without a copy into `buf`.
            self.big = Some(item);
        } else {
            self.buf.extend_from_slice(&item);
        }
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.poll_flush_all(cx)
    }

    /// Finishes the COPY (as [`CopyInWriter::finish`], whose row count is then lost).
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.poll_finish(cx).map(|r| r.map(drop))
    }
}

fn to_io(e: Error) -> io::Error {
    io::Error::other(e)
}

impl AsyncWrite for CopyInWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.torn && !self.ending {
            return Poll::Ready(Err(to_io(torn())));
        }
        self.poll_write_data(cx, data).map_err(to_io)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_all(cx).map_err(to_io)
    }

    /// Finishes the COPY (as [`CopyInWriter::finish`]).
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_finish(cx).map(|r| r.map(drop).map_err(to_io))
    }
}

/// The data of `COPY ... TO STDOUT`: from [`Connection::copy_out`]. A `Stream` of the
/// server's CopyData messages (one row each, for text and CSV) as `Bytes` that share the
/// connection's read buffer (no copy), and an `AsyncRead` of the same bytes.
///
/// # Cancel safety
///
/// `poll_next` and `poll_read` are cancel safe: data is taken from the connection only when
/// it is returned (a partly read chunk stays in the reader), so a dropped `next()` or
/// `read()` future loses nothing.
///
/// Dropping the reader before the end keeps the connection usable: the COPY runs to its end
/// on the server, and the rest of its data is read and discarded by whoever drives the
/// connection next (requests issued after it wait until then).
pub struct CopyOutReader {
    conn: Connection,
    id: u64,
    info: CopyInfo,
    /// The batch of chunks taken from the connection, handed out without its lock.
    chunks: std::vec::IntoIter<Bytes>,
    /// What `AsyncRead` has not handed out of the chunk it is in.
    current: Bytes,
    done: bool,
    rows: Option<u64>,
    /// The COPY's span, open until its data ends (or the reader is dropped).
    trace: StatementTrace,
}

impl fmt::Debug for CopyOutReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CopyOutReader")
            .field("binary", &self.is_binary())
            .field("done", &self.done)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl CopyOutReader {
    /// True for `FORMAT binary`.
    pub fn is_binary(&self) -> bool {
        self.info.format == 1
    }

    /// How many columns each row has.
    pub fn column_count(&self) -> usize {
        self.info.columns.len()
    }

    /// Rows copied, once the data has ended.
    pub fn rows(&self) -> Option<u64> {
        self.rows
    }
}

impl Stream for CopyOutReader {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = &mut *self;
        if !this.current.is_empty() {
            return Poll::Ready(Some(Ok(std::mem::take(&mut this.current))));
        }
        if let Some(c) = this.chunks.next() {
            return Poll::Ready(Some(Ok(c)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let mut batch = Vec::new();
        let res = ready!(this
            .conn
            .shared
            .lock()
            .poll_buffered::<CopyOut>(this.id, cx, &mut batch));
        match res {
            Some(Ok(())) => {
                this.chunks = batch.into_iter();
                Poll::Ready(this.chunks.next().map(Ok))
            }
            Some(Err(e)) => {
                this.done = true;
                this.conn.shared.lock().finish_buffered::<CopyOut>(this.id);
                this.trace.finish(Some(&e));
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.done = true;
                this.rows = this
                    .conn
                    .shared
                    .lock()
                    .finish_buffered::<CopyOut>(this.id)
                    .flatten();
                this.trace.finish(None);
                Poll::Ready(None)
            }
        }
    }
}

impl AsyncRead for CopyOutReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if !self.current.is_empty() {
                let n = out.len().min(self.current.len());
                out[..n].copy_from_slice(&self.current[..n]);
                self.current.advance(n);
                return Poll::Ready(Ok(n));
            }
            match ready!(self.as_mut().poll_next(cx)) {
                Some(Ok(c)) => self.current = c,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Ok(0)),
            }
        }
    }
}

impl Drop for CopyOutReader {
    fn drop(&mut self) {
        if !self.done {
            // The rest is read and dropped by whoever drives next.
            self.conn.shared.lock().abandon(self.id);
        }
    }
}

/// Writes rows in PostgreSQL's binary COPY format through a [`CopyInWriter`] of a
/// `COPY ... FROM STDIN (FORMAT binary)`, each value encoded by its `ToSql` for the column's
/// type (as `query` parameters are).
///
/// The types are given in column order; to take them from the table, prepare a `SELECT` of
/// the same columns and use its [`Statement::columns`](crate::Statement::columns).
///
/// Rows are encoded into a buffer and handed to the [`CopyInWriter`] about 64 KiB at a time.
/// Dropping this writer drops the `CopyInWriter` with it: CopyFail, nothing is copied.
/// [`write`](Self::write) is cancel safe: a row is written exactly when the call returns
/// `Ok`, so a dropped write is simply made again.
///
/// ```no_run
/// # async fn f(conn: aiopg_conn::Connection) -> aiopg_core::Result<()> {
/// use aiopg_core::types::Type;
/// use aiopg_conn::BinaryCopyInWriter;
/// let w = conn.copy_in("COPY items (id, name) FROM STDIN (FORMAT binary)").await?;
/// let mut w = BinaryCopyInWriter::new(w, &[Type::INT4, Type::TEXT]);
/// w.write(&[&1i32, &"apple"]).await?;
/// assert_eq!(w.finish().await?, 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BinaryCopyInWriter {
    writer: CopyInWriter,
    types: Vec<Type>,
    /// Rows encoded and not yet handed to `writer` (the format's header first).
    buf: BytesMut,
    /// A batch was handed to `writer` since the last wait for room: the next row waits
    /// (backpressure) before it is taken.
    wait_room: bool,
}

impl BinaryCopyInWriter {
    /// Wraps `writer`, whose COPY must be `FORMAT binary`, for rows of `types`.
    pub fn new(writer: CopyInWriter, types: &[Type]) -> BinaryCopyInWriter {
        let mut buf = BytesMut::with_capacity(2 * CHUNK);
        buf.put_slice(BINARY_SIGNATURE);
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension length
        BinaryCopyInWriter {
            writer,
            types: types.to_vec(),
            buf,
            wait_room: false,
        }
    }

    /// Writes one row. A value that cannot be encoded for its column's type is an `Encode`
    /// error, and nothing of the row is written (the COPY goes on).
    ///
    /// Rows are buffered; when the buffer reaches about 64 KiB it is queued for sending, and
    /// the next call first waits while too much of the COPY is unsent (backpressure).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: the row is written if and only if the call returns `Ok`. The
    /// only wait (for room) comes before the row is taken; dropped during it, nothing of the row
    /// was taken and the rows written before are queued once, so the COPY goes on: write the
    /// row again.
    pub async fn write(&mut self, row: &[Param<'_>]) -> Result<()> {
        if !self.writer.is_binary() {
            return Err(Error::usage(
                "BinaryCopyInWriter needs COPY ... FROM STDIN (FORMAT binary)",
            ));
        }
        if row.len() != self.types.len() {
            return Err(Error::usage(format!(
                "the row has {} values for {} columns",
                row.len(),
                self.types.len()
            )));
        }
        if self.wait_room {
            // Nothing of this row is taken before the wait: a drop here loses nothing.
            poll_fn(|cx| self.writer.poll_room(cx)).await?;
            self.wait_room = false;
        }
        let mark = self.buf.len();
        self.buf.put_i16(row.len() as i16);
        for (i, (value, ty)) in row.iter().zip(&self.types).enumerate() {
            let at = self.buf.len();
            self.buf.put_i32(0);
            match value.to_sql_checked(ty, &mut self.buf) {
                Ok(IsNull::Yes) => {
                    self.buf[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes());
                }
                Ok(IsNull::No) => {
                    let len = self.buf.len() - at - 4;
                    let len = i32::try_from(len)
                        .map_err(|_| Error::encode(format!("value {i} is over 2 GiB"), None));
                    match len {
                        Ok(len) => self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes()),
                        Err(e) => {
                            self.buf.truncate(mark);
                            return Err(e);
                        }
                    }
                }
                Err(e) => {
                    self.buf.truncate(mark);
                    return Err(Error::encode(
                        format!("value {i} cannot be written as {ty}: {e}"),
                        Some(e),
                    ));
                }
            }
        }
        if self.buf.len() >= CHUNK {
            // Queued and taken out of the buffer at once, with no wait in between: the
            // rows go out exactly once whatever is dropped later.
            self.queue_rows()?;
            self.wait_room = true;
        }
        Ok(())
    }

    /// Queues the encoded rows as one message and empties the buffer (which keeps its
    /// allocation), without waiting.
    fn queue_rows(&mut self) -> Result<()> {
        let res = self.writer.queue_data(&self.buf);
        self.buf.clear();
        res
    }

    /// Ends the data (the format's trailer) and the COPY: the number of rows copied.
    ///
    /// # Cancel safety
    ///
    /// This method is not cancel safe. Dropped before its first poll, the writer goes with the
    /// future: CopyFail, nothing is copied. Its first poll queues the last rows, the trailer and
    /// CopyDone (no wait comes between them): from then on the COPY completes (or fails) on the
    /// server even if the future is dropped, unseen, as [`CopyInWriter::finish`] describes.
    pub async fn finish(mut self) -> Result<u64> {
        self.buf.put_i16(-1);
        self.queue_rows()?;
        self.writer.finish().await
    }

    /// Ends the COPY without copying anything.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: as [`CopyInWriter::abort`], nothing is copied whether or not
    /// the future completes.
    pub async fn abort(self, reason: &str) -> Result<()> {
        self.writer.abort(reason).await
    }
}

/// Reads rows of PostgreSQL's binary COPY format from a [`CopyOutReader`] of a
/// `COPY ... TO STDOUT (FORMAT binary)`, as a `Stream` of [`BinaryCopyRow`]s decoded with
/// the given column types.
///
/// # Cancel safety
///
/// `poll_next` is cancel safe: a partly received row stays in the stream's buffer until the
/// rest arrives. Dropping the stream drops its [`CopyOutReader`]: the rest of the data is
/// read and discarded, and the connection stays usable.
pub struct BinaryCopyOutStream {
    reader: CopyOutReader,
    types: Arc<[Type]>,
    /// Data not parsed yet: usually one whole CopyData message (one row), used as it is.
    buf: Bytes,
    header: bool,
    /// The trailer was read: what remains is the end of the reader.
    trailer: bool,
    done: bool,
}

impl fmt::Debug for BinaryCopyOutStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinaryCopyOutStream")
            .field("types", &self.types)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// One row of a binary COPY.
pub struct BinaryCopyRow {
    data: Bytes,
    ranges: Vec<Option<Range<usize>>>,
    types: Arc<[Type]>,
}

impl fmt::Debug for BinaryCopyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinaryCopyRow")
            .field("columns", &self.ranges.len())
            .finish_non_exhaustive()
    }
}

impl BinaryCopyRow {
    /// How many values the row has.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True for a row of no columns.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// True when value `idx` is NULL (or there is no such column).
    pub fn is_null(&self, idx: usize) -> bool {
        self.ranges.get(idx).is_none_or(Option::is_none)
    }

    /// Decodes value `idx`; panics where [`try_get`](Self::try_get) fails.
    pub fn get<'a, T: FromSql<'a>>(&'a self, idx: usize) -> T {
        match self.try_get(idx) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// Decodes value `idx` as its column's type, with an error when the index or the type
    /// does not fit.
    pub fn try_get<'a, T: FromSql<'a>>(&'a self, idx: usize) -> Result<T> {
        let ty = self.types.get(idx).ok_or_else(|| {
            Error::usage(format!("no column {idx}: the row has {}", self.types.len()))
        })?;
        if !T::accepts(ty) {
            return Err(Error::decode(
                format!(
                    "column {idx} is {ty}, which {} cannot hold",
                    std::any::type_name::<T>()
                ),
                None,
            ));
        }
        let raw = self.ranges[idx].clone().map(|r| &self.data[r]);
        T::from_sql_nullable(ty, raw)
            .map_err(|e| Error::decode(format!("column {idx} ({ty}): {e}"), Some(e)))
    }
}

impl BinaryCopyOutStream {
    /// Wraps `reader`, whose COPY must be `FORMAT binary`, for rows of `types`.
    pub fn new(reader: CopyOutReader, types: &[Type]) -> BinaryCopyOutStream {
        BinaryCopyOutStream {
            reader,
            types: types.into(),
            buf: Bytes::new(),
            header: false,
            trailer: false,
            done: false,
        }
    }

    /// Rows copied, once the stream has ended.
    pub fn rows(&self) -> Option<u64> {
        self.reader.rows()
    }

    /// Parses what the buffer holds: `Ok(None)` when more bytes are needed.
    fn parse(&mut self) -> Result<Option<Option<BinaryCopyRow>>> {
        let bad = |what: &str| Error::protocol(format!("malformed binary COPY data: {what}"));
        if !self.header {
            if self.buf.len() < BINARY_SIGNATURE.len() + 8 {
                return Ok(None);
            }
            if &self.buf[..BINARY_SIGNATURE.len()] != BINARY_SIGNATURE {
                return Err(bad("no PGCOPY signature"));
            }
            let ext = i32::from_be_bytes(self.buf[15..19].try_into().expect("4 bytes"));
            let ext = usize::try_from(ext).map_err(|_| bad("negative header extension"))?;
            if self.buf.len() < 19 + ext {
                return Ok(None);
            }
            self.buf.advance(19 + ext);
            self.header = true;
        }
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let fields = i16::from_be_bytes([self.buf[0], self.buf[1]]);
        if fields == -1 {
            self.buf.advance(2);
            return Ok(Some(None));
        }
        if fields as usize != self.types.len() {
            return Err(Error::usage(format!(
                "the COPY has {fields} columns but {} types were given",
                self.types.len()
            )));
        }
        let mut ranges = Vec::with_capacity(fields as usize);
        let mut at = 2;
        for _ in 0..fields {
            if self.buf.len() < at + 4 {
                return Ok(None);
            }
            let len = i32::from_be_bytes(self.buf[at..at + 4].try_into().expect("4 bytes"));
            at += 4;
            if len < 0 {
                ranges.push(None);
                continue;
            }
            let len = len as usize;
            if self.buf.len() < at + len {
                return Ok(None);
            }
            ranges.push(Some(at..at + len));
            at += len;
        }
        let data = self.buf.split_to(at);
        Ok(Some(Some(BinaryCopyRow {
            data,
            ranges,
            types: self.types.clone(),
        })))
    }
}

impl Stream for BinaryCopyOutStream {
    type Item = Result<BinaryCopyRow>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BinaryCopyRow>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.trailer {
                // Drain the reader so that its row count is known.
                while let Some(chunk) = ready!(Pin::new(&mut this.reader).poll_next(cx)) {
                    if let Err(e) = chunk {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                this.done = true;
                return Poll::Ready(None);
            }
            match this.parse() {
                Ok(Some(Some(row))) => return Poll::Ready(Some(Ok(row))),
                Ok(Some(None)) => {
                    this.trailer = true;
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match ready!(Pin::new(&mut this.reader).poll_next(cx)) {
                Some(Ok(chunk)) => {
                    if this.buf.is_empty() {
                        // The common case, a row per message: no copy.
                        this.buf = chunk;
                    } else {
                        let mut joined = BytesMut::with_capacity(this.buf.len() + chunk.len());
                        joined.extend_from_slice(&this.buf);
                        joined.extend_from_slice(&chunk);
                        this.buf = joined.freeze();
                    }
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    if this.buf.is_empty() && !this.header {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(Error::protocol(
                        "binary COPY data ended without its trailer",
                    ))));
                }
            }
        }
    }
}
