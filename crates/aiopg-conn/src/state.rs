//! The state machine that owns the socket.
//!
//! There is no background task. Whichever caller is waiting for an answer drives the socket
//! itself, under a short-lived lock: it writes what is queued, reads what has arrived, and
//! routes each message to the request it answers. Requests are answered in the order they
//! were written, each ending with `ReadyForQuery`, so routing is by position in [`State::queue`].
//!
//! One caller with one query at a time therefore pays no hop between tasks or threads. Several
//! callers pipeline: each request is encoded whole into the write buffer under the lock, and
//! whoever polls next writes it. A caller whose answer was read by another is woken by it; a
//! caller that leaves (answered or dropped) while others still wait wakes the first of them, so
//! that someone is always registered with the socket.
//!
//! A request whose caller is dropped stays in the queue, marked abandoned: its answer is read
//! and thrown away by whoever drives next. Because a request is queued all at once or not at
//! all, a dropped future can never leave half a request on the wire.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::backend::Message;

use aiopg_core::error::DbError;
use aiopg_core::protocol::{rows_from_tag, TransactionStatus};
use aiopg_core::row::{parse_row_description, type_for_oid, Column, Row, SimpleRow};
use aiopg_core::types::{Oid, Type};
use aiopg_core::{Error, ErrorKind, Result};
use aiopg_rt::BoxStream;

use crate::io::{poll_write_all, Frame, ReadBuf};
use crate::statement::{Statement, StatementCache};
use crate::{Notification, SimpleQueryMessage};

/// Held-back requests are sent once this many bytes of them are waiting.
const WRITE_BATCH: usize = 16 * 1024;

/// How many notices are kept for [`crate::Connection::notices`] before the oldest are dropped.
const MAX_NOTICES: usize = 64;

/// What a request collects from its answer.
#[derive(Debug)]
pub(crate) enum Collector {
    /// Parse + Describe(statement) + Sync.
    Prepare {
        name: String,
        sql: Arc<str>,
        params: Option<Vec<Type>>,
        columns: Option<Vec<Column>>,
        cache: bool,
    },
    /// Bind + Execute (once or more) + Sync over a statement whose columns are known.
    Query {
        columns: Arc<[Column]>,
        rows: Vec<Row>,
        /// Rows affected, summed over every Execute of the request.
        affected: Option<u64>,
        /// The last command tag.
        tag: Option<String>,
    },
    /// A simple-protocol Query.
    Simple {
        columns: Option<Arc<[Column]>>,
        out: Vec<SimpleQueryMessage>,
    },
    /// Several Bind + Execute pairs under one Sync (an explicit pipeline), each with its own
    /// answer. The server skips everything after the first error until the Sync.
    Batch {
        parts: Vec<BatchPart>,
        /// The part whose answer is arriving.
        current: usize,
        /// The first error and the part it belongs to.
        failed: Option<(usize, Error)>,
    },
}

/// One statement's answer within a [`Collector::Batch`].
#[derive(Debug)]
pub(crate) struct BatchPart {
    pub(crate) columns: Arc<[Column]>,
    pub(crate) rows: Vec<Row>,
    pub(crate) affected: Option<u64>,
    pub(crate) tag: Option<String>,
}

/// A request's result.
#[derive(Debug)]
pub(crate) enum Output {
    Statement(Statement),
    Rows {
        rows: Vec<Row>,
        affected: Option<u64>,
        tag: Option<String>,
    },
    Simple(Vec<SimpleQueryMessage>),
    /// The answers of a pipeline, up to the first failure, and that failure.
    Batch {
        parts: Vec<BatchPart>,
        failed: Option<(usize, Error)>,
    },
    /// A prepared statement whose parameter or column types the client does not know yet:
    /// the caller looks them up and then builds the statement.
    Unresolved {
        name: String,
        sql: Arc<str>,
        params: Vec<Type>,
        columns: Vec<Column>,
        cache: bool,
    },
}

#[derive(Debug)]
enum Slot {
    /// Written (or queued to be written) and waiting for its answer.
    Waiting {
        collector: Collector,
        error: Option<Error>,
    },
    /// Answered; the owner has not collected it yet.
    Done(Result<Output>),
    /// Collected, or abandoned by its owner: only waiting to be popped off the queue.
    Gone,
}

#[derive(Debug)]
struct Entry {
    slot: Slot,
    waker: Option<Waker>,
    abandoned: bool,
    /// How many bytes of the write buffer this request's own messages took.
    wire_len: usize,
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
    pub(crate) write: BytesMut,
    queue: VecDeque<Entry>,
    /// The id of `queue[0]`.
    base_id: u64,
    /// How many entries at the queue's front are answered (their messages are all read).
    answered: usize,
    closed: Option<CloseReason>,
    /// Set when an answer was read: requests held back behind it go out on the next drive.
    flush_due: bool,
    /// Requests queued since the write buffer was last empty: at most this many are not
    /// wholly on the wire yet (an over-count only ever makes writes happen sooner).
    unsent: usize,
    pub(crate) tx_status: TransactionStatus,
    pub(crate) params: HashMap<String, String>,
    pub(crate) notices: VecDeque<DbError>,
    pub(crate) notifications: VecDeque<Notification>,
    pub(crate) notification_waker: Option<Waker>,
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
            queue: VecDeque::new(),
            base_id: 0,
            answered: 0,
            closed: None,
            flush_due: false,
            unsent: 0,
            tx_status: TransactionStatus::Idle,
            params,
            notices: VecDeque::new(),
            notifications: VecDeque::new(),
            notification_waker: None,
            statements,
            types: HashMap::new(),
        }
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

    /// Queues a request whose `wire_len` bytes of messages were just appended to the write
    /// buffer; returns its id.
    pub(crate) fn push(&mut self, collector: Collector, wire_len: usize) -> u64 {
        let id = self.base_id + self.queue.len() as u64;
        self.unsent += 1;
        self.queue.push_back(Entry {
            slot: Slot::Waiting {
                collector,
                error: None,
            },
            waker: None,
            abandoned: false,
            wire_len,
        });
        id
    }

    /// Queues a request nobody waits for: its answer is read and discarded by whoever
    /// drives next. Never taken back, unlike an abandoned request.
    pub(crate) fn push_detached(&mut self, collector: Collector) -> u64 {
        let id = self.push(collector, 0);
        self.entry(id).abandoned = true;
        id
    }

    /// Drives the socket until detached request `id` is answered (or the connection closes).
    pub(crate) fn poll_detached(&mut self, id: u64, cx: &mut Context<'_>) -> Poll<()> {
        // As in `poll_request`: no waking the running task with its own answer.
        if id >= self.base_id {
            let idx = (id - self.base_id) as usize;
            if let Some(e) = self.queue.get_mut(idx) {
                e.waker = None;
            }
        }
        loop {
            if id < self.base_id + self.answered as u64 {
                self.wake_next_driver();
                return Poll::Ready(());
            }
            if self.drive(cx).is_pending() {
                // Registered like any waiting caller, so that it is woken to take over
                // driving, and when its answer arrives.
                let idx = (id - self.base_id) as usize;
                if let Some(e) = self.queue.get_mut(idx) {
                    e.waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
        }
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
            if self.drive(&mut cx).is_pending() {
                break;
            }
        }
        self.closed.is_none()
    }

    /// Evicts a statement from the cache (its plan went stale).
    pub(crate) fn evict(&mut self, sql: &str) {
        self.statements.remove(sql);
    }

    fn entry(&mut self, id: u64) -> &mut Entry {
        let idx = (id - self.base_id) as usize;
        &mut self.queue[idx]
    }

    /// Polls for request `id`'s result, driving the socket meanwhile.
    pub(crate) fn poll_request(&mut self, id: u64, cx: &mut Context<'_>) -> Poll<Result<Output>> {
        // While this caller drives, its own waker stays out of the queue: the answer it reads
        // for itself must not wake the task that is running (on a work-stealing scheduler a
        // task woken during its own poll is queued again and another worker is woken for it,
        // a cross-thread hop on every query).
        let mut mine = self.entry(id).waker.take();
        loop {
            let entry = self.entry(id);
            if let Slot::Done(_) = entry.slot {
                let Slot::Done(out) = std::mem::replace(&mut entry.slot, Slot::Gone) else {
                    unreachable!()
                };
                self.compact();
                self.wake_next_driver();
                return Poll::Ready(out);
            }
            match self.drive(cx) {
                Poll::Ready(()) => continue,
                Poll::Pending => {
                    self.entry(id).waker = Some(match mine.take() {
                        Some(w) if w.will_wake(cx.waker()) => w,
                        _ => cx.waker().clone(),
                    });
                    return Poll::Pending;
                }
            }
        }
    }

    /// The owner of request `id` went away before collecting its result.
    pub(crate) fn abandon(&mut self, id: u64) {
        if id < self.base_id {
            return;
        }
        // A request still wholly in the write buffer, with nothing queued behind it, was never
        // seen by the server: take it back, so that a future dropped before it was polled
        // leaves no trace (a dropped BEGIN must not open a transaction later).
        let idx = (id - self.base_id) as usize;
        let unsent = idx + 1 == self.queue.len()
            && idx >= self.answered
            && self.write.len() >= self.queue[idx].wire_len;
        if unsent {
            let keep = self.write.len() - self.queue[idx].wire_len;
            self.write.truncate(keep);
            self.queue.pop_back();
            self.unsent = self.unsent.saturating_sub(1);
            self.wake_next_driver();
            return;
        }
        let entry = self.entry(id);
        entry.waker = None;
        match entry.slot {
            Slot::Waiting { .. } => entry.abandoned = true,
            Slot::Done(_) => entry.slot = Slot::Gone,
            Slot::Gone => {}
        }
        self.compact();
        // The dropped future may have been the one registered with the socket.
        self.wake_next_driver();
    }

    /// Drops collected entries off the queue's front.
    fn compact(&mut self) {
        while self.answered > 0
            && matches!(self.queue.front(), Some(e) if matches!(e.slot, Slot::Gone))
        {
            self.queue.pop_front();
            self.base_id += 1;
            self.answered -= 1;
        }
    }

    /// Wakes the first caller still waiting for an answer, so that it takes over driving.
    fn wake_next_driver(&mut self) {
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
        } else if let Some(w) = self.notification_waker.take() {
            w.wake();
        }
    }

    /// One round of socket work: write what is queued, read what arrived and route it.
    /// `Ready` means progress was made (or the connection closed); `Pending` means the socket
    /// has nothing for us now and `cx` is registered with it.
    pub(crate) fn drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(());
        };
        // While other requests are on the wire, new ones wait for the next answer and then go
        // out together: the server runs a connection's statements one after another anyway,
        // and one write for many requests is what makes pipelining cheap. With nothing on the
        // wire awaiting an answer, a large backlog, or an answer just read, it sends at once.
        // Holding back only while an answer is certain to come is what keeps this from
        // stalling: that answer's reader sets `flush_due`.
        let unanswered = self.queue.len() - self.answered;
        let on_the_wire = unanswered.saturating_sub(self.unsent);
        let send_now = on_the_wire == 0 || self.flush_due || self.write.len() >= WRITE_BATCH;
        if send_now && !self.write.is_empty() {
            self.flush_due = false;
            let res = poll_write_all(stream, &mut self.write, cx);
            if self.write.is_empty() {
                self.unsent = 0;
            }
            match res {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                Poll::Ready(Err(e)) => {
                    self.close_io("sending to the server failed", e);
                    return Poll::Ready(());
                }
            }
        }
        // Reading even while a write is blocked keeps a large pipelined batch from deadlocking
        // against a server that is itself blocked sending us answers.
        match self.read.poll_fill(stream, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0)) => {
                self.close(CloseReason {
                    kind: ErrorKind::Closed,
                    message: "the server closed the connection".into(),
                    db: None,
                    io: None,
                });
                Poll::Ready(())
            }
            Poll::Ready(Ok(_)) => {
                self.flush_due = true;
                if let Err(e) = self.dispatch_all() {
                    self.close(CloseReason {
                        kind: ErrorKind::Protocol,
                        message: format!(
                            "the server broke the protocol ({e}); the connection was closed"
                        ),
                        db: None,
                        io: None,
                    });
                }
                Poll::Ready(())
            }
            Poll::Ready(Err(e)) => {
                self.close_io("reading from the server failed", e);
                Poll::Ready(())
            }
        }
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
        self.write.clear();
        self.unsent = 0;
        let reason = self.closed.clone().expect("set above");
        for e in self.queue.iter_mut().skip(self.answered) {
            e.slot = if e.abandoned {
                Slot::Gone
            } else {
                Slot::Done(Err(reason.to_error()))
            };
            if let Some(w) = e.waker.take() {
                w.wake();
            }
        }
        self.answered = self.queue.len();
        self.compact();
        if let Some(w) = self.notification_waker.take() {
            w.wake();
        }
    }

    /// Closes a connection whose server stopped answering.
    pub(crate) fn close_stuck(&mut self) {
        self.close(CloseReason {
            kind: ErrorKind::Closed,
            message: "the server did not answer a cancel request in time; the connection was \
                      closed"
                .into(),
            db: None,
            io: None,
        });
    }

    /// Closes the connection at the caller's request.
    pub(crate) fn close_by_client(&mut self) {
        self.close(CloseReason {
            kind: ErrorKind::Closed,
            message: "the connection was closed by the client (close() was called)".into(),
            db: None,
            io: None,
        });
    }

    /// Takes the socket out for a graceful shutdown.
    pub(crate) fn take_stream(&mut self) -> Option<BoxStream> {
        self.stream.take()
    }

    fn dispatch_all(&mut self) -> Result<()> {
        while let Some(frame) = self.read.next_frame()? {
            let msg = match frame {
                Frame::DataRow(row) => {
                    self.dispatch_row(row)?;
                    continue;
                }
                Frame::Message(m) => m,
            };
            self.dispatch(msg)?;
            if self.closed.is_some() {
                break;
            }
        }
        Ok(())
    }

    /// Routes a row to the request it answers: the hot path of every result.
    #[inline]
    fn dispatch_row(&mut self, row: Bytes) -> Result<()> {
        let Some(entry) = self.queue.get_mut(self.answered) else {
            return Err(Error::protocol("a row arrived with no request in flight"));
        };
        let Slot::Waiting { collector, error } = &mut entry.slot else {
            return Err(Error::protocol("a row arrived for an answered request"));
        };
        if error.is_some() {
            return Ok(());
        }
        let res = match collector {
            Collector::Query { columns, rows, .. } => {
                Row::from_frame(columns.clone(), row).map(|r| rows.push(r))
            }
            Collector::Simple { columns, out } => match columns {
                Some(cols) => SimpleRow::from_frame(cols.clone(), row)
                    .map(|r| out.push(SimpleQueryMessage::Row(r))),
                None => Err(Error::protocol("DataRow before RowDescription")),
            },
            Collector::Batch {
                parts,
                current,
                failed: None,
            } => match parts.get_mut(*current) {
                Some(part) => Row::from_frame(part.columns.clone(), row).map(|r| part.rows.push(r)),
                None => Err(Error::protocol(
                    "a row arrived after the pipeline's last result",
                )),
            },
            Collector::Batch { .. } => Ok(()),
            Collector::Prepare { .. } => Err(Error::protocol("a row arrived in answer to Parse")),
        };
        if let Err(e) = res {
            *error = Some(e);
        }
        Ok(())
    }

    fn dispatch(&mut self, msg: Message) -> Result<()> {
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
                if self.notices.len() == MAX_NOTICES {
                    self.notices.pop_front();
                }
                self.notices.push_back(notice);
                return Ok(());
            }
            Message::NotificationResponse(body) => {
                let n = Notification {
                    process_id: body.process_id(),
                    channel: body
                        .channel()
                        .map_err(|e| Error::protocol(e.to_string()))?
                        .to_owned(),
                    payload: body
                        .message()
                        .map_err(|e| Error::protocol(e.to_string()))?
                        .to_owned(),
                };
                self.notifications.push_back(n);
                if let Some(w) = self.notification_waker.take() {
                    w.wake();
                }
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
                    match collector {
                        // A pipeline keeps the answers before the failure.
                        Collector::Batch {
                            current,
                            failed: failed @ None,
                            ..
                        } if error.is_none() => *failed = Some((*current, Error::db(err))),
                        _ if error.is_none() => *error = Some(Error::db(err)),
                        _ => {}
                    }
                }
                return Ok(());
            }
            _ => {}
        }

        let answered = self.answered;
        // Whether this request is the last one queued and nothing is waiting to be written.
        let alone = answered + 1 == self.queue.len() && self.write.is_empty();
        let mut desync = false;
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
                self.tx_status = TransactionStatus::from_byte(body.status())?;
                let Slot::Waiting { collector, error } =
                    std::mem::replace(&mut entry.slot, Slot::Gone)
                else {
                    unreachable!()
                };
                let out = match error {
                    Some(e) => Err(e),
                    None => finish(
                        collector,
                        &mut self.statements,
                        &self.types,
                        entry.abandoned,
                    ),
                };
                // An abandoned answer is dropped here (a prepared statement in it was still
                // cached by `finish`); a detached request's driver is woken to finish.
                if !entry.abandoned {
                    entry.slot = Slot::Done(out);
                }
                if let Some(w) = entry.waker.take() {
                    w.wake();
                }
                self.answered += 1;
                self.compact();
            }
            Message::CopyInResponse(_) => {
                // COPY FROM STDIN sent as a plain query. The server now reads every message as
                // COPY data. With nothing behind this request it can be refused cleanly
                // (CopyFail, plus Sync for the extended protocol, whose own Sync the server
                // skipped in COPY mode). A request pipelined behind it has already been
                // swallowed as COPY data, so the connection cannot be kept in step: close it.
                let simple = matches!(collector, Collector::Simple { .. });
                if alone {
                    if error.is_none() {
                        *error = Some(Error::usage(
                            "COPY ... FROM STDIN cannot run through query() or execute(); \
                             use the COPY API",
                        ));
                    }
                    let _ = postgres_protocol::message::frontend::copy_fail(
                        "COPY FROM STDIN is not supported through query()",
                        &mut self.write,
                    );
                    if !simple {
                        postgres_protocol::message::frontend::sync(&mut self.write);
                    }
                } else {
                    desync = true;
                }
            }
            msg => {
                if error.is_none() {
                    if let Err(e) = collect(collector, msg) {
                        *error = Some(e);
                    }
                }
            }
        }
        if desync {
            self.close(CloseReason {
                kind: ErrorKind::Closed,
                message: "COPY ... FROM STDIN was sent through query() while other requests \
                          were pipelined behind it; use the COPY API"
                    .into(),
                db: None,
                io: None,
            });
        }
        Ok(())
    }
}

/// Routes one message of a request's answer into its collector.
fn collect(collector: &mut Collector, msg: Message) -> Result<()> {
    match (collector, msg) {
        // Statements closed on the server ride on any request; their answers carry nothing.
        (_, Message::CloseComplete) => {}
        (Collector::Query { affected, tag, .. }, Message::CommandComplete(body)) => {
            let t = body.tag().map_err(|e| Error::protocol(e.to_string()))?;
            if let Some(n) = rows_from_tag(t) {
                *affected = Some(affected.unwrap_or(0) + n);
            }
            *tag = Some(t.to_owned());
        }
        (
            Collector::Batch {
                parts,
                current,
                failed: None,
            },
            Message::CommandComplete(body),
        ) => {
            let t = body.tag().map_err(|e| Error::protocol(e.to_string()))?;
            let part = parts
                .get_mut(*current)
                .ok_or_else(|| Error::protocol("more results than pipelined statements"))?;
            part.affected = rows_from_tag(t);
            part.tag = Some(t.to_owned());
            *current += 1;
        }
        (Collector::Batch { current, .. }, Message::EmptyQueryResponse) => *current += 1,
        (
            Collector::Batch { .. },
            Message::BindComplete | Message::ParseComplete | Message::NoData,
        ) => {}
        (Collector::Query { .. }, Message::BindComplete | Message::ParseComplete)
        | (Collector::Query { .. }, Message::EmptyQueryResponse)
        | (Collector::Query { .. }, Message::NoData) => {}
        (Collector::Prepare { params, .. }, Message::ParameterDescription(body)) => {
            use fallible_iterator::FallibleIterator;
            let oids: Vec<u32> = body
                .parameters()
                .collect()
                .map_err(|e| Error::protocol(e.to_string()))?;
            *params = Some(oids.into_iter().map(type_for_oid).collect());
        }
        (Collector::Prepare { columns, .. }, Message::RowDescription(body)) => {
            *columns = Some(parse_row_description(&body)?);
        }
        (Collector::Prepare { columns, .. }, Message::NoData) => *columns = Some(Vec::new()),
        (Collector::Prepare { .. }, Message::ParseComplete) => {}
        (Collector::Simple { columns, .. }, Message::RowDescription(body)) => {
            let cols: Arc<[Column]> = parse_row_description(&body)?.into();
            *columns = Some(cols);
        }
        (Collector::Simple { columns, out }, Message::CommandComplete(body)) => {
            let tag = body.tag().map_err(|e| Error::protocol(e.to_string()))?;
            out.push(SimpleQueryMessage::CommandComplete {
                tag: tag.to_owned(),
                rows: rows_from_tag(tag),
            });
            *columns = None;
        }
        (Collector::Simple { .. }, Message::EmptyQueryResponse)
        | (Collector::Simple { .. }, Message::CopyOutResponse(_) | Message::CopyData(_))
        | (Collector::Simple { .. }, Message::CopyDone) => {}
        (_, Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone) => {}
        (_, msg) => {
            return Err(Error::protocol(format!(
                "unexpected message {} in this answer",
                message_name(&msg)
            )))
        }
    }
    Ok(())
}

/// Turns a request's collected answer into its result once `ReadyForQuery` arrives.
fn finish(
    collector: Collector,
    cache: &mut StatementCache,
    types: &HashMap<Oid, Type>,
    abandoned: bool,
) -> Result<Output> {
    Ok(match collector {
        Collector::Prepare {
            name,
            sql,
            params,
            columns,
            cache: cache_it,
        } => {
            let params = params.ok_or_else(|| Error::protocol("no ParameterDescription"))?;
            let columns = columns.ok_or_else(|| Error::protocol("no RowDescription or NoData"))?;
            // Types looked up earlier replace their placeholders.
            let known = |t: &Type| Type::from_oid(t.oid()).is_some();
            let lookup = |t: Type| match types.get(&t.oid()) {
                Some(resolved) if !known(&t) => resolved.clone(),
                _ => t,
            };
            let params: Vec<Type> = params.into_iter().map(lookup).collect();
            let columns: Vec<Column> = columns
                .into_iter()
                .map(|c| {
                    let t = lookup(c.type_().clone());
                    c.with_type(t)
                })
                .collect();
            let unresolved = params
                .iter()
                .chain(columns.iter().map(Column::type_))
                .any(|t| !known(t) && !types.contains_key(&t.oid()));
            if unresolved {
                if abandoned {
                    // Nobody will finish this statement: close it with the next request.
                    cache.close_later(name);
                    return Err(Error::usage("abandoned"));
                }
                return Ok(Output::Unresolved {
                    name,
                    sql,
                    params,
                    columns,
                    cache: cache_it,
                });
            }
            let stmt = cache.make(name, sql, params, columns);
            if cache_it {
                cache.insert(stmt.clone());
            }
            Output::Statement(stmt)
        }
        Collector::Query {
            rows,
            affected,
            tag,
            ..
        } => Output::Rows {
            rows,
            affected,
            tag,
        },
        Collector::Simple { out, .. } => Output::Simple(out),
        Collector::Batch { parts, failed, .. } => Output::Batch { parts, failed },
    })
}

fn message_name(msg: &Message) -> &'static str {
    match msg {
        Message::AuthenticationOk => "AuthenticationOk",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoData => "NoData",
        Message::NoticeResponse(_) => "NoticeResponse",
        Message::NotificationResponse(_) => "NotificationResponse",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "an authentication message",
    }
}
