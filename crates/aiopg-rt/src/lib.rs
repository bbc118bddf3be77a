//! aiopg's runtime seam: the object-safe [`Runtime`] trait and one adapter per runtime.
//!
//! ```
//! # #[cfg(feature = "tokio")]
//! # fn main() {
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! rt.block_on(async {
//!     let runtime = aiopg_rt::default_runtime().expect("a runtime feature is enabled");
//!     let slow = runtime.sleep(std::time::Duration::from_secs(5));
//!     let res = aiopg_rt::timeout(&*runtime, std::time::Duration::from_millis(10), slow).await;
//!     assert!(res.is_err());
//! });
//! # }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```
//!
//! Everything in aiopg above this crate speaks [`futures_io`] and the object-safe [`Runtime`]
//! trait; only the adapters here name tokio, async-std or smol. Each adapter is a small file of
//! glue behind its Cargo feature:
//!
//! | feature     | adapter                | notes |
//! |-------------|------------------------|-------|
//! | `tokio`     | [`TokioRuntime`]       | sockets through tokio-util's compat layer; needs a tokio runtime with I/O and time |
//! | `smol`      | [`SmolRuntime`]        | recommended when you do not use tokio; tasks run on smol's global executor |
//! | `async-std` | [`AsyncStdRuntime`]    | async-std is discontinued upstream; prefer smol |
//!
//! [`default_runtime`] picks one from the enabled features (with several, tokio when called
//! inside a tokio runtime, else smol, else async-std); [`runtime_by_name`] picks one by
//! name. The runtime trait sits on the slow paths only (connect, spawn, timers): a few calls
//! per connection or per timeout, never per row, so boxing each future costs nothing
//! measurable.
//!
//! # Background tasks
//!
//! aiopg spawns tasks ([`Runtime::spawn`]) only for work nobody waits for: driving a
//! statement queued by a drop (a `ROLLBACK`, a cursor's `CLOSE`), finishing a close, a
//! pool's upkeep (its sweeps, opening connections). Such work is best effort by design: the
//! tokio adapter, called outside a tokio runtime, drops the task instead of panicking, and
//! aiopg then sends the queued statement with the connection's next request.
//!
//! # Cancel safety
//!
//! The adapters' futures are all cancel safe, and a [`Runtime`] written for another
//! executor must keep them so, since aiopg drops them on every timeout:
//!
//! | Future | Dropped before it completes |
//! |---|---|
//! | [`Runtime::sleep`] | The timer is cancelled. |
//! | [`Runtime::connect_tcp`], [`Runtime::connect_unix`] | The socket being connected is closed; nothing is left open. |
//! | [`Runtime::resolve`] | The lookup is abandoned; one already running on a blocking thread finishes there, and its result is dropped. |
//! | [`timeout`] ([`Timeout`]) | The wrapped future and the timer are dropped: the drop has the wrapped future's cancel safety. |
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_io::{AsyncRead, AsyncWrite};

#[cfg(feature = "async-std")]
mod async_std;
#[cfg(feature = "smol")]
mod smol;
mod socket;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "async-std")]
pub use crate::async_std::AsyncStdRuntime;
#[cfg(feature = "smol")]
pub use crate::smol::SmolRuntime;
#[cfg(feature = "tokio")]
pub use crate::tokio::TokioRuntime;
pub use socket::TcpOptions;

/// A boxed, `Send` future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A byte stream to the server: TCP, a Unix socket, or TLS over one of them.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + fmt::Debug {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + fmt::Debug> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// What aiopg needs from an async runtime.
///
/// Object safe: connections and pools keep an `Arc<dyn Runtime>`.
pub trait Runtime: Send + Sync + fmt::Debug + 'static {
    /// The runtime's name (`"tokio"`, `"async-std"`, `"smol"`), for logs and errors.
    fn name(&self) -> &'static str;

    /// Runs `future` in the background, detached: nobody waits for it.
    ///
    /// aiopg uses it for best-effort work only (see [Background tasks](crate#background-tasks)):
    /// an implementation that cannot spawn may drop the future.
    fn spawn(&self, future: BoxFuture<'static, ()>);

    /// A future that completes after `duration`.
    ///
    /// # Cancel safety
    ///
    /// The future must be cancel safe: dropping it cancels the timer.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;

    /// Resolves a host name to socket addresses.
    ///
    /// # Cancel safety
    ///
    /// The future must be cancel safe: dropping it abandons the lookup. The adapters run lookups
    /// on a blocking thread pool, where one already started finishes and its result is dropped.
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;

    /// Opens a TCP connection with `TCP_NODELAY` and the keepalive settings of `options`.
    ///
    /// # Cancel safety
    ///
    /// The future must be cancel safe: dropping it closes the socket being connected, and nothing
    /// is left open. aiopg drops it when `connect_timeout` passes.
    fn connect_tcp(
        &self,
        addr: SocketAddr,
        options: &TcpOptions,
    ) -> BoxFuture<'static, io::Result<BoxStream>>;

    /// Opens a Unix-domain socket connection to `path`.
    ///
    /// # Cancel safety
    ///
    /// The future must be cancel safe, as [`connect_tcp`](Self::connect_tcp)'s.
    fn connect_unix(&self, path: &Path) -> BoxFuture<'static, io::Result<BoxStream>>;

    /// True when waking a task from inside its own poll costs a thread wake-up: a
    /// work-stealing scheduler with several workers (tokio's multi-threaded runtime) answers
    /// such a wake-up by waking an idle worker to steal the task. `false` by default.
    ///
    /// aiopg-conn asks it when several requests share a connection at once: a future reading
    /// its neighbours' answers wakes them, and when they belong to its own task (a
    /// `join_all` of queries) each read would pay that wake-up, so such a connection reads
    /// through a driver task while the requests last instead.
    fn costly_self_wake(&self) -> bool {
        false
    }
}

/// The error of [`timeout`]: the future did not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(());

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}

pin_project_lite::pin_project! {
    /// The future returned by [`timeout`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Timeout<F> {
        #[pin]
        future: F,
        sleep: BoxFuture<'static, ()>,
    }
}

impl<F> fmt::Debug for Timeout<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout").finish_non_exhaustive()
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The future goes first so that work finished right at the deadline is not lost.
        if let Poll::Ready(v) = this.future.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed(()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Runs `future`, giving up with [`Elapsed`] after `duration`.
///
/// The future is polled before the timer, so work finished right at the deadline is not
/// lost. On expiry the future is not dropped until the [`Timeout`] is; to go on with it after
/// the deadline (as aiopg does while a cancel request is on its way), pass a pinned
/// reference (`fut.as_mut()`) instead of the future itself.
///
/// # Cancel safety
///
/// Dropping the [`Timeout`] drops the timer and the future it owns, so a drop has the
/// wrapped future's cancel safety; a wrapped reference leaves the future to its owner.
pub fn timeout<F: Future>(runtime: &dyn Runtime, duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: runtime.sleep(duration),
    }
}

/// The runtime chosen by the enabled Cargo features.
///
/// With one runtime feature enabled, that runtime. With several, the runtime the caller runs
/// inside where that can be detected (tokio can be), else smol, else async-std. `None` when no
/// runtime feature is enabled: pass a runtime explicitly then.
pub fn default_runtime() -> Option<Arc<dyn Runtime>> {
    #[cfg(feature = "tokio")]
    {
        let inside_tokio = ::tokio::runtime::Handle::try_current().is_ok();
        if inside_tokio || !cfg!(any(feature = "smol", feature = "async-std")) {
            return Some(Arc::new(TokioRuntime::new()));
        }
    }
    #[cfg(feature = "smol")]
    {
        return Some(Arc::new(SmolRuntime::new()));
    }
    #[cfg(all(feature = "async-std", not(feature = "smol")))]
    {
        return Some(Arc::new(AsyncStdRuntime::new()));
    }
    #[allow(unreachable_code)]
    None
}

/// Looks a runtime up by name (`"tokio"`, `"async-std"`, `"smol"`), if its feature is enabled.
pub fn runtime_by_name(name: &str) -> Option<Arc<dyn Runtime>> {
    match name {
        #[cfg(feature = "tokio")]
        "tokio" => Some(Arc::new(TokioRuntime::new())),
        #[cfg(feature = "smol")]
        "smol" => Some(Arc::new(SmolRuntime::new())),
        #[cfg(feature = "async-std")]
        "async-std" | "async_std" => Some(Arc::new(AsyncStdRuntime::new())),
        _ => None,
    }
}
