//! aiopg.sa's transactions: `begin()` (a joined inner `begin()` included), `begin_nested()`
//! (savepoints) and `begin_twophase()` (`PREPARE TRANSACTION`).

use std::fmt;
use std::sync::{Arc, Mutex};

use aiopg_conn::{Connection, TransactionOptions};
use aiopg_core::{Error, Result, SqlState};

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
        /// How far `PREPARE TRANSACTION` got.
        phase: Phase,
    },
}

/// Where a two-phase transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not prepared: the session's own transaction.
    Open,
    /// A `prepare()` was dropped (or lost its connection) before its answer: the transaction
    /// is either prepared on the server or rolled back, and the session is outside it either
    /// way (the drop queued a `ROLLBACK` behind the `PREPARE TRANSACTION` for the case it was
    /// taken back unsent). `commit()` and `rollback()` find out which.
    MaybePrepared,
    /// `PREPARE TRANSACTION` succeeded: the transaction lives on the server, apart from the
    /// session.
    Prepared,
}

impl Phase {
    /// The transaction is (or may be) prepared: it lives apart from the session.
    fn apart(self) -> bool {
        self != Phase::Open
    }
}

/// When an undo queued by a dropped call still applies.
#[derive(Debug, Clone, Copy)]
enum UndoIf {
    /// No outermost transaction was opened since the call started (the generation did not
    /// move): an undo would otherwise land in that newer transaction.
    NoNewerRoot(u64),
    /// The outermost transaction of this generation is still the open one (for a savepoint).
    RootOpen(u64),
}

/// Queues `undo` (detached: it goes out ahead of anything issued later on the connection) if
/// dropped while armed, that is, while a statement's answer is still unknown.
struct UndoOnDrop<'a> {
    conn: &'a Connection,
    shared: &'a Shared,
    undo: &'a str,
    when: UndoIf,
    armed: bool,
}

impl Drop for UndoOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let applies = {
            let st = lock(self.shared);
            match self.when {
                UndoIf::NoNewerRoot(generation) => st.generation == generation,
                UndoIf::RootOpen(generation) => st.root == Some(generation),
            }
        };
        if applies {
            self.conn.detach(self.undo);
        }
    }
}

/// Runs `sql`; if the future is dropped before the server answered, queues `undo` (when
/// `when` says it still applies). `undo` must be harmless where `sql` did run or was
/// taken back (a `ROLLBACK` with no transaction open is a warning, not an error).
async fn run_or_undo(
    conn: &Connection,
    shared: &Shared,
    sql: &str,
    undo: &str,
    when: UndoIf,
) -> Result<()> {
    let mut guard = UndoOnDrop {
        conn,
        shared,
        undo,
        when,
        armed: true,
    };
    let res = conn.batch_execute(sql).await;
    // Answered, either way: nothing is left to undo.
    guard.armed = false;
    res
}

/// A transaction of an [`SAConnection`](crate::SAConnection), as aiopg.sa's `Transaction`:
/// `commit()` and `rollback()` (and `is_active()`), and for a two-phase one `prepare()`.
/// Dropping an active outermost transaction or savepoint rolls it back (the statement is
/// queued at once); a prepared two-phase transaction is left prepared on the server (that is
/// its point: find it with `recover_twophase()`).
///
/// # Cancel safety
///
/// Whatever call is dropped, the connection is left outside the transaction, and the
/// [`SAConnection`](crate::SAConnection)'s next `begin()` really begins. The outermost
/// transaction's [`commit`](Self::commit), [`rollback`](Self::rollback) and
/// [`prepare`](Self::prepare) clear the connection's record of it on their first poll; dropped
/// before the server answered, they queue a `ROLLBACK` behind their statement (detached, ahead
/// of anything issued later), which ends the transaction if their statement was taken back
/// unsent, and does nothing if it ran. What a dropped commit leaves is unknown (committed if
/// the `COMMIT` ran, rolled back otherwise); a dropped prepare is found out by this handle's
/// `commit()` or `rollback()`. Each method says more. Right after a drop,
/// [`in_transaction`](crate::SAConnection::in_transaction) may still show the state before that
/// queued `ROLLBACK` (it reports the last answer read); the next statement's answer brings it
/// up to date.
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
        let inside = || {
            Error::usage(
                "begin_twophase() inside a transaction: a two-phase transaction must be the \
                 outermost one (commit or roll back the open transaction first)",
            )
        };
        if lock(shared).root.is_some() {
            return Err(inside());
        }
        if conn.transaction_status() != aiopg_core::TransactionStatus::Idle {
            // The status is the last answer's: a ROLLBACK queued by a dropped call may still be
            // on its way. An empty query's answer brings it up to date.
            conn.batch_execute("").await?;
            if conn.transaction_status() != aiopg_core::TransactionStatus::Idle {
                return Err(inside());
            }
        }
        let xid = match xid {
            Some(xid) => {
                check_xid(xid)?;
                xid.to_owned()
            }
            None => new_xid(conn.backend_pid()),
        };
        begin_root(conn, shared, "BEGIN").await?;
        let generation = open_root(shared);
        Ok(SATransaction {
            conn: conn.clone(),
            shared: shared.clone(),
            kind: Kind::TwoPhase {
                xid,
                phase: Phase::Open,
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
        begin_root(conn, shared, &sql).await?;
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
            && (matches!(&self.kind, Kind::TwoPhase { phase, .. } if phase.apart())
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
    /// `Usage` for a transaction that is not two-phase, one already prepared (or whose earlier
    /// `prepare()` was dropped), or an inactive one. If the server refuses
    /// (`max_prepared_transactions` is 0, a serialization failure), the transaction is rolled
    /// back, as PostgreSQL does, and becomes inactive. A `CommitUnknown` error (the connection
    /// was lost once the statement was sent) leaves the transaction possibly prepared, as a
    /// dropped call does.
    ///
    /// # Cancel safety
    ///
    /// This method is not cancel safe, but its outcome is always knowable. From its first poll
    /// the connection counts the session's transaction as ended (a later `begin()` begins anew)
    /// and this handle counts it as possibly prepared. Dropped before the server answered, a
    /// `ROLLBACK` is queued behind the `PREPARE TRANSACTION` (detached): if the statement was
    /// taken back unsent, that rolls the transaction back; if it ran, the transaction is
    /// prepared (or the server refused and rolled it back) and the `ROLLBACK` does nothing.
    /// Either way the session is outside the transaction. The handle stays active and finds out
    /// which it was: [`commit`](Self::commit) sends `COMMIT PREPARED` and fails, with the
    /// server's SQLSTATE 42704 (`undefined_object`), if nothing was prepared (the work was rolled
    /// back); [`rollback`](Self::rollback) sends `ROLLBACK PREPARED` and succeeds either way.
    /// Dropping the handle instead leaves a transaction that may be prepared to
    /// [`recover_twophase`](crate::SAConnection::recover_twophase), as for a prepared one.
    pub async fn prepare(&mut self) -> Result<()> {
        let active = self.is_active();
        let Kind::TwoPhase { xid, phase } = &mut self.kind else {
            return Err(Error::usage(
                "prepare() is only for a two-phase transaction (begin_twophase)",
            ));
        };
        match *phase {
            Phase::Open => {}
            Phase::Prepared => {
                return Err(Error::usage(
                    "this two-phase transaction is already prepared: commit() or rollback() it",
                ))
            }
            Phase::MaybePrepared => {
                return Err(Error::usage(
                    "this two-phase transaction may already be prepared (an earlier prepare() \
                     did not complete): commit() or rollback() it, which finds out",
                ))
            }
        }
        if !active {
            self.active = false;
            return Err(inactive());
        }
        // From here the session's transaction is over, or about to be, whatever becomes of
        // this future: it is prepared, or rolled back (by the server, or by the undo).
        *phase = Phase::MaybePrepared;
        let sql = format!("PREPARE TRANSACTION {}", xid_literal(xid));
        let generation = self.generation;
        self.end_root();
        let res = run_or_undo(
            &self.conn,
            &self.shared,
            &sql,
            "ROLLBACK",
            UndoIf::NoNewerRoot(generation),
        )
        .await;
        match &res {
            Ok(()) => self.set_phase(Phase::Prepared),
            // Sent whole, answer lost: prepared or not, only the server knows.
            Err(e) if e.is_commit_unknown() => {}
            // Refused (and rolled back by the server), or never sent on a connection that
            // is gone: nothing is prepared.
            Err(_) => {
                self.set_phase(Phase::Open);
                self.active = false;
            }
        }
        res
    }

    fn set_phase(&mut self, to: Phase) {
        if let Kind::TwoPhase { phase, .. } = &mut self.kind {
            *phase = to;
        }
    }

    /// Commits: the outermost transaction sends `COMMIT`, a savepoint is released, a joined
    /// `begin()` does nothing (its outer transaction commits). Committing an inactive
    /// transaction (twice, or after a rollback) is an error.
    ///
    /// A two-phase transaction whose [`prepare`](Self::prepare) did not complete is committed
    /// with `COMMIT PREPARED` if it was prepared; if it was not (the work was rolled back), this
    /// fails with the server's SQLSTATE 42704 (`undefined_object`), saying so.
    ///
    /// # Cancel safety
    ///
    /// A joined transaction's commit does no I/O and is cancel safe; so is a savepoint's (its work
    /// is kept whether or not the `RELEASE` was sent). For the outermost transaction this method
    /// is not cancel safe: whether a dropped commit committed is not known. Dropped before its
    /// first poll, the transaction is dropped with it and rolled back. From its first poll it is
    /// inactive and the connection's record of it is cleared, so a later `begin()` on the
    /// [`SAConnection`](crate::SAConnection) begins anew. Dropped before the server answered, a
    /// `ROLLBACK` is queued behind the `COMMIT` (detached, ahead of anything issued later): if
    /// the `COMMIT` was written, it runs unseen (committed, unless the server refuses) and the
    /// `ROLLBACK` does nothing; if it was still waiting to be written, it is taken back and the
    /// `ROLLBACK` ends the transaction. The connection is left outside a transaction either way.
    /// For a prepared two-phase transaction, a `COMMIT PREPARED` already sent runs, unseen, and
    /// one taken back leaves the transaction prepared:
    /// [`recover_twophase`](crate::SAConnection::recover_twophase) tells which.
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
            Kind::TwoPhase { xid, phase } if phase.apart() => {
                let res = self
                    .conn
                    .batch_execute(&format!("COMMIT PREPARED {}", xid_literal(xid)))
                    .await;
                match res {
                    Err(e)
                        if *phase == Phase::MaybePrepared
                            && e.code() == Some(&SqlState::UNDEFINED_OBJECT) =>
                    {
                        Err(e.context(
                            "nothing was committed: the transaction's prepare() did not \
                             complete, and it was not prepared but rolled back",
                        ))
                    }
                    res => res,
                }
            }
            Kind::Root | Kind::TwoPhase { .. } => {
                self.end_root();
                run_or_undo(
                    &self.conn,
                    &self.shared,
                    "COMMIT",
                    "ROLLBACK",
                    UndoIf::NoNewerRoot(self.generation),
                )
                .await
            }
        }
    }

    /// Rolls back: the outermost transaction or a joined `begin()` roll the whole transaction
    /// back (so the outer one becomes inactive), a savepoint rolls back to where it began.
    /// Rolling back an inactive transaction does nothing. A two-phase transaction whose
    /// [`prepare`](Self::prepare) did not complete is rolled back with `ROLLBACK PREPARED` if it
    /// was prepared, and was rolled back already if not: both succeed.
    ///
    /// # Cancel safety
    ///
    /// For the outermost transaction, a joined one and a savepoint, this method is cancel safe:
    /// the work is undone whether or not the future completes. Dropped before its first poll, the
    /// transaction is dropped with it, which rolls back an outermost transaction or a savepoint (a
    /// joined transaction's drop does nothing: its outer one still rolls back when ended or
    /// dropped). From its first poll the transaction is inactive, and for the outermost or a
    /// joined transaction the connection's record of it is cleared, so a later `begin()` begins
    /// anew. Dropped before the server answered, the same statement is queued again behind it
    /// (detached, ahead of anything issued later): it undoes the work if the first was taken back
    /// unsent, and does nothing more if it ran. For a prepared two-phase transaction, a
    /// `ROLLBACK PREPARED` already sent runs, unseen, and one taken back leaves the transaction
    /// prepared: [`recover_twophase`](crate::SAConnection::recover_twophase) tells which.
    pub async fn rollback(mut self) -> Result<()> {
        if !self.is_active() {
            self.active = false;
            return Ok(());
        }
        self.active = false;
        match &self.kind {
            Kind::Nested(name) => {
                let sql = format!("ROLLBACK TO SAVEPOINT {name}");
                run_or_undo(
                    &self.conn,
                    &self.shared,
                    &sql,
                    &sql,
                    UndoIf::RootOpen(self.generation),
                )
                .await
            }
            Kind::TwoPhase { xid, phase } if phase.apart() => {
                let res = self
                    .conn
                    .batch_execute(&format!("ROLLBACK PREPARED {}", xid_literal(xid)))
                    .await;
                match res {
                    // Not prepared: the transaction was rolled back already.
                    Err(e)
                        if *phase == Phase::MaybePrepared
                            && e.code() == Some(&SqlState::UNDEFINED_OBJECT) =>
                    {
                        Ok(())
                    }
                    res => res,
                }
            }
            Kind::Root | Kind::Joined | Kind::TwoPhase { .. } => {
                self.end_root();
                run_or_undo(
                    &self.conn,
                    &self.shared,
                    "ROLLBACK",
                    "ROLLBACK",
                    UndoIf::NoNewerRoot(self.generation),
                )
                .await
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
            // A prepared transaction (or one that may be) outlives the session: it waits for
            // the coordinator.
            Kind::TwoPhase { phase, .. } if phase.apart() => {}
            Kind::Root | Kind::TwoPhase { .. } => {
                self.conn.detach("ROLLBACK");
                self.end_root();
            }
        }
    }
}

/// Sends the `BEGIN` (`sql`) of an outermost transaction. Dropped before the server answered,
/// a `ROLLBACK` is queued behind it (detached), so a `BEGIN` that ran leaves no transaction
/// that no handle ends; one taken back unsent makes that `ROLLBACK` a harmless warning.
async fn begin_root(conn: &Connection, shared: &Shared, sql: &str) -> Result<()> {
    let generation = lock(shared).generation;
    run_or_undo(
        conn,
        shared,
        sql,
        "ROLLBACK",
        UndoIf::NoNewerRoot(generation),
    )
    .await
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
