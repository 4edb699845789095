//! A core's budget for the bytes of messages still arriving (partial frames and fragments): what
//! the core holds in total, which connections hold any, and the gate that holds the biggest of
//! them back while the core is under pressure.
//!
//! The policy (`max_inflight_bytes`, docs/architecture.md, "Messages still arriving"):
//! from three quarters of the budget on, a connection holding at least its fair share of the budget
//! is not read until the core is back under half of it; past the whole budget, or at the next
//! heartbeat once a connection is held back, the slowest holders are cut. Owns the accounting only: never reads or closes a
//! connection itself (the receive path asks whether to read, `Core::shed` whom to cut).

use std::cell::{Cell, RefCell};

use rustc_hash::FxHashSet;

use crate::runtime::event::Gate;
use crate::runtime::registry::Key;

pub struct Inflight {
    total: Cell<usize>,
    limit: usize,
    /// Connections holding part of a message. Few at any moment in a healthy game (messages
    /// complete within a read), so the once-a-second sweep over them costs next to nothing.
    holders: RefCell<FxHashSet<Key>>,
    /// Shut from `pause_mark` until the core is back under `resume_mark`.
    gate: Gate,
    /// Whether a connection has been held back since the gate last shut.
    holding_back: Cell<bool>,
}

impl Inflight {
    pub fn new(limit: usize) -> Inflight {
        Inflight {
            total: Cell::new(0),
            limit: limit.max(1),
            holders: RefCell::default(),
            gate: Gate::default(),
            holding_back: Cell::new(false),
        }
    }

    pub fn total(&self) -> usize {
        self.total.get()
    }

    fn pause_mark(&self) -> usize {
        self.limit - self.limit / 4
    }

    /// Where shedding stops: under it the gate opens again.
    pub fn resume_mark(&self) -> usize {
        self.limit / 2
    }

    /// A connection went from holding `before` bytes to `after`.
    pub fn update(&self, key: Key, before: usize, after: usize) {
        if before == after {
            return;
        }
        let total = self.total.get().saturating_sub(before) + after;
        self.total.set(total);
        match (before, after) {
            (0, _) => {
                self.holders.borrow_mut().insert(key);
            }
            (_, 0) => {
                self.holders.borrow_mut().remove(&key);
            }
            _ => {}
        }
        if total >= self.pause_mark() {
            self.gate.shut();
        } else if total < self.resume_mark() {
            self.gate.open();
            self.holding_back.set(false);
        }
    }

    /// Whether a connection holding `held` bytes waits at the gate instead of being read: while
    /// the core is under pressure, those holding at least their fair share of the budget do.
    /// Connections holding nothing or little read on, since their messages most likely complete
    /// within a read or two and free what they hold.
    /// (`held` is asked for only then: the common case, no pressure, costs one load.)
    pub fn holds_back(&self, held: impl FnOnce() -> usize) -> bool {
        if !self.gate.is_shut() {
            return false;
        }
        let held = held();
        if held == 0 {
            return false;
        }
        let holders = self.holders.borrow().len().max(1);
        let back = held >= self.limit / holders;
        if back {
            self.holding_back.set(true);
        }
        back
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Past the whole budget: the slowest holders must be cut now.
    pub fn over_limit(&self) -> bool {
        self.total.get() > self.limit
    }

    /// Holding connections back: they cannot complete until the core is under half its budget
    /// again, so at the next heartbeat the slowest holders are cut.
    pub fn holding_back(&self) -> bool {
        self.gate.is_shut() && self.holding_back.get()
    }

    pub fn holders(&self) -> Vec<Key> {
        self.holders.borrow().iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(slot: u32) -> Key {
        Key {
            slot,
            generation: 0,
        }
    }

    #[test]
    fn the_gate_shuts_at_three_quarters_and_opens_under_half() {
        let b = Inflight::new(1000);
        b.update(key(1), 0, 700);
        assert!(!b.gate().is_shut());
        b.update(key(2), 0, 60);
        assert!(b.gate().is_shut(), "760 >= 750");
        assert!(!b.holding_back(), "pressure alone cuts nobody");
        assert!(b.holds_back(|| 700));
        assert!(b.holding_back());
        b.update(key(1), 700, 450);
        assert!(b.gate().is_shut(), "510 is not under 500");
        b.update(key(2), 60, 0);
        assert!(!b.gate().is_shut());
        assert!(!b.holding_back());
        assert_eq!(b.total(), 450);
        assert_eq!(b.holders(), vec![key(1)]);
    }

    #[test]
    fn only_holders_of_their_fair_share_are_held_back() {
        let b = Inflight::new(1000);
        assert!(!b.holds_back(|| 900), "no pressure, nobody waits");
        b.update(key(1), 0, 760);
        b.update(key(2), 0, 10);
        // Two holders: a fair share is 500 bytes.
        assert!(b.holds_back(|| 760));
        assert!(!b.holds_back(|| 10));
        assert!(
            !b.holds_back(|| 0),
            "a connection holding nothing is always read"
        );
    }

    #[test]
    fn over_limit_is_past_the_whole_budget() {
        let b = Inflight::new(1000);
        b.update(key(1), 0, 1000);
        assert!(!b.over_limit());
        b.update(key(1), 1000, 1001);
        assert!(b.over_limit());
        b.update(key(1), 1001, 0);
        assert_eq!((b.total(), b.holders().len()), (0, 0));
    }
}
