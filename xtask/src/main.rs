//! aiopg's project automation: `cargo xtask <command>`.

/// `println!` that ignores a closed stdout (e.g. `| tee` killed by Ctrl-C): output must
/// never panic while a cluster is waiting to be stopped.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod codegen;
mod pg;
mod pgbouncer;
mod pki;
mod replica;
mod run;
mod sys;
mod tasks;

use std::path::PathBuf;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn root() -> PathBuf {
    // xtask lives one folder below the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent folder")
        .to_path_buf()
}

const USAGE: &str = "usage: cargo xtask <command>

commands:
  codegen [--check]     regenerate SqlState from PostgreSQL's errcodes.txt
  pg start              start a throwaway PostgreSQL cluster (or reuse the running
                        one) and print its DSN; details and roles go to stderr
  pg status             print whether it runs and its DSN (exit 3 when not running)
  pg stop               stop it and delete its data folder
  test-all-runtimes [-- <test args>]
                        start a private cluster, run the unit tests once and the
                        integration tests on tokio, async-std and smol, stop the
                        cluster; ends with `N passed, M failed`. With AIOPG_TEST_DSN
                        set, tests against that server instead of starting one.
                        <test args> go to the test binaries (e.g. a name filter).
  demo                  run examples/quickstart on each runtime against a cluster
  bench [args..]        run aiopg-bench (release) against a benchmark-tuned cluster
                        (AIOPG_BENCH_DSN, AIOPG_BENCH_PG_BINDIR)
  help                  print this text

Clusters live in $TMPDIR/aiopg-pg-*; `pg start`'s state file is
target/aiopg-pg/state. Roles: postgres (superuser, trust), aiopg_trust (trust),
aiopg_password/aiopg-pw-password (password), aiopg_md5/aiopg-pw-md5 (md5),
aiopg_scram/aiopg-pw-scram (scram-sha-256); TLS only: aiopg_tls/aiopg-pw-tls
(scram-sha-256), aiopg_tls_md5/aiopg-pw-tls-md5 (md5),
aiopg_tls_password/aiopg-pw-tls-password (password), aiopg_cert (client
certificate); without TLS only: aiopg_plain/aiopg-pw-plain (scram-sha-256);
database aiopg_test. The server speaks TLS with a throwaway PKI made at start
in the cluster's tls/ folder (tests get it as AIOPG_TEST_TLS_DIR; the server
certificate names DNS:localhost only).
Needs PostgreSQL's server binaries (Debian: apt-get install postgresql) and
openssl (apt-get install openssl).
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    let result = match args.first().map(String::as_str) {
        Some("codegen") => codegen::run(&root(), args.iter().any(|a| a == "--check")).map(|()| 0),
        Some("pg") => pg::command(&root(), rest),
        Some("test-all-runtimes") => tasks::test_all_runtimes(&root(), rest),
        Some("demo") => tasks::demo(&root()),
        Some("bench") => tasks::bench(&root(), rest),
        Some("help" | "--help" | "-h") => {
            let _ = std::io::Write::write_all(&mut std::io::stdout(), USAGE.as_bytes());
            Ok(0)
        }
        _ => {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), USAGE.as_bytes());
            std::process::exit(2);
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            errln!("xtask: {e}");
            std::process::exit(1);
        }
    }
}
