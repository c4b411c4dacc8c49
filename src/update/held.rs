//! The held point: where the old process waits, found by a brief probe before anything is
//! spawned, and the rule by which the new version's start-up is held at the corresponding
//! point: the same kind of wait (`select` for `select`, `epoll_wait` for `epoll_wait`, `accept`
//! on the same descriptor), never a call that returns at once (a zero timeout, a non-blocking
//! descriptor), and how its held call is then resumed ([`Resume`]).

use std::time::Duration;

use serde::Serialize;
use tracer::quiesce::{default_quiescent_calls, quiesce, waits, Wait};
use tracer::{Pid, SyscallEntry, Tracee};

use super::coverage::{self, Finding};
use crate::debuginfo::Binary;
use crate::mapping::rules::Rules;

/// Where one thread waits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Point {
    /// The thread.
    pub tid: i32,
    /// The system call number.
    pub nr: i64,
    /// Its name.
    pub call: &'static str,
    /// Its arguments.
    #[serde(skip)]
    pub args: [u64; 6],
}

impl Point {
    /// The point of a thread stopped in (or at the entry of) call `nr` with `args`.
    pub fn new(tid: Pid, nr: i64, args: [u64; 6]) -> Point {
        Point {
            tid: tid.as_raw(),
            nr,
            call: name(nr),
            args,
        }
    }

    /// `select(5, ...)`, `accept(3, ...)`: the call and its first argument.
    pub fn describe(&self) -> String {
        match class(self.nr) {
            Some(Class::Accept | Class::Read | Class::Recv) => {
                format!("{} on descriptor {}", self.call, self.args[0])
            }
            Some(Class::Epoll) => format!("{} on epoll descriptor {}", self.call, self.args[0]),
            _ => self.call.to_owned(),
        }
    }
}

/// What the old process is doing, seen by [`probe_old`].
pub struct OldAt {
    /// Its main thread's wait.
    pub main: Point,
    /// State the capture would not cover, found while it was stopped (thread-locals).
    pub findings: Vec<Finding>,
    /// Its objects, for unwinding.
    pub images: crate::stack::ProcessImages,
    /// Its main thread's program frames.
    pub frames: super::frames::Frames,
    /// What its pointers point at.
    pub regions: super::frames::Regions,
}

/// Stops the old process for an instant (seize, interrupt, read registers, detach) to see
/// where it waits, waiting at most `timeout` for it to reach a quiescent call. It runs on
/// exactly as before: an interrupted wait is restarted by the kernel on detach.
pub fn probe_old(
    pid: Pid,
    binary: &std::sync::Arc<Binary>,
    rules: &Rules,
    timeout: Duration,
) -> anyhow::Result<OldAt> {
    let images = crate::stack::ProcessImages::load_with(
        pid,
        &crate::debuginfo::LoadOptions::default(),
        Some(binary.clone()),
    )?;
    let mut t = Tracee::seize(pid)?;
    let result = (|| {
        let q = quiesce(&mut t, &default_quiescent_calls(), timeout)?;
        let (tid, nr) = q
            .threads
            .iter()
            .copied()
            .find(|(tid, _)| *tid == pid)
            .unwrap_or(q.threads[0]);
        let r = t.regs(tid)?;
        let findings = coverage::thread_state(&t, binary, rules);
        let frames = super::frames::read(&t, tid, &images, binary).map_err(|e| {
            anyhow::Error::new(e).context(format!("unwinding thread {tid} of process {pid}"))
        })?;
        let regions = super::frames::Regions::of(pid, frames.extent);
        Ok(OldAt {
            main: Point::new(tid, nr, [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9]),
            findings,
            images,
            frames,
            regions,
        })
    })();
    t.detach()?;
    result
}

/// Kinds of wait, for matching the old and the new version's calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `poll`, `ppoll`.
    Poll,
    /// `select`, `pselect6`.
    Select,
    /// `epoll_wait`, `epoll_pwait`, `epoll_pwait2`.
    Epoll,
    /// `accept`, `accept4`.
    Accept,
    /// `read`.
    Read,
    /// `recvfrom`, `recvmsg`.
    Recv,
    /// `nanosleep`, `clock_nanosleep`, `pause`, `restart_syscall`.
    Sleep,
    /// `wait4`.
    Wait,
}

/// The kind of wait `nr` is.
pub fn class(nr: i64) -> Option<Class> {
    Some(match nr {
        libc::SYS_poll | libc::SYS_ppoll => Class::Poll,
        libc::SYS_select | libc::SYS_pselect6 => Class::Select,
        libc::SYS_epoll_wait | libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => Class::Epoll,
        libc::SYS_accept | libc::SYS_accept4 => Class::Accept,
        libc::SYS_read => Class::Read,
        libc::SYS_recvfrom | libc::SYS_recvmsg => Class::Recv,
        libc::SYS_nanosleep
        | libc::SYS_clock_nanosleep
        | libc::SYS_pause
        | libc::SYS_restart_syscall => Class::Sleep,
        libc::SYS_wait4 => Class::Wait,
        _ => return None,
    })
}

/// Whether the new version's call `new` corresponds to the old process's wait `old`.
pub fn corresponds(old: &Point, new: &SyscallEntry) -> bool {
    let (Some(a), Some(b)) = (class(old.nr), class(new.nr as i64)) else {
        return false;
    };
    if old.nr == libc::SYS_restart_syscall {
        // A sleep or poll continued after an earlier stop: the call itself is not known.
        return matches!(b, Class::Sleep | Class::Poll);
    }
    a == b
}

/// The name of a system call that may be a quiescent point (others by number).
pub fn name(nr: i64) -> &'static str {
    match nr {
        libc::SYS_poll => "poll",
        libc::SYS_ppoll => "ppoll",
        libc::SYS_select => "select",
        libc::SYS_pselect6 => "pselect6",
        libc::SYS_epoll_wait => "epoll_wait",
        libc::SYS_epoll_pwait => "epoll_pwait",
        libc::SYS_epoll_pwait2 => "epoll_pwait2",
        libc::SYS_accept => "accept",
        libc::SYS_accept4 => "accept4",
        libc::SYS_read => "read",
        libc::SYS_recvfrom => "recvfrom",
        libc::SYS_recvmsg => "recvmsg",
        libc::SYS_nanosleep => "nanosleep",
        libc::SYS_clock_nanosleep => "clock_nanosleep",
        libc::SYS_pause => "pause",
        libc::SYS_wait4 => "wait4",
        libc::SYS_restart_syscall => "restart_syscall",
        libc::SYS_bind => "bind",
        libc::SYS_listen => "listen",
        libc::SYS_futex => "futex",
        _ => "a system call",
    }
}

/// How the future's held call is resumed when it takes over. Never an `EINTR` the program
/// was not seen to survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resume {
    /// The call runs as the program issued it (`accept` on the listener, a sleep): its
    /// arguments are the same as the old process's.
    Reissue,
    /// The call returns 0, as when its timeout expires, with its results cleared as the
    /// kernel would clear them: the loop goes round and computes its next call from the
    /// transferred state. Chosen only where the future was seen to come back to the same
    /// wait after such a return.
    TimedOut,
    /// The call fails with `EINTR`. Chosen only where the future was seen to come back to the
    /// same wait after such a return and a timeout return was not survived.
    Interrupted,
}

impl Resume {
    /// What may resume a held call `nr`, in order of preference.
    pub fn candidates(nr: i64) -> &'static [Resume] {
        match class(nr) {
            Some(Class::Poll | Class::Select | Class::Epoll) => {
                &[Resume::TimedOut, Resume::Interrupted]
            }
            _ => &[Resume::Reissue],
        }
    }

    /// Finishes (or lets run) the call thread `entry.tid` is held at, as this resume says.
    /// `may_write(addr, len)` says where the call's results may be cleared (the thread's
    /// stack, the executable's data: never memory the transfer may have freed).
    pub fn apply(
        self,
        tracee: &mut Tracee,
        entry: &SyscallEntry,
        may_write: &dyn Fn(u64, u64) -> bool,
    ) -> tracer::Result<()> {
        match self {
            Resume::Reissue => Ok(()),
            Resume::Interrupted => tracee.skip_held_syscall(entry.tid, -(libc::EINTR as i64)),
            Resume::TimedOut => {
                let a = entry.args;
                let mut clear: Vec<(u64, u64)> = Vec::new();
                match entry.nr as i64 {
                    libc::SYS_select | libc::SYS_pselect6 => {
                        let bytes = (a[0].min(1 << 20)).div_ceil(64) * 8;
                        for p in [a[1], a[2], a[3]] {
                            if p != 0 {
                                clear.push((p, bytes));
                            }
                        }
                        // select(2) on Linux leaves the time not slept in the timeout.
                        if entry.nr as i64 == libc::SYS_select && a[4] != 0 {
                            clear.push((a[4], 16));
                        }
                    }
                    libc::SYS_poll | libc::SYS_ppoll => {
                        for i in 0..a[1].min(1 << 16) {
                            clear.push((a[0] + i * 8 + 6, 2));
                        }
                    }
                    _ => {}
                }
                for (addr, len) in clear {
                    if may_write(addr, len) {
                        tracee.poke(tracer::RemoteAddr::new(addr), &vec![0u8; len as usize])?;
                    }
                }
                tracee.skip_held_syscall(entry.tid, 0)
            }
        }
    }
}

/// Whether the call at `entry` waits (not a zero timeout, not a non-blocking descriptor).
pub fn blocks(mem: &tracer::ProcessMemory, entry: &SyscallEntry) -> tracer::Result<bool> {
    Ok(waits(mem, entry.nr as i64, &entry.args)? == Wait::Blocks)
}
