//! Reading connection strings: libpq's `key=value` form and `postgresql://` URIs, and the
//! values of each key word.
//!
//! Error messages are written with one rule in mind: a connection string holds a password, so
//! nothing that might be part of one is ever quoted back. Values are quoted only for key words
//! that are not secrets, never from a URI's user information, and never right after an unquoted
//! password (a stray word there is most likely the rest of a password with a space in it).

use std::fmt;
use std::iter::Peekable;
use std::net::IpAddr;
use std::str::Chars;

use super::{Choice, Config, Host, MIN_CONNECT_TIMEOUT_SECS};
use crate::error::{Error, Result};

/// Every key word [`Config::set`] accepts, in the order they are rendered.
pub(super) const KEY_WORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "application_name",
    "fallback_application_name",
    "options",
    "client_encoding",
    "connect_timeout",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslsni",
    "sslnegotiation",
    "channel_binding",
    "require_auth",
    "target_session_attrs",
    "load_balance_hosts",
    "passfile",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
];

/// libpq key words that aiopg knows but does not support, with what to tell the user.
///
/// They get their own message because "unknown parameter" would wrongly suggest a typo.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "service",
        "connection service files (pg_service.conf) are not supported; give the settings directly",
    ),
    (
        "servicefile",
        "connection service files (pg_service.conf) are not supported; give the settings directly",
    ),
    ("requiressl", "is obsolete in libpq; use sslmode=require"),
    (
        "sslcompression",
        "TLS compression is not supported (servers refuse it anyway); remove it",
    ),
];

/// Further libpq key words that aiopg does not support.
const UNSUPPORTED_LIBPQ: &[&str] = &[
    "sslcrldir",
    "sslcertmode",
    "sslkeylogfile",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "min_protocol_version",
    "max_protocol_version",
    "requirepeer",
    "gssencmode",
    "gsslib",
    "gssdelegation",
    "krbsrvname",
    "replication",
    "tcp_user_timeout",
    "scram_client_key",
    "scram_server_key",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
];

/// Names people often use for a key word, to suggest the right one.
const ALIASES: &[(&str, &str)] = &[
    ("database", "dbname"),
    ("db", "dbname"),
    ("username", "user"),
    ("hostname", "host"),
    ("server", "host"),
    ("pass", "password"),
    ("passwd", "password"),
    ("pwd", "password"),
    ("timeout", "connect_timeout"),
    ("appname", "application_name"),
    ("ssl", "sslmode"),
];

/// Hint added to errors in a URI's host list, where an unencoded character in a password is
/// the usual cause.
const URI_HINT: &str = "(in a URI, write IPv6 addresses in brackets, as in [::1]:5432, and \
                        percent-encode `/`, `?`, `@` and `:` in user names and passwords, \
                        as in %2F for `/`)";

/// How errors about one value are worded: what to call the setting (a key word, or the
/// environment variable it came from) and whether the value may be quoted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ctx<'a> {
    label: &'a str,
    echo: bool,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(label: &'a str) -> Ctx<'a> {
        Ctx { label, echo: true }
    }

    /// Keeps the value out of error messages (for secrets).
    pub(super) fn hide_value(self) -> Ctx<'a> {
        Ctx {
            echo: false,
            ..self
        }
    }

    pub(super) fn err(&self, message: impl fmt::Display) -> Error {
        Error::config(self.label, message)
    }

    /// " `value`" when the value may be shown, else nothing, so that messages read well
    /// either way. Long values are cut so that one bad setting cannot flood a log.
    pub(super) fn shown(&self, value: &str) -> String {
        if !self.echo {
            return String::new();
        }
        const MAX: usize = 64;
        match value.char_indices().nth(MAX) {
            Some((cut, _)) => format!(" `{}…`", &value[..cut]),
            None => format!(" `{value}`"),
        }
    }
}

/// The whitespace libpq separates `key=value` pairs with (C's `isspace`).
pub(super) fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// The key words whose values are secrets, by their static name.
fn secret_name(key: &str) -> Option<&'static str> {
    match key {
        "password" => Some("password"),
        "sslpassword" => Some("sslpassword"),
        _ => None,
    }
}

pub(super) fn is_secret(key: &str) -> bool {
    secret_name(key).is_some()
}

/// Whether `s` looks like a key word, and so is safe and useful to quote in an error. Text
/// that does not (a mistyped URI, say) may hold a password and is never quoted.
fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parses a connection string in either form; see [`Config::parse`].
pub(super) fn parse(s: &str) -> Result<Config> {
    let mut config = Config::new();
    match uri_rest(s.trim_matches(is_space)) {
        Some(rest) => parse_uri(rest, &mut config)?,
        None => parse_key_value(s, &mut config)?,
    }
    config.validate(&|key| key)?;
    Ok(config)
}

/// The part after `postgresql://` or `postgres://`, if `s` is such a URI. The scheme is
/// matched case-insensitively, as URI schemes are.
fn uri_rest(s: &str) -> Option<&str> {
    ["postgresql://", "postgres://"].iter().find_map(|prefix| {
        let head = s.get(..prefix.len())?;
        head.eq_ignore_ascii_case(prefix)
            .then(|| &s[prefix.len()..])
    })
}

// ----- key=value -----

fn skip_spaces(chars: &mut Peekable<Chars<'_>>) {
    while chars.next_if(|&c| is_space(c)).is_some() {}
}

/// Reads libpq's `key = value` pairs, following `conninfo_parse`: pairs are separated by
/// whitespace, spaces may surround `=`, a value is either single-quoted or runs to the next
/// whitespace, and a backslash takes the next character literally in both. Later pairs
/// override earlier ones with the same key, as in libpq.
fn parse_key_value(s: &str, config: &mut Config) -> Result<()> {
    let mut chars = s.chars().peekable();
    // The secret whose unquoted value came just before, if any: a malformed pair right after
    // it may be the rest of that secret, so errors about it must not quote it.
    let mut after_secret: Option<&'static str> = None;
    loop {
        skip_spaces(&mut chars);
        if chars.peek().is_none() {
            return Ok(());
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|&c| !is_space(c) && c != '=') {
            key.push(c);
        }
        skip_spaces(&mut chars);
        if chars.next_if_eq(&'=').is_none() {
            return Err(missing_equals(&key, after_secret));
        }
        if key.is_empty() {
            return Err(Error::config(
                "dsn",
                "found `=` with no key word before it: write key=value pairs separated by spaces",
            ));
        }
        if let Some(secret) = after_secret {
            if !KEY_WORDS.contains(&key.as_str()) {
                return Err(stray_after_secret(secret));
            }
        }
        if !is_word(&key) {
            return Err(not_a_key_word(&key));
        }
        skip_spaces(&mut chars);
        let quoted = chars.next_if_eq(&'\'').is_some();
        let value = if quoted {
            read_quoted(&mut chars, &key)?
        } else {
            read_unquoted(&mut chars, &key)?
        };
        config.set_with(&key, &value, Ctx::new(&key))?;
        after_secret = secret_name(&key).filter(|_| !quoted && !value.is_empty());
    }
}

fn read_quoted(chars: &mut Peekable<Chars<'_>>, key: &str) -> Result<String> {
    let unterminated = || {
        Error::config(
            key,
            "unterminated quoted value: add the closing `'` (inside quotes, write \\' for a \
             quote and \\\\ for a backslash)",
        )
    };
    let mut value = String::new();
    loop {
        match chars.next() {
            None => return Err(unterminated()),
            Some('\\') => value.push(chars.next().ok_or_else(unterminated)?),
            Some('\'') => return Ok(value),
            Some(c) => value.push(c),
        }
    }
}

fn read_unquoted(chars: &mut Peekable<Chars<'_>>, key: &str) -> Result<String> {
    let mut value = String::new();
    while let Some(c) = chars.next_if(|&c| !is_space(c)) {
        if c == '\\' {
            // libpq silently drops a trailing backslash; saying so is kinder than losing a
            // character of what is likely a password.
            let escaped = chars.next().ok_or_else(|| {
                Error::config(
                    key,
                    "the value ends with a lone `\\`: write \\\\ for a backslash",
                )
            })?;
            value.push(escaped);
        } else {
            value.push(c);
        }
    }
    Ok(value)
}

/// Text shaped like `scheme://...` that is not one of our URIs.
fn looks_like_uri(text: &str) -> bool {
    text.contains("://")
}

fn bad_scheme(text: &str) -> Error {
    let scheme = text.split("://").next().unwrap_or("");
    let named = if is_word(scheme) {
        format!(" `{scheme}`")
    } else {
        String::new()
    };
    Error::config(
        "dsn",
        format!(
            "unsupported URI scheme{named}: connection URIs start with postgresql:// or \
             postgres://"
        ),
    )
}

fn missing_equals(word: &str, after_secret: Option<&'static str>) -> Error {
    if let Some(secret) = after_secret {
        return stray_after_secret(secret);
    }
    if looks_like_uri(word) {
        return bad_scheme(word);
    }
    if is_word(word) {
        Error::config(
            word,
            "missing `=` after the key word: write key=value pairs separated by spaces",
        )
    } else {
        Error::config(
            "dsn",
            "found text that is not a key=value pair: write key=value pairs separated by \
             spaces (quote values that contain spaces), or a postgresql:// URI",
        )
    }
}

fn not_a_key_word(text: &str) -> Error {
    if looks_like_uri(text) {
        return bad_scheme(text);
    }
    Error::config(
        "dsn",
        "`=` follows text that is not a key word: write key=value pairs separated by spaces \
         (quote values that contain spaces), or a postgresql:// URI",
    )
}

fn stray_after_secret(secret: &'static str) -> Error {
    Error::config(
        secret,
        format!(
            "the unquoted value is followed by text that is not a key=value pair; if the value \
             contains spaces, quote it: {secret}='...' (inside quotes, write \\' for a quote \
             and \\\\ for a backslash)"
        ),
    )
}

/// The error for a key word [`Config::set`] does not take.
pub(super) fn unsupported_key(key: &str, ctx: Ctx<'_>) -> Error {
    if let Some((_, why)) = UNSUPPORTED.iter().find(|(k, _)| *k == key) {
        return Error::config(key, why);
    }
    if UNSUPPORTED_LIBPQ.contains(&key) {
        return Error::config(key, "this libpq key word is not supported by aiopg");
    }
    let hint = match suggestion(key) {
        Some(word) => format!("did you mean `{word}`? "),
        None => String::new(),
    };
    let supported = KEY_WORDS.join(", ");
    if is_word(key) && ctx.echo {
        Error::config(
            key,
            format!("unknown connection parameter `{key}`; {hint}supported key words: {supported}"),
        )
    } else {
        Error::config(
            "dsn",
            format!("unknown connection parameter; {hint}supported key words: {supported}"),
        )
    }
}

/// The key word that `key` was probably meant to be.
fn suggestion(key: &str) -> Option<&'static str> {
    let fold = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let folded = fold(key);
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == folded)
        .map(|(_, word)| *word)
        .or_else(|| KEY_WORDS.iter().copied().find(|word| fold(word) == folded))
}

// ----- URIs -----

/// Reads `postgresql://[user[:password]@][host[:port][,...]][/dbname][?key=value[&...]]`.
///
/// The authority ends at the first `/` or `?`, and the user information at its last `@`, so
/// that an unencoded `@` in a password still works. Every part is percent-decoded. Query
/// parameters take the same key words as the `key=value` form and override what the earlier
/// parts of the URI set.
fn parse_uri(rest: &str, config: &mut Config) -> Result<()> {
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hostspec) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };

    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        let user = decode(user, "user")?;
        config.set_with("user", &user, Ctx::new("user").hide_value())?;
        if let Some(password) = password {
            let password = decode(password, "password")?;
            config.set_with("password", &password, Ctx::new("password"))?;
        }
    }

    parse_uri_hosts(hostspec, config)?;

    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    if let Some(dbname) = path.strip_prefix('/') {
        let dbname = decode(dbname, "dbname")?;
        config.set_with("dbname", &dbname, Ctx::new("dbname").hide_value())?;
    }

    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(if is_word(pair) {
                Error::config(pair, "URI query parameter without `=`: write key=value")
            } else {
                Error::config(
                    "dsn",
                    "a URI query parameter has no `=`: write key=value pairs separated by `&`",
                )
            });
        };
        let key = decode(key, "dsn")?;
        let label = if is_word(&key) { key.as_str() } else { "dsn" };
        let value = decode(value, label)?;
        // libpq takes the JDBC spelling `ssl=true` to mean `sslmode=require`.
        if key == "ssl" && value == "true" {
            config.set_with("sslmode", "require", Ctx::new("ssl"))?;
        } else {
            config.set_with(&key, &value, Ctx::new(label))?;
        }
    }
    Ok(())
}

/// Reads the URI's comma-separated `host[:port]` list, where a host may be a bracketed IPv6
/// address. Hosts without a port get the default port, unless no host has one, in which case
/// the port stays unset (so that `PGPORT` can fill it).
fn parse_uri_hosts(spec: &str, config: &mut Config) -> Result<()> {
    if spec.is_empty() {
        return Ok(());
    }
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    let mut any_port = false;
    for (i, entry) in spec.split(',').enumerate() {
        let n = i + 1;
        let (host, port) = if let Some(inner) = entry.strip_prefix('[') {
            let Some((addr, after)) = inner.split_once(']') else {
                return Err(Error::config(
                    "host",
                    format!("host {n} of the URI has a `[` without its `]` {URI_HINT}"),
                ));
            };
            if addr.is_empty() {
                return Err(Error::config(
                    "host",
                    format!("host {n} of the URI is an empty IPv6 address `[]`"),
                ));
            }
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| {
                    Error::config(
                        "host",
                        format!(
                            "host {n} of the URI has unexpected text after `]`: expected \
                             `:port` {URI_HINT}"
                        ),
                    )
                })?),
            };
            (addr, port)
        } else {
            match entry.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (entry, None),
            }
        };
        hosts.push(Host::parse(&decode(host, "host")?));
        let port = match port {
            Some(port) if !port.is_empty() => {
                any_port = true;
                parse_port(&decode(port, "port")?).ok_or_else(|| {
                    Error::config(
                        "port",
                        format!(
                            "invalid port for host {n} of the URI: ports are integers from 1 \
                             to 65535 {URI_HINT}"
                        ),
                    )
                })?
            }
            _ => 0,
        };
        ports.push(port);
    }
    // `postgresql://:5433` names no host, only a port: the host stays unset.
    if hosts.len() == 1 && hosts[0] == Host::Tcp(String::new()) {
        hosts.clear();
    }
    config.hosts = hosts;
    if any_port {
        config.ports = ports;
    }
    Ok(())
}

/// Percent-decodes one part of a URI. `label` names the part in errors, which never quote it:
/// it may be a password.
fn decode(s: &str, label: &str) -> Result<String> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
            return Err(Error::config(
                label,
                "invalid percent-encoding in the URI: `%` must be followed by two hexadecimal \
                 digits (write %25 for a literal `%`)",
            ));
        };
        let byte = (hi * 16 + lo) as u8;
        if byte == 0 {
            return Err(Error::config(
                label,
                "%00 (a NUL character) is not allowed in a URI: PostgreSQL cannot take it",
            ));
        }
        out.push(byte);
        i += 3;
    }
    String::from_utf8(out)
        .map_err(|_| Error::config(label, "percent-decoded text in the URI is not valid UTF-8"))
}

// ----- Values -----

/// A `host` list: comma-separated, an empty entry meaning the default host.
pub(super) fn host_list(value: &str) -> Vec<Host> {
    if value.is_empty() {
        return Vec::new();
    }
    value.split(',').map(Host::parse).collect()
}

/// A `hostaddr` list: numeric IPv4 or IPv6 addresses, an empty entry meaning "resolve the host
/// name".
pub(super) fn hostaddr_list(value: &str, ctx: Ctx<'_>) -> Result<Vec<Option<IpAddr>>> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|addr| {
            let addr = addr.trim_matches(is_space);
            if addr.is_empty() {
                return Ok(None);
            }
            addr.parse().map(Some).map_err(|_| {
                ctx.err(format!(
                    "invalid IP address{}: hostaddr takes numeric IPv4 or IPv6 addresses \
                     (put host names in `host`)",
                    ctx.shown(addr)
                ))
            })
        })
        .collect()
}

/// One port number, 1 to 65535.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

/// A `port` list: one port for all hosts or one per host, an empty entry meaning 5432
/// (stored as 0 until defaults are applied).
pub(super) fn port_list(value: &str, ctx: Ctx<'_>) -> Result<Vec<u16>> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|port| {
            let port = port.trim_matches(is_space);
            if port.is_empty() {
                return Ok(0);
            }
            parse_port(port).ok_or_else(|| {
                ctx.err(format!(
                    "invalid port number{}: ports are integers from 1 to 65535",
                    ctx.shown(port)
                ))
            })
        })
        .collect()
}

/// A decimal integer in C's `int` range, as libpq's `pqParseIntParam` reads it.
fn integer(value: &str, ctx: Ctx<'_>, expected: &str) -> Result<i32> {
    value.trim_matches(is_space).parse().map_err(|_| {
        ctx.err(format!(
            "invalid value{}: expected {expected}",
            ctx.shown(value)
        ))
    })
}

/// `connect_timeout`, normalised as libpq does: zero or negative waits indefinitely (kept as
/// 0), and 1 counts as the 2-second minimum.
pub(super) fn connect_timeout(value: &str, ctx: Ctx<'_>) -> Result<Option<u32>> {
    if value.is_empty() {
        return Ok(None);
    }
    let secs = integer(
        value,
        ctx,
        "a whole number of seconds (0 waits indefinitely)",
    )?;
    Ok(Some(match secs {
        ..=0 => 0,
        secs => (secs as u32).max(MIN_CONNECT_TIMEOUT_SECS),
    }))
}

/// A count or a number of seconds where libpq treats negatives as 0 ("the system default").
pub(super) fn seconds(value: &str, ctx: Ctx<'_>) -> Result<Option<u32>> {
    if value.is_empty() {
        return Ok(None);
    }
    let n = integer(value, ctx, "a whole number (0 uses the system default)")?;
    Ok(Some(n.max(0) as u32))
}

/// `keepalives`: an integer, zero for off and anything else for on, as libpq reads it.
pub(super) fn boolean(value: &str, ctx: Ctx<'_>) -> Result<Option<bool>> {
    if value.is_empty() {
        return Ok(None);
    }
    Ok(Some(integer(value, ctx, "1 (on) or 0 (off)")? != 0))
}

/// A key word taking one of a few spellings.
pub(super) fn choice<T: Choice>(value: &str, ctx: Ctx<'_>) -> Result<Option<T>> {
    if value.is_empty() {
        return Ok(None);
    }
    T::parse_choice(value, ctx).map(Some)
}
