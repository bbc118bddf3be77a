//! Connecting with TLS `sslmode=verify-full`: the server's certificate must chain to the
//! root given in `sslrootcert` and name the host connected to. Managed PostgreSQL services
//! publish their root certificate for this; `sslrootcert=system` uses the platform's store.
//!
//! `cargo xtask demo --all` runs it against the throwaway cluster, whose certificate names
//! `localhost` and is signed by the CA in `AIOPG_TLS_ROOT_CERT`. Elsewhere:
//! `AIOPG_DSN='host=db.example.com user=app sslmode=verify-full sslrootcert=/path/root.crt'`.

mod support;

async fn run() -> aiopg::Result<()> {
    let dsn = match std::env::var("AIOPG_TLS_ROOT_CERT") {
        // The demo cluster: reached by the name its certificate holds.
        Ok(root) => format!(
            "{} host=localhost sslmode=verify-full sslrootcert={root}",
            support::dsn()
        ),
        Err(_) => support::dsn(),
    };
    let conn = aiopg::connect(&dsn).await?;
    let row = conn
        .query_one(
            "SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    let (ssl, version, cipher): (bool, String, String) = (row.get(0), row.get(1), row.get(2));
    println!("TLS: {ssl}, {version}, {cipher}");
    assert!(ssl);

    // The same server under a name its certificate does not hold is refused.
    if dsn.contains("host=localhost") {
        let wrong = dsn.replace("host=localhost", "host=127.0.0.1");
        let err = aiopg::connect(&wrong).await.unwrap_err();
        println!("by IP address instead: refused ({:?}: {err})", err.kind());
    }
    conn.close().await;
    Ok(())
}

fn main() {
    support::run(run());
}
