//! The heartbeat: once a second the core's clock advances and the timer wheel's due entries are
//! handed to their sessions, whose decisions (ping, close as idle, reset after an unanswered close)
//! are applied here, and the in-flight budget is swept (`Core::sweep_inflight`).
//!
//! Owns the ticker task. Decides nothing itself (`Session::on_tick` does) and holds no timer per
//! connection: one wheel entry each (`runtime::wheel`).

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use crate::gateway::conn::{flag, Conn};
use crate::gateway::core::{bump, Core};
use crate::runtime::contain::catch;
use crate::session::Tick;
use crate::ws::OpCode;

impl Core {
    /// Runs for the life of the core. A panic while handling one session resets that session only.
    pub async fn ticker(self: Rc<Self>) {
        let mut interval = monoio::time::interval(Duration::from_secs(1));
        loop {
            interval.tick().await;
            let from = self.advance_clock();
            let now = self.now();
            if catch(|| self.sweep_inflight(now)).is_none() {
                // A bug there must not stop the heartbeat: the sweep runs again next second.
                bump(&self.counters.panics);
                tracing::error!("in-flight sweep panicked");
            }
            for t in from + 1..=now {
                let due = self.wheel.borrow_mut().take_due(t, now);
                for key in due {
                    let Some(c) = self.get(key) else { continue };
                    if catch(|| self.heartbeat(&c, now)).is_none() {
                        self.release_after_panic(&c);
                    }
                }
            }
        }
    }

    fn heartbeat(&self, c: &Rc<Conn>, now: u32) {
        let mut st = c.state.borrow_mut();
        let next = match st.session.on_tick(now, &self.settings.timing) {
            Tick::Wait(next) => next,
            Tick::Ping(next) => {
                self.send_on(c, &mut st.session, |c| {
                    c.push_frame(OpCode::Ping, Bytes::new())
                });
                next
            }
            Tick::Idle => {
                bump(&self.counters.idle_timeouts);
                tracing::debug!(session = c.id, "idle timeout");
                // Arms the close deadline's own entry.
                self.close_on(c, &mut st.session, 1001, "idle timeout");
                return;
            }
            Tick::CloseTimedOut => {
                if !c.has(flag::BROKEN) {
                    bump(&self.counters.close_timeouts);
                    tracing::debug!(session = c.id, "close handshake timed out, resetting");
                    self.abort(c);
                }
                return;
            }
            Tick::Retire => return,
        };
        self.wheel.borrow_mut().insert(c.key, next);
    }
}
