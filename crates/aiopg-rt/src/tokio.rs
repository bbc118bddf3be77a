//! The tokio adapter: tokio's sockets behind tokio-util's `futures-io` compat layer.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::{BoxFuture, BoxStream, Runtime, TcpOptions};

/// Runs aiopg on tokio. Needs a tokio runtime with I/O and time enabled.
///
/// [`Runtime::spawn`] called outside any tokio runtime drops the task instead of panicking
/// (see [Background tasks](crate#background-tasks)). Host name lookups run on tokio's
/// blocking thread pool.
#[derive(Debug, Clone, Default)]
pub struct TokioRuntime(());

impl TokioRuntime {
    /// The tokio adapter; it uses the tokio runtime the futures are polled on.
    pub fn new() -> Self {
        TokioRuntime(())
    }
}

impl Runtime for TokioRuntime {
    fn name(&self) -> &'static str {
        "tokio"
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) {
        // Outside a tokio runtime there is nothing to run the task on; dropping the future is
        // the only choice that does not panic, and spawned work is best-effort clean-up.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            drop(handle.spawn(future));
        }
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn costly_self_wake(&self) -> bool {
        // The runtime of the caller: the one the connection's futures are polled on.
        tokio::runtime::Handle::try_current().is_ok_and(|h| {
            h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                && h.metrics().num_workers() > 1
        })
    }

    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }

    fn connect_tcp(
        &self,
        addr: SocketAddr,
        options: &TcpOptions,
    ) -> BoxFuture<'static, io::Result<BoxStream>> {
        let options = options.clone();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            options.apply(&stream)?;
            Ok(Box::new(stream.compat()) as BoxStream)
        })
    }

    fn connect_unix(&self, path: &Path) -> BoxFuture<'static, io::Result<BoxStream>> {
        let path = path.to_owned();
        Box::pin(async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok(Box::new(stream.compat()) as BoxStream)
        })
    }
}
