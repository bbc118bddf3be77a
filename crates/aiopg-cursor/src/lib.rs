//! aiopg's DB-API cursor over a [`Connection`](aiopg_conn::Connection): `execute`, `executemany`, `callproc`,
//! `fetchone`/`fetchmany`/`fetchall`, async iteration, `scroll`, `rowcount`, `description`,
//! `mogrify`, COPY with files, timeouts, and server-side (named) cursors that stream any
//! result in bounded memory.
//!
//! ```no_run
//! # async fn f(conn: aiopg_conn::Connection) -> aiopg_core::Result<()> {
//! use aiopg_cursor::CursorExt;
//! let mut cur = conn.cursor().await?;
//! cur.execute("SELECT generate_series(1, $1::int4)", &[&3i32]).await?;
//! let mut seen = Vec::new();
//! while let Some(row) = cur.next().await? {
//!     seen.push(row.get::<i32>(0));
//! }
//! assert_eq!(seen, [1, 2, 3]);
//! assert_eq!(cur.rowcount(), 3);
//! # Ok(()) }
//! ```
//!
//! # Timeouts
//!
//! Each call's timeout comes from the call (`*_timeout` methods), else the cursor
//! ([`CursorOptions::timeout`]), else the connection
//! ([`Connection::timeout`](aiopg_conn::Connection::timeout): [`DEFAULT_TIMEOUT`], 60 s,
//! unless set, as Python aiopg's `DEFAULT_TIMEOUT`). `None` at any level means no timeout,
//! which Python aiopg cannot do. The statements a cursor sends (the `DECLARE`, `FETCH` and
//! `MOVE` of a server-side cursor too, and a whole COPY; not [`Cursor::close`]) run under it
//! through
//! [`Connection::with_timeout`](aiopg_conn::Connection::with_timeout): a statement that
//! outlives its timeout is cancelled on the server and the call fails with a `Timeout`
//! error, within the timeout plus [`CANCEL_GRACE`]; one still queued behind other callers'
//! requests is withdrawn instead; the connection stays usable (Python aiopg closes it),
//! except after a committing statement given up on once sent, whose outcome is unknown
//! (`CommitUnknown`: the connection is closed).
//! Inside a transaction block, a cancelled statement aborts the transaction.
//!
//! # Server-side cursors
//!
//! With [`CursorOptions::name`], `execute` declares a server cursor (`DECLARE ... CURSOR`) and
//! rows arrive [`Cursor::itersize`] at a time (2000 by default), so iterating a result of any
//! size holds a bounded number of rows. Outside a transaction block the cursor is declared
//! `WITH HOLD` (it must outlive the statement's implicit transaction) and lasts until it is
//! closed or the session ends; inside one, `WITH HOLD` is used only when
//! [`CursorOptions::withhold`] asks. Dropping the cursor closes it on the server without
//! blocking: the close is queued ahead of anything issued later on the connection
//! ([`Connection::detach`](aiopg_conn::Connection::detach)). A cursor's close (by
//! `execute` of a new result, `close` or the drop) looks the server cursor up first and closes
//! it only if it is there, so it never fails, nor aborts a transaction, for a cursor that a
//! dropped `execute` may not have declared or that ended with its transaction.
//!
//! # Cancel safety
//!
//! Dropping a cursor method's future never desynchronises the connection: aiopg-conn's
//! [rules](aiopg_conn#cancel-safety) apply to each statement it sends (taken back if none of
//! it was written, otherwise run to its end with its answer discarded). What differs is the
//! cursor's own state afterwards:
//!
//! | Method | Dropped before it completes |
//! |---|---|
//! | [`CursorExt::cursor`], [`CursorExt::cursor_with`] | Cancel safe: no I/O. |
//! | [`Cursor::execute`], [`Cursor::execute_timeout`], [`Cursor::callproc`], [`Cursor::executemany`] | A sent statement runs, unseen; the cursor is left without a result. A named cursor's `DECLARE` that may have run is closed by the next `execute`, `close` or the drop (see [`Cursor::execute`]). |
//! | [`Cursor::fetchone`], [`Cursor::next`], [`Cursor::fetchmany`], [`Cursor::fetchall`] | Cancel safe on a client-side cursor (no I/O). On a named cursor, rows of a `FETCH` already sent are lost. |
//! | the `Stream` implementation | Cancel safe: the `FETCH` in flight stays in the cursor between polls. |
//! | [`Cursor::scroll`] | Cancel safe on a client-side cursor. On a named cursor, the position may be wrong: scroll again with [`ScrollMode::Absolute`]. |
//! | [`Cursor::close`] | Cancel safe: a close not answered is made again by the next `close` or the drop. |
//! | [`Cursor::begin`] | Cancel safe, as [`Connection::begin`](aiopg_conn::Connection::begin). |
//! | [`Cursor::copy_from`], [`Cursor::copy_to`], [`Cursor::copy_expert`] | Into a table: nothing is copied unless the COPY was already finishing. Out of one: the rest of the data is discarded. |
//!
//! # COPY
//!
//! [`Cursor::copy_from`] and [`Cursor::copy_to`] are psycopg2's: PostgreSQL's text format
//! with [`CopyOptions`]' separator, NULL and columns, the table name checked to be an
//! identifier. [`Cursor::copy_expert`] runs any `COPY ... FROM STDIN` or `COPY ... TO STDOUT`
//! with a [`CopyFile`]. Files are `futures-io` readers and writers; memory stays bounded
//! either way.
//!
//! [`DEFAULT_TIMEOUT`]: aiopg_conn::DEFAULT_TIMEOUT
//! [`CANCEL_GRACE`]: aiopg_conn::CANCEL_GRACE
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]

mod cursor;

pub use cursor::{
    CopyFile, CopyOptions, Cursor, CursorExt, CursorOptions, Description, ScrollMode,
};
