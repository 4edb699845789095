//! Thin, checked wrappers over the few socket syscalls the drivers issue themselves.
//!
//! Owns every `unsafe` block that talks to the kernel about sockets. Must never block: every fd
//! passed here is nonblocking, and waiting for readiness is the runtime's job.
//!
//! Descriptors are taken as `BorrowedFd`, so the type system keeps each one open for the call; the
//! monoio sockets, which own their descriptors but do not implement `AsFd`, are borrowed through
//! [`fd`].
//!
//! The per-message calls (`recv`, `send`, `sendmsg`) go through rustix's raw syscalls: libc's are
//! thread cancellation points, and switching cancellation on and off around each call is measurable
//! at game-sized messages (docs/benchmarks.md).

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// A monoio socket's descriptor, borrowed for as long as the socket is.
pub fn fd<S: OwnsFd>(socket: &S) -> BorrowedFd<'_> {
    // SAFETY: implementors of `OwnsFd` own their descriptor and close it only on drop, so it stays
    // open while `socket` is borrowed.
    unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) }
}

/// Socket types that own their descriptor (monoio's, which implement `AsRawFd` but not `AsFd`).
///
/// # Safety
/// The descriptor `as_raw_fd` returns must stay open for as long as the value is borrowed.
pub unsafe trait OwnsFd: AsRawFd {}
// SAFETY: monoio's sockets own their descriptor and close it when the last handle drops.
unsafe impl OwnsFd for monoio::net::TcpStream {}
// SAFETY: as above.
unsafe impl OwnsFd for monoio::net::TcpListener {}

/// Makes the socket nonblocking and disables Nagle: the drivers batch writes themselves.
pub fn prepare_client_socket(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: plain fcntl/setsockopt on an open fd; arguments are valid for the calls.
    unsafe {
        if libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK | libc::O_RDWR) < 0 {
            return Err(io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `TCP_NOTSENT_LOWAT`: the socket takes new bytes, and reports writable, only while fewer than
/// `bytes` of what it was given are still unsent, so the rest stays with the caller.
pub fn set_notsent_lowat(fd: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt with a correctly sized int on an open fd.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Result of one nonblocking read.
pub enum ReadOutcome {
    Data(usize),
    WouldBlock,
    Eof,
}

/// Reads a socket into the spare capacity of `buf`, extending its length by what arrived. `recv`,
/// not `read`: a socket gains nothing from the file layer `read` passes through.
pub fn read_into(fd: BorrowedFd<'_>, buf: &mut bytes::BytesMut) -> io::Result<ReadOutcome> {
    read_at_most(fd, buf, usize::MAX)
}

/// [`read_into`], taking at most `max` bytes.
pub fn read_at_most(
    fd: BorrowedFd<'_>,
    buf: &mut bytes::BytesMut,
    max: usize,
) -> io::Result<ReadOutcome> {
    let spare = buf.spare_capacity_mut();
    let take = spare.len().min(max);
    let spare = &mut spare[..take];
    if spare.is_empty() {
        return Ok(ReadOutcome::Data(0));
    }
    loop {
        match rustix::net::recv(fd, &mut *spare, rustix::net::RecvFlags::empty()) {
            Ok((_, 0)) => return Ok(ReadOutcome::Eof),
            Ok((got, _)) => {
                let n = got.0.len();
                // SAFETY: recv(2) just initialised these n bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(ReadOutcome::Data(n));
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(ReadOutcome::WouldBlock),
            Err(e) => return Err(e.into()),
        }
    }
}

/// One `sendmsg` (or `send`, for one slice) of the given slices; returns bytes written, or None when
/// the socket is full.
pub fn send_vectored(fd: BorrowedFd<'_>, slices: &[IoSlice<'_>]) -> io::Result<Option<usize>> {
    use rustix::net::SendFlags;
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    loop {
        let sent = match slices {
            [] => return Ok(Some(0)),
            // One slice (the usual case once small pieces are coalesced): send(2) spares the
            // kernel copying in a message header and an iovec array.
            [one] => rustix::net::send(fd, one, flags),
            _ => {
                let mut control = rustix::net::SendAncillaryBuffer::default();
                rustix::net::sendmsg(fd, slices, &mut control, flags)
            }
        };
        match sent {
            Ok(n) => return Ok(Some(n)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `shutdown(2)`; errors (the peer already gone) do not matter to callers.
pub fn shutdown(fd: BorrowedFd<'_>, how: libc::c_int) {
    // SAFETY: shutdown on an open fd.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), how);
    }
}

/// Makes the next close send a RST and drop unsent data: used for peers that stopped answering,
/// so their kernel buffers are freed at once instead of lingering in FIN_WAIT.
pub fn set_linger_zero(fd: impl AsFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A nonblocking `accept4(2)`: the client waiting right now, if any. Used only to turn clients away
/// while out of descriptors, so it must never wait for one to arrive.
pub fn accept_now(listener: BorrowedFd<'_>) -> io::Result<Option<std::os::fd::OwnedFd>> {
    loop {
        // SAFETY: accept4 with null address pointers is valid; a returned fd is ours to own.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 just returned this fd and nothing else owns it.
            return Ok(Some(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// A new epoll instance (close-on-exec).
pub fn epoll_create() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: epoll_create1 takes no pointers; a returned fd is ours to own.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Adds `fd` to the epoll instance `ep` with the given events, tagged with `token`.
pub fn epoll_add(
    ep: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    events: u32,
    token: u64,
) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The events ready on `ep` right now (never waits); how many of `events` were filled.
pub fn epoll_ready(ep: BorrowedFd<'_>, events: &mut [libc::epoll_event]) -> usize {
    let max = events.len().min(i32::MAX as usize) as i32;
    loop {
        // SAFETY: the kernel writes at most `max` entries into `events`, which we own.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), max, 0) };
        if n >= 0 {
            return n as usize;
        }
        // Only EINTR is possible with a valid fd and buffer; anything else means nothing is ready.
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return 0;
        }
    }
}
