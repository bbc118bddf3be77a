//! Running child processes (cargo) so that Ctrl-C/SIGTERM reach them and xtask still
//! gets to clean up, optionally teeing libtest output while counting its results.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::sys;
use crate::Result;

/// How long a child gets to exit after a forwarded signal before it is killed.
const GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// Totals of libtest's `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

pub struct Outcome {
    pub status: ExitStatus,
    pub counts: Counts,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// The cargo binary that runs xtask (falls back to `cargo` on PATH).
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cmd` to completion in its own process group, forwarding termination signals
/// caught by xtask to that group. With `count_tests`, its stdout is streamed through
/// xtask and libtest's `test result:` lines are summed.
pub fn run(cmd: &mut Command, count_tests: bool) -> Result<Outcome> {
    cmd.stdin(Stdio::null()).process_group(0);
    if count_tests {
        cmd.stdout(Stdio::piped());
    }
    std::io::stdout().flush().ok();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("running {:?}: {e}", cmd.get_program()))?;
    let group = -(child.id() as i32);
    let reader = child
        .stdout
        .take()
        .map(|out| std::thread::spawn(move || tee_and_count(out)));

    let mut forwarded: Option<Instant> = None;
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(sig) = sys::caught() {
            match forwarded {
                None => {
                    sys::send(group, sig);
                    forwarded = Some(Instant::now());
                }
                Some(at) if !killed && at.elapsed() > GRACE => {
                    sys::send(group, sys::SIGKILL);
                    killed = true;
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(POLL);
    };
    if sys::caught().is_some() {
        // Whatever is left of the group (e.g. a test binary whose cargo died).
        sys::send(group, sys::SIGKILL);
    }
    let counts = match reader {
        Some(handle) => handle.join().unwrap_or_default(),
        None => Counts::default(),
    };
    Ok(Outcome { status, counts })
}

/// Copies `out` to xtask's stdout as it arrives and counts libtest results.
fn tee_and_count(mut out: impl Read) -> Counts {
    let mut counts = Counts::default();
    let mut buf = [0u8; 8192];
    let mut line = Vec::new();
    let stdout = std::io::stdout();
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        {
            let mut lock = stdout.lock();
            let _ = lock.write_all(&buf[..n]);
            let _ = lock.flush();
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                if let Some(c) = parse_result_line(&String::from_utf8_lossy(&line)) {
                    counts.add(c);
                }
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        // Keep whatever xtask prints next on a line of its own.
        let _ = writeln!(stdout.lock());
        if let Some(c) = parse_result_line(&String::from_utf8_lossy(&line)) {
            counts.add(c);
        }
    }
    counts
}

/// Parses `test result: ok. 5 passed; 1 failed; 0 ignored; ...` (colours allowed).
pub fn parse_result_line(line: &str) -> Option<Counts> {
    let line = strip_ansi(line);
    let rest = line.trim().strip_prefix("test result:")?;
    let words: Vec<&str> = rest
        .split(|c: char| c.is_whitespace() || c == ';' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let mut counts = Counts::default();
    let mut found = false;
    for pair in words.windows(2) {
        let Ok(n) = pair[0].parse::<u64>() else {
            continue;
        };
        match pair[1] {
            "passed" => counts.passed = n,
            "failed" => counts.failed = n,
            _ => continue,
        }
        found = true;
    }
    found.then_some(counts)
}

/// Removes ANSI escape sequences (`ESC [ ... final-byte`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ok_and_failed_lines() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"
            ),
            Some(Counts { passed: 12, failed: 0 })
        );
        assert_eq!(
            parse_result_line("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured"),
            Some(Counts {
                passed: 3,
                failed: 2
            })
        );
    }

    #[test]
    fn parses_coloured_lines() {
        let line = "test result: \x1b[32mok\x1b[0m. 4 passed; 0 failed; 0 ignored";
        assert_eq!(
            parse_result_line(line),
            Some(Counts {
                passed: 4,
                failed: 0
            })
        );
    }

    #[test]
    fn ignores_other_lines() {
        assert_eq!(parse_result_line("test foo ... ok"), None);
        assert_eq!(parse_result_line("running 3 tests"), None);
        assert_eq!(parse_result_line("3 passed, 1 failed"), None);
    }
}
