//! `cargo xtask fuzz [--seconds N] [--target NAME] [--require]`: runs every cargo-fuzz target
//! of `fuzz/` for N seconds (default 60) and reports executions per target.
//!
//! Fuzzing needs a nightly toolchain and cargo-fuzz. Without them the command says so and
//! succeeds (a stable-only machine stays green), unless `--require` is given. Each target
//! starts from its checked-in seeds (`fuzz/corpus/<target>`, left unchanged); what the fuzzer
//! finds goes to a scratch corpus, and crashes to `fuzz/artifacts/<target>/`. Panics, hangs
//! (`-timeout=10`) and runaway memory (`-rss_limit_mb=2048`) all count as crashes.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::run;
use crate::Result;

/// The targets, in the order they run.
pub const TARGETS: [&str; 4] = ["dsn", "pgpass", "mogrify", "server"];

/// `cargo +nightly` through rustup, without the variables of the cargo running xtask.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly");
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn works(mut cmd: Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// libFuzzer's "Done N runs in S second(s)" line, as (runs, seconds).
fn done_line(log: &str) -> Option<(u64, u64)> {
    log.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("Done ")?;
        let mut words = rest.split_whitespace();
        let runs = words.next()?.parse().ok()?;
        let secs = words.nth(2)?.parse().ok()?;
        Some((runs, secs))
    })
}

pub fn fuzz(root: &Path, args: &[String]) -> Result<i32> {
    let mut seconds = 60u64;
    let mut only: Option<String> = None;
    let mut require = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--seconds takes a number")?
            }
            "--target" => only = Some(it.next().ok_or("--target takes a name")?.clone()),
            "--require" => require = true,
            other => return Err(format!("fuzz: unknown argument {other:?}").into()),
        }
    }
    let mut version = nightly_cargo();
    version.arg("--version");
    let mut fuzz_help = nightly_cargo();
    fuzz_help.args(["fuzz", "--version"]);
    let missing = if !works(version) {
        Some("a nightly toolchain (rustup toolchain install nightly)")
    } else if !works(fuzz_help) {
        Some("cargo-fuzz (cargo install cargo-fuzz)")
    } else {
        None
    };
    if let Some(what) = missing {
        if require {
            errln!("xtask: FAILED: fuzzing needs {what}");
            return Ok(1);
        }
        errln!("xtask: fuzzing SKIPPED: it needs {what}; nothing was fuzzed");
        return Ok(0);
    }
    let scratch = std::env::temp_dir().join(format!("aiopg-fuzz-{}", std::process::id()));
    let mut failed = Vec::new();
    let mut report = Vec::new();
    for target in TARGETS {
        if only.as_deref().is_some_and(|o| o != target) {
            continue;
        }
        let work = scratch.join(target);
        std::fs::create_dir_all(&work)?;
        let seeds = root.join("fuzz/corpus").join(target);
        let log_path = scratch.join(format!("{target}.log"));
        let log = std::fs::File::create(&log_path)?;
        errln!("xtask: fuzzing `{target}` for {seconds} s");
        let mut cmd = nightly_cargo();
        cmd.current_dir(root)
            // No sanitizer: every aiopg crate forbids `unsafe`, so AddressSanitizer would slow
            // the runs (and the build) threefold to watch only the dependencies.
            .args(["fuzz", "run", "--release", "--sanitizer", "none", target])
            .arg(&work)
            .arg(&seeds)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-max_len=8192",
                "-rss_limit_mb=2048",
                "-timeout=10",
                "-print_final_stats=1",
            ])
            .stderr(log);
        let outcome = run::run(&mut cmd, false)?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        match (outcome.success(), done_line(&text)) {
            (true, Some((runs, secs))) => {
                report.push(format!("{target}: {runs} executions in {secs} s, no crash"));
            }
            _ => {
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                errln!(
                    "xtask: `{target}` failed ({}); the end of its log ({}):",
                    outcome.status,
                    log_path.display()
                );
                for l in tail.into_iter().rev() {
                    errln!("  {l}");
                }
                failed.push(target);
            }
        }
    }
    for line in &report {
        outln!("{line}");
    }
    if failed.is_empty() {
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(0)
    } else {
        errln!(
            "xtask: FAILED: fuzz targets {failed:?} (crash inputs in fuzz/artifacts/; reproduce \
             with `cargo +nightly fuzz run <target> <input>`)"
        );
        Ok(1)
    }
}

#[cfg(test)]
mod tests {
    use super::done_line;

    #[test]
    fn libfuzzer_totals_are_read() {
        let log = "#1024\tpulse  cov: 10\nDone 1234567 runs in 61 second(s)\nstat::x: 1\n";
        assert_eq!(done_line(log), Some((1_234_567, 61)));
        assert_eq!(done_line("crashed"), None);
    }
}
