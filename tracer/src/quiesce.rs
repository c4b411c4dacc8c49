//! Waiting until a process is quiescent: every thread blocked in a system call at the top of
//! its loop (`epoll_wait`, `accept`, `poll`, `read` on a socket or pipe, `nanosleep`, ...),
//! where its state is consistent and no half-done work sits on its stack.
//!
//! The check reads the registers of a stopped thread: a thread our interrupt took out of a
//! blocking call has `orig_rax` = the call and `rax` = `-ERESTART*` or `-EINTR` (ptrace(2),
//! "syscall-exit-stop" and signal(7)). A thread stopped anywhere else is not quiescent; the
//! process is then let run until `/proc/PID/task/TID/syscall` shows every thread blocked in a
//! quiescent call, and checked again, until a deadline.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::fd::{fd_info, FdTarget};
use crate::ptrace::{Backoff, Restart};
use crate::tracee::Tracee;

/// Kernel results that mean "interrupted while blocked" (include/linux/errno.h).
const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// The system calls at which a thread counts as quiescent by default.
pub fn default_quiescent_calls() -> Vec<i64> {
    vec![
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_select,
        libc::SYS_pselect6,
        libc::SYS_read,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
        libc::SYS_pause,
        libc::SYS_wait4,
        // nanosleep and poll continue as restart_syscall after a stop.
        libc::SYS_restart_syscall,
    ]
}

/// Where one thread is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThreadPoint {
    /// Blocked in a quiescent system call.
    Quiescent {
        /// The call.
        nr: i64,
    },
    /// In a system call that is not quiescent (or a `read` of something that is neither a
    /// socket nor a pipe, such as a file).
    OtherCall {
        /// The call.
        nr: i64,
    },
    /// In a quiescent call that returns at once (a zero timeout, a non-blocking descriptor):
    /// a busy loop.
    Polling {
        /// The call.
        nr: i64,
        /// Why it does not wait.
        why: &'static str,
    },
    /// Running user code (or stopped outside any call).
    Running,
}

/// The result of a successful [`quiesce`]: every thread and its call.
#[derive(Debug, Clone)]
pub struct Quiescent {
    /// `(thread, system call)` for every thread.
    pub threads: Vec<(Pid, i64)>,
    /// How long it took.
    pub waited: Duration,
    /// How many times the process was stopped and checked.
    pub attempts: u32,
}

/// Where stopped thread `tid` of `tracee` is.
pub fn thread_point(tracee: &Tracee, tid: Pid, calls: &[i64]) -> Result<ThreadPoint> {
    let r = tracee.regs(tid)?;
    let nr = r.orig_rax as i64;
    if nr < 0 {
        return Ok(ThreadPoint::Running);
    }
    let ret = r.rax as i64;
    let interrupted = [
        -ERESTARTSYS,
        -ERESTARTNOINTR,
        -ERESTARTNOHAND,
        -ERESTART_RESTARTBLOCK,
        -(libc::EINTR as i64),
    ]
    .contains(&ret);
    // At a syscall-enter-stop (a held call) rax is -ENOSYS and the call has not run yet.
    let held = tracee.thread(tid).and_then(|t| t.stop) == Some(crate::ptrace::Stop::SyscallEnter);
    if !(interrupted || held) || !calls.contains(&nr) {
        return Ok(ThreadPoint::OtherCall { nr });
    }
    let args = [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9];
    match waits(tracee.memory(), nr, &args)? {
        Wait::Blocks => Ok(ThreadPoint::Quiescent { nr }),
        Wait::NotAWait => Ok(ThreadPoint::OtherCall { nr }),
        Wait::Returns(why) => Ok(ThreadPoint::Polling { nr, why }),
    }
}

/// Whether a call waits for something to happen, as a quiescent point must.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// It blocks until an event (or a non-zero timeout).
    Blocks,
    /// It returns at once: a zero timeout, a non-blocking descriptor, `MSG_DONTWAIT`. A loop
    /// that polls like this is busy, not at rest, and the call's result is not what the
    /// program waits for.
    Returns(&'static str),
    /// A `read`/`recv` of something that is neither a socket nor a pipe (a file, a device):
    /// not the wait of a main loop.
    NotAWait,
}

/// Whether system call `nr` with arguments `args`, about to run (or interrupted) in the
/// process of `mem`, waits: see [`Wait`]. Reads the timeout structures the call points to and
/// the descriptor's flags (`O_NONBLOCK`).
pub fn waits(mem: &crate::ProcessMemory, nr: i64, args: &[u64; 6]) -> Result<Wait> {
    let zero_time = |ptr: u64| -> Result<bool> {
        if ptr == 0 {
            return Ok(false); // NULL: no timeout, blocks
        }
        let mut b = [0u8; 16];
        crate::Memory::read(mem, crate::RemoteAddr::new(ptr), &mut b)?;
        Ok(b.iter().all(|&x| x == 0))
    };
    // `None`: no such descriptor (the call fails at once with EBADF).
    let fd_of = |fd: u64| -> Result<Option<(bool, FdTarget)>> {
        Ok(fd_info(mem.pid(), fd as i32)?.map(|i| (i.flags & libc::O_NONBLOCK != 0, i.target)))
    };
    Ok(match nr {
        libc::SYS_poll if args[2] as i32 == 0 => Wait::Returns("a zero timeout"),
        libc::SYS_epoll_wait | libc::SYS_epoll_pwait if args[3] as i32 == 0 => {
            Wait::Returns("a zero timeout")
        }
        libc::SYS_ppoll if zero_time(args[2])? => Wait::Returns("a zero timeout"),
        libc::SYS_epoll_pwait2 if zero_time(args[3])? => Wait::Returns("a zero timeout"),
        libc::SYS_select | libc::SYS_pselect6 if zero_time(args[4])? => {
            Wait::Returns("a zero timeout")
        }
        libc::SYS_read | libc::SYS_recvfrom | libc::SYS_recvmsg => {
            let dontwait = match nr {
                libc::SYS_recvfrom => args[3] as i32 & libc::MSG_DONTWAIT != 0,
                libc::SYS_recvmsg => args[2] as i32 & libc::MSG_DONTWAIT != 0,
                _ => false,
            };
            match fd_of(args[0])? {
                None => Wait::NotAWait,
                Some((_, FdTarget::Socket(_) | FdTarget::Pipe(_))) if dontwait => {
                    Wait::Returns("MSG_DONTWAIT")
                }
                Some((true, FdTarget::Socket(_) | FdTarget::Pipe(_))) => {
                    Wait::Returns("a non-blocking descriptor")
                }
                // Input already queued: the call returns at once, in the middle of the
                // program's work on it, not at its rest.
                Some((false, FdTarget::Socket(_) | FdTarget::Pipe(_)))
                    if crate::fd::queued_input(mem.pid(), args[0] as i32).unwrap_or(0) > 0 =>
                {
                    Wait::Returns("input already waiting")
                }
                Some((false, FdTarget::Socket(_) | FdTarget::Pipe(_))) => Wait::Blocks,
                Some(_) => Wait::NotAWait,
            }
        }
        libc::SYS_accept | libc::SYS_accept4 => match fd_of(args[0])? {
            None => Wait::NotAWait,
            Some((true, _)) => Wait::Returns("a non-blocking descriptor"),
            Some((false, _)) => Wait::Blocks,
        },
        _ => Wait::Blocks,
    })
}

/// Whether `/proc` shows thread `tid` blocked in one of `calls` (without stopping it).
fn looks_blocked(pid: Pid, tid: Pid, calls: &[i64]) -> bool {
    let Ok(text) = crate::procfs::read_text(pid, &format!("task/{tid}/syscall")) else {
        return false;
    };
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse::<i64>().ok())
        .is_some_and(|n| calls.contains(&n))
}

/// Brings the seized `tracee` (every thread stopped) to a point where every thread is blocked
/// in one of `calls`, waiting at most `timeout`. On success every thread is stopped there. On
/// timeout every thread is stopped too (the caller detaches, and the process runs on as it
/// was), and the error names each thread that never got there and where it was.
pub fn quiesce(tracee: &mut Tracee, calls: &[i64], timeout: Duration) -> Result<Quiescent> {
    let start = Instant::now();
    let deadline = start + timeout;
    let pid = tracee.pid();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut points = Vec::new();
        for tid in tracee.tids() {
            points.push((tid, thread_point(tracee, tid, calls)?));
        }
        if points
            .iter()
            .all(|(_, p)| matches!(p, ThreadPoint::Quiescent { .. }))
        {
            return Ok(Quiescent {
                threads: points
                    .into_iter()
                    .map(|(t, p)| match p {
                        ThreadPoint::Quiescent { nr } => (t, nr),
                        _ => unreachable!(),
                    })
                    .collect(),
                waited: start.elapsed(),
                attempts,
            });
        }
        if Instant::now() >= deadline {
            let busy: Vec<String> = points
                .iter()
                .filter(|(_, p)| !matches!(p, ThreadPoint::Quiescent { .. }))
                .map(|(t, p)| {
                    let comm = crate::procfs::read_text(pid, &format!("task/{t}/comm"))
                        .map(|c| c.trim().to_owned())
                        .unwrap_or_default();
                    match p {
                        ThreadPoint::OtherCall { nr } => {
                            format!("thread {t} ({comm}) in system call {nr}")
                        }
                        ThreadPoint::Polling { nr, why } => {
                            format!("thread {t} ({comm}) polling in system call {nr} with {why}")
                        }
                        _ => format!("thread {t} ({comm}) running"),
                    }
                })
                .collect();
            return Err(Error::Timeout {
                pid,
                millis: timeout.as_millis() as u64,
                during: format!("waiting for quiescence: {}", busy.join(", ")),
            });
        }
        // Let it run until /proc shows every thread in a quiescent call, then look again.
        tracee.resume_all(Restart::Continue)?;
        let mut backoff = Backoff::default();
        while Instant::now() < deadline
            && !tracee.tids().iter().all(|&t| looks_blocked(pid, t, calls))
        {
            backoff.pause();
        }
        tracee.interrupt_all(crate::tracee::STOP_TIMEOUT)?;
    }
}
