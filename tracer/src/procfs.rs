//! What `/proc/PID/...` says about a process.

use std::path::PathBuf;

use nix::unistd::Pid;

use crate::addr::RemoteAddr;
use crate::error::{Error, Result};

/// Whether `/proc/PID` exists (the process or thread exists, possibly as a zombie).
pub fn exists(pid: Pid) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn proc_path(pid: Pid, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

/// Reads `/proc/PID/FILE` as text; a missing process is [`Error::Gone`].
pub fn read_text(pid: Pid, file: &str) -> Result<String> {
    let path = proc_path(pid, file);
    std::fs::read_to_string(&path).map_err(|source| io_error(pid, path, source))
}

/// Reads `/proc/PID/FILE` as bytes; a missing process is [`Error::Gone`].
pub fn read_bytes(pid: Pid, file: &str) -> Result<Vec<u8>> {
    let path = proc_path(pid, file);
    std::fs::read(&path).map_err(|source| io_error(pid, path, source))
}

fn io_error(pid: Pid, path: PathBuf, source: std::io::Error) -> Error {
    if source.kind() == std::io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH)
    {
        Error::Gone { pid, status: None }
    } else {
        Error::Io { path, source }
    }
}

/// The value of field `key` (e.g. `TracerPid`) of `/proc/PID/status`.
pub fn status_field(pid: Pid, key: &str) -> Result<String> {
    let text = read_text(pid, "status")?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| Error::Parse {
            pid,
            what: "/proc/PID/status",
            detail: format!("no field {key}"),
        })
}

/// The process tracing `pid`, if any (`TracerPid` of `/proc/PID/status`).
pub fn tracer_of(pid: Pid) -> Result<Option<Pid>> {
    let v = status_field(pid, "TracerPid")?;
    let n: i32 = v.parse().map_err(|_| Error::Parse {
        pid,
        what: "/proc/PID/status",
        detail: format!("TracerPid {v:?}"),
    })?;
    Ok((n != 0).then(|| Pid::from_raw(n)))
}

/// The thread ids of process `pid` (`/proc/PID/task`), sorted.
pub fn threads(pid: Pid) -> Result<Vec<Pid>> {
    let path = proc_path(pid, "task");
    let dir = std::fs::read_dir(&path).map_err(|source| io_error(pid, path.clone(), source))?;
    let mut tids: Vec<Pid> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .map(Pid::from_raw)
        .collect();
    tids.sort();
    Ok(tids)
}

/// Signal masks of one thread, from `/proc/PID/task/TID/status` (bit `n-1` is signal `n`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalMasks {
    /// Pending for this thread (`SigPnd`).
    pub pending_thread: u64,
    /// Pending for the whole process (`ShdPnd`).
    pub pending_shared: u64,
    /// Blocked (`SigBlk`).
    pub blocked: u64,
    /// Ignored (`SigIgn`).
    pub ignored: u64,
    /// Caught by a handler (`SigCgt`).
    pub caught: u64,
}

impl SignalMasks {
    /// Signals pending and not blocked that have a handler: delivering one of them runs user
    /// code, which is what makes an interrupted system call visible to the program.
    pub fn deliverable_to_handler(&self) -> u64 {
        (self.pending_thread | self.pending_shared) & !self.blocked & self.caught
    }
}

/// The signal masks of thread `tid` of process `pid`.
pub fn signal_masks(pid: Pid, tid: Pid) -> Result<SignalMasks> {
    let text = read_text(pid, &format!("task/{tid}/status"))?;
    let mut m = SignalMasks::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let slot = match k {
            "SigPnd" => &mut m.pending_thread,
            "ShdPnd" => &mut m.pending_shared,
            "SigBlk" => &mut m.blocked,
            "SigIgn" => &mut m.ignored,
            "SigCgt" => &mut m.caught,
            _ => continue,
        };
        *slot = u64::from_str_radix(v.trim(), 16).map_err(|_| Error::Parse {
            pid,
            what: "/proc/PID/task/TID/status",
            detail: format!("{k}: {v:?}"),
        })?;
    }
    Ok(m)
}

/// The auxiliary vector of process `pid` (`/proc/PID/auxv`) as (type, value) pairs.
pub fn auxv(pid: Pid) -> Result<Vec<(u64, u64)>> {
    let bytes = read_bytes(pid, "auxv")?;
    Ok(bytes
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_ne_bytes(c[..8].try_into().unwrap()),
                u64::from_ne_bytes(c[8..].try_into().unwrap()),
            )
        })
        .take_while(|&(t, _)| t != libc::AT_NULL)
        .collect())
}

/// The entry point of the main executable as loaded (`AT_ENTRY`): code that runs once at start
/// and never again, so it is where remote calls put their few bytes of trampoline.
pub fn entry_point(pid: Pid) -> Result<RemoteAddr> {
    auxv(pid)?
        .into_iter()
        .find(|&(t, _)| t == libc::AT_ENTRY)
        .map(|(_, v)| RemoteAddr::new(v))
        .ok_or_else(|| Error::Parse {
            pid,
            what: "/proc/PID/auxv",
            detail: "no AT_ENTRY".into(),
        })
}
