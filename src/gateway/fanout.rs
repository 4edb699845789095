//! Fan-out (protocol version 2): one message from a game server queued to many sessions of the
//! core, under the slow-member policy each joined its group with.
//!
//! Owns the application of the policies `close`, `drop` and `latest` (docs/protocol.md,
//! "Fan-out"). The WebSocket frame is built once per message and core (`ws::encode_server_frame`,
//! header and payload in one buffer), and every member's queue holds a reference to it: no
//! member costs a copy or a framing of its own, and N slow members hold one message plus a queue
//! slot each. Never decides who the members are (the link machine does) and never writes to a
//! socket (the flusher does).

use std::rc::Rc;

use bytes::Bytes;

use crate::gateway::conn::{flag, Conn};
use crate::gateway::core::{bump, Core};
use crate::link::Fanout;
use crate::protocol::Policy;
use crate::ws::{encode_server_frame, OpCode};

impl Core {
    /// Queues one message to every target of a PUBLISH, BROADCAST or MULTICAST.
    pub fn fan_out(&self, f: Fanout<Rc<Conn>>) {
        bump(&self.counters.fanouts);
        if f.targets.is_empty() {
            return;
        }
        let opcode = if f.text { OpCode::Text } else { OpCode::Binary };
        let frame = encode_server_frame(opcode, &f.payload);
        for (c, policy) in &f.targets {
            self.send_member(c, &frame, *policy, f.group);
        }
    }

    fn send_member(&self, c: &Rc<Conn>, frame: &Bytes, policy: Policy, group: u32) {
        let mut st = c.state.borrow_mut();
        match policy {
            // The rule of every message to a client: past its backlog, it is closed with 1008.
            Policy::Close => self.send_on(c, &mut st.session, |c| c.push_raw(frame.clone())),
            Policy::Drop => {
                if c.queued() > self.settings.max_client_backlog {
                    bump(&self.counters.fanout_dropped);
                } else {
                    self.send_on(c, &mut st.session, |c| c.push_raw(frame.clone()));
                }
            }
            // At most one queued message per `latest` group: bounded without closing anyone.
            Policy::Latest => {
                if !st.session.may_send() || c.has(flag::BROKEN) {
                    return;
                }
                if c.push_latest(frame.clone(), group) {
                    bump(&self.counters.fanout_replaced);
                }
                bump(&self.counters.messages_out);
                self.mark_dirty(c);
            }
        }
    }
}
