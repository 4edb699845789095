//! The in-process echo game server: every message goes back to its sender as it came (text stays
//! text). It is what `ringgate demo` runs behind the proxy, through the same [`Upstream`] interface
//! a real game server link uses.
//!
//! Owns no state: a reply is the very `Bytes` the client sent, so the echo path copies nothing.

use std::rc::Rc;

use bytes::Bytes;

use crate::runtime::{Core, Session};
use crate::upstream::{Unavailable, Upstream};
use crate::ws::{OpCode, UpgradeRequest};

#[derive(Default)]
pub struct Echo;

impl Upstream for Echo {
    fn admit(&self, _core: &Core, _req: &UpgradeRequest) -> Result<(), Unavailable> {
        Ok(())
    }

    fn opened(&self, _core: &Rc<Core>, _session: &Rc<Session>, _req: &UpgradeRequest) {}

    fn data(&self, core: &Rc<Core>, session: &Rc<Session>, text: bool, payload: Bytes) {
        let opcode = if text { OpCode::Text } else { OpCode::Binary };
        core.send(session, opcode, payload);
    }

    fn closed(&self, _core: &Rc<Core>, _session: &Rc<Session>, _code: u16) {}
}
