//! Prepared statements and the per-connection statement cache.
//!
//! Preparing, caching and resolving a statement's types happen here, around the router: the
//! router only carries a Parse/Describe request and hands back what the server described.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use postgres_protocol::message::frontend;

use aiopg_core::row::Column;
use aiopg_core::types::Type;
use aiopg_core::{protocol, Error, Result};

use crate::collect::{Collector, Output};
use crate::Connection;

/// Statement names are unique in the process, and each cache (one per connection) has an id
/// its statements carry, so that a statement is never run on a connection that did not
/// prepare it.
static NEXT_NAME: AtomicU64 = AtomicU64::new(1);
static NEXT_CACHE: AtomicU64 = AtomicU64::new(1);

/// Names of server-side statements whose last handle was dropped, waiting to be closed with
/// the next request. Kept apart from the connection state so that dropping a statement never
/// needs the connection's lock.
#[derive(Debug, Default)]
pub(crate) struct CloseList {
    /// Set whenever `names` is not empty, so that the common case costs one load, not a lock.
    pending: AtomicBool,
    names: Mutex<Vec<String>>,
}

/// A prepared statement: its parameter types and result columns.
///
/// A statement belongs to the connection that prepared it: running it on another connection
/// (say, a pooled connection other than the one it was prepared on) fails with an
/// [`ErrorKind::Usage`](aiopg_core::ErrorKind::Usage) error rather than running whatever that
/// connection has under the same name. The server-side statement is closed once the last
/// handle is dropped and the statement has left the cache.
#[derive(Clone)]
pub struct Statement(Arc<Inner>);

struct Inner {
    /// The id of the connection (its statement cache) that prepared it.
    owner: u64,
    name: String,
    sql: Arc<str>,
    params: Vec<Type>,
    columns: Arc<[Column]>,
    /// The SQL ends a transaction with a commit ([`aiopg_core::protocol::may_commit`]).
    commits: bool,
    close_list: Weak<CloseList>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The unnamed statement is replaced by the next Parse and needs no Close.
        if self.name.is_empty() {
            return;
        }
        if let Some(list) = self.close_list.upgrade() {
            if let Ok(mut names) = list.names.lock() {
                names.push(std::mem::take(&mut self.name));
                list.pending.store(true, Ordering::Release);
            }
        }
    }
}

impl Statement {
    /// The statement's server-side name (empty for the unnamed statement).
    pub fn name(&self) -> &str {
        &self.0.name
    }
    /// The SQL text.
    pub fn sql(&self) -> &str {
        &self.0.sql
    }
    /// The parameter types the server inferred.
    pub fn params(&self) -> &[Type] {
        &self.0.params
    }
    /// The result columns (empty for statements that return no rows).
    pub fn columns(&self) -> &[Column] {
        &self.0.columns
    }
    pub(crate) fn columns_arc(&self) -> &Arc<[Column]> {
        &self.0.columns
    }
    /// The statement commits (`COMMIT`, `END`, `PREPARE TRANSACTION`): see
    /// [`State::commits`](crate::state::State::commits).
    pub(crate) fn commits(&self) -> bool {
        self.0.commits
    }

    /// Fails unless this statement was prepared on the connection owning `cache`.
    #[inline]
    pub(crate) fn check_owner(&self, cache: &StatementCache) -> Result<()> {
        if self.0.owner == cache.id {
            return Ok(());
        }
        Err(Error::usage(format!(
            "statement {:?} was prepared on another connection; prepare it on this one \
             (statements belong to the connection that prepared them)",
            self.0.name
        )))
    }
}

impl fmt::Debug for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Statement")
            .field("name", &self.0.name)
            .field("params", &self.0.params)
            .field("columns", &self.0.columns.len())
            .finish()
    }
}

/// A least-recently-used cache of prepared statements, keyed by SQL text.
pub(crate) struct StatementCache {
    id: u64,
    capacity: usize,
    map: HashMap<Arc<str>, (Statement, u64)>,
    tick: u64,
    close_list: Arc<CloseList>,
}

impl fmt::Debug for StatementCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatementCache")
            .field("capacity", &self.capacity)
            .field("len", &self.map.len())
            .finish()
    }
}

impl StatementCache {
    pub(crate) fn new(capacity: usize) -> StatementCache {
        StatementCache {
            id: NEXT_CACHE.fetch_add(1, Ordering::Relaxed),
            capacity,
            map: HashMap::new(),
            tick: 0,
            close_list: Arc::new(CloseList::default()),
        }
    }

    /// A fresh server-side name, or the unnamed statement when caching is off.
    pub(crate) fn next_name(&mut self) -> String {
        if self.capacity == 0 {
            return String::new();
        }
        format!("aiopg_s{}", NEXT_NAME.fetch_add(1, Ordering::Relaxed))
    }

    #[inline]
    pub(crate) fn get(&mut self, sql: &str) -> Option<Statement> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(sql).map(|(s, used)| {
            *used = tick;
            s.clone()
        })
    }

    pub(crate) fn make(
        &self,
        name: String,
        sql: Arc<str>,
        params: Vec<Type>,
        columns: Vec<Column>,
    ) -> Statement {
        Statement(Arc::new(Inner {
            owner: self.id,
            name,
            commits: aiopg_core::protocol::may_commit(&sql),
            sql,
            params,
            columns: columns.into(),
            close_list: Arc::downgrade(&self.close_list),
        }))
    }

    /// Caches `stmt`, evicting the least recently used statement when full. Evicted
    /// statements are closed on the server once no handle to them remains.
    pub(crate) fn insert(&mut self, stmt: Statement) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(stmt.sql()) {
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
            }
        }
        self.tick += 1;
        self.map.insert(stmt.0.sql.clone(), (stmt, self.tick));
    }

    /// Drops `sql`'s statement from the cache; the server-side statement is closed once no
    /// handle to it remains.
    pub(crate) fn remove(&mut self, sql: &str) {
        self.map.remove(sql);
    }

    /// Closes a server-side statement that never got a handle, with the next request.
    pub(crate) fn close_later(&self, name: String) {
        if name.is_empty() {
            return;
        }
        if let Ok(mut names) = self.close_list.names.lock() {
            names.push(name);
            self.close_list.pending.store(true, Ordering::Release);
        }
    }

    /// Takes the names of statements to close on the server.
    pub(crate) fn take_closes(&self) -> Vec<String> {
        if !self.close_list.pending.load(Ordering::Acquire) {
            return Vec::new();
        }
        match self.close_list.names.lock() {
            Ok(mut names) => {
                self.close_list.pending.store(false, Ordering::Release);
                std::mem::take(&mut *names)
            }
            Err(_) => Vec::new(),
        }
    }

    /// Gives back Closes taken with [`take_closes`](Self::take_closes) that never reached the
    /// server (their request was taken back or failed to encode).
    pub(crate) fn requeue_closes(&self, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        if let Ok(mut list) = self.close_list.names.lock() {
            list.extend(names);
            self.close_list.pending.store(true, Ordering::Release);
        }
    }

    /// The server-side names the cache holds and the ones waiting to be closed.
    #[cfg(test)]
    pub(crate) fn names(&self) -> (Vec<String>, Vec<String>) {
        let cached = self
            .map
            .values()
            .map(|(s, _)| s.name().to_owned())
            .collect();
        let closing = self.close_list.names.lock().unwrap().clone();
        (cached, closing)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

impl Connection {
    /// Prepares `sql` on the server, using the statement cache.
    ///
    /// ```no_run
    /// # async fn f(conn: &aiopg_conn::Connection) -> aiopg_core::Result<()> {
    /// let stmt = conn.prepare("SELECT $1::int4 + 1").await?;
    /// assert_eq!(stmt.params().len(), 1);
    /// let rows = conn.query_prepared(&stmt, &[&41i32]).await?;
    /// assert_eq!(rows[0].get::<i32>(0), 42);
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping the future leaves nothing behind. A Parse not yet
    /// sent is taken back; a statement the server prepared for nobody (the future was dropped
    /// while waiting for its answer, or while looking up its types) is closed with the next
    /// request. Nothing is cached until the future completes, so calling it again starts
    /// afresh.
    ///
    /// # Tracing
    ///
    /// A statement taken from the cache costs no round trip and gets no span. One the server
    /// prepares gets an `aiopg.statement` span of operation `PREPARE` (see
    /// [`ConnectOptions::trace_query_text`](crate::ConnectOptions::trace_query_text)), and
    /// is logged if slower than the slow-statement threshold; echo logs only what runs.
    pub async fn prepare(&self, sql: &str) -> Result<Statement> {
        self.shared.check_pooling(sql)?;
        if let Some(stmt) = self.shared.lock().statements.get(sql) {
            return Ok(stmt);
        }
        let trace = crate::trace::StatementTrace::prepare(&self.shared, sql);
        crate::trace::traced(trace, self.prepare_uncached(sql, true)).await
    }

    /// [`prepare`](Self::prepare) without a span of its own: for the statements `query` and
    /// its kin prepare, inside their own statement's span.
    pub(crate) async fn prepare_cached(&self, sql: &str) -> Result<Statement> {
        self.shared.check_pooling(sql)?;
        if let Some(stmt) = self.shared.lock().statements.get(sql) {
            return Ok(stmt);
        }
        self.prepare_uncached(sql, true).await
    }

    /// Describes `sql` as the unnamed statement: nothing is cached or left on the server.
    pub(crate) async fn prepare_unnamed(&self, sql: &str) -> Result<Statement> {
        self.prepare_uncached(sql, false).await
    }

    async fn prepare_uncached(&self, sql: &str, named: bool) -> Result<Statement> {
        let req = self.start(|st| {
            let name = if named {
                st.statements.next_name()
            } else {
                String::new()
            };
            protocol::encode_or_rollback(&mut st.write, |w| {
                frontend::parse(&name, sql, std::iter::empty(), w)?;
                frontend::describe(b'S', &name, w)?;
                frontend::sync(w);
                Ok(())
            })?;
            Ok(Collector::prepare(name, Arc::from(sql)))
        })?;
        let Output::Prepared {
            name,
            sql,
            cache,
            params,
            columns,
        } = req.await?
        else {
            return Err(Error::protocol("unexpected answer to Parse"));
        };
        // Keep the server-side statement closed if this future is dropped from here on.
        let guard = crate::typeinfo::CloseOnDrop::new(self, name);
        let mut resolved = Vec::with_capacity(params.len());
        for t in params {
            resolved.push(self.resolve_type(t).await?);
        }
        let mut cols = Vec::with_capacity(columns.len());
        for c in columns {
            let t = self.resolve_type(c.type_().clone()).await?;
            cols.push(c.with_type(t));
        }
        let name = guard.defuse();
        let mut st = self.shared.lock();
        let stmt = st.statements.make(name, sql, resolved, cols);
        if cache {
            st.statements.insert(stmt.clone());
        }
        Ok(stmt)
    }
}
