//! `test-all-runtimes`, `demo` and `bench`: cargo runs around a throwaway cluster.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pg::{self, Cluster, Guard, Profile};
use crate::run::{self, Counts};
use crate::sys;
use crate::Result;

/// The runtimes aiopg supports, by their cargo feature names.
pub const RUNTIMES: [&str; 3] = ["tokio", "async-std", "smol"];
const ALL_RUNTIME_FEATURES: &str = "tokio,async-std,smol";

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

pub fn test_all_runtimes(root: &Path, args: &[String]) -> Result<i32> {
    sys::catch_termination();
    let mut test_args: Vec<String> = passthrough(args).to_vec();
    if std::io::stdout().is_terminal() && !test_args.iter().any(|a| a.starts_with("--color")) {
        // Test output goes through a pipe (to be counted): keep libtest's colours.
        test_args.push("--color=always".into());
    }

    let mut env: Vec<(String, String)> = Vec::new();
    let mut guard = None;
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
            errln!("xtask: starting a PostgreSQL cluster");
            let (cluster, started) = Cluster::start(
                &run_state_dir(root),
                Profile::Test,
                Some(std::process::id()),
            )?;
            guard = Some(Guard::new(&cluster, started));
            errln!(
                "xtask: cluster ready: {} (socket {}, log {})",
                cluster.dsn(),
                cluster.socket_dir.display(),
                cluster.log_file().display()
            );
            env.push(("AIOPG_TEST_DSN".into(), cluster.dsn()));
            env.push(("AIOPG_TEST_HOST".into(), "127.0.0.1".into()));
            env.push(("AIOPG_TEST_PORT".into(), cluster.port.to_string()));
            env.push((
                "AIOPG_TEST_SOCKET_DIR".into(),
                cluster.socket_dir.display().to_string(),
            ));
            env.push(("AIOPG_TEST_CLUSTER".into(), "xtask".into()));
            // For tests that run a private cluster of their own (tests/integration/pool_faults.rs).
            env.push((
                "AIOPG_TEST_PG_BINDIR".into(),
                cluster.bindir.display().to_string(),
            ));
            // The cluster's CA, server and client certificates and keys, for the TLS
            // tests (xtask/src/pki.rs lists the files). Not set against AIOPG_TEST_DSN's
            // server, whose certificates xtask does not know.
            env.push((
                "AIOPG_TEST_TLS_DIR".into(),
                cluster.tls_dir().display().to_string(),
            ));
        }
    }

    let mut suite = Suite {
        root,
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
    env: Vec<(String, String)>,
    totals: Counts,
    failures: Vec<String>,
}

impl Suite<'_> {
    fn run_all(&mut self, test_args: &[String]) {
        if sys::caught().is_some() {
            return;
        }
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
        outln!("== building integration tests (features {ALL_RUNTIME_FEATURES}) ==");
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
            self.step(&format!("integration tests on {runtime}"), &mut cmd);
        }
    }

    /// `cargo test -p aiopg --features <all runtimes> --tests`.
    fn integration_tests(&self) -> Command {
        let mut cmd = self.cargo();
        cmd.args([
            "test",
            "-p",
            "aiopg",
            "--features",
            ALL_RUNTIME_FEATURES,
            "--tests",
        ]);
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

pub fn demo(root: &Path) -> Result<i32> {
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
        outln!("== quickstart on {runtime} ==");
        let mut cmd = run::cargo();
        cmd.current_dir(root)
            .args(["run", "-q", "-p", "aiopg", "--example", "quickstart"])
            .args(["--no-default-features", "--features", runtime])
            .env("AIOPG_DSN", cluster.dsn());
        match run::run(&mut cmd, false) {
            Ok(outcome) if outcome.success() => {}
            Ok(outcome) => failures.push(format!("quickstart on {runtime} ({})", outcome.status)),
            Err(e) => failures.push(format!("quickstart on {runtime}: {e}")),
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
    let mut cmd = run::cargo();
    cmd.current_dir(root)
        .args(["run", "--release", "-p", "aiopg-bench", "--"])
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
