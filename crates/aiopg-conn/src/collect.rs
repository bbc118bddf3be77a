//! What each kind of request does with its answer.
//!
//! The router (`state.rs`) hands a request's frames to its [`Collector`], in order, up to and
//! excluding its `ReadyForQuery`, and then calls [`Collector::finish`]. It knows nothing else of
//! what the frames mean: adding a kind of request (COPY, a new result shape) adds a variant
//! here and touches no routing. An enum rather than a trait object keeps a query free of the
//! allocation a `Box<dyn ..>` would cost on every request.
//!
//! Messages the server may send at any time (notices, notifications, parameter status) and
//! `ErrorResponse` never reach a collector: the router handles those.

use std::sync::Arc;

use bytes::Bytes;
use postgres_protocol::message::backend::Message;

use aiopg_core::protocol::{rows_from_tag, TransactionStatus};
use aiopg_core::row::{parse_row_description, type_for_oid, Column, Row, SimpleRow};
use aiopg_core::types::Type;
use aiopg_core::{Error, Result};

use crate::SimpleQueryMessage;

/// A row stream buffers at most this many rows before the connection stops reading...
#[cfg(not(test))]
const STREAM_ROWS: usize = 256;
#[cfg(test)]
const STREAM_ROWS: usize = 2;
/// ... or this many bytes of row data, whichever comes first.
const STREAM_BYTES: usize = 256 * 1024;

/// Collects one request's answer.
#[derive(Debug)]
pub(crate) enum Collector {
    /// Parse + Describe(statement) + Sync.
    Prepare(Prepare),
    /// Bind + Execute (once or more) + Sync: rows kept until the end.
    Rows(Rows),
    /// A simple-protocol Query.
    Simple(Simple),
    /// Several Bind + Execute pairs under one Sync (an explicit pipeline), each with its own
    /// answer. The server skips everything after the first error until the Sync.
    Batch(Batch),
    /// Bind + Execute + Sync whose rows go to their owner as they arrive.
    Stream(StreamRows),
    /// `COPY ... FROM STDIN`: the server's CopyInResponse, then the count once it ends.
    CopyIn(CopyIn),
    /// `COPY ... TO STDOUT`: its data goes to the owner as it arrives, as a stream's rows.
    CopyOut(CopyOut),
    /// An answer nobody reads (clean-up sent with [`crate::Connection::detach`]).
    Discard,
}

#[derive(Debug)]
pub(crate) struct Prepare {
    pub(crate) name: String,
    pub(crate) sql: Arc<str>,
    pub(crate) cache: bool,
    params: Option<Vec<Type>>,
    columns: Option<Vec<Column>>,
}

#[derive(Debug)]
pub(crate) struct Rows {
    columns: Arc<[Column]>,
    /// The columns come with the answer (a portal's RowDescription), not from a statement.
    described: bool,
    rows: Vec<Row>,
    /// Rows affected, summed over every Execute of the request.
    affected: Option<u64>,
    /// The last command tag.
    tag: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Simple {
    columns: Option<Arc<[Column]>>,
    out: Vec<SimpleQueryMessage>,
}

#[derive(Debug)]
pub(crate) struct Batch {
    parts: Vec<BatchPart>,
    /// The part whose answer is arriving.
    current: usize,
    /// The first error and the part it belongs to.
    failed: Option<(usize, Error)>,
    /// A pipelined transaction: `BEGIN` ahead of the parts, `COMMIT` after their Sync.
    tx: Option<TxEnds>,
}

/// What the server said of a pipelined transaction's own statements: its `BEGIN` (before the
/// parts, under their Sync) and its `COMMIT` (a simple Query after that Sync, which the server
/// runs as `ROLLBACK` when the block failed).
#[derive(Debug, Default)]
pub(crate) struct TxEnds {
    /// BEGIN's CommandComplete arrived.
    pub(crate) begun: bool,
    /// BEGIN failed (the parts never ran).
    pub(crate) begin_error: Option<Error>,
    /// The transaction status at the parts' Sync, once it came.
    pub(crate) synced: Option<TransactionStatus>,
    /// The COMMIT's command tag: `COMMIT`, or `ROLLBACK` for a failed block.
    pub(crate) end_tag: Option<String>,
    /// The COMMIT failed (a deferred constraint, a serialization failure at commit).
    pub(crate) end_error: Option<Error>,
}

/// One statement's answer within a [`Collector::Batch`].
#[derive(Debug)]
pub(crate) struct BatchPart {
    pub(crate) columns: Arc<[Column]>,
    pub(crate) rows: Vec<Row>,
    pub(crate) affected: Option<u64>,
    pub(crate) tag: Option<String>,
}

impl BatchPart {
    pub(crate) fn new(columns: Arc<[Column]>) -> BatchPart {
        BatchPart {
            columns,
            rows: Vec::new(),
            affected: None,
            tag: None,
        }
    }
}

/// A row stream's state: rows read but not yet taken by the owner, and how it ended.
#[derive(Debug)]
pub(crate) struct StreamRows {
    columns: Arc<[Column]>,
    rows: Vec<Row>,
    /// Bytes of row data in `rows`.
    bytes: usize,
    pub(crate) affected: Option<u64>,
    pub(crate) tag: Option<String>,
    /// Set by `finish`: the error that ended the stream, if any, given after the rows.
    pub(crate) error: Option<Error>,
}

/// What the server said of a COPY as it began: the overall format and each column's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyInfo {
    /// 0 text (text and CSV), 1 binary.
    pub(crate) format: u8,
    pub(crate) columns: Vec<u16>,
}

#[derive(Debug, Default)]
pub(crate) struct CopyIn {
    pub(crate) info: Option<CopyInfo>,
    rows: Option<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct CopyOut {
    pub(crate) info: Option<CopyInfo>,
    chunks: Vec<Bytes>,
    bytes: usize,
    pub(crate) rows: Option<u64>,
    /// Set by `finish`: the error that ended the COPY, given after the data.
    pub(crate) error: Option<Error>,
}

/// What a streaming request buffers for its owner (rows, COPY data), so that one router
/// method hands either out.
pub(crate) trait Buffered {
    type Item;
    /// What the owner learns at the end (row count, command tag).
    type Summary;
    fn in_collector(c: &mut Collector) -> Option<&mut Self>;
    fn in_output(o: &mut Output) -> Option<&mut Self>;
    /// Moves every buffered item to `out` (which must be empty) in one go, so that the owner
    /// takes them one by one without the connection's lock; false when there is none.
    fn take_into(&mut self, out: &mut Vec<Self::Item>) -> bool;
    /// The error that ended it, given after the items.
    fn take_error(&mut self) -> Option<Error>;
    /// What the owner keeps once the items are taken (the request's entry goes next).
    fn take_summary(&mut self) -> Self::Summary;
}

impl Buffered for CopyOut {
    type Item = Bytes;
    type Summary = Option<u64>;

    fn in_collector(c: &mut Collector) -> Option<&mut Self> {
        match c {
            Collector::CopyOut(c) => Some(c),
            _ => None,
        }
    }

    fn in_output(o: &mut Output) -> Option<&mut Self> {
        match o {
            Output::CopyOut(c) => Some(c),
            _ => None,
        }
    }

    fn take_into(&mut self, out: &mut Vec<Bytes>) -> bool {
        hand_over(&mut self.chunks, &mut self.bytes, out)
    }

    fn take_error(&mut self) -> Option<Error> {
        self.error.take()
    }

    fn take_summary(&mut self) -> Option<u64> {
        self.rows
    }
}

/// A streaming request's buffer goes to its owner whole. After a large batch the next one
/// starts at the size the last reached (one allocation per batch, no growth while it fills);
/// after a small one, which is often the whole answer, it starts empty (no allocation).
fn hand_over<T>(buf: &mut Vec<T>, bytes: &mut usize, out: &mut Vec<T>) -> bool {
    if buf.is_empty() {
        return false;
    }
    debug_assert!(out.is_empty());
    let n = buf.len();
    let next = if n > 16 {
        Vec::with_capacity(n)
    } else {
        Vec::new()
    };
    *out = std::mem::replace(buf, next);
    *bytes = 0;
    true
}

fn copy_info(
    format: u8,
    mut cols: postgres_protocol::message::backend::ColumnFormats<'_>,
) -> Result<CopyInfo> {
    use fallible_iterator::FallibleIterator;
    let mut columns = Vec::new();
    while let Some(c) = cols.next().map_err(|e| Error::protocol(e.to_string()))? {
        columns.push(c);
    }
    Ok(CopyInfo { format, columns })
}

impl Buffered for StreamRows {
    type Item = Row;
    type Summary = (Option<u64>, Option<String>);

    fn in_collector(c: &mut Collector) -> Option<&mut Self> {
        match c {
            Collector::Stream(s) => Some(s),
            _ => None,
        }
    }

    fn in_output(o: &mut Output) -> Option<&mut Self> {
        match o {
            Output::Stream(s) => Some(s),
            _ => None,
        }
    }

    fn take_into(&mut self, out: &mut Vec<Row>) -> bool {
        hand_over(&mut self.rows, &mut self.bytes, out)
    }

    fn take_error(&mut self) -> Option<Error> {
        self.error.take()
    }

    fn take_summary(&mut self) -> Self::Summary {
        (self.affected, self.tag.take())
    }
}

impl Output {
    /// A statement the server now holds that nobody will own, when the answer's owner left
    /// before taking it.
    pub(crate) fn orphaned_statement(self) -> Option<String> {
        match self {
            Output::Prepared { name, .. } if !name.is_empty() => Some(name),
            _ => None,
        }
    }
}

/// A finished request's result.
#[derive(Debug)]
pub(crate) enum Output {
    /// A statement as the server described it; `statement.rs` resolves its types and
    /// caches it.
    Prepared {
        name: String,
        sql: Arc<str>,
        cache: bool,
        params: Vec<Type>,
        columns: Vec<Column>,
    },
    Rows {
        rows: Vec<Row>,
        affected: Option<u64>,
        tag: Option<String>,
        /// The columns, when the answer described them.
        columns: Option<Arc<[Column]>>,
    },
    Simple(Vec<SimpleQueryMessage>),
    /// The answers of a pipeline, up to the first failure, and that failure; for a
    /// pipelined transaction, what its BEGIN and COMMIT got.
    Batch {
        parts: Vec<BatchPart>,
        failed: Option<(usize, Error)>,
        tx: Option<TxEnds>,
    },
    /// A row stream's remaining rows and its end.
    Stream(StreamRows),
    /// A COPY FROM STDIN's row count.
    Copied(Option<u64>),
    /// A COPY TO STDOUT's remaining data and its end.
    CopyOut(CopyOut),
    Nothing,
}

impl Collector {
    pub(crate) fn prepare(name: String, sql: Arc<str>) -> Collector {
        Collector::Prepare(Prepare {
            cache: !name.is_empty(),
            name,
            sql,
            params: None,
            columns: None,
        })
    }

    pub(crate) fn rows(columns: Arc<[Column]>) -> Collector {
        Collector::Rows(Rows {
            columns,
            described: false,
            rows: Vec::new(),
            affected: None,
            tag: None,
        })
    }

    /// Rows of an unprepared statement, whose RowDescription arrives with them.
    pub(crate) fn described_rows() -> Collector {
        Collector::Rows(Rows {
            columns: Arc::from(Vec::new()),
            described: true,
            rows: Vec::new(),
            affected: None,
            tag: None,
        })
    }

    pub(crate) fn simple() -> Collector {
        Collector::Simple(Simple::default())
    }

    pub(crate) fn batch(parts: Vec<BatchPart>) -> Collector {
        Collector::Batch(Batch {
            parts,
            current: 0,
            failed: None,
            tx: None,
        })
    }

    /// A pipelined transaction's answer: BEGIN, the parts, Sync, then COMMIT (two
    /// `ReadyForQuery`s: see [`State::syncs`](crate::state::State::syncs)).
    pub(crate) fn transaction(parts: Vec<BatchPart>) -> Collector {
        Collector::Batch(Batch {
            parts,
            current: 0,
            failed: None,
            tx: Some(TxEnds::default()),
        })
    }

    /// One of the request's inner `ReadyForQuery`s arrived, with the transaction status it
    /// carried. Returns false when what follows can no longer commit.
    pub(crate) fn sync_point(&mut self, status: TransactionStatus) -> bool {
        match self {
            Collector::Batch(Batch { tx: Some(t), .. }) => {
                t.synced = Some(status);
                // COMMIT commits only an open, healthy block.
                status == TransactionStatus::InTransaction
            }
            _ => true,
        }
    }

    pub(crate) fn stream(columns: Arc<[Column]>) -> Collector {
        Collector::Stream(StreamRows {
            columns,
            rows: Vec::new(),
            bytes: 0,
            affected: None,
            tag: None,
            error: None,
        })
    }

    /// What the server said of the COPY as it began, once it has.
    pub(crate) fn copy_info(&self) -> Option<&CopyInfo> {
        match self {
            Collector::CopyIn(c) => c.info.as_ref(),
            Collector::CopyOut(c) => c.info.as_ref(),
            _ => None,
        }
    }

    /// `CopyInResponse` arrived: true when this request asked for it (the COPY API);
    /// otherwise the router refuses it.
    pub(crate) fn copy_in_started(
        &mut self,
        body: &postgres_protocol::message::backend::CopyInResponseBody,
    ) -> Result<bool> {
        match self {
            Collector::CopyIn(c) => {
                c.info = Some(copy_info(body.format(), body.column_formats())?);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// One `CopyData` message of a COPY TO STDOUT: true when the owner should be woken (its
    /// buffer went from empty to holding data).
    #[inline]
    pub(crate) fn copy_data(&mut self, data: Bytes) -> bool {
        match self {
            Collector::CopyOut(c) => {
                c.bytes += data.len();
                c.chunks.push(data);
                c.chunks.len() == 1
            }
            // COPY TO STDOUT sent through a query: its data is read and dropped.
            _ => false,
        }
    }

    /// True when the owner must take rows before more are read (a stream's backpressure).
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        match self {
            Collector::Stream(s) => s.rows.len() >= STREAM_ROWS || s.bytes >= STREAM_BYTES,
            Collector::CopyOut(c) => c.chunks.len() >= STREAM_ROWS || c.bytes >= STREAM_BYTES,
            _ => false,
        }
    }

    /// The owner left: keep only what the router needs to finish reading the answer.
    pub(crate) fn abandon(&mut self) {
        match self {
            // Its statement name is needed to close it once the answer is in.
            Collector::Prepare(_) => {}
            // Rows already read are dropped, and so is the rest as it comes.
            _ => *self = Collector::Discard,
        }
    }

    /// A statement the server now holds that nobody will own, to close with a later request,
    /// once an abandoned request's answer is complete.
    pub(crate) fn orphaned_statement(self) -> Option<String> {
        match self {
            Collector::Prepare(p) if !p.name.is_empty() => Some(p.name),
            _ => None,
        }
    }

    /// Whether a server error ends this request's collection, or is kept as one part's
    /// result (a pipeline keeps the answers before its failure).
    pub(crate) fn take_error(&mut self, err: Error) -> Option<Error> {
        match self {
            Collector::Batch(b) => match &mut b.tx {
                Some(t) if t.synced.is_some() => {
                    t.end_error.get_or_insert(err);
                    None
                }
                Some(t) if !t.begun => {
                    t.begin_error.get_or_insert(err);
                    None
                }
                _ if b.failed.is_none() => {
                    b.failed = Some((b.current, err));
                    None
                }
                _ => Some(err),
            },
            _ => Some(err),
        }
    }

    /// One `DataRow`: the hot path of every result. Returns true when a stream went from
    /// empty to holding a row (its owner should be woken).
    #[inline]
    pub(crate) fn row(&mut self, frame: Bytes) -> Result<bool> {
        match self {
            Collector::Rows(r) => {
                r.rows.push(Row::from_frame(r.columns.clone(), frame)?);
                Ok(false)
            }
            Collector::Stream(s) => {
                s.bytes += frame.len();
                s.rows.push(Row::from_frame(s.columns.clone(), frame)?);
                Ok(s.rows.len() == 1)
            }
            Collector::Simple(s) => match &s.columns {
                Some(cols) => {
                    let row = SimpleRow::from_frame(cols.clone(), frame)?;
                    s.out.push(SimpleQueryMessage::Row(row));
                    Ok(false)
                }
                None => Err(Error::protocol("DataRow before RowDescription")),
            },
            Collector::Batch(b) => {
                if b.failed.is_some() {
                    return Ok(false);
                }
                match b.parts.get_mut(b.current) {
                    Some(part) => {
                        part.rows
                            .push(Row::from_frame(part.columns.clone(), frame)?);
                        Ok(false)
                    }
                    None => Err(Error::protocol(
                        "a row arrived after the pipeline's last result",
                    )),
                }
            }
            Collector::Discard => Ok(false),
            Collector::Prepare(_) => Err(Error::protocol("a row arrived in answer to Parse")),
            Collector::CopyIn(_) | Collector::CopyOut(_) => {
                Err(Error::protocol("a row arrived in answer to COPY"))
            }
        }
    }

    /// Any other message of the answer.
    pub(crate) fn message(&mut self, msg: Message) -> Result<()> {
        match (self, msg) {
            // Statements closed on the server ride on any request; their answers carry nothing.
            (_, Message::CloseComplete) => {}
            (Collector::Discard, _) => {}
            (
                Collector::Rows(_) | Collector::Stream(_) | Collector::Batch(_),
                Message::BindComplete | Message::ParseComplete | Message::NoData,
            ) => {}
            (Collector::Rows(_) | Collector::Stream(_), Message::EmptyQueryResponse) => {}
            (Collector::Rows(r), Message::RowDescription(body)) if r.described => {
                r.columns = parse_row_description(&body)?.into();
            }
            (Collector::Rows(r), Message::CommandComplete(body)) => {
                let t = body.tag().map_err(|e| Error::protocol(e.to_string()))?;
                if let Some(n) = rows_from_tag(t) {
                    r.affected = Some(r.affected.unwrap_or(0) + n);
                }
                r.tag = Some(t.to_owned());
            }
            (Collector::Stream(s), Message::CommandComplete(body)) => {
                let t = body.tag().map_err(|e| Error::protocol(e.to_string()))?;
                s.affected = rows_from_tag(t);
                s.tag = Some(t.to_owned());
            }
            (Collector::Batch(Batch { tx: Some(t), .. }), Message::CommandComplete(body))
                if !t.begun || t.synced.is_some() =>
            {
                let tag = body.tag().map_err(|e| Error::protocol(e.to_string()))?;
                if t.synced.is_some() {
                    t.end_tag = Some(tag.to_owned());
                } else {
                    t.begun = true;
                }
            }
            (Collector::Batch(b), Message::CommandComplete(body)) => {
                if b.failed.is_none() {
                    let t = body.tag().map_err(|e| Error::protocol(e.to_string()))?;
                    let part = b
                        .parts
                        .get_mut(b.current)
                        .ok_or_else(|| Error::protocol("more results than pipelined statements"))?;
                    part.affected = rows_from_tag(t);
                    part.tag = Some(t.to_owned());
                    b.current += 1;
                }
            }
            (Collector::Batch(b), Message::EmptyQueryResponse) => b.current += 1,
            (Collector::Prepare(p), Message::ParameterDescription(body)) => {
                use fallible_iterator::FallibleIterator;
                let oids: Vec<u32> = body
                    .parameters()
                    .collect()
                    .map_err(|e| Error::protocol(e.to_string()))?;
                p.params = Some(oids.into_iter().map(type_for_oid).collect());
            }
            (Collector::Prepare(p), Message::RowDescription(body)) => {
                p.columns = Some(parse_row_description(&body)?);
            }
            (Collector::Prepare(p), Message::NoData) => p.columns = Some(Vec::new()),
            (Collector::Prepare(_), Message::ParseComplete) => {}
            (Collector::Simple(s), Message::RowDescription(body)) => {
                s.columns = Some(parse_row_description(&body)?.into());
            }
            (Collector::Simple(s), Message::CommandComplete(body)) => {
                let tag = body.tag().map_err(|e| Error::protocol(e.to_string()))?;
                s.out.push(SimpleQueryMessage::CommandComplete {
                    tag: tag.to_owned(),
                    rows: rows_from_tag(tag),
                });
                s.columns = None;
            }
            (Collector::Simple(_), Message::EmptyQueryResponse) => {}
            (Collector::CopyOut(c), Message::CopyOutResponse(body)) => {
                c.info = Some(copy_info(body.format(), body.column_formats())?);
            }
            (Collector::CopyIn(_), Message::CopyOutResponse(_)) => {
                return Err(Error::usage(
                    "this statement is COPY ... TO STDOUT: read it with copy_out, not copy_in",
                ))
            }
            (Collector::CopyIn(c), Message::CommandComplete(body)) => {
                let t = body.tag().map_err(|e| Error::protocol(e.to_string()))?;
                c.rows = rows_from_tag(t);
            }
            (Collector::CopyOut(c), Message::CommandComplete(body)) => {
                let t = body.tag().map_err(|e| Error::protocol(e.to_string()))?;
                c.rows = rows_from_tag(t);
            }
            (Collector::CopyIn(_) | Collector::CopyOut(_), Message::CopyDone) => {}
            (Collector::CopyIn(_) | Collector::CopyOut(_), msg) => {
                return Err(Error::usage(format!(
                    "the COPY API runs one COPY statement; the server answered with {}",
                    message_name(&msg)
                )))
            }
            // COPY TO STDOUT sent through a query: its data is read and dropped.
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

    /// The request's `ReadyForQuery` arrived: its result, given the first error it met.
    pub(crate) fn finish(self, error: Option<Error>) -> Result<Output> {
        if let Collector::Stream(mut s) = self {
            // The rows already read still reach the owner, then the error.
            s.error = error;
            return Ok(Output::Stream(s));
        }
        if let Collector::CopyOut(mut c) = self {
            c.error = error;
            return Ok(Output::CopyOut(c));
        }
        if let Some(e) = error {
            return Err(e);
        }
        Ok(match self {
            Collector::Prepare(p) => Output::Prepared {
                params: p
                    .params
                    .ok_or_else(|| Error::protocol("no ParameterDescription"))?,
                columns: p
                    .columns
                    .ok_or_else(|| Error::protocol("no RowDescription or NoData"))?,
                name: p.name,
                sql: p.sql,
                cache: p.cache,
            },
            Collector::Rows(r) => Output::Rows {
                columns: r.described.then_some(r.columns),
                rows: r.rows,
                affected: r.affected,
                tag: r.tag,
            },
            Collector::Simple(s) => Output::Simple(s.out),
            Collector::Batch(b) => Output::Batch {
                parts: b.parts,
                failed: b.failed,
                tx: b.tx,
            },
            Collector::CopyIn(c) => Output::Copied(c.rows),
            Collector::Stream(_) | Collector::CopyOut(_) => unreachable!("handled above"),
            Collector::Discard => Output::Nothing,
        })
    }
}

pub(crate) fn message_name(msg: &Message) -> &'static str {
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
