//! ringgate: a WebSocket edge proxy for online games.
//!
//! Layers, each importing only those below it (docs/architecture.md):
//! - codecs, pure: [`ws`] (RFC 6455, by hand), [`protocol`] (the upstream link protocol) and
//!   [`proxy_protocol`] (the PROXY header of a load balancer);
//! - state machines, pure: [`session`] (one client session) and [`link`] (one upstream link);
//!   [`auth`], who a client is (finding and verifying its token), pure but for reading key files;
//! - [`runtime`]: per-core machinery with no protocol knowledge (syscalls, queues, readiness,
//!   timers, the session slab), on monoio (io_uring, epoll fallback);
//! - [`gateway`]: the I/O drivers that apply the state machines to sockets, thread per core, with
//!   sessions sharded over cores by user ([`shard`]);
//! - [`echo_server`]: the echo game server, a separate program on the other side of the protocol;
//! - [`cli`] and [`config`]: the process, wiring it together.

pub mod auth;
pub mod cli;
pub mod config;
pub mod echo_server;
pub mod gateway;
pub mod link;
pub mod protocol;
pub mod proxy_protocol;
pub mod runtime;
pub mod session;
pub mod shard;
pub mod ws;

#[cfg(test)]
mod test_rng;
