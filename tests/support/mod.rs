//! The one harness of ringgate's integration tests: every `tests/*.rs` that needs helpers starts
//! with `mod support;` and `use support::*;`.
//!
//! - [`process`]: child processes ([`Proc`]), the echo game server ([`EchoUpstream`]), temporary
//!   config files and one-shot runs of the binary.
//! - [`gateway`]: the gateway under test ([`Gateway`]: `ringgate demo` or `ringgate run`, with or
//!   without a config file, started through [`Launch`]) and its admin endpoint.
//! - [`stats`]: [`Stats`], the admin endpoint's `/stats` and `/sessions` body with accessors.
//! - [`http`]: raw HTTP heads: the upgrade request, a response-head parser, raw upgrades.
//! - [`client`]: the WebSocket client side: a frame builder and a server-frame parser written here,
//!   and [`Client`], a tungstenite client.
//! - [`phases`]: [`Phases`], client threads running a many-client test in lock-step phases.
//! - [`link`]: the game server's side of the upstream link protocol (`tests/link_protocol.rs`).
//!
//! All but `link` are re-exported here; `link` is used by name (`link::read_frame`, `link::Frame`
//! are the link protocol's, beside the WebSocket ones).
//!
//! The raw helpers are written independently of the server's code (only the opcode values come
//! from `ringgate::ws::OpCode`), so that the tests check the wire and not the server's own types;
//! tungstenite is used where a complete, independent client is wanted.
//!
//! Nothing here waits with a fixed sleep for something that signals itself: processes are awaited
//! through their stdout and stderr lines, sockets through blocking reads with timeouts, and state
//! that has no other signal (counters, a link coming up) by polling `/stats` with a deadline.

// Each test file compiles this module into its own test binary and uses only part of it: the
// helpers a given binary does not call would each raise a dead_code warning there.
#![allow(dead_code)]

use std::time::Duration;

pub mod client;
pub mod gateway;
pub mod http;
pub mod link;
pub mod phases;
pub mod process;
pub mod stats;

// Each test binary uses only some of these: the others would be unused imports there.
#[allow(unused_imports)]
pub use {client::*, gateway::*, http::*, phases::*, process::*, stats::*};

/// Read/write timeout of every client socket: a broken server fails a test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process may take to print its start-up lines.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit once signalled (tests that want less pass their own).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long links may take to come up (or go down) as seen in `/stats`, and a log line to appear.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval of `/stats` for state that has no other signal.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
