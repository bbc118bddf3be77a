//! aiopg.sa's transactions: `begin()` (a joined inner `begin()` included), `begin_nested()`
//! (savepoints) and `begin_twophase()` (`PREPARE TRANSACTION`).

use std::fmt;
use std::sync::{Arc, Mutex};

use aiopg_conn::{Connection, TransactionOptions};
use aiopg_core::{Error, Result};

/// What the transactions of one connection share.
#[derive(Debug, Default)]
pub(crate) struct TxState {
    /// The generation of the open outermost transaction; `None` when there is none.
    root: Option<u64>,
    generation: u64,
    savepoints: u64,
}

pub(crate) type Shared = Arc<Mutex<TxState>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, TxState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
enum Kind {
    /// The outermost transaction: `BEGIN` ... `COMMIT` / `ROLLBACK`.
    Root,
    /// A `begin()` inside an open transaction: joins it. Its commit does nothing (the outer
    /// one commits); its rollback rolls the whole transaction back.
    Joined,
    /// A `begin_nested()` inside a transaction: a savepoint.
    Nested(String),
    /// An outermost transaction to be committed in two phases.
    TwoPhase {
        /// The transaction identifier (`gid`).
        xid: String,
        /// True once `PREPARE TRANSACTION` succeeded: the transaction then lives on the
        /// server, apart from the session.
        prepared: bool,
    },
}

/// A transaction of an [`SAConnection`](crate::SAConnection), as aiopg.sa's `Transaction`:
/// `commit()` and `rollback()` (and `is_active()`), and for a two-phase one `prepare()`.
/// Dropping an active outermost transaction or savepoint rolls it back (the statement is
/// queued at once); a prepared two-phase transaction is left prepared on the server (that is
/// its point: find it with `recover_twophase()`).
///
/// # Cancel safety
///
/// Ending a transaction is not cancel safe. [`commit`](Self::commit) and
/// [`rollback`](Self::rollback) make the transaction inactive on their first poll, so
/// dropping them afterwards sends nothing more, but the connection's record of the open
/// outermost transaction is cleared only when the call completes: after such a drop, every
/// later `begin()` on the same [`SAConnection`](crate::SAConnection) joins that stale record
/// instead of sending `BEGIN`, so its `commit()` does nothing. Give the connection back to
/// the pool after a dropped commit or rollback: the pool rolls back whatever is open. Each
/// method says more.
pub struct SATransaction {
    conn: Connection,
    shared: Shared,
    kind: Kind,
    /// The outermost transaction this one belongs to.
    generation: u64,
    active: bool,
}

impl fmt::Debug for SATransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SATransaction")
            .field("kind", &self.kind)
            .field("active", &self.is_active())
            .finish_non_exhaustive()
    }
}

fn inactive() -> Error {
    Error::usage(
        "this transaction is inactive: it was committed or rolled back, or a transaction it \
         belongs to was rolled back",
    )
}

impl SATransaction {
    pub(crate) async fn begin_twophase(
        conn: &Connection,
        shared: &Shared,
        xid: Option<&str>,
    ) -> Result<SATransaction> {
        if lock(shared).root.is_some()
            || conn.transaction_status() != aiopg_core::TransactionStatus::Idle
        {
            return Err(Error::usage(
                "begin_twophase() inside a transaction: a two-phase transaction must be the \
                 outermost one (commit or roll back the open transaction first)",
            ));
        }
        let xid = match xid {
            Some(xid) => {
                check_xid(xid)?;
                xid.to_owned()
            }
            None => new_xid(conn.backend_pid()),
        };
        conn.batch_execute("BEGIN").await?;
        let generation = open_root(shared);
        Ok(SATransaction {
            conn: conn.clone(),
            shared: shared.clone(),
            kind: Kind::TwoPhase {
                xid,
                prepared: false,
            },
            generation,
            active: true,
        })
    }

    pub(crate) async fn begin(
        conn: &Connection,
        shared: &Shared,
        options: Option<TransactionOptions>,
        nested: bool,
    ) -> Result<SATransaction> {
        let open = lock(shared).root;
        if let Some(generation) = open {
            if options.is_some() {
                return Err(Error::usage(
                    "a transaction is already open: its options cannot change now (begin \
                     with options only outside a transaction)",
                ));
            }
            let kind = if nested {
                let name = {
                    let mut st = lock(shared);
                    st.savepoints += 1;
                    format!("sa_savepoint_{}", st.savepoints)
                };
                conn.batch_execute(&format!("SAVEPOINT {name}")).await?;
                Kind::Nested(name)
            } else {
                Kind::Joined
            };
            return Ok(SATransaction {
                conn: conn.clone(),
                shared: shared.clone(),
                kind,
                generation,
                active: true,
            });
        }
        let sql = options.unwrap_or_default().begin_sql();
        conn.batch_execute(&sql).await?;
        let generation = open_root(shared);
        Ok(SATransaction {
            conn: conn.clone(),
            shared: shared.clone(),
            kind: Kind::Root,
            generation,
            active: true,
        })
    }

    /// True until it is committed or rolled back, or the transaction it belongs to is. A
    /// prepared two-phase transaction stays active until `commit()` or `rollback()`.
    pub fn is_active(&self) -> bool {
        self.active
            && (matches!(self.kind, Kind::TwoPhase { prepared: true, .. })
                || lock(&self.shared).root == Some(self.generation))
    }

    /// A two-phase transaction's identifier (`None` for the other kinds).
    pub fn xid(&self) -> Option<&str> {
        match &self.kind {
            Kind::TwoPhase { xid, .. } => Some(xid),
            _ => None,
        }
    }

    /// Prepares a two-phase transaction (`PREPARE TRANSACTION`): its work is kept by the
    /// server, apart from this session, until `commit()` / `rollback()` here or
    /// `commit_prepared(xid)` / `rollback_prepared(xid)` from any connection to the database.
    /// The connection is then outside any transaction and can be used for other work.
    ///
    /// # Errors
    ///
    /// `Usage` for a transaction that is not two-phase, one already prepared, or an inactive
    /// one. If the server refuses (`max_prepared_transactions` is 0, a serialization failure),
    /// the transaction is rolled back, as PostgreSQL does, and becomes inactive.
    ///
    /// # Cancel safety
    ///
    /// This method is not cancel safe. Dropped while the `PREPARE TRANSACTION` waits to be
    /// written, it is taken back and nothing changes. Dropped after, the transaction may have been
    /// prepared, but this handle does not record it: it goes on as unprepared (dropping it sends a
    /// `ROLLBACK`, which does not reach a prepared transaction), and until it is dropped a
    /// `begin()` on the connection joins it. Find `xid` with
    /// [`recover_twophase`](crate::SAConnection::recover_twophase) and finish it with
    /// [`commit_prepared`](crate::SAConnection::commit_prepared) or
    /// [`rollback_prepared`](crate::SAConnection::rollback_prepared).
    pub async fn prepare(&mut self) -> Result<()> {
        let active = self.is_active();
        let Kind::TwoPhase { xid, prepared } = &mut self.kind else {
            return Err(Error::usage(
                "prepare() is only for a two-phase transaction (begin_twophase)",
            ));
        };
        if *prepared {
            return Err(Error::usage(
                "this two-phase transaction is already prepared: commit() or rollback() it",
            ));
        }
        if !active {
            self.active = false;
            return Err(inactive());
        }
        let res = self
            .conn
            .batch_execute(&format!("PREPARE TRANSACTION {}", xid_literal(xid)))
            .await;
        match res {
            Ok(()) => *prepared = true,
            Err(_) => self.active = false,
        }
        self.end_root();
        res
    }

    /// Commits: the outermost transaction sends `COMMIT`, a savepoint is released, a joined
    /// `begin()` does nothing (its outer transaction commits). Committing an inactive
    /// transaction (twice, or after a rollback) is an error.
    ///
    /// # Cancel safety
    ///
    /// A joined transaction's commit does no I/O and is cancel safe; so is a savepoint's (its work
    /// is kept whether or not the `RELEASE` was sent). For the outermost transaction this method
    /// is not cancel safe. Dropped before its first poll, the transaction is dropped with it and
    /// rolled back. From its first poll it is inactive, and dropping it sends nothing more:
    /// dropped once the `COMMIT` was written, it runs unseen (whether it committed is not known);
    /// dropped while the `COMMIT` waited to be written, it is taken back and the transaction stays
    /// open on the server. Either way the connection goes on counting the transaction as open, so
    /// a later `begin()` on it joins instead of beginning (see the
    /// [type's section](SATransaction#cancel-safety)). For a prepared two-phase transaction, a
    /// `COMMIT PREPARED` already sent runs, unseen:
    /// [`recover_twophase`](crate::SAConnection::recover_twophase) tells.
    pub async fn commit(mut self) -> Result<()> {
        if !self.is_active() {
            self.active = false;
            return Err(inactive());
        }
        self.active = false;
        match &self.kind {
            Kind::Joined => Ok(()),
            Kind::Nested(name) => {
                self.conn
                    .batch_execute(&format!("RELEASE SAVEPOINT {name}"))
                    .await
            }
            Kind::TwoPhase {
                xid,
                prepared: true,
            } => {
                self.conn
                    .batch_execute(&format!("COMMIT PREPARED {}", xid_literal(xid)))
                    .await
            }
            Kind::Root | Kind::TwoPhase { .. } => {
                let res = self.conn.batch_execute("COMMIT").await;
                self.end_root();
                res
            }
        }
    }

    /// Rolls back: the outermost transaction or a joined `begin()` roll the whole transaction
    /// back (so the outer one becomes inactive), a savepoint rolls back to where it began.
    /// Rolling back an inactive transaction does nothing.
    ///
    /// # Cancel safety
    ///
    /// This method is not cancel safe. Dropped before its first poll, the transaction is dropped
    /// with it, which rolls back an outermost transaction or a savepoint (a joined
    /// transaction's drop does nothing). From its first poll it is inactive: a `ROLLBACK` (or
    /// `ROLLBACK TO SAVEPOINT`, `ROLLBACK PREPARED`) already written runs, unseen; one that still
    /// waited to be written is taken back, and the work is **not** undone. For the outermost or a
    /// joined transaction, the connection goes on counting the transaction as open either way, so
    /// a later `begin()` on it joins instead of beginning (see the
    /// [type's section](SATransaction#cancel-safety)).
    pub async fn rollback(mut self) -> Result<()> {
        if !self.is_active() {
            self.active = false;
            return Ok(());
        }
        self.active = false;
        match &self.kind {
            Kind::Nested(name) => {
                self.conn
                    .batch_execute(&format!("ROLLBACK TO SAVEPOINT {name}"))
                    .await
            }
            Kind::TwoPhase {
                xid,
                prepared: true,
            } => {
                self.conn
                    .batch_execute(&format!("ROLLBACK PREPARED {}", xid_literal(xid)))
                    .await
            }
            Kind::Root | Kind::Joined | Kind::TwoPhase { .. } => {
                let res = self.conn.batch_execute("ROLLBACK").await;
                self.end_root();
                res
            }
        }
    }

    fn end_root(&self) {
        let mut st = lock(&self.shared);
        if st.root == Some(self.generation) {
            st.root = None;
        }
    }
}

impl Drop for SATransaction {
    fn drop(&mut self) {
        if !self.is_active() {
            return;
        }
        match &self.kind {
            Kind::Joined => {}
            Kind::Nested(name) => self.conn.detach(&format!("ROLLBACK TO SAVEPOINT {name}")),
            // A prepared transaction outlives the session: it waits for the coordinator.
            Kind::TwoPhase { prepared: true, .. } => {}
            Kind::Root | Kind::TwoPhase { .. } => {
                self.conn.detach("ROLLBACK");
                self.end_root();
            }
        }
    }
}

/// Records a new outermost transaction; returns its generation.
fn open_root(shared: &Shared) -> u64 {
    let mut st = lock(shared);
    st.generation += 1;
    st.root = Some(st.generation);
    st.generation
}

/// The longest transaction identifier PostgreSQL takes (`GIDSIZE` is 200 with the NUL).
const MAX_XID_LEN: usize = 199;

/// Checks a transaction identifier before it is written into a statement.
pub(crate) fn check_xid(xid: &str) -> Result<()> {
    if xid.is_empty() || xid.len() > MAX_XID_LEN || xid.contains('\0') {
        return Err(Error::usage(format!(
            "a two-phase transaction identifier must be 1 to {MAX_XID_LEN} bytes without NUL \
             (this one has {} bytes{})",
            xid.len(),
            if xid.contains('\0') { " and a NUL" } else { "" }
        )));
    }
    Ok(())
}

/// The identifier as a string literal (`PREPARE TRANSACTION` and friends take no parameters).
/// An escape string when it holds a backslash, which means the same whatever
/// `standard_conforming_strings` is.
pub(crate) fn xid_literal(xid: &str) -> String {
    let quoted = xid.replace('\'', "''");
    if xid.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// An identifier for `begin_twophase(None)`: unique among the server's prepared transactions
/// (the backend's pid, the time and a per-process counter, mixed with a random key).
fn new_xid(pid: i32) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u64(n);
    format!("_sa_{pid:x}_{nanos:x}_{n:x}_{:016x}", h.finish())
}
