//! LISTEN/NOTIFY and notices: `notifies()`, `notices()` and `Listener`, against the real
//! server, on every runtime.

use std::time::Duration;

use aiopg::{Connection, ErrorKind, ListenerEvent, Notifies, Pool};
use futures_util::StreamExt;

use crate::pool_faults::{pg_ctl, private_admin, private_cluster, PrivateCluster};
use crate::support::{connect, dsn, options, rt_test, runtime, spawn};

/// How long a stream may take to end after its connection is closed or killed.
const END_BOUND: Duration = Duration::from_secs(2);

fn channel(test: &str, conn: &Connection) -> String {
    format!("notify_{test}_{}", conn.backend_pid())
}

async fn within<T>(what: &str, limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    match aiopg::rt::timeout(&*runtime(), limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} took longer than {limit:?}"),
    }
}

/// The payload as the number the tests send.
fn number(n: &aiopg::Notification) -> u64 {
    n.payload.parse().expect("a numeric payload")
}

/// Everything already buffered on the stream: the numbers in order, and how many were
/// reported missed.
fn drain(stream: &mut Notifies, numbers: &mut Vec<u64>) -> u64 {
    let mut missed = 0;
    while let Some(item) = stream.next_buffered() {
        match item {
            Ok(n) => numbers.push(number(&n)),
            Err(e) if e.kind() == ErrorKind::Lagged => missed += e.missed().expect("a count"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    missed
}

rt_test! {
    async fn ten_thousand_notifications_arrive_in_order_while_the_listener_idles_and_queries() {
        const TOTAL: u64 = 10_000;
        // Room for the whole burst: this test is about order and loss, not about lagging
        // (the notifier may run far ahead of the consumer).
        let listener = options(&dsn()).event_capacity(TOTAL as usize).connect().await.unwrap();
        let chan = channel("order", &listener);
        let mut stream = listener.notifies();
        listener.batch_execute(&format!("LISTEN {chan}")).await.unwrap();
        let notifier = connect().await;
        let c = chan.clone();
        let sender = spawn(async move {
            // 100 transactions of 100: notifications of one transaction are delivered
            // together, those of different transactions in commit order.
            for batch in 0..100i64 {
                notifier
                    .execute(
                        "SELECT pg_notify($1, g::text) FROM generate_series($2::int8, $3::int8) g",
                        &[&c, &(batch * 100 + 1), &(batch * 100 + 100)],
                    )
                    .await
                    .unwrap();
            }
        });
        let mut got: Vec<u64> = Vec::new();
        let mut round = 0i64;
        while (got.len() as u64) < TOTAL {
            // Idle: wait on the stream alone, which reads the socket itself.
            for _ in 0..97 {
                if got.len() as u64 == TOTAL {
                    break;
                }
                let n = within("a notification", Duration::from_secs(30), stream.next())
                    .await
                    .expect("the stream goes on")
                    .expect("no error, no lag");
                assert_eq!(n.channel, chan);
                got.push(number(&n));
            }
            // Busy: queries on the listening connection read the notifications in between
            // their answers, and still get their own answers.
            for k in 0..3 {
                round += 1;
                let v: i64 = listener
                    .query_scalar("SELECT $1::int8 * 10", &[&round])
                    .await
                    .unwrap();
                assert_eq!(v, round * 10, "query {k} of round {round} got its own answer");
            }
            assert_eq!(drain(&mut stream, &mut got), 0, "nothing was dropped");
        }
        sender.await;
        let want: Vec<u64> = (1..=TOTAL).collect();
        assert!(got == want, "notifications out of order or lost: got {} of them", got.len());
    }
}

rt_test! {
    async fn a_flood_while_the_consumer_sleeps_stays_bounded_and_reports_what_was_dropped() {
        const FLOOD: u64 = 100_000;
        let cap = aiopg::DEFAULT_EVENT_CAPACITY;
        let listener = connect().await;
        let chan = channel("flood", &listener);
        let mut stream = listener.notifies();
        listener.batch_execute(&format!("LISTEN {chan}")).await.unwrap();
        let notifier = connect().await;
        notifier
            .execute(
                "SELECT pg_notify($1, g::text) FROM generate_series(1, $2::int8) g",
                &[&chan, &(FLOOD as i64)],
            )
            .await
            .unwrap();
        // The consumer does not poll its stream; the connection's queries read the flood.
        let mut got = Vec::new();
        let mut missed = 0;
        for _ in 0..100 {
            listener.execute("SELECT 1", &[]).await.unwrap();
            let before = got.len();
            missed += drain(&mut stream, &mut got);
            assert!(got.len() - before <= cap, "more than the capacity was buffered");
            if got.last() == Some(&FLOOD) {
                break;
            }
        }
        assert_eq!(got.last(), Some(&FLOOD), "the flood's end arrived");
        assert!(missed > 0, "a flood past the capacity is reported");
        assert_eq!(got.len() as u64 + missed, FLOOD, "every notification is delivered or counted");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
        // The stream goes on with what comes next.
        notifier.execute("SELECT pg_notify($1, '0')", &[&chan]).await.unwrap();
        let next = within("the next notification", Duration::from_secs(10), stream.next()).await;
        assert_eq!(number(&next.unwrap().unwrap()), 0);
    }
}

rt_test! {
    async fn close_ends_a_waiting_stream_with_an_error_promptly() {
        let listener = connect().await;
        let chan = channel("close", &listener);
        let mut stream = listener.notifies();
        listener.batch_execute(&format!("LISTEN {chan}")).await.unwrap();
        let waiting = spawn(async move {
            let first = stream.next().await.map(|r| r.map_err(|e| e.kind()).map(|n| n.payload));
            (first, stream.next().await.is_none())
        });
        listener.close().await;
        let (first, ended) = within("the stream's end after close()", END_BOUND, waiting).await;
        assert_eq!(first, Some(Err(ErrorKind::Closed)));
        assert!(ended, "the stream ends after the error");
        let mut after_close = listener.notifies();
        let err = within("a stream opened after close()", END_BOUND, after_close.next())
            .await
            .expect("an error first")
            .expect_err("closed");
        assert_eq!(err.kind(), ErrorKind::Closed);
        assert!(after_close.next().await.is_none(), "then the stream ends");
    }
}

rt_test! {
    async fn a_terminated_backend_ends_a_waiting_stream_with_an_error_promptly() {
        let listener = connect().await;
        let chan = channel("terminate", &listener);
        let mut stream = listener.notifies();
        listener.batch_execute(&format!("LISTEN {chan}")).await.unwrap();
        let admin = connect().await;
        admin.execute("SELECT pg_notify($1, 'before')", &[&chan]).await.unwrap();
        // A query reads it into the connection's buffer (the server sends pending
        // notifications before its ReadyForQuery); otherwise the backend might die before
        // sending it at all.
        listener.execute("SELECT 1", &[]).await.unwrap();
        let waiting = spawn(async move {
            let mut items = Vec::new();
            while let Some(item) = stream.next().await {
                items.push(item.map(|n| n.payload).map_err(|e| e.kind()));
            }
            items
        });
        let killed: bool = admin
            .query_scalar("SELECT pg_terminate_backend($1)", &[&listener.backend_pid()])
            .await
            .unwrap();
        assert!(killed);
        let items = within("the stream's end after pg_terminate_backend", END_BOUND, waiting).await;
        // What was buffered comes first, then the error.
        assert_eq!(items, vec![Ok("before".to_owned()), Err(ErrorKind::Closed)]);
        assert!(listener.is_closed());
    }
}

rt_test! {
    async fn every_open_stream_sees_every_notification() {
        let listener = connect().await;
        let chan = channel("fanout", &listener);
        let mut a = listener.notifies();
        let mut b = listener.notifies();
        listener.batch_execute(&format!("LISTEN {chan}")).await.unwrap();
        let notifier = connect().await;
        for i in 1..=5i64 {
            notifier.execute("SELECT pg_notify($1, $2::int8::text)", &[&chan, &i]).await.unwrap();
        }
        let mut got_a = Vec::new();
        let mut got_b = Vec::new();
        while got_a.len() < 5 {
            got_a.push(number(&a.next().await.unwrap().unwrap()));
        }
        // b did not poll: a read the socket for both.
        while got_b.len() < 5 {
            got_b.push(number(&b.next().await.unwrap().unwrap()));
        }
        assert_eq!(got_a, [1, 2, 3, 4, 5]);
        assert_eq!(got_b, [1, 2, 3, 4, 5]);
        // A stream opened now sees only what comes after it.
        let mut c = listener.notifies();
        notifier.execute("SELECT pg_notify($1, '6')", &[&chan]).await.unwrap();
        assert_eq!(number(&c.next().await.unwrap().unwrap()), 6);
        assert_eq!(number(&a.next().await.unwrap().unwrap()), 6);
        assert!(c.next_buffered().is_none());
    }
}

rt_test! {
    async fn notices_are_a_bounded_stream_that_reports_what_it_dropped() {
        let conn = options(&dsn()).event_capacity(3).connect().await.unwrap();
        let mut notices = conn.notices();
        conn.batch_execute(
            "DO $$ BEGIN FOR i IN 1..10 LOOP RAISE NOTICE 'n%', i; END LOOP; END $$",
        )
        .await
        .unwrap();
        let lag = notices.next_buffered().expect("an item").expect_err("lagged first");
        assert_eq!(lag.kind(), ErrorKind::Lagged);
        assert_eq!(lag.missed(), Some(7));
        let rest: Vec<String> = std::iter::from_fn(|| notices.next_buffered())
            .map(|n| n.unwrap().message().to_owned())
            .collect();
        assert_eq!(rest, ["n8", "n9", "n10"]);
        // A warning has its SQLSTATE.
        conn.batch_execute("DO $$ BEGIN RAISE WARNING 'careful' USING ERRCODE = '01000'; END $$")
            .await
            .unwrap();
        let w = notices.next().await.unwrap().unwrap();
        assert_eq!((w.severity(), w.message()), ("WARNING", "careful"));
        assert_eq!(w.code().code(), "01000");
    }
}

rt_test! {
    async fn a_pooled_connection_s_stream_goes_stale_and_the_next_borrower_sees_nothing_old() {
        let pool = Pool::builder(options(&dsn())).runtime(runtime()).max_size(1).build().await.unwrap();
        let conn = pool.acquire().await.unwrap();
        let chan = channel("pooled", conn.connection());
        let mut stream = conn.notifies();
        conn.batch_execute(&format!("LISTEN {chan}")).await.unwrap();
        let notifier = connect().await;
        notifier.execute("SELECT pg_notify($1, '1')", &[&chan]).await.unwrap();
        // Read (and buffered for the stream) before the connection goes back.
        conn.execute("SELECT 1", &[]).await.unwrap();
        let pid = conn.backend_pid();
        drop(conn);
        let err = stream.next().await.expect("an error").expect_err("stale");
        assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
        assert!(stream.next().await.is_none());
        let again = pool.acquire().await.unwrap();
        assert_eq!(again.backend_pid(), pid, "the same connection");
        let mut fresh = again.notifies();
        assert!(fresh.next_buffered().is_none(), "the last borrower's notification is gone");
    }
}

rt_test! {
    async fn a_listener_quotes_channel_names_and_filters_unlistened_ones() {
        let mut listener = aiopg::Listener::connect(options(&dsn())).await.unwrap();
        let odd = format!("it's a \"chan\"; DROP TABLE x {}", listener.backend_pid());
        let plain = format!("Plain Case {}", listener.backend_pid());
        listener.listen(&odd).await.unwrap();
        listener.listen(&plain).await.unwrap();
        assert_eq!(listener.channels().count(), 2);
        let notifier = connect().await;
        notifier.execute("SELECT pg_notify($1, 'one')", &[&odd]).await.unwrap();
        match listener.recv().await.unwrap() {
            ListenerEvent::Notification(n) => assert_eq!((n.channel.as_str(), n.payload.as_str()), (odd.as_str(), "one")),
            other => panic!("{other:?}"),
        }
        listener.unlisten(&odd).await.unwrap();
        notifier.execute("SELECT pg_notify($1, 'two')", &[&odd]).await.unwrap();
        notifier.execute("SELECT pg_notify($1, 'three')", &[&plain]).await.unwrap();
        match listener.recv().await.unwrap() {
            ListenerEvent::Notification(n) => assert_eq!((n.channel.as_str(), n.payload.as_str()), (plain.as_str(), "three")),
            other => panic!("{other:?}"),
        }
        let too_long = "x".repeat(64);
        assert_eq!(listener.listen(&too_long).await.unwrap_err().kind(), ErrorKind::Usage);
        listener.unlisten_all().await.unwrap();
        assert_eq!(listener.channels().count(), 0);
        listener.close().await;
        assert_eq!(listener.recv().await.unwrap_err().kind(), ErrorKind::Closed);
    }
}

/// Waits for the `Reconnected` event, then checks that a notification sent after it arrives.
async fn reconnects_and_hears(listener: &mut aiopg::Listener, notifier_dsn: &str, chan: &str) {
    let ev = within("the reconnect", Duration::from_secs(60), listener.recv())
        .await
        .unwrap();
    assert_eq!(
        ev,
        ListenerEvent::Reconnected {
            missed_possible: true
        }
    );
    let notifier = options(notifier_dsn).connect().await.unwrap();
    notifier
        .execute("SELECT pg_notify($1, 'after')", &[&chan])
        .await
        .unwrap();
    match within(
        "a notification after the reconnect",
        Duration::from_secs(10),
        listener.recv(),
    )
    .await
    .unwrap()
    {
        ListenerEvent::Notification(n) => {
            assert_eq!((n.channel.as_str(), n.payload.as_str()), (chan, "after"))
        }
        other => panic!("{other:?}"),
    }
}

rt_test! {
    async fn a_listener_survives_pg_terminate_backend() {
        let pool = Pool::builder(options(&dsn()))
            .runtime(runtime())
            .min_size(0)
            .max_size(2)
            .build()
            .await
            .unwrap();
        let mut listener = pool.listener().await.unwrap();
        assert_eq!(pool.size(), 0, "a listener's connection is not the pool's");
        let chan = format!("survivor {}", listener.backend_pid());
        listener.listen(&chan).await.unwrap();
        let old = listener.backend_pid();
        let admin = connect().await;
        admin.execute("SELECT pg_notify($1, 'before')", &[&chan]).await.unwrap();
        match listener.recv().await.unwrap() {
            ListenerEvent::Notification(n) => assert_eq!(n.payload, "before"),
            other => panic!("{other:?}"),
        }
        admin.query_scalar::<bool>("SELECT pg_terminate_backend($1)", &[&old]).await.unwrap();
        reconnects_and_hears(&mut listener, &dsn(), &chan).await;
        assert_ne!(listener.backend_pid(), old);
    }
}

rt_test! {
    async fn a_listener_survives_a_server_restart() {
        let Some(cluster) = private_cluster("listener_restart").await else { return };
        let app = "aiopg_listener_restart";
        let mut listener = aiopg::Listener::connect(options(&cluster.dsn(app))).await.unwrap();
        listener.reconnect_backoff(Duration::from_millis(20), Duration::from_millis(500));
        listener.listen("restart channel").await.unwrap();
        pg_ctl(&cluster, PrivateCluster::restart).await;
        reconnects_and_hears(&mut listener, &cluster.dsn(app), "restart channel").await;
        drop(private_admin(&cluster).await);
    }
}
