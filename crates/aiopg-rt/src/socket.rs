//! Socket options shared by the adapters.

use std::io;
use std::time::Duration;

/// TCP settings applied to every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpOptions {
    /// Whether to enable TCP keepalive (libpq's `keepalives`, on by default).
    pub keepalive: bool,
    /// Idle time before the first keepalive probe (`keepalives_idle`).
    pub keepalive_idle: Option<Duration>,
    /// Time between probes (`keepalives_interval`).
    pub keepalive_interval: Option<Duration>,
    /// Probes before the link is declared dead (`keepalives_count`).
    pub keepalive_retries: Option<u32>,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            keepalive: true,
            keepalive_idle: None,
            keepalive_interval: None,
            keepalive_retries: None,
        }
    }
}

impl TcpOptions {
    /// Applies `TCP_NODELAY` and keepalive to a connected socket.
    ///
    /// Every query is one small write followed by a wait for the answer, so Nagle's algorithm
    /// would only add latency.
    pub fn apply<S: std::os::fd::AsFd>(&self, socket: &S) -> io::Result<()> {
        let sock = socket2::SockRef::from(socket);
        sock.set_tcp_nodelay(true)?;
        if self.keepalive {
            let mut ka = socket2::TcpKeepalive::new();
            if let Some(t) = self.keepalive_idle {
                ka = ka.with_time(t);
            }
            if let Some(t) = self.keepalive_interval {
                ka = ka.with_interval(t);
            }
            if let Some(n) = self.keepalive_retries {
                ka = ka.with_retries(n);
            }
            sock.set_tcp_keepalive(&ka)?;
        }
        Ok(())
    }
}
