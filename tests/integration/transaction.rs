//! Transactions, savepoints, timeouts that cancel on the server, the statement cache across
//! schema changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use aiopg::{
    Connection, ErrorKind, IsolationLevel, SqlState, Transaction, TransactionOptions,
    TransactionStatus,
};

use crate::support::{connect, options, poll_then_drop, rt_test, spawn, Join};

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

// ---------------------------------------------------------------------------------------
// Transaction and savepoint futures dropped mid-flight, with other callers' requests in flight.

/// Polls `fut` once; `Some` if that finished it.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *fut).poll(cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    })
    .await
}

/// Issues `sql` on `conn` now (so that it is queued ahead of whatever the caller issues next)
/// and leaves it to a task of its own: another caller's statement in flight. Requests issued
/// while it is on the wire are held back, unsent, until its answer is read.
async fn in_flight(conn: &Connection, sql: String) -> Join<aiopg::Result<()>> {
    let c = conn.clone();
    let mut fut = Box::pin(async move { c.batch_execute(&sql).await });
    match poll_once(&mut fut).await {
        Some(res) => Box::pin(async move { res }),
        None => spawn(fut),
    }
}

/// Another caller's short statement, in flight (see [`in_flight`]); its outcome does not matter
/// (in a failed transaction it fails at once).
async fn neighbour(conn: &Connection, rng: &mut rand::rngs::StdRng) -> Join<aiopg::Result<()>> {
    let ms = rng.random_range(1..4);
    in_flight(conn, format!("SELECT pg_sleep(0.00{ms})")).await
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PointEnd {
    Commit,
    Rollback,
    Drop,
}

/// A scoped savepoint's life: open it, insert `v`, maybe fail a statement, end it as `end`
/// says. `inserted`, `committing` and `rolled_back` say how far it got.
async fn point_life(
    tx: &mut Transaction,
    conn: &Connection,
    v: i32,
    fail: bool,
    end: PointEnd,
    flags: &[AtomicBool; 3],
) -> aiopg::Result<()> {
    let [inserted, committing, rolled_back] = flags;
    let mut sp = tx.point().await?;
    conn.execute("INSERT INTO tg VALUES ($1)", &[&v]).await?;
    inserted.store(true, Ordering::SeqCst);
    if fail {
        let _ = conn.batch_execute("SELECT 1/0").await;
    }
    match end {
        PointEnd::Commit => {
            committing.store(true, Ordering::SeqCst);
            sp.commit().await
        }
        PointEnd::Rollback => {
            sp.rollback().await?;
            rolled_back.store(true, Ordering::SeqCst);
            Ok(())
        }
        PointEnd::Drop => Ok(()),
    }
}

async fn present(conn: &Connection, v: i32) -> bool {
    let n: i64 = conn
        .query("SELECT count(*) FROM tg WHERE v = $1", &[&v])
        .await
        .unwrap()[0]
        .get(0);
    n > 0
}

/// What the user was told about a transaction's end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Told {
    Committed,
    RolledBack,
    /// A `COMMIT` that was sent, its answer dropped: either outcome is true.
    Unknown,
}

rt_test! {
    /// The property a user relies on, whatever future is dropped after however many polls
    /// while other callers' statements are in flight: once the transaction guard is gone and
    /// the connection settled, no transaction is left open; the rows the transaction wrote are
    /// there if and only if `commit()` said so (either way for a commit whose future was
    /// dropped once sent); a savepoint's work that was rolled back or never committed is not
    /// there; and a transaction none of whose statements failed never fails to commit.
    async fn transaction_and_savepoint_futures_dropped_mid_flight_never_lie_or_leave_a_transaction_open() {
        let conn = connect().await;
        conn.batch_execute("CREATE TEMP TABLE tg (v int)").await.unwrap();
        let seed = crate::support::seed();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let started = Instant::now();
        let (mut taken_back, mut sent) = (0, 0);
        for i in 0..300i32 {
            let mut log: Vec<String> = Vec::new();
            let ctx = |log: &Vec<String>| format!("seed {seed} (AIOPG_TEST_SEED), iteration {i}, steps {log:?}");
            let marker = i * 10;
            // Must not be there in the end, whatever the transaction did.
            let mut absent: Vec<i32> = Vec::new();
            let mut tx = conn.begin().await.unwrap();
            conn.execute("INSERT INTO tg VALUES ($1)", &[&marker]).await.unwrap();

            // A scoped savepoint, dropped anywhere in its life.
            if rng.random_bool(0.6) {
                let fail = rng.random_bool(0.4);
                let end = match rng.random_range(0..3) {
                    0 if !fail => PointEnd::Commit,
                    0 | 1 => PointEnd::Rollback,
                    _ => PointEnd::Drop,
                };
                let polls = rng.random_range(1..9);
                let nb = if rng.random_bool(0.7) { Some(neighbour(&conn, &mut rng).await) } else { None };
                let flags = [AtomicBool::new(false), AtomicBool::new(false), AtomicBool::new(false)];
                let v = marker + 1;
                let res = poll_then_drop(point_life(&mut tx, &conn, v, fail, end, &flags), polls).await;
                log.push(format!("point(fail={fail}, end={end:?}, polls={polls}, neighbour={}) -> {res:?}", nb.is_some()));
                if let Some(nb) = nb {
                    let _ = nb.await;
                }
                if let Some(Err(e)) = &res {
                    panic!("a savepoint of a healthy transaction failed: {e}; {}", ctx(&log));
                }
                let [inserted, committing, rolled_back] = &flags;
                if inserted.load(Ordering::SeqCst)
                    && (!committing.load(Ordering::SeqCst) || rolled_back.load(Ordering::SeqCst))
                {
                    absent.push(v);
                }
            }

            // The stack of savepoints: one opened, written to, maybe failed, rolled back.
            if rng.random_bool(0.5) {
                let nb = if rng.random_bool(0.7) { Some(neighbour(&conn, &mut rng).await) } else { None };
                let polls = rng.random_range(1..4);
                let res = poll_then_drop(tx.savepoint(), polls).await;
                if let Some(nb) = nb {
                    let _ = nb.await;
                }
                log.push(format!("savepoint(polls={polls}) -> {res:?}"));
                match res {
                    Some(Err(e)) => panic!("SAVEPOINT failed in a healthy transaction: {e}; {}", ctx(&log)),
                    None => {}
                    Some(Ok(())) => {
                        let v = marker + 2;
                        conn.execute("INSERT INTO tg VALUES ($1)", &[&v])
                            .await
                            .unwrap_or_else(|e| panic!("INSERT in a healthy transaction: {e}; {}", ctx(&log)));
                        absent.push(v);
                        let fail = rng.random_bool(0.4);
                        if fail {
                            let e = conn.batch_execute("SELECT 1/0").await.expect_err("division by zero");
                            assert_eq!(e.code(), Some(&SqlState::DIVISION_BY_ZERO), "{e}; {}", ctx(&log));
                        }
                        let nb = if rng.random_bool(0.7) { Some(neighbour(&conn, &mut rng).await) } else { None };
                        let polls = rng.random_range(1..4);
                        let res = poll_then_drop(tx.rollback_savepoint(), polls).await;
                        if let Some(nb) = nb {
                            let _ = nb.await;
                        }
                        log.push(format!("rollback_savepoint(fail={fail}, polls={polls}) -> {res:?}"));
                        match res {
                            Some(Ok(())) => {}
                            Some(Err(e)) => panic!("rollback_savepoint failed: {e}; {}", ctx(&log)),
                            // Dropped: either it was sent (and runs), or it was taken back and the
                            // savepoint is still open. Asking again tells which.
                            None => match tx.rollback_savepoint().await {
                                Ok(()) => log.push("again: Ok (it had been taken back)".into()),
                                Err(e) if e.kind() == ErrorKind::Usage && e.to_string().contains("no savepoint") => {
                                    log.push("again: no savepoint open (it had been sent)".into())
                                }
                                Err(e) => panic!("rollback_savepoint again: {e}; {}", ctx(&log)),
                            },
                        }
                    }
                }
            }

            // The end: commit or rollback, dropped after a few polls.
            let committing = rng.random_bool(0.75);
            let nb = if rng.random_bool(0.8) { Some(neighbour(&conn, &mut rng).await) } else { None };
            let polls = rng.random_range(1..5);
            let res = if committing {
                poll_then_drop(tx.commit(), polls).await
            } else {
                poll_then_drop(tx.rollback(), polls).await
            };
            if let Some(nb) = nb {
                let _ = nb.await;
            }
            let what = if committing { "commit" } else { "rollback" };
            log.push(format!("{what}(polls={polls}) -> {res:?}, active after: {}", tx.is_active()));
            let mut told = match res {
                Some(Ok(())) if committing => Some(Told::Committed),
                Some(Ok(())) => Some(Told::RolledBack),
                Some(Err(e)) => panic!("{what}() of a healthy transaction failed: {e}; {}", ctx(&log)),
                // Taken back unsent: the transaction is still open, for the guard to end.
                None if tx.is_active() => {
                    taken_back += 1;
                    None
                }
                None => {
                    sent += 1;
                    Some(if committing { Told::Unknown } else { Told::RolledBack })
                }
            };
            if told.is_none() {
                // End it again, or leave it to the guard.
                told = Some(match rng.random_range(0..3) {
                    0 => {
                        tx.commit().await.unwrap_or_else(|e| panic!("commit again: {e}; {}", ctx(&log)));
                        log.push("commit again: Ok".into());
                        Told::Committed
                    }
                    1 => {
                        tx.rollback().await.unwrap_or_else(|e| panic!("rollback again: {e}; {}", ctx(&log)));
                        log.push("rollback again: Ok".into());
                        Told::RolledBack
                    }
                    _ => {
                        log.push("guard dropped while active".into());
                        Told::RolledBack
                    }
                });
            }
            drop(tx);
            // Settled: the server reports its transaction state with every answer, and this one
            // comes after everything issued before it.
            conn.batch_execute("SELECT 1").await.unwrap();
            assert_eq!(
                conn.transaction_status(),
                TransactionStatus::Idle,
                "a transaction was left open after its guard was gone; {}",
                ctx(&log)
            );
            let there = present(&conn, marker).await;
            match told.unwrap() {
                Told::Committed => assert!(there, "commit() returned Ok but the row is not there; {}", ctx(&log)),
                Told::RolledBack => assert!(!there, "the transaction was rolled back but its row is there; {}", ctx(&log)),
                Told::Unknown => {}
            }
            for v in absent {
                assert!(!present(&conn, v).await, "row {v}, written under a savepoint rolled back (or never committed), is there; {}", ctx(&log));
            }
            assert!(!conn.is_closed());
        }
        eprintln!(
            "seed {seed}: 300 transactions in {:?}; {taken_back} endings taken back unsent, {sent} dropped once sent",
            started.elapsed()
        );
    }
}

rt_test! {
    /// A scoped savepoint dropped after a failed statement queues its `ROLLBACK TO SAVEPOINT`,
    /// which makes the transaction healthy again; a `commit()` issued before that undo is
    /// answered must report what the server did with the `COMMIT` (it commits), not what the
    /// transaction status said before the undo landed.
    async fn commit_reports_what_the_server_did_when_a_savepoint_undo_is_still_in_flight() {
        let conn = connect().await;
        conn.batch_execute("CREATE TEMP TABLE tu (v int)").await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        conn.execute("INSERT INTO tu VALUES (1)", &[]).await.unwrap();
        {
            let _sp = tx.point().await.unwrap();
            conn.execute("INSERT INTO tu VALUES (2)", &[]).await.unwrap();
            let err = conn.batch_execute("SELECT 1/0").await.expect_err("division by zero");
            assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO), "{err}");
            assert_eq!(conn.transaction_status(), TransactionStatus::InError);
        }
        // The undo is queued ahead of the COMMIT: the server commits.
        tx.commit().await.expect("the savepoint's undo runs before the COMMIT, so the transaction commits");
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
        let rows = conn.query("SELECT v FROM tu ORDER BY v", &[]).await.unwrap();
        let got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(got, [1]);

        // A transaction that did fail: the server answers its COMMIT with ROLLBACK, and
        // commit() says so.
        let mut tx = conn.begin().await.unwrap();
        conn.execute("INSERT INTO tu VALUES (3)", &[]).await.unwrap();
        conn.batch_execute("SELECT 1/0").await.expect_err("division by zero");
        let err = tx.commit().await.expect_err("a failed transaction does not commit");
        assert!(err.to_string().contains("rolled it back"), "{err}");
        assert!(!tx.is_active());
        let err = tx.commit().await.expect_err("ended");
        assert!(err.to_string().contains("rolled back"), "{err}");
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
        assert_eq!(count(&conn, "tu").await, 1);
    }
}

/// Waits (bounded) until the server shows `pid` waiting for advisory lock `key`: only the
/// server can make this true.
async fn wait_until_waiting_for(observer: &Connection, pid: i32, key: i64) {
    for _ in 0..2_000 {
        let rows = observer
            .query(
                "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' \
                 AND objid::int8 = $2 AND NOT granted",
                &[&pid, &key],
            )
            .await
            .unwrap();
        if rows[0].get::<i64>(0) > 0 {
            return;
        }
        crate::support::runtime()
            .sleep(Duration::from_millis(5))
            .await;
    }
    panic!("backend {pid} never waited for advisory lock {key}");
}

/// A table of its own for a test of `with_timeout` and two advisory locks held by `admin`.
async fn timeout_fixture(conn: &Connection, admin: &Connection, name: &str) -> (String, i64, i64) {
    let t = format!(
        "{name}_{}_{}",
        crate::support::runtime_name().replace('-', "_"),
        std::process::id()
    );
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (v int)"
        ))
        .await
        .unwrap();
    let (k1, k2) = (
        i64::from(conn.backend_pid()) * 10 + 1,
        i64::from(conn.backend_pid()) * 10 + 2,
    );
    admin
        .batch_execute(&format!(
            "SELECT pg_advisory_lock({k1}), pg_advisory_lock({k2})"
        ))
        .await
        .unwrap();
    (t, k1, k2)
}

rt_test! {
    /// `with_timeout` around a `commit()` queued behind another caller's statement: a `COMMIT`
    /// still unsent when the time is up is taken back. It did not happen: a `Timeout`, nothing
    /// committed, the connection usable, the transaction still open for its guard to roll back.
    async fn with_timeout_on_a_commit_still_unsent_is_a_timeout_and_leaves_the_guard_active() {
        let conn = connect().await;
        let admin = connect().await;
        let pid = conn.backend_pid();
        let (t, k1, _) = timeout_fixture(&conn, &admin, "tq_unsent").await;
        let mut tx = conn.begin().await.unwrap();
        conn.execute(&format!("INSERT INTO {t} VALUES (1)"), &[]).await.unwrap();
        let blocker = in_flight(&conn, format!("SELECT pg_advisory_lock({k1})")).await;
        wait_until_waiting_for(&admin, pid, k1).await;
        let err = conn
            .with_timeout(Some(Duration::from_millis(200)), tx.commit())
            .await
            .expect_err("the COMMIT waits behind a blocked statement");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(!conn.is_closed(), "{err}");
        assert!(tx.is_active(), "a COMMIT taken back unsent leaves the transaction open, for its guard to end: {err}");
        assert!(err.to_string().contains("never runs"), "{err}");
        drop(tx);
        admin.batch_execute("SELECT pg_advisory_unlock_all()").await.unwrap();
        blocker.await.unwrap();
        conn.batch_execute("SELECT 1").await.unwrap();
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle, "the guard rolled it back");
        let n: i64 = admin.query(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap()[0].get(0);
        assert_eq!(n, 0, "nothing was committed");
        admin.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    /// `with_timeout` around a `commit()` whose `COMMIT` was written behind another caller's
    /// statement still running when the time is up: its outcome is unknown, and
    /// `CommitUnknown` means the connection is closed, so it must be.
    async fn with_timeout_on_a_commit_sent_behind_a_running_statement_closes_the_connection() {
        let conn = connect().await;
        let admin = connect().await;
        let pid = conn.backend_pid();
        let (t, k1, k2) = timeout_fixture(&conn, &admin, "tq_sent").await;
        let mut tx = conn.begin().await.unwrap();
        conn.execute(&format!("INSERT INTO {t} VALUES (2)"), &[]).await.unwrap();
        let first = in_flight(&conn, format!("SELECT pg_advisory_lock({k1})")).await;
        wait_until_waiting_for(&admin, pid, k1).await;
        // Held back behind the first, as the COMMIT is behind both.
        let second = in_flight(&conn, format!("SELECT pg_advisory_lock({k2})")).await;
        let c = conn.clone();
        let mut commit = Box::pin(async move {
            let res = c.with_timeout(Some(Duration::from_millis(1500)), tx.commit()).await;
            (tx, res)
        });
        assert!(poll_once(&mut commit).await.is_none(), "the COMMIT waits");
        let commit = spawn(commit);
        // The first statement ends: the second and the COMMIT go out together, and the second
        // blocks with the COMMIT written behind it.
        admin.batch_execute(&format!("SELECT pg_advisory_unlock({k1})")).await.unwrap();
        wait_until_waiting_for(&admin, pid, k2).await;
        let (tx, res) = commit.await;
        let err = res.expect_err("the COMMIT waits behind a blocked statement");
        assert_eq!(err.kind(), ErrorKind::CommitUnknown, "{err}");
        assert!(conn.is_closed(), "CommitUnknown says the connection is closed, so it must be: {err}");
        assert!(!tx.is_active());
        drop(tx);
        admin.batch_execute("SELECT pg_advisory_unlock_all()").await.unwrap();
        first.await.unwrap();
        let second = second.await;
        assert!(second.as_ref().is_err_and(|e| e.is_closed()), "{second:?}");
        // Whether the server ran the COMMIT is unknown, as the error says; the table is
        // dropped once the backend, which may still be finishing it, lets go of it.
        admin.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}
