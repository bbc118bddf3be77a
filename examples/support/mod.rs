//! What every example shares: its DSN and running its `async fn` on the runtime the enabled
//! feature selects (`--no-default-features --features smol`, say).

use std::future::Future;

/// `AIOPG_DSN` (set by `cargo xtask demo`), else a local default.
pub fn dsn() -> String {
    std::env::var("AIOPG_DSN")
        .unwrap_or_else(|_| "dbname=aiopg user=aiopg password=passwd host=127.0.0.1".into())
}

/// Runs `main` to completion on the enabled runtime; an error ends the process with it.
pub fn run<F, E>(main: F)
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let res = block_on(main);
    if let Err(e) = res {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

#[cfg(feature = "tokio")]
fn block_on<F: Future + Send + 'static>(f: F) -> F::Output
where
    F::Output: Send,
{
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(f)
}

#[cfg(all(feature = "smol", not(feature = "tokio")))]
fn block_on<F: Future + Send + 'static>(f: F) -> F::Output {
    smol::block_on(f)
}

#[cfg(all(feature = "async-std", not(any(feature = "tokio", feature = "smol"))))]
fn block_on<F: Future + Send + 'static>(f: F) -> F::Output {
    async_std::task::block_on(f)
}

#[cfg(not(any(feature = "tokio", feature = "smol", feature = "async-std")))]
fn block_on<F: Future + Send + 'static>(_: F) -> F::Output {
    eprintln!("enable one of the features tokio, smol or async-std");
    std::process::exit(2);
}

/// A tiny blocking HTTP/1.1 client for the web examples' self-checks: sends `method path`
/// to `addr` and returns the status code and the body. Run it off the runtime's threads
/// (`spawn_blocking`, `smol::unblock`).
fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// The web examples' table: two users, ada with 100 and bob with 0.
#[allow(dead_code)] // Only the web examples use it.
pub const USERS_SQL: &str = "DROP TABLE IF EXISTS example_users; \
     CREATE TABLE example_users (id int PRIMARY KEY, name text, balance int8); \
     INSERT INTO example_users VALUES (1, 'ada', 100), (2, 'bob', 0)";

/// Calls the web examples' service at `addr` as a client would and checks every answer
/// (blocking: run it off the runtime's threads).
#[allow(dead_code)] // Only the web examples use it.
pub fn check_service(addr: std::net::SocketAddr) -> std::io::Result<()> {
    for (method, path, want) in [
        ("GET", "/users/1", 200),
        ("POST", "/transfer?from=1&to=2&amount=30", 200),
        ("POST", "/transfer?from=2&to=1&amount=500", 409),
        ("GET", "/users/2", 200),
        ("GET", "/users/3", 404),
    ] {
        let (status, body) = http(addr, method, path)?;
        println!("{method} {path} -> {status} {body}");
        assert_eq!(status, want, "{method} {path}: {body}");
    }
    let (_, body) = http(addr, "GET", "/users/2")?;
    assert!(body.contains("\"balance\":30"), "{body}");
    Ok(())
}
