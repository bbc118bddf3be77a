//! Many queries in flight on one connection, and callers that give up mid-flight.

use rand::{Rng, SeedableRng};

use crate::support::{connect, poll_then_drop, rt_test, spawn};

rt_test! {
    async fn a_thousand_concurrent_queries_each_get_their_own_answer() {
        let conn = connect().await;
        let mut tasks = Vec::new();
        for t in 0..50i32 {
            let conn = conn.clone();
            tasks.push(spawn(async move {
                for i in 0..20i32 {
                    let v = t * 1000 + i;
                    // Two statement texts, so prepares and executes interleave.
                    let sql = if i % 2 == 0 { "SELECT $1::int4" } else { "SELECT $1::int4 + 0" };
                    let rows = conn.query(sql, &[&v]).await.unwrap();
                    assert_eq!(rows[0].get::<i32>(0), v);
                }
                20
            }));
        }
        let mut done = 0;
        for t in tasks {
            done += t.await;
        }
        assert_eq!(done, 1000);
    }
}

rt_test! {
    async fn queries_issued_together_are_pipelined_in_order() {
        let conn = connect().await;
        conn.query("SELECT $1::int4", &[&0i32]).await.unwrap(); // prepare once
        let futs: Vec<_> = (0..200i32)
            .map(|i| {
                let conn = conn.clone();
                async move { conn.query("SELECT $1::int4", &[&i]).await.unwrap()[0].get::<i32>(0) }
            })
            .collect();
        let got = futures_util::future::join_all(futs).await;
        assert_eq!(got, (0..200).collect::<Vec<_>>());
    }
}

rt_test! {
    async fn dropped_query_futures_never_desynchronise_the_connection() {
        let conn = connect().await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let mut completed = 0;
        for i in 0..400i32 {
            let polls = rng.random_range(0..4usize);
            // New statement texts now and then, so drops also land mid-prepare.
            let sql = format!("SELECT $1::int4 + {}", i % 7);
            let kind = rng.random_range(0..3);
            let c = conn.clone();
            let out = match kind {
                0 => poll_then_drop(async move { c.query(&sql, &[&i]).await.map(|_| ()) }, polls).await,
                1 => poll_then_drop(async move { c.simple_query("SELECT pg_sleep(0.001), 1").await.map(|_| ()) }, polls).await,
                _ => poll_then_drop(async move { c.execute("SELECT generate_series(1, 500)", &[]).await.map(|_| ()) }, polls).await,
            };
            if let Some(r) = out {
                r.unwrap();
                completed += 1;
            }
            // The next query gets its own answer whatever was abandoned before it.
            let check = 1_000_000 + i;
            let rows = conn.query("SELECT $1::int4", &[&check]).await.unwrap();
            assert_eq!(rows[0].get::<i32>(0), check, "iteration {i}");
        }
        assert!(completed < 400, "every query finished: nothing was dropped mid-flight");
        assert!(!conn.is_closed());
    }
}

rt_test! {
    async fn concurrent_callers_survive_others_dropping_mid_flight() {
        let conn = connect().await;
        let mut tasks = Vec::new();
        for t in 0..8i32 {
            let conn = conn.clone();
            tasks.push(spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                for i in 0..100i32 {
                    let v = t * 10_000 + i;
                    if rng.random_bool(0.3) {
                        let c = conn.clone();
                        let polls = rng.random_range(0..3usize);
                        let _ = poll_then_drop(async move { c.query("SELECT $1::int4", &[&v]).await }, polls).await;
                    } else {
                        let rows = conn.query("SELECT $1::int4", &[&v]).await.unwrap();
                        assert_eq!(rows[0].get::<i32>(0), v);
                    }
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let rows = conn.query("SELECT 1::int4", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 1);
    }
}

rt_test! {
    async fn large_results_and_large_parameters_cross_the_socket() {
        let conn = connect().await;
        let big = "x".repeat(4 << 20);
        let rows = conn.query("SELECT length($1::text), $1::text", &[&big]).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 4 << 20);
        assert_eq!(rows[0].get::<&str>(1).len(), 4 << 20);
        let rows = conn
            .query("SELECT g, repeat('y', 100) FROM generate_series(1, 100000) g", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 100_000);
        assert_eq!(rows[99_999].get::<i32>(0), 100_000);
    }
}

// ---------------------------------------------------------------------------------------------
// Explicit pipelines: several statements under one Sync.

fn table(name: &str) -> String {
    format!("pipeline_{name}_{}", std::process::id())
}

rt_test! {
    async fn an_explicit_pipeline_answers_each_statement_in_order() {
        let conn = connect().await;
        let t = table("order");
        conn.batch_execute(&format!("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int4, v text)"))
            .await
            .unwrap();
        let insert = format!("INSERT INTO {t} VALUES ($1, $2)");
        let select = format!("SELECT id, v FROM {t} ORDER BY id");
        let (one, two, three) = (1i32, 2i32, 3i32);
        let mut p = conn.pipeline();
        p.query(&insert, &[&one, &"a"])
            .query(&insert, &[&two, &"b"])
            .query("SELECT $1::int4 * 100", &[&three])
            .query(&select, &[])
            .query("SELECT 1 WHERE false", &[]);
        assert_eq!(p.len(), 5);
        let results = p.run().await.unwrap();
        assert_eq!(results.len(), 5);
        let r: Vec<_> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(r[0].rows_affected, Some(1));
        assert_eq!(r[0].tag.as_deref(), Some("INSERT 0 1"));
        assert_eq!(r[2].rows[0].get::<i32>(0), 300);
        let seen: Vec<(i32, String)> =
            r[3].rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        assert_eq!(seen, vec![(1, "a".to_owned()), (2, "b".to_owned())]);
        assert_eq!(r[3].columns.len(), 2);
        assert!(r[4].rows.is_empty());
        assert_eq!(r[4].rows_affected, Some(0));

        // The pipeline keeps its statements: it can run again.
        let again = p.run().await.unwrap();
        assert_eq!(again[3].as_ref().unwrap().rows.len(), 4);
        assert!(conn.pipeline().run().await.unwrap().is_empty());
        conn.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn a_failing_statement_aborts_the_rest_and_undoes_its_batch() {
        let conn = connect().await;
        let t = table("fail");
        conn.batch_execute(&format!("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int4 PRIMARY KEY)"))
            .await
            .unwrap();
        let insert = format!("INSERT INTO {t} VALUES ($1)");
        let (one, two) = (1i32, 2i32);
        let mut p = conn.pipeline();
        p.query(&insert, &[&one])
            .query(&insert, &[&one]) // duplicate key
            .query(&insert, &[&two]);
        let results = p.run().await.unwrap();
        assert!(results[0].is_ok(), "{:?}", results[0]);
        let err = results[1].as_ref().unwrap_err();
        assert_eq!(err.code(), Some(&aiopg::SqlState::UNIQUE_VIOLATION));
        let err = results[2].as_ref().unwrap_err();
        assert_eq!(err.kind(), aiopg::ErrorKind::Aborted);
        assert!(err.to_string().contains("statement 1 failed"), "{err}");

        // One implicit transaction: the first insert was undone with the failure.
        assert_eq!(conn.transaction_status(), aiopg::TransactionStatus::Idle);
        let rows = conn.query(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap();
        assert_eq!(rows[0].get::<i64>(0), 0);

        // Inside a transaction block the failure aborts the transaction, as any error does.
        conn.batch_execute("BEGIN").await.unwrap();
        let results = p.run().await.unwrap();
        assert!(results[1].is_err());
        assert_eq!(conn.transaction_status(), aiopg::TransactionStatus::InError);
        conn.batch_execute("ROLLBACK").await.unwrap();
        let rows = conn.query("SELECT 7::int4", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 7);
        conn.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn a_pipeline_that_cannot_be_encoded_sends_nothing() {
        let conn = connect().await;
        let (n, s) = (5i32, "not a number");
        let mut p = conn.pipeline();
        p.query("SELECT $1::int4", &[&n]).query("SELECT $1::int4", &[&s]);
        let err = p.run().await.unwrap_err();
        assert_eq!(err.kind(), aiopg::ErrorKind::Encode);
        assert!(err.to_string().contains("pipeline statement 1"), "{err}");
        let mut p = conn.pipeline();
        p.query("SELEC broken", &[]);
        let err = p.run().await.unwrap_err();
        assert_eq!(err.code(), Some(&aiopg::SqlState::SYNTAX_ERROR));
        assert!(err.to_string().contains("pipeline statement 0"), "{err}");
        // Nothing half-sent: the connection answers the next query with its own result.
        let rows = conn.query("SELECT $1::int4", &[&n]).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 5);
        assert!(!conn.has_requests_in_flight());
    }
}

rt_test! {
    async fn a_pipeline_survives_a_schema_change_under_its_cached_statement() {
        let conn = connect().await;
        let t = table("stale");
        conn.batch_execute(&format!("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (a int4); INSERT INTO {t} VALUES (1)"))
            .await
            .unwrap();
        let select = format!("SELECT * FROM {t}");
        let mut p = conn.pipeline();
        p.query(&select, &[]).query("SELECT 2::int4", &[]);
        let first = p.run().await.unwrap();
        assert_eq!(first[0].as_ref().unwrap().columns.len(), 1);
        conn.batch_execute(&format!("ALTER TABLE {t} ADD COLUMN b text DEFAULT 'x'"))
            .await
            .unwrap();
        let second = p.run().await.unwrap();
        let r = second[0].as_ref().unwrap();
        assert_eq!(r.columns.len(), 2);
        assert_eq!(r.rows[0].get::<&str>(1), "x");
        assert_eq!(second[1].as_ref().unwrap().rows[0].get::<i32>(0), 2);
        conn.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn pipelines_work_without_a_statement_cache_and_beside_other_callers() {
        let conn = crate::support::options(&crate::support::dsn())
            .statement_cache_size(0)
            .connect()
            .await
            .unwrap();
        let vals: Vec<i32> = (0..50).collect();
        let mut tasks = Vec::new();
        for t in 0..4i32 {
            let conn = conn.clone();
            let vals = vals.clone();
            tasks.push(spawn(async move {
                let mut p = conn.pipeline();
                for v in &vals {
                    // Two texts, so unnamed statements replace each other inside the batch.
                    let sql = if v % 2 == 0 { "SELECT $1::int4 + 0" } else { "SELECT $1::int4 * 1" };
                    p.query(sql, &[v]);
                }
                let got: Vec<i32> = p
                    .run()
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| r.unwrap().rows[0].get::<i32>(0))
                    .collect();
                assert_eq!(got, vals, "task {t}");
                let rows = conn.query("SELECT $1::int4", &[&t]).await.unwrap();
                assert_eq!(rows[0].get::<i32>(0), t);
            }));
        }
        for t in tasks {
            t.await;
        }
        assert_eq!(conn.cached_statements(), 0);
    }
}

rt_test! {
    async fn dropped_pipelines_never_desynchronise_the_connection() {
        let conn = connect().await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xb47c);
        let mut completed = 0;
        for i in 0..200i32 {
            let polls = rng.random_range(0..4usize);
            let c = conn.clone();
            let out = poll_then_drop(
                async move {
                    let vals: Vec<i32> = (0..20).map(|k| i * 100 + k).collect();
                    let mut p = c.pipeline();
                    for v in &vals {
                        p.query("SELECT $1::int4, repeat('z', 200)", &[v]);
                    }
                    p.run().await.map(|r| r.len())
                },
                polls,
            )
            .await;
            if let Some(r) = out {
                assert_eq!(r.unwrap(), 20);
                completed += 1;
            }
            let check = 1_000_000 + i;
            let rows = conn.query("SELECT $1::int4", &[&check]).await.unwrap();
            assert_eq!(rows[0].get::<i32>(0), check, "iteration {i}");
        }
        assert!(completed < 200, "every pipeline finished: nothing was dropped mid-flight");
        assert!(!conn.is_closed());
    }
}
