//! The connection handle and its queries.

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_io::AsyncWrite;
use postgres_protocol::message::frontend;

use crate::trace;
use aiopg_core::protocol::{self, TransactionStatus};
use aiopg_core::row::{Column, Row};
use aiopg_core::types::ToSql;
use aiopg_core::{Config, Error, ErrorKind, Result, SqlState};
use aiopg_rt::Runtime;

use crate::collect::{Collector, Output};
use crate::driver::Driver;
use crate::notify::{Notices, Notifies};
use crate::state::State;
use crate::statement::Statement;
use crate::SimpleQueryMessage;

/// How long past its timeout a statement may take to be cancelled (the cancel request sent and
/// the server's confirmation read) before the connection is given up on.
pub const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// The request the innermost [`Connection::with_timeout`] running on this thread issued last:
/// the connection (its `Shared`'s address) and the request's id. While it drops its future,
/// also the request it watches (its last) and whether that drop took it back unsent.
#[derive(Clone, Copy)]
struct Scope {
    conn: usize,
    last: Option<u64>,
    watch: Option<u64>,
    taken_back: bool,
}

impl Scope {
    fn new(conn: usize) -> Scope {
        Scope {
            conn,
            last: None,
            watch: None,
            taken_back: false,
        }
    }
}

thread_local! {
    static SCOPE: std::cell::Cell<Option<Scope>> = const { std::cell::Cell::new(None) };
}

/// Whether an error means a cached statement no longer matches the server: its result type
/// changed under a schema change, or the server lost it (PgBouncer, `DISCARD ALL`).
pub(crate) fn is_stale_statement(e: &Error) -> bool {
    match e.as_db_error() {
        Some(db) if db.code() == &SqlState::FEATURE_NOT_SUPPORTED => db
            .message()
            .contains("cached plan must not change result type"),
        Some(db) => db.code() == &SqlState::INVALID_SQL_STATEMENT_NAME,
        None => false,
    }
}

/// A statement's complete answer.
#[derive(Debug)]
pub struct QueryResult {
    /// The rows returned (empty for statements that return none).
    pub rows: Vec<Row>,
    /// The result columns (empty for statements that return no rows).
    pub columns: Arc<[Column]>,
    /// The command tag (`SELECT 3`, `INSERT 0 1`, `CREATE TABLE`).
    pub tag: Option<String>,
    /// Rows affected or returned, for commands whose tag says.
    pub rows_affected: Option<u64>,
}

impl QueryResult {
    fn from_output(out: Output, stmt: &Statement) -> QueryResult {
        match out {
            Output::Rows {
                rows,
                affected,
                tag,
                columns,
            } => QueryResult {
                rows,
                columns: columns.unwrap_or_else(|| stmt.columns_arc().clone()),
                tag,
                rows_affected: affected,
            },
            _ => QueryResult {
                rows: Vec::new(),
                columns: stmt.columns_arc().clone(),
                tag: None,
                rows_affected: None,
            },
        }
    }
}

/// A query parameter: any value `postgres-types` can encode.
pub type Param<'a> = &'a (dyn ToSql + Sync);

/// What a connection knows about itself from start-up.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) backend_pid: i32,
    pub(crate) secret_key: i32,
    pub(crate) config: Config,
    /// The host and port this connection reached, for CancelRequest.
    pub(crate) host: aiopg_core::config::Host,
    pub(crate) addr: Option<std::net::SocketAddr>,
    pub(crate) port: u16,
    /// The TLS settings the connection used, so that its cancel requests use them too.
    pub(crate) tls: Option<crate::tls::TlsSetup>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// The current lease (see [`Connection::lease`]); handles of older leases are stale.
    lease: AtomicU64,
    pub(crate) timeout: Mutex<Option<Duration>>,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) identity: Identity,
    /// Behind a transaction pooler: statements that leave session state are refused.
    pub(crate) transaction_pooling: std::sync::atomic::AtomicBool,
    /// Statement logging and the open transaction's span (see `trace.rs`).
    pub(crate) trace: crate::trace::Settings,
    /// When the last request was queued (or the connection opened): see [`Usage`].
    last_usage: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // A parked driver task holds the connection weakly: wake it to see it is gone.
        self.state
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .release_driver();
    }
}

/// Times of use, kept as nanoseconds since a process-wide instant so that one atomic holds
/// them.
struct Usage;

impl Usage {
    fn base() -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    fn now() -> u64 {
        u64::try_from(Usage::base().elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn at(nanos: u64) -> Instant {
        Usage::base() + Duration::from_nanos(nanos)
    }
}

impl Shared {
    pub(crate) fn new(
        state: State,
        runtime: Arc<dyn Runtime>,
        identity: Identity,
        timeout: Option<Duration>,
    ) -> Shared {
        Shared {
            state: Mutex::new(state),
            lease: AtomicU64::new(0),
            timeout: Mutex::new(timeout),
            runtime,
            identity,
            transaction_pooling: std::sync::atomic::AtomicBool::new(false),
            trace: crate::trace::Settings::default(),
            last_usage: AtomicU64::new(Usage::now()),
        }
    }

    /// Refuses `sql` when the connection is behind a transaction pooler and `sql` would
    /// leave session state (see `pooling.rs`).
    #[inline]
    pub(crate) fn check_pooling(&self, sql: &str) -> Result<()> {
        if self
            .transaction_pooling
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            crate::pooling::check(sql)?;
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing the lock guards is left half-changed by a panic (encoding rolls back), so a
        // poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection to a PostgreSQL server.
///
/// Cheap to clone: clones share the one socket. Queries issued at the same time from several
/// clones or tasks are pipelined on it, in the order they were issued, each getting its own
/// answer.
///
/// # Cancel safety
///
/// Every future of a connection may be dropped at any point without desynchronising it: the
/// next request still gets its own answer. A request none of whose bytes were written is
/// taken back and never runs; one that was partly or wholly written runs to its end on the
/// server (a drop is not a cancel: see [`cancel`](Self::cancel) and
/// [`with_timeout`](Self::with_timeout)), and its answer is read and discarded. Each method
/// says what its own drop does; the [crate documentation](crate#cancel-safety) has the
/// summary.
///
/// Dropping the last handle (every clone, and every stream, transaction or detached
/// clean-up task holding one) closes the socket without a Terminate message;
/// [`close`](Self::close) ends the session in order.
#[derive(Clone)]
pub struct Connection {
    pub(crate) shared: Arc<Shared>,
    /// The lease this handle belongs to; 0 for the owner's handle, which never goes stale.
    lease: u64,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("backend_pid", &self.shared.identity.backend_pid)
            .field("dsn", &self.dsn())
            .field("runtime", &self.shared.runtime.name())
            .field("closed", &self.is_closed())
            .field("stale", &self.is_stale())
            .finish()
    }
}

/// A request on the wire: resolves to its answer. Dropping it abandons the answer.
pub(crate) struct Request<'a> {
    shared: &'a Shared,
    id: u64,
    finished: bool,
}

impl Future for Request<'_> {
    type Output = Result<Output>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Output>> {
        let res = self.shared.lock().poll_request(self.id, cx);
        if res.is_ready() {
            self.finished = true;
        }
        res
    }
}

impl Request<'_> {
    /// Gives the request up, as dropping it does, and says whether it was taken back: `true`
    /// when none of its bytes had been written, so that the server never sees it; `false` when
    /// it was written (wholly or in part) or answered: it runs, or ran, its answer discarded.
    pub(crate) fn withdraw(&mut self) -> bool {
        if self.finished {
            return false;
        }
        self.finished = true;
        let taken_back = self.shared.lock().abandon(self.id);
        if taken_back {
            // A `with_timeout` dropping its future learns that its request never ran. (Not
            // `with`: a drop may come as the thread ends.)
            let key = self.shared as *const Shared as usize;
            let _ = SCOPE.try_with(|s| {
                if let Some(mut scope) = s.get() {
                    if scope.conn == key && scope.watch == Some(self.id) {
                        scope.taken_back = true;
                        s.set(Some(scope));
                    }
                }
            });
        }
        taken_back
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// Polls `fut` (still there: see [`drop_scoped`]) with a [`Connection::with_timeout`] scope
/// for connection `key` installed, so that the requests it issues are known to be its own;
/// the last one's id goes to `last`.
fn poll_scoped<F: Future>(
    key: usize,
    fut: Pin<&mut Option<F>>,
    last: &AtomicU64,
    cx: &mut Context<'_>,
) -> Poll<F::Output> {
    let fut = fut
        .as_pin_mut()
        .expect("with_timeout polls its future only before dropping it");
    let outer = SCOPE.replace(Some(Scope::new(key)));
    let res = fut.poll(cx);
    let mine = SCOPE.replace(outer).and_then(|s| s.last);
    if let Some(id) = mine {
        last.store(id, Ordering::Relaxed);
        // An enclosing `with_timeout` on the same connection owns these too.
        SCOPE.with(|s| {
            if let Some(mut outer) = s.get() {
                if outer.conn == key {
                    outer.last = mine;
                    s.set(Some(outer));
                }
            }
        });
    }
    res
}

/// Drops `fut` with a scope installed (as [`poll_scoped`]) and says whether that drop took
/// request `watch` back unsent.
fn drop_scoped<F>(key: usize, mut fut: Pin<&mut Option<F>>, watch: u64) -> bool {
    let outer = SCOPE.replace(Some(Scope {
        watch: Some(watch),
        ..Scope::new(key)
    }));
    fut.set(None);
    SCOPE.replace(outer).is_some_and(|s| s.taken_back)
}

impl Connection {
    /// Queues a request: `encode` appends its messages to the write buffer and returns what
    /// collects the answer. Either all of its messages are queued or, on error, none.
    pub(crate) fn start(
        &self,
        encode: impl FnOnce(&mut State) -> Result<Collector>,
    ) -> Result<Request<'_>> {
        let id = self.issue(encode)?;
        Ok(Request {
            shared: &self.shared,
            id,
            finished: false,
        })
    }

    /// Queues a request (see [`start`](Self::start)) and returns its id.
    pub(crate) fn issue(
        &self,
        encode: impl FnOnce(&mut State) -> Result<Collector>,
    ) -> Result<u64> {
        self.issue_with(|st, encode| st.issue(encode), encode)
    }

    /// Queues a request through `queue` (`State::issue` or one of its variants).
    pub(crate) fn issue_with<E>(
        &self,
        queue: impl FnOnce(&mut State, E) -> Result<u64>,
        encode: E,
    ) -> Result<u64> {
        self.check_lease()?;
        let (id, auto_driver) = {
            let mut st = self.shared.lock();
            let id = queue(&mut st, encode)?;
            (id, st.wants_auto_driver(crate::driver::next_id))
        };
        if let Some(driver) = auto_driver {
            // Several callers' requests wait at once on a runtime where reading for them
            // from their own task costs a wake-up per read: a driver task reads until they
            // are all answered (see `State::wants_auto_driver`). Spawned outside the lock.
            self.shared
                .runtime
                .spawn(Box::pin(Driver::with_id(self, driver)));
        }
        self.shared
            .last_usage
            .store(Usage::now(), Ordering::Relaxed);
        // A `with_timeout` around this call needs to know which request is its own.
        SCOPE.with(|s| {
            if let Some(mut scope) = s.get() {
                if scope.conn == Arc::as_ptr(&self.shared) as usize {
                    scope.last = Some(id);
                    s.set(Some(scope));
                }
            }
        });
        Ok(id)
    }

    /// Runs a statement with parameters bound in binary and returns its rows.
    ///
    /// Parameters are `$1`, `$2`, ... in the SQL. The statement is prepared once per
    /// connection and cached, so repeated queries take one round trip.
    ///
    /// ```no_run
    /// # async fn f(conn: &aiopg_conn::Connection) -> aiopg_core::Result<()> {
    /// let rows = conn.query("SELECT $1::text || '!'", &[&"hi"]).await?;
    /// assert_eq!(rows[0].get::<&str>(0), "hi!");
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step (see the
    /// [crate-level rules](crate#cancel-safety)). Dropped while the statement is being prepared,
    /// nothing runs: a statement the server prepared for nobody is closed with a later request.
    /// Dropped while the execution waits to be written, it is taken back and never runs. Dropped
    /// after it was written, the statement runs to its end and its rows are read and discarded.
    pub async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        Ok(self.query_result(sql, params).await?.rows)
    }

    /// Runs a statement and returns its rows, columns and command tag.
    ///
    /// A cached statement whose plan went stale (a schema change: SQLSTATE 0A000 "cached plan
    /// must not change result type", or a statement the server no longer has) is prepared
    /// again and run once more, transparently, when the connection is not inside a
    /// transaction block. Inside one, the server has already aborted the transaction, so the
    /// error is returned as it is.
    ///
    /// # Cancel safety
    ///
    /// As [`query`](Self::query): dropped before the execution is written, nothing runs; after,
    /// the statement runs to its end and its answer is discarded. A drop during the transparent
    /// second attempt behaves the same way.
    pub async fn query_result(&self, sql: &str, params: &[Param<'_>]) -> Result<QueryResult> {
        trace::statement(&self.shared, sql, self.query_result_inner(sql, params)).await
    }

    async fn query_result_inner(&self, sql: &str, params: &[Param<'_>]) -> Result<QueryResult> {
        let stmt = self.prepare_cached(sql).await?;
        match self.execute_inner(&stmt, params).await {
            Err(e) if is_stale_statement(&e) => {
                self.shared.lock().statements.remove(sql);
                drop(stmt);
                if self.transaction_status() != TransactionStatus::Idle {
                    return Err(e);
                }
                tracing::debug!("statement went stale after a schema change; preparing it again");
                let stmt = self.prepare_cached(sql).await?;
                let out = self.execute_inner(&stmt, params).await?;
                Ok(QueryResult::from_output(out, &stmt))
            }
            Err(e) => Err(e),
            Ok(out) => Ok(QueryResult::from_output(out, &stmt)),
        }
    }

    /// Runs a prepared statement and returns its rows.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step: taken back if none of its request was
    /// written (the statement does not run), otherwise run to its end with its rows discarded.
    pub async fn query_prepared(&self, stmt: &Statement, params: &[Param<'_>]) -> Result<Vec<Row>> {
        trace::statement(&self.shared, stmt.sql(), async {
            match self.execute_inner(stmt, params).await? {
                Output::Rows { rows, .. } => Ok(rows),
                _ => Err(Error::protocol("unexpected answer to Execute")),
            }
        })
        .await
    }

    /// Runs a statement and returns the number of rows it affected (0 for commands without a
    /// count).
    ///
    /// # Cancel safety
    ///
    /// As [`query`](Self::query). A dropped statement that was already written still runs, and
    /// outside a transaction block it commits on its own: the caller does not learn whether it
    /// ran, nor its row count.
    pub async fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        Ok(self
            .query_result(sql, params)
            .await?
            .rows_affected
            .unwrap_or(0))
    }

    /// Runs a prepared statement and returns the number of rows it affected.
    ///
    /// # Cancel safety
    ///
    /// As [`query_prepared`](Self::query_prepared): taken back if unsent; otherwise it runs (and,
    /// outside a transaction block, commits) with its row count discarded.
    pub async fn execute_prepared(&self, stmt: &Statement, params: &[Param<'_>]) -> Result<u64> {
        trace::statement(&self.shared, stmt.sql(), async {
            match self.execute_inner(stmt, params).await? {
                Output::Rows { affected, .. } => Ok(affected.unwrap_or(0)),
                _ => Err(Error::protocol("unexpected answer to Execute")),
            }
        })
        .await
    }

    /// Runs a prepared statement once per parameter set, all in one round trip: the
    /// Bind/Execute pairs go out together, followed by one Sync. The batch is one implicit
    /// transaction (outside a transaction block): if any execution fails, none of them
    /// takes effect. Returns the rows affected, summed.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step. A batch none of whose bytes were written
    /// is taken back: none of it runs. Otherwise the whole batch runs as sent and its answer is
    /// discarded; outside a transaction block it is one implicit transaction, so all of it or none
    /// of it takes effect, and the caller does not learn which.
    pub async fn execute_many<'p, I>(&self, stmt: &Statement, param_sets: I) -> Result<u64>
    where
        I: IntoIterator<Item = &'p [Param<'p>]>,
    {
        trace::statement(
            &self.shared,
            stmt.sql(),
            self.execute_many_inner(stmt, param_sets),
        )
        .await
    }

    async fn execute_many_inner<'p, I>(&self, stmt: &Statement, param_sets: I) -> Result<u64>
    where
        I: IntoIterator<Item = &'p [Param<'p>]>,
    {
        // Outside a transaction block the batch is one implicit transaction, which commits.
        let implicit = self.transaction_status() == TransactionStatus::Idle;
        let req = self.start(|st| {
            stmt.check_owner(&st.statements)?;
            if implicit || stmt.commits() {
                st.commits();
            }
            let w = &mut st.write;
            for params in param_sets {
                if stmt.name().is_empty() {
                    protocol::encode_or_rollback(w, |w| {
                        frontend::parse("", stmt.sql(), std::iter::empty(), w)
                    })?;
                }
                protocol::bind(w, stmt.name(), stmt.params(), params)?;
                protocol::encode_or_rollback(w, |w| frontend::execute("", 0, w))?;
            }
            frontend::sync(w);
            Ok(Collector::rows(stmt.columns_arc().clone()))
        })?;
        match req.await? {
            Output::Rows { affected, .. } => Ok(affected.unwrap_or(0)),
            _ => Err(Error::protocol("unexpected answer to Execute")),
        }
    }

    async fn execute_inner(&self, stmt: &Statement, params: &[Param<'_>]) -> Result<Output> {
        self.start(|st| {
            encode_execute(st, stmt, params)?;
            if stmt.commits() {
                st.commits();
            }
            Ok(Collector::rows(stmt.columns_arc().clone()))
        })?
        .await
    }

    /// Runs a statement without preparing a named statement: for one-off statements whose
    /// plan is not worth a place in the statement cache (cursor control such as `FETCH 50
    /// FROM c`, where every count would otherwise become a statement of its own). Without
    /// parameters it takes one round trip (Parse, Bind, Describe and Execute of the unnamed
    /// statement under one Sync); with parameters two (the unnamed statement is described
    /// first, for their types). Values come back in binary, as from [`query`](Self::query).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step: taken back if unsent, otherwise run to its
    /// end with its answer discarded. It leaves no prepared statement behind either way (the
    /// unnamed statement is replaced by the next one).
    pub async fn query_unprepared(&self, sql: &str, params: &[Param<'_>]) -> Result<QueryResult> {
        trace::statement(&self.shared, sql, self.query_unprepared_inner(sql, params)).await
    }

    async fn query_unprepared_inner(&self, sql: &str, params: &[Param<'_>]) -> Result<QueryResult> {
        self.shared.check_pooling(sql)?;
        if !params.is_empty() {
            let stmt = self.prepare_unnamed(sql).await?;
            let out = self.execute_inner(&stmt, params).await?;
            return Ok(QueryResult::from_output(out, &stmt));
        }
        let req = self.start(|st| {
            protocol::encode_or_rollback(&mut st.write, |w| {
                frontend::parse("", sql, std::iter::empty(), w)
            })?;
            protocol::bind(&mut st.write, "", &[], &[])?;
            protocol::encode_or_rollback(&mut st.write, |w| {
                frontend::describe(b'P', "", w)?;
                frontend::execute("", 0, w)?;
                frontend::sync(w);
                Ok(())
            })?;
            if protocol::may_commit(sql) {
                st.commits();
            }
            Ok(Collector::described_rows())
        })?;
        let Output::Rows {
            mut rows,
            affected,
            tag,
            columns,
        } = req.await?
        else {
            return Err(Error::protocol("unexpected answer to Execute"));
        };
        let mut columns = columns.unwrap_or_else(|| Arc::from(Vec::new()));
        if columns
            .iter()
            .any(|c| aiopg_core::types::Type::from_oid(c.type_().oid()).is_none())
        {
            // Types the client does not know (enums, composites, ...) are looked up now, and
            // the rows re-described with them.
            let mut resolved = Vec::with_capacity(columns.len());
            for c in columns.iter() {
                let t = self.resolve_type(c.type_().clone()).await?;
                resolved.push(c.clone().with_type(t));
            }
            columns = resolved.into();
            rows = rows
                .into_iter()
                .map(|r| r.with_columns(columns.clone()))
                .collect::<Result<_>>()?;
        }
        Ok(QueryResult {
            rows,
            columns,
            tag,
            rows_affected: affected,
        })
    }

    /// Runs one or more SQL statements, separated by semicolons, through the simple query
    /// protocol (no parameters; values come back as text).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the connection in step. A Query message none of whose bytes were
    /// written is taken back; once written, every statement in it runs (outside a transaction
    /// block, as one implicit transaction unless the text itself holds `BEGIN`/`COMMIT`) and the
    /// answer is discarded.
    pub async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>> {
        trace::statement(&self.shared, sql, self.simple_query_inner(sql)).await
    }

    async fn simple_query_inner(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>> {
        self.shared.check_pooling(sql)?;
        let req = self.start(|st| {
            protocol::encode_or_rollback(&mut st.write, |w| frontend::query(sql, w))?;
            if protocol::may_commit(sql) {
                st.commits();
            }
            Ok(Collector::simple())
        })?;
        match req.await? {
            Output::Simple(v) => Ok(v),
            _ => Err(Error::protocol("unexpected answer to Query")),
        }
    }

    /// Runs one or more SQL statements, separated by semicolons, ignoring any rows.
    ///
    /// # Cancel safety
    ///
    /// As [`simple_query`](Self::simple_query): taken back if unsent, otherwise every statement
    /// runs and the answer is discarded.
    pub async fn batch_execute(&self, sql: &str) -> Result<()> {
        self.simple_query(sql).await.map(drop)
    }

    /// Sends `sql` (simple protocol) without waiting for it: its answer is read and discarded.
    /// The statement goes out before anything issued later on this connection, and a
    /// background task on the connection's runtime drives it, so it runs even if the
    /// connection then sits idle. Used for clean-up on drop (ROLLBACK, CLOSE cursor).
    ///
    /// Where the runtime cannot spawn the task (tokio's adapter called outside a tokio
    /// runtime drops it), the statement still goes out first, with the connection's next
    /// request. On a closed connection, or a handle whose lease ended, it does nothing.
    pub fn detach(&self, sql: &str) {
        if self.is_stale() {
            // The lease ended: the connection is someone else's now, and whoever ended the
            // lease (a pool's release) did the clean-up.
            return;
        }
        let Ok(id) = self.shared.lock().issue_detached(sql) else {
            // Closed: there is nothing left to clean up.
            return;
        };
        let conn = self.clone();
        self.shared.runtime.spawn(Box::pin(async move {
            poll_fn(|cx| conn.shared.lock().poll_detached(id, cx)).await;
        }));
    }

    /// Runs `fut` (a statement on this connection) with a timeout.
    ///
    /// When the timeout passes and `fut`'s statement is the one the server is running, a
    /// CancelRequest stops it and the call returns a `Timeout` error once the server has
    /// confirmed, so the connection is usable for the next statement (Python aiopg closes it
    /// instead). A statement that finished before the cancel landed returns its result. When
    /// the statement is still queued behind other callers' requests, nothing is cancelled, so
    /// that a timeout never stops a neighbour's statement: `fut` is dropped and the call returns
    /// at once. A request not yet written is taken back and never runs: `Timeout` (a `COMMIT`
    /// taken back ended nothing: its [`Transaction`](crate::Transaction) is still active, and
    /// rolls back when dropped). One already written runs and its answer is discarded:
    /// `Timeout`, except for a request that may commit (a `COMMIT`, an implicit transaction),
    /// whose outcome is then unknown: the connection is closed and the call returns
    /// [`CommitUnknown`](ErrorKind::CommitUnknown) (or, if only part of it had been written,
    /// `Timeout`: the close keeps the rest from ever going out, so it never runs).
    ///
    /// The call returns within `timeout` plus [`CANCEL_GRACE`]: if the cancel cannot be sent
    /// and confirmed in that time, the connection is closed and the error says so. A cancel
    /// that reaches the server just after the statement finished can stop the statement
    /// pipelined right behind it: PostgreSQL's cancel names a session, not a statement.
    /// `None` waits forever.
    ///
    /// # Cancel safety
    ///
    /// Dropping this future drops `fut` with it, so a drop has `fut`'s own cancel safety (for a
    /// statement: taken back if unsent, otherwise run with its answer discarded). Dropped after the
    /// timeout, while it is cancelling, the CancelRequest may already have reached the server:
    /// it still stops the statement if that is running when it lands, or the one pipelined right
    /// behind it if that has started. A COPY being aborted stays aborted (its CopyFail is queued
    /// before the wait).
    pub async fn with_timeout<T, F>(&self, timeout: Option<Duration>, fut: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let Some(limit) = timeout else {
            return fut.await;
        };
        let key = Arc::as_ptr(&self.shared) as usize;
        // The id of the last request `fut` issued (`u64::MAX`: none yet); atomic only to keep
        // this future `Send`.
        let issued = AtomicU64::new(u64::MAX);
        // In an `Option`, so that it can be dropped here, under this call's scope, to learn
        // whether its request was taken back.
        let mut fut = std::pin::pin!(Some(fut));
        let scoped = poll_fn(|cx| poll_scoped(key, fut.as_mut(), &issued, cx));
        if let Ok(r) = aiopg_rt::timeout(&*self.shared.runtime, limit, scoped).await {
            return r;
        }
        let timed_out = |what: &str| {
            Error::new(
                ErrorKind::Timeout,
                format!(
                    "the statement outlived its timeout ({} s); {what}",
                    limit.as_secs_f64()
                ),
                None,
            )
        };
        let last = issued.load(Ordering::Relaxed);
        if last != u64::MAX && self.shared.lock().awaits_copy_data(last) {
            // A COPY FROM STDIN still taking data: the server waits for the client, which a
            // cancel does not interrupt. CopyFail ends it (nothing is copied); the server's
            // answer to that must come within the grace, or the link is dead.
            self.shared.lock().abandon(last);
            let rt = &*self.shared.runtime;
            return match aiopg_rt::timeout(rt, CANCEL_GRACE, self.settle()).await {
                Ok(Ok(())) => Err(timed_out(
                    "the COPY was still taking data and was aborted (CopyFail: nothing was \
                     copied); the connection is still usable",
                )),
                Ok(Err(e)) => Err(e.context(format!(
                    "the COPY outlived its timeout ({} s) and was being aborted",
                    limit.as_secs_f64()
                ))),
                Err(_) => {
                    self.shared.lock().close_stuck();
                    Err(timed_out(
                        "the COPY was aborted (CopyFail: nothing was copied) but the server \
                         did not answer in time; the connection was closed",
                    ))
                }
            };
        }
        // One more poll: an answer another caller read just as the time ran out is not lost.
        let again = poll_fn(|cx| Poll::Ready(poll_scoped(key, fut.as_mut(), &issued, cx))).await;
        if let Poll::Ready(r) = again {
            return r;
        }
        // That poll may have issued another request.
        let last = issued.load(Ordering::Relaxed);
        let (executing, in_doubt) = if last == u64::MAX {
            (false, false)
        } else {
            let st = self.shared.lock();
            (st.is_executing(last), st.commit_in_doubt(last))
        };
        if !executing {
            // Queued behind other callers (or between requests): leave the neighbours alone,
            // and drop `fut`, which takes its request back if none of it was written.
            let commits = last != u64::MAX && self.shared.lock().may_commit(last);
            let taken_back = last != u64::MAX && drop_scoped(key, fut.as_mut(), last);
            if last == u64::MAX {
                return Err(timed_out(
                    "it was still waiting behind other requests on this connection and was \
                     withdrawn (if it had been sent, it still runs and its answer is discarded); \
                     the connection is still usable",
                ));
            }
            if taken_back {
                return Err(timed_out(
                    "it was still waiting behind other requests on this connection and was \
                     withdrawn unsent: it never runs; the connection is still usable",
                ));
            }
            if !commits {
                return Err(timed_out(
                    "it was waiting behind other requests on this connection, already sent: it \
                     still runs, and its answer is discarded; the connection is still usable",
                ));
            }
            // A COMMIT (or an implicit transaction) that was sent runs unseen: its outcome is
            // unknown, and `CommitUnknown` means the connection is closed (nobody may go on
            // as if the outcome were known). If only part of it was written, the close keeps
            // the rest from going out: it never runs.
            let whole = {
                let mut st = self.shared.lock();
                let whole = st.written_whole(last);
                st.close_commit_timed_out();
                whole
            };
            return Err(if whole {
                Error::commit_unknown(
                    format!(
                        "the statement outlived its timeout ({} s) while it waited, sent, behind \
                         other requests; the connection was closed",
                        limit.as_secs_f64()
                    ),
                    None,
                )
            } else {
                timed_out(
                    "it was waiting behind other requests, only partly sent; the connection was \
                     closed, so it never runs (nothing was committed)",
                )
            });
        }
        tracing::debug!(?limit, "statement timed out; cancelling it on the server");
        let rt = &*self.shared.runtime;
        let cancelled = aiopg_rt::timeout(rt, CANCEL_GRACE, self.cancel()).await;
        let scoped = poll_fn(|cx| poll_scoped(key, fut.as_mut(), &issued, cx));
        let confirm = aiopg_rt::timeout(rt, CANCEL_GRACE, scoped);
        let cancel_error = match cancelled {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("the cancel request could not be sent in time".to_owned()),
        };
        // The grace period is shared: sending the cancel and the server's confirmation
        // together take at most CANCEL_GRACE.
        let res = if cancel_error.is_some() {
            Err(())
        } else {
            confirm.await.map_err(drop)
        };
        match res {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.code() == Some(&SqlState::QUERY_CANCELED) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the statement outlived its timeout ({} s) and was cancelled on the server; \
                     the connection is still usable",
                    limit.as_secs_f64()
                ),
                Some(Box::new(e)),
            )),
            Ok(Err(e)) if e.kind() == ErrorKind::Closed => Err(e.context(format!(
                "the statement outlived its timeout ({} s) and was being cancelled",
                limit.as_secs_f64()
            ))),
            Ok(Err(e)) => Err(e),
            Err(()) if in_doubt => {
                self.shared.lock().close_stuck();
                Err(Error::commit_unknown(
                    format!(
                        "the statement outlived its timeout ({} s), the server did not confirm \
                         its cancellation{} and the connection was closed",
                        limit.as_secs_f64(),
                        cancel_error.map(|e| format!(" ({e})")).unwrap_or_default()
                    ),
                    None,
                ))
            }
            Err(()) => {
                self.shared.lock().close_stuck();
                Err(timed_out(&format!(
                    "the server did not confirm its cancellation{}; the connection was closed",
                    cancel_error.map(|e| format!(" ({e})")).unwrap_or_default()
                )))
            }
        }
    }

    /// The default statement timeout for cursors on this connection ([`DEFAULT_TIMEOUT`]
    /// unless set; `None` disables it).
    ///
    /// [`DEFAULT_TIMEOUT`]: crate::DEFAULT_TIMEOUT
    pub fn timeout(&self) -> Option<Duration> {
        *self
            .shared
            .timeout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the default statement timeout for cursors on this connection.
    pub fn set_timeout(&self, timeout: Option<Duration>) {
        *self
            .shared
            .timeout
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = timeout;
    }

    /// Closes the connection: tells the server (Terminate) and shuts the socket. Queries still
    /// in flight fail with a closed error. Closing twice is harmless.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. On its first poll, before any wait, the connection is marked
    /// closed and its socket is taken out: from then on every call fails with `Closed` whether or
    /// not the future completes. Dropping it afterwards only skips the Terminate message; the
    /// socket is closed, and the server ends the session as for a client that went away.
    pub async fn close(&self) {
        if self.is_stale() {
            tracing::debug!("close() on a handle whose lease ended: the connection is not closed");
            return;
        }
        let stream = {
            let mut st = self.shared.lock();
            if st.is_closed() {
                return;
            }
            let stream = st.take_stream();
            st.close_by_client();
            stream
        };
        if let Some(mut s) = stream {
            // Best effort: the server also cleans up when the socket just closes.
            let mut buf = bytes::BytesMut::new();
            frontend::terminate(&mut buf);
            let _ = crate::io::write_all(&mut s, &mut buf).await;
            let _ = poll_fn(|cx| Pin::new(&mut s).poll_close(cx)).await;
        }
    }

    /// True once the connection is closed, by [`close`](Self::close), the server or a broken
    /// link. A closed connection stays closed.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().is_closed()
    }

    /// The server process serving this connection (`pg_backend_pid()`).
    pub fn backend_pid(&self) -> i32 {
        self.shared.identity.backend_pid
    }

    /// The server version in libpq's integer form (`150018` for 15.18), as aiopg's
    /// `server_version`.
    pub fn server_version(&self) -> u32 {
        self.parameter_status("server_version")
            .and_then(|v| protocol::server_version_number(&v))
            .unwrap_or(0)
    }

    /// A run-time parameter the server reports (`server_version`, `TimeZone`,
    /// `standard_conforming_strings`, `application_name`, ...), kept up to date as it changes.
    pub fn parameter_status(&self, name: &str) -> Option<String> {
        self.shared.lock().params.get(name).cloned()
    }

    /// True while requests on this connection still wait for their answers (including ones
    /// whose callers gave up). Until they are answered, [`transaction_status`] may not reflect
    /// them yet: a `BEGIN` in flight has not opened its transaction as far as the client knows.
    ///
    /// [`transaction_status`]: Self::transaction_status
    pub fn has_requests_in_flight(&self) -> bool {
        self.shared.lock().has_unanswered()
    }

    /// The transaction state as of the server's last answer.
    pub fn transaction_status(&self) -> TransactionStatus {
        self.shared.lock().tx_status
    }

    /// A stream of the `LISTEN` notifications this connection receives, as Python aiopg's
    /// `conn.notifies`: it reads the socket itself whenever no query does, so notifications
    /// arrive on an idle connection. Every open stream sees every notification; the buffer
    /// is bounded and a consumer that falls behind is told how many it missed (see
    /// [`Notifies`]). Run `LISTEN` with [`batch_execute`](Self::batch_execute) (channel
    /// names are identifiers: quote them), or use a [`Listener`](crate::Listener), which
    /// also survives reconnects.
    ///
    /// ```no_run
    /// # async fn f(conn: aiopg_conn::Connection) -> aiopg_core::Result<()> {
    /// use futures_util::StreamExt;
    /// let mut notifies = conn.notifies();
    /// conn.batch_execute(r#"LISTEN "jobs""#).await?;
    /// while let Some(n) = notifies.next().await {
    ///     match n {
    ///         Ok(n) => println!("{}: {}", n.channel, n.payload),
    ///         Err(e) if e.kind() == aiopg_core::ErrorKind::Lagged => {
    ///             println!("missed {} notifications: resynchronise", e.missed().unwrap_or(0))
    ///         }
    ///         Err(e) => return Err(e),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn notifies(&self) -> Notifies {
        Notifies::new(self)
    }

    /// A future that reads this connection's socket for all its callers, to run as a task of
    /// its own (or use [`spawn_driver`](Self::spawn_driver)).
    ///
    /// Without one (the default), whoever polls reads: a query's future reads its own answer
    /// and hands its neighbours theirs, with no hop between tasks, which is the fastest way
    /// for one caller or for callers on separate tasks. While a driver runs, callers only
    /// encode their requests and wake it: the driver writes them (all those encoded meanwhile
    /// in one write, held back while an answer is due, as callers do) and reads, and every
    /// answer reaches its owner through a wake-up from the driver's task. That is faster when many futures of **one**
    /// task (a `join_all` of 64 queries) share the connection on a work-stealing runtime
    /// (tokio's multi-threaded one): a future that reads its neighbours' answers wakes its
    /// own task while it runs, which such a scheduler answers by waking another worker, one
    /// extra thread wake-up per read. It costs a hop to the driver's task and back per
    /// answer otherwise, so measure before using it (see `docs/round-trips.md`). On such a
    /// runtime a connection starts one by itself while several callers' requests are in
    /// flight, and ends it once every answer is in (see
    /// [`ConnectOptions::auto_driver`](crate::ConnectOptions::auto_driver)); one made here
    /// replaces that one and runs throughout.
    ///
    /// The driver holds the connection weakly: it completes once the connection is closed,
    /// its last handle is dropped, or another driver of this connection is already running
    /// (one at a time). Once polled, it must go on being polled (as a spawned task is) until
    /// it completes or is dropped: the connection's callers wait for it to read their
    /// answers. Dropping it mid-way is safe: callers drive for themselves again.
    /// Notifications and notices are read by the driver too, so they arrive on an idle
    /// connection without anyone polling [`notifies`](Self::notifies).
    ///
    /// ```no_run
    /// # async fn f() -> aiopg_core::Result<()> {
    /// let conn = aiopg_conn::connect("host=localhost dbname=app").await?;
    /// conn.spawn_driver(); // or spawn `conn.driver()` on an executor of your choice
    /// let conn = &conn;
    /// let answers = futures_util::future::try_join_all((0..64).map(|i: i32| async move {
    ///     conn.query_scalar::<i32>("SELECT $1::int4", &[&i]).await
    /// }))
    /// .await?;
    /// assert_eq!(answers, (0..64).collect::<Vec<_>>());
    /// # Ok(()) }
    /// ```
    pub fn driver(&self) -> Driver {
        Driver::new(self)
    }

    /// True while a driver task reads this connection's socket: one made by
    /// [`driver`](Self::driver), or the automatic one of
    /// [`ConnectOptions::auto_driver`](crate::ConnectOptions::auto_driver), which ends as soon
    /// as every answer is in.
    pub fn has_driver(&self) -> bool {
        self.shared.lock().has_driver()
    }

    /// Runs [`driver`](Self::driver) on the connection's runtime.
    pub fn spawn_driver(&self) {
        self.shared.runtime.spawn(Box::pin(self.driver()));
    }

    /// A stream of the notices and warnings the server sends (`RAISE NOTICE`, ...), bounded
    /// like [`notifies`](Self::notifies); [`Notices::next_buffered`] takes those already
    /// received without waiting. Every notice is also logged through `tracing` at `info`.
    pub fn notices(&self) -> Notices {
        Notices::new(self)
    }

    /// The connection string, with the password redacted.
    pub fn dsn(&self) -> String {
        self.shared.identity.config.redacted_dsn()
    }

    /// When the connection was last given work: the moment its latest request (a statement,
    /// a pipeline, a COPY, a transaction's `BEGIN` or `COMMIT`, ...) was queued, whatever its
    /// outcome; the moment it was opened if it has had none. Python aiopg's
    /// `conn.last_usage`, as a monotonic [`Instant`] (aiopg's is the event loop's clock).
    /// A pool's reset and health checks are requests and count; the clean-up aiopg queues by
    /// itself behind a dropped future (a `ROLLBACK` after a dropped transaction guard) does
    /// not.
    ///
    /// ```no_run
    /// # async fn f(conn: &aiopg_conn::Connection) -> aiopg_core::Result<()> {
    /// let idle = conn.last_usage().elapsed();
    /// if idle > std::time::Duration::from_secs(300) {
    ///     conn.simple_query("SELECT 1").await?; // keep an idle link warm
    /// }
    /// # Ok(()) }
    /// ```
    pub fn last_usage(&self) -> Instant {
        Usage::at(self.shared.last_usage.load(Ordering::Relaxed))
    }

    /// The runtime this connection uses for timers, clean-up and cancel requests.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.shared.runtime
    }

    /// How many statements the cache holds now.
    pub fn cached_statements(&self) -> usize {
        self.shared.lock().statements.len()
    }

    /// Asks the server to cancel whatever this connection is running, over a new socket
    /// (a CancelRequest, over TLS when the connection uses it). The running statement then
    /// fails with SQLSTATE 57014 (`query_canceled`), and the connection stays usable; with
    /// nothing running, the server ignores it.
    ///
    /// Returns once the server has closed the cancel socket, which it does after signalling
    /// its backend, so that the cancel does not race ahead of the next statement. Bounded by
    /// the connection's `connect_timeout` (10 s when unset): past it, a `Timeout` error.
    ///
    /// # Cancel safety
    ///
    /// This method is not cancel safe. Dropped before the CancelRequest was written, nothing is
    /// sent (the new socket is closed). Dropped after, the server may still act on it: it stops
    /// whatever the session runs when the signal arrives, possibly a statement issued later. The
    /// connection itself is not touched by the drop.
    pub async fn cancel(&self) -> Result<()> {
        self.check_lease()?;
        crate::connect::cancel(&self.shared).await
    }

    /// Wraps a freshly opened connection's shared state in its owner's handle.
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Connection {
        Connection { shared, lease: 0 }
    }

    /// A handle for lending this connection out, as a pool does: it works until the next
    /// call to `lease` or [`end_lease`](Self::end_lease), after which it and every clone of it
    /// (and every cursor or transaction opened through it) fail with an
    /// [`ErrorKind::Usage`] error instead of sharing the socket with whoever borrowed the
    /// connection next. The handle `lease` is called on keeps working.
    ///
    /// Notifications and notices received before the lease are not the borrower's: they are
    /// dropped.
    pub fn lease(&self) -> Connection {
        let lease = self.shared.lease.fetch_add(1, Ordering::AcqRel) + 1;
        {
            let mut st = self.shared.lock();
            st.notifications.clear();
            st.notices.clear();
        }
        Connection {
            shared: self.shared.clone(),
            lease,
        }
    }

    /// Ends the current lease: handles from [`lease`](Self::lease) go stale.
    pub fn end_lease(&self) {
        self.shared.lease.fetch_add(1, Ordering::AcqRel);
    }

    /// True when this handle came from a [`lease`](Self::lease) that has ended.
    pub fn is_stale(&self) -> bool {
        self.lease != 0 && self.lease != self.shared.lease.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn check_lease(&self) -> Result<()> {
        if self.is_stale() {
            return Err(Error::usage(
                "this connection handle outlived its lease: the connection was given back \
                 (its pool guard was released or dropped) and may now serve someone else; \
                 acquire a connection again instead of keeping clones, cursors or \
                 transactions past the guard",
            ));
        }
        Ok(())
    }

    /// Reads, without waiting, whatever the socket already holds while no request is in
    /// flight (an end of stream, a FATAL error from a terminated backend, notices), and
    /// returns whether the connection is still open. No round trip: a pool calls this before
    /// handing a connection out.
    pub fn check_idle(&self) -> bool {
        self.shared.lock().poll_idle()
    }

    /// Whether the server still is what the connection's `target_session_attrs` asked for,
    /// judged from what it reports (`in_hot_standby`, `default_transaction_read_only`, which
    /// change when a standby is promoted or a setting is changed): a pool retires a
    /// connection that no longer matches. Servers that report neither count as matching.
    pub fn matches_target_session_attrs(&self) -> bool {
        use aiopg_core::config::TargetSessionAttrs as T;
        let want = self.shared.identity.config.get_target_session_attrs();
        if matches!(want, T::Any | T::PreferStandby) {
            return true;
        }
        let st = self.shared.lock();
        let on = |name: &str| st.params.get(name).map(|v| v == "on");
        let standby = on("in_hot_standby");
        let read_only = match (standby, on("default_transaction_read_only")) {
            (Some(true), _) => Some(true),
            (s, r) => r.map(|r| r || s == Some(true)),
        };
        match want {
            T::ReadWrite => read_only != Some(true),
            T::ReadOnly => read_only != Some(false),
            T::Primary => standby != Some(true),
            T::Standby => standby != Some(false),
            _ => true,
        }
    }

    /// Waits until every request issued on this connection so far is answered (or the
    /// connection closes), so that [`transaction_status`](Self::transaction_status) reports
    /// what the next statement will see. Returns at once when nothing is in flight.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping it leaves the connection in step and hands the socket
    /// on to the next waiting caller. The empty query it queued stays and is answered in its turn,
    /// but until some caller (a query, a notification stream, another `settle`) drives the
    /// connection that answer is not read, and
    /// [`has_requests_in_flight`](Self::has_requests_in_flight) stays true.
    pub async fn settle(&self) -> Result<()> {
        self.check_lease()?;
        let id = {
            let mut st = self.shared.lock();
            if !st.has_unanswered() {
                return Ok(());
            }
            // An empty query is answered after everything queued before it.
            st.issue_detached("")?
        };
        // Dropped mid-wait, the guard hands driving on to the next waiting caller.
        struct Waiting<'a>(&'a Shared, u64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.lock().stop_waiting(self.1);
            }
        }
        let waiting = Waiting(&self.shared, id);
        poll_fn(|cx| self.shared.lock().poll_detached(id, cx)).await;
        drop(waiting);
        match self.shared.lock().closed_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Encodes Bind + Execute + Sync of `stmt` (Parse first, for the unnamed statement).
pub(crate) fn encode_execute(st: &mut State, stmt: &Statement, params: &[Param<'_>]) -> Result<()> {
    stmt.check_owner(&st.statements)?;
    let w = &mut st.write;
    if stmt.name().is_empty() {
        // The unnamed statement may have been replaced by another caller's since it was
        // described: parse it again in the same batch.
        protocol::encode_or_rollback(w, |w| {
            frontend::parse("", stmt.sql(), std::iter::empty(), w)
        })?;
    }
    protocol::bind(w, stmt.name(), stmt.params(), params)?;
    protocol::encode_or_rollback(w, |w| {
        frontend::execute("", 0, w)?;
        frontend::sync(w);
        Ok(())
    })
}
