//! Transactions, savepoints, timeouts that cancel on the server, the statement cache across
//! schema changes.

use std::time::{Duration, Instant};

use aiopg::{IsolationLevel, SqlState, TransactionOptions, TransactionStatus};

use crate::support::{connect, options, poll_then_drop, rt_test};

async fn count(conn: &aiopg::Connection, table: &str) -> i64 {
    conn.query(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()[0]
        .get(0)
}

rt_test! {
    async fn commit_and_rollback_really_work() {
        let conn = connect().await;
        conn.batch_execute("CREATE TEMP TABLE tx (a int)").await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        assert!(tx.is_active());
        assert_eq!(conn.transaction_status(), TransactionStatus::InTransaction);
        conn.execute("INSERT INTO tx VALUES (1)", &[]).await.unwrap();
        tx.commit().await.unwrap();
        assert!(!tx.is_active());
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);

        let mut tx = conn.begin().await.unwrap();
        conn.execute("INSERT INTO tx VALUES (2)", &[]).await.unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(count(&conn, "tx").await, 1);

        // Misuse is an error saying what was wrong.
        let err = tx.commit().await.expect_err("commit after rollback");
        assert!(err.to_string().contains("rolled back"), "{err}");
        let err = tx.rollback().await.expect_err("rollback twice");
        assert!(err.to_string().contains("rolled back"), "{err}");
        let mut fresh = conn.transaction(TransactionOptions::default());
        let err = fresh.commit().await.expect_err("commit before begin");
        assert!(err.to_string().contains("begin()"), "{err}");
        fresh.begin().await.unwrap();
        let err = fresh.begin().await.expect_err("begin twice");
        assert!(err.to_string().contains("already active"), "{err}");
        fresh.commit().await.unwrap();
        let err = fresh.commit().await.expect_err("commit twice");
        assert!(err.to_string().contains("committed"), "{err}");
    }
}

rt_test! {
    async fn begin_renders_options_and_read_only_rejects_writes() {
        let conn = connect().await;
        // Temporary tables stay writable in read-only transactions: use a real one.
        let table = format!("aiopg_ro_{}", conn.backend_pid());
        conn.batch_execute(&format!("CREATE TABLE {table} (a int)")).await.unwrap();
        let opts = TransactionOptions {
            isolation_level: IsolationLevel::Serializable,
            read_only: true,
            deferrable: true,
        };
        let mut tx = conn.begin_with(opts).await.unwrap();
        let rows = conn.query("SELECT current_setting('transaction_isolation')", &[]).await.unwrap();
        assert_eq!(rows[0].get::<&str>(0), "serializable");
        let err = conn.execute(&format!("INSERT INTO {table} VALUES (1)"), &[]).await.expect_err("read only");
        assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
        tx.rollback().await.unwrap();
        conn.batch_execute(&format!("DROP TABLE {table}")).await.unwrap();
        let mut tx = conn.begin_with(TransactionOptions { isolation_level: IsolationLevel::RepeatableRead, ..Default::default() }).await.unwrap();
        let rows = conn.query("SELECT current_setting('transaction_isolation')", &[]).await.unwrap();
        assert_eq!(rows[0].get::<&str>(0), "repeatable read");
        tx.commit().await.unwrap();
    }
}

rt_test! {
    async fn savepoints_nest_and_roll_back_alone() {
        let conn = connect().await;
        conn.batch_execute("CREATE TEMP TABLE sp (a int)").await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        conn.execute("INSERT INTO sp VALUES (1)", &[]).await.unwrap();
        {
            let mut outer = tx.point().await.unwrap();
            conn.execute("INSERT INTO sp VALUES (2)", &[]).await.unwrap();
            {
                let mut inner = outer.point().await.unwrap();
                conn.execute("INSERT INTO sp VALUES (3)", &[]).await.unwrap();
                inner.rollback().await.unwrap();
                let err = inner.commit().await.expect_err("already rolled back");
                assert!(err.to_string().contains("after it was committed or rolled back"), "{err}");
            }
            outer.commit().await.unwrap();
        }
        // The aiopg-style stack of savepoints.
        tx.savepoint().await.unwrap();
        conn.execute("INSERT INTO sp VALUES (4)", &[]).await.unwrap();
        tx.savepoint().await.unwrap();
        assert!(conn.execute("INSERT INTO sp VALUES ('x')", &[]).await.is_err());
        tx.rollback_savepoint().await.unwrap();
        tx.release_savepoint().await.unwrap();
        let err = tx.release_savepoint().await.expect_err("none open");
        assert!(err.to_string().contains("no savepoint"), "{err}");
        tx.commit().await.unwrap();
        let rows = conn.query("SELECT a FROM sp ORDER BY a", &[]).await.unwrap();
        let got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(got, [1, 2, 4]);
    }
}

rt_test! {
    async fn dropped_transaction_rolls_back_without_blocking() {
        let conn = connect().await;
        conn.batch_execute("CREATE TEMP TABLE dr (a int)").await.unwrap();
        {
            let _tx = conn.begin().await.unwrap();
            conn.execute("INSERT INTO dr VALUES (1)", &[]).await.unwrap();
        }
        // The ROLLBACK goes out before the next statement.
        assert_eq!(count(&conn, "dr").await, 0);
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
        // A dropped savepoint undoes its own work only.
        let mut tx = conn.begin().await.unwrap();
        conn.execute("INSERT INTO dr VALUES (1)", &[]).await.unwrap();
        {
            let _sp = tx.point().await.unwrap();
            conn.execute("INSERT INTO dr VALUES (2)", &[]).await.unwrap();
        }
        tx.commit().await.unwrap();
        assert_eq!(count(&conn, "dr").await, 1);
    }
}

rt_test! {
    async fn a_dropped_transaction_is_rolled_back_even_if_the_connection_then_idles() {
        let conn = connect().await;
        let watcher = connect().await;
        let pid = conn.backend_pid();
        {
            let _tx = conn.begin().await.unwrap();
        }
        // Nobody uses `conn` again: the background clean-up must still end the transaction.
        loop {
            let rows = watcher
                .query("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await
                .unwrap();
            if rows[0].get::<Option<&str>>(0) == Some("idle") {
                break;
            }
        }
    }
}

rt_test! {
    async fn begin_futures_dropped_mid_flight_never_leave_a_transaction_open() {
        let conn = connect().await;
        let mut rng_state = 0x1234_5678u64;
        for _ in 0..1000 {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            let polls = (rng_state % 4) as usize;
            let c = conn.clone();
            if let Some(tx) = poll_then_drop(async move { c.begin().await }, polls).await {
                drop(tx.unwrap());
            }
            // The server reports its transaction state with every answer.
            let rows = conn.query("SELECT 1::int4", &[]).await.unwrap();
            assert_eq!(rows[0].get::<i32>(0), 1);
            assert_eq!(conn.transaction_status(), TransactionStatus::Idle, "a transaction was left open");
        }
    }
}

rt_test! {
    async fn timeout_cancels_on_the_server_and_keeps_the_connection() {
        let conn = connect().await;
        let watcher = connect().await;
        let started = Instant::now();
        let err = conn
            .with_timeout(Some(Duration::from_millis(200)), conn.query("SELECT pg_sleep(10)", &[]))
            .await
            .expect_err("times out");
        let took = started.elapsed();
        assert!(err.is_timeout(), "{err}");
        assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
        let rows = watcher
            .query("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&conn.backend_pid()])
            .await
            .unwrap();
        assert_eq!(rows[0].get::<&str>(0), "idle");
        let rows = conn.query("SELECT 5::int4", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 5);
        // A statement that finishes in time is unaffected; None disables the timeout.
        let rows = conn.with_timeout(Some(Duration::from_secs(5)), conn.query("SELECT 6::int4", &[])).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 6);
        let rows = conn.with_timeout(None, conn.query("SELECT 7::int4", &[])).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 7);
        assert_eq!(conn.timeout(), Some(aiopg::DEFAULT_TIMEOUT));
    }
}

rt_test! {
    async fn cached_statement_survives_a_schema_change() {
        let conn = connect().await;
        conn.batch_execute("CREATE TEMP TABLE sc (a int)").await.unwrap();
        conn.execute("INSERT INTO sc VALUES (1)", &[]).await.unwrap();
        let rows = conn.query("SELECT * FROM sc", &[]).await.unwrap();
        assert_eq!(rows[0].len(), 1);
        conn.batch_execute("ALTER TABLE sc ADD COLUMN b text DEFAULT 'x'").await.unwrap();
        let rows = conn.query("SELECT * FROM sc", &[]).await.unwrap();
        assert_eq!(rows[0].len(), 2);
        assert_eq!(rows[0].get::<&str>("b"), "x");
        // Inside a transaction the server has already aborted it: the error comes back as is.
        conn.batch_execute("ALTER TABLE sc ADD COLUMN c int").await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let err = conn.query("SELECT * FROM sc", &[]).await.expect_err("stale inside a transaction");
        assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{err}");
        tx.rollback().await.unwrap();
        let rows = conn.query("SELECT * FROM sc", &[]).await.unwrap();
        assert_eq!(rows[0].len(), 3);
    }
}

rt_test! {
    async fn execute_many_is_one_atomic_batch() {
        let conn = connect().await;
        conn.batch_execute("CREATE TEMP TABLE em (a int PRIMARY KEY)").await.unwrap();
        let stmt = conn.prepare("INSERT INTO em VALUES ($1)").await.unwrap();
        let values: Vec<i32> = (0..500).collect();
        let params: Vec<[&(dyn aiopg::types::ToSql + Sync); 1]> = values.iter().map(|v| [v as _]).collect();
        let n = conn.execute_many(&stmt, params.iter().map(|p| &p[..])).await.unwrap();
        assert_eq!(n, 500);
        assert_eq!(count(&conn, "em").await, 500);
        // A duplicate key part-way fails the whole batch.
        let dup: Vec<i32> = vec![1000, 1001, 5, 1002];
        let params: Vec<[&(dyn aiopg::types::ToSql + Sync); 1]> = dup.iter().map(|v| [v as _]).collect();
        let err = conn.execute_many(&stmt, params.iter().map(|p| &p[..])).await.expect_err("dup");
        assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
        assert_eq!(count(&conn, "em").await, 500);
        let _ = options;
    }
}
