//! Connecting: every authentication method, TCP and Unix sockets, bad endpoints.

use std::time::{Duration, Instant};

use aiopg::ErrorKind;

use crate::support::{self, connect, options, require_cluster, rt_test};

fn role_dsn(c: &support::Cluster, role: &str, password: Option<&str>) -> String {
    let mut dsn = format!(
        "host={} port={} user={role} dbname=postgres",
        c.host, c.port
    );
    if let Some(p) = password {
        dsn.push_str(&format!(" password={p}"));
    }
    dsn
}

/// The current user as the server sees it, and the method it authenticated with.
async fn whoami(conn: &aiopg::Connection) -> String {
    let rows = conn.query("SELECT current_user::text", &[]).await.unwrap();
    rows[0].get::<String>(0)
}

rt_test! {
    async fn every_auth_method_connects_over_tcp() {
        let Some(c) = require_cluster("every_auth_method_connects_over_tcp") else { return };
        for (role, pw) in [
            ("aiopg_trust", None),
            ("aiopg_password", Some("aiopg-pw-password")),
            ("aiopg_md5", Some("aiopg-pw-md5")),
            ("aiopg_scram", Some("aiopg-pw-scram")),
        ] {
            let conn = options(&role_dsn(&c, role, pw))
                .connect()
                .await
                .unwrap_or_else(|e| panic!("{role}: {e}"));
            assert_eq!(whoami(&conn).await, role);
            conn.close().await;
        }
    }
}

rt_test! {
    async fn wrong_password_is_an_auth_error_for_each_method() {
        let Some(c) = require_cluster("wrong_password") else { return };
        for role in ["aiopg_password", "aiopg_md5", "aiopg_scram"] {
            let err = options(&role_dsn(&c, role, Some("not-the-password")))
                .connect()
                .await
                .expect_err(role);
            assert_eq!(err.kind(), ErrorKind::Auth, "{role}: {err}");
            let text = format!("{err} {err:?}");
            assert!(text.contains("password authentication failed"), "{role}: {text}");
            assert!(!text.contains("not-the-password"), "{role}: the password leaked: {text}");
            assert_eq!(err.code(), Some(&aiopg::SqlState::INVALID_PASSWORD), "{role}");
        }
    }
}

rt_test! {
    async fn missing_password_is_an_auth_error_saying_what_to_do() {
        let Some(c) = require_cluster("missing_password") else { return };
        // PGPASSWORD and ~/.pgpass must not supply one.
        let dsn = role_dsn(&c, "aiopg_scram", None) + " passfile=/nonexistent/pgpass";
        let err = options(&dsn).connect().await.expect_err("no password given");
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        assert!(err.to_string().contains("PGPASSWORD"), "{err}");
    }
}

rt_test! {
    async fn unix_socket_connects_with_every_method() {
        let Some(c) = require_cluster("unix_socket") else { return };
        for (role, pw) in [
            ("aiopg_trust", None),
            ("aiopg_md5", Some("aiopg-pw-md5")),
            ("aiopg_scram", Some("aiopg-pw-scram")),
        ] {
            let mut dsn = format!("host={} port={} user={role} dbname=postgres", c.socket_dir, c.port);
            if let Some(p) = pw {
                dsn.push_str(&format!(" password={p}"));
            }
            let conn = options(&dsn).connect().await.unwrap_or_else(|e| panic!("{role}: {e}"));
            // Over a Unix socket the server sees no client address.
            let rows = conn.query("SELECT inet_client_addr() IS NULL", &[]).await.unwrap();
            assert!(rows[0].get::<bool>(0), "{role} did not come over the Unix socket");
            assert_eq!(whoami(&conn).await, role);
        }
    }
}

rt_test! {
    async fn client_encoding_other_than_utf8_is_refused_and_utf8_names_are_accepted() {
        let base = support::dsn();
        for name in ["LATIN1", "SQL_ASCII", "win1252"] {
            let err = aiopg::connect(&format!("{base} client_encoding={name}"))
                .await
                .expect_err(name);
            assert_eq!(err.kind(), ErrorKind::Config, "{name}: {err}");
            let text = err.to_string();
            assert!(text.contains("client_encoding") && text.contains(name), "{text}");
        }
        for name in ["UTF8", "utf-8", "unicode", "auto"] {
            let conn = aiopg::connect(&format!("{base} client_encoding={name}"))
                .await
                .unwrap_or_else(|e| panic!("client_encoding={name}: {e}"));
            assert_eq!(conn.parameter_status("client_encoding").as_deref(), Some("UTF8"));
            let rows = conn.query("SELECT 'é'::text", &[]).await.unwrap();
            assert_eq!(rows[0].get::<&str>(0), "é");
        }
    }
}

rt_test! {
    async fn fallback_application_name_names_the_session_unless_application_name_does() {
        let base = support::dsn();
        let show = |dsn: String| async move {
            let conn = aiopg::connect(&dsn).await.unwrap();
            let rows = conn.query("SHOW application_name", &[]).await.unwrap();
            rows[0].get::<String>(0)
        };
        let fallback = format!("{base} application_name='' fallback_application_name=fb_app");
        assert_eq!(show(fallback).await, "fb_app");
        let both = format!("{base} application_name=main_app fallback_application_name=fb_app");
        assert_eq!(show(both).await, "main_app");
    }
}

rt_test! {
    async fn tcp_connection_reports_identity() {
        let conn = connect().await;
        let rows = conn
            .query("SELECT pg_backend_pid(), current_setting('server_version_num')::int4", &[])
            .await
            .unwrap();
        assert_eq!(rows[0].get::<i32>(0), conn.backend_pid());
        assert_eq!(rows[0].get::<i32>(1) as u32, conn.server_version());
        assert_eq!(conn.parameter_status("client_encoding").as_deref(), Some("UTF8"));
        assert!(conn.parameter_status("no_such_parameter").is_none());
        assert!(!conn.dsn().is_empty());
        assert!(!conn.is_closed());
    }
}

rt_test! {
    async fn closed_port_fails_at_once() {
        // Bind then release a port so that nothing listens on it.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let started = Instant::now();
        let err = options(&format!("host=127.0.0.1 port={port} user=nobody dbname=x connect_timeout=10"))
            .connect()
            .await
            .expect_err("nothing listens there");
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.to_string().contains(&port.to_string()), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }
}

rt_test! {
    async fn silent_server_fails_within_connect_timeout() {
        // The kernel accepts connections into the backlog, but nobody ever answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let started = Instant::now();
        let err = options(&format!("host=127.0.0.1 port={port} user=nobody dbname=x"))
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
            .expect_err("the server never answers");
        let took = started.elapsed();
        assert!(err.is_timeout(), "{err}");
        assert!(took >= Duration::from_millis(450), "gave up early: {took:?}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        drop(listener);
    }
}

rt_test! {
    async fn unknown_database_is_a_db_error() {
        let dsn = support::dsn() + " dbname=aiopg_no_such_db";
        let err = options(&dsn).connect().await.expect_err("no such database");
        assert_eq!(err.code(), Some(&aiopg::SqlState::INVALID_CATALOG_NAME), "{err}");
    }
}

rt_test! {
    async fn malformed_dsn_is_a_config_error() {
        let err = aiopg::ConnectOptions::new("host=localhost port=notaport").expect_err("bad port");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("port"), "{err}");
    }
}

rt_test! {
    async fn default_runtime_follows_the_caller() {
        // With every runtime feature on, tokio is detected from inside tokio; elsewhere smol.
        let rt = aiopg::rt::default_runtime().expect("runtime features are enabled");
        let expected = if support::runtime_name() == "tokio" { "tokio" } else { "smol" };
        assert_eq!(rt.name(), expected);
    }
}
