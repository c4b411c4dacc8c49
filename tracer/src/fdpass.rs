//! Giving a stopped tracee descriptors of ours at chosen numbers, and rebuilding epoll sets in it.
//!
//! During a live update every descriptor of the old process must appear in the new one at the
//! same number. They travel over an [`FdChannel`], an `AF_UNIX` socket pair whose one end the
//! new process received when it was spawned: we send batches with `SCM_RIGHTS` (unix(7)), the
//! tracee receives them with a remote `recvmsg`, and remote `dup3` calls put each at its number
//! ([`FdChannel::install_fds`]). Epoll instances are never passed: the old process shares the
//! registered files and its epoll set must stay untouched if the update aborts, so each set is
//! created afresh in the new process from the registrations its fdinfo lists
//! ([`rebuild_epoll`]).
//!
//! Cost: every remote system call is ~20 µs of ptrace round trips. Installing `n` descriptors
//! takes one `recvmsg` per 253 of them and at most one `dup3` each, plus one call per descriptor
//! of the tracee's own that is in the way; when the targets are the lowest free numbers (a
//! fresh process receiving 3, 4, 5, ...), the descriptors arrive at their numbers and need no
//! `dup3` at all.
//!
//! Everything mapped in the tracee for the exchange is unmapped on every path. A call that fails
//! part way leaves the tracee's descriptor table part way (it is a process being prepared, to be
//! discarded if the update aborts); our own descriptors and the old process are never changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use nix::unistd::Pid;
use tracing::{debug, warn};

use crate::addr::RemoteAddr;
use crate::error::{Error, Result};
use crate::fd::{fd_info, EpollRegistration};
use crate::mem::{Memory, MemoryMut};
use crate::remote::RemoteSession;

/// Most descriptors one `SCM_RIGHTS` message may carry (`SCM_MAX_FD`, include/net/scm.h).
pub const SCM_MAX_FD: usize = 253;

/// Size of the packed x86-64 `struct epoll_event`: `u32 events` then `u64 data`, no padding
/// (the kernel declares it `__attribute__((packed))` on x86-64, see epoll_ctl(2)).
pub const EPOLL_EVENT_SIZE: usize = 12;

/// The bits of an epoll registration's event mask that are not events: they survive when a
/// one-shot registration fires and is disarmed (`EP_PRIVATE_BITS`, fs/eventpoll.c).
pub const EPOLL_PRIVATE_BITS: u32 =
    (libc::EPOLLWAKEUP | libc::EPOLLONESHOT | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32;

const PAGE: u64 = 4096;
/// Every batch carries this 8-byte payload (magic, count), so the receiver can tell our message
/// from anything else and check that no descriptor was lost.
const MAGIC: [u8; 4] = *b"FDPS";
const PAYLOAD_LEN: usize = 8;

// Layout of the scratch page used by `recvmsg` (x86-64 LP64 `struct msghdr`, `struct iovec`,
// `struct cmsghdr`: see recvmsg(2), cmsg(3)).
const MSGHDR_AT: u64 = 0;
const IOVEC_AT: u64 = 64;
const PAYLOAD_AT: u64 = 80;
const CONTROL_AT: u64 = 128;
/// `CMSG_SPACE(SCM_MAX_FD * sizeof(int))`: a 16-byte header and the data rounded up to 8.
const CONTROL_LEN: usize = 16 + (SCM_MAX_FD * 4).div_ceil(8) * 8;
const CMSG_HDR_LEN: usize = 16;

/// The socket pair descriptors travel through. See the module documentation.
#[derive(Debug)]
pub struct FdChannel {
    local: OwnedFd,
    remote: OwnedFd,
}

/// One descriptor of ours to give the tracee at number `target`.
#[derive(Debug, Clone, Copy)]
pub struct FdToInstall<'a> {
    /// The descriptor, in this process (e.g. taken from the old process with
    /// [`crate::fd::take_fd`]). Only borrowed: the tracee gets a new descriptor for the same
    /// open file description.
    pub file: BorrowedFd<'a>,
    /// Its number in the tracee.
    pub target: RawFd,
    /// Whether it is close-on-exec there.
    pub cloexec: bool,
}

/// What [`FdChannel::install_fds`] did besides installing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The tracee's own descriptors that occupied a target number, moved above every target and
    /// the channel: old number → new number. Each kept its close-on-exec flag. The caller
    /// decides whether the program still needs them (close or keep).
    pub moved: BTreeMap<RawFd, RawFd>,
    /// The channel's number in the tracee now: the one given, unless that was a target, in
    /// which case the channel moved like the others (and is not listed in `moved`).
    pub channel: RawFd,
    /// How many remote system calls the installation took (each ~20 µs).
    pub remote_syscalls: u32,
}

/// An epoll set rebuilt by [`rebuild_epoll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuiltEpoll {
    /// Its number in the tracee (the target, when one was given).
    pub fd: RawFd,
    /// The tracee's own descriptor that occupied the target, moved above every open
    /// descriptor: (old number, new number).
    pub moved: Option<(RawFd, RawFd)>,
    /// How many remote system calls it took.
    pub remote_syscalls: u32,
}

impl FdChannel {
    /// A new channel: an `AF_UNIX` `SOCK_SEQPACKET` socket pair (message boundaries kept, so a
    /// batch is received whole or not at all), both ends close-on-exec in this process.
    pub fn new() -> Result<FdChannel> {
        let (local, remote) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| {
            Error::sys(
                nix::unistd::getpid(),
                "socketpair(AF_UNIX, SOCK_SEQPACKET)",
                e,
            )
        })?;
        Ok(FdChannel { local, remote })
    }

    /// The end the tracee receives, to be given to it at spawn time (e.g.
    /// `SpawnConfig::fd(channel.remote_end().as_raw_fd(), 900)`); its number there is what
    /// [`FdChannel::install_fds`] takes. We keep our copy open, to drain messages a failed
    /// installation left behind.
    pub fn remote_end(&self) -> BorrowedFd<'_> {
        self.remote.as_fd()
    }

    /// Gives the tracee every descriptor of `fds` at its target number, with the close-on-exec
    /// flag asked for. `channel_fd` is the number of [`FdChannel::remote_end`] in the tracee,
    /// whose stopped thread `session` runs code on.
    ///
    /// In order: the tracee's descriptors that occupy a target number (looked up in
    /// `/proc/PID/fd`) are moved above every target and the channel (`F_DUPFD`, keeping their
    /// close-on-exec flag) and the target numbers freed; then, in batches of at most
    /// [`SCM_MAX_FD`] in order of target, ours are sent with `SCM_RIGHTS` and received by one
    /// remote `recvmsg` each, land at the lowest free numbers, and are moved to their targets
    /// with `dup3` (a temporary on the target of a later descriptor is placed first, so nothing
    /// is overwritten before it is placed); the temporaries are closed. No temporary remains.
    /// The channel itself moves only when it is a target (see [`Installed::channel`]).
    ///
    /// Fails with [`Error::FdTransfer`] for a target given twice or negative, a `channel_fd`
    /// that is not our channel in the tracee, or a message received truncated or incomplete;
    /// with [`Error::Fd`] if sending fails here; with [`Error::RemoteSyscall`] naming the call
    /// and its descriptor numbers if one fails in the tracee (e.g. `dup3` to a target above its
    /// `RLIMIT_NOFILE`: `EBADF`).
    pub fn install_fds(
        &self,
        session: &mut RemoteSession<'_>,
        channel_fd: RawFd,
        fds: &[FdToInstall<'_>],
    ) -> Result<Installed> {
        let pid = session.tracee().pid();
        let mut targets = BTreeSet::new();
        for f in fds {
            if f.target < 0 || !targets.insert(f.target) {
                return Err(Error::FdTransfer {
                    pid,
                    fd: f.target,
                    detail: if f.target < 0 {
                        "negative target number".into()
                    } else {
                        "target number given twice".into()
                    },
                });
            }
        }
        let open = open_fds(pid)?;
        self.check_channel(pid, channel_fd, &open)?;
        if fds.is_empty() {
            return Ok(Installed {
                moved: BTreeMap::new(),
                channel: channel_fd,
                remote_syscalls: 0,
            });
        }
        let floor = targets.last().copied().unwrap_or(0).max(channel_fd) + 1;
        let mut remote = Remote::new(session);

        // Make room: move the tracee's own descriptors off the target numbers.
        let mut moved = BTreeMap::new();
        let mut channel = channel_fd;
        let mut vacated = Vec::new();
        for &t in targets.iter().filter(|t| open.contains(t)) {
            let cloexec = fd_info(pid, t)?.is_none_or(|i| i.cloexec());
            let new = remote.dupfd(t, floor, cloexec)?;
            if t == channel_fd {
                channel = new;
            } else {
                moved.insert(t, new);
            }
            vacated.push(t);
        }
        remote.close_all(vacated)?;

        let scratch = remote.map_scratch(PAGE)?;
        let mut order: Vec<&FdToInstall<'_>> = fds.iter().collect();
        order.sort_by_key(|f| f.target);
        for batch in order.chunks(SCM_MAX_FD) {
            // Receive close-on-exec if most of the batch wants it: those that land on their
            // target then need no fix-up (a temporary is close-on-exec either way or not, it is
            // closed before anything can exec).
            let want = batch.iter().filter(|f| f.cloexec).count();
            let recv_cloexec = want * 2 >= batch.len();
            self.send_batch(batch)?;
            let received = match remote.recv_batch(scratch, channel, batch.len(), recv_cloexec) {
                Ok(r) => r,
                Err(e) => {
                    self.drain();
                    return Err(e);
                }
            };
            remote.place(batch, received, recv_cloexec, floor)?;
        }
        let remote_syscalls = remote.finish()?;
        debug!(
            pid = pid.as_raw(),
            count = fds.len(),
            moved = moved.len(),
            remote_syscalls,
            "descriptors installed"
        );
        Ok(Installed {
            moved,
            channel,
            remote_syscalls,
        })
    }

    /// Checks that `channel_fd` in the tracee is our remote end (same socket inode).
    fn check_channel(&self, pid: Pid, channel_fd: RawFd, open: &BTreeSet<RawFd>) -> Result<()> {
        let ours = nix::sys::stat::fstat(self.remote.as_fd()).map_err(|e| Error::Fd {
            pid: nix::unistd::getpid(),
            fd: self.remote.as_raw_fd(),
            op: "fstat",
            source: e,
        })?;
        let theirs = open
            .contains(&channel_fd)
            .then(|| std::fs::metadata(format!("/proc/{pid}/fd/{channel_fd}")).ok())
            .flatten();
        match theirs {
            Some(m) if m.ino() == ours.st_ino && m.dev() == ours.st_dev => Ok(()),
            Some(_) => Err(Error::FdTransfer {
                pid,
                fd: channel_fd,
                detail: "is not the channel's remote end (another file)".into(),
            }),
            None => Err(Error::FdTransfer {
                pid,
                fd: channel_fd,
                detail: "is not open, so cannot be the channel's remote end".into(),
            }),
        }
    }

    /// Sends one batch with its payload (magic, count).
    fn send_batch(&self, batch: &[&FdToInstall<'_>]) -> Result<()> {
        let raw: Vec<RawFd> = batch.iter().map(|f| f.file.as_raw_fd()).collect();
        let mut payload = [0u8; PAYLOAD_LEN];
        payload[..4].copy_from_slice(&MAGIC);
        payload[4..].copy_from_slice(&(raw.len() as u32).to_ne_bytes());
        let iov = [IoSlice::new(&payload)];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        sendmsg::<()>(
            self.local.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(|e| Error::Fd {
            pid: nix::unistd::getpid(),
            fd: self.local.as_raw_fd(),
            op: "sendmsg(SCM_RIGHTS)",
            source: e,
        })
        .map(drop)
    }

    /// Receives and closes, here, whatever a failed installation left in the channel, so the
    /// next installation does not receive it. Best effort: failures are logged.
    fn drain(&self) {
        loop {
            let mut payload = [0u8; PAYLOAD_LEN];
            let mut iov = [IoSliceMut::new(&mut payload)];
            let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
            let got = recvmsg::<UnixAddr>(
                self.remote.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let msg = match got {
                Ok(m) => m,
                Err(Errno::EAGAIN) => return,
                Err(e) => {
                    warn!(error = %e, "draining the descriptor channel");
                    return;
                }
            };
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for fd in fds {
                            let _ = nix::unistd::close(fd);
                        }
                    }
                }
            }
        }
    }
}

/// Builds, in the tracee, a new epoll instance with `registrations` (as read from the fdinfo
/// of an epoll descriptor, e.g. of the old process with [`crate::fd::fd_info`]) and returns its
/// number. Each registration is added for descriptor `tfd` of the tracee, which must already
/// hold the registered file (install the files first, at the same numbers); its data word is
/// `relocate(data)` (e.g. a pointer moved to where the new program keeps the object).
///
/// With `target`, the instance ends at that number (`dup3`, the temporary closed); a descriptor
/// of the tracee's own there is moved above every open descriptor first and reported. The
/// instance is close-on-exec if `cloexec`.
///
/// The event masks are given to `EPOLL_CTL_ADD` as the kernel printed them, which round-trips:
/// the kernel always adds `EPOLLERR | EPOLLHUP` on `ADD`, and prints them, and
/// `EPOLLEXCLUSIVE` (only accepted on `ADD`, with only `EPOLLIN`, `EPOLLOUT`, `EPOLLERR`,
/// `EPOLLHUP`, `EPOLLWAKEUP`, `EPOLLET` beside it) comes back with exactly the bits it was
/// accepted with. One state cannot be rebuilt: a one-shot registration that fired is disarmed
/// (its mask keeps only [`EPOLL_PRIVATE_BITS`]), and a new `ADD` arms it for `EPOLLERR |
/// EPOLLHUP` again; the program re-arms it with `EPOLL_CTL_MOD` before expecting events, so
/// only an error or hang-up arriving before that is reported where the old set would not have.
/// `EPOLLWAKEUP` is silently dropped by the kernel unless the tracee has `CAP_BLOCK_SUSPEND`.
///
/// Nothing of the original set is touched. Fails with [`Error::FdTransfer`] if a registration's
/// `tfd` is not open in the tracee or holds another file (inode and device differ from the
/// registration's; a weak check for anonymous-inode files, since every eventfd, epoll, timerfd
/// and signalfd shares the one inode of `anon_inode:[...]`), with [`Error::RemoteSyscall`] if a
/// call fails in the tracee (the new instance is then closed).
pub fn rebuild_epoll(
    session: &mut RemoteSession<'_>,
    registrations: &[EpollRegistration],
    relocate: &dyn Fn(u64) -> u64,
    cloexec: bool,
    target: Option<RawFd>,
) -> Result<RebuiltEpoll> {
    let pid = session.tracee().pid();
    for reg in registrations {
        check_registered_file(pid, reg)?;
    }
    let mut remote = Remote::new(session);
    let scratch = if registrations.is_empty() {
        RemoteAddr::NULL
    } else {
        let len = (registrations.len() * EPOLL_EVENT_SIZE) as u64;
        let scratch = remote.map_scratch(len.div_ceil(PAGE) * PAGE)?;
        let mut bytes = Vec::with_capacity(len as usize);
        for reg in registrations {
            bytes.extend_from_slice(&reg.events.to_ne_bytes());
            bytes.extend_from_slice(&relocate(reg.data).to_ne_bytes());
        }
        remote.write(scratch, &bytes)?;
        scratch
    };
    let flags = if cloexec { libc::EPOLL_CLOEXEC } else { 0 };
    let epfd = remote.sys(libc::SYS_epoll_create1, &[flags as u64], || {
        format!(
            "epoll_create1({})",
            if cloexec { "EPOLL_CLOEXEC" } else { "0" }
        )
    })? as RawFd;
    let built = (|| {
        for (i, reg) in registrations.iter().enumerate() {
            let ev = scratch.get() + (i * EPOLL_EVENT_SIZE) as u64;
            remote.sys(
                libc::SYS_epoll_ctl,
                &[epfd as u64, libc::EPOLL_CTL_ADD as u64, reg.tfd as u64, ev],
                || {
                    format!(
                        "epoll_ctl({epfd}, EPOLL_CTL_ADD, {}, {{events: {:#x}}})",
                        reg.tfd, reg.events
                    )
                },
            )?;
        }
        Ok(())
    })();
    if let Err(e) = built {
        remote.close_quietly(epfd);
        return Err(e);
    }
    let mut fd = epfd;
    let mut moved = None;
    if let Some(t) = target.filter(|&t| t != epfd) {
        let open = open_fds(pid)?;
        if open.contains(&t) {
            let keep_cloexec = fd_info(pid, t)?.is_none_or(|i| i.cloexec());
            let floor = open.last().copied().unwrap_or(0) + 1;
            let new = remote.dupfd(t, floor, keep_cloexec)?;
            moved = Some((t, new));
        }
        remote.dup3(epfd, t, cloexec)?;
        remote.close_all(vec![epfd])?;
        fd = t;
    }
    let remote_syscalls = remote.finish()?;
    debug!(
        pid = pid.as_raw(),
        fd,
        registrations = registrations.len(),
        remote_syscalls,
        "epoll set rebuilt"
    );
    Ok(RebuiltEpoll {
        fd,
        moved,
        remote_syscalls,
    })
}

/// Checks that descriptor `reg.tfd` of `pid` is the registered file. The registration knows
/// its file by inode and the superblock's device (`ino:`, `sdev:`, the kernel's `dev_t`
/// encoding: major << 20 | minor), both absent (0) on old kernels.
fn check_registered_file(pid: Pid, reg: &EpollRegistration) -> Result<()> {
    let meta = match std::fs::metadata(format!("/proc/{pid}/fd/{}", reg.tfd)) {
        Ok(m) => m,
        Err(_) => {
            return Err(Error::FdTransfer {
                pid,
                fd: reg.tfd,
                detail: "registered in an epoll set but not open in the process".into(),
            })
        }
    };
    if reg.ino == 0 {
        return Ok(());
    }
    let (major, minor) = (reg.sdev >> 20, reg.sdev & 0xf_ffff);
    let dev = meta.dev();
    let same_dev = reg.sdev == 0
        || (u64::from(libc::major(dev)) == major && u64::from(libc::minor(dev)) == minor);
    if meta.ino() != reg.ino || !same_dev {
        return Err(Error::FdTransfer {
            pid,
            fd: reg.tfd,
            detail: format!(
                "holds inode {:#x} (device {}:{}), not the registered file (inode {:#x}, device \
                 {major}:{minor})",
                meta.ino(),
                libc::major(dev),
                libc::minor(dev),
                reg.ino
            ),
        });
    }
    Ok(())
}

/// The descriptor numbers open in `pid` (`/proc/PID/fd`). The tracee is stopped, so this stays
/// true until we change it.
fn open_fds(pid: Pid) -> Result<BTreeSet<RawFd>> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::Gone { pid, status: None }
        } else {
            Error::Io {
                path: dir.into(),
                source,
            }
        }
    })?;
    Ok(entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// A remote session lent to one operation: counts its system calls, and unmaps its scratch
/// mapping on every path ([`Remote::finish`], or `Drop`, which logs).
struct Remote<'s, 't> {
    session: &'s mut RemoteSession<'t>,
    pid: Pid,
    calls: u32,
    scratch: Option<(RemoteAddr, u64)>,
}

impl<'s, 't> Remote<'s, 't> {
    fn new(session: &'s mut RemoteSession<'t>) -> Self {
        let pid = session.tracee().pid();
        Remote {
            session,
            pid,
            calls: 0,
            scratch: None,
        }
    }

    /// Runs system call `nr` and turns `-errno` into [`Error::RemoteSyscall`] described by `call`.
    fn sys(&mut self, nr: i64, args: &[u64], call: impl FnOnce() -> String) -> Result<u64> {
        self.calls += 1;
        let r = self.session.syscall(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(Error::RemoteSyscall {
                pid: self.pid,
                call: call(),
                errno: Errno::from_raw(-r as i32),
            });
        }
        Ok(r as u64)
    }

    fn map_scratch(&mut self, len: u64) -> Result<RemoteAddr> {
        self.calls += 1;
        let addr = self.session.mmap_anonymous(len)?;
        self.scratch = Some((addr, len));
        Ok(addr)
    }

    fn write(&self, addr: RemoteAddr, data: &[u8]) -> Result<()> {
        self.session.tracee().memory().write(addr, data)
    }

    /// `fcntl(fd, F_DUPFD[_CLOEXEC], floor)`: a copy of `fd` at the lowest free number ≥ `floor`.
    fn dupfd(&mut self, fd: RawFd, floor: RawFd, cloexec: bool) -> Result<RawFd> {
        let cmd = if cloexec {
            libc::F_DUPFD_CLOEXEC
        } else {
            libc::F_DUPFD
        };
        self.sys(
            libc::SYS_fcntl,
            &[fd as u64, cmd as u64, floor as u64],
            || {
                let name = if cloexec {
                    "F_DUPFD_CLOEXEC"
                } else {
                    "F_DUPFD"
                };
                format!("fcntl({fd}, {name}, {floor})")
            },
        )
        .map(|n| n as RawFd)
    }

    fn dup3(&mut self, from: RawFd, to: RawFd, cloexec: bool) -> Result<()> {
        let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
        self.sys(
            libc::SYS_dup3,
            &[from as u64, to as u64, flags as u64],
            || {
                let name = if cloexec { "O_CLOEXEC" } else { "0" };
                format!("dup3({from}, {to}, {name})")
            },
        )
        .map(drop)
    }

    fn set_cloexec(&mut self, fd: RawFd, cloexec: bool) -> Result<()> {
        let flag = if cloexec { libc::FD_CLOEXEC } else { 0 };
        self.sys(
            libc::SYS_fcntl,
            &[fd as u64, libc::F_SETFD as u64, flag as u64],
            || format!("fcntl({fd}, F_SETFD, {flag})"),
        )
        .map(drop)
    }

    /// Closes `fds`, one `close_range` per run of consecutive numbers.
    fn close_all(&mut self, mut fds: Vec<RawFd>) -> Result<()> {
        fds.sort_unstable();
        fds.dedup();
        let mut i = 0;
        while i < fds.len() {
            let first = fds[i];
            let mut last = first;
            while i + 1 < fds.len() && fds[i + 1] == last + 1 {
                i += 1;
                last = fds[i];
            }
            i += 1;
            if first == last {
                self.sys(libc::SYS_close, &[first as u64], || {
                    format!("close({first})")
                })?;
            } else {
                self.sys(
                    libc::SYS_close_range,
                    &[first as u64, last as u64, 0],
                    || format!("close_range({first}, {last}, 0)"),
                )?;
            }
        }
        Ok(())
    }

    /// Best-effort close on an error path: the first error is what the caller reports.
    fn close_quietly(&mut self, fd: RawFd) {
        if let Err(e) = self.close_all(vec![fd]) {
            warn!(pid = self.pid.as_raw(), fd, error = %e, "closing a descriptor after an error");
        }
    }

    /// Receives one batch of `expect` descriptors on `channel` with a remote `recvmsg`, through
    /// the scratch page at `scratch`, and returns their numbers in the tracee in sending order.
    fn recv_batch(
        &mut self,
        scratch: RemoteAddr,
        channel: RawFd,
        expect: usize,
        cloexec: bool,
    ) -> Result<Vec<RawFd>> {
        let at = |off: u64| scratch.get() + off;
        let mut hdr = [0u8; CONTROL_AT as usize];
        let mut put = |off: u64, v: u64| {
            hdr[off as usize..off as usize + 8].copy_from_slice(&v.to_ne_bytes());
        };
        // struct msghdr: name, namelen(+pad), iov, iovlen, control, controllen, flags(+pad).
        put(MSGHDR_AT, 0);
        put(MSGHDR_AT + 8, 0);
        put(MSGHDR_AT + 16, at(IOVEC_AT));
        put(MSGHDR_AT + 24, 1);
        put(MSGHDR_AT + 32, at(CONTROL_AT));
        put(MSGHDR_AT + 40, CONTROL_LEN as u64);
        put(MSGHDR_AT + 48, 0);
        // struct iovec: base, len.
        put(IOVEC_AT, at(PAYLOAD_AT));
        put(IOVEC_AT + 8, PAYLOAD_LEN as u64);
        self.write(scratch, &hdr)?;
        let mut flags = libc::MSG_DONTWAIT;
        if cloexec {
            flags |= libc::MSG_CMSG_CLOEXEC;
        }
        let got = self.sys(
            libc::SYS_recvmsg,
            &[channel as u64, at(MSGHDR_AT), flags as u64],
            || format!("recvmsg({channel}, SCM_RIGHTS)"),
        )? as usize;
        let back = self
            .session
            .tracee()
            .memory()
            .read_vec(scratch, CONTROL_AT as usize + CONTROL_LEN)?;
        let u64_at = |off: usize| u64::from_ne_bytes(back[off..off + 8].try_into().expect("8"));
        let i32_at = |off: usize| i32::from_ne_bytes(back[off..off + 4].try_into().expect("4"));
        let controllen = (u64_at(MSGHDR_AT as usize + 40) as usize).min(CONTROL_LEN);
        let msg_flags = i32_at(MSGHDR_AT as usize + 48);
        let control = &back[CONTROL_AT as usize..CONTROL_AT as usize + controllen];
        let received = scm_rights(control);
        let payload = &back[PAYLOAD_AT as usize..PAYLOAD_AT as usize + PAYLOAD_LEN];
        let mut expected_payload = [0u8; PAYLOAD_LEN];
        expected_payload[..4].copy_from_slice(&MAGIC);
        expected_payload[4..].copy_from_slice(&(expect as u32).to_ne_bytes());
        let problem = if msg_flags & libc::MSG_CTRUNC != 0 {
            Some(format!(
                "recvmsg truncated the descriptors (MSG_CTRUNC): {} of {expect} arrived (RLIMIT_NOFILE?)",
                received.len()
            ))
        } else if got != PAYLOAD_LEN || payload != expected_payload {
            Some(format!(
                "received a message that is not ours ({got} bytes: {payload:02x?})"
            ))
        } else if received.len() != expect {
            Some(format!(
                "received {} descriptors, {expect} were sent",
                received.len()
            ))
        } else {
            None
        };
        if let Some(detail) = problem {
            if let Err(e) = self.close_all(received) {
                warn!(pid = self.pid.as_raw(), error = %e, "closing descriptors of a bad message");
            }
            return Err(Error::FdTransfer {
                pid: self.pid,
                fd: channel,
                detail,
            });
        }
        Ok(received)
    }

    /// Moves each received descriptor (`received[i]` holds `batch[i]`) to its target.
    ///
    /// The targets are free (their occupants were moved) and sent in increasing order, so the
    /// `i`-th temporary landed at or below its target and a target can only hold the temporary
    /// of a *later* entry: placing from the last entry down never overwrites one not yet placed.
    /// A temporary on the target of an entry still to be placed is left for that entry's
    /// `dup3` to replace; the others are closed at the end. Should a target nevertheless hold
    /// a temporary not yet placed, that one is first moved out of the way (above `floor`).
    fn place(
        &mut self,
        batch: &[&FdToInstall<'_>],
        mut at: Vec<RawFd>,
        recv_cloexec: bool,
        floor: RawFd,
    ) -> Result<()> {
        let target_of: HashMap<RawFd, usize> = batch
            .iter()
            .enumerate()
            .map(|(i, f)| (f.target, i))
            .collect();
        let mut pending: HashMap<RawFd, usize> = at
            .iter()
            .enumerate()
            .filter(|&(i, &n)| n != batch[i].target)
            .map(|(i, &n)| (n, i))
            .collect();
        let mut done = vec![false; batch.len()];
        let mut to_close = Vec::new();
        for i in (0..batch.len()).rev() {
            let want = batch[i];
            if at[i] == want.target {
                if want.cloexec != recv_cloexec {
                    self.set_cloexec(want.target, want.cloexec)?;
                }
                done[i] = true;
                continue;
            }
            if let Some(k) = pending.remove(&want.target) {
                let new = self.dupfd(want.target, floor, true)?;
                pending.insert(new, k);
                at[k] = new;
            }
            let tmp = at[i];
            self.dup3(tmp, want.target, want.cloexec)?;
            pending.remove(&tmp);
            done[i] = true;
            match target_of.get(&tmp) {
                Some(&j) if !done[j] => {} // that entry's dup3 replaces it
                _ => to_close.push(tmp),
            }
        }
        self.close_all(to_close)
    }

    /// Unmaps the scratch mapping and returns the number of remote system calls made.
    fn finish(mut self) -> Result<u32> {
        if let Some((addr, len)) = self.scratch.take() {
            self.calls += 1;
            self.session.munmap(addr, len)?;
        }
        Ok(self.calls)
    }
}

impl Drop for Remote<'_, '_> {
    fn drop(&mut self) {
        if let Some((addr, len)) = self.scratch.take() {
            if let Err(e) = self.session.munmap(addr, len) {
                warn!(pid = self.pid.as_raw(), %addr, error = %e, "unmapping scratch memory");
            }
        }
    }
}

/// The descriptor numbers of every `SCM_RIGHTS` message in a control buffer (cmsg(3): each
/// header is `size_t len, int level, int type`, data follows, the next header is at
/// `CMSG_ALIGN(len)`).
fn scm_rights(control: &[u8]) -> Vec<RawFd> {
    let mut fds = Vec::new();
    let mut off = 0;
    while off + CMSG_HDR_LEN <= control.len() {
        let len = u64::from_ne_bytes(control[off..off + 8].try_into().expect("8")) as usize;
        let level = i32::from_ne_bytes(control[off + 8..off + 12].try_into().expect("4"));
        let kind = i32::from_ne_bytes(control[off + 12..off + 16].try_into().expect("4"));
        if len < CMSG_HDR_LEN || off + len > control.len() {
            break;
        }
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            fds.extend(
                control[off + CMSG_HDR_LEN..off + len]
                    .chunks_exact(4)
                    .map(|c| RawFd::from_ne_bytes(c.try_into().expect("4"))),
            );
        }
        off += len.div_ceil(8) * 8;
    }
    fds
}
