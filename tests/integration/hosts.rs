//! Host lists as libpq reads them: hosts in order (or shuffled), `target_session_attrs`
//! checked on each server, a mismatch moving on to the next host, `connect_timeout` per
//! address, and an error that names every host that failed and why.

use std::net::TcpListener;
use std::time::Duration;

use aiopg::ErrorKind;

use crate::support::{options, require_cluster, rt_test};

/// A loopback port nothing listens on.
pub(crate) fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    l.local_addr().expect("address").port()
}

fn cluster_port() -> Option<u16> {
    Some(require_cluster("hosts")?.port)
}

rt_test! {
    async fn the_first_reachable_host_serves_and_failures_before_it_are_skipped() {
        let Some(port) = cluster_port() else { return };
        let dead = closed_port();
        let conn = options(&format!(
            "host=127.0.0.1,127.0.0.1 port={dead},{port} user=aiopg_trust dbname=postgres \
             sslmode=disable connect_timeout=10"
        ))
        .connect()
        .await
        .expect("the second host is up");
        let rows = conn.query("SELECT 1", &[]).await.expect("query");
        assert_eq!(rows[0].get::<i32>(0), 1);
        conn.close().await;
    }
}

rt_test! {
    async fn when_every_host_fails_the_error_names_each_and_why() {
        let (a, b) = (closed_port(), closed_port());
        let e = options(&format!(
            "host=127.0.0.1,127.0.0.1 port={a},{b} user=u dbname=d sslmode=disable connect_timeout=10"
        ))
        .connect()
        .await
        .expect_err("nothing listens");
        let text = e.to_string();
        assert!(text.contains("any of 2 hosts"), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{a}")), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{b}")), "{text}");
        assert_eq!(e.kind(), ErrorKind::Io, "{text}");
    }
}

rt_test! {
    async fn a_primary_matches_read_write_and_primary_but_not_standby_or_read_only() {
        let Some(port) = cluster_port() else { return };
        let dsn = |attrs: &str| {
            format!(
                "host=127.0.0.1 port={port} user=aiopg_trust dbname=postgres sslmode=disable \
                 target_session_attrs={attrs}"
            )
        };
        for attrs in ["any", "read-write", "primary", "prefer-standby"] {
            let conn = options(&dsn(attrs))
                .connect()
                .await
                .unwrap_or_else(|e| panic!("{attrs}: {e}"));
            conn.close().await;
        }
        for (attrs, why) in [
            ("standby", "not in hot standby"),
            ("read-only", "not read-only"),
        ] {
            let e = options(&dsn(attrs))
                .connect()
                .await
                .expect_err("a primary is not that");
            assert_eq!(e.kind(), ErrorKind::WrongServer, "{attrs}: {e}");
            assert!(e.to_string().contains(why), "{attrs}: {e}");
            assert!(e.to_string().contains(attrs), "{attrs}: {e}");
        }
    }
}

rt_test! {
    async fn a_read_only_server_fails_read_write_and_matches_read_only() {
        let Some(port) = cluster_port() else { return };
        // default_transaction_read_only is reported at start-up and makes a server read-only.
        let dsn = |attrs: &str| {
            format!(
                "host=127.0.0.1 port={port} user=aiopg_trust dbname=postgres sslmode=disable \
                 options='-c default_transaction_read_only=on' target_session_attrs={attrs}"
            )
        };
        let e = options(&dsn("read-write"))
            .connect()
            .await
            .expect_err("read-only session");
        assert_eq!(e.kind(), ErrorKind::WrongServer, "{e}");
        let conn = options(&dsn("read-only")).connect().await.expect("read-only matches");
        conn.close().await;
        // Not a standby, though: primary still matches.
        let conn = options(&dsn("primary")).connect().await.expect("primary matches");
        conn.close().await;
    }
}

rt_test! {
    async fn connect_timeout_bounds_each_address_on_its_own() {
        // Two silent servers: the kernel accepts, nobody answers. Each gets the whole timeout,
        // and the error names both.
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (pa, pb) = (a.local_addr().unwrap().port(), b.local_addr().unwrap().port());
        let e = options(&format!(
            "host=127.0.0.1,127.0.0.1 port={pa},{pb} user=u dbname=d sslmode=disable"
        ))
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .expect_err("both are silent");
        let text = e.to_string();
        assert!(e.is_timeout(), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{pa}")) && text.contains(&format!("127.0.0.1:{pb}")), "{text}");
        drop((a, b));
    }
}
