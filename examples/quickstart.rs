//! The quickstart from aiopg's documentation, in Rust.
//!
//! Run it with `cargo xtask demo` (which starts a throwaway PostgreSQL), or against your own
//! server: `AIOPG_DSN=postgresql://user@localhost/db cargo run --example quickstart`.
//! The runtime comes from the enabled feature: `--no-default-features --features smol`.

use aiopg::prelude::*;

async fn run() -> aiopg::Result<()> {
    let dsn = std::env::var("AIOPG_DSN")
        .unwrap_or_else(|_| "dbname=aiopg user=aiopg password=passwd host=127.0.0.1".into());
    let pool = aiopg::create_pool(&dsn).await?;
    let conn = pool.acquire().await?; // returns to the pool when dropped
    let mut cur = conn.cursor().await?;
    cur.execute("SELECT 1", &[]).await?;
    let mut ret = Vec::new();
    while let Some(row) = cur.next().await? {
        ret.push((row.get::<i32>(0),));
    }
    assert_eq!(ret, [(1,)]);
    println!(
        "{ret:?} on {} (server {})",
        conn.runtime().name(),
        conn.server_version()
    );
    drop(cur);
    drop(conn);
    pool.close();
    pool.wait_closed().await?;
    Ok(())
}

#[cfg(feature = "tokio")]
#[tokio::main]
async fn main() -> aiopg::Result<()> {
    run().await
}

#[cfg(all(feature = "smol", not(feature = "tokio")))]
fn main() -> aiopg::Result<()> {
    smol::block_on(run())
}

#[cfg(all(feature = "async-std", not(any(feature = "tokio", feature = "smol"))))]
#[async_std::main]
async fn main() -> aiopg::Result<()> {
    run().await
}

#[cfg(not(any(feature = "tokio", feature = "smol", feature = "async-std")))]
fn main() {
    eprintln!("enable one of the features tokio, smol or async-std");
    std::process::exit(2);
}
