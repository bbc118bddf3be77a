//! A primary and a streaming standby (started by `cargo xtask test-all-runtimes`):
//! `target_session_attrs` picks the right one whichever is listed first, `prefer-standby`
//! falls back to the primary, `load_balance_hosts=random` spreads connections, and after the
//! primary stops and the standby is promoted, new connections and a pool's next acquire reach
//! the new primary. Failover runs on a pair of its own per runtime, so that the shared
//! cluster stays as it is.

use std::process::Command;

use aiopg::{Connection, ErrorKind, Pool};

use crate::support::{options, rt_test};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The shared primary and standby ports, or a note saying why the test has nothing to do.
fn pair(test: &str) -> Option<(u16, u16)> {
    let p = var("AIOPG_TEST_PORT")?.parse().ok();
    let s = var("AIOPG_TEST_STANDBY_PORT").and_then(|v| v.parse().ok());
    if p.is_none() || s.is_none() {
        eprintln!("{test}: needs the standby of `cargo xtask test-all-runtimes` (AIOPG_TEST_STANDBY_PORT)");
        return None;
    }
    Some((p?, s?))
}

fn hosts_dsn(ports: &[u16], extra: &str) -> String {
    let hosts = vec!["127.0.0.1"; ports.len()].join(",");
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "host={hosts} port={} user=aiopg_trust dbname=postgres sslmode=disable \
         connect_timeout=10 {extra}",
        ports.join(",")
    )
}

async fn in_recovery(conn: &Connection) -> bool {
    let rows = conn
        .query("SELECT pg_catalog.pg_is_in_recovery()", &[])
        .await
        .expect("pg_is_in_recovery");
    rows[0].get::<bool>(0)
}

async fn reaches(dsn: &str) -> bool {
    let conn = options(dsn)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{dsn}: {e}"));
    let standby = in_recovery(&conn).await;
    conn.close().await;
    standby
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address").port()
}

rt_test! {
    async fn target_session_attrs_pick_primary_or_standby_whichever_is_listed_first() {
        let Some((p, s)) = pair("target_session_attrs") else { return };
        for order in [[p, s], [s, p]] {
            for attrs in ["read-write", "primary"] {
                let dsn = hosts_dsn(&order, &format!("target_session_attrs={attrs}"));
                assert!(!reaches(&dsn).await, "{attrs} {order:?} reached the standby");
            }
            for attrs in ["standby", "read-only", "prefer-standby"] {
                let dsn = hosts_dsn(&order, &format!("target_session_attrs={attrs}"));
                assert!(reaches(&dsn).await, "{attrs} {order:?} reached the primary");
            }
        }
        // prefer-standby with the standby down: the primary, in a second pass.
        let dsn = hosts_dsn(&[closed_port(), p], "target_session_attrs=prefer-standby");
        assert!(!reaches(&dsn).await);
        // standby with only a primary: an error naming why.
        let e = options(&hosts_dsn(&[p], "target_session_attrs=standby"))
            .connect()
            .await
            .expect_err("no standby");
        assert_eq!(e.kind(), ErrorKind::WrongServer, "{e}");
    }
}

rt_test! {
    async fn load_balance_hosts_random_spreads_connections_over_both_hosts() {
        let Some((p, s)) = pair("load_balance_hosts") else { return };
        let dsn = hosts_dsn(&[p, s], "load_balance_hosts=random");
        let mut on_standby = 0;
        for _ in 0..100 {
            if reaches(&dsn).await {
                on_standby += 1;
            }
        }
        // Binomial(100, 1/2): outside 20..=80 once in a billion runs.
        assert!((20..=80).contains(&on_standby), "{on_standby} of 100 on the standby");
        // Without it, the first host always serves.
        let dsn = hosts_dsn(&[p, s], "");
        for _ in 0..10 {
            assert!(!reaches(&dsn).await);
        }
    }
}

/// Runs `pg_ctl` on a failover pair's server, as the user the servers run as.
fn pg_ctl(args: &[&str]) {
    let pg_ctl = var("AIOPG_TEST_PG_CTL").expect("AIOPG_TEST_PG_CTL");
    let mut cmd = match var("AIOPG_TEST_PG_RUNAS") {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", &user, "--", &pg_ctl]);
            c
        }
        None => Command::new(&pg_ctl),
    };
    let out = cmd
        .args(args)
        .current_dir("/")
        .output()
        .expect("run pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

rt_test! {
    async fn after_failover_new_connections_and_the_pools_next_acquire_reach_the_new_primary() {
        let (Some(pp), Some(sp), Some(pd), Some(sd)) = (
            var("AIOPG_TEST_FAILOVER_PRIMARY_PORT").and_then(|v| v.parse::<u16>().ok()),
            var("AIOPG_TEST_FAILOVER_STANDBY_PORT").and_then(|v| v.parse::<u16>().ok()),
            var("AIOPG_TEST_FAILOVER_PRIMARY_DATADIR"),
            var("AIOPG_TEST_FAILOVER_STANDBY_DATADIR"),
        ) else {
            eprintln!("failover: needs the failover pair of `cargo xtask test-all-runtimes`");
            return;
        };
        let dsn = hosts_dsn(&[pp, sp], "target_session_attrs=read-write");
        let pool = Pool::builder(options(&dsn))
            .min_size(2)
            .max_size(2)
            .runtime(crate::support::runtime())
            .build()
            .await
            .expect("pool");
        {
            let conn = pool.acquire().await.expect("acquire");
            assert!(!in_recovery(&conn).await);
            conn.execute("CREATE TABLE IF NOT EXISTS failover_probe (v int)", &[])
                .await
                .expect("write on the primary");
        }
        // The primary goes away; the standby is promoted.
        pg_ctl(&["stop", "-m", "fast", "-w", "-D", &pd]);
        pg_ctl(&["promote", "-w", "-D", &sd]);

        // A new connection with the same host list reaches the new primary (the second host).
        let conn = options(&dsn).connect().await.expect("connect after failover");
        assert!(!in_recovery(&conn).await);
        conn.execute("INSERT INTO failover_probe VALUES (1)", &[])
            .await
            .expect("write on the new primary");
        conn.close().await;

        // The pool's idle connections died with the old primary: its next acquires replace
        // them, through host selection, without the caller doing anything.
        for _ in 0..3 {
            let conn = pool.acquire().await.expect("acquire after failover");
            assert!(!in_recovery(&conn).await);
            conn.execute("INSERT INTO failover_probe VALUES (2)", &[])
                .await
                .expect("a pooled write after failover");
        }
        pool.close();
    }
}
