//! The pool: a synchronous mutex around the idle connections and a FIFO queue of waiters.
//!
//! Lock order: the pool's state, then a waiter's slot. Neither lock is held across an
//! `.await` or while calling into a [`Connection`] (which has its own lock), except for the
//! cheap `Arc` clone of a connection handle.

use std::collections::VecDeque;
use std::fmt;
use std::future::{poll_fn, Future};
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use aiopg_conn::{ConnectOptions, Connection};
use aiopg_core::{Error, ErrorKind, Result, Row, TransactionStatus};
use aiopg_cursor::{Cursor, CursorExt, CursorOptions};
use aiopg_rt::{BoxFuture, Runtime};
use tracing::Instrument;

use crate::builder::{IntoConnectOptions, OnConnect, PoolBuilder, Reuse, Settings};
use crate::metrics::{self, PoolMetrics, Stamp};

/// The first pause between failed attempts to refill the pool to `min_size`.
const REFILL_BACKOFF_START: Duration = Duration::from_millis(50);
/// The longest pause between failed refill attempts.
const REFILL_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// What a released connection runs when [`PoolBuilder::reset_on_release`] is on.
const RESET_SQL: &str = "UNLISTEN *; RESET ALL";

/// Opens one connection and runs `on_connect` on it.
pub(crate) async fn open(
    options: &ConnectOptions,
    on_connect: Option<&OnConnect>,
) -> Result<Connection> {
    let conn = options.connect().await?;
    if let Some(callback) = on_connect {
        if let Err(e) = callback(&conn).await {
            conn.close().await;
            return Err(e.context("the pool's on_connect callback failed"));
        }
    }
    tracing::debug!(backend_pid = conn.backend_pid(), "pool opened a connection");
    Ok(conn)
}

/// Closes `conn` without blocking: the part of `close()` that needs no waiting (marking the
/// connection closed, taking its socket) runs now, so every handle reports closed at once;
/// writing Terminate, if it cannot finish at once, goes on in a task.
fn close_now(runtime: &Arc<dyn Runtime>, conn: Connection) {
    let mut fut: BoxFuture<'static, ()> = Box::pin(async move { conn.close().await });
    let mut cx = Context::from_waker(Waker::noop());
    if fut.as_mut().poll(&mut cx).is_pending() {
        runtime.spawn(fut);
    }
}

/// The name a pool gets when [`PoolBuilder::name`] gave none: `host:port/dbname` of the first
/// host (OpenTelemetry's suggestion for pools without a name).
fn default_name(config: &aiopg_core::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(aiopg_core::config::Host::Tcp(h)) if !h.is_empty() => h.clone(),
        Some(aiopg_core::config::Host::Unix(dir)) => dir.display().to_string(),
        _ => "localhost".to_owned(),
    };
    let port = config.port_for(0);
    let dbname = config.get_dbname().or(config.get_user()).unwrap_or("");
    format!("{host}:{port}/{dbname}")
}

fn pool_closed() -> Error {
    Error::new(
        ErrorKind::PoolClosed,
        "the pool is closed (close() or terminate() was called): create a new pool",
        None,
    )
}

/// A connection the pool owns, idle or lent out.
struct Entry {
    conn: Connection,
    /// Index in `State::slots`.
    slot: usize,
    created: Instant,
    /// When `recycle` / `max_lifetime` replace it (worked out once: `acquire` and release
    /// only compare).
    retire_at: Option<Instant>,
    /// `State::sweeps` when it last came back: how long it has been idle is counted in sweeps,
    /// so that taking and giving back a connection reads no clock.
    idle_since: u64,
    /// Idle at least `test_on_acquire` (marked by the sweep): `acquire` checks it with a round
    /// trip first.
    needs_ping: bool,
    /// Whether requests may still be in flight: the last release queued clean-up, or saw
    /// requests it did not wait for. Only then does `acquire` ask the connection (its lock)
    /// whether it has settled.
    unsettled: bool,
    /// When it was last lent out (for the `use_time` metric).
    lent_at: Stamp,
}

impl Entry {
    fn new(conn: Connection, slot: usize, now: Instant, sweeps: u64, settings: &Settings) -> Entry {
        Entry {
            conn,
            slot,
            created: now,
            retire_at: settings.max_age().and_then(|age| now.checked_add(age)),
            idle_since: sweeps,
            needs_ping: false,
            // `on_connect` may have left something in flight.
            unsettled: true,
            lent_at: metrics::stamp(),
        }
    }

    #[inline]
    fn too_old(&self, now: Instant) -> bool {
        self.retire_at.is_some_and(|at| now >= at)
    }
}

/// One caller waiting in [`Pool::acquire`].
#[derive(Default)]
struct Waiter {
    slot: Mutex<WaiterSlot>,
}

#[derive(Default)]
struct WaiterSlot {
    waker: Option<Waker>,
    outcome: Option<Result<Entry>>,
}

impl Waiter {
    fn lock(&self) -> MutexGuard<'_, WaiterSlot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// When an [`Pool::acquire`] gives up: its timeout from the first time it has to wait.
struct Deadline {
    timeout: Option<Duration>,
    at: Option<Option<Instant>>,
}

impl Deadline {
    fn new(timeout: Option<Duration>) -> Deadline {
        Deadline { timeout, at: None }
    }

    fn get(&mut self) -> Option<Instant> {
        let timeout = self.timeout;
        *self
            .at
            .get_or_insert_with(|| timeout.and_then(|t| Instant::now().checked_add(t)))
    }
}

/// What a connection about to be handed out waits for first.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// The answers to requests still in flight ([`settle`]).
    Settle,
    /// A round trip, after the connection sat idle past `test_on_acquire`.
    Ping,
}

/// Why a connection leaves the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Found closed, or failed its liveness check.
    Broken,
    /// Older than `recycle` / `max_lifetime`.
    Recycled,
    /// Idle longer than `idle_timeout`, `clear()`, or the pool is closing.
    Retired,
}

#[derive(Default)]
struct State {
    /// Idle connections in the order they came back, the longest idle at the front (the
    /// sweep keeps that order); [`State::take_idle`] takes from the end `Settings::reuse`
    /// names.
    idle: VecDeque<Entry>,
    /// Callers waiting for a connection, oldest first. Non-empty only while `idle` is empty.
    waiters: VecDeque<Arc<Waiter>>,
    /// Every open connection the pool owns, idle or lent out (for `terminate`).
    slots: Vec<Option<Connection>>,
    free_slots: Vec<usize>,
    /// Open connections plus those being opened.
    size: usize,
    /// Connections being opened.
    connecting: usize,
    closing: bool,
    refilling: bool,
    /// Rounds of the sweeper so far: the clock idle times are counted in.
    sweeps: u64,
    closed_wakers: Vec<Waker>,
    // Statistics.
    acquires: u64,
    waits: u64,
    timeouts: u64,
    created: u64,
    closed: u64,
    broken: u64,
    recycled: u64,
    connect_errors: u64,
}

impl State {
    fn add_slot(&mut self, conn: Connection) -> usize {
        match self.free_slots.pop() {
            Some(i) => {
                self.slots[i] = Some(conn);
                i
            }
            None => {
                self.slots.push(Some(conn));
                self.slots.len() - 1
            }
        }
    }

    fn in_use(&self) -> usize {
        self.size - self.idle.len() - self.connecting
    }

    /// The idle connection to hand out next: the longest idle one ([`Reuse::Fifo`]) or the
    /// most recently given back ([`Reuse::Lifo`]).
    #[inline]
    fn take_idle(&mut self, reuse: Reuse) -> Option<Entry> {
        match reuse {
            Reuse::Fifo => self.idle.pop_front(),
            Reuse::Lifo => self.idle.pop_back(),
        }
    }
}

/// What to do once the state lock is released.
#[derive(Default)]
struct Actions {
    wake: Vec<Waker>,
    close: Vec<Connection>,
    connect: usize,
    refill: bool,
}

pub(crate) struct Inner {
    options: ConnectOptions,
    runtime: Arc<dyn Runtime>,
    settings: Settings,
    /// `db.client.connection.pool.name`.
    name: String,
    state: Mutex<State>,
    wait_nanos: AtomicU64,
    metrics: PoolMetrics,
}

/// The pool's state, locked; the gauges are published when it is unlocked (feature
/// `metrics`), so that no change escapes them.
struct StateGuard<'a> {
    state: MutexGuard<'a, State>,
    metrics: &'a PoolMetrics,
}

impl Deref for StateGuard<'_> {
    type Target = State;

    #[inline]
    fn deref(&self) -> &State {
        &self.state
    }
}

impl DerefMut for StateGuard<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for StateGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        let st = &*self.state;
        self.metrics
            .publish(st.idle.len(), st.in_use(), st.waiters.len());
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for entry in st.idle.drain(..) {
            close_now(&self.runtime, entry.conn);
        }
    }
}

impl Inner {
    #[inline]
    fn lock(&self) -> StateGuard<'_> {
        // Every change under the lock is a few plain assignments: a panic cannot leave it
        // half-done, so a poisoned lock is still consistent.
        StateGuard {
            state: self.state.lock().unwrap_or_else(|e| e.into_inner()),
            metrics: &self.metrics,
        }
    }

    /// Hands `entry` to the oldest waiter, or makes it idle. The pool must be open.
    fn put(&self, st: &mut State, entry: Entry, act: &mut Actions) {
        match st.waiters.pop_front() {
            Some(waiter) => {
                let mut slot = waiter.lock();
                slot.outcome = Some(Ok(entry));
                if let Some(w) = slot.waker.take() {
                    act.wake.push(w);
                }
            }
            None => st.idle.push_back(entry),
        }
    }

    /// Forgets `entry` (its slot is freed at once) and closes it after the lock is released.
    fn drop_entry(&self, st: &mut State, entry: Entry, why: Why, act: &mut Actions) {
        st.slots[entry.slot] = None;
        st.free_slots.push(entry.slot);
        st.size -= 1;
        st.closed += 1;
        match why {
            Why::Broken => st.broken += 1,
            Why::Recycled => st.recycled += 1,
            Why::Retired => {}
        }
        tracing::debug!(backend_pid = entry.conn.backend_pid(), reason = ?why, "pool closes a connection");
        act.close.push(entry.conn);
    }

    /// Restores the pool's promises after a change: a connection being opened for every
    /// waiter (up to `max_size`), a refill under way below `min_size`, `wait_closed` woken.
    fn settle(&self, st: &mut State, act: &mut Actions) {
        if st.closing {
            if st.size == 0 {
                act.wake.append(&mut st.closed_wakers);
            }
            return;
        }
        while st.waiters.len() > st.connecting && st.size < self.settings.max_size {
            st.size += 1;
            st.connecting += 1;
            act.connect += 1;
        }
        if st.size < self.settings.min_size && !st.refilling {
            st.refilling = true;
            act.refill = true;
        }
    }

    #[inline]
    fn run(self: &Arc<Self>, act: Actions) {
        // Most changes (a connection taken or given back) leave nothing to do. The vectors
        // only ever grow, so empty ones never allocated: forgetting them leaks nothing and
        // skips their drop.
        if act.wake.is_empty() && act.close.is_empty() && act.connect == 0 && !act.refill {
            debug_assert!(act.wake.capacity() == 0 && act.close.capacity() == 0);
            std::mem::forget(act);
            return;
        }
        self.run_slow(act);
    }

    fn run_slow(self: &Arc<Self>, act: Actions) {
        for w in act.wake {
            w.wake();
        }
        for conn in act.close {
            close_now(&self.runtime, conn);
        }
        for _ in 0..act.connect {
            self.spawn_connect();
        }
        if act.refill {
            self.spawn_refill();
        }
    }

    fn discard(self: &Arc<Self>, entry: Entry, why: Why) {
        let mut act = Actions::default();
        {
            let mut st = self.lock();
            self.drop_entry(&mut st, entry, why, &mut act);
            self.settle(&mut st, &mut act);
        }
        self.run(act);
    }

    /// Takes back a lent connection: synchronous and non-blocking, from any thread.
    fn release(self: &Arc<Self>, mut entry: Entry, reset_done: bool) {
        // First of all: from now on, the handles the user was given (clones, cursors,
        // transactions) fail instead of reaching the connection's next user.
        entry.conn.end_lease();
        self.metrics.used(entry.lent_at);
        let why = if entry.conn.is_closed() {
            Some(Why::Broken)
        } else if entry.retire_at.is_some() && entry.too_old(Instant::now()) {
            Some(Why::Recycled)
        } else {
            None
        };
        // `Pool::release` waited for its clean-up, but whatever it left is checked anyway.
        entry.unsettled = reset_done;
        if why.is_none() && !reset_done {
            // A request still in flight (a BEGIN whose caller gave up, say) may yet open a
            // transaction the status cannot show: roll back then too. The ROLLBACK is queued
            // ahead of anything the next user sends and driven by a task, so the connection
            // can be reused at once (the next `acquire` waits for its answer); if there was no
            // transaction, its warning is dropped.
            if entry.conn.transaction_status() != TransactionStatus::Idle
                || entry.conn.has_requests_in_flight()
            {
                entry.conn.detach("ROLLBACK");
                entry.unsettled = true;
            }
            if self.settings.reset_on_release {
                entry.conn.detach(RESET_SQL);
                entry.unsettled = true;
            }
        }
        entry.needs_ping = false;
        let mut act = Actions::default();
        {
            let mut st = self.lock();
            entry.idle_since = st.sweeps;
            match why {
                _ if st.closing => self.drop_entry(&mut st, entry, Why::Retired, &mut act),
                Some(why) => self.drop_entry(&mut st, entry, why, &mut act),
                None => self.put(&mut st, entry, &mut act),
            }
            self.settle(&mut st, &mut act);
        }
        self.run(act);
    }

    /// A connection attempt (for a waiter when `demand`, else a refill) finished.
    fn connected(self: &Arc<Self>, result: Result<Connection>, demand: bool, began: Stamp) {
        if result.is_ok() {
            self.metrics.created(began);
        }
        let now = Instant::now();
        let mut act = Actions::default();
        {
            let mut st = self.lock();
            st.connecting -= 1;
            match result {
                Ok(conn) if st.closing => {
                    st.size -= 1;
                    st.created += 1;
                    st.closed += 1;
                    act.close.push(conn);
                }
                Ok(conn) => {
                    st.created += 1;
                    let slot = st.add_slot(conn.clone());
                    let entry = Entry::new(conn, slot, now, st.sweeps, &self.settings);
                    self.put(&mut st, entry, &mut act);
                }
                Err(e) => {
                    st.size -= 1;
                    st.connect_errors += 1;
                    tracing::debug!(error = %e, demand, "pool could not open a connection");
                    if demand {
                        // The oldest waiter learns why it cannot be served.
                        if let Some(waiter) = st.waiters.pop_front() {
                            let mut slot = waiter.lock();
                            slot.outcome = Some(Err(e));
                            if let Some(w) = slot.waker.take() {
                                act.wake.push(w);
                            }
                        }
                    }
                }
            }
            self.settle(&mut st, &mut act);
        }
        self.run(act);
    }

    /// Opens one connection for the waiters (its slot is already counted in `size`).
    fn spawn_connect(self: &Arc<Self>) {
        let mut reservation = Reservation {
            inner: self.clone(),
            armed: true,
        };
        self.runtime.spawn(Box::pin(async move {
            let inner = reservation.inner.clone();
            let began = metrics::stamp();
            let result = open(&inner.options, inner.settings.on_connect.as_ref()).await;
            reservation.disarm();
            inner.connected(result, true, began);
        }));
    }

    /// Refills the pool to `min_size`, one connection at a time, backing off on failures.
    fn spawn_refill(self: &Arc<Self>) {
        let mut flag = RefillFlag {
            pool: Arc::downgrade(self),
            armed: true,
        };
        let runtime = self.runtime.clone();
        self.runtime.spawn(Box::pin(async move {
            let mut backoff = REFILL_BACKOFF_START;
            loop {
                let Some(inner) = flag.pool.upgrade() else {
                    return;
                };
                {
                    let mut st = inner.lock();
                    if st.closing || st.size >= inner.settings.min_size {
                        st.refilling = false;
                        flag.disarm();
                        return;
                    }
                    st.size += 1;
                    st.connecting += 1;
                }
                let mut reservation = Reservation {
                    inner: inner.clone(),
                    armed: true,
                };
                let began = metrics::stamp();
                let result = open(&inner.options, inner.settings.on_connect.as_ref()).await;
                reservation.disarm();
                drop(reservation);
                let failed = result.is_err();
                inner.connected(result, false, began);
                drop(inner);
                if failed {
                    runtime.sleep(backoff).await;
                    backoff = (backoff * 2).min(REFILL_BACKOFF_MAX);
                } else {
                    backoff = REFILL_BACKOFF_START;
                }
            }
        }));
    }

    /// Every `period` until the pool closes or is dropped: closes idle connections past
    /// `idle_timeout` (above `min_size`) or `max_lifetime`, and marks those idle past
    /// `test_on_acquire` for a liveness check.
    fn spawn_sweeper(self: &Arc<Self>) {
        let st = &self.settings;
        let ping_after = st.test_after_idle.filter(|t| !t.is_zero());
        let limits = [st.idle_timeout, st.max_lifetime, ping_after];
        let Some(shortest) = limits.into_iter().flatten().min() else {
            return;
        };
        let period = (shortest / 2).clamp(Duration::from_millis(10), Duration::from_secs(30));
        let pool = Arc::downgrade(self);
        let runtime = self.runtime.clone();
        self.runtime.spawn(Box::pin(async move {
            loop {
                runtime.sleep(period).await;
                let Some(inner) = pool.upgrade() else {
                    return;
                };
                if !inner.sweep(period) {
                    return;
                }
            }
        }));
    }

    /// One round of [`spawn_sweeper`](Self::spawn_sweeper)'s work; false once the pool is
    /// closing.
    fn sweep(self: &Arc<Self>, period: Duration) -> bool {
        let now = Instant::now();
        let mut act = Actions::default();
        {
            let mut st = self.lock();
            if st.closing {
                return false;
            }
            st.sweeps += 1;
            let sweeps = st.sweeps;
            let idle = std::mem::take(&mut st.idle);
            for mut entry in idle {
                // At least this long: rounds are at least `period` apart, and it came back
                // some time after round `idle_since`.
                let rounds = sweeps.saturating_sub(entry.idle_since + 1);
                let idle_for = period.saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX));
                let old = self
                    .settings
                    .max_lifetime
                    .is_some_and(|l| now.saturating_duration_since(entry.created) >= l);
                let unused = self.settings.idle_timeout.is_some_and(|t| idle_for >= t)
                    && st.size > self.settings.min_size;
                if old {
                    self.drop_entry(&mut st, entry, Why::Recycled, &mut act);
                } else if unused {
                    self.drop_entry(&mut st, entry, Why::Retired, &mut act);
                } else {
                    if self.settings.test_after_idle.is_some_and(|t| idle_for >= t) {
                        entry.needs_ping = true;
                    }
                    // In the order they came back, as before.
                    st.idle.push_back(entry);
                }
            }
            self.settle(&mut st, &mut act);
        }
        self.run(act);
        true
    }

    /// Queues the caller and waits for a connection, until `deadline`.
    async fn wait(self: &Arc<Self>, deadline: Option<Instant>) -> Result<Entry> {
        let waiter = Arc::new(Waiter::default());
        let mut act = Actions::default();
        {
            let mut st = self.lock();
            if st.closing {
                return Err(pool_closed());
            }
            if st.waiters.is_empty() {
                if let Some(entry) = st.take_idle(self.settings.reuse) {
                    return Ok(entry);
                }
            }
            st.waiters.push_back(waiter.clone());
            st.waits += 1;
            self.settle(&mut st, &mut act);
        }
        self.run(act);
        let since = Instant::now();
        let wait = WaitFor {
            inner: self,
            waiter,
            done: false,
        };
        let result = match deadline {
            None => wait.await,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(since);
                let raced = aiopg_rt::timeout(&*self.runtime, left, wait).await;
                match raced {
                    Ok(r) => r,
                    Err(_) => Err(self.timed_out()),
                }
            }
        };
        let waited = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.wait_nanos.fetch_add(waited, Ordering::Relaxed);
        result
    }

    fn timed_out(&self) -> Error {
        self.metrics.timed_out();
        let mut st = self.lock();
        st.timeouts += 1;
        let timeout = self.settings.timeout.unwrap_or_default();
        Error::new(
            ErrorKind::PoolTimeout,
            format!(
                "no pooled connection became free within {:.3} s: pool size {} (max_size {}), \
                 {} in use, {} idle, {} being opened, {} waiting besides this caller; release \
                 connections sooner, or raise max_size or the pool's timeout",
                timeout.as_secs_f64(),
                st.size,
                self.settings.max_size,
                st.in_use(),
                st.idle.len(),
                st.connecting,
                st.waiters.len(),
            ),
            None,
        )
    }

    /// Runs `fut` (a check of a connection about to be handed out) until the acquire's
    /// `deadline`; `None` if the time runs out first.
    async fn within<F: Future>(&self, deadline: Option<Instant>, fut: F) -> Option<F::Output> {
        match deadline {
            None => Some(fut.await),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                aiopg_rt::timeout(&*self.runtime, left, fut).await.ok()
            }
        }
    }

    /// A waiter gives up (its future was dropped): it leaves the queue, and a connection
    /// handed to it meanwhile goes to the next waiter or back to the idle list.
    fn cancel(self: &Arc<Self>, waiter: &Arc<Waiter>) {
        let mut act = Actions::default();
        {
            let mut st = self.lock();
            if let Some(i) = st.waiters.iter().position(|w| Arc::ptr_eq(w, waiter)) {
                st.waiters.remove(i);
            } else {
                let outcome = waiter.lock().outcome.take();
                if let Some(Ok(entry)) = outcome {
                    if st.closing {
                        self.drop_entry(&mut st, entry, Why::Retired, &mut act);
                    } else {
                        self.put(&mut st, entry, &mut act);
                    }
                }
            }
            self.settle(&mut st, &mut act);
        }
        self.run(act);
    }
}

/// A connection slot counted in `size` while a connection is being opened; freed if the
/// attempt is dropped (the task cancelled, or never run).
struct Reservation {
    inner: Arc<Inner>,
    armed: bool,
}

impl Reservation {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            let mut act = Actions::default();
            {
                let mut st = self.inner.lock();
                st.size -= 1;
                st.connecting -= 1;
                if st.closing && st.size == 0 {
                    act.wake.append(&mut st.closed_wakers);
                }
            }
            // No `settle` here: a runtime that cannot spawn would bring us straight back.
            for w in act.wake {
                w.wake();
            }
        }
    }
}

/// Clears `State::refilling` if the refill task ends without doing so.
struct RefillFlag {
    pool: Weak<Inner>,
    armed: bool,
}

impl RefillFlag {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for RefillFlag {
    fn drop(&mut self) {
        if self.armed {
            if let Some(inner) = self.pool.upgrade() {
                inner.lock().refilling = false;
            }
        }
    }
}

/// Waits for a waiter's outcome; leaves the queue when dropped before it arrives.
struct WaitFor<'a> {
    inner: &'a Arc<Inner>,
    waiter: Arc<Waiter>,
    done: bool,
}

impl Future for WaitFor<'_> {
    type Output = Result<Entry>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Entry>> {
        let mut slot = self.waiter.lock();
        if let Some(outcome) = slot.outcome.take() {
            drop(slot);
            self.done = true;
            return Poll::Ready(outcome);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for WaitFor<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.inner.cancel(&self.waiter);
        }
    }
}

/// A pool of connections (Python aiopg's `Pool`). Cheap to clone: clones share the pool.
///
/// See the [crate documentation](crate) for an overview.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("Pool")
            .field("size", &st.size)
            .field("free_size", &st.idle.len())
            .field("waiting", &st.waiters.len())
            .field("min_size", &self.inner.settings.min_size)
            .field("max_size", &self.inner.settings.max_size)
            .field("closed", &st.closing)
            .field("runtime", &self.inner.runtime.name())
            .finish()
    }
}

impl Pool {
    /// A builder for a pool over `options` (a DSN or [`ConnectOptions`]).
    pub fn builder(options: impl IntoConnectOptions) -> PoolBuilder {
        PoolBuilder::new(options)
    }

    pub(crate) fn from_parts(
        options: ConnectOptions,
        runtime: Arc<dyn Runtime>,
        settings: Settings,
        first: Vec<Connection>,
    ) -> Pool {
        let now = Instant::now();
        let mut st = State::default();
        for conn in first {
            let slot = st.add_slot(conn.clone());
            st.idle.push_back(Entry::new(conn, slot, now, 0, &settings));
            st.size += 1;
            st.created += 1;
        }
        let name = settings
            .name
            .clone()
            .unwrap_or_else(|| default_name(options.config()));
        let metrics = PoolMetrics::new(&name, settings.min_size, settings.max_size);
        let inner = Arc::new(Inner {
            options,
            runtime,
            settings,
            name,
            state: Mutex::new(st),
            wait_nanos: AtomicU64::new(0),
            metrics,
        });
        // The gauges start from the connections opened at creation.
        drop(inner.lock());
        inner.spawn_sweeper();
        Pool { inner }
    }

    /// Takes a connection from the pool (Python aiopg's `acquire`).
    ///
    /// An idle connection is handed out at once (the one given back longest ago, unless
    /// [`PoolBuilder::reuse`] says otherwise); otherwise the caller waits its turn (first
    /// come, first served) while a new connection is opened if the pool is below
    /// `max_size`. The whole call, connecting included, is bounded by the pool's `timeout`:
    /// past it the call fails with [`ErrorKind::PoolTimeout`]. On a closed pool it fails
    /// with [`ErrorKind::PoolClosed`]. A connection that failed to open (or whose
    /// `on_connect` failed) fails the oldest waiter with that error.
    ///
    /// The connection is handed out ready for the next statement. One whose server process
    /// went away while it sat idle is replaced. One whose previous user left requests on the
    /// wire (the `ROLLBACK` that releasing a transaction queues, a statement given up on) is
    /// handed out once they are answered, so that
    /// [`transaction_status()`](Connection::transaction_status) reports what the next
    /// statement will see; one still busy when the timeout passes is discarded.
    ///
    /// The connection returns to the pool when the guard is dropped.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping the future at any point loses neither a connection
    /// nor a slot. A connection being opened for it, or already handed to it, goes to the next
    /// caller or back to the idle list.
    pub async fn acquire(&self) -> Result<PooledConnection> {
        if !tracing::level_enabled!(tracing::Level::INFO) {
            return self.acquire_inner().await;
        }
        let span = tracing::info_span!(
            "aiopg.acquire",
            otel.name = "acquire",
            otel.status_code = tracing::field::Empty,
            db.system.name = "postgresql",
            db.client.connection.pool.max = self.inner.settings.max_size,
            error.type = tracing::field::Empty,
        );
        let res = self.acquire_inner().instrument(span.clone()).await;
        if let Err(e) = &res {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", format!("{:?}", e.kind()));
        }
        res
    }

    async fn acquire_inner(&self) -> Result<PooledConnection> {
        let began = metrics::stamp();
        let mut conn = self.acquire_checked().await?;
        if let Some(entry) = conn.entry.as_mut() {
            self.inner.metrics.waited(began);
            entry.lent_at = metrics::stamp();
        }
        Ok(conn)
    }

    async fn acquire_checked(&self) -> Result<PooledConnection> {
        let inner = &self.inner;
        // The clock is first read when this call has to wait (for a connection, or a check):
        // what comes before is a few non-blocking steps.
        let mut deadline = Deadline::new(inner.settings.timeout);
        let mut counted = false;
        loop {
            let popped = {
                let mut st = inner.lock();
                if st.closing {
                    return Err(pool_closed());
                }
                if !counted {
                    st.acquires += 1;
                    counted = true;
                }
                if st.waiters.is_empty() {
                    st.take_idle(inner.settings.reuse)
                } else {
                    None
                }
            };
            let entry = match popped {
                Some(entry) => entry,
                None => inner.wait(deadline.get()).await?,
            };
            // Idle sockets are not read: a backend terminated (or a server restarted) while
            // the connection sat idle left its FATAL error or end of stream unread. A
            // non-blocking read finds it, without a round trip, and the connection is
            // replaced instead of failing its user's first query.
            if !entry.conn.check_idle() {
                inner.discard(entry, Why::Broken);
                continue;
            }
            // A failover or a changed setting can turn the server into what
            // target_session_attrs does not want (a promoted standby reports in_hot_standby
            // off, a demoted primary on): such a connection is retired, and its replacement
            // goes through host selection again.
            if !entry.conn.matches_target_session_attrs() {
                inner.discard(entry, Why::Broken);
                continue;
            }
            if entry.retire_at.is_some() && entry.too_old(Instant::now()) {
                inner.discard(entry, Why::Recycled);
                continue;
            }
            let unsettled = entry.unsettled && entry.conn.has_requests_in_flight();
            let stale = match inner.settings.test_after_idle {
                Some(t) if t.is_zero() => true,
                Some(_) => entry.needs_ping,
                None => false,
            };
            // From here on, dropping this future gives the connection back through the guard.
            let mut guard = PooledConnection::lend(entry, inner.clone());
            // What the last user left on the wire (the ROLLBACK its release queued, a
            // statement it gave up on) is answered first: until then `transaction_status()`
            // reports the state before it, not the one the next statement sees. That answer
            // also proves the connection alive.
            let check = if unsettled {
                Check::Settle
            } else if stale {
                Check::Ping
            } else {
                return Ok(guard);
            };
            let deadline = deadline.get();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // No time left to wait for the server, which is no verdict on the connection:
                // it goes back as it is.
                drop(guard);
                return Err(inner.timed_out());
            }
            let answered = match check {
                Check::Settle => inner.within(deadline, guard.conn().settle()).await,
                Check::Ping => inner
                    .within(deadline, guard.conn().simple_query("SELECT 1"))
                    .await
                    .map(|r| r.map(drop)),
            };
            match answered {
                Some(Ok(())) => return Ok(guard),
                // Closed, or the liveness check failed: replaced, and the next one is tried.
                Some(Err(_)) => inner.discard(guard.take_entry(), Why::Broken),
                None => {
                    // Silent for all the time this caller had left.
                    tracing::debug!(
                        backend_pid = guard.conn().backend_pid(),
                        ?check,
                        "a pooled connection did not answer within the acquire timeout: \
                         discarding it"
                    );
                    inner.discard(guard.take_entry(), Why::Broken);
                    return Err(inner.timed_out());
                }
            }
        }
    }

    /// Gives a connection back (Python aiopg's `release`), the explicit form of dropping the
    /// guard. Unlike a drop, it waits for the clean-up: a transaction left open is rolled back
    /// (and the connection discarded if that fails), and with `reset_on_release` the
    /// `UNLISTEN *; RESET ALL` runs, before the connection is reused. A guard from another
    /// pool goes back to its own pool.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropped before it finishes, the connection still goes back
    /// to the pool as a dropped guard does, the clean-up it was waiting for (`ROLLBACK`,
    /// reset) then being queued ahead of the next user's statements.
    pub async fn release(&self, conn: PooledConnection) {
        let mut conn = conn;
        // The pool's own handle does the clean-up; the user's handles go stale first, so that
        // none of them can slip a statement in between the clean-up and the next user.
        let c = conn.conn().clone();
        c.end_lease();
        // Let requests still in flight land first, so that the transaction status below is
        // the server's real one.
        if !c.is_closed() && c.has_requests_in_flight() && c.settle().await.is_err() {
            c.close().await;
        }
        if !c.is_closed() && c.transaction_status() != TransactionStatus::Idle {
            if let Err(e) = c.batch_execute("ROLLBACK").await {
                tracing::debug!(error = %e, "rollback on release failed: discarding the connection");
                c.close().await;
            }
        }
        if conn.pool.settings.reset_on_release && !c.is_closed() {
            if let Err(e) = c.batch_execute(RESET_SQL).await {
                tracing::debug!(error = %e, "reset on release failed: discarding the connection");
                c.close().await;
            }
        }
        conn.reset_done = true;
        drop(conn);
    }

    /// Acquires a connection and opens a cursor on it (Python aiopg's `pool.cursor()`); the
    /// connection goes back to the pool when the cursor is dropped.
    ///
    /// ```no_run
    /// # async fn f(pool: aiopg_pool::Pool) -> aiopg_core::Result<()> {
    /// let mut cur = pool.cursor().await?;
    /// cur.execute("SELECT 1", &[]).await?;
    /// assert_eq!(cur.fetchone().await?.unwrap().get::<i32>(0), 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`acquire`](Self::acquire) is; a connection acquired
    /// before the drop goes back to the pool.
    pub async fn cursor(&self) -> Result<PooledCursor> {
        self.cursor_with(CursorOptions::default()).await
    }

    /// As [`cursor`](Self::cursor), with cursor options (a name makes it server-side).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`acquire`](Self::acquire) is; a connection acquired
    /// before the drop goes back to the pool.
    pub async fn cursor_with(&self, options: CursorOptions) -> Result<PooledCursor> {
        let conn = self.acquire().await?;
        let cursor = conn.cursor_with(options).await?;
        Ok(PooledCursor { cursor, conn })
    }

    /// A [`Listener`](aiopg_conn::Listener) on a connection of its own, opened with the
    /// pool's settings but never taken from the pool or given back to it (a pooled
    /// connection would carry its `LISTEN` state to the next borrower). It does not count
    /// towards `max_size`. The pool's `on_connect` hook is not run on it.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropped before it finishes, the dedicated connection being
    /// opened is dropped (its socket closed); the pool is not touched.
    pub async fn listener(&self) -> Result<aiopg_conn::Listener> {
        if self.is_closed() {
            return Err(pool_closed());
        }
        aiopg_conn::Listener::connect(self.inner.options.clone()).await
    }

    /// Connections open or being opened, idle and in use together (aiopg's `size`).
    pub fn size(&self) -> usize {
        self.inner.lock().size
    }

    /// Idle connections (aiopg's `freesize`).
    pub fn free_size(&self) -> usize {
        self.inner.lock().idle.len()
    }

    /// The number of connections the pool keeps open (aiopg's `minsize`).
    pub fn min_size(&self) -> usize {
        self.inner.settings.min_size
    }

    /// The pool's name: [`PoolBuilder::name`], or `host:port/dbname` of the first host the
    /// options name. Metrics (feature `metrics`) carry it as `db.client.connection.pool.name`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The connection string the pool's connections use, a password shown as `********`.
    pub fn dsn(&self) -> String {
        self.inner.options.config().redacted_dsn()
    }

    /// The most connections the pool holds (aiopg's `maxsize`).
    pub fn max_size(&self) -> usize {
        self.inner.settings.max_size
    }

    /// The bound on [`acquire`](Self::acquire) (aiopg's `timeout`).
    pub fn timeout(&self) -> Option<Duration> {
        self.inner.settings.timeout
    }

    /// The runtime the pool's timers and background tasks use.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.inner.runtime
    }

    /// Closes every idle connection (aiopg's `clear`); connections in use are not touched.
    /// The pool then opens new ones up to `min_size` in the background.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: the idle connections leave the pool before its first
    /// `.await`; dropped later, those not yet closed with a `Terminate` message are dropped,
    /// which closes their sockets.
    pub async fn clear(&self) {
        let mut act = Actions::default();
        {
            let mut st = self.inner.lock();
            let idle = std::mem::take(&mut st.idle);
            for entry in idle {
                self.inner
                    .drop_entry(&mut st, entry, Why::Retired, &mut act);
            }
            self.inner.settle(&mut st, &mut act);
        }
        let closing = std::mem::take(&mut act.close);
        self.inner.run(act);
        for conn in closing {
            conn.close().await;
        }
    }

    /// Closes the pool (aiopg's `close`): later [`acquire`](Self::acquire) calls, and
    /// callers waiting now, fail with [`ErrorKind::PoolClosed`]; idle connections are closed
    /// now, connections in use when they come back. Returns at once; see
    /// [`wait_closed`](Self::wait_closed).
    pub fn close(&self) {
        let mut act = Actions::default();
        {
            let mut st = self.inner.lock();
            if st.closing {
                return;
            }
            st.closing = true;
            for waiter in std::mem::take(&mut st.waiters) {
                let mut slot = waiter.lock();
                slot.outcome = Some(Err(pool_closed()));
                if let Some(w) = slot.waker.take() {
                    act.wake.push(w);
                }
            }
            let idle = std::mem::take(&mut st.idle);
            for entry in idle {
                self.inner
                    .drop_entry(&mut st, entry, Why::Retired, &mut act);
            }
            self.inner.settle(&mut st, &mut act);
        }
        tracing::debug!("pool closed");
        self.inner.run(act);
    }

    /// Closes the pool and also every connection in use (aiopg's `terminate`): their
    /// holders' calls fail with a closed error and `is_closed()` reports true at once.
    pub fn terminate(&self) {
        self.close();
        let in_use: Vec<Connection> = self.inner.lock().slots.iter().flatten().cloned().collect();
        for conn in in_use {
            close_now(&self.inner.runtime, conn);
        }
    }

    /// Waits until the pool is closed and every connection it owned is closed, including
    /// those still in use, once they come back (aiopg's `wait_closed`). Call
    /// [`close`](Self::close) or [`terminate`](Self::terminate) first: on an open pool this
    /// fails with a usage error, as aiopg's does.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: it only waits, and may be called again.
    pub async fn wait_closed(&self) -> Result<()> {
        if !self.inner.lock().closing {
            return Err(Error::usage(
                "wait_closed() called on an open pool: call close() or terminate() first",
            ));
        }
        poll_fn(|cx| {
            let mut st = self.inner.lock();
            if st.size == 0 {
                return Poll::Ready(());
            }
            if !st.closed_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                st.closed_wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        Ok(())
    }

    /// True once [`close`](Self::close) or [`terminate`](Self::terminate) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closing
    }

    /// A snapshot of the pool's gauges and counters, for metrics.
    pub fn stats(&self) -> PoolStats {
        let st = self.inner.lock();
        PoolStats {
            size: st.size,
            idle: st.idle.len(),
            in_use: st.in_use(),
            connecting: st.connecting,
            waiting: st.waiters.len(),
            min_size: self.inner.settings.min_size,
            max_size: self.inner.settings.max_size,
            acquires: st.acquires,
            waits: st.waits,
            wait_time: Duration::from_nanos(self.inner.wait_nanos.load(Ordering::Relaxed)),
            timeouts: st.timeouts,
            connections_created: st.created,
            connections_closed: st.closed,
            connections_broken: st.broken,
            connections_recycled: st.recycled,
            connect_errors: st.connect_errors,
        }
    }
}

/// The pool's gauges (now) and counters (since creation), from [`Pool::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Connections open or being opened ([`Pool::size`]).
    pub size: usize,
    /// Idle connections ([`Pool::free_size`]).
    pub idle: usize,
    /// Connections lent out (including any being checked before being handed out).
    pub in_use: usize,
    /// Connections being opened.
    pub connecting: usize,
    /// Callers waiting in [`Pool::acquire`].
    pub waiting: usize,
    /// The pool's `min_size`.
    pub min_size: usize,
    /// The pool's `max_size`.
    pub max_size: usize,
    /// Calls to [`Pool::acquire`].
    pub acquires: u64,
    /// Acquires that found no idle connection and had to wait.
    pub waits: u64,
    /// Total time acquires spent waiting.
    pub wait_time: Duration,
    /// Acquires that failed with [`ErrorKind::PoolTimeout`].
    pub timeouts: u64,
    /// Connections opened (after creation as well as at it).
    pub connections_created: u64,
    /// Connections closed by the pool, for any reason (broken and recycled included).
    pub connections_closed: u64,
    /// Of those, connections found closed or failing their liveness check.
    pub connections_broken: u64,
    /// Of those, connections replaced for age (`recycle`, `max_lifetime`).
    pub connections_recycled: u64,
    /// Failed attempts to open a connection.
    pub connect_errors: u64,
}

/// A connection lent by a [`Pool`]; derefs to [`Connection`] and goes back to the pool when
/// dropped.
///
/// Handed out ready for the next statement: whatever its previous user left on the wire (the
/// `ROLLBACK` of a transaction left open, say) has been answered, so
/// [`transaction_status()`](Connection::transaction_status) is what that statement will see,
/// and a connection whose server process went away while it sat idle is never handed out.
///
/// The [`Connection`] it derefs to is a lease ([`Connection::lease`]) that ends when the guard
/// goes back to the pool. Clones of it, and cursors and transactions opened on it, work while
/// the guard is held; kept past that, every call on them fails with an
/// [`ErrorKind::Usage`] error instead of sharing the socket with the connection's next user,
/// and dropping them sends nothing (the pool's release does the clean-up: a transaction left
/// open is rolled back).
///
/// Dropping it never blocks and works from any thread or runtime: a connection left inside a
/// transaction gets a `ROLLBACK` queued ahead of anything its next user sends (driven by a
/// task on the pool's runtime, and awaited by the next [`Pool::acquire`] before it hands the
/// connection out); a closed one is discarded and its slot freed for a new connection.
/// [`Pool::release`] is the form that waits for the clean-up.
pub struct PooledConnection {
    entry: Option<Entry>,
    /// The handle users get: a lease on `entry.conn`, ended when the guard goes back. The pool
    /// keeps using `entry.conn` itself (for checks, `ROLLBACK` and reset), which never goes
    /// stale.
    leased: Connection,
    pool: Arc<Inner>,
    reset_done: bool,
}

impl PooledConnection {
    /// Lends `entry` out: its connection gets a new lease.
    #[inline]
    fn lend(entry: Entry, pool: Arc<Inner>) -> PooledConnection {
        PooledConnection {
            leased: entry.conn.lease(),
            entry: Some(entry),
            pool,
            reset_done: false,
        }
    }

    /// The pool's own handle.
    fn conn(&self) -> &Connection {
        &self.entry.as_ref().expect("the guard holds its entry").conn
    }

    /// Takes the entry back out of a guard that is not handed out after all; the lease never
    /// reached anyone.
    fn take_entry(&mut self) -> Entry {
        self.entry.take().expect("the guard holds its entry")
    }

    /// The connection (the leased handle: see the type's documentation).
    pub fn connection(&self) -> &Connection {
        &self.leased
    }

    /// When the pool opened this connection.
    pub fn created_at(&self) -> Instant {
        self.entry
            .as_ref()
            .expect("the guard holds its entry")
            .created
    }
}

impl Deref for PooledConnection {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.leased
    }
}

impl AsRef<Connection> for PooledConnection {
    fn as_ref(&self) -> &Connection {
        &self.leased
    }
}

impl fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConnection")
            .field("connection", &self.leased)
            .finish()
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.pool.release(entry, self.reset_done);
        }
    }
}

/// A cursor on a pooled connection, from [`Pool::cursor`]; derefs to [`Cursor`] and returns
/// the connection to the pool when dropped (the cursor is dropped first).
pub struct PooledCursor {
    // Field order matters: the cursor goes before the connection is released.
    cursor: Cursor,
    conn: PooledConnection,
}

impl PooledCursor {
    /// The pooled connection under the cursor.
    pub fn connection(&self) -> &PooledConnection {
        &self.conn
    }
}

impl Deref for PooledCursor {
    type Target = Cursor;

    fn deref(&self) -> &Cursor {
        &self.cursor
    }
}

impl DerefMut for PooledCursor {
    fn deref_mut(&mut self) -> &mut Cursor {
        &mut self.cursor
    }
}

impl fmt::Debug for PooledCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledCursor")
            .field("cursor", &self.cursor)
            .field("connection", &self.conn)
            .finish()
    }
}

impl futures_core::Stream for PooledCursor {
    type Item = Result<Row>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Row>>> {
        Pin::new(&mut self.cursor).poll_next(cx)
    }
}
