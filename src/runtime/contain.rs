//! Panic containment for a core's tasks: a bug reached by one peer's bytes ends that peer's
//! connection (or that link), never the core with every session on it.
//!
//! Owns nothing but the unwinding boundary. Callers say what a panic releases; the data structures
//! a panic may leave half-updated are per connection or per link, which is what they release.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs `f`, and returns `None` if it panicked (the panic has been logged by the panic hook).
pub fn catch<R>(f: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

/// Runs a connection's task so that a panic in it (a bug reached by some peer's bytes) ends that
/// one connection: `on_panic` releases what the task held, and the core and its other connections
/// carry on.
pub struct Contained<F, P: FnOnce()> {
    fut: F,
    on_panic: Option<P>,
}

impl<F, P: FnOnce()> Contained<F, P> {
    pub fn new(fut: F, on_panic: P) -> Self {
        Contained {
            fut,
            on_panic: Some(on_panic),
        }
    }
}

impl<F: Future<Output = ()>, P: FnOnce()> Future for Contained<F, P> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: `fut` is structurally pinned: it is never moved out of `self` or replaced, and
        // `on_panic` is never pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                if let Some(release) = this.on_panic.take() {
                    release();
                }
                Poll::Ready(())
            }
        }
    }
}

/// A future that reports a panic in `fut` as `None` instead of unwinding into its caller.
pub struct Caught<F> {
    fut: F,
}

impl<F> Caught<F> {
    pub fn new(fut: F) -> Self {
        Caught { fut }
    }
}

impl<F: Future> Future for Caught<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        // SAFETY: `fut` is structurally pinned: it is never moved out of `self` or replaced.
        let fut = unsafe { self.map_unchecked_mut(|c| &mut c.fut) };
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Some(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Contained;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn a_panicking_task_is_contained_and_its_siblings_run_on() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let (released, sibling_done) = rt.block_on(async {
            let released = Rc::new(Cell::new(false));
            let r = released.clone();
            let bad = monoio::spawn(Contained::new(
                async {
                    monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                    let peer_bytes: &[u8] = &[];
                    // An out-of-bounds index stands in for any bug a peer might reach.
                    let _ = peer_bytes[usize::from(peer_bytes.is_empty())];
                },
                move || r.set(true),
            ));
            let sibling = monoio::spawn(async {
                monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                true
            });
            bad.await;
            (released.get(), sibling.await)
        });
        assert!(released, "on_panic was not called");
        assert!(sibling_done, "the sibling task did not complete");
    }
}
