//! Thin wrappers over the Linux system calls the workers use: nonblocking sockets bound to a chosen
//! loopback source address, epoll, eventfd, timerfd, and the `/proc` and `getrusage` readings used
//! for CPU and memory figures.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;

/// CLOCK_MONOTONIC in nanoseconds: the clock every payload timestamp uses.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Raises the soft open-files limit to the hard limit and returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The loopback source address for the `key`-th connection: 127.0.0.2, 127.0.0.3, ... with
/// `per_source` connections on each.
pub fn source_addr(key: u64, per_source: u64) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 2));
    // Stay inside 127.0.0.0/8 whatever the key.
    let offset = ((key / per_source.max(1)) % 0x00ff_fff0) as u32;
    Ipv4Addr::from(base + offset)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &val as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Opens a nonblocking TCP socket, binds it to `source` (port chosen at connect time, per 4-tuple,
/// thanks to `IP_BIND_ADDRESS_NO_PORT`) and starts connecting to `target`. The connection completes
/// asynchronously: wait for writability, then check [`take_error`].
pub fn connect_nonblocking(target: SocketAddr, source: Option<IpAddr>) -> io::Result<RawFd> {
    let family = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call.
    let fd = cvt(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    let result = (|| {
        setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        if let Some(src) = source {
            if target.is_ipv4() {
                setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
            }
            let (sa, len) = sockaddr(SocketAddr::new(src, 0));
            // SAFETY: `sa` holds a valid address of length `len`.
            cvt(unsafe { libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) })?;
        }
        let (sa, len) = sockaddr(target);
        // SAFETY: `sa` holds a valid address of length `len`.
        let ret = unsafe { libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(err);
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(fd),
        Err(e) => {
            close(fd);
            Err(e)
        }
    }
}

/// The pending error of a socket (`SO_ERROR`), 0 if none.
pub fn take_error(fd: RawFd) -> i32 {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: passes a pointer to a live c_int and its size.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut val as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if ret < 0 {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        val
    }
}

pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and never uses it again.
    unsafe { libc::close(fd) };
}

/// Closes with `SO_LINGER` 0: a reset, which frees the 4-tuple at once (no TIME_WAIT).
pub fn abort(fd: RawFd) {
    // SAFETY: the caller owns `fd`, open until the close below.
    ringgate::runtime::set_linger_zero(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) });
    close(fd);
}

pub enum IoResult {
    Done(usize),
    WouldBlock,
    Eof,
    Err,
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> IoResult {
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n == 0 {
            return IoResult::Eof;
        }
        if let Some(r) = outcome(n) {
            return r;
        }
    }
}

pub fn send(fd: RawFd, buf: &[u8]) -> IoResult {
    loop {
        // SAFETY: `buf` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if let Some(r) = outcome(n) {
            return r;
        }
    }
}

/// What a read or send returned; None when it was interrupted and is to be retried.
fn outcome(n: isize) -> Option<IoResult> {
    if n >= 0 {
        return Some(IoResult::Done(n as usize));
    }
    match io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
    {
        libc::EINTR => None,
        libc::EAGAIN => Some(IoResult::WouldBlock),
        _ => Some(IoResult::Err),
    }
}

/// An epoll instance, edge-triggered registrations keyed by a u64 token.
pub struct Epoll {
    fd: RawFd,
}

pub const EV_IN: u32 = libc::EPOLLIN as u32;
pub const EV_OUT: u32 = libc::EPOLLOUT as u32;
pub const EV_ERR: u32 = libc::EPOLLERR as u32;
pub const EV_HUP: u32 = libc::EPOLLHUP as u32;
pub const EV_RDHUP: u32 = libc::EPOLLRDHUP as u32;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain epoll_create1(2) call.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll { fd })
    }

    /// Registers `fd` edge-triggered for input, output and peer hang-up.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.add_with(fd, token, EV_IN | EV_OUT | EV_RDHUP | libc::EPOLLET as u32)
    }

    pub fn add_with(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event.
        cvt(unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(drop)
    }

    /// Waits up to `timeout_ms` and returns how many entries of `events` were filled.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        // SAFETY: `events` is valid for writes of its length.
        let n = unsafe {
            libc::epoll_wait(
                self.fd,
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                timeout_ms,
            )
        };
        n.max(0) as usize
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        close(self.fd);
    }
}

/// A nonblocking eventfd: the controller writes to it to wake a worker blocked in epoll_wait.
pub fn eventfd() -> io::Result<RawFd> {
    // SAFETY: plain eventfd(2) call.
    cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })
}

pub fn eventfd_wake(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64.
    unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
}

/// Empties an eventfd or timerfd (both hold an 8-byte counter).
pub fn drain_counter(fd: RawFd) {
    let mut val: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64.
    unsafe { libc::read(fd, &mut val as *mut u64 as *mut libc::c_void, 8) };
}

/// A nonblocking CLOCK_MONOTONIC timerfd.
pub fn timerfd() -> io::Result<RawFd> {
    // SAFETY: plain timerfd_create(2) call.
    cvt(unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    })
}

/// Arms `fd` to fire once at the absolute monotonic time `at_ns` (0 disarms).
pub fn timerfd_set(fd: RawFd, at_ns: u64) {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
        },
    };
    // SAFETY: `spec` is a valid itimerspec; the old value is not requested.
    unsafe { libc::timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
}

/// CPU time (user + system) of this process, all threads, in nanoseconds.
pub fn self_cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is a valid value, and getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid for writes.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time of process `pid`, all threads, in nanoseconds, from `/proc/PID/stat`: user (utime)
/// and kernel (stime) apart, since for a proxy the kernel's share is what no user-space work can
/// remove.
pub fn proc_cpu_ns(pid: u32) -> Option<ProcCpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the full line are utime and stime; `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: plain sysconf(3) call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ProcCpu {
        user_ns: utime * 1_000_000_000 / hz,
        kernel_ns: stime * 1_000_000_000 / hz,
    })
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ProcCpu {
    pub user_ns: u64,
    pub kernel_ns: u64,
}

impl ProcCpu {
    pub fn total_ns(&self) -> u64 {
        self.user_ns + self.kernel_ns
    }
}

impl std::iter::Sum for ProcCpu {
    fn sum<I: Iterator<Item = ProcCpu>>(iter: I) -> ProcCpu {
        iter.fold(ProcCpu::default(), |a, b| ProcCpu {
            user_ns: a.user_ns + b.user_ns,
            kernel_ns: a.kernel_ns + b.kernel_ns,
        })
    }
}

/// CPU time used by the whole machine (all CPUs, everything but idle and iowait), in nanoseconds,
/// from `/proc/stat`.
pub fn machine_busy_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?;
    // SAFETY: plain sysconf(3) call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(busy * 1_000_000_000 / hz)
}

/// VmRSS of process `pid` in KiB, from `/proc/PID/status`.
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_rotate_over_loopback() {
        assert_eq!(source_addr(0, 20000), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(19999, 20000), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(20000, 20000), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(source_addr(254 * 20000, 20000), Ipv4Addr::new(127, 0, 1, 0));
        assert!(source_addr(u64::MAX, 1).is_loopback());
    }

    #[test]
    fn reads_own_proc_figures() {
        let pid = std::process::id();
        assert!(proc_rss_kib(pid).unwrap() > 0);
        assert!(proc_cpu_ns(pid).is_some());
        assert!(machine_busy_ns().is_some());
    }

    #[test]
    fn kernel_time_is_told_apart_from_user_time() {
        use std::io::Read;
        // Copying from /dev/zero is nearly all kernel work: once 300 ms of it is on the books, the
        // kernel's column must have grown more than the user's. (The other tests of this binary,
        // running beside it in the same process, use less than that in all.)
        let pid = std::process::id();
        let before = proc_cpu_ns(pid).unwrap();
        let mut zero = std::fs::File::open("/dev/zero").unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let started = std::time::Instant::now();
        let after = loop {
            zero.read_exact(&mut buf).unwrap();
            let now = proc_cpu_ns(pid).unwrap();
            if now.kernel_ns - before.kernel_ns >= 300_000_000 {
                break now;
            }
            assert!(started.elapsed().as_secs() < 60, "no kernel time recorded");
        };
        assert!(after.kernel_ns - before.kernel_ns > after.user_ns - before.user_ns);
    }
}
