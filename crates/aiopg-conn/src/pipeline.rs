//! Explicit pipelines: several statements sent together under one Sync.

use std::fmt;
use std::ops::Range;

use aiopg_core::{protocol, Error, Result, TransactionStatus};
use postgres_protocol::message::frontend;

use crate::collect::{BatchPart, Collector, Output};
use crate::connection::{is_stale_statement, Connection, Param, QueryResult};
use crate::state::State;
use crate::statement::Statement;
use crate::trace::{self, StatementTrace};
use crate::transaction::{RetryPolicy, TransactionOptions};

/// Several statements sent to the server in one go and answered in one round trip, like
/// libpq's pipeline mode: the Bind/Execute messages of every statement go out together,
/// followed by a single Sync.
///
/// Build it with [`Connection::pipeline`], add statements with [`query`](Pipeline::query) or
/// [`query_prepared`](Pipeline::query_prepared), then [`run`](Pipeline::run) it: each statement
/// gets its own result, in the order it was added.
///
/// # Errors and transactions
///
/// As in libpq's pipeline mode, the server stops at the first failing statement and skips
/// the rest up to the Sync: the failing statement's result is its error, every later one is
/// an error of kind [`ErrorKind::Aborted`](aiopg_core::ErrorKind::Aborted), and the ones
/// before it keep their rows. Outside a transaction block the statements of one run form one
/// implicit transaction, so a failure also undoes the statements before it; inside one, the
/// transaction is aborted, as with any failed statement.
///
/// Where a statement is independent of its neighbours, queries issued concurrently on one
/// connection (from clones or tasks) are also pipelined, each with its own Sync, so that one
/// failing never affects another: use that for independent work, and an explicit pipeline
/// when the statements belong together or when the last bit of throughput matters (one Sync
/// per batch saves the server a transaction and a flush per statement).
///
/// ```no_run
/// # async fn f(conn: &aiopg_conn::Connection) -> aiopg_core::Result<()> {
/// let (a, b) = (1i32, 2i32);
/// let mut p = conn.pipeline();
/// p.query("SELECT $1::int4 + 1", &[&a]);
/// p.query("SELECT $1::int4 * 10", &[&b]);
/// let results = p.run().await?;
/// assert_eq!(results[0].as_ref().unwrap().rows[0].get::<i32>(0), 2);
/// assert_eq!(results[1].as_ref().unwrap().rows[0].get::<i32>(0), 20);
/// # Ok(()) }
/// ```
pub struct Pipeline<'c, 'p> {
    conn: &'c Connection,
    items: Vec<Item<'p>>,
    params: Vec<Param<'p>>,
}

enum Target<'p> {
    Sql(&'p str),
    Prepared(Statement),
}

struct Item<'p> {
    target: Target<'p>,
    params: Range<usize>,
}

impl fmt::Debug for Pipeline<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parameter values are never shown.
        let sql: Vec<&str> = self.sqls().collect();
        f.debug_struct("Pipeline")
            .field("statements", &sql)
            .finish()
    }
}

impl Connection {
    /// Starts an explicit [`Pipeline`] on this connection.
    pub fn pipeline<'p>(&self) -> Pipeline<'_, 'p> {
        Pipeline {
            conn: self,
            items: Vec::new(),
            params: Vec::new(),
        }
    }
}

impl<'c, 'p> Pipeline<'c, 'p> {
    /// Adds a statement, prepared through the connection's statement cache when the pipeline
    /// runs.
    pub fn query(&mut self, sql: &'p str, params: &[Param<'p>]) -> &mut Self {
        self.push(Target::Sql(sql), params)
    }

    /// Adds an already prepared statement.
    pub fn query_prepared(&mut self, stmt: &Statement, params: &[Param<'p>]) -> &mut Self {
        self.push(Target::Prepared(stmt.clone()), params)
    }

    fn push(&mut self, target: Target<'p>, params: &[Param<'p>]) -> &mut Self {
        let start = self.params.len();
        self.params.extend_from_slice(params);
        self.items.push(Item {
            target,
            params: start..self.params.len(),
        });
        self
    }

    /// How many statements the pipeline holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when no statement was added.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Removes every statement, keeping the allocations for the next batch.
    pub fn clear(&mut self) {
        self.items.clear();
        self.params.clear();
    }

    /// Sends every statement with one Sync and waits for their results, one per statement,
    /// in order. The pipeline keeps its statements and can run again.
    ///
    /// The outer error means nothing ran: the connection is closed, or a statement could not
    /// be prepared or its parameters encoded (the message names which). The inner results are
    /// each statement's own.
    ///
    /// A cached statement gone stale after a schema change (SQLSTATE 0A000) is prepared again
    /// and the whole pipeline is run once more, when the failure left the connection outside
    /// any transaction block: the failed run had no effect then, being one implicit
    /// transaction.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step. Dropped while statements are being
    /// prepared, nothing runs (a statement prepared for nobody is closed later). Dropped while
    /// the batch waits to be written, it is taken back and none of it runs. Dropped after any
    /// of it was written, the whole batch runs as sent and its answer is discarded; outside a
    /// transaction block it is one implicit transaction, which then commits or rolls back
    /// unseen.
    pub async fn run(&self) -> Result<Vec<Result<QueryResult>>> {
        if self.items.is_empty() {
            return Ok(Vec::new());
        }
        let mut trace = StatementTrace::batch(&self.conn.shared, None, self.sqls());
        let res = trace::in_span(&trace.span, self.run_traced()).await;
        // The batch failed with its first failing statement (the later ones did not run).
        let failed = match &res {
            Err(e) => Some(e),
            Ok(results) => results.iter().find_map(|r| r.as_ref().err()),
        };
        trace.finish(failed);
        res
    }

    /// Each statement's SQL, in order.
    fn sqls(&self) -> impl Iterator<Item = &str> + Clone {
        self.items.iter().map(|i| match &i.target {
            Target::Sql(s) => *s,
            Target::Prepared(s) => s.sql(),
        })
    }

    async fn run_traced(&self) -> Result<Vec<Result<QueryResult>>> {
        let idle_before = self.conn.transaction_status() == TransactionStatus::Idle;
        let (stmts, results) = self.run_once().await?;
        let stale = results
            .iter()
            .position(|r| r.as_ref().is_err_and(is_stale_statement));
        let Some(stale) = stale else {
            return Ok(results);
        };
        if !idle_before || self.conn.transaction_status() != TransactionStatus::Idle {
            return Ok(results);
        }
        // Only the failing statement is known to be stale; later ones never ran. Evict it and
        // run again: any other stale statement fails the second run, and is returned.
        self.evict(stmts, stale);
        tracing::debug!("a pipelined statement went stale after a schema change; running again");
        Ok(self.run_once().await?.1)
    }

    /// Drops stale statement `i` from the cache (and this run's handles on the others).
    fn evict(&self, stmts: Vec<Statement>, i: usize) {
        self.conn.shared.lock().statements.remove(stmts[i].sql());
    }

    /// Prepares every statement not prepared yet, in order.
    async fn statements(&self) -> Result<Vec<Statement>> {
        let mut stmts = Vec::with_capacity(self.items.len());
        for (i, item) in self.items.iter().enumerate() {
            stmts.push(match &item.target {
                Target::Prepared(s) => s.clone(),
                Target::Sql(sql) => self
                    .conn
                    .prepare_cached(sql)
                    .await
                    .map_err(|e| e.context(format!("pipeline statement {i}")))?,
            });
        }
        Ok(stmts)
    }

    /// Writes each statement's (Parse,) Bind and Execute, and returns their collectors' parts.
    fn encode(&self, st: &mut State, stmts: &[Statement]) -> Result<Vec<BatchPart>> {
        for stmt in stmts {
            stmt.check_owner(&st.statements)?;
        }
        let w = &mut st.write;
        let mut parts = Vec::with_capacity(stmts.len());
        for (i, (item, stmt)) in self.items.iter().zip(stmts).enumerate() {
            if stmt.name().is_empty() {
                protocol::encode_or_rollback(w, |w| {
                    frontend::parse("", stmt.sql(), std::iter::empty(), w)
                })?;
            }
            protocol::bind(
                w,
                stmt.name(),
                stmt.params(),
                &self.params[item.params.clone()],
            )
            .map_err(|e| e.context(format!("pipeline statement {i}")))?;
            protocol::encode_or_rollback(w, |w| frontend::execute("", 0, w))?;
            parts.push(BatchPart::new(stmt.columns_arc().clone()));
        }
        Ok(parts)
    }

    async fn run_once(&self) -> Result<(Vec<Statement>, Vec<Result<QueryResult>>)> {
        let stmts = self.statements().await?;
        // Outside a transaction block the pipeline is one implicit transaction, which commits.
        let implicit = self.conn.transaction_status() == TransactionStatus::Idle;
        let req = self.conn.start(|st| {
            if implicit || stmts.iter().any(Statement::commits) {
                st.commits();
            }
            let parts = self.encode(st, &stmts)?;
            frontend::sync(&mut st.write);
            Ok(Collector::batch(parts))
        })?;
        let Output::Batch { parts, failed, .. } = req.await? else {
            return Err(Error::protocol("unexpected answer to a pipeline"));
        };
        let fail_at = failed.as_ref().map_or(usize::MAX, |(i, _)| *i);
        let mut failed = failed;
        let mut done = completed(parts, stmts.len().min(fail_at)).into_iter();
        let mut results = Vec::with_capacity(stmts.len());
        for i in 0..stmts.len() {
            results.push(if i < fail_at {
                done.next()
                    .unwrap_or_else(|| Err(Error::protocol("a pipelined statement got no result")))
            } else if i == fail_at {
                Err(failed.take().map_or_else(
                    || Error::protocol("a pipelined statement got no result"),
                    |(_, e)| e,
                ))
            } else {
                Err(Error::aborted(format!(
                    "pipeline statement {i} did not run: statement {fail_at} failed before it"
                )))
            });
        }
        Ok((stmts, results))
    }

    /// Runs the statements as one transaction, in one round trip: `BEGIN` (with `options`),
    /// every statement, Sync, then `COMMIT`, all written together. The outcome is exact:
    ///
    /// - [`TransactionOutcome::Committed`] with each statement's result, in order: the server
    ///   answered the `COMMIT`.
    /// - [`TransactionOutcome::RolledBack`]: the step that failed ([`TransactionStep`]) and
    ///   its error (a server error keeps its SQLSTATE); nothing of the transaction remains.
    ///   A `COMMIT` that fails (a deferred constraint, a serialization failure at commit) is
    ///   the step [`TransactionStep::Commit`].
    /// - `Err` of kind [`CommitUnknown`](aiopg_core::ErrorKind::CommitUnknown): the
    ///   connection was lost after the `COMMIT` went out whole and before its answer came:
    ///   the transaction **may or may not have committed**. Any other `Err` means nothing
    ///   committed: the connection was closed before the `COMMIT` left or after the
    ///   transaction had failed, a statement could not be prepared or its parameters encoded
    ///   (nothing was sent), or the pipeline holds a statement that begins or ends a
    ///   transaction itself (refused with a `Usage` error).
    ///
    /// The `COMMIT` goes after the statements' Sync, as a query of its own: when a statement
    /// fails, the server skips the rest up to that Sync and then runs the `COMMIT` as a
    /// `ROLLBACK`, so a failure never leaves a transaction open, needs no second round trip,
    /// and never touches requests other callers pipelined behind this one. The whole
    /// transaction is one request: nothing another caller issues on the same connection can
    /// land inside it.
    ///
    /// Statements that depend on an earlier statement's result cannot be pipelined, since
    /// every parameter is bound before anything runs. Keep such work in one statement:
    /// `INSERT ... RETURNING` feeding a data-modifying CTE (`WITH new AS (INSERT ... RETURNING
    /// id) INSERT INTO child SELECT id, ... FROM new`), or an `UPDATE ... FROM`; or use an
    /// interactive [`Transaction`](crate::Transaction), one round trip per statement.
    ///
    /// Fails with a `Usage` error, sending nothing, when the connection is inside a
    /// transaction block already. A transaction needs its connection to itself: an
    /// interactive transaction another caller runs on the same connection cannot be seen
    /// before its `BEGIN` is answered.
    ///
    /// ```no_run
    /// # async fn f(conn: &aiopg_conn::Connection) -> aiopg_core::Result<()> {
    /// use aiopg_conn::{IsolationLevel, TransactionOptions, TransactionOutcome};
    /// let (from, to, amount) = (1i32, 2i32, 100i64);
    /// let mut p = conn.pipeline();
    /// p.query("UPDATE accounts SET balance = balance - $2 WHERE id = $1", &[&from, &amount]);
    /// p.query("UPDATE accounts SET balance = balance + $2 WHERE id = $1", &[&to, &amount]);
    /// p.query("INSERT INTO transfers (src, dst, amount) VALUES ($1, $2, $3)", &[&from, &to, &amount]);
    /// let options = TransactionOptions {
    ///     isolation_level: IsolationLevel::Serializable,
    ///     ..TransactionOptions::default()
    /// };
    /// match p.transaction(options).await? {
    ///     TransactionOutcome::Committed(results) => assert_eq!(results.len(), 3),
    ///     TransactionOutcome::RolledBack { step, error, .. } => {
    ///         eprintln!("rolled back at {step:?}: {error}");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step, and never leaves a transaction open:
    /// the request is taken back whole or not at all. Dropped while its statements are being
    /// prepared, or before any of the request was written, nothing runs. Dropped after, the
    /// transaction runs to its end as sent (its `COMMIT` included) and its answer is
    /// discarded, so whether it committed is not known.
    pub async fn transaction(&self, options: TransactionOptions) -> Result<TransactionOutcome> {
        // A transaction span, as for an interactive transaction, with the batch inside it.
        let shared = &self.conn.shared;
        let tx = trace::transaction_span(shared, options.isolation_level.sql());
        let mut batch = StatementTrace::batch(shared, Some(&tx), self.sqls());
        let res = trace::in_span(&batch.span, self.transaction_traced(options)).await;
        match &res {
            Ok(TransactionOutcome::Committed(_)) => {
                batch.finish(None);
                trace::end_transaction(&tx, "committed", None);
            }
            Ok(TransactionOutcome::RolledBack { error, .. }) => {
                batch.finish(Some(error));
                trace::end_transaction(&tx, "rolled_back", Some(error));
            }
            Err(e) => {
                batch.finish(Some(e));
                let outcome = if e.is_commit_unknown() {
                    "unknown"
                } else {
                    "failed"
                };
                trace::end_transaction(&tx, outcome, Some(e));
            }
        }
        res
    }

    async fn transaction_traced(&self, options: TransactionOptions) -> Result<TransactionOutcome> {
        let (stmts, outcome) = self.transaction_once(options).await?;
        // A cached statement gone stale: the transaction had no effect; run it once more.
        let stale = match &outcome {
            TransactionOutcome::RolledBack {
                step: TransactionStep::Statement(i),
                error,
                ..
            } if is_stale_statement(error) => *i,
            _ => return Ok(outcome),
        };
        self.evict(stmts, stale);
        tracing::debug!("a statement of a pipelined transaction went stale; running it again");
        Ok(self.transaction_once(options).await?.1)
    }

    async fn transaction_once(
        &self,
        options: TransactionOptions,
    ) -> Result<(Vec<Statement>, TransactionOutcome)> {
        for (i, item) in self.items.iter().enumerate() {
            let sql = match &item.target {
                Target::Sql(sql) => *sql,
                Target::Prepared(s) => s.sql(),
            };
            if protocol::controls_transaction(sql) {
                return Err(Error::usage(format!(
                    "pipeline statement {i} begins or ends a transaction itself; a pipelined \
                     transaction sends its own BEGIN and COMMIT"
                )));
            }
            if protocol::is_copy(sql) {
                return Err(Error::usage(format!(
                    "pipeline statement {i} is a COPY, which cannot be pipelined; run it with \
                     copy_in or copy_out inside an interactive transaction"
                )));
            }
        }
        let stmts = self.statements().await?;
        let begin = options.begin_sql();
        let req = self.conn.start(|st| {
            if st.tx_status != TransactionStatus::Idle {
                return Err(Error::usage(
                    "a pipelined transaction cannot start inside a transaction block",
                ));
            }
            st.commits();
            st.syncs(2);
            protocol::encode_or_rollback(&mut st.write, |w| {
                frontend::parse("", &begin, std::iter::empty(), w)
            })?;
            protocol::bind(&mut st.write, "", &[], &[])?;
            protocol::encode_or_rollback(&mut st.write, |w| frontend::execute("", 0, w))?;
            let parts = self.encode(st, &stmts)?;
            frontend::sync(&mut st.write);
            protocol::encode_or_rollback(&mut st.write, |w| frontend::query("COMMIT", w))?;
            Ok(Collector::transaction(parts))
        })?;
        let Output::Batch {
            parts,
            failed,
            tx: Some(tx),
        } = req.await?
        else {
            return Err(Error::protocol(
                "unexpected answer to a pipelined transaction",
            ));
        };
        let n = stmts.len();
        let rolled_back = |step, error, results| TransactionOutcome::RolledBack {
            step,
            error,
            results,
        };
        let ended = tx.end_tag.as_deref();
        let outcome = if let Some(e) = tx.begin_error {
            rolled_back(TransactionStep::Begin, e, Vec::new())
        } else if let Some((i, e)) = failed {
            if ended == Some("COMMIT") {
                return Err(Error::protocol(format!(
                    "the server committed a transaction whose statement {i} failed"
                )));
            }
            let done = completed(parts, i).into_iter().collect::<Result<_>>()?;
            rolled_back(TransactionStep::Statement(i), e, done)
        } else if let Some(e) = tx.end_error {
            let done = completed(parts, n).into_iter().collect::<Result<_>>()?;
            rolled_back(TransactionStep::Commit, e, done)
        } else if tx.synced == Some(TransactionStatus::InTransaction) && ended == Some("COMMIT") {
            TransactionOutcome::Committed(completed(parts, n).into_iter().collect::<Result<_>>()?)
        } else {
            return Err(Error::protocol(format!(
                "a pipelined transaction ended with status {:?} and COMMIT answered {:?}",
                tx.synced, ended
            )));
        };
        Ok((stmts, outcome))
    }

    /// [`transaction`](Self::transaction), run again while it fails with a serialization
    /// failure (SQLSTATE 40001) or a deadlock (40P01), as `retry` allows. The statements are
    /// sent again as they are: a pipelined transaction's parameters cannot depend on what it
    /// reads, so no closure is needed to rebuild it. After the last attempt the outcome is
    /// returned as it is (`RolledBack`, its error saying how many attempts were made).
    ///
    /// # Cancel safety
    ///
    /// As [`transaction`](Self::transaction) for the attempt in flight: taken back if unsent,
    /// otherwise run to its end unseen (it may commit). Dropped during a pause between
    /// attempts, nothing is in flight.
    pub async fn transaction_with_retry(
        &self,
        options: TransactionOptions,
        retry: &RetryPolicy,
    ) -> Result<TransactionOutcome> {
        let mut attempt = 1;
        loop {
            let outcome = self.transaction(options).await?;
            match outcome {
                TransactionOutcome::RolledBack {
                    step,
                    error,
                    results,
                } if error.is_retryable() => {
                    if attempt >= retry.max_attempts {
                        return Ok(TransactionOutcome::RolledBack {
                            step,
                            error: error.context(format!("gave up after {attempt} attempts")),
                            results,
                        });
                    }
                    tracing::debug!(attempt, "pipelined transaction: {error}; retrying");
                    self.conn.runtime().sleep(retry.backoff(attempt)).await;
                    attempt += 1;
                }
                outcome => return Ok(outcome),
            }
        }
    }
}

/// The first `n` parts as statement results.
fn completed(parts: Vec<BatchPart>, n: usize) -> Vec<Result<QueryResult>> {
    let mut out: Vec<Result<QueryResult>> = parts
        .into_iter()
        .take(n)
        .map(|p| {
            Ok(QueryResult {
                rows: p.rows,
                columns: p.columns,
                tag: p.tag,
                rows_affected: p.affected,
            })
        })
        .collect();
    while out.len() < n {
        out.push(Err(Error::protocol("a pipelined statement got no result")));
    }
    out
}

/// Where a pipelined transaction failed: see [`Pipeline::transaction`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionStep {
    /// Its `BEGIN`: no statement ran.
    Begin,
    /// The statement at this index (from 0, in the order they were added); the statements
    /// before it ran, and were rolled back with it, the ones after it never ran.
    Statement(usize),
    /// Its `COMMIT`: every statement ran, and the server rolled them back at commit.
    Commit,
}

/// How a pipelined transaction ended, from [`Pipeline::transaction`]. A lost answer is not
/// an outcome but an error (`CommitUnknown`): see there.
#[derive(Debug)]
#[must_use]
pub enum TransactionOutcome {
    /// Committed: every statement's result, in order.
    Committed(Vec<QueryResult>),
    /// Rolled back: nothing of the transaction remains.
    RolledBack {
        /// The step that failed.
        step: TransactionStep,
        /// Its error.
        error: Error,
        /// The results of the statements that ran before it (rolled back with it).
        results: Vec<QueryResult>,
    },
}

impl TransactionOutcome {
    /// True when the transaction committed.
    pub fn is_committed(&self) -> bool {
        matches!(self, TransactionOutcome::Committed(_))
    }

    /// The statements' results if the transaction committed; otherwise the error of the
    /// step that failed (its kind and SQLSTATE kept), its message saying which step and
    /// that the transaction was rolled back.
    pub fn committed(self) -> Result<Vec<QueryResult>> {
        match self {
            TransactionOutcome::Committed(r) => Ok(r),
            TransactionOutcome::RolledBack { step, error, .. } => {
                let at = match step {
                    TransactionStep::Begin => "its BEGIN".to_owned(),
                    TransactionStep::Statement(i) => format!("statement {i}"),
                    TransactionStep::Commit => "its COMMIT".to_owned(),
                };
                Err(error.context(format!(
                    "the pipelined transaction was rolled back: {at} failed"
                )))
            }
        }
    }
}
