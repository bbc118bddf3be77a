//! `pool`: 64 tasks sharing 8 pooled connections for a fixed time (ops/s), and `acquire`:
//! an uncontended acquire + release (reported as operations per second; ns/op = 1e9 / that).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::child::{Amount, Job};

pub const TASKS: usize = 64;
pub const CONNECTIONS: usize = 8;

pub fn run(job: &Job) -> (u64, f64) {
    let rt = job.runtime.clone();
    match (job.workload.as_str(), job.contender.as_str()) {
        ("pool", "aiopg") => crate::run!(&rt, job, aiopg_pool),
        ("pool", "deadpool-postgres") => crate::run!(&rt, job, deadpool_pool),
        ("pool", "sqlx") => crate::run!(&rt, job, sqlx_pool),
        ("acquire", "aiopg") => crate::run!(&rt, job, aiopg_acquire),
        ("acquire", "deadpool-postgres") => crate::run!(&rt, job, deadpool_acquire),
        ("acquire", "sqlx") => crate::run!(&rt, job, sqlx_acquire),
        (w, c) => panic!("{w}: unknown contender {c}"),
    }
}

/// Spawns `TASKS` workers on the job's runtime, each running `op` until the amount is spent.
pub(crate) async fn run_tasks<F, Fut>(job: &Job, op: F) -> (u64, f64)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let limit = match job.amount {
        Amount::Count(c) => c,
        Amount::Seconds(_) => u64::MAX,
    };
    let start = Instant::now();
    let mut handles: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> =
        Vec::new();
    for _ in 0..TASKS {
        let (op, stop, done) = (op.clone(), stop.clone(), done.clone());
        let worker = async move {
            while !stop.load(Ordering::Relaxed) {
                op().await;
                if done.fetch_add(1, Ordering::Relaxed) + 1 >= limit {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        };
        handles.push(spawn(&job.runtime, worker));
    }
    if let Amount::Seconds(s) = job.amount {
        sleep(&job.runtime, Duration::from_secs_f64(s)).await;
        stop.store(true, Ordering::Relaxed);
    }
    for h in handles {
        h.await;
    }
    (done.load(Ordering::Relaxed), start.elapsed().as_secs_f64())
}

/// Spawns a task on the named runtime; the returned future waits for it.
pub(crate) fn spawn(
    runtime: &str,
    f: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    match runtime {
        "tokio" => {
            let h = tokio::spawn(f);
            Box::pin(async move { h.await.expect("task") })
        }
        "async-std" => Box::pin(async_std::task::spawn(f)),
        _ => Box::pin(smol::spawn(f)),
    }
}

/// Sleeps on the named runtime's timer.
pub(crate) async fn sleep(runtime: &str, d: Duration) {
    match runtime {
        "tokio" => tokio::time::sleep(d).await,
        "async-std" => async_std::task::sleep(d).await,
        _ => {
            smol::Timer::after(d).await;
        }
    }
}

async fn aiopg_pool_of(job: &Job, size: usize) -> aiopg::Pool {
    let rt = aiopg::rt::runtime_by_name(&job.runtime).expect("runtime");
    aiopg::Pool::builder(job.dsn.as_str())
        .min_size(size)
        .max_size(size)
        .runtime(rt)
        .build()
        .await
        .expect("aiopg pool")
}

async fn aiopg_pool(job: &Job) -> (u64, f64) {
    let pool = aiopg_pool_of(job, CONNECTIONS).await;
    let p = pool.clone();
    let r = run_tasks(job, move || {
        let pool = p.clone();
        async move {
            let conn = pool.acquire().await.expect("acquire");
            let rows = conn
                .query("SELECT $1::int4", &[&7i32])
                .await
                .expect("query");
            assert_eq!(rows[0].get::<i32>(0), 7);
        }
    })
    .await;
    pool.close();
    r
}

pub(crate) fn deadpool_of(job: &Job, size: usize) -> deadpool_postgres::Pool {
    let pg: tokio_postgres::Config = job.dsn.parse().expect("dsn");
    let mgr = deadpool_postgres::Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(mgr)
        .max_size(size)
        .build()
        .expect("deadpool")
}

async fn deadpool_pool(job: &Job) -> (u64, f64) {
    let pool = deadpool_of(job, CONNECTIONS);
    run_tasks(job, move || {
        let pool = pool.clone();
        async move {
            let client = pool.get().await.expect("get");
            let stmt = client
                .prepare_cached("SELECT $1::int4")
                .await
                .expect("prepare");
            let rows = client.query(&stmt, &[&7i32]).await.expect("query");
            assert_eq!(rows[0].get::<_, i32>(0), 7);
        }
    })
    .await
}

pub(crate) async fn sqlx_pool_of(job: &Job, size: u32) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .min_connections(size)
        .max_connections(size)
        .connect(&job.url)
        .await
        .expect("sqlx pool")
}

async fn sqlx_pool(job: &Job) -> (u64, f64) {
    let pool = sqlx_pool_of(job, CONNECTIONS as u32).await;
    let p = pool.clone();
    let r = run_tasks(job, move || {
        let pool = p.clone();
        async move {
            let v: i32 = sqlx::query_scalar("SELECT $1::int4")
                .bind(7)
                .fetch_one(&pool)
                .await
                .expect("query");
            assert_eq!(v, 7);
        }
    })
    .await;
    pool.close().await;
    r
}

/// Runs `n` acquire + release pairs in one task (after warming the pool up).
fn acquire_amount(job: &Job) -> u64 {
    match job.amount {
        Amount::Count(c) => c,
        Amount::Seconds(_) => 200_000,
    }
}

async fn aiopg_acquire(job: &Job) -> (u64, f64) {
    let pool = aiopg_pool_of(job, 1).await;
    drop(pool.acquire().await.expect("warm"));
    let n = acquire_amount(job);
    let start = Instant::now();
    for _ in 0..n {
        drop(pool.acquire().await.expect("acquire"));
    }
    let r = (n, start.elapsed().as_secs_f64());
    pool.close();
    r
}

async fn deadpool_acquire(job: &Job) -> (u64, f64) {
    let pool = deadpool_of(job, 1);
    drop(pool.get().await.expect("warm"));
    let n = acquire_amount(job);
    let start = Instant::now();
    for _ in 0..n {
        drop(pool.get().await.expect("get"));
    }
    (n, start.elapsed().as_secs_f64())
}

async fn sqlx_acquire(job: &Job) -> (u64, f64) {
    let pool = sqlx_pool_of(job, 1).await;
    drop(pool.acquire().await.expect("warm"));
    // sqlx pings or resets on release, so far fewer acquires fit in the same time.
    let n = acquire_amount(job) / 20;
    let start = Instant::now();
    for _ in 0..n {
        drop(pool.acquire().await.expect("acquire"));
    }
    let r = (n, start.elapsed().as_secs_f64());
    pool.close().await;
    r
}
