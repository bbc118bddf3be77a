//! TLS negotiation and channel binding against a fake server on 127.0.0.1 that records what
//! the client sends: what a real server never does (asking for a cleartext password when the
//! client demands channel binding, bytes in the clear after agreeing to TLS).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use aiopg::ErrorKind;

use crate::support::{message, options, rt_test};

/// A guard on the fake server's reads, never a synchronisation: each ends on an event.
const PATIENCE: Duration = Duration::from_secs(60);

/// The SSLRequest code (1234 5679).
const SSL_REQUEST: [u8; 4] = [0x04, 0xd2, 0x16, 0x2f];

/// What the fake server does after the client's first packet.
#[derive(Clone, Copy)]
enum Act {
    /// Answers the StartupMessage with this authentication request.
    AskAuth(&'static [u8]),
    /// Answers SSLRequest with `S` and, in the same write, bytes in the clear.
    SThenGarbage,
    /// Answers SSLRequest with `N`, then a trust login.
    RefuseTls,
}

/// What the fake server saw from the client.
#[derive(Debug, Default)]
struct Seen {
    /// The first packet was an SSLRequest.
    ssl_request: bool,
    /// Message types the client sent after the StartupMessage.
    after_start_up: Vec<u8>,
}

fn packet(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
    s.read_exact(&mut body)?;
    Ok(body)
}

/// Reads frontend messages until the client closes its socket; returns their types.
fn rest(s: &mut TcpStream) -> Vec<u8> {
    let mut types = Vec::new();
    loop {
        let mut head = [0u8; 5];
        if s.read_exact(&mut head).is_err() {
            return types;
        }
        types.push(head[0]);
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        if s.read_exact(&mut body).is_err() {
            return types;
        }
    }
}

fn trust_login() -> Vec<u8> {
    let mut out = message(b'R', &0u32.to_be_bytes());
    out.extend(message(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
    out.extend(message(b'S', b"server_version\x0016.4\0"));
    out.extend(message(b'Z', b"I"));
    out
}

struct Fake {
    port: u16,
    thread: JoinHandle<io::Result<Seen>>,
}

impl Fake {
    fn start(act: Act) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("local address").port();
        let thread = thread::spawn(move || serve(listener, act));
        Fake { port, thread }
    }

    fn dsn(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1 hostaddr=127.0.0.1 port={} user=u password=secret-pw dbname=d \
             connect_timeout=10 {extra}",
            self.port
        )
    }

    fn finish(self) -> Seen {
        self.thread
            .join()
            .expect("fake server panicked")
            .expect("fake server failed")
    }
}

fn serve(listener: TcpListener, act: Act) -> io::Result<Seen> {
    let (mut s, _) = listener.accept()?;
    s.set_read_timeout(Some(PATIENCE))?;
    let mut seen = Seen::default();
    let mut first = packet(&mut s)?;
    if first.get(..4) == Some(&SSL_REQUEST[..]) {
        seen.ssl_request = true;
        match act {
            Act::SThenGarbage => {
                // The client must refuse these rather than read them as TLS.
                s.write_all(b"Sxxxxxxxxxxxxxxxxxxx")?;
                rest(&mut s);
                return Ok(seen);
            }
            _ => s.write_all(b"N")?,
        }
        // A client that requires TLS hangs up here.
        first = match packet(&mut s) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(seen),
            Err(e) => return Err(e),
        };
    }
    let _ = first;
    match act {
        Act::AskAuth(request) => s.write_all(request)?,
        Act::RefuseTls => s.write_all(&trust_login())?,
        Act::SThenGarbage => {}
    }
    seen.after_start_up = rest(&mut s);
    Ok(seen)
}

const CLEARTEXT: &[u8] = b"R\0\0\0\x08\0\0\0\x03";
const MD5: &[u8] = b"R\0\0\0\x0c\0\0\0\x05salt";
/// AuthenticationSASL offering SCRAM-SHA-256 only.
const SASL: &[u8] = b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0";

rt_test! {
    async fn channel_binding_require_sends_no_credential_to_a_server_asking_for_a_password() {
        for (request, what) in [(CLEARTEXT, "cleartext"), (MD5, "md5"), (SASL, "SCRAM without TLS")] {
            let fake = Fake::start(Act::AskAuth(request));
            let e = options(&fake.dsn("sslmode=prefer channel_binding=require"))
                .connect()
                .await
                .expect_err("channel_binding=require must refuse");
            assert_eq!(e.kind(), ErrorKind::Auth, "{what}: {e}");
            let text = e.to_string();
            assert!(text.contains("channel binding"), "{what}: {text}");
            assert!(!text.contains("secret-pw"), "{what}: the password leaked: {text}");
            let seen = fake.finish();
            assert!(seen.ssl_request, "{what}: prefer asks for TLS first");
            // Nothing but (at most) a Terminate: no PasswordMessage, no SASL response.
            assert!(
                seen.after_start_up.iter().all(|&t| t == b'X'),
                "{what}: the client sent {:?} after start-up",
                seen.after_start_up
            );
        }
    }
}

rt_test! {
    async fn require_auth_refuses_a_method_it_does_not_list_before_answering() {
        let fake = Fake::start(Act::AskAuth(CLEARTEXT));
        let e = options(&fake.dsn("sslmode=disable require_auth=scram-sha-256"))
            .connect()
            .await
            .expect_err("require_auth=scram-sha-256 must refuse cleartext");
        assert_eq!(e.kind(), ErrorKind::Auth);
        let text = e.to_string();
        assert!(
            text.contains("require_auth") || text.contains("requirement \"scram-sha-256\""),
            "{text}"
        );
        assert!(text.contains("cleartext"), "{text}");
        let seen = fake.finish();
        assert!(!seen.ssl_request, "sslmode=disable never asks for TLS");
        assert!(seen.after_start_up.iter().all(|&t| t == b'X'), "{:?}", seen.after_start_up);
    }
}

rt_test! {
    async fn bytes_in_the_clear_after_the_servers_s_are_refused() {
        for mode in ["require", "prefer"] {
            let fake = Fake::start(Act::SThenGarbage);
            let e = options(&fake.dsn(&format!("sslmode={mode}")))
                .connect()
                .await
                .expect_err("unencrypted bytes after S must be refused");
            assert_eq!(e.kind(), ErrorKind::Protocol, "sslmode={mode}: {e}");
            assert!(e.to_string().contains("unencrypted"), "sslmode={mode}: {e}");
            assert!(fake.finish().ssl_request);
        }
    }
}

rt_test! {
    async fn a_server_without_tls_is_used_in_the_clear_by_prefer_and_refused_by_require() {
        let fake = Fake::start(Act::RefuseTls);
        let conn = options(&fake.dsn("sslmode=prefer"))
            .connect()
            .await
            .expect("prefer goes on in the clear when the server says N");
        conn.close().await;
        let seen = fake.finish();
        assert!(seen.ssl_request, "prefer asks first");

        let fake = Fake::start(Act::RefuseTls);
        let e = options(&fake.dsn("sslmode=require"))
            .connect()
            .await
            .expect_err("require refuses a server without TLS");
        assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
        assert!(e.to_string().contains("does not support TLS"), "{e}");
        assert!(fake.finish().ssl_request);
    }
}
