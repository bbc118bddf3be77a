//! The DB-API cursor: every method, its error paths, server-side cursors and timeouts.

use std::time::{Duration, Instant};

use aiopg::prelude::*;
use aiopg::{CursorOptions, ErrorKind, ScrollMode, SqlState};
use futures_util::StreamExt;
use rand::{Rng, SeedableRng};

use crate::support::{connect, poll_then_drop, rt_test, spawn};

fn ints(rows: &[aiopg::Row]) -> Vec<i32> {
    rows.iter().map(|r| r.get::<i32>(0)).collect()
}

rt_test! {
    async fn execute_and_fetch_like_dbapi() {
        let conn = connect().await;
        let mut cur = conn.cursor().await.unwrap();
        assert_eq!(cur.rowcount(), -1);
        assert!(cur.description().is_none());
        cur.execute("SELECT g AS n, g::text AS s FROM generate_series(1, 10) g", &[]).await.unwrap();
        assert_eq!(cur.rowcount(), 10);
        assert_eq!(cur.statusmessage(), Some("SELECT 10"));
        assert_eq!(cur.query(), Some("SELECT g AS n, g::text AS s FROM generate_series(1, 10) g"));
        let d = cur.description().unwrap();
        assert_eq!((d[0].name.as_str(), d[0].type_name.as_str(), d[0].internal_size), ("n", "int4", Some(4)));
        assert_eq!((d[1].name.as_str(), d[1].type_name.as_str(), d[1].internal_size), ("s", "text", None));
        assert_eq!(cur.rownumber(), Some(0));
        assert_eq!(cur.fetchone().await.unwrap().unwrap().get::<i32>(0), 1);
        assert_eq!(cur.arraysize(), 1);
        assert_eq!(ints(&cur.fetchmany(None).await.unwrap()), [2]);
        cur.set_arraysize(3);
        assert_eq!(ints(&cur.fetchmany(None).await.unwrap()), [3, 4, 5]);
        assert_eq!(ints(&cur.fetchmany(Some(2)).await.unwrap()), [6, 7]);
        assert_eq!(cur.rownumber(), Some(7));
        assert_eq!(ints(&cur.fetchall().await.unwrap()), [8, 9, 10]);
        assert!(cur.fetchone().await.unwrap().is_none());
        assert!(cur.fetchall().await.unwrap().is_empty());
    }
}

rt_test! {
    async fn iteration_by_next_and_by_stream() {
        let conn = connect().await;
        let mut cur = conn.cursor().await.unwrap();
        cur.execute("SELECT generate_series(1, $1::int4)", &[&5i32]).await.unwrap();
        let mut seen = Vec::new();
        while let Some(row) = cur.next().await.unwrap() {
            seen.push(row.get::<i32>(0));
        }
        assert_eq!(seen, [1, 2, 3, 4, 5]);
        cur.execute("SELECT generate_series(1, 4)", &[]).await.unwrap();
        let rows: Vec<i32> = (&mut cur).map(|r| r.unwrap().get::<i32>(0)).collect().await;
        assert_eq!(rows, [1, 2, 3, 4]);
    }
}

rt_test! {
    async fn rowcount_and_statusmessage_follow_each_command() {
        let conn = connect().await;
        let mut cur = conn.cursor().await.unwrap();
        cur.execute("CREATE TEMP TABLE rc (a int)", &[]).await.unwrap();
        assert_eq!(cur.rowcount(), -1);
        assert_eq!(cur.statusmessage(), Some("CREATE TABLE"));
        assert!(cur.description().is_none());
        cur.execute("INSERT INTO rc SELECT generate_series(1, 7)", &[]).await.unwrap();
        assert_eq!(cur.rowcount(), 7);
        assert_eq!(cur.statusmessage(), Some("INSERT 0 7"));
        cur.execute("UPDATE rc SET a = a + 1 WHERE a > $1", &[&4i32]).await.unwrap();
        assert_eq!(cur.rowcount(), 3);
        // 1..=7 became 1, 2, 3, 4, 6, 7, 8.
        cur.execute("DELETE FROM rc WHERE a < 3", &[]).await.unwrap();
        assert_eq!(cur.rowcount(), 2);
        let err = cur.fetchone().await.expect_err("DELETE returns no rows");
        assert_eq!(err.kind(), ErrorKind::Usage);
        assert!(err.to_string().contains("no rows"), "{err}");
    }
}

rt_test! {
    async fn error_paths_are_errors_not_panics() {
        let conn = connect().await;
        let mut cur = conn.cursor().await.unwrap();
        let err = cur.fetchone().await.expect_err("fetch before execute");
        assert!(err.to_string().contains("execute()"), "{err}");
        let err = cur.fetchall().await.expect_err("fetch before execute");
        assert_eq!(err.kind(), ErrorKind::Usage);
        cur.execute("SELECT 1::int4 AS one, NULL::int4 AS nothing", &[]).await.unwrap();
        let row = cur.fetchone().await.unwrap().unwrap();
        let err = row.try_get::<String>(0).expect_err("type mismatch");
        assert!(err.to_string().contains("int4"), "{err}");
        let err = row.try_get::<i32>("nothing").expect_err("NULL into i32");
        assert!(err.to_string().contains("NULL"), "{err}");
        let err = row.try_get::<i32>("nope").expect_err("unknown column");
        assert!(err.to_string().contains("one") && err.to_string().contains("nothing"), "{err}");
        let err = cur.execute("SELECT * FROM aiopg_missing", &[]).await.expect_err("SQL error");
        assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
        cur.execute("SELECT 2::int4", &[]).await.unwrap();
        cur.close().await.unwrap();
        assert!(cur.is_closed());
        let err = cur.fetchone().await.expect_err("fetch after close");
        assert!(err.to_string().contains("closed"), "{err}");
        let err = cur.execute("SELECT 1", &[]).await.expect_err("execute after close");
        assert!(err.to_string().contains("closed"), "{err}");
        cur.close().await.unwrap();
    }
}

rt_test! {
    async fn scroll_relative_absolute_and_out_of_range() {
        let conn = connect().await;
        let mut cur = conn.cursor().await.unwrap();
        cur.execute("SELECT generate_series(0, 9)", &[]).await.unwrap();
        cur.scroll(3, ScrollMode::Relative).await.unwrap();
        assert_eq!(cur.fetchone().await.unwrap().unwrap().get::<i32>(0), 3);
        cur.scroll(-2, ScrollMode::Relative).await.unwrap();
        assert_eq!(cur.fetchone().await.unwrap().unwrap().get::<i32>(0), 2);
        cur.scroll(8, ScrollMode::Absolute).await.unwrap();
        assert_eq!(cur.fetchone().await.unwrap().unwrap().get::<i32>(0), 8);
        let err = cur.scroll(10, ScrollMode::Absolute).await.expect_err("past the end");
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = cur.scroll(-100, ScrollMode::Relative).await.expect_err("before the start");
        assert!(err.to_string().contains("out of range"), "{err}");
        // A failed scroll leaves the position alone.
        assert_eq!(cur.fetchone().await.unwrap().unwrap().get::<i32>(0), 9);
    }
}

rt_test! {
    async fn executemany_is_one_batch_and_callproc_calls() {
        let conn = connect().await;
        let mut cur = conn.cursor().await.unwrap();
        cur.execute("CREATE TEMP TABLE em2 (a int, b text)", &[]).await.unwrap();
        let data: Vec<(i32, String)> = (0..100).map(|i| (i, format!("v{i}"))).collect();
        let params: Vec<[&(dyn aiopg::types::ToSql + Sync); 2]> = data.iter().map(|(a, b)| [a as _, b as _]).collect();
        cur.executemany("INSERT INTO em2 VALUES ($1, $2)", params.iter().map(|p| &p[..])).await.unwrap();
        assert_eq!(cur.rowcount(), 100);
        cur.execute("SELECT count(*), max(b) FROM em2", &[]).await.unwrap();
        let row = cur.fetchone().await.unwrap().unwrap();
        assert_eq!(row.get::<i64>(0), 100);
        cur.execute("CREATE FUNCTION pg_temp.add_one(x int) RETURNS int AS 'SELECT x + 1' LANGUAGE sql", &[]).await.unwrap();
        cur.callproc("pg_temp.add_one", &[&41i32]).await.unwrap();
        assert_eq!(cur.fetchone().await.unwrap().unwrap().get::<i32>(0), 42);
        let err = cur.callproc("add_one(1); DROP TABLE em2; --", &[]).await.expect_err("not a name");
        assert_eq!(err.kind(), ErrorKind::Usage);
    }
}

rt_test! {
    async fn named_cursor_streams_in_itersize_chunks_outside_and_inside_transactions() {
        let conn = connect().await;
        // Outside a transaction: declared WITH HOLD.
        let mut cur = conn
            .cursor_with(CursorOptions { name: Some("big".into()), ..Default::default() })
            .await
            .unwrap();
        cur.set_itersize(100);
        cur.execute("SELECT g, repeat('x', 10) FROM generate_series(1, 1000) g", &[]).await.unwrap();
        assert_eq!(cur.description().unwrap()[0].name, "g");
        assert_eq!(cur.fetchone().await.unwrap().unwrap().get::<i32>(0), 1);
        assert_eq!(ints(&cur.fetchmany(Some(3)).await.unwrap()), [2, 3, 4]);
        let mut last = 4;
        let mut n = 4;
        while let Some(row) = cur.next().await.unwrap() {
            let v = row.get::<i32>(0);
            assert_eq!(v, last + 1);
            last = v;
            n += 1;
        }
        assert_eq!(n, 1000);
        assert_eq!(cur.rowcount(), 1000);
        cur.close().await.unwrap();
        // pg_cursors also lists the portal of the query asking, which has no name.
        let rows = conn.query("SELECT count(*) FROM pg_cursors WHERE name = 'big'", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i64>(0), 0, "closed on the server");

        // Inside a transaction, scrollable, by stream.
        let mut tx = conn.begin().await.unwrap();
        let mut cur = conn
            .cursor_with(CursorOptions { name: Some("scrolly".into()), scrollable: Some(true), ..Default::default() })
            .await
            .unwrap();
        cur.execute("SELECT generate_series(0, 49)", &[]).await.unwrap();
        cur.set_itersize(7);
        let all: Vec<i32> = (&mut cur).map(|r| r.unwrap().get::<i32>(0)).collect().await;
        assert_eq!(all, (0..50).collect::<Vec<_>>());
        cur.scroll(10, ScrollMode::Absolute).await.unwrap();
        assert_eq!(cur.fetchone().await.unwrap().unwrap().get::<i32>(0), 10);
        cur.scroll(-5, ScrollMode::Relative).await.unwrap();
        assert_eq!(cur.fetchone().await.unwrap().unwrap().get::<i32>(0), 6);
        let err = cur.scroll(500, ScrollMode::Absolute).await.expect_err("out of range");
        assert!(err.to_string().contains("out of range"), "{err}");
        drop(cur);
        // Dropped: closed on the server ahead of the next statement.
        let rows = conn.query("SELECT count(*) FROM pg_cursors WHERE name = 'scrolly'", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i64>(0), 0);
        tx.commit().await.unwrap();
    }
}

rt_test! {
    async fn timeout_on_a_cursor_cancels_and_keeps_the_connection() {
        let conn = connect().await;
        let watcher = connect().await;
        let mut cur = conn
            .cursor_with(CursorOptions { timeout: Some(Some(Duration::from_millis(200))), ..Default::default() })
            .await
            .unwrap();
        let started = Instant::now();
        let err = cur.execute("SELECT pg_sleep(10)", &[]).await.expect_err("times out");
        assert!(err.is_timeout(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
        let rows = watcher
            .query("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&conn.backend_pid()])
            .await
            .unwrap();
        assert_eq!(rows[0].get::<&str>(0), "idle", "the statement was cancelled on the server");
        cur.execute("SELECT 1::int4", &[]).await.unwrap();
        assert_eq!(cur.fetchone().await.unwrap().unwrap().get::<i32>(0), 1);
        // Per call beats per cursor: no timeout at all for this one.
        cur.execute_timeout("SELECT pg_sleep(0.3)", &[], Some(None)).await.unwrap();
        // The connection's default applies when neither says.
        conn.set_timeout(Some(Duration::from_millis(100)));
        let mut plain = conn.cursor().await.unwrap();
        let err = plain.execute("SELECT pg_sleep(5)", &[]).await.expect_err("connection timeout");
        assert!(err.is_timeout(), "{err}");
        conn.set_timeout(None);
        plain.execute("SELECT pg_sleep(0.2)", &[]).await.unwrap();
    }
}

rt_test! {
    async fn mogrify_renders_what_the_server_runs() {
        let conn = connect().await;
        let cur = conn.cursor().await.unwrap();
        let sql = cur.mogrify("SELECT $1::int4, $2::text", &[&5i32, &"it's"]).unwrap();
        let rows = conn.query(&sql, &[]).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 5);
        assert_eq!(rows[0].get::<&str>(1), "it's");
    }
}

/// Server cursors named `name` on `conn`'s session (pg_cursors is per session).
async fn server_cursors(conn: &aiopg::Connection, name: &str) -> aiopg::Result<i64> {
    conn.query_scalar("SELECT count(*) FROM pg_cursors WHERE name = $1", &[&name])
        .await
}

/// Now and then a statement in flight on `conn`, so that the next request waits behind it:
/// a drop then lands on a request still queued (taken back) as well as on one written.
fn maybe_neighbour(
    rng: &mut impl Rng,
    conn: &aiopg::Connection,
) -> Option<crate::support::Join<aiopg::Result<()>>> {
    rng.random_bool(0.5).then(|| {
        let c = conn.clone();
        spawn(async move { c.batch_execute("SELECT pg_sleep(0.001)").await })
    })
}

rt_test! {
    async fn a_named_cursor_dropped_mid_execute_or_close_leaves_no_server_cursor_behind() {
        let seed = crate::support::seed();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let conn = connect().await;
        let name = "dropped_mid_way";
        for round in 0..150 {
            let fail = |what: String| -> String {
                format!("seed {seed} (AIOPG_TEST_SEED={seed} replays it), round {round}: {what}")
            };
            let in_block = rng.random_bool(0.5);
            if in_block {
                conn.batch_execute("BEGIN").await.unwrap();
            }
            let options = CursorOptions {
                name: Some(name.into()),
                withhold: rng.random_bool(0.3),
                ..Default::default()
            };
            let mut cur = conn.cursor_with(options).await.unwrap();
            for _ in 0..rng.random_range(1..=3) {
                let neighbour = maybe_neighbour(&mut rng, &conn);
                let polls = rng.random_range(1..=6);
                let sql = "SELECT generate_series(1, 3)";
                if let Some(res) = poll_then_drop(cur.execute(sql, &[]), polls).await {
                    res.unwrap_or_else(|e| panic!("{}", fail(format!("execute after drops: {e}"))));
                }
                if let Some(n) = neighbour {
                    n.await.unwrap();
                }
            }
            // Whatever was dropped, the name declares again and the rows are this result's.
            cur.execute("SELECT generate_series(1, 4)", &[])
                .await
                .unwrap_or_else(|e| panic!("{}", fail(format!("execute after drops: {e}"))));
            assert_eq!(ints(&cur.fetchall().await.unwrap()), [1, 2, 3, 4], "{}", fail("rows".into()));
            match rng.random_range(0..3) {
                0 => cur.close().await.unwrap_or_else(|e| panic!("{}", fail(format!("close: {e}")))),
                1 => {
                    let neighbour = maybe_neighbour(&mut rng, &conn);
                    let polls = rng.random_range(1..=4);
                    if let Some(res) = poll_then_drop(cur.close(), polls).await {
                        res.unwrap_or_else(|e| panic!("{}", fail(format!("close: {e}"))));
                    }
                    drop(cur);
                    if let Some(n) = neighbour {
                        n.await.unwrap();
                    }
                }
                _ => drop(cur),
            }
            let left = server_cursors(&conn, name)
                .await
                .unwrap_or_else(|e| panic!("{}", fail(format!("the transaction was aborted: {e}"))));
            assert_eq!(left, 0, "{}", fail(format!("server cursors left (in a block: {in_block})")));
            if in_block {
                conn.batch_execute("COMMIT").await.unwrap();
            }
            assert_eq!(conn.query_scalar::<i32>("SELECT 1", &[]).await.unwrap(), 1);
            assert_eq!(conn.transaction_status(), aiopg::TransactionStatus::Idle, "{}", fail("status".into()));
        }
    }
}

rt_test! {
    async fn a_named_cursor_whose_transaction_ended_executes_closes_and_drops_cleanly() {
        let conn = connect().await;
        let named = || CursorOptions { name: Some("outlived".into()), ..Default::default() };
        let mut cur = conn.cursor_with(named()).await.unwrap();
        conn.batch_execute("BEGIN").await.unwrap();
        cur.execute("SELECT generate_series(1, 3)", &[]).await.unwrap();
        assert_eq!(ints(&cur.fetchall().await.unwrap()), [1, 2, 3]);
        // Not WITH HOLD: the server cursor ends with its transaction.
        conn.batch_execute("COMMIT").await.unwrap();
        cur.execute("SELECT generate_series(1, 2)", &[]).await.unwrap();
        assert_eq!(ints(&cur.fetchall().await.unwrap()), [1, 2]);
        // Declared inside a transaction that rolls back: gone again; its clean-up at drop,
        // inside the next transaction, must not abort it.
        conn.batch_execute("BEGIN").await.unwrap();
        cur.execute("SELECT 7", &[]).await.unwrap();
        conn.batch_execute("ROLLBACK; BEGIN").await.unwrap();
        drop(cur);
        assert_eq!(conn.query_scalar::<i32>("SELECT 1", &[]).await.unwrap(), 1);
        assert_eq!(server_cursors(&conn, "outlived").await.unwrap(), 0);
        conn.batch_execute("COMMIT").await.unwrap();
        // close() of one whose transaction ended: nothing to close, no error.
        let mut cur = conn.cursor_with(named()).await.unwrap();
        conn.batch_execute("BEGIN").await.unwrap();
        cur.execute("SELECT 1", &[]).await.unwrap();
        conn.batch_execute("COMMIT").await.unwrap();
        cur.close().await.unwrap();
        assert_eq!(server_cursors(&conn, "outlived").await.unwrap(), 0);
        assert_eq!(conn.transaction_status(), aiopg::TransactionStatus::Idle);
        // An odd name (quotes, a backslash, more than the 63 bytes the server keeps of it) is
        // closed just the same, by execute and by the drop.
        let odd = format!("it's a \\ \"cursor\" {}", "é".repeat(40));
        let mut cur = conn
            .cursor_with(CursorOptions { name: Some(odd), ..Default::default() })
            .await
            .unwrap();
        cur.execute("SELECT 1", &[]).await.unwrap();
        cur.execute("SELECT 2", &[]).await.unwrap();
        assert_eq!(ints(&cur.fetchall().await.unwrap()), [2]);
        drop(cur);
        let named: i64 = conn
            .query_scalar("SELECT count(*) FROM pg_cursors WHERE name <> ''", &[])
            .await
            .unwrap();
        assert_eq!(named, 0, "the odd name's cursor was left open");
    }
}
