//! A loopback TCP proxy between a test's client and the xtask server, which injects one
//! fault once the client's bytes contain a trigger: lose the server's answer, cut after N
//! more bytes either way, stall the server's side, or drop the client's side one way. Plain
//! threads; no external program.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What happens once the trigger went through.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// The server's next bytes (its answer) are dropped and both sides cut.
    LoseAnswer,
    /// This many more bytes of the server's pass, then both sides are cut (mid-row).
    CutAfterServerBytes(usize),
    /// Nothing more of the server's reaches the client; both sockets stay open.
    StallServer,
    /// Nothing more of the client's reaches the server (one way); the server's side flows.
    DropClientBytes,
    /// This many more bytes of the client's pass, then both sides are cut (mid-COPY).
    CutAfterClientBytes(usize),
}

/// A proxy for one client connection.
pub struct Proxy {
    pub port: u16,
    /// Set once the fault took effect.
    pub fired: Arc<AtomicBool>,
}

fn cut(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

impl Proxy {
    /// Proxies to `server`; loses the answer to the first request whose bytes contain
    /// `trigger`.
    pub fn losing_answer_to(server: SocketAddr, trigger: &'static [u8]) -> Proxy {
        Proxy::start(server, trigger, Fault::LoseAnswer)
    }

    /// Proxies to `server`; `fault` strikes once the client's bytes contained `trigger`.
    pub fn start(server: SocketAddr, trigger: &'static [u8], fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let fired = Arc::new(AtomicBool::new(false));
        let done = fired.clone();
        std::thread::spawn(move || {
            // One client only: a second connection (a CancelRequest) is refused, as the
            // listener closes now.
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            drop(listener);
            let server = TcpStream::connect(server).expect("the proxy reaches the server");
            let armed = Arc::new(AtomicBool::new(false));
            let (c_read, s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (seen, c_fired) = (armed.clone(), done.clone());
            // Client to server.
            std::thread::spawn(move || {
                let (mut from, mut to) = (c_read, s_write);
                let mut window: Vec<u8> = Vec::new();
                let mut left = match fault {
                    Fault::CutAfterClientBytes(n) => n,
                    _ => usize::MAX,
                };
                let mut buf = [0u8; 8192];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let chunk = &buf[..n];
                    if seen.load(Ordering::SeqCst) {
                        match fault {
                            Fault::DropClientBytes => {
                                c_fired.store(true, Ordering::SeqCst);
                                continue;
                            }
                            Fault::CutAfterClientBytes(_) => {
                                let pass = left.min(n);
                                let _ = to.write_all(&chunk[..pass]);
                                left -= pass;
                                if left == 0 {
                                    c_fired.store(true, Ordering::SeqCst);
                                    cut(&from, &to);
                                    return;
                                }
                                continue;
                            }
                            _ => {}
                        }
                    }
                    window.extend_from_slice(chunk);
                    if window.windows(trigger.len()).any(|w| w == trigger) {
                        seen.store(true, Ordering::SeqCst);
                    }
                    // Keep only what a trigger split across reads needs.
                    let keep = window.len().saturating_sub(trigger.len());
                    window.drain(..keep);
                    if to.write_all(chunk).is_err() {
                        break;
                    }
                }
            });
            // Server to client.
            let (mut from, mut to) = (server, client);
            let mut left = match fault {
                Fault::CutAfterServerBytes(n) => n,
                _ => usize::MAX,
            };
            let mut buf = [0u8; 8192];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if armed.load(Ordering::SeqCst) {
                    match fault {
                        Fault::LoseAnswer => {
                            // Marked first: the client may see the cut before this thread
                            // goes on.
                            done.store(true, Ordering::SeqCst);
                            cut(&from, &to);
                            return;
                        }
                        Fault::CutAfterServerBytes(_) => {
                            let pass = left.min(n);
                            let _ = to.write_all(&buf[..pass]);
                            left -= pass;
                            if left == 0 {
                                done.store(true, Ordering::SeqCst);
                                cut(&from, &to);
                                return;
                            }
                            continue;
                        }
                        Fault::StallServer => {
                            done.store(true, Ordering::SeqCst);
                            continue;
                        }
                        _ => {}
                    }
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        Proxy { port, fired }
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
