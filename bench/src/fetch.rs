//! `fetch-1m`: rows of (int4, text, float8, timestamptz) decoded into Rust values: the same
//! tuple, `(i32, String, f64, chrono::DateTime<Utc>)`, for every contender.

use std::time::Instant;

use crate::child::{Amount, Job};

pub const ROWS: u64 = 1_000_000;

/// The query every contender runs (and the server-ceiling COPY wraps).
pub fn sql(rows: u64) -> String {
    format!(
        "SELECT i, 'row number ' || i, i * 1.5::float8, \
         timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second' \
         FROM generate_series(1, {rows}) i"
    )
}

fn check(got: u64, want: u64, last: Option<i32>) {
    assert_eq!(got, want);
    assert_eq!(last.map(|v| v as u64), (want > 0).then_some(want));
}

fn rows(job: &Job) -> u64 {
    match job.amount {
        Amount::Count(c) => c,
        Amount::Seconds(_) => ROWS,
    }
}

pub fn run(job: &Job) -> (u64, f64) {
    let rt = job.runtime.clone();
    match job.contender.as_str() {
        "aiopg" => crate::run!(&rt, job, aiopg),
        "tokio-postgres" => crate::run!(&rt, job, tokio_postgres),
        "sqlx" => crate::run!(&rt, job, sqlx),
        other => panic!("fetch: unknown contender {other}"),
    }
}

async fn aiopg(job: &Job) -> (u64, f64) {
    let conn = crate::aiopg_connect(job).await;
    crate::child::report_start_rss();
    let n = rows(job);
    let sql = sql(n);
    // Prepared (and cached) before the clock starts, as the peers prepare theirs.
    drop(conn.prepare(&sql).await.expect("prepare"));
    let start = Instant::now();
    // Every contender ends with the same thing: a Vec of decoded tuples, through its most
    // natural path (here `query_as`, which decodes rows as they arrive).
    let values: Vec<(i32, String, f64, chrono::DateTime<chrono::Utc>)> =
        conn.query_as(&sql, &[]).await.expect("query");
    check(values.len() as u64, n, values.last().map(|v| v.0));
    let r = (n, start.elapsed().as_secs_f64());
    drop(values);
    conn.close().await;
    r
}

async fn tokio_postgres(job: &Job) -> (u64, f64) {
    let client = crate::tokio_postgres_connect(job).await;
    crate::child::report_start_rss();
    let n = rows(job);
    let sql = sql(n);
    let stmt = client.prepare(&sql).await.expect("prepare");
    let start = Instant::now();
    let rows = client.query(&stmt, &[]).await.expect("query");
    // Every contender ends with the same thing: a Vec of decoded tuples.
    let values: Vec<(i32, String, f64, chrono::DateTime<chrono::Utc>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    drop(rows);
    check(values.len() as u64, n, values.last().map(|v| v.0));
    (n, start.elapsed().as_secs_f64())
}

async fn sqlx(job: &Job) -> (u64, f64) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&job.url)
        .await
        .expect("sqlx connect");
    crate::child::report_start_rss();
    let n = rows(job);
    let sql = sql(n);
    let start = Instant::now();
    let rows: Vec<(i32, String, f64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut conn)
            .await
            .expect("query");
    check(rows.len() as u64, n, rows.last().map(|v| v.0));
    let r = (n, start.elapsed().as_secs_f64());
    drop(rows);
    let _ = conn.close().await;
    r
}
