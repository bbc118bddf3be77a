//! The pool's metrics through the [`metrics`](https://docs.rs/metrics) crate (feature
//! `metrics`), named after OpenTelemetry's database client connection metrics.
//!
//! Without the feature, [`PoolMetrics`] and [`Stamp`] are empty and every call here compiles
//! to nothing.
//!
//! | metric | kind | unit | what |
//! |---|---|---|---|
//! | `db.client.connection.count` | gauge, label `db.client.connection.state` = `idle` / `used` | connections | open connections by state (`used`: lent out, or being checked before being lent) |
//! | `db.client.connection.pending_requests` | gauge | requests | callers waiting in `acquire` |
//! | `db.client.connection.max` | gauge | connections | `max_size` |
//! | `db.client.connection.idle.min` | gauge | connections | `min_size` |
//! | `db.client.connection.timeouts` | counter | timeouts | acquires that failed with `PoolTimeout` |
//! | `db.client.connection.wait_time` | histogram | seconds | how long each successful `acquire` took |
//! | `db.client.connection.create_time` | histogram | seconds | how long opening each new connection took (`on_connect` included) |
//! | `db.client.connection.use_time` | histogram | seconds | how long each connection was lent out |
//!
//! Every series carries `db.client.connection.pool.name` ([`PoolBuilder::name`]). The handles
//! are registered when the pool is built, with the recorder installed then: install the
//! recorder (a Prometheus exporter, say) before building pools.
//!
//! [`PoolBuilder::name`]: crate::PoolBuilder::name

#[cfg(feature = "metrics")]
mod on {
    use std::time::Instant;

    use metrics::{Counter, Gauge, Histogram, Unit};

    const COUNT: &str = "db.client.connection.count";
    const PENDING: &str = "db.client.connection.pending_requests";
    const MAX: &str = "db.client.connection.max";
    const IDLE_MIN: &str = "db.client.connection.idle.min";
    const TIMEOUTS: &str = "db.client.connection.timeouts";
    const WAIT_TIME: &str = "db.client.connection.wait_time";
    const CREATE_TIME: &str = "db.client.connection.create_time";
    const USE_TIME: &str = "db.client.connection.use_time";
    const POOL_NAME: &str = "db.client.connection.pool.name";
    const STATE: &str = "db.client.connection.state";

    /// When something began (read only with the feature on).
    pub(crate) type Stamp = Instant;

    /// Now.
    #[inline]
    pub(crate) fn stamp() -> Stamp {
        Instant::now()
    }

    /// The pool's metric handles, registered once when the pool is built.
    pub(crate) struct PoolMetrics {
        idle: Gauge,
        used: Gauge,
        pending: Gauge,
        timeouts: Counter,
        wait_time: Histogram,
        create_time: Histogram,
        use_time: Histogram,
    }

    impl PoolMetrics {
        pub(crate) fn new(pool: &str, min_size: usize, max_size: usize) -> PoolMetrics {
            describe();
            let pool = pool.to_owned();
            metrics::gauge!(MAX, POOL_NAME => pool.clone()).set(max_size as f64);
            metrics::gauge!(IDLE_MIN, POOL_NAME => pool.clone()).set(min_size as f64);
            PoolMetrics {
                idle: metrics::gauge!(COUNT, POOL_NAME => pool.clone(), STATE => "idle"),
                used: metrics::gauge!(COUNT, POOL_NAME => pool.clone(), STATE => "used"),
                pending: metrics::gauge!(PENDING, POOL_NAME => pool.clone()),
                timeouts: metrics::counter!(TIMEOUTS, POOL_NAME => pool.clone()),
                wait_time: metrics::histogram!(WAIT_TIME, POOL_NAME => pool.clone()),
                create_time: metrics::histogram!(CREATE_TIME, POOL_NAME => pool.clone()),
                use_time: metrics::histogram!(USE_TIME, POOL_NAME => pool),
            }
        }

        /// The gauges, from the pool's state (called whenever its lock is released).
        #[inline]
        pub(crate) fn publish(&self, idle: usize, used: usize, pending: usize) {
            self.idle.set(idle as f64);
            self.used.set(used as f64);
            self.pending.set(pending as f64);
        }

        #[inline]
        pub(crate) fn timed_out(&self) {
            self.timeouts.increment(1);
        }

        #[inline]
        pub(crate) fn waited(&self, since: Stamp) {
            self.wait_time.record(since.elapsed().as_secs_f64());
        }

        #[inline]
        pub(crate) fn created(&self, since: Stamp) {
            self.create_time.record(since.elapsed().as_secs_f64());
        }

        #[inline]
        pub(crate) fn used(&self, since: Stamp) {
            self.use_time.record(since.elapsed().as_secs_f64());
        }
    }

    /// Units and descriptions, for exporters that show them (registering twice is harmless).
    fn describe() {
        metrics::describe_gauge!(COUNT, Unit::Count, "Open connections by state (idle, used)");
        metrics::describe_gauge!(PENDING, Unit::Count, "Callers waiting for a connection");
        metrics::describe_gauge!(MAX, Unit::Count, "The pool's max_size");
        metrics::describe_gauge!(IDLE_MIN, Unit::Count, "The pool's min_size");
        metrics::describe_counter!(TIMEOUTS, Unit::Count, "Acquires that timed out");
        metrics::describe_histogram!(WAIT_TIME, Unit::Seconds, "Time to acquire a connection");
        metrics::describe_histogram!(CREATE_TIME, Unit::Seconds, "Time to open a connection");
        metrics::describe_histogram!(USE_TIME, Unit::Seconds, "Time a connection was lent out");
    }
}

#[cfg(not(feature = "metrics"))]
mod on {
    /// Nothing: the feature is off.
    #[derive(Clone, Copy)]
    pub(crate) struct Stamp;

    #[inline(always)]
    pub(crate) fn stamp() -> Stamp {
        Stamp
    }

    /// Nothing: the feature is off.
    pub(crate) struct PoolMetrics;

    impl PoolMetrics {
        #[inline(always)]
        pub(crate) fn new(_pool: &str, _min_size: usize, _max_size: usize) -> PoolMetrics {
            PoolMetrics
        }
        #[inline(always)]
        pub(crate) fn publish(&self, _idle: usize, _used: usize, _pending: usize) {}
        #[inline(always)]
        pub(crate) fn timed_out(&self) {}
        #[inline(always)]
        pub(crate) fn waited(&self, _since: Stamp) {}
        #[inline(always)]
        pub(crate) fn created(&self, _since: Stamp) {}
        #[inline(always)]
        pub(crate) fn used(&self, _since: Stamp) {}
    }
}

pub(crate) use on::{stamp, PoolMetrics, Stamp};
