//! aiopg.sa's transactions: `begin()` (a joined inner `begin()` included) and
//! `begin_nested()` (savepoints).

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
}

/// A transaction of an [`SAConnection`](crate::SAConnection), as aiopg.sa's `Transaction`:
/// `commit()` and `rollback()` (and `is_active()`). Dropping an active outermost transaction or
/// savepoint rolls it back (the statement is queued at once).
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
        let generation = {
            let mut st = lock(shared);
            st.generation += 1;
            st.root = Some(st.generation);
            st.generation
        };
        Ok(SATransaction {
            conn: conn.clone(),
            shared: shared.clone(),
            kind: Kind::Root,
            generation,
            active: true,
        })
    }

    /// True until it is committed or rolled back, or the transaction it belongs to is.
    pub fn is_active(&self) -> bool {
        self.active && lock(&self.shared).root == Some(self.generation)
    }

    /// Commits: the outermost transaction sends `COMMIT`, a savepoint is released, a joined
    /// `begin()` does nothing (its outer transaction commits). Committing an inactive
    /// transaction (twice, or after a rollback) is an error.
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
            Kind::Root => {
                let res = self.conn.batch_execute("COMMIT").await;
                self.end_root();
                res
            }
        }
    }

    /// Rolls back: the outermost transaction or a joined `begin()` roll the whole transaction
    /// back (so the outer one becomes inactive), a savepoint rolls back to where it began.
    /// Rolling back an inactive transaction does nothing.
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
            Kind::Root | Kind::Joined => {
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
            Kind::Root => {
                self.conn.detach("ROLLBACK");
                self.end_root();
            }
        }
    }
}
