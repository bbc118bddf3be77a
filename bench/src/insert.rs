//! `insert-batch`: 10,000 single-row INSERTs: aiopg's `executemany` (one pipelined batch),
//! tokio-postgres with the same statements pipelined, sqlx one by one in a transaction
//! (it has no batch).

use std::time::Instant;

use futures_util::future::try_join_all;

use crate::child::{Amount, Job};

pub const ROWS: u64 = 10_000;

fn rows(job: &Job) -> u64 {
    match job.amount {
        Amount::Count(c) => c,
        Amount::Seconds(_) => ROWS,
    }
}

fn table(job: &Job) -> String {
    format!(
        "bench_insert_{}",
        std::process::id() ^ job.runtime.len() as u32
    )
}

pub fn run(job: &Job) -> (u64, f64) {
    let rt = job.runtime.clone();
    match job.contender.as_str() {
        "aiopg" => crate::run!(&rt, job, aiopg),
        "tokio-postgres" => crate::run!(&rt, job, tokio_postgres),
        "sqlx" => crate::run!(&rt, job, sqlx),
        other => panic!("insert: unknown contender {other}"),
    }
}

async fn aiopg(job: &Job) -> (u64, f64) {
    use aiopg::prelude::*;
    let conn = crate::aiopg_connect(job).await;
    let t = table(job);
    conn.batch_execute(&format!(
        "CREATE UNLOGGED TABLE {t} (id int4, name text, score float8)"
    ))
    .await
    .expect("create");
    let n = rows(job);
    let data: Vec<(i32, String, f64)> = (0..n as i32)
        .map(|i| (i, format!("name {i}"), i as f64 / 3.0))
        .collect();
    let params: Vec<[&(dyn aiopg::types::ToSql + Sync); 3]> = data
        .iter()
        .map(|(a, b, c)| [a as _, b as _, c as _])
        .collect();
    let mut cur = conn.cursor().await.expect("cursor");
    let sql = format!("INSERT INTO {t} VALUES ($1, $2, $3)");
    cur.execute(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .expect("warm");
    let start = Instant::now();
    cur.executemany(&sql, params.iter().map(|p| &p[..]))
        .await
        .expect("executemany");
    let el = start.elapsed().as_secs_f64();
    assert_eq!(cur.rowcount() as u64, n);
    conn.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
    (n, el)
}

async fn tokio_postgres(job: &Job) -> (u64, f64) {
    let client = crate::tokio_postgres_connect(job).await;
    let t = table(job);
    client
        .batch_execute(&format!(
            "CREATE UNLOGGED TABLE {t} (id int4, name text, score float8)"
        ))
        .await
        .expect("create");
    let n = rows(job);
    let data: Vec<(i32, String, f64)> = (0..n as i32)
        .map(|i| (i, format!("name {i}"), i as f64 / 3.0))
        .collect();
    let stmt = client
        .prepare(&format!("INSERT INTO {t} VALUES ($1, $2, $3)"))
        .await
        .expect("prepare");
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 3]> = data
        .iter()
        .map(|(a, b, c)| [a as _, b as _, c as _])
        .collect();
    let start = Instant::now();
    let done = try_join_all(params.iter().map(|p| client.execute(&stmt, &p[..])))
        .await
        .expect("insert");
    let el = start.elapsed().as_secs_f64();
    assert_eq!(done.iter().sum::<u64>(), n);
    client
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
    (n, el)
}

async fn sqlx(job: &Job) -> (u64, f64) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&job.url)
        .await
        .expect("sqlx connect");
    let t = table(job);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE UNLOGGED TABLE {t} (id int4, name text, score float8)"
    )))
    .execute(&mut conn)
    .await
    .expect("create");
    let n = rows(job);
    let sql = format!("INSERT INTO {t} VALUES ($1, $2, $3)");
    let start = Instant::now();
    let mut tx = conn.begin().await.expect("begin");
    for i in 0..n as i32 {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(i)
            .bind(format!("name {i}"))
            .bind(i as f64 / 3.0)
            .execute(&mut *tx)
            .await
            .expect("insert");
    }
    tx.commit().await.expect("commit");
    let el = start.elapsed().as_secs_f64();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {t}")))
        .execute(&mut conn)
        .await
        .expect("drop");
    let _ = conn.close().await;
    (n, el)
}
