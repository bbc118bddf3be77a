//! `cargo xtask bench`: aiopg beside tokio-postgres, sqlx and pgbench, measured in one run.
//!
//! Contenders alternate within every round, and each figure is the median over rounds, because
//! this machine is shared and noisy. `AIOPG_BENCH_DSN` names the server (xtask starts a
//! throwaway cluster and sets it); `AIOPG_BENCH_PG_BINDIR` is where pgbench lives.

mod latency;
mod report;

use std::time::Duration;

/// Command-line settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dsn: String,
    pub url: String,
    pub bindir: Option<String>,
    pub runtimes: Vec<&'static str>,
    pub rounds: usize,
    pub duration: Duration,
    pub smoke: bool,
    pub json: Option<String>,
}

const WORKLOADS: &[&str] = &["latency"];
const LATER: &[(&str, &str)] = &[
    ("pipeline", "the benchmark issue"),
    ("fetch-1m", "the benchmark issue"),
    ("stream-5m", "server-side cursors (the cursor issue)"),
    ("pool", "the pool issue"),
    ("acquire", "the pool issue"),
    ("insert-batch", "executemany (the cursor issue)"),
    ("copy-out", "COPY"),
    ("copy-in", "COPY"),
];

fn usage() -> ! {
    eprintln!(
        "usage: aiopg-bench [WORKLOAD..] [--runtime tokio|async-std|smol|all] [--rounds N] \
         [--seconds S] [--smoke] [--json FILE]\nworkloads: {}",
        WORKLOADS.join(", ")
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut workloads = Vec::new();
    let mut runtimes = vec!["tokio", "async-std", "smol"];
    let mut rounds = 5;
    let mut seconds = 2.0f64;
    let mut smoke = false;
    let mut json = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runtime" => {
                runtimes = match args.next().as_deref() {
                    Some("all") => vec!["tokio", "async-std", "smol"],
                    Some("tokio") => vec!["tokio"],
                    Some("async-std") => vec!["async-std"],
                    Some("smol") => vec!["smol"],
                    _ => usage(),
                }
            }
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--smoke" => smoke = true,
            "--json" => json = Some(args.next().unwrap_or_else(|| usage())),
            "-h" | "--help" => usage(),
            w if !w.starts_with('-') => workloads.push(w.to_string()),
            _ => usage(),
        }
    }
    if smoke {
        rounds = 1;
        seconds = 0.05;
    }
    if workloads.is_empty() {
        workloads = WORKLOADS.iter().map(|s| s.to_string()).collect();
        for (w, needs) in LATER {
            println!("skipping `{w}`: it needs {needs}, not built yet");
        }
    }
    let dsn = std::env::var("AIOPG_BENCH_DSN").unwrap_or_else(|_| {
        eprintln!("AIOPG_BENCH_DSN is not set: run the benchmarks with `cargo xtask bench`");
        std::process::exit(2)
    });
    let settings = Settings {
        url: dsn_to_url(&dsn),
        dsn,
        bindir: std::env::var("AIOPG_BENCH_PG_BINDIR").ok(),
        runtimes,
        rounds,
        duration: Duration::from_secs_f64(seconds),
        smoke,
        json,
    };
    let mut report = report::Report::default();
    for w in &workloads {
        match w.as_str() {
            "latency" => latency::run(&settings, &mut report),
            other => match LATER.iter().find(|(n, _)| n == &other) {
                Some((_, needs)) => println!("skipping `{other}`: it needs {needs}, not built yet"),
                None => {
                    eprintln!("unknown workload `{other}`");
                    usage()
                }
            },
        }
    }
    report.print();
    if let Some(path) = &settings.json {
        std::fs::write(path, report.to_json()).expect("write the JSON report");
        println!("wrote {path}");
    }
}

/// sqlx takes URLs only: turns `host=.. port=.. user=.. dbname=..` into `postgres://`.
fn dsn_to_url(dsn: &str) -> String {
    if dsn.starts_with("postgres") {
        return dsn.to_string();
    }
    let get = |k: &str| {
        dsn.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")).map(str::to_string))
    };
    format!(
        "postgres://{}@{}:{}/{}",
        get("user").unwrap_or_else(|| "postgres".into()),
        get("host").unwrap_or_else(|| "127.0.0.1".into()),
        get("port").unwrap_or_else(|| "5432".into()),
        get("dbname").unwrap_or_else(|| "postgres".into())
    )
}

/// Runs a future on the named runtime, the way an application on it would.
pub fn block_on<F: std::future::Future + Send>(runtime: &str, f: F) -> F::Output
where
    F::Output: Send,
{
    match runtime {
        "tokio" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(f),
        "async-std" => async_std::task::block_on(f),
        "smol" => smol::block_on(f),
        other => panic!("unknown runtime {other}"),
    }
}

/// The median of some samples (which it sorts).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
