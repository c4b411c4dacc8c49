//! The future and the reversed process: spawned in the old process's execution context, given
//! its listening sockets in place of their own `bind`, and held at their own quiescent point
//! without executing it.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use tracer::fd::{list_fds, socket_info, take_fd, FdTarget, SockAddr, UnixAddr};
use tracer::procfs::ExecContext;
use tracer::spawn::{spawn, SpawnConfig};
use tracer::{Held, Memory, Pid, ProcessMemory, RemoteAddr, SyscallAction, SyscallEntry, Tracee};

/// A listening socket of the old process, taken into ours (`pidfd_getfd`).
pub struct Listener {
    /// Its number in the old process.
    pub fd: RawFd,
    /// Our descriptor for the same socket.
    pub socket: OwnedFd,
    /// The address it listens on.
    pub addr: SockAddr,
}

/// The listening sockets of process `pid`.
pub fn listeners(pid: Pid) -> tracer::Result<Vec<Listener>> {
    let mut out = Vec::new();
    for info in list_fds(pid)? {
        if !matches!(info.target, FdTarget::Socket(_)) {
            continue;
        }
        let socket = match take_fd(pid, info.fd) {
            Ok(s) => s,
            // Closed since it was listed: a connection going away, not a listener.
            Err(tracer::Error::Fd {
                source: nix::Error::EBADF,
                ..
            }) => continue,
            Err(e) => return Err(e),
        };
        let s = socket_info(std::os::fd::AsFd::as_fd(&socket))?;
        if let (true, Some(addr)) = (s.listening, s.local) {
            out.push(Listener {
                fd: info.fd,
                socket,
                addr,
            });
        }
    }
    Ok(out)
}

/// How a spawned process is held.
#[derive(Clone, Debug)]
pub enum HoldAt {
    /// At its first quiescent system call (`poll`, `epoll_wait`, `accept`, a `read` of a
    /// socket or pipe, ...), not executed.
    Quiescent(Vec<i64>),
    /// At the first instruction of this function, by name, if its start-up reaches it (a
    /// function at the top of its main loop); else at its first quiescent system call.
    Function(String),
}

/// A spawned process held at its quiescent point.
pub struct Spawned {
    /// The process, every thread stopped.
    pub tracee: Tracee,
    /// The thread that is held, and at what.
    pub held: Held,
    /// Where the old process's listening sockets sit in it before its `bind` took them
    /// (descriptors to close before it runs).
    pub spare_fds: Vec<RawFd>,
    /// Where the descriptor channel sits in it, if it was given one.
    pub channel_fd: Option<RawFd>,
    /// Descriptors its `bind` was rewritten on: its number -> the old process's listener.
    pub rebound: Vec<(u64, RawFd)>,
}

/// What to give a spawned process.
#[derive(Clone)]
pub struct SpawnPlan<'a> {
    /// The program to run.
    pub program: &'a Path,
    /// The old process's context.
    pub context: &'a ExecContext,
    /// Its standard descriptors, taken from the old process: `(ours, number)`.
    pub stdio: &'a [(OwnedFd, RawFd)],
    /// Its listening sockets.
    pub listeners: &'a [Listener],
    /// The first descriptor number above everything the old process uses.
    pub high_fd: RawFd,
    /// A channel end to give it at `high_fd + listeners.len()`, if any.
    pub channel: Option<RawFd>,
    /// Where to hold it.
    pub hold: &'a HoldAt,
    /// The old process's wait: the future is held only at a call that corresponds to it.
    pub matching: Option<&'a super::held::Point>,
    /// How long its start-up may take.
    pub timeout: Duration,
}

/// Why a spawned process could not be brought to its quiescent point.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Spawning or running it failed (it is gone).
    #[error("{what} ({program})")]
    Tracer {
        /// `the future` / `the reversed process`.
        what: &'static str,
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: tracer::Error,
    },
    /// Its start-up reached a wait that does not correspond to the old process's and that
    /// cannot be let run (it would take a connection meant for the old process).
    #[error(
        "{what} ({program}) reached {reached} in its start-up, which does not correspond to \
         where the old process waits ({old}); no matching point to hold it at"
    )]
    NoMatch {
        /// `the future` / `the reversed process`.
        what: &'static str,
        /// The program.
        program: String,
        /// Where it is.
        reached: String,
        /// Where the old process is.
        old: String,
    },
    /// `--at FUNCTION` names nothing in it.
    #[error("{what} ({program}): no function `{name}` to hold it at")]
    NoFunction {
        /// `the future` / `the reversed process`.
        what: &'static str,
        /// The program.
        program: String,
        /// The function.
        name: String,
        /// The cause.
        #[source]
        source: tracer::Error,
    },
}

/// Spawns `plan.program` in the old process's context, runs its start-up, and holds it.
pub fn spawn_held(what: &'static str, plan: &SpawnPlan<'_>) -> Result<Spawned, SpawnError> {
    let program = plan.program.display().to_string();
    let err = |source| SpawnError::Tracer {
        what,
        program: program.clone(),
        source,
    };
    let mut cfg = SpawnConfig::in_context(plan.program, plan.context);
    cfg.fds = plan
        .stdio
        .iter()
        .map(|(fd, n)| (fd.as_raw_fd(), *n))
        .collect();
    let mut spare_fds = Vec::new();
    for (i, l) in plan.listeners.iter().enumerate() {
        let n = plan.high_fd + i as RawFd;
        cfg.fds.push((l.socket.as_raw_fd(), n));
        spare_fds.push(n);
    }
    let channel_fd = plan.channel.map(|ours| {
        let n = plan.high_fd + plan.listeners.len() as RawFd;
        cfg.fds.push((ours, n));
        n
    });
    let mut tracee = spawn(&cfg).map_err(err)?;

    let breakpoint = match plan.hold {
        HoldAt::Function(name) => {
            // The executable is mapped at exec; its symbols resolve before it runs.
            let addr = tracer::symbols::lookup(tracee.pid(), name).map_err(|source| {
                SpawnError::NoFunction {
                    what,
                    program: program.clone(),
                    name: name.clone(),
                    source,
                }
            })?;
            Some(addr)
        }
        HoldAt::Quiescent(_) => None,
    };
    // Held at the function if its start-up reaches it, else at its first quiescent call.
    let calls = match plan.hold {
        HoldAt::Quiescent(calls) => calls.clone(),
        HoldAt::Function(_) => tracer::quiesce::default_quiescent_calls(),
    };
    let mut rebound: Vec<(u64, RawFd)> = Vec::new();
    let mut mismatch: Option<(String, String)> = None;
    let mut taken = vec![false; plan.listeners.len()];
    let mut hook = |mem: &ProcessMemory, e: &SyscallEntry| -> tracer::Result<SyscallAction> {
        let nr = e.nr as i64;
        match nr {
            libc::SYS_bind => {
                let len = (e.args[2] as usize).min(128);
                let raw = mem.read_vec(RemoteAddr::new(e.args[1]), len)?;
                let Some(addr) = decode_sockaddr(&raw) else {
                    return Ok(SyscallAction::Run);
                };
                if let Some(i) = matching_listener(plan.listeners, &taken, &addr) {
                    taken[i] = true;
                    rebound.push((e.args[0], plan.listeners[i].fd));
                    // bind(fd, addr) becomes dup2(spare, fd): its socket is the old one.
                    return Ok(SyscallAction::Replace {
                        nr: libc::SYS_dup2 as u64,
                        args: [(plan.high_fd + i as RawFd) as u64, e.args[0], 0, 0, 0, 0],
                        ret: Some(0),
                    });
                }
                Ok(SyscallAction::Run)
            }
            // The old socket already listens; its backlog is not ours to change.
            libc::SYS_listen if rebound.iter().any(|(fd, _)| *fd == e.args[0]) => {
                Ok(SyscallAction::Skip { ret: 0 })
            }
            // A server that removes its socket file before binding must not remove the old
            // process's.
            libc::SYS_unlink | libc::SYS_unlinkat => {
                let path_arg = if nr == libc::SYS_unlink {
                    e.args[0]
                } else {
                    e.args[1]
                };
                let path = read_c_string(mem, path_arg)?;
                let is_listener = plan.listeners.iter().any(|l| {
                    matches!(&l.addr, SockAddr::Unix(UnixAddr::Path(p)) if p.as_os_str().as_encoded_bytes() == path.as_slice())
                });
                Ok(if is_listener {
                    SyscallAction::Skip { ret: 0 }
                } else {
                    SyscallAction::Run
                })
            }
            _ if calls.contains(&nr) => {
                // A zero timeout, a non-blocking descriptor, a file: not a wait at rest.
                if !super::held::blocks(mem, e)? {
                    return Ok(SyscallAction::Run);
                }
                match plan.matching {
                    None => Ok(SyscallAction::Hold),
                    Some(old) if super::held::corresponds(old, e) => Ok(SyscallAction::Hold),
                    // Another wait of its start-up: let it run, unless it would take a
                    // connection or a message the old process is owed.
                    Some(old) => {
                        let consumes = matches!(
                            super::held::class(nr),
                            Some(super::held::Class::Accept | super::held::Class::Recv)
                        ) || (nr == libc::SYS_read
                            && matches!(
                                tracer::fd::fd_info(mem.pid(), e.args[0] as i32)?.map(|i| i.target),
                                Some(FdTarget::Socket(_))
                            ));
                        if consumes {
                            mismatch = Some((
                                super::held::Point::new(e.tid, nr, e.args).describe(),
                                old.describe(),
                            ));
                            Ok(SyscallAction::Hold)
                        } else {
                            Ok(SyscallAction::Run)
                        }
                    }
                }
            }
            _ => Ok(SyscallAction::Run),
        }
    };
    // Binds are rewritten on the way to a function too.
    let held = tracee
        .run(plan.timeout, breakpoint, Some(&mut hook))
        .map_err(err)?;
    if let Some((reached, old)) = mismatch {
        return Err(SpawnError::NoMatch {
            what,
            program,
            reached,
            old,
        });
    }
    Ok(Spawned {
        tracee,
        held,
        spare_fds,
        channel_fd,
        rebound,
    })
}

/// The listener a `bind` to `addr` takes: the same address, or for a bind to port 0 (any
/// port) the first not yet taken listener on the same IP address.
pub(crate) fn matching_listener(
    listeners: &[Listener],
    taken: &[bool],
    addr: &SockAddr,
) -> Option<usize> {
    let exact = listeners
        .iter()
        .enumerate()
        .position(|(i, l)| !taken[i] && &l.addr == addr);
    exact.or_else(|| match addr {
        SockAddr::Inet(a) if a.port() == 0 => listeners.iter().enumerate().position(|(i, l)| {
            !taken[i] && matches!(&l.addr, SockAddr::Inet(b) if b.ip() == a.ip())
        }),
        _ => None,
    })
}

/// Decodes a `struct sockaddr` of the tracee (IPv4, IPv6, Unix).
pub(crate) fn decode_sockaddr(b: &[u8]) -> Option<SockAddr> {
    if b.len() < 2 {
        return None;
    }
    let family = i32::from(u16::from_ne_bytes([b[0], b[1]]));
    match family {
        libc::AF_INET if b.len() >= 8 => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let ip = std::net::Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Some(SockAddr::Inet((ip, port).into()))
        }
        libc::AF_INET6 if b.len() >= 24 => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[8..24]);
            Some(SockAddr::Inet((std::net::Ipv6Addr::from(ip), port).into()))
        }
        libc::AF_UNIX => {
            let path = &b[2..];
            if path.is_empty() {
                return Some(SockAddr::Unix(UnixAddr::Unnamed));
            }
            if path[0] == 0 {
                return Some(SockAddr::Unix(UnixAddr::Abstract(path[1..].to_vec())));
            }
            let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
            let p = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&path[..end]);
            Some(SockAddr::Unix(UnixAddr::Path(p.into())))
        }
        _ => None,
    }
}

/// Reads a NUL-terminated string of at most 4096 bytes from the tracee.
fn read_c_string(mem: &ProcessMemory, addr: u64) -> tracer::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < 4096 {
        // Stay within one page per read: the string may end just before an unmapped page.
        let room = 4096 - (at % 4096) as usize;
        let chunk = mem.read_vec(RemoteAddr::new(at), room.min(256))?;
        if let Some(end) = chunk.iter().position(|&c| c == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
        at += chunk.len() as u64;
    }
    Ok(out)
}
