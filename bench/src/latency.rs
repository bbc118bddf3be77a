//! `latency`: sequential prepared `SELECT $1::int4` on one connection, in ops/s.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::report::Report;
use crate::{block_on, Settings};

const WORKLOAD: &str = "latency";
const WARMUP: i32 = 200;

/// Runs `op` until `duration` has passed; returns operations per second.
async fn timed<F, Fut>(duration: Duration, mut op: F) -> f64
where
    F: FnMut(i32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..WARMUP {
        op(i).await;
    }
    let start = Instant::now();
    let mut n: u64 = 0;
    loop {
        for _ in 0..64 {
            op(n as i32).await;
            n += 1;
        }
        let el = start.elapsed();
        if el >= duration {
            return n as f64 / el.as_secs_f64();
        }
    }
}

async fn aiopg_once(s: &Settings, runtime: &str) -> f64 {
    let rt: Arc<dyn aiopg::rt::Runtime> = aiopg::rt::runtime_by_name(runtime).expect("runtime");
    let conn = aiopg::ConnectOptions::new(&s.dsn)
        .expect("dsn")
        .runtime(rt)
        .connect()
        .await
        .expect("aiopg connect");
    let stmt = conn.prepare("SELECT $1::int4").await.expect("prepare");
    let ops = timed(s.duration, |i| {
        let (conn, stmt) = (&conn, &stmt);
        async move {
            let rows = conn.query_prepared(stmt, &[&i]).await.expect("query");
            assert_eq!(rows[0].get::<i32>(0), i);
        }
    })
    .await;
    conn.close().await;
    ops
}

async fn tokio_postgres_once(s: &Settings) -> f64 {
    let (client, connection) = tokio_postgres::connect(&s.dsn, tokio_postgres::NoTls)
        .await
        .expect("tokio-postgres connect");
    let task = tokio::spawn(connection);
    let stmt = client.prepare("SELECT $1::int4").await.expect("prepare");
    let ops = timed(s.duration, |i| {
        let (client, stmt) = (&client, &stmt);
        async move {
            let rows = client.query(stmt, &[&i]).await.expect("query");
            assert_eq!(rows[0].get::<_, i32>(0), i);
        }
    })
    .await;
    drop(client);
    let _ = task.await;
    ops
}

async fn sqlx_once(s: &Settings) -> f64 {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&s.url)
        .await
        .expect("sqlx connect");
    // sqlx needs `&mut` per query, so the timing loop is written out here.
    async fn one(conn: &mut sqlx::PgConnection, i: i32) {
        let v: i32 = sqlx::query_scalar("SELECT $1::int4")
            .bind(i)
            .fetch_one(conn)
            .await
            .expect("query");
        assert_eq!(v, i);
    }
    for i in 0..WARMUP {
        one(&mut conn, i).await;
    }
    let start = Instant::now();
    let mut n: u64 = 0;
    let ops = loop {
        for _ in 0..64 {
            one(&mut conn, n as i32).await;
            n += 1;
        }
        let el = start.elapsed();
        if el >= s.duration {
            break n as f64 / el.as_secs_f64();
        }
    };
    let _ = conn.close().await;
    ops
}

/// pgbench `-M prepared -c 1`: libpq's figure for the same statement.
fn pgbench_once(s: &Settings) -> Option<f64> {
    let bindir = s.bindir.as_deref()?;
    let script = std::env::temp_dir().join("aiopg-bench-latency.sql");
    std::fs::write(&script, "\\set x random(1, 1000000)\nSELECT :x::int4;\n").ok()?;
    let get = |k: &str| {
        s.dsn
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")).map(str::to_string))
    };
    let secs = s.duration.as_secs().max(1).to_string();
    let mut cmd = Command::new(format!("{bindir}/pgbench"));
    cmd.args(["-n", "-M", "prepared", "-c", "1", "-T", &secs, "-f"])
        .arg(&script)
        .args([
            "-h",
            &get("host")?,
            "-p",
            &get("port")?,
            "-U",
            &get("user")?,
        ])
        .arg(get("dbname")?);
    let out = cmd.output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next()?.parse().ok())
}

pub fn run(s: &Settings, report: &mut Report) {
    println!(
        "latency: {} rounds of {:?} per contender, alternating",
        s.rounds, s.duration
    );
    for round in 0..s.rounds {
        for &rt in &s.runtimes {
            let v = block_on(rt, aiopg_once(s, rt));
            report.add(WORKLOAD, &format!("aiopg/{rt}"), "ops/s", true, v);
            let v = if rt == "tokio" {
                let v = block_on("tokio", tokio_postgres_once(s));
                report.add(WORKLOAD, "tokio-postgres/tokio", "ops/s", true, v);
                block_on("tokio", sqlx_once(s))
            } else {
                block_on(rt, sqlx_once(s))
            };
            report.add(WORKLOAD, &format!("sqlx/{rt}"), "ops/s", true, v);
        }
        if !s.smoke {
            match pgbench_once(s) {
                Some(v) => report.add(WORKLOAD, "pgbench -M prepared -c 1", "ops/s", true, v),
                None if round == 0 => println!("pgbench not found or failed: skipped"),
                None => {}
            }
        }
        println!("  round {} of {} done", round + 1, s.rounds);
    }
}
