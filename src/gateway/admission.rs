//! Admission: whether a connection may be held at all, and whether a valid upgrade request may
//! become a session. The one place for checks before the 101 response.
//!
//! Owns the process-wide connection budget (`max_connections`) and the refusals decided at the
//! upgrade (shutting down, no game server reachable). Never reads a socket and never keeps
//! per-connection state: a [`Permit`] travels with the connection instead.
//!
//! The budget is the one counter the cores share. Sessions are sharded by user, so a per-core share
//! would shed on one core while the process still had room; one atomic add when a connection is
//! accepted and one subtraction when it is released (never per message) buys an exact limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Client connections held by the process (handshaking and upgraded), against a limit.
#[derive(Clone)]
pub struct Budget {
    held: Arc<AtomicUsize>,
    max: usize,
}

/// One connection's place in the [`Budget`]; released when dropped, unless [`Permit::keep`] hands
/// it to a session (which releases it through [`Budget::release`] when it ends).
pub struct Permit(Budget);

impl Budget {
    pub fn new(max: usize) -> Budget {
        Budget {
            held: Arc::new(AtomicUsize::new(0)),
            max: max.max(1),
        }
    }

    /// A place for one more connection, or how many are held if there is none.
    pub fn admit(&self) -> Result<Permit, usize> {
        let before = self.held.fetch_add(1, Ordering::Relaxed);
        if before >= self.max {
            self.held.fetch_sub(1, Ordering::Relaxed);
            return Err(before);
        }
        Ok(Permit(self.clone()))
    }

    /// Gives back the place of a session that ended (one whose permit was kept).
    pub fn release(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Permit {
    /// The connection became a session: its place is now released by the session's end.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Why a valid upgrade request does not become a session; the client gets 503 before its upgrade.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("server shutting down")]
    ShuttingDown,
    #[error("no upstream available")]
    NoUpstream,
}

/// The checks at the upgrade, in order.
pub fn check_upgrade(shutting_down: bool, upstream_up: bool) -> Result<(), Refusal> {
    if shutting_down {
        return Err(Refusal::ShuttingDown);
    }
    if !upstream_up {
        return Err(Refusal::NoUpstream);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_the_process_and_permits_give_back_their_place() {
        let b = Budget::new(2);
        let first = b.admit().unwrap();
        let second = b.admit().unwrap();
        assert_eq!(b.admit().err(), Some(2), "a third connection was admitted");
        drop(first);
        assert_eq!(b.held(), 1);
        second.keep();
        assert_eq!(b.held(), 1, "a kept permit was released");
        let third = b.admit().unwrap();
        assert_eq!(b.held(), 2);
        b.release();
        drop(third);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn permits_of_another_thread_count_in_the_same_budget() {
        let b = Budget::new(10);
        let p = b.admit().unwrap();
        std::thread::spawn(move || drop(p)).join().unwrap();
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn upgrade_refusals_say_why() {
        assert_eq!(check_upgrade(true, true), Err(Refusal::ShuttingDown));
        assert_eq!(check_upgrade(false, false), Err(Refusal::NoUpstream));
        assert_eq!(check_upgrade(false, true), Ok(()));
        assert_eq!(Refusal::NoUpstream.to_string(), "no upstream available");
    }
}
