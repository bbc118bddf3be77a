//! The optional driver task: a future that reads a connection's socket so that its callers
//! never do (see [`Connection::driver`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::task::{Context, Poll};

use crate::connection::{Connection, Shared};

/// Reads done in one poll before the driver yields to its executor.
const BUDGET: u32 = 32;

/// Numbers drivers, so that a connection tells its own from a second one.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// A future that reads and routes a connection's answers, notifications and notices, so that
/// its callers only write their requests and wait; made by [`Connection::driver`].
///
/// It holds the connection weakly: it does not keep it open, and completes once the
/// connection is closed, its last handle is dropped, or another driver of the same
/// connection is running. Dropping it returns the connection to caller-driven reading.
#[must_use = "a driver does nothing unless polled"]
pub struct Driver {
    shared: Weak<Shared>,
    id: u64,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("id", &self.id)
            .field("connected", &(self.shared.strong_count() > 0))
            .finish()
    }
}

impl Driver {
    pub(crate) fn new(conn: &Connection) -> Driver {
        Driver::with_id(conn, next_id())
    }

    /// Driver `id`, taken from [`next_id`] (the automatic one: `State::wants_auto_driver`).
    pub(crate) fn with_id(conn: &Connection, id: u64) -> Driver {
        Driver {
            shared: std::sync::Arc::downgrade(&conn.shared),
            id,
        }
    }
}

/// A number no other driver of this process has.
pub(crate) fn next_id() -> u64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(shared) = self.shared.upgrade() else {
            return Poll::Ready(());
        };
        let res = shared.lock().poll_driver(self.id, cx, BUDGET);
        res
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut st = shared.lock();
            st.end_driver(self.id);
            st.auto_driver_gone(self.id);
        }
    }
}
