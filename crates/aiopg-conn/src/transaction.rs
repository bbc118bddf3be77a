//! Transactions with real `commit()` and `rollback()`, and savepoints to any depth.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use postgres_protocol::message::frontend;

use aiopg_core::{Error, Result};

use crate::collect::{Collector, Output};
use crate::connection::Request;
use crate::{Connection, SimpleQueryMessage};

/// A transaction's isolation level, as Python aiopg's `IsolationLevel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IsolationLevel {
    /// The server's default (`default_transaction_isolation`): no clause is sent.
    #[default]
    Default,
    /// `READ COMMITTED`
    ReadCommitted,
    /// `REPEATABLE READ`
    RepeatableRead,
    /// `SERIALIZABLE`
    Serializable,
}

impl IsolationLevel {
    pub(crate) fn sql(self) -> Option<&'static str> {
        match self {
            IsolationLevel::Default => None,
            IsolationLevel::ReadCommitted => Some("READ COMMITTED"),
            IsolationLevel::RepeatableRead => Some("REPEATABLE READ"),
            IsolationLevel::Serializable => Some("SERIALIZABLE"),
        }
    }
}

/// How a transaction begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TransactionOptions {
    /// The isolation level.
    pub isolation_level: IsolationLevel,
    /// `READ ONLY`: writes fail with SQLSTATE 25006.
    pub read_only: bool,
    /// `DEFERRABLE` (meaningful for serializable read-only transactions).
    pub deferrable: bool,
}

impl TransactionOptions {
    /// The `BEGIN` statement, rendered exactly as Python aiopg does:
    /// `BEGIN [ISOLATION LEVEL X] [READ ONLY] [DEFERRABLE]`.
    ///
    /// ```
    /// use aiopg_conn::{IsolationLevel, TransactionOptions};
    /// let opts = TransactionOptions {
    ///     isolation_level: IsolationLevel::Serializable,
    ///     read_only: true,
    ///     deferrable: true,
    /// };
    /// assert_eq!(opts.begin_sql(), "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE");
    /// assert_eq!(TransactionOptions::default().begin_sql(), "BEGIN");
    /// ```
    pub fn begin_sql(&self) -> String {
        let mut sql = String::from("BEGIN");
        if let Some(level) = self.isolation_level.sql() {
            sql.push_str(" ISOLATION LEVEL ");
            sql.push_str(level);
        }
        if self.read_only {
            sql.push_str(" READ ONLY");
        }
        if self.deferrable {
            sql.push_str(" DEFERRABLE");
        }
        sql
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotStarted,
    Active,
    Committed,
    RolledBack,
    /// Its `COMMIT` was sent, and its answer lost or dropped: over, either way.
    Unknown,
}

/// A transaction on a connection.
///
/// Unlike Python aiopg's, `commit()` and `rollback()` work. Dropping a transaction that is
/// still active rolls it back, without blocking: the `ROLLBACK` is queued ahead of anything
/// issued later on the connection, and a task on the connection's runtime drives it (see
/// [`Connection::detach`]).
///
/// # Cancel safety
///
/// Opening is cancel safe: a dropped [`begin`](Self::begin) leaves no transaction open.
/// A [`commit`](Self::commit) or [`rollback`](Self::rollback) whose future is dropped before
/// its statement was written is taken back: nothing happened, the transaction is still
/// active, and dropping it rolls it back. Dropped once written, the statement runs and the
/// transaction is over: a `ROLLBACK` rolled it back, a `COMMIT`'s outcome is unknown to the
/// caller. Either way no transaction is left open once the handle is gone. A statement future
/// dropped inside the transaction still runs in it once sent (and, if it fails, aborts it).
/// Each method says more.
///
/// ```no_run
/// # async fn f(conn: &aiopg_conn::Connection) -> aiopg_core::Result<()> {
/// let mut tx = conn.begin().await?;
/// conn.execute("INSERT INTO t VALUES (1)", &[]).await?;
/// {
///     let mut sp = tx.point().await?;
///     conn.execute("INSERT INTO t VALUES (2)", &[]).await?;
///     sp.rollback().await?; // undoes only the second insert
/// }
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub struct Transaction {
    conn: Connection,
    options: TransactionOptions,
    state: State,
    /// Savepoints opened with [`Transaction::savepoint`], innermost last.
    savepoints: Vec<String>,
    /// `aiopg.transaction`, from `begin` to the end (see `trace.rs`).
    span: tracing::Span,
}

impl fmt::Debug for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("options", &self.options)
            .field("state", &self.state)
            .field("savepoints", &self.savepoints.len())
            .finish()
    }
}

/// A statement (one simple Query) that opens or ends a transaction or a savepoint. If its
/// future is dropped before the answer, `on_drop` learns what became of it: `true` when it was
/// taken back unsent (the server never sees it), `false` when it was sent, so that it runs
/// with its answer discarded. The guard's state can then say what is true.
struct Watched<'a, F: FnOnce(bool)> {
    req: Request<'a>,
    on_drop: Option<F>,
}

impl<'a, F: FnOnce(bool) + Unpin> Watched<'a, F> {
    /// Issues `sql`; `commits`: it may commit (see `State::commits`), so that losing it once
    /// sent says `CommitUnknown`.
    fn start(conn: &'a Connection, sql: &str, commits: bool, on_drop: F) -> Result<Self> {
        let req = conn.start(|st| {
            aiopg_core::protocol::encode_or_rollback(&mut st.write, |w| frontend::query(sql, w))?;
            if commits {
                st.commits();
            }
            Ok(Collector::simple())
        })?;
        Ok(Watched {
            req,
            on_drop: Some(on_drop),
        })
    }
}

impl<F: FnOnce(bool) + Unpin> Future for Watched<'_, F> {
    type Output = Result<Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Output>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.req).poll(cx);
        if res.is_ready() {
            // Answered (either way): the caller goes by the answer.
            this.on_drop = None;
        }
        res
    }
}

impl<F: FnOnce(bool)> Drop for Watched<'_, F> {
    fn drop(&mut self) {
        if let Some(on_drop) = self.on_drop.take() {
            on_drop(self.req.withdraw());
        }
    }
}

/// The tag of the last statement a simple Query's answer completed (`COMMIT`, `ROLLBACK`).
fn last_tag(out: &Output) -> Option<&str> {
    match out {
        Output::Simple(msgs) => msgs.iter().rev().find_map(|m| match m {
            SimpleQueryMessage::CommandComplete { tag, .. } => Some(tag.as_str()),
            SimpleQueryMessage::Row(_) => None,
        }),
        _ => None,
    }
}

/// Runs `sql` in its statement span; `on_drop` as [`Watched`].
async fn run_watched<F: FnOnce(bool) + Unpin>(
    conn: &Connection,
    sql: &str,
    commits: bool,
    on_drop: F,
) -> Result<Output> {
    let req = Watched::start(conn, sql, commits, on_drop)?;
    crate::trace::statement(&conn.shared, sql, req).await
}

/// Issues `sql` (a BEGIN or SAVEPOINT) and, if this future is dropped once it was sent but
/// before the server answered, queues `undo` behind it, so that nothing of it remains. One
/// taken back unsent never runs: nothing is queued.
async fn run_undoable(conn: &Connection, sql: &str, undo: &str) -> Result<()> {
    run_watched(conn, sql, false, move |taken_back| {
        if !taken_back {
            conn.detach(undo);
        }
    })
    .await
    .map(drop)
}

/// A savepoint name used once in the process: a savepoint left on the server (a `RELEASE`
/// taken back) is never named again, so an undo or a rollback always reaches its own.
fn savepoint_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Transaction {
    pub(crate) fn new(conn: Connection, options: TransactionOptions) -> Transaction {
        Transaction {
            conn,
            options,
            state: State::NotStarted,
            savepoints: Vec::new(),
            span: tracing::Span::none(),
        }
    }

    /// Ends the transaction's span with `outcome` (and the error that ended it).
    fn end_span(&mut self, outcome: &'static str, error: Option<&Error>) {
        if self.span.is_disabled() {
            return;
        }
        crate::trace::end_transaction(&self.span, outcome, error);
        let mut open = self
            .conn
            .shared
            .trace
            .transaction
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if open.as_ref().and_then(|s| s.id()) == self.span.id() {
            *open = None;
        }
        drop(open);
        self.span = tracing::Span::none();
    }

    /// Ends the span after the COMMIT or ROLLBACK that answered `res`.
    fn end_span_with<T>(&mut self, res: &Result<T>, ok: &'static str) {
        match res {
            Ok(_) => self.end_span(ok, None),
            Err(e) if e.is_commit_unknown() => self.end_span("unknown", Some(e)),
            Err(e) => self.end_span("failed", Some(e)),
        }
    }

    /// Sends `BEGIN`. Beginning twice is an error.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. Dropped once the `BEGIN` was written but before the server
    /// answered, a `ROLLBACK` is queued behind it (detached, driven by a task on the runtime),
    /// so no transaction is left open. A `BEGIN` not written yet is taken back and never runs,
    /// and nothing is queued. Either way the transaction stays not begun and `begin` may be
    /// called again.
    pub async fn begin(&mut self) -> Result<()> {
        if self.state != State::NotStarted {
            return Err(Error::usage(format!(
                "begin() was called on a transaction that is already {}",
                self.describe()
            )));
        }
        self.span =
            crate::trace::transaction_span(&self.conn.shared, self.options.isolation_level.sql());
        if !self.span.is_disabled() {
            *self
                .conn
                .shared
                .trace
                .transaction
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(self.span.clone());
        }
        let res = run_undoable(&self.conn, &self.options.begin_sql(), "ROLLBACK").await;
        if let Err(e) = res {
            self.end_span("failed", Some(&e));
            return Err(e);
        }
        self.state = State::Active;
        Ok(())
    }

    fn describe(&self) -> &'static str {
        match self.state {
            State::NotStarted => "not begun",
            State::Active => "active",
            State::Committed => "committed",
            State::RolledBack => "rolled back",
            State::Unknown => "ended (its COMMIT was sent, and whether it committed is unknown)",
        }
    }

    fn require_active(&self, what: &str) -> Result<()> {
        match self.state {
            State::Active => Ok(()),
            State::NotStarted => Err(Error::usage(format!(
                "{what} was called before begin(): the transaction has not started"
            ))),
            _ => Err(Error::usage(format!(
                "{what} was called on a transaction that is already {}",
                self.describe()
            ))),
        }
    }

    /// Commits. Committing twice, or after a rollback, is an error saying so.
    ///
    /// The outcome is the server's answer to the `COMMIT`. A transaction that had failed (a
    /// statement in it failed, and was not rolled back to a savepoint before the `COMMIT` ran)
    /// is rolled back instead, which the server's answer says (its tag is `ROLLBACK`): this then
    /// returns an [`ErrorKind::Usage`](aiopg_core::ErrorKind::Usage) error saying so, and the
    /// transaction counts as rolled back. A `COMMIT` that fails (a deferred constraint, a
    /// serialization failure) returns the server's error, the transaction rolled back too. A
    /// connection lost once the `COMMIT` was sent gives
    /// [`CommitUnknown`](aiopg_core::ErrorKind::CommitUnknown).
    ///
    /// # Cancel safety
    ///
    /// Dropped while the `COMMIT` still waited to be written (other requests were in flight on
    /// the connection), it is taken back: nothing happened, the transaction is still active (a
    /// later `commit` or `rollback` ends it, and dropping the transaction rolls it back). Dropped
    /// once the `COMMIT` was written, it runs and its answer is discarded: the transaction is over
    /// ([`is_active`](Self::is_active) is false and dropping it sends nothing), but whether it
    /// committed is not known (the server rolls back instead when the transaction had failed, and
    /// a deferred constraint or a serialization failure can fail the `COMMIT`).
    pub async fn commit(&mut self) -> Result<()> {
        self.require_active("commit()")?;
        let res = {
            let (state, savepoints) = (&mut self.state, &mut self.savepoints);
            run_watched(&self.conn, "COMMIT", true, move |taken_back| {
                if !taken_back {
                    // Sent: it ends the transaction, with an outcome nobody will hear.
                    *state = State::Unknown;
                    savepoints.clear();
                }
            })
            .await
        };
        self.savepoints.clear();
        match res {
            // What the server did is its answer's tag, not the status of an earlier answer:
            // requests queued ahead of the COMMIT (a savepoint's undo) may have changed it.
            Ok(out) if last_tag(&out) == Some("ROLLBACK") => {
                self.state = State::RolledBack;
                self.end_span("rolled_back", None);
                Err(Error::usage(
                    "commit() on a failed transaction: the server rolled it back instead (a \
                     statement in it had failed; nothing was committed)",
                ))
            }
            Ok(_) => {
                self.state = State::Committed;
                self.end_span("committed", None);
                Ok(())
            }
            Err(e) => {
                self.state = if e.is_commit_unknown() {
                    State::Unknown
                } else {
                    // The server failed the COMMIT, which ends the transaction; or the connection
                    // closed before the COMMIT was sent whole, and the session went with its
                    // transaction.
                    State::RolledBack
                };
                let res = Err(e);
                self.end_span_with(&res, "committed");
                res
            }
        }
    }

    /// Rolls back. Rolling back twice, or after a commit, is an error saying so.
    ///
    /// # Cancel safety
    ///
    /// Dropped while the `ROLLBACK` still waited to be written (other requests were in flight on
    /// the connection), it is taken back: the transaction is still active, and dropping it rolls
    /// it back. Dropped once the `ROLLBACK` was written, it runs and the transaction is over.
    /// Either way no transaction is left open once the handle is gone.
    pub async fn rollback(&mut self) -> Result<()> {
        self.require_active("rollback()")?;
        let res = {
            let (state, savepoints) = (&mut self.state, &mut self.savepoints);
            run_watched(&self.conn, "ROLLBACK", false, move |taken_back| {
                if !taken_back {
                    *state = State::RolledBack;
                    savepoints.clear();
                }
            })
            .await
            .map(drop)
        };
        // Answered: over, whatever the answer (on a closed connection, the session took its
        // transaction with it).
        self.state = State::RolledBack;
        self.savepoints.clear();
        self.end_span_with(&res, "rolled_back");
        res
    }

    /// Opens a savepoint inside the transaction; undo its work with
    /// [`rollback_savepoint`](Self::rollback_savepoint) or keep it with
    /// [`release_savepoint`](Self::release_savepoint). Savepoints nest to any depth.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropped before the server answered, the savepoint is not
    /// recorded and nothing of it remains. A `SAVEPOINT` not written yet is taken back and never
    /// runs. One already written is followed by a `ROLLBACK TO SAVEPOINT` and `RELEASE SAVEPOINT`
    /// of it, queued (detached) behind it.
    pub async fn savepoint(&mut self) -> Result<()> {
        self.require_active("savepoint()")?;
        let name = savepoint_name("aiopg_sp");
        run_undoable(
            &self.conn,
            &format!("SAVEPOINT {name}"),
            &format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"),
        )
        .await?;
        self.savepoints.push(name);
        Ok(())
    }

    /// Keeps the work of the innermost savepoint (`RELEASE SAVEPOINT`).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe as far as the data goes: the savepoint is taken off this
    /// transaction's stack on the first poll, and its work is kept either way. Dropped before the
    /// `RELEASE` was written, it is taken back, and the savepoint stays on the server until the
    /// transaction ends, unnamed by anything this transaction sends later (savepoint names are
    /// never reused).
    pub async fn release_savepoint(&mut self) -> Result<()> {
        self.require_active("release_savepoint()")?;
        let name = self
            .savepoints
            .pop()
            .ok_or_else(|| Error::usage("release_savepoint() was called with no savepoint open"))?;
        self.conn
            .batch_execute(&format!("RELEASE SAVEPOINT {name}"))
            .await
    }

    /// Undoes the work of the innermost savepoint and closes it.
    ///
    /// # Cancel safety
    ///
    /// Dropped once the statement was written, it runs: the work is undone and the savepoint is
    /// closed (off this transaction's stack). Dropped while it still waited to be written (other
    /// requests were in flight), it is taken back: nothing was undone, and the savepoint stays
    /// open and innermost (a later `rollback_savepoint`, or the transaction's rollback, undoes
    /// its work). With no savepoint open further out, calling it again tells which happened:
    /// `Ok` (it had been taken back, and now ran) or the `Usage` error of an empty stack (it had
    /// been sent).
    pub async fn rollback_savepoint(&mut self) -> Result<()> {
        self.require_active("rollback_savepoint()")?;
        let Some(name) = self.savepoints.last() else {
            return Err(Error::usage(
                "rollback_savepoint() was called with no savepoint open",
            ));
        };
        let sql = format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}");
        let res = {
            let savepoints = &mut self.savepoints;
            let req = Watched::start(&self.conn, &sql, false, move |taken_back| {
                if !taken_back {
                    savepoints.pop();
                }
            })?;
            crate::trace::statement(&self.conn.shared, &sql, req).await
        };
        // Answered (or the connection closed): the savepoint is gone either way.
        self.savepoints.pop();
        res.map(drop)
    }

    /// A scoped savepoint: [`Savepoint::commit`] keeps its work, [`Savepoint::rollback`] or
    /// dropping it undoes it. Nest with [`Savepoint::point`].
    ///
    /// # Cancel safety
    ///
    /// As [`savepoint`](Self::savepoint), cancel safe: dropped before the server answered, no
    /// savepoint remains. A `SAVEPOINT` not written yet is taken back; one already written is
    /// undone with a detached `ROLLBACK TO SAVEPOINT`.
    pub async fn point(&mut self) -> Result<Savepoint<'_>> {
        self.require_active("point()")?;
        Savepoint::open(&self.conn).await
    }

    /// True between a successful `begin()` and `commit()`/`rollback()`.
    pub fn is_active(&self) -> bool {
        self.state == State::Active
    }

    /// The options the transaction began with.
    pub fn options(&self) -> TransactionOptions {
        self.options
    }

    /// The isolation level.
    pub fn isolation_level(&self) -> IsolationLevel {
        self.options.isolation_level
    }

    /// The connection the transaction runs on.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// How many savepoints of [`savepoint`](Self::savepoint) are open, as this guard knows.
    #[cfg(test)]
    pub(crate) fn savepoint_depth(&self) -> usize {
        self.savepoints.len()
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.state == State::Active {
            self.conn.detach("ROLLBACK");
        }
        // Ended some other way (dropped, or a future of commit/rollback dropped mid-way).
        self.end_span("dropped", None);
    }
}

/// A scoped savepoint from [`Transaction::point`] or [`Savepoint::point`]; rolled back when
/// dropped without [`commit`](Savepoint::commit).
pub struct Savepoint<'a> {
    conn: &'a Connection,
    name: String,
    done: bool,
}

impl fmt::Debug for Savepoint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Savepoint")
            .field("name", &self.name)
            .field("done", &self.done)
            .finish()
    }
}

impl<'a> Savepoint<'a> {
    async fn open(conn: &'a Connection) -> Result<Savepoint<'a>> {
        let name = savepoint_name("aiopg_point");
        run_undoable(
            conn,
            &format!("SAVEPOINT {name}"),
            &format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"),
        )
        .await?;
        Ok(Savepoint {
            conn,
            name,
            done: false,
        })
    }

    fn require_open(&self, what: &str) -> Result<()> {
        if self.done {
            Err(Error::usage(format!(
                "{what} was called on savepoint {} after it was committed or rolled back",
                self.name
            )))
        } else {
            Ok(())
        }
    }

    /// Keeps the savepoint's work (`RELEASE SAVEPOINT`).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe as far as the data goes: the savepoint counts as done from the
    /// first poll (dropping it no longer rolls it back), and its work is kept whether or not the
    /// `RELEASE` was sent. Taken back unsent, the savepoint stays on the server until the
    /// transaction ends, unnamed by anything sent later (savepoint names are never reused).
    pub async fn commit(&mut self) -> Result<()> {
        self.require_open("commit()")?;
        self.done = true;
        self.conn
            .batch_execute(&format!("RELEASE SAVEPOINT {}", self.name))
            .await
    }

    /// Undoes the savepoint's work.
    ///
    /// # Cancel safety
    ///
    /// The work is undone whenever this future is dropped. Dropped once the statement was
    /// written, it runs and the savepoint is done. Dropped while it still waited to be written
    /// (other requests were in flight), it is taken back and the savepoint is still open:
    /// dropping the savepoint then rolls it back (detached), or `rollback` can be called again.
    pub async fn rollback(&mut self) -> Result<()> {
        self.require_open("rollback()")?;
        let sql = format!(
            "ROLLBACK TO SAVEPOINT {0}; RELEASE SAVEPOINT {0}",
            self.name
        );
        let res = {
            let done = &mut self.done;
            let req = Watched::start(self.conn, &sql, false, move |taken_back| {
                if !taken_back {
                    *done = true;
                }
            })?;
            crate::trace::statement(&self.conn.shared, &sql, req).await
        };
        // Answered (or the connection closed): done either way.
        self.done = true;
        res.map(drop)
    }

    /// A savepoint nested inside this one.
    ///
    /// # Cancel safety
    ///
    /// As [`Transaction::savepoint`], cancel safe: dropped before the server answered, no
    /// savepoint remains. A `SAVEPOINT` not written yet is taken back; one already written is
    /// undone with a detached `ROLLBACK TO SAVEPOINT`.
    pub async fn point(&mut self) -> Result<Savepoint<'_>> {
        self.require_open("point()")?;
        Savepoint::open(self.conn).await
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.detach(&format!(
                "ROLLBACK TO SAVEPOINT {0}; RELEASE SAVEPOINT {0}",
                self.name
            ));
        }
    }
}

impl Connection {
    /// A transaction that has not begun yet; call [`Transaction::begin`].
    pub fn transaction(&self, options: TransactionOptions) -> Transaction {
        Transaction::new(self.clone(), options)
    }

    /// Begins a transaction with the server's default settings.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`Transaction::begin`]: if the future is dropped before
    /// the server answers, a `ROLLBACK` is queued so that no transaction is left open.
    pub async fn begin(&self) -> Result<Transaction> {
        self.begin_with(TransactionOptions::default()).await
    }

    /// Begins a transaction with `options`.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`Transaction::begin`]: a `BEGIN` that may have run is
    /// followed by a `ROLLBACK`.
    pub async fn begin_with(&self, options: TransactionOptions) -> Result<Transaction> {
        let mut tx = Transaction::new(self.clone(), options);
        tx.begin().await?;
        Ok(tx)
    }
}

/// How [`Connection::transact`] and
/// [`Pipeline::transaction_with_retry`](crate::Pipeline::transaction_with_retry) retry a
/// transaction that failed with a serialization failure (SQLSTATE 40001) or a deadlock
/// (40P01): the errors PostgreSQL documents as "retry the transaction".
///
/// Attempt `n` (from 1) that fails is followed by a pause drawn at random between half and
/// all of `initial_backoff × 2ⁿ⁻¹`, capped at `max_backoff`, so that the transactions that
/// collided do not collide again in step. No other error is retried: a lost connection, a
/// `CommitUnknown` (the transaction may have committed), a constraint violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The pause after the first failed attempt.
    pub initial_backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts; pauses from 5 ms up to 500 ms.
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt `attempt` (from 1).
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = aiopg_conn::RetryPolicy::default();
    /// let d = p.backoff(3);
    /// assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(20));
    /// assert!(p.backoff(30) <= p.max_backoff);
    /// ```
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        let ceiling = self
            .initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff);
        // A random point in the upper half: RandomState is seeded at random per instance.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(attempt);
        let frac = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
        ceiling.mul_f64(0.5 + frac / 2.0)
    }
}

impl Connection {
    /// Runs `f` in a transaction begun with `options` and commits it, retrying the whole
    /// transaction as `retry` allows when it fails with a serialization failure (40001) or
    /// a deadlock (40P01): the loop every service on `SERIALIZABLE` or `REPEATABLE READ`
    /// writes by hand.
    ///
    /// `f` gets the connection (a clone, cheap) and runs its statements on it; it must not
    /// commit or roll back itself. Its error ends the attempt: the transaction is rolled
    /// back, then retried if the error is one of those two, else returned. A `COMMIT` that
    /// fails with one of them is retried too. `f` runs once per attempt, so whatever it does
    /// besides the database must be safe to repeat. After the last attempt its error is
    /// returned, saying how many attempts were made. A lost connection or a
    /// [`CommitUnknown`](aiopg_core::ErrorKind::CommitUnknown) commit is never retried.
    ///
    /// A transaction needs its connection to itself: do not share the connection with other
    /// callers while this runs.
    ///
    /// ```no_run
    /// # async fn f(conn: &aiopg_conn::Connection) -> aiopg_core::Result<()> {
    /// use aiopg_conn::{IsolationLevel, RetryPolicy, TransactionOptions};
    /// let options = TransactionOptions {
    ///     isolation_level: IsolationLevel::Serializable,
    ///     ..TransactionOptions::default()
    /// };
    /// let total: i64 = conn
    ///     .transact(options, &RetryPolicy::default(), |c| async move {
    ///         let n: i64 = c.query_one("SELECT count(*) FROM orders", &[]).await?.get(0);
    ///         c.execute("INSERT INTO order_counts (n) VALUES ($1)", &[&n]).await?;
    ///         Ok(n)
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropped while `BEGIN` is in flight, as [`Transaction::begin`]. Dropped while `f` runs (or
    /// while the `COMMIT` still waits to be written), the transaction is dropped: a detached
    /// `ROLLBACK` undoes whatever `f` sent. Dropped once the `COMMIT` was written, as
    /// [`Transaction::commit`]: it runs, and the outcome is unknown. Dropped during the `ROLLBACK`
    /// after a failed attempt, the transaction is rolled back either way. Dropped during a pause
    /// between attempts, nothing is in flight.
    pub async fn transact<T, F, Fut>(
        &self,
        options: TransactionOptions,
        retry: &RetryPolicy,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(Connection) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            let mut tx = self.begin_with(options).await?;
            let res = match f(self.clone()).await {
                Ok(v) => tx.commit().await.map(|()| v),
                Err(e) => match tx.rollback().await {
                    Ok(()) => Err(e),
                    // The connection is gone: that is what the caller must hear.
                    Err(closed) => Err(closed.context(format!("rolling back after: {e}"))),
                },
            };
            match res {
                Err(e) if e.is_retryable() => {
                    if attempt >= retry.max_attempts {
                        return Err(e.context(format!("gave up after {attempt} attempts")));
                    }
                    tracing::debug!(attempt, "transaction: {e}; retrying");
                    self.runtime().sleep(retry.backoff(attempt)).await;
                    attempt += 1;
                }
                res => return res,
            }
        }
    }
}
