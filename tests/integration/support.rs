//! The harness: runs each test body on the runtime named by `AIOPG_TEST_RUNTIME` (tokio,
//! async-std or smol) against the server named by `AIOPG_TEST_DSN`.
//!
//! `cargo xtask test-all-runtimes` sets both, once per runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aiopg::rt::Runtime;
use aiopg::{ConnectOptions, Connection};

/// Every test fails, rather than hangs, after this long.
const TEST_DEADLINE: Duration = Duration::from_secs(120);

/// Declares a test whose async body runs on the runtime under test.
macro_rules! rt_test {
    ($(#[$m:meta])* async fn $name:ident() $body:block) => {
        #[test]
        $(#[$m])*
        fn $name() {
            $crate::support::block_on(async move $body)
        }
    };
}
pub(crate) use rt_test;

pub fn runtime_name() -> String {
    std::env::var("AIOPG_TEST_RUNTIME").unwrap_or_else(|_| "tokio".into())
}

pub fn runtime() -> Arc<dyn Runtime> {
    let name = runtime_name();
    aiopg::rt::runtime_by_name(&name)
        .unwrap_or_else(|| panic!("AIOPG_TEST_RUNTIME={name}: not a runtime this build has"))
}

/// How long a soak runs on each runtime (`AIOPG_SOAK_SECS`, set by `cargo xtask soak`); 0
/// when no soak was asked for.
pub fn soak_secs() -> u64 {
    std::env::var("AIOPG_SOAK_SECS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `f` to completion on the runtime under test, failing after [`TEST_DEADLINE`] (a
/// minute past the soak's length in a soak).
pub fn block_on<F: Future<Output = ()> + Send + 'static>(f: F) {
    let deadline = TEST_DEADLINE.max(Duration::from_secs(soak_secs() + 60));
    let guarded = async move {
        let rt = runtime();
        if aiopg::rt::timeout(&*rt, deadline, f).await.is_err() {
            panic!("test did not finish within {deadline:?}: it hangs");
        }
    };
    match runtime_name().as_str() {
        "tokio" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(guarded),
        "async-std" => async_std::task::block_on(guarded),
        "smol" => smol::block_on(guarded),
        other => panic!("unknown AIOPG_TEST_RUNTIME {other}"),
    }
}

/// A spawned task's result.
pub type Join<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Spawns a task on the runtime under test.
pub fn spawn<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> Join<T> {
    match runtime_name().as_str() {
        "tokio" => {
            let h = tokio::spawn(f);
            Box::pin(async move { h.await.expect("task panicked") })
        }
        "async-std" => Box::pin(async_std::task::spawn(f)),
        "smol" => Box::pin(smol::spawn(f)),
        other => panic!("unknown AIOPG_TEST_RUNTIME {other}"),
    }
}

pub fn dsn() -> String {
    std::env::var("AIOPG_TEST_DSN").expect(
        "AIOPG_TEST_DSN is not set: run the integration tests with `cargo xtask test-all-runtimes`",
    )
}

pub fn options(dsn: &str) -> ConnectOptions {
    ConnectOptions::new(dsn)
        .expect("valid DSN")
        .runtime(runtime())
}

pub async fn connect() -> Connection {
    options(&dsn())
        .connect()
        .await
        .expect("connect to the test server")
}

/// The xtask cluster's host, port and socket folder, which the auth tests need (they use the
/// roles xtask creates). `None` against a server given by `AIOPG_TEST_DSN` alone.
pub struct Cluster {
    pub host: String,
    pub port: u16,
    pub socket_dir: String,
}

pub fn cluster() -> Option<Cluster> {
    Some(Cluster {
        host: std::env::var("AIOPG_TEST_HOST").ok()?,
        port: std::env::var("AIOPG_TEST_PORT").ok()?.parse().ok()?,
        socket_dir: std::env::var("AIOPG_TEST_SOCKET_DIR").ok()?,
    })
}

/// The cluster, or a message explaining why a cluster-only test has nothing to check.
pub fn require_cluster(test: &str) -> Option<Cluster> {
    let c = cluster();
    if c.is_none() {
        eprintln!("{test}: needs the roles of `cargo xtask pg` (AIOPG_TEST_HOST/PORT/SOCKET_DIR)");
    }
    c
}

/// Polls `fut` at most `polls` times, then drops it: a caller that gives up mid-flight.
pub async fn poll_then_drop<F: Future>(fut: F, polls: usize) -> Option<F::Output> {
    let mut fut = Box::pin(fut);
    let mut left = polls;
    std::future::poll_fn(move |cx| {
        if left == 0 {
            return std::task::Poll::Ready(None);
        }
        left -= 1;
        match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            // The last poll: drop at once, without waiting for a wake-up that may never come
            // (a statement blocked on the server wakes nobody).
            std::task::Poll::Pending if left == 0 => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
    .await
}

/// A backend message for the fake servers: type, length word, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Polls until the server shows `pid` waiting for a lock (bounded): only the server can make
/// this true.
pub async fn wait_until_blocked(observer: &aiopg::Connection, pid: i32) {
    for _ in 0..2_000 {
        let rows = observer
            .query(
                "SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted",
                &[&pid],
            )
            .await
            .unwrap();
        if rows[0].get::<i64>(0) > 0 {
            return;
        }
        runtime().sleep(Duration::from_millis(5)).await;
    }
    panic!("backend {pid} never blocked on a lock");
}

/// The seed of a randomised test: `AIOPG_TEST_SEED` when set (to replay a failure), else a
/// fresh one. Every failure message names it.
pub fn seed() -> u64 {
    std::env::var("AIOPG_TEST_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
}
