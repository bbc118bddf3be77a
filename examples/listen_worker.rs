//! A LISTEN/NOTIFY worker that survives losing its connection.
//!
//! The worker listens on `jobs` through a [`aiopg::Listener`] (a dedicated connection, never
//! a pooled one). Halfway, its server process is terminated, as a server restart or a
//! failover would: the listener reconnects with backoff, listens again, and says
//! `Reconnected { missed_possible: true }`, the signal to resynchronise from the table (here,
//! to re-read the jobs not yet done) since notifications sent meanwhile are gone.
//!
//! Without a pool, `aiopg::Listener::connect(options)` opens the same kind of connection.
//!
//! Run it with `cargo xtask demo --all`, or `AIOPG_DSN=... cargo run --example listen_worker`.

use std::time::Duration;

use aiopg::ListenerEvent;

mod support;

async fn run() -> aiopg::Result<()> {
    let dsn = support::dsn();
    let pool = aiopg::create_pool(&dsn).await?;
    let admin = pool.acquire().await?;
    admin
        .batch_execute(
            "DROP TABLE IF EXISTS example_jobs; \
             CREATE TABLE example_jobs (id int PRIMARY KEY, done bool NOT NULL DEFAULT false)",
        )
        .await?;

    let mut listener = pool.listener().await?;
    listener.reconnect_backoff(Duration::from_millis(50), Duration::from_secs(2));
    listener.listen("jobs").await?;
    let worker_pid = listener.backend_pid();

    // Three jobs, each announced by a NOTIFY in the transaction that makes it.
    for id in 1..=3 {
        let mut tx = admin.begin().await?;
        admin
            .execute("INSERT INTO example_jobs (id) VALUES ($1)", &[&id])
            .await?;
        admin
            .execute("SELECT pg_notify('jobs', $1::int::text)", &[&id])
            .await?;
        tx.commit().await?;
    }
    let mut done = Vec::new();
    while done.len() < 3 {
        match listener.recv().await? {
            ListenerEvent::Notification(n) => done.push(n.payload.parse::<i32>().unwrap()),
            other => panic!("no fault yet, but {other:?}"),
        }
    }
    for id in &done {
        admin
            .execute("UPDATE example_jobs SET done = true WHERE id = $1", &[id])
            .await?;
    }
    println!("worker (backend {worker_pid}) did jobs {done:?}");

    // The worker's connection goes away; a job is made while nobody listens.
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&worker_pid])
        .await?;
    admin
        .execute("INSERT INTO example_jobs (id) VALUES (4)", &[])
        .await?;
    admin.execute("SELECT pg_notify('jobs', '4')", &[]).await?;
    loop {
        match listener.recv().await? {
            ListenerEvent::Reconnected { missed_possible } => {
                assert!(missed_possible);
                // Resynchronise: what was missed is in the table.
                let missed: Vec<i32> = admin
                    .query(
                        "SELECT id FROM example_jobs WHERE NOT done ORDER BY id",
                        &[],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                println!(
                    "reconnected (backend {}); jobs missed meanwhile: {missed:?}",
                    listener.backend_pid()
                );
                assert_eq!(missed, [4]);
                break;
            }
            // A notification that arrived before the connection was lost.
            ListenerEvent::Notification(n) => println!("late notification {}", n.payload),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Listening again: new notifications arrive.
    admin.execute("SELECT pg_notify('jobs', '5')", &[]).await?;
    match listener.recv().await? {
        ListenerEvent::Notification(n) => {
            assert_eq!(n.payload, "5");
            println!("after the reconnect: job {}", n.payload);
        }
        other => panic!("unexpected {other:?}"),
    }
    listener.close().await;
    admin.batch_execute("DROP TABLE example_jobs").await?;
    drop(admin);
    pool.close();
    pool.wait_closed().await
}

fn main() {
    support::run(run());
}
