//! The pool's metrics (feature `metrics`), read through metrics-util's debugging recorder: the
//! gauges follow the pool through acquire, growth, waiting and release, the histograms get one
//! sample per acquire, connection opened and connection given back, and a timed-out acquire
//! counts. Every series carries the pool's name, so the pools of other tests (which register
//! series too, once the recorder is installed) stay apart.
//!
//! The recorder's snapshot reads and resets: counters and histograms are read as what
//! happened since the last snapshot, gauges as their last value published since then.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use aiopg::ErrorKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use crate::pool::{app_name, builder, wait_until};
use crate::support::{rt_test, runtime_name, spawn};

/// The process's recorder (a global one: the pool's handles are registered when it is built,
/// on whatever task and thread that happens).
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .unwrap_or_else(|_| panic!("another metrics recorder is installed"));
        snapshotter
    })
}

/// One snapshot of the series labelled with `pool`'s name, by metric name (and, for
/// `db.client.connection.count`, `name{state}`).
struct Reading(HashMap<String, DebugValue>);

impl Reading {
    fn take(pool: &str) -> Reading {
        let mut series = HashMap::new();
        for (key, _unit, _desc, value) in snapshotter().snapshot().into_vec() {
            let key = key.key();
            let labels: Vec<_> = key.labels().collect();
            if !labels
                .iter()
                .any(|l| l.key() == "db.client.connection.pool.name" && l.value() == pool)
            {
                continue;
            }
            let mut name = key.name().to_owned();
            if let Some(state) = labels
                .iter()
                .find(|l| l.key() == "db.client.connection.state")
            {
                name = format!("{name}{{{}}}", state.value());
            }
            series.insert(name, value);
        }
        Reading(series)
    }

    fn gauge(&self, name: &str) -> f64 {
        match self.0.get(name) {
            Some(DebugValue::Gauge(v)) => v.into_inner(),
            other => panic!("{name}: expected a gauge, got {other:?} in {:?}", self.0),
        }
    }

    fn counter(&self, name: &str) -> u64 {
        match self.0.get(name) {
            Some(DebugValue::Counter(v)) => *v,
            other => panic!("{name}: expected a counter, got {other:?}"),
        }
    }

    /// The samples recorded since the last reading.
    fn samples(&self, name: &str) -> Vec<f64> {
        match self.0.get(name) {
            Some(DebugValue::Histogram(v)) => v.iter().map(|f| f.into_inner()).collect(),
            other => panic!("{name}: expected a histogram, got {other:?}"),
        }
    }

    /// Connections by state: (idle, used).
    fn count(&self) -> (f64, f64) {
        (
            self.gauge("db.client.connection.count{idle}"),
            self.gauge("db.client.connection.count{used}"),
        )
    }
}

rt_test! {
    async fn pool_metrics_follow_the_pool() {
        snapshotter();
        let name = format!("metrics-{}-{}", runtime_name(), std::process::id());
        let pool = builder(&app_name("metrics"))
            .name(&name)
            .min_size(1)
            .max_size(2)
            .timeout(Duration::from_millis(300))
            .build()
            .await
            .unwrap();
        assert_eq!(pool.name(), name);

        let r = Reading::take(&name);
        assert_eq!(r.gauge("db.client.connection.max"), 2.0);
        assert_eq!(r.gauge("db.client.connection.idle.min"), 1.0);
        assert_eq!(r.count(), (1.0, 0.0), "the connection opened at creation is idle");
        assert_eq!(r.gauge("db.client.connection.pending_requests"), 0.0);
        assert_eq!(r.counter("db.client.connection.timeouts"), 0);

        // An idle connection is handed out: one wait_time sample, no connection opened.
        let first = pool.acquire().await.unwrap();
        let r = Reading::take(&name);
        assert_eq!(r.count(), (0.0, 1.0));
        let waits = r.samples("db.client.connection.wait_time");
        assert_eq!(waits.len(), 1, "one acquire, one sample");
        assert!(waits[0] >= 0.0 && waits[0] < 30.0, "a wait in seconds: {waits:?}");
        assert!(r.samples("db.client.connection.create_time").is_empty());

        // The pool grows: a connection is opened for the second caller.
        let second = pool.acquire().await.unwrap();
        let r = Reading::take(&name);
        assert_eq!(r.count(), (0.0, 2.0));
        assert_eq!(r.samples("db.client.connection.wait_time").len(), 1);
        let created = r.samples("db.client.connection.create_time");
        assert_eq!(created.len(), 1, "one connection opened: {created:?}");
        assert!(created[0] > 0.0, "opening a connection takes time: {created:?}");

        // A third caller waits (the pool is full): pending_requests shows it.
        let waiter = {
            let pool = pool.clone();
            spawn(async move { pool.acquire().await.map(drop) })
        };
        wait_until("the third caller waits", || pool.stats().waiting == 1).await;
        let r = Reading::take(&name);
        assert_eq!(r.gauge("db.client.connection.pending_requests"), 1.0);
        assert_eq!(r.count(), (0.0, 2.0));

        // Nobody gives a connection back within its 300 ms: a timeout is counted.
        let err = waiter.await.expect_err("a full pool times out");
        assert_eq!(err.kind(), ErrorKind::PoolTimeout);
        let r = Reading::take(&name);
        assert_eq!(r.counter("db.client.connection.timeouts"), 1);
        assert_eq!(r.gauge("db.client.connection.pending_requests"), 0.0);
        assert!(
            r.samples("db.client.connection.wait_time").is_empty(),
            "a failed acquire is not a wait_time sample"
        );

        // Giving connections back: use_time samples, and the gauges follow.
        drop(first);
        let r = Reading::take(&name);
        assert_eq!(r.count(), (1.0, 1.0));
        let used = r.samples("db.client.connection.use_time");
        assert_eq!(used.len(), 1, "{used:?}");
        assert!(used[0] > 0.0, "the first connection was lent out for a while: {used:?}");
        drop(second);
        let r = Reading::take(&name);
        assert_eq!(r.count(), (2.0, 0.0));
        assert_eq!(r.samples("db.client.connection.use_time").len(), 1);

        pool.close();
        pool.wait_closed().await.unwrap();
        let r = Reading::take(&name);
        assert_eq!(r.count(), (0.0, 0.0), "a closed pool holds no connections");
    }
}
