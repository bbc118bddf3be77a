//! The `notifies()` and `notices()` streams: what the server sends on its own, delivered
//! whether or not a query runs.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use aiopg_core::error::DbError;
use aiopg_core::Result;

use crate::events::Events;
use crate::state::State;
use crate::{Connection, Notification};

/// One subscription to an event feed of a connection.
struct Feed<T: Clone + 'static> {
    conn: Connection,
    id: usize,
    pick: fn(&mut State) -> &mut Events<T>,
    /// The stream has ended (the connection closed, or the handle went stale).
    done: bool,
}

impl<T: Clone + 'static> Feed<T> {
    fn new(conn: &Connection, pick: fn(&mut State) -> &mut Events<T>) -> Feed<T> {
        let id = pick(&mut conn.shared.lock()).subscribe();
        Feed {
            conn: conn.clone(),
            id,
            pick,
            done: false,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Err(e) = self.conn.check_lease() {
            self.done = true;
            return Poll::Ready(Some(Err(e)));
        }
        let res = self.conn.shared.lock().poll_event(self.pick, self.id, cx);
        if let Poll::Ready(None) = res {
            self.done = true;
        }
        res
    }

    fn buffered(&mut self) -> Option<Result<T>> {
        if self.done {
            return None;
        }
        (self.pick)(&mut self.conn.shared.lock()).take(self.id)
    }
}

impl<T: Clone + 'static> Drop for Feed<T> {
    fn drop(&mut self) {
        let mut st = self.conn.shared.lock();
        (self.pick)(&mut st).unsubscribe(self.id);
        // It may have been the one registered with the socket: the next waiting caller takes
        // over.
        st.hand_over();
    }
}

/// The `LISTEN` notifications a connection receives: from [`Connection::notifies`].
///
/// Polling it drives the connection's socket whenever no query does, so notifications arrive
/// on an idle connection; while queries run, whoever reads their answers routes the
/// notifications here. They come in the order the server sent them.
///
/// **Every stream sees every notification** received after it was opened (notifications that
/// arrived while no stream was open wait for the next one opened, up to the capacity). The
/// connection buffers at most [`ConnectOptions::event_capacity`] notifications that a stream
/// has not taken yet ([`DEFAULT_EVENT_CAPACITY`] by default): when its consumer falls further
/// behind, the oldest are dropped and the stream yields one
/// [`ErrorKind::Lagged`](crate::ErrorKind::Lagged) error whose [`Error::missed`] is how many,
/// then goes on with the next notification. Nothing is lost without a word.
///
/// Once the connection is closed (by [`Connection::close`], by the server, or a broken link)
/// the stream yields the notifications it had received, then the closing error, then ends. A
/// stream opened on a pool's connection fails with a `Usage` error once the connection goes
/// back to the pool.
///
/// # Cancel safety
///
/// `poll_next` is cancel safe: a notification is taken only when it is returned, so a
/// dropped `next()` future (in a `select!`, say) loses nothing. Dropping the stream ends the
/// subscription, and a caller waiting on the connection takes over reading the socket. If it
/// was the last open stream, the notifications it had not taken wait for the next one opened
/// (up to the capacity).
///
/// [`ConnectOptions::event_capacity`]: crate::ConnectOptions::event_capacity
/// [`DEFAULT_EVENT_CAPACITY`]: crate::DEFAULT_EVENT_CAPACITY
/// [`Error::missed`]: crate::Error::missed
pub struct Notifies(Feed<Notification>);

/// The notices and warnings (`RAISE NOTICE`, `WARNING: ...`) a connection receives: from
/// [`Connection::notices`].
///
/// Works as [`Notifies`] does, with the same bound and `Lagged` reporting. Every notice is
/// also logged through `tracing` at `info` with its SQLSTATE, whether or not a stream is open.
/// A notice raised by clean-up nobody waits for (a pool's `ROLLBACK`) is not delivered.
///
/// # Cancel safety
///
/// As [`Notifies`]: `poll_next` is cancel safe, and dropping the stream ends the
/// subscription.
pub struct Notices(Feed<DbError>);

impl fmt::Debug for Notifies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifies")
            .field("done", &self.0.done)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Notices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notices")
            .field("done", &self.0.done)
            .finish_non_exhaustive()
    }
}

impl Notifies {
    pub(crate) fn new(conn: &Connection) -> Notifies {
        Notifies(Feed::new(conn, |st| &mut st.notifications))
    }

    /// The next notification already received, without waiting or reading the socket (after
    /// a query, say): `None` when there is none.
    pub fn next_buffered(&mut self) -> Option<Result<Notification>> {
        self.0.buffered()
    }
}

impl Notices {
    pub(crate) fn new(conn: &Connection) -> Notices {
        Notices(Feed::new(conn, |st| &mut st.notices))
    }

    /// The next notice already received, without waiting or reading the socket (after the
    /// query that raised it, say): `None` when there is none.
    pub fn next_buffered(&mut self) -> Option<Result<DbError>> {
        self.0.buffered()
    }
}

impl Stream for Notifies {
    type Item = Result<Notification>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll(cx)
    }
}

impl Stream for Notices {
    type Item = Result<DbError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll(cx)
    }
}
