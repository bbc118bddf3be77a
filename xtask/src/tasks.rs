//! `test-all-runtimes`, `demo` and `bench`: cargo runs around a throwaway cluster.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::pg::{self, Cluster, Guard, Profile};
use crate::replica::FailoverPair;
use crate::run::{self, Counts};
use crate::sys;
use crate::Result;

/// The runtimes aiopg supports, by their cargo feature names.
pub const RUNTIMES: [&str; 3] = ["tokio", "async-std", "smol"];
const ALL_RUNTIME_FEATURES: &str = "tokio,async-std,smol";

/// Set to 1, `test-all-runtimes` makes no failover pairs (saving a few seconds per
/// runtime in filtered runs); tests needing one skip or fail for want of
/// AIOPG_TEST_FAILOVER_*.
const NO_FAILOVER: &str = "AIOPG_TEST_NO_FAILOVER";

fn no_failover_pairs() -> bool {
    std::env::var(NO_FAILOVER).is_ok_and(|v| v.trim() == "1")
}

/// A state folder private to this xtask process.
fn run_state_dir(root: &Path) -> PathBuf {
    pg::state_root(root).join(format!("run-{}", std::process::id()))
}

fn has_bench(root: &Path) -> bool {
    root.join("bench/Cargo.toml").is_file()
}

/// The exit code after a termination signal (128 + signal number).
fn interrupted() -> Option<i32> {
    sys::caught().map(|sig| 128 + sig)
}

/// Arguments after an optional leading `--`.
fn passthrough(args: &[String]) -> &[String] {
    match args.first().map(String::as_str) {
        Some("--") => &args[1..],
        _ => args,
    }
}

/// `cargo xtask soak [--minutes N]`: the pool soak (`pool_faults::soak`: mixed load while its
/// backends are killed at random) for N minutes in all (default 1), split over the three
/// runtimes, against a throwaway cluster; each runtime prints its counts.
pub fn soak(root: &Path, args: &[String]) -> Result<i32> {
    let mut minutes = 1.0f64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => {
                minutes = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|m: &f64| *m > 0.0)
                    .ok_or("--minutes takes a positive number")?
            }
            other => return Err(format!("soak: unknown argument {other:?}").into()),
        }
    }
    let per_runtime = ((minutes * 60.0 / 3.0).round() as u64).max(5);
    errln!("xtask: soak of {per_runtime} s on each of tokio, async-std and smol");
    // Read by the test process (and only there): the soak's length.
    std::env::set_var("AIOPG_SOAK_SECS", per_runtime.to_string());
    std::env::set_var(NO_FAILOVER, "1");
    let args: Vec<String> = [
        "--",
        "pool_faults::soak",
        "--ignored",
        "--nocapture",
        "--exact",
    ]
    .map(String::from)
    .to_vec();
    test_all_runtimes(root, &args)
}

pub fn test_all_runtimes(root: &Path, args: &[String]) -> Result<i32> {
    sys::catch_termination();
    let mut test_args: Vec<String> = passthrough(args).to_vec();
    if std::io::stdout().is_terminal() && !test_args.iter().any(|a| a.starts_with("--color")) {
        // Test output goes through a pipe (to be counted): keep libtest's colours.
        test_args.push("--color=always".into());
    }

    let mut env: Vec<(String, String)> = Vec::new();
    let mut guard = None;
    let mut ours = None;
    match std::env::var("AIOPG_TEST_DSN")
        .ok()
        .filter(|d| !d.trim().is_empty())
    {
        Some(dsn) => {
            errln!("xtask: AIOPG_TEST_DSN is set: testing against `{dsn}`, starting no cluster");
            let (host, port) = dsn_host_port(&dsn);
            for (var, value) in [("AIOPG_TEST_HOST", host), ("AIOPG_TEST_PORT", port)] {
                if let (None, Some(value)) = (std::env::var_os(var), value) {
                    env.push((var.into(), value));
                }
            }
        }
        None => {
            // Everything the run needs, in one apt-get run when something is missing.
            crate::install::ensure(crate::install::Needs { pgbouncer: true })?;
            errln!("xtask: starting a PostgreSQL cluster");
            let clock = Instant::now();
            let (mut cluster, started) = Cluster::start(
                &run_state_dir(root),
                Profile::Test,
                Some(std::process::id()),
            )?;
            guard = Some(Guard::new(&cluster, started));
            errln!(
                "xtask: cluster ready in {:.1}s: {} (socket {}, log {})",
                clock.elapsed().as_secs_f64(),
                cluster.dsn(),
                cluster.socket_dir.display(),
                cluster.log_file().display()
            );
            // On failure the guard stops what was started.
            let clock = Instant::now();
            cluster.add_standby()?;
            if let Some(standby) = &cluster.standby {
                errln!(
                    "xtask: standby ready in {:.1}s: port {} (log {})",
                    clock.elapsed().as_secs_f64(),
                    standby.port,
                    standby.log_file().display()
                );
            }
            let clock = Instant::now();
            cluster.add_pgbouncer()?;
            if let Some(bouncer) = &cluster.pgbouncer {
                errln!(
                    "xtask: pgbouncer ready in {:.1}s: port {} (log {})",
                    clock.elapsed().as_secs_f64(),
                    bouncer.port,
                    bouncer.log_file().display()
                );
            }
            // The primary, its TLS files, the server binaries and pg_ctl, the standby,
            // PgBouncer (see Cluster::test_env).
            env.extend(cluster.test_env());
            env.push(("AIOPG_TEST_CLUSTER".into(), "xtask".into()));
            // For `"$AIOPG_TEST_XTASK" pg failover-reset "$AIOPG_TEST_FAILOVER_DIR"`.
            if let Some(xtask) = pg::xtask_exe() {
                env.push(("AIOPG_TEST_XTASK".into(), xtask.display().to_string()));
            }
            ours = Some(cluster);
        }
    }

    let mut suite = Suite {
        root,
        cluster: ours,
        pairs: PairMaker::default(),
        env,
        totals: Counts::default(),
        failures: Vec::new(),
    };
    suite.run_all(&test_args);

    if let Some(mut guard) = guard {
        guard.stop();
    }
    for failure in &suite.failures {
        errln!("xtask: FAILED: {failure}");
    }
    if let Some(sig) = sys::caught() {
        errln!("xtask: interrupted by signal {sig}");
    }
    outln!(
        "{} passed, {} failed",
        suite.totals.passed,
        suite.totals.failed
    );
    Ok(interrupted().unwrap_or(if suite.failures.is_empty() { 0 } else { 1 }))
}

struct Suite<'a> {
    root: &'a Path,
    /// The cluster xtask started (none against AIOPG_TEST_DSN's server): each runtime's
    /// test process gets a failover pair of its own beside it.
    cluster: Option<Cluster>,
    pairs: PairMaker,
    env: Vec<(String, String)>,
    totals: Counts,
    failures: Vec<String>,
}

impl Suite<'_> {
    fn run_all(&mut self, test_args: &[String]) {
        if sys::caught().is_some() {
            return;
        }
        // Made while the unit tests and the build run (they use no server), so that
        // the runtimes do not wait for them.
        if let Some(cluster) = &self.cluster {
            if no_failover_pairs() {
                errln!("xtask: {NO_FAILOVER}=1: no failover pairs");
            } else {
                self.pairs = PairMaker::start(cluster);
            }
        }
        self.run_steps(test_args);
        // Before the cluster is stopped: no server may start in its folder after.
        self.pairs.finish();
    }

    fn run_steps(&mut self, test_args: &[String]) {
        outln!("== unit tests ==");
        let mut unit = self.cargo();
        unit.args(["test", "--workspace"]);
        if has_bench(self.root) {
            unit.args(["--exclude", "aiopg-bench"]);
        }
        unit.args(["--lib", "--bins", "--no-fail-fast", "--"])
            .args(test_args);
        self.step("unit tests", &mut unit);

        if sys::caught().is_some() {
            return;
        }
        outln!("== building integration tests (features {ALL_RUNTIME_FEATURES},sa) ==");
        let mut build = self.integration_tests();
        build.arg("--no-run");
        if !self.step("building the integration tests", &mut build) {
            return;
        }

        for runtime in RUNTIMES {
            if sys::caught().is_some() {
                return;
            }
            outln!("== integration tests on runtime: {runtime} ==");
            let mut cmd = self.integration_tests();
            cmd.env("AIOPG_TEST_RUNTIME", runtime)
                .args(["--no-fail-fast", "--", "--test-threads=2"])
                .args(test_args);
            let pair = self.failover_pair(runtime);
            if let Some(pair) = &pair {
                cmd.envs(pair.env());
            }
            self.step(&format!("integration tests on {runtime}"), &mut cmd);
            if let (Some(pair), Some(cluster)) = (&pair, &self.cluster) {
                if let Err(e) = pair.destroy(&cluster.bindir) {
                    errln!("xtask: deleting the failover pair of {runtime}: {e}");
                }
            }
        }
    }

    /// The fresh failover pair of one runtime's test process, whose failover tests may
    /// stop, promote and restart its servers (see xtask/src/replica.rs); none against
    /// AIOPG_TEST_DSN's server or with AIOPG_TEST_NO_FAILOVER=1. A failure is
    /// recorded, and the tests still run (those needing the pair fail or skip for want
    /// of AIOPG_TEST_FAILOVER_*).
    fn failover_pair(&mut self, runtime: &str) -> Option<FailoverPair> {
        let clock = Instant::now();
        let made = self.pairs.take(runtime)?;
        let waited = clock.elapsed();
        match made {
            Ok((pair, took)) => {
                errln!(
                    "xtask: failover pair for {runtime} (made in {:.1}s in the background, \
                     waited {:.1}s for it): primary port {}, standby port {}",
                    took.as_secs_f64(),
                    waited.as_secs_f64(),
                    pair.primary.port,
                    pair.standby.port
                );
                Some(pair)
            }
            Err(e) => {
                self.failures
                    .push(format!("starting the failover pair for {runtime}: {e}"));
                None
            }
        }
    }

    /// `cargo test -p aiopg --features <all runtimes> --tests`.
    fn integration_tests(&self) -> Command {
        let mut cmd = self.cargo();
        cmd.args(["test", "-p", "aiopg", "--features"])
            .arg(format!("{ALL_RUNTIME_FEATURES},sa"))
            .arg("--tests");
        cmd
    }

    fn cargo(&self) -> Command {
        let mut cmd = run::cargo();
        cmd.current_dir(self.root);
        for (var, value) in &self.env {
            cmd.env(var, value);
        }
        cmd
    }

    /// Runs one cargo invocation, adding its counts; false (and a recorded failure)
    /// when it failed in any way.
    fn step(&mut self, what: &str, cmd: &mut Command) -> bool {
        match run::run(cmd, true) {
            Ok(outcome) => {
                self.totals.add(outcome.counts);
                if outcome.success() {
                    return true;
                }
                self.failures.push(format!("{what} ({})", outcome.status));
            }
            Err(e) => self.failures.push(format!("{what}: {e}")),
        }
        false
    }
}

/// One failover pair's making: the pair and how long it took, or what failed.
type Made = std::result::Result<(FailoverPair, Duration), String>;

/// Makes a failover pair per runtime in a background thread (see
/// [`Suite::failover_pair`]), handing each over as soon as it is made. Dropping it
/// waits for the thread, so that no server starts in the cluster's folder once that
/// is being stopped.
#[derive(Default)]
struct PairMaker {
    thread: Option<JoinHandle<()>>,
    received: Option<Receiver<(&'static str, Made)>>,
    /// Pairs received while waiting for another runtime's.
    made: Vec<(&'static str, Made)>,
}

impl PairMaker {
    /// Starts making the pairs, in [`RUNTIMES`] order; stops early on a termination
    /// signal.
    fn start(cluster: &Cluster) -> PairMaker {
        let cluster = cluster.clone();
        let (send, received) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            for runtime in RUNTIMES {
                if sys::caught().is_some() {
                    break;
                }
                let clock = Instant::now();
                let pair = FailoverPair::create(&cluster, runtime)
                    .map(|pair| (pair, clock.elapsed()))
                    .map_err(|e| e.to_string());
                if send.send((runtime, pair)).is_err() {
                    break;
                }
            }
        });
        PairMaker {
            thread: Some(thread),
            received: Some(received),
            made: Vec::new(),
        }
    }

    /// The pair made for `runtime`, waiting for it; `None` when none was asked for or
    /// the thread stopped before it (interrupted).
    fn take(&mut self, runtime: &str) -> Option<Made> {
        loop {
            if let Some(at) = self.made.iter().position(|(r, _)| *r == runtime) {
                return Some(self.made.remove(at).1);
            }
            let next = self.received.as_ref()?.recv();
            match next {
                Ok(made) => self.made.push(made),
                Err(_) => {
                    // The thread is done (or panicked) without this runtime's pair.
                    self.received = None;
                    if self.join_thread() {
                        return None;
                    }
                    return Some(Err("the thread making it panicked".into()));
                }
            }
        }
    }

    /// Waits for the thread, if it runs; false when it panicked.
    fn join_thread(&mut self) -> bool {
        match self.thread.take() {
            Some(thread) => thread.join().is_ok(),
            None => true,
        }
    }

    /// Waits for the thread (pairs not taken are stopped with the cluster).
    fn finish(&mut self) {
        self.received = None;
        if !self.join_thread() {
            errln!("xtask: the thread making the failover pairs panicked");
        }
    }
}

impl Drop for PairMaker {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Host and port of a key=value or URL connection string, when they can be told.
fn dsn_host_port(dsn: &str) -> (Option<String>, Option<String>) {
    let dsn = dsn.trim();
    let url = dsn
        .strip_prefix("postgres://")
        .or_else(|| dsn.strip_prefix("postgresql://"));
    if let Some(rest) = url {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, after)) => (h, after.strip_prefix(':')),
                None => (v6, None),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        return (non_empty(host), port.and_then(non_empty));
    }
    let mut host = None;
    let mut port = None;
    for pair in dsn.split_whitespace() {
        match pair.split_once('=') {
            Some(("host" | "hostaddr", v)) if host.is_none() => {
                host = Some(v.trim_matches('\'').to_string())
            }
            Some(("port", v)) => port = Some(v.trim_matches('\'').to_string()),
            _ => {}
        }
    }
    (host, port)
}

/// The examples `demo --all` runs, with the features each needs besides the runtime's, and
/// the runtimes it runs on (`None`: all three).
const EXAMPLES: &[(&str, &str, Option<&str>)] = &[
    ("quickstart", "", None),
    ("sa", "sa", None),
    ("listen_worker", "", None),
    ("csv_import", "", None),
    ("export_stream", "", None),
    ("tls_verify_full", "", None),
    ("web_axum", "", Some("tokio")),
    ("web_smol", "", Some("smol")),
];

/// `cargo xtask demo [--all]`: the quickstart and the sa example (with `--all`, every
/// example) on each runtime, against a throwaway cluster.
pub fn demo(root: &Path, args: &[String]) -> Result<i32> {
    let all = match args {
        [] => false,
        [a] if a == "--all" => true,
        other => return Err(format!("demo: unknown arguments {other:?} (only --all)").into()),
    };
    sys::catch_termination();
    errln!("xtask: starting a PostgreSQL cluster");
    let (cluster, started) = Cluster::start(
        &run_state_dir(root),
        Profile::Test,
        Some(std::process::id()),
    )?;
    let mut guard = Guard::new(&cluster, started);
    let mut failures = Vec::new();
    for runtime in RUNTIMES {
        if sys::caught().is_some() {
            break;
        }
        for &(example, extra, only) in EXAMPLES {
            if (!all && !matches!(example, "quickstart" | "sa"))
                || only.is_some_and(|r| r != runtime)
            {
                continue;
            }
            let features = if extra.is_empty() {
                runtime.to_string()
            } else {
                format!("{runtime},{extra}")
            };
            outln!("== {example} on {runtime} ==");
            let mut cmd = run::cargo();
            cmd.current_dir(root)
                .args(["run", "-q", "-p", "aiopg", "--example", example])
                .args(["--no-default-features", "--features"])
                .arg(&features)
                .env("AIOPG_DSN", cluster.dsn())
                .env(
                    "AIOPG_TLS_ROOT_CERT",
                    cluster.tls_dir().join(crate::pki::CA_CERT),
                );
            match run::run(&mut cmd, false) {
                Ok(outcome) if outcome.success() => {}
                Ok(outcome) => {
                    failures.push(format!("{example} on {runtime} ({})", outcome.status))
                }
                Err(e) => failures.push(format!("{example} on {runtime}: {e}")),
            }
        }
    }
    guard.stop();
    for failure in &failures {
        errln!("xtask: FAILED: {failure}");
    }
    Ok(interrupted().unwrap_or(if failures.is_empty() { 0 } else { 1 }))
}

pub fn bench(root: &Path, args: &[String]) -> Result<i32> {
    if !has_bench(root) {
        errln!("xtask: bench/Cargo.toml does not exist: there is no aiopg-bench crate to run");
        return Ok(1);
    }
    sys::catch_termination();
    errln!("xtask: starting a benchmark PostgreSQL cluster");
    let (cluster, started) = Cluster::start(
        &pg::state_root(root).join("bench"),
        Profile::Bench,
        Some(std::process::id()),
    )?;
    if !started {
        errln!("xtask: another `cargo xtask bench` runs a cluster; sharing it");
    }
    let mut guard = Guard::new(&cluster, started);
    errln!("xtask: benchmark cluster ready: {}", cluster.dsn());
    // A smoke run checks that every workload runs and reports, not how fast: an unoptimised
    // build does that, and builds in a fraction of a release build's time (most of CI's
    // smoke step was the release build of aiopg and its peers).
    let smoke = args.iter().any(|a| a == "--smoke");
    let mut cmd = run::cargo();
    cmd.current_dir(root).arg("run");
    if !smoke {
        cmd.arg("--release");
    }
    cmd.args(["-p", "aiopg-bench", "--"])
        .args(passthrough(args))
        .env("AIOPG_BENCH_DSN", cluster.dsn())
        .env("AIOPG_BENCH_PG_BINDIR", &cluster.bindir)
        .env("AIOPG_BENCH_PG_PID", cluster.pid.to_string())
        .env("AIOPG_BENCH_TLS_DIR", cluster.tls_dir());
    let outcome = run::run(&mut cmd, false);
    guard.stop();
    let outcome = outcome?;
    if let Some(code) = interrupted() {
        return Ok(code);
    }
    if outcome.success() {
        Ok(0)
    } else {
        errln!("xtask: FAILED: aiopg-bench ({})", outcome.status);
        Ok(outcome.status.code().filter(|&c| c != 0).unwrap_or(1))
    }
}

#[cfg(test)]
mod tests {
    use super::dsn_host_port;

    fn some(host: &str, port: &str) -> (Option<String>, Option<String>) {
        (Some(host.into()), Some(port.into()))
    }

    #[test]
    fn host_and_port_of_key_value_dsn() {
        assert_eq!(
            dsn_host_port("host=127.0.0.1 port=5433 user=postgres dbname=postgres"),
            some("127.0.0.1", "5433")
        );
        assert_eq!(dsn_host_port("user=postgres"), (None, None));
    }

    #[test]
    fn host_and_port_of_url() {
        assert_eq!(
            dsn_host_port("postgres://u:pw@db.local:6000/x?sslmode=disable"),
            some("db.local", "6000")
        );
        assert_eq!(
            dsn_host_port("postgresql://[::1]:5432/postgres"),
            some("::1", "5432")
        );
        assert_eq!(
            dsn_host_port("postgres://localhost/postgres"),
            (Some("localhost".into()), None)
        );
    }
}
