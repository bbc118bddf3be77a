//! Transactions with real `commit()` and `rollback()`, and savepoints to any depth.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use aiopg_core::{Error, Result};

use crate::Connection;

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
    fn sql(self) -> Option<&'static str> {
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
/// Ending is not: a dropped [`commit`](Self::commit) or [`rollback`](Self::rollback) leaves
/// the outcome unknown to the caller, and the handle counts as ended from their first poll,
/// so dropping it afterwards sends no `ROLLBACK`. A statement future dropped inside the
/// transaction still runs in it once sent (and, if it fails, aborts it). Each method says
/// more.
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

/// Issues `sql` and, if this future is dropped before the server answers, queues `undo`:
/// a BEGIN or SAVEPOINT abandoned mid-flight must not leave its transaction open.
async fn run_undoable(conn: &Connection, sql: &str, undo: &str) -> Result<()> {
    struct Guard<'a> {
        conn: &'a Connection,
        undo: &'a str,
        armed: bool,
    }
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            if self.armed {
                self.conn.detach(self.undo);
            }
        }
    }
    let mut guard = Guard {
        conn,
        undo,
        armed: true,
    };
    let res = conn.batch_execute(sql).await;
    // Answered (either way): nothing is left to undo here.
    guard.armed = false;
    res
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
        self.span.record("db.transaction.outcome", outcome);
        if let Some(e) = error {
            crate::trace::record_error(&self.span, e);
        }
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
    /// This method is cancel safe. Dropped before the server answered, a `ROLLBACK` is queued
    /// behind the `BEGIN` (detached, driven by a task on the runtime), so no transaction is left
    /// open; the transaction stays not begun and `begin` may be called again. A `BEGIN` that was
    /// not written yet is taken back, and that `ROLLBACK` then finds no transaction, which is
    /// harmless.
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
    /// If the transaction had failed, the server rolls it back instead, and this returns an
    /// error saying it did.
    ///
    /// # Cancel safety
    ///
    /// This method is not cancel safe. From its first poll the transaction counts as ended:
    /// [`is_active`](Self::is_active) is false, and dropping the transaction sends no `ROLLBACK`.
    /// Dropped once the `COMMIT` was written, it runs and its answer is discarded: whether the
    /// transaction committed is not known (the server rolls back instead when the transaction had
    /// failed, and a deferred constraint or a serialization failure can fail the `COMMIT`).
    /// Dropped while the `COMMIT` still waited to be written (other requests were in flight on the
    /// connection), it is taken back, and the transaction stays open on the server with nothing
    /// left to end it: check [`Connection::transaction_status`] and roll back, or give the
    /// connection back to its pool, whose release rolls it back.
    pub async fn commit(&mut self) -> Result<()> {
        self.require_active("commit()")?;
        let failed = self.conn.transaction_status() == aiopg_core::TransactionStatus::InError;
        // Whatever the server answers, the transaction is over once COMMIT is sent.
        self.state = State::Committed;
        self.savepoints.clear();
        let res = self.conn.batch_execute("COMMIT").await;
        self.end_span_with(&res, if failed { "rolled_back" } else { "committed" });
        res?;
        if failed {
            self.state = State::RolledBack;
            return Err(Error::usage(
                "commit() on a failed transaction: the server rolled it back instead",
            ));
        }
        Ok(())
    }

    /// Rolls back. Rolling back twice, or after a commit, is an error saying so.
    ///
    /// # Cancel safety
    ///
    /// This method is not cancel safe, as [`commit`](Self::commit): the transaction counts as
    /// ended from the first poll. Dropped once the `ROLLBACK` was written, it runs and the
    /// transaction ends. Dropped while it still waited to be written, it is taken back, and the
    /// transaction stays open on the server with nothing left to end it: check
    /// [`Connection::transaction_status`].
    pub async fn rollback(&mut self) -> Result<()> {
        self.require_active("rollback()")?;
        self.state = State::RolledBack;
        self.savepoints.clear();
        let res = self.conn.batch_execute("ROLLBACK").await;
        self.end_span_with(&res, "rolled_back");
        res
    }

    /// Opens a savepoint inside the transaction; undo its work with
    /// [`rollback_savepoint`](Self::rollback_savepoint) or keep it with
    /// [`release_savepoint`](Self::release_savepoint). Savepoints nest to any depth.
    ///
    /// # Cancel safety
    ///
    /// Dropped before the server answered, the savepoint is not recorded, and a
    /// `ROLLBACK TO SAVEPOINT` and `RELEASE SAVEPOINT` of it are queued (detached) behind the
    /// `SAVEPOINT`, so nothing of it remains. If the `SAVEPOINT` had not been written yet, it is
    /// taken back, and that undo names a savepoint that does not exist: it fails, and the failure
    /// aborts the transaction.
    pub async fn savepoint(&mut self) -> Result<()> {
        self.require_active("savepoint()")?;
        let name = self.next_savepoint_name();
        run_undoable(
            &self.conn,
            &format!("SAVEPOINT {name}"),
            &format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"),
        )
        .await?;
        self.savepoints.push(name);
        Ok(())
    }

    fn next_savepoint_name(&self) -> String {
        format!("aiopg_sp_{}", self.savepoints.len() + 1)
    }

    /// Keeps the work of the innermost savepoint (`RELEASE SAVEPOINT`).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe as far as the data goes: the savepoint is taken off this
    /// transaction's stack on the first poll, and its work is kept either way. Dropped before the
    /// `RELEASE` was written, it is taken back, and the savepoint stays on the server until the
    /// transaction ends.
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
    /// This method is not cancel safe. The savepoint is taken off this transaction's stack on the
    /// first poll. Dropped once the statement was written, it runs: the work is undone. Dropped
    /// while it still waited to be written, it is taken back: the work is **not** undone, and the
    /// transaction no longer knows the savepoint.
    pub async fn rollback_savepoint(&mut self) -> Result<()> {
        self.require_active("rollback_savepoint()")?;
        let name = self.savepoints.pop().ok_or_else(|| {
            Error::usage("rollback_savepoint() was called with no savepoint open")
        })?;
        self.conn
            .batch_execute(&format!(
                "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
            ))
            .await
    }

    /// A scoped savepoint: [`Savepoint::commit`] keeps its work, [`Savepoint::rollback`] or
    /// dropping it undoes it. Nest with [`Savepoint::point`].
    ///
    /// # Cancel safety
    ///
    /// As [`savepoint`](Self::savepoint): dropped before the server answered, the savepoint is
    /// undone with a detached `ROLLBACK TO SAVEPOINT`; if its `SAVEPOINT` had not been written,
    /// that undo fails and aborts the transaction.
    pub async fn point(&mut self) -> Result<Savepoint<'_>> {
        self.require_active("point()")?;
        let depth = self.savepoints.len() + 1;
        Savepoint::open(&self.conn, depth).await
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
    depth: usize,
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
    async fn open(conn: &'a Connection, depth: usize) -> Result<Savepoint<'a>> {
        let name = format!("aiopg_point_{depth}");
        run_undoable(
            conn,
            &format!("SAVEPOINT {name}"),
            &format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"),
        )
        .await?;
        Ok(Savepoint {
            conn,
            name,
            depth,
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
    /// transaction ends.
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
    /// This method is not cancel safe. The savepoint counts as done from the first poll, so
    /// dropping it no longer rolls it back. Dropped once the statement was written, the work is
    /// undone; dropped while it still waited to be written, it is taken back and the work is
    /// **not** undone.
    pub async fn rollback(&mut self) -> Result<()> {
        self.require_open("rollback()")?;
        self.done = true;
        self.conn
            .batch_execute(&format!(
                "ROLLBACK TO SAVEPOINT {0}; RELEASE SAVEPOINT {0}",
                self.name
            ))
            .await
    }

    /// A savepoint nested inside this one.
    ///
    /// # Cancel safety
    ///
    /// As [`Transaction::savepoint`]: dropped before the server answered, the savepoint is undone
    /// with a detached `ROLLBACK TO SAVEPOINT`; if its `SAVEPOINT` had not been written, that undo
    /// fails and aborts the transaction.
    pub async fn point(&mut self) -> Result<Savepoint<'_>> {
        self.require_open("point()")?;
        Savepoint::open(self.conn, self.depth + 1).await
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
    /// before the `COMMIT` is sent), the transaction is dropped: a detached `ROLLBACK` undoes
    /// whatever `f` sent. Dropped during the `COMMIT`, as [`Transaction::commit`]: the outcome is
    /// unknown. Dropped during the `ROLLBACK` after a failed attempt, as
    /// [`Transaction::rollback`]. Dropped during a pause between attempts, nothing is in flight.
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
