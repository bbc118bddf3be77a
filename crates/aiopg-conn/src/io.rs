//! Socket reads and writes shared by start-up and the running connection.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_io::{AsyncRead, AsyncWrite};

use aiopg_core::protocol::{self, backend::Message};
use aiopg_core::{Error, Result};
use aiopg_rt::BoxStream;

/// How much room a read gets at least, and how much is added when the buffer runs out.
const MIN_SPARE: usize = 4 * 1024;
const CHUNK: usize = 64 * 1024;
/// The largest message accepted from the server (PostgreSQL's own limit is 1 GB per field).
const MAX_MESSAGE: usize = 1 << 30;

/// A framed backend message.
pub(crate) enum Frame {
    /// A `DataRow`, whole (tag and length included).
    DataRow(Bytes),
    /// Any other message, parsed.
    Message(Message),
}

/// The read buffer: bytes from the server not yet framed into messages.
///
/// `futures-io` reads into initialised memory only, so the buffer is zeroed once when it
/// grows and its whole length stays initialised: the first `filled` bytes are data, the rest
/// is room for the next read. Each complete message is split off the front as its own
/// reference-counted slice, so rows keep pointing into this memory without a copy.
#[derive(Debug)]
pub(crate) struct ReadBuf {
    buf: BytesMut,
    filled: usize,
}

impl ReadBuf {
    pub(crate) fn new() -> ReadBuf {
        ReadBuf {
            buf: BytesMut::new(),
            filled: 0,
        }
    }

    /// Makes room for the next read: at least [`MIN_SPARE`], and the rest of a message that
    /// has only partly arrived.
    fn make_room(&mut self) {
        let mut need = MIN_SPARE;
        if self.filled >= 5 {
            let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
            need = need.max((len as usize + 1).saturating_sub(self.filled));
        }
        if self.buf.len() - self.filled >= need {
            return;
        }
        // Growing zeroes the new room once; `reserve` reuses the allocation when no row
        // still points into it.
        self.buf.truncate(self.filled);
        self.buf.reserve(need.max(CHUNK));
        let cap = self.buf.capacity();
        self.buf.resize(cap, 0);
    }

    /// Reads once from `stream`. `Ok(0)` means the server closed the connection.
    pub(crate) fn poll_fill(
        &mut self,
        stream: &mut BoxStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        self.make_room();
        let res = Pin::new(stream).poll_read(cx, &mut self.buf[self.filled..]);
        if let Poll::Ready(Ok(n)) = res {
            self.filled += n;
        }
        res
    }

    /// The next complete message, if the buffer holds one. Rows, the bulk of most answers,
    /// skip general parsing: the whole message becomes the row's storage.
    #[inline]
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.filled < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(Error::protocol(format!(
                "the server sent a message of invalid length {len}"
            )));
        }
        if self.filled < len + 1 {
            return Ok(None);
        }
        let is_row = self.buf[0] == b'D';
        let mut frame = self.buf.split_to(len + 1);
        self.filled -= len + 1;
        if is_row {
            return Ok(Some(Frame::DataRow(frame.freeze())));
        }
        match protocol::decode(&mut frame)? {
            Some(m) => Ok(Some(Frame::Message(m))),
            None => Err(Error::protocol("a complete message could not be framed")),
        }
    }

    /// The next complete message during start-up, when no rows are expected.
    pub(crate) fn next_message(&mut self) -> Result<Option<Message>> {
        match self.next_frame()? {
            None => Ok(None),
            Some(Frame::Message(m)) => Ok(Some(m)),
            Some(Frame::DataRow(_)) => Err(Error::protocol("a row arrived during start-up")),
        }
    }
}

/// Writes as much of `buf` as the socket takes now; `Ready(Ok(()))` once it is all written
/// and flushed.
pub(crate) fn poll_write_all(
    stream: &mut BoxStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !buf.is_empty() {
        match Pin::new(&mut *stream).poll_write(cx, buf) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the socket accepted no bytes",
                )))
            }
            Poll::Ready(Ok(n)) => buf.advance(n),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    // Give the allocation back to the buffer's start so the next message does not grow it.
    buf.clear();
    Pin::new(stream).poll_flush(cx)
}

/// Start-up I/O: writes all of `buf`.
pub(crate) async fn write_all(stream: &mut BoxStream, buf: &mut BytesMut) -> Result<()> {
    poll_fn(|cx| poll_write_all(stream, buf, cx))
        .await
        .map_err(|e| Error::io("sending to the server", e))
}

/// Start-up I/O: reads the next message.
pub(crate) async fn read_message(stream: &mut BoxStream, rb: &mut ReadBuf) -> Result<Message> {
    loop {
        if let Some(m) = rb.next_message()? {
            return Ok(m);
        }
        let n = poll_fn(|cx| rb.poll_fill(stream, cx))
            .await
            .map_err(|e| Error::io("reading from the server", e))?;
        if n == 0 {
            return Err(Error::closed(
                "the server closed the connection during start-up",
            ));
        }
    }
}
