//! The fault matrix: every operation (connect over TCP, TLS and SCRAM, a query, pipelined
//! queries, client and named cursors, a transaction and its COMMIT, a pipelined transaction,
//! pool acquire and release, `Listener`, COPY in and out) under every fault that can strike
//! it at each phase (connecting, authenticating, idle, sending, awaiting the answer, mid-row,
//! mid-COPY, inside a transaction, during COMMIT), through the fault proxy, from the server
//! (`pg_terminate_backend`) and, on a private cluster, from the cluster itself (`pg_ctl
//! restart`, `pg_ctl stop`, `kill -9` of the postmaster).
//!
//! Every cell must end within its bound (the operation's timeout plus [`CANCEL_GRACE`] plus
//! [`SLACK`]) with success or an error of an expected kind, never a panic; leave its
//! connection usable or `is_closed()`; deliver no answer to the wrong caller; keep the ledger
//! truthful (a commit that returned `Ok` is there, one that failed plainly is not, and an
//! unknown outcome is reported as `CommitUnknown`); and leave a pool whole (its size and
//! `pg_stat_activity` agree). With `AIOPG_MATRIX_DIR` set (by `cargo xtask fault-matrix`),
//! each cell's verdict is written to `<dir>/<runtime>.tsv`, from which `docs/faults.md` is
//! generated.

use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aiopg::{
    Connection, ErrorKind, ListenerEvent, Pool, TransactionOptions, TransactionOutcome,
    CANCEL_GRACE,
};
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::{SinkExt, StreamExt};

use crate::fault_proxy::{dsn_via, Fault, Proxy};
use crate::pool_faults::{blocking, private_cluster, PrivateCluster};
use crate::support::{connect, options, rt_test, runtime, runtime_name};

/// Every operation's timeout (and the connect timeout).
const T: Duration = Duration::from_secs(4);
/// Beyond an operation's timeout and the cancel grace: scheduling on a loaded machine.
const SLACK: Duration = Duration::from_secs(3);

fn bound() -> Duration {
    T + CANCEL_GRACE + SLACK
}

/// What a cell does to the operation.
#[derive(Debug, Clone, Copy)]
enum F {
    /// Through the proxy: `fault` once the client's bytes held the trigger.
    Proxy(Fault),
    /// The test cuts (true: resets) the idle link itself.
    Idle(bool),
    /// `pg_terminate_backend` of the connection's server process at the phase.
    Terminate,
    /// On the private cluster: `pg_ctl restart -m fast`, `pg_ctl stop -m fast` (then start),
    /// `kill -9` of the postmaster (then start).
    Restart,
    Stop,
    Kill9,
}

impl F {
    fn label(self) -> String {
        match self {
            F::Proxy(Fault::None) => "none".into(),
            F::Proxy(Fault::Cut) => "cut".into(),
            F::Proxy(Fault::Reset) => "reset".into(),
            F::Proxy(Fault::LoseAnswer) => "answer lost".into(),
            F::Proxy(Fault::CutAfterServerBytes(n)) => format!("cut after {n} B in"),
            F::Proxy(Fault::CutAfterClientBytes(n)) => format!("cut after {n} B out"),
            F::Proxy(Fault::StallServer) => "stall".into(),
            F::Proxy(Fault::StallServerFor(d)) => format!("stall {}ms", d.as_millis()),
            F::Proxy(Fault::DelayServer(d)) => format!("delay {}ms", d.as_millis()),
            F::Proxy(Fault::DropClientBytes) => "one-way drop".into(),
            F::Idle(false) => "cut".into(),
            F::Idle(true) => "reset".into(),
            F::Terminate => "pg_terminate_backend".into(),
            F::Restart => "pg_ctl restart".into(),
            F::Stop => "pg_ctl stop".into(),
            F::Kill9 => "kill -9 postmaster".into(),
        }
    }

    fn fault(self) -> Fault {
        match self {
            F::Proxy(f) => f,
            _ => Fault::None,
        }
    }

    fn on_cluster(self) -> bool {
        matches!(self, F::Restart | F::Stop | F::Kill9)
    }
}

/// What every cell shares.
struct Ctx {
    admin: Connection,
    ledger: String,
    next_id: AtomicI64,
    server: std::net::SocketAddr,
    cluster: Option<Arc<PrivateCluster>>,
}

type CellResult = Result<String, String>;
type CellFn = fn(Arc<Ctx>, F) -> BoxFuture<'static, CellResult>;

struct Cell {
    op: &'static str,
    phase: &'static str,
    fault: F,
    run: CellFn,
}

/// `Ok` names the outcome ("ok" or the error's kind); `Err` says what broke.
fn outcome<T>(r: &aiopg::Result<T>, allowed: &[ErrorKind]) -> CellResult {
    match r {
        Ok(_) => Ok("ok".into()),
        Err(e) if allowed.contains(&e.kind()) => Ok(format!("{:?}", e.kind())),
        Err(e) => Err(format!("unexpected error {:?}: {e}", e.kind())),
    }
}

const LINK: &[ErrorKind] = &[ErrorKind::Closed, ErrorKind::Io, ErrorKind::Timeout];
const LINK_TLS: &[ErrorKind] = &[
    ErrorKind::Closed,
    ErrorKind::Io,
    ErrorKind::Timeout,
    ErrorKind::Tls,
];
const POOL: &[ErrorKind] = &[
    ErrorKind::Closed,
    ErrorKind::Io,
    ErrorKind::Timeout,
    ErrorKind::PoolTimeout,
];
const COMMIT: &[ErrorKind] = &[
    ErrorKind::Closed,
    ErrorKind::Io,
    ErrorKind::Timeout,
    ErrorKind::CommitUnknown,
];

/// A fault that lets the operation succeed.
fn benign(f: F) -> bool {
    matches!(
        f,
        F::Proxy(Fault::None | Fault::StallServerFor(_) | Fault::DelayServer(_))
    )
}

/// A fault after which success is possible: the client's later bytes are dropped, but the
/// ones that held the trigger went through (an operation that needs nothing more succeeds);
/// the cluster came back before the operation needed it.
fn may_succeed(f: F) -> bool {
    benign(f) || f.on_cluster() || matches!(f, F::Proxy(Fault::DropClientBytes))
}

/// Success where the fault is benign, a failure of an allowed kind where it is not.
fn expect<T>(f: F, r: &aiopg::Result<T>, allowed: &[ErrorKind]) -> CellResult {
    let label = outcome(r, allowed)?;
    match (benign(f), r.is_ok()) {
        (true, false) => Err(format!("a benign fault failed the operation: {label}")),
        (false, true) if !may_succeed(f) => {
            // Every other fault here strikes before the answer is complete.
            Err("the operation succeeded through a fault that ends it".into())
        }
        _ => Ok(label),
    }
}

/// Usable (a fresh query gets its own answer) or reported closed.
async fn usable_or_closed(conn: &Connection) -> Result<(), String> {
    if conn.is_closed() {
        return Ok(());
    }
    match bounded(conn, conn.query_one("SELECT 7::int4", &[])).await {
        Ok(row) if row.get::<i32>(0) == 7 => Ok(()),
        Ok(_) => Err("a wrong answer after the fault".into()),
        Err(e) if conn.is_closed() => {
            let _ = e;
            Ok(())
        }
        Err(e) => Err(format!("neither usable nor closed after the fault: {e}")),
    }
}

/// Runs `fut` under the operation timeout `T`: past it the request is cancelled, and the
/// connection closed if the server does not answer within `CANCEL_GRACE`.
async fn bounded<R>(
    conn: &Connection,
    fut: impl std::future::Future<Output = aiopg::Result<R>>,
) -> aiopg::Result<R> {
    conn.with_timeout(Some(T), fut).await
}

fn proxy(ctx: &Ctx, trigger: &'static [u8], f: F, multi: bool) -> Proxy {
    if multi {
        Proxy::start_multi(ctx.server, trigger, f.fault())
    } else {
        Proxy::start(ctx.server, trigger, f.fault())
    }
}

fn timed(dsn: &str) -> aiopg::ConnectOptions {
    options(dsn).timeout(Some(T)).connect_timeout(T)
}

/// A connection through a proxy that strikes at `trigger`.
async fn via(ctx: &Ctx, trigger: &'static [u8], f: F) -> Result<(Proxy, Connection), String> {
    let p = proxy(ctx, trigger, f, false);
    let conn = timed(&dsn_via(p.port))
        .connect()
        .await
        .map_err(|e| format!("connecting through the proxy: {e}"))?;
    Ok((p, conn))
}

/// A connection for a fault from the server or the cluster (no proxy).
async fn direct(ctx: &Ctx, f: F) -> Result<Connection, String> {
    let dsn = match (&ctx.cluster, f.on_cluster()) {
        (Some(c), true) => c.dsn("aiopg_matrix"),
        (None, true) => return Err("no private cluster".into()),
        _ => crate::support::dsn(),
    };
    timed(&dsn)
        .connect()
        .await
        .map_err(|e| format!("connecting: {e}"))
}

/// Strikes `f` from outside the link: terminate the backend, or act on the cluster.
async fn strike(ctx: &Ctx, f: F, pid: i32) -> Result<(), String> {
    match f {
        F::Terminate => {
            ctx.admin
                .query("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .map_err(|e| format!("terminating: {e}"))?;
            Ok(())
        }
        F::Restart | F::Stop | F::Kill9 => {
            let c = ctx.cluster.clone().ok_or("no private cluster")?;
            blocking(move || match f {
                F::Restart => c.restart(),
                F::Stop => c.stop().and_then(|()| c.start()),
                _ => c.kill_postmaster_and_start(),
            })
            .await
        }
        _ => Ok(()),
    }
}

/// Waits (bounded) until backend `pid` runs a statement: the phase "awaiting the answer".
async fn until_active(admin: &Connection, pid: i32) -> Result<(), String> {
    for _ in 0..2_000 {
        let rows = admin
            .query(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active' \
                 AND wait_event = 'PgSleep'",
                &[&pid],
            )
            .await
            .map_err(|e| e.to_string())?;
        if rows[0].get::<i64>(0) > 0 {
            return Ok(());
        }
        runtime().sleep(Duration::from_millis(2)).await;
    }
    Err(format!("backend {pid} never started sleeping"))
}

/// A connection for checks on the server the cell's fault struck: the shared one, or (for a
/// cluster fault) a fresh one to the private cluster, which is up again by then.
async fn admin_for(ctx: &Ctx, f: F) -> Result<Connection, String> {
    match (&ctx.cluster, f.on_cluster()) {
        (Some(c), true) => timed(&c.dsn("aiopg_matrix_admin"))
            .connect()
            .await
            .map_err(|e| format!("the private cluster after the fault: {e}")),
        _ => Ok(ctx.admin.clone()),
    }
}

async fn ledger_has(ctx: &Ctx, f: F, id: i64) -> Result<bool, String> {
    admin_for(ctx, f)
        .await?
        .query_one(
            &format!("SELECT count(*) FROM {} WHERE id = $1", ctx.ledger),
            &[&id],
        )
        .await
        .map(|r| r.get::<i64>(0) == 1)
        .map_err(|e| e.to_string())
}

/// The ledger's verdict on a commit of row `id` that returned `r`.
async fn truthful<T>(ctx: &Ctx, f: F, id: i64, r: &aiopg::Result<T>) -> Result<(), String> {
    let present = ledger_has(ctx, f, id).await?;
    match r {
        Ok(_) if !present => Err(format!("commit {id} returned Ok, its row is missing")),
        Err(e) if e.kind() != ErrorKind::CommitUnknown && present => Err(format!(
            "commit {id} failed ({e}), yet its row is there (a lost commit reported as a failure)"
        )),
        _ => Ok(()),
    }
}

fn boxed<Fut>(f: Fut) -> BoxFuture<'static, CellResult>
where
    Fut: std::future::Future<Output = CellResult> + Send + 'static,
{
    f.boxed()
}

// ---------------------------------------------------------------------------------------
// The operations.

const STARTUP: &[u8] = b"user\0";
const SCRAM: &[u8] = b"SCRAM-SHA-256";
/// The SSLRequest code (80877103).
const SSL_REQUEST: &[u8] = &[0x04, 0xd2, 0x16, 0x2f];

fn connect_tcp(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let p = proxy(&ctx, STARTUP, f, false);
        let r = timed(&dsn_via(p.port)).connect().await;
        let label = expect(f, &r, LINK)?;
        if let Ok(conn) = r {
            usable_or_closed(&conn).await?;
        }
        Ok(label)
    })
}

fn connect_scram(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let p = proxy(&ctx, SCRAM, f, false);
        let dsn = format!(
            "{} user=aiopg_scram password=aiopg-pw-scram",
            dsn_via(p.port)
        );
        let r = timed(&dsn).connect().await;
        let label = expect(f, &r, LINK)?;
        if let Ok(conn) = r {
            usable_or_closed(&conn).await?;
        }
        Ok(label)
    })
}

fn connect_tls(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let p = proxy(&ctx, SSL_REQUEST, f, false);
        let dsn = dsn_via(p.port).replace("sslmode=disable", "sslmode=require");
        let r = timed(&dsn).connect().await;
        let label = expect(f, &r, LINK_TLS)?;
        if let Ok(conn) = r {
            let ssl = conn
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            if !ssl.get::<bool>(0) {
                return Err("sslmode=require connected without TLS".into());
            }
            usable_or_closed(&conn).await?;
        }
        Ok(label)
    })
}

/// A query on an idle connection whose link or server process was lost meanwhile.
fn query_idle(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let (p, conn) = match f {
            F::Idle(_) => {
                let (p, c) = via(&ctx, b"\0never\0", f).await?;
                (Some(p), c)
            }
            _ => (None, direct(&ctx, f).await?),
        };
        conn.query_one("SELECT 1", &[])
            .await
            .map_err(|e| e.to_string())?;
        match (f, &p) {
            (F::Idle(true), Some(p)) => p.reset_now(),
            (F::Idle(false), Some(p)) => p.cut_now(),
            _ => strike(&ctx, f, conn.backend_pid()).await?,
        }
        let r = conn.query_one("SELECT 2::int4", &[]).await;
        let label = outcome(&r, LINK)?;
        match r {
            Ok(row) if row.get::<i32>(0) != 2 => return Err("a wrong answer".into()),
            Ok(_) => return Err("a query succeeded on a dead link".into()),
            Err(_) if !conn.is_closed() => {
                return Err("the failed connection does not report itself closed".into())
            }
            Err(_) => {}
        }
        Ok(label)
    })
}

/// A query whose request is cut (or dropped) while it is being sent: a 4 MB parameter.
fn query_sending(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let (_p, conn) = via(&ctx, b"zzzzzzzzzzzzzzzzzzzz", f).await?;
        conn.prepare("SELECT length($1::text)")
            .await
            .map_err(|e| e.to_string())?;
        let big = "z".repeat(4 << 20);
        let r = bounded(&conn, conn.query_one("SELECT length($1::text)", &[&big])).await;
        let label = expect(f, &r, LINK)?;
        if let Ok(row) = &r {
            if row.get::<i32>(0) != big.len() as i32 {
                return Err("a wrong answer".into());
            }
        }
        usable_or_closed(&conn).await?;
        Ok(label)
    })
}

/// A query whose answer is awaited when the fault strikes.
fn query_awaiting(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        if matches!(f, F::Proxy(_)) {
            let (_p, conn) = via(&ctx, b"/*awaited*/", f).await?;
            let r = bounded(&conn, conn.query_one("SELECT 41::int4 /*awaited*/", &[])).await;
            let label = expect(f, &r, LINK)?;
            if let Ok(row) = &r {
                if row.get::<i32>(0) != 41 {
                    return Err("a wrong answer".into());
                }
            }
            usable_or_closed(&conn).await?;
            return Ok(label);
        }
        // From the server or the cluster, while the query runs.
        let conn = direct(&ctx, f).await?;
        let pid = conn.backend_pid();
        let c = conn.clone();
        let sleeper = crate::support::spawn(async move {
            c.with_timeout(
                Some(Duration::from_secs(30)),
                c.query("SELECT pg_sleep(30)", &[]),
            )
            .await
        });
        let observer = match &ctx.cluster {
            Some(cl) if f.on_cluster() => timed(&cl.dsn("aiopg_matrix_obs"))
                .connect()
                .await
                .map_err(|e| e.to_string())?,
            _ => ctx.admin.clone(),
        };
        until_active(&observer, pid).await?;
        drop(observer);
        let started = Instant::now();
        strike(&ctx, f, pid).await?;
        let r = sleeper.await;
        let label = outcome(&r, LINK)?;
        if r.is_ok() {
            return Err("the sleeping query survived the fault".into());
        }
        if started.elapsed() > bound() + Duration::from_secs(10) {
            return Err(format!("the failure took {:?}", started.elapsed()));
        }
        if !conn.is_closed() {
            return Err("the failed connection does not report itself closed".into());
        }
        Ok(label)
    })
}

const ROWS_SQL: &str = "SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g";

/// A large result cut mid-row: the rows before the cut are intact and in order.
fn query_mid_row(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let (_p, conn) = via(&ctx, b"generate_series", f).await?;
        let mut n = 0i32;
        let r: aiopg::Result<()> = bounded(&conn, async {
            let mut s = conn.query_stream(ROWS_SQL, &[]).await?;
            while let Some(row) = s.next().await {
                let row = row?;
                n += 1;
                if row.get::<i32>(0) != n {
                    return Err(aiopg::Error::usage(format!(
                        "row {n} came as {}",
                        row.get::<i32>(0)
                    )));
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = &r {
            if e.kind() == ErrorKind::Usage {
                return Err(e.to_string());
            }
        }
        let label = expect(f, &r, LINK)?;
        if r.is_ok() && n != 100_000 {
            return Err(format!("the stream ended cleanly after {n} rows"));
        }
        usable_or_closed(&conn).await?;
        Ok(label)
    })
}

/// A large result over TLS, the link cut mid-record: the TLS layer and the stream end with a
/// clear error, the rows before the cut intact.
fn query_tls_mid_record(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        // The trigger is the SSLRequest: what follows is ciphertext.
        let p = proxy(&ctx, SSL_REQUEST, f, false);
        let dsn = dsn_via(p.port).replace("sslmode=disable", "sslmode=require");
        let conn = timed(&dsn)
            .connect()
            .await
            .map_err(|e| format!("connecting over TLS: {e}"))?;
        let mut n = 0i32;
        let r: aiopg::Result<()> = bounded(&conn, async {
            let mut s = conn.query_stream(ROWS_SQL, &[]).await?;
            while let Some(row) = s.next().await {
                n += 1;
                if row?.get::<i32>(0) != n {
                    return Err(aiopg::Error::usage(format!("row {n} out of order")));
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = &r {
            if e.kind() == ErrorKind::Usage {
                return Err(e.to_string());
            }
        }
        let label = expect(f, &r, LINK_TLS)?;
        if r.is_ok() && n != 100_000 {
            return Err(format!("the stream ended cleanly after {n} rows"));
        }
        usable_or_closed(&conn).await?;
        Ok(label)
    })
}

/// Eight queries in flight on one connection; the fault strikes one of them.
fn pipelined_awaiting(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let (_p, conn) = via(&ctx, b"/*struck*/", f).await?;
        let stmt = conn
            .prepare("SELECT $1::int4")
            .await
            .map_err(|e| e.to_string())?;
        let mut futs = Vec::new();
        for i in 0..8i32 {
            let (c, s) = (conn.clone(), stmt.clone());
            futs.push(async move {
                let r = if i == 4 {
                    bounded(&c, c.query_one("SELECT $1::int4 /*struck*/", &[&i])).await
                } else {
                    bounded(&c, c.query_prepared(&s, &[&i]))
                        .await
                        .and_then(|mut rows| {
                            rows.pop().ok_or_else(|| aiopg::Error::usage("no row"))
                        })
                };
                (i, r)
            });
        }
        let results = futures_util::future::join_all(futs).await;
        let mut labels = Vec::new();
        for (i, r) in &results {
            if let Ok(row) = r {
                if row.get::<i32>(0) != *i {
                    return Err(format!("caller {i} got {}'s answer", row.get::<i32>(0)));
                }
            }
            labels.push(outcome(r, LINK)?);
        }
        let struck = &results[4].1;
        let label = expect(f, struck, LINK)?;
        usable_or_closed(&conn).await?;
        labels.sort();
        labels.dedup();
        Ok(if labels.len() == 1 {
            label
        } else {
            labels.join("/")
        })
    })
}

/// A client-side cursor fetching a large result, cut mid-row.
fn cursor_client_mid_row(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        use aiopg::CursorExt;
        let (_p, conn) = via(&ctx, b"generate_series", f).await?;
        let mut cur = conn.cursor().await.map_err(|e| e.to_string())?;
        let r = async {
            cur.execute(ROWS_SQL, &[]).await?;
            let mut n = 0usize;
            loop {
                let rows = cur.fetchmany(Some(5_000)).await?;
                if rows.is_empty() {
                    return Ok(n);
                }
                for row in &rows {
                    n += 1;
                    if row.get::<i32>(0) != n as i32 {
                        return Err(aiopg::Error::usage(format!("row {n} out of order")));
                    }
                }
            }
        }
        .await;
        if let Err(e) = &r {
            if e.kind() == ErrorKind::Usage {
                return Err(e.to_string());
            }
        }
        let label = expect(f, &r, LINK)?;
        usable_or_closed(&conn).await?;
        Ok(label)
    })
}

/// A named (server-side) cursor whose FETCH is struck.
fn cursor_named_fetch(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        use aiopg::CursorExt;
        let (_p, conn) = via(&ctx, b"FETCH FORWARD 17", f).await?;
        let r = async {
            let mut tx = conn.begin().await?;
            let mut cur = conn
                .cursor_with(aiopg::CursorOptions {
                    name: Some("matrix_cur".into()),
                    ..aiopg::CursorOptions::default()
                })
                .await?;
            cur.set_itersize(17);
            cur.execute("SELECT g FROM generate_series(1, 100) g", &[])
                .await?;
            let rows = cur.fetchmany(Some(17)).await?;
            if rows.first().map(|r| r.get::<i32>(0)) != Some(1) {
                return Err(aiopg::Error::usage("wrong first row"));
            }
            cur.close().await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = &r {
            if e.kind() == ErrorKind::Usage {
                return Err(e.to_string());
            }
        }
        let label = expect(f, &r, LINK)?;
        usable_or_closed(&conn).await?;
        Ok(label)
    })
}

/// A statement inside a transaction is struck: the transaction leaves nothing behind.
fn tx_inside(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let id = ctx.next_id.fetch_add(1, Ordering::SeqCst);
        let conn = match f {
            F::Proxy(_) => via(&ctx, b"/*inside*/", f).await?.1,
            _ => direct(&ctx, f).await?,
        };
        let insert = format!("INSERT INTO {} VALUES ($1)", ctx.ledger);
        let r = bounded(&conn, async {
            let mut tx = conn.begin().await?;
            conn.execute(&insert, &[&id]).await?;
            if matches!(f, F::Terminate) || f.on_cluster() {
                strike(&ctx, f, conn.backend_pid())
                    .await
                    .map_err(aiopg::Error::usage)?;
            }
            conn.query("SELECT 1 /*inside*/", &[]).await?;
            tx.commit().await
        })
        .await;
        if let Err(e) = &r {
            if e.kind() == ErrorKind::Usage {
                return Err(e.to_string());
            }
        }
        let label = expect(f, &r, LINK)?;
        truthful(&ctx, f, id, &r).await?;
        usable_or_closed(&conn).await?;
        Ok(label)
    })
}

/// The COMMIT of an interactive transaction is struck.
fn tx_commit(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let id = ctx.next_id.fetch_add(1, Ordering::SeqCst);
        let (_p, conn) = via(&ctx, b"COMMIT", f).await?;
        let insert = format!("INSERT INTO {} VALUES ($1)", ctx.ledger);
        let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
        conn.execute(&insert, &[&id])
            .await
            .map_err(|e| e.to_string())?;
        let r = bounded(&conn, tx.commit()).await;
        let label = expect(f, &r, COMMIT)?;
        truthful(&ctx, f, id, &r).await?;
        usable_or_closed(&conn).await?;
        Ok(label)
    })
}

/// Inserts into the ledger's `_slow` twin sleep in COMMIT: a deferred constraint trigger
/// (`pg_sleep(3)`) runs at commit, before the commit record is written.
fn slow_commit_sql(ledger: &str) -> String {
    format!(
        "CREATE TABLE {ledger}_slow (id int8); \
         CREATE FUNCTION {ledger}_sleep() RETURNS trigger LANGUAGE plpgsql \
         AS $$BEGIN PERFORM pg_sleep(3); RETURN NULL; END$$; \
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON {ledger}_slow \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {ledger}_sleep()"
    )
}

/// The server or the cluster strikes while the COMMIT runs (in its deferred trigger), the
/// interactive transaction's (`pipelined` false) or the pipelined one's: the COMMIT was sent
/// whole, so the outcome can only be `CommitUnknown` (a FATAL error in answer to a COMMIT
/// is no proof that it did not commit: a commit waiting for a synchronous standby is ended
/// the same way after it committed locally), and the ledger must agree with it.
async fn commit_running(ctx: Arc<Ctx>, f: F, pipelined: bool) -> CellResult {
    let id = ctx.next_id.fetch_add(1, Ordering::SeqCst);
    let conn = direct(&ctx, f).await?;
    let admin = admin_for(&ctx, f).await?;
    let insert = format!("INSERT INTO {} VALUES ($1)", ctx.ledger);
    let slow = format!("INSERT INTO {}_slow VALUES ($1)", ctx.ledger);
    let pid = conn.backend_pid();
    let commit = async {
        if pipelined {
            let mut p = conn.pipeline();
            p.query(&insert, &[&id]).query(&slow, &[&id]);
            match p.transaction(TransactionOptions::default()).await? {
                TransactionOutcome::Committed(_) => Ok(()),
                TransactionOutcome::RolledBack { error, .. } => {
                    Err(aiopg::Error::usage(format!("rolled back: {error}")))
                }
            }
        } else {
            let mut tx = conn.begin().await?;
            conn.execute(&insert, &[&id]).await?;
            conn.execute(&slow, &[&id]).await?;
            tx.commit().await
        }
    };
    let hit = async {
        until_active(&admin, pid).await?;
        strike(&ctx, f, pid).await
    };
    let (r, struck) = futures_util::future::join(bounded(&conn, commit), hit).await;
    struck?;
    match &r {
        Ok(()) => return Err("a COMMIT whose server process was ended returned Ok".into()),
        Err(e) if e.kind() != ErrorKind::CommitUnknown => {
            return Err(format!("expected CommitUnknown, got {:?}: {e}", e.kind()))
        }
        Err(_) => {}
    }
    truthful(&ctx, f, id, &r).await?;
    usable_or_closed(&conn).await?;
    Ok("CommitUnknown".into())
}

fn tx_commit_running(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(commit_running(ctx, f, false))
}

fn ptx_commit_running(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(commit_running(ctx, f, true))
}

/// A pipelined transaction (BEGIN, statements, COMMIT in one request) is struck.
fn ptx_commit(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let id = ctx.next_id.fetch_add(1, Ordering::SeqCst);
        let (_p, conn) = via(&ctx, b"BEGIN", f).await?;
        let insert = format!("INSERT INTO {} VALUES ($1)", ctx.ledger);
        conn.prepare(&insert).await.map_err(|e| e.to_string())?;
        let seven = 7i32;
        let mut p = conn.pipeline();
        p.query(&insert, &[&id]).query("SELECT $1::int4", &[&seven]);
        let r = bounded(&conn, p.transaction(TransactionOptions::default())).await;
        let r = match r {
            Ok(TransactionOutcome::Committed(res)) => {
                if res[1].rows[0].get::<i32>(0) != 7 {
                    return Err("a wrong answer".into());
                }
                Ok(())
            }
            Ok(TransactionOutcome::RolledBack { error, .. }) => {
                return Err(format!("rolled back: {error}"))
            }
            Err(e) => Err(e),
        };
        let label = expect(f, &r, COMMIT)?;
        truthful(&ctx, f, id, &r).await?;
        usable_or_closed(&conn).await?;
        Ok(label)
    })
}

/// A pool named for the cell, through a proxy whose first connection gets the fault.
async fn pool_via(p: &Proxy, app: &str, min: usize) -> Result<Pool, String> {
    Pool::builder(timed(&format!(
        "{} application_name={app}",
        dsn_via(p.port)
    )))
    .runtime(runtime())
    .min_size(min)
    .max_size(2)
    .timeout(T)
    .build()
    .await
    .map_err(|e| format!("building the pool: {e}"))
}

/// The pool is whole: at rest, its size what the server lists under its name.
async fn pool_whole(ctx: &Ctx, f: F, pool: &Pool, app: &str) -> Result<(), String> {
    let start = Instant::now();
    let admin = admin_for(ctx, f).await?;
    loop {
        let s = pool.stats();
        let listed = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .map_err(|e| e.to_string())?
            .get::<i64>(0);
        if s.connecting == 0 && s.in_use == 0 && listed == s.size as i64 {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            return Err(format!(
                "the pool and the server disagree: {s:?}, {listed} listed"
            ));
        }
        runtime().sleep(Duration::from_millis(5)).await;
    }
}

static CELL_NO: AtomicI64 = AtomicI64::new(0);

fn app(op: &str) -> String {
    format!(
        "aiopg_mx_{op}_{}_{}",
        CELL_NO.fetch_add(1, Ordering::SeqCst),
        std::process::id()
    )
}

/// The server restarts (or stops and starts, or its postmaster is killed) while a pool's
/// connection sits idle: the next acquire hands out a working connection, not the dead one.
fn pool_idle(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let c = ctx.cluster.clone().ok_or("no private cluster")?;
        let app = app("idle");
        let pool = Pool::builder(timed(&c.dsn(&app)))
            .runtime(runtime())
            .min_size(1)
            .max_size(2)
            .timeout(Duration::from_secs(30))
            .build()
            .await
            .map_err(|e| format!("building the pool: {e}"))?;
        let pid = {
            let conn = pool.acquire().await.map_err(|e| e.to_string())?;
            conn.backend_pid()
        };
        strike(&ctx, f, pid).await?;
        let conn = pool
            .acquire()
            .await
            .map_err(|e| format!("the first acquire after the fault: {e}"))?;
        let v: i32 = bounded(&conn, conn.query_one("SELECT 3::int4", &[]))
            .await
            .map_err(|e| format!("the first query after the fault: {e}"))?
            .get(0);
        if v != 3 {
            return Err("a wrong answer".into());
        }
        if conn.backend_pid() == pid {
            return Err("the dead connection was handed out".into());
        }
        drop(conn);
        pool_whole(&ctx, f, &pool, &app).await?;
        pool.close();
        Ok("replaced".into())
    })
}

/// The pool's first connection is struck while being opened.
fn pool_acquire(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let p = proxy(&ctx, STARTUP, f, true);
        let app = app("acq");
        let pool = pool_via(&p, &app, 0).await?;
        let r = pool.acquire().await;
        let label = outcome(&r, POOL)?;
        if let Ok(c) = &r {
            usable_or_closed(c).await?;
        }
        drop(r);
        // Once the struck attempt is over, later connections are whole: the pool serves
        // again. (An acquire issued while it is still under way would get its error.)
        let start = Instant::now();
        while pool.stats().connecting > 0 {
            if start.elapsed() > bound() {
                return Err(format!(
                    "a connection attempt outlived its bound: {:?}",
                    pool.stats()
                ));
            }
            runtime().sleep(Duration::from_millis(5)).await;
        }
        let c = pool
            .acquire()
            .await
            .map_err(|e| format!("the next acquire: {e}"))?;
        let v: i32 = c
            .query_one("SELECT 5::int4", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if v != 5 {
            return Err("a wrong answer".into());
        }
        drop(c);
        pool_whole(&ctx, f, &pool, &app).await?;
        pool.close();
        Ok(label)
    })
}

/// A connection released inside a transaction: the pool's ROLLBACK is struck.
fn pool_release(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let id = ctx.next_id.fetch_add(1, Ordering::SeqCst);
        let p = proxy(&ctx, b"ROLLBACK", f, true);
        let app = app("rel");
        let pool = pool_via(&p, &app, 1).await?;
        {
            let c = pool.acquire().await.map_err(|e| e.to_string())?;
            c.batch_execute("BEGIN").await.map_err(|e| e.to_string())?;
            c.execute(&format!("INSERT INTO {} VALUES ($1)", ctx.ledger), &[&id])
                .await
                .map_err(|e| e.to_string())?;
        }
        // Whatever became of the ROLLBACK, the next user gets a clean, working connection.
        // The first acquire may wait for the ROLLBACK's answer and give up with
        // `PoolTimeout` when it never comes (the connection is then discarded).
        let mut label = "ok".to_owned();
        if let Err(e) = pool.acquire().await.map(drop) {
            label = outcome::<()>(&Err(e), POOL)?;
        }
        for _ in 0..3 {
            let c = pool.acquire().await.map_err(|e| format!("acquire: {e}"))?;
            if c.transaction_status() != aiopg::TransactionStatus::Idle {
                return Err("handed out inside a transaction".into());
            }
            let v: i32 = c
                .query_one("SELECT 9::int4", &[])
                .await
                .map_err(|e| format!("a pooled query: {e}"))?
                .get(0);
            if v != 9 {
                return Err("a wrong answer".into());
            }
        }
        if ledger_has(&ctx, f, id).await? {
            return Err("a released transaction committed".into());
        }
        pool_whole(&ctx, f, &pool, &app).await?;
        pool.close();
        if label == "ok" && p.fired.load(Ordering::SeqCst) {
            label = "replaced".into();
        }
        Ok(label)
    })
}

/// A `Listener` whose connection is lost while idle: it reconnects, says so, and receives.
fn listener_idle(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let p = proxy(&ctx, b"\0never\0", f, true);
        let dsn = match (f, &ctx.cluster) {
            (F::Idle(_), _) => dsn_via(p.port),
            (_, Some(c)) if f.on_cluster() => c.dsn("aiopg_matrix_listener"),
            _ => crate::support::dsn(),
        };
        let notifier = match &ctx.cluster {
            Some(c) if f.on_cluster() => Some(c.dsn("aiopg_matrix_notifier")),
            _ => None,
        };
        let mut l = aiopg::Listener::connect(timed(&dsn))
            .await
            .map_err(|e| e.to_string())?;
        l.reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200));
        let chan = format!("mx_{}", CELL_NO.fetch_add(1, Ordering::SeqCst));
        l.listen(&chan).await.map_err(|e| e.to_string())?;
        match f {
            F::Idle(true) => p.reset_now(),
            F::Idle(false) => p.cut_now(),
            _ => strike(&ctx, f, l.backend_pid()).await?,
        }
        let ev = l
            .recv()
            .await
            .map_err(|e| format!("after the fault: {e}"))?;
        if !matches!(
            ev,
            ListenerEvent::Reconnected {
                missed_possible: true
            }
        ) {
            return Err(format!("expected Reconnected first, got {ev:?}"));
        }
        let sender = match &notifier {
            Some(dsn) => timed(dsn).connect().await.map_err(|e| e.to_string())?,
            None => ctx.admin.clone(),
        };
        sender
            .query("SELECT pg_notify($1, 'after')", &[&chan])
            .await
            .map_err(|e| e.to_string())?;
        match l.recv().await.map_err(|e| e.to_string())? {
            ListenerEvent::Notification(n) if n.payload == "after" && n.channel == chan => {}
            other => return Err(format!("expected the notification, got {other:?}")),
        }
        l.close().await;
        Ok("Reconnected".into())
    })
}

/// COPY FROM STDIN struck mid-data: nothing is copied.
fn copy_in(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let t = format!("mx_copy_{}", CELL_NO.fetch_add(1, Ordering::SeqCst));
        let t = format!("{t}_{}", std::process::id());
        admin_for(&ctx, f)
            .await?
            .batch_execute(&format!("CREATE TABLE {t} (v text)"))
            .await
            .map_err(|e| e.to_string())?;
        let conn = match f {
            // A stall strikes once the data flows (the COPY has started); the others at
            // its statement.
            F::Proxy(Fault::StallServer) => via(&ctx, b"yyyyyyyyyyyyyyyy", f).await?.1,
            F::Proxy(_) => via(&ctx, b"COPY", f).await?.1,
            _ => direct(&ctx, f).await?,
        };
        let line = bytes::Bytes::from(format!("{}\n", "y".repeat(99)));
        let r = bounded(&conn, async {
            let mut w = conn.copy_in(&format!("COPY {t} FROM STDIN")).await?;
            for k in 0..5_000 {
                if k == 100 && (matches!(f, F::Terminate) || f.on_cluster()) {
                    strike(&ctx, f, conn.backend_pid())
                        .await
                        .map_err(aiopg::Error::usage)?;
                }
                w.send(line.clone()).await?;
            }
            w.finish().await
        })
        .await;
        // Once CopyDone is out, the COPY commits on its own: a lost answer is CommitUnknown.
        let label = expect(f, &r, COMMIT)?;
        let admin = admin_for(&ctx, f).await?;
        let n: i64 = admin
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let _ = admin.batch_execute(&format!("DROP TABLE {t}")).await;
        match &r {
            Ok(copied) if *copied != 5_000 || n != 5_000 => {
                return Err(format!("copied {copied}, {n} rows in the table"))
            }
            Err(e) if e.kind() == ErrorKind::CommitUnknown && n != 0 && n != 5_000 => {
                return Err(format!("half a COPY: {n} rows"))
            }
            Err(e) if e.kind() != ErrorKind::CommitUnknown && n != 0 => {
                return Err(format!("a failed COPY left {n} rows"))
            }
            _ => {}
        }
        usable_or_closed(&conn).await?;
        Ok(label)
    })
}

/// COPY TO STDOUT struck mid-data: the data before the fault is intact.
fn copy_out(ctx: Arc<Ctx>, f: F) -> BoxFuture<'static, CellResult> {
    boxed(async move {
        let (_p, conn) = via(&ctx, b"COPY (SELECT", f).await?;
        let r = bounded(&conn, async {
            let mut out = conn
                .copy_out("COPY (SELECT g FROM generate_series(1, 200000) g) TO STDOUT")
                .await?;
            let mut text = Vec::new();
            while let Some(chunk) = out.next().await {
                text.extend_from_slice(&chunk?);
            }
            Ok::<_, aiopg::Error>(text)
        })
        .await;
        let label = expect(f, &r, LINK)?;
        if let Ok(text) = &r {
            let n = text.iter().filter(|&&b| b == b'\n').count();
            if n != 200_000 {
                return Err(format!("{n} lines copied out"));
            }
        }
        usable_or_closed(&conn).await?;
        Ok(label)
    })
}

// ---------------------------------------------------------------------------------------
// The grid.

fn cells() -> Vec<Cell> {
    let ms = Duration::from_millis;
    let mut v = Vec::new();
    let mut add = |op, phase, faults: &[F], run: CellFn| {
        for &fault in faults {
            v.push(Cell {
                op,
                phase,
                fault,
                run,
            });
        }
    };
    use Fault::*;
    let link = [
        F::Proxy(Cut),
        F::Proxy(Reset),
        F::Proxy(LoseAnswer),
        F::Proxy(StallServer),
        F::Proxy(StallServerFor(ms(300))),
        F::Proxy(DelayServer(ms(50))),
        F::Proxy(DropClientBytes),
    ];
    let mut connect_faults = link.to_vec();
    connect_faults.push(F::Proxy(CutAfterServerBytes(7)));
    add("connect (TCP)", "connecting", &connect_faults, connect_tcp);
    add(
        "connect (SCRAM)",
        "authenticating",
        &connect_faults,
        connect_scram,
    );
    let mut tls = link.to_vec();
    tls.push(F::Proxy(CutAfterServerBytes(1)));
    tls.push(F::Proxy(CutAfterServerBytes(300)));
    add("connect (TLS)", "TLS handshake", &tls, connect_tls);
    add(
        "query",
        "idle",
        &[
            F::Idle(false),
            F::Idle(true),
            F::Terminate,
            F::Restart,
            F::Stop,
            F::Kill9,
        ],
        query_idle,
    );
    add(
        "query",
        "sending",
        &[
            F::Proxy(CutAfterClientBytes(100_000)),
            F::Proxy(DropClientBytes),
            F::Proxy(Reset),
            F::Proxy(DelayServer(ms(50))),
        ],
        query_sending,
    );
    let mut awaiting = link.to_vec();
    awaiting.push(F::Proxy(CutAfterServerBytes(7)));
    awaiting.extend([F::Terminate, F::Restart, F::Stop, F::Kill9]);
    add("query", "awaiting the answer", &awaiting, query_awaiting);
    add(
        "query (row stream)",
        "mid-row",
        &[
            F::Proxy(CutAfterServerBytes(500_000)),
            F::Proxy(StallServerFor(ms(300))),
        ],
        query_mid_row,
    );
    add(
        "query over TLS (row stream)",
        "mid-row, mid-TLS-record",
        &[
            F::Proxy(CutAfterServerBytes(200_001)),
            F::Proxy(StallServerFor(ms(300))),
        ],
        query_tls_mid_record,
    );
    add(
        "pipelined queries",
        "awaiting the answer",
        &[
            F::Proxy(Cut),
            F::Proxy(Reset),
            F::Proxy(LoseAnswer),
            F::Proxy(StallServer),
            F::Proxy(CutAfterServerBytes(20)),
            F::Proxy(DelayServer(ms(50))),
        ],
        pipelined_awaiting,
    );
    add(
        "cursor (client)",
        "mid-row",
        &[
            F::Proxy(CutAfterServerBytes(500_000)),
            F::Proxy(StallServer),
            F::Proxy(StallServerFor(ms(300))),
        ],
        cursor_client_mid_row,
    );
    add(
        "cursor (named)",
        "awaiting the answer",
        &[
            F::Proxy(Cut),
            F::Proxy(LoseAnswer),
            F::Proxy(StallServer),
            F::Proxy(CutAfterServerBytes(30)),
        ],
        cursor_named_fetch,
    );
    add(
        "transaction",
        "inside a transaction",
        &[
            F::Proxy(Cut),
            F::Proxy(Reset),
            F::Proxy(LoseAnswer),
            F::Proxy(StallServer),
            F::Proxy(DropClientBytes),
            F::Terminate,
            F::Restart,
            F::Stop,
            F::Kill9,
        ],
        tx_inside,
    );
    let commit = [
        F::Proxy(Cut),
        F::Proxy(Reset),
        F::Proxy(LoseAnswer),
        F::Proxy(StallServer),
        F::Proxy(DropClientBytes),
        F::Proxy(CutAfterServerBytes(3)),
        F::Proxy(DelayServer(ms(50))),
    ];
    add("transaction", "during COMMIT", &commit, tx_commit);
    add(
        "pipelined transaction",
        "during COMMIT",
        &commit,
        ptx_commit,
    );
    let running = [F::Terminate, F::Restart, F::Stop, F::Kill9];
    add(
        "transaction",
        "during COMMIT (running)",
        &running,
        tx_commit_running,
    );
    add(
        "pipelined transaction",
        "during COMMIT (running)",
        &running,
        ptx_commit_running,
    );
    add(
        "pool acquire",
        "connecting",
        &[
            F::Proxy(Cut),
            F::Proxy(Reset),
            F::Proxy(StallServer),
            F::Proxy(LoseAnswer),
        ],
        pool_acquire,
    );
    add(
        "pool acquire",
        "idle (the server went away)",
        &[F::Restart, F::Stop, F::Kill9],
        pool_idle,
    );
    add(
        "pool release",
        "ROLLBACK of a released transaction",
        &[
            F::Proxy(Cut),
            F::Proxy(LoseAnswer),
            F::Proxy(StallServer),
            F::Proxy(Reset),
        ],
        pool_release,
    );
    add(
        "Listener",
        "idle",
        &[F::Idle(false), F::Idle(true), F::Terminate, F::Restart],
        listener_idle,
    );
    add(
        "COPY in",
        "mid-COPY",
        &[
            F::Proxy(CutAfterClientBytes(100_000)),
            F::Proxy(DropClientBytes),
            F::Proxy(StallServer),
            F::Proxy(Reset),
            F::Terminate,
            F::Restart,
            F::Stop,
            F::Kill9,
        ],
        copy_in,
    );
    add(
        "COPY out",
        "mid-COPY",
        &[
            F::Proxy(CutAfterServerBytes(300_000)),
            F::Proxy(StallServer),
            F::Proxy(LoseAnswer),
            F::Proxy(StallServerFor(ms(300))),
        ],
        copy_out,
    );
    v
}

rt_test! {
    async fn every_fault_at_every_phase_ends_cleanly() {
        let admin = connect().await;
        let ledger = format!("mx_ledger_{}_{}", runtime_name().replace('-', "_"), std::process::id());
        admin
            .batch_execute(&format!("DROP TABLE IF EXISTS {ledger}, {ledger}_slow; \
                DROP FUNCTION IF EXISTS {ledger}_sleep; CREATE TABLE {ledger} (id int8 PRIMARY KEY); {}",
                slow_commit_sql(&ledger)))
            .await
            .unwrap();
        let c = crate::support::cluster().expect("the xtask cluster");
        let cluster = private_cluster("fault matrix").await;
        if let Some(c) = &cluster {
            timed(&c.dsn("aiopg_matrix_admin"))
                .connect()
                .await
                .unwrap()
                .batch_execute(&format!(
                    "CREATE TABLE {ledger} (id int8 PRIMARY KEY); {}",
                    slow_commit_sql(&ledger)
                ))
                .await
                .unwrap();
        }
        let ctx = Arc::new(Ctx {
            admin: admin.clone(),
            ledger: ledger.clone(),
            next_id: AtomicI64::new(1),
            server: format!("127.0.0.1:{}", c.port).parse().unwrap(),
            cluster,
        });
        let only = std::env::var("AIOPG_MATRIX_ONLY").ok();
        let cells: Vec<Cell> = cells()
            .into_iter()
            .filter(|c| {
                only.as_deref().is_none_or(|o| {
                    format!("{} / {} / {}", c.op, c.phase, c.fault.label()).contains(o)
                })
            })
            .collect();
        let (cluster_cells, link_cells): (Vec<Cell>, Vec<Cell>) =
            cells.into_iter().partition(|c| c.fault.on_cluster());
        let mut lines = Vec::new();
        let run_cell = |cell: &Cell| {
            let ctx = ctx.clone();
            let (run, fault) = (cell.run, cell.fault);
            async move {
                let started = Instant::now();
                let limit = bound() + if fault.on_cluster() { Duration::from_secs(40) } else { Duration::ZERO };
                let fut = AssertUnwindSafe(run(ctx, fault)).catch_unwind();
                let verdict = match aiopg::rt::timeout(&*runtime(), limit, fut).await {
                    Err(_) => Err(format!("hang: no end within {limit:?}")),
                    Ok(Err(_)) => Err("panic".to_owned()),
                    Ok(Ok(v)) => v,
                };
                (verdict, started.elapsed())
            }
        };
        // Link and server faults run a few at a time; cluster faults one by one (they stop
        // the private cluster under every cell using it).
        let mut results = Vec::new();
        for chunk in link_cells.chunks(24) {
            let out = futures_util::future::join_all(chunk.iter().map(run_cell)).await;
            for (cell, (v, took)) in chunk.iter().zip(&out) {
                if std::env::var_os("AIOPG_MATRIX_TRACE").is_some() {
                    eprintln!("{} / {} / {}: {v:?} in {took:?}", cell.op, cell.phase, cell.fault.label());
                }
            }
            results.extend(chunk.iter().zip(out));
        }
        for cell in &cluster_cells {
            if ctx.cluster.is_none() {
                continue;
            }
            let out = run_cell(cell).await;
            if std::env::var_os("AIOPG_MATRIX_TRACE").is_some() {
                eprintln!("{} / {} / {}: {:?} in {:?}", cell.op, cell.phase, cell.fault.label(), out.0, out.1);
            }
            results.push((cell, out));
        }
        let mut failures = Vec::new();
        for (cell, (verdict, took)) in &results {
            let (status, detail) = match verdict {
                Ok(label) => ("pass", label.clone()),
                Err(why) => {
                    failures.push(format!("{} / {} / {}: {why}", cell.op, cell.phase, cell.fault.label()));
                    ("FAIL", why.clone())
                }
            };
            lines.push(format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                runtime_name(),
                cell.op,
                cell.phase,
                cell.fault.label(),
                status,
                detail.replace(['\t', '\n'], " "),
                took.as_millis()
            ));
        }
        if let Ok(dir) = std::env::var("AIOPG_MATRIX_DIR") {
            let _ = std::fs::create_dir_all(&dir);
            let mut text = String::new();
            for l in &lines {
                let _ = writeln!(text, "{l}");
            }
            std::fs::write(format!("{dir}/{}.tsv", runtime_name()), text).unwrap();
        }
        let _ = admin
            .batch_execute(&format!("DROP TABLE {ledger}, {ledger}_slow; DROP FUNCTION {ledger}_sleep"))
            .await;
        eprintln!("fault matrix on {}: {} cells, {} failed", runtime_name(), results.len(), failures.len());
        assert!(failures.is_empty(), "{} of {} cells failed:\n{}", failures.len(), results.len(), failures.join("\n"));
    }
}
