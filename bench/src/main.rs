//! `cargo xtask bench`: aiopg beside tokio-postgres, sqlx and pgbench, measured in one run.
//!
//! The parent process runs every measurement in a child process (`--child`), pinned to a core
//! with `taskset`: the server is pinned to core 0, and each workload runs with the client on
//! the same core and on the other one, because on a 2-core machine that placement alone moves
//! single-connection results several-fold. Contenders alternate within every round and each
//! figure is the median over rounds. `--instructions` runs each client once under callgrind
//! and reports client instructions per operation, which repeat exactly from run to run.
//!
//! The `@<n>ms` workloads run their base workload through a loopback proxy adding `n` ms to
//! every round trip ([`delay`]), so that what a client does per round trip shows.
//!
//! Environment (set by `cargo xtask bench`): `AIOPG_BENCH_DSN`, `AIOPG_BENCH_PG_BINDIR`
//! (pgbench, psql) and `AIOPG_BENCH_PG_PID` (the postmaster, to pin).

mod child;
mod connect;
mod copy;
mod delay;
mod fetch;
mod insert;
mod latency;
mod notify;
mod pipeline;
mod pool;
mod report;
mod sa;
mod stream;
mod tpcb;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use child::{Amount, Job};
use report::{Report, Sample};

const RUNTIMES: [&str; 3] = ["tokio", "async-std", "smol"];
const WORKLOADS: &[&str] = &[
    "latency",
    "latency-tls",
    "connect",
    "connect-tls",
    "pipeline",
    "fetch-1m",
    "fetch-1m-tls",
    "stream-5m",
    "insert-batch",
    "pool",
    "acquire",
    "copy-in",
    "copy-out",
    "notify",
    "sa-select",
    "sa-select-1k",
    "sa-stream-1m",
    "tpcb",
    "latency@0ms",
    "latency@1ms",
    "latency@5ms",
    "tpcb@0ms",
    "tpcb@1ms",
    "tpcb@5ms",
    "pool@0ms",
    "pool@1ms",
    "pool@5ms",
];
const LATER: &[(&str, &str)] = &[];

/// Where the client runs relative to the server (pinned to core 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    SameCore,
    OtherCore,
    Unpinned,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::SameCore => "same core",
            Layout::OtherCore => "other cores",
            Layout::Unpinned => "unpinned",
        }
    }
    fn cpu(self) -> Option<&'static str> {
        match self {
            Layout::SameCore => Some("0"),
            Layout::OtherCore => Some("1"),
            Layout::Unpinned => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    dsn: String,
    bindir: Option<String>,
    runtimes: Vec<&'static str>,
    rounds: usize,
    seconds: f64,
    smoke: bool,
    instructions: bool,
    layouts: Vec<Layout>,
    json: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: aiopg-bench [WORKLOAD..] [--runtime tokio|async-std|smol|all] [--rounds N] \
         [--seconds S] [--layout same|other|both|none] [--instructions] [--smoke] [--json FILE]\n\
         workloads: {} (and <{}>@<n>ms for any round-trip delay n)",
        WORKLOADS.join(", "),
        delay::DELAYABLE.join("|")
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return child_main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("--proxy") {
        return proxy_main(&args[1..]);
    }
    let mut it = args.into_iter();
    let mut workloads: Vec<String> = Vec::new();
    let mut runtimes = RUNTIMES.to_vec();
    let mut rounds = 5;
    let mut seconds = 2.0f64;
    let mut smoke = false;
    let mut instructions = false;
    let mut layouts = vec![Layout::SameCore, Layout::OtherCore];
    let mut json = None;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runtime" => {
                runtimes = match it.next().as_deref() {
                    Some("all") => RUNTIMES.to_vec(),
                    Some("tokio") => vec!["tokio"],
                    Some("async-std") => vec!["async-std"],
                    Some("smol") => vec!["smol"],
                    _ => usage(),
                }
            }
            "--rounds" => {
                rounds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--layout" => {
                layouts = match it.next().as_deref() {
                    Some("same") => vec![Layout::SameCore],
                    Some("other") => vec![Layout::OtherCore],
                    Some("both") => vec![Layout::SameCore, Layout::OtherCore],
                    Some("none") => vec![Layout::Unpinned],
                    _ => usage(),
                }
            }
            "--instructions" => instructions = true,
            "--smoke" => smoke = true,
            "--json" => json = Some(it.next().unwrap_or_else(|| usage())),
            "-h" | "--help" => usage(),
            w if !w.starts_with('-') => workloads.push(w.to_string()),
            _ => usage(),
        }
    }
    if smoke {
        rounds = 1;
        layouts = vec![Layout::Unpinned];
    }
    if workloads.is_empty() {
        workloads = WORKLOADS.iter().map(|s| s.to_string()).collect();
        if smoke {
            // One delayed workload checks the delay proxy; the others only repeat it slower.
            workloads.retain(|w| !w.contains('@') || w == "latency@1ms");
            println!("smoke: of the @<delay> workloads, only latency@1ms runs");
        }
        for (w, needs) in LATER {
            println!("skipping `{w}`: it needs {needs}, not built yet");
        }
    }
    let dsn = std::env::var("AIOPG_BENCH_DSN").unwrap_or_else(|_| {
        eprintln!("AIOPG_BENCH_DSN is not set: run the benchmarks with `cargo xtask bench`");
        std::process::exit(2)
    });
    // The peers connect in plaintext (tokio-postgres with NoTls, sqlx without TLS): so does
    // aiopg, unless the DSN asks otherwise (its default, prefer, would use the cluster's TLS).
    let dsn = if dsn_value(&dsn, "sslmode").is_none() {
        format!("{dsn} sslmode=disable")
    } else {
        dsn
    };
    if layouts != [Layout::Unpinned] {
        pin_server();
    }
    let s = Settings {
        dsn,
        bindir: std::env::var("AIOPG_BENCH_PG_BINDIR").ok(),
        runtimes,
        rounds,
        seconds,
        smoke,
        instructions,
        layouts,
        json,
    };
    let mut report = Report::default();
    for w in &workloads {
        if !known(w) {
            match LATER.iter().find(|(n, _)| n == w) {
                Some((_, needs)) => println!("skipping `{w}`: it needs {needs}, not built yet"),
                None => {
                    eprintln!("unknown workload `{w}`");
                    usage()
                }
            }
            continue;
        }
        if s.instructions {
            instructions_for(&s, w, &mut report);
        } else {
            wall_time_for(&s, w, &mut report);
        }
    }
    report.print();
    if let Some(path) = &s.json {
        std::fs::write(path, report.to_json()).expect("write the JSON report");
        println!("\nwrote {path}");
    }
}

/// Whether `workload` is one of [`WORKLOADS`], or a delayable one at another delay.
fn known(workload: &str) -> bool {
    if WORKLOADS.contains(&workload) {
        return true;
    }
    let (base, rtt) = delay::split(workload);
    rtt.is_some() && delay::DELAYABLE.contains(&base)
}

/// The client contenders of a workload: (contender, runtime).
fn contenders(s: &Settings, workload: &str) -> Vec<(&'static str, &'static str)> {
    let mut v = Vec::new();
    // `<workload>@<n>ms` has the contenders of its base workload.
    let (workload, _) = delay::split(workload);
    if workload == "tpcb" {
        // Interactive and pipelined transactions on 8 connections, beside the pooled peers.
        for &rt in &s.runtimes {
            v.push(("aiopg", rt));
            v.push(("aiopg-pipelined", rt));
            if rt == "tokio" {
                v.push(("deadpool-postgres", "tokio"));
            }
            v.push(("sqlx", rt));
        }
        return v;
    }
    if workload.starts_with("sa-") {
        // aiopg.sa's layer beside the plain connection running the same statement: as SQL
        // text written once, and built with sea-query on every operation as aiopg.sa does
        // (which isolates the layer's own cost from the builder's).
        for &rt in &s.runtimes {
            v.push(("aiopg-sa", rt));
            v.push(("aiopg", rt));
            if workload != "sa-stream-1m" {
                v.push(("aiopg-sea-query", rt));
            }
        }
        return v;
    }
    for &rt in &s.runtimes {
        v.push(("aiopg", rt));
        if workload == "pipeline" || workload == "latency" {
            v.push(("aiopg-driver", rt));
        }
        if workload == "pipeline" {
            v.push(("aiopg-pipeline", rt));
            v.push(("aiopg-tasks", rt));
            v.push(("aiopg-driver-tasks", rt));
        }
        let copy = workload == "copy-in" || workload == "copy-out";
        if copy {
            v.push(("aiopg-binary", rt));
        }
        if rt == "tokio" {
            let pooled = workload == "pool" || workload == "acquire";
            v.push((
                if pooled {
                    "deadpool-postgres"
                } else {
                    "tokio-postgres"
                },
                "tokio",
            ));
            if workload == "pipeline" {
                v.push(("tokio-postgres-tasks", "tokio"));
            }
            if copy {
                v.push(("tokio-postgres-binary", "tokio"));
            }
        }
        if workload != "pipeline" {
            // sqlx cannot have several queries in flight on one connection.
            v.push(("sqlx", rt));
        }
        if workload == "stream-5m" {
            // The second table: aiopg's named cursor and the peers' buffering APIs.
            v.push(("aiopg-cursor", rt));
            if rt == "tokio" {
                v.push(("tokio-postgres-buffered", "tokio"));
            }
            v.push(("sqlx-buffered", rt));
        }
    }
    v
}

/// pgbench's tables for `tpcb`, created once per run (before the first tpcb measurement).
fn tpcb_tables(s: &Settings) -> &'static Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bindir = s
            .bindir
            .as_deref()
            .ok_or("AIOPG_BENCH_PG_BINDIR is not set: pgbench creates its tables")?;
        let pgbench = format!("{bindir}/pgbench");
        if !std::path::Path::new(&pgbench).is_file() {
            return Err(format!(
                "{pgbench} does not exist: pgbench creates its tables"
            ));
        }
        println!(
            "tpcb: creating pgbench's tables at scale {} (pgbench -i)",
            tpcb::SCALE
        );
        let layout = s.layouts.first().copied().unwrap_or(Layout::Unpinned);
        let out = pinned(layout, &pgbench)
            .args(["-i", "-q", "-s", &tpcb::SCALE.to_string()])
            .args(conn_args(s).ok_or("the DSN lacks host, port or user")?)
            .arg(dsn_value(&s.dsn, "dbname").ok_or("the DSN lacks dbname")?)
            .output()
            .map_err(|e| format!("starting {pgbench}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pgbench -i failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    })
}

/// False (having said why) when `workload` cannot run: `tpcb` without pgbench's tables.
fn ready(s: &Settings, workload: &str) -> bool {
    if delay::split(workload).0 != "tpcb" {
        return true;
    }
    match tpcb_tables(s) {
        Ok(()) => true,
        Err(e) => {
            println!("skipping `{workload}`: {e}");
            false
        }
    }
}

fn wall_time_for(s: &Settings, workload: &str, report: &mut Report) {
    if !ready(s, workload) {
        return;
    }
    println!(
        "{workload}: {} round(s), layouts: {}",
        s.rounds,
        s.layouts
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let amount = if s.smoke {
        Amount::Count(match delay::split(workload).0 {
            "fetch-1m" | "stream-5m" | "copy-in" | "copy-out" | "notify" | "sa-stream-1m" => 1000,
            _ => 200,
        })
    } else {
        Amount::Seconds(s.seconds)
    };
    for round in 0..s.rounds {
        for &layout in &s.layouts {
            for (contender, rt) in contenders(s, workload) {
                let r = run_child(s, workload, contender, rt, amount, layout, None)
                    .unwrap_or_else(|e| panic!("{contender}/{rt} on {workload}: {e}"));
                let name = format!("{contender}/{rt}");
                report.add(workload, layout.name(), &name, r.clone(), unit(workload));
                if matches!(
                    workload,
                    "fetch-1m" | "stream-5m" | "copy-out" | "sa-stream-1m"
                ) {
                    let what = format!("{workload} peak RSS growth");
                    report.add(&what, layout.name(), &name, Sample::rss(&r), "MB");
                }
            }
            if !s.smoke {
                for (name, v) in ceilings(s, workload, layout) {
                    report.add(
                        workload,
                        layout.name(),
                        &name,
                        Sample::value(v),
                        unit(workload),
                    );
                }
            }
        }
        println!("  round {} of {} done", round + 1, s.rounds);
    }
}

fn unit(workload: &str) -> &'static str {
    match delay::split(workload).0 {
        "fetch-1m" | "stream-5m" | "insert-batch" | "copy-in" | "copy-out" | "sa-stream-1m" => {
            "rows/s"
        }
        "notify" => "notifications/s",
        "acquire" => "acquires/s",
        "tpcb" => "tx/s",
        _ => "ops/s",
    }
}

/// Client instructions per operation: a run of N operations minus a run of none (connecting,
/// preparing, shutting down), divided by N.
fn instructions_for(s: &Settings, workload: &str, report: &mut Report) {
    if !ready(s, workload) {
        return;
    }
    let n: u64 = match (delay::split(workload).0, s.smoke) {
        ("fetch-1m" | "stream-5m" | "copy-in" | "copy-out" | "notify" | "sa-stream-1m", false) => {
            100_000
        }
        ("insert-batch", false) => 10_000,
        ("acquire", false) => 20_000,
        ("fetch-1m" | "stream-5m" | "insert-batch", true) => 1_000,
        (_, false) => 5_000,
        (_, true) => 100,
    };
    println!("{workload}: client instructions per operation under callgrind ({n} ops minus 0)");
    for (contender, rt) in contenders(s, workload) {
        let full = callgrind(s, workload, contender, rt, n);
        let base = callgrind(
            s,
            workload,
            contender,
            rt,
            if workload == "fetch-1m" { 0 } else { 1 },
        );
        match (full, base) {
            (Ok(full), Ok(base)) => {
                let per_op = (full.saturating_sub(base)) as f64 / n as f64;
                report.add(
                    &format!("{workload} instructions"),
                    "callgrind",
                    &format!("{contender}/{rt}"),
                    Sample::value(per_op),
                    "instr/op",
                );
                report.lower_is_better(&format!("{workload} instructions"));
                println!("  {contender}/{rt}: {per_op:.0} instructions per op (connect and set-up: {base})");
            }
            (Err(e), _) | (_, Err(e)) => println!("  {contender}/{rt}: callgrind failed: {e}"),
        }
    }
}

fn callgrind(
    s: &Settings,
    workload: &str,
    contender: &str,
    rt: &str,
    n: u64,
) -> Result<u64, String> {
    let out = std::env::temp_dir().join(format!(
        "aiopg-bench-callgrind-{}-{workload}-{contender}-{rt}-{n}.out",
        std::process::id()
    ));
    let r = run_child(
        s,
        workload,
        contender,
        rt,
        Amount::Count(n),
        Layout::Unpinned,
        Some(&out),
    );
    let text = std::fs::read_to_string(&out).map_err(|e| format!("reading callgrind output: {e}"));
    let _ = std::fs::remove_file(&out);
    r?;
    let text = text?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary: ")
                .or_else(|| l.strip_prefix("totals: "))
        })
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "no instruction total in callgrind's output".into())
}

fn run_child(
    s: &Settings,
    workload: &str,
    contender: &str,
    rt: &str,
    amount: Amount,
    layout: Layout,
    callgrind_out: Option<&std::path::Path>,
) -> Result<Sample, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd;
    if let Some(out) = callgrind_out {
        cmd = Command::new("valgrind");
        cmd.arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg("--quiet")
            .arg(&exe);
    } else if let Some(cpu) = layout.cpu() {
        cmd = Command::new("taskset");
        cmd.args(["-c", cpu]).arg(&exe);
    } else {
        cmd = Command::new(&exe);
    }
    cmd.args(["--child", workload, contender, rt]);
    match amount {
        Amount::Seconds(x) => cmd.args(["--seconds", &x.to_string()]),
        Amount::Count(c) => cmd.args(["--count", &c.to_string()]),
    };
    cmd.env("AIOPG_BENCH_DSN", &s.dsn);
    let out = cmd
        .output()
        .map_err(|e| format!("starting the child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "child failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Sample::parse(&stdout).ok_or_else(|| format!("no RESULT line in: {stdout}"))
}

fn child_main(args: &[String]) {
    let (workload, contender, runtime) = match args {
        [w, c, r, ..] => (w.clone(), c.clone(), r.clone()),
        _ => usage(),
    };
    let amount = match &args[3..] {
        [flag, v] if flag == "--seconds" => Amount::Seconds(v.parse().unwrap_or_else(|_| usage())),
        [flag, v] if flag == "--count" => Amount::Count(v.parse().unwrap_or_else(|_| usage())),
        _ => usage(),
    };
    let dsn = std::env::var("AIOPG_BENCH_DSN").unwrap_or_else(|_| usage());
    // `<workload>@<n>ms`: the same workload through this process's own delay proxy, which
    // every client reaches in place of the server (it lives until the measurement is done).
    let (workload, proxy) = match delay::split(&workload) {
        (base, Some(rtt)) => {
            let host = dsn_value(&dsn, "host").unwrap_or_else(|| "127.0.0.1".into());
            let port = dsn_value(&dsn, "port")
                .and_then(|p| p.parse().ok())
                .unwrap_or(5432);
            let proxy = delay::Proxy::start(&host, port, rtt).expect("start the delay proxy");
            (base.to_string(), Some(proxy))
        }
        (_, None) => (workload, None),
    };
    let dsn = match &proxy {
        Some(p) => via_port(&dsn, p.port()),
        None => dsn,
    };
    // `<workload>-tls`: the same workload, every client over TLS checking the cluster's CA.
    let (workload, tls_ca) = match workload.strip_suffix("-tls") {
        Some(base) => {
            let dir = std::env::var("AIOPG_BENCH_TLS_DIR").unwrap_or_else(|_| {
                eprintln!(
                    "AIOPG_BENCH_TLS_DIR is not set: run the benchmarks with `cargo xtask bench`"
                );
                std::process::exit(2)
            });
            (base.to_string(), Some(format!("{dir}/ca.crt")))
        }
        None => (workload, None),
    };
    let (job_dsn, url, tp_dsn) = match &tls_ca {
        // The certificate names `localhost`; the server listens on 127.0.0.1. aiopg checks
        // chain and name (verify-full); tokio-postgres' rustls connector does the same; sqlx
        // reaches 127.0.0.1 and checks the chain (verify-ca), as it cannot pin an address.
        Some(ca) => {
            let plain: Vec<&str> = dsn
                .split_whitespace()
                .filter(|kv| !kv.starts_with("host=") && !kv.starts_with("sslmode="))
                .collect();
            let rest = plain.join(" ");
            (
                format!(
                    "host=localhost hostaddr=127.0.0.1 {rest} sslmode=verify-full sslrootcert={ca}"
                ),
                format!("{}?sslmode=verify-ca&sslrootcert={ca}", dsn_to_url(&dsn)),
                format!("host=localhost hostaddr=127.0.0.1 {rest} sslmode=require"),
            )
        }
        None => (dsn.clone(), dsn_to_url(&dsn), dsn.clone()),
    };
    child::run(Job {
        workload,
        contender,
        runtime,
        amount,
        url,
        dsn: job_dsn,
        tp_dsn,
        tls_ca,
    });
}

/// `aiopg-bench --proxy HOST PORT RTT_MICROS`: a delay proxy to HOST:PORT, for the pgbench
/// ceilings of the `@<n>ms` workloads. Prints `PROXY port=<port>` once listening and runs
/// until its stdin closes.
fn proxy_main(args: &[String]) {
    let [host, port, micros] = args else { usage() };
    let port: u16 = port.parse().unwrap_or_else(|_| usage());
    let rtt = Duration::from_micros(micros.parse().unwrap_or_else(|_| usage()));
    let proxy = delay::Proxy::start(host, port, rtt).unwrap_or_else(|e| {
        eprintln!("delay proxy: {e}");
        std::process::exit(1)
    });
    println!("PROXY port={}", proxy.port());
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
}

/// A `--proxy` helper process, pinned like the client it serves; it ends when dropped.
struct ProxyProcess(std::process::Child);

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        // Closing its stdin is what ends it.
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// Starts a `--proxy` helper adding `rtt` to the server's round trips, and the settings that
/// reach the server through it.
fn proxied(s: &Settings, layout: Layout, rtt: Duration) -> Option<(ProxyProcess, Settings)> {
    let exe = std::env::current_exe().ok()?;
    let child = pinned(layout, exe.to_str()?)
        .arg("--proxy")
        .arg(dsn_value(&s.dsn, "host")?)
        .arg(dsn_value(&s.dsn, "port")?)
        .arg(rtt.as_micros().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut proc = ProxyProcess(child);
    let mut line = String::new();
    std::io::BufReader::new(proc.0.stdout.take()?)
        .read_line(&mut line)
        .ok()?;
    let port: u16 = line.trim().strip_prefix("PROXY port=")?.parse().ok()?;
    let via = Settings {
        dsn: via_port(&s.dsn, port),
        ..s.clone()
    };
    Some((proc, via))
}

/// The key=value DSN with the server replaced by a proxy on 127.0.0.1:`port`.
fn via_port(dsn: &str, port: u16) -> String {
    let rest: Vec<&str> = dsn
        .split_whitespace()
        .filter(|kv| {
            !kv.starts_with("host=") && !kv.starts_with("hostaddr=") && !kv.starts_with("port=")
        })
        .collect();
    format!("host=127.0.0.1 port={port} {}", rest.join(" "))
}

/// Pins the server's postmaster (and so every backend it forks from now on) to core 0.
fn pin_server() {
    match std::env::var("AIOPG_BENCH_PG_PID") {
        Ok(pid) => {
            let ok = Command::new("taskset")
                .args(["-a", "-p", "-c", "0", &pid])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !ok {
                println!("warning: could not pin the server (taskset): layouts are not enforced");
            }
        }
        Err(_) => println!("warning: AIOPG_BENCH_PG_PID not set: the server is not pinned"),
    }
}

fn dsn_value(dsn: &str, key: &str) -> Option<String> {
    dsn.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// sqlx takes URLs only: turns `host=.. port=.. user=.. dbname=..` into `postgres://`.
fn dsn_to_url(dsn: &str) -> String {
    if dsn.starts_with("postgres") {
        return dsn.to_string();
    }
    format!(
        "postgres://{}@{}:{}/{}",
        dsn_value(dsn, "user").unwrap_or_else(|| "postgres".into()),
        dsn_value(dsn, "host").unwrap_or_else(|| "127.0.0.1".into()),
        dsn_value(dsn, "port").unwrap_or_else(|| "5432".into()),
        dsn_value(dsn, "dbname").unwrap_or_else(|| "postgres".into())
    )
}

/// The limits each workload is read against, measured with the same placement: pgbench
/// (libpq) for statements, the server's own send rate for rows.
fn ceilings(s: &Settings, workload: &str, layout: Layout) -> Vec<(String, f64)> {
    let Some(bindir) = s.bindir.as_deref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // `<workload>@<n>ms`: pgbench goes through a delay proxy of its own, as the clients do.
    let (workload, rtt) = delay::split(workload);
    let _proxy;
    let via;
    let s = match rtt {
        Some(rtt) => match proxied(s, layout, rtt) {
            Some((p, v)) => {
                _proxy = p;
                via = v;
                &via
            }
            None => {
                println!("warning: could not start a delay proxy for pgbench: no ceiling");
                return out;
            }
        },
        None => s,
    };
    match workload {
        "latency" => {
            if let Some(v) = pgbench(
                s,
                bindir,
                layout,
                "\\set x random(1, 1000000)\nSELECT :x::int4;\n",
                1,
                1,
            ) {
                out.push(("pgbench -M prepared -c 1".into(), v));
            }
        }
        "pool" => {
            let script = "\\set x random(1, 1000000)\nSELECT :x::int4;\n";
            let clients = pool::CONNECTIONS as u32;
            if let Some(v) = pgbench(s, bindir, layout, script, 1, clients) {
                out.push((format!("pgbench -M prepared -c {clients}"), v));
            }
        }
        "pipeline" => {
            let mut script = String::from("\\set x random(1, 1000000)\n\\startpipeline\n");
            for _ in 0..pipeline::DEPTH {
                script.push_str("SELECT :x::int4;\n");
            }
            script.push_str("\\endpipeline\n");
            if let Some(v) = pgbench(s, bindir, layout, &script, pipeline::DEPTH as u64, 1) {
                out.push((format!("pgbench pipeline depth {}", pipeline::DEPTH), v));
            }
        }
        "tpcb" => {
            let clients = tpcb::CONNECTIONS as u32;
            if let Some(v) = pgbench_builtin(s, bindir, layout, clients) {
                out.push((format!("pgbench -M prepared -c {clients} -j 1"), v));
            }
        }
        "fetch-1m" => {
            if let Some(v) = copy_ceiling(s, bindir, layout) {
                out.push(("server send ceiling (COPY binary)".into(), v));
            }
        }
        "copy-in" | "copy-out" => {
            if let Some(v) = psql_copy(s, bindir, layout, workload == "copy-in") {
                out.push(("psql \\copy (text)".into(), v));
            }
        }
        _ => {}
    }
    out
}

/// psql's `\copy` of the same 1 M text rows, from a file into a fresh table or from the
/// source table into /dev/null: rows per second, psql's start-up included (a few ms).
fn psql_copy(s: &Settings, bindir: &str, layout: Layout, into: bool) -> Option<f64> {
    let psql = format!("{bindir}/psql");
    let db = dsn_value(&s.dsn, "dbname")?;
    let run = |sql: &str| {
        pinned(layout, &psql)
            .args(conn_args(s)?)
            .args(["-d", &db, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdout(std::process::Stdio::null())
            .status()
            .ok()
            .filter(|st| st.success())
    };
    let rows = copy::ROWS;
    if into {
        let path =
            std::env::temp_dir().join(format!("aiopg-bench-copy-{}.txt", std::process::id()));
        let mut data = Vec::new();
        for c in copy::text_chunks(rows) {
            data.extend_from_slice(&c);
        }
        std::fs::write(&path, data).ok()?;
        let t = format!("bench_psql_copy_{}", std::process::id());
        run(&format!(
            "CREATE UNLOGGED TABLE {t} (id int8, name text, score float8)"
        ))?;
        let start = Instant::now();
        let ok = run(&format!("\\copy {t} FROM '{}'", path.display()));
        let secs = start.elapsed().as_secs_f64();
        let _ = run(&format!("DROP TABLE {t}"));
        let _ = std::fs::remove_file(&path);
        ok?;
        Some(rows as f64 / secs)
    } else {
        run(&copy::source_sql(rows))?;
        let start = Instant::now();
        run(&format!("\\copy {} TO '/dev/null'", copy::source(rows)))?;
        Some(rows as f64 / start.elapsed().as_secs_f64())
    }
}

fn pinned(layout: Layout, program: &str) -> Command {
    match layout.cpu() {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpu, program]);
            c
        }
        None => Command::new(program),
    }
}

fn conn_args(s: &Settings) -> Option<Vec<String>> {
    Some(vec![
        "-h".into(),
        dsn_value(&s.dsn, "host")?,
        "-p".into(),
        dsn_value(&s.dsn, "port")?,
        "-U".into(),
        dsn_value(&s.dsn, "user")?,
    ])
}

/// pgbench's rate for a script, in statements per second (`per_tx` statements a transaction).
fn pgbench(
    s: &Settings,
    bindir: &str,
    layout: Layout,
    script: &str,
    per_tx: u64,
    clients: u32,
) -> Option<f64> {
    let path = std::env::temp_dir().join(format!("aiopg-bench-{}.sql", std::process::id()));
    std::fs::write(&path, script).ok()?;
    let secs = (s.seconds.round() as u64).max(1).to_string();
    let out = pinned(layout, &format!("{bindir}/pgbench"))
        .args(["-n", "-M", "prepared", "-j", "2", "-T", &secs])
        .arg("-c")
        .arg(clients.to_string())
        .arg("-f")
        .arg(&path)
        .args(conn_args(s)?)
        .arg(dsn_value(&s.dsn, "dbname")?)
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&path);
    Some(tps(&out.stdout)? * per_tx as f64)
}

/// pgbench's rate for its built-in TPC-B-like script on `tpcb`'s tables, in transactions per
/// second, with one thread as the clients have one process.
fn pgbench_builtin(s: &Settings, bindir: &str, layout: Layout, clients: u32) -> Option<f64> {
    let secs = (s.seconds.round() as u64).max(1).to_string();
    let out = pinned(layout, &format!("{bindir}/pgbench"))
        .args(["-n", "-M", "prepared", "-j", "1", "-T", &secs])
        .arg("-c")
        .arg(clients.to_string())
        .args(conn_args(s)?)
        .arg(dsn_value(&s.dsn, "dbname")?)
        .output()
        .ok()?;
    tps(&out.stdout)
}

/// The `tps = ` figure of pgbench's report.
fn tps(stdout: &[u8]) -> Option<f64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next()?.parse().ok())
}

/// How fast the server produces the fetch-1m rows when the client does nothing with them:
/// `COPY (query) TO STDOUT (FORMAT binary)` through psql into /dev/null.
fn copy_ceiling(s: &Settings, bindir: &str, layout: Layout) -> Option<f64> {
    let sql = format!(
        "COPY ({}) TO STDOUT (FORMAT binary)",
        fetch::sql(fetch::ROWS)
    );
    let start = Instant::now();
    let status = pinned(layout, &format!("{bindir}/psql"))
        .args(conn_args(s)?)
        .args(["-d", &dsn_value(&s.dsn, "dbname")?, "-q", "-c", &sql])
        .stdout(std::process::Stdio::null())
        .status()
        .ok()?;
    let el = start.elapsed();
    status
        .success()
        .then(|| fetch::ROWS as f64 / el.as_secs_f64().max(1e-9))
}

/// Runs `$f(&job)` on the named runtime through [`block_on`], with its own copy of the job.
#[macro_export]
macro_rules! run {
    ($rt:expr, $job:expr, $f:path) => {{
        let job: $crate::child::Job = $job.clone();
        $crate::block_on($rt, async move { $f(&job).await })
    }};
}

/// Runs a future on the named runtime, the way a service on it runs its work: on tokio's
/// multi-threaded scheduler (2 workers) as a spawned task, since request handlers run as tasks
/// on the workers (a future passed to tokio's `block_on` instead runs on a thread that does
/// not drive I/O, so that every wake-up crosses threads); on async-std and smol in their
/// `block_on`, which drives I/O on the calling thread.
pub fn block_on<F>(runtime: &str, f: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match runtime {
        "tokio" => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            if std::env::var_os("AIOPG_BENCH_TOKIO_BLOCK_ON").is_some() {
                rt.block_on(f)
            } else {
                rt.block_on(async move { tokio::spawn(f).await.expect("benchmark task") })
            }
        }
        "async-std" => async_std::task::block_on(f),
        "smol" => smol::block_on(f),
        other => panic!("unknown runtime {other}"),
    }
}

pub async fn aiopg_connect(job: &Job) -> aiopg::Connection {
    let rt = aiopg::rt::runtime_by_name(&job.runtime).expect("runtime");
    aiopg::ConnectOptions::new(&job.dsn)
        .expect("dsn")
        .runtime(rt)
        .connect()
        .await
        .expect("aiopg connect")
}

/// [`aiopg_connect`] with the connection's opt-in driver task (`ConnectOptions::driver_task`)
/// reading the socket, as tokio-postgres' spawned connection task does.
pub async fn aiopg_connect_driven(job: &Job) -> aiopg::Connection {
    let rt = aiopg::rt::runtime_by_name(&job.runtime).expect("runtime");
    aiopg::ConnectOptions::new(&job.dsn)
        .expect("dsn")
        .runtime(rt)
        .driver_task(true)
        .connect()
        .await
        .expect("aiopg connect")
}

pub async fn tokio_postgres_connect(job: &Job) -> tokio_postgres::Client {
    match &job.tls_ca {
        None => {
            let (client, connection) = tokio_postgres::connect(&job.tp_dsn, tokio_postgres::NoTls)
                .await
                .expect("tokio-postgres connect");
            tokio::spawn(connection);
            client
        }
        Some(ca) => {
            let (client, connection) = tokio_postgres::connect(&job.tp_dsn, tokio_postgres_tls(ca))
                .await
                .expect("tokio-postgres connect (TLS)");
            tokio::spawn(connection);
            client
        }
    }
}

/// tokio-postgres' rustls connector (ring), trusting the cluster's CA.
pub fn tokio_postgres_tls(ca: &str) -> tokio_postgres_rustls::MakeRustlsConnect {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}
