//! Single-thread wake-up primitives for tasks of one core.
//!
//! Owns nothing but wakers. Never crosses threads (`!Send` by construction); cross-core signals go
//! through the core's message channel instead.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// A one-shot flag many tasks can wait on (shutdown, "no sessions left").
///
/// Each waiting future owns a slot and frees it when dropped, so a loop that `select!`s on
/// `wait()` once per iteration (the accept loop: once per connection) does not pile up wakers.
#[derive(Default)]
pub struct Event {
    set: Cell<bool>,
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Event {
    pub fn set(&self) {
        if !self.set.replace(true) {
            let wakers: Vec<Waker> = self
                .slots
                .borrow_mut()
                .iter_mut()
                .filter_map(Option::take)
                .collect();
            for w in wakers {
                w.wake();
            }
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    pub fn wait(&self) -> Wait<'_> {
        Wait {
            event: self,
            slot: None,
        }
    }

    /// Slots in use: what the waiting futures alive right now hold (a test checks it stays small).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.slots.borrow().len() - self.free.borrow().len()
    }
}

/// The future of [`Event::wait`].
pub struct Wait<'a> {
    event: &'a Event,
    slot: Option<usize>,
}

impl std::future::Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let ev = self.event;
        if ev.set.get() {
            return Poll::Ready(());
        }
        let mut slots = ev.slots.borrow_mut();
        match self.slot {
            Some(i) => {
                if let Some(s) = slots.get_mut(i) {
                    *s = Some(cx.waker().clone());
                }
            }
            None => {
                let i = match ev.free.borrow_mut().pop() {
                    Some(i) => i,
                    None => {
                        slots.push(None);
                        slots.len() - 1
                    }
                };
                if let Some(s) = slots.get_mut(i) {
                    *s = Some(cx.waker().clone());
                }
                drop(slots);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            if let Some(s) = self.event.slots.borrow_mut().get_mut(i) {
                *s = None;
            }
            self.event.free.borrow_mut().push(i);
        }
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

#[cfg(test)]
mod tests {
    use super::Event;

    #[test]
    fn dropped_waits_free_their_slot() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let event = std::rc::Rc::new(Event::default());
        rt.block_on(async {
            // The accept loop's pattern: a fresh wait raced against something else, many times.
            for _ in 0..1_000 {
                monoio::select! {
                    _ = event.wait() => unreachable!(),
                    _ = monoio::time::sleep(std::time::Duration::from_nanos(1)) => {},
                }
            }
        });
        assert_eq!(event.waiting(), 0, "dropped waits kept their wakers");
        assert!(event.slots.borrow().len() <= 2);
        // And a wait still works.
        let e = event.clone();
        let done = rt.block_on(async move {
            let waiter = monoio::spawn({
                let e = e.clone();
                async move {
                    e.wait().await;
                    true
                }
            });
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            e.set();
            waiter.await
        });
        assert!(done);
    }
}
