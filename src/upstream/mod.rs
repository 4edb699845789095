//! The game-server side of a core: where client messages go and where replies come from.
//!
//! Owns the interface between a core's sessions and its upstreams. Implementations run on the core
//! they were built for and must never block or touch another core's sessions.

use std::rc::Rc;

use bytes::Bytes;

use crate::runtime::{Core, Session};
use crate::ws::UpgradeRequest;

pub mod echo;

/// Why no session can be placed now; the client gets HTTP 503 before its upgrade.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("no upstream is reachable")]
    NoUpstream,
}

/// One core's upstream. Every call happens on that core's thread.
pub trait Upstream {
    /// Called before the 101 response: can this request be served now?
    fn admit(&self, core: &Core, req: &UpgradeRequest) -> Result<(), Unavailable>;
    /// The session is upgraded and registered.
    fn opened(&self, core: &Rc<Core>, session: &Rc<Session>, req: &UpgradeRequest);
    /// A complete message from the client, in order.
    fn data(&self, core: &Rc<Core>, session: &Rc<Session>, text: bool, payload: Bytes);
    /// The session ended with this close code (1006 when the client vanished without a close).
    fn closed(&self, core: &Rc<Core>, session: &Rc<Session>, code: u16);
}

/// Builds one upstream per core: cores share nothing, so each gets its own.
pub type UpstreamFactory = std::sync::Arc<dyn Fn(usize) -> Rc<dyn Upstream> + Send + Sync>;

/// Checks an upstream address of the form `HOST:PORT`.
pub fn parse_address(addr: &str) -> Result<(), String> {
    let (host, port) = addr.rsplit_once(':').ok_or("expected HOST:PORT")?;
    if host.is_empty() {
        return Err("empty host".into());
    }
    port.parse::<u16>()
        .map_err(|_| "port must be a number from 1 to 65535".to_string())
        .and_then(|p| if p == 0 { Err("port 0".into()) } else { Ok(()) })
}
