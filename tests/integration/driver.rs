//! The optional driver task (`Connection::driver`, `ConnectOptions::driver_task`): only it
//! reads the socket, and every caller still gets its own answer, on every runtime.

use std::time::Duration;

use aiopg::{Connection, ErrorKind};
use futures_util::{StreamExt, TryStreamExt};

use crate::pool::{app_name, backends, poll_once, terminate_backends, wait_backends};
use crate::support::{connect, dsn, options, poll_then_drop, rt_test, runtime, spawn};

/// How long a driver may take to end once its connection is closed or dropped.
const END_BOUND: Duration = Duration::from_secs(2);

async fn within<T>(what: &str, limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    match aiopg::rt::timeout(&*runtime(), limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} took longer than {limit:?}"),
    }
}

async fn connect_driven(app: &str) -> Connection {
    let mut opts = options(&dsn()).driver_task(true);
    opts.config_mut().application_name(app);
    opts.connect().await.expect("connect to the test server")
}

/// What one future of the mixed batch asked for, and got.
#[derive(Debug, PartialEq)]
enum Answer {
    Value(i64),
    Rows(i64, u64),
    Failed(ErrorKind),
    Dropped,
}

rt_test! {
    async fn with_a_driver_the_futures_of_one_task_each_get_their_own_answer() {
        let conn = connect_driven(&app_name("driver_mixed")).await;
        let futs = (0..400i64).map(|i| {
            let conn = conn.clone();
            async move {
                match i % 8 {
                    0 => Answer::Value(conn.query_scalar::<i64>("SELECT $1::int8", &[&i]).await.unwrap()),
                    1 => Answer::Value(conn.query_scalar::<i64>("SELECT $1::int8 + 0", &[&i]).await.unwrap()),
                    2 => {
                        let rows = conn.simple_query(&format!("SELECT {i}::int8")).await.unwrap();
                        match &rows[0] {
                            aiopg::SimpleQueryMessage::Row(r) => Answer::Value(r.get(0).unwrap().parse().unwrap()),
                            other => panic!("{other:?}"),
                        }
                    }
                    3 => {
                        // A row stream: its sum and count, as the rows arrive.
                        let mut s = conn
                            .query_stream("SELECT g::int8 FROM generate_series(1, $1::int8) g", &[&i])
                            .await
                            .unwrap();
                        let mut sum = 0;
                        while let Some(row) = s.try_next().await.unwrap() {
                            sum += row.get::<i64>(0);
                        }
                        Answer::Rows(sum, s.rows_affected().unwrap())
                    }
                    // A type mismatch (refused before sending) and a SQL error (from the server).
                    4 => Answer::Failed(conn.query("SELECT $1::int8", &[&"text"]).await.unwrap_err().kind()),
                    5 => Answer::Failed(conn.query("SELECT 1 / ($1::int8 - $1)", &[&i]).await.unwrap_err().kind()),
                    // Callers that give up at once or mid-flight.
                    6 => match poll_then_drop(conn.query_scalar::<i64>("SELECT $1::int8", &[&i]), (i as usize / 8) % 3).await {
                        Some(v) => Answer::Value(v.unwrap()),
                        None => Answer::Dropped,
                    },
                    _ => Answer::Value(conn.execute("SELECT generate_series(1, $1::int8)", &[&i]).await.unwrap() as i64),
                }
            }
        });
        let got = futures_util::future::join_all(futs).await;
        for (i, a) in (0..400i64).zip(&got) {
            let want = match i % 8 {
                3 => Answer::Rows(i * (i + 1) / 2, i as u64),
                4 => Answer::Failed(ErrorKind::Encode),
                5 => Answer::Failed(ErrorKind::Db),
                6 if *a == Answer::Dropped => Answer::Dropped,
                _ => Answer::Value(i),
            };
            assert_eq!(*a, want, "future {i}");
        }
        // The connection is in sync after all of it.
        assert_eq!(conn.query_scalar::<i64>("SELECT $1::int8", &[&4242i64]).await.unwrap(), 4242);
    }
}

rt_test! {
    async fn a_slow_row_stream_holds_the_driver_back_and_its_neighbours_still_get_their_answers() {
        let conn = connect_driven(&app_name("driver_stream")).await;
        // Far more than the stream buffers: the driver must stop reading while it is full.
        let mut rows = conn
            .query_stream("SELECT g::int8, repeat('x', 200) FROM generate_series(1, 50000) g", &[])
            .await
            .unwrap();
        let other = conn.clone();
        let neighbours = spawn(async move {
            let mut got = Vec::new();
            for i in 0..50i64 {
                got.push(other.query_scalar::<i64>("SELECT $1::int8", &[&i]).await.unwrap());
            }
            got
        });
        let mut next = 1i64;
        while let Some(row) = rows.try_next().await.unwrap() {
            assert_eq!(row.get::<i64>(0), next);
            next += 1;
            if next % 1000 == 0 {
                // The consumer pauses (a runtime yield, not a sleep) now and then.
                runtime().sleep(Duration::ZERO).await;
            }
        }
        assert_eq!(next, 50001);
        assert_eq!(neighbours.await, (0..50).collect::<Vec<_>>());
    }
}

rt_test! {
    async fn notifications_reach_an_idle_connection_through_its_driver() {
        let listener = connect_driven(&app_name("driver_listen")).await;
        let chan = format!("driver_{}", listener.backend_pid());
        let mut stream = listener.notifies();
        listener.batch_execute(&format!("LISTEN {chan}")).await.unwrap();
        let notifier = connect().await;
        for i in 0..100i32 {
            notifier.execute("SELECT pg_notify($1, $2::int4::text)", &[&chan, &i]).await.unwrap();
        }
        // With a driver the stream never reads the socket itself: the driver does.
        let got: Vec<String> = within(
            "100 notifications",
            Duration::from_secs(10),
            (&mut stream).take(100).map(|n| n.unwrap().payload).collect(),
        )
        .await;
        assert_eq!(got, (0..100).map(|i| i.to_string()).collect::<Vec<_>>());
    }
}

rt_test! {
    async fn dropping_the_last_handle_ends_the_driver_and_the_backend() {
        let app = app_name("driver_drop");
        let admin = connect().await;
        let mut opts = options(&dsn());
        opts.config_mut().application_name(&app);
        let conn = opts.connect().await.unwrap();
        let driver = spawn(conn.driver());
        conn.query("SELECT 1", &[]).await.unwrap();
        assert_eq!(backends(&admin, &app).await, vec![conn.backend_pid()]);
        drop(conn);
        within("the driver's end after the last handle dropped", END_BOUND, driver).await;
        wait_backends(&admin, &app, 0).await;
    }
}

rt_test! {
    async fn close_ends_the_driver() {
        let conn = connect().await;
        let driver = spawn(conn.driver());
        conn.query("SELECT 1", &[]).await.unwrap();
        conn.close().await;
        within("the driver's end after close()", END_BOUND, driver).await;
        assert_eq!(conn.query("SELECT 1", &[]).await.unwrap_err().kind(), ErrorKind::Closed);
    }
}

rt_test! {
    async fn drivers_dropped_mid_flight_hand_reading_back_to_the_callers() {
        let conn = connect().await;
        let other = conn.clone();
        let callers = spawn(async move {
            let mut wrong = Vec::new();
            for i in 0..300i64 {
                let v = other.query_scalar::<i64>("SELECT $1::int8", &[&i]).await.unwrap();
                if v != i {
                    wrong.push((i, v));
                }
            }
            wrong
        });
        // Drivers come and go while the callers' queries are in flight.
        for round in 0..60usize {
            poll_then_drop(conn.driver(), 1 + round % 4).await;
        }
        assert_eq!(callers.await, Vec::<(i64, i64)>::new());
        assert_eq!(conn.query_scalar::<i64>("SELECT 7::int8", &[]).await.unwrap(), 7);
    }
}

rt_test! {
    async fn a_second_driver_of_a_connection_ends_at_once() {
        let conn = connect().await;
        let mut first = Box::pin(conn.driver());
        assert!(poll_once(&mut first).await.is_pending(), "the first driver runs");
        let first = spawn(first);
        within("a second driver", END_BOUND, conn.driver()).await;
        // The first one reads for the callers.
        assert_eq!(conn.query_scalar::<i64>("SELECT 1::int8", &[]).await.unwrap(), 1);
        drop(conn);
        within("the first driver's end", END_BOUND, first).await;
    }
}

rt_test! {
    async fn a_pool_with_drivers_never_hands_out_a_terminated_backend() {
        let app = app_name("driver_pool");
        let admin = connect().await;
        let mut opts = options(&dsn()).driver_task(true);
        opts.config_mut().application_name(&app);
        let pool = aiopg::Pool::builder(opts)
            .runtime(runtime())
            .min_size(2)
            .max_size(2)
            .test_on_acquire(None)
            .build()
            .await
            .unwrap();
        let killed = backends(&admin, &app).await;
        assert_eq!(killed.len(), 2);
        terminate_backends(&admin, &app).await;
        let conns = [pool.acquire().await.unwrap(), pool.acquire().await.unwrap()];
        for c in &conns {
            assert!(!killed.contains(&c.backend_pid()), "a terminated backend was handed out");
            assert_eq!(c.query_scalar::<i64>("SELECT 3::int8", &[]).await.unwrap(), 3);
        }
    }
}

rt_test! {
    async fn with_a_driver_copy_in_and_out_run_beside_queries_of_the_same_task() {
        // The driver writes every request, a COPY's data included: 200,000 rows in chunks
        // larger than the socket takes at once (backpressure through the driver), while
        // other futures of the same task issue queries that wait behind the COPY.
        const ROWS: i64 = 200_000;
        let conn = connect_driven(&app_name("driver_copy")).await;
        conn.batch_execute("CREATE TEMP TABLE driver_copy (id int8 PRIMARY KEY, name text NOT NULL)")
            .await
            .unwrap();
        let copy = async {
            let mut w = conn.copy_in("COPY driver_copy FROM STDIN").await.unwrap();
            let mut chunk = String::new();
            for i in 1..=ROWS {
                chunk.push_str(&format!("{i}\tname {i}\n"));
                if chunk.len() >= 256 * 1024 {
                    w.write(chunk.as_bytes()).await.unwrap();
                    chunk.clear();
                }
            }
            w.write(chunk.as_bytes()).await.unwrap();
            w.finish().await.unwrap()
        };
        let queries = futures_util::future::join_all((0..50i64).map(|i| {
            let conn = conn.clone();
            async move { conn.query_scalar::<i64>("SELECT $1::int8 * 2", &[&i]).await }
        }));
        let (copied, answers) = futures_util::future::join(copy, queries).await;
        assert_eq!(copied, ROWS as u64);
        let answers: Vec<i64> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, (0..50i64).map(|i| i * 2).collect::<Vec<_>>());
        let (n, sum): (i64, i64) = {
            let row = conn
                .query_one("SELECT count(*), sum(id)::int8 FROM driver_copy WHERE name = 'name ' || id", &[])
                .await
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert_eq!((n, sum), (ROWS, ROWS * (ROWS + 1) / 2));

        // Out again, beside queries; then the connection answers as before.
        let mut out = conn.copy_out("COPY (SELECT id FROM driver_copy ORDER BY id) TO STDOUT").await.unwrap();
        let read = async {
            let (mut rows, mut sum) = (0i64, 0i64);
            while let Some(chunk) = out.try_next().await.unwrap() {
                for line in std::str::from_utf8(&chunk).unwrap().lines() {
                    sum += line.parse::<i64>().unwrap();
                    rows += 1;
                }
            }
            (rows, sum)
        };
        let query = conn.query_scalar::<i64>("SELECT 41::int8 + 1", &[]);
        let ((rows, sum), answer) = futures_util::future::join(read, query).await;
        assert_eq!((rows, sum), (ROWS, ROWS * (ROWS + 1) / 2));
        assert_eq!(answer.unwrap(), 42);
    }
}

/// The runtime under test, said to have costly self-wakes (as tokio's multi-threaded one
/// has), and counting the tasks spawned on it: the automatic driver is one.
#[derive(Debug)]
struct CostlySelfWake {
    inner: std::sync::Arc<dyn aiopg::rt::Runtime>,
    spawned: std::sync::atomic::AtomicUsize,
}

impl CostlySelfWake {
    fn spawned(&self) -> usize {
        self.spawned.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl aiopg::rt::Runtime for CostlySelfWake {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn spawn(&self, future: aiopg::rt::BoxFuture<'static, ()>) {
        self.spawned
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.spawn(future);
    }
    fn sleep(&self, duration: Duration) -> aiopg::rt::BoxFuture<'static, ()> {
        self.inner.sleep(duration)
    }
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> aiopg::rt::BoxFuture<'static, std::io::Result<Vec<std::net::SocketAddr>>> {
        self.inner.resolve(host, port)
    }
    fn connect_tcp(
        &self,
        addr: std::net::SocketAddr,
        options: &aiopg::rt::TcpOptions,
    ) -> aiopg::rt::BoxFuture<'static, std::io::Result<aiopg::rt::BoxStream>> {
        self.inner.connect_tcp(addr, options)
    }
    fn connect_unix(
        &self,
        path: &std::path::Path,
    ) -> aiopg::rt::BoxFuture<'static, std::io::Result<aiopg::rt::BoxStream>> {
        self.inner.connect_unix(path)
    }
    fn costly_self_wake(&self) -> bool {
        true
    }
}

async fn connect_costly(app: &str, auto: bool) -> (Connection, std::sync::Arc<CostlySelfWake>) {
    let rt = std::sync::Arc::new(CostlySelfWake {
        inner: runtime(),
        spawned: Default::default(),
    });
    let mut opts = options(&dsn()).runtime(rt.clone()).auto_driver(auto);
    opts.config_mut().application_name(app);
    (
        opts.connect().await.expect("connect to the test server"),
        rt,
    )
}

/// 300 futures of one task on one connection, some failing, some streaming: each value back
/// to its own future.
async fn burst(conn: &Connection) {
    let answers = futures_util::future::join_all((0..300i64).map(|i| async move {
        match i % 5 {
            0 => conn
                .query_scalar::<i64>("SELECT $1::int8 / ($1::int8 % 2)", &[&i])
                .await
                .map_err(|e| e.kind()),
            1 => conn
                .query_stream("SELECT $1::int8 FROM generate_series(1, 3)", &[&i])
                .await
                .unwrap()
                .map_ok(|r| r.get::<i64>(0))
                .try_collect::<Vec<_>>()
                .await
                .map(|v| v.iter().sum::<i64>() / 3)
                .map_err(|e| e.kind()),
            _ => conn
                .query_scalar::<i64>("SELECT $1::int8", &[&i])
                .await
                .map_err(|e| e.kind()),
        }
    }))
    .await;
    for (i, a) in (0..300i64).zip(answers) {
        match i % 5 {
            // Even values divide by zero: the server's error, to this future alone.
            0 if i % 2 == 0 => assert_eq!(a, Err(ErrorKind::Db), "future {i}"),
            0 => assert_eq!(a, Ok(i), "future {i}"),
            _ => assert_eq!(a, Ok(i), "future {i}"),
        }
    }
}

rt_test! {
    async fn concurrent_callers_get_a_driver_that_ends_with_the_burst_where_self_wakes_cost() {
        let (conn, rt) = connect_costly(&app_name("driver_auto"), true).await;
        // One caller at a time reads for itself: no driver, no task.
        for i in 0..50i64 {
            assert_eq!(conn.query_scalar::<i64>("SELECT $1::int8", &[&i]).await.unwrap(), i);
        }
        assert_eq!(rt.spawned(), 0, "a lone caller started a driver");
        // Many futures of one task at once: a driver reads for them...
        burst(&conn).await;
        let bursts = rt.spawned();
        assert!(bursts >= 1, "no driver started for 300 concurrent futures");
        // ...and has ended in the turn that routed the last answer.
        assert!(!conn.has_driver(), "the automatic driver outlived its burst");
        for i in 0..50i64 {
            assert_eq!(conn.query_scalar::<i64>("SELECT $1::int8 + 1", &[&i]).await.unwrap(), i + 1);
        }
        assert_eq!(rt.spawned(), bursts, "a lone caller started a driver after a burst");
        // Again, with another caller's multi-statement transaction in the middle.
        let tx = async {
            conn.batch_execute(
                "BEGIN; CREATE TEMP TABLE driver_auto (x int8); \
                 INSERT INTO driver_auto VALUES (7); COMMIT",
            )
            .await
            .unwrap();
            conn.query_scalar::<i64>("SELECT x FROM driver_auto", &[]).await.unwrap()
        };
        let (v, ()) = futures_util::future::join(tx, burst(&conn)).await;
        assert_eq!(v, 7);
        assert!(!conn.has_driver());
        assert_eq!(conn.query_scalar::<i64>("SELECT 42::int8", &[]).await.unwrap(), 42);
    }
}

rt_test! {
    async fn without_auto_driver_concurrent_callers_read_for_themselves() {
        let (conn, rt) = connect_costly(&app_name("driver_auto_off"), false).await;
        burst(&conn).await;
        assert_eq!(rt.spawned(), 0, "auto_driver(false) started a driver");
        assert!(!conn.has_driver());
    }
}

rt_test! {
    async fn an_own_driver_replaces_the_automatic_one_and_runs_on() {
        let (conn, _rt) = connect_costly(&app_name("driver_auto_own"), true).await;
        // The burst's automatic driver may still be starting when the owner's arrives.
        let own = async {
            conn.spawn_driver();
        };
        futures_util::future::join(burst(&conn), own).await;
        assert_eq!(conn.query_scalar::<i64>("SELECT 5::int8", &[]).await.unwrap(), 5);
        assert!(conn.has_driver(), "the owner's driver ended with the burst");
        burst(&conn).await;
        assert!(conn.has_driver());
    }
}
