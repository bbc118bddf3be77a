//! Faults of the link between client and server, through [`Proxy`], at chosen phases: each
//! ends with a clear error of the right kind within a stated bound, the connection reports
//! itself closed, and nothing half-done reaches the database.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aiopg::{ErrorKind, CANCEL_GRACE};
use futures_util::{SinkExt, StreamExt};

use crate::fault_proxy::{dsn_via, Fault, Proxy};
use crate::support::{connect, options, rt_test};

fn server_addr() -> std::net::SocketAddr {
    let c = crate::support::cluster().expect("the xtask cluster");
    format!("127.0.0.1:{}", c.port).parse().unwrap()
}

async fn through(fault: Fault, trigger: &'static [u8]) -> (Proxy, aiopg::Connection) {
    let proxy = Proxy::start(server_addr(), trigger, fault);
    let conn = options(&dsn_via(proxy.port)).connect().await.unwrap();
    (proxy, conn)
}

fn table(name: &str) -> String {
    format!(
        "faults_{name}_{}_{}",
        crate::support::runtime_name().replace('-', "_"),
        std::process::id()
    )
}

/// Waits (bounded) until server process `pid` has exited: only the server can make this true.
async fn gone(admin: &aiopg::Connection, pid: i32) {
    for _ in 0..5_000 {
        let rows = admin
            .query("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await
            .unwrap();
        if rows.is_empty() {
            return;
        }
        crate::support::runtime()
            .sleep(Duration::from_millis(2))
            .await;
    }
    panic!("server process {pid} never exited");
}

const ROWS_SQL: &str = "SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g";

rt_test! {
    async fn a_link_cut_mid_row_fails_the_query_and_closes() {
        // Cut 5,000 bytes into the answer: inside a DataRow.
        let (proxy, conn) = through(Fault::CutAfterServerBytes(5_000), b"generate_series").await;
        let started = Instant::now();
        let err = conn.query(ROWS_SQL, &[]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
        assert!(conn.is_closed() && proxy.fired.load(Ordering::SeqCst));
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        // The same through a row stream: the rows before the cut, then the error, then the end.
        let (_proxy, conn) = through(Fault::CutAfterServerBytes(50_000), b"generate_series").await;
        let mut rows = conn.query_stream(ROWS_SQL, &[]).await.unwrap();
        let (mut got, mut failed) = (0, None);
        while let Some(r) = rows.next().await {
            match r {
                Ok(row) => {
                    got += 1;
                    assert_eq!(row.get::<i32>(0), got);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let err = failed.expect("the stream fails at the cut");
        assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
        assert!(got < 100_000, "{got} rows came through a cut link");
        assert!(conn.is_closed());
    }
}

rt_test! {
    async fn a_stalled_server_fails_a_timed_query_within_its_timeout_and_grace() {
        let (proxy, conn) = through(Fault::StallServer, b"SELECT 42").await;
        let limit = Duration::from_millis(300);
        let started = Instant::now();
        let err = conn
            .with_timeout(Some(limit), conn.simple_query("SELECT 42"))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(proxy.fired.load(Ordering::SeqCst));
        // The cancel cannot reach the server (the proxy takes no second connection), so the
        // connection is closed, within the timeout and the cancel grace.
        assert!(conn.is_closed(), "{err}");
        assert!(took < limit + CANCEL_GRACE + Duration::from_secs(1), "{took:?}");
    }
}

rt_test! {
    async fn a_link_dropping_the_clients_bytes_fails_a_timed_query_within_its_bound() {
        // The first query goes through; what follows never reaches the server.
        let (proxy, conn) = through(Fault::DropClientBytes, b"SELECT 43").await;
        assert!(!conn.simple_query("SELECT 43").await.unwrap().is_empty());
        let limit = Duration::from_millis(300);
        let started = Instant::now();
        let err = conn
            .with_timeout(Some(limit), conn.query("SELECT 44", &[]))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(proxy.fired.load(Ordering::SeqCst));
        assert!(conn.is_closed());
        assert!(took < limit + CANCEL_GRACE + Duration::from_secs(1), "{took:?}");
    }
}

rt_test! {
    async fn a_link_cut_mid_copy_in_copies_nothing() {
        let admin = connect().await;
        let t = table("copy");
        admin
            .batch_execute(&format!("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (v text)"))
            .await
            .unwrap();
        // 10,000 bytes of COPY data pass, then the link is cut.
        let (proxy, conn) = through(Fault::CutAfterClientBytes(10_000), b"COPY").await;
        let mut w = conn.copy_in(&format!("COPY {t} FROM STDIN")).await.unwrap();
        let line = bytes::Bytes::from(format!("{}\n", "y".repeat(99)));
        let mut res = Ok(());
        for _ in 0..10_000 {
            res = w.send(line.clone()).await;
            if res.is_err() {
                break;
            }
        }
        let end = match res {
            Ok(()) => w.finish().await.map(drop),
            Err(e) => Err(e),
        };
        let err = end.expect_err("the COPY cannot end on a cut link");
        assert!(err.is_closed(), "{err}");
        assert!(proxy.fired.load(Ordering::SeqCst) && conn.is_closed());
        let n: i64 = admin.query(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap()[0].get(0);
        assert_eq!(n, 0, "a cut COPY left rows behind");
        admin.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn a_lost_answer_to_a_plain_query_is_closed_not_commit_unknown() {
        let (proxy, conn) = through(Fault::LoseAnswer, b"SELECT 45").await;
        let err = conn.query("SELECT 45", &[]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
        assert!(proxy.fired.load(Ordering::SeqCst) && conn.is_closed());
    }
}

rt_test! {
    async fn a_lost_answer_to_a_pipelined_transaction_is_commit_unknown_and_truthful() {
        let admin = connect().await;
        let t = table("ptx");
        admin
            .batch_execute(&format!("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (v int4)"))
            .await
            .unwrap();
        let insert = format!("INSERT INTO {t} VALUES ($1)");
        // The statements are prepared first; BEGIN is in the transaction's request only.
        let (proxy, conn) = through(Fault::LoseAnswer, b"BEGIN").await;
        let (one, two) = (1i32, 2i32);
        let mut p = conn.pipeline();
        p.query(&insert, &[&one]).query(&insert, &[&two]);
        let err = p
            .transaction(aiopg::TransactionOptions::default())
            .await
            .expect_err("the answer was lost");
        // Sent whole, answer lost: the client cannot know, and says so.
        assert_eq!(err.kind(), ErrorKind::CommitUnknown, "{err}");
        assert!(err.is_commit_unknown() && err.is_closed());
        assert!(proxy.fired.load(Ordering::SeqCst) && conn.is_closed());
        // Whatever happened, it happened whole, once the server process is gone (until then
        // it may still be running the COMMIT it received).
        gone(&admin, conn.backend_pid()).await;
        let n: i64 = admin.query(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap()[0].get(0);
        assert!(n == 0 || n == 2, "{n} rows: half a transaction");

        // A transaction that fails at a statement never commits, answer lost or not.
        let (proxy, conn) = through(Fault::LoseAnswer, b"BEGIN").await;
        let zero = 0i32;
        let mut p = conn.pipeline();
        p.query(&insert, &[&one])
            .query("SELECT 1 / $1::int4", &[&zero]);
        let before = n;
        let err = p
            .transaction(aiopg::TransactionOptions::default())
            .await
            .expect_err("the answer was lost");
        assert!(err.is_closed(), "{err}");
        assert!(proxy.fired.load(Ordering::SeqCst));
        gone(&admin, conn.backend_pid()).await;
        let n: i64 = admin.query(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap()[0].get(0);
        assert_eq!(n, before, "a failed transaction left rows");
        admin.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn a_pipelined_transaction_cut_before_its_commit_left_commits_nothing() {
        let admin = connect().await;
        let t = table("ptx_cut");
        admin
            .batch_execute(&format!("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (v int4, pad text)"))
            .await
            .unwrap();
        // The link is cut soon after the request's start: the rest of its 4 MB, COMMIT
        // included, never reaches the server.
        let (proxy, conn) = through(Fault::CutAfterClientBytes(60), b"BEGIN").await;
        let insert = format!("INSERT INTO {t} VALUES ($1, $2)");
        let (one, pad) = (1i32, "p".repeat(2 << 20));
        let mut p = conn.pipeline();
        p.query(&insert, &[&one, &pad]).query(&insert, &[&one, &pad]);
        let err = p
            .transaction(aiopg::TransactionOptions::default())
            .await
            .expect_err("the link was cut");
        assert!(err.is_closed(), "{err}");
        assert!(proxy.fired.load(Ordering::SeqCst) && conn.is_closed());
        let n: i64 = admin.query(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap()[0].get(0);
        assert_eq!(n, 0, "a transaction whose COMMIT never left committed");
        admin.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}
