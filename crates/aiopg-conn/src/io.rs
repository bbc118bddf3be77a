//! Socket reads and writes shared by start-up and the running connection.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use futures_io::{AsyncRead, AsyncWrite};

use aiopg_core::protocol::{self, backend::Message};
use aiopg_core::{Error, Result};
use aiopg_rt::BoxStream;

/// The smallest and largest single read. Reads start small so that a short answer (the common
/// case) zeroes little buffer, and grow while the server keeps filling them.
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 256 * 1024;

/// The read buffer: bytes from the server not yet framed into messages.
#[derive(Debug)]
pub(crate) struct ReadBuf {
    pub(crate) buf: BytesMut,
    next_read: usize,
}

impl ReadBuf {
    pub(crate) fn new() -> ReadBuf {
        ReadBuf {
            buf: BytesMut::with_capacity(MIN_READ),
            next_read: MIN_READ,
        }
    }

    /// Reads once from `stream`. `Ok(0)` means the server closed the connection.
    pub(crate) fn poll_fill(
        &mut self,
        stream: &mut BoxStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let len = self.buf.len();
        // futures-io reads into initialised memory, so the spare room is zeroed first; sizing
        // the read to what the server has been sending keeps that cheap.
        self.buf.resize(len + self.next_read, 0);
        let res = Pin::new(stream).poll_read(cx, &mut self.buf[len..]);
        let n = match &res {
            Poll::Ready(Ok(n)) => *n,
            _ => 0,
        };
        self.buf.truncate(len + n);
        if n == self.next_read {
            self.next_read = (self.next_read * 2).min(MAX_READ);
        } else if n > 0 && n < self.next_read / 4 {
            self.next_read = (self.next_read / 2).max(MIN_READ);
        }
        res
    }

    /// The next complete message, if the buffer holds one.
    #[inline]
    pub(crate) fn next_message(&mut self) -> Result<Option<Message>> {
        protocol::decode(&mut self.buf)
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
