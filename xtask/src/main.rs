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
mod fuzz;
mod install;
mod matrix;
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
  pg start [--standby] [--pgbouncer] [--failover] [--all]
                        start a throwaway PostgreSQL cluster (or reuse the running
                        one) and print its DSN; details, roles and the AIOPG_TEST_*
                        variables go to stderr. --standby: a streaming hot standby
                        of it; --pgbouncer: a PgBouncer in transaction pooling mode
                        in front of it; --failover: a failover pair (a primary of
                        its own and its standby) that tests may stop and promote
  pg status             print whether it runs and its DSN (exit 3 when not running)
  pg stop               stop it (its standby, PgBouncer and failover pairs too,
                        whatever state they are in) and delete its data folder
  pg failover-reset <dir>
                        stop a failover pair and make it anew on the same ports
                        (tests run it as $AIOPG_TEST_XTASK pg failover-reset
                        $AIOPG_TEST_FAILOVER_DIR)
  test-all-runtimes [-- <test args>]
                        start a private cluster, run the unit tests once and the
                        integration tests on tokio, async-std and smol, stop the
                        cluster; ends with `N passed, M failed`. The cluster has a
                        streaming standby and a PgBouncer (AIOPG_TEST_STANDBY_PORT,
                        AIOPG_TEST_PGBOUNCER_PORT; needs the pgbouncer package), and
                        each runtime's tests get a fresh failover pair
                        (AIOPG_TEST_FAILOVER_*; none with AIOPG_TEST_NO_FAILOVER=1).
                        With AIOPG_TEST_DSN set, tests against that server instead
                        of starting one (no standby, PgBouncer nor pair).
                        <test args> go to the test binaries (e.g. a name filter).
  demo [--all]          run examples/quickstart and examples/sa (with --all, every example
                        of examples/) on each runtime against a cluster
  bench [args..]        run aiopg-bench (release) against a benchmark-tuned cluster
                        (AIOPG_BENCH_DSN, AIOPG_BENCH_PG_BINDIR); with --smoke, an
                        unoptimised build runs every workload briefly
  fuzz [--seconds N] [--target NAME] [--require]
                        run the cargo-fuzz targets of fuzz/ (dsn, pgpass, mogrify,
                        server) for N seconds each (default 60) and print the
                        executions; needs nightly and cargo-fuzz, and says SKIPPED
                        without them (fails instead with --require)
  soak [--minutes N]    the pool soak (mixed load, backends killed at random; commits,
                        answers and connections checked) for N minutes in all (default 1),
                        split over the three runtimes
  fault-matrix          every fault at every phase of every operation on the three
                        runtimes (tests/integration/matrix.rs); writes docs/faults.md
                        from the verdicts the test recorded
  setup                 find PostgreSQL's server binaries, openssl and pgbouncer; as root
                        with apt-get, install the missing ones (creating and starting no
                        service), otherwise print the command to run. test-all-runtimes,
                        demo, bench and pg start do the same for what they need.
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
Tests promote, stop and start the failover pair's servers with pg_ctl
(AIOPG_TEST_PG_CTL), as `runuser -u postgres -- <pg_ctl> ...` when
AIOPG_TEST_PG_RUNAS is `postgres` (xtask runs as root), directly when it is
empty: `promote -w -D <standby datadir>`, `stop -m fast -w -D <datadir>`,
`start -w -D <datadir> -l <datadir>/postgres.log`. The cluster's own primary
and standby are shared by every test process: never stop or promote them.
Needs PostgreSQL's server binaries (Debian: apt-get install postgresql),
openssl (apt-get install openssl) and, for test-all-runtimes and
--pgbouncer, pgbouncer (apt-get install pgbouncer): as root on a machine
with apt-get, xtask installs them itself (see setup).
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    let result = match args.first().map(String::as_str) {
        Some("codegen") => codegen::run(&root(), args.iter().any(|a| a == "--check")).map(|()| 0),
        Some("pg") => pg::command(&root(), rest),
        Some("test-all-runtimes") => tasks::test_all_runtimes(&root(), rest),
        Some("demo") => tasks::demo(&root(), rest),
        Some("bench") => tasks::bench(&root(), rest),
        Some("fuzz") => fuzz::fuzz(&root(), rest),
        Some("soak") => tasks::soak(&root(), rest),
        Some("fault-matrix") => matrix::fault_matrix(&root()),
        Some("setup") => install::ensure(install::Needs { pgbouncer: true }).map(|()| {
            errln!("xtask: PostgreSQL's server binaries, openssl and pgbouncer are here");
            0
        }),
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
