//! The one error type of the `tracer` crate.
//!
//! A tracee that disappears (exits, is killed, `ESRCH`) is its own variant, [`Error::Gone`]:
//! callers routinely need to tell "the process died under us" from "we did something wrong".

use std::io;
use std::path::PathBuf;

use nix::unistd::Pid;

use crate::addr::RemoteAddr;

/// Errors of process control and remote memory access.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process or thread does not exist (any more): it exited, was killed, or never was.
    #[error("process {pid} is gone{}", describe_exit(*.status))]
    Gone {
        /// The process or thread that vanished.
        pid: Pid,
        /// How it ended, when we saw it end: `Ok(code)` for an exit, `Err(signal)` for a kill.
        status: Option<ExitStatus>,
    },

    /// No process has this id (it never existed, or ended before we first looked).
    #[error("no such process {pid}")]
    NoSuchProcess {
        /// The id asked for.
        pid: Pid,
    },

    /// The kernel refused to let us trace or touch the process.
    #[error("not permitted to {op} process {pid}: {source}")]
    PermissionDenied {
        /// The process we were refused.
        pid: Pid,
        /// What we tried.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: nix::Error,
    },

    /// The process is already traced by another process (a debugger, strace, another tracer).
    #[error("process {pid} is already traced by process {tracer}")]
    AlreadyTraced {
        /// The process we wanted to trace.
        pid: Pid,
        /// Its current tracer (`TracerPid` of `/proc/PID/status`).
        tracer: Pid,
    },

    /// A system call about a process failed.
    #[error("{op} on process {pid}: {source}")]
    Sys {
        /// The process concerned.
        pid: Pid,
        /// The operation, named after the system call or ptrace request.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: nix::Error,
    },

    /// An operation on a file descriptor of a process (ours or another's) failed.
    #[error("{op} on descriptor {fd} of process {pid}: {source}")]
    Fd {
        /// The process that owns the descriptor.
        pid: Pid,
        /// The descriptor number in that process.
        fd: i32,
        /// The operation, named after the system call.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: nix::Error,
    },

    /// Remote memory could not be read or written.
    #[error("cannot {op} {len} bytes at {addr} in process {pid}: {source}")]
    Memory {
        /// The process whose memory it is.
        pid: Pid,
        /// `read` or `write`.
        op: &'static str,
        /// Start of the access.
        addr: RemoteAddr,
        /// Length of the access.
        len: usize,
        /// Why it failed.
        #[source]
        source: io::Error,
    },

    /// An address is outside every region of an in-memory snapshot.
    #[error("address {addr} (+{len} bytes) is not mapped in {what}")]
    Unmapped {
        /// What was being read (e.g. "snapshot").
        what: String,
        /// Start of the access.
        addr: RemoteAddr,
        /// Length of the access.
        len: usize,
    },

    /// Reading a file about a process (under `/proc`) or a binary failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// A file about a process did not have the expected format.
    #[error("cannot parse {what} of process {pid}: {detail}")]
    Parse {
        /// The process concerned.
        pid: Pid,
        /// What was parsed (e.g. "/proc/PID/maps").
        what: &'static str,
        /// What was wrong.
        detail: String,
    },

    /// A tracee stopped in a way the current operation cannot handle.
    #[error("process {pid} stopped unexpectedly ({stop}) while {during}")]
    UnexpectedStop {
        /// The thread that stopped.
        pid: Pid,
        /// The stop, described.
        stop: String,
        /// What we were doing.
        during: String,
    },

    /// Code run inside the tracee on our behalf (a remote call) faulted.
    #[error("remote {what} in process {pid} faulted with {signal} at {addr}")]
    RemoteFault {
        /// The thread that ran the code.
        pid: Pid,
        /// What was run.
        what: String,
        /// The signal it received.
        signal: nix::sys::signal::Signal,
        /// Its instruction pointer when it faulted.
        addr: RemoteAddr,
    },

    /// A system call we injected into the tracee ran and failed (its raw `-errno` result).
    #[error("remote {call} in process {pid} failed: {errno}")]
    RemoteSyscall {
        /// The process it ran in.
        pid: Pid,
        /// The call, with its interesting arguments.
        call: String,
        /// The kernel's answer.
        errno: nix::Error,
    },

    /// Passing descriptors into a process, or rebuilding an epoll set in it, found something no
    /// single system call reports: a request that cannot be met (a target number given twice), a
    /// channel that is not where we were told, a truncated or foreign message, a registration
    /// whose file is not at its number in the process.
    #[error("descriptor {fd} of process {pid}: {detail}")]
    FdTransfer {
        /// The process receiving descriptors.
        pid: Pid,
        /// The descriptor number concerned, in that process.
        fd: i32,
        /// What was wrong.
        detail: String,
    },

    /// A symbol could not be resolved in the process's loaded objects.
    #[error("symbol `{name}` not found in process {pid}")]
    SymbolNotFound {
        /// The process searched.
        pid: Pid,
        /// The symbol.
        name: String,
    },

    /// A file is not something we can work with (not ELF, wrong architecture, ...).
    #[error("{}: {detail}", path.display())]
    BadBinary {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },

    /// A condition was not reached within its time limit.
    #[error("process {pid}: timed out after {millis} ms while {during}")]
    Timeout {
        /// The process waited for.
        pid: Pid,
        /// The limit.
        millis: u64,
        /// What we waited for.
        during: String,
    },

    /// Spawning a program failed before it ran.
    #[error("cannot spawn {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// How a process ended: `Ok(exit code)` or `Err(signal)`.
pub type ExitStatus = std::result::Result<i32, nix::sys::signal::Signal>;

fn describe_exit(status: Option<ExitStatus>) -> String {
    match status {
        None => String::new(),
        Some(Ok(code)) => format!(" (exited with status {code})"),
        Some(Err(sig)) => format!(" (killed by {sig})"),
    }
}

impl Error {
    /// Builds the error for a failed system call, turning `ESRCH` into [`Error::Gone`] and
    /// `EPERM` into [`Error::PermissionDenied`].
    pub fn sys(pid: Pid, op: &'static str, source: nix::Error) -> Self {
        match source {
            nix::Error::ESRCH => Error::Gone { pid, status: None },
            nix::Error::EPERM => Error::PermissionDenied { pid, op, source },
            _ => Error::Sys { pid, op, source },
        }
    }

    /// Whether this error means the process is gone (or never was).
    pub fn is_gone(&self) -> bool {
        matches!(self, Error::Gone { .. } | Error::NoSuchProcess { .. })
    }
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
