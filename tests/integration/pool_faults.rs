//! The pool under load and under server faults.
//!
//! - `load_with_cancellations_keeps_the_pool_and_the_data_consistent`: 1,000 tasks share a
//!   pool of 10 for `AIOPG_TEST_LOAD_SECS` seconds (default 20, as the pool issue asks; set
//!   it lower for a quick local run), mixing queries, committed and rolled-back transactions and
//!   operations dropped mid-flight; then the pool, the server and the table must agree.
//! - `restart_under_load_…`, `stopped_server_…`, `killed_backends_under_load_…`: faults on a
//!   private cluster that each test starts for itself ([`PrivateCluster`]: initdb + pg_ctl in
//!   a temporary folder), so that restarting or stopping the server cannot disturb the tests
//!   sharing xtask's cluster. The server binaries come from `AIOPG_TEST_PG_BINDIR` (set by
//!   `cargo xtask test-all-runtimes`), else `pg_config --bindir`, else
//!   `/usr/lib/postgresql/<newest>/bin`.
//!
//! Each pool connects with its own `application_name` (in its DSN), so that
//! `pg_stat_activity` counts only its connections. Tests wait on conditions (bounded polls),
//! never on sleeps; the only pauses are short ones after failed attempts in the fault tests'
//! loops, so that a stopped server is not hammered.

use std::collections::HashSet;
use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use aiopg::{Connection, Error, ErrorKind, Pool, PoolBuilder, PooledConnection, TransactionStatus};

use crate::fault_proxy::{dsn_via, Chaos, Strike};
use crate::support::{connect, dsn, options, poll_then_drop, rt_test, runtime, spawn, Join};

/// A unique `application_name` for one test's pool.
fn app_name(test: &str) -> String {
    format!("aiopg_pf_{test}_{}", std::process::id())
}

/// `dsn` with `application_name=app` added (key=value or URI form).
fn with_app_name(dsn: &str, app: &str) -> String {
    let dsn = dsn.trim();
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        let sep = if dsn.contains('?') { '&' } else { '?' };
        format!("{dsn}{sep}application_name={app}")
    } else {
        format!("{dsn} application_name={app}")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `cond` every few milliseconds until it holds; fails the test after `limit`.
async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let rt = runtime();
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out ({limit:?}) waiting until {what}"
        );
        rt.sleep(Duration::from_millis(2)).await;
    }
}

/// The server processes serving connections named `app`.
async fn backends(admin: &Connection, app: &str) -> Vec<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid",
            &[&app],
        )
        .await
        .expect("read pg_stat_activity")
        .iter()
        .map(|r| r.get::<i32>(0))
        .collect()
}

/// Waits until the pool is at rest (nothing lent out, opened or awaited; its size `size`
/// when given) and the server lists exactly its connections under `app` (server processes
/// exit a little after their client goes); returns those backends' pids.
async fn settle(pool: &Pool, admin: &Connection, app: &str, size: Option<usize>) -> Vec<i32> {
    let start = Instant::now();
    loop {
        let s = pool.stats();
        if s.connecting == 0
            && s.waiting == 0
            && s.idle == s.size
            && size.is_none_or(|n| s.size == n)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the pool did not come to rest (size {size:?} expected): {s:?}"
        );
        runtime().sleep(Duration::from_millis(2)).await;
    }
    let start = Instant::now();
    loop {
        let pids = backends(admin, app).await;
        if pids.len() == pool.size() {
            return pids;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the server lists {} backends for {app} ({pids:?}), the pool has {}: {:?}",
            pids.len(),
            pool.size(),
            pool.stats()
        );
        runtime().sleep(Duration::from_millis(5)).await;
    }
}

/// Takes every connection of an idle pool at once and checks that each one works, is outside
/// any transaction (after one round trip, so that a `ROLLBACK` queued on release has run),
/// and is one of `pids` (the server's backends for `app`), which are all idle outside a
/// transaction.
async fn check_every_connection(pool: &Pool, admin: &Connection, app: &str, pids: &[i32]) {
    let n = pool.size();
    assert_eq!(
        pool.free_size(),
        n,
        "the pool is not idle: {:?}",
        pool.stats()
    );
    let mut held: Vec<PooledConnection> = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(pool.acquire().await.expect("acquire from an idle pool"));
    }
    assert_eq!(
        pool.size(),
        n,
        "taking the idle connections opened new ones"
    );
    let mut seen = HashSet::new();
    for conn in &held {
        let rows = conn
            .query("SELECT 7::int4", &[])
            .await
            .expect("a pooled connection works");
        assert_eq!(rows[0].get::<i32>(0), 7);
        assert_eq!(
            conn.transaction_status(),
            TransactionStatus::Idle,
            "a pooled connection was left inside a transaction"
        );
        assert!(
            seen.insert(conn.backend_pid()),
            "one connection handed out twice"
        );
        assert!(
            pids.contains(&conn.backend_pid()),
            "connection {} is not among the server's backends {pids:?}",
            conn.backend_pid()
        );
    }
    // The server agrees: no backend of this pool is inside a transaction.
    let rows = admin
        .query(
            "SELECT pid, state, xact_start IS NOT NULL FROM pg_stat_activity \
             WHERE application_name = $1 AND (state <> 'idle' OR xact_start IS NOT NULL)",
            &[&app],
        )
        .await
        .unwrap();
    let busy: Vec<(i32, String, bool)> = rows
        .iter()
        .map(|r| (r.get::<i32>(0), r.get::<String>(1), r.get::<bool>(2)))
        .collect();
    assert!(
        busy.is_empty(),
        "backends not idle outside a transaction: {busy:?}"
    );
}

/// A small xorshift generator: each load task draws its own reproducible sequence.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The load test.

const LOAD_TASKS: usize = 1_000;
const LOAD_MIN: usize = 2;
const LOAD_MAX: usize = 10;
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the load runs: `AIOPG_TEST_LOAD_SECS`, default 20.
fn load_secs() -> u64 {
    let secs = match std::env::var("AIOPG_TEST_LOAD_SECS") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("AIOPG_TEST_LOAD_SECS={v}: not a number of seconds")),
        Err(_) => 20,
    };
    assert!(
        (1..=90).contains(&secs),
        "AIOPG_TEST_LOAD_SECS={secs}: between 1 and 90 (the harness fails a test after 120 s)"
    );
    secs
}

/// What the load tasks do, by name (for the summary and to check that each ran).
const OPS: [&str; 10] = [
    "query",
    "query dropped mid-flight",
    "autocommit insert",
    "transaction committed",
    "transaction rolled back",
    "acquire dropped",
    "transaction dropped while active",
    "begin dropped mid-flight",
    "commit dropped mid-flight",
    "whole transaction dropped mid-flight",
];

struct Load {
    pool: Pool,
    insert: String,
    count_id: String,
    deadline: Instant,
    next_id: AtomicI64,
    /// Rows whose insert was committed: they must be in the table.
    committed: Mutex<Vec<i64>>,
    /// Rows inserted by transactions that were rolled back or dropped: they must not be.
    rolled_back: Mutex<Vec<i64>>,
    /// Rows whose commit was dropped mid-flight: either way is fine.
    unknown: Mutex<Vec<i64>>,
    errors: Mutex<Vec<String>>,
    error_count: AtomicUsize,
    max_acquire_nanos: AtomicU64,
    ran: [AtomicU64; OPS.len()],
}

impl Load {
    fn id(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) {
        self.error_count.fetch_add(1, Ordering::Relaxed);
        let mut errors = lock(&self.errors);
        if errors.len() < 20 {
            errors.push(format!("{what}: {e}"));
        }
    }

    async fn acquire(&self) -> aiopg::Result<PooledConnection> {
        let start = Instant::now();
        let res = self.pool.acquire().await;
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.max_acquire_nanos.fetch_max(nanos, Ordering::Relaxed);
        res
    }

    /// `SELECT $1 + 1`, checking the answer (a desynchronised connection would answer
    /// someone else's query).
    async fn check_query(&self, conn: &Connection) -> aiopg::Result<()> {
        let v = self.id();
        let rows = conn.query("SELECT $1::int8 + 1", &[&v]).await?;
        let got = rows[0].get::<i64>(0);
        if got != v + 1 {
            self.fail("query", format!("SELECT {v} + 1 answered {got}"));
        }
        Ok(())
    }

    /// Outside a transaction after `what`: a ROLLBACK queued when the previous user gave the
    /// connection back ran first, so this user inherited no transaction (had it, its
    /// autocommit work would be rolled back when it gives the connection back).
    fn check_idle(&self, conn: &Connection, what: &str) {
        let status = conn.transaction_status();
        if status != TransactionStatus::Idle {
            self.fail(what, format!("the connection is {status:?} after it"));
        }
    }

    /// Acquire, begin, insert `id`, commit.
    async fn commit_one(&self, id: i64) -> aiopg::Result<()> {
        let conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        conn.execute(&self.insert, &[&id, &"commit"]).await?;
        tx.commit().await
    }

    async fn op(&self, op: usize, polls: usize) -> aiopg::Result<()> {
        self.ran[op].fetch_add(1, Ordering::Relaxed);
        match op {
            // A plain query.
            0 => {
                let conn = self.acquire().await?;
                self.check_query(&conn).await?;
                self.check_idle(&conn, "a query");
                Ok(())
            }
            // A query dropped mid-flight; the connection then answers the next one right.
            1 => {
                let conn = self.acquire().await?;
                let v = self.id();
                let params: [aiopg::Param<'_>; 1] = [&v];
                let q = conn.query("SELECT $1::int8 FROM pg_sleep(0.001)", &params);
                if let Some(rows) = poll_then_drop(q, polls).await {
                    assert_eq!(rows?[0].get::<i64>(0), v);
                }
                self.check_query(&conn).await
            }
            // An insert outside any transaction.
            2 => {
                let conn = self.acquire().await?;
                let id = self.id();
                conn.execute(&self.insert, &[&id, &"auto"]).await?;
                self.check_idle(&conn, "an autocommit insert");
                lock(&self.committed).push(id);
                Ok(())
            }
            // A transaction that commits.
            3 => {
                let id = self.id();
                lock(&self.unknown).push(id);
                self.commit_one(id).await?;
                lock(&self.committed).push(id);
                Ok(())
            }
            // A transaction that rolls back (its row is visible inside it first).
            4 => {
                let conn = self.acquire().await?;
                let id = self.id();
                lock(&self.rolled_back).push(id);
                let mut tx = conn.begin().await?;
                conn.execute(&self.insert, &[&id, &"rollback"]).await?;
                let n: i64 = conn.query(&self.count_id, &[&id]).await?[0].get(0);
                if n != 1 {
                    self.fail(
                        "rollback",
                        format!("the row is not visible inside its transaction: {n}"),
                    );
                }
                tx.rollback().await
            }
            // An acquire given up while queued (or just served).
            5 => match poll_then_drop(self.pool.acquire(), 1 + polls % 2).await {
                Some(conn) => conn.map(drop),
                None => Ok(()),
            },
            // A transaction dropped while active, after its insert or during it.
            6 => {
                let conn = self.acquire().await?;
                let id = self.id();
                lock(&self.rolled_back).push(id);
                let tx = conn.begin().await?;
                let params: [aiopg::Param<'_>; 2] = [&id, &"dropped"];
                let insert = conn.execute(&self.insert, &params);
                if polls.is_multiple_of(2) {
                    insert.await?;
                } else if let Some(res) = poll_then_drop(insert, polls).await {
                    res?;
                }
                drop(tx);
                Ok(())
            }
            // BEGIN dropped mid-flight: a ROLLBACK is queued, the connection is idle after.
            7 => {
                let conn = self.acquire().await?;
                if let Some(tx) = poll_then_drop(conn.begin(), polls).await {
                    let id = self.id();
                    lock(&self.rolled_back).push(id);
                    let _tx = tx?;
                    conn.execute(&self.insert, &[&id, &"dropped"]).await?;
                    return Ok(());
                }
                self.check_query(&conn).await?;
                self.check_idle(&conn, "a dropped BEGIN and a query");
                Ok(())
            }
            // COMMIT dropped mid-flight: the row may or may not be kept.
            8 => {
                let conn = self.acquire().await?;
                let id = self.id();
                lock(&self.unknown).push(id);
                let mut tx = conn.begin().await?;
                conn.execute(&self.insert, &[&id, &"commit"]).await?;
                if let Some(res) = poll_then_drop(tx.commit(), polls).await {
                    res?;
                    lock(&self.committed).push(id);
                }
                Ok(())
            }
            // A whole acquire-begin-insert-commit dropped anywhere.
            _ => {
                let id = self.id();
                lock(&self.unknown).push(id);
                if let Some(res) = poll_then_drop(self.commit_one(id), 2 * polls).await {
                    res?;
                    lock(&self.committed).push(id);
                }
                Ok(())
            }
        }
    }
}

async fn load_task(load: Arc<Load>, task: u64) {
    let mut rng = Rng::new(task + 1);
    while Instant::now() < load.deadline {
        // Weights: plain work 2/3, cancellations 1/3.
        let op = match rng.below(100) {
            0..=19 => 0,
            20..=26 => 1,
            27..=36 => 2,
            37..=51 => 3,
            52..=63 => 4,
            64..=71 => 5,
            72..=81 => 6,
            82..=87 => 7,
            88..=93 => 8,
            _ => 9,
        };
        let polls = 1 + rng.below(8) as usize;
        if let Err(e) = load.op(op, polls).await {
            load.fail(OPS[op], e);
        }
    }
}

rt_test! {
    async fn load_with_cancellations_keeps_the_pool_and_the_data_consistent() {
        let began = Instant::now();
        let secs = load_secs();
        let app = app_name("load");
        let admin = connect().await;
        let table = format!("pool_faults_load_{}", std::process::id());
        admin
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; \
                 CREATE UNLOGGED TABLE {table} (id int8 PRIMARY KEY, kind text NOT NULL)"
            ))
            .await
            .unwrap();
        let pool = Pool::builder(options(&with_app_name(&dsn(), &app)))
            .runtime(runtime())
            .min_size(LOAD_MIN)
            .max_size(LOAD_MAX)
            .timeout(LOAD_TIMEOUT)
            .build()
            .await
            .unwrap();
        let started = Instant::now();
        let load = Arc::new(Load {
            pool: pool.clone(),
            insert: format!("INSERT INTO {table} (id, kind) VALUES ($1, $2)"),
            count_id: format!("SELECT count(*) FROM {table} WHERE id = $1"),
            deadline: started + Duration::from_secs(secs),
            next_id: AtomicI64::new(1),
            committed: Mutex::default(),
            rolled_back: Mutex::default(),
            unknown: Mutex::default(),
            errors: Mutex::default(),
            error_count: AtomicUsize::new(0),
            max_acquire_nanos: AtomicU64::new(0),
            ran: Default::default(),
        });
        let tasks: Vec<Join<()>> = (0..LOAD_TASKS)
            .map(|i| spawn(load_task(load.clone(), i as u64)))
            .collect();
        for t in tasks {
            t.await;
        }
        let ran_for = started.elapsed();

        // No error at all: cancellations are the only faults injected.
        let errors = lock(&load.errors).clone();
        assert!(
            errors.is_empty(),
            "{} operations failed, among them:\n{}",
            load.error_count.load(Ordering::Relaxed),
            errors.join("\n")
        );
        let ran: Vec<u64> = load.ran.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        for (name, n) in OPS.iter().zip(&ran) {
            assert!(*n > 0, "the load never ran `{name}`: {ran:?}");
        }
        // No caller waited past the pool's timeout.
        let max_wait = Duration::from_nanos(load.max_acquire_nanos.load(Ordering::Relaxed));
        assert!(max_wait < LOAD_TIMEOUT, "an acquire waited {max_wait:?}");
        let stats = pool.stats();
        assert_eq!(stats.timeouts, 0, "{stats:?}");

        // The pool is whole again, and the server agrees.
        let pids = settle(&pool, &admin, &app, None).await;
        let size = pool.size();
        assert!((LOAD_MIN..=LOAD_MAX).contains(&size), "size {size}: {:?}", pool.stats());
        assert_eq!(pool.free_size(), size);
        check_every_connection(&pool, &admin, &app, &pids).await;

        // Every committed row is there; no rolled-back one is.
        let found: HashSet<i64> = admin
            .query(&format!("SELECT id FROM {table}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<i64>(0))
            .collect();
        let committed: HashSet<i64> = lock(&load.committed).iter().copied().collect();
        let rolled_back: HashSet<i64> = lock(&load.rolled_back).iter().copied().collect();
        let unknown: HashSet<i64> = lock(&load.unknown).iter().copied().collect();
        let missing: Vec<i64> = committed.difference(&found).copied().take(10).collect();
        assert!(missing.is_empty(), "committed rows missing (e.g. {missing:?})");
        let revived: Vec<i64> = rolled_back.intersection(&found).copied().take(10).collect();
        assert!(revived.is_empty(), "rolled-back rows present (e.g. {revived:?})");
        let strangers: Vec<i64> = found
            .iter()
            .filter(|id| !committed.contains(id) && !unknown.contains(id))
            .copied()
            .take(10)
            .collect();
        assert!(strangers.is_empty(), "rows nobody committed (e.g. {strangers:?})");
        let kept_unknown = found
            .iter()
            .filter(|id| unknown.contains(id) && !committed.contains(id))
            .count();
        assert_eq!(found.len(), committed.len() + kept_unknown);
        assert!(!committed.is_empty() && !rolled_back.is_empty());

        eprintln!(
            "load on {} ({:.1?} in all): {LOAD_TASKS} tasks, pool {LOAD_MIN}..{LOAD_MAX}, \
             {ran_for:.1?}; ops {:?}; {} rows committed, {} rolled back, {} of {} with a \
             dropped commit kept; longest acquire {max_wait:.1?}; final size {size}; {:?}",
            crate::support::runtime_name(),
            began.elapsed(),
            OPS.iter().zip(&ran).collect::<Vec<_>>(),
            committed.len(),
            rolled_back.len(),
            kept_unknown,
            unknown.len() - unknown.intersection(&committed).count(),
            pool.stats(),
        );
        pool.close();
        pool.wait_closed().await.unwrap();
        admin.batch_execute(&format!("DROP TABLE {table}")).await.unwrap();
    }
}

rt_test! {
    // A plain `BEGIN` (not `Connection::begin`; Python aiopg's idiom is
    // `cur.execute("BEGIN")`) whose future is dropped after it was sent: the guard goes back
    // while the answer is still in flight. The pool must roll back anyway, or the next user
    // would work inside that transaction and lose its autocommit work.
    async fn dropped_raw_begin_does_not_leak_a_transaction_to_the_next_user() {
        let app = app_name("raw_begin");
        let admin = connect().await;
        let table = format!("pool_faults_raw_begin_{}", std::process::id());
        admin
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int8)"
            ))
            .await
            .unwrap();
        let pool = Pool::builder(options(&with_app_name(&dsn(), &app)))
            .runtime(runtime())
            .min_size(1)
            .max_size(1)
            .build()
            .await
            .unwrap();
        // The admin session holds a lock that the batch waits for, so the answer is still in
        // flight when the future is dropped, however fast the server is.
        let key = i64::from(std::process::id()) << 8 | 0x5b;
        admin.query("SELECT pg_advisory_lock($1)", &[&key]).await.unwrap();
        let conn = pool.acquire().await.unwrap();
        let pid = conn.backend_pid();
        let batch = format!("BEGIN; SELECT pg_advisory_xact_lock_shared({key})");
        assert!(poll_then_drop(conn.batch_execute(&batch), 1).await.is_none());
        drop(conn);
        admin.query("SELECT pg_advisory_unlock($1)", &[&key]).await.unwrap();

        let conn = pool.acquire().await.unwrap();
        assert_eq!(conn.backend_pid(), pid);
        let inserted = conn
            .execute(&format!("INSERT INTO {table} VALUES (1)"), &[])
            .await
            .unwrap();
        assert_eq!(inserted, 1);
        let status = conn.transaction_status();
        drop(conn);
        // One round trip on the connection, so that whatever release queued has run.
        pool.acquire().await.unwrap().query("SELECT 1", &[]).await.unwrap();
        let rows = admin
            .query(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap();
        admin.batch_execute(&format!("DROP TABLE {table}")).await.unwrap();
        assert_eq!(
            rows[0].get::<i64>(0),
            1,
            "an autocommit insert that succeeded was lost: the next user inherited the dropped \
             BEGIN's transaction (status after its insert: {status:?})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Faults, on a private cluster.

/// The pool settings of the fault tests.
const FAULT_MIN: usize = 2;
const FAULT_MAX: usize = 4;
const FAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Short, so that the pool shrinks back to `min_size` once the load stops.
const FAULT_IDLE_TIMEOUT: Duration = Duration::from_millis(500);
/// Scheduling slack allowed beyond the pool's timeout when timing an acquire.
const SLACK: Duration = Duration::from_millis(500);
/// Tasks looping acquire + query during a fault.
const FAULT_WORKERS: usize = 3;

/// Environment variables that would point PostgreSQL's tools at another server.
const PG_ENV: [&str; 12] = [
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
];

/// A tiny throwaway cluster of one test: `initdb` (trust auth) and `pg_ctl` in a fresh
/// temporary folder, its own TCP port on 127.0.0.1 and its own socket folder. Run as the
/// `postgres` user (through `runuser`) when the tests run as root, as the server refuses root.
/// `fsync = off` but commits are synchronous: a `kill -9` of processes (the page cache
/// survives it) loses no commit that was answered.
/// Dropping it (also on panic) stops the server (immediate mode) and deletes the folder; a
/// folder left by a test process that died is cleaned up by the next `create`.
pub(crate) struct PrivateCluster {
    base: PathBuf,
    bindir: PathBuf,
    port: u16,
    /// The `postgres` user's uid and gid, when running as root.
    user: Option<(u32, u32)>,
}

const PRIVATE_PREFIX: &str = "aiopg-pf-";

impl PrivateCluster {
    fn data(&self) -> PathBuf {
        self.base.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.base.join("sock")
    }

    fn log(&self) -> PathBuf {
        self.base.join("postgres.log")
    }

    /// A DSN for the superuser over TCP, with `application_name=app`.
    pub(crate) fn dsn(&self, app: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres application_name={app}",
            self.port
        )
    }

    /// Creates and starts a cluster (blocking).
    fn create(bindir: PathBuf) -> Result<PrivateCluster, String> {
        let user = if running_as_root() {
            Some(postgres_ids()?)
        } else {
            None
        };
        remove_orphans(&bindir, user);
        let base = fresh_dir()?;
        // From here on, dropping `cluster` cleans up whatever was made.
        let mut cluster = PrivateCluster {
            base,
            bindir,
            port: 0,
            user,
        };
        cluster.init()?;
        Ok(cluster)
    }

    fn init(&mut self) -> Result<(), String> {
        let sock = self.socket_dir();
        std::fs::create_dir(&sock).map_err(|e| format!("creating {}: {e}", sock.display()))?;
        self.give_to_postgres(&self.base)?;
        self.give_to_postgres(&sock)?;
        let data = self.data().display().to_string();
        self.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let conf = format!(
            "\n# pool_faults.rs\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_connections = 40\nshared_buffers = 16MB\nfsync = off\n\
             full_page_writes = off\ninclude_if_exists 'port.conf'\n",
            sock.display()
        );
        let conf_path = self.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path)
            .map_err(|e| format!("reading {}: {e}", conf_path.display()))?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text)
            .map_err(|e| format!("writing {}: {e}", conf_path.display()))?;
        // A port free a moment ago: the server may lose a race for it, then try another.
        for attempt in 1..=5 {
            self.port = std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("finding a free port: {e}"))?
                .port();
            let port_conf = self.data().join("port.conf");
            std::fs::write(&port_conf, format!("port = {}\n", self.port))
                .map_err(|e| format!("writing {}: {e}", port_conf.display()))?;
            self.give_to_postgres(&port_conf)?;
            match self.start() {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 5 && e.contains("could not bind") => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    fn give_to_postgres(&self, path: &Path) -> Result<(), String> {
        match self.user {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| format!("chown postgres {}: {e}", path.display())),
            None => Ok(()),
        }
    }

    /// Runs one of the server's programs (as `postgres` when root), failing with its output
    /// and the server log's tail.
    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bindir.join(program);
        let mut cmd = match self.user {
            None => Command::new(&path),
            Some(_) => {
                let mut cmd = Command::new(runuser()?);
                cmd.args(["-u", "postgres", "--"]).arg(&path);
                cmd
            }
        };
        cmd.args(args).current_dir("/").stdin(Stdio::null());
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("running {}: {e}", path.display()))?;
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        Err(format!(
            "{program} {} failed ({}): {}{}\n--- server log (last lines) ---\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }

    fn pg_ctl(&self, command: &str, more: &[&str]) -> Result<(), String> {
        let data = self.data().display().to_string();
        let mut args = vec![command, "-D", &data, "-w", "-t", "30", "-s"];
        args.extend_from_slice(more);
        self.run("pg_ctl", &args)
    }

    /// `pg_ctl start`, waiting until the server accepts connections.
    pub(crate) fn start(&self) -> Result<(), String> {
        let log = self.log().display().to_string();
        self.pg_ctl("start", &["-l", &log])
    }

    /// `pg_ctl stop -m fast`: sessions are ended (FATAL 57P01), then the server stops.
    pub(crate) fn stop(&self) -> Result<(), String> {
        self.pg_ctl("stop", &["-m", "fast"])
    }

    /// `kill -9` of the postmaster; its backends exit when they notice, and then the server
    /// starts again (`pg_ctl start` retried until the old shared memory is released).
    pub(crate) fn kill_postmaster_and_start(&self) -> Result<(), String> {
        let pid_file = self.data().join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .map_err(|e| format!("reading {}: {e}", pid_file.display()))?;
        let pid = text.lines().next().unwrap_or("").trim().to_owned();
        let killed = Command::new("kill")
            .args(["-9", &pid])
            .status()
            .map_err(|e| format!("kill -9 {pid}: {e}"))?;
        if !killed.success() {
            return Err(format!("kill -9 {pid} failed"));
        }
        let mut last = String::new();
        for _ in 0..100 {
            match self.start() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "the server did not start again after kill -9: {last}"
        ))
    }

    /// `pg_ctl restart -m fast`, waiting until the new server accepts connections.
    pub(crate) fn restart(&self) -> Result<(), String> {
        let log = self.log().display().to_string();
        self.pg_ctl("restart", &["-m", "fast", "-l", &log])
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let pid_file = self.data().join("postmaster.pid");
        if pid_file.exists() {
            if let Err(e) = self.pg_ctl("stop", &["-m", "immediate"]) {
                eprintln!("pool_faults: stopping the private cluster: {e}");
                // Only a postmaster of this data folder (the pid file may be stale).
                let data = self.data().display().to_string();
                let pid = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
                    .filter(|pid| {
                        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                            String::from_utf8_lossy(&cmd)
                                .replace('\0', " ")
                                .contains(&data)
                        })
                    });
                if let Some(pid) = pid {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.base) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("pool_faults: deleting {}: {e}", self.base.display());
            }
        }
    }
}

/// The folder holding `initdb` and `pg_ctl`.
fn pg_bindir() -> Result<PathBuf, String> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("AIOPG_TEST_PG_BINDIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if usable(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "AIOPG_TEST_PG_BINDIR={}: no initdb and pg_ctl there",
                dir.display()
            ))
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && usable(&dir) {
            return Ok(dir);
        }
    }
    // Debian installs each major version under /usr/lib/postgresql/<major>/bin.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| usable(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "no PostgreSQL server binaries (initdb, pg_ctl): set AIOPG_TEST_PG_BINDIR, or put \
         pg_config on PATH"
            .to_string()
    })
}

fn running_as_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            // Real, effective, saved, filesystem.
            return line.split_whitespace().nth(2) == Some("0");
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn postgres_ids() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err("running as root needs a `postgres` user to run the server".into()),
    }
}

fn runuser() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join("runuser"))
        .find(|p| p.is_file())
        .ok_or_else(|| "running as root needs runuser (util-linux) to run the server".into())
}

/// A new folder `$TMPDIR/aiopg-pf-<pid>-<n>` (short: the socket path has a length limit).
fn fresh_dir() -> Result<PathBuf, String> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let tmp = std::env::temp_dir();
    for _ in 0..100 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = tmp.join(format!("{PRIVATE_PREFIX}{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("creating {}: {e}", dir.display())),
        }
    }
    Err(format!("no fresh folder in {}", tmp.display()))
}

/// Stops and deletes private clusters of test processes that are gone (killed before their
/// clean-up ran). Only where `/proc` tells which processes exist.
fn remove_orphans(bindir: &Path, user: Option<(u32, u32)>) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PRIVATE_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        eprintln!(
            "pool_faults: cleaning up {} (its test process is gone)",
            entry.path().display()
        );
        drop(PrivateCluster {
            base: entry.path(),
            bindir: bindir.to_path_buf(),
            port: 0,
            user,
        });
    }
}

/// Runs blocking `f` on a thread of its own, so that the runtime under test keeps running the
/// pool's tasks meanwhile; a panic in `f` is raised again here.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    type Slot<T> = Mutex<(Option<std::thread::Result<T>>, Option<Waker>)>;
    let slot: Arc<Slot<T>> = Arc::new(Mutex::new((None, None)));
    let theirs = slot.clone();
    std::thread::spawn(move || {
        let out = std::panic::catch_unwind(AssertUnwindSafe(f));
        let waker = {
            let mut s = lock(&theirs);
            s.0 = Some(out);
            s.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    });
    let out = poll_fn(|cx| {
        let mut s = lock(&slot);
        match s.0.take() {
            Some(out) => Poll::Ready(out),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await;
    out.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Starts a private cluster, or says why the test has nothing to check (no server binaries,
/// outside xtask's runs, which always have them).
pub(crate) async fn private_cluster(test: &str) -> Option<Arc<PrivateCluster>> {
    let bindir = match pg_bindir() {
        Ok(dir) => dir,
        Err(e) if std::env::var_os("AIOPG_TEST_CLUSTER").is_none() => {
            eprintln!("{test}: skipped, it needs a private cluster: {e}");
            return None;
        }
        Err(e) => panic!("{test}: {e}"),
    };
    match blocking(move || PrivateCluster::create(bindir)).await {
        Ok(cluster) => Some(Arc::new(cluster)),
        Err(e) => panic!("{test}: could not start a private cluster: {e}"),
    }
}

/// Runs a `pg_ctl` step on `cluster` off the runtime's threads.
pub(crate) async fn pg_ctl(
    cluster: &Arc<PrivateCluster>,
    step: fn(&PrivateCluster) -> Result<(), String>,
) {
    let c = cluster.clone();
    if let Err(e) = blocking(move || step(&c)).await {
        panic!("{e}");
    }
}

fn fault_pool(cluster: &PrivateCluster, app: &str) -> PoolBuilder {
    Pool::builder(options(&cluster.dsn(app)))
        .runtime(runtime())
        .min_size(FAULT_MIN)
        .max_size(FAULT_MAX)
        .timeout(FAULT_TIMEOUT)
        .idle_timeout(FAULT_IDLE_TIMEOUT)
}

pub(crate) async fn private_admin(cluster: &PrivateCluster) -> Connection {
    options(&cluster.dsn("aiopg_pf_admin"))
        .connect()
        .await
        .expect("connect to the private cluster")
}

/// A failed iteration of a fault worker.
#[derive(Debug)]
struct Failure {
    /// The epochs (see [`FaultLoad::begin_fault`]) the iteration began and ended in.
    epochs: (usize, usize),
    /// `acquire` or `query`.
    stage: &'static str,
    /// How long the acquire took.
    waited: Duration,
    /// The connection's server process, for a failed query.
    pid: Option<i32>,
    error: Error,
}

impl Failure {
    /// Whether the iteration overlapped a fault: it began during one (an odd epoch), or one
    /// began or ended while it ran.
    fn during_fault(&self) -> bool {
        self.epochs.0 % 2 == 1 || self.epochs.0 != self.epochs.1
    }
}

/// A few tasks looping acquire + query (checking the answer) until told to stop.
struct FaultLoad {
    pool: Pool,
    stop: AtomicBool,
    /// Even between faults, odd during one; each iteration notes it when it begins and ends.
    epoch: AtomicUsize,
    ok: AtomicUsize,
    max_wait_nanos: AtomicU64,
    failures: Mutex<Vec<Failure>>,
}

impl FaultLoad {
    fn start(pool: &Pool) -> (Arc<FaultLoad>, Vec<Join<()>>) {
        let load = Arc::new(FaultLoad {
            pool: pool.clone(),
            stop: AtomicBool::new(false),
            epoch: AtomicUsize::new(0),
            ok: AtomicUsize::new(0),
            max_wait_nanos: AtomicU64::new(0),
            failures: Mutex::default(),
        });
        let tasks = (0..FAULT_WORKERS)
            .map(|_| spawn(load.clone().work()))
            .collect();
        (load, tasks)
    }

    async fn work(self: Arc<Self>) {
        let rt = runtime();
        let mut n: i64 = 0;
        while !self.stop.load(Ordering::SeqCst) {
            n += 1;
            let began = self.epoch.load(Ordering::SeqCst);
            let start = Instant::now();
            let acquired = self.pool.acquire().await;
            let waited = start.elapsed();
            let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
            self.max_wait_nanos.fetch_max(nanos, Ordering::Relaxed);
            let (stage, pid, error) = match acquired {
                Err(e) => ("acquire", None, e),
                Ok(conn) => match conn.query("SELECT $1::int8", &[&n]).await {
                    Ok(rows) => {
                        assert_eq!(
                            rows[0].get::<i64>(0),
                            n,
                            "a connection answered another query"
                        );
                        self.ok.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    Err(e) => ("query", Some(conn.backend_pid()), e),
                },
            };
            let ended = self.epoch.load(Ordering::SeqCst);
            lock(&self.failures).push(Failure {
                epochs: (began, ended),
                stage,
                waited,
                pid,
                error,
            });
            // Pacing, not synchronisation: a stopped server is not hammered in a hot loop.
            rt.sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the workers have done `n` more successful iterations.
    async fn progress(&self, n: usize, what: &str) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        let what = format!("{n} more successful queries {what}");
        wait_until(&what, Duration::from_secs(30), || {
            self.ok.load(Ordering::SeqCst) >= target
        })
        .await;
    }

    /// A fault begins: iterations running now or begun from now on may fail with it.
    fn begin_fault(&self) {
        let before = self.epoch.fetch_add(1, Ordering::SeqCst);
        assert_eq!(before % 2, 0, "a fault is already under way");
    }

    /// The fault is over once no connection attempt begun during it can still be running
    /// (one would fail whichever caller is first in line): iterations begun from now on
    /// must not fail, but for a query on a connection that died in the fault.
    async fn end_fault(&self) {
        wait_until(
            "no connection is being opened",
            Duration::from_secs(30),
            || self.pool.stats().connecting == 0,
        )
        .await;
        let before = self.epoch.fetch_add(1, Ordering::SeqCst);
        assert_eq!(before % 2, 1, "no fault is under way");
    }

    async fn finish(&self, tasks: Vec<Join<()>>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await;
        }
    }

    fn failures(&self) -> Vec<Failure> {
        std::mem::take(&mut *lock(&self.failures))
    }
}

/// Checks a fault test's failures. Every acquire returned within the pool's timeout. Only
/// iterations that overlapped a fault failed, each with an error `during_fault` allows, and
/// queries only on connections that died in it (in `dead` when given): at most `dead_max`
/// connections, each failing once. An iteration begun before any fault or after one was over
/// never fails: the pool hands out no connection that died in a fault, not even one that sat
/// idle through it.
fn check_failures(
    failures: &[Failure],
    dead: Option<&HashSet<i32>>,
    dead_max: usize,
    during_fault: impl Fn(&Failure) -> bool,
) {
    let mut failed_pids = HashSet::new();
    for f in failures {
        assert!(
            f.waited <= FAULT_TIMEOUT + SLACK,
            "an acquire took {:?} (timeout {FAULT_TIMEOUT:?}): {f:?}",
            f.waited
        );
        if let Some(pid) = f.pid {
            assert!(
                failed_pids.insert(pid),
                "connection {pid} failed twice: {failures:#?}"
            );
            if let Some(dead) = dead {
                assert!(
                    dead.contains(&pid),
                    "a query failed on a live connection: {f:?}"
                );
            }
        }
        assert!(
            f.during_fault(),
            "an iteration failed outside a fault (at {}): {f:?}\nall: {failures:#?}",
            f.stage
        );
        assert!(during_fault(f), "unexpected failure during a fault: {f:?}");
    }
    assert!(
        failed_pids.len() <= dead_max,
        "queries failed on {} connections, at most {dead_max} died: {failures:#?}",
        failed_pids.len()
    );
}

/// Whether `e` says that the server is going away, starting or not there.
fn server_down(e: &Error) -> bool {
    let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
    e.is_closed() || e.kind() == ErrorKind::Io || code == "57P01" || code == "57P03"
}

rt_test! {
    async fn restart_under_load_recovers_without_help() {
        let began = Instant::now();
        let Some(cluster) = private_cluster("restart_under_load").await else { return };
        let app = app_name("restart");
        let pool = fault_pool(&cluster, &app).build().await.unwrap();
        let (load, tasks) = FaultLoad::start(&pool);
        load.progress(50, "before the restart").await;

        load.begin_fault();
        pg_ctl(&cluster, PrivateCluster::restart).await;
        let restarted = Instant::now();
        load.end_fault().await;
        let recovered = restarted.elapsed();
        load.progress(200, "after the restart").await;
        load.finish(tasks).await;
        // Only connections in use at the restart can fail a query: at most max_size.
        let failures = load.failures();
        check_failures(&failures, None, FAULT_MAX, |f| server_down(&f.error));
        let max_wait = Duration::from_nanos(load.max_wait_nanos.load(Ordering::Relaxed));
        assert!(max_wait <= FAULT_TIMEOUT + SLACK, "an acquire took {max_wait:?}");

        // No help from the caller: the pool is back to min_size, all of it alive.
        let admin = private_admin(&cluster).await;
        let pids = settle(&pool, &admin, &app, Some(FAULT_MIN)).await;
        check_every_connection(&pool, &admin, &app, &pids).await;
        eprintln!(
            "restart under load on {} ({:.1?}): {} failures ({} after the restart), no \
             connection being opened {recovered:.1?} after pg_ctl returned, longest acquire \
             {max_wait:.1?}; {:?}",
            crate::support::runtime_name(),
            began.elapsed(),
            failures.len(),
            failures.iter().filter(|f| !f.during_fault()).count(),
            pool.stats()
        );
    }
}

rt_test! {
    // Without load: every connection sits idle through the restart, so nothing but the check
    // on acquire (no liveness round trip here) can tell that they all died.
    async fn restart_while_idle_hands_out_no_dead_connection() {
        let Some(cluster) = private_cluster("restart_idle").await else { return };
        let app = app_name("restart_idle");
        let pool = Pool::builder(options(&cluster.dsn(&app)))
            .runtime(runtime())
            .min_size(FAULT_MIN)
            .max_size(FAULT_MAX)
            .timeout(FAULT_TIMEOUT)
            .test_on_acquire(None)
            .build()
            .await
            .unwrap();
        // Open every connection the pool may hold, and give them all back.
        let mut held = Vec::new();
        for _ in 0..FAULT_MAX {
            held.push(pool.acquire().await.unwrap());
        }
        let before: HashSet<i32> = held.iter().map(|c| c.backend_pid()).collect();
        drop(held);
        assert_eq!(pool.free_size(), FAULT_MAX);

        pg_ctl(&cluster, PrivateCluster::restart).await;

        // Callers one after another, then several at once: none sees a closed connection.
        let mut failures = Vec::new();
        for n in 0..FAULT_MAX as i64 {
            let conn = pool.acquire().await.expect("acquire after the restart");
            match conn.query("SELECT $1::int8", &[&n]).await {
                Ok(rows) => assert_eq!(rows[0].get::<i64>(0), n),
                Err(e) => failures.push(format!("{}: {e}", conn.backend_pid())),
            }
            assert!(!before.contains(&conn.backend_pid()), "a connection from before the restart");
        }
        let together: Vec<Join<aiopg::Result<i32>>> = (0..FAULT_MAX)
            .map(|_| {
                let pool = pool.clone();
                spawn(async move {
                    let conn = pool.acquire().await?;
                    conn.query("SELECT 1", &[]).await?;
                    Ok(conn.backend_pid())
                })
            })
            .collect();
        for t in together {
            match t.await {
                Ok(pid) => assert!(!before.contains(&pid), "a connection from before the restart"),
                Err(e) => failures.push(e.to_string()),
            }
        }
        assert!(failures.is_empty(), "callers saw failures after the restart: {failures:#?}");
        let stats = pool.stats();
        assert_eq!(stats.connections_broken, FAULT_MAX as u64, "{stats:?}");
        let admin = private_admin(&cluster).await;
        let pids = settle(&pool, &admin, &app, None).await;
        check_every_connection(&pool, &admin, &app, &pids).await;
    }
}

rt_test! {
    async fn stopped_server_fails_acquires_clearly_and_recovers_on_start() {
        let began = Instant::now();
        let Some(cluster) = private_cluster("stopped_server").await else { return };
        let app = app_name("stopped");
        let pool = fault_pool(&cluster, &app).build().await.unwrap();
        for _ in 0..3 {
            pool.acquire().await.unwrap().query("SELECT 1", &[]).await.unwrap();
        }
        let before = pool.size();

        pg_ctl(&cluster, PrivateCluster::stop).await;
        let stopped = Instant::now();
        // Rounds of concurrent attempts, until the server has been down twice the pool's
        // timeout and the last rounds all failed at acquire.
        let mut stale = 0;
        let mut refused = 0;
        let mut example = String::new();
        let mut quiet_rounds = 0;
        for round in 0.. {
            assert!(round < 500, "the pool never settled on failing acquires");
            let attempts: Vec<Join<(Duration, aiopg::Result<aiopg::Result<()>>)>> = (0..FAULT_MAX)
                .map(|_| {
                    let pool = pool.clone();
                    spawn(async move {
                        let start = Instant::now();
                        match pool.acquire().await {
                            Ok(conn) => {
                                let waited = start.elapsed();
                                (waited, Ok(conn.query("SELECT 1", &[]).await.map(drop)))
                            }
                            Err(e) => (start.elapsed(), Err(e)),
                        }
                    })
                })
                .collect();
            let mut all_refused = true;
            for attempt in attempts {
                let (waited, res) = attempt.await;
                assert!(waited <= FAULT_TIMEOUT + SLACK, "an acquire took {waited:?}: {res:?}");
                match res {
                    // An idle connection from before the stop, handed out dead (counted, and
                    // then the test fails: the pool must find it dead on acquire).
                    Ok(query) => {
                        let e = query.expect_err("a query succeeded with the server stopped");
                        assert!(e.is_closed(), "{e}");
                        stale += 1;
                        all_refused = false;
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        assert_eq!(e.kind(), ErrorKind::Io, "{msg}");
                        assert!(
                            msg.contains(&format!("127.0.0.1:{}", cluster.port))
                                && msg.contains("is the server running"),
                            "unclear: {msg}"
                        );
                        refused += 1;
                        example = msg;
                    }
                }
            }
            quiet_rounds = if all_refused { quiet_rounds + 1 } else { 0 };
            if quiet_rounds >= 3 && stopped.elapsed() >= 2 * FAULT_TIMEOUT {
                break;
            }
            // Pacing between rounds.
            runtime().sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            stale, 0,
            "{stale} connections that died with the server were handed out (the pool had \
             {before})"
        );
        assert_eq!(pool.free_size(), 0, "a dead connection is still idle: {:?}", pool.stats());
        let stats = pool.stats();
        assert_eq!(stats.timeouts, 0, "acquires timed out instead of failing: {stats:?}");

        // No attempt begun while the server was down is still running.
        wait_until("no connection is being opened", Duration::from_secs(30), || {
            pool.stats().connecting == 0
        })
        .await;
        pg_ctl(&cluster, PrivateCluster::start).await;
        // Every acquire succeeds again, alone or several at once.
        for _ in 0..5 {
            let start = Instant::now();
            let conn = pool.acquire().await.expect("acquire after the server is back");
            assert!(start.elapsed() <= FAULT_TIMEOUT);
            conn.query("SELECT 1", &[]).await.expect("query after the server is back");
        }
        let together: Vec<Join<aiopg::Result<()>>> = (0..FAULT_MAX)
            .map(|_| {
                let pool = pool.clone();
                spawn(async move { pool.acquire().await?.query("SELECT 1", &[]).await.map(drop) })
            })
            .collect();
        for t in together {
            t.await.expect("concurrent acquire after the server is back");
        }
        let admin = private_admin(&cluster).await;
        let pids = settle(&pool, &admin, &app, Some(FAULT_MIN)).await;
        check_every_connection(&pool, &admin, &app, &pids).await;
        eprintln!(
            "stopped server on {} ({:.1?}): {refused} acquires refused (e.g. `{example}`), \
             {stale} stale connections; {:?}",
            crate::support::runtime_name(),
            began.elapsed(),
            pool.stats()
        );
    }
}

rt_test! {
    async fn killed_backends_under_load_are_replaced() {
        let began = Instant::now();
        let Some(cluster) = private_cluster("killed_under_load").await else { return };
        let app = app_name("killed");
        let admin = private_admin(&cluster).await;
        let pool = fault_pool(&cluster, &app).build().await.unwrap();
        let (load, tasks) = FaultLoad::start(&pool);
        load.progress(50, "before the kills").await;

        let mut killed: HashSet<i32> = HashSet::new();
        for round in 0..3 {
            load.begin_fault();
            // The function in the select list runs only on the rows the filter kept (in
            // the WHERE clause the planner could run it before the filter).
            let pids: Vec<i32> = admin
                .query(
                    "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1",
                    &[&app],
                )
                .await
                .unwrap()
                .iter()
                .filter(|r| r.get::<bool>(1))
                .map(|r| r.get::<i32>(0))
                .collect();
            assert!(!pids.is_empty(), "round {round}: nothing to kill");
            // Wait until those processes are gone.
            let start = Instant::now();
            while backends(&admin, &app).await.iter().any(|p| pids.contains(p)) {
                assert!(start.elapsed() < Duration::from_secs(20), "killed backends linger");
                runtime().sleep(Duration::from_millis(2)).await;
            }
            killed.extend(pids);
            load.end_fault().await;
            load.progress(100, "after a kill").await;
        }
        load.finish(tasks).await;
        // The server is up: acquires fail only if a connection being opened is killed
        // during its start-up; queries fail only on killed connections, once each.
        let failures = load.failures();
        check_failures(&failures, Some(&killed), killed.len(), |f| {
            f.error.is_closed() || f.error.code().is_some_and(|c| c.code() == "57P01")
        });
        let pids = settle(&pool, &admin, &app, Some(FAULT_MIN)).await;
        assert!(pids.iter().all(|p| !killed.contains(p)));
        check_every_connection(&pool, &admin, &app, &pids).await;
        eprintln!(
            "killed backends under load on {} ({:.1?}): {} killed in 3 rounds, {} failures; {:?}",
            crate::support::runtime_name(),
            began.elapsed(),
            killed.len(),
            failures.len(),
            pool.stats()
        );
    }
}

/// How the commits of a [`ledger_load`] ended, and what else it counted.
#[derive(Default)]
struct CommitLedger {
    /// Returned `Ok`: their rows must be there.
    committed: Vec<i64>,
    /// `CommitUnknown`: either way.
    unknown: Vec<i64>,
    /// Any other error: their rows must not be there.
    failed: Vec<i64>,
    /// Operations run, by kind.
    ops: [u64; 9],
    /// Errors that are not a fault's expected result (a desynchronised answer, a panic).
    wrong: Vec<String>,
}

impl CommitLedger {
    fn record(&mut self, ids: &[i64], res: aiopg::Result<()>) {
        let to = match &res {
            Ok(()) => &mut self.committed,
            Err(e) if e.is_commit_unknown() => &mut self.unknown,
            Err(_) => &mut self.failed,
        };
        to.extend_from_slice(ids);
    }
}

/// The names of [`CommitLedger::ops`].
const LEDGER_OPS: [&str; 9] = [
    "transaction",
    "execute_many batch",
    "checked query",
    "query timed out",
    "query dropped mid-flight",
    "pipelined transaction",
    "rolled-back transaction",
    "COPY in",
    "notification",
];

/// One operation of a [`ledger_load`] task; `round` picks which.
async fn ledger_op(
    pool: &Pool,
    insert: &str,
    next: &AtomicI64,
    ledger: &Mutex<CommitLedger>,
    round: u64,
) {
    let kind = match (round % 16) as usize {
        0..=3 => 0,
        4..=5 => 1,
        6..=7 => 2,
        8 => 3,
        9 => 4,
        10..=11 => 5,
        12 => 6,
        13..=14 => 7,
        _ => 8,
    };
    lock(ledger).ops[kind] += 1;
    match kind {
        0 => {
            let id = next.fetch_add(1, Ordering::Relaxed);
            let res = async {
                let conn = pool.acquire().await?;
                let mut tx = conn.begin().await?;
                conn.execute(insert, &[&id]).await?;
                tx.commit().await
            }
            .await;
            lock(ledger).record(&[id], res);
        }
        1 => {
            // Two rows in one implicit transaction.
            let first = next.fetch_add(2, Ordering::Relaxed);
            let ids = [first, first + 1];
            let res = async {
                let conn = pool.acquire().await?;
                let stmt = conn.prepare(insert).await?;
                let (a, b): (aiopg::Param<'_>, aiopg::Param<'_>) = (&ids[0], &ids[1]);
                let sets: [&[aiopg::Param<'_>]; 2] = [&[a], &[b]];
                conn.execute_many(&stmt, sets).await.map(drop)
            }
            .await;
            lock(ledger).record(&ids, res);
        }
        2 => {
            let v = next.fetch_add(1, Ordering::Relaxed);
            let res = async {
                let conn = pool.acquire().await?;
                let rows = conn.query("SELECT $1::int8 + 1", &[&v]).await?;
                Ok::<i64, aiopg::Error>(rows[0].get(0))
            }
            .await;
            if let Ok(got) = res {
                if got != v + 1 {
                    lock(ledger)
                        .wrong
                        .push(format!("SELECT {v} + 1 answered {got}"));
                }
            }
        }
        3 => {
            // An acquire fails whichever way the fault says (the server may be down).
            let Ok(conn) = pool.acquire().await else {
                return;
            };
            let res = conn
                .with_timeout(
                    Some(Duration::from_millis(5)),
                    conn.query("SELECT 1 FROM pg_sleep(0.05)", &[]),
                )
                .await;
            if let Err(e) = res {
                // 57014 too: a cancel whose own link the chaos proxy cut can only be known
                // sent, not when the server acts on it, and may stop the next statement of the
                // connection, here another timed query (never an answer to the wrong caller).
                if !(e.is_timeout()
                    || e.is_closed()
                    || e.code()
                        .is_some_and(|c| c.code() == "57P01" || c.code() == "57014"))
                {
                    lock(ledger)
                        .wrong
                        .push(format!("a timed-out query failed with {e}"));
                }
            }
        }
        5 => {
            // Two rows in one pipelined transaction (one round trip).
            let first = next.fetch_add(2, Ordering::Relaxed);
            let ids = [first, first + 1];
            let res = async {
                let conn = pool.acquire().await?;
                let mut p = conn.pipeline();
                p.query(insert, &[&ids[0]]).query(insert, &[&ids[1]]);
                p.transaction(aiopg::TransactionOptions::default())
                    .await?
                    .committed()
                    .map(drop)
            }
            .await;
            lock(ledger).record(&ids, res);
        }
        6 => {
            // Rolled back on purpose: its row must never appear.
            let id = next.fetch_add(1, Ordering::Relaxed);
            let res = async {
                let conn = pool.acquire().await?;
                let mut tx = conn.begin().await?;
                conn.execute(insert, &[&id]).await?;
                tx.rollback().await
            }
            .await;
            let mut l = lock(ledger);
            l.failed.push(id);
            if let Err(e) = res {
                if e.is_commit_unknown() {
                    l.wrong.push(format!("a ROLLBACK reported {e}"));
                }
            }
        }
        7 => {
            // Two rows by COPY, which commits on its own once CopyDone is out.
            let first = next.fetch_add(2, Ordering::Relaxed);
            let ids = [first, first + 1];
            let copy = insert
                .split_once(" (id)")
                .map(|(head, _)| format!("{} (id) FROM STDIN", head.replace("INSERT INTO", "COPY")))
                .expect("the insert names its column");
            let res = async {
                let conn = pool.acquire().await?;
                let mut w = conn.copy_in(&copy).await?;
                w.write(format!("{}\n{}\n", ids[0], ids[1]).as_bytes())
                    .await?;
                let n = w.finish().await?;
                if n != 2 {
                    return Err(aiopg::Error::usage(format!("COPY reported {n} rows")));
                }
                Ok(())
            }
            .await;
            if let Err(e) = &res {
                if e.kind() == ErrorKind::Usage {
                    lock(ledger).wrong.push(e.to_string());
                }
            }
            lock(ledger).record(&ids, res);
        }
        8 => {
            let v = next.fetch_add(1, Ordering::Relaxed);
            let res = async {
                let conn = pool.acquire().await?;
                let payload = v.to_string();
                let rows = conn
                    .query("SELECT pg_notify('aiopg_soak', $1), $1", &[&payload])
                    .await?;
                Ok::<String, aiopg::Error>(rows[0].get(1))
            }
            .await;
            if let Ok(got) = res {
                if got != v.to_string() {
                    lock(ledger)
                        .wrong
                        .push(format!("NOTIFY {v} answered {got}"));
                }
            }
        }
        _ => {
            let v = next.fetch_add(1, Ordering::Relaxed);
            if let Ok(conn) = pool.acquire().await {
                let params: [aiopg::Param<'_>; 1] = [&v];
                let q = conn.query("SELECT $1::int8 FROM pg_sleep(0.001)", &params);
                if let Some(Ok(rows)) = poll_then_drop(q, 1 + (round % 5) as usize).await {
                    if rows[0].get::<i64>(0) != v {
                        lock(ledger)
                            .wrong
                            .push(format!("a dropped query's rows: {rows:?}"));
                    }
                }
            }
        }
    }
}

/// `tasks` tasks share a pool of at most 6 for `secs` seconds (transactions, implicit-
/// transaction batches, pipelined transactions, rollbacks, COPY, notifications, checked
/// queries, timeouts, drops) while faults strike at random: the pool's backends are killed
/// (`pg_terminate_backend`), and its links (through a [`Chaos`] proxy) are cut, reset, or
/// stalled then cut; with `cluster` (a private one), the server itself is restarted, stopped
/// and started, or its postmaster killed with `kill -9`, every few seconds. Then every commit
/// that returned `Ok` is in the table, every one that failed with anything but
/// `CommitUnknown` (a rollback included) is not, nothing else is, no answer went to the wrong
/// caller, and the pool and the server agree on its connections.
async fn ledger_load(name: &str, secs: u64, tasks: u64, cluster: Option<Arc<PrivateCluster>>) {
    let began = Instant::now();
    let app = app_name(name);
    let mut admin = match &cluster {
        Some(c) => private_admin(c).await,
        None => connect().await,
    };
    let table = format!("pool_faults_{name}_{}", std::process::id());
    // A logged table when the cluster may crash (an unlogged one is emptied by recovery).
    let logged = if cluster.is_some() { "" } else { "UNLOGGED" };
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE {logged} TABLE {table} (id int8 PRIMARY KEY)"
        ))
        .await
        .unwrap();
    let port = match &cluster {
        Some(c) => c.port,
        None => crate::support::cluster().expect("the xtask cluster").port,
    };
    let chaos = Chaos::start(format!("127.0.0.1:{port}").parse().unwrap());
    let pool = Pool::builder(options(&with_app_name(&dsn_via(chaos.port), &app)))
        .runtime(runtime())
        .min_size(2)
        .max_size(6)
        .timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let next = Arc::new(AtomicI64::new(1));
    let ledger = Arc::new(Mutex::new(CommitLedger::default()));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let insert = format!("INSERT INTO {table} (id) VALUES ($1)");
    let workers: Vec<Join<()>> = (0..tasks)
        .map(|task| {
            let (pool, next, ledger, insert) =
                (pool.clone(), next.clone(), ledger.clone(), insert.clone());
            spawn(async move {
                let mut round = task;
                while Instant::now() < deadline {
                    round += 1;
                    ledger_op(&pool, &insert, &next, &ledger, round).await;
                }
            })
        })
        .collect();
    let mut kills = 0u64;
    let mut strikes = [0u64; 3];
    // Restarts, stops, kills -9 of the private cluster.
    let mut cluster_faults = [0u64; 3];
    let mut next_cluster_fault = Instant::now() + Duration::from_secs(1);
    let mut rng = Rng::new(secs ^ tasks);
    while Instant::now() < deadline {
        if let Some(c) = cluster
            .as_ref()
            .filter(|_| Instant::now() >= next_cluster_fault)
        {
            // In turn, so that a short soak has each.
            let k = (cluster_faults.iter().sum::<u64>() % 3) as usize;
            let step: fn(&PrivateCluster) -> Result<(), String> = match k {
                0 => PrivateCluster::restart,
                1 => |c| c.stop().and_then(|()| c.start()),
                _ => PrivateCluster::kill_postmaster_and_start,
            };
            pg_ctl(c, step).await;
            cluster_faults[k] += 1;
            // The old session ended with the server.
            admin = private_admin(c).await;
            next_cluster_fault = Instant::now() + Duration::from_millis(1_500 + rng.below(2_000));
            continue;
        }
        match rng.below(4) {
            0 => {
                let rows = admin
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = $1 ORDER BY random() LIMIT 1",
                        &[&app],
                    )
                    .await
                    .unwrap();
                kills += rows.len() as u64;
            }
            k => {
                let how = [Strike::Cut, Strike::Reset, Strike::StallThenCut][k as usize - 1];
                let r = rng.below(1 << 16) as usize;
                if chaos.strike(|n| r % n, how) {
                    strikes[k as usize - 1] += 1;
                }
            }
        }
        // Pacing, so that work gets through between faults.
        runtime().sleep(Duration::from_millis(15)).await;
    }
    for w in workers {
        w.await;
    }
    let found: HashSet<i64> = admin
        .query(&format!("SELECT id FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<i64>(0))
        .collect();
    // Every connection the pool kept works and the server lists exactly those.
    let pids = settle(&pool, &admin, &app, None).await;
    check_every_connection(&pool, &admin, &app, &pids).await;
    let leaked = backends(&admin, &app).await.len().abs_diff(pool.size());
    {
        let ledger = lock(&ledger);
        assert!(ledger.wrong.is_empty(), "wrong answers: {:?}", ledger.wrong);
        let missing: Vec<&i64> = ledger
            .committed
            .iter()
            .filter(|id| !found.contains(id))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "rows of commits that returned Ok are missing: {missing:?}"
        );
        let phantoms: Vec<&i64> = ledger
            .failed
            .iter()
            .filter(|id| found.contains(id))
            .take(10)
            .collect();
        assert!(
            phantoms.is_empty(),
            "rows of commits that failed (not CommitUnknown) are there: {phantoms:?}"
        );
        let known: HashSet<i64> = ledger
            .committed
            .iter()
            .chain(&ledger.unknown)
            .copied()
            .collect();
        let strangers = found.difference(&known).count();
        assert_eq!(strangers, 0, "rows nobody committed");
        assert_eq!(
            leaked, 0,
            "the server and the pool disagree on its connections"
        );
        assert!(kills > 0 && !ledger.committed.is_empty() && !ledger.failed.is_empty());
        assert!(
            strikes.iter().all(|&n| n > 0),
            "link faults struck: {strikes:?}"
        );
        assert!(
            cluster.is_none() || secs < 15 || cluster_faults.iter().all(|&n| n > 0),
            "cluster faults struck: {cluster_faults:?}"
        );
        let unknown_kept = ledger
            .unknown
            .iter()
            .filter(|id| found.contains(id))
            .count();
        eprintln!(
            "{name} on {} ({:.1?}): {} faults injected ({kills} backends killed, links cut {}, \
             reset {}, stalled then cut {}; cluster restarted {}, stopped {}, postmaster killed \
             {}); operations {:?}; \
             panics 0, hangs 0, wrong answers {}, lost commits {}, phantom rows {}, leaked \
             connections {leaked}; commits: {} Ok, {} failed, {} reported unknown ({unknown_kept} \
             of those present)",
            crate::support::runtime_name(),
            began.elapsed(),
            kills + strikes.iter().sum::<u64>() + cluster_faults.iter().sum::<u64>(),
            strikes[0],
            strikes[1],
            strikes[2],
            cluster_faults[0],
            cluster_faults[1],
            cluster_faults[2],
            LEDGER_OPS.iter().zip(ledger.ops).collect::<Vec<_>>(),
            ledger.wrong.len(),
            missing.len(),
            phantoms.len(),
            ledger.committed.len(),
            ledger.failed.len(),
            ledger.unknown.len(),
        );
    }
    pool.close();
    pool.wait_closed().await.unwrap();
    admin
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

rt_test! {
    async fn commits_under_killed_backends_are_reported_truthfully() {
        ledger_load("ledger", 4, 12, None).await;
    }
}

rt_test! {
    /// `cargo xtask soak --minutes N`: the same load for as long as `AIOPG_SOAK_SECS` says,
    /// on a private cluster that is also restarted, stopped and killed at random.
    #[ignore = "a soak: run by `cargo xtask soak`"]
    async fn soak() {
        let secs = crate::support::soak_secs();
        assert!(secs > 0, "AIOPG_SOAK_SECS is not set: run `cargo xtask soak --minutes N`");
        let cluster = private_cluster("soak").await.expect("the soak needs a private cluster");
        ledger_load("soak", secs, 24, Some(cluster)).await;
    }
}
