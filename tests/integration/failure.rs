//! A server that goes away, a connection closed by the client, cancel requests.

use aiopg::SqlState;

use crate::support::{connect, rt_test, spawn};

rt_test! {
    async fn terminated_backend_gives_a_closed_error_then_is_closed() {
        let conn = connect().await;
        let admin = connect().await;
        let pid = conn.backend_pid();
        let rows = admin.query("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
        assert!(rows[0].get::<bool>(0));
        let err = conn.query("SELECT 1", &[]).await.expect_err("backend is gone");
        assert!(err.is_closed(), "{err}");
        assert!(conn.is_closed());
        // Later calls fail the same way, at once.
        let err = conn.simple_query("SELECT 1").await.expect_err("still closed");
        assert!(err.is_closed(), "{err}");
        // The server said why, when it had the chance to.
        if let Some(db) = err.as_db_error() {
            assert_eq!(db.code(), &SqlState::ADMIN_SHUTDOWN);
        }
    }
}

rt_test! {
    async fn close_fails_later_calls_and_is_idempotent() {
        let conn = connect().await;
        let other = conn.clone();
        conn.close().await;
        conn.close().await;
        assert!(other.is_closed());
        let err = other.query("SELECT 1", &[]).await.expect_err("closed");
        assert!(err.is_closed(), "{err}");
        assert!(err.to_string().contains("close()"), "{err}");
    }
}

rt_test! {
    async fn cancel_stops_a_running_statement_and_keeps_the_connection() {
        let conn = connect().await;
        let sleeper = conn.clone();
        let running = spawn(async move { sleeper.query("SELECT pg_sleep(30)", &[]).await.map(|_| ()) });
        // Wait until the server really runs it, then cancel.
        let watcher = connect().await;
        let pid = conn.backend_pid();
        loop {
            let rows = watcher
                .query("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", &[&pid])
                .await
                .unwrap();
            if rows[0].get::<i64>(0) == 1 {
                break;
            }
        }
        conn.cancel().await.unwrap();
        let err = running.await.expect_err("cancelled");
        assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
        let rows = conn.query("SELECT 3::int4", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 3);
    }
}

rt_test! {
    async fn queries_in_flight_when_the_server_dies_all_fail_without_hanging() {
        let conn = connect().await;
        let admin = connect().await;
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let c = conn.clone();
            tasks.push(spawn(async move { c.query("SELECT pg_sleep(30)", &[]).await.map(|_| ()) }));
        }
        let pid = conn.backend_pid();
        loop {
            let rows = admin
                .query("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", &[&pid])
                .await
                .unwrap();
            if rows[0].get::<i64>(0) == 1 {
                break;
            }
        }
        admin.query("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
        for t in tasks {
            let err = t.await.expect_err("server went away");
            assert!(err.is_closed(), "{err}");
        }
        assert!(conn.is_closed());
    }
}
