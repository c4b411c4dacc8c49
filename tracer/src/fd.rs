//! File descriptors of another process: what they are (`/proc/PID/fd`, `/proc/PID/fdinfo`),
//! taking copies of them (`pidfd_getfd`), and what a socket is bound and connected to and how
//! full its queues are.
//!
//! A descriptor taken from another process refers to the *same* open file description: the
//! same socket, pipe, file offset and status flags (pidfd_getfd(2): "the effect is similar to
//! calling dup(2) in the target process"). Reading from it, changing `O_NONBLOCK` on it or
//! modifying an epoll set through it changes what the other process sees. Inspect it, or hand
//! it on; modify it only when the other process will never use it again.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{getpeername, getsockname, SockaddrLike, SockaddrStorage};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::procfs;

/// The error for operation `op` failing with `errno` on descriptor `fd` of process `pid`:
/// a vanished process is [`Error::Gone`], a refusal [`Error::PermissionDenied`], anything
/// else names the descriptor by its `/proc/PID/fd/N` path.
fn fd_error(pid: Pid, fd: RawFd, op: &'static str, errno: Errno) -> Error {
    match errno {
        Errno::ESRCH | Errno::EPERM => Error::sys(pid, op, errno),
        _ => Error::Fd {
            pid,
            fd,
            op,
            source: errno,
        },
    }
}

/// A process file descriptor (pidfd_open(2)): a stable handle on one process that, unlike a
/// pid, can never come to mean another process after the first one exits.
#[derive(Debug)]
pub struct PidFd {
    pid: Pid,
    fd: OwnedFd,
}

impl PidFd {
    /// Opens a pidfd for process `pid` (a thread-group leader). A missing process is
    /// [`Error::Gone`].
    pub fn open(pid: Pid) -> Result<PidFd> {
        // SAFETY: pidfd_open(2) takes a pid and a flags word (0) and returns a new descriptor
        // or -1; no memory is passed.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0u32) };
        if r < 0 {
            return Err(Error::sys(pid, "pidfd_open", Errno::last()));
        }
        // SAFETY: pidfd_open(2) returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(r as RawFd) };
        Ok(PidFd { pid, fd })
    }

    /// The process.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// A duplicate, in this process, of descriptor `target` of the process (pidfd_getfd(2)),
    /// close-on-exec. Needs the right to ptrace the process.
    pub fn get_fd(&self, target: RawFd) -> Result<OwnedFd> {
        // SAFETY: pidfd_getfd(2) takes our pidfd, a descriptor number in the target and a
        // flags word (0), and returns a new descriptor or -1; no memory is passed.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.fd.as_raw_fd(), target, 0u32) };
        if r < 0 {
            return Err(fd_error(self.pid, target, "pidfd_getfd", Errno::last()));
        }
        // SAFETY: pidfd_getfd(2) returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A duplicate of descriptor `target_fd` of process `pid` (see [`PidFd::get_fd`]).
pub fn take_fd(pid: Pid, target_fd: RawFd) -> Result<OwnedFd> {
    PidFd::open(pid)?.get_fd(target_fd)
}

/// How many bytes wait to be read on descriptor `fd` of process `pid` (a socket or a pipe):
/// `FIONREAD` on a duplicate taken with `pidfd_getfd`; nothing of the process changes.
pub fn queued_input(pid: Pid, fd: RawFd) -> Result<usize> {
    let ours = take_fd(pid, fd)?;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at `n`; the
    // descriptor is ours and open.
    let r = unsafe { libc::ioctl(ours.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        return Err(Error::Fd {
            pid,
            fd,
            op: "ioctl(FIONREAD)",
            source: nix::Error::last(),
        });
    }
    Ok(n.max(0) as usize)
}

/// What a descriptor refers to, from `readlink /proc/PID/fd/N`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FdTarget {
    /// A file, directory or device by path.
    Path {
        /// Its path (without the kernel's ` (deleted)` mark).
        path: PathBuf,
        /// The file was unlinked since it was opened (also true of memfds).
        deleted: bool,
    },
    /// A socket (`socket:[INODE]`).
    Socket(u64),
    /// A pipe or FIFO end (`pipe:[INODE]`).
    Pipe(u64),
    /// An anonymous inode: `eventpoll`, `eventfd`, `timerfd`, `signalfd`, `inotify`, `pidfd`,
    /// `io_uring`, ... (the kernel's name, without brackets).
    AnonInode(String),
    /// Anything else (namespace files `net:[...]`, `pidfd:[...]` of newer kernels, ...), verbatim.
    Other(String),
}

impl FdTarget {
    /// Parses the target of a `/proc/PID/fd/N` link.
    pub fn parse(link: &Path) -> FdTarget {
        use std::os::unix::ffi::OsStrExt;
        let bytes = link.as_os_str().as_bytes();
        if bytes.starts_with(b"/") {
            let (path, deleted) = match bytes.strip_suffix(b" (deleted)") {
                Some(p) => (p, true),
                None => (bytes, false),
            };
            return FdTarget::Path {
                path: PathBuf::from(std::ffi::OsStr::from_bytes(path)),
                deleted,
            };
        }
        let text = String::from_utf8_lossy(bytes);
        let inode = |prefix: &str| -> Option<u64> {
            text.strip_prefix(prefix)?
                .strip_prefix('[')?
                .strip_suffix(']')?
                .parse()
                .ok()
        };
        if let Some(i) = inode("socket:") {
            FdTarget::Socket(i)
        } else if let Some(i) = inode("pipe:") {
            FdTarget::Pipe(i)
        } else if let Some(name) = text.strip_prefix("anon_inode:") {
            let name = name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .unwrap_or(name);
            FdTarget::AnonInode(name.to_owned())
        } else {
            FdTarget::Other(text.into_owned())
        }
    }
}

/// One registration of an epoll instance (a `tfd:` line of its fdinfo, see proc(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EpollRegistration {
    /// The descriptor number it was added with, in the process that added it. A registration
    /// is keyed by (file, number): it outlives a `close` of that number if the file stays open
    /// through another descriptor, so check [`Self::ino`] against the descriptor's file.
    pub tfd: RawFd,
    /// The event mask (`EPOLLIN`, `EPOLLET`, ...; the kernel always adds `EPOLLERR|EPOLLHUP`).
    pub events: u32,
    /// The user data word given to `epoll_ctl`, returned with every event.
    pub data: u64,
    /// The registered file's position when the line was printed.
    pub pos: u64,
    /// The registered file's inode number.
    pub ino: u64,
    /// The registered file's device number (the kernel's encoding).
    pub sdev: u64,
}

impl EpollRegistration {
    /// Parses a `tfd:` line: `tfd: N events: HEX data: HEX pos:N ino:HEX sdev:HEX`.
    pub fn parse(line: &str) -> Option<EpollRegistration> {
        let fields = key_values(line);
        let get = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let hex = |k: &str| u64::from_str_radix(get(k)?, 16).ok();
        Some(EpollRegistration {
            tfd: get("tfd")?.parse().ok()?,
            events: u32::try_from(hex("events")?).ok()?,
            data: hex("data")?,
            pos: get("pos").and_then(|v| v.parse().ok()).unwrap_or(0),
            ino: hex("ino").unwrap_or(0),
            sdev: hex("sdev").unwrap_or(0),
        })
    }
}

/// Splits `k1: v1 k2:v2 ...` into pairs; a key is a token ending in `:` (its value is the next
/// token) or a token `key:value`.
fn key_values(line: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut tokens = line.split_whitespace();
    while let Some(t) = tokens.next() {
        if let Some(k) = t.strip_suffix(':') {
            if let Some(v) = tokens.next() {
                out.push((k, v));
            }
        } else if let Some((k, v)) = t.split_once(':') {
            out.push((k, v));
        }
    }
    out
}

/// A descriptor of a process: its number, what it refers to, and `/proc/PID/fdinfo/N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdInfo {
    /// The descriptor number.
    pub fd: RawFd,
    /// What it refers to.
    pub target: FdTarget,
    /// The open file status flags and access mode (`O_RDWR`, `O_APPEND`, `O_NONBLOCK`, ...),
    /// plus `O_CLOEXEC` if the descriptor is close-on-exec.
    pub flags: i32,
    /// The file offset.
    pub pos: u64,
    /// Mount id of the file (`mnt_id:`).
    pub mnt_id: Option<u64>,
    /// Inode number of the file (`ino:`, Linux 5.10+).
    pub ino: Option<u64>,
    /// For an epoll instance, its registrations.
    pub epoll: Vec<EpollRegistration>,
    /// Every other `key: value` line of the fdinfo (e.g. `eventfd-count`, timerfd settings,
    /// `sigmask` of a signalfd), verbatim and in order.
    pub extra: Vec<(String, String)>,
}

impl FdInfo {
    /// Whether the descriptor is closed by `execve`.
    pub fn cloexec(&self) -> bool {
        self.flags & libc::O_CLOEXEC != 0
    }

    /// Whether it is an epoll instance.
    pub fn is_epoll(&self) -> bool {
        self.target == FdTarget::AnonInode("eventpoll".into())
    }

    /// The value of an [`Self::extra`] line.
    pub fn extra(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the text of `/proc/PID/fdinfo/N` into `info`.
fn parse_fdinfo(info: &mut FdInfo, text: &str) -> std::result::Result<(), String> {
    for line in text.lines() {
        if line.starts_with("tfd:") {
            info.epoll
                .push(EpollRegistration::parse(line).ok_or_else(|| format!("line {line:?}"))?);
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let num = |radix| u64::from_str_radix(v, radix).map_err(|_| format!("{k}: {v:?}"));
        match k {
            "pos" => info.pos = num(10)?,
            "flags" => info.flags = num(8)? as i32,
            "mnt_id" => info.mnt_id = Some(num(10)?),
            "ino" => info.ino = Some(num(10)?),
            _ => info.extra.push((k.to_owned(), v.to_owned())),
        }
    }
    Ok(())
}

/// Descriptor `fd` of process `pid`; `Ok(None)` if the process has no such descriptor (now).
pub fn fd_info(pid: Pid, fd: RawFd) -> Result<Option<FdInfo>> {
    let link = PathBuf::from(format!("/proc/{pid}/fd/{fd}"));
    let target = match std::fs::read_link(&link) {
        Ok(t) => FdTarget::parse(&t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return if procfs::exists(pid) {
                Ok(None)
            } else {
                Err(Error::Gone { pid, status: None })
            }
        }
        Err(source) => return Err(Error::Io { path: link, source }),
    };
    let text = match procfs::read_text(pid, &format!("fdinfo/{fd}")) {
        Ok(t) => t,
        // Closed between the two reads.
        Err(Error::Gone { .. }) if procfs::exists(pid) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut info = FdInfo {
        fd,
        target,
        flags: 0,
        pos: 0,
        mnt_id: None,
        ino: None,
        epoll: Vec::new(),
        extra: Vec::new(),
    };
    parse_fdinfo(&mut info, &text).map_err(|detail| Error::Parse {
        pid,
        what: "/proc/PID/fdinfo/N",
        detail: format!("fd {fd}: {detail}"),
    })?;
    Ok(Some(info))
}

/// Every open descriptor of process `pid`, by number.
///
/// A snapshot: a running process may open and close descriptors meanwhile (one closed while
/// we look is left out), so stop it first for a view that stays true.
pub fn list_fds(pid: Pid) -> Result<Vec<FdInfo>> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let entries = std::fs::read_dir(&dir).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            Error::Gone { pid, status: None }
        } else {
            Error::Io { path: dir, source }
        }
    })?;
    let mut fds: Vec<RawFd> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    let mut out = Vec::with_capacity(fds.len());
    for fd in fds {
        if let Some(info) = fd_info(pid, fd)? {
            out.push(info);
        }
    }
    Ok(out)
}

/// A socket's address family (`SO_DOMAIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketDomain {
    /// `AF_INET`.
    Inet,
    /// `AF_INET6`.
    Inet6,
    /// `AF_UNIX`.
    Unix,
    /// `AF_NETLINK`.
    Netlink,
    /// `AF_PACKET`.
    Packet,
    /// Another family, by number.
    Other(i32),
}

/// A socket's type (`SO_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketType {
    /// `SOCK_STREAM`.
    Stream,
    /// `SOCK_DGRAM`.
    Datagram,
    /// `SOCK_SEQPACKET`.
    SeqPacket,
    /// `SOCK_RAW`.
    Raw,
    /// Another type, by number.
    Other(i32),
}

/// A Unix domain socket address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UnixAddr {
    /// Bound to a filesystem path.
    Path(PathBuf),
    /// Bound to a name in the abstract namespace (without the leading NUL).
    Abstract(Vec<u8>),
    /// Not bound (e.g. either end of a `socketpair`, or an unbound client).
    Unnamed,
}

/// A socket address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SockAddr {
    /// An IPv4 or IPv6 address and port.
    Inet(std::net::SocketAddr),
    /// A Unix domain address.
    Unix(UnixAddr),
    /// Another family, by number.
    Other(i32),
}

impl SockAddr {
    fn from_storage(s: &SockaddrStorage) -> SockAddr {
        if let Some(a) = s.as_sockaddr_in() {
            SockAddr::Inet(std::net::SocketAddrV4::from(*a).into())
        } else if let Some(a) = s.as_sockaddr_in6() {
            SockAddr::Inet(std::net::SocketAddrV6::from(*a).into())
        } else if let Some(u) = s.as_unix_addr() {
            SockAddr::Unix(if let Some(p) = u.path() {
                UnixAddr::Path(p.to_owned())
            } else if let Some(a) = u.as_abstract() {
                UnixAddr::Abstract(a.to_vec())
            } else {
                UnixAddr::Unnamed
            })
        } else {
            SockAddr::Other(s.family().map_or(-1, |f| f as i32))
        }
    }

    /// The IP address and port, for an Internet socket.
    pub fn inet(&self) -> Option<std::net::SocketAddr> {
        match self {
            SockAddr::Inet(a) => Some(*a),
            _ => None,
        }
    }
}

/// A TCP connection state (`tcpi_state`, the kernel's `TCP_*` states of `include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// `TCP_ESTABLISHED`.
    Established,
    /// `TCP_SYN_SENT`.
    SynSent,
    /// `TCP_SYN_RECV`.
    SynRecv,
    /// `TCP_FIN_WAIT1`.
    FinWait1,
    /// `TCP_FIN_WAIT2`.
    FinWait2,
    /// `TCP_TIME_WAIT`.
    TimeWait,
    /// `TCP_CLOSE`.
    Close,
    /// `TCP_CLOSE_WAIT`: the peer closed its side; data may remain to be read.
    CloseWait,
    /// `TCP_LAST_ACK`.
    LastAck,
    /// `TCP_LISTEN`.
    Listen,
    /// `TCP_CLOSING`.
    Closing,
    /// Another state, by number.
    Other(u8),
}

impl TcpState {
    fn from_raw(s: u8) -> TcpState {
        match s {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            other => TcpState::Other(other),
        }
    }
}

/// The accept queue of a listening TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AcceptQueue {
    /// Connections established and waiting for `accept` (`sk_ack_backlog`).
    pub len: u32,
    /// The queue's limit, the `listen` backlog as capped by `net.core.somaxconn`
    /// (`sk_max_ack_backlog`).
    pub backlog: u32,
}

/// What a socket is: family, type, addresses, state and queue sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    /// Address family.
    pub domain: SocketDomain,
    /// Socket type.
    pub sock_type: SocketType,
    /// Protocol number (`SO_PROTOCOL`: 6 for TCP, 17 for UDP, 0 for Unix).
    pub protocol: i32,
    /// Whether `listen` was called on it (`SO_ACCEPTCONN`).
    pub listening: bool,
    /// The address it is bound to (`getsockname`).
    pub local: Option<SockAddr>,
    /// The address it is connected to (`getpeername`); `None` when not connected.
    pub peer: Option<SockAddr>,
    /// For a TCP socket, its state.
    pub tcp_state: Option<TcpState>,
    /// For a listening TCP socket, its accept queue.
    pub accept_queue: Option<AcceptQueue>,
    /// Bytes received and not yet read (`SIOCINQ`); for a datagram socket, the size of the
    /// next datagram. `None` where the kernel does not say (listening sockets).
    pub recv_queue: Option<u32>,
    /// Bytes in the send queue (`SIOCOUTQ`): for TCP, sent but not yet acknowledged plus not
    /// yet sent. `None` where the kernel does not say.
    pub send_queue: Option<u32>,
}

/// The error for a socket operation on a descriptor of this process.
fn own_fd_error(fd: BorrowedFd<'_>, op: &'static str, errno: Errno) -> Error {
    fd_error(nix::unistd::getpid(), fd.as_raw_fd(), op, errno)
}

fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, opt: i32, op: &'static str) -> Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2): `optval` points to a writable int and `optlen` holds its size;
    // the kernel writes at most `optlen` bytes and updates `optlen`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(own_fd_error(fd, op, Errno::last()));
    }
    Ok(value)
}

/// `ioctl(fd, request, &int)` for the socket queue ioctls; `None` where they do not apply.
fn queue_ioctl(fd: BorrowedFd<'_>, request: libc::Ioctl, op: &'static str) -> Result<Option<u32>> {
    let mut value: libc::c_int = 0;
    // SAFETY: SIOCINQ and SIOCOUTQ (tcp(7), udp(7), unix(7)) take a pointer to an int that
    // the kernel fills; `value` is a valid, writable int for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut value as *mut libc::c_int) };
    if r < 0 {
        return match Errno::last() {
            // Listening sockets and families without the ioctl.
            Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOTTY => Ok(None),
            e => Err(own_fd_error(fd, op, e)),
        };
    }
    Ok(Some(value as u32))
}

/// State and accept queue of a TCP socket, from `TCP_INFO` (tcp(7)). In `LISTEN` state the
/// kernel reports the accept queue in fields otherwise about retransmission: `tcpi_unacked`
/// holds `sk_ack_backlog` and `tcpi_sacked` holds `sk_max_ack_backlog` (tcp_get_info in
/// net/ipv4/tcp.c), which is what `ss -lt` prints as Recv-Q and Send-Q.
fn tcp_info(fd: BorrowedFd<'_>) -> Result<(TcpState, Option<AcceptQueue>)> {
    // struct tcp_info begins: u8 state, ca_state, retransmits, probes, backoff, options,
    // wscales, flags; u32 rto, ato, snd_mss, rcv_mss, unacked (offset 24), sacked (28).
    let mut buf = [0u8; 32];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt(2): `optval` points to `buf`, writable for `optlen` bytes; the kernel
    // copies at most that much of its struct tcp_info and updates `optlen`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(own_fd_error(fd, "getsockopt(TCP_INFO)", Errno::last()));
    }
    if (len as usize) < buf.len() {
        return Err(own_fd_error(fd, "getsockopt(TCP_INFO)", Errno::EPROTO));
    }
    let state = TcpState::from_raw(buf[0]);
    let u32_at = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
    let queue = (state == TcpState::Listen).then(|| AcceptQueue {
        len: u32_at(24),
        backlog: u32_at(28),
    });
    Ok((state, queue))
}

/// Describes the socket `fd` (typically taken from another process with [`take_fd`]).
/// Reads only; the socket is not changed. A descriptor that is not a socket is an error.
pub fn socket_info(fd: BorrowedFd<'_>) -> Result<SocketInfo> {
    let domain = match getsockopt_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_DOMAIN,
        "getsockopt(SO_DOMAIN)",
    )? {
        libc::AF_INET => SocketDomain::Inet,
        libc::AF_INET6 => SocketDomain::Inet6,
        libc::AF_UNIX => SocketDomain::Unix,
        libc::AF_NETLINK => SocketDomain::Netlink,
        libc::AF_PACKET => SocketDomain::Packet,
        other => SocketDomain::Other(other),
    };
    let sock_type =
        match getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE, "getsockopt(SO_TYPE)")? {
            libc::SOCK_STREAM => SocketType::Stream,
            libc::SOCK_DGRAM => SocketType::Datagram,
            libc::SOCK_SEQPACKET => SocketType::SeqPacket,
            libc::SOCK_RAW => SocketType::Raw,
            other => SocketType::Other(other),
        };
    let protocol = getsockopt_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_PROTOCOL,
        "getsockopt(SO_PROTOCOL)",
    )?;
    let listening = getsockopt_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ACCEPTCONN,
        "getsockopt(SO_ACCEPTCONN)",
    )? != 0;
    let local = getsockname::<SockaddrStorage>(fd.as_raw_fd())
        .map_err(|e| own_fd_error(fd, "getsockname", e))?;
    let peer = match getpeername::<SockaddrStorage>(fd.as_raw_fd()) {
        Ok(a) => Some(SockAddr::from_storage(&a)),
        Err(Errno::ENOTCONN) => None,
        Err(e) => return Err(own_fd_error(fd, "getpeername", e)),
    };
    let is_tcp = matches!(domain, SocketDomain::Inet | SocketDomain::Inet6)
        && sock_type == SocketType::Stream
        && protocol == libc::IPPROTO_TCP;
    let (tcp_state, accept_queue) = if is_tcp {
        let (s, q) = tcp_info(fd)?;
        (Some(s), q)
    } else {
        (None, None)
    };
    let (recv_queue, send_queue) = if listening {
        (None, None)
    } else {
        // SIOCINQ is FIONREAD and SIOCOUTQ is TIOCOUTQ on Linux (linux/sockios.h).
        (
            queue_ioctl(fd, libc::FIONREAD, "ioctl(SIOCINQ)")?,
            queue_ioctl(fd, libc::TIOCOUTQ, "ioctl(SIOCOUTQ)")?,
        )
    };
    Ok(SocketInfo {
        domain,
        sock_type,
        protocol,
        listening,
        local: Some(SockAddr::from_storage(&local)),
        peer,
        tcp_state,
        accept_queue,
        recv_queue,
        send_queue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let p = |s: &str| FdTarget::parse(Path::new(s));
        assert_eq!(p("socket:[1234]"), FdTarget::Socket(1234));
        assert_eq!(p("pipe:[99]"), FdTarget::Pipe(99));
        assert_eq!(
            p("anon_inode:[eventpoll]"),
            FdTarget::AnonInode("eventpoll".into())
        );
        assert_eq!(
            p("anon_inode:inotify"),
            FdTarget::AnonInode("inotify".into())
        );
        assert_eq!(
            p("/tmp/a b (deleted)"),
            FdTarget::Path {
                path: "/tmp/a b".into(),
                deleted: true
            }
        );
        assert_eq!(
            p("net:[4026531840]"),
            FdTarget::Other("net:[4026531840]".into())
        );
    }

    #[test]
    fn fdinfo_of_epoll_parses() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\n\
                    tfd:        6 events:       19 data:                0  pos:0 ino:2b2f sdev:e\n\
                    tfd:       10 events: 80000001 data: deadbeefcafe  pos:0 ino:2b30 sdev:e\n";
        let mut info = FdInfo {
            fd: 8,
            target: FdTarget::AnonInode("eventpoll".into()),
            flags: 0,
            pos: 0,
            mnt_id: None,
            ino: None,
            epoll: vec![],
            extra: vec![],
        };
        parse_fdinfo(&mut info, text).unwrap();
        assert!(info.cloexec() && info.is_epoll());
        assert_eq!(info.flags & libc::O_ACCMODE, libc::O_RDWR);
        assert_eq!((info.mnt_id, info.ino), (Some(16), Some(1057)));
        assert_eq!(
            info.epoll,
            [
                EpollRegistration {
                    tfd: 6,
                    events: 0x19,
                    data: 0,
                    pos: 0,
                    ino: 0x2b2f,
                    sdev: 0xe
                },
                EpollRegistration {
                    tfd: 10,
                    events: 0x8000_0001,
                    data: 0xdead_beef_cafe,
                    pos: 0,
                    ino: 0x2b30,
                    sdev: 0xe
                }
            ]
        );
        assert!(info.extra.is_empty());
    }
}
