//! The vocabulary of ptrace(2): stops, events, registers, and waiting for a tracee.
//!
//! Names follow the man page's "Stopped states": signal-delivery-stop, group-stop,
//! PTRACE_EVENT stops, syscall-stops. Every wait status a `__WALL` wait can return maps to one
//! [`Status`]; nothing is silently dropped.

use std::time::{Duration, Instant};

use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::addr::RemoteAddr;
use crate::error::{Error, Result};

/// The general-purpose registers of a thread (x86_64 `user_regs_struct`).
pub type Regs = libc::user_regs_struct;

/// Length of the x86_64 `syscall` instruction (`0f 05`): a syscall-stop's `rip` is this far
/// past it, which is where the kernel rewinds to restart an interrupted call.
pub const SYSCALL_INSN_LEN: u64 = 2;

/// A `PTRACE_EVENT_*` stop (other than `PTRACE_EVENT_STOP`, which is [`Stop::Interrupt`] or
/// [`Stop::Group`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `PTRACE_EVENT_CLONE`: the thread created a thread or process with `clone`; the message
    /// is the new id.
    Clone,
    /// `PTRACE_EVENT_FORK`.
    Fork,
    /// `PTRACE_EVENT_VFORK`.
    Vfork,
    /// `PTRACE_EVENT_VFORK_DONE`.
    VforkDone,
    /// `PTRACE_EVENT_EXEC`: the message is the former thread id.
    Exec,
    /// `PTRACE_EVENT_EXIT`: the thread is about to exit; the message is its wait status.
    Exit,
    /// `PTRACE_EVENT_SECCOMP`.
    Seccomp,
    /// An event this crate does not know.
    Other(i32),
}

impl Event {
    fn from_raw(e: i32) -> Self {
        match e {
            libc::PTRACE_EVENT_CLONE => Event::Clone,
            libc::PTRACE_EVENT_FORK => Event::Fork,
            libc::PTRACE_EVENT_VFORK => Event::Vfork,
            libc::PTRACE_EVENT_VFORK_DONE => Event::VforkDone,
            libc::PTRACE_EVENT_EXEC => Event::Exec,
            libc::PTRACE_EVENT_EXIT => Event::Exit,
            libc::PTRACE_EVENT_SECCOMP => Event::Seccomp,
            other => Event::Other(other),
        }
    }
}

/// Why a traced thread is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `PTRACE_EVENT_STOP` with `SIGTRAP`: stopped by `PTRACE_INTERRUPT`, or the first stop of a
    /// thread attached automatically (`PTRACE_O_TRACECLONE`).
    Interrupt,
    /// group-stop (`PTRACE_EVENT_STOP` with a stopping signal): the process was stopped by
    /// `SIGSTOP`, `SIGTSTP`, ... and stays stopped until `SIGCONT`.
    Group(Signal),
    /// signal-delivery-stop: `signal` is about to be delivered. Restarting with the signal
    /// delivers it; restarting without suppresses it.
    Signal(Signal),
    /// syscall-enter-stop: the thread is about to execute system call `nr`; changing `orig_rax`
    /// now changes or (with -1) skips the call.
    SyscallEnter,
    /// syscall-exit-stop: the call returned; `rax` holds its result and may be changed.
    SyscallExit,
    /// A `PTRACE_EVENT_*` stop with its `PTRACE_GETEVENTMSG` message.
    Event {
        /// Which event.
        event: Event,
        /// Its message.
        msg: u64,
    },
}

/// What a wait reported about one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The thread is in a ptrace-stop.
    Stopped(Stop),
    /// The thread (the whole process, for a leader) exited with this code.
    Exited(i32),
    /// The thread was killed by this signal.
    Killed(Signal),
}

/// Waits for a state change of `tid` (or of any tracee for `None`), with `__WALL` so that
/// threads are reported too. Returns `None` if nothing changed (`WNOHANG`) and `block` is false.
pub fn wait_raw(tid: Option<Pid>, block: bool) -> Result<Option<(Pid, Status)>> {
    let mut flags = WaitPidFlag::__WALL;
    if !block {
        flags |= WaitPidFlag::WNOHANG;
    }
    loop {
        let ws = match waitpid(tid, Some(flags)) {
            Ok(ws) => ws,
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::ECHILD) => {
                return Err(Error::Gone {
                    pid: tid.unwrap_or(Pid::from_raw(-1)),
                    status: None,
                })
            }
            Err(e) => return Err(Error::sys(tid.unwrap_or(Pid::from_raw(-1)), "waitpid", e)),
        };
        return Ok(match ws {
            WaitStatus::StillAlive => None,
            WaitStatus::Exited(pid, code) => Some((pid, Status::Exited(code))),
            WaitStatus::Signaled(pid, sig, _) => Some((pid, Status::Killed(sig))),
            WaitStatus::Stopped(pid, sig) => Some((pid, Status::Stopped(Stop::Signal(sig)))),
            WaitStatus::PtraceEvent(pid, sig, ev) if ev == libc::PTRACE_EVENT_STOP => {
                let stop = match sig {
                    Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU => {
                        Stop::Group(sig)
                    }
                    _ => Stop::Interrupt,
                };
                Some((pid, Status::Stopped(stop)))
            }
            WaitStatus::PtraceEvent(pid, _, ev) => {
                let msg = match ptrace::getevent(pid) {
                    Ok(m) => m as u64,
                    // The thread may have been killed between the stop and this call.
                    Err(_) => 0,
                };
                Some((
                    pid,
                    Status::Stopped(Stop::Event {
                        event: Event::from_raw(ev),
                        msg,
                    }),
                ))
            }
            WaitStatus::PtraceSyscall(pid) => {
                let stop = match ptrace::syscall_info(pid) {
                    Ok(info) if info.op == libc::PTRACE_SYSCALL_INFO_EXIT => Stop::SyscallExit,
                    Ok(_) => Stop::SyscallEnter,
                    Err(e) => return Err(Error::sys(pid, "PTRACE_GET_SYSCALL_INFO", e)),
                };
                Some((pid, Status::Stopped(stop)))
            }
            WaitStatus::Continued(_) => continue,
        });
    }
}

/// Waits for `tid` (or any tracee) until `deadline`. `waitpid(2)` has no time limit, so this
/// polls with `WNOHANG`, spinning briefly and then sleeping with a backoff capped at 1 ms: a
/// stop is seen at most ~1 ms late, and a hung tracee costs little CPU.
pub fn wait_until(tid: Option<Pid>, deadline: Option<Instant>) -> Result<Option<(Pid, Status)>> {
    let Some(deadline) = deadline else {
        return wait_raw(tid, true);
    };
    let mut backoff = Backoff::default();
    loop {
        if let Some(r) = wait_raw(tid, false)? {
            return Ok(Some(r));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        backoff.pause();
    }
}

/// Pauses between polls of something that has no blocking wait with a time limit: spins
/// (yielding) 200 times, then sleeps 20 µs doubling up to 1 ms. A change is seen at most
/// ~1 ms late, and a long wait costs little CPU.
#[derive(Debug, Default)]
pub struct Backoff {
    spins: u32,
    nap: Duration,
}

impl Backoff {
    /// Waits a little before the next poll.
    pub fn pause(&mut self) {
        if self.spins < 200 {
            self.spins += 1;
            std::thread::yield_now();
        } else {
            self.nap = (self.nap * 2).clamp(Duration::from_micros(20), Duration::from_millis(1));
            std::thread::sleep(self.nap);
        }
    }
}

/// The registers of a stopped thread.
pub fn regs(tid: Pid) -> Result<Regs> {
    ptrace::getregs(tid).map_err(|e| Error::sys(tid, "PTRACE_GETREGS", e))
}

/// Sets the registers of a stopped thread.
pub fn set_regs(tid: Pid, regs: &Regs) -> Result<()> {
    ptrace::setregs(tid, *regs).map_err(|e| Error::sys(tid, "PTRACE_SETREGS", e))
}

/// The instruction pointer in `regs`.
pub fn ip(regs: &Regs) -> RemoteAddr {
    RemoteAddr::new(regs.rip)
}

/// How to restart a stopped thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// `PTRACE_CONT`: run until the next signal or event.
    Continue,
    /// `PTRACE_SYSCALL`: run until the next syscall-enter or syscall-exit too.
    Syscall,
    /// `PTRACE_LISTEN`: stay in group-stop, but report the `SIGCONT` that ends it.
    Listen,
}

/// Restarts a stopped thread, delivering `sig` if it is in a signal-delivery-stop.
pub fn restart(tid: Pid, how: Restart, sig: Option<Signal>) -> Result<()> {
    let r = match how {
        Restart::Continue => ptrace::cont(tid, sig),
        Restart::Syscall => ptrace::syscall(tid, sig),
        Restart::Listen => {
            // nix has no PTRACE_LISTEN wrapper.
            // SAFETY: PTRACE_LISTEN takes no addr/data (ptrace(2)); the pid is a tracee of ours.
            let rc = unsafe {
                libc::ptrace(
                    libc::PTRACE_LISTEN,
                    tid.as_raw(),
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                )
            };
            if rc == -1 {
                Err(nix::Error::last())
            } else {
                Ok(())
            }
        }
    };
    r.map_err(|e| Error::sys(tid, "ptrace restart", e))
}
