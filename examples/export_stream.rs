//! A streaming export of a large result in bounded memory, two ways: rows decoded one by one
//! from [`Connection::query_stream`](aiopg::Connection::query_stream), and raw CSV bytes from
//! `COPY ... TO STDOUT` through [`copy_out`](aiopg::Connection::copy_out). Neither holds the
//! result: the connection stops reading from the socket while the consumer is behind, so the
//! server waits instead of the client's memory growing.
//!
//! Run it with `cargo xtask demo --all`, or `AIOPG_DSN=... cargo run --example export_stream`.

use futures_util::StreamExt;

mod support;

const ROWS: i32 = 1_000_000;

async fn run() -> aiopg::Result<()> {
    let pool = aiopg::create_pool(&support::dsn()).await?;
    let conn = pool.acquire().await?;

    let sql = "SELECT g, md5(g::text) FROM generate_series(1, $1) g";
    let mut rows = conn.query_stream(sql, &[&ROWS]).await?;
    let (mut n, mut sum, mut longest) = (0u64, 0i64, 0usize);
    while let Some(row) = rows.next().await {
        let row = row?;
        n += 1;
        sum += i64::from(row.get::<i32>(0));
        longest = longest.max(row.get::<&str>(1).len());
    }
    println!("streamed {n} rows (sum of ids {sum}, longest hash {longest} chars)");
    assert_eq!(n, ROWS as u64);
    assert_eq!(sum, i64::from(ROWS) * (i64::from(ROWS) + 1) / 2);

    let copy = format!(
        "COPY (SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g) TO STDOUT (FORMAT csv)"
    );
    let mut out = conn.copy_out(&copy).await?;
    let (mut bytes, mut lines) = (0usize, 0usize);
    while let Some(chunk) = out.next().await {
        let chunk = chunk?;
        bytes += chunk.len();
        lines += chunk.iter().filter(|&&b| b == b'\n').count();
    }
    println!("exported {lines} CSV lines, {bytes} bytes, through COPY");
    assert_eq!(lines, ROWS as usize);

    drop(conn);
    pool.close();
    pool.wait_closed().await
}

fn main() {
    support::run(run());
}
