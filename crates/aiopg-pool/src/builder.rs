//! [`PoolBuilder`]: the pool's settings, and [`create_pool`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aiopg_conn::{ConnectOptions, Connection};
use aiopg_core::{Error, Result};
use aiopg_rt::{BoxFuture, Runtime};

use crate::pool::Pool;

/// How many connections a pool opens at creation and keeps unless told otherwise (aiopg's
/// `minsize=1`).
pub const DEFAULT_MIN_SIZE: usize = 1;

/// How many connections a pool holds at most unless told otherwise (aiopg's `maxsize=10`).
pub const DEFAULT_MAX_SIZE: usize = 10;

/// How long [`Pool::acquire`] waits unless told otherwise (aiopg's `timeout=60`).
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connection may sit idle before [`Pool::acquire`] checks it with a round trip
/// before handing it out, unless told otherwise ([`PoolBuilder::test_on_acquire`]).
pub const DEFAULT_TEST_AFTER_IDLE: Duration = Duration::from_secs(5);

/// Which idle connection [`Pool::acquire`] hands out first ([`PoolBuilder::reuse`]).
///
/// Callers waiting for a connection are always served first come, first served; this only
/// decides which of several idle connections the next caller gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Reuse {
    /// The connection given back longest ago first (first in, first out), as Python aiopg
    /// does with its free list (the default). Every connection takes its turn, so all of
    /// them stay warm (their statement caches filled, their server processes' caches too) and
    /// the work is spread over them. In exchange, while any traffic continues no connection
    /// stays idle long enough for [`PoolBuilder::idle_timeout`] to close it, and under light
    /// traffic more of them have sat idle past [`PoolBuilder::test_on_acquire`]'s threshold
    /// when their turn comes (a round trip before they are handed out).
    #[default]
    Fifo,
    /// The connection given back most recently first (last in, first out). Light traffic
    /// keeps reusing the same few connections, which are recently used and so seldom need the
    /// [`PoolBuilder::test_on_acquire`] round trip; the others stay idle, and
    /// [`PoolBuilder::idle_timeout`] can close them, down to `min_size`, so the pool holds as
    /// many server processes as the traffic needs. The rarely used connections are the cold
    /// ones when a burst comes.
    Lifo,
}

/// The callback [`PoolBuilder::on_connect`] installs: runs on every new connection.
pub type OnConnect =
    Arc<dyn for<'a> Fn(&'a Connection) -> BoxFuture<'a, Result<()>> + Send + Sync + 'static>;

/// What [`Pool::builder`] accepts: a DSN (`&str`, `String`) or [`ConnectOptions`].
pub trait IntoConnectOptions {
    /// The connection options.
    fn into_connect_options(self) -> Result<ConnectOptions>;
}

impl IntoConnectOptions for ConnectOptions {
    fn into_connect_options(self) -> Result<ConnectOptions> {
        Ok(self)
    }
}

impl IntoConnectOptions for &ConnectOptions {
    fn into_connect_options(self) -> Result<ConnectOptions> {
        Ok(self.clone())
    }
}

impl IntoConnectOptions for &str {
    fn into_connect_options(self) -> Result<ConnectOptions> {
        ConnectOptions::new(self)
    }
}

impl IntoConnectOptions for String {
    fn into_connect_options(self) -> Result<ConnectOptions> {
        ConnectOptions::new(&self)
    }
}

impl IntoConnectOptions for &String {
    fn into_connect_options(self) -> Result<ConnectOptions> {
        ConnectOptions::new(self)
    }
}

/// The pool's settings, fixed at creation.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) min_size: usize,
    pub(crate) max_size: usize,
    pub(crate) timeout: Option<Duration>,
    pub(crate) recycle: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) test_after_idle: Option<Duration>,
    pub(crate) reset_on_release: bool,
    pub(crate) reuse: Reuse,
    pub(crate) on_connect: Option<OnConnect>,
    pub(crate) name: Option<String>,
}

impl Settings {
    /// The age past which a connection is replaced: the shorter of `recycle` and
    /// `max_lifetime`.
    pub(crate) fn max_age(&self) -> Option<Duration> {
        match (self.recycle, self.max_lifetime) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            min_size: DEFAULT_MIN_SIZE,
            max_size: DEFAULT_MAX_SIZE,
            timeout: Some(DEFAULT_ACQUIRE_TIMEOUT),
            recycle: None,
            idle_timeout: None,
            max_lifetime: None,
            test_after_idle: Some(DEFAULT_TEST_AFTER_IDLE),
            reset_on_release: false,
            reuse: Reuse::Fifo,
            on_connect: None,
            name: None,
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("min_size", &self.min_size)
            .field("max_size", &self.max_size)
            .field("timeout", &self.timeout)
            .field("recycle", &self.recycle)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("test_on_acquire", &self.test_after_idle)
            .field("reset_on_release", &self.reset_on_release)
            .field("reuse", &self.reuse)
            .field("on_connect", &self.on_connect.is_some())
            .field("name", &self.name)
            .finish()
    }
}

/// Configures and creates a [`Pool`] (Python aiopg's `create_pool` keyword arguments).
///
/// ```no_run
/// # async fn f() -> aiopg_core::Result<()> {
/// use std::time::Duration;
/// let pool = aiopg_pool::Pool::builder("postgresql://app@localhost/app")
///     .min_size(2)
///     .max_size(20)
///     .timeout(Duration::from_secs(5))
///     .recycle(Duration::from_secs(3600))
///     .on_connect(|conn| Box::pin(async move { conn.batch_execute("SET TIME ZONE 'UTC'").await }))
///     .build()
///     .await?;
/// # drop(pool); Ok(()) }
/// ```
pub struct PoolBuilder {
    options: Result<ConnectOptions>,
    runtime: Option<Arc<dyn Runtime>>,
    settings: Settings,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("options", &self.options)
            .field("runtime", &self.runtime.as_ref().map(|r| r.name()))
            .field("settings", &self.settings)
            .finish()
    }
}

impl PoolBuilder {
    pub(crate) fn new(options: impl IntoConnectOptions) -> PoolBuilder {
        PoolBuilder {
            options: options.into_connect_options(),
            runtime: None,
            settings: Settings::default(),
        }
    }

    /// How many connections to open at creation and keep open (aiopg's `minsize`; default
    /// 1). Connections that die are replaced in the background until there are this many.
    pub fn min_size(mut self, n: usize) -> Self {
        self.settings.min_size = n;
        self
    }

    /// The most connections the pool holds, idle and in use together (aiopg's `maxsize`;
    /// default 10). At least 1.
    pub fn max_size(mut self, n: usize) -> Self {
        self.settings.max_size = n;
        self
    }

    /// How long [`Pool::acquire`] may take, waiting for a free connection and connecting
    /// included (aiopg's `timeout`; default 60 s). `None` waits as long as it takes.
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.settings.timeout = timeout.into();
        self
    }

    /// Replaces connections older than this (since they were opened) when they are acquired
    /// or released (aiopg's `pool_recycle`; default: never). Python aiopg measures this from
    /// the connection's last use; for that, use [`idle_timeout`](Self::idle_timeout).
    pub fn recycle(mut self, recycle: impl Into<Option<Duration>>) -> Self {
        self.settings.recycle = recycle.into();
        self
    }

    /// Closes connections left idle longer than this, keeping at least `min_size` open
    /// (default: never). A background sweep does it (see [`test_on_acquire`] for how often):
    /// a connection may stay open up to a sweep period or so past its time.
    ///
    /// [`test_on_acquire`]: Self::test_on_acquire
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.settings.idle_timeout = timeout.into();
        self
    }

    /// Replaces connections older than this: as [`recycle`](Self::recycle), and also closes
    /// idle ones in the background as they reach the age (default: never).
    pub fn max_lifetime(mut self, lifetime: impl Into<Option<Duration>>) -> Self {
        self.settings.max_lifetime = lifetime.into();
        self
    }

    /// Connections idle at least this long are checked with a round trip (`SELECT 1`) before
    /// [`Pool::acquire`] hands them out, and replaced if the check fails (default 5 s).
    /// `Some(Duration::ZERO)` checks every time; `None` never does. Connections used more
    /// recently are handed out unchecked (a closed one never is, nor one whose socket shows
    /// that its server process went away).
    ///
    /// Idle times are measured by a background sweep, not by reading the clock on every
    /// acquire and release: it runs every half of the shortest of this, `idle_timeout` and
    /// `max_lifetime` (between 10 ms and 30 s), so a connection is checked once it has been
    /// idle this long, noticed up to a sweep period or so later.
    pub fn test_on_acquire(mut self, idle_for: impl Into<Option<Duration>>) -> Self {
        self.settings.test_after_idle = idle_for.into();
        self
    }

    /// On release, also runs `UNLISTEN *` and `RESET ALL`, so that the next user does not
    /// inherit `LISTEN`s or `SET`s (default: off).
    ///
    /// Refused by [`build`](Self::build) with options using
    /// [`ConnectOptions::transaction_pooling`], where the pooler resets server connections
    /// itself and these statements are refused.
    pub fn reset_on_release(mut self, reset: bool) -> Self {
        self.settings.reset_on_release = reset;
        self
    }

    /// Which idle connection is handed out first: the one given back longest ago
    /// ([`Reuse::Fifo`], the default, as Python aiopg) or the most recent one
    /// ([`Reuse::Lifo`], which keeps fewer connections busy and lets `idle_timeout` close the
    /// rest). See [`Reuse`] for the trade-off.
    ///
    /// ```no_run
    /// # async fn f() -> aiopg_core::Result<()> {
    /// use std::time::Duration;
    /// use aiopg_pool::{Pool, Reuse};
    /// // Shrinks back towards min_size when traffic drops.
    /// let pool = Pool::builder("dbname=app")
    ///     .max_size(20)
    ///     .reuse(Reuse::Lifo)
    ///     .idle_timeout(Duration::from_secs(300))
    ///     .build()
    ///     .await?;
    /// # drop(pool); Ok(()) }
    /// ```
    pub fn reuse(mut self, reuse: Reuse) -> Self {
        self.settings.reuse = reuse;
        self
    }

    /// Names the pool: [`Pool::name`], and the `db.client.connection.pool.name` label of its
    /// metrics (feature `metrics`), which tells apart the pools of one process. Unnamed, a
    /// pool is called `host:port/dbname` after the first host its options name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.settings.name = Some(name.into());
        self
    }

    /// Runs `callback` on every new connection before the pool uses it (aiopg's
    /// `on_connect`). It may run SQL; an error discards the connection and is returned to the
    /// caller that needed it ([`Pool::acquire`] or [`build`](Self::build)).
    ///
    /// ```no_run
    /// # async fn f() -> aiopg_core::Result<()> {
    /// let pool = aiopg_pool::Pool::builder("dbname=app")
    ///     .on_connect(|conn| {
    ///         Box::pin(async move { conn.batch_execute("SET search_path TO app, public").await })
    ///     })
    ///     .build()
    ///     .await?;
    /// # drop(pool); Ok(()) }
    /// ```
    pub fn on_connect<F>(mut self, callback: F) -> Self
    where
        F: for<'a> Fn(&'a Connection) -> BoxFuture<'a, Result<()>> + Send + Sync + 'static,
    {
        self.settings.on_connect = Some(Arc::new(callback));
        self
    }

    /// The runtime for the pool's timers and background tasks, and for its connections.
    /// By default the connections' runtime ([`aiopg_rt::default_runtime`] unless the
    /// [`ConnectOptions`] name one).
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Creates the pool, opening `min_size` connections (running `on_connect` on each).
    /// Fails if one of them cannot be opened, or on invalid settings.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropped before it finishes, the connections opened so far
    /// are dropped (their sockets closed); no pool exists and no background task was started.
    pub async fn build(self) -> Result<Pool> {
        let mut options = self.options?;
        let settings = self.settings;
        if settings.max_size == 0 {
            return Err(Error::config("max_size", "must be at least 1"));
        }
        if settings.min_size > settings.max_size {
            return Err(Error::config(
                "min_size",
                format!(
                    "min_size ({}) is larger than max_size ({})",
                    settings.min_size, settings.max_size
                ),
            ));
        }
        if settings.reset_on_release && options.is_transaction_pooling() {
            // `UNLISTEN *; RESET ALL` is session state work that transaction pooling refuses
            // (and that the pooler does itself between clients): every release would
            // close the connection instead.
            return Err(Error::config(
                "reset_on_release",
                "cannot be combined with ConnectOptions::transaction_pooling: the pooler \
                 resets server connections itself (PgBouncer's server_reset_query), and \
                 UNLISTEN and RESET ALL are refused under transaction pooling",
            ));
        }
        if let Some(rt) = &self.runtime {
            options = options.runtime(rt.clone());
        }
        let mut first = Vec::with_capacity(settings.min_size);
        let runtime = match self.runtime {
            Some(rt) => rt,
            None if settings.min_size > 0 => {
                // The connections' runtime, whichever the options chose.
                let conn = crate::pool::open(&options, settings.on_connect.as_ref()).await?;
                let rt = conn.runtime().clone();
                options = options.runtime(rt.clone());
                first.push(conn);
                rt
            }
            None => aiopg_rt::default_runtime().ok_or_else(|| {
                Error::config(
                    "runtime",
                    "no async runtime: enable one of aiopg's features `tokio`, `smol` or \
                     `async-std`, or pass one with PoolBuilder::runtime",
                )
            })?,
        };
        while first.len() < settings.min_size {
            match crate::pool::open(&options, settings.on_connect.as_ref()).await {
                Ok(conn) => first.push(conn),
                Err(e) => {
                    for conn in first {
                        conn.close().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(Pool::from_parts(options, runtime, settings, first))
    }
}

/// Awaiting the builder builds the pool: `Pool::builder(dsn).max_size(8).await` is
/// `.build().await`.
impl std::future::IntoFuture for PoolBuilder {
    type Output = Result<Pool>;
    type IntoFuture = BoxFuture<'static, Result<Pool>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.build())
    }
}

/// Creates a pool with the default settings (aiopg's `create_pool(dsn)`): 1 to 10
/// connections, a 60 s acquire timeout. [`Pool::builder`] takes the others.
///
/// ```no_run
/// # async fn f() -> aiopg_core::Result<()> {
/// let pool = aiopg_pool::create_pool("postgresql://app@localhost/app").await?;
/// let conn = pool.acquire().await?;
/// conn.execute("SELECT 1", &[]).await?;
/// # Ok(()) }
/// ```
pub async fn create_pool(dsn: impl IntoConnectOptions) -> Result<Pool> {
    PoolBuilder::new(dsn).build().await
}
