//! aiopg's DB-API cursor over a [`Connection`](aiopg_conn::Connection): `execute`, `executemany`, `callproc`,
//! `fetchone`/`fetchmany`/`fetchall`, async iteration, `scroll`, `rowcount`, `description`,
//! `mogrify`, timeouts, and server-side (named) cursors that stream any result in bounded
//! memory.
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
//! ([`CursorOptions::timeout`]), else the connection ([`Connection::timeout`](aiopg_conn::Connection::timeout), 60 s unless
//! set, as Python aiopg's `DEFAULT_TIMEOUT`). `None` at any level means no timeout, which
//! Python aiopg cannot do. A statement that outlives its timeout is cancelled on the server
//! and the call fails with a `Timeout` error; the connection stays usable (Python aiopg closes
//! it).
//!
//! # Server-side cursors
//!
//! With [`CursorOptions::name`], `execute` declares a server cursor (`DECLARE ... CURSOR`) and
//! rows arrive [`Cursor::itersize`] at a time, so iterating a result of any size holds a
//! bounded number of rows. Outside a transaction block the cursor is declared `WITH HOLD`
//! (it must outlive the statement's implicit transaction); inside one, `WITH HOLD` is used
//! only when [`CursorOptions::withhold`] asks. Dropping the cursor closes it on the server
//! without blocking.
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]

mod cursor;

pub use cursor::{
    CopyFile, CopyOptions, Cursor, CursorExt, CursorOptions, Description, ScrollMode,
};
