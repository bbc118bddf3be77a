//! Tests of connection settings: libpq's documented examples, errors, the environment,
//! defaults, the password file, rendering and secrecy.

use std::collections::HashMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::error::ErrorKind;

fn parse(s: &str) -> Config {
    Config::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn parse_err(s: &str) -> String {
    match Config::parse(s) {
        Ok(c) => panic!("{s:?} should not parse, got {c:?}"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Config, "{e}");
            e.to_string()
        }
    }
}

fn tcp(name: &str) -> Host {
    Host::Tcp(name.to_owned())
}

fn unix(dir: &str) -> Host {
    Host::Unix(PathBuf::from(dir))
}

fn pw(c: &Config) -> Option<&[u8]> {
    c.get_password().map(Password::expose)
}

/// An environment made of the given variables only.
fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

/// A scratch folder removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "aiopg-config-test-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ----- libpq's documented examples -----

#[test]
fn key_value_example() {
    let c = parse("host=localhost port=5432 dbname=mydb connect_timeout=10");
    assert_eq!(c.get_hosts(), [tcp("localhost")]);
    assert_eq!(c.get_ports(), [5432]);
    assert_eq!(c.get_dbname(), Some("mydb"));
    assert_eq!(c.get_connect_timeout(), Some(Duration::from_secs(10)));
    assert_eq!(c.get_user(), None);
}

#[test]
fn empty_strings_set_nothing() {
    assert_eq!(parse(""), Config::new());
    assert_eq!(parse("   \t\n"), Config::new());
    assert_eq!(parse("postgresql://"), Config::new());
    assert_eq!(parse("postgres://"), Config::new());
}

#[test]
fn uri_examples() {
    let c = parse("postgresql://localhost");
    assert_eq!(c.get_hosts(), [tcp("localhost")]);
    assert!(c.get_ports().is_empty());

    let c = parse("postgresql://localhost:5433");
    assert_eq!(c.get_hosts(), [tcp("localhost")]);
    assert_eq!(c.get_ports(), [5433]);

    let c = parse("postgresql://localhost/mydb");
    assert_eq!(c.get_dbname(), Some("mydb"));

    let c = parse("postgresql://user@localhost");
    assert_eq!(c.get_user(), Some("user"));
    assert_eq!(c.get_password(), None);

    let c = parse("postgresql://user:secret@localhost");
    assert_eq!(c.get_user(), Some("user"));
    assert_eq!(pw(&c), Some(&b"secret"[..]));
    assert_eq!(c.get_hosts(), [tcp("localhost")]);

    let c = parse("postgresql://other@localhost/otherdb?connect_timeout=10&application_name=myapp");
    assert_eq!(c.get_user(), Some("other"));
    assert_eq!(c.get_dbname(), Some("otherdb"));
    assert_eq!(c.get_connect_timeout(), Some(Duration::from_secs(10)));
    assert_eq!(c.get_application_name(), Some("myapp"));

    let c = parse(
        "postgresql://host1:123,host2:456/somedb?target_session_attrs=any&application_name=myapp",
    );
    assert_eq!(c.get_hosts(), [tcp("host1"), tcp("host2")]);
    assert_eq!(c.get_ports(), [123, 456]);
    assert_eq!(c.port_for(1), 456);
    assert_eq!(c.get_dbname(), Some("somedb"));
    assert_eq!(c.get_target_session_attrs(), TargetSessionAttrs::Any);
    assert_eq!(c.get_application_name(), Some("myapp"));

    let c = parse("postgresql://[2001:db8::1234]/database");
    assert_eq!(c.get_hosts(), [tcp("2001:db8::1234")]);
    assert_eq!(c.get_dbname(), Some("database"));

    let c = parse("postgresql:///dbname?host=/var/lib/postgresql");
    assert_eq!(c.get_hosts(), [unix("/var/lib/postgresql")]);
    assert_eq!(c.get_dbname(), Some("dbname"));

    let c = parse("postgresql://%2Fvar%2Flib%2Fpostgresql/dbname");
    assert_eq!(c.get_hosts(), [unix("/var/lib/postgresql")]);
    assert_eq!(c.get_dbname(), Some("dbname"));
}

#[test]
fn multiple_hosts_key_value() {
    let c = parse("host=localhost,localhost port=5432,5433");
    assert_eq!(c.get_hosts(), [tcp("localhost"), tcp("localhost")]);
    assert_eq!(c.get_ports(), [5432, 5433]);
    assert_eq!((c.port_for(0), c.port_for(1)), (5432, 5433));

    // One port serves every host.
    let c = parse("host=a,b,c port=6000");
    assert_eq!(c.port_for(2), 6000);

    // Empty entries stand for the defaults.
    let c = parse("host=a,,/tmp port=1,,3");
    assert_eq!(c.get_hosts(), [tcp("a"), tcp(""), unix("/tmp")]);
    assert_eq!(c.get_ports(), [1, 0, 3]);
    assert_eq!(c.port_for(1), DEFAULT_PORT);
}

#[test]
fn uri_hosts_without_ports_get_the_default() {
    let c = parse("postgresql://a:1,b,[::1]:3");
    assert_eq!(c.get_hosts(), [tcp("a"), tcp("b"), tcp("::1")]);
    assert_eq!(c.get_ports(), [1, 0, 3]);

    let c = parse("postgresql://a,b/db");
    assert_eq!(c.get_hosts(), [tcp("a"), tcp("b")]);
    assert!(c.get_ports().is_empty());

    // A port with no host leaves the host to the environment or the defaults.
    let c = parse("postgresql://:5433/db");
    assert!(c.get_hosts().is_empty());
    assert_eq!(c.get_ports(), [5433]);
}

#[test]
fn uri_ipv6_with_port_and_zone() {
    let c = parse("postgresql://[::1]:5433,[fe80::1%25eth0]/db");
    assert_eq!(c.get_hosts(), [tcp("::1"), tcp("fe80::1%eth0")]);
    assert_eq!(c.get_ports(), [5433, 0]);
}

#[test]
fn uri_percent_decoding_everywhere() {
    let c = parse(
        "postgresql://us%65r%20name:p%40ss%3Aw%2Frd%25@db%2Eexample/my%20db\
         ?application%5Fname=my%20app&options=-c%20search_path%3Dx",
    );
    assert_eq!(c.get_user(), Some("user name"));
    assert_eq!(pw(&c), Some(&b"p@ss:w/rd%"[..]));
    assert_eq!(c.get_hosts(), [tcp("db.example")]);
    assert_eq!(c.get_dbname(), Some("my db"));
    assert_eq!(c.get_application_name(), Some("my app"));
    assert_eq!(c.get_options(), Some("-c search_path=x"));
    // `+` is not a space in libpq URIs.
    assert_eq!(parse("postgresql:///a+b").get_dbname(), Some("a+b"));
    // Unicode, encoded or not.
    assert_eq!(
        parse("postgresql:///%C3%A9t%C3%A9").get_dbname(),
        Some("été")
    );
    assert_eq!(parse("postgresql:///été").get_dbname(), Some("été"));
}

#[test]
fn uri_password_with_raw_at_sign_uses_the_last_at() {
    let c = parse("postgresql://user:p@ss@host/db");
    assert_eq!(c.get_user(), Some("user"));
    assert_eq!(pw(&c), Some(&b"p@ss"[..]));
    assert_eq!(c.get_hosts(), [tcp("host")]);
    // A colon in the password is fine too: only the first one ends the user name.
    assert_eq!(pw(&parse("postgresql://u:a:b@h")), Some(&b"a:b"[..]));
    // An empty user name with a password.
    let c = parse("postgresql://:pw@h");
    assert_eq!((c.get_user(), pw(&c)), (None, Some(&b"pw"[..])));
}

#[test]
fn uri_query_overrides_and_ssl_true() {
    let c = parse("postgresql://a:1/db1?host=b&port=2&dbname=db2&user=u&ssl=true");
    assert_eq!(c.get_hosts(), [tcp("b")]);
    assert_eq!(c.get_ports(), [2]);
    assert_eq!(c.get_dbname(), Some("db2"));
    assert_eq!(c.get_user(), Some("u"));
    assert_eq!(c.get_ssl_mode(), SslMode::Require);
    // Empty query parts are skipped, and an `=` may appear in a value.
    let c = parse("postgresql:///db?&options=-c%20a=b&&");
    assert_eq!(c.get_options(), Some("-c a=b"));
    // The scheme is case-insensitive, and surrounding whitespace is ignored.
    assert_eq!(parse("  PostgreSQL://h  ").get_hosts(), [tcp("h")]);
}

#[test]
fn quoted_values_and_escapes() {
    let c = parse(r"application_name='my app' options = '-c search_path=\'a b\'' user=o\'neil");
    assert_eq!(c.get_application_name(), Some("my app"));
    assert_eq!(c.get_options(), Some("-c search_path='a b'"));
    assert_eq!(c.get_user(), Some("o'neil"));

    let c = parse(r"password=a\ b\\c dbname='back\\slash'");
    assert_eq!(pw(&c), Some(&br"a b\c"[..]));
    assert_eq!(c.get_dbname(), Some(r"back\slash"));

    // Spaces around `=` are allowed, and `=` may appear in a value.
    let c = parse("host = localhost\tport=\n5433 password=a=b");
    assert_eq!(c.get_hosts(), [tcp("localhost")]);
    assert_eq!(c.get_ports(), [5433]);
    assert_eq!(pw(&c), Some(&b"a=b"[..]));

    // As in libpq, whitespace after `=` is skipped, so an empty value must be quoted.
    assert_eq!(parse("user= dbname=x").get_user(), Some("dbname=x"));
    let c = parse("user='' dbname=x");
    assert_eq!((c.get_user(), c.get_dbname()), (None, Some("x")));

    // A closing quote may be followed directly by the next pair, as in libpq.
    let c = parse("user='a'dbname=b");
    assert_eq!((c.get_user(), c.get_dbname()), (Some("a"), Some("b")));
}

#[test]
fn later_settings_win() {
    let c = parse("user=a user=b port=1 port=2");
    assert_eq!(c.get_user(), Some("b"));
    assert_eq!(c.get_ports(), [2]);
}

#[test]
fn every_key_word() {
    let c = parse(
        "host=h hostaddr=10.0.0.1 port=1 user=u password=p dbname=d application_name=a \
         fallback_application_name=f options=-cx=1 client_encoding=UTF8 connect_timeout=7 \
         sslmode=verify-full sslrootcert=/ca.pem sslcert=/c.pem sslkey=/k.pem sslpassword=kp \
         channel_binding=require target_session_attrs=prefer-standby load_balance_hosts=random \
         passfile=/pgpass keepalives=0 keepalives_idle=30 keepalives_interval=5 \
         keepalives_count=3",
    );
    assert_eq!(
        c.get_hostaddrs(),
        [Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))]
    );
    assert_eq!(
        c.hostaddr_for(0),
        Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
    );
    assert_eq!(c.hostaddr_for(1), None);
    assert_eq!(c.get_fallback_application_name(), Some("f"));
    assert_eq!(c.get_options(), Some("-cx=1"));
    assert_eq!(c.get_client_encoding(), Some("UTF8"));
    assert_eq!(c.get_ssl_mode(), SslMode::VerifyFull);
    assert_eq!(c.get_ssl_root_cert(), Some(Path::new("/ca.pem")));
    assert_eq!(c.get_ssl_cert(), Some(Path::new("/c.pem")));
    assert_eq!(c.get_ssl_key(), Some(Path::new("/k.pem")));
    assert_eq!(c.get_ssl_password().map(Password::expose), Some(&b"kp"[..]));
    assert_eq!(c.get_channel_binding(), ChannelBinding::Require);
    assert_eq!(
        c.get_target_session_attrs(),
        TargetSessionAttrs::PreferStandby
    );
    assert_eq!(c.get_load_balance_hosts(), LoadBalanceHosts::Random);
    assert_eq!(c.get_passfile(), Some(Path::new("/pgpass")));
    assert!(!c.get_keepalives());
    assert_eq!(c.get_keepalives_idle(), Some(Duration::from_secs(30)));
    assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(5)));
    assert_eq!(c.get_keepalives_count(), Some(3));
}

#[test]
fn defaults_of_unset_settings() {
    let c = Config::new();
    assert_eq!(c.get_ssl_mode(), SslMode::Prefer);
    assert_eq!(c.get_channel_binding(), ChannelBinding::Prefer);
    assert_eq!(c.get_target_session_attrs(), TargetSessionAttrs::Any);
    assert_eq!(c.get_load_balance_hosts(), LoadBalanceHosts::Disable);
    assert!(c.get_keepalives());
    assert_eq!(c.get_keepalives_idle(), None);
    assert_eq!(c.get_connect_timeout(), None);
    assert_eq!(c.port_for(3), DEFAULT_PORT);
    // libpq: sslrootcert=system makes verify-full the default.
    assert_eq!(
        parse("sslrootcert=system").get_ssl_mode(),
        SslMode::VerifyFull
    );
}

#[test]
fn enum_spellings_round_trip() {
    for &(name, mode) in SslMode::CHOICES {
        assert_eq!(parse(&format!("sslmode={name}")).get_ssl_mode(), mode);
        assert_eq!(mode.to_string(), name);
        assert_eq!(name.parse::<SslMode>().unwrap(), mode);
    }
    for &(name, attrs) in TargetSessionAttrs::CHOICES {
        let c = parse(&format!("target_session_attrs={name}"));
        assert_eq!(c.get_target_session_attrs(), attrs);
    }
    for &(name, binding) in ChannelBinding::CHOICES {
        assert_eq!(
            parse(&format!("channel_binding={name}")).get_channel_binding(),
            binding
        );
    }
    for &(name, lb) in LoadBalanceHosts::CHOICES {
        assert_eq!(
            parse(&format!("load_balance_hosts={name}")).get_load_balance_hosts(),
            lb
        );
    }
}

#[test]
fn connect_timeout_follows_libpq() {
    let secs = |s: &str| parse(&format!("connect_timeout={s}")).get_connect_timeout();
    assert_eq!(secs("10"), Some(Duration::from_secs(10)));
    assert_eq!(secs("1"), Some(Duration::from_secs(2)));
    assert_eq!(secs("2"), Some(Duration::from_secs(2)));
    assert_eq!(secs("0"), None);
    assert_eq!(secs("-5"), None);
    assert_eq!(secs("' 15 '"), Some(Duration::from_secs(15)));
    // An explicit 0 is still "set", so PGCONNECT_TIMEOUT does not override it.
    let mut c = parse("connect_timeout=0");
    c.apply_env(&env_of(&[("PGCONNECT_TIMEOUT", "9")])).unwrap();
    assert_eq!(c.get_connect_timeout(), None);

    let mut c = Config::new();
    c.connect_timeout(Duration::from_millis(500));
    assert_eq!(c.get_connect_timeout(), Some(Duration::from_secs(2)));
    c.connect_timeout(Duration::from_millis(2500));
    assert_eq!(c.get_connect_timeout(), Some(Duration::from_secs(3)));
    c.connect_timeout(Duration::ZERO);
    assert_eq!(c.get_connect_timeout(), None);
}

#[test]
fn hostaddr_lists() {
    let c = parse("host=a,b hostaddr=127.0.0.1,::1");
    assert_eq!(
        c.get_hostaddrs(),
        [
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        ]
    );
    let c = parse("host=a,b hostaddr=,10.1.1.1");
    assert_eq!(c.hostaddr_for(0), None);
    assert!(c.hostaddr_for(1).is_some());
    // Without hosts, the hostaddrs set the count the ports must match.
    parse("hostaddr=10.0.0.1,10.0.0.2 port=1,2");
}

#[test]
fn set_applies_one_key_word() {
    let mut c = Config::new();
    c.set("host", "a,b")
        .unwrap()
        .set("port", "1,2")
        .unwrap()
        .set("sslmode", "require")
        .unwrap();
    assert_eq!(c.get_hosts(), [tcp("a"), tcp("b")]);
    assert_eq!(c.get_ssl_mode(), SslMode::Require);
    // An empty value unsets.
    c.set("sslmode", "").unwrap();
    assert_eq!(c, parse("host=a,b port=1,2"));
    let e = c.set("sslmode", "sometimes").unwrap_err().to_string();
    assert!(e.contains("`sslmode`") && e.contains("verify-full"), "{e}");
    let e = c.set("nope", "1").unwrap_err().to_string();
    assert!(e.contains("unknown connection parameter `nope`"), "{e}");
}

#[test]
fn builders_append_hosts_and_ports() {
    let mut c = Config::new();
    c.host("db1")
        .port(1)
        .host("/run/pg")
        .port(2)
        .host_path("/other")
        .port(3)
        .hostaddr(None)
        .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .hostaddr(None)
        .user("u")
        .password("p")
        .dbname("d")
        .application_name("a")
        .options("-c x=1")
        .connect_timeout(Duration::from_secs(5))
        .ssl_mode(SslMode::VerifyCa)
        .target_session_attrs(TargetSessionAttrs::ReadWrite)
        .keepalives(false);
    assert_eq!(c.get_hosts(), [tcp("db1"), unix("/run/pg"), unix("/other")]);
    assert_eq!(c.get_ports(), [1, 2, 3]);
    assert_eq!(
        c.to_dsn_string(true),
        "host=db1,/run/pg,/other hostaddr=,127.0.0.1, port=1,2,3 user=u password=p dbname=d \
         application_name=a options='-c x=1' connect_timeout=5 sslmode=verify-ca \
         target_session_attrs=read-write keepalives=0"
    );
    assert_eq!(parse(&c.to_dsn_string(true)), c);
    // Empty strings unset.
    c.user("").password("");
    assert_eq!((c.get_user(), c.get_password()), (None, None));
}

#[test]
fn host_parse_and_display() {
    assert_eq!(Host::parse("/tmp"), unix("/tmp"));
    assert_eq!(Host::parse("@abstract"), unix("@abstract"));
    assert_eq!(Host::from("db"), tcp("db"));
    assert!(unix("/x").is_unix());
    assert_eq!(
        unix("/var/run/postgresql").to_string(),
        "/var/run/postgresql"
    );
    assert_eq!(tcp("::1").to_string(), "::1");
}

// ----- Errors -----

#[test]
fn unknown_and_unsupported_keys() {
    let e = parse_err("host=a foo=1");
    assert!(
        e.contains("`foo`: unknown connection parameter `foo`"),
        "{e}"
    );
    assert!(e.contains("dbname"), "the message lists the key words: {e}");
    let e = parse_err("database=x");
    assert!(e.contains("did you mean `dbname`?"), "{e}");
    let e = parse_err("HOST=x");
    assert!(e.contains("did you mean `host`?"), "{e}");
    let e = parse_err("service=mydb");
    assert!(
        e.contains("`service`") && e.contains("not supported"),
        "{e}"
    );
    let e = parse_err("postgresql:///db?service=x");
    assert!(
        e.contains("`service`") && e.contains("not supported"),
        "{e}"
    );
    let e = parse_err("gssencmode=disable");
    assert!(
        e.contains("`gssencmode`") && e.contains("not supported"),
        "{e}"
    );
    let e = parse_err("postgresql:///db?bogus=1");
    assert!(e.contains("unknown connection parameter `bogus`"), "{e}");
}

#[test]
fn bad_ports() {
    let e = parse_err("port=abc");
    assert!(
        e.contains("`port`") && e.contains("`abc`") && e.contains("65535"),
        "{e}"
    );
    let e = parse_err("port=70000");
    assert!(e.contains("`port`") && e.contains("`70000`"), "{e}");
    parse_err("port=0");
    parse_err("port=-1");
    parse_err("port=1,x");
    let e = parse_err("postgresql://h:abc/db");
    assert!(e.contains("`port`") && e.contains("host 1"), "{e}");
    let e = parse_err("postgresql://h:99999");
    assert!(e.contains("`port`"), "{e}");
    // A bare IPv6 address is caught, with a hint about brackets.
    let e = parse_err("postgresql://::1/db");
    assert!(e.contains("[::1]:5432"), "{e}");
}

#[test]
fn mismatched_list_lengths() {
    let e = parse_err("host=a,b,c port=1,2");
    assert!(
        e.contains("`port`") && e.contains("2 ports for 3 hosts"),
        "{e}"
    );
    let e = parse_err("postgresql://a,b/db?port=1,2,3");
    assert!(e.contains("3 ports for 2 hosts"), "{e}");
    let e = parse_err("host=a,b hostaddr=10.0.0.1");
    assert!(
        e.contains("`hostaddr`") && e.contains("1 hostaddr values for 2 hosts"),
        "{e}"
    );
    let e = parse_err("hostaddr=10.0.0.1 port=1,2");
    assert!(e.contains("2 ports for 1 hosts"), "{e}");
}

#[test]
fn syntax_errors() {
    let e = parse_err("host=a dbname='unterminated");
    assert!(e.contains("`dbname`") && e.contains("unterminated"), "{e}");
    let e = parse_err("host localhost");
    assert!(e.contains("`host`") && e.contains("missing `=`"), "{e}");
    let e = parse_err("host=a port");
    assert!(e.contains("`port`") && e.contains("missing `=`"), "{e}");
    let e = parse_err("=x");
    assert!(e.contains("`dsn`"), "{e}");
    let e = parse_err(r"user=abc\");
    assert!(e.contains("`user`") && e.contains("lone"), "{e}");
    let e = parse_err("mysql://u@h/db");
    assert!(e.contains("`dsn`") && e.contains("`mysql`"), "{e}");
    let e = parse_err("user=a\0b");
    assert!(e.contains("`user`") && e.contains("NUL"), "{e}");
}

#[test]
fn bad_uris() {
    let e = parse_err("postgresql://u:p%zz@h/db");
    assert!(
        e.contains("`password`") && e.contains("percent-encoding"),
        "{e}"
    );
    let e = parse_err("postgresql://h/db%4");
    assert!(
        e.contains("`dbname`") && e.contains("percent-encoding"),
        "{e}"
    );
    let e = parse_err("postgresql://h/db%00");
    assert!(e.contains("%00"), "{e}");
    let e = parse_err("postgresql://h/db%ff");
    assert!(e.contains("UTF-8"), "{e}");
    let e = parse_err("postgresql://h/db?application_name=%G0");
    assert!(e.contains("`application_name`"), "{e}");
    let e = parse_err("postgresql://[::1/db");
    assert!(e.contains("`host`") && e.contains("`]`"), "{e}");
    let e = parse_err("postgresql://[]/db");
    assert!(e.contains("empty IPv6"), "{e}");
    let e = parse_err("postgresql://[::1]x/db");
    assert!(e.contains("after `]`"), "{e}");
    let e = parse_err("postgresql://h/db?sslmode");
    assert!(e.contains("`sslmode`") && e.contains("without `=`"), "{e}");
}

#[test]
fn bad_values_name_the_key_and_the_accepted_values() {
    let e = parse_err("sslmode=requird");
    assert!(e.contains("`sslmode`") && e.contains("`requird`"), "{e}");
    assert!(
        e.contains("disable, allow, prefer, require, verify-ca, verify-full"),
        "{e}"
    );
    let e = parse_err("target_session_attrs=master");
    assert!(
        e.contains("read-write") && e.contains("prefer-standby"),
        "{e}"
    );
    let e = parse_err("channel_binding=yes");
    assert!(e.contains("`channel_binding`"), "{e}");
    let e = parse_err("load_balance_hosts=on");
    assert!(e.contains("random"), "{e}");
    let e = parse_err("connect_timeout=ten");
    assert!(
        e.contains("`connect_timeout`") && e.contains("seconds"),
        "{e}"
    );
    parse_err("connect_timeout=99999999999");
    let e = parse_err("keepalives=yes");
    assert!(e.contains("`keepalives`"), "{e}");
    let e = parse_err("hostaddr=db.example.com");
    assert!(e.contains("`hostaddr`") && e.contains("numeric"), "{e}");
    let e = parse_err("sslrootcert=system sslmode=require");
    assert!(e.contains("`sslmode`") && e.contains("verify-full"), "{e}");
}

// ----- Secrets -----

const SECRET: &str = "Hunter2Secret";

/// Connection strings holding `SECRET`, well-formed or not.
fn dsns_with_secret(p: &str) -> Vec<String> {
    vec![
        format!("password={p}"),
        format!("host=h password='{p}' dbname=d"),
        format!("sslpassword={p}"),
        format!("postgresql://u:{p}@h/db"),
        format!("postgresql:///db?password={p}"),
        // Malformed:
        format!("password='{p}"),
        format!("password={p}\\"),
        format!("password=x {p}"),
        format!("password=x {p}=1"),
        format!("password=x{p} {p}"),
        format!("sslpassword=x {p}"),
        format!("host=h password={p} port=abc"),
        format!("password={p} sslmode=bogus"),
        format!("password={p} port=1,2 host=a,b,c"),
        format!("postgresql://u:{p}@h:bad/db"),
        format!("postgresql://u:{p}@h:99999/db"),
        format!("postgresql://u:x/{p}@h/db"),
        format!("postgresql://u:x?{p}@h/db"),
        format!("postgresql://u:{p}%zz@h/db"),
        format!("postgresql://u:{p}%00@h/db"),
        format!("postgresql://u:{p}%ff@h/db"),
        format!("postgresql://u:{p}@[::1/db"),
        format!("postgresql://u:{p}@[::1]x/db"),
        format!("postgresql://u:{p}@::1/db"),
        format!("postgresql://u:{p}@h/db?password"),
        format!("postgresql://u:{p}@h/db?password={p}%zz"),
        format!("postgresql://u:{p}@h/db?port=x"),
        format!("postgresql://u:{p}@h/db?nope=1"),
        format!("postgres:/u:{p}@h/db"),
        format!("postgre://u:{p}@h/db"),
        format!("mysql://u:{p}@h/db?x=1"),
        format!("postgresql://u:{p}@h/db?sslrootcert=system&sslmode=prefer"),
    ]
}

fn assert_no_secret(dsn: &str, secret: &str) {
    match Config::parse(dsn) {
        Ok(c) => {
            let debug = format!("{c:?}");
            let display = c.to_string();
            assert!(!debug.contains(secret), "Debug of {dsn:?} leaks: {debug}");
            assert!(
                !display.contains(secret),
                "Display of {dsn:?} leaks: {display}"
            );
            assert!(!c.redacted_dsn().contains(secret));
            assert!(!c.to_dsn_string(false).contains(secret));
        }
        Err(e) => {
            let (display, debug) = (e.to_string(), format!("{e:?}"));
            assert!(
                !display.contains(secret),
                "error for {dsn:?} leaks: {display}"
            );
            assert!(!debug.contains(secret), "error for {dsn:?} leaks: {debug}");
        }
    }
}

#[test]
fn secrets_never_leak() {
    for dsn in dsns_with_secret(SECRET) {
        assert_no_secret(&dsn, SECRET);
    }
    let c = parse(&format!("password={SECRET} sslpassword={SECRET}"));
    assert!(format!("{c:?}").contains("Some(Password(********))"));
    assert_eq!(c.to_string(), "password=******** sslpassword=********");
    assert!(c.to_dsn_string(true).contains(SECRET));
}

#[test]
fn secrets_never_leak_from_the_environment() {
    let env = env_of(&[("PGPASSWORD", SECRET), ("PGPORT", "bad")]);
    let e = Config::from_dsn_with_env("user=u", &env).unwrap_err();
    assert!(e.to_string().contains("`PGPORT`"), "{e}");
    assert!(!e.to_string().contains(SECRET) && !format!("{e:?}").contains(SECRET));
}

#[test]
fn stray_words_after_a_password_get_a_quoting_hint() {
    let e = parse_err("password=my secret");
    assert!(e.contains("`password`") && e.contains("quote it"), "{e}");
    assert!(!e.contains("secret`") && !e.contains("`secret"), "{e}");
}

// ----- Rendering -----

#[test]
fn rendering_quotes_what_needs_it() {
    let mut c = Config::new();
    c.user("o'neil")
        .password(r"a b\c")
        .dbname("")
        .application_name("plain")
        .options("-c x=1");
    assert_eq!(
        c.to_dsn_string(true),
        r"user='o\'neil' password='a b\\c' application_name=plain options='-c x=1'"
    );
    assert_eq!(
        c.to_string(),
        r"user='o\'neil' password=******** application_name=plain options='-c x=1'"
    );
    assert_eq!(parse(&c.to_dsn_string(true)), c);
}

#[test]
fn documented_examples_round_trip() {
    for dsn in [
        "host=localhost port=5432 dbname=mydb connect_timeout=10",
        "postgresql://other@localhost/otherdb?connect_timeout=10&application_name=myapp",
        "postgresql://host1:123,host2:456/somedb?target_session_attrs=any&application_name=myapp",
        "postgresql://[2001:db8::1234]/database",
        "postgresql:///dbname?host=/var/lib/postgresql",
        "postgresql://%2Fvar%2Flib%2Fpostgresql/dbname",
        "postgresql://u:p%40ss%3Aw%2Frd@h/db",
        "host=a,,/tmp port=1,,3 hostaddr=10.0.0.1,,::1",
        "postgresql://a:1,b,[::1]:3",
    ] {
        let c = parse(dsn);
        assert_eq!(parse(&c.to_dsn_string(true)), c, "{dsn}");
    }
}

// ----- Environment and defaults -----

#[test]
fn dsn_beats_env_and_env_beats_defaults() {
    let env = env_of(&[
        ("PGHOST", "envhost"),
        ("PGPORT", "6000"),
        ("PGUSER", "envuser"),
        ("PGDATABASE", "envdb"),
        ("PGPASSWORD", "envpw"),
        ("PGAPPNAME", "envapp"),
        ("PGSSLMODE", "require"),
        ("PGCONNECT_TIMEOUT", "12"),
        ("PGOPTIONS", "-c x=1"),
        ("PGTARGETSESSIONATTRS", "read-write"),
        ("PGCHANNELBINDING", "disable"),
        ("PGSSLROOTCERT", "/ca"),
        ("PGSSLCERT", "/cert"),
        ("PGSSLKEY", "/key"),
        ("PGPASSFILE", "/envpass"),
        ("PGCLIENTENCODING", "LATIN1"),
        ("PGLOADBALANCEHOSTS", "random"),
        ("USER", "osuser"),
        ("HOME", "/home/osuser"),
    ]);
    let c = Config::from_dsn_with_env("host=dsnhost user=dsnuser sslmode=disable", &env).unwrap();
    assert_eq!(c.get_hosts(), [tcp("dsnhost")]);
    assert_eq!(c.get_user(), Some("dsnuser"));
    assert_eq!(c.get_ssl_mode(), SslMode::Disable);
    assert_eq!(c.get_ports(), [6000]);
    assert_eq!(c.get_dbname(), Some("envdb"));
    assert_eq!(pw(&c), Some(&b"envpw"[..]));
    assert_eq!(c.get_application_name(), Some("envapp"));
    assert_eq!(c.get_connect_timeout(), Some(Duration::from_secs(12)));
    assert_eq!(c.get_options(), Some("-c x=1"));
    assert_eq!(c.get_target_session_attrs(), TargetSessionAttrs::ReadWrite);
    assert_eq!(c.get_channel_binding(), ChannelBinding::Disable);
    assert_eq!(c.get_ssl_root_cert(), Some(Path::new("/ca")));
    assert_eq!(c.get_ssl_cert(), Some(Path::new("/cert")));
    assert_eq!(c.get_ssl_key(), Some(Path::new("/key")));
    assert_eq!(c.get_passfile(), Some(Path::new("/envpass")));
    assert_eq!(c.get_client_encoding(), Some("LATIN1"));
    assert_eq!(c.get_load_balance_hosts(), LoadBalanceHosts::Random);

    // Without PG* variables, the defaults apply.
    let env = env_of(&[("USER", "osuser"), ("HOME", "/home/osuser")]);
    let c = Config::from_dsn_with_env("host=h", &env).unwrap();
    assert_eq!(c.get_user(), Some("osuser"));
    assert_eq!(c.get_dbname(), Some("osuser"));
    assert_eq!(c.get_ports(), [DEFAULT_PORT]);
    assert_eq!(c.get_passfile(), Some(Path::new("/home/osuser/.pgpass")));
    // The user name falls back to LOGNAME, and the database to the user name.
    let env = env_of(&[("LOGNAME", "logname")]);
    let c = Config::from_dsn_with_env("user=u", &env).unwrap();
    assert_eq!(c.get_dbname(), Some("u"));
    let c = Config::from_dsn_with_env("", &env).unwrap();
    assert_eq!(c.get_user(), Some("logname"));
}

#[test]
fn empty_env_vars_count_as_unset() {
    let env = env_of(&[("PGHOST", ""), ("PGSSLMODE", ""), ("USER", "u")]);
    let mut c = Config::new();
    c.apply_env(&env).unwrap();
    assert_eq!(c, Config::new());
}

#[test]
fn env_host_lists() {
    let env = env_of(&[("PGHOST", "a,b"), ("PGPORT", "1,2"), ("USER", "u")]);
    let c = Config::from_dsn_with_env("", &env).unwrap();
    assert_eq!(c.get_hosts(), [tcp("a"), tcp("b")]);
    assert_eq!(c.get_ports(), [1, 2]);
    // The URI's host list wins over PGHOST, even with PGPORT applied on top.
    let c = Config::from_dsn_with_env("postgresql://x,y,z/db", &env);
    let e = c.unwrap_err().to_string();
    assert!(
        e.contains("`PGPORT`") && e.contains("2 ports for 3 hosts"),
        "{e}"
    );
    // A PGHOST that does not fit the DSN's ports is named.
    let env = env_of(&[("PGHOST", "a,b,c")]);
    let e = Config::parse("port=1,2")
        .unwrap()
        .apply_env(&env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`PGHOST`"), "{e}");
}

#[test]
fn bad_env_values_name_the_variable() {
    for (var, value) in [
        ("PGPORT", "abc"),
        ("PGSSLMODE", "sure"),
        ("PGCONNECT_TIMEOUT", "soon"),
        ("PGTARGETSESSIONATTRS", "master"),
        ("PGCHANNELBINDING", "maybe"),
        ("PGHOSTADDR", "not-an-ip"),
        ("PGLOADBALANCEHOSTS", "yes"),
    ] {
        let mut c = Config::new();
        let e = c.apply_env(&env_of(&[(var, value)])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains(&format!("`{var}`")), "{e}");
    }
}

#[test]
fn defaults_fill_hosts() {
    let env = env_of(&[("USER", "u")]);
    // No host: a local socket folder or localhost.
    let c = Config::from_dsn_with_env("", &env).unwrap();
    assert_eq!(c.get_hosts().len(), 1);
    assert_ne!(c.get_hosts()[0], tcp(""));
    // Empty entries get the default; hostaddr-only entries are named by their address.
    let c = Config::from_dsn_with_env("host=a,,c port=1,,3", &env).unwrap();
    assert_eq!(c.get_hosts()[0], tcp("a"));
    assert_ne!(c.get_hosts()[1], tcp(""));
    assert_eq!(c.get_ports(), [1, DEFAULT_PORT, 3]);
    let c = Config::from_dsn_with_env("hostaddr=10.0.0.1,10.0.0.2", &env).unwrap();
    assert_eq!(c.get_hosts(), [tcp("10.0.0.1"), tcp("10.0.0.2")]);
    let c = Config::from_dsn_with_env("host=a, hostaddr=,10.0.0.2", &env).unwrap();
    assert_eq!(c.get_hosts(), [tcp("a"), tcp("10.0.0.2")]);
    // Several ports need as many hosts, even the default one.
    let e = Config::from_dsn_with_env("port=1,2", &env).unwrap_err();
    assert!(e.to_string().contains("2 ports for 1 hosts"), "{e}");
}

#[test]
fn default_host_prefers_the_folder_with_the_socket() {
    let first = TempDir::new();
    let second = TempDir::new();
    let missing = first.path().join("missing");
    let dirs = [missing.as_path(), first.path(), second.path()];
    if cfg!(unix) {
        // No socket anywhere: the first folder that exists.
        assert_eq!(
            env::default_host(&dirs, 5432),
            Host::Unix(first.path().to_path_buf())
        );
        // A socket for this port decides.
        fs::write(second.path().join(".s.PGSQL.5433"), b"").unwrap();
        assert_eq!(
            env::default_host(&dirs, 5433),
            Host::Unix(second.path().to_path_buf())
        );
        assert_eq!(
            env::default_host(&dirs, 5432),
            Host::Unix(first.path().to_path_buf())
        );
    }
    assert_eq!(
        env::default_host(&[missing.as_path()], 5432),
        tcp("localhost")
    );
}

// ----- The password file -----

fn lookup(text: &str, host: &Host, port: u16, db: &str, user: &str) -> Option<String> {
    pgpass::lookup(text.as_bytes(), host, port, db, user)
        .map(|p| String::from_utf8(p.expose().to_vec()).unwrap())
}

#[test]
fn pgpass_matching() {
    let file = "\
# comment: h:5432:db:u:commented
h:5432:db:u:exact
*:5432:db:u:anyhost
h:*:*:u:anyportdb
h:5432:db:*:anyuser
h:5432:db:u:never-reached
";
    let h = tcp("h");
    assert_eq!(lookup(file, &h, 5432, "db", "u").as_deref(), Some("exact"));
    assert_eq!(
        lookup(file, &tcp("other"), 5432, "db", "u").as_deref(),
        Some("anyhost")
    );
    assert_eq!(lookup(file, &h, 1, "x", "u").as_deref(), Some("anyportdb"));
    assert_eq!(
        lookup(file, &h, 5432, "db", "v").as_deref(),
        Some("anyuser")
    );
    assert_eq!(lookup(file, &h, 1, "db", "v"), None);
    assert_eq!(lookup("", &h, 5432, "db", "u"), None);
}

#[test]
fn pgpass_escapes() {
    let file = r"h\:x:5432:d\\b:u\*:pa\:ss\\word
h:5432:db:*:tail:ignored
";
    assert_eq!(
        lookup(file, &tcp("h:x"), 5432, r"d\b", "u*").as_deref(),
        Some(r"pa:ss\word")
    );
    // An escaped `*` is a literal star, not a wildcard.
    assert_eq!(lookup(file, &tcp("h:x"), 5432, r"d\b", "uu"), None);
    // Text after the password's unescaped `:` is ignored.
    assert_eq!(
        lookup(file, &tcp("h"), 5432, "db", "x").as_deref(),
        Some("tail")
    );
    // A `*` inside a field is literal.
    assert_eq!(lookup("h*:*:*:*:pw\n", &tcp("hx"), 1, "d", "u"), None);
}

#[test]
fn pgpass_odd_lines() {
    // CRLF line ends, short lines and empty lines are handled; an empty password matches but
    // gives no password.
    let file = "h:5432:db\r\n\r\nh:5432:db:u:pw\r\n";
    assert_eq!(
        lookup(file, &tcp("h"), 5432, "db", "u").as_deref(),
        Some("pw")
    );
    assert_eq!(
        lookup(
            "h:5432:db:u:\nh:5432:db:u:later\n",
            &tcp("h"),
            5432,
            "db",
            "u"
        ),
        None
    );
    // No trailing newline.
    assert_eq!(
        lookup("*:*:*:*:pw", &tcp("h"), 5432, "db", "u").as_deref(),
        Some("pw")
    );
    // Only a line starting with `#` is a comment.
    assert_eq!(
        lookup(" #:*:*:*:pw", &tcp(" #"), 1, "d", "u").as_deref(),
        Some("pw")
    );
}

#[test]
fn pgpass_localhost_matches_sockets() {
    let file = "localhost:5432:db:u:local\n/custom:5432:db:u:custom\n";
    let socket = unix("/var/run/postgresql");
    assert_eq!(
        lookup(file, &socket, 5432, "db", "u").as_deref(),
        Some("local")
    );
    assert_eq!(
        lookup(file, &tcp("localhost"), 5432, "db", "u").as_deref(),
        Some("local")
    );
    assert_eq!(
        lookup(file, &tcp(""), 5432, "db", "u").as_deref(),
        Some("local")
    );
    // A socket folder also matches by its own path.
    let file = "/custom:5432:db:u:custom\n";
    assert_eq!(
        lookup(file, &unix("/custom"), 5432, "db", "u").as_deref(),
        Some("custom")
    );
    assert_eq!(lookup(file, &tcp("localhost"), 5432, "db", "u"), None);
    // A TCP host other than localhost does not match a localhost line.
    assert_eq!(
        lookup("localhost:*:*:*:pw\n", &tcp("127.0.0.1"), 5432, "d", "u"),
        None
    );
}

#[test]
fn password_for_reads_the_passfile() {
    let dir = TempDir::new();
    let file = dir.path().join("pgpass");
    fs::write(&file, "h:5432:db:u:frompass\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut c = Config::new();
    c.user("u").dbname("db").passfile(&file);
    let got = |c: &Config| c.password_for(&tcp("h"), 5432).map(|p| p.expose().to_vec());
    assert_eq!(got(&c), Some(b"frompass".to_vec()));
    assert_eq!(c.password_for(&tcp("other"), 5432), None);
    // The configured password wins over the file.
    c.password("configured");
    assert_eq!(got(&c), Some(b"configured".to_vec()));
    c.password("");
    // The database defaults to the user name.
    let mut c2 = Config::new();
    c2.user("db").passfile(&file);
    assert_eq!(c2.password_for(&tcp("h"), 5432), None);
    // A missing file or a folder gives no password, and no error.
    c.passfile(dir.path().join("missing"));
    assert_eq!(got(&c), None);
    c.passfile(dir.path());
    assert_eq!(got(&c), None);
    // Found through PGPASSFILE.
    let mut c = parse("user=u dbname=db");
    c.apply_env(&env_of(&[("PGPASSFILE", file.to_str().unwrap())]))
        .unwrap();
    assert_eq!(got(&c), Some(b"frompass".to_vec()));
    // And through $HOME/.pgpass.
    fs::copy(&file, dir.path().join(".pgpass")).unwrap();
    let env = env_of(&[("HOME", dir.path().to_str().unwrap())]);
    let c = Config::from_dsn_with_env("user=u dbname=db", &env).unwrap();
    assert_eq!(got(&c), Some(b"frompass".to_vec()));
}

#[cfg(unix)]
#[test]
fn passfile_open_to_others_is_ignored() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let file = dir.path().join("pgpass");
    fs::write(&file, "*:*:*:*:pw\n").unwrap();
    let mut c = Config::new();
    c.user("u").passfile(&file);
    for (mode, used) in [
        (0o600, true),
        (0o400, true),
        (0o700, true),
        (0o640, false),
        (0o604, false),
        (0o620, false),
        (0o644, false),
        (0o666, false),
    ] {
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(
            c.password_for(&tcp("h"), 5432).is_some(),
            used,
            "mode {mode:o}"
        );
    }
}

// ----- Properties -----

/// Text that needs quoting or escaping now and then: spaces, quotes, backslashes, `=`,
/// commas, percent signs and non-ASCII letters, or anything at all but NUL.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 '\\\\=,:@/%?&#\t\né€漢🦀]{1,16}",
        any::<String>().prop_filter("NUL or empty", |s| !s.is_empty() && !s.contains('\0')),
    ]
}

fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        "[a-z0-9][a-z0-9.-]{0,20}".prop_map(Host::Tcp),
        any::<Ipv4Addr>().prop_map(|a| Host::Tcp(a.to_string())),
        any::<Ipv6Addr>().prop_map(|a| Host::Tcp(a.to_string())),
        "/[^,\\x00]{0,20}".prop_map(|p| Host::Unix(PathBuf::from(p))),
    ]
}

/// Host, hostaddr and port lists whose lengths fit together. An empty entry is only
/// generated in lists of two or more, since a lone empty entry reads back as "unset".
fn lists() -> impl Strategy<Value = (Vec<Host>, Vec<Option<IpAddr>>, Vec<u16>)> {
    let hosts = prop_oneof![
        prop::collection::vec(host(), 0..=1),
        prop::collection::vec(
            prop_oneof![4 => host(), 1 => Just(Host::Tcp(String::new()))],
            2..=4
        ),
    ];
    hosts.prop_flat_map(|hosts| {
        let n = hosts.len();
        let addr = prop_oneof![
            any::<Ipv4Addr>().prop_map(IpAddr::V4),
            any::<Ipv6Addr>().prop_map(IpAddr::V6),
        ];
        let addrs = match n {
            0 => Just(Vec::new()).boxed(),
            1 => prop::collection::vec(addr.prop_map(Some), 0..=1).boxed(),
            _ => prop_oneof![
                Just(Vec::new()),
                prop::collection::vec(prop::option::of(addr), n),
            ]
            .boxed(),
        };
        let ports = match n {
            0 | 1 => prop::collection::vec(1..=u16::MAX, 0..=1).boxed(),
            _ => prop_oneof![
                prop::collection::vec(1..=u16::MAX, 0..=1),
                prop::collection::vec(prop_oneof![Just(0u16), 1..=u16::MAX], n),
            ]
            .boxed(),
        };
        (Just(hosts), addrs, ports)
    })
}

fn choice<T: Choice + fmt::Debug>() -> impl Strategy<Value = Option<T>> {
    prop::option::of(prop::sample::select(
        T::CHOICES.iter().map(|(_, v)| *v).collect::<Vec<T>>(),
    ))
}

fn config() -> impl Strategy<Value = Config> {
    let strings = prop::collection::vec(prop::option::of(text()), 7);
    let paths = prop::collection::vec(
        prop::option::of(
            text().prop_filter("sslrootcert=system needs verify-full", |s| s != "system"),
        ),
        5,
    );
    let secrets = prop::collection::vec(prop::option::of(text()), 2);
    // `direct` needs a strong sslmode (checked on parsing); `require_auth` from a few lists.
    let tls = (
        prop::option::of(any::<bool>()),
        prop::option::of(Just(SslNegotiation::Postgres)),
        prop::option::of(prop_oneof![
            Just("scram-sha-256"),
            Just("!password,!md5"),
            Just("password,md5,none"),
        ]),
    );
    let numbers = (
        prop::option::of(prop_oneof![Just(0u32), 2..=i32::MAX as u32]),
        prop::option::of(0..=i32::MAX as u32),
        prop::option::of(0..=i32::MAX as u32),
        prop::option::of(0..=i32::MAX as u32),
        prop::option::of(any::<bool>()),
    );
    let choices = (
        choice::<SslMode>(),
        choice::<ChannelBinding>(),
        choice::<TargetSessionAttrs>(),
        choice::<LoadBalanceHosts>(),
    );
    (lists(), strings, paths, secrets, numbers, (choices, tls)).prop_map(
        |((hosts, hostaddrs, ports), s, p, secrets, n, (ch, tls))| {
            let path = |i: usize| p[i].clone().map(PathBuf::from);
            let secret = |i: usize| secrets[i].clone().map(Password::from);
            Config {
                hosts,
                hostaddrs,
                ports,
                user: s[0].clone(),
                password: secret(0),
                dbname: s[1].clone(),
                application_name: s[2].clone(),
                fallback_application_name: s[3].clone(),
                options: s[4].clone(),
                client_encoding: s[5].clone(),
                connect_timeout: n.0,
                ssl_mode: ch.0,
                ssl_root_cert: path(0),
                ssl_cert: path(1),
                ssl_key: path(2),
                ssl_password: secret(1),
                ssl_crl: path(4),
                ssl_sni: tls.0,
                ssl_negotiation: tls.1,
                channel_binding: ch.1,
                require_auth: tls.2.map(|r| RequireAuth::parse(r).unwrap()),
                target_session_attrs: ch.2,
                load_balance_hosts: ch.3,
                passfile: path(3),
                keepalives: n.4,
                keepalives_idle: n.1,
                keepalives_interval: n.2,
                keepalives_count: n.3,
            }
        },
    )
}

proptest! {
    // Failures are not persisted to a regressions file: this crate keeps no such folder, and
    // the seed printed on failure is enough to reproduce one.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn rendering_round_trips(c in config()) {
        let dsn = c.to_dsn_string(true);
        let back = Config::parse(&dsn);
        prop_assert!(back.is_ok(), "{:?} does not parse: {}", dsn, back.unwrap_err());
        prop_assert_eq!(back.unwrap(), c);
    }

    #[test]
    fn redacted_forms_hide_passwords(c in config(), p in "[A-Za-z0-9]{16}") {
        let mut c = c;
        c.password(format!("Pw{p}")).ssl_password(format!("Pw{p}"));
        let secret = format!("Pw{p}");
        let debug = format!("{c:?}");
        prop_assert!(!debug.contains(&secret));
        prop_assert!(!c.to_string().contains(&secret));
        // The redacted string still parses, with a placeholder password.
        let redacted = Config::parse(&c.redacted_dsn()).unwrap();
        prop_assert_eq!(redacted.get_password().map(Password::expose), Some(&b"********"[..]));
    }

    #[test]
    fn parse_errors_never_quote_passwords(p in "Pw[A-Za-z0-9]{14}") {
        for dsn in dsns_with_secret(&p) {
            assert_no_secret(&dsn, &p);
        }
    }

    #[test]
    fn parse_never_panics(s in any::<String>()) {
        let _ = Config::parse(&s);
        let _ = Config::parse(&format!("postgresql://{s}"));
    }
}

#[test]
fn tls_key_words_parse_and_render() {
    let c = parse(
        "sslmode=require sslcrl=/crl.pem sslsni=0 sslnegotiation=direct require_auth=scram-sha-256",
    );
    assert_eq!(c.get_ssl_crl(), Some(Path::new("/crl.pem")));
    assert!(!c.get_ssl_sni());
    assert_eq!(c.get_ssl_negotiation(), SslNegotiation::Direct);
    let ra = c.get_require_auth().expect("require_auth set");
    assert!(ra.allows(AuthMethod::ScramSha256));
    assert!(!ra.allows(AuthMethod::Password));
    assert!(!ra.allows(AuthMethod::None));
    assert_eq!(
        c.to_string(),
        "sslmode=require sslcrl=/crl.pem sslsni=0 sslnegotiation=direct require_auth=scram-sha-256"
    );
    let d = parse("");
    assert!(d.get_ssl_sni());
    assert_eq!(d.get_ssl_negotiation(), SslNegotiation::Postgres);
    assert!(d.get_require_auth().is_none());
}

#[test]
fn require_auth_negation_and_bad_lists() {
    let ra = RequireAuth::parse("!password,!md5").unwrap();
    assert!(!ra.allows(AuthMethod::Password));
    assert!(!ra.allows(AuthMethod::Md5));
    assert!(ra.allows(AuthMethod::ScramSha256));
    assert!(ra.allows(AuthMethod::None));
    assert_eq!(ra.to_string(), "!password,!md5");
    let e = parse_err("require_auth=password,!md5");
    assert!(e.contains("cannot be mixed"), "{e}");
    let e = parse_err("require_auth=kerberos");
    assert!(
        e.contains("accepted methods") && e.contains("scram-sha-256"),
        "{e}"
    );
    let e = parse_err("require_auth=md5,md5");
    assert!(e.contains("more than once"), "{e}");
}

#[test]
fn direct_negotiation_needs_a_strong_sslmode() {
    for mode in ["disable", "allow", "prefer"] {
        let e = Config::parse(&format!("sslmode={mode} sslnegotiation=direct"))
            .expect_err("direct with a weak sslmode");
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("sslnegotiation"), "{e}");
    }
    let e = Config::parse("sslnegotiation=direct").expect_err("direct with sslmode unset");
    assert!(e.to_string().contains("sslnegotiation"), "{e}");
    assert!(Config::parse("sslmode=verify-full sslnegotiation=direct").is_ok());
}
