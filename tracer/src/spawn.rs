//! Starting a program under trace, in an execution context we choose.
//!
//! [`spawn`] forks, puts the child in its cgroup, sets up its file descriptors, session,
//! working directory, resource limits, umask and credentials, and executes the program already
//! seized with `PTRACE_O_EXITKILL`: the program never runs an instruction untraced, and dies
//! with the thread that traces it. It returns a [`Tracee`] stopped at the exec event, before the
//! dynamic loader has run, which kills and reaps the process when dropped.
//!
//! [`SpawnConfig::in_context`] describes the context of a running process as
//! [`crate::procfs::exec_context`] read it: the new version of a program starts where the old
//! one runs.
//!
//! The parent may be multithreaded, so the child between `fork` and `execve` makes only
//! async-signal-safe system calls (signal-safety(7)) on data prepared before the fork: no
//! allocation, no locks, no panics. It reports a failure as a step id and an `errno` on a
//! close-on-exec pipe, which the parent turns into [`Error::Spawn`].

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sys::ptrace::{self, Options};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tracing::debug;

use crate::error::{Error, Result};
use crate::procfs::ExecContext;
use crate::ptrace::{restart, wait_raw, Event, Restart, Status, Stop};
use crate::tracee::Tracee;

/// The ptrace options of a spawned process. `PTRACE_O_EXITKILL` is set before the program runs
/// (ptrace(2): "Send a SIGKILL signal to the tracee if the tracer exits"), so a program we
/// started can never outlive us half-updated.
const SPAWN_OPTIONS: Options = Options::PTRACE_O_EXITKILL
    .union(Options::PTRACE_O_TRACESYSGOOD)
    .union(Options::PTRACE_O_TRACECLONE)
    .union(Options::PTRACE_O_TRACEEXEC);

/// User, group and supplementary groups a spawned program runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Real, effective and saved user id (`setuid`).
    pub uid: u32,
    /// Real, effective and saved group id (`setgid`).
    pub gid: u32,
    /// Supplementary groups (`setgroups`), exactly these.
    pub groups: Vec<u32>,
}

/// One resource limit of a spawned program: the same type `/proc` reads them into, so a
/// process's limits ([`crate::procfs::rlimits`]) can be given to its successor as they are.
pub use crate::procfs::Rlimit;

/// Everything about the process [`spawn`] starts.
///
/// Built with [`SpawnConfig::new`] or [`SpawnConfig::in_context`] and the builder methods, or by
/// setting the public fields. What is not set is inherited from the calling process (cwd,
/// credentials, limits, umask, cgroup, session), except file descriptors: the program gets
/// exactly those in [`SpawnConfig::fds`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnConfig {
    /// The executable. No `PATH` search; a relative path is taken relative to the caller's
    /// working directory, not to [`SpawnConfig::cwd`].
    pub program: PathBuf,
    /// The argument vector, `argv[0]` included.
    pub argv: Vec<OsString>,
    /// The environment, as `KEY=VALUE` entries.
    pub env: Vec<OsString>,
    /// The working directory; `None` keeps the caller's.
    pub cwd: Option<PathBuf>,
    /// User and groups; `None` keeps the caller's. Changing them needs privilege (`CAP_SETUID`,
    /// `CAP_SETGID`).
    pub credentials: Option<Credentials>,
    /// Resource limits to set, in order; others are inherited.
    pub rlimits: Vec<Rlimit>,
    /// The file mode creation mask; `None` keeps the caller's.
    pub umask: Option<u32>,
    /// File descriptors as `(source in this process, number in the program)`. The program gets
    /// exactly these, every other descriptor is closed at exec. Sources and targets may overlap
    /// (e.g. a swap of 5 and 6). Each source must stay open until [`spawn`] returns.
    pub fds: Vec<(RawFd, RawFd)>,
    /// The cgroup of the unified (v2) hierarchy to start in, as the `0::PATH` line of
    /// `/proc/PID/cgroup` names it (absolute, e.g. `/system.slice/app.service`); `None` keeps
    /// the caller's. The child is moved there before it executes the program.
    pub cgroup: Option<String>,
    /// Whether the child calls setsid(2) before exec: a new session and process group led by
    /// the program, with no controlling terminal, so that it does not share the caller's
    /// terminal and its hang-up.
    pub new_session: bool,
}

impl SpawnConfig {
    /// A configuration for `program` with `argv = [program]`, this process's environment, and
    /// this process's standard input, output and error at 0, 1 and 2.
    #[must_use]
    pub fn new(program: impl Into<PathBuf>) -> Self {
        let program = program.into();
        SpawnConfig {
            argv: vec![program.clone().into_os_string()],
            program,
            env: std::env::vars_os()
                .map(|(k, v)| {
                    let mut kv = k;
                    kv.push("=");
                    kv.push(v);
                    kv
                })
                .collect(),
            cwd: None,
            credentials: None,
            rlimits: Vec::new(),
            umask: None,
            fds: vec![(0, 0), (1, 1), (2, 2)],
            cgroup: None,
            new_session: false,
        }
    }

    /// A configuration for `program` in the execution context `ctx` of another process (read
    /// by [`crate::procfs::exec_context`]): its argument vector, exactly its environment (not
    /// ours), its working directory, its real user and group ids and supplementary groups,
    /// every one of its resource limits, its umask and its cgroup of the unified hierarchy, in
    /// a new session ([`SpawnConfig::new_session`]).
    ///
    /// The real ids are taken, as they name who runs the program: a set-user-id `program`
    /// gains its effective id at exec as the old one did. Memberships of v1 cgroup hierarchies
    /// are not reproduced. File descriptors are this process's 0, 1 and 2, as with
    /// [`SpawnConfig::new`]: the caller replaces them with the old process's.
    ///
    /// Changing the ids, raising hard limits and moving into the cgroup need the privileges
    /// of those operations; [`spawn`] names the step that lacked them.
    #[must_use]
    pub fn in_context(program: impl Into<PathBuf>, ctx: &ExecContext) -> Self {
        let creds = &ctx.credentials;
        SpawnConfig {
            program: program.into(),
            argv: ctx.argv.clone(),
            env: ctx.env.clone(),
            cwd: Some(ctx.cwd.clone()),
            credentials: Some(Credentials {
                uid: creds.uid,
                gid: creds.gid,
                groups: creds.groups.clone(),
            }),
            rlimits: ctx.rlimits.clone(),
            umask: Some(ctx.umask),
            fds: vec![(0, 0), (1, 1), (2, 2)],
            cgroup: ctx.unified_cgroup().map(str::to_owned),
            new_session: true,
        }
    }

    /// Replaces the whole argument vector, `argv[0]` included.
    #[must_use]
    pub fn argv<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.argv = argv.into_iter().map(Into::into).collect();
        self
    }

    /// Appends one argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.argv.push(arg.into());
        self
    }

    /// Empties the environment.
    #[must_use]
    pub fn env_clear(mut self) -> Self {
        self.env.clear();
        self
    }

    /// Sets `key=value` in the environment, replacing any entry for `key`.
    #[must_use]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        let key = key.as_ref().as_bytes();
        self.env.retain(|kv| {
            let kv = kv.as_bytes();
            !(kv.len() > key.len() && kv.starts_with(key) && kv[key.len()] == b'=')
        });
        let mut kv = key.to_vec();
        kv.push(b'=');
        kv.extend_from_slice(value.as_ref().as_bytes());
        self.env.push(OsString::from_vec(kv));
        self
    }

    /// Sets the working directory.
    #[must_use]
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets user, group and supplementary groups.
    #[must_use]
    pub fn credentials(mut self, uid: u32, gid: u32, groups: Vec<u32>) -> Self {
        self.credentials = Some(Credentials { uid, gid, groups });
        self
    }

    /// Adds a resource limit (soft, hard; [`Rlimit::INFINITY`] for none).
    #[must_use]
    pub fn rlimit(mut self, resource: nix::sys::resource::Resource, soft: u64, hard: u64) -> Self {
        self.rlimits.push(Rlimit {
            resource,
            soft,
            hard,
        });
        self
    }

    /// Sets the umask.
    #[must_use]
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = Some(mask);
        self
    }

    /// Starts the program in cgroup `path` of the unified (v2) hierarchy (see
    /// [`SpawnConfig::cgroup`](SpawnConfig#structfield.cgroup)).
    #[must_use]
    pub fn cgroup(mut self, path: impl Into<String>) -> Self {
        self.cgroup = Some(path.into());
        self
    }

    /// Starts the program in a new session, without a controlling terminal (setsid(2)).
    #[must_use]
    pub fn new_session(mut self) -> Self {
        self.new_session = true;
        self
    }

    /// Gives the program no file descriptor at all (add some with [`SpawnConfig::fd`]).
    #[must_use]
    pub fn no_fds(mut self) -> Self {
        self.fds.clear();
        self
    }

    /// Gives the program `source` (a descriptor of this process) as descriptor `target`,
    /// replacing what `target` was going to be.
    #[must_use]
    pub fn fd(mut self, source: RawFd, target: RawFd) -> Self {
        self.fds.retain(|&(_, t)| t != target);
        self.fds.push((source, target));
        self
    }
}

/// The step of the child's set-up that failed (see [`SpawnFailure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpawnStep {
    /// `fork(2)` itself (in the parent).
    Fork,
    /// Moving the child into its cgroup (in the parent, before the child runs on): finding the
    /// cgroup2 mount, opening the cgroup's `cgroup.procs`, writing the child's pid to it.
    Cgroup,
    /// `setsid`.
    Setsid,
    /// Moving the child's ends of the set-up pipes above every target descriptor.
    MovePipes,
    /// Duplicating source descriptor `fd` out of the way (`F_DUPFD_CLOEXEC`).
    DupSource(RawFd),
    /// `dup2` onto target descriptor `fd`.
    Dup2(RawFd),
    /// Marking every other descriptor close-on-exec (`close_range`).
    CloseRange,
    /// `chdir` to the working directory.
    Chdir,
    /// `setrlimit` of this resource.
    Setrlimit(i32),
    /// `setgroups`.
    Setgroups,
    /// `setgid`.
    Setgid,
    /// `setuid`.
    Setuid,
    /// Unblocking every signal (`sigprocmask`).
    SignalMask,
    /// Resetting `SIGPIPE` to its default action.
    SignalDisposition,
    /// `execve` of the program.
    Execve,
}

impl SpawnStep {
    fn encode(self) -> (u32, i32) {
        match self {
            SpawnStep::Fork => (0, 0),
            SpawnStep::MovePipes => (1, 0),
            SpawnStep::DupSource(fd) => (2, fd),
            SpawnStep::Dup2(fd) => (3, fd),
            SpawnStep::CloseRange => (4, 0),
            SpawnStep::Chdir => (5, 0),
            SpawnStep::Setrlimit(r) => (6, r),
            SpawnStep::Setgroups => (7, 0),
            SpawnStep::Setgid => (8, 0),
            SpawnStep::Setuid => (9, 0),
            SpawnStep::SignalMask => (10, 0),
            SpawnStep::SignalDisposition => (11, 0),
            SpawnStep::Execve => (12, 0),
            SpawnStep::Cgroup => (13, 0),
            SpawnStep::Setsid => (14, 0),
        }
    }

    fn decode(code: u32, arg: i32) -> Option<Self> {
        Some(match code {
            0 => SpawnStep::Fork,
            1 => SpawnStep::MovePipes,
            2 => SpawnStep::DupSource(arg),
            3 => SpawnStep::Dup2(arg),
            4 => SpawnStep::CloseRange,
            5 => SpawnStep::Chdir,
            6 => SpawnStep::Setrlimit(arg),
            7 => SpawnStep::Setgroups,
            8 => SpawnStep::Setgid,
            9 => SpawnStep::Setuid,
            10 => SpawnStep::SignalMask,
            11 => SpawnStep::SignalDisposition,
            12 => SpawnStep::Execve,
            13 => SpawnStep::Cgroup,
            14 => SpawnStep::Setsid,
            _ => return None,
        })
    }
}

/// Why [`spawn`] failed before the program ran: the failing step and its `errno`.
///
/// It is the inner error of the [`io::Error`] in [`Error::Spawn`] (reach it with
/// `get_ref()?.downcast_ref::<SpawnFailure>()`); that `io::Error` has the kind of the `errno`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnFailure {
    /// What failed.
    pub step: SpawnStep,
    /// The `errno` it failed with.
    pub errno: i32,
    /// The step described, with what it was applied to (a path, an id, a descriptor).
    pub what: String,
}

impl SpawnFailure {
    fn new(step: SpawnStep, errno: i32, cfg: &SpawnConfig) -> Self {
        let what = match step {
            SpawnStep::Fork => "fork".to_owned(),
            SpawnStep::Cgroup => match &cfg.cgroup {
                Some(c) => format!("moving the child into cgroup {c}"),
                None => "moving the child into its cgroup".to_owned(),
            },
            SpawnStep::Setsid => "setsid".to_owned(),
            SpawnStep::MovePipes => "moving the set-up pipes (fcntl F_DUPFD_CLOEXEC)".to_owned(),
            SpawnStep::DupSource(fd) => {
                format!("duplicating source fd {fd} (fcntl F_DUPFD_CLOEXEC)")
            }
            SpawnStep::Dup2(fd) => format!("dup2 onto fd {fd}"),
            SpawnStep::CloseRange => "marking other fds close-on-exec (close_range)".to_owned(),
            SpawnStep::Chdir => match &cfg.cwd {
                Some(d) => format!("chdir to {}", d.display()),
                None => "chdir".to_owned(),
            },
            SpawnStep::Setrlimit(r) => format!("setrlimit of resource {r}"),
            SpawnStep::Setgroups => match &cfg.credentials {
                Some(c) => format!("setgroups {:?}", c.groups),
                None => "setgroups".to_owned(),
            },
            SpawnStep::Setgid => match &cfg.credentials {
                Some(c) => format!("setgid {}", c.gid),
                None => "setgid".to_owned(),
            },
            SpawnStep::Setuid => match &cfg.credentials {
                Some(c) => format!("setuid {}", c.uid),
                None => "setuid".to_owned(),
            },
            SpawnStep::SignalMask => "sigprocmask".to_owned(),
            SpawnStep::SignalDisposition => "sigaction(SIGPIPE, SIG_DFL)".to_owned(),
            SpawnStep::Execve => "execve".to_owned(),
        };
        SpawnFailure { step, errno, what }
    }

    fn into_error(self, program: &std::path::Path) -> Error {
        let kind = io::Error::from_raw_os_error(self.errno).kind();
        Error::Spawn {
            program: program.to_owned(),
            source: io::Error::new(kind, self),
        }
    }
}

impl fmt::Display for SpawnFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.what,
            io::Error::from_raw_os_error(self.errno)
        )
    }
}

impl std::error::Error for SpawnFailure {}

/// Starts `cfg.program` under trace and returns it stopped at its exec event
/// (`PTRACE_EVENT_EXEC`), before any instruction of the program or its dynamic loader ran.
///
/// In the child, in this order: the descriptors of [`SpawnConfig::fds`] are put in place (all
/// sources first duplicated above every number involved, then `dup2`ed onto their targets, so
/// overlapping mappings work) and every other descriptor is marked close-on-exec; then
/// `setsid` (if asked), `chdir`, `setrlimit`, `umask`, and `setgroups`, `setgid`, `setuid` (in
/// that order, while still privileged); then the signal mask is emptied and `SIGPIPE` reset to
/// its default action. The child then waits until the parent has seized it (`PTRACE_SEIZE`
/// with `PTRACE_O_EXITKILL`, `TRACESYSGOOD`, `TRACECLONE`, `TRACEEXEC`) and executes the
/// program.
///
/// With a [`SpawnConfig::cgroup`](SpawnConfig#structfield.cgroup) other than the caller's own,
/// the parent opens that cgroup's `cgroup.procs` (under the cgroup2 mount that
/// `/proc/self/mountinfo` shows, see [`crate::procfs::unified_cgroup_dir`]) before forking,
/// and writes the child's pid to it before letting the child go on: the program is accounted
/// there from its first instruction. A failure there is [`SpawnStep::Cgroup`] with the cgroup,
/// the file and the `errno` (e.g. `EBUSY` for a cgroup that enables controllers for its
/// children, `EOPNOTSUPP` for a `domain invalid` one, `EROFS`, `EACCES`).
///
/// The process is killed if the calling *thread* exits (ptrace(2): the tracer is a thread) and
/// when the returned [`Tracee`] is dropped; it must be driven from the calling thread.
///
/// Fails with [`Error::Spawn`], naming the program, for an invalid configuration (a NUL byte in
/// a string, a negative or repeated target descriptor, a cgroup path that is not absolute or
/// has `.` or `..` components; kind `InvalidInput`) and for any step
/// that failed in the child, the failing step and `errno` in its [`SpawnFailure`]; the child is
/// reaped in every case. Fails with [`Error::PermissionDenied`] or [`Error::Sys`] if it cannot be
/// seized (it is then killed and reaped).
pub fn spawn(cfg: &SpawnConfig) -> Result<Tracee> {
    let program = if cfg.program.is_relative() {
        std::env::current_dir()
            .map_err(|source| Error::Spawn {
                program: cfg.program.clone(),
                source,
            })?
            .join(&cfg.program)
    } else {
        cfg.program.clone()
    };
    let invalid = |detail: String| Error::Spawn {
        program: program.clone(),
        source: io::Error::new(io::ErrorKind::InvalidInput, detail),
    };
    let os_error = |what: &str, e: nix::Error| Error::Spawn {
        program: program.clone(),
        source: io::Error::other(format!("{what}: {}", io::Error::from(e))),
    };

    let (go_read, go_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| os_error("pipe2", e))?;
    let (err_read, err_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| os_error("pipe2", e))?;
    let mut plan = ChildPlan::new(&program, cfg, &go_read, &go_write, &err_read, &err_write)
        .map_err(invalid)?;
    let cgroup = match &cfg.cgroup {
        Some(path) => CgroupMove::prepare(path).map_err(|f| f.into_error(&program))?,
        None => None,
    };

    // SAFETY: fork(2) has no memory-safety preconditions. In the child, which starts with only
    // the calling thread, `child_main` makes only async-signal-safe calls (signal-safety(7)) on
    // memory prepared before the fork, and never returns (it execs or `_exit`s).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        child_main(&mut plan);
    }
    if pid < 0 {
        let errno = nix::Error::last_raw();
        return Err(SpawnFailure::new(SpawnStep::Fork, errno, cfg).into_error(&program));
    }
    let pid = Pid::from_raw(pid);
    // Our copy of `go_read` stays open until "go" is written: with a reader left, that write
    // can never raise SIGPIPE in us, even if the child is dead already.
    drop(err_write);

    if let Some(cgroup) = &cgroup {
        if let Err(failure) = cgroup.enter(pid) {
            // A child whose set-up failed may be gone already (ESRCH): its report comes first.
            let status = kill_and_reap(pid);
            return Err(match read_report(&err_read) {
                Some(report) => child_error(Some(report), cfg, &program, status),
                None => failure.into_error(&program),
            });
        }
        debug!(pid = pid.as_raw(), cgroup = %cgroup.path, "moved the child into its cgroup");
    }

    if let Err(e) = ptrace::seize(pid, SPAWN_OPTIONS) {
        // A child whose set-up failed may be exiting already, which PTRACE_SEIZE refuses with
        // EPERM: its own report, if it wrote one, is the real reason.
        let status = kill_and_reap(pid);
        return Err(match read_report(&err_read) {
            Some(report) => child_error(Some(report), cfg, &program, status),
            None => Error::sys(pid, "PTRACE_SEIZE", e),
        });
    }
    // One byte into an empty pipe: it cannot block or fail short. A child that died already
    // never reads it; the wait below reports its end.
    let _ = nix::unistd::write(&go_write, &[1u8]);
    drop(go_write);
    drop(go_read);

    loop {
        let status = match wait_raw(Some(pid), true) {
            Ok(Some((_, status))) => status,
            Ok(None) => continue,
            Err(e) => {
                kill_and_reap(pid);
                return Err(e);
            }
        };
        let stop = match status {
            Status::Stopped(stop) => stop,
            Status::Exited(code) => {
                return Err(child_error(
                    read_report(&err_read),
                    cfg,
                    &program,
                    Some(Ok(code)),
                ))
            }
            Status::Killed(sig) => {
                return Err(child_error(
                    read_report(&err_read),
                    cfg,
                    &program,
                    Some(Err(sig)),
                ))
            }
        };
        let deliver = match stop {
            Stop::Event {
                event: Event::Exec, ..
            } => {
                debug!(pid = pid.as_raw(), program = %program.display(), "spawned under trace");
                return Ok(Tracee::spawned(pid, stop));
            }
            // A signal sent to the child before it executed the program: deliver it as if we
            // were not there (it may well kill the child, which the next wait reports).
            Stop::Signal(sig) => Some(sig),
            // Nothing else is expected before exec; let the child go on.
            _ => None,
        };
        if let Err(e) = restart(pid, Restart::Continue, deliver) {
            if !e.is_gone() {
                kill_and_reap(pid);
                return Err(e);
            }
        }
    }
}

/// The move of a spawned child into its cgroup, prepared before the fork.
struct CgroupMove {
    /// The cgroup, as `/proc/PID/cgroup` names it.
    path: String,
    /// Its `cgroup.procs` file.
    procs: PathBuf,
    /// That file, open for writing.
    file: std::fs::File,
}

impl CgroupMove {
    /// Opens `cgroup.procs` of cgroup `path`; `None` if the calling thread is in that cgroup
    /// already (its child is born there, and writing our own cgroup may not be allowed).
    fn prepare(path: &str) -> std::result::Result<Option<Self>, SpawnFailure> {
        let ours = std::fs::read_to_string("/proc/thread-self/cgroup").ok();
        if ours
            .as_deref()
            .is_some_and(|text| text.lines().any(|l| l.strip_prefix("0::") == Some(path)))
        {
            return Ok(None);
        }
        let dir = match crate::procfs::unified_cgroup_dir(path) {
            Ok(Some(dir)) => dir,
            Ok(None) => {
                return Err(cgroup_failure(
                    path,
                    "no cgroup2 file system mounted here shows it (/proc/self/mountinfo)",
                    libc::ENOENT,
                    false,
                ))
            }
            Err(e) => {
                let errno = match &e {
                    Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
                    _ => libc::EIO,
                };
                return Err(cgroup_failure(
                    path,
                    "reading /proc/self/mountinfo",
                    errno,
                    false,
                ));
            }
        };
        let procs = dir.join("cgroup.procs");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(|e| {
                cgroup_failure(
                    path,
                    &format!("opening {}", procs.display()),
                    e.raw_os_error().unwrap_or(libc::EIO),
                    true,
                )
            })?;
        Ok(Some(CgroupMove {
            path: path.to_owned(),
            procs,
            file,
        }))
    }

    /// Moves process `pid` into the cgroup (cgroups(7): "writing its PID to the cgroup.procs
    /// file of the target cgroup"), one pid in one write(2).
    fn enter(&self, pid: Pid) -> std::result::Result<(), SpawnFailure> {
        use std::io::Write;
        (&self.file)
            .write_all(format!("{pid}\n").as_bytes())
            .map_err(|e| {
                cgroup_failure(
                    &self.path,
                    &format!("writing pid {pid} to {}", self.procs.display()),
                    e.raw_os_error().unwrap_or(libc::EIO),
                    true,
                )
            })
    }
}

/// A failure of [`SpawnStep::Cgroup`]: the cgroup, what was done, and for an operation on its
/// `cgroup.procs` what the `errno` usually means there (the kernel's cgroup-v2.rst).
fn cgroup_failure(cgroup: &str, doing: &str, errno: i32, on_procs_file: bool) -> SpawnFailure {
    let hint = match errno {
        _ if !on_procs_file => "",
        libc::ENOENT => " (no such cgroup)",
        libc::EROFS => " (the cgroup file system is mounted read-only)",
        libc::EBUSY => {
            " (the cgroup enables controllers for its children in cgroup.subtree_control, \
             so by the \"no internal processes\" rule it cannot hold processes)"
        }
        libc::EOPNOTSUPP => {
            " (the cgroup's cgroup.type takes no processes, e.g. \"domain invalid\")"
        }
        libc::EACCES | libc::EPERM => {
            " (moving a process needs write access to cgroup.procs of the target cgroup and of \
             the common ancestor of the source and target cgroups)"
        }
        _ => "",
    };
    SpawnFailure {
        step: SpawnStep::Cgroup,
        errno,
        what: format!("moving the child into cgroup {cgroup}: {doing}{hint}"),
    }
}

/// The child's failure report, if it wrote one: it does so before `_exit`, so once the child
/// has ended the report is in the pipe (read without blocking).
fn read_report(err_read: &OwnedFd) -> Option<SpawnStepReport> {
    let mut buf = [0u8; REPORT_LEN];
    let n = nix::unistd::read(err_read, &mut buf).unwrap_or(0);
    if n != REPORT_LEN {
        return None;
    }
    let code = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let arg = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let errno = i32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
    SpawnStep::decode(code, arg).map(|step| (step, errno))
}

/// A decoded report: the step and its `errno`.
type SpawnStepReport = (SpawnStep, i32);

/// Builds the error for a child that ended before exec: the step it reported, if any.
fn child_error(
    report: Option<SpawnStepReport>,
    cfg: &SpawnConfig,
    program: &std::path::Path,
    status: Option<std::result::Result<i32, Signal>>,
) -> Error {
    if let Some((step, errno)) = report {
        return SpawnFailure::new(step, errno, cfg).into_error(program);
    }
    let how = match status {
        Some(Ok(code)) => format!("exited with status {code}"),
        Some(Err(sig)) => format!("was killed by {sig}"),
        None => "ended".to_owned(),
    };
    Error::Spawn {
        program: program.to_owned(),
        source: io::Error::other(format!("the child {how} before executing the program")),
    }
}

/// Kills a child we forked and reaps it (it is our child, so the wait cannot block for long).
/// Returns how it ended, if the wait said.
fn kill_and_reap(pid: Pid) -> Option<std::result::Result<i32, Signal>> {
    let _ = signal::kill(pid, Signal::SIGKILL);
    loop {
        match wait_raw(Some(pid), true) {
            Ok(Some((_, Status::Exited(code)))) => return Some(Ok(code)),
            Ok(Some((_, Status::Killed(sig)))) => return Some(Err(sig)),
            Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Size of the child's failure report: step code (u32), step argument (i32), errno (i32).
const REPORT_LEN: usize = 12;

/// Everything the child needs, prepared before the fork so that it allocates nothing.
struct ChildPlan {
    program: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    credentials: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    umask: Option<libc::mode_t>,
    setsid: bool,
    /// `(source, target)`.
    fds: Vec<(RawFd, RawFd)>,
    /// Scratch: where each source was duplicated to.
    dups: Vec<RawFd>,
    /// Inclusive ranges of descriptor numbers that are no target.
    gaps: Vec<(libc::c_uint, libc::c_uint)>,
    /// A number above every source and target.
    above: RawFd,
    go_read: RawFd,
    go_write: RawFd,
    err_read: RawFd,
    err_write: RawFd,
    empty_mask: libc::sigset_t,
    default_action: libc::sigaction,
}

fn cstring(what: &str, bytes: &[u8]) -> std::result::Result<CString, String> {
    CString::new(bytes).map_err(|_| format!("{what} contains a NUL byte"))
}

impl ChildPlan {
    fn new(
        program: &std::path::Path,
        cfg: &SpawnConfig,
        go_read: &OwnedFd,
        go_write: &OwnedFd,
        err_read: &OwnedFd,
        err_write: &OwnedFd,
    ) -> std::result::Result<Self, String> {
        let program = cstring("the program path", program.as_os_str().as_bytes())?;
        let argv = cfg
            .argv
            .iter()
            .map(|a| cstring("an argument", a.as_bytes()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let env = cfg
            .env
            .iter()
            .map(|a| cstring("an environment entry", a.as_bytes()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let argv_ptrs = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let env_ptrs = env
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let cwd = match &cfg.cwd {
            Some(d) => Some(cstring("the working directory", d.as_os_str().as_bytes())?),
            None => None,
        };
        if let Some(c) = &cfg.cgroup {
            check_cgroup_path(c)?;
        }

        let ours = [go_read, go_write, err_read, err_write].map(|fd| fd.as_raw_fd());
        let mut targets: Vec<RawFd> = Vec::with_capacity(cfg.fds.len());
        for &(source, target) in &cfg.fds {
            if source < 0 || target < 0 {
                return Err(format!(
                    "negative file descriptor in mapping {source} -> {target}"
                ));
            }
            // The set-up pipes were just opened: a source with one of their numbers was not
            // open when spawn was called.
            if ours.contains(&source) {
                return Err(format!("source file descriptor {source} is not open"));
            }
            if targets.contains(&target) {
                return Err(format!(
                    "file descriptor {target} is the target of two mappings"
                ));
            }
            targets.push(target);
        }
        targets.sort_unstable();
        let mut gaps = Vec::with_capacity(targets.len() + 1);
        let mut next: libc::c_uint = 0;
        for &t in &targets {
            let t = t as libc::c_uint;
            if t > next {
                gaps.push((next, t - 1));
            }
            next = t + 1;
        }
        gaps.push((next, libc::c_uint::MAX));
        let above = cfg
            .fds
            .iter()
            .map(|&(s, t)| s.max(t))
            .max()
            .unwrap_or(-1)
            .checked_add(1)
            .ok_or_else(|| "file descriptor number too large".to_owned())?;

        // SAFETY: sigemptyset(3) initialises the set it is given; the zeroed value is only
        // storage for it.
        let empty_mask = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            set
        };
        // SAFETY: an all-zero sigaction is SIG_DFL (0) with no flags and an empty mask
        // (sigaction(2)), a valid value of the plain C struct.
        let mut default_action: libc::sigaction = unsafe { std::mem::zeroed() };
        default_action.sa_sigaction = libc::SIG_DFL;

        Ok(ChildPlan {
            program,
            _argv: argv,
            argv_ptrs,
            _env: env,
            env_ptrs,
            cwd,
            credentials: cfg
                .credentials
                .as_ref()
                .map(|c| (c.uid, c.gid, c.groups.clone())),
            rlimits: cfg
                .rlimits
                .iter()
                .map(|r| {
                    (
                        r.raw_resource(),
                        libc::rlimit {
                            rlim_cur: r.soft,
                            rlim_max: r.hard,
                        },
                    )
                })
                .collect(),
            umask: cfg.umask.map(|m| m as libc::mode_t),
            setsid: cfg.new_session,
            fds: cfg.fds.clone(),
            dups: vec![-1; cfg.fds.len()],
            gaps,
            above,
            go_read: go_read.as_raw_fd(),
            go_write: go_write.as_raw_fd(),
            err_read: err_read.as_raw_fd(),
            err_write: err_write.as_raw_fd(),
            empty_mask,
            default_action,
        })
    }
}

/// A cgroup path must name a cgroup below the hierarchy's root the way `/proc/PID/cgroup`
/// does: absolute, without `.` or `..` to climb out of the mount.
fn check_cgroup_path(path: &str) -> std::result::Result<(), String> {
    let bad = !path.starts_with('/')
        || path.contains(['\0', '\n'])
        || path.split('/').any(|c| c == "." || c == "..");
    if bad {
        return Err(format!(
            "cgroup path {path:?} is not an absolute path without . and .. components"
        ));
    }
    Ok(())
}

fn errno() -> i32 {
    // SAFETY: __errno_location(3) returns the calling thread's errno, always valid to read.
    unsafe { *libc::__errno_location() }
}

/// Reports `step` and the current `errno` on `err_fd` and exits. Async-signal-safe.
fn fail(err_fd: RawFd, step: SpawnStep) -> ! {
    let errno = errno();
    let (code, arg) = step.encode();
    let mut report = [0u8; REPORT_LEN];
    let (c, rest) = report.split_at_mut(4);
    let (a, e) = rest.split_at_mut(4);
    c.copy_from_slice(&code.to_ne_bytes());
    a.copy_from_slice(&arg.to_ne_bytes());
    e.copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is a live local array of
    // REPORT_LEN bytes. A failed write leaves the parent with the bare exit status.
    unsafe {
        libc::write(err_fd, report.as_ptr().cast(), REPORT_LEN);
        libc::_exit(127)
    }
}

/// The child between fork and exec. Only async-signal-safe calls, no allocation, no panic:
/// every slice is walked with iterators, never indexed.
fn child_main(plan: &mut ChildPlan) -> ! {
    // Close the parent's ends, so that a parent that dies before saying "go" gives us EOF.
    // SAFETY: close(2) is async-signal-safe; these are our copies of the parent's pipe ends.
    unsafe {
        libc::close(plan.go_write);
        libc::close(plan.err_read);
    }

    // Our pipe ends may sit on a target number: move them above every number involved.
    let mut err_fd = plan.err_write;
    // SAFETY: fcntl(2) F_DUPFD_CLOEXEC is async-signal-safe and takes an int argument.
    let moved = unsafe { libc::fcntl(plan.err_write, libc::F_DUPFD_CLOEXEC, plan.above) };
    if moved < 0 {
        fail(err_fd, SpawnStep::MovePipes);
    }
    err_fd = moved;
    // SAFETY: as above.
    let go_fd = unsafe { libc::fcntl(plan.go_read, libc::F_DUPFD_CLOEXEC, plan.above) };
    if go_fd < 0 {
        fail(err_fd, SpawnStep::MovePipes);
    }

    // Every source out of the way first, so that dup2 onto one target never clobbers a source
    // still to be placed.
    for (&(source, _), dup) in plan.fds.iter().zip(plan.dups.iter_mut()) {
        // SAFETY: as above.
        *dup = unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, plan.above) };
        if *dup < 0 {
            fail(err_fd, SpawnStep::DupSource(source));
        }
    }
    for (&(_, target), &dup) in plan.fds.iter().zip(plan.dups.iter()) {
        loop {
            // SAFETY: dup2(2) is async-signal-safe; it clears FD_CLOEXEC on `target`.
            if unsafe { libc::dup2(dup, target) } >= 0 {
                break;
            }
            if errno() != libc::EINTR {
                fail(err_fd, SpawnStep::Dup2(target));
            }
        }
    }
    for &(first, last) in &plan.gaps {
        // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets flags on descriptors of
        // this process; it is a plain system call, async-signal-safe.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first,
                last,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if rc < 0 {
            fail(err_fd, SpawnStep::CloseRange);
        }
    }

    if plan.setsid {
        // SAFETY: setsid(2) is async-signal-safe and takes no argument. It fails (EPERM) only
        // for a process group leader, which a freshly forked child is not.
        if unsafe { libc::setsid() } < 0 {
            fail(err_fd, SpawnStep::Setsid);
        }
    }
    if let Some(cwd) = &plan.cwd {
        // SAFETY: chdir(2) is async-signal-safe; `cwd` is a NUL-terminated string.
        if unsafe { libc::chdir(cwd.as_ptr()) } < 0 {
            fail(err_fd, SpawnStep::Chdir);
        }
    }
    for (resource, limit) in &plan.rlimits {
        // The raw system call, as glibc's setrlimit is not on the async-signal-safe list.
        // SAFETY: prlimit(2) on pid 0 (ourselves) reads the new limit from the pointer given and
        // writes nothing when the old-limit pointer is NULL.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                0,
                *resource,
                limit as *const libc::rlimit,
                std::ptr::null_mut::<libc::rlimit>(),
            )
        };
        if rc < 0 {
            fail(err_fd, SpawnStep::Setrlimit(*resource as i32));
        }
    }
    if let Some(mask) = plan.umask {
        // SAFETY: umask(2) is async-signal-safe and cannot fail.
        unsafe { libc::umask(mask) };
    }
    if let Some((uid, gid, groups)) = &plan.credentials {
        // Raw system calls: glibc's wrappers broadcast to all threads (nptl setxid), which a
        // forked child of a multithreaded parent must not rely on; the child has one thread, so
        // the per-thread system call is the process-wide change.
        // SAFETY: setgroups(2) reads `groups.len()` gids from the pointer.
        let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        if rc < 0 {
            fail(err_fd, SpawnStep::Setgroups);
        }
        // SAFETY: setgid(2) takes an integer.
        if unsafe { libc::syscall(libc::SYS_setgid, *gid) } < 0 {
            fail(err_fd, SpawnStep::Setgid);
        }
        // SAFETY: setuid(2) takes an integer.
        if unsafe { libc::syscall(libc::SYS_setuid, *uid) } < 0 {
            fail(err_fd, SpawnStep::Setuid);
        }
    }

    // SAFETY: sigprocmask(2) is async-signal-safe; the set was initialised before the fork.
    if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &plan.empty_mask, std::ptr::null_mut()) } < 0 {
        fail(err_fd, SpawnStep::SignalMask);
    }
    // SAFETY: sigaction(2) is async-signal-safe; the action was initialised before the fork.
    if unsafe { libc::sigaction(libc::SIGPIPE, &plan.default_action, std::ptr::null_mut()) } < 0 {
        fail(err_fd, SpawnStep::SignalDisposition);
    }

    // Wait until the parent has seized us (or gone away: EOF, or an error).
    let mut byte = 0u8;
    loop {
        // SAFETY: read(2) is async-signal-safe; `byte` is a live one-byte buffer.
        let n = unsafe { libc::read(go_fd, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            break;
        }
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        // SAFETY: _exit(2) is async-signal-safe.
        unsafe { libc::_exit(127) };
    }

    // SAFETY: execve(2) is async-signal-safe; `program` is NUL-terminated and both vectors are
    // NULL-terminated arrays of pointers to NUL-terminated strings owned by `plan`, alive here.
    unsafe {
        libc::execve(
            plan.program.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.env_ptrs.as_ptr(),
        )
    };
    fail(err_fd, SpawnStep::Execve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_replaces_an_existing_key_only() {
        let cfg = SpawnConfig::new("/bin/true")
            .env_clear()
            .env("A", "1")
            .env("AB", "2")
            .env("A", "3");
        assert_eq!(cfg.env, vec![OsString::from("AB=2"), OsString::from("A=3")]);
    }

    #[test]
    fn fd_replaces_the_mapping_of_a_target() {
        let cfg = SpawnConfig::new("/bin/true").fd(9, 1).fd(10, 7);
        assert_eq!(cfg.fds, vec![(0, 0), (2, 2), (9, 1), (10, 7)]);
        assert_eq!(cfg.argv, vec![OsString::from("/bin/true")]);
    }

    #[test]
    fn steps_round_trip_through_the_report() {
        for step in [
            SpawnStep::Fork,
            SpawnStep::Cgroup,
            SpawnStep::Setsid,
            SpawnStep::MovePipes,
            SpawnStep::DupSource(5),
            SpawnStep::Dup2(7),
            SpawnStep::CloseRange,
            SpawnStep::Chdir,
            SpawnStep::Setrlimit(7),
            SpawnStep::Setgroups,
            SpawnStep::Setgid,
            SpawnStep::Setuid,
            SpawnStep::SignalMask,
            SpawnStep::SignalDisposition,
            SpawnStep::Execve,
        ] {
            let (code, arg) = step.encode();
            assert_eq!(SpawnStep::decode(code, arg), Some(step));
        }
        assert_eq!(SpawnStep::decode(99, 0), None);
    }

    #[test]
    fn invalid_configurations_are_refused_before_forking() {
        let bad = [
            SpawnConfig::new("/bin/true").arg("a\0b"),
            SpawnConfig::new("/bin/true").fd(3, 0).fd(-1, 5),
            SpawnConfig {
                fds: vec![(0, 4), (1, 4)],
                ..SpawnConfig::new("/bin/true")
            },
            SpawnConfig::new("/bin/true").cgroup("relative/cg"),
            SpawnConfig::new("/bin/true").cgroup("/a/../b"),
            SpawnConfig::new("/bin/true").cgroup("/a/./b"),
        ];
        for cfg in bad {
            match spawn(&cfg) {
                Err(Error::Spawn { source, .. }) => {
                    assert_eq!(source.kind(), io::ErrorKind::InvalidInput, "{source}")
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    }
}
