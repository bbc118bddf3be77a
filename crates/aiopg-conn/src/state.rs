//! The router: the state machine that owns the socket.
//!
//! There is no background task. Whichever caller is waiting for an answer drives the socket
//! itself, under a short-lived lock: it writes what is queued, reads what has arrived, and
//! routes each frame to the request it answers. Every request ends with Sync (or is one simple
//! Query), so its answer ends with exactly one `ReadyForQuery`: answers are matched to
//! requests by their order in [`State::queue`]. What a request does with its frames is its
//! [`Collector`]'s business (`collect.rs`); the router knows only frames, `ReadyForQuery`,
//! errors, and the messages that may come at any time.
//!
//! # Taking a request back
//!
//! The outgoing bytes form one stream: `sent` bytes of it are on the socket, the write buffer
//! holds the next ones. Each entry records the range of that stream its messages occupy
//! (Closes of dropped statements that ride on it included), so "was any of it written?" is
//! `start < sent`, never a guess. A request whose owner leaves before any of its bytes went
//! out is cut out of the buffer wherever it sits, later ranges shift down, and the Closes it
//! carried go back to the statement cache's list; one whose bytes partly or wholly went out
//! stays, marked abandoned, and its answer is read and dropped. [`State::check`] states the
//! invariant the model test (`tests/model.rs`) checks after every step: the unwritten parts of
//! the queued entries tile the write buffer exactly, in order.
//!
//! # Several callers
//!
//! A caller whose answer was read by another is woken by it; a caller that leaves (answered or
//! dropped) while others still wait wakes the first of them, so that someone is always
//! registered with the socket. A caller never wakes its own task with its own answer (see
//! [`State::poll_request`]).
//!
//! # Row streams and backpressure
//!
//! A streaming request hands its rows to its owner as they arrive. When its buffer is full
//! ([`Collector::is_full`]) the router stops routing and stops reading the socket (the frames
//! already read stay in the read buffer), until the owner takes rows: memory stays bounded
//! by the stream's buffer and one socket read, whatever the result size.

use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use aiopg_core::error::DbError;
use aiopg_core::protocol::TransactionStatus;
use aiopg_core::types::{Oid, Type};
use aiopg_core::{Error, ErrorKind, Result};
use aiopg_rt::BoxStream;

use crate::collect::{message_name, Buffered, Collector, Output};
use crate::events::{Events, DEFAULT_EVENT_CAPACITY};
use crate::io::{poll_write_front, Frame, ReadBuf};
use crate::statement::StatementCache;
use crate::Notification;

/// Held-back requests are sent once this many bytes of them are waiting.
const WRITE_BATCH: usize = 16 * 1024;

/// The `who` of listeners (`Connection::next_notification`) when they drive.
const LISTENER: u64 = u64::MAX;
/// The `who` of `poll_idle`, which polls with a no-op waker and so never holds the socket.
const IDLE_CHECK: u64 = u64::MAX - 1;
/// The `who` of the driver task (`Connection::driver`), when one runs.
pub(crate) const DRIVER: u64 = u64::MAX - 2;

/// Whether the connection starts a driver task of its own while several callers' requests
/// are in flight (see [`State::wants_auto_driver`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AutoDriver {
    /// Never: the runtime's self-wakes are cheap, or the options say no (an owner's own
    /// driver, while it runs, also keeps one from starting).
    Off,
    /// When the next request finds another caller's request unanswered.
    Ready,
    /// Driver `id` was spawned: it runs until nothing is in flight, then ends.
    Running(u64),
}

#[derive(Debug)]
enum Slot {
    /// Queued or written, waiting for (the rest of) its answer.
    Waiting {
        collector: Collector,
        error: Option<Error>,
    },
    /// Answered; the owner has not collected it yet (a stream: not drained yet).
    Done(Result<Output>),
    /// Collected, or abandoned by its owner: only waiting to be popped off the queue.
    Gone,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    /// The range of the outgoing byte stream this request's messages occupy.
    start: u64,
    end: u64,
    /// Statements whose Close messages are part of this request's bytes.
    closes: Vec<String>,
    slot: Slot,
    waker: Option<Waker>,
    /// Nobody will collect the answer: read it and drop it.
    abandoned: bool,
    /// For the request holding the connection exclusively: what must follow its bytes if its
    /// owner leaves mid-way (a COPY's CopyFail), so that the server is not left waiting.
    on_abandon: Option<BytesMut>,
    /// The request's own bytes end the server's COPY mode (its abandoned owner's CopyFail, or
    /// the refusal of a COPY FROM STDIN sent through a query): nothing more to send for it.
    ends_copy: bool,
    /// The request may commit (a `COMMIT`, an implicit transaction): lost once written whole,
    /// its outcome is unknown, which its error says (`CommitUnknown`).
    commits: bool,
    /// How many `ReadyForQuery` messages end the answer: 1, except for a pipelined
    /// transaction, whose COMMIT follows its statements' Sync (see `pipeline.rs`).
    syncs: u32,
}

/// Why the connection closed: enough to build a fresh error for every caller.
#[derive(Debug, Clone)]
struct CloseReason {
    /// `Closed`, or `Protocol` when the server spoke nonsense.
    kind: ErrorKind,
    message: String,
    db: Option<DbError>,
    io: Option<(std::io::ErrorKind, String)>,
}

impl CloseReason {
    fn new(kind: ErrorKind, message: impl Into<String>) -> CloseReason {
        CloseReason {
            kind,
            message: message.into(),
            db: None,
            io: None,
        }
    }

    fn to_error(&self) -> Error {
        let source: Option<aiopg_core::error::BoxError> = if let Some(db) = &self.db {
            Some(Box::new(db.clone()))
        } else {
            self.io
                .as_ref()
                .map(|(k, m)| Box::new(std::io::Error::new(*k, m.clone())) as _)
        };
        Error::new(self.kind, self.message.clone(), source)
    }
}

/// Everything behind the connection's lock.
pub(crate) struct State {
    stream: Option<BoxStream>,
    read: ReadBuf,
    /// Bytes of the outgoing stream not on the socket yet; they start at offset `sent`.
    /// Encoders append to it only inside [`State::issue`].
    pub(crate) write: BytesMut,
    /// Bytes of the outgoing stream written to the socket so far.
    sent: u64,
    queue: VecDeque<Entry>,
    next_id: u64,
    /// The request being encoded may commit (see [`State::commits`]); taken by `push`.
    next_commits: bool,
    /// The request being encoded ends with this many Syncs (see [`State::syncs`]); taken
    /// by `push`.
    next_syncs: u32,
    /// How many entries at the queue's front are answered (their messages are all read).
    answered: usize,
    closed: Option<CloseReason>,
    /// Set when an answer was read: requests held back behind it go out on the next drive.
    flush_due: bool,
    /// The stream took every byte but has not flushed them all (TLS records waiting for a
    /// full socket): the next drive flushes even with nothing new to write.
    unflushed: bool,
    /// Routing stopped with frames left in the read buffer: a stream's buffer is full.
    paused: bool,
    /// The request holding the connection exclusively: its owner is still adding messages to
    /// it (COPY data), so nothing queued after it may be written yet.
    exclusive: Option<u64>,
    /// Owners of COPYs waiting for the hold to end before they start.
    exclusive_waiters: Vec<Waker>,
    /// Who is registered with the socket for reading: the caller (request id, or
    /// [`LISTENER`]) whose last read found nothing, and who will be woken when bytes arrive.
    /// While someone is, other callers do not read (no wasted system call, no stealing the
    /// registration), and a caller leaving needs to wake nobody.
    reader: Option<u64>,
    /// Who is registered with the socket for writing: the caller whose last write found the
    /// socket full. A caller leaving while registered hands over like a reader.
    writer: Option<u64>,
    /// The driver task, when one runs (`Connection::driver`): its number and waker. While it
    /// is here it alone reads the socket; callers still write their own requests, and wake
    /// it when they find it not registered with the socket.
    driver: Option<(u64, Waker)>,
    /// Whether a driver task is started automatically for concurrent callers.
    auto_driver: AutoDriver,
    pub(crate) tx_status: TransactionStatus,
    pub(crate) params: HashMap<String, String>,
    /// Notices and notifications, for the `notices()` and `notifies()` streams.
    pub(crate) notices: Events<DbError>,
    pub(crate) notifications: Events<Notification>,
    pub(crate) statements: StatementCache,
    /// Types looked up from the server's catalog (enums, composites, domains, extensions).
    pub(crate) types: HashMap<Oid, Type>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("in_flight", &self.queue.len())
            .field("closed", &self.closed.is_some())
            .field("tx_status", &self.tx_status)
            .finish_non_exhaustive()
    }
}

impl State {
    pub(crate) fn new(
        stream: BoxStream,
        read: ReadBuf,
        params: HashMap<String, String>,
        statements: StatementCache,
    ) -> State {
        State {
            stream: Some(stream),
            read,
            write: BytesMut::with_capacity(1024),
            sent: 0,
            queue: VecDeque::new(),
            next_id: 0,
            next_commits: false,
            next_syncs: 1,
            answered: 0,
            closed: None,
            flush_due: false,
            unflushed: false,
            paused: false,
            exclusive: None,
            exclusive_waiters: Vec::new(),
            reader: None,
            writer: None,
            driver: None,
            auto_driver: AutoDriver::Off,
            tx_status: TransactionStatus::Idle,
            params,
            notices: Events::new(DEFAULT_EVENT_CAPACITY, "notices"),
            notifications: Events::new(DEFAULT_EVENT_CAPACITY, "notifications"),
            statements,
            types: HashMap::new(),
        }
    }

    pub(crate) fn set_event_capacity(&mut self, capacity: usize) {
        self.notices.set_capacity(capacity);
        self.notifications.set_capacity(capacity);
    }

    /// Lets the connection start a driver task by itself for concurrent callers (`on`), or
    /// never again.
    pub(crate) fn set_auto_driver(&mut self, on: bool) {
        if !on {
            self.auto_driver = AutoDriver::Off;
        } else if self.auto_driver == AutoDriver::Off {
            self.auto_driver = AutoDriver::Ready;
        }
    }

    /// Called after a request was queued: true (and driver `id` recorded as the automatic
    /// one, for the caller to spawn) when automatic drivers are on, none runs, and two or
    /// more requests with owners now wait for answers. Then the futures waiting are many
    /// callers', possibly of one task, and reading their answers from a task of its own
    /// spares the scheduler a wake-up of the running task per read (see
    /// `Runtime::costly_self_wake`). One caller's requests, however pipelined, are one
    /// request each time (`Pipeline`), so they never start one.
    pub(crate) fn wants_auto_driver(&mut self, id: impl FnOnce() -> u64) -> Option<u64> {
        if self.auto_driver != AutoDriver::Ready || self.driver.is_some() || self.closed.is_some() {
            return None;
        }
        let mut owned = self
            .queue
            .iter()
            .skip(self.answered)
            .filter(|e| !e.abandoned && matches!(e.slot, Slot::Waiting { .. }));
        // A second one is there.
        owned.nth(1)?;
        let id = id();
        self.auto_driver = AutoDriver::Running(id);
        Some(id)
    }

    /// Driver `id` is gone (ended or dropped, maybe never polled): if it was the automatic
    /// one, the next burst of concurrent requests may start another.
    pub(crate) fn auto_driver_gone(&mut self, id: u64) {
        if self.auto_driver == AutoDriver::Running(id) {
            self.auto_driver = AutoDriver::Ready;
        }
    }

    /// True while a driver task is registered (see `Connection::has_driver`).
    pub(crate) fn has_driver(&self) -> bool {
        self.driver.is_some()
    }

    /// True while requests are queued or on the wire without their answer yet.
    pub(crate) fn has_unanswered(&self) -> bool {
        self.queue.len() > self.answered
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// The error every call gets once the connection is closed.
    pub(crate) fn closed_error(&self) -> Option<Error> {
        self.closed.as_ref().map(CloseReason::to_error)
    }

    /// Queues a request: `encode` appends its messages to the write buffer and returns what
    /// collects the answer. The Closes of dropped statements ride in front of it, inside its
    /// byte range. Either all of it is queued or, on error, nothing: the write buffer and the
    /// list of Closes are as they were.
    pub(crate) fn issue(
        &mut self,
        encode: impl FnOnce(&mut State) -> Result<Collector>,
    ) -> Result<u64> {
        if let Some(e) = self.closed_error() {
            return Err(e);
        }
        let len = self.write.len();
        let closes = self.statements.take_closes();
        let mut res = Ok(());
        for name in &closes {
            res = frontend::close(b'S', name, &mut self.write)
                .map_err(|e| Error::encode(format!("closing statement: {e}"), Some(Box::new(e))));
            if res.is_err() {
                break;
            }
        }
        let collector = res.and_then(|()| encode(self));
        let res = match collector {
            Ok(collector) => Ok(self.push(collector, len, closes)),
            Err(e) => {
                self.write.truncate(len);
                self.statements.requeue_closes(closes);
                self.next_commits = false;
                self.next_syncs = 1;
                Err(e)
            }
        };
        debug_assert_eq!(self.check(), Ok(()));
        res
    }

    /// Called by an encoder inside [`State::issue`]: the request it encodes may commit, so
    /// that losing the connection once it is written whole is reported as `CommitUnknown`.
    pub(crate) fn commits(&mut self) {
        self.next_commits = true;
    }

    /// Called by an encoder inside [`State::issue`]: the request it encodes holds `n` Syncs
    /// (or simple Queries), so its answer ends with the `n`-th `ReadyForQuery`. The bytes are
    /// still one request: taken back whole or not at all, so that no other request can land
    /// between its parts.
    pub(crate) fn syncs(&mut self, n: u32) {
        self.next_syncs = n.max(1);
    }

    /// Request `id`, already queued, may commit (see [`State::commits`]).
    pub(crate) fn mark_commits(&mut self, id: u64) {
        if let Some(i) = self.index(id) {
            self.queue[i].commits = true;
        }
    }

    /// True when request `id`, still queued, may commit (see [`State::commits`]).
    pub(crate) fn may_commit(&self, id: u64) -> bool {
        self.index(id).is_some_and(|i| self.queue[i].commits)
    }

    /// True when all of request `id`'s bytes are on the socket, or it is no longer queued
    /// (answered): the server has had it whole.
    pub(crate) fn written_whole(&self, id: u64) -> bool {
        self.index(id)
            .is_none_or(|i| self.queue[i].end <= self.sent)
    }

    /// True when request `id` may commit and was written whole without its answer: its
    /// outcome is unknown if it ends now.
    pub(crate) fn commit_in_doubt(&self, id: u64) -> bool {
        self.index(id).is_some_and(|i| {
            let e = &self.queue[i];
            e.commits && e.end <= self.sent && i >= self.answered
        })
    }

    /// Queues a request nobody waits for (clean-up: ROLLBACK, CLOSE of a cursor): its answer is
    /// read and discarded by whoever drives next. Never taken back, unlike an abandoned
    /// request: it runs before anything issued after it.
    pub(crate) fn issue_detached(&mut self, sql: &str) -> Result<u64> {
        let id = self.issue(|st| {
            aiopg_core::protocol::encode_or_rollback(&mut st.write, |w| frontend::query(sql, w))?;
            Ok(Collector::Discard)
        })?;
        let i = self.index(id).expect("just queued");
        self.queue[i].abandoned = true;
        Ok(id)
    }

    fn push(&mut self, collector: Collector, len: usize, closes: Vec<String>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let start = self.sent + len as u64;
        self.queue.push_back(Entry {
            id,
            start,
            end: self.sent + self.write.len() as u64,
            closes,
            slot: Slot::Waiting {
                collector,
                error: None,
            },
            waker: None,
            abandoned: false,
            on_abandon: None,
            ends_copy: false,
            commits: std::mem::take(&mut self.next_commits),
            syncs: std::mem::replace(&mut self.next_syncs, 1),
        });
        id
    }

    /// Queues a request (as [`issue`](Self::issue)) that holds the connection exclusively
    /// until [`release`](Self::release): its owner may keep adding messages to it with
    /// [`append`](Self::append), and requests issued meanwhile are queued behind it but not
    /// written. `on_abandon` is what ends the request on the wire if its owner leaves early.
    /// Fails with a `Usage` error while another request holds the connection.
    pub(crate) fn issue_exclusive(
        &mut self,
        encode: impl FnOnce(&mut State) -> Result<Collector>,
        on_abandon: BytesMut,
    ) -> Result<u64> {
        if self.exclusive.is_some() {
            return Err(Error::usage(
                "another request (a COPY) holds the connection; wait for it to end",
            ));
        }
        let id = self.issue(encode)?;
        let i = self.index(id).expect("just queued");
        self.queue[i].on_abandon = Some(on_abandon);
        self.exclusive = Some(id);
        Ok(id)
    }

    /// Adds messages to exclusive request `id`, right after its bytes (ahead of anything
    /// queued behind it), and replaces what ends it if abandoned.
    pub(crate) fn append(
        &mut self,
        id: u64,
        bytes: &[u8],
        on_abandon: Option<BytesMut>,
    ) -> Result<()> {
        let i = self.held(id)?;
        self.insert_after(i, bytes);
        if on_abandon.is_some() {
            self.queue[i].on_abandon = on_abandon;
        }
        Ok(())
    }

    /// Adds one CopyData message carrying `data` to exclusive request `id` (as
    /// [`append`](Self::append), framing it without a copy of its own).
    pub(crate) fn append_copy_data(&mut self, id: u64, data: &[u8]) -> Result<()> {
        let i = self.held(id)?;
        let len = i32::try_from(data.len() + 4)
            .map_err(|_| Error::encode("a COPY data message over 2 GiB", None))?;
        let mut header = [b'd', 0, 0, 0, 0];
        header[1..].copy_from_slice(&len.to_be_bytes());
        self.insert_parts_after(i, &[&header, data]);
        Ok(())
    }

    /// Where exclusive request `id` sits, if it still holds the connection; otherwise the
    /// error that ended it.
    fn held(&mut self, id: u64) -> Result<usize> {
        if let Some(e) = self.closed_error() {
            return Err(e);
        }
        if self.exclusive != Some(id) {
            return Err(self.take_error(id).unwrap_or_else(|| {
                Error::usage("the request no longer holds the connection (it ended)")
            }));
        }
        Ok(self.index(id).expect("an exclusive request stays queued"))
    }

    /// The error that ended request `id`, taken out (the entry is then collected).
    fn take_error(&mut self, id: u64) -> Option<Error> {
        let i = self.index(id)?;
        if !matches!(self.queue[i].slot, Slot::Done(Err(_))) {
            return None;
        }
        let Slot::Done(Err(e)) = std::mem::replace(&mut self.queue[i].slot, Slot::Gone) else {
            unreachable!()
        };
        self.compact();
        Some(e)
    }

    /// Polls a COPY request until the server says how it begins (CopyInResponse or
    /// CopyOutResponse), or fails it.
    pub(crate) fn poll_copy_started(
        &mut self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<crate::collect::CopyInfo>> {
        let Some(i) = self.index(id) else {
            return Poll::Ready(Err(Error::usage("the COPY already ended")));
        };
        let mine = self.queue[i].waker.take();
        loop {
            let Some(i) = self.index(id) else {
                return Poll::Ready(Err(Error::usage("the COPY already ended")));
            };
            match &self.queue[i].slot {
                Slot::Waiting { collector, .. } => {
                    if let Some(info) = collector.copy_info() {
                        return Poll::Ready(Ok(info.clone()));
                    }
                }
                Slot::Done(Ok(Output::CopyOut(c))) if c.info.is_some() => {
                    return Poll::Ready(Ok(c.info.clone().expect("checked")));
                }
                Slot::Done(Err(_)) => {
                    let e = self.take_error(id).expect("an error");
                    self.leave(id);
                    return Poll::Ready(Err(e));
                }
                Slot::Done(_) => {
                    if let Slot::Done(Ok(Output::CopyOut(c))) =
                        std::mem::replace(&mut self.queue[i].slot, Slot::Gone)
                    {
                        if let Some(e) = c.error {
                            self.compact();
                            self.leave(id);
                            return Poll::Ready(Err(e));
                        }
                    }
                    self.compact();
                    self.leave(id);
                    return Poll::Ready(Err(Error::protocol(
                        "the server ended the COPY before starting it",
                    )));
                }
                Slot::Gone => return Poll::Ready(Err(Error::usage("the COPY already ended"))),
            }
            if self.drive(cx, id).is_pending() {
                self.park(id, cx, mine);
                return Poll::Pending;
            }
        }
    }

    /// Drives the socket until at most `limit` bytes of exclusive request `id` wait to be
    /// written (a COPY's backpressure). Fails with the server's error if the request ended.
    pub(crate) fn poll_drain(
        &mut self,
        id: u64,
        cx: &mut Context<'_>,
        limit: usize,
    ) -> Poll<Result<()>> {
        let Some(i) = self.index(id) else {
            return Poll::Ready(Err(Error::usage("the COPY already ended")));
        };
        let mine = self.queue[i].waker.take();
        // Set once the socket had nothing more for us: the checks run once more (the drive
        // may have written enough), then the caller waits.
        let mut stalled = false;
        loop {
            if let Some(e) = self.closed_error() {
                return Poll::Ready(Err(e));
            }
            let Some(i) = self.index(id) else {
                return Poll::Ready(Err(Error::usage("the COPY already ended")));
            };
            let e = &self.queue[i];
            if let Slot::Done(_) = e.slot {
                let err = self.take_error(id).unwrap_or_else(|| {
                    Error::protocol("the server ended the COPY before the client did")
                });
                return Poll::Ready(Err(err));
            }
            let unsent = e.end.saturating_sub(e.start.max(self.sent));
            if unsent as usize <= limit || stalled {
                // Parked either way: whoever waits next takes over the registrations this
                // caller may hold.
                self.park(id, cx, mine);
                return if unsent as usize <= limit {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            stalled = self.drive(cx, id).is_pending();
        }
    }

    /// Ends exclusive request `id`'s hold: what was queued behind it may go out.
    pub(crate) fn release(&mut self, id: u64) {
        if self.exclusive == Some(id) {
            self.end_hold();
            if let Some(i) = self.index(id) {
                self.queue[i].on_abandon = None;
            }
            self.wake_next_driver();
        }
    }

    /// The hold ends: what was queued behind it may be written, and a COPY waiting to start
    /// may take the connection.
    fn end_hold(&mut self) {
        self.exclusive = None;
        for w in self.exclusive_waiters.drain(..) {
            w.wake();
        }
    }

    /// True while request `id` is a COPY FROM STDIN the server has started: the server waits
    /// for the client's data, which a cancel request does not interrupt.
    pub(crate) fn awaits_copy_data(&self, id: u64) -> bool {
        self.exclusive == Some(id) && self.index(id).is_some_and(|i| {
            matches!(
                &self.queue[i].slot,
                Slot::Waiting { collector, .. }
                    if matches!(collector, Collector::CopyIn(_)) && collector.copy_info().is_some()
            )
        })
    }

    /// True while a request holds the connection exclusively.
    pub(crate) fn is_held(&self) -> bool {
        self.exclusive.is_some()
    }

    /// Ready once no request holds the connection exclusively (or it closed).
    pub(crate) fn poll_hold_free(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.exclusive.is_none() || self.closed.is_some() {
            return Poll::Ready(());
        }
        if !self
            .exclusive_waiters
            .iter()
            .any(|w| w.will_wake(cx.waker()))
        {
            self.exclusive_waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Inserts `bytes` into the outgoing stream at the end of entry `i`'s range; later ranges
    /// shift up.
    fn insert_after(&mut self, i: usize, bytes: &[u8]) {
        self.insert_parts_after(i, &[bytes]);
    }

    /// [`insert_after`](Self::insert_after) of several slices, one after the other.
    fn insert_parts_after(&mut self, i: usize, parts: &[&[u8]]) {
        let at = (self.queue[i].end - self.sent) as usize;
        let before = self.write.len();
        if at == before {
            for p in parts {
                self.write.extend_from_slice(p);
            }
        } else {
            let tail = self.write.split_off(at);
            for p in parts {
                self.write.extend_from_slice(p);
            }
            self.write.unsplit(tail);
        }
        let n = (self.write.len() - before) as u64;
        self.queue[i].end += n;
        for later in self.queue.iter_mut().skip(i + 1) {
            later.start += n;
            later.end += n;
        }
        debug_assert_eq!(self.check(), Ok(()));
    }

    /// Where request `id` sits in the queue, if it is still there.
    #[inline]
    fn index(&self, id: u64) -> Option<usize> {
        match self.queue.front() {
            Some(e) if e.id == id => Some(0),
            _ => self.queue.binary_search_by_key(&id, |e| e.id).ok(),
        }
    }

    /// Drives the socket until detached request `id` is answered (or the connection closes).
    pub(crate) fn poll_detached(&mut self, id: u64, cx: &mut Context<'_>) -> Poll<()> {
        // As in `poll_request`: no waking the running task with its own answer.
        if let Some(i) = self.index(id) {
            self.queue[i].waker = None;
        }
        loop {
            match self.index(id) {
                Some(i) if i >= self.answered => {}
                _ => {
                    self.leave(id);
                    return Poll::Ready(());
                }
            }
            if self.drive(cx, id).is_pending() {
                // Registered like any waiting caller, so that it is woken to take over
                // driving, and when its answer arrives.
                if let Some(i) = self.index(id) {
                    self.queue[i].waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
        }
    }

    /// Someone polling detached request `id` stopped waiting for it (a dropped `settle`): its
    /// waker must not be the one woken to drive, and the next waiting caller takes over.
    pub(crate) fn stop_waiting(&mut self, id: u64) {
        if let Some(i) = self.index(id) {
            self.queue[i].waker = None;
        }
        // Even with no waker left, it may have been woken to take over driving and leave
        // without doing so: hand over unconditionally (a spurious wake-up costs a poll).
        self.leave(id);
    }

    /// True when request `id` is the one the server is working on: the first unanswered
    /// request, with some of its bytes on the wire. A cancel sent now can only hit it (or, if
    /// it finishes first, whatever follows it; see `Connection::with_timeout`).
    pub(crate) fn is_executing(&self, id: u64) -> bool {
        match self.index(id) {
            Some(i) => i == self.answered && self.queue[i].start < self.sent,
            None => false,
        }
    }

    /// Polls for request `id`'s result, driving the socket meanwhile.
    pub(crate) fn poll_request(&mut self, id: u64, cx: &mut Context<'_>) -> Poll<Result<Output>> {
        // While this caller drives, its own waker stays out of the queue: the answer it reads
        // for itself must not wake the task that is running (on a work-stealing scheduler a
        // task woken during its own poll is queued again and another worker is woken for it,
        // a cross-thread hop on every query).
        let Some(i) = self.index(id) else {
            return Poll::Ready(Err(Error::usage("polled a request that already finished")));
        };
        let mine = self.queue[i].waker.take();
        loop {
            let i = self.index(id).expect("an owned request stays queued");
            let entry = &mut self.queue[i];
            if let Slot::Done(_) = entry.slot {
                let Slot::Done(out) = std::mem::replace(&mut entry.slot, Slot::Gone) else {
                    unreachable!()
                };
                self.compact();
                self.leave(id);
                return Poll::Ready(out);
            }
            if self.drive(cx, id).is_pending() {
                self.park(id, cx, mine);
                return Poll::Pending;
            }
        }
    }

    /// Polls a streaming request (a row stream, a COPY TO STDOUT) for what it buffered,
    /// driving the socket meanwhile: moves every buffered item to `out` (empty on entry) and
    /// returns `Some(Ok(()))`, or the error that ended it, or `None` once it ended; its
    /// summary (row count, tag) is then in [`finish_buffered`](Self::finish_buffered).
    pub(crate) fn poll_buffered<B: Buffered>(
        &mut self,
        id: u64,
        cx: &mut Context<'_>,
        out: &mut Vec<B::Item>,
    ) -> Poll<Option<Result<()>>> {
        let Some(i) = self.index(id) else {
            return Poll::Ready(None);
        };
        let mine = self.queue[i].waker.take();
        loop {
            let i = self.index(id).expect("an owned request stays queued");
            match &mut self.queue[i].slot {
                Slot::Waiting { collector, .. } => {
                    if B::in_collector(collector).is_some_and(|b| b.take_into(out)) {
                        return Poll::Ready(Some(Ok(())));
                    }
                }
                Slot::Done(Ok(output)) => {
                    let Some(b) = B::in_output(output) else {
                        return Poll::Ready(None);
                    };
                    if b.take_into(out) {
                        return Poll::Ready(Some(Ok(())));
                    }
                    return Poll::Ready(b.take_error().map(Err));
                }
                Slot::Done(Err(_)) => {
                    let e = self.take_error(id).expect("an error");
                    self.leave(id);
                    return Poll::Ready(Some(Err(e)));
                }
                Slot::Gone => return Poll::Ready(None),
            }
            if self.drive(cx, id).is_pending() {
                self.park(id, cx, mine);
                return Poll::Pending;
            }
        }
    }

    /// Leaves the owner's waker in request `id`'s entry after a poll that found nothing yet,
    /// keeping the one it had when it wakes the same task.
    fn park(&mut self, id: u64, cx: &Context<'_>, mine: Option<Waker>) {
        if let Some(i) = self.index(id) {
            self.queue[i].waker = Some(match mine {
                Some(w) if w.will_wake(cx.waker()) => w,
                _ => cx.waker().clone(),
            });
        }
    }

    /// A finished streaming request's summary; the request leaves the queue.
    pub(crate) fn finish_buffered<B: Buffered>(&mut self, id: u64) -> Option<B::Summary> {
        let i = self.index(id)?;
        let entry = &mut self.queue[i];
        let summary = match &mut entry.slot {
            Slot::Done(Ok(output)) => B::in_output(output).map(|b| b.take_summary()),
            _ => None,
        };
        if matches!(entry.slot, Slot::Done(_)) {
            entry.slot = Slot::Gone;
            self.compact();
            self.leave(id);
        }
        summary
    }

    /// The owner of request `id` went away before collecting its result. Returns whether it
    /// was taken back (none of its bytes written: it never runs); otherwise it stays, and its
    /// answer is read and dropped.
    pub(crate) fn abandon(&mut self, id: u64) -> bool {
        let Some(i) = self.index(id) else {
            return false;
        };
        self.queue[i].waker = None;
        let held = self.exclusive == Some(id);
        if held {
            self.end_hold();
        }
        let entry = &mut self.queue[i];
        if i >= self.answered && entry.start >= self.sent && !entry.abandoned {
            // Not a byte of it was written: the server never saw it, so take it back wherever
            // it sits in the buffer (a dropped BEGIN must not open a transaction later, and a
            // dropped query must not run).
            let from = (entry.start - self.sent) as usize;
            let to = (entry.end - self.sent) as usize;
            let len = to - from;
            let total = self.write.len();
            self.write.copy_within(to..total, from);
            self.write.truncate(total - len);
            let entry = self.queue.remove(i).expect("found above");
            for later in self.queue.iter_mut().skip(i) {
                later.start -= len as u64;
                later.end -= len as u64;
            }
            // The Closes it carried still have to reach the server.
            self.statements.requeue_closes(entry.closes);
            debug_assert_eq!(self.check(), Ok(()));
            self.leave(id);
            return true;
        }
        if let Some(tail) = entry.on_abandon.take() {
            if held && !self.is_closed() {
                // Part of it is on the wire: end it there, so the server is not left waiting.
                self.insert_after(i, &tail);
                self.queue[i].ends_copy = true;
            }
        }
        let entry = &mut self.queue[i];
        match &mut entry.slot {
            Slot::Waiting { collector, .. } => {
                entry.abandoned = true;
                collector.abandon();
            }
            Slot::Done(_) => {
                // Answered but never collected: a statement prepared for nobody is closed
                // with the next request.
                if let Slot::Done(Ok(out)) = std::mem::replace(&mut entry.slot, Slot::Gone) {
                    if let Some(name) = out.orphaned_statement() {
                        self.statements.close_later(name);
                    }
                }
            }
            Slot::Gone => {}
        }
        self.compact();
        // The dropped future may have been the one registered with the socket, or a full
        // stream that held everyone back.
        self.leave(id);
        false
    }

    /// Drops collected entries off the queue's front.
    ///
    /// An entry whose bytes are not all written stays until they are: the server can end a
    /// COPY FROM STDIN (an error) before the client has sent the rest of its data, and those
    /// bytes still belong to it (the server ignores them) until they are on the socket.
    fn compact(&mut self) {
        let sent = self.sent;
        while self.answered > 0
            && matches!(self.queue.front(), Some(e) if matches!(e.slot, Slot::Gone) && e.end <= sent)
        {
            self.queue.pop_front();
            self.answered -= 1;
        }
    }

    /// Caller `me` stops polling (answered, dropped, or done listening). If it may have been
    /// the one registered with the socket, the first caller still waiting takes over driving;
    /// if another caller is registered, that one reads on and nobody needs waking.
    fn leave(&mut self, me: u64) {
        let reads = self.reader.is_none_or(|r| r == me);
        let writes = self.writer == Some(me);
        if reads {
            self.reader = None;
        }
        if writes {
            self.writer = None;
        }
        if reads || writes || self.needs_writer() {
            self.wake_next_driver();
        } else if matches!(self.auto_driver, AutoDriver::Running(_)) && !self.has_unanswered() {
            // The last request in flight was taken back: the automatic driver, parked on
            // the socket, is woken to end.
            if let Some((_, w)) = &self.driver {
                w.wake_by_ref();
            }
        }
    }

    /// Bytes wait to be written and no answer is due whose reader would write them on its
    /// way (the leaver may have just queued them: an abandoned exclusive request's ending).
    fn needs_writer(&self) -> bool {
        !self.write.is_empty() && !self.answer_due()
    }

    /// An answer is certain to come: a request is wholly written and not yet answered.
    fn answer_due(&self) -> bool {
        self.queue
            .get(self.answered)
            .is_some_and(|e| e.end <= self.sent)
    }

    /// Wakes the first caller still waiting for an answer, so that it takes over driving (or
    /// the driver task, when one runs).
    fn wake_next_driver(&mut self) {
        if let Some((_, w)) = &self.driver {
            w.wake_by_ref();
            return;
        }
        let answered = self.answered;
        if let Some(e) = self
            .queue
            .iter_mut()
            .skip(answered)
            .find(|e| e.waker.is_some())
        {
            if let Some(w) = e.waker.take() {
                w.wake();
            }
        } else {
            // Nobody waits for an answer: a listener takes over reading the socket.
            self.wake_listeners();
        }
    }

    /// A caller that may have been registered with the socket stopped polling: wake the
    /// next one waiting so that someone is.
    pub(crate) fn hand_over(&mut self) {
        self.leave(LISTENER);
    }

    fn wake_listeners(&mut self) {
        self.notifications.wake_all();
        self.notices.wake_all();
    }

    /// Polls subscriber `id` of an event feed (`pick` chooses notifications or notices) for
    /// its next event, driving the socket meanwhile like any caller, so that events arrive on
    /// an idle connection too; a caller driving for its own answer that reads one wakes the
    /// subscribers. Once the connection is closed and the buffered events are taken, the
    /// subscriber gets the closing error once, then `None`.
    pub(crate) fn poll_event<T: Clone>(
        &mut self,
        pick: fn(&mut State) -> &mut Events<T>,
        id: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<T>>> {
        // As a request's owner: no waking the running task with what it reads itself.
        pick(self).unpark(id);
        loop {
            if let Some(event) = pick(self).take(id) {
                // This subscriber may have been the one registered with the socket, and its
                // owner may not poll again soon: the next waiting caller takes over, as when
                // a request's owner leaves.
                self.leave(LISTENER);
                return Poll::Ready(Some(event));
            }
            if let Some(e) = self.closed_error() {
                return Poll::Ready(pick(self).end_sub(id).then_some(Err(e)));
            }
            // Driving is everyone's job: with requests in flight a subscriber may end up the
            // only one polling (their owners gone), and it routes their answers too.
            if self.drive(cx, LISTENER).is_pending() {
                break;
            }
        }
        pick(self).park(id, cx.waker());
        Poll::Pending
    }

    /// With no request in flight, reads what the socket already holds without waiting and
    /// routes it (a FATAL error or end of stream closes the connection). Returns whether the
    /// connection is still open.
    pub(crate) fn poll_idle(&mut self) -> bool {
        if self.closed.is_some() {
            return false;
        }
        if self.has_unanswered() {
            // Whoever waits for those answers reads the socket.
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        while self.closed.is_none() {
            if self.drive(&mut cx, IDLE_CHECK).is_pending() {
                break;
            }
        }
        if let Some((_, w)) = &self.driver {
            // Its registration with the socket may have been replaced by the no-op waker.
            w.wake_by_ref();
        }
        self.closed.is_none()
    }

    /// One round of socket work: write what is queued, read what arrived and route it.
    /// `Ready` means progress was made (or the connection closed); `Pending` means the socket
    /// has nothing for us now and `cx` is registered with it (or a full stream holds reading
    /// back, and its owner will drive once it takes rows).
    pub(crate) fn drive(&mut self, cx: &mut Context<'_>, who: u64) -> Poll<()> {
        if self.stream.is_none() {
            return Poll::Ready(());
        }
        if self.reader == Some(who) {
            // It was woken (or polls anyway): it reads again below, and registers afresh if
            // nothing is there.
            self.reader = None;
        }
        if self.writer == Some(who) {
            self.writer = None;
        }
        if self.paused {
            // Frames are waiting in the read buffer: route them before reading more.
            match self.route_buffered() {
                Ok(true) => return Poll::Ready(()),
                Ok(false) => {}
                Err(e) => {
                    self.close_protocol(e);
                    return Poll::Ready(());
                }
            }
        }
        // While other requests are on the wire, new ones wait for the next answer and then go
        // out together: the server runs a connection's statements one after another anyway,
        // and one write for many requests is what makes pipelining cheap. With nothing on the
        // wire awaiting an answer, a large backlog, or an answer just read, it sends at once.
        // Holding back only while an answer is certain to come (a request wholly written and
        // not answered) is what keeps this from stalling: that answer's reader sets
        // `flush_due`.
        //
        // While a driver task runs, it writes instead: callers only encode and wake it, and it
        // holds requests back by the same rule, so that a request queued behind a running
        // statement stays unsent (a timeout takes it back, it never runs) with or without a
        // driver, and whatever was encoded meanwhile goes out in one write.
        let driven = self.driver.is_some() && who != DRIVER && who != IDLE_CHECK;
        let send_now = !self.answer_due() || self.flush_due || self.write.len() >= WRITE_BATCH;
        // Nothing queued behind a request holding the connection goes out before it ends.
        let limit = match self.exclusive.and_then(|id| self.index(id)) {
            Some(i) => (self.queue[i].end - self.sent) as usize,
            None => self.write.len(),
        };
        let stream = self.stream.as_mut().expect("checked above");
        if !driven && ((send_now && limit > 0) || self.unflushed) {
            self.flush_due = false;
            let before = self.write.len();
            let take = if send_now { limit } else { 0 };
            let res = poll_write_front(stream, &mut self.write, take, cx);
            self.sent += (before - self.write.len()) as u64;
            if self.answered > 0 {
                // The rest of an answered COPY may just have gone out.
                self.compact();
            }
            if let Some(x) = self.exclusive.filter(|&x| x != who) {
                // A COPY's writer may wait for its data to go out (`poll_drain`), which this
                // caller's write just did: no answer will wake it, so this must.
                if before != self.write.len() {
                    if let Some(w) = self.index(x).and_then(|i| self.queue[i].waker.take()) {
                        w.wake();
                    }
                }
            }
            debug_assert_eq!(self.check(), Ok(()));
            self.unflushed = res.is_pending();
            match res {
                Poll::Ready(Ok(())) => {}
                Poll::Pending => {
                    if who != IDLE_CHECK {
                        self.writer = Some(who);
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.close_io("sending to the server failed", e);
                    return Poll::Ready(());
                }
            }
        }
        if self.paused {
            // A full stream holds reading back until its owner takes rows.
            if driven && !self.write.is_empty() {
                if let Some((_, w)) = &self.driver {
                    w.wake_by_ref();
                }
            }
            return Poll::Pending;
        }
        if who == IDLE_CHECK {
            if self.reader == Some(DRIVER) {
                // The idle check reads what the socket holds itself, without waiting; the
                // driver is woken afterwards to register with the socket again (`poll_idle`).
                self.reader = None;
            }
        } else if driven {
            if let Some((_, w)) = &self.driver {
                // The driver task writes and reads: it sends this caller's request, routes its
                // answer and wakes it. Registered with the socket and with nothing to send, it
                // need not be woken (bytes from the server wake it).
                if self.reader != Some(DRIVER) || !self.write.is_empty() {
                    w.wake_by_ref();
                }
                return Poll::Pending;
            }
        }
        if self.reader.is_some() {
            // Another caller is registered with the socket: it reads, routes this caller's
            // answer and wakes it, or wakes it to take over when it leaves.
            return Poll::Pending;
        }
        // Reading even while a write is blocked keeps a large pipelined batch from deadlocking
        // against a server that is itself blocked sending us answers.
        let stream = self.stream.as_mut().expect("checked above");
        match self.read.poll_fill(stream, cx) {
            Poll::Pending => {
                if who != IDLE_CHECK {
                    self.reader = Some(who);
                }
                Poll::Pending
            }
            Poll::Ready(Ok(0)) => {
                self.close(CloseReason::new(
                    ErrorKind::Closed,
                    "the server closed the connection",
                ));
                Poll::Ready(())
            }
            Poll::Ready(Ok(_)) => {
                self.flush_due = true;
                if let Err(e) = self.route_buffered() {
                    self.close_protocol(e);
                }
                Poll::Ready(())
            }
            Poll::Ready(Err(e)) => {
                self.close_io("reading from the server failed", e);
                Poll::Ready(())
            }
        }
    }

    fn close_protocol(&mut self, e: Error) {
        self.close(CloseReason::new(
            ErrorKind::Protocol,
            format!(
                "the server broke the protocol, so the connection was closed: {}",
                e.message().unwrap_or("malformed data")
            ),
        ));
    }

    fn close_io(&mut self, what: &str, e: std::io::Error) {
        self.close(CloseReason {
            kind: ErrorKind::Closed,
            message: format!("{what}: {e}"),
            db: None,
            io: Some((e.kind(), e.to_string())),
        });
    }

    /// Closes the connection: drops the socket and fails every unanswered request.
    fn close(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            tracing::debug!(reason = %reason.message, "connection closed");
            self.closed = Some(reason);
        }
        self.stream = None;
        // What the server can have seen: the bytes on the socket, not those dropped now.
        let written = self.sent;
        self.sent += self.write.len() as u64;
        self.write.clear();
        self.paused = false;
        self.end_hold();
        self.reader = None;
        self.writer = None;
        if let Some((_, w)) = self.driver.take() {
            // Its work is over: it ends when it sees the connection closed.
            w.wake();
        }
        let reason = self.closed.clone().expect("set above");
        for e in self.queue.iter_mut().skip(self.answered) {
            e.slot = if e.abandoned {
                Slot::Gone
            } else if e.commits && e.end <= written {
                // The server had all of it: it may have run, and committed.
                Slot::Done(Err(Error::commit_unknown(
                    "the connection was lost",
                    Some(Box::new(reason.to_error())),
                )))
            } else {
                // Not a whole request reached the server: it never ran.
                Slot::Done(Err(reason.to_error()))
            };
            if let Some(w) = e.waker.take() {
                w.wake();
            }
        }
        self.answered = self.queue.len();
        self.compact();
        self.wake_listeners();
    }

    /// Polls driver task `id`: registers it (unless another driver runs: then it ends at
    /// once), and reads and routes until the socket has nothing more, at most `budget`
    /// reads per poll (then it yields, woken again at once, so that it never hogs its
    /// worker). `Ready` when it has nothing more to do: the connection closed, or another
    /// driver runs.
    pub(crate) fn poll_driver(&mut self, id: u64, cx: &mut Context<'_>, budget: u32) -> Poll<()> {
        if self.closed.is_some() {
            self.end_driver(id);
            return Poll::Ready(());
        }
        match &mut self.driver {
            Some((d, w)) if *d == id => {
                if !w.will_wake(cx.waker()) {
                    *w = cx.waker().clone();
                }
            }
            // The owner's own driver takes over from an automatic one, which ends when it
            // next polls.
            Some((d, _)) if self.auto_driver != AutoDriver::Running(*d) => return Poll::Ready(()),
            _ => {
                if let Some((_, auto)) = self.driver.replace((id, cx.waker().clone())) {
                    // The automatic driver it replaces is woken to see that and end.
                    auto.wake();
                }
                // A caller registered with the socket gives it up: the driver's read takes
                // over the socket's registration, and the caller, parked in its request's
                // entry, is woken with its answer as any parked caller is.
                if self.reader.is_some_and(|r| r != DRIVER) {
                    self.reader = None;
                }
            }
        }
        let auto = self.auto_driver == AutoDriver::Running(id);
        for _ in 0..budget {
            let pending = self.drive(cx, DRIVER).is_pending();
            if auto && !self.has_unanswered() && self.write.is_empty() {
                // Nothing in flight: an automatic driver's work is done (in the same turn as
                // the last answer it routed), and the next caller reads for itself, without
                // the hop. Whatever else arrives (notifications) its listeners read.
                self.end_driver(id);
                self.auto_driver_gone(id);
                return Poll::Ready(());
            }
            if pending {
                return Poll::Pending;
            }
            if self.closed.is_some() {
                self.end_driver(id);
                return Poll::Ready(());
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Driver task `id` stops (dropped, or done): callers drive for themselves again, and the
    /// first one waiting (or a listener) takes over the socket.
    pub(crate) fn end_driver(&mut self, id: u64) {
        if !matches!(self.driver, Some((d, _)) if d == id) {
            return;
        }
        self.driver = None;
        if self.reader == Some(DRIVER) {
            self.reader = None;
        }
        if self.writer == Some(DRIVER) {
            self.writer = None;
        }
        self.wake_next_driver();
    }

    /// The connection's last handle is gone: a parked driver task is woken to find that out
    /// and end.
    pub(crate) fn release_driver(&mut self) {
        if let Some((_, w)) = self.driver.take() {
            w.wake();
        }
    }

    /// Closes a connection whose server stopped answering.
    pub(crate) fn close_stuck(&mut self) {
        self.close(CloseReason::new(
            ErrorKind::Closed,
            "the server did not answer a cancel request in time; the connection was closed",
        ));
    }

    /// Closes the connection after a timeout gave up on a sent request that may commit: its
    /// outcome is unknown, and the connection must not go on as if it were known.
    pub(crate) fn close_commit_timed_out(&mut self) {
        self.close(CloseReason::new(
            ErrorKind::Closed,
            "a COMMIT (or an implicit transaction) outlived its timeout once sent, so its outcome \
             is unknown; the connection was closed",
        ));
    }

    /// Closes the connection at the caller's request.
    pub(crate) fn close_by_client(&mut self) {
        self.close(CloseReason::new(
            ErrorKind::Closed,
            "the connection was closed by the client (close() was called)",
        ));
    }

    /// Takes the socket out for a graceful shutdown.
    pub(crate) fn take_stream(&mut self) -> Option<BoxStream> {
        self.stream.take()
    }

    /// Routes the frames in the read buffer. Stops early, leaving the rest buffered, when the
    /// request being answered is a stream whose buffer is full. Returns whether any frame was
    /// routed.
    fn route_buffered(&mut self) -> Result<bool> {
        let mut routed = false;
        self.paused = false;
        loop {
            if self.queue.get(self.answered).is_some_and(
                |e| matches!(&e.slot, Slot::Waiting { collector, .. } if collector.is_full()),
            ) {
                self.paused = true;
                return Ok(routed);
            }
            let Some(frame) = self.read.next_frame()? else {
                return Ok(routed);
            };
            routed = true;
            match frame {
                Frame::DataRow(row) => self.route_row(row)?,
                Frame::CopyData(data) => self.route_copy_data(data)?,
                Frame::Message(m) => self.route(m)?,
            }
            if self.closed.is_some() {
                return Ok(true);
            }
        }
    }

    /// Routes a row to the request it answers: the hot path of every result.
    #[inline]
    fn route_row(&mut self, row: Bytes) -> Result<()> {
        let Some(entry) = self.queue.get_mut(self.answered) else {
            return Err(Error::protocol("a row arrived with no request in flight"));
        };
        let Slot::Waiting { collector, error } = &mut entry.slot else {
            return Err(Error::protocol("a row arrived for an answered request"));
        };
        if error.is_some() {
            return Ok(());
        }
        match collector.row(row) {
            // A stream's first buffered row wakes its owner (unless the owner is the one
            // driving: its waker is out of the queue then).
            Ok(true) => {
                if let Some(w) = entry.waker.take() {
                    w.wake();
                }
            }
            Ok(false) => {}
            Err(e) => *error = Some(e),
        }
        Ok(())
    }

    /// Routes a COPY TO STDOUT's data to the request it answers.
    #[inline]
    fn route_copy_data(&mut self, data: Bytes) -> Result<()> {
        let Some(entry) = self.queue.get_mut(self.answered) else {
            return Err(Error::protocol(
                "COPY data arrived with no request in flight",
            ));
        };
        let Slot::Waiting { collector, error } = &mut entry.slot else {
            return Err(Error::protocol("COPY data arrived for an answered request"));
        };
        if error.is_none() && collector.copy_data(data) {
            if let Some(w) = entry.waker.take() {
                w.wake();
            }
        }
        Ok(())
    }

    fn route(&mut self, msg: Message) -> Result<()> {
        // Messages the server may send at any time never reach a request.
        match msg {
            Message::NoticeResponse(body) => {
                let notice = DbError::parse(&mut body.fields())
                    .map_err(|e| Error::protocol(format!("malformed notice: {e}")))?;
                tracing::info!(severity = notice.severity(), code = %notice.code(), "{}", notice.message());
                // A notice raised by a request nobody waits for (clean-up such as a ROLLBACK
                // that finds no transaction) is not the connection's next user's business.
                if self.queue.get(self.answered).is_some_and(|e| e.abandoned) {
                    return Ok(());
                }
                self.notices.push(notice);
                return Ok(());
            }
            Message::NotificationResponse(body) => {
                let n = Notification {
                    pid: body.process_id(),
                    channel: body
                        .channel()
                        .map_err(|e| Error::protocol(e.to_string()))?
                        .to_owned(),
                    payload: body
                        .message()
                        .map_err(|e| Error::protocol(e.to_string()))?
                        .to_owned(),
                };
                self.notifications.push(n);
                return Ok(());
            }
            Message::ParameterStatus(body) => {
                let name = body.name().map_err(|e| Error::protocol(e.to_string()))?;
                let value = body.value().map_err(|e| Error::protocol(e.to_string()))?;
                self.params.insert(name.to_owned(), value.to_owned());
                return Ok(());
            }
            Message::ErrorResponse(body) => {
                let err = DbError::parse(&mut body.fields())
                    .map_err(|e| Error::protocol(format!("malformed error: {e}")))?;
                if matches!(err.severity(), "FATAL" | "PANIC")
                    || matches!(
                        err.parsed_severity(),
                        Some(
                            aiopg_core::error::Severity::Fatal | aiopg_core::error::Severity::Panic
                        )
                    )
                {
                    // The server ends the session after a FATAL error: close now, so that every
                    // caller learns why instead of meeting a bare end of stream.
                    self.close(CloseReason {
                        kind: ErrorKind::Closed,
                        message: format!("the server ended the session: {}", err.message()),
                        db: Some(err),
                        io: None,
                    });
                    return Ok(());
                }
                let Some(entry) = self.queue.get_mut(self.answered) else {
                    return Err(Error::protocol(format!(
                        "error with no request in flight: {err}"
                    )));
                };
                if let Slot::Waiting { error, collector } = &mut entry.slot {
                    if error.is_none() {
                        *error = collector.take_error(Error::db(err));
                    }
                }
                return Ok(());
            }
            _ => {}
        }

        let answered = self.answered;
        let Some(entry) = self.queue.get_mut(answered) else {
            return Err(Error::protocol(format!(
                "unexpected message {} with no request in flight",
                message_name(&msg)
            )));
        };
        let Slot::Waiting { collector, error } = &mut entry.slot else {
            return Err(Error::protocol("message for an answered request"));
        };

        match msg {
            Message::ReadyForQuery(body) => {
                let status = TransactionStatus::from_byte(body.status())?;
                if entry.syncs > 1 {
                    // One of the request's inner Syncs: its answer goes on. The connection's
                    // status stays the one between requests, which is what other callers
                    // (and this request's end) go by.
                    entry.syncs -= 1;
                    if !collector.sync_point(status) {
                        // What follows can no longer commit (a failed transaction block only
                        // rolls back): losing it now is a plain failure.
                        entry.commits = false;
                    }
                    return Ok(());
                }
                self.tx_status = status;
                let held = self.exclusive == Some(entry.id);
                let Slot::Waiting { collector, error } =
                    std::mem::replace(&mut entry.slot, Slot::Gone)
                else {
                    unreachable!()
                };
                if entry.abandoned {
                    // Nobody collects this answer; a statement it prepared is closed later.
                    if let Some(name) = collector.orphaned_statement() {
                        if error.is_none() {
                            self.statements.close_later(name);
                        }
                    }
                } else {
                    entry.slot = Slot::Done(collector.finish(error));
                }
                if let Some(w) = entry.waker.take() {
                    w.wake();
                }
                self.answered += 1;
                self.compact();
                if held {
                    // The server ended the request (an error mid-COPY): it drops whatever
                    // else its owner sends, so the hold ends here.
                    self.end_hold();
                }
            }
            Message::CopyInResponse(body) => {
                match collector.copy_in_started(&body) {
                    // The COPY API's request: its owner now sends the data.
                    Ok(true) => {
                        if let Some(w) = entry.waker.take() {
                            w.wake();
                        }
                        return Ok(());
                    }
                    Ok(false) => {}
                    Err(e) => return Err(e),
                }
                if entry.ends_copy {
                    // Its abandoned owner's CopyFail follows: the server ends the COPY there.
                    return Ok(());
                }
                // COPY FROM STDIN sent through a query (or copy_out). The server now reads
                // every message as COPY data. With nothing written after this request it can
                // be refused cleanly (CopyFail, plus Sync for the extended protocol, whose own
                // Sync the server skipped in COPY mode). A request pipelined behind it has
                // already been swallowed as COPY data, so the connection cannot be kept in
                // step: close it.
                // (A request of several Syncs has its own messages behind the COPY: the same.)
                if entry.end < self.sent || entry.syncs > 1 {
                    self.close(CloseReason::new(
                        ErrorKind::Closed,
                        "COPY ... FROM STDIN was sent through query() while other requests \
                         were pipelined behind it; use the COPY API",
                    ));
                    return Ok(());
                }
                if error.is_none() {
                    *error = Some(Error::usage(
                        "COPY ... FROM STDIN cannot run through query(), execute() or \
                         copy_out(); use copy_in",
                    ));
                }
                let simple = matches!(
                    collector,
                    Collector::Simple(_) | Collector::Discard | Collector::CopyOut(_)
                );
                let mut tail = BytesMut::new();
                let _ = frontend::copy_fail("COPY FROM STDIN is not supported here", &mut tail);
                if !simple {
                    frontend::sync(&mut tail);
                }
                // These bytes belong to the request being answered, ahead of anything queued
                // behind it.
                entry.ends_copy = true;
                self.insert_after(answered, &tail);
            }
            Message::CopyOutResponse(body) => {
                let copy_out = matches!(collector, Collector::CopyOut(_));
                if error.is_none() {
                    if let Err(e) = collector.message(Message::CopyOutResponse(body)) {
                        *error = Some(e);
                    }
                }
                if copy_out {
                    if let Some(w) = entry.waker.take() {
                        w.wake();
                    }
                    // It will send nothing more: requests queued behind it may go out.
                    if self.exclusive == Some(entry.id) {
                        self.end_hold();
                    }
                }
            }
            msg => {
                if error.is_none() {
                    if let Err(e) = collector.message(msg) {
                        *error = Some(e);
                    }
                }
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn dump(&self) -> String {
        let mut out = format!(
            "sent={} write={} answered={} reader={:?} writer={:?} driver={:?} exclusive={:?} paused={} flush_due={} unflushed={}\n",
            self.sent, self.write.len(), self.answered, self.reader, self.writer, self.driver.as_ref().map(|d| d.0), self.exclusive, self.paused, self.flush_due, self.unflushed
        );
        for e in &self.queue {
            let slot = match &e.slot {
                Slot::Waiting { collector, error } => format!(
                    "Waiting({:?}, err={})",
                    std::mem::discriminant(collector),
                    error.is_some()
                ),
                Slot::Done(r) => format!("Done(ok={})", r.is_ok()),
                Slot::Gone => "Gone".into(),
            };
            out.push_str(&format!(
                "  id={} {}..{} {slot} waker={} abandoned={} ends_copy={} syncs={}\n",
                e.id,
                e.start,
                e.end,
                e.waker.is_some(),
                e.abandoned,
                e.ends_copy,
                e.syncs
            ));
        }
        out
    }

    /// Checks the bookkeeping that answers and take-backs rely on; `Err` says what broke.
    /// The model test calls it after every step; debug builds (every integration test
    /// against the real server) assert it after every change to the queue or the buffer.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        if self.driver.is_none() && (self.reader == Some(DRIVER) || self.writer == Some(DRIVER)) {
            return Err("the socket is registered to a driver that is gone".into());
        }
        if self.driver.is_some() && self.reader.is_some_and(|r| r != DRIVER) {
            return Err(format!(
                "caller {:?} is registered to read while a driver runs",
                self.reader
            ));
        }
        if self.answered > self.queue.len() {
            return Err(format!(
                "{} answered of {} queued",
                self.answered,
                self.queue.len()
            ));
        }
        let mut next = None;
        let mut last_id = None;
        for e in &self.queue {
            if last_id.is_some_and(|l| e.id <= l) {
                return Err("ids out of order".into());
            }
            last_id = Some(e.id);
            if e.start > e.end {
                return Err(format!("request {} has range {}..{}", e.id, e.start, e.end));
            }
            if e.syncs == 0 {
                return Err(format!("request {} waits for no ReadyForQuery", e.id));
            }
            if e.end <= self.sent {
                continue;
            }
            // The unwritten parts tile the write buffer in queue order.
            let from = e.start.max(self.sent);
            if let Some(n) = next {
                if from != n {
                    return Err(format!(
                        "request {} starts at {from}, the previous one ended at {n}",
                        e.id
                    ));
                }
            } else if from != self.sent {
                return Err(format!(
                    "the write buffer starts at {} but its first request at {from}",
                    self.sent
                ));
            }
            next = Some(e.end);
        }
        let buffered_to = self.sent + self.write.len() as u64;
        if next.unwrap_or(self.sent) != buffered_to {
            return Err(format!(
                "the write buffer ends at {buffered_to} but its last request at {}",
                next.unwrap_or(self.sent)
            ));
        }
        Ok(())
    }
}
