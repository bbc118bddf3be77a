//! The connection core against a real server: answers never reach the wrong caller, statements
//! belong to their connection, timeouts touch only their own statement, row streams.

use std::time::{Duration, Instant};

use aiopg::{ErrorKind, SimpleQueryMessage, SqlState};
use futures_util::{StreamExt, TryStreamExt};
use rand::{Rng, SeedableRng};

use crate::support::{connect, dsn, options, poll_then_drop, rt_test, spawn, wait_until_blocked};

fn text(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .collect()
}

/// A second session holding advisory lock `key`, so that a statement waiting for it stays in
/// flight until the test lets it go: "in flight" without trusting timing.
async fn hold_lock(key: i64) -> aiopg::Connection {
    let holder = connect().await;
    holder
        .query("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .unwrap();
    holder
}

async fn release_lock(holder: &aiopg::Connection, key: i64) {
    holder
        .query("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .unwrap();
}

/// Polls `fut` once; `Some` if it finished.
async fn poll_once<F: std::future::Future>(mut fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

rt_test! {
    async fn dropped_requests_around_a_pending_close_never_answer_the_next_query() {
        // The review's reproduction: a small statement cache so that a Close is pending, two
        // callers, the later request held back in the write buffer, both futures dropped.
        let conn = options(&dsn()).statement_cache_size(1).connect().await.unwrap();
        let key = 0x5eed_0001;
        let holder = hold_lock(key).await;
        let evicted = conn.prepare("SELECT 1 AS evicted").await.unwrap();
        conn.prepare("SELECT 2 AS keeper").await.unwrap(); // evicts the first from the cache
        // Caller 1: written, blocked on the server.
        let c1 = conn.clone();
        let first = poll_then_drop(
            async move {
                c1.simple_query(&format!("SELECT pg_advisory_lock({key})::text, 11"))
                    .await
            },
            1,
        )
        .await;
        assert!(first.is_none(), "the first request must still be in flight");
        wait_until_blocked(&holder, conn.backend_pid()).await;
        // Caller A queues behind caller 1: held back in the write buffer.
        let ca = conn.clone();
        let mut a = Box::pin(async move { ca.simple_query("SELECT 11").await });
        assert!(poll_once(a.as_mut()).await.is_none(), "A waits behind caller 1");
        // The evicted statement's last handle goes: its Close is pending now, and rides on
        // caller B, held back behind A.
        drop(evicted);
        let cb = conn.clone();
        let mut b = Box::pin(async move { cb.simple_query("SELECT 33").await });
        assert!(poll_once(b.as_mut()).await.is_none(), "B waits behind caller 1");
        // Both give up, the later first: neither was sent, so neither may leave a byte behind.
        drop(b);
        drop(a);
        release_lock(&holder, key).await;
        let answer = conn.simple_query("SELECT 22").await.unwrap();
        assert_eq!(text(&answer), vec!["22"]);
        // The Close still reached the server.
        let left = conn
            .query(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT 1 AS evicted'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(left[0].get::<i64>(0), 0, "the evicted statement was closed");
        conn.query("SELECT pg_advisory_unlock_all()", &[]).await.unwrap();
    }
}

rt_test! {
    async fn eight_tasks_sharing_one_connection_always_get_their_own_answers() {
        // 20,000 requests from 8 tasks on one connection: 30% with bad parameters (half fail to
        // encode, half fail on the server), some dropped after a poll or two, some under
        // timeouts that fire. Every answer that arrives must be the caller's own.
        let conn = options(&dsn()).statement_cache_size(3).connect().await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let conn = conn.clone();
            tasks.push(spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                let (mut ok, mut failed, mut dropped) = (0u32, 0u32, 0u32);
                for i in 0..2_500i64 {
                    let v = t as i64 * 1_000_000 + i;
                    let variant = rng.random_range(0..6);
                    let sql = format!("SELECT $1::int8 + $2::int8 * 0 AS v{variant}, $1::int8 / $2::int8 AS q");
                    let roll = rng.random_range(0..100);
                    let divisor: i64 = if (15..30).contains(&roll) { 0 } else { 1 };
                    let c = conn.clone();
                    let fut = async move {
                        if roll < 15 {
                            // A text for an int8: fails to encode, nothing is sent.
                            c.query(&sql, &[&v, &"one"]).await
                        } else {
                            c.query(&sql, &[&v, &divisor]).await
                        }
                    };
                    let res = if roll >= 95 {
                        match poll_then_drop(fut, rng.random_range(1..3)).await {
                            Some(r) => r,
                            None => {
                                dropped += 1;
                                continue;
                            }
                        }
                    } else if roll >= 92 {
                        conn.with_timeout(Some(Duration::from_millis(rng.random_range(0..3))), fut).await
                    } else {
                        fut.await
                    };
                    match res {
                        Ok(rows) => {
                            assert_eq!(rows.len(), 1);
                            assert_eq!(rows[0].get::<i64>(0), v, "another caller's answer");
                            assert_eq!(rows[0].get::<i64>(1), v);
                            ok += 1;
                        }
                        Err(e) => {
                            match e.kind() {
                                ErrorKind::Encode => assert!(roll < 15, "{e}"),
                                ErrorKind::Db => assert!(
                                    (15..30).contains(&roll)
                                        || e.code() == Some(&SqlState::QUERY_CANCELED),
                                    "unexpected server error: {e}"
                                ),
                                ErrorKind::Timeout => assert!((92..95).contains(&roll), "{e}"),
                                _ => panic!("unexpected error: {e}"),
                            }
                            failed += 1;
                        }
                    }
                }
                (ok, failed, dropped)
            }));
        }
        let mut ok = 0;
        for t in tasks {
            let (o, _, _) = t.await;
            ok += o;
        }
        assert!(ok > 10_000, "most requests succeed ({ok})");
        assert!(!conn.is_closed());
        let rows = conn.query("SELECT 42::int8", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i64>(0), 42);
    }
}

rt_test! {
    async fn a_statement_runs_only_on_the_connection_that_prepared_it() {
        let a = connect().await;
        let b = connect().await;
        let on_a = a.prepare("SELECT $1::int4 AS a").await.unwrap();
        let on_b = b.prepare("SELECT $1::int4 AS a").await.unwrap();
        assert_ne!(on_a.name(), on_b.name(), "statement names are unique in the process");
        let err = b.query_prepared(&on_a, &[&1i32]).await.expect_err("A's statement on B");
        assert_eq!(err.kind(), ErrorKind::Usage);
        assert!(err.to_string().contains("another connection"), "{err}");
        let err = b.execute_prepared(&on_a, &[&1i32]).await.expect_err("A's statement on B");
        assert_eq!(err.kind(), ErrorKind::Usage);
        let err = b.query_stream_prepared(&on_a, &[&1i32]).expect_err("A's statement on B");
        assert_eq!(err.kind(), ErrorKind::Usage);
        let mut p = b.pipeline();
        p.query_prepared(&on_a, &[&1i32]);
        assert_eq!(p.run().await.expect_err("in a pipeline").kind(), ErrorKind::Usage);
        // B is unharmed, and each statement works where it belongs.
        assert_eq!(b.query_prepared(&on_b, &[&2i32]).await.unwrap()[0].get::<i32>(0), 2);
        assert_eq!(a.query_prepared(&on_a, &[&3i32]).await.unwrap()[0].get::<i32>(0), 3);
    }
}

rt_test! {
    async fn a_timeout_behind_another_callers_statement_leaves_it_running() {
        let conn = connect().await;
        let key = 0x5eed_0002;
        let holder = hold_lock(key).await;
        // Caller 1 is executing (blocked on the lock); caller 2 queues behind it with a timeout.
        let c1 = conn.clone();
        let first = spawn(async move {
            c1.query("SELECT pg_advisory_lock($1)::text, 1::int4", &[&key]).await
        });
        wait_until_blocked(&holder, conn.backend_pid()).await;
        let started = Instant::now();
        let limit = Duration::from_millis(200);
        let err = conn
            .with_timeout(Some(limit), conn.query("SELECT 2::int4", &[]))
            .await
            .expect_err("queued behind a blocked statement");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(started.elapsed() < limit + Duration::from_millis(500), "{:?}", started.elapsed());
        release_lock(&holder, key).await;
        // The first caller's statement was not cancelled.
        let rows = first.await.expect("the first statement survives the second's timeout");
        assert_eq!(rows[0].get::<i32>(1), 1);
        conn.query("SELECT pg_advisory_unlock_all()", &[]).await.unwrap();

        // A statement that is executing is cancelled, within the timeout plus CANCEL_GRACE.
        let started = Instant::now();
        let err = conn
            .with_timeout(Some(limit), conn.query("SELECT pg_sleep(30)", &[]))
            .await
            .expect_err("runs past its timeout");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(started.elapsed() < limit + aiopg::CANCEL_GRACE, "{:?}", started.elapsed());
        assert!(!conn.is_closed(), "a cancelled statement leaves the connection usable");
        assert_eq!(conn.query("SELECT 3::int4", &[]).await.unwrap()[0].get::<i32>(0), 3);
    }
}

rt_test! {
    async fn a_row_stream_yields_every_row_then_its_count() {
        let conn = connect().await;
        let mut rows = conn
            .query_stream("SELECT g::int8 FROM generate_series(1, $1) g", &[&100_000i32])
            .await
            .unwrap();
        assert_eq!(rows.columns().len(), 1);
        let mut sum = 0i64;
        let mut n = 0;
        while let Some(row) = rows.try_next().await.unwrap() {
            n += 1;
            sum += row.get::<i64>(0);
        }
        assert_eq!(n, 100_000);
        assert_eq!(sum, 100_000 * 100_001 / 2);
        assert_eq!(rows.rows_affected(), Some(100_000));
        assert_eq!(rows.tag(), Some("SELECT 100000"));
        assert!(rows.next().await.is_none(), "an ended stream stays ended");
    }
}

rt_test! {
    async fn poll_take_hands_out_rows_in_batches_up_to_its_bound() {
        let conn = connect().await;
        let mut rows = conn
            .query_stream("SELECT g::int8 FROM generate_series(1, 30000) g", &[])
            .await
            .unwrap();
        let (mut seen, mut batches) = (Vec::new(), 0);
        // Alternate bulk takes of various bounds with single rows from `next`.
        let bounds = [0usize, 1, 7, 300, 5000, usize::MAX];
        loop {
            let max = bounds[batches % bounds.len()];
            let got = std::future::poll_fn(|cx| match rows.poll_take(cx, max) {
                std::task::Poll::Pending => std::task::Poll::Pending,
                std::task::Poll::Ready(r) => std::task::Poll::Ready(
                    r.map(|b| b.map(|v| v.iter().map(|row| row.get::<i64>(0)).collect::<Vec<_>>())),
                ),
            })
            .await;
            batches += 1;
            match got {
                None => break,
                Some(batch) => {
                    let batch = batch.unwrap();
                    assert!(batch.len() <= max, "{} rows for a bound of {max}", batch.len());
                    assert_eq!(batch.is_empty(), max == 0, "only a bound of 0 gives no rows");
                    seen.extend(batch);
                }
            }
            if let Some(row) = rows.try_next().await.unwrap() {
                seen.push(row.get::<i64>(0));
            }
        }
        assert_eq!(seen, (1..=30000).collect::<Vec<i64>>(), "every row once, in order");
        assert_eq!(rows.rows_affected(), Some(30000));
        // An error mid-result ends the batches with it, and the connection goes on.
        let mut rows = conn
            .query_stream("SELECT 10 / (5000 - g) FROM generate_series(1, 10000) g", &[])
            .await
            .unwrap();
        let mut taken = 0;
        let err = loop {
            match std::future::poll_fn(|cx| rows.poll_take(cx, usize::MAX).map(|r| r.map(|b| b.map(|v| v.len())))).await {
                Some(Ok(n)) => taken += n,
                Some(Err(e)) => break e,
                None => panic!("the result ended without its error"),
            }
        };
        assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO), "{err}");
        assert!(taken < 5000, "{taken} rows before the failing one");
        drop(rows);
        assert_eq!(conn.query_one("SELECT 3::int4", &[]).await.unwrap().get::<i32>(0), 3);
    }
}

rt_test! {
    async fn dropping_a_stream_mid_result_keeps_the_connection_in_step() {
        let conn = connect().await;
        for cut in [0usize, 1, 10, 1_000] {
            let mut rows = conn
                .query_stream("SELECT g FROM generate_series(1, 50000) g", &[])
                .await
                .unwrap();
            for _ in 0..cut {
                rows.try_next().await.unwrap().expect("a row");
            }
            drop(rows);
            let answer = conn.query("SELECT $1::int4 + 1", &[&(cut as i32)]).await.unwrap();
            assert_eq!(answer[0].get::<i32>(0), cut as i32 + 1);
        }
    }
}

rt_test! {
    async fn a_query_behind_a_stream_waits_for_it_and_gets_its_own_answer() {
        let conn = connect().await;
        let mut rows = conn
            .query_stream("SELECT g FROM generate_series(1, 20000) g", &[])
            .await
            .unwrap();
        let c = conn.clone();
        let behind = spawn(async move { c.query("SELECT 'behind'::text", &[]).await });
        let mut n = 0;
        while let Some(row) = rows.try_next().await.unwrap() {
            n += 1;
            assert_eq!(row.get::<i32>(0), n);
        }
        assert_eq!(n, 20_000);
        let answer = behind.await.unwrap();
        assert_eq!(answer[0].get::<&str>(0), "behind");
    }
}

rt_test! {
    async fn a_stream_that_fails_midway_gives_its_rows_then_the_error() {
        let conn = connect().await;
        let mut rows = conn
            .query_stream("SELECT 100 / (50 - g) FROM generate_series(1, 100) g", &[])
            .await
            .unwrap();
        let mut n = 0;
        let err = loop {
            match rows.next().await {
                Some(Ok(_)) => n += 1,
                Some(Err(e)) => break e,
                None => panic!("the stream ended without its error"),
            }
        };
        assert_eq!(n, 49, "the rows before the failing one arrive");
        assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO), "{err}");
        assert!(rows.next().await.is_none());
        assert_eq!(conn.query("SELECT 1::int4", &[]).await.unwrap()[0].get::<i32>(0), 1);
    }
}

rt_test! {
    async fn query_one_opt_as_and_scalar() {
        let conn = connect().await;
        let row = conn.query_one("SELECT $1::int4 * 2", &[&21i32]).await.unwrap();
        assert_eq!(row.get::<i32>(0), 42);
        let err = conn
            .query_one("SELECT 1 WHERE false", &[])
            .await
            .expect_err("no row");
        assert_eq!(err.kind(), ErrorKind::RowCount);
        let err = conn
            .query_one("SELECT generate_series(1, 3)", &[])
            .await
            .expect_err("three rows");
        assert_eq!(err.kind(), ErrorKind::RowCount);
        assert!(err.to_string().contains('3'), "{err}");
        assert!(conn.query_opt("SELECT 1 WHERE false", &[]).await.unwrap().is_none());
        assert_eq!(
            conn.query_opt("SELECT 7::int4", &[]).await.unwrap().unwrap().get::<i32>(0),
            7
        );
        let pairs: Vec<(i32, String)> = conn
            .query_as("SELECT g, 'n' || g FROM generate_series(1, 3) g", &[])
            .await
            .unwrap();
        assert_eq!(pairs, vec![(1, "n1".into()), (2, "n2".into()), (3, "n3".into())]);
        let n: i64 = conn.query_scalar("SELECT count(*) FROM generate_series(1, 5)", &[]).await.unwrap();
        assert_eq!(n, 5);
        let err = conn
            .query_scalar::<String>("SELECT 1::int4", &[])
            .await
            .expect_err("an int4 is not a String");
        assert_eq!(err.kind(), ErrorKind::Decode);
    }
}

rt_test! {
    async fn cursor_control_statements_do_not_fill_the_statement_cache() {
        use aiopg::prelude::*;
        let conn = connect().await;
        let count = "SELECT count(*) FROM pg_prepared_statements";
        let mut cur = conn
            .cursor_with(aiopg::CursorOptions { name: Some("ctl".into()), ..Default::default() })
            .await
            .unwrap();
        cur.execute("SELECT g FROM generate_series(1, $1) g", &[&500i32]).await.unwrap();
        let mut seen = 0;
        for n in [1usize, 2, 3, 5, 7, 11, 13, 17, 19, 23] {
            let rows = cur.fetchmany(Some(n)).await.unwrap();
            assert_eq!(rows.len(), n);
            for r in rows {
                seen += 1;
                assert_eq!(r.get::<i32>(0), seen);
            }
        }
        cur.scroll(3, aiopg::ScrollMode::Absolute).await.unwrap();
        assert_eq!(cur.fetchone().await.unwrap().unwrap().get::<i32>(0), 4);
        // The server holds exactly the statements the client caches: no FETCH, MOVE or
        // DECLARE among them.
        let on_server = conn.query(count, &[]).await.unwrap()[0].get::<i64>(0);
        assert_eq!(on_server as usize, conn.cached_statements());
        let declared = conn
            .query(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement ~* '^(FETCH|MOVE|DECLARE|CLOSE)'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(declared[0].get::<i64>(0), 0);
        cur.close().await.unwrap();
    }
}

rt_test! {
    async fn query_unprepared_decodes_binary_rows_and_user_types() {
        let conn = connect().await;
        conn.batch_execute(
            "DROP TYPE IF EXISTS engine_mood CASCADE; CREATE TYPE engine_mood AS ENUM ('calm', 'busy')",
        )
        .await
        .unwrap();
        let res = conn
            .query_unprepared("SELECT 'busy'::engine_mood::text AS m, 7::int8 AS n, 'busy'::engine_mood AS e", &[])
            .await
            .unwrap();
        assert_eq!(res.columns.len(), 3);
        assert_eq!(res.columns[2].type_().name(), "engine_mood");
        assert_eq!(res.rows[0].get::<&str>(0), "busy");
        assert_eq!(res.rows[0].get::<i64>(1), 7);
        let with_params = conn
            .query_unprepared("SELECT $1::int4 + 1", &[&41i32])
            .await
            .unwrap();
        assert_eq!(with_params.rows[0].get::<i32>(0), 42);
        // Asked through the simple protocol, so that the question is not a statement itself.
        let ours = conn
            .simple_query(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement ~ 'engine_mood|\\$1::int4 \\+ 1'",
            )
            .await
            .unwrap();
        assert_eq!(text(&ours), vec!["0"], "nothing of ours was prepared and kept");
        let err = conn.query_unprepared("SELECT nope", &[]).await.expect_err("bad SQL");
        assert_eq!(err.code(), Some(&SqlState::UNDEFINED_COLUMN));
        conn.batch_execute("DROP TYPE engine_mood").await.unwrap();
    }
}

rt_test! {
    async fn an_idle_connection_receives_notifications_while_nobody_queries() {
        let listener = connect().await;
        let channel = format!("engine_idle_{}", listener.backend_pid());
        listener.batch_execute(&format!("LISTEN {channel}")).await.unwrap();
        // The listener waits on an idle connection: no query runs on it.
        let mut stream = listener.notifies();
        let waiting = spawn(async move {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(stream.next().await.unwrap().unwrap());
            }
            got
        });
        let notifier = connect().await;
        for i in 0..3 {
            notifier
                .query("SELECT pg_notify($1, $2)", &[&channel, &format!("p{i}")])
                .await
                .unwrap();
        }
        let got = waiting.await;
        let payloads: Vec<&str> = got.iter().map(|n| n.payload.as_str()).collect();
        assert_eq!(payloads, ["p0", "p1", "p2"]);
        assert!(got.iter().all(|n| n.channel == channel && n.pid == notifier.backend_pid()));
        // Queries on the listening connection still get their own answers.
        assert_eq!(listener.query("SELECT 5::int4", &[]).await.unwrap()[0].get::<i32>(0), 5);
        let mut stream = listener.notifies();
        listener.close().await;
        assert_eq!(stream.next().await.unwrap().expect_err("closed").kind(), ErrorKind::Closed);
        assert!(stream.next().await.is_none(), "the stream ends after the error");
    }
}
