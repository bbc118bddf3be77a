//! What `Pool::acquire` hands out: connections in the order they came back (FIFO, or LIFO by
//! choice), settled (whatever the previous user left on the wire has been answered), and as
//! a lease that ends at release, so that handles kept past the guard fail instead of sharing
//! the socket with the next user.
//!
//! Where the server must still be busy at a given point (a ROLLBACK really in flight), a
//! statement waits for an advisory lock that the test's admin session holds.

use std::time::Duration;

use aiopg::prelude::*;
use aiopg::{Connection, CursorOptions, Error, ErrorKind, Reuse, TransactionStatus};

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

fn assert_usage(what: &str, res: aiopg::Result<impl std::fmt::Debug>) {
    let err: Error = match res {
        Ok(v) => panic!("{what} worked past the guard's release: {v:?}"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Usage, "{what}: {err}");
    assert!(err.to_string().contains("lease"), "{what}: {err}");
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
        // One caller after another keeps reusing A; B and C stay idle until the sweep closes
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

rt_test! {
    async fn handles_kept_past_release_fail_and_leave_the_next_user_alone() {
        let pool = builder(&app_name("leases")).min_size(1).max_size(1).build().await.unwrap();
        let conn = pool.acquire().await.unwrap();
        let pid = conn.backend_pid();
        conn.batch_execute("CREATE TEMP TABLE leases (x int)").await.unwrap();
        // Handles that outlive the guard: a clone of the connection, a transaction, a named
        // cursor declared inside it (a server-side cursor, read two rows at a time) and a
        // client-side cursor.
        let clone: Connection = (*conn).clone();
        let tx = conn.begin().await.unwrap();
        let named = CursorOptions { name: Some("leased_cur".into()), ..Default::default() };
        let mut cur = conn.cursor_with(named).await.unwrap();
        cur.set_itersize(2);
        cur.execute("SELECT generate_series(1, 10)", &[]).await.unwrap();
        assert_eq!(cur.fetchone().await.unwrap().unwrap().get::<i32>(0), 1);
        let mut plain = conn.cursor().await.unwrap();
        plain.execute("SELECT 1", &[]).await.unwrap();
        assert!(!clone.is_stale());
        drop(conn);

        // The next user works inside a transaction of its own: a stray ROLLBACK or CLOSE from
        // the old handles would end or abort it.
        let next = pool.acquire().await.unwrap();
        assert_eq!(next.backend_pid(), pid);
        assert_eq!(next.transaction_status(), TransactionStatus::Idle);
        let mut next_tx = next.begin().await.unwrap();
        next.execute("INSERT INTO leases VALUES (1)", &[]).await.unwrap();

        assert!(clone.is_stale());
        assert_usage("a clone's query", clone.query("SELECT 1", &[]).await);
        assert_usage("a clone's execute", clone.execute("SELECT 1", &[]).await);
        assert_usage("a clone's simple query", clone.simple_query("SELECT 1").await);
        assert_usage("a clone's prepare", clone.prepare("SELECT 2").await);
        assert_usage("a clone's cancel", clone.cancel().await);
        assert_usage("a clone's begin", clone.begin().await);
        // The named cursor needs the server for its next rows.
        assert_usage("a named cursor's fetch", cur.fetchmany(Some(3)).await);
        assert_usage("a cursor's execute", plain.execute("SELECT 1", &[]).await);
        assert_usage("a transaction's statement", tx.connection().query("SELECT 1", &[]).await);
        // Neither closing the clone nor dropping the handles (a declared cursor's CLOSE, an
        // active transaction's ROLLBACK) reaches the next user.
        clone.close().await;
        drop(cur);
        drop(plain);
        drop(tx);
        drop(clone);
        assert!(!next.is_closed());
        assert_eq!(next.transaction_status(), TransactionStatus::InTransaction);
        let rows = next.query("SELECT count(*) FROM leases", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i64>(0), 1, "the next user's transaction was rolled back");
        next_tx.commit().await.unwrap();
        assert_eq!(next.transaction_status(), TransactionStatus::Idle);

        // The explicit release ends the lease too; so does a commit attempt on a transaction
        // kept past it.
        let mut tx = next.begin().await.unwrap();
        let clone = next.connection().clone();
        pool.release(next).await;
        assert_usage("a clone's query after Pool::release", clone.query("SELECT 1", &[]).await);
        assert_usage("a transaction's commit after Pool::release", tx.commit().await);
        let last = pool.acquire().await.unwrap();
        assert_eq!(last.backend_pid(), pid);
        assert_eq!(last.transaction_status(), TransactionStatus::Idle);
        let rows = last.query("SELECT count(*) FROM leases", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i64>(0), 1);
        assert_eq!(pool.stats().connections_created, 1);
    }
}

rt_test! {
    async fn a_pooled_cursor_and_its_clones_follow_the_same_lease() {
        let pool = builder(&app_name("lease_cursor")).min_size(1).max_size(1).build().await.unwrap();
        let mut cur = pool.cursor().await.unwrap();
        cur.execute("SELECT 1", &[]).await.unwrap();
        let clone = cur.connection().connection().clone();
        clone.query("SELECT 1", &[]).await.unwrap();
        drop(cur);
        assert_usage("a pooled cursor's connection", clone.query("SELECT 1", &[]).await);
        let conn = pool.acquire().await.unwrap();
        conn.query("SELECT 1", &[]).await.unwrap();
        // Each guard has a lease of its own: the previous guard's handles stay stale.
        assert_usage("the previous guard's clone", clone.query("SELECT 1", &[]).await);
        assert!(!conn.is_stale());
    }
}
