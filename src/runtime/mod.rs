//! The per-core machinery under the gateway: a monoio runtime per worker thread, and what a core
//! uses to move bytes and keep time with no protocol knowledge: socket syscalls ([`sys`]), outbound
//! queues ([`outq`]), readiness ([`poller`]), the session slab ([`registry`]), the timer wheel
//! ([`wheel`]), wake-up primitives ([`event`]) and panic containment ([`contain`]).
//!
//! Never imports the gateway, the state machines or the codecs: everything here is about sockets,
//! memory and time, so the layers above can be reasoned about without it and it without them.

pub mod contain;
pub mod event;
pub mod outq;
pub mod poller;
pub mod registry;
pub mod send_batch;
pub mod sys;
pub mod throttle;
pub mod wheel;

pub use self::outq::{Flush, OutQueue};
pub use self::registry::Key;
pub use self::sys::{set_linger_zero, ReadOutcome};

/// A worker's runtime, and which driver it runs on.
pub enum Runtime {
    Uring(monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>),
    Epoll(monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>),
}

impl Runtime {
    /// io_uring where the kernel allows it (`entries` submission slots), else monoio's epoll driver,
    /// with the reason logged.
    pub fn build(core: usize, entries: u32) -> std::io::Result<Runtime> {
        match uring(core, entries) {
            Ok(rt) => Ok(Runtime::Uring(rt)),
            Err(why) => {
                tracing::warn!(core, reason = %why, "io_uring unavailable, using the epoll driver");
                monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build()
                    .map(Runtime::Epoll)
            }
        }
    }

    /// Runs `main` to completion, telling it the driver's name.
    pub fn block_on<F: std::future::Future>(
        &mut self,
        main: impl FnOnce(&'static str) -> F,
    ) -> F::Output {
        match self {
            Runtime::Uring(rt) => rt.block_on(main("io_uring")),
            Runtime::Epoll(rt) => rt.block_on(main("epoll")),
        }
    }
}

fn uring(
    core: usize,
    entries: u32,
) -> Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>, String> {
    if std::env::var_os("RINGGATE_FORCE_EPOLL").is_some() {
        return Err("RINGGATE_FORCE_EPOLL is set".into());
    }
    if !monoio::utils::detect_uring() {
        return Err(
            "the kernel refused io_uring (old kernel, io_uring_disabled or seccomp)".into(),
        );
    }
    // One ring per thread, only ever submitted to from that thread (SINGLE_ISSUER). With
    // COOP_TASKRUN completions are processed when the thread next enters the kernel instead of
    // interrupting it, which pays at game-sized messages (docs/benchmarks.md). Kernels before 5.19
    // refuse the flags; the plain ring follows.
    let build = |coop: bool| {
        let mut urb = io_uring::IoUring::builder();
        if coop {
            urb.setup_single_issuer().setup_coop_taskrun();
        }
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(urb)
            .enable_timer()
            .build()
    };
    build(true)
        .or_else(|e| {
            tracing::info!(core, error = %e, "io_uring without SINGLE_ISSUER/COOP_TASKRUN");
            build(false)
        })
        .map_err(|e| e.to_string())
}

/// Binds a listening socket that other workers (and processes) can bind too (`SO_REUSEPORT`), so
/// that the kernel spreads connections over them.
pub fn bind_reuseport(
    addr: std::net::SocketAddr,
    backlog: u32,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(s.into())
}
