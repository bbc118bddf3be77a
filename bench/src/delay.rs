//! The `@<n>ms` workloads (`latency@5ms`, `tpcb@1ms`, ..): the base workload with every byte
//! crossing a loopback TCP proxy that delays it, so that the round trip is `n` ms longer.
//!
//! The proxy is plain threads: for each client it accepts, it connects to the server and
//! forwards both directions, each through a reader thread that timestamps every chunk it
//! reads into a channel and a writer thread that sleeps until the chunk is due (half the
//! round trip later) and writes it. Chunks keep their order and their bytes. With no delay it
//! copies directly, which measures what the proxy itself costs (`@0ms`).
//!
//! Each child starts its own proxy before connecting, so that its threads share the child's
//! core; for the pgbench ceilings the parent starts one in a helper process
//! (`aiopg-bench --proxy`), pinned where pgbench runs. Sleeping costs some timer slack (tens
//! of microseconds a direction), so a round trip takes a little more than its nominal delay:
//! read the figures against each other, and against `@0ms` for the proxy's own cost.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The base workloads that have `@<n>ms` variants.
pub const DELAYABLE: [&str; 3] = ["latency", "tpcb", "pool"];

/// Splits `tpcb@5ms` into `("tpcb", Some(5 ms))`; a name without a valid suffix is returned
/// whole, with no delay.
pub fn split(workload: &str) -> (&str, Option<Duration>) {
    let parsed = workload.rsplit_once('@').and_then(|(base, d)| {
        let ms: u64 = d.strip_suffix("ms")?.parse().ok()?;
        Some((base, Duration::from_millis(ms)))
    });
    match parsed {
        Some((base, rtt)) => (base, Some(rtt)),
        None => (workload, None),
    }
}

/// A running proxy: it accepts until dropped (connections already accepted run on until
/// either side closes).
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (any free port) and forwards every connection to
    /// `upstream_host:upstream_port`, adding `rtt` to each round trip.
    pub fn start(upstream_host: &str, upstream_port: u16, rtt: Duration) -> std::io::Result<Proxy> {
        let upstream: Vec<SocketAddr> = (upstream_host, upstream_port).to_socket_addrs()?.collect();
        if upstream.is_empty() || !upstream.iter().all(|a| a.ip().is_loopback()) {
            return Err(std::io::Error::other(format!(
                "the delay proxy only forwards to loopback, not {upstream_host}:{upstream_port}"
            )));
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let one_way = rtt / 2;
        let halt = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if halt.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                match TcpStream::connect(&upstream[..]) {
                    Ok(server) => {
                        if let Err(e) = forward(client, server, one_way) {
                            eprintln!("delay proxy: {e}");
                        }
                    }
                    Err(e) => eprintln!("delay proxy: connecting to the server: {e}"),
                }
            }
        });
        Ok(Proxy { addr, stop })
    }

    /// The port the proxy listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread up so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Starts both directions of one proxied connection.
fn forward(client: TcpStream, server: TcpStream, one_way: Duration) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    direction(client, server, one_way)?;
    direction(s2, c2, one_way)
}

/// Forwards `from` to `to`, each chunk `delay` after it was read. At the end of the stream the
/// write side of `to` is shut down (the peer sees the end, as without the proxy); on an error
/// either way both sockets are, so that the other direction ends too.
fn direction(mut from: TcpStream, mut to: TcpStream, delay: Duration) -> std::io::Result<()> {
    if delay.is_zero() {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let clean = loop {
                match from.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break false;
                        }
                    }
                    Err(_) => break false,
                }
            };
            finish(&from, &to, clean);
        });
        return Ok(());
    }
    // `Err(true)` ends the stream cleanly, `Err(false)` on a read error.
    let (tx, rx) = mpsc::channel::<(Instant, Result<Vec<u8>, bool>)>();
    let from_w = from.try_clone()?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let item = match from.read(&mut buf) {
                Ok(0) => Err(true),
                Ok(n) => Ok(buf[..n].to_vec()),
                Err(_) => Err(false),
            };
            let end = item.is_err();
            if tx.send((Instant::now() + delay, item)).is_err() || end {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        let mut clean = false;
        for (due, item) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            match item {
                Ok(chunk) => {
                    if to.write_all(&chunk).is_err() {
                        break;
                    }
                }
                Err(eof) => {
                    clean = eof;
                    break;
                }
            }
        }
        finish(&from_w, &to, clean);
    });
    Ok(())
}

fn finish(from: &TcpStream, to: &TcpStream, clean: bool) {
    if clean {
        let _ = to.shutdown(Shutdown::Write);
    } else {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }
}
