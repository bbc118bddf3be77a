//! `latency`: sequential prepared `SELECT $1::int4` on one connection (`aiopg-driver`: with
//! the opt-in driver task reading the socket).

use crate::child::{drive, Job};

pub fn run(job: &Job) -> (u64, f64) {
    let rt = job.runtime.clone();
    match job.contender.as_str() {
        "aiopg" => crate::run!(&rt, job, aiopg),
        "aiopg-driver" => crate::run!(&rt, job, aiopg_driver),
        "tokio-postgres" => crate::run!(&rt, job, tokio_postgres),
        "sqlx" => crate::run!(&rt, job, sqlx),
        other => panic!("latency: unknown contender {other}"),
    }
}

async fn aiopg(job: &Job) -> (u64, f64) {
    aiopg_on(crate::aiopg_connect(job).await, job).await
}

async fn aiopg_driver(job: &Job) -> (u64, f64) {
    aiopg_on(crate::aiopg_connect_driven(job).await, job).await
}

async fn aiopg_on(conn: aiopg::Connection, job: &Job) -> (u64, f64) {
    let stmt = conn.prepare("SELECT $1::int4").await.expect("prepare");
    let r = drive(job.amount, |n| {
        let (conn, stmt) = (&conn, &stmt);
        async move {
            let i = n as i32;
            let rows = conn.query_prepared(stmt, &[&i]).await.expect("query");
            assert_eq!(rows[0].get::<i32>(0), i);
            1
        }
    })
    .await;
    conn.close().await;
    r
}

async fn tokio_postgres(job: &Job) -> (u64, f64) {
    let client = crate::tokio_postgres_connect(job).await;
    let stmt = client.prepare("SELECT $1::int4").await.expect("prepare");
    drive(job.amount, |n| {
        let (client, stmt) = (&client, &stmt);
        async move {
            let i = n as i32;
            let rows = client.query(stmt, &[&i]).await.expect("query");
            assert_eq!(rows[0].get::<_, i32>(0), i);
            1
        }
    })
    .await
}

async fn sqlx(job: &Job) -> (u64, f64) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&job.url)
        .await
        .expect("sqlx connect");
    // sqlx prepares on first use and caches; do that before measuring, as the others do.
    let _: i32 = sqlx::query_scalar("SELECT $1::int4")
        .bind(0)
        .fetch_one(&mut conn)
        .await
        .expect("prepare");
    // sqlx needs `&mut` per query, so the loop is written out rather than using `drive`.
    let start = std::time::Instant::now();
    let mut n = 0u64;
    loop {
        let i = n as i32;
        let v: i32 = sqlx::query_scalar("SELECT $1::int4")
            .bind(i)
            .fetch_one(&mut conn)
            .await
            .expect("query");
        assert_eq!(v, i);
        n += 1;
        if crate::child::finished(job.amount, n, start) {
            break;
        }
    }
    let r = (n, start.elapsed().as_secs_f64());
    let _ = conn.close().await;
    r
}
