//! Through PgBouncer in transaction pooling mode (Debian's 1.18, without prepared-statement
//! support), started by `cargo xtask test-all-runtimes`: a pooled workload of queries and
//! short transactions with no error, and clear errors for what the pooler cannot carry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aiopg::{ConnectOptions, ErrorKind, Pool};

use crate::support::{options, rt_test, spawn};

fn bouncer(test: &str) -> Option<ConnectOptions> {
    let port = std::env::var("AIOPG_TEST_PGBOUNCER_PORT").ok();
    let Some(port) = port else {
        eprintln!("{test}: needs the PgBouncer of `cargo xtask test-all-runtimes`");
        return None;
    };
    Some(
        options(&format!(
            "host=127.0.0.1 port={port} user=aiopg_trust dbname=aiopg_test sslmode=disable \
             connect_timeout=10"
        ))
        .transaction_pooling(true),
    )
}

rt_test! {
    async fn fifty_thousand_statements_through_transaction_pooling_without_an_error() {
        let Some(opts) = bouncer("pgbouncer workload") else { return };
        let pool = Pool::builder(opts)
            .min_size(8)
            .max_size(8)
            .runtime(crate::support::runtime())
            .build()
            .await
            .expect("pool through PgBouncer");
        {
            let c = pool.acquire().await.expect("acquire");
            c.execute("CREATE TABLE IF NOT EXISTS bouncer_probe (t int, v int)", &[])
                .await
                .expect("create");
        }
        const TASKS: u64 = 16;
        const STATEMENTS: u64 = 50_000;
        let done = Arc::new(AtomicU64::new(0));
        let mut joins = Vec::new();
        for t in 0..TASKS {
            let (pool, done) = (pool.clone(), done.clone());
            joins.push(spawn(async move {
                let mut i = 0u64;
                while done.load(Ordering::Relaxed) < STATEMENTS {
                    let conn = pool.acquire().await.expect("acquire");
                    if i % 5 == 4 {
                        // A short transaction: BEGIN, INSERT, SELECT, COMMIT (4 statements).
                        let mut tx = conn.begin().await.expect("begin");
                        conn.execute("INSERT INTO bouncer_probe VALUES ($1, $2)", &[&(t as i32), &(i as i32)])
                            .await
                            .expect("insert");
                        let rows = conn
                            .query("SELECT count(*)::int8 FROM bouncer_probe WHERE t = $1", &[&(t as i32)])
                            .await
                            .expect("select in the transaction");
                        assert!(rows[0].get::<i64>(0) >= 1);
                        tx.commit().await.expect("commit");
                        done.fetch_add(4, Ordering::Relaxed);
                    } else {
                        let v = (t * 1_000_000 + i) as i64;
                        let rows = conn.query("SELECT $1::int8 + 1", &[&v]).await.expect("query");
                        assert_eq!(rows[0].get::<i64>(0), v + 1, "another task's answer");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            }));
        }
        for j in joins {
            j.await;
        }
        assert!(done.load(Ordering::Relaxed) >= STATEMENTS);
        {
            let c = pool.acquire().await.expect("acquire");
            c.execute("DROP TABLE bouncer_probe", &[]).await.expect("drop");
        }
        pool.close();
    }
}

rt_test! {
    async fn what_transaction_pooling_cannot_carry_is_a_clear_error() {
        let Some(opts) = bouncer("pgbouncer errors") else { return };
        let conn = opts.connect().await.expect("connect through PgBouncer");
        for sql in [
            "LISTEN jobs",
            "SET search_path = public",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "PREPARE p AS SELECT 1",
        ] {
            let e = conn.simple_query(sql).await.expect_err(sql);
            assert_eq!(e.kind(), ErrorKind::Usage, "{sql}: {e}");
            assert!(e.to_string().contains("transaction pooling"), "{sql}: {e}");
            let e = conn.execute(sql, &[]).await.expect_err(sql);
            assert_eq!(e.kind(), ErrorKind::Usage, "{sql}: {e}");
        }
        // What does work: SET LOCAL in a transaction, and ordinary statements.
        let mut tx = conn.begin().await.expect("begin");
        conn.execute("SET LOCAL work_mem = '8MB'", &[]).await.expect("SET LOCAL");
        tx.commit().await.expect("commit");
        let rows = conn.query("SELECT 41 + 1", &[]).await.expect("query");
        assert_eq!(rows[0].get::<i32>(0), 42);
        conn.close().await;
    }
}
