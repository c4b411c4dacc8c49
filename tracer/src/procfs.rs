//! What `/proc/PID/...` says about a process: threads, signal masks, the auxiliary vector,
//! memory mappings, and the execution context (program, arguments, environment, directory,
//! credentials, limits, umask, cgroups) that a replacement process must be started in.

use std::path::PathBuf;

use nix::unistd::Pid;

use crate::addr::{RemoteAddr, RemoteRange};
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
    if source.kind() == std::io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH) {
        // From /proc alone, "exited a moment ago" and "never was" look the same.
        Error::NoSuchProcess { pid }
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
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
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

// ---------------------------------------------------------------------------------------------
// Memory mappings
// ---------------------------------------------------------------------------------------------

/// Access permissions of a mapping (the `rwxp`/`rwxs` column of `/proc/PID/maps`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Perms {
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Shared (`s`) rather than private copy-on-write (`p`): writes reach the file or other
    /// processes mapping the same object.
    pub shared: bool,
}

impl Perms {
    fn parse(s: &str) -> Option<Perms> {
        let b = s.as_bytes();
        if b.len() != 4 {
            return None;
        }
        let flag = |i: usize, c: u8| match b[i] {
            x if x == c => Some(true),
            b'-' => Some(false),
            _ => None,
        };
        Some(Perms {
            read: flag(0, b'r')?,
            write: flag(1, b'w')?,
            exec: flag(2, b'x')?,
            shared: match b[3] {
                b's' => true,
                b'p' => false,
                _ => return None,
            },
        })
    }
}

/// A device number as `/proc` prints it (`major:minor`, in hex).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl DeviceId {
    /// The device number of a `stat` result (`st_dev`), to compare with a mapping's.
    pub fn from_dev_t(dev: u64) -> Self {
        DeviceId {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }
}

/// What a mapping maps, from the last column of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MappingKind {
    /// A file (possibly deleted or replaced since: see [`Mapping::deleted`]). Memfds and SysV
    /// shared memory show up here too, as `/memfd:NAME` and `/SYSV...`.
    File(PathBuf),
    /// The program break area (`[heap]`), grown by `brk`.
    Heap,
    /// The main thread's stack (`[stack]`; older kernels also printed `[stack:TID]`).
    Stack,
    /// The kernel's virtual shared object (`[vdso]`), an ELF image with symbols.
    Vdso,
    /// Kernel data pages read by the vDSO (`[vvar]`, and on newer kernels `[vvar_vclock]`).
    Vvar,
    /// The legacy fixed-address `[vsyscall]` page.
    Vsyscall,
    /// Anonymous memory without a name (malloc arenas, thread stacks, large allocations).
    Anonymous,
    /// Any other bracketed name the kernel prints (`[anon:NAME]` set with `PR_SET_VMA`,
    /// `[uprobes]`, ...), kept verbatim so new kernels do not break parsing.
    Other(String),
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// The addresses mapped.
    pub range: RemoteRange,
    /// Access permissions.
    pub perms: Perms,
    /// Offset into the file of the first byte mapped (0 for anonymous mappings).
    pub offset: u64,
    /// Device of the mapped file (`00:00` when anonymous).
    pub dev: DeviceId,
    /// Inode of the mapped file (0 when anonymous).
    pub inode: u64,
    /// What is mapped.
    pub kind: MappingKind,
    /// The kernel marked the file ` (deleted)`: it was unlinked or replaced after being
    /// mapped. Its contents stay reachable through `/proc/PID/map_files`.
    pub deleted: bool,
}

impl Mapping {
    /// The mapped file's path, if a file is mapped.
    pub fn path(&self) -> Option<&std::path::Path> {
        match &self.kind {
            MappingKind::File(p) => Some(p),
            _ => None,
        }
    }

    /// The name of this mapping under `/proc/PID/map_files/` (`start-end` in lowercase hex),
    /// through which the mapped file can be opened even after it was deleted or replaced.
    pub fn map_files_name(&self) -> String {
        format!("{:x}-{:x}", self.range.start.get(), self.range.end.get())
    }
}

/// Parses one line of `/proc/PID/maps`; `None` if it is malformed.
///
/// The path is everything after the inode and its padding, so paths with spaces survive; the
/// kernel escapes only newlines in it (as `\012`), which we undo.
pub fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let s = rest.trim_start_matches(' ');
        let end = s.find(' ').unwrap_or(s.len());
        let (f, r) = s.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let (range, perms, offset, dev, inode) = (field()?, field()?, field()?, field()?, field()?);
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = Perms::parse(perms)?;
    let offset = u64::from_str_radix(offset, 16).ok()?;
    let (major, minor) = dev.split_once(':')?;
    let dev = DeviceId {
        major: u32::from_str_radix(major, 16).ok()?,
        minor: u32::from_str_radix(minor, 16).ok()?,
    };
    let inode: u64 = inode.parse().ok()?;
    let name = rest.trim_start_matches(' ');
    let (kind, deleted) = if name.is_empty() {
        (MappingKind::Anonymous, false)
    } else if name.starts_with('[') && inode == 0 {
        let kind = match name {
            "[heap]" => MappingKind::Heap,
            "[stack]" => MappingKind::Stack,
            "[vdso]" => MappingKind::Vdso,
            "[vsyscall]" => MappingKind::Vsyscall,
            n if n.starts_with("[vvar") => MappingKind::Vvar,
            n if n.starts_with("[stack:") => MappingKind::Stack,
            n => MappingKind::Other(n.to_owned()),
        };
        (kind, false)
    } else {
        let (path, deleted) = match name.strip_suffix(" (deleted)") {
            Some(p) => (p, true),
            None => (name, false),
        };
        (
            MappingKind::File(PathBuf::from(path.replace("\\012", "\n"))),
            deleted,
        )
    };
    Some(Mapping {
        range: RemoteRange::new(RemoteAddr::new(start), RemoteAddr::new(end)),
        perms,
        offset,
        dev,
        inode,
        kind,
        deleted,
    })
}

/// The memory mappings of process `pid` (`/proc/PID/maps`), in address order.
///
/// The list is a snapshot: a running process may map and unmap meanwhile, so stop it first
/// for a view that stays true.
pub fn maps(pid: Pid) -> Result<Vec<Mapping>> {
    let text = read_text(pid, "maps")?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            parse_maps_line(l).ok_or_else(|| Error::Parse {
                pid,
                what: "/proc/PID/maps",
                detail: format!("line {l:?}"),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Execution context
// ---------------------------------------------------------------------------------------------

fn read_link(pid: Pid, file: &str) -> Result<PathBuf> {
    let path = proc_path(pid, file);
    std::fs::read_link(&path).map_err(|source| io_error(pid, path, source))
}

/// The path of the program process `pid` runs (`readlink /proc/PID/exe`).
///
/// If the file was deleted or replaced since it was executed, the kernel appends
/// ` (deleted)` to the name; to run the very same binary again, open `/proc/PID/exe` itself
/// ([`exe_link`]), which still reaches the original inode.
pub fn exe(pid: Pid) -> Result<PathBuf> {
    read_link(pid, "exe")
}

/// `/proc/PID/exe`: the magic link that opens (and executes) the program of `pid` even when
/// its file has been deleted or overwritten by a new version.
pub fn exe_link(pid: Pid) -> PathBuf {
    proc_path(pid, "exe")
}

/// The current working directory of `pid` (`readlink /proc/PID/cwd`).
pub fn cwd(pid: Pid) -> Result<PathBuf> {
    read_link(pid, "cwd")
}

/// The root directory of `pid` (`readlink /proc/PID/root`): `/` unless it was `chroot`ed.
pub fn root(pid: Pid) -> Result<PathBuf> {
    read_link(pid, "root")
}

fn split_nul(bytes: &[u8]) -> Vec<std::ffi::OsString> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|s| std::ffi::OsStr::from_bytes(s).to_owned())
        .collect()
}

/// The argument vector of `pid` (`/proc/PID/cmdline`, NUL-separated).
///
/// This is read from the process's memory: a program that rewrote its `argv` strings (to set
/// its title) shows the rewritten ones. Empty for kernel threads and zombies.
pub fn cmdline(pid: Pid) -> Result<Vec<std::ffi::OsString>> {
    Ok(split_nul(&read_bytes(pid, "cmdline")?))
}

/// The environment `pid` was started with (`/proc/PID/environ`), as the raw `KEY=VALUE`
/// strings in their original order, exactly what `execve` would take to recreate it.
///
/// Changes the program made later with `setenv`/`putenv` live in its heap and are not seen.
/// Reading needs the right to ptrace the process.
pub fn environ(pid: Pid) -> Result<Vec<std::ffi::OsString>> {
    Ok(split_nul(&read_bytes(pid, "environ")?))
}

/// Splits an environment string `KEY=VALUE` at its first `=`; a string without one is a key
/// with an empty value.
pub fn split_env(entry: &std::ffi::OsStr) -> (&std::ffi::OsStr, &std::ffi::OsStr) {
    use std::os::unix::ffi::OsStrExt;
    let b = entry.as_bytes();
    match b.iter().position(|&c| c == b'=') {
        Some(i) => (
            std::ffi::OsStr::from_bytes(&b[..i]),
            std::ffi::OsStr::from_bytes(&b[i + 1..]),
        ),
        None => (entry, std::ffi::OsStr::new("")),
    }
}

/// User and group identities of a process (`Uid:`, `Gid:` and `Groups:` of
/// `/proc/PID/status`), all four of each kind as credentials(7) describes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// Real user id.
    pub uid: u32,
    /// Effective user id (used for most permission checks).
    pub euid: u32,
    /// Saved set-user-id.
    pub suid: u32,
    /// Filesystem user id (used for file access checks).
    pub fsuid: u32,
    /// Real group id.
    pub gid: u32,
    /// Effective group id.
    pub egid: u32,
    /// Saved set-group-id.
    pub sgid: u32,
    /// Filesystem group id.
    pub fsgid: u32,
    /// Supplementary groups, in the kernel's (sorted) order.
    pub groups: Vec<u32>,
}

fn parse_ids(pid: Pid, key: &str, value: &str) -> Result<Vec<u32>> {
    value
        .split_whitespace()
        .map(|v| v.parse::<u32>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| Error::Parse {
            pid,
            what: "/proc/PID/status",
            detail: format!("{key}: {value:?}"),
        })
}

fn four_ids(pid: Pid, key: &str, value: &str) -> Result<[u32; 4]> {
    let ids = parse_ids(pid, key, value)?;
    <[u32; 4]>::try_from(ids).map_err(|_| Error::Parse {
        pid,
        what: "/proc/PID/status",
        detail: format!("{key}: {value:?} (want four ids)"),
    })
}

/// The credentials of `pid`, read in one go from `/proc/PID/status`.
pub fn credentials(pid: Pid) -> Result<Credentials> {
    let text = read_text(pid, "status")?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .ok_or_else(|| Error::Parse {
                pid,
                what: "/proc/PID/status",
                detail: format!("no field {key}"),
            })
    };
    let [uid, euid, suid, fsuid] = four_ids(pid, "Uid", field("Uid")?)?;
    let [gid, egid, sgid, fsgid] = four_ids(pid, "Gid", field("Gid")?)?;
    let groups = parse_ids(pid, "Groups", field("Groups")?)?;
    Ok(Credentials {
        uid,
        euid,
        suid,
        fsuid,
        gid,
        egid,
        sgid,
        fsgid,
        groups,
    })
}

/// The file mode creation mask of `pid` (`Umask:` of `/proc/PID/status`, octal; Linux 4.7+).
pub fn umask(pid: Pid) -> Result<u32> {
    let v = status_field(pid, "Umask")?;
    u32::from_str_radix(&v, 8).map_err(|_| Error::Parse {
        pid,
        what: "/proc/PID/status",
        detail: format!("Umask: {v:?}"),
    })
}

/// A resource limit kind, named as getrlimit(2) names them; usable directly with
/// [`nix::sys::resource::setrlimit`].
pub use nix::sys::resource::Resource;

/// Every resource limit Linux has (getrlimit(2)), in the kernel's numbering order.
pub const ALL_RESOURCES: [Resource; 16] = [
    Resource::RLIMIT_CPU,
    Resource::RLIMIT_FSIZE,
    Resource::RLIMIT_DATA,
    Resource::RLIMIT_STACK,
    Resource::RLIMIT_CORE,
    Resource::RLIMIT_RSS,
    Resource::RLIMIT_NPROC,
    Resource::RLIMIT_NOFILE,
    Resource::RLIMIT_MEMLOCK,
    Resource::RLIMIT_AS,
    Resource::RLIMIT_LOCKS,
    Resource::RLIMIT_SIGPENDING,
    Resource::RLIMIT_MSGQUEUE,
    Resource::RLIMIT_NICE,
    Resource::RLIMIT_RTPRIO,
    Resource::RLIMIT_RTTIME,
];

/// One resource limit of a process: the soft limit the kernel enforces and the hard ceiling
/// up to which an unprivileged process may raise it. [`Rlimit::INFINITY`] means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rlimit {
    /// Which resource.
    pub resource: Resource,
    /// The soft (current) limit.
    pub soft: u64,
    /// The hard (maximum) limit.
    pub hard: u64,
}

impl Rlimit {
    /// The value meaning "no limit" (`RLIM_INFINITY`, all bits set on Linux).
    pub const INFINITY: u64 = libc::RLIM64_INFINITY;

    /// The resource's number as the C library and prlimit(2) take it (`RLIMIT_NOFILE` is 7),
    /// for code that stores limits as raw numbers.
    pub fn raw_resource(&self) -> libc::__rlimit_resource_t {
        self.resource as libc::__rlimit_resource_t
    }

    /// Sets this limit on the calling process with setrlimit(2). Only makes a system call,
    /// so it may run between `fork` and `exec` (in a `pre_exec` hook).
    pub fn apply(&self) -> nix::Result<()> {
        nix::sys::resource::setrlimit(self.resource, self.soft, self.hard)
    }

    /// Sets this limit on process `pid` with prlimit(2) (raising a hard limit needs
    /// `CAP_SYS_RESOURCE`), e.g. on a program spawned stopped, before it runs.
    pub fn apply_to(&self, pid: Pid) -> Result<()> {
        let new = libc::rlimit64 {
            rlim_cur: self.soft,
            rlim_max: self.hard,
        };
        // SAFETY: prlimit(2): `new_limit` points to a valid `struct rlimit64` we own for the
        // call, and a null `old_limit` asks for nothing back.
        let r = unsafe {
            libc::prlimit64(
                pid.as_raw(),
                self.raw_resource(),
                &new,
                std::ptr::null_mut(),
            )
        };
        nix::errno::Errno::result(r)
            .map(drop)
            .map_err(|e| Error::sys(pid, "prlimit", e))
    }
}

/// One limit of `pid` with prlimit(2), which reads another process's limits (with the right
/// to ptrace it: same credentials or `CAP_SYS_RESOURCE`).
fn prlimit(pid: Pid, resource: Resource) -> nix::Result<Rlimit> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2): a null `new_limit` changes nothing; `old_limit` points to a valid,
    // writable `struct rlimit64` that the kernel fills.
    let r = unsafe {
        libc::prlimit64(
            pid.as_raw(),
            resource as libc::__rlimit_resource_t,
            std::ptr::null(),
            &mut old,
        )
    };
    nix::errno::Errno::result(r)?;
    Ok(Rlimit {
        resource,
        soft: old.rlim_cur,
        hard: old.rlim_max,
    })
}

/// All resource limits of `pid`, in [`ALL_RESOURCES`] order.
///
/// Asks the kernel with prlimit(2); where that is refused (no right to the process), falls
/// back to parsing `/proc/PID/limits` ([`rlimits_from_limits_file`]), which anyone may read.
pub fn rlimits(pid: Pid) -> Result<Vec<Rlimit>> {
    let mut out = Vec::with_capacity(ALL_RESOURCES.len());
    for r in ALL_RESOURCES {
        match prlimit(pid, r) {
            Ok(l) => out.push(l),
            Err(nix::Error::ESRCH) => return Err(Error::Gone { pid, status: None }),
            Err(nix::Error::EPERM) | Err(nix::Error::ENOSYS) => {
                return rlimits_from_limits_file(pid)
            }
            Err(e) => return Err(Error::sys(pid, "prlimit", e)),
        }
    }
    Ok(out)
}

/// The row names of `/proc/PID/limits` (fs/proc/base.c `lnames`), one per resource.
const LIMIT_NAMES: [(&str, Resource); 16] = [
    ("Max cpu time", Resource::RLIMIT_CPU),
    ("Max file size", Resource::RLIMIT_FSIZE),
    ("Max data size", Resource::RLIMIT_DATA),
    ("Max stack size", Resource::RLIMIT_STACK),
    ("Max core file size", Resource::RLIMIT_CORE),
    ("Max resident set", Resource::RLIMIT_RSS),
    ("Max processes", Resource::RLIMIT_NPROC),
    ("Max open files", Resource::RLIMIT_NOFILE),
    ("Max locked memory", Resource::RLIMIT_MEMLOCK),
    ("Max address space", Resource::RLIMIT_AS),
    ("Max file locks", Resource::RLIMIT_LOCKS),
    ("Max pending signals", Resource::RLIMIT_SIGPENDING),
    ("Max msgqueue size", Resource::RLIMIT_MSGQUEUE),
    ("Max nice priority", Resource::RLIMIT_NICE),
    ("Max realtime priority", Resource::RLIMIT_RTPRIO),
    ("Max realtime timeout", Resource::RLIMIT_RTTIME),
];

/// All resource limits of `pid` parsed from `/proc/PID/limits`, in [`ALL_RESOURCES`] order.
/// Rows this crate does not know are skipped; a known row missing is an error.
pub fn rlimits_from_limits_file(pid: Pid) -> Result<Vec<Rlimit>> {
    let text = read_text(pid, "limits")?;
    let bad = |detail: String| Error::Parse {
        pid,
        what: "/proc/PID/limits",
        detail,
    };
    let value = |v: &str| -> Result<u64> {
        if v == "unlimited" {
            Ok(Rlimit::INFINITY)
        } else {
            v.parse().map_err(|_| bad(format!("limit {v:?}")))
        }
    };
    let mut out = Vec::with_capacity(LIMIT_NAMES.len());
    for (name, resource) in LIMIT_NAMES {
        // Names contain spaces and are padded to a fixed width; the two values follow.
        let line = text
            .lines()
            .find(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with("  "))
            })
            .ok_or_else(|| bad(format!("no row {name:?}")))?;
        let mut cols = line[name.len()..].split_whitespace();
        let (Some(soft), Some(hard)) = (cols.next(), cols.next()) else {
            return Err(bad(format!("row {line:?}")));
        };
        out.push(Rlimit {
            resource,
            soft: value(soft)?,
            hard: value(hard)?,
        });
    }
    Ok(out)
}

/// One line of `/proc/PID/cgroup`: `hierarchy-ID:controller-list:cgroup-path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CgroupEntry {
    /// Hierarchy id; 0 for the unified (v2) hierarchy.
    pub hierarchy: u32,
    /// Controllers bound to a v1 hierarchy (e.g. `cpu`, `name=systemd`); empty for v2.
    pub controllers: Vec<String>,
    /// The cgroup's path relative to the hierarchy's mount point.
    pub path: String,
}

/// The cgroup memberships of `pid` (cgroups(7), `/proc/PID/cgroup`), one per hierarchy.
pub fn cgroup(pid: Pid) -> Result<Vec<CgroupEntry>> {
    let text = read_text(pid, "cgroup")?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut parts = l.splitn(3, ':');
            let (Some(id), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(Error::Parse {
                    pid,
                    what: "/proc/PID/cgroup",
                    detail: format!("line {l:?}"),
                });
            };
            Ok(CgroupEntry {
                hierarchy: id.parse().map_err(|_| Error::Parse {
                    pid,
                    what: "/proc/PID/cgroup",
                    detail: format!("hierarchy id {id:?}"),
                })?,
                controllers: ctrl
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path: path.to_owned(),
            })
        })
        .collect()
}

/// Where cgroup `path` of the unified (v2) hierarchy (the `0::PATH` line of
/// `/proc/PID/cgroup`) is in our file system: a `cgroup2` mount of `/proc/self/mountinfo`
/// joined with `path`. That mount is `/sys/fs/cgroup` on a pure v2 host but e.g.
/// `/sys/fs/cgroup/unified` on a hybrid v1/v2 one, so it is looked up, never assumed.
///
/// A mount of a sub-tree (mountinfo's root field not `/`) serves the paths below its root.
/// `None` if no cgroup2 mount shows `path`; an error only if mountinfo cannot be read.
pub fn unified_cgroup_dir(path: &str) -> Result<Option<PathBuf>> {
    let file = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(file).map_err(|source| Error::Io {
        path: file.into(),
        source,
    })?;
    Ok(unified_cgroup_dir_in(&text, path))
}

/// [`unified_cgroup_dir`] on the text of a mountinfo file.
fn unified_cgroup_dir_in(mountinfo: &str, path: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // proc(5): ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = mount.split(' ');
        let root = unescape_mountinfo(fields.nth(3)?);
        let mount_point = unescape_mountinfo(fields.next()?);
        let below = if root == "/" {
            path
        } else if path == root {
            ""
        } else {
            path.strip_prefix(root.as_str())
                .filter(|rest| rest.starts_with('/'))?
        };
        let below = below.trim_start_matches('/');
        let mut dir = PathBuf::from(mount_point);
        if !below.is_empty() {
            dir.push(below);
        }
        Some(dir)
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')));
        match octal.and_then(|n| u8::try_from(n).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Everything needed to start another program "in the execution context" of a running
/// process: what it runs, with which arguments, environment, directory, identity, limits,
/// mask and cgroups. File descriptors are not part of it (see [`crate::fd`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecContext {
    /// The program's path as the kernel names it (may end in ` (deleted)`; see [`exe`]).
    pub exe: PathBuf,
    /// The argument vector, `argv[0]` included.
    pub argv: Vec<std::ffi::OsString>,
    /// The initial environment, as raw `KEY=VALUE` strings in order.
    pub env: Vec<std::ffi::OsString>,
    /// The working directory.
    pub cwd: PathBuf,
    /// User and group identities.
    pub credentials: Credentials,
    /// Every resource limit, in [`ALL_RESOURCES`] order.
    pub rlimits: Vec<Rlimit>,
    /// The file mode creation mask.
    pub umask: u32,
    /// Cgroup memberships.
    pub cgroup: Vec<CgroupEntry>,
}

impl ExecContext {
    /// The value of environment variable `key`, if set (the first occurrence, as getenv(3)).
    pub fn env_var(&self, key: &str) -> Option<&std::ffi::OsStr> {
        self.env.iter().find_map(|e| {
            let (k, v) = split_env(e);
            (k == key).then_some(v)
        })
    }

    /// The limit of `resource`.
    pub fn rlimit(&self, resource: Resource) -> Option<Rlimit> {
        self.rlimits
            .iter()
            .copied()
            .find(|l| l.resource == resource)
    }

    /// The path in the unified (v2) cgroup hierarchy (the `0::PATH` line), if any.
    pub fn unified_cgroup(&self) -> Option<&str> {
        self.cgroup
            .iter()
            .find(|c| c.hierarchy == 0 && c.controllers.is_empty())
            .map(|c| c.path.as_str())
    }
}

/// The execution context of `pid` (see [`ExecContext`]). The pieces are read one after the
/// other, so a process changing its own context meanwhile (e.g. `chdir`) gives a mixed view:
/// stop it first.
pub fn exec_context(pid: Pid) -> Result<ExecContext> {
    Ok(ExecContext {
        exe: exe(pid)?,
        argv: cmdline(pid)?,
        env: environ(pid)?,
        cwd: cwd(pid)?,
        credentials: credentials(pid)?,
        rlimits: rlimits(pid)?,
        umask: umask(pid)?,
        cgroup: cgroup(pid)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse_generously() {
        let m = parse_maps_line(
            "5612595a8000-5612595aa000 r--p 00000000 fe:00 247030                     /usr/bin/cat",
        )
        .unwrap();
        assert_eq!(m.range.start.get(), 0x5612595a8000);
        assert_eq!(m.range.len(), 0x2000);
        assert!(m.perms.read && !m.perms.write && !m.perms.exec && !m.perms.shared);
        assert_eq!(
            m.dev,
            DeviceId {
                major: 0xfe,
                minor: 0
            }
        );
        assert_eq!(m.inode, 247030);
        assert_eq!(m.path(), Some(std::path::Path::new("/usr/bin/cat")));
        assert!(!m.deleted);

        let m = parse_maps_line("7f00-8f00 rw-s 0001a000 103:02 12 /tmp/a dir/my file (deleted)")
            .unwrap();
        assert!(m.perms.shared && m.perms.write);
        assert_eq!(m.offset, 0x1a000);
        assert_eq!(
            m.dev,
            DeviceId {
                major: 0x103,
                minor: 2
            }
        );
        assert_eq!(m.path(), Some(std::path::Path::new("/tmp/a dir/my file")));
        assert!(m.deleted);

        let kind = |l: &str| parse_maps_line(l).unwrap().kind;
        assert_eq!(
            kind("1000-2000 rw-p 00000000 00:00 0 "),
            MappingKind::Anonymous
        );
        assert_eq!(
            kind("1000-2000 rw-p 00000000 00:00 0"),
            MappingKind::Anonymous
        );
        assert_eq!(
            kind("1000-2000 rw-p 00000000 00:00 0    [heap]"),
            MappingKind::Heap
        );
        assert_eq!(
            kind("1000-2000 rw-p 00000000 00:00 0 [stack]"),
            MappingKind::Stack
        );
        assert_eq!(
            kind("1000-2000 r--p 00000000 00:00 0 [vvar]"),
            MappingKind::Vvar
        );
        assert_eq!(
            kind("1000-2000 r--p 00000000 00:00 0 [vvar_vclock]"),
            MappingKind::Vvar
        );
        assert_eq!(
            kind("1000-2000 r-xp 00000000 00:00 0 [vdso]"),
            MappingKind::Vdso
        );
        assert_eq!(
            kind("1000-2000 rw-p 00000000 00:00 0 [anon:arena]"),
            MappingKind::Other("[anon:arena]".into())
        );
        assert_eq!(
            kind("1000-2000 rw-p 00000000 00:01 7 /memfd:x (deleted)"),
            MappingKind::File("/memfd:x".into())
        );
        assert_eq!(
            kind("1000-2000 r--p 00000000 00:01 7 /odd\\012name"),
            MappingKind::File("/odd\nname".into())
        );
        assert!(parse_maps_line("garbage").is_none());
        assert!(parse_maps_line("1000-2000 rwzp 00000000 00:00 0").is_none());
    }

    #[test]
    fn nul_separated_lists() {
        assert_eq!(split_nul(b"a\0b c\0\0d\0"), ["a", "b c", "", "d"]);
        assert_eq!(split_nul(b"no-trailing"), ["no-trailing"]);
        assert!(split_nul(b"").is_empty());
        let (k, v) = split_env(std::ffi::OsStr::new("A=b=c"));
        assert_eq!((k.to_str(), v.to_str()), (Some("A"), Some("b=c")));
    }

    #[test]
    fn the_unified_cgroup_directory_comes_from_mountinfo() {
        let hybrid = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";
        assert_eq!(
            unified_cgroup_dir_in(hybrid, "/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/a/b"))
        );
        assert_eq!(
            unified_cgroup_dir_in(hybrid, "/"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let sub_tree = "50 1 0:40 /svc /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(
            unified_cgroup_dir_in(sub_tree, "/svc/x"),
            Some(PathBuf::from("/mnt/my cg/x"))
        );
        assert_eq!(
            unified_cgroup_dir_in(sub_tree, "/svc"),
            Some(PathBuf::from("/mnt/my cg"))
        );
        assert_eq!(unified_cgroup_dir_in(sub_tree, "/svcx"), None);
        assert_eq!(unified_cgroup_dir_in(sub_tree, "/other"), None);
        assert_eq!(
            unified_cgroup_dir_in(
                "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n",
                "/"
            ),
            None
        );
    }

    #[test]
    fn own_context_matches_libc() {
        let me = nix::unistd::getpid();
        let creds = credentials(me).unwrap();
        assert_eq!(creds.uid, nix::unistd::getuid().as_raw());
        assert_eq!(creds.egid, nix::unistd::getegid().as_raw());
        let by_syscall = rlimits(me).unwrap();
        let by_file = rlimits_from_limits_file(me).unwrap();
        assert_eq!(by_syscall, by_file);
        let (soft, hard) = nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let nofile = by_syscall[7];
        assert_eq!(
            (nofile.resource, nofile.soft, nofile.hard),
            (Resource::RLIMIT_NOFILE, soft, hard)
        );
        assert!(!cgroup(me).unwrap().is_empty());
    }
}
