//! Whole transactions in one round trip (`Pipeline::transaction`), and retrying
//! serialization failures (`Connection::transact`, `Pipeline::transaction_with_retry`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aiopg::{
    ErrorKind, IsolationLevel, RetryPolicy, SqlState, TransactionOptions, TransactionOutcome,
    TransactionStatus, TransactionStep,
};

use crate::support::{connect, rt_test, spawn, wait_until_blocked};

/// A fresh table `ptx_<name>_<pid>` with `columns`.
async fn table(conn: &aiopg::Connection, name: &str, columns: &str) -> String {
    let t = format!("ptx_{name}_{}", std::process::id());
    conn.batch_execute(&format!(
        "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} ({columns})"
    ))
    .await
    .unwrap();
    t
}

async fn count(conn: &aiopg::Connection, t: &str) -> i64 {
    conn.query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Fast retries, so that the tests spend their time on the server.
fn quick(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

rt_test! {
    async fn a_pipelined_transaction_commits_every_statement_with_its_own_result() {
        let conn = connect().await;
        let t = table(&conn, "commit", "id int4 PRIMARY KEY, v text").await;
        let insert = format!("INSERT INTO {t} VALUES ($1, $2)");
        let update = format!("UPDATE {t} SET v = v || '!' WHERE id = $1");
        let select = format!("SELECT id, v FROM {t} ORDER BY id");
        let (a, b, c) = (1i32, 2i32, 3i32);
        let mut p = conn.pipeline();
        p.query(&insert, &[&a, &"a"])
            .query(&insert, &[&b, &"b"])
            .query(&update, &[&a])
            .query(&insert, &[&c, &"c"])
            .query(&select, &[]);
        let results = p
            .transaction(TransactionOptions::default())
            .await
            .unwrap()
            .committed()
            .unwrap();
        assert_eq!(results.len(), 5);
        assert_eq!(results[0].tag.as_deref(), Some("INSERT 0 1"));
        assert_eq!(results[2].rows_affected, Some(1));
        let seen: Vec<(i32, String)> =
            results[4].rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            seen,
            vec![(1, "a!".to_owned()), (2, "b".to_owned()), (3, "c".to_owned())]
        );
        // Committed: another connection sees every row, and this one is out of the block.
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
        let other = connect().await;
        assert_eq!(count(&other, &t).await, 3);
        conn.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn an_error_at_statement_3_of_5_leaves_no_row_and_says_which_failed() {
        let conn = connect().await;
        let t = table(&conn, "fail", "id int4 PRIMARY KEY").await;
        let insert = format!("INSERT INTO {t} VALUES ($1)");
        let (one, two, three) = (1i32, 2i32, 3i32);
        let mut p = conn.pipeline();
        p.query(&insert, &[&one])
            .query(&insert, &[&two])
            .query(&insert, &[&one]) // duplicate key: statement 3 of 5 (index 2)
            .query(&insert, &[&three])
            .query("SELECT 1", &[]);
        match p.transaction(TransactionOptions::default()).await.unwrap() {
            TransactionOutcome::RolledBack {
                step,
                error,
                results,
            } => {
                assert_eq!(step, TransactionStep::Statement(2));
                assert_eq!(error.code(), Some(&SqlState::UNIQUE_VIOLATION));
                // The two before it ran (and were rolled back with it).
                assert_eq!(results.len(), 2);
                assert_eq!(results[1].tag.as_deref(), Some("INSERT 0 1"));
            }
            other => panic!("expected a rollback, got {other:?}"),
        }
        assert_eq!(count(&conn, &t).await, 0, "statements 1-2 left rows behind");
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);

        // `committed()` turns the rollback into an error naming the statement, code kept.
        let err = p
            .transaction(TransactionOptions::default())
            .await
            .unwrap()
            .committed()
            .unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
        assert!(err.to_string().contains("statement 2 failed"), "{err}");
        assert!(err.to_string().contains("rolled back"), "{err}");

        // The connection is in step: the same statements without the duplicate commit.
        let mut p = conn.pipeline();
        p.query(&insert, &[&one]).query(&insert, &[&two]);
        assert!(p.transaction(TransactionOptions::default()).await.unwrap().is_committed());
        assert_eq!(count(&conn, &t).await, 2);
        conn.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn transaction_options_apply_inside_the_pipeline() {
        let conn = connect().await;
        let show = |p: &mut aiopg::Pipeline<'_, '_>| {
            p.query("SELECT current_setting('transaction_isolation')", &[])
                .query("SELECT current_setting('transaction_read_only')", &[])
                .query("SELECT current_setting('transaction_deferrable')", &[]);
        };
        let read = |r: &[aiopg::QueryResult]| -> Vec<String> {
            r.iter().map(|q| q.rows[0].get::<String>(0)).collect()
        };
        for (options, want) in [
            (
                TransactionOptions {
                    isolation_level: IsolationLevel::Serializable,
                    read_only: true,
                    deferrable: true,
                },
                ["serializable", "on", "on"],
            ),
            (
                TransactionOptions {
                    isolation_level: IsolationLevel::RepeatableRead,
                    ..TransactionOptions::default()
                },
                ["repeatable read", "off", "off"],
            ),
            (TransactionOptions::default(), ["read committed", "off", "off"]),
        ] {
            let mut p = conn.pipeline();
            show(&mut p);
            let r = p.transaction(options).await.unwrap().committed().unwrap();
            assert_eq!(read(&r), want, "{options:?}");
        }
        // SHOW sees the same level.
        let mut p = conn.pipeline();
        p.query("SHOW transaction_isolation", &[]);
        let r = p
            .transaction(TransactionOptions {
                isolation_level: IsolationLevel::RepeatableRead,
                ..TransactionOptions::default()
            })
            .await
            .unwrap()
            .committed()
            .unwrap();
        assert_eq!(r[0].rows[0].get::<String>(0), "repeatable read");

        // Read only is enforced: the write is the failing statement.
        let t = table(&conn, "ro", "id int4").await;
        let write = format!("INSERT INTO {t} VALUES (1)");
        let mut p = conn.pipeline();
        p.query("SELECT 1", &[]).query(&write, &[]);
        let read_only = TransactionOptions {
            read_only: true,
            ..TransactionOptions::default()
        };
        match p.transaction(read_only).await.unwrap() {
            TransactionOutcome::RolledBack { step, error, .. } => {
                assert_eq!(step, TransactionStep::Statement(1));
                assert_eq!(error.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
            }
            other => panic!("a write in a read-only transaction: {other:?}"),
        }
        assert_eq!(count(&conn, &t).await, 0);
        conn.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn a_commit_refused_by_the_server_is_the_commit_step() {
        let conn = connect().await;
        let t = table(&conn, "deferred", "id int4 UNIQUE DEFERRABLE INITIALLY DEFERRED").await;
        let insert = format!("INSERT INTO {t} VALUES ($1)");
        let one = 1i32;
        let mut p = conn.pipeline();
        // Both inserts succeed; the deferred check fails at COMMIT.
        p.query(&insert, &[&one]).query(&insert, &[&one]);
        match p.transaction(TransactionOptions::default()).await.unwrap() {
            TransactionOutcome::RolledBack {
                step,
                error,
                results,
            } => {
                assert_eq!(step, TransactionStep::Commit);
                assert_eq!(error.code(), Some(&SqlState::UNIQUE_VIOLATION));
                assert_eq!(results.len(), 2);
            }
            other => panic!("the deferred check did not fail the commit: {other:?}"),
        }
        assert_eq!(count(&conn, &t).await, 0);
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
        conn.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn misuse_is_refused_before_anything_is_sent() {
        let conn = connect().await;
        let t = table(&conn, "misuse", "id int4").await;
        let insert = format!("INSERT INTO {t} VALUES (1)");
        for control in ["COMMIT", " /* c */ rollback", "BEGIN", "END", "PREPARE TRANSACTION 'x'"] {
            let mut p = conn.pipeline();
            p.query(&insert, &[]).query(control, &[]);
            let err = p.transaction(TransactionOptions::default()).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Usage, "{control}: {err}");
            assert!(err.to_string().contains("statement 1"), "{err}");
        }
        let copy = format!("COPY {t} FROM STDIN");
        let mut p = conn.pipeline();
        p.query(&copy, &[]);
        let err = p.transaction(TransactionOptions::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage, "{err}");

        // A parameter that cannot be encoded: nothing runs.
        let bad = "not a number";
        let mut p = conn.pipeline();
        p.query(&insert, &[]).query("SELECT $1::int4", &[&bad]);
        let err = p.transaction(TransactionOptions::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Encode, "{err}");

        // Inside a transaction block: refused, and the block is untouched.
        conn.batch_execute("BEGIN").await.unwrap();
        let mut p = conn.pipeline();
        p.query(&insert, &[]);
        let err = p.transaction(TransactionOptions::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
        assert_eq!(conn.transaction_status(), TransactionStatus::InTransaction);
        conn.batch_execute("ROLLBACK").await.unwrap();

        assert_eq!(count(&conn, &t).await, 0);
        conn.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn callers_sharing_the_connection_never_land_inside_a_pipelined_transaction() {
        let conn = connect().await;
        let t = table(&conn, "shared", "task int4, n int4, k int4").await;
        let mut tasks = Vec::new();
        for task in 0..6i32 {
            let (c, t) = (conn.clone(), t.clone());
            tasks.push(spawn(async move {
                let insert = format!("INSERT INTO {t} VALUES ($1, $2, $3)");
                let mut committed = 0i64;
                for n in 0..40i32 {
                    if task % 2 == 0 {
                        // A lone statement between the others' transactions: outside any
                        // block, so no transaction id has been assigned to its transaction
                        // (inside one of theirs, after an INSERT, there would be one).
                        let row = c
                            .query_one(
                                "SELECT $1::int4, pg_current_xact_id_if_assigned() IS NULL",
                                &[&n],
                            )
                            .await
                            .unwrap();
                        assert_eq!(row.get::<i32>(0), n);
                        assert!(row.get::<bool>(1), "a lone query ran inside a transaction");
                        continue;
                    }
                    // Every third transaction fails at its last statement.
                    let fail = n % 3 == 0;
                    let (k0, k1, k2) = (0i32, 1i32, if fail { -1 } else { 2 });
                    let mut p = c.pipeline();
                    p.query(&insert, &[&task, &n, &k0])
                        .query(&insert, &[&task, &n, &k1])
                        .query("SELECT 1 / ($1::int4 + 1)", &[&k2]);
                    match p.transaction(TransactionOptions::default()).await.unwrap() {
                        TransactionOutcome::Committed(r) => {
                            assert!(!fail);
                            assert_eq!(r.len(), 3);
                            committed += 2;
                        }
                        TransactionOutcome::RolledBack { step, error, .. } => {
                            assert!(fail, "{error}");
                            assert_eq!(step, TransactionStep::Statement(2));
                            assert_eq!(error.code(), Some(&SqlState::DIVISION_BY_ZERO));
                        }
                    }
                }
                committed
            }));
        }
        let mut want = 0;
        for task in tasks {
            want += task.await;
        }
        assert_eq!(count(&conn, &t).await, want);
        // Rows only ever come in whole transactions.
        let broken: i64 = conn
            .query_one(
                &format!(
                    "SELECT count(*) FROM (SELECT task, n FROM {t} GROUP BY task, n \
                     HAVING count(*) <> 2) x"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(broken, 0);
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
        conn.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn transact_retries_a_real_serialization_conflict_and_then_commits() {
        let conn = connect().await;
        let other = connect().await;
        let t = table(&conn, "skew", "v int8").await;
        let serializable = TransactionOptions {
            isolation_level: IsolationLevel::Serializable,
            ..TransactionOptions::default()
        };
        let attempts = Arc::new(AtomicU32::new(0));
        let got = conn
            .transact(serializable, &quick(5), |c| {
                let (other, t, attempts) = (other.clone(), t.clone(), attempts.clone());
                async move {
                    let first = attempts.fetch_add(1, Ordering::SeqCst) == 0;
                    let sum: i64 = c
                        .query_one(&format!("SELECT coalesce(sum(v), 0)::int8 FROM {t}"), &[])
                        .await?
                        .get(0);
                    if first {
                        // Another serializable transaction reads what this one read, writes
                        // and commits first: this one's write completes a write skew.
                        other
                            .batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                            .await?;
                        other
                            .query(&format!("SELECT sum(v) FROM {t}"), &[])
                            .await?;
                        other
                            .execute(&format!("INSERT INTO {t} VALUES (10)"), &[])
                            .await?;
                        other.batch_execute("COMMIT").await?;
                    }
                    c.execute(&format!("INSERT INTO {t} VALUES ($1)"), &[&(sum + 1)])
                        .await?;
                    Ok(sum)
                }
            })
            .await
            .unwrap();
        assert_eq!(attempts.load(Ordering::SeqCst), 2, "the conflict was not retried");
        // The second attempt saw the other transaction's row.
        assert_eq!(got, 10);
        let rows = conn
            .query(&format!("SELECT v FROM {t} ORDER BY v"), &[])
            .await
            .unwrap();
        let v: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(v, vec![10, 11]);
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);

        // The same conflict with a single attempt allowed: given up, with the server's error.
        let calls = Arc::new(AtomicU32::new(0));
        let err = conn
            .transact(serializable, &quick(1), |c| {
                let (other, t, calls) = (other.clone(), t.clone(), calls.clone());
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    c.query(&format!("SELECT sum(v) FROM {t}"), &[]).await?;
                    other
                        .batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                        .await?;
                    other.query(&format!("SELECT sum(v) FROM {t}"), &[]).await?;
                    other
                        .execute(&format!("INSERT INTO {t} VALUES (100)"), &[])
                        .await?;
                    other.batch_execute("COMMIT").await?;
                    c.execute(&format!("INSERT INTO {t} VALUES (200)"), &[])
                        .await?;
                    Ok(())
                }
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(err.code(), Some(&SqlState::T_R_SERIALIZATION_FAILURE), "{err}");
        assert!(err.to_string().contains("gave up after 1 attempts"), "{err}");
        let rows = conn
            .query(&format!("SELECT v FROM {t} ORDER BY v"), &[])
            .await
            .unwrap();
        let v: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(v, vec![10, 11, 100], "the failed attempt left a row");
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
        conn.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn transact_gives_up_with_the_last_error_and_runs_nothing_else() {
        let conn = connect().await;
        let t = table(&conn, "giveup", "v int4").await;
        let calls = Arc::new(AtomicU32::new(0));
        let err = conn
            .transact(TransactionOptions::default(), &quick(3), |c| {
                let (t, calls) = (t.clone(), calls.clone());
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    c.execute(&format!("INSERT INTO {t} VALUES (1)"), &[]).await?;
                    c.batch_execute(
                        "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$",
                    )
                    .await?;
                    Ok(())
                }
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(err.code(), Some(&SqlState::T_R_SERIALIZATION_FAILURE));
        assert!(err.to_string().contains("gave up after 3 attempts"), "{err}");
        // Every attempt was rolled back.
        assert_eq!(count(&conn, &t).await, 0);

        // Other errors are not retried.
        let calls = Arc::new(AtomicU32::new(0));
        let err = conn
            .transact(TransactionOptions::default(), &quick(3), |c| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    c.batch_execute("SELECT 1 / 0").await
                }
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
        conn.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn a_pipelined_transaction_is_retried_on_a_real_update_conflict() {
        let conn = connect().await;
        let holder = connect().await;
        let observer = connect().await;
        let t = table(&conn, "conflict", "id int4 PRIMARY KEY, n int4").await;
        let seq = format!("{t}_attempts");
        conn.batch_execute(&format!(
            "INSERT INTO {t} VALUES (1, 0); DROP SEQUENCE IF EXISTS {seq}; CREATE SEQUENCE {seq}"
        ))
        .await
        .unwrap();
        // Another transaction holds the row.
        holder.batch_execute("BEGIN").await.unwrap();
        holder
            .execute(&format!("UPDATE {t} SET n = n + 1 WHERE id = 1"), &[])
            .await
            .unwrap();
        let pid = conn.backend_pid();
        let (c, t2, seq2) = (conn.clone(), t.clone(), seq.clone());
        let run = spawn(async move {
            let attempt = format!("SELECT nextval('{seq2}')");
            let update = format!("UPDATE {t2} SET n = n + 1 WHERE id = 1 RETURNING n");
            let mut p = c.pipeline();
            // nextval is not transactional: it counts the attempts.
            p.query(&attempt, &[]).query(&update, &[]);
            let repeatable = TransactionOptions {
                isolation_level: IsolationLevel::RepeatableRead,
                ..TransactionOptions::default()
            };
            p.transaction_with_retry(repeatable, &quick(5)).await
        });
        // Once the pipelined UPDATE waits for the row, the holder commits its own: under
        // REPEATABLE READ the waiting update fails with 40001, and is retried.
        wait_until_blocked(&observer, pid).await;
        holder.batch_execute("COMMIT").await.unwrap();
        let results = run.await.unwrap().committed().unwrap();
        assert_eq!(results[0].rows[0].get::<i64>(0), 2, "expected exactly two attempts");
        assert_eq!(results[1].rows[0].get::<i32>(0), 2);
        let n: i32 = conn
            .query_one(&format!("SELECT n FROM {t} WHERE id = 1"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);

        // Giving up: the outcome is the last rollback, its error saying so.
        let attempt = format!("SELECT nextval('{seq}')");
        let mut p = conn.pipeline();
        p.query(&attempt, &[]).query(
            "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40P01'; END $$",
            &[],
        );
        match p
            .transaction_with_retry(TransactionOptions::default(), &quick(3))
            .await
            .unwrap()
        {
            TransactionOutcome::RolledBack { step, error, .. } => {
                assert_eq!(step, TransactionStep::Statement(1));
                assert_eq!(error.code(), Some(&SqlState::T_R_DEADLOCK_DETECTED));
                assert!(error.to_string().contains("gave up after 3 attempts"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        let attempts: i64 = conn
            .query_one(&format!("SELECT last_value FROM {seq}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(attempts, 2 + 3);
        conn.batch_execute(&format!("DROP TABLE {t}; DROP SEQUENCE {seq}"))
            .await
            .unwrap();
    }
}
