//! `copy-in` and `copy-out`: 1 M rows of (int8, text, float8) through COPY, in text and in
//! binary, each client through its COPY API: aiopg's `copy_in`/`copy_out` and binary writer
//! and reader, tokio-postgres' `copy_in`/`copy_out` and `binary_copy`, sqlx's
//! `copy_in_raw`/`copy_out_raw` (text only: it has no binary codec for COPY). Text data is
//! built before the clock starts, in 64 KiB chunks, the same bytes for every client; binary
//! writers encode the same typed rows; readers decode every value (binary) or count every row
//! (text).

use std::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};

use crate::child::{Amount, Job};

pub const ROWS: u64 = 1_000_000;
/// The table `copy-out` reads (made once in the bench cluster) and `copy-in`'s target shape.
pub const SOURCE: &str = "aiopg_bench_copy_src";
const COLUMNS: &str = "(id int8, name text, score float8)";

fn rows(job: &Job) -> u64 {
    match job.amount {
        Amount::Count(c) => c,
        Amount::Seconds(_) => ROWS,
    }
}

/// The statement that makes the source table, if it is not there yet.
pub fn source_sql(rows: u64) -> String {
    format!(
        "CREATE UNLOGGED TABLE IF NOT EXISTS {SOURCE}_{rows} AS \
         SELECT g::int8 AS id, 'row number ' || g AS name, g * 1.5::float8 AS score \
         FROM generate_series(1, {rows}) g"
    )
}

pub fn source(rows: u64) -> String {
    format!("{SOURCE}_{rows}")
}

fn target(job: &Job) -> String {
    format!(
        "bench_copy_{}_{}",
        job.runtime.replace('-', "_"),
        std::process::id()
    )
}

/// One text row, as the server writes it.
pub fn text_row(i: u64, out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(out, "{i}\trow number {i}\t{}", i as f64 * 1.5);
}

/// The text data, in ~64 KiB chunks.
pub fn text_chunks(n: u64) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut cur = String::with_capacity(70_000);
    for i in 1..=n {
        text_row(i, &mut cur);
        if cur.len() >= 64 * 1024 {
            chunks.push(Bytes::from(std::mem::take(&mut cur)));
            cur.reserve(70_000);
        }
    }
    if !cur.is_empty() {
        chunks.push(Bytes::from(cur));
    }
    chunks
}

fn typed_rows(n: u64) -> Vec<(i64, String, f64)> {
    (1..=n)
        .map(|i| (i as i64, format!("row number {i}"), i as f64 * 1.5))
        .collect()
}

pub fn run(job: &Job) -> (u64, f64) {
    let rt = job.runtime.clone();
    match (job.workload.as_str(), job.contender.as_str()) {
        ("copy-in", "aiopg") => crate::run!(&rt, job, aiopg_in),
        ("copy-in", "aiopg-binary") => crate::run!(&rt, job, aiopg_in_binary),
        ("copy-in", "tokio-postgres") => crate::run!(&rt, job, tokio_postgres_in),
        ("copy-in", "tokio-postgres-binary") => crate::run!(&rt, job, tokio_postgres_in_binary),
        ("copy-in", "sqlx") => crate::run!(&rt, job, sqlx_in),
        ("copy-out", "aiopg") => crate::run!(&rt, job, aiopg_out),
        ("copy-out", "aiopg-binary") => crate::run!(&rt, job, aiopg_out_binary),
        ("copy-out", "tokio-postgres") => crate::run!(&rt, job, tokio_postgres_out),
        ("copy-out", "tokio-postgres-binary") => crate::run!(&rt, job, tokio_postgres_out_binary),
        ("copy-out", "sqlx") => crate::run!(&rt, job, sqlx_out),
        (w, c) => panic!("{w}: unknown contender {c}"),
    }
}

async fn aiopg_prepare_in(job: &Job) -> (aiopg::Connection, String) {
    let conn = crate::aiopg_connect(job).await;
    let t = target(job);
    conn.batch_execute(&format!("CREATE UNLOGGED TABLE {t} {COLUMNS}"))
        .await
        .expect("create");
    (conn, t)
}

async fn aiopg_count_and_drop(conn: &aiopg::Connection, t: &str, n: u64) {
    let got: i64 = conn
        .query_scalar(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .expect("count");
    assert_eq!(got as u64, n);
    conn.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}

async fn aiopg_in(job: &Job) -> (u64, f64) {
    let (conn, t) = aiopg_prepare_in(job).await;
    let n = rows(job);
    let chunks = text_chunks(n);
    let start = Instant::now();
    let mut w = conn
        .copy_in(&format!("COPY {t} FROM STDIN"))
        .await
        .expect("copy_in");
    for c in chunks {
        w.send(c).await.expect("send");
    }
    assert_eq!(w.finish().await.expect("finish"), n);
    let el = start.elapsed().as_secs_f64();
    aiopg_count_and_drop(&conn, &t, n).await;
    (n, el)
}

async fn aiopg_in_binary(job: &Job) -> (u64, f64) {
    use aiopg::types::Type;
    let (conn, t) = aiopg_prepare_in(job).await;
    let n = rows(job);
    let data = typed_rows(n);
    let start = Instant::now();
    let w = conn
        .copy_in(&format!("COPY {t} FROM STDIN (FORMAT binary)"))
        .await
        .expect("copy_in");
    let mut w = aiopg::BinaryCopyInWriter::new(w, &[Type::INT8, Type::TEXT, Type::FLOAT8]);
    for (a, b, c) in &data {
        w.write(&[a, b, c]).await.expect("write");
    }
    assert_eq!(w.finish().await.expect("finish"), n);
    let el = start.elapsed().as_secs_f64();
    aiopg_count_and_drop(&conn, &t, n).await;
    (n, el)
}

async fn tokio_postgres_prepare_in(job: &Job) -> (tokio_postgres::Client, String) {
    let client = crate::tokio_postgres_connect(job).await;
    let t = target(job);
    client
        .batch_execute(&format!("CREATE UNLOGGED TABLE {t} {COLUMNS}"))
        .await
        .expect("create");
    (client, t)
}

async fn tokio_postgres_count_and_drop(client: &tokio_postgres::Client, t: &str, n: u64) {
    let got: i64 = client
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(got as u64, n);
    client
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}

async fn tokio_postgres_in(job: &Job) -> (u64, f64) {
    let (client, t) = tokio_postgres_prepare_in(job).await;
    let n = rows(job);
    let chunks = text_chunks(n);
    let start = Instant::now();
    let sink = client
        .copy_in::<_, Bytes>(&format!("COPY {t} FROM STDIN"))
        .await
        .expect("copy_in");
    futures_util::pin_mut!(sink);
    for c in chunks {
        sink.send(c).await.expect("send");
    }
    assert_eq!(sink.finish().await.expect("finish"), n);
    let el = start.elapsed().as_secs_f64();
    tokio_postgres_count_and_drop(&client, &t, n).await;
    (n, el)
}

async fn tokio_postgres_in_binary(job: &Job) -> (u64, f64) {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    let (client, t) = tokio_postgres_prepare_in(job).await;
    let n = rows(job);
    let data = typed_rows(n);
    let start = Instant::now();
    let sink = client
        .copy_in(&format!("COPY {t} FROM STDIN (FORMAT binary)"))
        .await
        .expect("copy_in");
    let w = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::TEXT, Type::FLOAT8]);
    futures_util::pin_mut!(w);
    for (a, b, c) in &data {
        w.as_mut().write(&[a, b, c]).await.expect("write");
    }
    assert_eq!(w.finish().await.expect("finish"), n);
    let el = start.elapsed().as_secs_f64();
    tokio_postgres_count_and_drop(&client, &t, n).await;
    (n, el)
}

async fn sqlx_in(job: &Job) -> (u64, f64) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&job.url)
        .await
        .expect("sqlx connect");
    let t = target(job);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE UNLOGGED TABLE {t} {COLUMNS}"
    )))
    .execute(&mut conn)
    .await
    .expect("create");
    let n = rows(job);
    let chunks = text_chunks(n);
    let start = Instant::now();
    let mut copy = conn
        .copy_in_raw(&format!("COPY {t} FROM STDIN"))
        .await
        .expect("copy_in_raw");
    for c in chunks {
        copy.send(c).await.expect("send");
    }
    assert_eq!(copy.finish().await.expect("finish"), n);
    let el = start.elapsed().as_secs_f64();
    let (got,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {t}")))
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(got as u64, n);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {t}")))
        .execute(&mut conn)
        .await
        .expect("drop");
    (n, el)
}

fn out_sql(n: u64, binary: bool) -> String {
    format!(
        "COPY {} TO STDOUT{}",
        source(n),
        if binary { " (FORMAT binary)" } else { "" }
    )
}

async fn aiopg_out(job: &Job) -> (u64, f64) {
    let conn = crate::aiopg_connect(job).await;
    let n = rows(job);
    conn.batch_execute(&source_sql(n)).await.expect("source");
    crate::child::report_start_rss();
    let start = Instant::now();
    let mut out = conn.copy_out(&out_sql(n, false)).await.expect("copy_out");
    let mut lines = 0u64;
    while let Some(chunk) = out.try_next().await.expect("chunk") {
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    let el = start.elapsed().as_secs_f64();
    assert_eq!(lines, n);
    assert_eq!(out.rows(), Some(n));
    (n, el)
}

async fn aiopg_out_binary(job: &Job) -> (u64, f64) {
    use aiopg::types::Type;
    let conn = crate::aiopg_connect(job).await;
    let n = rows(job);
    conn.batch_execute(&source_sql(n)).await.expect("source");
    crate::child::report_start_rss();
    let start = Instant::now();
    let out = conn.copy_out(&out_sql(n, true)).await.expect("copy_out");
    let mut rows = aiopg::BinaryCopyOutStream::new(out, &[Type::INT8, Type::TEXT, Type::FLOAT8]);
    let (mut count, mut sum, mut len) = (0u64, 0i64, 0usize);
    while let Some(row) = rows.try_next().await.expect("row") {
        count += 1;
        sum += row.get::<i64>(0);
        len += row.get::<&str>(1).len();
        let _: f64 = row.get(2);
    }
    let el = start.elapsed().as_secs_f64();
    assert_eq!(count, n);
    assert_eq!(sum as u64, n * (n + 1) / 2);
    assert!(len > 0);
    (n, el)
}

async fn tokio_postgres_out(job: &Job) -> (u64, f64) {
    let client = crate::tokio_postgres_connect(job).await;
    let n = rows(job);
    client.batch_execute(&source_sql(n)).await.expect("source");
    crate::child::report_start_rss();
    let start = Instant::now();
    let out = client.copy_out(&out_sql(n, false)).await.expect("copy_out");
    futures_util::pin_mut!(out);
    let mut lines = 0u64;
    while let Some(chunk) = out.next().await {
        lines += chunk
            .expect("chunk")
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
    }
    let el = start.elapsed().as_secs_f64();
    assert_eq!(lines, n);
    (n, el)
}

async fn tokio_postgres_out_binary(job: &Job) -> (u64, f64) {
    use tokio_postgres::binary_copy::BinaryCopyOutStream;
    use tokio_postgres::types::Type;
    let client = crate::tokio_postgres_connect(job).await;
    let n = rows(job);
    client.batch_execute(&source_sql(n)).await.expect("source");
    crate::child::report_start_rss();
    let start = Instant::now();
    let out = client.copy_out(&out_sql(n, true)).await.expect("copy_out");
    let rows = BinaryCopyOutStream::new(out, &[Type::INT8, Type::TEXT, Type::FLOAT8]);
    futures_util::pin_mut!(rows);
    let (mut count, mut sum, mut len) = (0u64, 0i64, 0usize);
    while let Some(row) = rows.next().await {
        let row = row.expect("row");
        count += 1;
        sum += row.get::<i64>(0);
        len += row.get::<&str>(1).len();
        let _: f64 = row.get(2);
    }
    let el = start.elapsed().as_secs_f64();
    assert_eq!(count, n);
    assert_eq!(sum as u64, n * (n + 1) / 2);
    assert!(len > 0);
    (n, el)
}

async fn sqlx_out(job: &Job) -> (u64, f64) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&job.url)
        .await
        .expect("sqlx connect");
    let n = rows(job);
    sqlx::raw_sql(sqlx::AssertSqlSafe(source_sql(n)))
        .execute(&mut conn)
        .await
        .expect("source");
    crate::child::report_start_rss();
    let start = Instant::now();
    let mut lines = 0u64;
    {
        let mut out = conn
            .copy_out_raw(&out_sql(n, false))
            .await
            .expect("copy_out_raw");
        while let Some(chunk) = out.next().await {
            lines += chunk
                .expect("chunk")
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64;
        }
    }
    let el = start.elapsed().as_secs_f64();
    assert_eq!(lines, n);
    (n, el)
}
