//! Single-thread wake-up primitives for tasks of one core.
//!
//! Owns nothing but wakers. Never crosses threads (`!Send` by construction); cross-core signals go
//! through the core's message channel instead.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// A one-shot flag many tasks can wait on (shutdown, "no sessions left").
#[derive(Default)]
pub struct Event {
    set: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Event {
    pub fn set(&self) {
        if !self.set.replace(true) {
            for w in self.waiters.take() {
                w.wake();
            }
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.get() {
                Poll::Ready(())
            } else {
                let mut waiters = self.waiters.borrow_mut();
                if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}

/// Wakes one long-lived task; a notification sent while it runs is kept as a permit.
#[derive(Default)]
pub struct Notify {
    permit: Cell<bool>,
    waiter: Cell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.permit.set(true);
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }

    pub async fn notified(&self) {
        poll_fn(|cx| {
            if self.permit.replace(false) {
                Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// A gate drivers wait at while it is shut (a congested upstream link); opening it wakes them all.
#[derive(Default)]
pub struct Gate {
    shut: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Gate {
    pub fn is_shut(&self) -> bool {
        self.shut.get()
    }

    pub fn shut(&self) {
        self.shut.set(true);
    }

    pub fn open(&self) {
        if self.shut.replace(false) {
            for w in self.waiters.take() {
                w.wake();
            }
        }
    }

    /// Registers a waiter; the caller re-checks `is_shut` when woken.
    pub fn register(&self, waker: &Waker) {
        self.waiters.borrow_mut().push(waker.clone());
    }
}

/// Counts tasks down to zero, then sets `done` (each link's first connect attempt, at start).
pub struct Countdown {
    left: Cell<usize>,
    pub done: Event,
}

impl Countdown {
    pub fn new(n: usize) -> Countdown {
        let c = Countdown {
            left: Cell::new(n),
            done: Event::default(),
        };
        if n == 0 {
            c.done.set();
        }
        c
    }

    pub fn tick(&self) {
        let left = self.left.get().saturating_sub(1);
        self.left.set(left);
        if left == 0 {
            self.done.set();
        }
    }
}
