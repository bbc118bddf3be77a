//! A loopback TCP proxy between a test's client and a server, which injects one fault into
//! its first connection once the client's bytes contain a trigger: cut both ways, reset,
//! lose the server's answer, cut after N more bytes either way (mid-message, mid-row,
//! mid-COPY, mid-TLS-record), stall the server's side for a while or forever, delay it, or
//! drop the client's side one way. The test can also cut or reset the link itself at any
//! moment (an idle connection). Plain threads; no external program.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What happens once the trigger went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: the link stays whole until the test cuts or resets it.
    None,
    /// Both ways are cut at once: the bytes holding the trigger never reach the server.
    Cut,
    /// Both sockets are reset (RST) at once: the trigger's bytes never reach the server.
    Reset,
    /// The server's next bytes (its answer) are dropped and both sides cut.
    LoseAnswer,
    /// This many more bytes of the server's pass, then both sides are cut (mid-row).
    CutAfterServerBytes(usize),
    /// Nothing more of the server's reaches the client; both sockets stay open.
    StallServer,
    /// The server's bytes are held back this long, then flow again.
    StallServerFor(Duration),
    /// Every later chunk of the server's is delayed this long.
    DelayServer(Duration),
    /// Nothing more of the client's reaches the server (one way); the server's side flows.
    DropClientBytes,
    /// This many more bytes of the client's pass, then both sides are cut (mid-COPY).
    CutAfterClientBytes(usize),
}

/// A proxy; its first connection gets the fault.
pub struct Proxy {
    pub port: u16,
    /// Set once the fault took effect.
    pub fired: Arc<AtomicBool>,
    /// The first connection's sockets (client side, server side), once accepted.
    link: Arc<Mutex<Option<(TcpStream, TcpStream)>>>,
}

fn cut(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

/// Makes closing `s` send a RST instead of a FIN.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(Shutdown::Both);
}

impl Proxy {
    /// Proxies to `server`; loses the answer to the first request whose bytes contain
    /// `trigger`.
    pub fn losing_answer_to(server: SocketAddr, trigger: &'static [u8]) -> Proxy {
        Proxy::start(server, trigger, Fault::LoseAnswer)
    }

    /// Proxies one connection to `server`; `fault` strikes once the client's bytes contained
    /// `trigger`. A second connection (a CancelRequest) is refused.
    pub fn start(server: SocketAddr, trigger: &'static [u8], fault: Fault) -> Proxy {
        Proxy::spawn(server, trigger, fault, false)
    }

    /// As [`start`](Self::start), but later connections (a pool's replacements, a listener
    /// reconnecting, cancel requests) pass through untouched.
    pub fn start_multi(server: SocketAddr, trigger: &'static [u8], fault: Fault) -> Proxy {
        Proxy::spawn(server, trigger, fault, true)
    }

    fn spawn(server: SocketAddr, trigger: &'static [u8], fault: Fault, multi: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let fired = Arc::new(AtomicBool::new(false));
        let link = Arc::new(Mutex::new(None));
        let (done, first_link) = (fired.clone(), link.clone());
        std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let Ok(upstream) = TcpStream::connect(server) else {
                return;
            };
            *first_link.lock().unwrap() =
                Some((client.try_clone().unwrap(), upstream.try_clone().unwrap()));
            std::thread::spawn(move || relay(client, upstream, trigger, fault, done));
            if !multi {
                // One client only: the listener closes now.
                return;
            }
            while let Ok((client, _)) = listener.accept() {
                if let Ok(upstream) = TcpStream::connect(server) {
                    let unused = Arc::new(AtomicBool::new(false));
                    std::thread::spawn(move || relay(client, upstream, b"", Fault::None, unused));
                }
            }
        });
        Proxy { port, fired, link }
    }

    /// Cuts the first connection both ways now.
    pub fn cut_now(&self) {
        if let Some((c, s)) = self.link.lock().unwrap().as_ref() {
            self.fired.store(true, Ordering::SeqCst);
            cut(c, s);
        }
    }

    /// Resets the first connection both ways now.
    pub fn reset_now(&self) {
        if let Some((c, s)) = self.link.lock().unwrap().as_ref() {
            self.fired.store(true, Ordering::SeqCst);
            reset(c);
            reset(s);
        }
    }
}

/// Relays one connection both ways, `fault` striking once the client's bytes held `trigger`.
fn relay(
    client: TcpStream,
    server: TcpStream,
    trigger: &'static [u8],
    fault: Fault,
    done: Arc<AtomicBool>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
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
            if !trigger.is_empty() && window.windows(trigger.len()).any(|w| w == trigger) {
                match fault {
                    Fault::Cut | Fault::Reset => {
                        c_fired.store(true, Ordering::SeqCst);
                        if fault == Fault::Reset {
                            reset(&from);
                            reset(&to);
                        } else {
                            cut(&from, &to);
                        }
                        return;
                    }
                    _ => seen.store(true, Ordering::SeqCst),
                }
            }
            // Keep only what a trigger split across reads needs.
            let keep = window.len().saturating_sub(trigger.len());
            window.drain(..keep);
            if to.write_all(chunk).is_err() {
                break;
            }
        }
        // The client is gone: the server sees its end too.
        let _ = to.shutdown(Shutdown::Write);
    });
    // Server to client.
    let (mut from, mut to) = (server, client);
    let mut left = match fault {
        Fault::CutAfterServerBytes(n) => n,
        _ => usize::MAX,
    };
    let mut stalled_until: Option<Instant> = None;
    let mut buf = [0u8; 8192];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if armed.load(Ordering::SeqCst) {
            match fault {
                Fault::LoseAnswer => {
                    // Marked first: the client may see the cut before this thread goes on.
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
                Fault::StallServerFor(d) => {
                    // Held back (the stall is this thread not writing), then on its way.
                    let until = *stalled_until.get_or_insert_with(|| Instant::now() + d);
                    done.store(true, Ordering::SeqCst);
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                }
                Fault::DelayServer(d) => {
                    done.store(true, Ordering::SeqCst);
                    std::thread::sleep(d);
                }
                _ => {}
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
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

/// One link of a [`Chaos`] proxy.
struct ChaosLink {
    client: TcpStream,
    server: TcpStream,
    /// While set, the server's bytes are held back.
    stalled: Arc<AtomicBool>,
    /// Cleared when the link ended.
    alive: Arc<AtomicBool>,
}

/// A proxy for any number of connections (a pool's), which the test strikes at random
/// moments: [`Chaos::strike`] cuts, resets or stalls (then cuts) one live link.
pub struct Chaos {
    pub port: u16,
    links: Arc<Mutex<Vec<ChaosLink>>>,
}

/// What [`Chaos::strike`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    Cut,
    Reset,
    /// The server's bytes held back for a while, then the link cut.
    StallThenCut,
}

impl Chaos {
    pub fn start(server: SocketAddr) -> Chaos {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the chaos proxy");
        let port = listener.local_addr().unwrap().port();
        let links: Arc<Mutex<Vec<ChaosLink>>> = Arc::default();
        let accepted = links.clone();
        std::thread::spawn(move || {
            while let Ok((client, _)) = listener.accept() {
                let Ok(upstream) = TcpStream::connect(server) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let stalled = Arc::new(AtomicBool::new(false));
                let alive = Arc::new(AtomicBool::new(true));
                let mut list = accepted.lock().unwrap();
                list.retain(|l| l.alive.load(Ordering::SeqCst));
                list.push(ChaosLink {
                    client: client.try_clone().unwrap(),
                    server: upstream.try_clone().unwrap(),
                    stalled: stalled.clone(),
                    alive: alive.clone(),
                });
                drop(list);
                let (c_read, s_write) =
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                let up_alive = alive.clone();
                std::thread::spawn(move || {
                    pump(c_read, s_write, None);
                    up_alive.store(false, Ordering::SeqCst);
                });
                std::thread::spawn(move || {
                    pump(upstream, client, Some(stalled));
                    alive.store(false, Ordering::SeqCst);
                });
            }
        });
        Chaos { port, links }
    }

    /// Strikes the live link `pick` picks among `n` (`pick(n)` < n) with `how`; false when
    /// no link is alive.
    pub fn strike(&self, pick: impl FnOnce(usize) -> usize, how: Strike) -> bool {
        let list = self.links.lock().unwrap();
        let live: Vec<&ChaosLink> = list
            .iter()
            .filter(|l| l.alive.load(Ordering::SeqCst))
            .collect();
        if live.is_empty() {
            return false;
        }
        let link = live[pick(live.len()) % live.len()];
        match how {
            Strike::Cut => cut(&link.client, &link.server),
            Strike::Reset => {
                reset(&link.client);
                reset(&link.server);
            }
            Strike::StallThenCut => {
                link.stalled.store(true, Ordering::SeqCst);
                let (c, s) = (
                    link.client.try_clone().unwrap(),
                    link.server.try_clone().unwrap(),
                );
                std::thread::spawn(move || {
                    // The fault's length, not a synchronisation: the link then dies.
                    std::thread::sleep(Duration::from_millis(150));
                    cut(&c, &s);
                });
            }
        }
        true
    }
}

/// Copies `from` to `to` until either ends; while `stalled` is set, holds the bytes back.
fn pump(mut from: TcpStream, mut to: TcpStream, stalled: Option<Arc<AtomicBool>>) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if stalled.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            // Held back for good: the link is cut soon.
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
