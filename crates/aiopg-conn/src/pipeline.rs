//! Explicit pipelines: several statements sent together under one Sync.

use std::fmt;
use std::ops::Range;

use aiopg_core::{protocol, Error, Result, TransactionStatus};
use postgres_protocol::message::frontend;

use crate::collect::{BatchPart, Collector, Output};
use crate::connection::{is_stale_statement, Connection, Param, QueryResult};
use crate::statement::Statement;

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
        let sql: Vec<&str> = self
            .items
            .iter()
            .map(|i| match &i.target {
                Target::Sql(s) => s,
                Target::Prepared(s) => s.sql(),
            })
            .collect();
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
    /// Like every query future, this one may be dropped at any point: the connection stays in
    /// step.
    pub async fn run(&self) -> Result<Vec<Result<QueryResult>>> {
        if self.items.is_empty() {
            return Ok(Vec::new());
        }
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
        self.conn
            .shared
            .lock()
            .statements
            .remove(stmts[stale].sql());
        drop(stmts);
        tracing::debug!("a pipelined statement went stale after a schema change; running again");
        Ok(self.run_once().await?.1)
    }

    async fn run_once(&self) -> Result<(Vec<Statement>, Vec<Result<QueryResult>>)> {
        let mut stmts = Vec::with_capacity(self.items.len());
        for (i, item) in self.items.iter().enumerate() {
            stmts.push(match &item.target {
                Target::Prepared(s) => s.clone(),
                Target::Sql(sql) => self
                    .conn
                    .prepare(sql)
                    .await
                    .map_err(|e| e.context(format!("pipeline statement {i}")))?,
            });
        }
        // Outside a transaction block the pipeline is one implicit transaction, which commits.
        let implicit = self.conn.transaction_status() == TransactionStatus::Idle;
        let req = self.conn.start(|st| {
            for stmt in &stmts {
                stmt.check_owner(&st.statements)?;
            }
            if implicit || stmts.iter().any(Statement::commits) {
                st.commits();
            }
            let w = &mut st.write;
            let mut parts = Vec::with_capacity(stmts.len());
            for (i, (item, stmt)) in self.items.iter().zip(&stmts).enumerate() {
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
            frontend::sync(w);
            Ok(Collector::batch(parts))
        })?;
        let Output::Batch { parts, failed } = req.await? else {
            return Err(Error::protocol("unexpected answer to a pipeline"));
        };
        let mut results = Vec::with_capacity(stmts.len());
        let mut failed = failed;
        let fail_at = failed.as_ref().map_or(usize::MAX, |(i, _)| *i);
        let mut parts = parts.into_iter();
        for i in 0..stmts.len() {
            let part = parts.next();
            results.push(if i < fail_at {
                match part {
                    Some(p) => Ok(QueryResult {
                        rows: p.rows,
                        columns: p.columns,
                        tag: p.tag,
                        rows_affected: p.affected,
                    }),
                    None => Err(Error::protocol("a pipelined statement got no result")),
                }
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
}
