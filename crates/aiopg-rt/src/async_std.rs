//! The async-std adapter. async-std is discontinued upstream: new code should prefer smol,
//! which shares its reactor.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use async_std::net::ToSocketAddrs;

use crate::{BoxFuture, BoxStream, Runtime, TcpOptions};

/// Runs aiopg on async-std.
#[derive(Debug, Clone, Default)]
pub struct AsyncStdRuntime(());

impl AsyncStdRuntime {
    /// The async-std adapter.
    pub fn new() -> Self {
        AsyncStdRuntime(())
    }
}

impl Runtime for AsyncStdRuntime {
    fn name(&self) -> &'static str {
        "async-std"
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) {
        // Dropping the handle detaches the task.
        drop(async_std::task::spawn(future));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async_std::task::sleep(duration))
    }

    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move { Ok((host.as_str(), port).to_socket_addrs().await?.collect()) })
    }

    fn connect_tcp(
        &self,
        addr: SocketAddr,
        options: &TcpOptions,
    ) -> BoxFuture<'static, io::Result<BoxStream>> {
        let options = options.clone();
        Box::pin(async move {
            let stream = async_std::net::TcpStream::connect(addr).await?;
            options.apply(&stream)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }

    fn connect_unix(&self, path: &Path) -> BoxFuture<'static, io::Result<BoxStream>> {
        let path = path.to_owned();
        Box::pin(async move {
            let stream = async_std::os::unix::net::UnixStream::connect(path).await?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}
