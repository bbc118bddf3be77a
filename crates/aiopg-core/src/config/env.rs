//! The `PG*` environment variables and libpq's defaults.

use std::path::{Path, PathBuf};

use super::parse::Ctx;
use super::{Config, Host, DEFAULT_PORT};
use crate::error::{Error, Result};

/// Each environment variable and the key word it stands in for, as in libpq.
const ENV_VARS: &[(&str, &str)] = &[
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGDATABASE", "dbname"),
    ("PGAPPNAME", "application_name"),
    ("PGOPTIONS", "options"),
    ("PGCLIENTENCODING", "client_encoding"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGSSLCRL", "sslcrl"),
    ("PGSSLSNI", "sslsni"),
    ("PGSSLNEGOTIATION", "sslnegotiation"),
    ("PGCHANNELBINDING", "channel_binding"),
    ("PGREQUIREAUTH", "require_auth"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGLOADBALANCEHOSTS", "load_balance_hosts"),
    ("PGPASSFILE", "passfile"),
];

/// Socket folders to look in for the default host, in order: Debian's and Red Hat's packages
/// use the first, PostgreSQL built from source the second.
const SOCKET_DIRS: &[&str] = &["/var/run/postgresql", "/tmp"];

/// Reads the process environment; variables that are not valid Unicode count as unset.
pub(super) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The environment variable for a key word.
fn var_for(key: &str) -> Option<&'static str> {
    ENV_VARS
        .iter()
        .find(|(_, k)| *k == key)
        .map(|(var, _)| *var)
}

/// See [`Config::apply_env`].
pub(super) fn apply_env(config: &mut Config, env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    let mut from_env: Vec<&'static str> = Vec::new();
    for &(var, key) in ENV_VARS {
        if config.is_set(key) {
            continue;
        }
        // An empty variable counts as unset, like an empty value in a connection string.
        let Some(value) = env(var).filter(|v| !v.is_empty()) else {
            continue;
        };
        config.set_with(key, &value, Ctx::new(var))?;
        from_env.push(key);
    }
    // A mismatch between lists is blamed on the variable that brought one of them in, since
    // that is the surprise the user has to look for.
    let name = |key: &'static str| -> &'static str {
        let partner = match key {
            "port" | "hostaddr" => "host",
            "sslmode" => "sslrootcert",
            other => other,
        };
        [key, partner]
            .into_iter()
            .find(|k| from_env.contains(k))
            .and_then(var_for)
            .unwrap_or(key)
    };
    config.validate(&name)
}

/// See [`Config::apply_defaults_with_env`].
pub(super) fn apply_defaults(
    config: &mut Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    if config.user.is_none() {
        config.user = Some(default_user(env)?);
    }
    if config.dbname.is_none() {
        config.dbname = config.user.clone();
    }
    if config.ports.is_empty() {
        config.ports.push(DEFAULT_PORT);
    }
    for port in &mut config.ports {
        if *port == 0 {
            *port = DEFAULT_PORT;
        }
    }
    if config.hosts.is_empty() {
        // With only hostaddrs given, there is one host per address, as in libpq.
        config.hosts = vec![Host::Tcp(String::new()); config.hostaddrs.len().max(1)];
    }
    let socket_dirs: Vec<&Path> = SOCKET_DIRS.iter().map(Path::new).collect();
    for i in 0..config.hosts.len() {
        if config.hosts[i] == Host::Tcp(String::new()) {
            // A host known only by its address is named by it, which is also what libpq
            // matches against the password file.
            config.hosts[i] = match config.hostaddr_for(i) {
                Some(addr) => Host::Tcp(addr.to_string()),
                None => default_host(&socket_dirs, config.port_for(i)),
            };
        }
    }
    if config.passfile.is_none() {
        config.passfile = default_passfile(env);
    }
    config.validate(&|key| key)
}

/// The default user name: `USER`, else `LOGNAME` (`USERNAME` on Windows), else the name the
/// operating system has for the current user.
fn default_user(env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let vars: &[&str] = if cfg!(windows) {
        &["USERNAME", "USER"]
    } else {
        &["USER", "LOGNAME"]
    };
    vars.iter()
        .filter_map(|var| env(var))
        // The operating system is asked only when the variables are missing, since asking
        // costs a password-database lookup.
        .chain(std::iter::once_with(|| whoami::username().ok()).flatten())
        .find(|name| !name.is_empty())
        .ok_or_else(|| {
            Error::config(
                "user",
                "no user name given and the operating system's user name could not be \
                 determined: set `user` in the connection string or PGUSER",
            )
        })
}

/// The default host: a local Unix socket folder when there is one, else `localhost`.
///
/// libpq compiles in a single folder; looking for the server's socket file first makes the
/// default work both with distribution packages and with servers built from source.
pub(super) fn default_host(socket_dirs: &[&Path], port: u16) -> Host {
    #[cfg(unix)]
    {
        let socket = format!(".s.PGSQL.{port}");
        let dir = socket_dirs
            .iter()
            .find(|dir| dir.join(&socket).exists())
            .or_else(|| socket_dirs.iter().find(|dir| dir.is_dir()));
        if let Some(dir) = dir {
            return Host::Unix(dir.to_path_buf());
        }
    }
    #[cfg(not(unix))]
    let _ = (socket_dirs, port);
    Host::Tcp("localhost".to_owned())
}

/// libpq's default password file: `$HOME/.pgpass`, or `%APPDATA%\postgresql\pgpass.conf` on
/// Windows.
pub(super) fn default_passfile(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if cfg!(windows) {
        let appdata = env("APPDATA").filter(|d| !d.is_empty())?;
        Some(Path::new(&appdata).join("postgresql").join("pgpass.conf"))
    } else {
        let home = env("HOME").filter(|h| !h.is_empty())?;
        Some(Path::new(&home).join(".pgpass"))
    }
}
