//! TLS against the xtask cluster (`ssl = on`, its own throwaway CA in `AIOPG_TEST_TLS_DIR`):
//! libpq's `sslmode` outcomes for a TLS-only, a plaintext-only and an either-way user,
//! certificate and host-name checks, client certificates, channel binding and cancel.

use std::time::Duration;

use aiopg::{Connection, ErrorKind};

use crate::support::{options, require_cluster, rt_test};

fn tls_dir(test: &str) -> Option<String> {
    require_cluster(test)?;
    let dir = std::env::var("AIOPG_TEST_TLS_DIR").ok();
    if dir.is_none() {
        eprintln!(
            "{test}: needs the cluster's certificates (AIOPG_TEST_TLS_DIR, set by cargo xtask)"
        );
    }
    dir
}

fn port() -> u16 {
    std::env::var("AIOPG_TEST_PORT").unwrap().parse().unwrap()
}

/// A DSN for `user` over TCP to `host` (always reached at 127.0.0.1).
fn dsn(host: &str, user: &str, password: &str, extra: &str) -> String {
    format!(
        "host={host} hostaddr=127.0.0.1 port={} user={user} password={password} dbname=postgres \
         connect_timeout=10 {extra}",
        port()
    )
}

async fn uses_tls(conn: &Connection) -> bool {
    let rows = conn
        .query(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    rows[0].get::<bool>(0)
}

/// What libpq gives for each sslmode: Some(true) TLS, Some(false) plaintext, None refused.
/// (`require` here has no root certificate: the test HOME has no ~/.postgresql/root.crt.)
const MATRIX: &[(&str, [Option<bool>; 3])] = &[
    //            aiopg_tls    aiopg_plain   aiopg_scram (either)
    ("disable", [None, Some(false), Some(false)]),
    ("allow", [Some(true), Some(false), Some(false)]),
    ("prefer", [Some(true), Some(false), Some(true)]),
    ("require", [Some(true), None, Some(true)]),
];

rt_test! {
    async fn each_sslmode_gives_libpqs_outcome_for_tls_only_plain_only_and_either_users() {
        let Some(_) = tls_dir("sslmode matrix") else { return };
        let users = [
            ("aiopg_tls", "aiopg-pw-tls"),
            ("aiopg_plain", "aiopg-pw-plain"),
            ("aiopg_scram", "aiopg-pw-scram"),
        ];
        for (mode, outcomes) in MATRIX {
            for ((user, pw), want) in users.iter().zip(outcomes) {
                let res = options(&dsn("127.0.0.1", user, pw, &format!("sslmode={mode}")))
                    .connect()
                    .await;
                match (want, res) {
                    (Some(tls), Ok(conn)) => {
                        assert_eq!(uses_tls(&conn).await, *tls, "sslmode={mode} user={user}");
                        conn.close().await;
                    }
                    (None, Err(e)) => {
                        assert!(
                            matches!(e.kind(), ErrorKind::Auth | ErrorKind::Db | ErrorKind::Tls),
                            "sslmode={mode} user={user}: {e}"
                        );
                    }
                    (want, Ok(_)) => panic!("sslmode={mode} user={user}: connected, want {want:?}"),
                    (want, Err(e)) => panic!("sslmode={mode} user={user}: {e}, want {want:?}"),
                }
            }
        }
    }
}

rt_test! {
    async fn verify_full_checks_the_name_and_verify_ca_only_the_chain() {
        let Some(dir) = tls_dir("verify-full") else { return };
        let ca = format!("sslrootcert={dir}/ca.crt");
        // The server's certificate names `localhost` only.
        let conn = options(&dsn("localhost", "aiopg_tls", "aiopg-pw-tls", &format!("sslmode=verify-full {ca}")))
            .connect()
            .await
            .expect("verify-full for the certificate's name");
        assert!(uses_tls(&conn).await);
        conn.close().await;
        let e = options(&dsn("127.0.0.1", "aiopg_tls", "aiopg-pw-tls", &format!("sslmode=verify-full {ca}")))
            .connect()
            .await
            .expect_err("verify-full for a name the certificate lacks");
        assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
        assert!(e.to_string().contains("not valid for the host name 127.0.0.1"), "{e}");
        let conn = options(&dsn("127.0.0.1", "aiopg_tls", "aiopg-pw-tls", &format!("sslmode=verify-ca {ca}")))
            .connect()
            .await
            .expect("verify-ca ignores the name");
        conn.close().await;
        // `require` with a root certificate checks the chain, as in libpq.
        for mode in ["verify-ca", "require"] {
            let e = options(&dsn(
                "localhost",
                "aiopg_tls",
                "aiopg-pw-tls",
                &format!("sslmode={mode} sslrootcert={dir}/other-ca.crt"),
            ))
            .connect()
            .await
            .expect_err("an unknown CA");
            assert_eq!(e.kind(), ErrorKind::Tls, "{mode}: {e}");
            assert!(e.to_string().contains("not signed by a certificate authority"), "{mode}: {e}");
        }
        let e = options(&dsn("localhost", "aiopg_tls", "aiopg-pw-tls", "sslmode=verify-ca sslrootcert=/nonexistent/ca.crt"))
            .connect()
            .await
            .expect_err("a missing root certificate file");
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert!(e.to_string().contains("sslrootcert"), "{e}");
    }
}

rt_test! {
    async fn a_rotated_root_certificate_is_read_again() {
        // TLS settings are built once and shared by later connections with the same settings:
        // a certificate file replaced since must be read again, as libpq reads it on each
        // connect.
        let Some(dir) = tls_dir("certificate rotation") else { return };
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tmp = std::env::temp_dir().join(format!(
            "aiopg-rotate-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&tmp).unwrap();
        let root = tmp.join("root.crt");
        let good = std::fs::read(format!("{dir}/ca.crt")).unwrap();
        let other = std::fs::read(format!("{dir}/other-ca.crt")).unwrap();
        let opts = || {
            options(&dsn(
                "localhost",
                "aiopg_tls",
                "aiopg-pw-tls",
                &format!("sslmode=verify-full sslrootcert={}", root.display()),
            ))
        };
        std::fs::write(&root, &good).unwrap();
        for _ in 0..2 {
            let conn = opts().connect().await.expect("the right CA");
            assert!(uses_tls(&conn).await);
            conn.close().await;
        }
        // Rotated to a CA that did not sign the server's certificate: refused.
        std::fs::write(&root, &other).unwrap();
        let e = opts().connect().await.expect_err("the other CA");
        assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
        assert!(e.to_string().contains("not signed by a certificate authority"), "{e}");
        // And back: accepted again. Removed: a configuration error naming the setting.
        std::fs::write(&root, &good).unwrap();
        opts().connect().await.expect("the right CA again").close().await;
        std::fs::remove_file(&root).unwrap();
        let e = opts().connect().await.expect_err("no root certificate file");
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

rt_test! {
    async fn client_certificates_log_in_with_each_key_encoding() {
        let Some(dir) = tls_dir("client certificates") else { return };
        for (cert, key) in [
            ("client.crt", "client.key"),
            ("client.crt", "client-sec1.key"),
            ("client-rsa.crt", "client-rsa.key"),
            ("client-rsa.crt", "client-rsa-pkcs1.key"),
        ] {
            let conn = options(&format!(
                "host=localhost hostaddr=127.0.0.1 port={} user=aiopg_cert dbname=postgres \
                 sslmode=verify-full sslrootcert={dir}/ca.crt sslcert={dir}/{cert} sslkey={dir}/{key}",
                port()
            ))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{cert} + {key}: {e}"));
            assert!(uses_tls(&conn).await);
            conn.close().await;
        }
        let e = options(&format!(
            "host=localhost hostaddr=127.0.0.1 port={} user=aiopg_cert dbname=postgres sslmode=require",
            port()
        ))
        .connect()
        .await
        .expect_err("cert auth without a certificate");
        assert!(matches!(e.kind(), ErrorKind::Auth | ErrorKind::Db), "{e}");
    }
}

rt_test! {
    async fn channel_binding_require_works_over_tls_and_refuses_md5_and_plaintext() {
        let Some(dir) = tls_dir("channel binding") else { return };
        let conn = options(&dsn(
            "localhost",
            "aiopg_tls",
            "aiopg-pw-tls",
            &format!("sslmode=verify-full sslrootcert={dir}/ca.crt channel_binding=require"),
        ))
        .connect()
        .await
        .expect("SCRAM-SHA-256-PLUS over TLS");
        conn.close().await;
        let e = options(&dsn("localhost", "aiopg_tls_md5", "aiopg-pw-tls-md5", "sslmode=require channel_binding=require"))
            .connect()
            .await
            .expect_err("md5 cannot bind the channel");
        assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
        assert!(e.to_string().contains("channel binding"), "{e}");
        let e = options(&dsn("127.0.0.1", "aiopg_plain", "aiopg-pw-plain", "sslmode=disable channel_binding=require"))
            .connect()
            .await
            .expect_err("no TLS, no binding");
        assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
        assert!(e.to_string().contains("TLS is not in use"), "{e}");
    }
}

rt_test! {
    async fn a_timeout_cancels_a_running_statement_over_tls() {
        let Some(dir) = tls_dir("cancel over TLS") else { return };
        let conn = options(&dsn(
            "localhost",
            "aiopg_tls",
            "aiopg-pw-tls",
            &format!("sslmode=verify-full sslrootcert={dir}/ca.crt"),
        ))
        .connect()
        .await
        .expect("connect over TLS");
        let started = std::time::Instant::now();
        let e = conn
            .with_timeout(Some(Duration::from_millis(300)), conn.query("SELECT pg_sleep(30)", &[]))
            .await
            .expect_err("the timeout cancels pg_sleep");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        assert!(matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Db), "{e}");
        let rows = conn.query("SELECT 7", &[]).await.expect("usable after the cancel");
        assert_eq!(rows[0].get::<i32>(0), 7);
        conn.close().await;
    }
}
