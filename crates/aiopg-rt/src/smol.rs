//! The smol adapter: async-net sockets and async-io timers, which speak `futures-io` natively.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::{BoxFuture, BoxStream, Runtime, TcpOptions};

/// Runs aiopg on smol. Background clean-up tasks run on smol's global executor.
#[derive(Debug, Clone, Default)]
pub struct SmolRuntime(());

impl SmolRuntime {
    /// The smol adapter.
    pub fn new() -> Self {
        SmolRuntime(())
    }
}

impl Runtime for SmolRuntime {
    fn name(&self) -> &'static str {
        "smol"
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) {
        smol::spawn(future).detach();
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            smol::Timer::after(duration).await;
        })
    }

    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move { smol::net::resolve((host.as_str(), port)).await })
    }

    fn connect_tcp(
        &self,
        addr: SocketAddr,
        options: &TcpOptions,
    ) -> BoxFuture<'static, io::Result<BoxStream>> {
        let options = options.clone();
        Box::pin(async move {
            let stream = smol::net::TcpStream::connect(addr).await?;
            options.apply(&stream)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }

    fn connect_unix(&self, path: &Path) -> BoxFuture<'static, io::Result<BoxStream>> {
        let path = path.to_owned();
        Box::pin(async move {
            let stream = smol::net::unix::UnixStream::connect(path).await?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}
