//! Writing a [`Config`] back as a libpq `key=value` connection string.

use std::path::Path;

use super::{Choice, Config, Host, Password};

/// What a hidden secret is shown as.
const REDACTED: &str = "********";

/// Renders `config` as `key=value` pairs in a fixed order, quoting values so that
/// [`Config::parse`] reads back the same settings. Secrets are written only when
/// `include_password` is true.
pub(super) fn render(config: &Config, include_password: bool) -> String {
    let mut out = String::new();
    let secret = |p: &Option<Password>| {
        p.as_ref().map(|p| {
            if include_password {
                String::from_utf8_lossy(p.expose()).into_owned()
            } else {
                REDACTED.to_owned()
            }
        })
    };
    let text = |s: &Option<String>| s.clone();
    let path = |p: &Option<std::path::PathBuf>| p.as_deref().map(path_text);
    let number = |n: Option<u32>| n.map(|n| n.to_string());
    fn choice<T: Choice>(c: Option<T>) -> Option<String> {
        c.map(|c| c.name().to_owned())
    }
    let list = |items: Vec<String>| (!items.is_empty()).then(|| items.join(","));

    let pairs: [(&str, Option<String>); 28] = [
        ("host", list(config.hosts.iter().map(host_text).collect())),
        (
            "hostaddr",
            list(
                config
                    .hostaddrs
                    .iter()
                    .map(|a| a.map(|a| a.to_string()).unwrap_or_default())
                    .collect(),
            ),
        ),
        (
            "port",
            list(
                config
                    .ports
                    .iter()
                    .map(|&p| if p == 0 { String::new() } else { p.to_string() })
                    .collect(),
            ),
        ),
        ("user", text(&config.user)),
        ("password", secret(&config.password)),
        ("dbname", text(&config.dbname)),
        ("application_name", text(&config.application_name)),
        (
            "fallback_application_name",
            text(&config.fallback_application_name),
        ),
        ("options", text(&config.options)),
        ("client_encoding", text(&config.client_encoding)),
        ("connect_timeout", number(config.connect_timeout)),
        ("sslmode", choice(config.ssl_mode)),
        ("sslrootcert", path(&config.ssl_root_cert)),
        ("sslcert", path(&config.ssl_cert)),
        ("sslkey", path(&config.ssl_key)),
        ("sslpassword", secret(&config.ssl_password)),
        ("sslcrl", path(&config.ssl_crl)),
        (
            "sslsni",
            config
                .ssl_sni
                .map(|on| if on { "1" } else { "0" }.to_owned()),
        ),
        ("sslnegotiation", choice(config.ssl_negotiation)),
        ("channel_binding", choice(config.channel_binding)),
        (
            "require_auth",
            config.require_auth.as_ref().map(|r| r.to_string()),
        ),
        ("target_session_attrs", choice(config.target_session_attrs)),
        ("load_balance_hosts", choice(config.load_balance_hosts)),
        ("passfile", path(&config.passfile)),
        (
            "keepalives",
            config
                .keepalives
                .map(|on| if on { "1" } else { "0" }.to_owned()),
        ),
        ("keepalives_idle", number(config.keepalives_idle)),
        ("keepalives_interval", number(config.keepalives_interval)),
        ("keepalives_count", number(config.keepalives_count)),
    ];
    for (key, value) in pairs {
        if let Some(value) = value {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(key);
            out.push('=');
            push_value(&mut out, &value);
        }
    }
    out
}

fn host_text(host: &Host) -> String {
    match host {
        Host::Tcp(name) => name.clone(),
        Host::Unix(dir) => path_text(dir),
    }
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Writes one value, single-quoted with `\'` and `\\` escapes when it would not survive
/// unquoted: when it is empty or holds whitespace, control characters, quotes or backslashes.
fn push_value(out: &mut String, value: &str) {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\'' || c == '\\');
    if plain {
        out.push_str(value);
        return;
    }
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
}
