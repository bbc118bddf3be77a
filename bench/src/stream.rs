//! `stream-5m`: 5,000,000 rows read through each client's streaming API (aiopg
//! `query_stream`, tokio-postgres `query_raw`, sqlx `fetch`), and, as a second table, through
//! aiopg's named cursor and the peers' buffering APIs (tokio-postgres `query`, sqlx
//! `fetch_all`, which hold the whole result).

use std::time::Instant;

use crate::child::{Amount, Job};

pub const ROWS: u64 = 5_000_000;

fn rows(job: &Job) -> u64 {
    match job.amount {
        Amount::Count(c) => c,
        Amount::Seconds(_) => ROWS,
    }
}

pub fn sql(n: u64) -> String {
    format!("SELECT g, g::float8 * 0.5 FROM generate_series(1, {n}) g")
}

pub fn run(job: &Job) -> (u64, f64) {
    let rt = job.runtime.clone();
    match job.contender.as_str() {
        "aiopg" => crate::run!(&rt, job, aiopg_stream),
        "aiopg-cursor" => crate::run!(&rt, job, aiopg),
        "tokio-postgres" => crate::run!(&rt, job, tokio_postgres_stream),
        "tokio-postgres-buffered" => crate::run!(&rt, job, tokio_postgres),
        "sqlx" => crate::run!(&rt, job, sqlx_stream),
        "sqlx-buffered" => crate::run!(&rt, job, sqlx),
        other => panic!("stream: unknown contender {other}"),
    }
}

async fn aiopg_stream(job: &Job) -> (u64, f64) {
    use futures_util::TryStreamExt;
    let conn = crate::aiopg_connect(job).await;
    crate::child::report_start_rss();
    let n = rows(job);
    let start = Instant::now();
    let mut rows = conn.query_stream(&sql(n), &[]).await.expect("query");
    let mut count = 0u64;
    let mut sum = 0f64;
    while let Some(row) = rows.try_next().await.expect("row") {
        let (g, h): (i32, f64) = (row.get(0), row.get(1));
        sum += g as f64 - h;
        count += 1;
    }
    assert_eq!(count, n);
    assert!(sum >= 0.0);
    let r = (count, start.elapsed().as_secs_f64());
    conn.close().await;
    r
}

async fn tokio_postgres_stream(job: &Job) -> (u64, f64) {
    use futures_util::TryStreamExt;
    let client = crate::tokio_postgres_connect(job).await;
    crate::child::report_start_rss();
    let n = rows(job);
    let start = Instant::now();
    let stream = client
        .query_raw(&sql(n), std::iter::empty::<i32>())
        .await
        .expect("query");
    let mut stream = std::pin::pin!(stream);
    let mut count = 0u64;
    let mut sum = 0f64;
    while let Some(row) = stream.try_next().await.expect("row") {
        let (g, h): (i32, f64) = (row.get(0), row.get(1));
        sum += g as f64 - h;
        count += 1;
    }
    assert_eq!(count, n);
    assert!(sum >= 0.0);
    (count, start.elapsed().as_secs_f64())
}

async fn sqlx_stream(job: &Job) -> (u64, f64) {
    use futures_util::TryStreamExt;
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&job.url)
        .await
        .expect("sqlx connect");
    crate::child::report_start_rss();
    let n = rows(job);
    let start = Instant::now();
    let sql = sql(n);
    let mut count = 0u64;
    let mut sum = 0f64;
    {
        let mut rows =
            sqlx::query_as::<_, (i32, f64)>(sqlx::AssertSqlSafe(sql.as_str())).fetch(&mut conn);
        while let Some((g, h)) = rows.try_next().await.expect("row") {
            sum += g as f64 - h;
            count += 1;
        }
    }
    assert_eq!(count, n);
    assert!(sum >= 0.0);
    let r = (count, start.elapsed().as_secs_f64());
    let _ = conn.close().await;
    r
}

async fn aiopg(job: &Job) -> (u64, f64) {
    use aiopg::prelude::*;
    let conn = crate::aiopg_connect(job).await;
    crate::child::report_start_rss();
    let n = rows(job);
    let start = Instant::now();
    let mut tx = conn.begin().await.expect("begin");
    let mut cur = conn
        .cursor_with(aiopg::CursorOptions {
            name: Some("stream".into()),
            ..Default::default()
        })
        .await
        .expect("cursor");
    cur.execute(&sql(n), &[]).await.expect("declare");
    let mut count = 0u64;
    let mut sum = 0f64;
    while let Some(row) = cur.next().await.expect("fetch") {
        let (g, h): (i32, f64) = (row.get(0), row.get(1));
        sum += g as f64 - h;
        count += 1;
    }
    assert_eq!(count, n);
    assert!(sum >= 0.0);
    cur.close().await.expect("close");
    tx.commit().await.expect("commit");
    let r = (count, start.elapsed().as_secs_f64());
    conn.close().await;
    r
}

async fn tokio_postgres(job: &Job) -> (u64, f64) {
    let client = crate::tokio_postgres_connect(job).await;
    crate::child::report_start_rss();
    let n = rows(job);
    let start = Instant::now();
    let rows = client.query(&sql(n), &[]).await.expect("query");
    let mut sum = 0f64;
    for row in &rows {
        let (g, h): (i32, f64) = (row.get(0), row.get(1));
        sum += g as f64 - h;
    }
    assert_eq!(rows.len() as u64, n);
    assert!(sum >= 0.0);
    (n, start.elapsed().as_secs_f64())
}

async fn sqlx(job: &Job) -> (u64, f64) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&job.url)
        .await
        .expect("sqlx connect");
    crate::child::report_start_rss();
    let n = rows(job);
    let start = Instant::now();
    let rows: Vec<(i32, f64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql(n)))
        .fetch_all(&mut conn)
        .await
        .expect("query");
    let sum: f64 = rows.iter().map(|(g, h)| *g as f64 - h).sum();
    assert_eq!(rows.len() as u64, n);
    assert!(sum >= 0.0);
    let r = (n, start.elapsed().as_secs_f64());
    let _ = conn.close().await;
    r
}
