//! `pipeline`: 64 prepared `SELECT $1::int4` in flight on one connection.
//!
//! `aiopg` and `tokio-postgres` keep 64 independent queries (each with its own Sync) in
//! flight at all times, as futures of one task; the `-tasks` contenders do the same from 64
//! spawned tasks sharing the connection; `aiopg-driver` is `aiopg` with the opt-in driver
//! task reading the socket. `aiopg-pipeline` sends batches of 64 through `Connection::pipeline`
//! (one Sync per batch) and waits for each, which is what pgbench's pipeline mode
//! (`\startpipeline` .. `\endpipeline`) does: the two are compared with each other.

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::child::{finished, Job};

pub const DEPTH: usize = 64;

pub fn run(job: &Job) -> (u64, f64) {
    let rt = job.runtime.clone();
    match job.contender.as_str() {
        "aiopg" => crate::run!(&rt, job, aiopg),
        "aiopg-pipeline" => crate::run!(&rt, job, aiopg_pipeline),
        "aiopg-driver" => crate::run!(&rt, job, aiopg_driver),
        "tokio-postgres" => crate::run!(&rt, job, tokio_postgres),
        "aiopg-tasks" => crate::run!(&rt, job, aiopg_tasks),
        "aiopg-driver-tasks" => crate::run!(&rt, job, aiopg_driver_tasks),
        "tokio-postgres-tasks" => crate::run!(&rt, job, tokio_postgres_tasks),
        other => panic!("pipeline: unknown contender {other}"),
    }
}

/// Keeps `DEPTH` operations in flight until the amount is spent; returns (done, seconds).
async fn keep_in_flight<F, Fut>(job: &Job, mut query: F) -> (u64, f64)
where
    F: FnMut(i32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = std::time::Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut issued = 0u64;
    let mut done = 0u64;
    while (issued as usize) < DEPTH {
        inflight.push(query(issued as i32));
        issued += 1;
    }
    let mut stop = false;
    while inflight.next().await.is_some() {
        done += 1;
        stop = stop || finished(job.amount, done, start);
        if !stop {
            inflight.push(query(issued as i32));
            issued += 1;
        }
    }
    (done, start.elapsed().as_secs_f64())
}

async fn aiopg(job: &Job) -> (u64, f64) {
    aiopg_on(crate::aiopg_connect(job).await, job).await
}

/// The same 64 futures of one task, with the connection's opt-in driver task reading the
/// socket for them, as tokio-postgres' spawned connection task does.
async fn aiopg_driver(job: &Job) -> (u64, f64) {
    aiopg_on(crate::aiopg_connect_driven(job).await, job).await
}

async fn aiopg_on(conn: aiopg::Connection, job: &Job) -> (u64, f64) {
    let stmt = conn.prepare("SELECT $1::int4").await.expect("prepare");
    let r = keep_in_flight(job, |i: i32| {
        let (conn, stmt) = (&conn, &stmt);
        async move {
            let rows = conn.query_prepared(stmt, &[&i]).await.expect("query");
            assert_eq!(rows[0].get::<i32>(0), i);
        }
    })
    .await;
    conn.close().await;
    r
}

async fn aiopg_pipeline(job: &Job) -> (u64, f64) {
    let conn = crate::aiopg_connect(job).await;
    let stmt = conn.prepare("SELECT $1::int4").await.expect("prepare");
    let start = std::time::Instant::now();
    let mut done = 0u64;
    let values: Vec<i32> = (0..DEPTH as i32).collect();
    loop {
        let mut p = conn.pipeline();
        for v in &values {
            p.query_prepared(&stmt, &[v]);
        }
        let results = p.run().await.expect("pipeline");
        for (r, v) in results.into_iter().zip(&values) {
            assert_eq!(r.expect("query").rows[0].get::<i32>(0), *v);
        }
        done += DEPTH as u64;
        if finished(job.amount, done, start) {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    conn.close().await;
    (done, elapsed)
}

async fn tokio_postgres(job: &Job) -> (u64, f64) {
    let client = crate::tokio_postgres_connect(job).await;
    let stmt = client.prepare("SELECT $1::int4").await.expect("prepare");
    keep_in_flight(job, |i: i32| {
        let (client, stmt) = (&client, &stmt);
        async move {
            let rows = client.query(stmt, &[&i]).await.expect("query");
            assert_eq!(rows[0].get::<_, i32>(0), i);
        }
    })
    .await
}

async fn aiopg_tasks(job: &Job) -> (u64, f64) {
    aiopg_tasks_on(crate::aiopg_connect(job).await, job).await
}

/// The 64 tasks of `aiopg-tasks`, with the connection's driver task reading for them.
async fn aiopg_driver_tasks(job: &Job) -> (u64, f64) {
    aiopg_tasks_on(crate::aiopg_connect_driven(job).await, job).await
}

async fn aiopg_tasks_on(conn: aiopg::Connection, job: &Job) -> (u64, f64) {
    let stmt = conn.prepare("SELECT $1::int4").await.expect("prepare");
    let (c, st) = (conn.clone(), stmt.clone());
    let r = crate::pool::run_tasks(job, move || {
        let (conn, stmt) = (c.clone(), st.clone());
        async move {
            let rows = conn.query_prepared(&stmt, &[&7i32]).await.expect("query");
            assert_eq!(rows[0].get::<i32>(0), 7);
        }
    })
    .await;
    conn.close().await;
    r
}

async fn tokio_postgres_tasks(job: &Job) -> (u64, f64) {
    let client = std::sync::Arc::new(crate::tokio_postgres_connect(job).await);
    let stmt = client.prepare("SELECT $1::int4").await.expect("prepare");
    crate::pool::run_tasks(job, move || {
        let (client, stmt) = (client.clone(), stmt.clone());
        async move {
            let rows = client.query(&stmt, &[&7i32]).await.expect("query");
            assert_eq!(rows[0].get::<_, i32>(0), 7);
        }
    })
    .await
}
