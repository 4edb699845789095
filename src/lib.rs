//! ringgate: a WebSocket edge proxy for online games.
//!
//! Thread-per-core on monoio (io_uring, epoll fallback); RFC 6455 implemented by hand as sans-I/O
//! state machines in [`ws`]; sessions sharded over cores by user ([`shard`]); game servers reached
//! through the [`upstream`] interface. See docs/architecture.md.

pub mod cli;
pub mod config;
pub mod runtime;
pub mod shard;
pub mod upstream;
pub mod ws;

#[cfg(test)]
mod test_rng;
