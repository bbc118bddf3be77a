//! Broken and hostile servers, and hostile input.
//!
//! A fake server on 127.0.0.1 (a `std::net::TcpListener` served by a plain thread) completes
//! a trust start-up, then speaks nonsense. The client must close the connection with a
//! `Protocol` error that says so, refuse a header at once when its type cannot have that
//! length (never waiting for a body no real server would send), and never make room for a
//! length it was only told about. The fake server never touches the test cluster; these
//! tests need none.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use aiopg::{Connection, Error, ErrorKind};

use crate::support::{message, options, rt_test};

/// How long the fake server waits for the client before giving up (a guard, never a
/// synchronisation: every wait ends on an event well before it).
const SERVER_PATIENCE: Duration = Duration::from_secs(60);

/// A message header alone: type and a length word of `len`.
fn header(tag: u8, len: u32) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&len.to_be_bytes());
    m
}

fn parameter(name: &str, value: &str) -> Vec<u8> {
    message(b'S', format!("{name}\0{value}\0").as_bytes())
}

/// What a server sends for a trust login: AuthenticationOk, BackendKeyData, the reported
/// parameters, ReadyForQuery.
fn trust_start_up() -> Vec<u8> {
    let mut out = message(b'R', &0u32.to_be_bytes());
    let mut key = 4242u32.to_be_bytes().to_vec();
    key.extend_from_slice(&7u32.to_be_bytes());
    out.extend(message(b'K', &key));
    for (name, value) in [
        ("server_version", "16.4"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ] {
        out.extend(parameter(name, value));
    }
    out.extend(message(b'Z', b"I"));
    out
}

/// A RowDescription of one text column.
fn one_text_column() -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend_from_slice(b"x\0");
    body.extend_from_slice(&0u32.to_be_bytes()); // table
    body.extend_from_slice(&0u16.to_be_bytes()); // column
    body.extend_from_slice(&25u32.to_be_bytes()); // text
    body.extend_from_slice(&(-1i16).to_be_bytes()); // variable length
    body.extend_from_slice(&(-1i32).to_be_bytes()); // no modifier
    body.extend_from_slice(&0u16.to_be_bytes()); // text format
    message(b'T', &body)
}

/// What the fake server does.
enum Act {
    /// Answers the StartupMessage with these bytes instead of a login.
    AtStartUp(Vec<u8>),
    /// Logs in, reads the first request and answers it with these bytes.
    Answer(Vec<u8>),
    /// As `Answer`, then waits for the client's CancelRequest on the listener and hangs up.
    AnswerThenHangUpOnCancel(Vec<u8>),
    /// Asks for SCRAM-SHA-256 and answers the client's first message with a challenge asking
    /// for `iterations`, whose nonce extends the client's (or, with `echo` false, does not);
    /// then, if the client goes on, answers its proof with `last` (an AuthenticationSASLFinal,
    /// say, with a server signature that is not the right one).
    Scram {
        iterations: u32,
        echo: bool,
        last: Option<Vec<u8>>,
    },
}

/// What the fake server saw.
#[derive(Debug)]
struct Seen {
    /// The client closed its socket after the nonsense.
    client_closed: bool,
    /// A CancelRequest arrived.
    cancelled: bool,
}

struct FakeServer {
    port: u16,
    thread: JoinHandle<io::Result<Seen>>,
}

impl FakeServer {
    fn start(act: Act) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("local address").port();
        let thread = thread::spawn(move || serve(listener, act));
        FakeServer { port, thread }
    }

    fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 hostaddr=127.0.0.1 port={} user=hostile dbname=hostile \
             sslmode=disable connect_timeout=10",
            self.port
        )
    }

    async fn connect(&self) -> Connection {
        options(&self.dsn())
            .connect()
            .await
            .expect("the fake server's start-up is a valid one")
    }

    /// Waits for the server thread, which ends once the client has closed its socket (or
    /// the server hung up itself).
    fn finish(self) -> Seen {
        self.thread
            .join()
            .expect("fake server panicked")
            .expect("fake server failed")
    }
}

fn serve(listener: TcpListener, act: Act) -> io::Result<Seen> {
    let (mut s, _) = listener.accept()?;
    s.set_read_timeout(Some(SERVER_PATIENCE))?;
    read_start_up(&mut s)?;
    let answer = match act {
        Act::AtStartUp(bytes) => {
            s.write_all(&bytes)?;
            return Ok(Seen {
                client_closed: closed_by_peer(&mut s),
                cancelled: false,
            });
        }
        Act::Answer(bytes) => bytes,
        Act::Scram {
            iterations,
            echo,
            last,
        } => {
            s.write_all(&message(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0"))?;
            // SASLInitialResponse: type, length, mechanism, length of the data, the data
            // ("n,,n=,r=<client nonce>").
            let mut head = [0u8; 5];
            s.read_exact(&mut head)?;
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0u8; len - 4];
            s.read_exact(&mut body)?;
            let text = String::from_utf8_lossy(&body);
            // Everything after the first ",r=": the nonce is printable ASCII without commas,
            // and may itself contain "r=".
            let nonce = text
                .split_once(",r=")
                .map(|(_, rest)| rest)
                .unwrap_or_default()
                .trim_end_matches('\0');
            let nonce = if echo {
                nonce.to_owned()
            } else {
                "not-the-clients".to_owned()
            };
            let mut challenge = 11u32.to_be_bytes().to_vec();
            challenge.extend_from_slice(
                format!("r={nonce}hostile,s=c2FsdHNhbHRzYWx0,i={iterations}").as_bytes(),
            );
            s.write_all(&message(b'R', &challenge))?;
            if let Some(last) = last {
                // The client's proof (SASLResponse), then the forged answer.
                if read_message(&mut s).is_ok() {
                    s.write_all(&last)?;
                }
            }
            return Ok(Seen {
                client_closed: closed_by_peer(&mut s),
                cancelled: false,
            });
        }
        Act::AnswerThenHangUpOnCancel(bytes) => {
            s.write_all(&trust_start_up())?;
            read_message(&mut s)?;
            s.write_all(&bytes)?;
            // The client gives up on its statement and cancels it on a new socket; only then
            // does the server hang up, so the client must have read what was sent.
            let (mut c, _) = listener.accept()?;
            c.set_read_timeout(Some(SERVER_PATIENCE))?;
            let mut request = [0u8; 16];
            c.read_exact(&mut request)?;
            let cancelled = request[..8] == [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
            drop(c);
            s.shutdown(Shutdown::Both)?;
            return Ok(Seen {
                client_closed: false,
                cancelled,
            });
        }
    };
    s.write_all(&trust_start_up())?;
    read_message(&mut s)?;
    s.write_all(&answer)?;
    Ok(Seen {
        client_closed: closed_by_peer(&mut s),
        cancelled: false,
    })
}

/// Reads the StartupMessage: a length word, then the rest.
fn read_start_up(s: &mut TcpStream) -> io::Result<()> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
    s.read_exact(&mut body)
}

/// Reads one frontend message: type, length word, body.
fn read_message(s: &mut TcpStream) -> io::Result<u8> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    s.read_exact(&mut body)?;
    Ok(head[0])
}

/// Reads (and discards) whatever the client still sends until it closes its socket: true
/// when it did, false when it kept the connection open past [`SERVER_PATIENCE`].
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                )
            }
        }
    }
}

/// The first query met nonsense: a `Protocol` error that says what the server sent (`what`)
/// and that the connection was closed; the connection reports itself closed, and the next
/// query fails at once, the same way.
async fn assert_broken(conn: &Connection, err: &Error, what: &str) {
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    let text = err.to_string();
    assert!(text.contains(what), "{text}");
    assert!(text.contains("connection was closed"), "{text}");
    assert!(conn.is_closed());
    let started = Instant::now();
    let again = conn.query("SELECT 1", &[]).await.expect_err("closed");
    assert_eq!(again.kind(), ErrorKind::Protocol, "{again}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the second query took {:?}",
        started.elapsed()
    );
    assert!(conn.is_closed());
}

/// A query's answer is nonsense: the query fails as [`assert_broken`] says, and the client
/// hangs up on the server.
async fn answer_with(bytes: Vec<u8>, what: &str) {
    let server = FakeServer::start(Act::Answer(bytes));
    let conn = server.connect().await;
    let err = conn
        .simple_query("SELECT 1")
        .await
        .expect_err("the answer is nonsense");
    assert_broken(&conn, &err, what).await;
    assert!(
        server.finish().client_closed,
        "the client kept the socket open"
    );
}

/// This process's resident memory and its peak, in bytes (Linux).
fn memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Far below the gigabyte a believed header would cost, far above what other tests running
/// at the same time in this process allocate.
const MEMORY_MARGIN: u64 = 100 << 20;

rt_test! {
    async fn an_unknown_message_type_is_a_protocol_error_and_closes() {
        answer_with(message(b'q', b"what is this"), "unknown type 'q'").await;
    }
}

rt_test! {
    async fn garbage_bytes_are_a_protocol_error_and_close() {
        // A web server's answer: 'H' is a real type (CopyOutResponse), but not 1.4 GB long.
        answer_with(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec(),
            "CopyOutResponse ('H')",
        )
        .await;
        // Bytes that are no message type at all.
        answer_with(vec![0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0], "unknown type 0xde").await;
    }
}

rt_test! {
    async fn a_ready_for_query_with_a_huge_length_fails_on_its_header() {
        // Only the header is sent and the server then waits: the error cannot be waiting
        // for a body.
        answer_with(header(b'Z', 0x7fff_ffff), "ReadyForQuery ('Z')").await;
    }
}

rt_test! {
    async fn an_oversized_parameter_status_fails_on_its_header() {
        let mut bytes = header(b'S', 1 << 20);
        bytes.extend_from_slice(b"application_name\0");
        answer_with(bytes, "ParameterStatus ('S')").await;
        // The same during start-up, after authentication.
        let mut at_start_up = message(b'R', &0u32.to_be_bytes());
        at_start_up.extend(header(b'S', 1 << 20));
        let server = FakeServer::start(Act::AtStartUp(at_start_up));
        let err = options(&server.dsn()).connect().await.expect_err("nonsense");
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.to_string().contains("ParameterStatus ('S')"), "{err}");
        assert!(server.finish().client_closed);
    }
}

rt_test! {
    async fn a_row_over_the_one_gigabyte_limit_fails_on_its_header() {
        let mut bytes = one_text_column();
        bytes.extend(header(b'D', (1 << 30) + 1));
        answer_with(bytes, "DataRow ('D')").await;
    }
}

rt_test! {
    async fn a_row_claiming_a_gigabyte_then_stalling_costs_no_gigabyte() {
        let before = memory();
        // A row header claiming 1 GiB (which a real row may be), a few bytes of it, then
        // nothing: the statement timeout ends the wait, the server hangs up on the cancel.
        let mut bytes = one_text_column();
        bytes.extend(header(b'D', 1 << 30));
        bytes.extend_from_slice(&1u16.to_be_bytes());
        bytes.extend_from_slice(&((1u32 << 30) - 10).to_be_bytes());
        bytes.extend_from_slice(b"xxxx");
        let server = FakeServer::start(Act::AnswerThenHangUpOnCancel(bytes));
        let conn = server.connect().await;
        let err = conn
            .with_timeout(Some(Duration::from_millis(300)), conn.simple_query("SELECT 1"))
            .await
            .expect_err("the row never arrives");
        // The server hung up after the header: the client read it before it saw the end.
        assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
        assert!(err.to_string().contains("closed the connection"), "{err}");
        assert!(conn.is_closed());
        assert!(server.finish().cancelled, "the timeout sent no CancelRequest");
        let again = conn.query("SELECT 1", &[]).await.expect_err("closed");
        assert!(again.is_closed(), "{again}");
        if let (Some((rss0, peak0)), Some((rss1, peak1))) = (before, memory()) {
            assert!(
                rss1 < rss0 + MEMORY_MARGIN,
                "resident memory grew from {rss0} to {rss1} bytes"
            );
            assert!(
                peak1 < peak0 + MEMORY_MARGIN,
                "peak memory grew from {peak0} to {peak1} bytes"
            );
        }
        drop(conn);
    }
}

rt_test! {
    async fn a_scram_challenge_with_a_huge_iteration_count_is_refused_at_once() {
        let server = FakeServer::start(Act::Scram {
            iterations: 2_000_000_000,
            echo: true,
            last: None,
        });
        let started = Instant::now();
        let err = options(&format!("{} password=secret", server.dsn()))
            .connect()
            .await
            .expect_err("two billion PBKDF2 rounds");
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        assert!(err.to_string().contains("2000000000 iterations"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(server.finish().client_closed);
    }
}

/// Connects with a password to a fake SCRAM server doing `act`: the connect must fail with
/// an `Auth` error containing `what` within 5 s, without showing the password, and the
/// client must hang up.
async fn scram_refused(act: Act, what: &str) {
    let server = FakeServer::start(act);
    let started = Instant::now();
    let err = options(&format!("{} password=Zq9xSecret", server.dsn()))
        .connect()
        .await
        .expect_err("a forged SCRAM exchange");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(err.to_string().contains(what), "{err}");
    assert!(!format!("{err} {err:?}").contains("Zq9xSecret"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(server.finish().client_closed);
}

rt_test! {
    async fn a_scram_challenge_that_does_not_extend_the_clients_nonce_is_refused() {
        let act = Act::Scram { iterations: 4096, echo: false, last: None };
        scram_refused(act, "SCRAM challenge is invalid").await;
    }
}

rt_test! {
    async fn a_scram_server_signature_that_is_wrong_is_refused() {
        // A well-formed AuthenticationSASLFinal whose signature (v=) is 32 zero bytes.
        let mut last = 12u32.to_be_bytes().to_vec();
        last.extend_from_slice(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        let act = Act::Scram { iterations: 4096, echo: true, last: Some(message(b'R', &last)) };
        scram_refused(act, "could not prove it knows the password").await;
        // An answer that is no SASLFinal at all: an AuthenticationOk in its place.
        let act = Act::Scram {
            iterations: 4096,
            echo: true,
            last: Some(message(b'R', &0u32.to_be_bytes())),
        };
        let server = FakeServer::start(act);
        let err = options(&format!("{} password=Zq9xSecret", server.dsn()))
            .connect()
            .await
            .expect_err("AuthenticationOk without the server's proof");
        assert!(matches!(err.kind(), ErrorKind::Protocol | ErrorKind::Auth), "{err}");
        assert!(server.finish().client_closed);
    }
}

rt_test! {
    async fn a_ready_for_query_with_an_unknown_status_is_a_protocol_error() {
        let mut bytes = one_text_column();
        bytes.extend(message(b'D', &[0, 1, 0, 0, 0, 1, b'1']));
        bytes.extend(message(b'C', b"SELECT 1\0"));
        bytes.extend(message(b'Z', b"X"));
        answer_with(bytes, "unknown transaction status 'X'").await;
    }
}

rt_test! {
    async fn a_flood_of_notices_and_notifications_stays_bounded() {
        const EACH: usize = 50_000;
        let before = memory();
        let mut bytes = Vec::new();
        for i in 0..EACH {
            bytes.extend(message(
                b'N',
                format!("SNOTICE\0C00000\0Mnotice {i}\0\0").as_bytes(),
            ));
            let mut n = 7u32.to_be_bytes().to_vec();
            n.extend_from_slice(format!("chan\0payload {i}\0").as_bytes());
            bytes.extend(message(b'A', &n));
        }
        bytes.extend(one_text_column());
        bytes.extend(message(b'D', &[0, 1, 0, 0, 0, 1, b'1']));
        bytes.extend(message(b'C', b"SELECT 1\0"));
        bytes.extend(message(b'Z', b"I"));
        let server = FakeServer::start(Act::Answer(bytes));
        let conn = server.connect().await;
        let started = Instant::now();
        let rows = conn.simple_query("SELECT 1").await.expect("the answer after the flood");
        assert!(!rows.is_empty());
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
        // What no stream took is bounded by the event capacity; the first stream learns how
        // many were dropped, then gets the newest ones.
        let mut notes = conn.notifies();
        let first = futures_util::StreamExt::next(&mut notes).await.expect("an item");
        let err = first.expect_err("a Lagged error first");
        assert_eq!(err.kind(), ErrorKind::Lagged, "{err}");
        let kept = aiopg::DEFAULT_EVENT_CAPACITY;
        assert_eq!(err.missed(), Some((EACH - kept) as u64), "{err}");
        let next = futures_util::StreamExt::next(&mut notes).await.expect("an item").unwrap();
        assert_eq!(next.payload, format!("payload {}", EACH - kept));
        let mut notices = conn.notices();
        let err = futures_util::StreamExt::next(&mut notices).await.unwrap().unwrap_err();
        assert_eq!(err.missed(), Some((EACH - kept) as u64), "{err}");
        if let (Some((_, peak0)), Some((_, peak1))) = (before, memory()) {
            eprintln!(
                "{EACH} notices and {EACH} notifications: peak resident memory grew by {} KiB",
                peak1.saturating_sub(peak0) / 1024
            );
            assert!(peak1 < peak0 + MEMORY_MARGIN, "peak memory grew from {peak0} to {peak1}");
        }
        drop((notes, notices));
        drop(conn);
        server.finish();
    }
}

rt_test! {
    async fn a_huge_authentication_message_fails_the_connect() {
        let mut bytes = header(b'R', 1 << 30);
        bytes.extend_from_slice(&10u32.to_be_bytes());
        let server = FakeServer::start(Act::AtStartUp(bytes));
        let started = Instant::now();
        let err = options(&server.dsn()).connect().await.expect_err("nonsense");
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.to_string().contains("Authentication ('R')"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(server.finish().client_closed);
    }
}

rt_test! {
    async fn a_web_server_at_start_up_is_a_protocol_error_with_a_hint() {
        let server = FakeServer::start(Act::AtStartUp(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ));
        let err = options(&server.dsn()).connect().await.expect_err("not PostgreSQL");
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.to_string().contains("check the host and port"), "{err}");
        assert!(server.finish().client_closed);
    }
}

/// A port on 127.0.0.1 that refuses connections: bound, then released.
fn refusing_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    listener.local_addr().expect("local address").port()
}

rt_test! {
    async fn a_megabyte_host_name_is_cut_in_the_error() {
        let host = "h".repeat(1 << 20);
        let dsn = format!(
            "host={host} hostaddr=127.0.0.1 port={} user=u dbname=d sslmode=disable",
            refusing_port()
        );
        let err = options(&dsn).connect().await.expect_err("refused");
        let text = err.to_string();
        assert!(text.len() < 1000, "{} bytes: {}…", text.len(), &text[..300]);
        assert!(text.contains(&format!("… ({} bytes)", host.len())), "{text}");
        assert!(text.contains("127.0.0.1"), "{text}");
    }
}

rt_test! {
    async fn a_megabyte_dbname_is_a_config_error_before_connecting() {
        // A listener that must see no connection: the start-up message is refused first.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("local address").port();
        let dbname = "d".repeat(1 << 20);
        let dsn = format!(
            "host=127.0.0.1 hostaddr=127.0.0.1 port={port} user=u dbname={dbname} sslmode=disable"
        );
        let err = options(&dsn).connect().await.expect_err("too long");
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        let text = err.to_string();
        assert!(text.len() < 1000, "{} bytes", text.len());
        assert!(text.contains("`dbname`") && text.contains("10000"), "{text}");
        assert_eq!(
            listener.accept().map(|_| ()).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock),
            "a connection was opened"
        );
    }
}
