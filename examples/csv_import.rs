//! A CSV import through `COPY ... FROM STDIN`: the file is streamed to the server in chunks
//! (here generated on the fly, 100,000 lines), never held whole in memory, and a line the
//! server rejects fails the whole COPY, leaving nothing half-imported.
//!
//! Run it with `cargo xtask demo --all`, or `AIOPG_DSN=... cargo run --example csv_import`.

mod support;

const LINES: usize = 100_000;

async fn run() -> aiopg::Result<()> {
    let pool = aiopg::create_pool(&support::dsn()).await?;
    let conn = pool.acquire().await?;
    conn.batch_execute(
        "DROP TABLE IF EXISTS example_people; \
         CREATE TABLE example_people (id int PRIMARY KEY, name text NOT NULL, email text)",
    )
    .await?;

    let mut copy = conn
        .copy_in("COPY example_people (id, name, email) FROM STDIN (FORMAT csv, HEADER true)")
        .await?;
    copy.write(b"id,name,email\n").await?;
    let mut chunk = String::new();
    for i in 1..=LINES {
        // Quotes and commas inside a field, and an empty (NULL) email now and then.
        let email = if i % 10 == 0 {
            String::new()
        } else {
            format!("p{i}@example.com")
        };
        chunk.push_str(&format!("{i},\"Person {i}, \"\"the {i}th\"\"\",{email}\n"));
        if chunk.len() > 64 * 1024 {
            copy.write(chunk.as_bytes()).await?; // waits while the server catches up
            chunk.clear();
        }
    }
    copy.write(chunk.as_bytes()).await?;
    let copied = copy.finish().await?;
    let nulls: i64 = conn
        .query_scalar(
            "SELECT count(*) FROM example_people WHERE email IS NULL",
            &[],
        )
        .await?;
    let name: String = conn
        .query_scalar("SELECT name FROM example_people WHERE id = 7", &[])
        .await?;
    println!("copied {copied} rows ({nulls} without email); row 7 is {name:?}");
    assert_eq!(copied, LINES as u64);
    assert_eq!(name, "Person 7, \"the 7th\"");

    // A bad line (a duplicate key) fails the COPY as a whole; the connection stays usable.
    let mut copy = conn
        .copy_in("COPY example_people (id, name) FROM STDIN (FORMAT csv)")
        .await?;
    copy.write(b"100001,New\n1,Duplicate\n").await?;
    let err = copy.finish().await.unwrap_err();
    assert!(err.is_unique_violation(), "{err}");
    let total: i64 = conn
        .query_scalar("SELECT count(*) FROM example_people", &[])
        .await?;
    println!("a COPY with a duplicate failed ({err}); still {total} rows");
    assert_eq!(total, LINES as i64);

    conn.batch_execute("DROP TABLE example_people").await?;
    drop(conn);
    pool.close();
    pool.wait_closed().await
}

fn main() {
    support::run(run());
}
