//! The example of aiopg.sa's documentation, in Rust: create a table, insert with the query
//! builder, select, iterate the rows by column name.
//!
//! Run it with `cargo xtask demo`, or against your own server:
//! `AIOPG_DSN=postgresql://user@localhost/db cargo run --example sa --features sa`.

#[cfg(feature = "sa")]
async fn run() -> aiopg::Result<()> {
    use aiopg::sa::sea_query::{Alias, ColumnDef, Query, Table};

    let dsn = std::env::var("AIOPG_DSN")
        .unwrap_or_else(|_| "dbname=aiopg user=aiopg password=passwd host=127.0.0.1".into());
    let engine = aiopg::sa::create_engine(dsn.as_str()).await?;
    let conn = engine.acquire().await?;

    let tbl = Alias::new("sa_example_tbl");
    conn.execute(&Table::drop().table(tbl.clone()).if_exists().to_owned())
        .await?;
    conn.execute(
        &Table::create()
            .table(tbl.clone())
            .col(
                ColumnDef::new(Alias::new("id"))
                    .integer()
                    .not_null()
                    .auto_increment()
                    .primary_key(),
            )
            .col(ColumnDef::new(Alias::new("val")).string_len(255))
            .to_owned(),
    )
    .await?;
    conn.execute(
        &Query::insert()
            .into_table(tbl.clone())
            .columns([Alias::new("val")])
            .values_panic(["abc".into()])
            .to_owned(),
    )
    .await?;

    let mut result = conn
        .execute(
            &Query::select()
                .columns([Alias::new("id"), Alias::new("val")])
                .from(tbl.clone())
                .to_owned(),
        )
        .await?;
    let mut seen = Vec::new();
    while let Some(row) = result.fetchone().await? {
        println!("{} {}", row.get::<i32>("id"), row.get::<&str>("val"));
        seen.push((row.get::<i32>("id"), row.get::<String>("val")));
    }
    assert_eq!(seen, [(1, "abc".to_owned())]);
    conn.execute(&Table::drop().table(tbl).to_owned()).await?;
    drop(conn);
    engine.close();
    engine.wait_closed().await?;
    Ok(())
}

#[cfg(not(feature = "sa"))]
async fn run() -> aiopg::Result<()> {
    eprintln!("this example needs the `sa` feature: --features sa");
    std::process::exit(2);
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
