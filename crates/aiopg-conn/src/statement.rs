//! Prepared statements and the per-connection statement cache.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use aiopg_core::row::Column;
use aiopg_core::types::Type;

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
/// Statements belong to the connection that prepared them. The server-side statement is
/// closed once the last handle is dropped and the statement has left the cache.
#[derive(Clone)]
pub struct Statement(Arc<Inner>);

struct Inner {
    name: String,
    sql: Arc<str>,
    params: Vec<Type>,
    columns: Arc<[Column]>,
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
    capacity: usize,
    map: HashMap<Arc<str>, (Statement, u64)>,
    tick: u64,
    next_name: u64,
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
            capacity,
            map: HashMap::new(),
            tick: 0,
            next_name: 0,
            close_list: Arc::new(CloseList::default()),
        }
    }

    /// A fresh server-side name, or the unnamed statement when caching is off.
    pub(crate) fn next_name(&mut self) -> String {
        if self.capacity == 0 {
            return String::new();
        }
        self.next_name += 1;
        format!("aiopg_s{}", self.next_name)
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
            name,
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

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
