//! `tpcb`: pgbench's built-in TPC-B-like transaction on its scale-10 tables, 8 connections
//! with one transaction in flight each (transactions per second).
//!
//! Each transaction updates an account, reads its balance back, updates a teller and a branch
//! and records the change in `pgbench_history`, all between BEGIN and END, with the random
//! ids pgbench draws. `aiopg` runs it interactively (a round trip per statement, 7 a
//! transaction) and `aiopg-pipelined` as one pipelined transaction (one round trip);
//! `deadpool-postgres` and `sqlx` take a pooled connection per transaction. The parent creates
//! the tables once per run with `pgbench -i`; the ceiling is pgbench running its own script.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::child::{Amount, Job};

/// pgbench's scale factor: 100,000 accounts, 10 tellers and 1 branch per unit.
pub const SCALE: i32 = 10;
/// Connections, each with its own worker and one transaction in flight.
pub const CONNECTIONS: usize = 8;

/// The five statements of a transaction, as pgbench's built-in script has them.
const SQL: [&str; 5] = [
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
     VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
];

/// Runs the job's contender; returns (committed transactions, seconds).
pub fn run(job: &Job) -> (u64, f64) {
    let rt = job.runtime.clone();
    match job.contender.as_str() {
        "aiopg" => crate::run!(&rt, job, aiopg),
        "aiopg-pipelined" => crate::run!(&rt, job, aiopg_pipelined),
        "deadpool-postgres" => crate::run!(&rt, job, deadpool),
        "sqlx" => crate::run!(&rt, job, sqlx),
        other => panic!("tpcb: unknown contender {other}"),
    }
}

/// xorshift64*: cheap, and good enough to spread ids the way pgbench's `random()` does.
struct Rng(u64);

impl Rng {
    fn new(worker: usize) -> Rng {
        Rng((worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i32, hi: i32) -> i32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32;
        lo + (r % (hi - lo + 1) as u64) as i32
    }
}

/// One transaction's parameters, drawn as pgbench's built-in script draws them.
struct Params {
    aid: i32,
    bid: i32,
    tid: i32,
    delta: i32,
}

impl Params {
    fn draw(rng: &mut Rng) -> Params {
        Params {
            aid: rng.range(1, 100_000 * SCALE),
            bid: rng.range(1, SCALE),
            tid: rng.range(1, 10 * SCALE),
            delta: rng.range(-5000, 5000),
        }
    }
}

/// Shared by the workers: when to stop, and how many transactions committed.
struct Control {
    stop: AtomicBool,
    done: AtomicU64,
    limit: u64,
}

impl Control {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    /// Counts a committed transaction (and stops everyone once a counted run is complete).
    fn committed(&self) {
        if self.done.fetch_add(1, Ordering::Relaxed) + 1 >= self.limit {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Starts the clock, spawns one task per worker (each built from its index and the shared
/// [`Control`]) on the job's runtime, and waits for them once the amount is spent.
async fn run_workers<F, Fut>(job: &Job, worker: F) -> (u64, f64)
where
    F: Fn(usize, Arc<Control>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let ctl = Arc::new(Control {
        stop: AtomicBool::new(false),
        done: AtomicU64::new(0),
        limit: match job.amount {
            Amount::Count(c) => c,
            Amount::Seconds(_) => u64::MAX,
        },
    });
    let start = Instant::now();
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|i| crate::pool::spawn(&job.runtime, worker(i, ctl.clone())))
        .collect();
    if let Amount::Seconds(s) = job.amount {
        crate::pool::sleep(&job.runtime, Duration::from_secs_f64(s)).await;
        ctl.stop.store(true, Ordering::Relaxed);
    }
    for h in handles {
        h.await;
    }
    (
        ctl.done.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    )
}

/// `CONNECTIONS` aiopg connections, each with the five statements prepared.
async fn aiopg_connections(job: &Job) -> Vec<(aiopg::Connection, Vec<aiopg::Statement>)> {
    let mut v = Vec::new();
    for _ in 0..CONNECTIONS {
        let conn = crate::aiopg_connect(job).await;
        let mut stmts = Vec::new();
        for sql in SQL {
            stmts.push(conn.prepare(sql).await.expect("prepare"));
        }
        v.push((conn, stmts));
    }
    v
}

async fn aiopg(job: &Job) -> (u64, f64) {
    let conns = aiopg_connections(job).await;
    let r = run_workers(job, |i, ctl| {
        let (conn, st) = conns[i].clone();
        async move {
            let mut rng = Rng::new(i);
            while ctl.running() {
                let p = Params::draw(&mut rng);
                let mut tx = conn.begin().await.expect("begin");
                conn.execute_prepared(&st[0], &[&p.delta, &p.aid])
                    .await
                    .expect("update accounts");
                let rows = conn
                    .query_prepared(&st[1], &[&p.aid])
                    .await
                    .expect("select abalance");
                assert_eq!(rows.len(), 1, "one account per aid");
                let _: i32 = rows[0].get(0);
                conn.execute_prepared(&st[2], &[&p.delta, &p.tid])
                    .await
                    .expect("update tellers");
                conn.execute_prepared(&st[3], &[&p.delta, &p.bid])
                    .await
                    .expect("update branches");
                conn.execute_prepared(&st[4], &[&p.tid, &p.bid, &p.aid, &p.delta])
                    .await
                    .expect("insert history");
                tx.commit().await.expect("commit");
                ctl.committed();
            }
        }
    })
    .await;
    for (conn, _) in &conns {
        conn.close().await;
    }
    r
}

async fn aiopg_pipelined(job: &Job) -> (u64, f64) {
    let conns = aiopg_connections(job).await;
    let r = run_workers(job, |i, ctl| {
        let (conn, st) = conns[i].clone();
        async move {
            let mut rng = Rng::new(i);
            while ctl.running() {
                let p = Params::draw(&mut rng);
                let mut pl = conn.pipeline();
                pl.query_prepared(&st[0], &[&p.delta, &p.aid]);
                pl.query_prepared(&st[1], &[&p.aid]);
                pl.query_prepared(&st[2], &[&p.delta, &p.tid]);
                pl.query_prepared(&st[3], &[&p.delta, &p.bid]);
                pl.query_prepared(&st[4], &[&p.tid, &p.bid, &p.aid, &p.delta]);
                let outcome = pl
                    .transaction(aiopg::TransactionOptions::default())
                    .await
                    .expect("transaction");
                let results: Vec<aiopg::QueryResult> = outcome.committed().expect("committed");
                assert_eq!(results.len(), SQL.len(), "a result per statement");
                assert_eq!(results[1].rows.len(), 1, "one account per aid");
                let _: i32 = results[1].rows[0].get(0);
                ctl.committed();
            }
        }
    })
    .await;
    for (conn, _) in &conns {
        conn.close().await;
    }
    r
}

async fn deadpool(job: &Job) -> (u64, f64) {
    let pool = crate::pool::deadpool_of(job, CONNECTIONS);
    // Opens every connection and fills its statement cache before the clock starts.
    let mut warm = Vec::new();
    for _ in 0..CONNECTIONS {
        let client = pool.get().await.expect("get");
        for sql in SQL {
            client.prepare_cached(sql).await.expect("prepare");
        }
        warm.push(client);
    }
    drop(warm);
    run_workers(job, |i, ctl| {
        let pool = pool.clone();
        async move {
            let mut rng = Rng::new(i);
            while ctl.running() {
                let p = Params::draw(&mut rng);
                let mut client = pool.get().await.expect("get");
                let tx = client.transaction().await.expect("begin");
                let mut st = Vec::with_capacity(SQL.len());
                for sql in SQL {
                    st.push(tx.prepare_cached(sql).await.expect("prepare"));
                }
                tx.execute(&st[0], &[&p.delta, &p.aid])
                    .await
                    .expect("update accounts");
                let rows = tx.query(&st[1], &[&p.aid]).await.expect("select abalance");
                assert_eq!(rows.len(), 1, "one account per aid");
                let _: i32 = rows[0].get(0);
                tx.execute(&st[2], &[&p.delta, &p.tid])
                    .await
                    .expect("update tellers");
                tx.execute(&st[3], &[&p.delta, &p.bid])
                    .await
                    .expect("update branches");
                tx.execute(&st[4], &[&p.tid, &p.bid, &p.aid, &p.delta])
                    .await
                    .expect("insert history");
                tx.commit().await.expect("commit");
                ctl.committed();
            }
        }
    })
    .await
}

async fn sqlx(job: &Job) -> (u64, f64) {
    let pool = crate::pool::sqlx_pool_of(job, CONNECTIONS as u32).await;
    // sqlx prepares on first use and caches per connection: run every statement once on each
    // connection before the clock starts, with ids that match no row (so that the held
    // transactions lock nothing) and rolled back.
    let none = Params {
        aid: 0,
        bid: 0,
        tid: 0,
        delta: 0,
    };
    let mut warm = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut tx = pool.begin().await.expect("begin");
        sqlx_tx(&mut tx, &none).await;
        warm.push(tx);
    }
    for tx in warm {
        tx.rollback().await.expect("rollback");
    }
    let p = pool.clone();
    let r = run_workers(job, |i, ctl| {
        let pool = p.clone();
        async move {
            let mut rng = Rng::new(i);
            while ctl.running() {
                let params = Params::draw(&mut rng);
                let mut tx = pool.begin().await.expect("begin");
                let accounts = sqlx_tx(&mut tx, &params).await;
                assert_eq!(accounts, 1, "one account per aid");
                tx.commit().await.expect("commit");
                ctl.committed();
            }
        }
    })
    .await;
    pool.close().await;
    r
}

/// The five statements of a transaction on sqlx; returns how many rows the SELECT returned.
async fn sqlx_tx(tx: &mut sqlx::Transaction<'static, sqlx::Postgres>, p: &Params) -> usize {
    sqlx::query(SQL[0])
        .bind(p.delta)
        .bind(p.aid)
        .execute(&mut **tx)
        .await
        .expect("update accounts");
    let rows: Vec<i32> = sqlx::query_scalar(SQL[1])
        .bind(p.aid)
        .fetch_all(&mut **tx)
        .await
        .expect("select abalance");
    sqlx::query(SQL[2])
        .bind(p.delta)
        .bind(p.tid)
        .execute(&mut **tx)
        .await
        .expect("update tellers");
    sqlx::query(SQL[3])
        .bind(p.delta)
        .bind(p.bid)
        .execute(&mut **tx)
        .await
        .expect("update branches");
    sqlx::query(SQL[4])
        .bind(p.tid)
        .bind(p.bid)
        .bind(p.aid)
        .bind(p.delta)
        .execute(&mut **tx)
        .await
        .expect("insert history");
    rows.len()
}
