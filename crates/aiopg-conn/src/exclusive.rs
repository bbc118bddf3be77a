//! A request that holds the connection while its owner is still adding messages to it.
//!
//! COPY FROM STDIN is the case: after its Query the client streams CopyData messages and ends
//! with CopyDone, and nothing queued behind it may reach the wire in between. The router keeps
//! the hold (`State::issue_exclusive`): requests issued meanwhile are queued behind it, but
//! nothing past its bytes is written until the owner releases it, leaves (its `on_abandon`
//! bytes, a CopyFail, end it on the wire) or the server ends it. The COPY API builds on this;
//! the model test drives it today.

use std::task::{Context, Poll};

use bytes::BytesMut;

use aiopg_core::Result;

use crate::collect::{Collector, Output};
use crate::state::State;
use crate::Connection;

/// The owner's handle on an exclusive request; dropping it abandons the request.
#[derive(Debug)]
pub(crate) struct Exclusive {
    conn: Connection,
    id: u64,
    finished: bool,
}

impl Exclusive {
    /// Queues the request's first messages and takes the hold.
    pub(crate) fn start(
        conn: &Connection,
        encode: impl FnOnce(&mut State) -> Result<Collector>,
        on_abandon: BytesMut,
    ) -> Result<Exclusive> {
        let id = conn.issue_with(|st, encode| st.issue_exclusive(encode, on_abandon), encode)?;
        Ok(Exclusive {
            conn: conn.clone(),
            id,
            finished: false,
        })
    }

    /// Adds messages to the request (ahead of anything queued behind it); `on_abandon`, when
    /// given, replaces what ends the request if its owner leaves.
    pub(crate) fn append(&self, bytes: &[u8], on_abandon: Option<BytesMut>) -> Result<()> {
        self.conn.shared.lock().append(self.id, bytes, on_abandon)
    }

    /// Adds one CopyData message carrying `data`.
    pub(crate) fn append_copy_data(&self, data: &[u8]) -> Result<()> {
        self.conn.shared.lock().append_copy_data(self.id, data)
    }

    /// The request may commit once written whole (a COPY FROM STDIN's CopyDone outside a
    /// transaction block: it commits on its own): losing it then is `CommitUnknown`.
    pub(crate) fn commits_unless_in_block(&self) {
        let mut st = self.conn.shared.lock();
        if st.tx_status == aiopg_core::TransactionStatus::Idle {
            st.mark_commits(self.id);
        }
    }

    /// Ends the hold: the request is complete on the wire.
    pub(crate) fn release(&self) {
        self.conn.shared.lock().release(self.id);
    }

    /// Polls until the server has started the COPY, or fails it.
    pub(crate) fn poll_started(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<crate::collect::CopyInfo>> {
        let res = self.conn.shared.lock().poll_copy_started(self.id, cx);
        if let Poll::Ready(Err(_)) = res {
            // The request is over (its error was taken): nothing to abandon.
            self.finished = true;
        }
        res
    }

    /// Drives the socket until at most `limit` of the request's bytes are unsent.
    pub(crate) fn poll_drain(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<Result<()>> {
        let res = self.conn.shared.lock().poll_drain(self.id, cx, limit);
        if let Poll::Ready(Err(_)) = res {
            self.finished = true;
        }
        res
    }

    /// The connection and the request's id, for an owner that takes over abandoning it.
    pub(crate) fn into_parts(mut self) -> (Connection, u64) {
        self.finished = true;
        (self.conn.clone(), self.id)
    }

    /// Polls for the request's answer, driving the socket meanwhile.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Output>> {
        let res = self.conn.shared.lock().poll_request(self.id, cx);
        if res.is_ready() {
            self.finished = true;
        }
        res
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.shared.lock().abandon(self.id);
        }
    }
}
