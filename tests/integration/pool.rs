//! The pool: FIFO acquire, timeouts, close and terminate, release clean-up, recycling,
//! on_connect, growth from zero, cancelled acquires, and recovery from killed backends.
//!
//! Each test's pool connects with its own `application_name`, so that `pg_stat_activity`
//! counts only its connections while other tests run alongside.

use std::collections::{HashSet, VecDeque};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use aiopg::prelude::*;
use aiopg::{Connection, ErrorKind, Pool, PoolBuilder, TransactionStatus};

use crate::support::{connect, dsn, options, poll_then_drop, rt_test, runtime, spawn};

/// A unique `application_name` for one test's pool.
pub(crate) fn app_name(test: &str) -> String {
    format!("aiopg_pool_{test}_{}", std::process::id())
}

pub(crate) fn builder(app: &str) -> PoolBuilder {
    let mut opts = options(&dsn());
    opts.config_mut().application_name(app);
    Pool::builder(opts).runtime(runtime())
}

/// The server processes serving connections named `app`.
pub(crate) async fn backends(admin: &Connection, app: &str) -> Vec<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<i32>(0))
        .collect()
}

/// Polls `fut` once with the current task's context.
pub(crate) async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// Waits for a condition that background work (another task, a refill) makes true, checking
/// it every few milliseconds; fails the test after 20 s.
pub(crate) async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let rt = runtime();
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting until {what}"
        );
        rt.sleep(Duration::from_millis(2)).await;
    }
}

/// Terminates every backend named `app` and waits until the server lists none.
pub(crate) async fn terminate_backends(admin: &Connection, app: &str) {
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    wait_backends(admin, app, 0).await;
}

/// Waits until the server lists exactly `n` backends named `app` (processes exit
/// asynchronously after their client goes away).
pub(crate) async fn wait_backends(admin: &Connection, app: &str, n: usize) {
    let start = Instant::now();
    loop {
        let pids = backends(admin, app).await;
        if pids.len() == n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the server lists {} backends for {app}, expected {n}",
            pids.len()
        );
        runtime().sleep(Duration::from_millis(2)).await;
    }
}

rt_test! {
    async fn awaiting_the_builder_builds_the_pool() {
        let app = app_name("into_future");
        let pool = builder(&app).min_size(2).max_size(3).await.unwrap();
        assert_eq!((pool.size(), pool.min_size(), pool.max_size()), (2, 2, 3));
        let admin = connect().await;
        assert_eq!(backends(&admin, &app).await.len(), 2);
        // Invalid settings fail the same way as through build().
        let err = builder(&app).min_size(4).max_size(3).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        pool.close();
        pool.wait_closed().await.unwrap();
    }
}

rt_test! {
    async fn waiters_are_served_in_arrival_order() {
        let pool = builder(&app_name("fifo")).min_size(1).max_size(1).build().await.unwrap();
        let held = pool.acquire().await.unwrap();
        let pid = held.backend_pid();

        // Queue four callers in a known order: each is registered by its first poll.
        let mut queued: VecDeque<_> = VecDeque::new();
        for i in 0..4 {
            let mut fut = Box::pin(pool.acquire());
            assert!(poll_once(&mut fut).await.is_pending());
            assert_eq!(pool.stats().waiting, i + 1);
            queued.push_back((i, fut));
        }
        drop(held);
        // The released connection went to the oldest waiter, not to the idle list: a
        // newcomer queues behind the others.
        assert_eq!(pool.free_size(), 0);
        let mut late = Box::pin(pool.acquire());
        assert!(poll_once(&mut late).await.is_pending());
        assert_eq!(pool.stats().waiting, 4);

        let mut served = Vec::new();
        while let Some((i, fut)) = queued.pop_front() {
            // Only the oldest caller has a connection; the others still wait.
            for (_, later) in queued.iter_mut() {
                assert!(poll_once(later).await.is_pending());
            }
            assert!(poll_once(&mut late).await.is_pending());
            let conn = fut.await.unwrap();
            assert_eq!(conn.backend_pid(), pid);
            served.push(i);
            drop(conn);
        }
        assert_eq!(served, [0, 1, 2, 3]);
        let conn = late.await.unwrap();
        assert_eq!(conn.backend_pid(), pid);
        let stats = pool.stats();
        assert_eq!(stats.waits, 5);
        assert_eq!(stats.acquires, 6);
        assert!(stats.wait_time > Duration::ZERO);
    }
}

rt_test! {
    async fn waiters_in_other_tasks_are_served_in_order() {
        let pool = builder(&app_name("fifo_tasks")).min_size(1).max_size(1).build().await.unwrap();
        let held = pool.acquire().await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (pool2, order) = (pool.clone(), order.clone());
            tasks.push(spawn(async move {
                let conn = pool2.acquire().await.unwrap();
                order.lock().unwrap().push(i);
                conn.query("SELECT 1", &[]).await.unwrap();
            }));
            // The next task starts only once this one is queued.
            wait_until("the task is queued", || pool.stats().waiting == i + 1).await;
        }
        drop(held);
        for t in tasks {
            t.await;
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(pool.size(), 1);
    }
}

rt_test! {
    async fn acquire_times_out_and_says_why() {
        let limit = Duration::from_millis(300);
        let pool = builder(&app_name("timeout"))
            .min_size(1)
            .max_size(1)
            .timeout(limit)
            .build()
            .await
            .unwrap();
        let held = pool.acquire().await.unwrap();
        let start = Instant::now();
        let err = pool.acquire().await.expect_err("the only connection is held");
        let took = start.elapsed();
        assert_eq!(err.kind(), ErrorKind::PoolTimeout, "{err}");
        assert!(err.is_timeout());
        assert!(took >= limit, "gave up early: {took:?}");
        assert!(took < limit + Duration::from_secs(3), "gave up late: {took:?}");
        let msg = err.to_string();
        assert!(msg.contains("pool size 1"), "{msg}");
        assert!(msg.contains("1 in use"), "{msg}");
        assert!(msg.contains("0 waiting"), "{msg}");
        let stats = pool.stats();
        assert_eq!(stats.timeouts, 1);
        assert_eq!(stats.waiting, 0);
        // Nothing was lost: the held connection comes back and is handed out again.
        let pid = held.backend_pid();
        drop(held);
        assert_eq!(pool.free_size(), 1);
        assert_eq!(pool.acquire().await.unwrap().backend_pid(), pid);
    }
}

rt_test! {
    async fn close_fails_waiters_and_later_acquires() {
        let pool = builder(&app_name("close")).min_size(1).max_size(1).build().await.unwrap();
        let held = pool.acquire().await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..3 {
            let pool2 = pool.clone();
            tasks.push(spawn(async move { pool2.acquire().await.map(|_| ()).map_err(|e| e.kind()) }));
            wait_until("the task is queued", || pool.stats().waiting == i + 1).await;
        }
        pool.close();
        assert!(pool.is_closed());
        for t in tasks {
            assert_eq!(t.await, Err(ErrorKind::PoolClosed));
        }
        let err = pool.acquire().await.expect_err("closed pool");
        assert_eq!(err.kind(), ErrorKind::PoolClosed, "{err}");
        // The held connection keeps working until it comes back...
        held.query("SELECT 1", &[]).await.unwrap();
        assert_eq!(pool.size(), 1);
        let mut closed = Box::pin(pool.wait_closed());
        assert!(poll_once(&mut closed).await.is_pending());
        // ...and is closed then.
        let conn: Connection = (*held).clone();
        drop(held);
        closed.await.unwrap();
        assert!(conn.is_closed());
        assert_eq!(pool.size(), 0);
    }
}

rt_test! {
    async fn terminate_closes_connections_in_use() {
        let app = app_name("terminate");
        let pool = builder(&app).min_size(2).max_size(2).build().await.unwrap();
        let a = pool.acquire().await.unwrap();
        let b = pool.acquire().await.unwrap();
        pool.terminate();
        assert!(a.is_closed());
        assert!(b.is_closed());
        let err = a.query("SELECT 1", &[]).await.expect_err("terminated");
        assert!(err.is_closed(), "{err}");
        assert_eq!(pool.acquire().await.expect_err("closed").kind(), ErrorKind::PoolClosed);
        let mut closed = Box::pin(pool.wait_closed());
        assert!(poll_once(&mut closed).await.is_pending());
        drop(a);
        drop(b);
        closed.await.unwrap();
        assert_eq!(pool.size(), 0);
        assert_eq!(pool.stats().connections_closed, 2);
        wait_backends(&connect().await, &app, 0).await;
    }
}

rt_test! {
    async fn wait_closed_on_an_open_pool_is_a_usage_error() {
        let pool = builder(&app_name("wait_open")).min_size(0).build().await.unwrap();
        let err = pool.wait_closed().await.expect_err("open pool");
        assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
    }
}

rt_test! {
    async fn release_inside_a_transaction_rolls_back_and_reuses() {
        let pool = builder(&app_name("release_tx")).min_size(1).max_size(1).build().await.unwrap();
        let conn = pool.acquire().await.unwrap();
        let pid = conn.backend_pid();
        conn.batch_execute("CREATE TEMP TABLE pool_tx (x int)").await.unwrap();
        conn.batch_execute("BEGIN; INSERT INTO pool_tx VALUES (1)").await.unwrap();
        assert_eq!(conn.transaction_status(), TransactionStatus::InTransaction);
        drop(conn);

        let conn = pool.acquire().await.unwrap();
        assert_eq!(conn.backend_pid(), pid, "the connection is reused");
        let rows = conn.query("SELECT count(*) FROM pool_tx", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i64>(0), 0, "the insert was rolled back");
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);

        // A failed transaction, given back with the explicit release.
        conn.batch_execute("BEGIN").await.unwrap();
        conn.query("SELECT 1/0", &[]).await.expect_err("division by zero");
        assert_eq!(conn.transaction_status(), TransactionStatus::InError);
        pool.release(conn).await;
        let conn = pool.acquire().await.unwrap();
        assert_eq!(conn.backend_pid(), pid);
        // The explicit release waited for the rollback.
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
        let rows = conn.query("SELECT 2::int4", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 2);
        assert_eq!(pool.stats().connections_created, 1);
    }
}

rt_test! {
    async fn reset_on_release_forgets_settings_and_listens() {
        let pool = builder(&app_name("reset"))
            .min_size(1)
            .max_size(1)
            .reset_on_release(true)
            .build()
            .await
            .unwrap();
        let conn = pool.acquire().await.unwrap();
        let pid = conn.backend_pid();
        conn.batch_execute("SET work_mem = '3MB'; LISTEN pool_reset_chan").await.unwrap();
        drop(conn);
        let conn = pool.acquire().await.unwrap();
        assert_eq!(conn.backend_pid(), pid);
        let rows = conn.query("SHOW work_mem", &[]).await.unwrap();
        assert_ne!(rows[0].get::<&str>(0), "3MB");
        let rows = conn.query("SELECT count(*) FROM pg_listening_channels()", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i64>(0), 0);
    }
}

rt_test! {
    async fn reset_on_release_under_transaction_pooling_is_refused_at_build() {
        let opts = options(&dsn()).transaction_pooling(true);
        let err = Pool::builder(opts)
            .runtime(runtime())
            .reset_on_release(true)
            .build()
            .await
            .expect_err("reset_on_release with transaction_pooling");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("reset_on_release"), "{err}");
    }
}

rt_test! {
    async fn recycle_replaces_old_connections() {
        let recycle = Duration::from_millis(200);
        let pool = builder(&app_name("recycle"))
            .min_size(1)
            .max_size(1)
            .recycle(recycle)
            .build()
            .await
            .unwrap();
        let first = pool.acquire().await.unwrap().backend_pid();
        // Waiting for the connection to age is what this test is about.
        runtime().sleep(recycle + Duration::from_millis(50)).await;
        // Replaced when acquired...
        let conn = pool.acquire().await.unwrap();
        let second = conn.backend_pid();
        assert_ne!(first, second);
        runtime().sleep(recycle + Duration::from_millis(50)).await;
        // ...and when released.
        drop(conn);
        // Counted as recycled at once (a refill may already be connecting its successor, so
        // `free_size()` is no witness here).
        assert_eq!(
            pool.stats().connections_recycled,
            2,
            "an old connection is not kept on release"
        );
        let conn = pool.acquire().await.unwrap();
        assert_ne!(conn.backend_pid(), second);
        conn.query("SELECT 1", &[]).await.unwrap();
        let stats = pool.stats();
        assert_eq!(stats.connections_recycled, 2);
        assert!(pool.size() <= 1);
    }
}

rt_test! {
    async fn on_connect_runs_once_per_connection() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let pool = builder(&app_name("on_connect"))
            .min_size(2)
            .max_size(3)
            .on_connect(move |conn| {
                let counter = counter.clone();
                Box::pin(async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    conn.batch_execute("SET work_mem = '5MB'").await
                })
            })
            .build()
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        for _ in 0..3 {
            let conns = [
                pool.acquire().await.unwrap(),
                pool.acquire().await.unwrap(),
                pool.acquire().await.unwrap(),
            ];
            for c in &conns {
                let rows = c.query("SHOW work_mem", &[]).await.unwrap();
                assert_eq!(rows[0].get::<&str>(0), "5MB");
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(pool.stats().connections_created, 3);
    }
}

rt_test! {
    async fn a_failing_on_connect_discards_the_connection_and_reports() {
        let app = app_name("on_connect_err");
        let failing = || {
            builder(&app).on_connect(|conn| {
                Box::pin(async move { conn.batch_execute("SELECT no_such_function()").await })
            })
        };
        // At creation, the error fails the pool's creation.
        let err = failing().min_size(1).build().await.expect_err("on_connect fails");
        assert!(err.to_string().contains("on_connect"), "{err}");
        assert_eq!(err.kind(), ErrorKind::Db, "{err}");
        // Later, it fails the acquire that needed the connection.
        let pool = failing().min_size(0).max_size(2).build().await.unwrap();
        let err = pool.acquire().await.expect_err("on_connect fails");
        assert!(err.to_string().contains("on_connect"), "{err}");
        assert_eq!(pool.size(), 0);
        assert_eq!(pool.stats().connect_errors, 1);
        wait_backends(&connect().await, &app, 0).await;
    }
}

rt_test! {
    async fn min_size_zero_grows_on_demand() {
        let app = app_name("grow");
        let admin = connect().await;
        let pool = builder(&app).min_size(0).max_size(3).build().await.unwrap();
        assert_eq!((pool.size(), pool.free_size()), (0, 0));
        assert_eq!(pool.min_size(), 0);
        assert_eq!(pool.max_size(), 3);
        assert!(backends(&admin, &app).await.is_empty());
        let a = pool.acquire().await.unwrap();
        assert_eq!(pool.size(), 1);
        let b = pool.acquire().await.unwrap();
        let c = pool.acquire().await.unwrap();
        assert_eq!(pool.size(), 3);
        assert_eq!(backends(&admin, &app).await.len(), 3);
        drop((a, b, c));
        assert_eq!(pool.free_size(), 3);
        let _d = pool.acquire().await.unwrap();
        assert_eq!((pool.size(), pool.free_size()), (3, 2));
    }
}

rt_test! {
    async fn dropped_acquires_leak_nothing() {
        let app = app_name("dropped");
        let admin = connect().await;
        let pool = builder(&app).min_size(0).max_size(2).build().await.unwrap();

        // Dropped while its connection is being opened: the connection goes to the next
        // caller (here, one that arrives while it is still being opened).
        let mut fut = Box::pin(pool.acquire());
        assert!(poll_once(&mut fut).await.is_pending());
        assert_eq!(pool.stats().waiting, 1);
        drop(fut);
        assert_eq!(pool.stats().waiting, 0);
        assert_eq!(pool.size(), 1, "the slot being opened is kept for the next caller");
        let conn = pool.acquire().await.unwrap();
        assert_eq!(pool.size(), 1);
        assert_eq!(pool.stats().connections_created, 1);
        assert_eq!(backends(&admin, &app).await, [conn.backend_pid()]);

        // Dropped while waiting for a held connection, after one or more polls.
        let other = pool.acquire().await.unwrap();
        for polls in 1..=5 {
            let mut fut = Box::pin(pool.acquire());
            for _ in 0..polls {
                assert!(poll_once(&mut fut).await.is_pending());
            }
            assert_eq!(pool.stats().waiting, 1);
            drop(fut);
        }
        // Dropped in a task, whatever it was doing.
        let pool2 = pool.clone();
        let waiter = spawn(async move {
            let limited = aiopg::rt::timeout(&*runtime(), Duration::from_millis(50), pool2.acquire());
            limited.await.is_err()
        });
        assert!(waiter.await, "the acquire was given up by its timeout");
        assert_eq!(pool.stats().waiting, 0);
        assert_eq!(pool.size(), 2);
        drop(conn);
        drop(other);
        assert_eq!((pool.size(), pool.free_size()), (2, 2));
        let pids = backends(&admin, &app).await;
        assert_eq!(pids.len(), pool.size());
    }
}

rt_test! {
    async fn dropped_acquire_during_the_liveness_check_returns_the_connection() {
        let pool = builder(&app_name("dropped_ping"))
            .min_size(1)
            .max_size(1)
            .test_on_acquire(Duration::ZERO)
            .build()
            .await
            .unwrap();
        for polls in 1..=3 {
            if let Some(conn) = poll_then_drop(pool.acquire(), polls).await {
                drop(conn.unwrap());
            }
            assert_eq!((pool.size(), pool.free_size()), (1, 1));
        }
        let conn = pool.acquire().await.unwrap();
        assert_eq!(conn.query("SELECT 1::int4", &[]).await.unwrap()[0].get::<i32>(0), 1);
    }
}

rt_test! {
    async fn terminated_idle_backends_are_never_handed_out() {
        let app = app_name("killed");
        let admin = connect().await;
        // No liveness round trip: only the check of what the idle socket holds can tell.
        let pool = builder(&app)
            .min_size(3)
            .max_size(3)
            .test_on_acquire(None)
            .build()
            .await
            .unwrap();
        let killed = backends(&admin, &app).await;
        assert_eq!(killed.len(), 3);
        terminate_backends(&admin, &app).await;
        assert_eq!(pool.free_size(), 3, "the pool cannot know yet: it never reads idle sockets");

        // Every connection handed out works: the dead ones were found and replaced on acquire.
        let conns = [
            pool.acquire().await.unwrap(),
            pool.acquire().await.unwrap(),
            pool.acquire().await.unwrap(),
        ];
        let mut pids = HashSet::new();
        let mut failed = Vec::new();
        for c in &conns {
            if let Err(e) = c.query("SELECT 1", &[]).await {
                failed.push(format!("{}: {e}", c.backend_pid()));
            }
            assert!(!killed.contains(&c.backend_pid()), "a terminated backend was handed out");
            pids.insert(c.backend_pid());
        }
        assert!(failed.is_empty(), "queries failed on pooled connections: {failed:?}");
        assert_eq!(pids.len(), 3);
        let stats = pool.stats();
        assert_eq!(stats.connections_broken, 3, "{stats:?}");
        assert_eq!(stats.connections_created, 6, "{stats:?}");
        drop(conns);
        assert_eq!(pool.size(), 3);
        assert_eq!(backends(&admin, &app).await.len(), 3);
    }
}

rt_test! {
    async fn killed_backends_are_replaced_with_the_liveness_check_on() {
        let app = app_name("killed_ping");
        let admin = connect().await;
        let pool = builder(&app)
            .min_size(2)
            .max_size(2)
            .test_on_acquire(Duration::ZERO)
            .build()
            .await
            .unwrap();
        let killed = backends(&admin, &app).await;
        terminate_backends(&admin, &app).await;
        // With the round trip on as well, every dead connection is caught (by what its socket
        // holds, before any round trip): the first acquire already works.
        let conn = pool.acquire().await.unwrap();
        conn.query("SELECT 1", &[]).await.unwrap();
        assert!(!killed.contains(&conn.backend_pid()));
        assert_eq!(pool.stats().connections_broken, 2);
        drop(conn);
        // The pool refills to min_size in the background.
        wait_until("the pool is refilled", || pool.size() == 2 && pool.free_size() == 2).await;
        wait_backends(&admin, &app, 2).await;
    }
}

/// The last statement the server process `pid` ran.
async fn last_query(admin: &Connection, pid: i32) -> String {
    admin
        .query("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .unwrap()[0]
        .get::<String>(0)
}

rt_test! {
    async fn only_connections_idle_past_test_on_acquire_get_a_round_trip() {
        let admin = connect().await;
        let idle = Duration::from_millis(100);
        let pool = builder(&app_name("ping_idle"))
            .min_size(1)
            .max_size(1)
            .test_on_acquire(idle)
            .build()
            .await
            .unwrap();
        let conn = pool.acquire().await.unwrap();
        let pid = conn.backend_pid();
        conn.batch_execute("SELECT 'recent'").await.unwrap();
        drop(conn);
        // Taken again at once: handed out without a round trip.
        let conn = pool.acquire().await.unwrap();
        assert_eq!(last_query(&admin, pid).await, "SELECT 'recent'");
        conn.batch_execute("SELECT 'again'").await.unwrap();
        drop(conn);
        // Left idle past the threshold (waiting is what this is about; the background sweep
        // notices it on its own schedule): the next acquire checks it first.
        let start = Instant::now();
        loop {
            runtime().sleep(idle * 2).await;
            let conn = pool.acquire().await.unwrap();
            if last_query(&admin, pid).await == "SELECT 1" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "an idle connection was never checked");
            conn.batch_execute("SELECT 'again'").await.unwrap();
        }
        assert_eq!(pool.stats().connections_broken, 0);
        assert_eq!(pool.stats().connections_created, 1);
    }
}

rt_test! {
    async fn clear_closes_idle_connections_and_the_pool_refills() {
        let app = app_name("clear");
        let admin = connect().await;
        let pool = builder(&app).min_size(2).max_size(3).build().await.unwrap();
        let before = backends(&admin, &app).await;
        let held = pool.acquire().await.unwrap();
        pool.clear().await;
        assert!(!held.is_closed(), "connections in use are not touched");
        assert!(pool.stats().connections_closed >= 1);
        wait_until("the pool is refilled", || pool.size() >= 2).await;
        drop(held);
        let conn = pool.acquire().await.unwrap();
        conn.query("SELECT 1", &[]).await.unwrap();
        assert!(before.len() == 2);
    }
}

rt_test! {
    async fn cursor_shortcut_returns_its_connection() {
        let pool = builder(&app_name("cursor")).min_size(1).max_size(1).build().await.unwrap();
        {
            let mut cur = pool.cursor().await.unwrap();
            assert_eq!(pool.free_size(), 0);
            cur.execute("SELECT generate_series(1, 3)", &[]).await.unwrap();
            let rows = cur.fetchall().await.unwrap();
            assert_eq!(rows.len(), 3);
        }
        assert_eq!(pool.free_size(), 1);
        let conn = pool.acquire().await.unwrap();
        let mut cur = conn.cursor().await.unwrap();
        cur.execute("SELECT 1", &[]).await.unwrap();
    }
}

rt_test! {
    async fn create_pool_uses_aiopgs_defaults() {
        let pool = aiopg::Pool::builder(options(&dsn())).runtime(runtime()).build().await.unwrap();
        assert_eq!((pool.min_size(), pool.max_size()), (1, 10));
        assert_eq!(pool.timeout(), Some(Duration::from_secs(60)));
        assert_eq!(pool.size(), 1);
        let err = Pool::builder(options(&dsn())).min_size(3).max_size(2).build().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    }
}
