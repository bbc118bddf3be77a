//! `Listener`: LISTEN on a dedicated connection that comes back by itself after losing it.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use aiopg_core::{Error, ErrorKind, Result};
use aiopg_rt::Runtime;

use crate::{ConnectOptions, Connection, Notification, Notifies};

/// The longest channel name the server keeps (`NAMEDATALEN - 1` bytes); a longer one would be
/// cut by `LISTEN` but not by `pg_notify`, so the two would never meet.
const MAX_CHANNEL: usize = 63;

/// What a [`Listener`] hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerEvent {
    /// A notification on one of the channels listened to.
    Notification(Notification),
    /// The connection was lost and a new one now listens on every channel again. Notifications
    /// sent while no connection listened are gone for good (the server keeps none for a
    /// session that ended): resynchronise from the database.
    Reconnected {
        /// Always true: the client cannot know whether something was sent meanwhile.
        missed_possible: bool,
    },
}

/// `LISTEN` on a dedicated connection, with reconnection: from [`Listener::connect`] (or a
/// pool's `listener()`, which opens a connection of its own, never a pooled one).
///
/// When its connection is lost (the server restarted, the backend was terminated, the link
/// broke), [`recv`](Self::recv) first hands out the notifications that had arrived, then
/// reconnects with exponential back-off, runs `LISTEN` again on every channel, and reports
/// [`ListenerEvent::Reconnected`] so that the consumer knows some may have been missed: a
/// reconnect is never silent. A consumer that falls more than the connection's
/// [`event_capacity`](ConnectOptions::event_capacity) behind gets an
/// [`ErrorKind::Lagged`] error with the count, and the listener goes on.
///
/// Channel names are identifiers passed as they are (case, quotes and spaces included): they
/// are quoted, never spliced into SQL, and `pg_notify('My "odd" channel', ...)` reaches
/// `listen("My \"odd\" channel")`.
///
/// # Cancel safety
///
/// [`recv`](Self::recv) is cancel safe, so it can sit in a `select!` loop:
/// a notification is taken only when it is returned. [`unlisten`](Self::unlisten),
/// [`unlisten_all`](Self::unlisten_all) and [`close`](Self::close) are cancel safe too.
/// [`listen`](Self::listen) is not: see there. Dropping the listener closes its connection.
///
/// ```no_run
/// # async fn f() -> aiopg_core::Result<()> {
/// use aiopg_conn::{ConnectOptions, Listener, ListenerEvent};
/// let mut listener = Listener::connect(ConnectOptions::new("postgresql://app@localhost/app")?).await?;
/// listener.listen("jobs").await?;
/// loop {
///     match listener.recv().await? {
///         ListenerEvent::Notification(n) => println!("job {}", n.payload),
///         ListenerEvent::Reconnected { .. } => println!("reconnected: rescan the jobs table"),
///         _ => {}
///     }
/// }
/// # }
/// ```
pub struct Listener {
    options: ConnectOptions,
    runtime: Arc<dyn Runtime>,
    conn: Connection,
    notifies: Notifies,
    channels: BTreeSet<String>,
    /// Events to hand out before reading more (a reconnect that `listen` went through).
    pending: VecDeque<ListenerEvent>,
    first_backoff: Duration,
    max_backoff: Duration,
    max_attempts: Option<u32>,
    closed: bool,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("channels", &self.channels)
            .field("backend_pid", &self.conn.backend_pid())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// Quotes a channel name as an SQL identifier, refusing what the server would not keep as is.
fn quote_channel(channel: &str) -> Result<String> {
    if channel.is_empty() {
        return Err(Error::usage("a channel name cannot be empty"));
    }
    if channel.contains('\0') {
        return Err(Error::usage(
            "a channel name cannot contain a NUL character",
        ));
    }
    if channel.len() > MAX_CHANNEL {
        return Err(Error::usage(format!(
            "channel name {} is {} bytes long; the server keeps at most {MAX_CHANNEL} \
             (LISTEN would cut it and never match pg_notify)",
            aiopg_core::error::elide(channel),
            channel.len()
        )));
    }
    Ok(format!("\"{}\"", channel.replace('"', "\"\"")))
}

impl Listener {
    /// Opens the listener's connection.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`ConnectOptions::connect`]: a dropped attempt leaves no
    /// socket open.
    pub async fn connect(options: ConnectOptions) -> Result<Listener> {
        let conn = options.connect().await?;
        let notifies = conn.notifies();
        Ok(Listener {
            runtime: conn.runtime().clone(),
            options,
            conn,
            notifies,
            channels: BTreeSet::new(),
            pending: VecDeque::new(),
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            max_attempts: None,
            closed: false,
        })
    }

    /// How long to wait between reconnection attempts: `first`, doubling up to `max`
    /// (50 ms and 5 s by default). The first attempt is made at once.
    pub fn reconnect_backoff(&mut self, first: Duration, max: Duration) -> &mut Self {
        self.first_backoff = first;
        self.max_backoff = max.max(first);
        self
    }

    /// After this many failed reconnection attempts in a row, [`recv`](Self::recv) returns
    /// the last attempt's error (the next call starts over). `None`, the default, retries
    /// for ever; every failure is logged at `warn`.
    pub fn max_reconnect_attempts(&mut self, attempts: Option<u32>) -> &mut Self {
        self.max_attempts = attempts;
        self
    }

    /// Starts listening on `channel` (kept exactly as given: it is quoted). If the connection
    /// turns out to be lost, the listener reconnects first (and [`recv`](Self::recv) reports
    /// it).
    ///
    /// # Cancel safety
    ///
    /// This method is not cancel safe. The channel is recorded only once the server has answered,
    /// so after a drop the `LISTEN` may or may not have run, and notifications on the channel are
    /// not handed out either way (nor listened to again after a reconnect): call `listen` again.
    /// Dropped while reconnecting (the connection had been lost), the channel is recorded, and the
    /// next [`recv`](Self::recv) reconnects and reports it.
    pub async fn listen(&mut self, channel: &str) -> Result<()> {
        let sql = format!("LISTEN {}", quote_channel(channel)?);
        match self.conn.batch_execute(&sql).await {
            Ok(()) => {
                self.channels.insert(channel.to_owned());
                Ok(())
            }
            Err(e) if e.is_closed() && !self.closed => {
                self.channels.insert(channel.to_owned());
                self.reconnect().await?;
                self.pending.push_back(ListenerEvent::Reconnected {
                    missed_possible: true,
                });
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Stops listening on `channel`; notifications on it that are already buffered are not
    /// handed out.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: the channel is forgotten on the first poll, so its
    /// notifications are no longer handed out whether or not the `UNLISTEN` reached the server (if
    /// it did not, the server keeps sending them until the next reconnect, and they are dropped).
    pub async fn unlisten(&mut self, channel: &str) -> Result<()> {
        let sql = format!("UNLISTEN {}", quote_channel(channel)?);
        self.channels.remove(channel);
        match self.conn.batch_execute(&sql).await {
            // A lost connection listens to nothing; the next one will not listen to it.
            Err(e) if !e.is_closed() => Err(e),
            _ => Ok(()),
        }
    }

    /// Stops listening on every channel.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`unlisten`](Self::unlisten): every channel is forgotten on
    /// the first poll.
    pub async fn unlisten_all(&mut self) -> Result<()> {
        self.channels.clear();
        match self.conn.batch_execute("UNLISTEN *").await {
            Err(e) if !e.is_closed() => Err(e),
            _ => Ok(()),
        }
    }

    /// The channels listened to, in name order.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.channels.iter().map(String::as_str)
    }

    /// The server process of the current connection (it changes with each reconnect).
    pub fn backend_pid(&self) -> i32 {
        self.conn.backend_pid()
    }

    /// Waits for the next event: a notification, or a reconnect after the connection was
    /// lost. Errors: [`ErrorKind::Lagged`] when the consumer fell behind (the listener goes
    /// on), the last reconnection error once [`max_reconnect_attempts`](Self::max_reconnect_attempts)
    /// failed in a row, `Closed` after [`close`](Self::close).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping the future loses no notification (one is taken
    /// from the connection only when it is returned). Dropped while reconnecting, the
    /// half-made connection is closed, and the next call starts reconnecting again and
    /// reports [`ListenerEvent::Reconnected`] once it has.
    pub async fn recv(&mut self) -> Result<ListenerEvent> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(ev);
            }
            if self.closed {
                return Err(Error::closed(
                    "the listener was closed (close() was called)",
                ));
            }
            let notifies = &mut self.notifies;
            let next = poll_fn(|cx| Pin::new(&mut *notifies).poll_next(cx)).await;
            match next {
                Some(Ok(n)) => {
                    // Buffered before an UNLISTEN took effect: not wanted any more.
                    if self.channels.contains(&n.channel) {
                        return Ok(ListenerEvent::Notification(n));
                    }
                }
                Some(Err(e)) if e.kind() == ErrorKind::Lagged || self.closed => return Err(e),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "listener lost its connection; reconnecting");
                    self.reconnect().await?;
                    return Ok(ListenerEvent::Reconnected {
                        missed_possible: true,
                    });
                }
                None if self.closed => {
                    return Err(Error::closed(
                        "the listener was closed (close() was called)",
                    ))
                }
                None => {
                    self.reconnect().await?;
                    return Ok(ListenerEvent::Reconnected {
                        missed_possible: true,
                    });
                }
            }
        }
    }

    /// Connects again (with back-off between attempts) and listens on every channel.
    async fn reconnect(&mut self) -> Result<()> {
        let mut delay = self.first_backoff;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.try_reconnect().await {
                Ok(()) => {
                    tracing::info!(
                        attempt,
                        channels = self.channels.len(),
                        "listener reconnected"
                    );
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "listener could not reconnect");
                    if self.max_attempts.is_some_and(|max| attempt >= max) {
                        return Err(e);
                    }
                }
            }
            self.runtime.sleep(delay).await;
            delay = (delay * 2).min(self.max_backoff);
        }
    }

    async fn try_reconnect(&mut self) -> Result<()> {
        let conn = self.options.connect().await?;
        let notifies = conn.notifies();
        if !self.channels.is_empty() {
            let mut sql = String::new();
            for c in &self.channels {
                sql.push_str("LISTEN ");
                sql.push_str(&quote_channel(c)?);
                sql.push(';');
            }
            if let Err(e) = conn.batch_execute(&sql).await {
                conn.close().await;
                return Err(e);
            }
        }
        let old = std::mem::replace(&mut self.conn, conn);
        self.notifies = notifies;
        old.close().await;
        Ok(())
    }

    /// Closes the connection; [`recv`](Self::recv) then fails with `Closed`.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: the listener and its connection are closed on the first poll
    /// (see [`Connection::close`]).
    pub async fn close(&mut self) {
        self.closed = true;
        self.conn.close().await;
    }

    /// The listener as a `Stream` of its events, which never ends on its own (errors are
    /// items, as from [`recv`](Self::recv); after `Closed` it ends).
    pub fn into_stream(self) -> ListenerStream {
        ListenerStream {
            state: StreamState::Idle(Box::new(self)),
        }
    }
}

type Recv = Pin<Box<dyn Future<Output = (Box<Listener>, Result<ListenerEvent>)> + Send>>;

enum StreamState {
    Idle(Box<Listener>),
    Busy(Recv),
    Done,
}

/// A [`Listener`] as a `Stream`: from [`Listener::into_stream`].
///
/// # Cancel safety
///
/// `poll_next` is cancel safe: the [`recv`](Listener::recv) in progress is kept inside the
/// stream between polls, so a dropped `next()` future loses no event. Dropping the stream
/// drops the listener and closes its connection.
pub struct ListenerStream {
    state: StreamState,
}

impl fmt::Debug for ListenerStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerStream").finish_non_exhaustive()
    }
}

impl Stream for ListenerStream {
    type Item = Result<ListenerEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match std::mem::replace(&mut self.state, StreamState::Done) {
                StreamState::Done => return Poll::Ready(None),
                StreamState::Idle(mut l) => {
                    self.state = StreamState::Busy(Box::pin(async move {
                        let res = l.recv().await;
                        (l, res)
                    }));
                }
                StreamState::Busy(mut fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => {
                        self.state = StreamState::Busy(fut);
                        return Poll::Pending;
                    }
                    Poll::Ready((l, res)) => {
                        let end = l.closed && res.is_err();
                        if !end {
                            self.state = StreamState::Idle(l);
                        }
                        return Poll::Ready(Some(res));
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quote_channel;

    #[test]
    fn channel_names_are_quoted_not_spliced() {
        assert_eq!(quote_channel("jobs").unwrap(), "\"jobs\"");
        assert_eq!(
            quote_channel("a \"b\"; DROP TABLE t; --").unwrap(),
            "\"a \"\"b\"\"; DROP TABLE t; --\""
        );
        assert!(quote_channel("").is_err());
        assert!(quote_channel("a\0b").is_err());
        assert!(quote_channel(&"x".repeat(64)).is_err());
        assert!(quote_channel(&"x".repeat(63)).is_ok());
    }
}
