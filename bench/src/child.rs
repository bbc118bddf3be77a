//! One measurement in its own process: `aiopg-bench --child WORKLOAD CONTENDER RUNTIME`.
//!
//! A process per measurement keeps peak RSS per contender, lets the parent pin it to a core,
//! and lets `--instructions` run exactly one contender under callgrind.

use std::time::{Duration, Instant};

/// How long a timed run lasts, or how many operations a counted run does.
#[derive(Debug, Clone, Copy)]
pub enum Amount {
    Seconds(f64),
    Count(u64),
}

/// What the child was asked to do.
#[derive(Debug, Clone)]
pub struct Job {
    pub workload: String,
    pub contender: String,
    pub runtime: String,
    pub amount: Amount,
    pub dsn: String,
    pub url: String,
    /// The DSN tokio-postgres takes (its parser knows fewer key words than libpq's).
    pub tp_dsn: String,
    /// For the `-tls` workloads: the cluster's CA certificate, which every client checks.
    pub tls_ca: Option<String>,
}

/// Runs operations until the amount is spent; returns (operations, seconds).
pub async fn drive<F, Fut>(amount: Amount, mut op: F) -> (u64, f64)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let start = Instant::now();
    let mut n = 0u64;
    match amount {
        Amount::Count(c) => {
            while n < c {
                n += op(n).await;
            }
        }
        Amount::Seconds(s) => {
            let d = Duration::from_secs_f64(s);
            loop {
                n += op(n).await;
                if start.elapsed() >= d {
                    break;
                }
            }
        }
    }
    (n, start.elapsed().as_secs_f64())
}

/// Prints the resident set once connected, so that peak memory can be read as growth.
pub fn report_start_rss() {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    println!("START rss_kb={rss}");
}

/// The process's peak resident set, from /proc (kB).
pub fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn run(job: Job) {
    let (ops, secs) = match job.workload.as_str() {
        "latency" => crate::latency::run(&job),
        "pipeline" => crate::pipeline::run(&job),
        "fetch-1m" => crate::fetch::run(&job),
        "stream-5m" => crate::stream::run(&job),
        "insert-batch" => crate::insert::run(&job),
        "pool" | "acquire" => crate::pool::run(&job),
        "connect" => crate::connect::run(&job),
        "copy-in" | "copy-out" => crate::copy::run(&job),
        "notify" => crate::notify::run(&job),
        "sa-select" | "sa-select-1k" | "sa-stream-1m" => crate::sa::run(&job),
        "tpcb" => crate::tpcb::run(&job),
        other => panic!("unknown workload {other}"),
    };
    println!("RESULT ops={ops} secs={secs} rss_kb={}", peak_rss_kb());
}

/// Whether a hand-written loop has spent its amount after `n` operations.
pub fn finished(amount: Amount, n: u64, start: Instant) -> bool {
    match amount {
        Amount::Count(c) => n >= c,
        Amount::Seconds(s) => start.elapsed().as_secs_f64() >= s,
    }
}
