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

/// The xtask server's TCP address.
fn server_addr() -> std::net::SocketAddr {
    let c = crate::support::cluster().expect("the xtask cluster");
    format!("127.0.0.1:{}", c.port).parse().unwrap()
}

rt_test! {
    async fn a_commit_whose_answer_is_lost_is_reported_as_unknown() {
        use crate::fault_proxy::{dsn_via, Proxy};
        let admin = connect().await;
        let t = format!("commit_unknown_{}_{}", crate::support::runtime_name().replace('-', "_"), std::process::id());
        admin.batch_execute(&format!("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int)")).await.unwrap();

        // The server runs the COMMIT; its answer never reaches the client.
        let proxy = Proxy::losing_answer_to(server_addr(), b"COMMIT");
        let conn = crate::support::options(&dsn_via(proxy.port)).connect().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        conn.execute(&format!("INSERT INTO {t} VALUES (1)"), &[]).await.unwrap();
        let err = tx.commit().await.unwrap_err();
        assert!(proxy.fired.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(err.kind(), aiopg::ErrorKind::CommitUnknown, "{err}");
        assert!(err.is_commit_unknown() && err.is_closed(), "{err}");
        assert!(err.to_string().contains("may or may not have committed"), "{err}");
        assert!(conn.is_closed());
        // Here it did commit.
        let n: i64 = admin.query(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap()[0].get(0);
        assert_eq!(n, 1);

        // A commit on a connection already known to be closed never left the client: a
        // plain failure, and nothing committed.
        let conn = connect().await;
        let mut tx = conn.begin().await.unwrap();
        conn.execute(&format!("INSERT INTO {t} VALUES (2)"), &[]).await.unwrap();
        let pid = conn.backend_pid();
        admin.query("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
        assert!(conn.query("SELECT 1", &[]).await.unwrap_err().is_closed());
        let err = tx.commit().await.unwrap_err();
        assert_eq!(err.kind(), aiopg::ErrorKind::Closed, "{err}");
        let n: i64 = admin.query(&format!("SELECT count(*) FROM {t} WHERE id = 2"), &[]).await.unwrap()[0].get(0);
        assert_eq!(n, 0);
        admin.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}
