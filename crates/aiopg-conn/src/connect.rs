//! Opening a connection: hosts in order, start-up, authentication, cancel requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tracing::Instrument;

use aiopg_core::config::{
    AuthMethod, ChannelBinding as ChannelBindingMode, Host, LoadBalanceHosts, SslMode,
    SslNegotiation, TargetSessionAttrs,
};
use aiopg_core::error::{elide, DbError};
use aiopg_core::{Config, Error, ErrorKind, Result, SqlState};
use aiopg_rt::{BoxStream, Runtime, TcpOptions};

use crate::connection::{Connection, Identity, Shared};
use crate::io::{read_message, write_all, ReadBuf};
use crate::state::State;
use crate::statement::StatementCache;
use crate::tls::{self, TlsSetup};

/// aiopg's default statement timeout, as Python aiopg's `DEFAULT_TIMEOUT` (60 seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How many prepared statements a connection caches unless told otherwise.
pub const DEFAULT_STATEMENT_CACHE_SIZE: usize = 256;

/// The longest StartupMessage a server reads (PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`);
/// it drops a longer one without a word, which would look like a network failure.
const MAX_STARTUP_MESSAGE: usize = 10_000;

/// Settings for [`connect`]: a parsed DSN plus client-side options.
///
/// ```no_run
/// # async fn f() -> aiopg_core::Result<()> {
/// use std::time::Duration;
/// let conn = aiopg_conn::ConnectOptions::new("postgresql://app@db.internal/app")?
///     .connect_timeout(Duration::from_secs(5))
///     .statement_cache_size(0) // PgBouncer in transaction mode
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConnectOptions {
    config: Config,
    runtime: Option<Arc<dyn Runtime>>,
    connect_timeout: Option<Duration>,
    timeout: Option<Duration>,
    statement_cache_size: usize,
    transaction_pooling: bool,
    event_capacity: usize,
    trace_query_text: bool,
    echo: bool,
    slow_statements: Option<Duration>,
    driver_task: bool,
    auto_driver: bool,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("config", &self.config)
            .field("runtime", &self.runtime.as_ref().map(|r| r.name()))
            .field("statement_cache_size", &self.statement_cache_size)
            .field("transaction_pooling", &self.transaction_pooling)
            .field("event_capacity", &self.event_capacity)
            .field("trace_query_text", &self.trace_query_text)
            .field("echo", &self.echo)
            .field("slow_statements", &self.slow_statements)
            .field("driver_task", &self.driver_task)
            .field("auto_driver", &self.auto_driver)
            .finish()
    }
}

impl ConnectOptions {
    /// Options from a DSN (libpq `key=value` string or `postgresql://` URI), completed from the
    /// PG* environment variables and libpq's defaults.
    pub fn new(dsn: &str) -> Result<ConnectOptions> {
        Ok(ConnectOptions::from_config(Config::from_dsn(dsn)?))
    }

    /// Options from an already built [`Config`].
    pub fn from_config(config: Config) -> ConnectOptions {
        ConnectOptions {
            config,
            runtime: None,
            connect_timeout: None,
            timeout: Some(DEFAULT_TIMEOUT),
            statement_cache_size: DEFAULT_STATEMENT_CACHE_SIZE,
            transaction_pooling: false,
            event_capacity: crate::events::DEFAULT_EVENT_CAPACITY,
            trace_query_text: false,
            echo: false,
            slow_statements: None,
            driver_task: false,
            auto_driver: true,
        }
    }

    /// Records each statement's SQL text as `db.query.text` on its `aiopg.statement` span
    /// (off by default: SQL can hold data spliced into it by the application). Parameter
    /// values are never recorded.
    pub fn trace_query_text(mut self, on: bool) -> Self {
        self.trace_query_text = on;
        self
    }

    /// Python aiopg's `echo=True`: logs every statement's SQL text at `INFO` through
    /// `tracing`, target `aiopg::statement` (never its parameter values).
    pub fn echo(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }

    /// Logs every statement that takes at least `threshold` (from issue to answer, waits in
    /// the pipeline included) at `WARN` through `tracing`, target `aiopg::slow_statement`,
    /// with its SQL text and elapsed milliseconds (never its parameter values). `None` (the
    /// default) is off.
    pub fn log_slow_statements(mut self, threshold: Option<Duration>) -> Self {
        self.slow_statements = threshold;
        self
    }

    /// The runtime to use; by default the one the enabled features and the calling context
    /// select ([`aiopg_rt::default_runtime`]).
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Bounds the whole connection set-up (TCP, start-up, authentication) per host, as libpq's
    /// `connect_timeout`. Overrides the DSN's `connect_timeout`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The default statement timeout for cursors on the connection ([`DEFAULT_TIMEOUT`], as
    /// Python aiopg's `timeout=60`); `None` disables it, which Python aiopg cannot.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Python aiopg's `enable_json` switch, kept for parity. In Rust the type you read a
    /// column as decides its decoding: `serde_json::Value` (or `Json<T>` for a serde type)
    /// with the `with-serde_json-1` feature, so json and jsonb work whatever this says.
    /// Without the feature, read them as text in SQL (`col::text`) into a `String`.
    pub fn enable_json(self, _enable: bool) -> Self {
        self
    }

    /// Python aiopg's `enable_hstore` switch, kept for parity. hstore columns are recognised
    /// from the server's catalog on first use (the extension's OID differs per database), so
    /// `HashMap<String, Option<String>>` reads them whatever this says.
    pub fn enable_hstore(self, _enable: bool) -> Self {
        self
    }

    /// Python aiopg's `enable_uuid` switch, kept for parity: `uuid::Uuid` (feature
    /// `with-uuid-1`) reads uuid columns whatever this says.
    pub fn enable_uuid(self, _enable: bool) -> Self {
        self
    }

    /// How many prepared statements to cache (LRU). 0 uses only the unnamed statement, which
    /// PgBouncer's transaction mode requires.
    pub fn statement_cache_size(mut self, size: usize) -> Self {
        self.statement_cache_size = size;
        self
    }

    /// For a server reached through a transaction pooler (PgBouncer's
    /// `pool_mode = transaction`, before its prepared-statement support): turns the statement
    /// cache off, so that no named statement is used across transactions (each statement is
    /// parsed as the unnamed one in the request that runs it), and refuses with a `Usage`
    /// error what the pooler cannot carry from one transaction to the next: `LISTEN`, a
    /// session `SET` (use `SET LOCAL`, or `options='-c ...'` in the DSN), SQL `PREPARE` and
    /// `WITH HOLD` cursors.
    pub fn transaction_pooling(mut self, on: bool) -> Self {
        self.transaction_pooling = on;
        if on {
            self.statement_cache_size = 0;
        }
        self
    }

    /// Whether [`transaction_pooling`](Self::transaction_pooling) is on.
    pub fn is_transaction_pooling(&self) -> bool {
        self.transaction_pooling
    }

    /// How many notifications, and separately how many notices, the connection keeps for
    /// [`Connection::notifies`] and [`Connection::notices`] streams whose consumers have not
    /// taken them yet ([`DEFAULT_EVENT_CAPACITY`] by default; at least 1). When a stream falls
    /// that far behind, the oldest are dropped and the stream says how many with an
    /// [`ErrorKind::Lagged`](aiopg_core::ErrorKind::Lagged) error: memory stays bounded
    /// however slow the consumer, and nothing is lost without a word.
    ///
    /// [`DEFAULT_EVENT_CAPACITY`]: crate::DEFAULT_EVENT_CAPACITY
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Runs a [driver task](Connection::driver) on the connection's runtime from the start
    /// (off by default): only that task writes and reads the socket. Worth it when many
    /// futures of one task share a connection on a work-stealing runtime; it costs a hop
    /// between tasks per answer otherwise. A pool built from these options gives every
    /// connection its own.
    pub fn driver_task(mut self, on: bool) -> Self {
        self.driver_task = on;
        self
    }

    /// Lets the connection run a [driver task](Connection::driver) by itself while several
    /// callers' requests are in flight at once, on a runtime whose self-wakes are costly
    /// ([`Runtime::costly_self_wake`]: tokio's multi-threaded runtime with several workers).
    /// On by default. The driver ends as soon as every answer is in, so one caller at a time
    /// (a pooled connection's usual life) always reads for itself, with no hop between
    /// tasks; `false` keeps every connection caller-driven. No effect with
    /// [`driver_task`](Self::driver_task), whose driver runs throughout.
    ///
    /// [`Runtime::costly_self_wake`]: aiopg_rt::Runtime::costly_self_wake
    pub fn auto_driver(mut self, on: bool) -> Self {
        self.auto_driver = on;
        self
    }

    /// The connection settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The connection settings, to change.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// Connects: tries the hosts in order (shuffled with `load_balance_hosts=random`), every
    /// address of each, with the DSN's `sslmode`, authentication and `target_session_attrs`
    /// (see the [crate documentation](crate#several-hosts-and-failover)). Each address's
    /// attempt is bounded by [`connect_timeout`](Self::connect_timeout) when one is set.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: each attempt owns its socket, so dropping the future
    /// closes it (mid start-up, without a Terminate message) and leaves no connection or task
    /// behind. A host name lookup already running on the runtime's resolver may finish in
    /// the background; its result is dropped.
    pub async fn connect(&self) -> Result<Connection> {
        let runtime = match &self.runtime {
            Some(r) => r.clone(),
            None => aiopg_rt::default_runtime().ok_or_else(|| {
                Error::config(
                    "runtime",
                    "no async runtime: enable one of aiopg's features `tokio`, `smol` or \
                     `async-std`, or pass one with ConnectOptions::runtime",
                )
            })?,
        };
        let timeout = self.connect_timeout.or(self.config.get_connect_timeout());
        let cache = if self.transaction_pooling {
            0
        } else {
            self.statement_cache_size
        };
        let span = crate::trace::connect_span(&self.config);
        let conn = match connect_any(&self.config, runtime, timeout, cache)
            .instrument(span.clone())
            .await
        {
            Ok(conn) => {
                if !span.is_disabled() {
                    crate::trace::record_server(&span, &conn.shared);
                }
                conn
            }
            Err(e) => {
                crate::trace::record_error(&span, &e);
                return Err(e);
            }
        };
        conn.set_timeout(self.timeout);
        conn.shared
            .trace
            .set(self.trace_query_text, self.echo, self.slow_statements);
        conn.shared.lock().set_event_capacity(self.event_capacity);
        conn.shared.transaction_pooling.store(
            self.transaction_pooling,
            std::sync::atomic::Ordering::Relaxed,
        );
        if self.driver_task {
            conn.spawn_driver();
        } else if self.auto_driver && conn.shared.runtime.costly_self_wake() {
            conn.shared.lock().set_auto_driver(true);
        }
        Ok(conn)
    }
}

/// Connects to the server a DSN names.
///
/// ```no_run
/// # async fn f() -> aiopg_core::Result<()> {
/// let conn = aiopg_conn::connect("host=localhost dbname=app user=app").await?;
/// let rows = conn.query("SELECT 1", &[]).await?;
/// assert_eq!(rows[0].get::<i32>(0), 1);
/// # Ok(()) }
/// ```
///
/// # Cancel safety
///
/// This method is cancel safe, as [`ConnectOptions::connect`]: dropping the future closes
/// the socket of the attempt in progress, and nothing is left behind.
pub async fn connect(dsn: &str) -> Result<Connection> {
    ConnectOptions::new(dsn)?.connect().await
}

/// Where one attempt goes.
#[derive(Debug, Clone)]
enum Target {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "{a}"),
            // The folder comes from the user's `host`: quoted, it is cut to a sane length.
            Target::Unix(p) => write!(f, "{}", elide(&p.display().to_string())),
        }
    }
}

async fn connect_any(
    config: &Config,
    runtime: Arc<dyn Runtime>,
    connect_timeout: Option<Duration>,
    cache_size: usize,
) -> Result<Connection> {
    let hosts: Vec<Host> = if config.get_hosts().is_empty() {
        vec![Host::Tcp("localhost".into())]
    } else {
        config.get_hosts().to_vec()
    };
    let mut order: Vec<usize> = (0..hosts.len()).collect();
    let random = config.get_load_balance_hosts() == LoadBalanceHosts::Random;
    if random {
        shuffle(&mut order);
    }
    // prefer-standby is libpq's two passes: a standby anywhere, else any server.
    let want = config.get_target_session_attrs();
    let passes: &[TargetSessionAttrs] = if want == TargetSessionAttrs::PreferStandby {
        &[TargetSessionAttrs::Standby, TargetSessionAttrs::Any]
    } else {
        std::slice::from_ref(&want)
    };
    let mut failures: Vec<(String, Error)> = Vec::new();
    for &pass in passes {
        for &i in &order {
            let host = &hosts[i];
            let port = config.port_for(i);
            let attempt = Attempt {
                config,
                runtime: &runtime,
                host,
                hostaddr: config.hostaddr_for(i),
                port,
                cache_size,
                connect_timeout,
                want: pass,
                shuffle: random,
            };
            match connect_host(&attempt).await {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    let name = match host {
                        Host::Tcp(h) => format!("{}:{port}", elide(h)),
                        Host::Unix(d) => {
                            format!("{}/.s.PGSQL.{port}", elide(&d.display().to_string()))
                        }
                    };
                    tracing::debug!(host = %name, error = %e, "connection attempt failed");
                    failures.push((name, e));
                }
            }
        }
    }
    if failures.len() == 1 {
        let (name, e) = failures.pop().expect("one failure");
        return Err(with_host(e, &name));
    }
    let summary: Vec<String> = failures
        .iter()
        .map(|(name, e)| format!("{name}: {e}"))
        .collect();
    let (_, last) = failures.pop().expect("at least one host");
    Err(Error::new(
        last.kind(),
        format!(
            "could not connect to any of {} hosts ({})",
            summary.len(),
            summary.join("; ")
        ),
        Some(Box::new(last)),
    ))
}

/// A random permutation (Fisher-Yates), from the standard library's randomly keyed hasher:
/// spreading connections needs no cryptographic randomness.
fn shuffle<T>(items: &mut [T]) {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    for i in (1..items.len()).rev() {
        let mut h = state.build_hasher();
        h.write_usize(i);
        let j = (h.finish() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// One host to try, and how.
struct Attempt<'a> {
    config: &'a Config,
    runtime: &'a Arc<dyn Runtime>,
    host: &'a Host,
    hostaddr: Option<std::net::IpAddr>,
    port: u16,
    cache_size: usize,
    /// Bounds each address's attempt, as libpq's `connect_timeout` does.
    connect_timeout: Option<Duration>,
    /// What the server must be (one pass of `prefer-standby` asks for a standby).
    want: TargetSessionAttrs,
    /// `load_balance_hosts=random`: the host's addresses are tried in random order too.
    shuffle: bool,
}

/// Adds the host an error happened on, keeping its kind and cause, unless the message
/// already names it.
fn with_host(e: Error, host: &str) -> Error {
    let addr = host.rsplit_once(':').map_or(host, |(h, _)| h);
    if e.to_string().contains(addr) {
        e
    } else {
        e.context(host)
    }
}

async fn connect_host(a: &Attempt<'_>) -> Result<Connection> {
    let (config, runtime, host, port) = (a.config, a.runtime, a.host, a.port);
    let mut targets = match host {
        // `hostaddr` skips name resolution; the host name still serves pgpass and TLS.
        _ if a.hostaddr.is_some() => {
            vec![Target::Tcp(SocketAddr::new(
                a.hostaddr.expect("checked"),
                port,
            ))]
        }
        Host::Unix(dir) => vec![Target::Unix(dir.join(format!(".s.PGSQL.{port}")))],
        Host::Tcp(name) => {
            let addrs = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => runtime
                    .resolve(name, port)
                    .await
                    .map_err(|e| Error::io(format!("resolving host name {:?}", elide(name)), e))?,
            };
            if addrs.is_empty() {
                return Err(Error::io(
                    format!("host name {:?} resolved to no address", elide(name)),
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
                ));
            }
            addrs.into_iter().map(Target::Tcp).collect()
        }
    };
    if a.shuffle {
        shuffle(&mut targets);
    }
    let mut last = None;
    for target in targets {
        let attempt = async {
            let conn = connect_sslmode(
                config,
                runtime,
                host,
                a.hostaddr,
                &target,
                port,
                a.cache_size,
            )
            .await?;
            check_session_attrs(&conn, a.want).await?;
            Ok(conn)
        };
        // Each address gets the whole timeout, as in libpq.
        let res = match a.connect_timeout {
            Some(t) => match aiopg_rt::timeout(&**runtime, t, attempt).await {
                Ok(r) => r,
                Err(_) => Err(Error::timeout(format!(
                    "connecting to {target} took longer than connect_timeout ({} s); check \
                     that the server is up and reachable",
                    t.as_secs_f64()
                ))),
            },
            None => attempt.await,
        };
        match res {
            Ok(c) => return Ok(c),
            // Authentication and server errors would repeat on every address of the host, and
            // a server of the wrong kind sends libpq on to the next host.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Auth | ErrorKind::Db | ErrorKind::WrongServer
                ) =>
            {
                return Err(e)
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one address"))
}

fn tcp_options(config: &Config) -> TcpOptions {
    TcpOptions {
        keepalive: config.get_keepalives(),
        keepalive_idle: config.get_keepalives_idle(),
        keepalive_interval: config.get_keepalives_interval(),
        keepalive_retries: config.get_keepalives_count(),
    }
}

async fn open(config: &Config, runtime: &Arc<dyn Runtime>, target: &Target) -> Result<BoxStream> {
    let res = match target {
        Target::Tcp(addr) => runtime.connect_tcp(*addr, &tcp_options(config)).await,
        Target::Unix(path) => runtime.connect_unix(path).await,
    };
    res.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                ": is the server running there and accepting connections?"
            }
            std::io::ErrorKind::NotFound => ": no server socket there; is the server running?",
            _ => "",
        };
        Error::io(format!("connecting to {target}{hint}"), e)
    })
}

/// One TLS attempt: the settings, and whether plaintext is refused when the server says no.
struct TlsAttempt {
    setup: TlsSetup,
    required: bool,
}

/// True when the server itself turned the attempt down during start-up (an ErrorResponse, as
/// pg_hba.conf's `hostssl`/`hostnossl` lines give), which libpq answers in `allow` and
/// `prefer` by trying again the other way.
fn rejected(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Auth | ErrorKind::Db)
}

/// Connects to one address with libpq's `sslmode` semantics: `disable` plaintext only;
/// `allow` plaintext, then TLS if the server refuses; `prefer` TLS if the server agrees
/// (plaintext when it says no, or refuses the TLS session); `require` and stronger TLS only.
/// TLS is never used over a Unix socket.
async fn connect_sslmode(
    config: &Config,
    runtime: &Arc<dyn Runtime>,
    host: &Host,
    hostaddr: Option<std::net::IpAddr>,
    target: &Target,
    port: u16,
    cache_size: usize,
) -> Result<Connection> {
    let mode = config.get_ssl_mode();
    let strong = matches!(
        mode,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
    );
    let name = match (host, target) {
        (_, Target::Unix(_)) => {
            if strong {
                return Err(Error::new(
                    ErrorKind::Tls,
                    format!(
                        "sslmode={mode} cannot be met over a Unix socket: TLS is not used on \
                         local sockets; connect over TCP (host=localhost) or use sslmode=prefer"
                    ),
                    None,
                ));
            }
            return connect_target(config, runtime, host, target, port, cache_size, None)
                .await
                .map_err(|(e, _)| e);
        }
        (Host::Tcp(n), _) if !n.is_empty() => n.clone(),
        _ => hostaddr.map(|a| a.to_string()).unwrap_or_default(),
    };
    let attempt = |required| -> Result<TlsAttempt> {
        Ok(TlsAttempt {
            setup: tls::setup(config, &name)?,
            required,
        })
    };
    let go = |tls: Option<TlsAttempt>| async move {
        connect_target(
            config,
            runtime,
            host,
            target,
            port,
            cache_size,
            tls.as_ref(),
        )
        .await
    };
    // The first attempt, and whether (and how) to try again when the server turns it down.
    let first = match mode {
        SslMode::Disable | SslMode::Allow => None,
        SslMode::Prefer => Some(attempt(false)?),
        _ => Some(attempt(true)?),
    };
    match go(first).await {
        Ok(conn) => Ok(conn),
        Err((e, _)) if mode == SslMode::Allow && rejected(&e) => {
            tracing::debug!(error = %e, "sslmode=allow: plaintext refused, trying TLS");
            go(Some(attempt(true)?)).await.map_err(|(e, _)| e)
        }
        Err((e, true))
            if mode == SslMode::Prefer && (rejected(&e) || e.kind() == ErrorKind::Tls) =>
        {
            tracing::debug!(error = %e, "sslmode=prefer: TLS refused, trying plaintext");
            go(None).await.map_err(|(e, _)| e)
        }
        Err((e, _)) => Err(e),
    }
}

/// Reads exactly one byte: the server's answer to SSLRequest.
async fn read_one_byte(stream: &mut BoxStream) -> Result<u8> {
    use futures_io::AsyncRead;
    let mut b = [0u8; 1];
    let n = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_read(cx, &mut b))
        .await
        .map_err(|e| Error::io("reading the server's answer to SSLRequest", e))?;
    if n == 0 {
        return Err(Error::new(
            ErrorKind::Closed,
            "the server closed the connection instead of answering SSLRequest",
            None,
        ));
    }
    Ok(b[0])
}

/// After the server's `S`, nothing may be waiting before the TLS handshake: bytes there were
/// sent in the clear and would be taken as part of the encrypted session (CVE-2021-23222).
fn refuse_early_bytes(stream: &mut BoxStream) -> Result<()> {
    use futures_io::AsyncRead;
    let mut b = [0u8; 1];
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(&mut *stream).poll_read(&mut cx, &mut b) {
        std::task::Poll::Ready(Ok(n)) if n > 0 => Err(Error::protocol(
            "the server sent unencrypted data after agreeing to TLS (a man-in-the-middle \
             attack?); the connection was closed",
        )),
        _ => Ok(()),
    }
}

/// Starts TLS on a fresh socket: SSLRequest and its one-byte answer (or, with
/// `sslnegotiation=direct`, the handshake at once). Returns the stream to go on with, the
/// channel-binding data, and whether TLS is on.
async fn start_tls(
    config: &Config,
    mut stream: BoxStream,
    t: &TlsAttempt,
) -> Result<(BoxStream, Option<Vec<u8>>, bool)> {
    if config.get_ssl_negotiation() == SslNegotiation::Direct {
        let (s, end_point) = tls::handshake(&t.setup, stream).await?;
        return Ok((s, end_point, true));
    }
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    write_all(&mut stream, &mut buf).await?;
    match read_one_byte(&mut stream).await? {
        b'S' => {
            refuse_early_bytes(&mut stream)?;
            let (s, end_point) = tls::handshake(&t.setup, stream).await?;
            Ok((s, end_point, true))
        }
        b'N' if !t.required => Ok((stream, None, false)),
        b'N' => Err(Error::new(
            ErrorKind::Tls,
            format!(
                "the server does not support TLS (it answered the SSLRequest with N), but \
                 sslmode={} requires it",
                t.setup.mode
            ),
            None,
        )),
        b'E' => Err(Error::new(
            ErrorKind::Tls,
            "the server answered the SSLRequest with an error (it predates TLS support)",
            None,
        )),
        other => Err(Error::protocol(format!(
            "the server answered the SSLRequest with byte {other:#04x}, neither S nor N"
        ))),
    }
}

/// Opens one connection; TLS as `tls` says. On failure also tells whether TLS was on.
async fn connect_target(
    config: &Config,
    runtime: &Arc<dyn Runtime>,
    host: &Host,
    target: &Target,
    port: u16,
    cache_size: usize,
    tls: Option<&TlsAttempt>,
) -> std::result::Result<Connection, (Error, bool)> {
    let mut tls_on = false;
    connect_target_inner(
        config,
        runtime,
        host,
        target,
        port,
        cache_size,
        tls,
        &mut tls_on,
    )
    .await
    .map_err(|e| (e, tls_on))
}

#[allow(clippy::too_many_arguments)]
async fn connect_target_inner(
    config: &Config,
    runtime: &Arc<dyn Runtime>,
    host: &Host,
    target: &Target,
    port: u16,
    cache_size: usize,
    tls: Option<&TlsAttempt>,
    tls_on: &mut bool,
) -> Result<Connection> {
    let user = config
        .get_user()
        .ok_or_else(|| Error::config("user", "no user name: set user in the DSN or PGUSER"))?;

    // Rows decode into Rust strings, which are UTF-8: the session always speaks UTF8, and a
    // client_encoding asking for another is refused rather than ignored.
    if let Some(enc) = config.get_client_encoding() {
        if !is_utf8_encoding(enc) {
            return Err(Error::config(
                "client_encoding",
                format!(
                    "aiopg speaks UTF8 only (Rust strings are UTF-8), not {}; remove the \
                     setting (or PGCLIENTENCODING) or set it to UTF8: the server converts \
                     from the database's encoding",
                    aiopg_core::error::elide(enc)
                ),
            ));
        }
    }

    // Start-up.
    let mut buf = BytesMut::new();
    let mut params: Vec<(&str, &str)> = vec![("user", user), ("client_encoding", "UTF8")];
    if let Some(db) = config.get_dbname() {
        params.push(("database", db));
    }
    // As in libpq: fallback_application_name names the session when application_name does not.
    if let Some(app) = config
        .get_application_name()
        .or(config.get_fallback_application_name())
    {
        params.push(("application_name", app));
    }
    if let Some(opts) = config.get_options() {
        params.push(("options", opts));
    }
    frontend::startup_message(params.iter().copied(), &mut buf)
        .map_err(|e| Error::encode(format!("start-up message: {e}"), Some(Box::new(e))))?;
    if buf.len() > MAX_STARTUP_MESSAGE {
        // Name the longest setting: that is the one to look at.
        let (key, _) = params
            .iter()
            .max_by_key(|(_, v)| v.len())
            .expect("user is always sent");
        let key = if *key == "database" { "dbname" } else { key };
        return Err(Error::config(
            key,
            format!(
                "user, dbname, application_name and options make a start-up message of {} \
                 bytes, and PostgreSQL accepts at most {MAX_STARTUP_MESSAGE}",
                buf.len()
            ),
        ));
    }
    let stream = open(config, runtime, target).await?;
    let (mut stream, end_point) = match tls {
        Some(t) => {
            let (s, end_point, on) = start_tls(config, stream, t).await?;
            *tls_on = on;
            (s, end_point)
        }
        None => (stream, None),
    };
    let mut rb = ReadBuf::new();
    write_all(&mut stream, &mut buf).await?;

    let binding = Binding {
        tls: *tls_on,
        end_point,
    };
    authenticate(config, host, port, user, &mut stream, &mut rb, &binding).await?;

    // After authentication: key data and parameters until ReadyForQuery.
    let mut backend_pid = 0;
    let mut secret_key = 0;
    let mut server_params = HashMap::new();
    loop {
        match read_message(&mut stream, &mut rb).await? {
            Message::BackendKeyData(k) => {
                backend_pid = k.process_id();
                secret_key = k.secret_key();
            }
            Message::ParameterStatus(p) => {
                let name = p.name().map_err(|e| Error::protocol(e.to_string()))?;
                let value = p.value().map_err(|e| Error::protocol(e.to_string()))?;
                server_params.insert(name.to_owned(), value.to_owned());
            }
            Message::NoticeResponse(n) => {
                if let Ok(n) = DbError::parse(&mut n.fields()) {
                    tracing::info!(code = %n.code(), "{}", n.message());
                }
            }
            Message::ErrorResponse(e) => return Err(db_error(&e)?),
            Message::ReadyForQuery(_) => break,
            _ => return Err(Error::protocol("unexpected message during start-up")),
        }
    }

    let identity = Identity {
        backend_pid,
        secret_key,
        config: config.clone(),
        host: host.clone(),
        addr: match target {
            Target::Tcp(a) => Some(*a),
            Target::Unix(_) => None,
        },
        port,
        tls: if *tls_on {
            tls.map(|t| t.setup.clone())
        } else {
            None
        },
    };
    let state = State::new(stream, rb, server_params, StatementCache::new(cache_size));
    let conn = Connection::from_shared(Arc::new(Shared::new(
        state,
        runtime.clone(),
        identity,
        Some(DEFAULT_TIMEOUT),
    )));
    tracing::debug!(backend_pid, runtime = runtime.name(), "connected");
    Ok(conn)
}

fn db_error(body: &postgres_protocol::message::backend::ErrorResponseBody) -> Result<Error> {
    let db = DbError::parse(&mut body.fields())
        .map_err(|e| Error::protocol(format!("malformed error: {e}")))?;
    let code = db.code().clone();
    Ok(
        if code == SqlState::INVALID_PASSWORD
            || code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            Error::auth_db(db.message().to_owned(), db)
        } else {
            Error::db(db)
        },
    )
}

/// What the connection offers SCRAM for channel binding.
struct Binding {
    tls: bool,
    /// `tls-server-end-point` data, when the certificate's algorithm defines a hash.
    end_point: Option<Vec<u8>>,
}

/// libpq's wording when `channel_binding=require` meets a request without binding.
const BINDING_REQUIRED: &str = "channel binding required but not supported by server's authentication request (channel_binding=require); no credential was sent";

/// Checks `require_auth` before answering a request for `method` (`what` describes it).
fn check_required(config: &Config, method: AuthMethod, what: &str) -> Result<()> {
    match config.get_require_auth() {
        Some(r) if !r.allows(method) => Err(Error::auth(format!(
            "authentication method requirement \"{r}\" failed: server requested {what}; no \
             credential was sent"
        ))),
        _ => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn authenticate(
    config: &Config,
    host: &Host,
    port: u16,
    user: &str,
    stream: &mut BoxStream,
    rb: &mut ReadBuf,
    binding: &Binding,
) -> Result<()> {
    let require_binding = config.get_channel_binding() == ChannelBindingMode::Require;
    // Whether the server asked for any authentication before AuthenticationOk.
    let mut asked = false;
    let password = || {
        config.password_for(host, port).ok_or_else(|| {
            Error::auth(format!(
                "the server asks a password for user {:?} and none was given: set \
                 password in the DSN, PGPASSWORD or ~/.pgpass",
                elide(user)
            ))
        })
    };
    let mut buf = BytesMut::new();
    loop {
        match read_message(stream, rb).await? {
            Message::AuthenticationOk => {
                if !asked {
                    if require_binding {
                        return Err(Error::auth(
                            "channel binding required, but server authenticated client without \
                             channel binding (channel_binding=require)",
                        ));
                    }
                    check_required(config, AuthMethod::None, "no authentication")?;
                }
                return Ok(());
            }
            Message::AuthenticationCleartextPassword => {
                asked = true;
                if require_binding {
                    return Err(Error::auth(BINDING_REQUIRED));
                }
                check_required(config, AuthMethod::Password, "a cleartext password")?;
                let pw = password()?;
                frontend::password_message(pw.expose(), &mut buf)
                    .map_err(|e| Error::encode(e.to_string(), None))?;
                write_all(stream, &mut buf).await?;
            }
            Message::AuthenticationMd5Password(body) => {
                asked = true;
                if require_binding {
                    return Err(Error::auth(BINDING_REQUIRED));
                }
                check_required(config, AuthMethod::Md5, "a hashed password")?;
                let pw = password()?;
                let hash = postgres_protocol::authentication::md5_hash(
                    user.as_bytes(),
                    pw.expose(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut buf)
                    .map_err(|e| Error::encode(e.to_string(), None))?;
                write_all(stream, &mut buf).await?;
            }
            Message::AuthenticationSasl(body) => {
                asked = true;
                let mut mechanisms = body.mechanisms();
                let (mut scram, mut plus) = (false, false);
                while let Some(m) = mechanisms
                    .next()
                    .map_err(|e| Error::protocol(e.to_string()))?
                {
                    scram |= m == SCRAM_SHA_256;
                    plus |= m == SCRAM_SHA_256_PLUS;
                }
                check_required(config, AuthMethod::ScramSha256, "SASL authentication")?;
                let use_binding = config.get_channel_binding() != ChannelBindingMode::Disable;
                let (mechanism, cb) =
                    match (&binding.end_point, plus && binding.tls) {
                        (Some(hash), true) if use_binding => (
                            SCRAM_SHA_256_PLUS,
                            ChannelBinding::tls_server_end_point(hash.clone()),
                        ),
                        _ if require_binding => {
                            return Err(Error::auth(if !binding.tls {
                                "channel binding is required, but TLS is not in use \
                             (channel_binding=require); no credential was sent"
                            } else if !plus {
                                "channel binding is required, but the server did not offer an \
                             authentication method that supports channel binding \
                             (SCRAM-SHA-256-PLUS); no credential was sent"
                            } else {
                                "channel binding is required, but the server's certificate uses a \
                             signature algorithm with no tls-server-end-point hash (such as \
                             Ed25519); no credential was sent"
                            }))
                        }
                        // TLS, but the server did not offer binding: say that we could have (a
                        // server that did offer it then knows the offer was stripped).
                        _ if scram && binding.tls && !plus && use_binding => {
                            (SCRAM_SHA_256, ChannelBinding::unrequested())
                        }
                        _ if scram => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                        _ => return Err(Error::auth(
                            "the server offers no SASL mechanism aiopg supports (SCRAM-SHA-256)",
                        )),
                    };
                let pw = password()?;
                scram_exchange(pw.expose(), mechanism, cb, stream, rb).await?;
            }
            Message::ErrorResponse(e) => return Err(db_error(&e)?),
            Message::NoticeResponse(_) => {}
            Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationGss
            | Message::AuthenticationSspi
            | Message::AuthenticationGssContinue(_) => {
                return Err(Error::auth(
                    "the server asks for an authentication method aiopg does not support \
                     (Kerberos, GSSAPI, SSPI or SCM); use password, md5 or scram-sha-256",
                ))
            }
            _ => return Err(Error::protocol("unexpected message during authentication")),
        }
    }
}

/// The most PBKDF2 iterations a server's SCRAM challenge may ask for. The client computes
/// them on its own thread before it can tell whether the server is genuine, so an unbounded
/// count would let any server it reaches keep it busy for hours. PostgreSQL's default is 4096;
/// a million takes well under a second.
const MAX_SCRAM_ITERATIONS: u64 = 1_000_000;

/// Refuses a SCRAM server-first message asking for more than [`MAX_SCRAM_ITERATIONS`]
/// (anything else wrong with it is the SCRAM implementation's to report).
fn check_scram_iterations(server_first: &[u8]) -> Result<()> {
    let count = server_first
        .split(|&b| b == b',')
        .find_map(|attr| attr.strip_prefix(b"i="))
        .and_then(|i| std::str::from_utf8(i).ok()?.parse::<u64>().ok());
    match count {
        Some(n) if n > MAX_SCRAM_ITERATIONS => Err(Error::auth(format!(
            "the server's SCRAM challenge asks for {n} iterations, more than the \
             {MAX_SCRAM_ITERATIONS} aiopg computes (PostgreSQL's default is 4096): refused \
             rather than spend that long; lower the server's scram_iterations"
        ))),
        _ => Ok(()),
    }
}

async fn scram_exchange(
    password: &[u8],
    mechanism: &str,
    binding: ChannelBinding,
    stream: &mut BoxStream,
    rb: &mut ReadBuf,
) -> Result<()> {
    let mut scram = ScramSha256::new(password, binding);
    let mut buf = BytesMut::new();
    frontend::sasl_initial_response(mechanism, scram.message(), &mut buf)
        .map_err(|e| Error::encode(e.to_string(), None))?;
    write_all(stream, &mut buf).await?;
    match read_message(stream, rb).await? {
        Message::AuthenticationSaslContinue(body) => {
            check_scram_iterations(body.data())?;
            scram.update(body.data()).map_err(|e| {
                Error::auth(format!("the server's SCRAM challenge is invalid: {e}"))
            })?;
        }
        Message::ErrorResponse(e) => return Err(db_error(&e)?),
        _ => return Err(Error::protocol("expected AuthenticationSASLContinue")),
    }
    frontend::sasl_response(scram.message(), &mut buf)
        .map_err(|e| Error::encode(e.to_string(), None))?;
    write_all(stream, &mut buf).await?;
    match read_message(stream, rb).await? {
        Message::AuthenticationSaslFinal(body) => scram.finish(body.data()).map_err(|e| {
            Error::auth(format!(
                "the server could not prove it knows the password (SCRAM signature): {e}"
            ))
        }),
        Message::ErrorResponse(e) => Err(db_error(&e)?),
        _ => Err(Error::protocol("expected AuthenticationSASLFinal")),
    }
}

/// Checks `target_session_attrs` on a fresh connection, as libpq: a server is read-only when
/// `default_transaction_read_only` or `in_hot_standby` is on, and a standby when
/// `in_hot_standby` is on. Servers before 14 report neither at start-up and are asked. A
/// mismatch closes the connection (Terminate) with a `WrongServer` error.
async fn check_session_attrs(conn: &Connection, want: TargetSessionAttrs) -> Result<()> {
    if matches!(
        want,
        TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby
    ) {
        return Ok(());
    }
    let standby = match conn.parameter_status("in_hot_standby") {
        Some(v) => v == "on",
        None => {
            let rows = conn
                .simple_query("SELECT pg_catalog.pg_is_in_recovery()")
                .await?;
            rows.iter()
                .any(|m| matches!(m, crate::SimpleQueryMessage::Row(r) if r.get(0) == Some("t")))
        }
    };
    let read_only = || async {
        if standby {
            return Ok::<bool, Error>(true);
        }
        Ok(
            match conn.parameter_status("default_transaction_read_only") {
                Some(v) => v == "on",
                None => {
                    let rows = conn.simple_query("SHOW transaction_read_only").await?;
                    rows.iter().any(|m| {
                    matches!(m, crate::SimpleQueryMessage::Row(r) if r.get(0) == Some("on"))
                })
                }
            },
        )
    };
    let (ok, what) = match want {
        TargetSessionAttrs::ReadWrite => (!read_only().await?, "the server is read-only"),
        TargetSessionAttrs::ReadOnly => (read_only().await?, "the server is not read-only"),
        TargetSessionAttrs::Primary => (!standby, "the server is in hot standby mode"),
        TargetSessionAttrs::Standby => (standby, "the server is not in hot standby mode"),
        _ => (true, ""),
    };
    if ok {
        Ok(())
    } else {
        conn.close().await;
        Err(Error::new(
            ErrorKind::WrongServer,
            format!("{what}, and target_session_attrs={want} was asked for"),
            None,
        ))
    }
}

/// Sends a CancelRequest for `shared`'s backend over a new socket.
pub(crate) async fn cancel(shared: &Shared) -> Result<()> {
    let id = &shared.identity;
    let target = match (&id.host, id.addr) {
        (_, Some(addr)) => Target::Tcp(addr),
        (Host::Unix(dir), None) => Target::Unix(dir.join(format!(".s.PGSQL.{}", id.port))),
        (Host::Tcp(_), None) => return Err(Error::usage("no address to send the cancel to")),
    };
    let runtime = &shared.runtime;
    let send = async {
        let mut stream = open(&id.config, runtime, &target).await?;
        if let Some(setup) = &id.tls {
            // The cancel goes the way the connection went: over TLS.
            let t = TlsAttempt {
                setup: setup.clone(),
                required: true,
            };
            stream = start_tls(&id.config, stream, &t).await?.0;
        }
        let mut buf = BytesMut::new();
        frontend::cancel_request(id.backend_pid, id.secret_key, &mut buf);
        write_all(&mut stream, &mut buf).await?;
        // The server closes the socket once it has signalled the backend; waiting for that
        // keeps the cancel from racing ahead of the caller's next statement. A reset instead
        // of that close leaves it unknown whether (and when) the signal comes: an error, so
        // that a timed-out statement's connection is closed rather than reused with a cancel
        // that may still land on its next statement.
        let mut rb = ReadBuf::new();
        match std::future::poll_fn(|cx| rb.poll_fill(&mut stream, cx)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::io(
                "the cancel request's connection broke before the server closed it",
                e,
            )),
        }
    };
    let timeout = id
        .config
        .get_connect_timeout()
        .unwrap_or(Duration::from_secs(10));
    match aiopg_rt::timeout(&**runtime, timeout, send).await {
        Ok(r) => r,
        Err(_) => Err(Error::timeout("sending the cancel request")),
    }
}

/// True for the names PostgreSQL (and libpq's `auto`) accept for UTF-8: `UTF8`, `UTF-8`,
/// `unicode` in any case, and `auto` (Rust programs read and write UTF-8 whatever the locale).
fn is_utf8_encoding(name: &str) -> bool {
    ["utf8", "utf-8", "unicode", "auto"]
        .iter()
        .any(|n| name.trim().eq_ignore_ascii_case(n))
}
