//! What `Pool::acquire` hands out: connections in the order they came back (FIFO, or LIFO by
//! choice), settled (whatever the previous user left on the wire has been answered).
//!
//! Where the server must still be busy at a given point (a ROLLBACK really in flight), a
//! statement waits for an advisory lock that the test's admin session holds.

use std::time::Duration;

use aiopg::{Connection, ErrorKind, Reuse, TransactionStatus};

use crate::pool::{app_name, builder, poll_once};
use crate::support::{connect, poll_then_drop, rt_test, runtime};

/// An advisory lock key of this test process's own (tests run alongside).
fn lock_key(test: u8) -> i64 {
    i64::from(std::process::id()) << 16 | 0x4a00 | i64::from(test)
}

/// Waits until the server has `pid` waiting for a lock (it gets there on its own time).
async fn wait_for_lock_wait(admin: &Connection, pid: i32) {
    let start = std::time::Instant::now();
    loop {
        let rows = admin
            .query(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                &[&pid],
            )
            .await
            .unwrap();
        if rows[0].get::<i64>(0) == 1 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "backend {pid} never waited for the lock"
        );
        runtime().sleep(Duration::from_millis(2)).await;
    }
}

/// Whether the server has `pid` inside a transaction (or running a statement).
async fn busy_on_server(admin: &Connection, pid: i32) -> bool {
    admin
        .query(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE pid = $1 AND (state <> 'idle' OR xact_start IS NOT NULL)",
            &[&pid],
        )
        .await
        .unwrap()[0]
        .get::<i64>(0)
        == 1
}

rt_test! {
    async fn idle_connections_are_reused_oldest_first_by_default() {
        let pool = builder(&app_name("fifo_reuse")).min_size(3).max_size(3).build().await.unwrap();
        let (a, b, c) = (
            pool.acquire().await.unwrap(),
            pool.acquire().await.unwrap(),
            pool.acquire().await.unwrap(),
        );
        let pids = [a.backend_pid(), b.backend_pid(), c.backend_pid()];
        // Given back B, then A, then C.
        drop(b);
        drop(a);
        drop(c);
        let first = pool.acquire().await.unwrap();
        let second = pool.acquire().await.unwrap();
        let third = pool.acquire().await.unwrap();
        assert_eq!(
            [first.backend_pid(), second.backend_pid(), third.backend_pid()],
            [pids[1], pids[0], pids[2]],
            "not handed out in the order they came back (pids A, B, C: {pids:?})"
        );
        // And again, one at a time: each goes to the back of the line.
        drop((first, second, third));
        for expected in [pids[1], pids[0], pids[2], pids[1]] {
            let conn = pool.acquire().await.unwrap();
            assert_eq!(conn.backend_pid(), expected);
            conn.query("SELECT 1", &[]).await.unwrap();
        }
    }
}

rt_test! {
    async fn lifo_reuses_the_most_recent_connection_and_idle_timeout_retires_the_rest() {
        let idle_timeout = Duration::from_millis(300);
        let pool = builder(&app_name("lifo_reuse"))
            .min_size(1)
            .max_size(3)
            .reuse(Reuse::Lifo)
            .idle_timeout(idle_timeout)
            .build()
            .await
            .unwrap();
        let (a, b, c) = (
            pool.acquire().await.unwrap(),
            pool.acquire().await.unwrap(),
            pool.acquire().await.unwrap(),
        );
        let pids = [a.backend_pid(), b.backend_pid(), c.backend_pid()];
        drop(b);
        drop(c);
        drop(a);
        let first = pool.acquire().await.unwrap();
        let second = pool.acquire().await.unwrap();
        assert_eq!(
            [first.backend_pid(), second.backend_pid()],
            [pids[0], pids[2]],
            "not the most recently given back first (pids A, B, C: {pids:?})"
        );
        drop(second);
        drop(first);
        // One caller after another keeps reusing A; B and C stay idle until the reaper closes
        // them (with oldest-first reuse every one would take its turn and stay open).
        let start = std::time::Instant::now();
        while pool.size() > 1 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "idle connections were not retired: {:?}",
                pool.stats()
            );
            let conn = pool.acquire().await.unwrap();
            assert_eq!(conn.backend_pid(), pids[0], "LIFO handed out another connection");
            conn.query("SELECT 1", &[]).await.unwrap();
        }
        assert_eq!(pool.free_size(), 1);
        assert_eq!(pool.acquire().await.unwrap().backend_pid(), pids[0]);
    }
}

rt_test! {
    async fn transaction_status_right_after_acquire_is_what_the_next_statement_sees() {
        let admin = connect().await;
        let key = lock_key(1);
        let pool = builder(&app_name("settled")).min_size(1).max_size(1).build().await.unwrap();
        let conn = pool.acquire().await.unwrap();
        let pid = conn.backend_pid();
        conn.batch_execute("BEGIN").await.unwrap();
        // A statement the server cannot finish while the admin session holds the lock, given
        // up by its caller; the guard then goes back mid-transaction, so the ROLLBACK its
        // release queues waits behind that statement.
        admin.query("SELECT pg_advisory_lock($1)", &[&key]).await.unwrap();
        // A simple query: one message, on the wire at the first poll (no Parse round trip
        // first), so the server really waits.
        let sql = format!("SELECT pg_advisory_xact_lock_shared({key})");
        assert!(poll_then_drop(conn.batch_execute(&sql), 1).await.is_none());
        drop(conn);

        let mut next = Box::pin(pool.acquire());
        assert!(
            poll_once(&mut next).await.is_pending(),
            "acquire handed out a connection whose ROLLBACK is still in flight"
        );
        // Once the server is seen waiting for the lock, the ROLLBACK cannot have run, however
        // slow or fast anything is: the acquire still waits.
        wait_for_lock_wait(&admin, pid).await;
        assert!(poll_once(&mut next).await.is_pending());
        admin.query("SELECT pg_advisory_unlock($1)", &[&key]).await.unwrap();
        let conn = next.await.unwrap();
        assert_eq!(conn.backend_pid(), pid);
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
        assert!(!conn.has_requests_in_flight());
        // The server agrees: the transaction is over before this user sends anything.
        assert!(!busy_on_server(&admin, pid).await);
        conn.batch_execute("CREATE TEMP TABLE settled (x int); INSERT INTO settled VALUES (1)")
            .await
            .unwrap();
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
        assert_eq!(pool.stats().connections_broken, 0);
    }
}

rt_test! {
    async fn a_connection_still_busy_at_the_acquire_timeout_is_discarded() {
        let admin = connect().await;
        let key = lock_key(2);
        let pool = builder(&app_name("unsettled"))
            .min_size(1)
            .max_size(1)
            .timeout(Duration::from_millis(500))
            .build()
            .await
            .unwrap();
        let conn = pool.acquire().await.unwrap();
        let pid = conn.backend_pid();
        admin.query("SELECT pg_advisory_lock($1)", &[&key]).await.unwrap();
        let sql = format!("SELECT pg_advisory_lock_shared({key})");
        assert!(poll_then_drop(conn.batch_execute(&sql), 1).await.is_none());
        drop(conn);

        // The statement cannot finish while the lock is held: the acquire gives up on it.
        let err = pool.acquire().await.expect_err("the only connection is still busy");
        assert_eq!(err.kind(), ErrorKind::PoolTimeout, "{err}");
        let stats = pool.stats();
        assert_eq!(stats.connections_broken, 1, "{stats:?}");
        admin.query("SELECT pg_advisory_unlock($1)", &[&key]).await.unwrap();
        let conn = pool.acquire().await.unwrap();
        assert_ne!(conn.backend_pid(), pid, "the busy connection was handed out");
        assert_eq!(conn.query("SELECT 1::int4", &[]).await.unwrap()[0].get::<i32>(0), 1);
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
    }
}
