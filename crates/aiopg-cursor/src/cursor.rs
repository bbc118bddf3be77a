//! The cursor.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aiopg_conn::{Connection, Param, Transaction};
use aiopg_core::row::{Column, Row};
use aiopg_core::types::Oid;
use aiopg_core::{Error, ErrorKind, Result, TransactionStatus};

/// How many rows a server-side cursor fetches per round trip unless told otherwise
/// (psycopg2's default `itersize`).
const DEFAULT_ITERSIZE: usize = 2000;

/// How [`Cursor::scroll`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScrollMode {
    /// From the current position.
    #[default]
    Relative,
    /// From the first row (0 is before it).
    Absolute,
}

/// How a cursor behaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CursorOptions {
    /// The cursor's statement timeout: `None` takes the connection's
    /// ([`Connection::timeout`]), `Some(None)` waits forever, `Some(Some(d))` gives up after
    /// `d` (cancelling the statement on the server).
    pub timeout: Option<Option<Duration>>,
    /// A name makes this a server-side cursor that streams its result.
    pub name: Option<String>,
    /// Whether a server-side cursor can move backwards (`SCROLL` / `NO SCROLL`); the server
    /// decides when `None`.
    pub scrollable: Option<bool>,
    /// Whether a server-side cursor outlives its transaction (`WITH HOLD`). Outside a
    /// transaction block it always does.
    pub withhold: bool,
}

/// One result column as DB-API's `cursor.description` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// The column's name.
    pub name: String,
    /// The type's OID.
    pub type_code: Oid,
    /// The type's name (`int4`, `text`, ...).
    pub type_name: String,
    /// The declared length of `varchar(n)`/`char(n)` columns.
    pub display_size: Option<i32>,
    /// The type's fixed size in bytes, `None` for variable-length types.
    pub internal_size: Option<i16>,
    /// A `numeric(p, s)` column's precision.
    pub precision: Option<i32>,
    /// A `numeric(p, s)` column's scale.
    pub scale: Option<i32>,
    /// Whether the column can be NULL; `None` when the server does not say (it never does
    /// in a result description).
    pub null_ok: Option<bool>,
}

impl Description {
    fn from_column(c: &Column) -> Description {
        let typmod = c.type_modifier();
        let ty = c.type_();
        let (precision, scale) = if ty == &aiopg_core::types::Type::NUMERIC && typmod >= 4 {
            let m = typmod - 4;
            (Some((m >> 16) & 0xffff), Some(m & 0xffff))
        } else {
            (None, None)
        };
        let display_size = match ty.name() {
            "varchar" | "bpchar" if typmod >= 4 => Some(typmod - 4),
            _ => None,
        };
        Description {
            name: c.name().to_owned(),
            type_code: ty.oid(),
            type_name: ty.name().to_owned(),
            display_size,
            internal_size: (c.type_size() > 0).then_some(c.type_size()),
            precision,
            scale,
            null_ok: None,
        }
    }
}

enum Results {
    /// Nothing executed yet.
    NotExecuted,
    /// The last statement returned no rows.
    NoRows,
    /// The whole result, held by the client.
    Client { rows: Vec<Row>, pos: usize },
    /// A server-side cursor: rows arrive `itersize` at a time.
    Server {
        buffer: VecDeque<Row>,
        /// Rows handed to the caller so far (the index of the next row).
        position: usize,
        exhausted: bool,
    },
}

type Fetch = Pin<Box<dyn Future<Output = Result<Vec<Row>>> + Send>>;

/// A DB-API cursor over a connection (Python aiopg's `Cursor`).
///
/// Create one with [`CursorExt::cursor`] or [`CursorExt::cursor_with`]. Methods keep
/// aiopg's names. A cursor is also a `Stream` of rows.
///
/// # Cancel safety
///
/// Every method keeps the connection in step when its future is dropped (aiopg-conn's
/// [rules](aiopg_conn#cancel-safety)); each says what the drop leaves in the cursor. The
/// `Stream` implementation's `poll_next` is cancel safe: the `FETCH` a named cursor has in
/// flight is kept in the cursor between polls, so a dropped `next()` future loses no row.
/// A fetch method, [`scroll`](Self::scroll), `execute` or a COPY called while that `FETCH` is
/// still in flight drops it, and if it was sent, its rows are lost. Dropping the cursor
/// closes its server cursor, if it may have one, with a detached close that finds out on the
/// server whether there is one to close (see [`execute`](Self::execute)), so a `DECLARE`
/// abandoned mid-flight never leaves a server cursor behind.
pub struct Cursor {
    conn: Connection,
    options: CursorOptions,
    arraysize: usize,
    itersize: usize,
    closed: bool,
    query: Option<String>,
    statusmessage: Option<String>,
    rowcount: i64,
    columns: Option<Arc<[Column]>>,
    results: Results,
    /// A server cursor this cursor declared may exist: set before a `DECLARE` is sent, and
    /// cleared only once a close was answered (or the `DECLARE`'s own error showed that it did
    /// not run). While it is set, the next `execute`, `close` or the drop closes the cursor
    /// on the server with [`close_if_open_sql`], which cannot fail for want of a cursor.
    maybe_declared: bool,
    /// The fetch in flight for the `Stream` implementation.
    pending: Option<Fetch>,
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cursor")
            .field("name", &self.options.name)
            .field("closed", &self.closed)
            .field("rowcount", &self.rowcount)
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

/// Opens cursors on a [`Connection`].
pub trait CursorExt {
    /// A cursor with default options (client-side, the connection's timeout).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: its future sends nothing (it checks the connection and
    /// builds the cursor).
    fn cursor(&self) -> impl Future<Output = Result<Cursor>> + Send;
    /// A cursor with `options` (a `name` makes it server-side; nothing is declared until
    /// [`Cursor::execute`]).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: its future sends nothing.
    fn cursor_with(&self, options: CursorOptions) -> impl Future<Output = Result<Cursor>> + Send;
}

impl CursorExt for Connection {
    fn cursor(&self) -> impl Future<Output = Result<Cursor>> + Send {
        self.cursor_with(CursorOptions::default())
    }

    fn cursor_with(&self, options: CursorOptions) -> impl Future<Output = Result<Cursor>> + Send {
        let conn = self.clone();
        async move {
            if conn.is_closed() {
                return Err(Error::closed("cannot open a cursor on a closed connection"));
            }
            if let Some(name) = &options.name {
                if name.is_empty() || name.contains('\0') {
                    return Err(Error::usage(
                        "a server-side cursor's name must be non-empty and contain no NUL",
                    ));
                }
            }
            Ok(Cursor {
                conn,
                options,
                arraysize: 1,
                itersize: DEFAULT_ITERSIZE,
                closed: false,
                query: None,
                statusmessage: None,
                rowcount: -1,
                columns: None,
                results: Results::NotExecuted,
                maybe_declared: false,
                pending: None,
            })
        }
    }
}

/// Quotes an identifier for SQL.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `s` as an SQL escape string literal (`E'...'`), which means the same whatever
/// `standard_conforming_strings` says. `s` must not contain NUL.
fn escape_literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// A statement that closes this session's server cursor `name` if there is one, and does
/// nothing otherwise.
///
/// `CLOSE name` fails (SQLSTATE 34000) when the cursor does not exist, and inside a transaction
/// block that failure aborts the transaction; yet whether a `DECLARE` ran is unknown when its
/// future was dropped after it was written, and a cursor not declared `WITH HOLD` is gone once
/// its transaction ended. So the close looks the cursor up in `pg_cursors` and closes it only
/// if it is there, in one server-side step (a PL/pgSQL `DO` block: a `refcursor` names any
/// portal of the session, SQL-declared cursors included). The name is cut to 63 bytes by its
/// cast to `name`, as the parser cuts the identifier in `DECLARE`. Like any statement, it fails
/// inside an already failed transaction block; the cursor is then undone with that block,
/// unless it was declared `WITH HOLD` in an earlier transaction.
fn close_if_open_sql(name: &str) -> String {
    let body = format!(
        "DECLARE c pg_catalog.refcursor := ({})::pg_catalog.name; BEGIN IF EXISTS (SELECT 1 \
         FROM pg_catalog.pg_cursors WHERE name = c::pg_catalog.text) THEN CLOSE c; END IF; END",
        escape_literal(name)
    );
    format!("DO {}", escape_literal(&body))
}

impl Cursor {
    fn timeout_for(&self, call: Option<Option<Duration>>) -> Option<Duration> {
        match call.or(self.options.timeout) {
            Some(t) => t,
            None => self.conn.timeout(),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed {
            Err(Error::usage("the cursor is closed: open a new one"))
        } else if self.conn.is_closed() {
            Err(Error::closed("the cursor's connection is closed"))
        } else {
            Ok(())
        }
    }

    fn quoted_name(&self) -> Option<String> {
        self.options.name.as_deref().map(quote_ident)
    }

    /// [`close_if_open_sql`] for this cursor's name.
    fn close_sql(&self) -> Option<String> {
        self.options.name.as_deref().map(close_if_open_sql)
    }

    /// Runs a statement. Its rows (if any) are then read with the fetch methods or by
    /// iterating.
    ///
    /// # Cancel safety
    ///
    /// On a client-side cursor, dropping the future keeps the connection in step: the statement
    /// is taken back if none of it was written, otherwise it runs to its end and its answer is
    /// discarded. The cursor is left without a result (fetching fails with a `Usage` error) and
    /// [`rowcount`](Self::rowcount) is -1.
    ///
    /// On a named cursor, dropping the future leaves no server cursor behind either. The cursor
    /// counts its server cursor as possibly declared from the moment the `DECLARE` is issued
    /// until a close of it has been answered; while it does, the next `execute`, a
    /// [`close`](Self::close) or dropping the cursor closes it with a statement that looks it up
    /// on the server first (a `DO` block), so it closes the server cursor if the `DECLARE` ran
    /// and does nothing, without an error, if it did not (or if the transaction it was declared
    /// in has ended). The next `execute` with the same name therefore works, and dropping the
    /// cursor closes what the dropped `execute` may have declared. The cursor itself is left
    /// without a result. Dropped while the close of the previous result was in flight, the next
    /// call closes it again, harmlessly.
    pub async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<()> {
        self.execute_timeout(sql, params, None).await
    }

    /// [`execute`](Self::execute) with this call's own timeout (`Some(None)`: none at all).
    ///
    /// # Cancel safety
    ///
    /// As [`execute`](Self::execute): the connection stays in step, the cursor is left without a
    /// result, and on a named cursor a `DECLARE` that may have run is closed by the next
    /// `execute`, `close` or the cursor's drop.
    pub async fn execute_timeout(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        timeout: Option<Option<Duration>>,
    ) -> Result<()> {
        self.check_open()?;
        let timeout = self.timeout_for(timeout);
        self.pending = None;
        self.query = Some(sql.to_owned());
        self.rowcount = -1;
        self.statusmessage = None;
        self.columns = None;
        self.results = Results::NoRows;
        match self.quoted_name() {
            None => {
                let conn = self.conn.clone();
                let res = conn
                    .with_timeout(timeout, conn.query_result(sql, params))
                    .await?;
                self.rowcount = res.rows_affected.map(|n| n as i64).unwrap_or(-1);
                self.statusmessage = res.tag;
                if !res.columns.is_empty() {
                    self.columns = Some(res.columns);
                    self.results = Results::Client {
                        rows: res.rows,
                        pos: 0,
                    };
                }
                Ok(())
            }
            Some(name) => self.declare(&name, sql, params, timeout).await,
        }
    }

    async fn declare(
        &mut self,
        name: &str,
        sql: &str,
        params: &[Param<'_>],
        timeout: Option<Duration>,
    ) -> Result<()> {
        let conn = self.conn.clone();
        if self.maybe_declared {
            let close = self.close_sql().expect("a server cursor has a name");
            conn.with_timeout(timeout, conn.batch_execute(&close))
                .await?;
            // Answered: whatever there was is closed. Dropped before, it stays set, and the
            // next call (or the drop) closes again.
            self.maybe_declared = false;
        }
        // The description comes from the statement itself, so it is there before any fetch.
        let stmt = conn.with_timeout(timeout, conn.prepare(sql)).await?;
        // A cursor outside a transaction block must survive the statement's own implicit
        // transaction.
        let hold = self.options.withhold || conn.transaction_status() == TransactionStatus::Idle;
        let scroll = match self.options.scrollable {
            Some(true) => " SCROLL",
            Some(false) => " NO SCROLL",
            None => "",
        };
        let declare = format!(
            "DECLARE {name}{scroll} CURSOR{} FOR {sql}",
            if hold { " WITH HOLD" } else { "" }
        );
        // From here until a close is answered the server cursor may exist, whatever becomes of
        // this future.
        self.maybe_declared = true;
        let res = match conn
            .with_timeout(timeout, conn.query_unprepared(&declare, params))
            .await
        {
            Ok(res) => res,
            Err(e) => {
                if e.kind() == ErrorKind::Db {
                    // The server's own answer: the DECLARE did not run (nor, with 42P03, is
                    // the cursor of that name this one's to close).
                    self.maybe_declared = false;
                }
                return Err(e);
            }
        };
        self.statusmessage = res.tag;
        self.columns = Some(Arc::from(stmt.columns()));
        self.results = Results::Server {
            buffer: VecDeque::new(),
            position: 0,
            exhausted: false,
        };
        Ok(())
    }

    /// Runs a statement once per parameter set, as one pipelined batch: one round trip, not
    /// one per row (Python aiopg raises here). The batch is atomic outside a transaction
    /// block. `rowcount` becomes the total of rows affected.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step: as
    /// [`Connection::execute_many`](aiopg_conn::Connection::execute_many), a batch none of which
    /// was written is taken back, otherwise the whole batch runs (atomically outside a transaction
    /// block) and its answer is discarded. The cursor is left without a result.
    pub async fn executemany<'p, I>(&mut self, sql: &str, param_sets: I) -> Result<()>
    where
        I: IntoIterator<Item = &'p [Param<'p>]>,
    {
        self.check_open()?;
        if self.options.name.is_some() {
            return Err(Error::usage(
                "executemany() cannot run on a server-side (named) cursor",
            ));
        }
        let timeout = self.timeout_for(None);
        self.pending = None;
        self.query = Some(sql.to_owned());
        self.results = Results::NoRows;
        self.columns = None;
        let conn = self.conn.clone();
        let n = conn
            .with_timeout(timeout, async {
                let stmt = conn.prepare(sql).await?;
                conn.execute_many(&stmt, param_sets).await
            })
            .await?;
        self.rowcount = n as i64;
        Ok(())
    }

    /// Calls a function (`SELECT * FROM name($1, ...)`); its result rows are fetched as
    /// usual. `name` may be schema-qualified; it is checked to be a plain or quoted
    /// identifier, never pasted in raw.
    ///
    /// # Cancel safety
    ///
    /// As [`execute`](Self::execute): a call already sent runs, unseen, and the cursor is left
    /// without a result.
    pub async fn callproc(&mut self, name: &str, params: &[Param<'_>]) -> Result<()> {
        if !is_identifier_path(name) {
            return Err(Error::usage(format!(
                "callproc(): {name:?} is not a function name (letters, digits, _ and $, \
                 optionally schema-qualified or double-quoted)"
            )));
        }
        let placeholders: Vec<String> = (1..=params.len()).map(|i| format!("${i}")).collect();
        let sql = format!("SELECT * FROM {name}({})", placeholders.join(", "));
        self.execute(&sql, params).await
    }

    fn no_result_error(&self) -> Error {
        match self.results {
            Results::NotExecuted => {
                Error::usage("nothing to fetch: call execute() before fetching")
            }
            _ => Error::usage("nothing to fetch: the last statement returned no rows"),
        }
    }

    /// Fetches `n` more rows from the server into the buffer of a server-side cursor.
    async fn fill(&mut self, n: Option<usize>) -> Result<()> {
        let name = self.quoted_name().expect("server cursor has a name");
        let timeout = self.timeout_for(None);
        let sql = match n {
            Some(n) => format!("FETCH FORWARD {n} FROM {name}"),
            None => format!("FETCH ALL FROM {name}"),
        };
        let conn = self.conn.clone();
        // Cursor control goes through the unnamed statement: each FETCH count must not
        // become a cached statement of its own.
        let rows = conn
            .with_timeout(timeout, conn.query_unprepared(&sql, &[]))
            .await?
            .rows;
        if let Results::Server {
            buffer, exhausted, ..
        } = &mut self.results
        {
            if n.is_none_or(|n| rows.len() < n) {
                *exhausted = true;
            }
            buffer.extend(rows);
        }
        Ok(())
    }

    /// The next row, or `None` at the end.
    ///
    /// # Cancel safety
    ///
    /// On a client-side cursor this method is cancel safe: it does no I/O, and the row is taken
    /// only when returned. On a named cursor whose buffer is empty it sends `FETCH FORWARD`
    /// [`itersize`](Self::itersize) rows: dropped once that was written, the server cursor moves
    /// past those rows and they are lost to this cursor (later fetches go on after them, and
    /// [`rownumber`](Self::rownumber) no longer matches the server's position). Dropped before,
    /// the `FETCH` is taken back and nothing is lost.
    pub async fn fetchone(&mut self) -> Result<Option<Row>> {
        self.check_open()?;
        self.pending = None;
        match &mut self.results {
            Results::Client { rows, pos } => {
                let row = rows.get(*pos).cloned();
                if row.is_some() {
                    *pos += 1;
                }
                Ok(row)
            }
            Results::Server {
                buffer, exhausted, ..
            } => {
                if buffer.is_empty() && !*exhausted {
                    let n = self.itersize;
                    self.fill(Some(n)).await?;
                }
                Ok(self.take_buffered(1).pop())
            }
            _ => Err(self.no_result_error()),
        }
    }

    fn take_buffered(&mut self, n: usize) -> Vec<Row> {
        match &mut self.results {
            Results::Server {
                buffer, position, ..
            } => {
                let k = n.min(buffer.len());
                *position += k;
                self.rowcount = *position as i64;
                buffer.drain(..k).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The next `n` rows (fewer at the end); `None` uses [`arraysize`](Self::arraysize).
    ///
    /// # Cancel safety
    ///
    /// As [`fetchone`](Self::fetchone): cancel safe on a client-side cursor; on a named cursor the
    /// rows of a `FETCH` already sent are lost if the future is dropped.
    pub async fn fetchmany(&mut self, n: Option<usize>) -> Result<Vec<Row>> {
        self.check_open()?;
        self.pending = None;
        let n = n.unwrap_or(self.arraysize);
        match &mut self.results {
            Results::Client { rows, pos } => {
                let end = (*pos + n).min(rows.len());
                let out = rows[*pos..end].to_vec();
                *pos = end;
                Ok(out)
            }
            Results::Server {
                buffer, exhausted, ..
            } => {
                if buffer.len() < n && !*exhausted {
                    let missing = n - buffer.len();
                    self.fill(Some(missing)).await?;
                }
                Ok(self.take_buffered(n))
            }
            _ => Err(self.no_result_error()),
        }
    }

    /// All remaining rows. On a server-side cursor this holds them all in memory; iterate
    /// instead to keep memory bounded.
    ///
    /// # Cancel safety
    ///
    /// As [`fetchone`](Self::fetchone): cancel safe on a client-side cursor; on a named cursor,
    /// dropped once its `FETCH ALL` was written, the rest of the result is lost to this cursor.
    pub async fn fetchall(&mut self) -> Result<Vec<Row>> {
        self.check_open()?;
        self.pending = None;
        match &mut self.results {
            Results::Client { rows, pos } => {
                let out = rows[*pos..].to_vec();
                *pos = rows.len();
                Ok(out)
            }
            Results::Server { exhausted, .. } => {
                if !*exhausted {
                    self.fill(None).await?;
                }
                Ok(self.take_buffered(usize::MAX))
            }
            _ => Err(self.no_result_error()),
        }
    }

    /// The next row, or `None` at the end: `while let Some(row) = cur.next().await? { .. }`.
    /// A server-side cursor fetches [`itersize`](Self::itersize) rows per round trip.
    ///
    /// # Cancel safety
    ///
    /// As [`fetchone`](Self::fetchone). To take rows in a `select!` loop from a named cursor, use
    /// the `Stream` implementation, whose `poll_next` is cancel safe.
    pub async fn next(&mut self) -> Result<Option<Row>> {
        self.fetchone().await
    }

    /// Moves the position: by `value` rows ([`ScrollMode::Relative`]) or to row index `value`
    /// ([`ScrollMode::Absolute`], 0 is the first row). Moving outside the result is an error
    /// and leaves a client-side cursor where it was.
    ///
    /// # Cancel safety
    ///
    /// On a client-side cursor this method is cancel safe: no I/O. On a named cursor it is not:
    /// the buffered rows are dropped and the new position recorded on the first poll, before the
    /// `MOVE` is answered. Dropped before the `MOVE` was written, the server cursor stays where it
    /// was while [`rownumber`](Self::rownumber) reports the target; a `scroll` with
    /// [`ScrollMode::Absolute`] puts the two in step again.
    pub async fn scroll(&mut self, value: i64, mode: ScrollMode) -> Result<()> {
        self.check_open()?;
        self.pending = None;
        let name = self.quoted_name();
        match &mut self.results {
            Results::Client { rows, pos } => {
                let target = match mode {
                    ScrollMode::Relative => *pos as i64 + value,
                    ScrollMode::Absolute => value,
                };
                if target < 0 || target >= rows.len() as i64 {
                    return Err(Error::usage(format!(
                        "scroll out of range: row {target} of a result of {} rows",
                        rows.len()
                    )));
                }
                *pos = target as usize;
                Ok(())
            }
            Results::Server {
                buffer,
                position,
                exhausted,
            } => {
                let target = match mode {
                    ScrollMode::Relative => *position as i64 + value,
                    ScrollMode::Absolute => value,
                };
                if target < 0 {
                    return Err(Error::usage(format!(
                        "scroll out of range: row {target} is before the first row"
                    )));
                }
                // The server is ahead of the caller by the buffered rows; an absolute move
                // ignores that. Positioning ON row `target` (1-based) makes row index
                // `target` (0-based) the next one fetched.
                let name = name.expect("server cursor has a name");
                buffer.clear();
                *exhausted = false;
                *position = target as usize;
                let sql = format!("MOVE ABSOLUTE {target} FROM {name}");
                let timeout = self.timeout_for(None);
                let conn = self.conn.clone();
                let moved = conn
                    .with_timeout(timeout, conn.query_unprepared(&sql, &[]))
                    .await?
                    .rows_affected
                    .unwrap_or(0);
                if target > 0 && moved == 0 {
                    return Err(Error::usage(format!(
                        "scroll out of range: the result has fewer than {target} rows"
                    )));
                }
                Ok(())
            }
            _ => Err(self.no_result_error()),
        }
    }

    /// Closes the cursor (and its server-side cursor). Using it afterwards is an error.
    ///
    /// A named cursor's server cursor is closed by a statement that looks it up first, so
    /// closing one whose transaction has ended (taking a cursor not declared `WITH HOLD` with
    /// it) is no error.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. The cursor counts as closed from the first poll. On a named
    /// cursor, its server cursor counts as possibly open until the close is answered: dropped
    /// before (or failed, inside a failed transaction block), calling `close` again or dropping
    /// the cursor closes it again (the drop detached, ahead of anything issued later on the
    /// connection), which does nothing if the first close ran. No server cursor is left behind
    /// once the cursor is dropped.
    pub async fn close(&mut self) -> Result<()> {
        self.closed = true;
        self.pending = None;
        self.results = Results::NoRows;
        if self.maybe_declared && !self.conn.is_closed() {
            if let Some(close) = self.close_sql() {
                self.conn.batch_execute(&close).await?;
            }
        }
        self.maybe_declared = false;
        Ok(())
    }

    /// True once [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Rows affected by the last statement, or returned by it (fetched so far, for a
    /// server-side cursor); -1 when unknown.
    pub fn rowcount(&self) -> i64 {
        self.rowcount
    }

    /// The index of the next row in the result, `None` before a result exists.
    pub fn rownumber(&self) -> Option<usize> {
        match &self.results {
            Results::Client { pos, .. } => Some(*pos),
            Results::Server { position, .. } => Some(*position),
            _ => None,
        }
    }

    /// The result's columns, `None` when the last statement returned no rows.
    pub fn description(&self) -> Option<Vec<Description>> {
        self.columns
            .as_ref()
            .map(|c| c.iter().map(Description::from_column).collect())
    }

    /// The result's columns as aiopg-core describes them.
    pub fn columns(&self) -> Option<&[Column]> {
        self.columns.as_deref()
    }

    /// The last command's status (`SELECT 3`, `INSERT 0 1`, `DECLARE CURSOR`, ...).
    pub fn statusmessage(&self) -> Option<&str> {
        self.statusmessage.as_deref()
    }

    /// The last SQL text executed.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// How many rows [`fetchmany`](Self::fetchmany) returns by default (1, as DB-API says).
    pub fn arraysize(&self) -> usize {
        self.arraysize
    }

    /// Sets [`arraysize`](Self::arraysize).
    pub fn set_arraysize(&mut self, n: usize) {
        self.arraysize = n.max(1);
    }

    /// How many rows a server-side cursor fetches per round trip while iterating (2000).
    pub fn itersize(&self) -> usize {
        self.itersize
    }

    /// Sets [`itersize`](Self::itersize).
    pub fn set_itersize(&mut self, n: usize) {
        self.itersize = n.max(1);
    }

    /// The cursor's own timeout setting (see [`CursorOptions::timeout`]).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_for(None)
    }

    /// Sets the cursor's timeout (`None`: no timeout).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.options.timeout = Some(timeout);
    }

    /// The cursor's name, for a server-side cursor.
    pub fn name(&self) -> Option<&str> {
        self.options.name.as_deref()
    }

    /// The connection the cursor runs on.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Begins a transaction on the cursor's connection.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as
    /// [`Connection::begin`](aiopg_conn::Connection::begin): a `BEGIN` that may have run is
    /// followed by a `ROLLBACK`.
    pub async fn begin(&self) -> Result<Transaction> {
        self.conn.begin().await
    }

    /// The SQL with each `$n` replaced by its parameter as a literal, exactly what the server
    /// would run; synchronous, no round trip. Follows the connection's
    /// `standard_conforming_strings`.
    pub fn mogrify(&self, sql: &str, params: &[Param<'_>]) -> Result<String> {
        let scs = self
            .conn
            .parameter_status("standard_conforming_strings")
            .is_none_or(|v| v == "on");
        aiopg_core::mogrify::mogrify(sql, params, scs)
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        if self.maybe_declared {
            if let Some(close) = self.close_sql() {
                // Closed ahead of whatever the connection runs next, without blocking; a
                // cursor that is not there (a DECLARE taken back, a transaction ended) is
                // left alone without an error.
                self.conn.detach(&close);
            }
        }
    }
}

impl futures_core::Stream for Cursor {
    type Item = Result<Row>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Row>>> {
        let this = &mut *self;
        if let Err(e) = this.check_open() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            if let Some(fetch) = this.pending.as_mut() {
                let res = std::task::ready!(fetch.as_mut().poll(cx));
                this.pending = None;
                match res {
                    Ok(rows) => {
                        if let Results::Server {
                            buffer, exhausted, ..
                        } = &mut this.results
                        {
                            *exhausted = rows.len() < this.itersize;
                            buffer.extend(rows);
                        }
                    }
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
            match &mut this.results {
                Results::Client { rows, pos } => {
                    let row = rows.get(*pos).cloned();
                    if row.is_some() {
                        *pos += 1;
                    }
                    return Poll::Ready(row.map(Ok));
                }
                Results::Server {
                    buffer, exhausted, ..
                } => {
                    if !buffer.is_empty() {
                        return Poll::Ready(this.take_buffered(1).pop().map(Ok));
                    }
                    if *exhausted {
                        return Poll::Ready(None);
                    }
                    let name = this.quoted_name().expect("server cursor has a name");
                    let sql = format!("FETCH FORWARD {} FROM {name}", this.itersize);
                    let conn = this.conn.clone();
                    let timeout = this.timeout_for(None);
                    this.pending = Some(Box::pin(async move {
                        conn.with_timeout(timeout, conn.query_unprepared(&sql, &[]))
                            .await
                            .map(|r| r.rows)
                    }));
                }
                _ => return Poll::Ready(Some(Err(this.no_result_error()))),
            }
        }
    }
}

/// Whether `name` is a (possibly schema-qualified) identifier: plain
/// (`[A-Za-z_][A-Za-z0-9_$]*`) or double-quoted parts separated by dots.
fn is_identifier_path(name: &str) -> bool {
    let mut rest = name;
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            // A quoted part ends at a lone quote; `""` is an escaped quote.
            let mut chars = quoted.char_indices().peekable();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if chars.peek().map(|&(_, c)| c) == Some('"') {
                        chars.next();
                    } else {
                        end = Some(i);
                        break;
                    }
                } else if c == '\0' {
                    return false;
                }
            }
            let Some(end) = end else { return false };
            if end == 0 {
                return false;
            }
            rest = &quoted[end + 1..];
        } else {
            let len = rest
                .char_indices()
                .take_while(|&(i, c)| {
                    c == '_' || c.is_alphabetic() || (i > 0 && (c.is_ascii_digit() || c == '$'))
                })
                .count();
            if len == 0 {
                return false;
            }
            let byte_len: usize = rest.chars().take(len).map(char::len_utf8).sum();
            rest = &rest[byte_len..];
        }
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => return rest.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_paths() {
        for ok in [
            "f",
            "my_func",
            "public.f",
            "\"Odd Name\"",
            "s.\"x\"\"y\"",
            "f$1",
            "ünï",
        ] {
            assert!(is_identifier_path(ok), "{ok}");
        }
        for bad in [
            "",
            "f()",
            "f; DROP TABLE t",
            "1f",
            "a..b",
            "\"unterminated",
            "\"\"",
            "a.",
            "f -- x",
        ] {
            assert!(!is_identifier_path(bad), "{bad}");
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("c"), "\"c\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}

/// Settings of [`Cursor::copy_from`] and [`Cursor::copy_to`], as psycopg2 names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    /// The column separator (one character; tab by default).
    pub sep: String,
    /// How NULL is written (`\N` by default).
    pub null: String,
    /// The columns, in the file's order (every column of the table when `None`).
    pub columns: Option<Vec<String>>,
    /// How many bytes `copy_from` reads from the file at a time.
    pub size: usize,
}

impl Default for CopyOptions {
    fn default() -> CopyOptions {
        CopyOptions {
            sep: "\t".into(),
            null: "\\N".into(),
            columns: None,
            size: 8192,
        }
    }
}

/// The file of [`Cursor::copy_expert`]: read from for `COPY ... FROM STDIN`, written to for
/// `COPY ... TO STDOUT`.
#[non_exhaustive]
pub enum CopyFile<'a> {
    /// The data to copy into the table.
    From(&'a mut (dyn futures_io::AsyncRead + Unpin + Send)),
    /// Where the table's data goes.
    To(&'a mut (dyn futures_io::AsyncWrite + Unpin + Send)),
}

impl fmt::Debug for CopyFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CopyFile::From(_) => "CopyFile::From(..)",
            CopyFile::To(_) => "CopyFile::To(..)",
        })
    }
}

/// An SQL string literal that means `s` whatever `standard_conforming_strings` says.
fn string_literal(s: &str) -> Result<String> {
    if s.contains('\0') {
        return Err(Error::usage("a COPY option cannot contain a NUL character"));
    }
    Ok(escape_literal(s))
}

/// `COPY table [(columns)] <direction> (FORMAT text, DELIMITER .., NULL ..)`.
fn copy_sql(table: &str, options: &CopyOptions, direction: &str) -> Result<String> {
    if !is_identifier_path(table) {
        return Err(Error::usage(format!(
            "{:?} is not a table name (letters, digits, _ and $, optionally schema-qualified \
             or double-quoted); use copy_expert for anything else",
            aiopg_core::error::elide(table)
        )));
    }
    let mut sql = format!("COPY {table}");
    if let Some(columns) = &options.columns {
        let mut quoted = Vec::with_capacity(columns.len());
        for c in columns {
            if c.is_empty() || c.contains('\0') {
                return Err(Error::usage("a column name cannot be empty or contain NUL"));
            }
            quoted.push(format!("\"{}\"", c.replace('"', "\"\"")));
        }
        sql.push_str(&format!(" ({})", quoted.join(", ")));
    }
    sql.push_str(&format!(
        " {direction} (FORMAT text, DELIMITER {}, NULL {})",
        string_literal(&options.sep)?,
        string_literal(&options.null)?
    ));
    Ok(sql)
}

fn io_error(what: &str, e: std::io::Error) -> Error {
    Error::io(format!("{what} the COPY's file"), e)
}

impl Cursor {
    /// Copies a file in PostgreSQL's text format into `table` (psycopg2's `copy_from`, which
    /// Python aiopg refuses): `COPY table FROM STDIN` with the options' separator, NULL and
    /// columns. Returns the rows copied, also in [`rowcount`](Self::rowcount). The table name
    /// may be schema-qualified or quoted; column names are quoted.
    ///
    /// ```no_run
    /// # async fn f(mut cur: aiopg_cursor::Cursor) -> aiopg_core::Result<()> {
    /// use aiopg_cursor::CopyOptions;
    /// let data = futures_util::io::Cursor::new(b"1|apple\n2|\\N\n".to_vec());
    /// let options = CopyOptions { sep: "|".into(), ..CopyOptions::default() };
    /// assert_eq!(cur.copy_from(data, "items", &options).await?, 2);
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step. Dropped before the end of the file, the
    /// COPY is ended with CopyFail and nothing is copied. Dropped once the data was all sent and
    /// the COPY was finishing, it completes on the server unseen (outside a transaction block it
    /// commits) and [`rowcount`](Self::rowcount) stays -1. Bytes already read from `file` are
    /// consumed either way.
    pub async fn copy_from<R>(&mut self, file: R, table: &str, options: &CopyOptions) -> Result<u64>
    where
        R: futures_io::AsyncRead + Unpin + Send,
    {
        let sql = copy_sql(table, options, "FROM STDIN")?;
        let mut file = file;
        self.copy_in(&sql, &mut file, options.size).await
    }

    /// Copies `table` into a file in PostgreSQL's text format (psycopg2's `copy_to`).
    /// Returns the rows copied, also in [`rowcount`](Self::rowcount).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step: a COPY not yet sent is taken back;
    /// one already sent runs to its end on the server, and the rest of its data is read and
    /// discarded. What was written to `file` so far stays there, an incomplete copy.
    pub async fn copy_to<W>(&mut self, file: W, table: &str, options: &CopyOptions) -> Result<u64>
    where
        W: futures_io::AsyncWrite + Unpin + Send,
    {
        let sql = copy_sql(table, options, "TO STDOUT")?;
        let mut file = file;
        self.copy_out(&sql, &mut file).await
    }

    /// Runs any `COPY ... FROM STDIN` or `COPY ... TO STDOUT` statement with a file
    /// (psycopg2's `copy_expert`): CSV, binary, a query's result, every option the server
    /// has. Returns the rows copied.
    ///
    /// # Cancel safety
    ///
    /// As [`copy_from`](Self::copy_from) for [`CopyFile::From`] (nothing copied unless the COPY
    /// was already finishing) and [`copy_to`](Self::copy_to) for [`CopyFile::To`] (the rest of
    /// the data is discarded).
    pub async fn copy_expert(&mut self, sql: &str, file: CopyFile<'_>) -> Result<u64> {
        match file {
            CopyFile::From(r) => self.copy_in(sql, r, CopyOptions::default().size).await,
            CopyFile::To(w) => self.copy_out(sql, w).await,
        }
    }

    async fn copy_in(
        &mut self,
        sql: &str,
        file: &mut (dyn futures_io::AsyncRead + Unpin + Send),
        size: usize,
    ) -> Result<u64> {
        self.check_open()?;
        self.start_copy(sql);
        let timeout = self.timeout_for(None);
        let conn = self.conn.clone();
        let n = conn
            .with_timeout(timeout, async {
                let mut w = conn.copy_in(sql).await?;
                let mut buf = vec![0u8; size.max(1)];
                loop {
                    let n = std::future::poll_fn(|cx| Pin::new(&mut *file).poll_read(cx, &mut buf))
                        .await
                        .map_err(|e| io_error("reading", e))?;
                    if n == 0 {
                        break;
                    }
                    w.write(&buf[..n]).await?;
                }
                w.finish().await
            })
            .await?;
        self.rowcount = n as i64;
        Ok(n)
    }

    async fn copy_out(
        &mut self,
        sql: &str,
        file: &mut (dyn futures_io::AsyncWrite + Unpin + Send),
    ) -> Result<u64> {
        self.check_open()?;
        self.start_copy(sql);
        let timeout = self.timeout_for(None);
        let conn = self.conn.clone();
        let n = conn
            .with_timeout(timeout, async {
                use futures_core::Stream;
                let mut out = conn.copy_out(sql).await?;
                while let Some(chunk) =
                    std::future::poll_fn(|cx| Pin::new(&mut out).poll_next(cx)).await
                {
                    let chunk = chunk?;
                    let mut rest = &chunk[..];
                    while !rest.is_empty() {
                        let n =
                            std::future::poll_fn(|cx| Pin::new(&mut *file).poll_write(cx, rest))
                                .await
                                .map_err(|e| io_error("writing", e))?;
                        if n == 0 {
                            return Err(io_error(
                                "writing",
                                std::io::Error::from(std::io::ErrorKind::WriteZero),
                            ));
                        }
                        rest = &rest[n..];
                    }
                }
                std::future::poll_fn(|cx| Pin::new(&mut *file).poll_flush(cx))
                    .await
                    .map_err(|e| io_error("flushing", e))?;
                Ok(out.rows().unwrap_or(0))
            })
            .await?;
        self.rowcount = n as i64;
        Ok(n)
    }

    /// A COPY replaces whatever the cursor held.
    fn start_copy(&mut self, sql: &str) {
        self.pending = None;
        self.query = Some(sql.to_owned());
        self.results = Results::NoRows;
        self.columns = None;
        self.rowcount = -1;
    }
}
