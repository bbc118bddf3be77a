//! Socket reads and writes shared by start-up and the running connection.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_io::{AsyncRead, AsyncWrite};

use aiopg_core::protocol::{self, backend::Message, Phase, MAX_MESSAGE_LEN};
use aiopg_core::{Error, Result};
use aiopg_rt::BoxStream;

/// How much room a read gets at least.
const MIN_SPARE: usize = 4 * 1024;
/// What the buffer grows by for ordinary traffic, and where a large message's growth starts.
const CHUNK: usize = 64 * 1024;
/// The first allocation: enough for start-up (authentication, parameters, the first short
/// answers). The buffer moves to [`CHUNK`]s once traffic needs more, so a connection that is
/// opened, used briefly and closed never zeroes (and faults in) 64 KiB it does not use.
const FIRST: usize = 2 * MIN_SPARE;
/// A buffer that grew past this for a large message gives its memory back once it holds
/// little (see [`ReadBuf::shrink`]).
const SHRINK_ABOVE: usize = 4 * CHUNK;

/// A framed backend message.
pub(crate) enum Frame {
    /// A `DataRow`, whole (tag and length included).
    DataRow(Bytes),
    /// A `CopyData` body (tag and length cut off): the bulk of a COPY TO STDOUT.
    CopyData(Bytes),
    /// Any other message, parsed.
    Message(Message),
}

/// The read buffer: bytes from the server not yet framed into messages.
///
/// `futures-io` reads into initialised memory only, so room is zeroed once when the buffer
/// grows and its whole length stays initialised: the first `filled` bytes are data, the rest
/// is room for the next read. Each complete message is split off the front as its own
/// reference-counted slice, so rows keep pointing into this memory without a copy, and the
/// front of the buffer is always the start of a message.
///
/// A header is believed only as far as its type allows ([`protocol::check_header`]), and even
/// a believed length is never reserved up front: room grows with what has arrived (doubling,
/// so a large message costs amortised linear copying), so a server that claims a gigabyte and
/// sends five bytes costs five bytes. After a large message the buffer gives that memory back
/// once it holds little.
#[derive(Debug)]
pub(crate) struct ReadBuf {
    buf: BytesMut,
    filled: usize,
    /// The size of the allocation `buf` lives in. After a message is split off the front,
    /// `buf.capacity()` counts only what is left behind it, but `buf` still keeps the whole
    /// allocation alive: this is what [`ReadBuf::shrink`] looks at.
    alloc: usize,
    /// How often the buffer moved to a new allocation, and how often it shrank.
    #[cfg(test)]
    moves: usize,
    #[cfg(test)]
    shrinks: usize,
}

impl ReadBuf {
    pub(crate) fn new() -> ReadBuf {
        ReadBuf {
            buf: BytesMut::new(),
            filled: 0,
            alloc: 0,
            #[cfg(test)]
            moves: 0,
            #[cfg(test)]
            shrinks: 0,
        }
    }

    /// The whole length the message at the front declares (type byte included), or 0 while
    /// its header has not arrived. Not yet checked: use it only to size the buffer, never
    /// past what has arrived.
    fn declared(&self) -> usize {
        if self.filled < 5 {
            return 0;
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        len.min(MAX_MESSAGE_LEN) as usize + 1
    }

    /// Makes room for the next read: at least [`MIN_SPARE`].
    fn make_room(&mut self) {
        if self.alloc > SHRINK_ABOVE {
            self.shrink();
        }
        if self.buf.len() - self.filled >= MIN_SPARE {
            return;
        }
        let rest = self.declared().saturating_sub(self.filled);
        let room = if self.alloc == 0 && rest <= FIRST - MIN_SPARE {
            FIRST
        } else if rest > CHUNK {
            // A large message: double what has arrived, so that memory follows the bytes the
            // server really sent, not the length it claims; and stop a chunk past its end, so
            // that the read that completes it can bring the next message's header too.
            (rest + CHUNK).min(self.filled.max(CHUNK))
        } else {
            CHUNK
        };
        self.buf.truncate(self.filled);
        // Reuse the allocation when no row still points into it; otherwise move what has
        // arrived of the next message to a new one (the rows keep the old one alive).
        if !self.buf.try_reclaim(room) {
            self.move_to(self.filled + room);
        }
        let cap = self.buf.capacity();
        self.buf.resize(cap, 0);
    }

    /// Moves the unframed bytes into a new allocation of `size` bytes.
    fn move_to(&mut self, size: usize) {
        let mut fresh = BytesMut::with_capacity(size);
        fresh.extend_from_slice(&self.buf[..self.filled]);
        self.buf = fresh;
        self.alloc = self.buf.capacity();
        #[cfg(test)]
        {
            self.moves += 1;
        }
    }

    /// Gives back the memory of a buffer that grew for a large message and now holds little:
    /// without this, the tail left behind that message keeps the whole allocation alive for
    /// as long as the connection lives, even after the rows that pointed into it are gone.
    ///
    /// Checked once per read and once per drained buffer, never per message, and it only
    /// acts when the allocation is four times what the buffer holds and what the message at
    /// its front declares, so a run of large rows does not shrink and regrow between rows.
    /// The bytes kept are copied; rows are not (they keep the old allocation until dropped).
    #[cold]
    fn shrink(&mut self) {
        let keep = self.filled.max(self.declared());
        if keep > self.alloc / 4 {
            return;
        }
        #[cfg(test)]
        {
            self.shrinks += 1;
        }
        if self.filled == 0 {
            self.buf = BytesMut::new();
            self.alloc = 0;
        } else {
            self.move_to(self.filled + CHUNK);
        }
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
        self.frame(Phase::Session)
    }

    #[inline]
    fn frame(&mut self, phase: Phase) -> Result<Option<Frame>> {
        if self.filled < 5 {
            return Ok(self.incomplete());
        }
        let tag = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        // Before waiting for the body: a length the type cannot have is refused at once.
        protocol::check_header(tag, len, phase)?;
        let total = len as usize + 1;
        if self.filled < total {
            return Ok(self.incomplete());
        }
        let mut frame = self.buf.split_to(total);
        self.filled -= total;
        if tag == b'D' {
            return Ok(Some(Frame::DataRow(frame.freeze())));
        }
        if tag == b'd' {
            frame.advance(5);
            return Ok(Some(Frame::CopyData(frame.freeze())));
        }
        match protocol::decode(&mut frame)? {
            Some(m) => Ok(Some(Frame::Message(m))),
            None => Err(Error::protocol("a complete message could not be framed")),
        }
    }

    /// No complete message: the point where a buffer that grew for a large one may shrink.
    #[inline]
    fn incomplete(&mut self) -> Option<Frame> {
        if self.alloc > SHRINK_ABOVE {
            self.shrink();
        }
        None
    }

    /// The next complete message during start-up and authentication, where fewer and shorter
    /// message types are allowed and no rows are expected.
    pub(crate) fn next_message(&mut self) -> Result<Option<Message>> {
        match self.frame(Phase::Startup)? {
            None => Ok(None),
            Some(Frame::Message(m)) => Ok(Some(m)),
            Some(Frame::DataRow(_)) => Err(Error::protocol("a row arrived during start-up")),
            Some(Frame::CopyData(_)) => Err(Error::protocol("COPY data arrived during start-up")),
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
    let len = buf.len();
    poll_write_front(stream, buf, len, cx)
}

/// Writes as much of the first `limit` bytes of `buf` as the socket takes now (the rest stays
/// queued); `Ready(Ok(()))` once they are all written and flushed.
pub(crate) fn poll_write_front(
    stream: &mut BoxStream,
    buf: &mut BytesMut,
    limit: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let keep = buf.len() - limit;
    while buf.len() > keep {
        let front = buf.len() - keep;
        match Pin::new(&mut *stream).poll_write(cx, &buf[..front]) {
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
    if buf.is_empty() {
        // Give the allocation back to the buffer's start so the next message does not grow it.
        buf.clear();
    }
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::task::Waker;

    use proptest::prelude::*;

    use super::*;

    /// A server reading from a script: each read returns at most what is left of the current
    /// chunk, as a socket returns what has arrived; after the last chunk it closes, or stalls.
    #[derive(Debug)]
    struct Script {
        chunks: VecDeque<Vec<u8>>,
        pos: usize,
        stall: bool,
    }

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let pos = self.pos;
            let Some(chunk) = self.chunks.front() else {
                return if self.stall {
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(0))
                };
            };
            let n = (chunk.len() - pos).min(buf.len());
            buf[..n].copy_from_slice(&chunk[pos..pos + n]);
            if pos + n == chunk.len() {
                self.chunks.pop_front();
                self.pos = 0;
            } else {
                self.pos += n;
            }
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Script {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn script(chunks: Vec<Vec<u8>>, stall: bool) -> BoxStream {
        Box::new(Script {
            chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
            pos: 0,
            stall,
        })
    }

    /// `bytes` cut into chunks of `size`.
    fn chunked(bytes: &[u8], size: usize) -> Vec<Vec<u8>> {
        bytes.chunks(size).map(<[u8]>::to_vec).collect()
    }

    /// One read: `Some(n)`, or `None` when the script stalls.
    fn fill(rb: &mut ReadBuf, stream: &mut BoxStream) -> Option<usize> {
        match rb.poll_fill(stream, &mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(n)) => Some(n),
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Pending => None,
        }
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Just a header: `tag` and a length word of `len`.
    fn header(tag: u8, len: u32) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&len.to_be_bytes());
        m
    }

    fn ready() -> Vec<u8> {
        message(b'Z', b"I")
    }

    /// A DataRow of one column holding `n` bytes.
    fn row(n: usize) -> Vec<u8> {
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend_from_slice(&(n as u32).to_be_bytes());
        body.resize(body.len() + n, b'x');
        message(b'D', &body)
    }

    #[test]
    fn a_huge_declared_length_is_not_reserved() {
        // A row header claiming 1 GiB, ten bytes of it, and then nothing.
        let mut bytes = header(b'D', MAX_MESSAGE_LEN);
        bytes.extend_from_slice(&[0; 10]);
        let mut s = script(vec![bytes], true);
        let mut rb = ReadBuf::new();
        assert_eq!(fill(&mut rb, &mut s), Some(15));
        assert!(rb.next_frame().unwrap().is_none());
        assert_eq!(fill(&mut rb, &mut s), None);
        assert!(rb.alloc <= 2 * CHUNK, "{} bytes for 15", rb.alloc);
        assert!(rb.buf.capacity() <= 2 * CHUNK);
    }

    #[test]
    fn a_large_message_grows_the_buffer_with_what_arrives() {
        // 4 MiB of a row claiming 1 GiB, read as a socket delivers it.
        let mut bytes = header(b'D', MAX_MESSAGE_LEN);
        bytes.resize(4 << 20, 7);
        let mut s = script(chunked(&bytes, 16 * 1024), true);
        let mut rb = ReadBuf::new();
        let mut grew = 0;
        let mut last = 0;
        while fill(&mut rb, &mut s).is_some() {
            assert!(rb.next_frame().unwrap().is_none());
            assert!(
                rb.alloc <= 2 * rb.filled + CHUNK,
                "{} bytes allocated for {} arrived",
                rb.alloc,
                rb.filled
            );
            grew += usize::from(rb.alloc != last);
            last = rb.alloc;
        }
        assert_eq!(rb.filled, 4 << 20);
        // Doubling: a handful of moves, not one per read.
        assert!(grew <= 12, "grew {grew} times");
    }

    #[test]
    fn a_short_type_over_its_cap_fails_on_its_header() {
        for (bytes, name) in [
            (header(b'S', 1 << 20), "ParameterStatus ('S')"),
            (header(b'Z', 0x7fff_ffff), "ReadyForQuery ('Z')"),
            (header(b'C', 40_000), "CommandComplete ('C')"),
            (header(b'q', 8), "unknown type 'q'"),
        ] {
            // Only the header arrives: the error must not wait for the body.
            let mut s = script(vec![bytes], true);
            let mut rb = ReadBuf::new();
            fill(&mut rb, &mut s).unwrap();
            let err = match rb.next_frame() {
                Err(e) => e,
                Ok(_) => panic!("{name}: accepted"),
            };
            assert_eq!(err.kind(), aiopg_core::ErrorKind::Protocol);
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn start_up_refuses_long_authentication_requests_and_rows() {
        for (bytes, name) in [
            (header(b'R', 1 << 30), "Authentication ('R')"),
            (header(b'E', 1 << 20), "ErrorResponse ('E')"),
            (row(3), "DataRow ('D')"),
        ] {
            let mut s = script(vec![bytes], true);
            let mut rb = ReadBuf::new();
            fill(&mut rb, &mut s).unwrap();
            let err = match rb.next_message() {
                Err(e) => e,
                Ok(_) => panic!("{name}: accepted"),
            };
            assert!(err.to_string().contains(name), "{err}");
        }
        // What a server really sends is taken.
        let mut ok = message(b'R', &0u32.to_be_bytes());
        ok.extend(message(b'K', &[0; 8]));
        ok.extend(ready());
        let mut s = script(vec![ok], false);
        let mut rb = ReadBuf::new();
        fill(&mut rb, &mut s).unwrap();
        assert!(matches!(
            rb.next_message(),
            Ok(Some(Message::AuthenticationOk))
        ));
        assert!(matches!(
            rb.next_message(),
            Ok(Some(Message::BackendKeyData(_)))
        ));
        assert!(matches!(
            rb.next_message(),
            Ok(Some(Message::ReadyForQuery(_)))
        ));
    }

    #[test]
    fn the_buffer_shrinks_after_a_large_row() {
        let mut bytes = row(10 << 20);
        bytes.extend(ready());
        let mut s = script(chunked(&bytes, CHUNK), false);
        let mut rb = ReadBuf::new();
        let mut rows = Vec::new();
        let mut peak = 0;
        loop {
            while let Some(frame) = rb.next_frame().unwrap() {
                if let Frame::DataRow(r) = frame {
                    rows.push(r);
                }
            }
            peak = peak.max(rb.alloc);
            if fill(&mut rb, &mut s) == Some(0) {
                break;
            }
        }
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].len(), (10 << 20) + 11);
        assert!(
            peak > 10 << 20 && peak <= 2 * (10 << 20) + CHUNK,
            "peak {peak}"
        );
        // The buffer gave the memory back: the row is the only one holding it now, so
        // dropping the row frees it.
        assert!(rb.alloc <= CHUNK, "{} bytes kept", rb.alloc);
        assert!(rows[0].is_unique());
        // And the connection reads on as before.
        let mut s = script(vec![ready(), row(100), ready()], false);
        let mut n = 0;
        while fill(&mut rb, &mut s) != Some(0) {
            while rb.next_frame().unwrap().is_some() {
                n += 1;
            }
        }
        assert_eq!(n, 3);
        assert!(rb.alloc <= 2 * CHUNK);
    }

    /// Reads `chunks` to the end; rows are kept when `keep`, else dropped as they arrive.
    fn read_all(rb: &mut ReadBuf, chunks: Vec<Vec<u8>>, keep: bool) -> Vec<Bytes> {
        let mut s = script(chunks, false);
        let mut rows = Vec::new();
        loop {
            while let Some(frame) = rb.next_frame().unwrap() {
                if let (Frame::DataRow(r), true) = (frame, keep) {
                    rows.push(r);
                }
            }
            if fill(rb, &mut s) == Some(0) {
                return rows;
            }
        }
    }

    fn large_rows(n: usize, size: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for _ in 0..n {
            bytes.extend(row(size));
        }
        bytes.extend(ready());
        bytes
    }

    /// A row size whose last growth step is larger than a chunk (the buffer doubles to 1 MiB,
    /// then needs half a megabyte more), where stopping exactly at the row's end would leave
    /// no room for the next header.
    const LARGE_ROW: usize = 3 << 19;

    #[test]
    fn a_run_of_large_rows_does_not_shrink_between_rows() {
        // Everything has arrived, so each read takes all the room there is: the read that
        // completes a row brings the next row's header too, and the buffer knows it will need
        // the room again.
        let mut rb = ReadBuf::new();
        let rows = read_all(&mut rb, vec![large_rows(4, LARGE_ROW)], true);
        assert_eq!(rows.len(), 4);
        // Once, at the end of the run.
        assert_eq!(rb.shrinks, 1);
        assert!(rb.alloc <= CHUNK);
    }

    #[test]
    fn large_rows_dropped_as_they_arrive_reuse_one_allocation() {
        let mut rb = ReadBuf::new();
        read_all(
            &mut rb,
            chunked(&large_rows(1, LARGE_ROW), 3 * CHUNK),
            false,
        );
        let first = rb.moves;
        let mut rb = ReadBuf::new();
        read_all(
            &mut rb,
            chunked(&large_rows(8, LARGE_ROW), 3 * CHUNK),
            false,
        );
        // Growing for the first row, perhaps once more for the second: then no more moves.
        assert!(
            rb.moves <= first + 2,
            "{} moves, {first} for one row",
            rb.moves
        );
    }

    /// A message as the generator wants it, and as the reader should see it.
    #[derive(Debug, Clone)]
    enum Sent {
        Row(Vec<u8>),
        Ready(u8),
        Param(String, String),
        Complete(String),
        Empty(u8),
        Copy(Vec<u8>),
    }

    impl Sent {
        fn bytes(&self) -> Vec<u8> {
            match self {
                Sent::Row(body) => message(b'D', body),
                Sent::Ready(s) => message(b'Z', &[*s]),
                Sent::Param(n, v) => message(b'S', format!("{n}\0{v}\0").as_bytes()),
                Sent::Complete(t) => message(b'C', format!("{t}\0").as_bytes()),
                Sent::Empty(tag) => message(*tag, &[]),
                Sent::Copy(data) => message(b'd', data),
            }
        }

        fn seen(&self) -> String {
            match self {
                Sent::Row(body) => format!("D{}:{}", body.len(), body.first().unwrap_or(&0)),
                Sent::Ready(s) => format!("Z{}", *s as char),
                Sent::Param(n, v) => format!("S{n}={v}"),
                Sent::Complete(t) => format!("C{t}"),
                Sent::Empty(tag) => format!("{}", *tag as char),
                Sent::Copy(data) => format!("d{}:{}", data.len(), data.first().unwrap_or(&0)),
            }
        }
    }

    fn seen(frame: Frame) -> String {
        match frame {
            Frame::DataRow(b) => format!("D{}:{}", b.len() - 5, b.get(5).unwrap_or(&0)),
            Frame::CopyData(b) => format!("d{}:{}", b.len(), b.first().unwrap_or(&0)),
            Frame::Message(m) => match m {
                Message::ReadyForQuery(b) => format!("Z{}", b.status() as char),
                Message::ParameterStatus(b) => {
                    format!("S{}={}", b.name().unwrap(), b.value().unwrap())
                }
                Message::CommandComplete(b) => format!("C{}", b.tag().unwrap()),
                Message::ParseComplete => "1".into(),
                Message::BindComplete => "2".into(),
                Message::CloseComplete => "3".into(),
                Message::NoData => "n".into(),
                Message::EmptyQueryResponse => "I".into(),
                Message::PortalSuspended => "s".into(),
                _ => "?".into(),
            },
        }
    }

    fn sent() -> impl Strategy<Value = Sent> {
        prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 0..600).prop_map(Sent::Row),
            1 => (CHUNK - 64..CHUNK * 5, any::<u8>()).prop_map(|(n, b)| Sent::Row(vec![b; n])),
            2 => proptest::sample::select(b"ITE".to_vec()).prop_map(Sent::Ready),
            2 => ("[a-z_]{1,20}", "[ -~]{0,40}").prop_map(|(n, v)| Sent::Param(n, v)),
            2 => "[A-Z0-9 ]{1,24}".prop_map(Sent::Complete),
            2 => proptest::sample::select(b"123nIs".to_vec()).prop_map(Sent::Empty),
            3 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Sent::Copy),
        ]
    }

    /// How many bytes each read delivers, used in turn: single bytes (headers split
    /// anywhere), small reads, and socket-sized ones.
    fn reads() -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(
            prop_oneof![1usize..6, 1usize..300, 1usize..3 * CHUNK],
            1..24,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn framing_survives_any_split_of_the_stream(
            messages in proptest::collection::vec(sent(), 1..40),
            sizes in reads(),
        ) {
            let stream: Vec<u8> = messages.iter().flat_map(Sent::bytes).collect();
            let largest = messages.iter().map(|m| m.bytes().len()).max().unwrap_or(0);
            let mut chunks = Vec::new();
            let mut at = 0;
            for size in sizes.iter().cycle() {
                if at == stream.len() {
                    break;
                }
                let end = (at + size).min(stream.len());
                chunks.push(stream[at..end].to_vec());
                at = end;
            }
            let mut s = script(chunks, false);
            let mut rb = ReadBuf::new();
            let mut got = Vec::new();
            loop {
                while let Some(frame) = rb.next_frame().unwrap() {
                    got.push(seen(frame));
                }
                if fill(&mut rb, &mut s) == Some(0) {
                    break;
                }
                // Memory follows the messages, never more than twice the largest.
                prop_assert!(rb.alloc <= 2 * largest + CHUNK + MIN_SPARE, "{} for {largest}", rb.alloc);
            }
            let want: Vec<String> = messages.iter().map(Sent::seen).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(rb.filled, 0);
        }
    }
}
