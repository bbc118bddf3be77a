//! A model test of the connection's state machine, sans I/O.
//!
//! A [`Connection`] runs over an in-memory socket against a simulated server that speaks
//! enough of the protocol (Parse, Describe, Bind, Execute, Sync, Query, Close, and COPY in both
//! directions, where any other message inside COPY data is a violation) to answer every
//! kind of request, and checks what it is sent (a statement name prepared twice, or used after
//! its Close, is an error the model counts). proptest drives random interleavings of several
//! callers: issue any kind of request (some with parameters that fail to encode, some that the
//! server rejects), poll, drop (a timeout drops its future too), let the server answer a few
//! messages, change how many bytes the socket takes or gives per call (splitting and merging
//! messages), and run detached clean-up tasks. After every step the router's bookkeeping must
//! hold ([`State::check`]); every future that completes must have got exactly its own answer;
//! and at the end, with only wake-ups driving, every remaining future finishes (no lost wake-up)
//! and a fresh query gets its own answer (the connection is in sync).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_core::Stream;
use proptest::prelude::*;

use aiopg_core::{Config, ErrorKind};
use aiopg_rt::{BoxFuture, BoxStream, Runtime, TcpOptions};

use crate::connection::{Identity, Shared};
use crate::io::ReadBuf;
use crate::state::State;
use crate::statement::StatementCache;
use crate::Connection;

// ---------------------------------------------------------------------------------------
// The in-memory socket.

#[derive(Default)]
struct Net {
    /// Client to server, not yet read by the server.
    c2s: Vec<u8>,
    /// Server to client, not yet read by the client.
    s2c: VecDeque<u8>,
    /// The most bytes one client read returns.
    read_limit: usize,
    /// The most bytes one client write takes; 0 makes writes pend.
    write_limit: usize,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// The server's next answer arrives the moment a read next registers its waker: the
    /// read finds nothing, and the waker is woken before the poll returns (on a real runtime,
    /// the reactor on another thread fires as soon as the waker is stored).
    hold: bool,
    held: VecDeque<u8>,
    /// Like a TLS stream: writes are taken whole into `staged` and reach the server only on
    /// a flush, which pends while `write_limit` is 0 (the socket under it is full).
    stage: bool,
    staged: Vec<u8>,
    /// The link is cut: reads see the end of the stream, writes fail.
    dead: bool,
    /// When set, how many more bytes writes take in all before they pend (so that a cut can
    /// land inside a message).
    write_budget: Option<usize>,
}

#[derive(Clone)]
struct Sock(Arc<Mutex<Net>>);

impl std::fmt::Debug for Sock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sock")
    }
}

impl futures_io::AsyncRead for Sock {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut net = self.0.lock().unwrap();
        if net.dead {
            return Poll::Ready(Ok(0));
        }
        if net.s2c.is_empty() {
            if !net.held.is_empty() {
                let held = std::mem::take(&mut net.held);
                net.s2c = held;
                drop(net);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            net.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(net.read_limit.max(1)).min(net.s2c.len());
        for b in buf.iter_mut().take(n) {
            *b = net.s2c.pop_front().unwrap();
        }
        Poll::Ready(Ok(n))
    }
}

impl futures_io::AsyncWrite for Sock {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut net = self.0.lock().unwrap();
        if net.dead {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Once staged, bytes keep their order: later ones queue behind them.
        if net.stage || !net.staged.is_empty() {
            net.staged.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        let budget = net.write_budget.unwrap_or(usize::MAX);
        if net.write_limit == 0 || budget == 0 {
            net.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(net.write_limit).min(budget);
        if let Some(b) = net.write_budget.as_mut() {
            *b -= n;
        }
        net.c2s.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut net = self.0.lock().unwrap();
        if net.staged.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if net.write_limit == 0 {
            net.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let staged = std::mem::take(&mut net.staged);
        net.c2s.extend_from_slice(&staged);
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------
// A runtime whose spawned tasks the test polls itself.

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Default)]
struct ModelRuntime {
    spawned: Mutex<Vec<Task>>,
}

impl std::fmt::Debug for ModelRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelRuntime")
    }
}

impl Runtime for ModelRuntime {
    fn name(&self) -> &'static str {
        "model"
    }
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        self.spawned.lock().unwrap().push(future);
    }
    fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }
    fn resolve(
        &self,
        _: &str,
        _: u16,
    ) -> BoxFuture<'static, io::Result<Vec<std::net::SocketAddr>>> {
        Box::pin(async { Err(io::Error::other("no network in the model")) })
    }
    fn connect_tcp(
        &self,
        _: std::net::SocketAddr,
        _: &TcpOptions,
    ) -> BoxFuture<'static, io::Result<BoxStream>> {
        Box::pin(async { Err(io::Error::other("no network in the model")) })
    }
    fn connect_unix(&self, _: &std::path::Path) -> BoxFuture<'static, io::Result<BoxStream>> {
        Box::pin(async { Err(io::Error::other("no network in the model")) })
    }
}

// ---------------------------------------------------------------------------------------
// The simulated server.

const INT8: u32 = 20;
const TEXT: u32 = 25;

fn sql_for(k: u8) -> String {
    format!("SELECT $1::int8 /*{k}*/")
}

/// How many rows the server returns for value `v` (a stream gets more, to exceed its buffer).
fn rows_for(v: i64) -> usize {
    (v % 4) as usize + 1
}

#[derive(Default)]
struct Server {
    inbox: Vec<u8>,
    statements: HashMap<String, String>,
    portal: Option<i64>,
    /// After an error, the extended protocol skips to the next Sync.
    skipping: bool,
    /// In COPY FROM STDIN: the lines received so far.
    copy_in: Option<u64>,
    /// Protocol violations seen: any is a client bug.
    violations: Vec<String>,
    /// The ids of the `COMMIT -- id` statements the server ran, and of the pipelined
    /// transactions it committed (their statements' value).
    committed: Vec<u64>,
    /// The ids of every COMMIT the server received whole, whether it committed or not.
    commits_seen: Vec<u64>,
    /// Inside a transaction block: `Some(failed)`.
    tx: Option<bool>,
    /// The values the statements of the open block ran with.
    tx_values: Vec<i64>,
    /// The open block's statements are synced: its COMMIT must come next, nothing else.
    tx_synced: bool,
    /// The portal is a BEGIN's.
    begin_portal: bool,
    /// A transaction block opened by a simple-query `BEGIN` (the `Transaction` API), apart
    /// from the pipelined transactions' `tx`.
    block: Option<Block>,
    /// The values of the `INSERT n` statements that committed (or ran outside a block).
    rows: Vec<i64>,
    /// `ROLLBACK TO` or `RELEASE` of a savepoint that does not exist, in a healthy block: the
    /// error aborts a transaction none of whose statements failed.
    lost_savepoints: Vec<String>,
}

/// A transaction block of the simulated server (see [`Server::session`]).
#[derive(Debug, Default)]
struct Block {
    /// A statement failed: everything but `ROLLBACK [TO SAVEPOINT]` fails until then.
    failed: bool,
    /// The values inserted in the block, in order.
    rows: Vec<i64>,
    /// Open savepoints, innermost last: name, and how many rows the block had then.
    savepoints: Vec<(String, usize)>,
}

fn put_msg(out: &mut VecDeque<u8>, tag: u8, body: &[u8]) {
    out.push_back(tag);
    out.extend(((body.len() + 4) as u32).to_be_bytes());
    out.extend(body.iter().copied());
}

fn cstr(b: &[u8], at: &mut usize) -> String {
    let end = b[*at..].iter().position(|&c| c == 0).expect("cstring") + *at;
    let s = String::from_utf8(b[*at..end].to_vec()).unwrap();
    *at = end + 1;
    s
}

fn i16_at(b: &[u8], at: &mut usize) -> i16 {
    let v = i16::from_be_bytes([b[*at], b[*at + 1]]);
    *at += 2;
    v
}

fn i32_at(b: &[u8], at: &mut usize) -> i32 {
    let v = i32::from_be_bytes(b[*at..*at + 4].try_into().unwrap());
    *at += 4;
    v
}

fn error_body(code: &str, msg: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (t, v) in [(b'S', "ERROR"), (b'V', "ERROR"), (b'C', code), (b'M', msg)] {
        b.push(t);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    b
}

fn row_description(oid: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(1i16.to_be_bytes());
    b.extend_from_slice(b"v\0");
    b.extend(0i32.to_be_bytes());
    b.extend(0i16.to_be_bytes());
    b.extend(oid.to_be_bytes());
    b.extend(8i16.to_be_bytes());
    b.extend((-1i32).to_be_bytes());
    b.extend(0i16.to_be_bytes());
    b
}

fn data_row(value: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(1i16.to_be_bytes());
    b.extend((value.len() as i32).to_be_bytes());
    b.extend_from_slice(value);
    b
}

impl Server {
    /// Handles up to `max` complete messages from the client; returns how many.
    fn step(&mut self, net: &mut Net, max: usize) -> usize {
        let bytes = std::mem::take(&mut net.c2s);
        self.inbox.extend_from_slice(&bytes);
        let mut handled = 0;
        while handled < max && self.inbox.len() >= 5 {
            let len = u32::from_be_bytes(self.inbox[1..5].try_into().unwrap()) as usize;
            if self.inbox.len() < len + 1 {
                break;
            }
            let msg: Vec<u8> = self.inbox.drain(..len + 1).collect();
            self.handle(msg[0], &msg[5..], &mut net.s2c);
            handled += 1;
        }
        if handled > 0 {
            if !net.held.is_empty() {
                // Behind what is held, in order.
                let out: Vec<u8> = net.s2c.drain(..).collect();
                net.held.extend(out);
            } else if let Some(w) = net.read_waker.take() {
                w.wake();
            } else if net.hold {
                net.held = std::mem::take(&mut net.s2c);
            }
            net.hold = false;
        }
        handled
    }

    fn fail(&mut self, out: &mut VecDeque<u8>, code: &str, msg: &str) {
        put_msg(out, b'E', &error_body(code, msg));
        self.skipping = true;
        if self.tx.is_some() {
            self.tx = Some(true);
        }
    }

    fn status(&self) -> &'static [u8] {
        match (self.tx, &self.block) {
            (Some(false), _) => b"T",
            (Some(true), _) => b"E",
            (None, Some(b)) if b.failed => b"E",
            (None, Some(_)) => b"T",
            (None, None) => b"I",
        }
    }

    /// The statements of the `Transaction` API, in a simple query of one or more statements
    /// separated by `"; "`: `BEGIN`, `COMMIT` (inside a block), `ROLLBACK`, `SAVEPOINT n`,
    /// `ROLLBACK TO SAVEPOINT n`, `RELEASE SAVEPOINT n`, `INSERT v`, `FAIL` (an error), and
    /// `Q v` inside a block, with PostgreSQL's rules for a failed block. Returns false for
    /// anything else, which is handled as before.
    fn session(&mut self, sql: &str, out: &mut VecDeque<u8>) -> bool {
        let first = sql.split("; ").next().unwrap_or("");
        let in_block = self.block.is_some();
        let ours = matches!(first, "BEGIN" | "ROLLBACK" | "FAIL")
            || (in_block && (first == "COMMIT" || first.starts_with("Q ")))
            || [
                "SAVEPOINT ",
                "ROLLBACK TO SAVEPOINT ",
                "RELEASE SAVEPOINT ",
                "INSERT ",
            ]
            .iter()
            .any(|p| first.starts_with(p));
        if !ours {
            return false;
        }
        for stmt in sql.split("; ") {
            if let Err((code, msg)) = self.session_statement(stmt, out) {
                put_msg(out, b'E', &error_body(code, &msg));
                if let Some(b) = self.block.as_mut() {
                    b.failed = true;
                }
                // The rest of the query is skipped.
                break;
            }
        }
        true
    }

    fn session_statement(
        &mut self,
        stmt: &str,
        out: &mut VecDeque<u8>,
    ) -> Result<(), (&'static str, String)> {
        let aborted = || {
            Err((
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block"
                    .to_owned(),
            ))
        };
        let outside = |what: &str| {
            Err((
                "25P01",
                format!("{what} can only be used in transaction blocks"),
            ))
        };
        let failed = self.block.as_ref().is_some_and(|b| b.failed);
        match stmt {
            "BEGIN" => {
                if self.block.is_some() {
                    self.violations.push(
                        "BEGIN inside a transaction block: an earlier transaction was left open"
                            .into(),
                    );
                } else {
                    self.block = Some(Block::default());
                }
                put_msg(out, b'C', b"BEGIN\0");
                return Ok(());
            }
            "COMMIT" => {
                let tag: &[u8] = match self.block.take() {
                    Some(b) if b.failed => b"ROLLBACK\0",
                    Some(b) => {
                        self.rows.extend(b.rows);
                        b"COMMIT\0"
                    }
                    None => b"COMMIT\0",
                };
                put_msg(out, b'C', tag);
                return Ok(());
            }
            "ROLLBACK" => {
                // Outside a block PostgreSQL only warns.
                self.block = None;
                put_msg(out, b'C', b"ROLLBACK\0");
                return Ok(());
            }
            "FAIL" => return Err(("22012", "division by zero".to_owned())),
            _ => {}
        }
        if let Some(v) = stmt.strip_prefix("INSERT ") {
            let v: i64 = v.parse().expect("INSERT <int>");
            match self.block.as_mut() {
                None => self.rows.push(v),
                Some(_) if failed => return aborted(),
                Some(b) => b.rows.push(v),
            }
            put_msg(out, b'C', b"INSERT 0 1\0");
            return Ok(());
        }
        if let Some(v) = stmt.strip_prefix("Q ") {
            if failed {
                return aborted();
            }
            let v: i64 = v.parse().expect("Q <int>");
            if v < 0 {
                return Err(("22023", "bad value".to_owned()));
            }
            put_msg(out, b'T', &row_description(TEXT));
            put_msg(out, b'D', &data_row(v.to_string().as_bytes()));
            put_msg(out, b'C', b"SELECT 1\0");
            return Ok(());
        }
        if let Some(name) = stmt.strip_prefix("SAVEPOINT ") {
            let Some(b) = self.block.as_mut() else {
                return outside("SAVEPOINT");
            };
            if failed {
                return aborted();
            }
            b.savepoints.push((name.to_owned(), b.rows.len()));
            put_msg(out, b'C', b"SAVEPOINT\0");
            return Ok(());
        }
        let (name, rollback) = if let Some(n) = stmt.strip_prefix("ROLLBACK TO SAVEPOINT ") {
            (n, true)
        } else if let Some(n) = stmt.strip_prefix("RELEASE SAVEPOINT ") {
            (n, false)
        } else {
            self.violations
                .push(format!("unknown statement {stmt:?} of the Transaction API"));
            return Err(("42601", "syntax error".to_owned()));
        };
        let what = if rollback {
            "ROLLBACK TO SAVEPOINT"
        } else {
            "RELEASE SAVEPOINT"
        };
        let Some(b) = self.block.as_mut() else {
            return outside(what);
        };
        if failed && !rollback {
            return aborted();
        }
        let Some(i) = b.savepoints.iter().rposition(|(n, _)| n == name) else {
            if !failed {
                self.lost_savepoints.push(format!("{what} {name}"));
            }
            return Err(("3B001", format!("savepoint \"{name}\" does not exist")));
        };
        if rollback {
            let mark = b.savepoints[i].1;
            b.rows.truncate(mark);
            b.savepoints.truncate(i + 1);
            b.failed = false;
            put_msg(out, b'C', b"ROLLBACK\0");
        } else {
            b.savepoints.truncate(i);
            put_msg(out, b'C', b"RELEASE\0");
        }
        Ok(())
    }

    fn handle(&mut self, tag: u8, b: &[u8], out: &mut VecDeque<u8>) {
        let mut at = 0;
        if let Some(lines) = self.copy_in.as_mut() {
            match tag {
                b'd' => {
                    if b.contains(&b'x') {
                        // A malformed row: the COPY ends with an error, and what follows of
                        // its data is ignored (below).
                        self.copy_in = None;
                        put_msg(out, b'E', &error_body("22P02", "invalid input syntax"));
                        put_msg(out, b'Z', b"I");
                    } else {
                        *lines += b.iter().filter(|&&c| c == b'\n').count() as u64;
                    }
                }
                b'c' => {
                    let n = *lines;
                    self.copy_in = None;
                    put_msg(out, b'C', format!("COPY {n}\0").as_bytes());
                    put_msg(out, b'Z', b"I");
                }
                b'f' => {
                    self.copy_in = None;
                    put_msg(out, b'E', &error_body("57014", "COPY from stdin failed"));
                    put_msg(out, b'Z', b"I");
                }
                // The server ignores these in COPY mode.
                b'S' | b'H' => {}
                other => self.violations.push(format!(
                    "message {:?} inside COPY data: a request was pipelined into a COPY",
                    other as char
                )),
            }
            return;
        }
        if matches!(tag, b'd' | b'c' | b'f') {
            // COPY messages outside COPY mode: what the client sent after a COPY the server
            // had already ended (an error). The server ignores them, as PostgreSQL does.
            return;
        }
        if self.tx_synced {
            // A pipelined transaction's COMMIT follows its Sync in the same request.
            let commit = tag == b'Q' && b.starts_with(b"COMMIT\0");
            if !commit {
                self.violations.push(format!(
                    "message {:?} landed between a pipelined transaction's Sync and its COMMIT",
                    tag as char
                ));
            }
        }
        if tag == b'S' {
            self.skipping = false;
            self.tx_synced = self.tx.is_some();
            put_msg(out, b'Z', self.status());
            return;
        }
        if tag == b'Q' {
            let sql = cstr(b, &mut at);
            self.skipping = false;
            if self.tx.is_none() && self.session(&sql, out) {
                put_msg(out, b'Z', self.status());
                return;
            }
            if sql == "COMMIT" {
                self.tx_synced = false;
                let values = std::mem::take(&mut self.tx_values);
                let id = values.first().map(|&v| v as u64);
                match self.tx.take() {
                    Some(failed) => {
                        self.commits_seen.extend(id);
                        if !failed {
                            self.committed.extend(id);
                        }
                        let tag: &[u8] = if failed { b"ROLLBACK\0" } else { b"COMMIT\0" };
                        put_msg(out, b'C', tag);
                    }
                    None => {
                        self.violations
                            .push("COMMIT outside a transaction block".into());
                        put_msg(out, b'C', b"COMMIT\0");
                    }
                }
                put_msg(out, b'Z', b"I");
                return;
            }
            if self.tx.is_some() {
                self.violations.push(format!(
                    "simple query {sql:?} inside a pipelined transaction"
                ));
            }
            if let Some(id) = sql.strip_prefix("COMMIT -- ") {
                self.committed.push(id.parse().unwrap());
                self.commits_seen.push(id.parse().unwrap());
                put_msg(out, b'C', b"COMMIT\0");
                put_msg(out, b'Z', b"I");
                return;
            }
            if let Some(v) = sql.strip_prefix("COPYIN ") {
                let v: i64 = v.parse().unwrap();
                if v < 0 {
                    put_msg(out, b'E', &error_body("42P01", "no such table"));
                    put_msg(out, b'Z', b"I");
                } else {
                    // Text format, one column.
                    put_msg(out, b'G', &[0, 0, 1, 0, 0]);
                    self.copy_in = Some(0);
                }
                return;
            }
            if let Some(v) = sql.strip_prefix("COPYOUT ") {
                let v: i64 = v.parse().unwrap();
                if v < 0 {
                    put_msg(out, b'E', &error_body("42P01", "no such table"));
                } else {
                    put_msg(out, b'H', &[0, 0, 1, 0, 0]);
                    let n = rows_for(v) * 3;
                    for _ in 0..n {
                        put_msg(out, b'd', format!("{v}\n").as_bytes());
                    }
                    put_msg(out, b'c', b"");
                    put_msg(out, b'C', format!("COPY {n}\0").as_bytes());
                }
                put_msg(out, b'Z', b"I");
                return;
            }
            if sql.is_empty() {
                put_msg(out, b'I', b"");
            } else {
                let v: i64 = sql
                    .strip_prefix("Q ")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| {
                        self.violations
                            .push(format!("unknown simple query {sql:?}"));
                        0
                    });
                if v < 0 {
                    put_msg(out, b'E', &error_body("22023", "bad value"));
                } else {
                    put_msg(out, b'T', &row_description(TEXT));
                    put_msg(out, b'D', &data_row(v.to_string().as_bytes()));
                    put_msg(out, b'C', b"SELECT 1\0");
                }
            }
            put_msg(out, b'Z', b"I");
            return;
        }
        if self.skipping {
            return;
        }
        match tag {
            b'P' => {
                let name = cstr(b, &mut at);
                let sql = cstr(b, &mut at);
                if !name.is_empty() && self.statements.contains_key(&name) {
                    self.violations
                        .push(format!("statement {name} prepared twice"));
                    return self.fail(out, "42P05", "prepared statement already exists");
                }
                self.statements.insert(name, sql);
                put_msg(out, b'1', b"");
            }
            b'D' => {
                let kind = b[0];
                at = 1;
                let name = cstr(b, &mut at);
                if kind != b'S' || !self.statements.contains_key(&name) {
                    self.violations
                        .push(format!("Describe of unknown statement {name}"));
                    return self.fail(out, "26000", "unknown statement");
                }
                let mut pd = Vec::new();
                pd.extend(1i16.to_be_bytes());
                pd.extend(INT8.to_be_bytes());
                put_msg(out, b't', &pd);
                put_msg(out, b'T', &row_description(INT8));
            }
            b'B' => {
                let _portal = cstr(b, &mut at);
                let name = cstr(b, &mut at);
                if !self.statements.contains_key(&name) {
                    self.violations
                        .push(format!("Bind to unknown statement {name:?}"));
                    return self.fail(out, "26000", "unknown statement");
                }
                let nfmt = i16_at(b, &mut at);
                at += 2 * nfmt as usize;
                let nparams = i16_at(b, &mut at);
                if self.statements[&name].starts_with("BEGIN") {
                    if nparams != 0 {
                        self.violations.push("BEGIN bound with parameters".into());
                    }
                    self.begin_portal = true;
                    put_msg(out, b'2', b"");
                    return;
                }
                if nparams != 1 {
                    self.violations
                        .push(format!("Bind with {nparams} parameters"));
                    return self.fail(out, "08P01", "wrong parameter count");
                }
                let len = i32_at(b, &mut at);
                if len != 8 {
                    self.violations
                        .push(format!("int8 parameter of {len} bytes"));
                    return self.fail(out, "08P01", "bad parameter");
                }
                self.portal = Some(i64::from_be_bytes(b[at..at + 8].try_into().unwrap()));
                put_msg(out, b'2', b"");
            }
            b'E' => {
                if std::mem::take(&mut self.begin_portal) {
                    if self.tx.is_some() {
                        self.violations
                            .push("BEGIN inside a transaction block".into());
                    }
                    self.tx = Some(false);
                    put_msg(out, b'C', b"BEGIN\0");
                    return;
                }
                let Some(v) = self.portal.take() else {
                    self.violations.push("Execute with no portal".into());
                    return self.fail(out, "34000", "no portal");
                };
                if v < 0 {
                    return self.fail(out, "22023", "bad value");
                }
                if self.tx.is_some() {
                    self.tx_values.push(v);
                }
                let n = rows_for(v);
                for _ in 0..n {
                    put_msg(out, b'D', &data_row(&v.to_be_bytes()));
                }
                put_msg(out, b'C', format!("SELECT {n}\0").as_bytes());
            }
            b'C' => {
                let _kind = b[0];
                at = 1;
                let name = cstr(b, &mut at);
                self.statements.remove(&name);
                put_msg(out, b'3', b"");
            }
            other => self
                .violations
                .push(format!("unexpected message {:?}", other as char)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Callers.

/// A rolled-back pipelined transaction: the failing statement, its SQLSTATE, the values of
/// the statements before it.
type RolledBack = (usize, String, Vec<Vec<i64>>);

#[derive(Debug, Clone, PartialEq)]
enum Got {
    Values(Vec<i64>),
    Statement(String),
    Batch(Vec<Result<Vec<i64>, ErrorKind>>),
    /// A pipelined transaction: committed with each statement's values, or rolled back at
    /// a statement with the error's SQLSTATE and the values of those before it.
    Tx(Result<Vec<Vec<i64>>, RolledBack>),
    Notification(String),
    Unit,
}

thread_local! {
    /// Notification streams that got what their listener wanted and are kept open, unpolled.
    static KEPT: std::cell::RefCell<Vec<crate::Notifies>> = const { std::cell::RefCell::new(Vec::new()) };
}

type Fut = Pin<Box<dyn Future<Output = Result<Got, aiopg_core::Error>> + Send>>;

#[derive(Debug, Clone)]
enum Kind {
    Prepare(u8),
    Query(u8, i64),
    Simple(i64),
    Batch(Vec<(u8, i64)>),
    /// The same statements as one pipelined transaction.
    Tx(Vec<(u8, i64)>),
    Stream(u8, i64),
    /// Two parameters for a one-parameter statement: fails to encode, sends nothing.
    EncodeFail(u8),
    Settle,
    /// A simple query sent in pieces while holding the connection (as COPY data is): the
    /// server must see it whole, with nobody else's bytes inside.
    Exclusive(i64, usize),
    /// Waits for one notification.
    Listen,
    /// `copy_in`: `lines` lines of data, then the end.
    CopyIn(i64, u8, CopyEnd),
    /// `copy_out`: every chunk, parsed.
    CopyOut(i64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CopyEnd {
    Finish,
    Abort,
    /// A malformed line after the others: the server fails the COPY.
    Bad,
}

/// Wakes itself and returns `Pending` once: lets other callers run between two steps.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Runs `items` as one pipelined transaction.
async fn run_tx(c: &Connection, items: &[(u8, i64)]) -> Result<Got, aiopg_core::Error> {
    let sqls: Vec<String> = items.iter().map(|(k, _)| sql_for(*k)).collect();
    let mut p = c.pipeline();
    for ((_, v), sql) in items.iter().zip(&sqls) {
        p.query(sql, &[v]);
    }
    let values = |r: &[crate::QueryResult]| -> Vec<Vec<i64>> {
        r.iter()
            .map(|q| q.rows.iter().map(|r| r.get::<i64>(0)).collect())
            .collect()
    };
    Ok(Got::Tx(
        match p.transaction(crate::TransactionOptions::default()).await? {
            crate::TransactionOutcome::Committed(r) => Ok(values(&r)),
            crate::TransactionOutcome::RolledBack {
                step: crate::TransactionStep::Statement(i),
                error,
                results,
            } => Err((
                i,
                error
                    .code()
                    .map(|c| c.code().to_owned())
                    .unwrap_or_default(),
                values(&results),
            )),
            other => return Err(aiopg_core::Error::usage(format!("{other:?}"))),
        },
    ))
}

impl Kind {
    fn start(&self, conn: &Connection) -> Fut {
        let c = conn.clone();
        match self.clone() {
            Kind::Prepare(k) => Box::pin(async move {
                Ok(Got::Statement(
                    c.prepare(&sql_for(k)).await?.sql().to_owned(),
                ))
            }),
            Kind::Query(k, v) => Box::pin(async move {
                let rows = c.query(&sql_for(k), &[&v]).await?;
                Ok(Got::Values(rows.iter().map(|r| r.get::<i64>(0)).collect()))
            }),
            Kind::Simple(v) => Box::pin(async move {
                let out = c.simple_query(&format!("Q {v}")).await?;
                let mut vals = Vec::new();
                for m in out {
                    if let crate::SimpleQueryMessage::Row(r) = m {
                        vals.push(r.get(0).unwrap().parse().unwrap());
                    }
                }
                Ok(Got::Values(vals))
            }),
            Kind::Batch(items) => Box::pin(async move {
                let sqls: Vec<String> = items.iter().map(|(k, _)| sql_for(*k)).collect();
                let mut p = c.pipeline();
                for ((_, v), sql) in items.iter().zip(&sqls) {
                    p.query(sql, &[v]);
                }
                let res = p.run().await?;
                Ok(Got::Batch(
                    res.into_iter()
                        .map(|r| match r {
                            Ok(q) => Ok(q.rows.iter().map(|r| r.get::<i64>(0)).collect()),
                            Err(e) => Err(e.kind()),
                        })
                        .collect(),
                ))
            }),
            Kind::Tx(items) => Box::pin(async move { run_tx(&c, &items).await }),
            Kind::Stream(k, v) => Box::pin(async move {
                let mut s = c.query_stream(&sql_for(k), &[&v]).await?;
                let mut vals = Vec::new();
                while let Some(row) =
                    std::future::poll_fn(|cx| Pin::new(&mut s).poll_next(cx)).await
                {
                    vals.push(row?.get::<i64>(0));
                }
                assert_eq!(
                    s.rows_affected(),
                    Some(vals.len() as u64),
                    "a stream's row count"
                );
                Ok(Got::Values(vals))
            }),
            Kind::EncodeFail(k) => Box::pin(async move {
                let (a, b) = (1i64, 2i64);
                c.query(&sql_for(k), &[&a, &b]).await?;
                Ok(Got::Unit)
            }),
            Kind::Settle => Box::pin(async move {
                c.settle().await?;
                Ok(Got::Unit)
            }),
            Kind::CopyIn(v, lines, end) => Box::pin(async move {
                let mut w = c.copy_in(&format!("COPYIN {v}")).await?;
                for k in 0..lines {
                    w.write(format!("{k}\n").as_bytes()).await?;
                    if k % 3 == 1 {
                        yield_once().await;
                    }
                }
                match end {
                    CopyEnd::Finish => Ok(Got::Values(vec![w.finish().await? as i64])),
                    CopyEnd::Abort => {
                        w.abort("no").await?;
                        Ok(Got::Unit)
                    }
                    CopyEnd::Bad => {
                        w.write(b"x\n").await?;
                        w.finish().await?;
                        Ok(Got::Unit)
                    }
                }
            }),
            Kind::CopyOut(v) => Box::pin(async move {
                let mut out = c.copy_out(&format!("COPYOUT {v}")).await?;
                let mut vals = Vec::new();
                while let Some(chunk) =
                    std::future::poll_fn(|cx| Pin::new(&mut out).poll_next(cx)).await
                {
                    let chunk = chunk?;
                    vals.push(std::str::from_utf8(&chunk).unwrap().trim().parse().unwrap());
                }
                assert_eq!(out.rows(), Some(vals.len() as u64), "a COPY's row count");
                Ok(Got::Values(vals))
            }),
            Kind::Listen => Box::pin(async move {
                let mut n = c.notifies();
                loop {
                    match std::future::poll_fn(|cx| Pin::new(&mut n).poll_next(cx)).await {
                        Some(Ok(got)) => {
                            // The stream stays open, unpolled, until a later step drops it: it
                            // must not keep the socket from everyone else meanwhile.
                            KEPT.with(|k| k.borrow_mut().push(n));
                            return Ok(Got::Notification(got.payload));
                        }
                        // A small buffer may overflow while this listener is not polled.
                        Some(Err(e)) if e.kind() == ErrorKind::Lagged => continue,
                        Some(Err(e)) => return Err(e),
                        None => return Err(aiopg_core::Error::usage("the stream ended")),
                    }
                }
            }),
            Kind::Exclusive(v, pieces) => Box::pin(async move {
                let mut msg = bytes::BytesMut::new();
                postgres_protocol::message::frontend::query(&format!("Q {v}"), &mut msg).unwrap();
                let step = msg.len().div_ceil(pieces.max(1));
                let chunks: Vec<Vec<u8>> = msg.chunks(step).map(<[u8]>::to_vec).collect();
                let rest = |k: usize| bytes::BytesMut::from(&chunks[k..].concat()[..]);
                let first = chunks[0].clone();
                let mut ex = crate::exclusive::Exclusive::start(
                    &c,
                    move |st| {
                        st.write.extend_from_slice(&first);
                        Ok(crate::collect::Collector::simple())
                    },
                    rest(1),
                )?;
                for (k, chunk) in chunks.iter().enumerate().skip(1) {
                    yield_once().await;
                    ex.append(chunk, Some(rest(k + 1)))?;
                }
                ex.release();
                let out = std::future::poll_fn(|cx| ex.poll(cx)).await?;
                let crate::collect::Output::Simple(out) = out else {
                    panic!("not a simple query's answer");
                };
                let mut vals = Vec::new();
                for m in out {
                    if let crate::SimpleQueryMessage::Row(r) = m {
                        vals.push(r.get(0).unwrap().parse().unwrap());
                    }
                }
                Ok(Got::Values(vals))
            }),
        }
    }

    /// What this request must return, and nothing else.
    fn check(&self, got: Result<Got, aiopg_core::Error>) -> Result<(), String> {
        let bad = |what: &str| Err(format!("{self:?} got {what}"));
        let rows = |v: i64| vec![v; rows_for(v)];
        match (self, got) {
            (Kind::Prepare(k), Ok(Got::Statement(s))) if s == sql_for(*k) => Ok(()),
            (Kind::Query(_, v) | Kind::Stream(_, v), Ok(Got::Values(vals)))
                if *v >= 0 && vals == rows(*v) =>
            {
                Ok(())
            }
            (Kind::Query(_, v) | Kind::Stream(_, v), Err(e))
                if *v < 0 && e.code().map(|c| c.code()) == Some("22023") =>
            {
                Ok(())
            }
            (Kind::Simple(v) | Kind::Exclusive(v, _), Ok(Got::Values(vals)))
                if *v >= 0 && vals == vec![*v] =>
            {
                Ok(())
            }
            (Kind::Simple(v) | Kind::Exclusive(v, _), Err(e))
                if *v < 0 && e.code().map(|c| c.code()) == Some("22023") =>
            {
                Ok(())
            }
            // Only one request may hold the connection at a time.
            (Kind::Exclusive(..), Err(e)) if e.kind() == ErrorKind::Usage => Ok(()),
            (Kind::Batch(items), Ok(Got::Batch(res))) => {
                let fail = items.iter().position(|(_, v)| *v < 0);
                let want: Vec<Result<Vec<i64>, ErrorKind>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, (_, v))| match fail {
                        Some(f) if i == f => Err(ErrorKind::Db),
                        Some(f) if i > f => Err(ErrorKind::Aborted),
                        _ => Ok(rows(*v)),
                    })
                    .collect();
                if res == want {
                    Ok(())
                } else {
                    bad(&format!("{res:?}, want {want:?}"))
                }
            }
            (Kind::Tx(items), Ok(Got::Tx(res))) => {
                let want = match items.iter().position(|(_, v)| *v < 0) {
                    Some(f) => Err((
                        f,
                        "22023".to_owned(),
                        items[..f].iter().map(|(_, v)| rows(*v)).collect(),
                    )),
                    None => Ok(items.iter().map(|(_, v)| rows(*v)).collect()),
                };
                if res == want {
                    Ok(())
                } else {
                    bad(&format!("{res:?}, want {want:?}"))
                }
            }
            (Kind::EncodeFail(_), Err(e)) if e.kind() == ErrorKind::Encode => Ok(()),
            (Kind::CopyIn(v, _, _) | Kind::CopyOut(v), Err(e))
                if *v < 0 && e.code().map(|c| c.code()) == Some("42P01") =>
            {
                Ok(())
            }
            (Kind::CopyIn(v, n, CopyEnd::Finish), Ok(Got::Values(vals)))
                if *v >= 0 && vals == vec![i64::from(*n)] =>
            {
                Ok(())
            }
            (Kind::CopyIn(v, _, CopyEnd::Abort), Ok(Got::Unit)) if *v >= 0 => Ok(()),
            (Kind::CopyIn(v, _, CopyEnd::Bad), Err(e))
                if *v >= 0 && e.code().map(|c| c.code()) == Some("22P02") =>
            {
                Ok(())
            }
            (Kind::CopyOut(v), Ok(Got::Values(vals)))
                if *v >= 0 && vals == vec![*v; rows_for(*v) * 3] =>
            {
                Ok(())
            }
            // Which notification a listener gets is checked by the model (each exactly once).
            (Kind::Listen, Ok(Got::Notification(_))) => Ok(()),
            (Kind::Settle, Ok(Got::Unit)) => Ok(()),
            (_, got) => bad(&format!("{got:?}")),
        }
    }
}

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct Caller {
    kind: Kind,
    fut: Fut,
    flag: Arc<Flag>,
    /// Where a listener records the notification it got.
    received: Arc<Mutex<Vec<String>>>,
}

impl Caller {
    /// Polls once; `Some` with the check's verdict when the future finished.
    fn poll(&mut self) -> Option<Result<(), String>> {
        self.flag.0.store(false, Ordering::SeqCst);
        let waker = Waker::from(self.flag.clone());
        let mut cx = Context::from_waker(&waker);
        match self.fut.as_mut().poll(&mut cx) {
            Poll::Ready(got) => {
                if let Ok(Got::Notification(p)) = &got {
                    self.received.lock().unwrap().push(p.clone());
                }
                Some(self.kind.check(got))
            }
            Poll::Pending => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone)]
enum Action {
    Issue(usize, Kind),
    Poll(usize),
    Drop(usize),
    Server(usize),
    Net {
        read: usize,
        write: usize,
    },
    Detach(i64),
    RunTasks,
    /// The server sends a notification (between any two of its messages).
    Notify,
    /// The server's next answer races with the next read's registration (see `Net::hold`).
    Hold,
    /// A caller's future moves to another task, which polls it: its waker changes, and the
    /// old one wakes nothing that polls it.
    Move(usize),
    /// The socket becomes (or stops being) a buffering stream, as TLS is (see `Net::stage`).
    Stage(bool),
    /// A driver task starts (its first poll), is polled, or is dropped (see `driver.rs`).
    StartDriver,
    PollDriver,
    DropDriver,
}

const CALLERS: usize = 4;

struct Model {
    conn: Connection,
    net: Arc<Mutex<Net>>,
    server: Server,
    runtime: Arc<ModelRuntime>,
    tasks: Vec<(Task, Arc<Flag>)>,
    callers: Vec<Option<Caller>>,
    /// Notifications the server sent, and those listeners got.
    sent: u32,
    received: Arc<Mutex<Vec<String>>>,
    /// A subscriber that is never polled until the end: it must then hold every notification
    /// in order, or say how many it missed.
    monitor: Option<crate::Notifies>,
    /// The driver task, when one was started and not dropped (it may have completed).
    driver: Option<(crate::Driver, Arc<Flag>, bool)>,
}

impl Model {
    fn new(cache: usize) -> Model {
        Model::with_capacity(cache, 1 << 16, false)
    }

    /// `auto`: the connection starts a driver task by itself for concurrent callers (as on
    /// tokio's multi-threaded runtime), which the model runs as one of its spawned tasks.
    fn with_capacity(cache: usize, events: usize, auto: bool) -> Model {
        let net = Arc::new(Mutex::new(Net {
            read_limit: 1 << 20,
            write_limit: 1 << 20,
            ..Net::default()
        }));
        let state = State::new(
            Box::new(Sock(net.clone())),
            ReadBuf::new(),
            HashMap::new(),
            StatementCache::new(cache),
        );
        let runtime = Arc::new(ModelRuntime::default());
        let identity = Identity {
            backend_pid: 1,
            secret_key: 1,
            config: Config::new(),
            host: aiopg_core::config::Host::Tcp("127.0.0.1".into()),
            addr: None,
            port: 5432,
            tls: None,
        };
        let shared = Shared::new(state, runtime.clone(), identity, None);
        shared.lock().set_event_capacity(events);
        shared.lock().set_auto_driver(auto);
        let conn = Connection::from_shared(Arc::new(shared));
        Model {
            monitor: Some(conn.notifies()),
            conn,
            net,
            server: Server::default(),
            runtime,
            tasks: Vec::new(),
            callers: (0..CALLERS).map(|_| None).collect(),
            sent: 0,
            received: Arc::default(),
            driver: None,
        }
    }

    fn check_state(&self) -> Result<(), String> {
        self.conn.shared.lock().check()?;
        if let Some(v) = self.server.violations.first() {
            return Err(format!("the server saw a protocol violation: {v}"));
        }
        Ok(())
    }

    fn finish(&mut self, i: usize, verdict: Result<(), String>) -> Result<(), String> {
        self.callers[i] = None;
        verdict
    }

    fn step(&mut self, action: &Action) -> Result<(), String> {
        match action {
            Action::Issue(i, kind) => {
                let i = i % CALLERS;
                if self.callers[i].is_none() {
                    let mut caller = Caller {
                        kind: kind.clone(),
                        fut: kind.start(&self.conn),
                        flag: Arc::new(Flag(AtomicBool::new(false))),
                        received: self.received.clone(),
                    };
                    // A future does nothing until polled: issuing is its first poll.
                    match caller.poll() {
                        Some(verdict) => verdict?,
                        None => self.callers[i] = Some(caller),
                    }
                }
            }
            Action::Poll(i) => {
                let i = i % CALLERS;
                if let Some(verdict) = self.callers[i].as_mut().and_then(Caller::poll) {
                    self.finish(i, verdict)?;
                }
            }
            Action::Drop(i) => {
                if self.callers[i % CALLERS].take().is_none() {
                    KEPT.with(|k| k.borrow_mut().clear());
                }
            }
            Action::Server(n) => {
                let mut net = self.net.lock().unwrap();
                self.server.step(&mut net, *n);
            }
            Action::Net { read, write } => {
                let mut net = self.net.lock().unwrap();
                net.read_limit = *read;
                net.write_limit = *write;
                if *write > 0 {
                    if let Some(w) = net.write_waker.take() {
                        w.wake();
                    }
                }
            }
            Action::Detach(v) => self.conn.detach(&format!("Q {v}")),
            Action::Notify => self.notify(),
            Action::Hold => self.net.lock().unwrap().hold = true,
            Action::Stage(on) => {
                let mut net = self.net.lock().unwrap();
                // Bytes already staged stay staged until flushed, whatever the mode.
                net.stage = *on;
            }
            Action::Move(i) => {
                let i = i % CALLERS;
                if let Some(c) = self.callers[i].as_mut() {
                    c.flag = Arc::new(Flag(AtomicBool::new(false)));
                    if let Some(verdict) = c.poll() {
                        self.finish(i, verdict)?;
                    }
                }
            }
            Action::RunTasks => self.run_tasks(false),
            Action::StartDriver => {
                if self.driver.is_none() {
                    self.driver = Some((
                        self.conn.driver(),
                        Arc::new(Flag(AtomicBool::new(false))),
                        false,
                    ));
                    self.poll_driver();
                }
            }
            Action::PollDriver => self.poll_driver(),
            Action::DropDriver => self.driver = None,
        }
        self.adopt_tasks();
        self.check_state()
    }

    fn notify(&mut self) {
        self.sent += 1;
        let mut body = Vec::new();
        body.extend(7i32.to_be_bytes());
        body.extend_from_slice(b"chan\0");
        body.extend_from_slice(format!("n{}\0", self.sent).as_bytes());
        let mut net = self.net.lock().unwrap();
        if !net.held.is_empty() {
            put_msg(&mut net.held, b'A', &body);
            return;
        }
        put_msg(&mut net.s2c, b'A', &body);
        if let Some(w) = net.read_waker.take() {
            w.wake();
        }
    }

    /// Polls the driver task once, if it runs.
    fn poll_driver(&mut self) {
        if let Some((d, flag, done)) = self.driver.as_mut() {
            if !*done {
                flag.0.store(false, Ordering::SeqCst);
                let waker = Waker::from(flag.clone());
                *done = Pin::new(d)
                    .poll(&mut Context::from_waker(&waker))
                    .is_ready();
            }
        }
    }

    fn adopt_tasks(&mut self) {
        for t in self.runtime.spawned.lock().unwrap().drain(..) {
            self.tasks.push((t, Arc::new(Flag(AtomicBool::new(true)))));
        }
    }

    /// Polls detached tasks (all of them, or only the woken ones).
    fn run_tasks(&mut self, woken_only: bool) {
        self.adopt_tasks();
        self.tasks.retain_mut(|(t, flag)| {
            if woken_only && !flag.0.load(Ordering::SeqCst) {
                return true;
            }
            flag.0.store(false, Ordering::SeqCst);
            let waker = Waker::from(flag.clone());
            t.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        });
    }

    /// Lets everything finish with only wake-ups driving the futures, as a real executor
    /// would: a future left pending with nobody to wake it is a lost wake-up.
    fn settle_all(&mut self) -> Result<(), String> {
        {
            let mut net = self.net.lock().unwrap();
            net.read_limit = 1 << 20;
            net.write_limit = 1 << 20;
            if let Some(w) = net.write_waker.take() {
                w.wake();
            }
            net.hold = false;
            if !net.held.is_empty() {
                let mut held = std::mem::take(&mut net.held);
                held.extend(net.s2c.drain(..));
                net.s2c = held;
                if let Some(w) = net.read_waker.take() {
                    w.wake();
                }
            }
        }
        for _ in 0..100_000 {
            let mut progress = false;
            for i in 0..CALLERS {
                let woken = self.callers[i]
                    .as_ref()
                    .is_some_and(|c| c.flag.0.load(Ordering::SeqCst));
                if woken {
                    progress = true;
                    if let Some(verdict) = self.callers[i].as_mut().and_then(Caller::poll) {
                        self.finish(i, verdict)?;
                    }
                    self.check_state()?;
                }
            }
            if self
                .driver
                .as_ref()
                .is_some_and(|(_, f, done)| !done && f.0.load(Ordering::SeqCst))
            {
                progress = true;
                self.poll_driver();
                self.check_state()?;
            }
            if self.tasks.iter().any(|(_, f)| f.0.load(Ordering::SeqCst))
                || !self.runtime.spawned.lock().unwrap().is_empty()
            {
                progress = true;
                self.run_tasks(true);
            }
            {
                let mut net = self.net.lock().unwrap();
                if self.server.step(&mut net, usize::MAX) > 0 {
                    progress = true;
                }
            }
            self.check_state()?;
            if !progress {
                let stuck: Vec<String> = self
                    .callers
                    .iter()
                    .flatten()
                    .map(|c| format!("{:?}", c.kind))
                    .collect();
                if stuck.is_empty() && self.tasks.is_empty() {
                    return Ok(());
                }
                return Err(format!(
                    "lost wake-up: {stuck:?} and {} detached tasks pending, nobody to wake them\n{}",
                    self.tasks.len(),
                    self.conn.shared.lock().dump()
                ));
            }
        }
        Err("no quiescence after 100000 rounds".into())
    }

    fn run(mut self, actions: &[Action]) -> Result<(), String> {
        KEPT.with(|k| k.borrow_mut().clear());
        for a in actions {
            self.step(a).map_err(|e| format!("after {a:?}: {e}"))?;
        }
        // Listeners still waiting get one notification each, and must then finish too.
        let waiting = self
            .callers
            .iter()
            .flatten()
            .filter(|c| matches!(c.kind, Kind::Listen))
            .count();
        for _ in 0..waiting {
            self.notify();
        }
        self.settle_all()?;
        // The connection is in sync: a fresh query gets its own answer.
        let last = Kind::Simple(424_242);
        self.step(&Action::Issue(0, last))?;
        self.settle_all()?;
        // Every notification reached the monitor in order, or is counted as missed.
        let mut monitor = self.monitor.take().expect("kept until the end");
        let mut next = 1u64;
        let mut missed = 0u64;
        while let Some(n) = monitor.next_buffered() {
            match n {
                Ok(n) => {
                    let k: u64 = n.payload[1..].parse().unwrap();
                    if k != next {
                        return Err(format!("the monitor got n{k} where n{next} was due"));
                    }
                    next += 1;
                }
                Err(e) if e.kind() == ErrorKind::Lagged => {
                    let k = e.missed().unwrap_or(0);
                    if k == 0 {
                        return Err("a Lagged error missing nothing".into());
                    }
                    next += k;
                    missed += k;
                }
                Err(e) => return Err(format!("the monitor got {e}")),
            }
        }
        if next != u64::from(self.sent) + 1 {
            return Err(format!(
                "{} notifications sent, the monitor accounted for {} ({missed} missed)",
                self.sent,
                next - 1
            ));
        }
        // Listeners got only notifications that were sent.
        for p in self.received.lock().unwrap().iter() {
            let k: u32 = p[1..].parse().unwrap();
            if k == 0 || k > self.sent {
                return Err(format!("a listener got {p}, never sent"));
            }
        }
        let st = self.conn.shared.lock();
        if st.has_unanswered() {
            return Err("requests left unanswered at the end".into());
        }
        if st.is_closed() {
            return Err("the connection closed".into());
        }
        // No statement leaked or lost: the server holds exactly the cached ones, plus those
        // whose Close is still waiting for a request to ride on.
        let (cached, closing) = st.statements.names();
        for name in &cached {
            if !self.server.statements.contains_key(name) {
                return Err(format!("cached statement {name} is not on the server"));
            }
        }
        for name in self.server.statements.keys() {
            if !name.is_empty() && !cached.contains(name) && !closing.contains(name) {
                return Err(format!(
                    "statement {name} leaked: on the server, unknown to the client"
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Strategies.

fn value() -> impl Strategy<Value = i64> {
    // About one in six values makes the server fail the statement.
    prop_oneof![5 => 0i64..1000, 1 => -5i64..0]
}

fn kind() -> impl Strategy<Value = Kind> {
    let k = 0u8..5;
    prop_oneof![
        2 => k.clone().prop_map(Kind::Prepare),
        5 => (k.clone(), value()).prop_map(|(k, v)| Kind::Query(k, v)),
        2 => value().prop_map(Kind::Simple),
        2 => proptest::collection::vec((k.clone(), value()), 1..4).prop_map(Kind::Batch),
        2 => proptest::collection::vec((k.clone(), value()), 1..4).prop_map(Kind::Tx),
        3 => (k.clone(), value()).prop_map(|(k, v)| Kind::Stream(k, v)),
        1 => k.prop_map(Kind::EncodeFail),
        1 => Just(Kind::Settle),
        2 => (value(), 1usize..5).prop_map(|(v, n)| Kind::Exclusive(v, n)),
        1 => Just(Kind::Listen),
        2 => (value(), 0u8..12, prop_oneof![3 => Just(CopyEnd::Finish), 1 => Just(CopyEnd::Abort), 1 => Just(CopyEnd::Bad)])
            .prop_map(|(v, n, e)| Kind::CopyIn(v, n, e)),
        2 => value().prop_map(Kind::CopyOut),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..CALLERS, kind()).prop_map(|(i, k)| Action::Issue(i, k)),
        8 => (0..CALLERS).prop_map(Action::Poll),
        2 => (0..CALLERS).prop_map(Action::Drop),
        5 => (1usize..6).prop_map(Action::Server),
        2 => (prop_oneof![Just(1usize), 1usize..16, Just(1 << 16)], prop_oneof![Just(0usize), 1usize..40, Just(1 << 16)])
            .prop_map(|(read, write)| Action::Net { read, write }),
        1 => value().prop_map(Action::Detach),
        1 => Just(Action::RunTasks),
        1 => Just(Action::Notify),
        2 => Just(Action::Hold),
        1 => (0..CALLERS).prop_map(Action::Move),
        1 => any::<bool>().prop_map(Action::Stage),
        1 => Just(Action::StartDriver),
        2 => Just(Action::PollDriver),
        1 => Just(Action::DropDriver),
    ]
}

proptest! {
    #![proptest_config(model_config())]

    /// Several callers, every kind of request, random drops, splits and server pacing: every
    /// completed request gets its own answer and the connection ends in sync.
    #[test]
    fn every_answer_reaches_its_own_caller(
        cache in prop_oneof![Just(0usize), Just(2usize), Just(100usize)],
        events in prop_oneof![Just(1usize), Just(3usize), Just(1usize << 16)],
        auto in any::<bool>(),
        actions in proptest::collection::vec(action(), 1..120),
    ) {
        if let Err(e) = Model::with_capacity(cache, events, auto).run(&actions) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// Cases per run: `AIOPG_MODEL_CASES`, 3000 by default.
fn model_config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("AIOPG_MODEL_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000),
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    }
}

/// What one step of the commit-outcome model does.
#[derive(Debug, Clone)]
enum CommitAction {
    /// Caller `i` (if free) issues a plain simple query (0), a `COMMIT` (1), a pipelined
    /// transaction (2) or one whose second statement fails (3).
    Issue(usize, u8),
    Poll(usize),
    Server(usize),
    Net {
        read: usize,
        write: usize,
    },
    /// Writes take this many more bytes in all, then pend (`None`: no limit).
    Budget(Option<usize>),
}

fn commit_action() -> impl Strategy<Value = CommitAction> {
    prop_oneof![
        3 => (0..CALLERS, 0u8..4).prop_map(|(i, c)| CommitAction::Issue(i, c)),
        4 => (0..CALLERS).prop_map(CommitAction::Poll),
        2 => (0..4usize).prop_map(CommitAction::Server),
        2 => (prop_oneof![Just(1usize), Just(3), Just(64), Just(1 << 20)],
              prop_oneof![Just(0usize), Just(1), Just(7), Just(1 << 20)])
            .prop_map(|(read, write)| CommitAction::Net { read, write }),
        2 => prop_oneof![Just(None), Just(Some(0usize)), Just(Some(3)), Just(Some(9)), Just(Some(20))]
            .prop_map(CommitAction::Budget),
    ]
}

/// `Ok(true)`: committed; `Ok(false)`: a pipelined transaction rolled back.
type CommitFut = Pin<Box<dyn Future<Output = aiopg_core::Result<bool>> + Send>>;
/// A caller of the commit model: its commit id (`None` for a plain query), future, waker.
type CommitCaller = (Option<u64>, CommitFut, Arc<Flag>);

/// Random traffic of commits and plain queries from several callers, then the link is cut
/// at a random point (the server still runs every message it received whole, its answers
/// lost). Every commit must be reported truthfully: `Ok` only if the server ran it, a plain
/// `Closed` only if the server never got it whole (so it never ran), and `CommitUnknown`
/// exactly when it was written whole without its answer; plain queries never say
/// `CommitUnknown`. Nothing hangs after the cut.
fn commit_outcomes(actions: &[CommitAction]) -> Result<(), String> {
    let mut m = Model::new(100);
    let mut callers: Vec<Option<CommitCaller>> = (0..CALLERS).map(|_| None).collect();
    let mut next_id = 0u64;
    // Commit ids whose futures finished, with what they returned.
    let mut outcomes: Vec<(u64, bool, aiopg_core::Result<bool>)> = Vec::new();
    // Ids of the pipelined transactions made to fail.
    let mut failing: Vec<u64> = Vec::new();
    let poll = |c: &mut CommitCaller| -> Poll<aiopg_core::Result<bool>> {
        c.2 .0.store(false, Ordering::SeqCst);
        let waker = Waker::from(c.2.clone());
        c.1.as_mut().poll(&mut Context::from_waker(&waker))
    };
    let record =
        |id: Option<u64>, r: aiopg_core::Result<bool>, outcomes: &mut Vec<_>, failing: &[u64]| {
            match id {
                Some(id) => outcomes.push((id, failing.contains(&id), r)),
                None => {
                    if let Err(e) = r {
                        if e.kind() != ErrorKind::Closed {
                            return Err(format!("a plain query failed with {e}"));
                        }
                    }
                }
            }
            Ok(())
        };
    for a in actions {
        match a {
            CommitAction::Issue(i, commit) => {
                if callers[*i].is_none() {
                    let c = m.conn.clone();
                    let (id, fut): (Option<u64>, CommitFut) = if *commit > 0 {
                        next_id += 1;
                        let id = next_id;
                        let fut: CommitFut = if *commit == 1 {
                            Box::pin(async move {
                                c.batch_execute(&format!("COMMIT -- {id}")).await?;
                                Ok(true)
                            })
                        } else {
                            let second = if *commit == 3 { -1 } else { id as i64 };
                            if *commit == 3 {
                                failing.push(id);
                            }
                            Box::pin(async move {
                                let sql = sql_for(0);
                                let first = id as i64;
                                let mut p = c.pipeline();
                                p.query(&sql, &[&first]).query(&sql, &[&second]);
                                let out = p.transaction(crate::TransactionOptions::default());
                                Ok(out.await?.is_committed())
                            })
                        };
                        (Some(id), fut)
                    } else {
                        (
                            None,
                            Box::pin(async move {
                                c.batch_execute("Q 1").await?;
                                Ok(true)
                            }),
                        )
                    };
                    let mut caller = (id, fut, Arc::new(Flag(AtomicBool::new(false))));
                    match poll(&mut caller) {
                        Poll::Ready(r) => record(id, r, &mut outcomes, &failing)?,
                        Poll::Pending => callers[*i] = Some(caller),
                    }
                }
            }
            CommitAction::Poll(i) => {
                if let Some(c) = callers[*i].as_mut() {
                    if let Poll::Ready(r) = poll(c) {
                        let id = c.0;
                        callers[*i] = None;
                        record(id, r, &mut outcomes, &failing)?;
                    }
                }
            }
            CommitAction::Server(n) => {
                let mut net = m.net.lock().unwrap();
                m.server.step(&mut net, *n);
            }
            CommitAction::Budget(b) => {
                let mut net = m.net.lock().unwrap();
                net.write_budget = *b;
                if let Some(w) = net.write_waker.take() {
                    w.wake();
                }
            }
            CommitAction::Net { read, write } => {
                let mut net = m.net.lock().unwrap();
                net.read_limit = *read;
                net.write_limit = *write;
                if *write > 0 {
                    if let Some(w) = net.write_waker.take() {
                        w.wake();
                    }
                }
            }
        }
        m.conn.shared.lock().check()?;
    }
    // The cut: what reached the server whole still runs; its answers are lost.
    let committed = {
        let mut net = m.net.lock().unwrap();
        m.server.step(&mut net, usize::MAX);
        net.s2c.clear();
        net.dead = true;
        for w in [net.read_waker.take(), net.write_waker.take()]
            .into_iter()
            .flatten()
        {
            w.wake();
        }
        (
            std::mem::take(&mut m.server.committed),
            std::mem::take(&mut m.server.commits_seen),
        )
    };
    let (committed, seen) = committed;
    for _ in 0..1000 {
        if callers.iter().all(Option::is_none) {
            break;
        }
        for slot in callers.iter_mut() {
            if let Some(c) = slot.as_mut() {
                if let Poll::Ready(r) = poll(c) {
                    let id = c.0;
                    *slot = None;
                    record(id, r, &mut outcomes, &failing)?;
                }
            }
        }
    }
    if callers.iter().any(Option::is_some) {
        return Err("a caller hangs after the link was cut".into());
    }
    for (id, fails, r) in outcomes {
        let ran = committed.contains(&id);
        if fails && ran {
            return Err(format!(
                "transaction {id} failed at a statement, yet committed"
            ));
        }
        match r {
            Ok(true) if ran => {}
            Ok(true) => {
                return Err(format!(
                    "commit {id} returned Ok but the server never ran it"
                ))
            }
            Ok(false) if fails => {}
            Ok(false) => return Err(format!("transaction {id} reported rolled back")),
            Err(e) if e.kind() == ErrorKind::Closed && ran => {
                return Err(format!(
                    "commit {id} ran on the server but was reported as {e}"
                ))
            }
            Err(e) if e.kind() == ErrorKind::CommitUnknown && !seen.contains(&id) => {
                return Err(format!(
                    "commit {id} never reached the server whole, yet: {e}"
                ))
            }
            Err(e) if matches!(e.kind(), ErrorKind::Closed | ErrorKind::CommitUnknown) => {}
            Err(e) => return Err(format!("commit {id} failed with {e}")),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(model_config())]

    /// See [`commit_outcomes`].
    #[test]
    fn a_lost_commit_is_reported_as_unknown_and_only_then(
        actions in proptest::collection::vec(commit_action(), 1..80),
    ) {
        if let Err(e) = commit_outcomes(&actions) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// Found by the model: a COPY writer waiting for its data to go out while another caller,
/// registered for writing after it, wrote that data: nobody woke the writer.
#[test]
fn a_copy_writer_whose_data_another_caller_wrote_is_woken() {
    use Action::*;
    let actions = vec![
        Issue(1, Kind::Prepare(0)),
        Server(3),
        Issue(1, Kind::Prepare(0)),
        Issue(3, Kind::CopyIn(0, 3, CopyEnd::Bad)),
        Hold,
        Issue(0, Kind::Prepare(0)),
        Drop(1),
        Poll(3),
        Notify,
        Server(1),
        Poll(3),
        Poll(3),
        Net { read: 1, write: 0 },
        Issue(1, Kind::Prepare(0)),
        Poll(3),
        Poll(0),
    ];
    Model::with_capacity(0, 1, false).run(&actions).unwrap();
}

/// The issue's reproduction, step by step: a small cache with a Close pending, two callers, the
/// later request still held back in the write buffer, both futures dropped; the next query
/// must get its own answer.
#[test]
fn dropped_requests_with_a_pending_close_leave_no_answer_behind() {
    let actions = vec![
        Action::Issue(0, Kind::Prepare(0)),
        Action::Server(10),
        Action::Poll(0),
        Action::Issue(0, Kind::Prepare(1)),
        Action::Server(10),
        Action::Poll(0),
        // A third statement evicts the first: its Close is pending.
        Action::Issue(0, Kind::Prepare(2)),
        Action::Server(10),
        Action::Poll(0),
        Action::Net {
            read: 1 << 16,
            write: 0,
        },
        Action::Issue(1, Kind::Simple(11)),
        Action::Issue(2, Kind::Query(1, 7)),
        Action::Drop(1),
        Action::Drop(2),
        Action::Net {
            read: 1 << 16,
            write: 1 << 16,
        },
    ];
    Model::new(2).run(&actions).unwrap();
}

// ---------------------------------------------------------------------------------------
// Transaction guards: `Transaction` and `Savepoint` futures dropped after random polls.

#[derive(Debug, Clone, Copy, PartialEq)]
enum GuardEnd {
    Commit,
    Rollback,
    Drop,
}

/// One call on the transaction guard (or a statement inside it).
#[derive(Debug, Clone)]
enum GuardOp {
    /// A new guard (the one before it dropped), begun.
    Begin,
    /// `INSERT v` of a fresh value, run to its end.
    Insert,
    /// A failing statement, run to its end.
    Fail,
    /// A scoped savepoint's life: `point()`, an insert, maybe a failing statement, its end.
    Point {
        fail: bool,
        end: GuardEnd,
    },
    Savepoint,
    RollbackSavepoint,
    ReleaseSavepoint,
    Commit,
    Rollback,
    DropGuard,
}

/// What happens around a guard call while it is polled.
#[derive(Debug, Clone)]
enum Noise {
    /// Neighbour `i` (if free) issues a simple query: another caller's request in flight,
    /// which holds back what is issued after it.
    Neighbour(usize),
    PollNeighbours,
    Server(usize),
    /// The most bytes one write takes (0: writes pend).
    Write(usize),
    RunTasks,
}

#[derive(Debug, Clone)]
struct GuardStep {
    op: GuardOp,
    /// Dropped after this many polls unless it finished; `None`: run to its end.
    polls: Option<usize>,
    noise: Vec<Noise>,
}

/// What must have become of a transaction's rows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Committed,
    RolledBack,
    /// A `COMMIT` sent, its answer dropped: either.
    Unknown,
}

/// One transaction's rows, as far as its user can know them.
#[derive(Debug)]
struct Ledger {
    /// Rows by savepoint level (0: the transaction's own), mirroring the guard's stack.
    levels: Vec<Vec<i64>>,
    /// Rows a savepoint rollback undid (or a savepoint never committed): never committed.
    undone: Vec<i64>,
    fate: Option<Fate>,
}

type Neighbour = (
    Pin<Box<dyn Future<Output = aiopg_core::Result<()>> + Send>>,
    Arc<Flag>,
);

fn poll_flagged<F: Future + ?Sized>(fut: Pin<&mut F>, flag: &Arc<Flag>) -> Poll<F::Output> {
    flag.0.store(false, Ordering::SeqCst);
    let waker = Waker::from(flag.clone());
    fut.poll(&mut Context::from_waker(&waker))
}

fn poll_neighbours(nbs: &mut [Option<Neighbour>]) {
    for slot in nbs.iter_mut() {
        if let Some((f, flag)) = slot.as_mut() {
            if poll_flagged(f.as_mut(), flag).is_ready() {
                // In a failed block it fails: either way it is answered.
                *slot = None;
            }
        }
    }
}

fn apply_noise(m: &mut Model, nbs: &mut [Option<Neighbour>], noise: &Noise) {
    match noise {
        Noise::Neighbour(i) => {
            if nbs[*i].is_none() {
                let c = m.conn.clone();
                let mut nb: Neighbour = (
                    Box::pin(async move { c.batch_execute("Q 1").await }),
                    Arc::new(Flag(AtomicBool::new(false))),
                );
                if poll_flagged(nb.0.as_mut(), &nb.1).is_pending() {
                    nbs[*i] = Some(nb);
                }
            }
        }
        Noise::PollNeighbours => poll_neighbours(nbs),
        Noise::Server(n) => {
            let mut net = m.net.lock().unwrap();
            m.server.step(&mut net, *n);
        }
        Noise::Write(limit) => {
            let mut net = m.net.lock().unwrap();
            net.write_limit = *limit;
            if *limit > 0 {
                if let Some(w) = net.write_waker.take() {
                    w.wake();
                }
            }
        }
        Noise::RunTasks => m.run_tasks(false),
    }
}

/// Everything moves: the socket takes all, the server answers all, tasks and neighbours run.
fn progress(m: &mut Model, nbs: &mut [Option<Neighbour>]) {
    apply_noise(m, nbs, &Noise::Write(1 << 20));
    apply_noise(m, nbs, &Noise::Server(usize::MAX));
    m.run_tasks(false);
    poll_neighbours(nbs);
}

/// A scoped savepoint's life (see [`GuardOp::Point`]); `flags` say how far it got: the
/// insert ran, its commit was called, its rollback returned `Ok`.
async fn point_life(
    tx: &mut crate::Transaction,
    conn: &Connection,
    v: i64,
    fail: bool,
    end: GuardEnd,
    flags: &[AtomicBool; 3],
) -> aiopg_core::Result<()> {
    let [inserted, committing, rolled_back] = flags;
    let mut sp = tx.point().await?;
    conn.batch_execute(&format!("INSERT {v}")).await?;
    inserted.store(true, Ordering::SeqCst);
    if fail {
        let _ = conn.batch_execute("FAIL").await;
    }
    match end {
        GuardEnd::Commit => {
            committing.store(true, Ordering::SeqCst);
            sp.commit().await
        }
        GuardEnd::Rollback => {
            sp.rollback().await?;
            rolled_back.store(true, Ordering::SeqCst);
            Ok(())
        }
        GuardEnd::Drop => Ok(()),
    }
}

/// The guard ends (dropped): an active one is rolled back.
fn end_guard(
    tx: &mut Option<crate::Transaction>,
    ledger: &mut Option<Ledger>,
    done: &mut Vec<Ledger>,
) {
    if let Some(t) = tx.take() {
        if let Some(mut l) = ledger.take() {
            if t.is_active() {
                l.fate = Some(Fate::RolledBack);
            }
            done.push(l);
        }
    }
}

/// An error a statement may meet in a transaction that had failed before it.
fn is_aborted(e: &aiopg_core::Error) -> bool {
    e.code().map(|c| c.code()) == Some("25P02")
}

/// Random calls on transaction guards (begin, inserts, failing statements, scoped savepoints,
/// the savepoint stack, commit, rollback, drop), each dropped after a random number of polls,
/// with other callers' requests in flight, writes pending or split, and the server answering
/// at its own pace. The user's view must be the truth: once a guard is gone and the
/// connection settled, the server is inside no transaction block (and the client says so);
/// rows are committed if and only if `commit()` returned `Ok` (either way for a commit whose
/// future was dropped once sent); rows a savepoint rollback undid never commit; and no
/// `ROLLBACK TO` or `RELEASE` names a savepoint that does not exist in a healthy block.
fn guard_outcomes(steps: &[GuardStep]) -> Result<(), String> {
    let mut m = Model::new(100);
    let conn = m.conn.clone();
    let mut nbs: Vec<Option<Neighbour>> = (0..3).map(|_| None).collect();
    let mut tx: Option<crate::Transaction> = None;
    let mut ledger: Option<Ledger> = None;
    let mut done: Vec<Ledger> = Vec::new();
    let mut next_value = 0i64;
    for (n, step) in steps.iter().enumerate() {
        let at = |what: String| format!("step {n} ({step:?}): {what}");
        match step.op {
            GuardOp::Begin => {
                end_guard(&mut tx, &mut ledger, &mut done);
                tx = Some(conn.transaction(crate::TransactionOptions::default()));
            }
            GuardOp::DropGuard => {
                end_guard(&mut tx, &mut ledger, &mut done);
                continue;
            }
            _ if !tx.as_ref().is_some_and(crate::Transaction::is_active) => continue,
            _ => {}
        }
        let t = tx.as_mut().expect("a guard");
        let depth_before = t.savepoint_depth();
        next_value += 1;
        let v = next_value;
        let flags = [
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(false),
        ];
        let c = conn.clone();
        let polls = match step.op {
            // Their outcome must be known.
            GuardOp::Insert | GuardOp::Fail => None,
            _ => step.polls,
        };
        let res = {
            let mut fut: Pin<Box<dyn Future<Output = aiopg_core::Result<()>> + '_>> = match step.op
            {
                GuardOp::Begin => Box::pin(t.begin()),
                GuardOp::Insert => {
                    Box::pin(async move { c.batch_execute(&format!("INSERT {v}")).await })
                }
                GuardOp::Fail => Box::pin(async move { c.batch_execute("FAIL").await }),
                GuardOp::Point { fail, end } => Box::pin(point_life(t, &c, v, fail, end, &flags)),
                GuardOp::Savepoint => Box::pin(t.savepoint()),
                GuardOp::RollbackSavepoint => Box::pin(t.rollback_savepoint()),
                GuardOp::ReleaseSavepoint => Box::pin(t.release_savepoint()),
                GuardOp::Commit => Box::pin(t.commit()),
                GuardOp::Rollback => Box::pin(t.rollback()),
                GuardOp::DropGuard => unreachable!(),
            };
            let flag = Arc::new(Flag(AtomicBool::new(false)));
            let mut res = None;
            // Poll `k + 1` comes after noise `k`.
            for k in 0..10_000 {
                if polls.is_some_and(|p| k >= p) {
                    break;
                }
                // What happens before each poll (the first one issues the call's request).
                match step.noise.get(k) {
                    Some(noise) => apply_noise(&mut m, &mut nbs, noise),
                    None if polls.is_none() && k > 0 => progress(&mut m, &mut nbs),
                    None => {}
                }
                m.conn.shared.lock().check().map_err(&at)?;
                if let Poll::Ready(r) = poll_flagged(fut.as_mut(), &flag) {
                    res = Some(r);
                    break;
                }
            }
            if res.is_none() && polls.is_none() {
                return Err(at("the call never finished".into()));
            }
            // Dropped here unless it finished.
            res
        };
        m.conn.shared.lock().check().map_err(&at)?;
        let t = tx.as_mut().expect("a guard");
        let (depth, active) = (t.savepoint_depth(), t.is_active());
        let unexpected = |e: &aiopg_core::Error| Err(at(format!("failed with {e}")));
        let l = ledger.as_mut();
        match (&step.op, res) {
            (GuardOp::Begin, Some(Ok(()))) => {
                ledger = Some(Ledger {
                    levels: vec![Vec::new()],
                    undone: Vec::new(),
                    fate: None,
                });
            }
            (GuardOp::Begin, None) => {}
            (GuardOp::Insert, Some(Ok(()))) => {
                l.expect("active")
                    .levels
                    .last_mut()
                    .expect("level 0")
                    .push(v);
            }
            (GuardOp::Insert, Some(Err(e))) if is_aborted(&e) => {}
            (GuardOp::Fail, Some(Err(e))) if e.code().map(|c| c.code()) == Some("22012") => {}
            (GuardOp::Fail, Some(Err(e))) if is_aborted(&e) => {}
            (GuardOp::Point { .. }, res) => {
                if let Some(Err(e)) = &res {
                    if !is_aborted(e) {
                        return unexpected(e);
                    }
                }
                let [inserted, committing, rolled_back] = &flags;
                let l = l.expect("active");
                if inserted.load(Ordering::SeqCst) {
                    if committing.load(Ordering::SeqCst) && !rolled_back.load(Ordering::SeqCst) {
                        // Released, or kept on the server: its work is the transaction's.
                        l.levels.last_mut().expect("a level").push(v);
                    } else {
                        l.undone.push(v);
                    }
                }
            }
            (GuardOp::Savepoint, res) => {
                if let Some(Err(e)) = &res {
                    if !is_aborted(e) {
                        return unexpected(e);
                    }
                }
                if depth == depth_before + 1 {
                    l.expect("active").levels.push(Vec::new());
                } else if depth != depth_before {
                    return Err(at(format!("depth {depth_before} became {depth}")));
                }
            }
            (GuardOp::RollbackSavepoint | GuardOp::ReleaseSavepoint, res) => {
                match &res {
                    Some(Err(e)) if e.kind() == ErrorKind::Usage && depth_before == 0 => {}
                    // RELEASE in a failed block.
                    Some(Err(e))
                        if is_aborted(e) && matches!(step.op, GuardOp::ReleaseSavepoint) => {}
                    Some(Err(e)) => return unexpected(e),
                    _ => {}
                }
                if depth + 1 == depth_before {
                    // Sent (or answered): it runs.
                    let l = l.expect("active");
                    let level = l.levels.pop().expect("a savepoint level");
                    if matches!(step.op, GuardOp::RollbackSavepoint) {
                        l.undone.extend(level);
                    } else {
                        l.levels.last_mut().expect("level 0").extend(level);
                    }
                } else if depth != depth_before {
                    return Err(at(format!("depth {depth_before} became {depth}")));
                } else if res.as_ref().is_some_and(|r| r.is_ok()) {
                    return Err(at("Ok, yet the savepoint is still open".into()));
                }
            }
            (GuardOp::Commit | GuardOp::Rollback, res) => {
                let commit = matches!(step.op, GuardOp::Commit);
                let fate = match res {
                    Some(Ok(())) if commit => Some(Fate::Committed),
                    Some(Ok(())) => Some(Fate::RolledBack),
                    Some(Err(e))
                        if commit
                            && e.kind() == ErrorKind::Usage
                            && e.to_string().contains("rolled it back") =>
                    {
                        Some(Fate::RolledBack)
                    }
                    Some(Err(e)) => return unexpected(&e),
                    // Taken back unsent: still open.
                    None if active => None,
                    None if commit => Some(Fate::Unknown),
                    None => Some(Fate::RolledBack),
                };
                if let Some(fate) = fate {
                    if active {
                        return Err(at(format!("{fate:?}, yet the guard is still active")));
                    }
                    l.expect("active").fate = Some(fate);
                }
            }
            (_, Some(Err(e))) => return unexpected(&e),
            (_, res) => return Err(at(format!("returned {res:?}"))),
        }
        if let Some(v) = m.server.violations.first() {
            return Err(at(format!("the server saw a protocol violation: {v}")));
        }
        if let Some(sp) = m.server.lost_savepoints.first() {
            return Err(at(format!(
                "{sp}: no such savepoint; the error aborted a healthy transaction"
            )));
        }
    }
    end_guard(&mut tx, &mut ledger, &mut done);
    // Settle, as a user would: a last statement, answered after everything issued before it,
    // while every neighbour and detached clean-up runs.
    let c = conn.clone();
    let mut last: Pin<Box<dyn Future<Output = aiopg_core::Result<()>>>> =
        Box::pin(async move { c.batch_execute("Q 7").await });
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let mut answered = None;
    for _ in 0..10_000 {
        if answered.is_none() {
            if let Poll::Ready(r) = poll_flagged(last.as_mut(), &flag) {
                answered = Some(r);
            }
        }
        progress(&mut m, &mut nbs);
        let idle = answered.is_some()
            && nbs.iter().all(Option::is_none)
            && m.tasks.is_empty()
            && !m.conn.shared.lock().has_unanswered();
        if idle {
            break;
        }
    }
    match answered {
        None => return Err("the connection never settled".into()),
        Some(Err(e)) if !is_aborted(&e) => return Err(format!("the last statement: {e}")),
        Some(_) => {}
    }
    if !nbs.iter().all(Option::is_none) || !m.tasks.is_empty() {
        return Err("the connection never settled".into());
    }
    if let Some(v) = m.server.violations.first() {
        return Err(format!("the server saw a protocol violation: {v}"));
    }
    if let Some(sp) = m.server.lost_savepoints.first() {
        return Err(format!(
            "{sp}: no such savepoint; the error aborted a healthy transaction"
        ));
    }
    if m.server.block.is_some() {
        return Err("a transaction was left open on the server after its guard was gone".into());
    }
    if m.conn.transaction_status() != aiopg_core::TransactionStatus::Idle {
        return Err(format!(
            "the server is idle but the client says {:?}",
            m.conn.transaction_status()
        ));
    }
    for l in &done {
        let rows: Vec<i64> = l.levels.iter().flatten().copied().collect();
        for v in &l.undone {
            if m.server.rows.contains(v) {
                return Err(format!(
                    "row {v} was undone by a savepoint, yet it committed ({l:?})"
                ));
            }
        }
        match l.fate {
            Some(Fate::Committed) => {
                if let Some(v) = rows.iter().find(|v| !m.server.rows.contains(v)) {
                    return Err(format!(
                        "commit() returned Ok but row {v} did not commit ({l:?})"
                    ));
                }
            }
            Some(Fate::RolledBack) => {
                if let Some(v) = rows.iter().find(|v| m.server.rows.contains(v)) {
                    return Err(format!(
                        "the transaction was reported rolled back but row {v} committed ({l:?})"
                    ));
                }
            }
            Some(Fate::Unknown) => {}
            None => return Err(format!("a transaction with no outcome: {l:?}")),
        }
    }
    Ok(())
}

fn guard_op() -> impl Strategy<Value = GuardOp> {
    let end = prop_oneof![
        Just(GuardEnd::Commit),
        Just(GuardEnd::Rollback),
        Just(GuardEnd::Drop)
    ];
    prop_oneof![
        3 => Just(GuardOp::Begin),
        3 => Just(GuardOp::Insert),
        1 => Just(GuardOp::Fail),
        3 => (any::<bool>(), end).prop_map(|(fail, end)| GuardOp::Point { fail, end }),
        2 => Just(GuardOp::Savepoint),
        2 => Just(GuardOp::RollbackSavepoint),
        1 => Just(GuardOp::ReleaseSavepoint),
        3 => Just(GuardOp::Commit),
        1 => Just(GuardOp::Rollback),
        1 => Just(GuardOp::DropGuard),
    ]
}

fn noise() -> impl Strategy<Value = Noise> {
    prop_oneof![
        3 => (0..3usize).prop_map(Noise::Neighbour),
        2 => Just(Noise::PollNeighbours),
        3 => (1usize..4).prop_map(Noise::Server),
        2 => prop_oneof![Just(0usize), Just(5), Just(1 << 20)].prop_map(Noise::Write),
        1 => Just(Noise::RunTasks),
    ]
}

fn guard_step() -> impl Strategy<Value = GuardStep> {
    (
        guard_op(),
        prop_oneof![2 => Just(None), 3 => (1usize..6).prop_map(Some)],
        proptest::collection::vec(noise(), 0..6),
    )
        .prop_map(|(op, polls, noise)| GuardStep { op, polls, noise })
}

proptest! {
    #![proptest_config(model_config())]

    /// See [`guard_outcomes`].
    #[test]
    fn transaction_guards_dropped_anywhere_tell_the_truth_and_leave_no_transaction_open(
        steps in proptest::collection::vec(guard_step(), 1..40),
    ) {
        if let Err(e) = guard_outcomes(&steps) {
            return Err(TestCaseError::fail(e));
        }
    }
}

fn step(op: GuardOp, polls: Option<usize>, noise: Vec<Noise>) -> GuardStep {
    GuardStep { op, polls, noise }
}

/// A `COMMIT` (or `ROLLBACK`) held back behind another caller's request and taken back when
/// its future is dropped ended nothing: the guard must still roll back on drop.
#[test]
fn a_commit_or_rollback_taken_back_unsent_leaves_the_guard_to_roll_back() {
    for op in [GuardOp::Commit, GuardOp::Rollback] {
        let steps = vec![
            step(GuardOp::Begin, None, vec![]),
            step(GuardOp::Insert, None, vec![]),
            step(op.clone(), Some(1), vec![Noise::Neighbour(0)]),
            step(GuardOp::DropGuard, None, vec![]),
        ];
        guard_outcomes(&steps).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    }
}

/// A `ROLLBACK TO SAVEPOINT` taken back unsent undid nothing: the savepoint stays open.
#[test]
fn a_savepoint_rollback_taken_back_unsent_leaves_the_savepoint_open() {
    let steps = vec![
        step(GuardOp::Begin, None, vec![]),
        step(GuardOp::Savepoint, None, vec![]),
        step(GuardOp::Insert, None, vec![]),
        step(
            GuardOp::RollbackSavepoint,
            Some(1),
            vec![Noise::Neighbour(0)],
        ),
        step(GuardOp::RollbackSavepoint, None, vec![]),
        step(GuardOp::Commit, None, vec![]),
    ];
    guard_outcomes(&steps).unwrap();
}

/// A scoped savepoint whose `SAVEPOINT` was taken back unsent has nothing to undo: an undo
/// naming it would abort the transaction.
#[test]
fn a_savepoint_taken_back_unsent_queues_no_undo() {
    let steps = vec![
        step(GuardOp::Begin, None, vec![]),
        step(
            GuardOp::Point {
                fail: false,
                end: GuardEnd::Commit,
            },
            Some(1),
            vec![Noise::Neighbour(0)],
        ),
        step(GuardOp::Commit, None, vec![]),
    ];
    guard_outcomes(&steps).unwrap();
}

/// A savepoint guard dropped after a failed statement queues its undo; a commit issued before
/// that undo is answered must report what the server did (it commits).
#[test]
fn a_commit_behind_a_savepoint_undo_reports_what_the_server_did() {
    let steps = vec![
        step(GuardOp::Begin, None, vec![]),
        step(GuardOp::Insert, None, vec![]),
        step(
            GuardOp::Point {
                fail: true,
                end: GuardEnd::Drop,
            },
            None,
            vec![],
        ),
        step(GuardOp::Commit, None, vec![]),
    ];
    guard_outcomes(&steps).unwrap();
}

/// A `RELEASE` taken back leaves its savepoint on the server. A later `SAVEPOINT` that fails
/// (the transaction had failed) and whose future is dropped once sent is undone by name: were
/// the name reused, that undo would roll back to the stale savepoint, silently undoing work the
/// caller saw succeed, and un-fail the transaction, which then commits without it.
#[test]
fn an_undo_never_reaches_a_stale_savepoint_of_the_same_name() {
    let steps = vec![
        step(GuardOp::Begin, None, vec![]),
        step(GuardOp::Savepoint, None, vec![]),
        step(GuardOp::Insert, None, vec![]),
        step(
            GuardOp::ReleaseSavepoint,
            Some(1),
            vec![Noise::Neighbour(0)],
        ),
        step(GuardOp::Fail, None, vec![]),
        step(GuardOp::Savepoint, Some(1), vec![]),
        step(GuardOp::Commit, None, vec![]),
    ];
    guard_outcomes(&steps).unwrap();
}
