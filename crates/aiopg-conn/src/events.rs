//! Bounded broadcast of the events a server sends on its own: notifications and notices.
//!
//! No I/O here: the router pushes what it reads, subscribers (the `notifies()` and `notices()`
//! streams) take from it. Each subscriber sees every event pushed after it subscribed, in
//! order; events that arrived while nobody subscribed are kept for the first subscriber.
//! The buffer holds at most `capacity` events: when full, the oldest is dropped, and each
//! subscriber that had not seen it is told how many it missed (a `Lagged` error) before its
//! next event. Nothing is ever lost silently, and memory never grows with a slow consumer.

use std::collections::VecDeque;
use std::task::Waker;

use aiopg_core::{Error, Result};

/// The default capacity of a connection's notification and notice buffers.
pub const DEFAULT_EVENT_CAPACITY: usize = 4096;

#[derive(Debug)]
struct Sub {
    /// The sequence number of the next event this subscriber takes.
    cursor: u64,
    /// Events dropped before this subscriber existed, to report first.
    missed: u64,
    waker: Option<Waker>,
    /// Set once the subscriber was told the connection closed: it ends then.
    ended: bool,
}

/// One kind of event's buffer and its subscribers.
#[derive(Debug)]
pub(crate) struct Events<T> {
    ring: VecDeque<T>,
    /// The sequence number of `ring[0]`.
    base: u64,
    capacity: usize,
    /// Subscribers by slot; a slot is reused once freed.
    subs: Vec<Option<Sub>>,
    live: usize,
    /// Events dropped while nobody subscribed: the next first subscriber hears of them.
    unclaimed: u64,
    /// What the events are called in a `Lagged` error.
    what: &'static str,
}

impl<T: Clone> Events<T> {
    pub(crate) fn new(capacity: usize, what: &'static str) -> Events<T> {
        Events {
            ring: VecDeque::new(),
            base: 0,
            capacity: capacity.max(1),
            subs: Vec::new(),
            live: 0,
            unclaimed: 0,
            what,
        }
    }

    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.ring.len() > self.capacity {
            self.ring.pop_front();
            self.base += 1;
            if self.live == 0 {
                self.unclaimed += 1;
            }
        }
    }

    fn end(&self) -> u64 {
        self.base + self.ring.len() as u64
    }

    /// Adds an event and wakes every subscriber.
    pub(crate) fn push(&mut self, event: T) {
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
            self.base += 1;
            if self.live == 0 {
                self.unclaimed += 1;
            }
        }
        self.ring.push_back(event);
        self.wake_all();
    }

    pub(crate) fn wake_all(&mut self) {
        for s in self.subs.iter_mut().flatten() {
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }

    /// A new subscriber: the first one takes what waited for it, later ones start with the
    /// next event.
    pub(crate) fn subscribe(&mut self) -> usize {
        let sub = if self.live == 0 {
            Sub {
                cursor: self.base,
                missed: std::mem::take(&mut self.unclaimed),
                waker: None,
                ended: false,
            }
        } else {
            Sub {
                cursor: self.end(),
                missed: 0,
                waker: None,
                ended: false,
            }
        };
        self.live += 1;
        match self.subs.iter().position(Option::is_none) {
            Some(i) => {
                self.subs[i] = Some(sub);
                i
            }
            None => {
                self.subs.push(Some(sub));
                self.subs.len() - 1
            }
        }
    }

    pub(crate) fn unsubscribe(&mut self, id: usize) {
        let Some(sub) = self.subs.get_mut(id).and_then(Option::take) else {
            return;
        };
        self.live -= 1;
        if self.live > 0 {
            self.trim();
            return;
        }
        // The last one left: what it saw goes, what it did not waits for the next one, and
        // so does the count of what it missed.
        self.unclaimed = sub.missed + self.base.saturating_sub(sub.cursor);
        while self.base < sub.cursor && !self.ring.is_empty() {
            self.ring.pop_front();
            self.base += 1;
        }
    }

    /// Drops the events every subscriber has seen. With none left, keeps what is unseen.
    fn trim(&mut self) {
        let Some(min) = self.subs.iter().flatten().map(|s| s.cursor).min() else {
            return;
        };
        while self.base < min && !self.ring.is_empty() {
            self.ring.pop_front();
            self.base += 1;
        }
    }

    /// The subscriber's next event, or how many it missed; `None` when it has seen all.
    pub(crate) fn take(&mut self, id: usize) -> Option<Result<T>> {
        let base = self.base;
        let end = self.end();
        let live = self.live;
        let sub = self.subs.get_mut(id)?.as_mut()?;
        let missed = sub.missed + base.saturating_sub(sub.cursor);
        if missed > 0 {
            sub.missed = 0;
            sub.cursor = sub.cursor.max(base);
            return Some(Err(Error::lagged(missed, self.what)));
        }
        if sub.cursor >= end {
            return None;
        }
        sub.cursor += 1;
        if live == 1 && sub.cursor == base + 1 {
            // The only subscriber takes the oldest event: move it out, no copy.
            self.base += 1;
            return self.ring.pop_front().map(Ok);
        }
        let event = self.ring[(sub.cursor - 1 - base) as usize].clone();
        if sub.cursor == base + 1 {
            self.trim();
        }
        Some(Ok(event))
    }

    /// Registers the subscriber's waker, for the next event or the connection's end.
    pub(crate) fn park(&mut self, id: usize, waker: &Waker) {
        if let Some(Some(s)) = self.subs.get_mut(id) {
            match &s.waker {
                Some(w) if w.will_wake(waker) => {}
                _ => s.waker = Some(waker.clone()),
            }
        }
    }

    /// Takes the subscriber's waker out while it drives the socket itself.
    pub(crate) fn unpark(&mut self, id: usize) {
        if let Some(Some(s)) = self.subs.get_mut(id) {
            s.waker = None;
        }
    }

    /// Marks the subscriber ended; true the first time (it then gets the closing error).
    pub(crate) fn end_sub(&mut self, id: usize) -> bool {
        match self.subs.get_mut(id) {
            Some(Some(s)) if !s.ended => {
                s.ended = true;
                true
            }
            _ => false,
        }
    }

    /// Forgets every buffered event (a pooled connection lent to someone new).
    pub(crate) fn clear(&mut self) {
        self.base = self.end();
        self.ring.clear();
        self.unclaimed = 0;
        for s in self.subs.iter_mut().flatten() {
            s.cursor = self.base;
            s.missed = 0;
        }
    }

    /// How many events are buffered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aiopg_core::ErrorKind;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Subscribe,
        Unsubscribe(usize),
        Take(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Push),
            1 => Just(Op::Subscribe),
            1 => (0usize..4).prop_map(Op::Unsubscribe),
            4 => (0usize..4).prop_map(Op::Take),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Every subscriber sees, in order, every event from where it started, each missed
        /// one accounted for by a `Lagged` count; the buffer never exceeds its capacity.
        #[test]
        fn nothing_lost_silently(cap in 1usize..8, ops in proptest::collection::vec(op(), 1..200)) {
            let mut ev: Events<u64> = Events::new(cap, "events");
            let mut pushed = 0u64;
            // Per slot: (id, the next event it expects to account for).
            let mut subs: Vec<Option<(usize, u64)>> = vec![None; 4];
            // The first event nobody has accounted for while nobody subscribed.
            let mut unclaimed_from = 0u64;
            let mut live = 0;
            for op in ops {
                match op {
                    Op::Push => {
                        ev.push(pushed);
                        pushed += 1;
                    }
                    Op::Subscribe => {
                        if let Some(slot) = subs.iter().position(Option::is_none) {
                            let id = ev.subscribe();
                            let from = if live == 0 { unclaimed_from } else { pushed };
                            subs[slot] = Some((id, from));
                            live += 1;
                        }
                    }
                    Op::Unsubscribe(k) => {
                        if let Some((id, next)) = subs[k].take() {
                            ev.unsubscribe(id);
                            live -= 1;
                            if live == 0 {
                                unclaimed_from = next;
                            }
                        }
                    }
                    Op::Take(k) => {
                        if let Some((id, next)) = subs[k].as_mut() {
                            match ev.take(*id) {
                                None => prop_assert_eq!(*next, pushed, "events left unseen"),
                                Some(Ok(v)) => {
                                    prop_assert_eq!(v, *next);
                                    *next += 1;
                                }
                                Some(Err(e)) => {
                                    prop_assert_eq!(e.kind(), ErrorKind::Lagged);
                                    let n = e.missed().unwrap();
                                    prop_assert!(n > 0);
                                    *next += n;
                                    prop_assert!(*next < pushed, "lagged past the end");
                                }
                            }
                        }
                    }
                }
                prop_assert!(ev.len() <= cap);
                if live == 0 {
                    // Kept for the next subscriber: the newest, up to capacity.
                    prop_assert!(ev.len() as u64 <= pushed - unclaimed_from);
                }
            }
        }
    }
}
