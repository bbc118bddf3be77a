//! The connection fed arbitrary server bytes: start-up and authentication (trust, cleartext,
//! MD5, SCRAM challenges), then a simple query, a prepared query with a parameter and a row
//! stream. Whatever the bytes, every call ends (the bytes run out, so the socket reports its
//! end) with a result or an error, never a panic or a hang.
#![no_main]

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use aiopg_rt::{BoxFuture, BoxStream, Runtime, TcpOptions};
use libfuzzer_sys::fuzz_target;

/// A socket whose server side is the fuzz input, handed out `chunk` bytes per read.
#[derive(Debug)]
struct Replay {
    data: Vec<u8>,
    at: usize,
    chunk: usize,
}

impl futures_io::AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.chunk).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Poll::Ready(Ok(n))
    }
}

impl futures_io::AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A runtime whose one TCP connection is the replay; timers never fire (nothing here may
/// need one to finish) and spawned clean-up tasks are dropped.
#[derive(Debug)]
struct FuzzRuntime(Mutex<Option<Replay>>);

impl Runtime for FuzzRuntime {
    fn name(&self) -> &'static str {
        "fuzz"
    }
    fn spawn(&self, _: BoxFuture<'static, ()>) {}
    fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }
    fn resolve(&self, _: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]) })
    }
    fn connect_tcp(
        &self,
        _: SocketAddr,
        _: &TcpOptions,
    ) -> BoxFuture<'static, io::Result<BoxStream>> {
        let replay = self.0.lock().unwrap().take();
        Box::pin(async move {
            match replay {
                Some(r) => Ok(Box::new(r) as BoxStream),
                None => Err(io::ErrorKind::ConnectionRefused.into()),
            }
        })
    }
    fn connect_unix(&self, _: &Path) -> BoxFuture<'static, io::Result<BoxStream>> {
        Box::pin(async { Err(io::ErrorKind::Unsupported.into()) })
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let replay = Replay {
        data: rest.to_vec(),
        at: 0,
        chunk: usize::from(first % 32) + 1,
    };
    let rt = Arc::new(FuzzRuntime(Mutex::new(Some(replay))));
    futures_executor::block_on(async move {
        let Ok(options) = aiopg_conn::ConnectOptions::new(
            "host=127.0.0.1 hostaddr=127.0.0.1 port=5432 user=fuzz password=Zq9xSecretZq9x \
             dbname=fuzz sslmode=disable",
        ) else {
            return;
        };
        let conn = match options.runtime(rt).connect().await {
            Ok(conn) => conn,
            Err(e) => {
                assert!(!format!("{e} {e:?}").contains("Zq9xSecretZq9x"));
                return;
            }
        };
        let _ = conn.simple_query("SELECT 1").await;
        let _ = conn.query("SELECT $1::int4", &[&1i32]).await;
        if let Ok(mut rows) = conn.query_stream("SELECT 2", &[]).await {
            while let Some(row) =
                std::future::poll_fn(|cx| futures_core_stream_next(&mut rows, cx)).await
            {
                if row.is_err() {
                    break;
                }
            }
        }
    });
});

fn futures_core_stream_next(
    rows: &mut aiopg_conn::RowStream,
    cx: &mut Context<'_>,
) -> Poll<Option<aiopg_core::Result<aiopg_core::Row>>> {
    use futures_core::Stream;
    Pin::new(rows).poll_next(cx)
}
