//! Connection settings: libpq connection strings, URIs, PG* environment variables, `~/.pgpass`
//! and libpq's defaults.
//!
//! SKELETON: the public API below is the contract aiopg-conn codes against; parsing is being
//! written.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// One host to try, from `host` (or `PGHOST`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A host name or IP address reached over TCP.
    Tcp(String),
    /// A folder holding the server's Unix socket (`.s.PGSQL.<port>`); a `host` starting with `/`.
    Unix(PathBuf),
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

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(********)")
    }
}

/// Connection settings.
#[derive(Clone, PartialEq, Default)]
pub struct Config {
    hosts: Vec<Host>,
    ports: Vec<u16>,
    user: Option<String>,
    password: Option<Password>,
    dbname: Option<String>,
    application_name: Option<String>,
    options: Option<String>,
    connect_timeout: Option<Duration>,
    ssl_mode: SslMode,
    target_session_attrs: TargetSessionAttrs,
    passfile: Option<PathBuf>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("hosts", &self.hosts)
            .field("ports", &self.ports)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("dbname", &self.dbname)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Parses a DSN, then fills what it leaves unset from the PG* environment variables and
    /// libpq's defaults.
    pub fn from_dsn(dsn: &str) -> Result<Config> {
        let _ = dsn;
        Err(Error::config("dsn", "not implemented yet"))
    }
    /// Hosts to try, in order (never empty once defaults are applied).
    pub fn get_hosts(&self) -> &[Host] {
        &self.hosts
    }
    /// Ports: one for all hosts, or one per host.
    pub fn get_ports(&self) -> &[u16] {
        &self.ports
    }
    /// The port for the `i`th host.
    pub fn port_for(&self, i: usize) -> u16 {
        match self.ports.len() {
            0 => 5432,
            1 => self.ports[0],
            _ => self.ports.get(i).copied().unwrap_or(5432),
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
    /// The password for a host: the configured one, else the matching `~/.pgpass` line.
    pub fn password_for(&self, host: &Host, port: u16) -> Option<Password> {
        let _ = (host, port);
        self.password.clone()
    }
    /// The database name.
    pub fn get_dbname(&self) -> Option<&str> {
        self.dbname.as_deref()
    }
    /// `application_name`.
    pub fn get_application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }
    /// `options` (command-line options sent to the server at start-up).
    pub fn get_options(&self) -> Option<&str> {
        self.options.as_deref()
    }
    /// `connect_timeout`: bounds the whole connection set-up, per host.
    pub fn get_connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }
    /// `sslmode`.
    pub fn get_ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }
    /// `target_session_attrs`.
    pub fn get_target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }
}
