//! A loopback TCP proxy between a test's client and the xtask server that loses the
//! server's answer to a chosen request: it forwards everything until the client's bytes
//! contain a trigger, lets that request through, waits for the server's answer to begin,
//! then drops the answer and cuts both sides. Plain threads; no external program.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A proxy for one client connection.
pub struct Proxy {
    pub port: u16,
    /// Set once the answer was dropped and both sides cut.
    pub cut: Arc<AtomicBool>,
}

impl Proxy {
    /// Proxies to `server`; loses the answer to the first request whose bytes contain
    /// `trigger`.
    pub fn losing_answer_to(server: SocketAddr, trigger: &'static [u8]) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let done = cut.clone();
        std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let server = TcpStream::connect(server).expect("the proxy reaches the server");
            let triggered = Arc::new(AtomicBool::new(false));
            let (c_read, s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let seen = triggered.clone();
            // Client to server: forwards everything, and notes the trigger.
            std::thread::spawn(move || {
                let (mut from, mut to) = (c_read, s_write);
                let mut window: Vec<u8> = Vec::new();
                let mut buf = [0u8; 8192];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    window.extend_from_slice(&buf[..n]);
                    if window.windows(trigger.len()).any(|w| w == trigger) {
                        seen.store(true, Ordering::SeqCst);
                    }
                    // Keep only what a trigger split across reads needs.
                    let keep = window.len().saturating_sub(trigger.len());
                    window.drain(..keep);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            // Server to client: forwards until the trigger went through; the next bytes
            // (its answer) are dropped and both sides cut.
            let (mut from, mut to) = (server, client);
            let mut buf = [0u8; 8192];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if triggered.load(Ordering::SeqCst) {
                    // Marked first: the client may see the cut before this thread goes on.
                    done.store(true, Ordering::SeqCst);
                    let _ = to.shutdown(Shutdown::Both);
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        Proxy { port, cut }
    }
}

/// The test DSN pointed at `port` on 127.0.0.1, in plaintext (the proxy reads the bytes).
pub fn dsn_via(port: u16) -> String {
    let mut parts: Vec<String> = crate::support::dsn()
        .split_whitespace()
        .filter(|kv| {
            !["host=", "hostaddr=", "port=", "sslmode="]
                .iter()
                .any(|k| kv.starts_with(k))
        })
        .map(str::to_owned)
        .collect();
    parts.push(format!("host=127.0.0.1 port={port} sslmode=disable"));
    parts.join(" ")
}
