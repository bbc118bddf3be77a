//! Connection settings: libpq connection strings, URIs, PG* environment variables, `~/.pgpass`
//! and libpq's defaults.
//!
//! A [`Config`] is built in three steps, each of which only fills what the previous ones left
//! unset, exactly like libpq:
//!
//! 1. [`Config::parse`] reads a connection string, either libpq's `key=value` form or a
//!    `postgresql://` URI (syntax only: no environment, no defaults);
//! 2. [`Config::apply_env`] takes the `PG*` environment variables (`PGHOST`, `PGPORT`, ...);
//! 3. [`Config::apply_defaults`] adds libpq's defaults: the OS user name, a database named after
//!    the user, the local Unix socket folder (or `localhost`) and port 5432.
//!
//! [`Config::from_dsn`] does all three. Passwords that are not in the settings come from the
//! password file (`~/.pgpass`) through [`Config::password_for`].
//!
//! Passwords never show in `Debug`, `Display` or error messages; [`Config::to_dsn_string`]
//! includes them only when asked to.
//!
//! Differences from libpq worth knowing: an empty value (`user=''`, an empty `PGUSER`) counts
//! as "not set", so the environment or the default fills it; `service` files are not supported;
//! and the `PGSERVICE`, `PGSERVICEFILE` and `PGREQUIRESSL` variables are ignored.

mod env;
mod parse;
mod pgpass;
mod render;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

use parse::Ctx;

/// The port PostgreSQL listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 5432;

/// The smallest `connect_timeout` libpq accepts: anything from 1 up to this counts as this.
const MIN_CONNECT_TIMEOUT_SECS: u32 = 2;

/// For the `fuzz/` crate only (not part of the API): looks a connection up in `text` as in
/// a password file; true when a line matches.
#[doc(hidden)]
pub fn fuzz_pgpass_lookup(text: &[u8], host: &str, port: u16, dbname: &str, user: &str) -> bool {
    pgpass::lookup(text, &Host::parse(host), port, dbname, user).is_some()
}

/// One host to try, from `host` (or `PGHOST`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A host name or IP address reached over TCP.
    ///
    /// An empty name stands for an empty entry in a host list (`host=a,,b`), which
    /// [`Config::apply_defaults`] replaces by the default host.
    Tcp(String),
    /// A folder holding the server's Unix socket (`.s.PGSQL.<port>`); a `host` starting with `/`.
    ///
    /// A name starting with `@` is, as in libpq, a socket in Linux's abstract namespace.
    Unix(PathBuf),
}

impl Host {
    /// Reads one `host` entry as libpq does: a value starting with `/` (a folder) or `@` (an
    /// abstract socket name) is a Unix socket, anything else a TCP host name or address.
    pub fn parse(s: &str) -> Host {
        if s.starts_with('/') || s.starts_with('@') {
            Host::Unix(PathBuf::from(s))
        } else {
            Host::Tcp(s.to_owned())
        }
    }

    /// True for a Unix-domain socket.
    pub fn is_unix(&self) -> bool {
        matches!(self, Host::Unix(_))
    }
}

impl From<&str> for Host {
    fn from(s: &str) -> Host {
        Host::parse(s)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(name) => f.write_str(name),
            Host::Unix(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// The accepted spellings of a key word whose value is one of a few choices.
///
/// Keeping the table next to each enum gives parsing, rendering and the "accepted values" part
/// of error messages a single source of truth.
trait Choice: Sized + Copy + PartialEq + 'static {
    /// The libpq key word.
    const KEY: &'static str;
    /// Every accepted value and what it means.
    const CHOICES: &'static [(&'static str, Self)];

    fn name(self) -> &'static str {
        Self::CHOICES
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    fn parse_choice(value: &str, ctx: Ctx<'_>) -> Result<Self> {
        Self::CHOICES
            .iter()
            .find(|(n, _)| *n == value)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let accepted: Vec<&str> = Self::CHOICES.iter().map(|(n, _)| *n).collect();
                ctx.err(format!(
                    "invalid value{} for `{}`; accepted values: {}",
                    ctx.shown(value),
                    Self::KEY,
                    accepted.join(", ")
                ))
            })
    }
}

/// Implements `as_str`, `Display` and `FromStr` for a [`Choice`] enum.
macro_rules! choice_impls {
    ($t:ty) => {
        impl $t {
            /// The libpq spelling of this value.
            pub fn as_str(self) -> &'static str {
                Choice::name(self)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $t {
            type Err = Error;

            /// Parses the libpq spelling (case-sensitive, as in libpq).
            fn from_str(s: &str) -> Result<Self> {
                <$t as Choice>::parse_choice(s, Ctx::new(<$t as Choice>::KEY))
            }
        }
    };
}

/// `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Try plaintext first, then TLS.
    Allow,
    /// Try TLS first, then plaintext (libpq's default).
    #[default]
    Prefer,
    /// TLS only, without checking the certificate.
    Require,
    /// TLS, checking the certificate chain.
    VerifyCa,
    /// TLS, checking the certificate chain and the host name.
    VerifyFull,
}

impl Choice for SslMode {
    const KEY: &'static str = "sslmode";
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ];
}
choice_impls!(SslMode);

/// `sslnegotiation`: how TLS is started (libpq 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SslNegotiation {
    /// Ask with an SSLRequest first, as every server understands (the default).
    #[default]
    Postgres,
    /// Start the TLS handshake at once, with ALPN `postgresql` (PostgreSQL 17 and later);
    /// only with `sslmode=require` or stronger.
    Direct,
}

impl Choice for SslNegotiation {
    const KEY: &'static str = "sslnegotiation";
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("postgres", SslNegotiation::Postgres),
        ("direct", SslNegotiation::Direct),
    ];
}
choice_impls!(SslNegotiation);

/// An authentication method the server may ask for, as `require_auth` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A cleartext password.
    Password,
    /// An MD5-hashed password.
    Md5,
    /// GSSAPI (Kerberos).
    Gss,
    /// SSPI (Windows).
    Sspi,
    /// SCRAM-SHA-256 (with or without channel binding).
    ScramSha256,
    /// No authentication at all (`trust`, or a client certificate alone).
    None,
}

impl AuthMethod {
    const NAMES: &'static [(&'static str, AuthMethod)] = &[
        ("password", AuthMethod::Password),
        ("md5", AuthMethod::Md5),
        ("gss", AuthMethod::Gss),
        ("sspi", AuthMethod::Sspi),
        ("scram-sha-256", AuthMethod::ScramSha256),
        ("none", AuthMethod::None),
    ];

    /// The `require_auth` spelling.
    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// `require_auth` (libpq 16): the authentication methods the client accepts from the server,
/// or (written with `!`) the ones it refuses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequireAuth {
    negated: bool,
    methods: Vec<AuthMethod>,
}

impl RequireAuth {
    /// Parses libpq's syntax: a comma-separated list of methods, all of them prefixed with
    /// `!` or none of them.
    pub fn parse(value: &str) -> Result<RequireAuth> {
        Self::parse_in(value, Ctx::new("require_auth"))
    }

    fn parse_in(value: &str, ctx: Ctx<'_>) -> Result<RequireAuth> {
        let mut negated = None;
        let mut methods = Vec::new();
        for word in value.split(',') {
            let (neg, name) = match word.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, word),
            };
            if *negated.get_or_insert(neg) != neg {
                return Err(ctx.err(
                    "negative require_auth methods (`!md5`) cannot be mixed with positive ones",
                ));
            }
            let method = AuthMethod::NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, m)| *m)
                .ok_or_else(|| {
                    let accepted: Vec<&str> = AuthMethod::NAMES.iter().map(|(n, _)| *n).collect();
                    ctx.err(format!(
                        "invalid method{} in `require_auth`; accepted methods: {} (each may be \
                         negated with `!`)",
                        ctx.shown(name),
                        accepted.join(", ")
                    ))
                })?;
            if methods.contains(&method) {
                return Err(ctx.err(format!(
                    "require_auth method `{}` is listed more than once",
                    method.as_str()
                )));
            }
            methods.push(method);
        }
        Ok(RequireAuth {
            negated: negated.unwrap_or(false),
            methods,
        })
    }

    /// Whether the server may authenticate the client with `method`.
    pub fn allows(&self, method: AuthMethod) -> bool {
        self.methods.contains(&method) != self.negated
    }
}

impl fmt::Display for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.methods.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if self.negated {
                f.write_str("!")?;
            }
            f.write_str(m.as_str())?;
        }
        Ok(())
    }
}

/// `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TargetSessionAttrs {
    /// Any server will do.
    #[default]
    Any,
    /// A server that accepts writes.
    ReadWrite,
    /// A server that is read only.
    ReadOnly,
    /// A primary server.
    Primary,
    /// A standby server.
    Standby,
    /// A standby if there is one, else a primary.
    PreferStandby,
}

impl Choice for TargetSessionAttrs {
    const KEY: &'static str = "target_session_attrs";
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("any", TargetSessionAttrs::Any),
        ("read-write", TargetSessionAttrs::ReadWrite),
        ("read-only", TargetSessionAttrs::ReadOnly),
        ("primary", TargetSessionAttrs::Primary),
        ("standby", TargetSessionAttrs::Standby),
        ("prefer-standby", TargetSessionAttrs::PreferStandby),
    ];
}
choice_impls!(TargetSessionAttrs);

/// `channel_binding`: whether SCRAM authentication must bind to the TLS channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ChannelBinding {
    /// Never use channel binding.
    Disable,
    /// Use channel binding when the server offers it (libpq's default).
    #[default]
    Prefer,
    /// Fail unless the server authenticates with channel binding.
    Require,
}

impl Choice for ChannelBinding {
    const KEY: &'static str = "channel_binding";
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("disable", ChannelBinding::Disable),
        ("prefer", ChannelBinding::Prefer),
        ("require", ChannelBinding::Require),
    ];
}
choice_impls!(ChannelBinding);

/// `load_balance_hosts`: the order in which hosts are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum LoadBalanceHosts {
    /// Try hosts in the order given (libpq's default).
    #[default]
    Disable,
    /// Try hosts, and the addresses each name resolves to, in random order.
    Random,
}

impl Choice for LoadBalanceHosts {
    const KEY: &'static str = "load_balance_hosts";
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("disable", LoadBalanceHosts::Disable),
        ("random", LoadBalanceHosts::Random),
    ];
}
choice_impls!(LoadBalanceHosts);

/// A password, kept out of `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl Password {
    /// Wraps a password.
    pub fn new(p: impl Into<Vec<u8>>) -> Password {
        Password(p.into())
    }
    /// The password's bytes, for the authentication exchange.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for Password {
    fn from(p: &str) -> Password {
        Password::new(p)
    }
}

impl From<String> for Password {
    fn from(p: String) -> Password {
        Password::new(p)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(********)")
    }
}

/// Connection settings.
///
/// Build one from a connection string with [`Config::parse`] or [`Config::from_dsn`], or start
/// from [`Config::new`] and call the setters:
///
/// ```
/// use aiopg_core::config::{Config, SslMode};
///
/// let mut config = Config::new();
/// config.host("db.example.com").port(5433).user("app").dbname("shop").ssl_mode(SslMode::Require);
/// assert_eq!(config.to_string(), "host=db.example.com port=5433 user=app dbname=shop sslmode=require");
/// ```
///
/// Each setting is either unset or set; getters of settings that have a libpq default
/// (`get_ssl_mode`, `get_keepalives`, ...) return the default when unset.
#[derive(Clone, PartialEq, Default)]
pub struct Config {
    hosts: Vec<Host>,
    // `None` is an empty entry in the list: connect to the host by name.
    hostaddrs: Vec<Option<IpAddr>>,
    // 0 is an empty entry in the list: libpq rejects port 0, so it is free to mean "default".
    ports: Vec<u16>,
    user: Option<String>,
    password: Option<Password>,
    dbname: Option<String>,
    application_name: Option<String>,
    fallback_application_name: Option<String>,
    options: Option<String>,
    client_encoding: Option<String>,
    // Whole seconds as libpq counts them; `Some(0)` is an explicit "wait forever", which unlike
    // `None` keeps `PGCONNECT_TIMEOUT` from applying.
    connect_timeout: Option<u32>,
    ssl_mode: Option<SslMode>,
    ssl_root_cert: Option<PathBuf>,
    ssl_cert: Option<PathBuf>,
    ssl_key: Option<PathBuf>,
    ssl_password: Option<Password>,
    ssl_crl: Option<PathBuf>,
    ssl_sni: Option<bool>,
    ssl_negotiation: Option<SslNegotiation>,
    channel_binding: Option<ChannelBinding>,
    require_auth: Option<RequireAuth>,
    target_session_attrs: Option<TargetSessionAttrs>,
    load_balance_hosts: Option<LoadBalanceHosts>,
    passfile: Option<PathBuf>,
    keepalives: Option<bool>,
    // Seconds; `Some(0)` is libpq's "use the system default", kept apart from `None` so that
    // rendering gives back what was parsed.
    keepalives_idle: Option<u32>,
    keepalives_interval: Option<u32>,
    keepalives_count: Option<u32>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every field is listed; the two secrets go through `Password`'s redacting `Debug`.
        f.debug_struct("Config")
            .field("hosts", &self.hosts)
            .field("hostaddrs", &self.hostaddrs)
            .field("ports", &self.ports)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("fallback_application_name", &self.fallback_application_name)
            .field("options", &self.options)
            .field("client_encoding", &self.client_encoding)
            .field("connect_timeout", &self.connect_timeout)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("ssl_cert", &self.ssl_cert)
            .field("ssl_key", &self.ssl_key)
            .field("ssl_password", &self.ssl_password)
            .field("ssl_crl", &self.ssl_crl)
            .field("ssl_sni", &self.ssl_sni)
            .field("ssl_negotiation", &self.ssl_negotiation)
            .field("channel_binding", &self.channel_binding)
            .field("require_auth", &self.require_auth)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("load_balance_hosts", &self.load_balance_hosts)
            .field("passfile", &self.passfile)
            .field("keepalives", &self.keepalives)
            .field("keepalives_idle", &self.keepalives_idle)
            .field("keepalives_interval", &self.keepalives_interval)
            .field("keepalives_count", &self.keepalives_count)
            .finish()
    }
}

/// Renders a `key=value` connection string with every password replaced by `********`.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render::render(self, false))
    }
}

impl FromStr for Config {
    type Err = Error;

    /// Same as [`Config::parse`].
    fn from_str(s: &str) -> Result<Config> {
        Config::parse(s)
    }
}

/// Rounds a duration up to whole seconds, saturating at `i32::MAX` (libpq's integer range).
fn whole_seconds(d: Duration) -> u32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.min(i32::MAX as u64) as u32
}

/// Maps libpq's "0 means the default" convention onto `None`.
fn nonzero_seconds(secs: Option<u32>) -> Option<Duration> {
    secs.filter(|&s| s > 0)
        .map(|s| Duration::from_secs(u64::from(s)))
}

/// Turns an empty string into "unset", the way every string setting treats it.
fn non_empty(s: impl Into<String>) -> Option<String> {
    let s = s.into();
    (!s.is_empty()).then_some(s)
}

fn non_empty_path(p: impl Into<PathBuf>) -> Option<PathBuf> {
    let p = p.into();
    (!p.as_os_str().is_empty()).then_some(p)
}

impl Config {
    /// An empty configuration: nothing set.
    pub fn new() -> Config {
        Config::default()
    }

    /// Parses a connection string: libpq's `key=value` form or a `postgres://` /
    /// `postgresql://` URI. Only the syntax is read: nothing comes from the environment and no
    /// default is filled in (see [`Config::from_dsn`] for that).
    ///
    /// ```
    /// use aiopg_core::config::{Config, Host};
    ///
    /// let kv = Config::parse("host=localhost port=5433 dbname=mydb connect_timeout=10")?;
    /// assert_eq!(kv.get_hosts(), [Host::Tcp("localhost".into())]);
    /// assert_eq!(kv.get_ports(), [5433]);
    ///
    /// let uri = Config::parse("postgresql://app:s3cr%40t@db1:5433,db2:5434/shop?sslmode=require")?;
    /// assert_eq!(uri.get_user(), Some("app"));
    /// assert_eq!(uri.get_password().unwrap().expose(), b"s3cr@t");
    /// assert_eq!(uri.get_hosts().len(), 2);
    /// // Display hides the password.
    /// assert_eq!(
    ///     uri.to_string(),
    ///     "host=db1,db2 port=5433,5434 user=app password=******** dbname=shop sslmode=require"
    /// );
    /// # Ok::<(), aiopg_core::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`Config`](crate::ErrorKind::Config) error naming the offending key word (or `dsn` for
    /// a syntax error not tied to one) for malformed syntax, unknown key words, invalid values
    /// and host/port lists of different lengths. Error messages never contain a password.
    pub fn parse(s: &str) -> Result<Config> {
        parse::parse(s)
    }

    /// Parses a connection string, then fills what it leaves unset from the `PG*` environment
    /// variables and libpq's defaults.
    pub fn from_dsn(dsn: &str) -> Result<Config> {
        Config::from_dsn_with_env(dsn, &env::process_env)
    }

    /// Like [`Config::from_dsn`], reading environment variables through `env` instead of the
    /// process environment (for tests, or to take settings from elsewhere).
    ///
    /// `env` is consulted for the `PG*` variables and, for the defaults, for `USER`, `LOGNAME`
    /// and `HOME`.
    pub fn from_dsn_with_env(dsn: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let mut config = Config::parse(dsn)?;
        config.apply_env(env)?;
        config.apply_defaults_with_env(env)?;
        Ok(config)
    }

    /// Fills every unset setting for which `env` has a non-empty `PG*` variable: `PGHOST`,
    /// `PGHOSTADDR`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGAPPNAME`,
    /// `PGCONNECT_TIMEOUT`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGPASSFILE`,
    /// `PGOPTIONS`, `PGTARGETSESSIONATTRS`, `PGCHANNELBINDING`, `PGCLIENTENCODING` and
    /// `PGLOADBALANCEHOSTS`. Settings already set win over the environment.
    ///
    /// Use `&|name| std::env::var(name).ok()` for the process environment.
    ///
    /// # Errors
    ///
    /// A `Config` error naming the variable when one holds an invalid value, or when the host,
    /// hostaddr and port lists end up with different lengths.
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
        env::apply_env(self, env)
    }

    /// Fills what is still unset with libpq's defaults, taking `USER`, `LOGNAME` and `HOME` from
    /// the process environment. See [`Config::apply_defaults_with_env`].
    pub fn apply_defaults(&mut self) -> Result<()> {
        self.apply_defaults_with_env(&env::process_env)
    }

    /// Fills what is still unset with libpq's defaults:
    ///
    /// * `user`: `USER`, else `LOGNAME`, else the operating system's name for the current user;
    /// * `dbname`: the user name;
    /// * hosts: the `hostaddr`s when only those are given, else the local Unix socket folder
    ///   (`/var/run/postgresql` or `/tmp`: the one holding the server's socket, else the first
    ///   that exists), else `localhost`; empty entries in a host list get the same default;
    /// * ports: 5432 (also for empty entries in a port list);
    /// * `passfile`: `$HOME/.pgpass` (`%APPDATA%\postgresql\pgpass.conf` on Windows).
    ///
    /// `env` is read for `USER`, `LOGNAME` and `HOME` (`USERNAME` and `APPDATA` on Windows).
    /// Afterwards [`Config::get_hosts`] is never empty.
    ///
    /// # Errors
    ///
    /// A `Config` error when the user name cannot be determined, or when there are several
    /// ports (or hostaddrs) but a different number of hosts.
    pub fn apply_defaults_with_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
        env::apply_defaults(self, env)
    }

    /// Applies one libpq key word, with the same validation as [`Config::parse`]. An empty
    /// value unsets the setting.
    ///
    /// List settings (`host`, `hostaddr`, `port`) take a comma-separated list that replaces
    /// the current one; the lengths of the lists are checked by `parse`, `apply_env` and
    /// `apply_defaults`, not here, so that they can be set one after the other.
    ///
    /// # Errors
    ///
    /// A `Config` error naming `key` when it is unknown or `value` is invalid.
    pub fn set(&mut self, key: &str, value: &str) -> Result<&mut Config> {
        self.set_with(key, value, Ctx::new(key))?;
        Ok(self)
    }

    /// Applies one key word; `ctx` says what to call it in errors and whether the value may be
    /// quoted in them.
    fn set_with(&mut self, key: &str, value: &str, ctx: Ctx<'_>) -> Result<()> {
        let ctx = if parse::is_secret(key) {
            ctx.hide_value()
        } else {
            ctx
        };
        if value.contains('\0') {
            return Err(ctx.err("the value contains a NUL character, which PostgreSQL cannot take"));
        }
        let text = || non_empty(value);
        let path = || non_empty_path(value);
        match key {
            "host" => self.hosts = parse::host_list(value),
            "hostaddr" => self.hostaddrs = parse::hostaddr_list(value, ctx)?,
            "port" => self.ports = parse::port_list(value, ctx)?,
            "user" => self.user = text(),
            "password" => self.password = text().map(Password::from),
            "dbname" => self.dbname = text(),
            "application_name" => self.application_name = text(),
            "fallback_application_name" => self.fallback_application_name = text(),
            "options" => self.options = text(),
            "client_encoding" => self.client_encoding = text(),
            "connect_timeout" => self.connect_timeout = parse::connect_timeout(value, ctx)?,
            "sslmode" => self.ssl_mode = parse::choice(value, ctx)?,
            "sslrootcert" => self.ssl_root_cert = path(),
            "sslcert" => self.ssl_cert = path(),
            "sslkey" => self.ssl_key = path(),
            "sslpassword" => self.ssl_password = text().map(Password::from),
            "sslcrl" => self.ssl_crl = path(),
            "sslsni" => self.ssl_sni = parse::boolean(value, ctx)?,
            "sslnegotiation" => self.ssl_negotiation = parse::choice(value, ctx)?,
            "channel_binding" => self.channel_binding = parse::choice(value, ctx)?,
            "require_auth" => {
                self.require_auth = match value {
                    "" => None,
                    v => Some(RequireAuth::parse_in(v, ctx)?),
                }
            }
            "target_session_attrs" => self.target_session_attrs = parse::choice(value, ctx)?,
            "load_balance_hosts" => self.load_balance_hosts = parse::choice(value, ctx)?,
            "passfile" => self.passfile = path(),
            "keepalives" => self.keepalives = parse::boolean(value, ctx)?,
            "keepalives_idle" => self.keepalives_idle = parse::seconds(value, ctx)?,
            "keepalives_interval" => self.keepalives_interval = parse::seconds(value, ctx)?,
            "keepalives_count" => self.keepalives_count = parse::seconds(value, ctx)?,
            _ => return Err(parse::unsupported_key(key, ctx)),
        }
        Ok(())
    }

    /// True when `key` (a supported key word) has a value.
    fn is_set(&self, key: &str) -> bool {
        match key {
            "host" => !self.hosts.is_empty(),
            "hostaddr" => !self.hostaddrs.is_empty(),
            "port" => !self.ports.is_empty(),
            "user" => self.user.is_some(),
            "password" => self.password.is_some(),
            "dbname" => self.dbname.is_some(),
            "application_name" => self.application_name.is_some(),
            "fallback_application_name" => self.fallback_application_name.is_some(),
            "options" => self.options.is_some(),
            "client_encoding" => self.client_encoding.is_some(),
            "connect_timeout" => self.connect_timeout.is_some(),
            "sslmode" => self.ssl_mode.is_some(),
            "sslrootcert" => self.ssl_root_cert.is_some(),
            "sslcert" => self.ssl_cert.is_some(),
            "sslkey" => self.ssl_key.is_some(),
            "sslpassword" => self.ssl_password.is_some(),
            "sslcrl" => self.ssl_crl.is_some(),
            "sslsni" => self.ssl_sni.is_some(),
            "sslnegotiation" => self.ssl_negotiation.is_some(),
            "channel_binding" => self.channel_binding.is_some(),
            "require_auth" => self.require_auth.is_some(),
            "target_session_attrs" => self.target_session_attrs.is_some(),
            "load_balance_hosts" => self.load_balance_hosts.is_some(),
            "passfile" => self.passfile.is_some(),
            "keepalives" => self.keepalives.is_some(),
            "keepalives_idle" => self.keepalives_idle.is_some(),
            "keepalives_interval" => self.keepalives_interval.is_some(),
            "keepalives_count" => self.keepalives_count.is_some(),
            _ => false,
        }
    }

    /// Checks what single settings cannot: that the lists have matching lengths and that
    /// `sslrootcert=system` is not weakened. `name` maps a key word to what errors call it
    /// (the key word itself, or the environment variable it came from).
    fn validate(&self, name: &dyn Fn(&'static str) -> &'static str) -> Result<()> {
        let hosts = if self.hosts.is_empty() {
            self.hostaddrs.len()
        } else {
            self.hosts.len()
        };
        if !self.hosts.is_empty()
            && !self.hostaddrs.is_empty()
            && self.hostaddrs.len() != self.hosts.len()
        {
            return Err(Error::config(
                name("hostaddr"),
                format!(
                    "{} hostaddr values for {} hosts: give one hostaddr per host \
                     (leave an entry empty to look the host name up)",
                    self.hostaddrs.len(),
                    self.hosts.len()
                ),
            ));
        }
        if hosts > 0 && self.ports.len() > 1 && self.ports.len() != hosts {
            return Err(Error::config(
                name("port"),
                format!(
                    "{} ports for {} hosts: give one port for all hosts or one per host",
                    self.ports.len(),
                    hosts
                ),
            ));
        }
        if self.ssl_negotiation == Some(SslNegotiation::Direct)
            && !matches!(
                self.ssl_mode,
                Some(SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
            )
        {
            return Err(Error::config(
                name("sslnegotiation"),
                "sslnegotiation=direct needs sslmode=require, verify-ca or verify-full: a \
                 server that does not speak TLS at once cannot fall back to plaintext",
            ));
        }
        if self.ssl_root_cert.as_deref() == Some(Path::new("system")) {
            if let Some(mode) = self.ssl_mode.filter(|m| *m != SslMode::VerifyFull) {
                return Err(Error::config(
                    name("sslmode"),
                    format!(
                        "sslmode `{mode}` is too weak for sslrootcert=system: the system's \
                         certificate authorities only make sense with sslmode=verify-full"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Renders a `key=value` connection string that [`Config::parse`] reads back into an equal
    /// `Config`. Passwords (`password`, `sslpassword`) are included only when
    /// `include_password` is true, else shown as `********`.
    ///
    /// Values are single-quoted, with `\'` and `\\` escapes, when they are empty or contain
    /// spaces, quotes or backslashes. A host name containing a comma cannot be written in a
    /// host list, and a password that is not UTF-8 is written lossily.
    pub fn to_dsn_string(&self, include_password: bool) -> String {
        render::render(self, include_password)
    }

    /// The connection string with passwords replaced by `********`, for logs and messages
    /// (the same as `to_string()`).
    pub fn redacted_dsn(&self) -> String {
        render::render(self, false)
    }

    // ----- Setters -----

    /// Adds a host to try, after those already given. A name starting with `/` (or `@`) is a
    /// Unix socket folder; see [`Host::parse`]. (`set("host", "a,b")` replaces the list.)
    pub fn host(&mut self, host: impl AsRef<str>) -> &mut Config {
        self.hosts.push(Host::parse(host.as_ref()));
        self
    }

    /// Adds a Unix socket folder to try, after the hosts already given.
    pub fn host_path(&mut self, dir: impl Into<PathBuf>) -> &mut Config {
        self.hosts.push(Host::Unix(dir.into()));
        self
    }

    /// Adds a `hostaddr`: the IP address to connect to for the host at the same position,
    /// skipping name resolution (`None` resolves that host's name as usual).
    pub fn hostaddr(&mut self, addr: impl Into<Option<IpAddr>>) -> &mut Config {
        self.hostaddrs.push(addr.into());
        self
    }

    /// Adds a port: give one for all hosts or one per host. Port 0 stands for the default port.
    pub fn port(&mut self, port: u16) -> &mut Config {
        self.ports.push(port);
        self
    }

    /// Sets the user name (an empty name unsets it).
    pub fn user(&mut self, user: impl Into<String>) -> &mut Config {
        self.user = non_empty(user);
        self
    }

    /// Sets the password (an empty password unsets it, so that `~/.pgpass` is used).
    pub fn password(&mut self, password: impl Into<Vec<u8>>) -> &mut Config {
        let password = password.into();
        self.password = (!password.is_empty()).then_some(Password(password));
        self
    }

    /// Sets the database name (an empty name unsets it).
    pub fn dbname(&mut self, dbname: impl Into<String>) -> &mut Config {
        self.dbname = non_empty(dbname);
        self
    }

    /// Sets `application_name`, reported by the server in `pg_stat_activity`.
    pub fn application_name(&mut self, name: impl Into<String>) -> &mut Config {
        self.application_name = non_empty(name);
        self
    }

    /// Sets `fallback_application_name`, used when `application_name` is not set.
    pub fn fallback_application_name(&mut self, name: impl Into<String>) -> &mut Config {
        self.fallback_application_name = non_empty(name);
        self
    }

    /// Sets `options`: command-line options sent to the server at start-up, such as
    /// `-c search_path=app`.
    pub fn options(&mut self, options: impl Into<String>) -> &mut Config {
        self.options = non_empty(options);
        self
    }

    /// Sets `client_encoding`. aiopg-conn speaks UTF8 only (Rust strings are UTF-8): `UTF8`,
    /// `UTF-8`, `unicode` and `auto` are accepted, and connecting with any other value fails
    /// with a config error naming `client_encoding` (the server converts from the
    /// database's own encoding, whatever that is).
    pub fn client_encoding(&mut self, encoding: impl Into<String>) -> &mut Config {
        self.client_encoding = non_empty(encoding);
        self
    }

    /// Sets `connect_timeout`. As in libpq it counts whole seconds (rounded up here), at least
    /// 2; zero means waiting indefinitely.
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Config {
        let secs = whole_seconds(timeout);
        self.connect_timeout = Some(if secs == 0 {
            0
        } else {
            secs.max(MIN_CONNECT_TIMEOUT_SECS)
        });
        self
    }

    /// Sets `sslmode`.
    pub fn ssl_mode(&mut self, mode: SslMode) -> &mut Config {
        self.ssl_mode = Some(mode);
        self
    }

    /// Sets `sslrootcert`: the file of trusted certificate authorities, or `system` for the
    /// system's own.
    pub fn ssl_root_cert(&mut self, path: impl Into<PathBuf>) -> &mut Config {
        self.ssl_root_cert = non_empty_path(path);
        self
    }

    /// Sets `sslcert`: the client certificate file.
    pub fn ssl_cert(&mut self, path: impl Into<PathBuf>) -> &mut Config {
        self.ssl_cert = non_empty_path(path);
        self
    }

    /// Sets `sslkey`: the client certificate's private key file.
    pub fn ssl_key(&mut self, path: impl Into<PathBuf>) -> &mut Config {
        self.ssl_key = non_empty_path(path);
        self
    }

    /// Sets `sslpassword`: the pass phrase of the `sslkey` file.
    pub fn ssl_password(&mut self, password: impl Into<Vec<u8>>) -> &mut Config {
        let password = password.into();
        self.ssl_password = (!password.is_empty()).then_some(Password(password));
        self
    }

    /// Sets `sslcrl`: a file of revoked certificates (PEM) checked against the server's chain.
    pub fn ssl_crl(&mut self, path: impl Into<PathBuf>) -> &mut Config {
        self.ssl_crl = non_empty_path(path);
        self
    }

    /// Sets `sslsni`: whether to send the host name in TLS's Server Name Indication (on by
    /// default; never sent for an IP address).
    pub fn ssl_sni(&mut self, on: bool) -> &mut Config {
        self.ssl_sni = Some(on);
        self
    }

    /// Sets `sslnegotiation`.
    pub fn ssl_negotiation(&mut self, how: SslNegotiation) -> &mut Config {
        self.ssl_negotiation = Some(how);
        self
    }

    /// Sets `require_auth`.
    pub fn require_auth(&mut self, methods: RequireAuth) -> &mut Config {
        self.require_auth = Some(methods);
        self
    }

    /// Sets `channel_binding`.
    pub fn channel_binding(&mut self, binding: ChannelBinding) -> &mut Config {
        self.channel_binding = Some(binding);
        self
    }

    /// Sets `target_session_attrs`.
    pub fn target_session_attrs(&mut self, attrs: TargetSessionAttrs) -> &mut Config {
        self.target_session_attrs = Some(attrs);
        self
    }

    /// Sets `load_balance_hosts`.
    pub fn load_balance_hosts(&mut self, mode: LoadBalanceHosts) -> &mut Config {
        self.load_balance_hosts = Some(mode);
        self
    }

    /// Sets `passfile`: the password file to read instead of `~/.pgpass`.
    pub fn passfile(&mut self, path: impl Into<PathBuf>) -> &mut Config {
        self.passfile = non_empty_path(path);
        self
    }

    /// Sets `keepalives`: whether TCP keepalives are on (they are unless turned off).
    pub fn keepalives(&mut self, on: bool) -> &mut Config {
        self.keepalives = Some(on);
        self
    }

    /// Sets `keepalives_idle`: idle time before the first keepalive, in whole seconds (rounded
    /// up); zero uses the system default.
    pub fn keepalives_idle(&mut self, idle: Duration) -> &mut Config {
        self.keepalives_idle = Some(whole_seconds(idle));
        self
    }

    /// Sets `keepalives_interval`: time between unanswered keepalives, in whole seconds
    /// (rounded up); zero uses the system default.
    pub fn keepalives_interval(&mut self, interval: Duration) -> &mut Config {
        self.keepalives_interval = Some(whole_seconds(interval));
        self
    }

    /// Sets `keepalives_count`: unanswered keepalives before the connection is considered
    /// dead; zero uses the system default.
    pub fn keepalives_count(&mut self, count: u32) -> &mut Config {
        self.keepalives_count = Some(count.min(i32::MAX as u32));
        self
    }

    // ----- Getters -----

    /// Hosts to try, in order (never empty once defaults are applied).
    pub fn get_hosts(&self) -> &[Host] {
        &self.hosts
    }
    /// `hostaddr`s: empty, or one per host; `None` entries resolve the host name as usual.
    pub fn get_hostaddrs(&self) -> &[Option<IpAddr>] {
        &self.hostaddrs
    }
    /// The `hostaddr` for the `i`th host, if one was given.
    pub fn hostaddr_for(&self, i: usize) -> Option<IpAddr> {
        self.hostaddrs.get(i).copied().flatten()
    }
    /// Ports: one for all hosts, or one per host. Before defaults are applied a 0 stands for an
    /// empty entry (the default port).
    pub fn get_ports(&self) -> &[u16] {
        &self.ports
    }
    /// The port for the `i`th host.
    pub fn port_for(&self, i: usize) -> u16 {
        let port = match self.ports.len() {
            0 => DEFAULT_PORT,
            1 => self.ports[0],
            _ => self.ports.get(i).copied().unwrap_or(DEFAULT_PORT),
        };
        if port == 0 {
            DEFAULT_PORT
        } else {
            port
        }
    }
    /// The user name.
    pub fn get_user(&self) -> Option<&str> {
        self.user.as_deref()
    }
    /// The password given in the DSN or `PGPASSWORD`.
    pub fn get_password(&self) -> Option<&Password> {
        self.password.as_ref()
    }
    /// The password for a host: the configured one, else the password of the first line of the
    /// password file that matches `host`, `port`, the database and the user.
    ///
    /// The password file is `passfile` (which [`Config::apply_env`] fills from `PGPASSFILE`
    /// and [`Config::apply_defaults`] with `~/.pgpass`), else `$HOME/.pgpass`. As in libpq it is
    /// ignored when it is missing, unreadable, not a regular file or, on Unix, readable or
    /// writable by group or others (use `chmod 0600`). Lines read
    /// `hostname:port:database:username:password`, `*` matches anything in the first four
    /// fields, `\:` and `\\` escape, and `#` starts a comment line. A Unix socket matches the
    /// host name `localhost` as well as its folder. The lookup needs the user name (set, or
    /// filled in by `apply_defaults`); the database name defaults to it.
    pub fn password_for(&self, host: &Host, port: u16) -> Option<Password> {
        if let Some(password) = &self.password {
            return Some(password.clone());
        }
        let user = self.user.as_deref()?;
        let dbname = self.dbname.as_deref().unwrap_or(user);
        let file = match &self.passfile {
            Some(file) => file.clone(),
            None => env::default_passfile(&env::process_env)?,
        };
        let text = pgpass::read_passfile(&file)?;
        pgpass::lookup(&text, host, port, dbname, user)
    }
    /// The database name.
    pub fn get_dbname(&self) -> Option<&str> {
        self.dbname.as_deref()
    }
    /// `application_name`.
    pub fn get_application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }
    /// `fallback_application_name`.
    pub fn get_fallback_application_name(&self) -> Option<&str> {
        self.fallback_application_name.as_deref()
    }
    /// `options` (command-line options sent to the server at start-up).
    pub fn get_options(&self) -> Option<&str> {
        self.options.as_deref()
    }
    /// `client_encoding`.
    pub fn get_client_encoding(&self) -> Option<&str> {
        self.client_encoding.as_deref()
    }
    /// `connect_timeout`: bounds the whole connection set-up, per host. `None` means waiting
    /// indefinitely (unset, or zero or negative in the settings).
    pub fn get_connect_timeout(&self) -> Option<Duration> {
        nonzero_seconds(self.connect_timeout)
    }
    /// `sslmode`. When unset: `verify-full` if `sslrootcert=system`, else `prefer` (libpq's
    /// rules).
    pub fn get_ssl_mode(&self) -> SslMode {
        match self.ssl_mode {
            Some(mode) => mode,
            None if self.ssl_root_cert.as_deref() == Some(Path::new("system")) => {
                SslMode::VerifyFull
            }
            None => SslMode::Prefer,
        }
    }
    /// `sslrootcert`: a file of trusted certificate authorities, or `system`.
    pub fn get_ssl_root_cert(&self) -> Option<&Path> {
        self.ssl_root_cert.as_deref()
    }
    /// `sslcert`: the client certificate file.
    pub fn get_ssl_cert(&self) -> Option<&Path> {
        self.ssl_cert.as_deref()
    }
    /// `sslkey`: the client certificate's private key file.
    pub fn get_ssl_key(&self) -> Option<&Path> {
        self.ssl_key.as_deref()
    }
    /// `sslpassword`: the pass phrase of the `sslkey` file.
    pub fn get_ssl_password(&self) -> Option<&Password> {
        self.ssl_password.as_ref()
    }
    /// `sslcrl`: a file of revoked certificates.
    pub fn get_ssl_crl(&self) -> Option<&Path> {
        self.ssl_crl.as_deref()
    }
    /// `sslsni` (on when unset).
    pub fn get_ssl_sni(&self) -> bool {
        self.ssl_sni.unwrap_or(true)
    }
    /// `sslnegotiation` (`postgres` when unset).
    pub fn get_ssl_negotiation(&self) -> SslNegotiation {
        self.ssl_negotiation.unwrap_or_default()
    }
    /// `channel_binding` (`prefer` when unset).
    pub fn get_channel_binding(&self) -> ChannelBinding {
        self.channel_binding.unwrap_or_default()
    }
    /// `require_auth`: the authentication methods accepted from the server (any when unset).
    pub fn get_require_auth(&self) -> Option<&RequireAuth> {
        self.require_auth.as_ref()
    }
    /// `target_session_attrs`.
    pub fn get_target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs.unwrap_or_default()
    }
    /// `load_balance_hosts` (`disable` when unset).
    pub fn get_load_balance_hosts(&self) -> LoadBalanceHosts {
        self.load_balance_hosts.unwrap_or_default()
    }
    /// `passfile`: the password file, when set or filled in by `apply_env`/`apply_defaults`.
    pub fn get_passfile(&self) -> Option<&Path> {
        self.passfile.as_deref()
    }
    /// `keepalives`: whether TCP keepalives are on (true when unset).
    pub fn get_keepalives(&self) -> bool {
        self.keepalives.unwrap_or(true)
    }
    /// `keepalives_idle`; `None` uses the system default.
    pub fn get_keepalives_idle(&self) -> Option<Duration> {
        nonzero_seconds(self.keepalives_idle)
    }
    /// `keepalives_interval`; `None` uses the system default.
    pub fn get_keepalives_interval(&self) -> Option<Duration> {
        nonzero_seconds(self.keepalives_interval)
    }
    /// `keepalives_count`; `None` uses the system default.
    pub fn get_keepalives_count(&self) -> Option<u32> {
        self.keepalives_count.filter(|&n| n > 0)
    }
}
