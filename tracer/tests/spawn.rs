//! `tracer::spawn`: programs started under trace get exactly the execution context asked for,
//! fail cleanly before exec, and never outlive their tracer.
//!
//! Real processes, synchronised on the lines the fixtures print; every spawned process is
//! killed and reaped by its `Tracee`'s drop, and every blocking step has a time limit.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fixtures::{LineReader, LINE_TIMEOUT};
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use tracer::ptrace::Restart;
use tracer::spawn::{spawn, SpawnConfig, SpawnFailure, SpawnStep};
use tracer::{Error, Origin, Pid, ProcessMemory, SyscallAction, SyscallEntry, Tracee};

/// Names what the re-executed test binary should do in [`helper_spawn_and_hold`].
const HELPER_ENV: &str = "TRANSPLANT_SPAWN_HELPER";

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe2")
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "transplant-spawn-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        // Reachable by the unprivileged user some tests run as.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The children of the calling thread (a fork is a child of the thread that forked), zombies
/// included: a child leaves this list only when reaped.
fn children_of_this_thread() -> BTreeSet<i32> {
    std::fs::read_to_string("/proc/thread-self/children")
        .expect("/proc/thread-self/children")
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect()
}

/// Reads the `key=value` lines of the `report` fixture up to its `READY` line.
fn read_report(out: &mut LineReader<File>) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    loop {
        let line = out.line(LINE_TIMEOUT).expect("report line");
        if let Some(rest) = line.strip_prefix("READY ") {
            fields.extend(fixtures::parse_fields(rest));
            return fields;
        }
        let (k, v) = line.split_once('=').expect("key=value line");
        fields.insert(k.to_owned(), v.to_owned());
    }
}

fn tracer_pid_of(pid: Pid) -> i32 {
    tracer::procfs::status_field(pid, "TracerPid")
        .expect("TracerPid")
        .parse()
        .expect("number")
}

#[test]
fn spawn_sets_the_whole_execution_context() {
    let (in_r, _in_w) = pipe();
    let (out_r, out_w) = pipe();
    let (fd7_r, fd7_w) = pipe();
    File::from(fd7_w)
        .write_all(b"written into fd 7\n")
        .expect("write fd 7 pipe");
    let dir = TempDir::new("cwd");
    // Run as nobody: the binary and the cwd must be reachable by that user.
    let report = fixtures::PublicCopy::new("report");
    let cfg = SpawnConfig::new(report.path())
        .argv(["report-argv0", "readfd=7", "two words"])
        .env_clear()
        .env("TRANSPLANT_FIXTURE_VAR", "set by the test")
        .env("PATH", "/usr/bin:/bin")
        .cwd(&dir.0)
        .credentials(65534, 65534, vec![65534, 100])
        .rlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 200, 300)
        .umask(0o027)
        .no_fds()
        .fd(in_r.as_raw_fd(), 0)
        .fd(out_w.as_raw_fd(), 1)
        .fd(fd7_r.as_raw_fd(), 7);
    let mut tracee = spawn(&cfg).expect("spawn report");
    drop((in_r, out_w, fd7_r));
    let mut out = LineReader::new(File::from(out_r));

    assert_eq!(tracee.origin(), Origin::Spawned);
    assert!(
        tracee.all_stopped(),
        "a spawned process starts stopped at its exec event"
    );
    // TracerPid names the tracer thread: ptrace(2) "a tracee is attached to a tracer thread".
    assert_eq!(tracer_pid_of(tracee.pid()), nix::unistd::gettid().as_raw());
    tracee.resume_all(Restart::Continue).expect("resume");

    let f = read_report(&mut out);
    assert_eq!(f["argv0"], "report-argv0");
    assert_eq!(f["argv1"], "readfd=7");
    assert_eq!(f["argv2"], "two words");
    assert!(!f.contains_key("argv3"));
    assert_eq!(f["env"], "set by the test");
    assert_eq!(Path::new(&f["cwd"]), dir.0.canonicalize().unwrap());
    assert_eq!(f["uid"], "65534");
    assert_eq!(f["gid"], "65534");
    let groups: BTreeSet<&str> = f["groups"].split(',').collect();
    assert_eq!(groups, BTreeSet::from(["100", "65534"]));
    assert_eq!(f["nofile"], "200:300");
    assert_eq!(f["umask"], "027");
    assert_eq!(f["fds"], "0,1,7", "exactly the descriptors asked for");
    assert_eq!(f["fd7"], "written into fd 7");
    assert_eq!(f["pid"], tracee.pid().to_string());
}

#[test]
fn overlapping_fd_mappings_are_applied_as_a_whole() {
    // Two pipes whose read ends swap numbers in the child, and one source at two targets.
    let (in_r, _in_w) = pipe();
    let (out_r, out_w) = pipe();
    let (a_r, a_w) = pipe();
    let (b_r, b_w) = pipe();
    File::from(a_w).write_all(b"from a\n").unwrap();
    File::from(b_w).write_all(b"from b\n").unwrap();
    let (x, y) = (a_r.as_raw_fd(), b_r.as_raw_fd());
    let cfg = SpawnConfig::new(fixtures::path("report"))
        .argv([
            "report".to_owned(),
            format!("readfd={x}"),
            format!("readfd={y}"),
        ])
        .no_fds()
        .fd(in_r.as_raw_fd(), 0)
        .fd(out_w.as_raw_fd(), 1)
        .fd(out_w.as_raw_fd(), 2)
        .fd(a_r.as_raw_fd(), y)
        .fd(b_r.as_raw_fd(), x);
    let mut tracee = spawn(&cfg).expect("spawn report");
    drop((in_r, out_w, a_r, b_r));
    let mut out = LineReader::new(File::from(out_r));
    tracee.resume_all(Restart::Continue).expect("resume");

    let f = read_report(&mut out);
    let mut expected: Vec<RawFd> = vec![0, 1, 2, x, y];
    expected.sort();
    let expected: Vec<String> = expected.iter().map(|n| n.to_string()).collect();
    assert_eq!(f["fds"], expected.join(","));
    assert_eq!(f[&format!("fd{x}")], "from b");
    assert_eq!(f[&format!("fd{y}")], "from a");
}

/// The `SpawnFailure` inside an `Error::Spawn`, with its message.
fn failure(err: &Error) -> (&SpawnFailure, std::io::ErrorKind) {
    match err {
        Error::Spawn { source, .. } => (
            source
                .get_ref()
                .and_then(|e| e.downcast_ref::<SpawnFailure>())
                .unwrap_or_else(|| panic!("no SpawnFailure in {err}")),
            source.kind(),
        ),
        other => panic!("expected Error::Spawn, got {other:?}"),
    }
}

#[test]
fn a_missing_program_is_a_spawn_error_and_leaves_no_zombie() {
    let before = children_of_this_thread();
    let program = "/nonexistent/transplant-no-such-program";
    let err = spawn(&SpawnConfig::new(program)).expect_err("spawn must fail");
    let (f, kind) = failure(&err);
    assert_eq!(f.step, SpawnStep::Execve);
    assert_eq!(f.errno, libc::ENOENT);
    assert_eq!(kind, std::io::ErrorKind::NotFound);
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "cannot spawn {program}: execve: No such file or directory"
        )),
        "{msg}"
    );
    assert_eq!(
        children_of_this_thread(),
        before,
        "the failed child was reaped"
    );
}

#[test]
fn a_non_executable_file_is_a_spawn_error_and_leaves_no_zombie() {
    let dir = TempDir::new("noexec");
    let program = dir.0.join("not-executable");
    std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = children_of_this_thread();
    let err = spawn(&SpawnConfig::new(&program)).expect_err("spawn must fail");
    let (f, kind) = failure(&err);
    assert_eq!((f.step, f.errno), (SpawnStep::Execve, libc::EACCES));
    assert_eq!(kind, std::io::ErrorKind::PermissionDenied);
    assert!(
        err.to_string().contains("execve: Permission denied"),
        "{err}"
    );
    assert_eq!(children_of_this_thread(), before);
}

#[test]
fn a_failing_set_up_step_is_named() {
    let before = children_of_this_thread();
    let err = spawn(&SpawnConfig::new(fixtures::path("report")).cwd("/nonexistent/dir"))
        .expect_err("spawn must fail");
    let (f, _) = failure(&err);
    assert_eq!((f.step, f.errno), (SpawnStep::Chdir, libc::ENOENT));
    assert!(
        err.to_string()
            .contains("chdir to /nonexistent/dir: No such file or directory"),
        "{err}"
    );
    assert_eq!(children_of_this_thread(), before);
}

#[test]
fn dropping_a_spawned_tracee_kills_and_reaps_it() {
    let (in_r, _in_w) = pipe();
    let (out_r, out_w) = pipe();
    let cfg = SpawnConfig::new(fixtures::path("spawn_eintr"))
        .fd(in_r.as_raw_fd(), 0)
        .fd(out_w.as_raw_fd(), 1);
    let mut tracee = spawn(&cfg).expect("spawn spawn_eintr");
    drop((in_r, out_w));
    let pid = tracee.pid();
    tracee.resume_all(Restart::Continue).expect("resume");
    let mut out = LineReader::new(File::from(out_r));
    let ready = out.line(LINE_TIMEOUT).expect("READY line");
    assert!(ready.starts_with("READY "), "{ready}");
    assert!(children_of_this_thread().contains(&pid.as_raw()));
    drop(tracee);
    assert!(!children_of_this_thread().contains(&pid.as_raw()), "reaped");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

/// Not a test: the tracer process of [`a_spawned_process_dies_with_its_tracer`], run by
/// re-executing this test binary. Spawns `blocker` under trace, lets it run, prints
/// `HELD pid=N` and blocks until killed (or until its stdin closes).
#[test]
#[ignore = "helper process of a_spawned_process_dies_with_its_tracer"]
fn helper_spawn_and_hold() {
    if std::env::var_os(HELPER_ENV).as_deref() != Some("hold".as_ref()) {
        return;
    }
    // The blocker's stdin is ours, a pipe the test process holds open: our death must not
    // end it through end of file (do_exit closes our files before it kills our tracees).
    let (out_r, out_w) = pipe();
    let cfg = SpawnConfig::new(fixtures::path("blocker")).fd(out_w.as_raw_fd(), 1);
    let mut tracee: Tracee = spawn(&cfg).expect("spawn blocker");
    drop(out_w);
    // Run it (its threads created, each reported to us) until its main thread waits for
    // commands on stdin, then let it go on.
    let mut at_stdin = |_: &ProcessMemory, e: &SyscallEntry| -> tracer::Result<SyscallAction> {
        Ok(if e.nr == libc::SYS_read as u64 && e.args[0] == 0 {
            SyscallAction::Hold
        } else {
            SyscallAction::Run
        })
    };
    tracee
        .run(LINE_TIMEOUT, None, Some(&mut at_stdin))
        .expect("run blocker to its command loop");
    tracee.resume_all(Restart::Continue).expect("resume");
    let mut out = LineReader::new(File::from(out_r));
    let ready = out.line(LINE_TIMEOUT).expect("READY line of blocker");
    assert!(ready.starts_with("READY "), "{ready}");
    println!("HELD pid={}", tracee.pid());
    std::io::stdout().flush().unwrap();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

/// Kills and reaps a child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pidfd_open(pid: Pid) -> OwnedFd {
    // SAFETY: pidfd_open(2) takes a pid and flags (0) and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a descriptor pidfd_open just returned, owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

#[test]
fn a_spawned_process_dies_with_its_tracer() {
    // The spawned process is the helper's child; when the helper dies it is reparented to
    // the nearest subreaper. Make that us, so that we can reap it.
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let exe = std::env::current_exe().expect("current_exe");
    let mut helper = KillOnDrop(
        Command::new(exe)
            .args([
                "--exact",
                "helper_spawn_and_hold",
                "--ignored",
                "--nocapture",
            ])
            .env(HELPER_ENV, "hold")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the helper"),
    );
    // Held until the end: the helper's stdin is the blocker's too, and must not reach end of
    // file when `Child::wait` would close it.
    let _helper_stdin = helper.0.stdin.take().expect("stdin");
    let mut out = LineReader::new(helper.0.stdout.take().expect("stdout"));
    let pid = loop {
        let line = out.line(LINE_TIMEOUT).expect("HELD line of the helper");
        if let Some(p) = line.strip_prefix("HELD pid=") {
            break Pid::from_raw(p.parse().expect("pid"));
        }
    };
    // Opened before the kill, so that a reused pid cannot fool us.
    let pidfd = pidfd_open(pid);
    assert!(fixtures::is_running(pid));
    let tracer = Pid::from_raw(tracer_pid_of(pid));
    let tracer_tgid = tracer::procfs::status_field(tracer, "Tgid").expect("Tgid of the tracer");
    assert_eq!(
        tracer_tgid,
        helper.0.id().to_string(),
        "traced by the helper"
    );

    helper.0.kill().expect("kill the helper");
    helper.0.wait().expect("reap the helper");

    // A pidfd becomes readable when its process exits (pidfd_open(2)).
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let n = poll(
        &mut fds,
        PollTimeout::try_from(LINE_TIMEOUT.as_millis() as i32).unwrap(),
    )
    .expect("poll pidfd");
    assert_eq!(n, 1, "the spawned process outlived its tracer");
    match waitpid(pid, Some(WaitPidFlag::__WALL)).expect("reap the spawned process") {
        WaitStatus::Signaled(p, sig, _) => {
            assert_eq!(p, pid);
            assert_eq!(
                sig,
                nix::sys::signal::Signal::SIGKILL,
                "killed by PTRACE_O_EXITKILL"
            );
        }
        other => panic!("spawned process ended unexpectedly: {other:?}"),
    }
}

/// The `0::PATH` cgroup (unified hierarchy) of this process, if it has one.
fn own_unified_cgroup() -> Option<String> {
    tracer::procfs::cgroup(nix::unistd::getpid())
        .expect("/proc/self/cgroup")
        .into_iter()
        .find(|c| c.hierarchy == 0 && c.controllers.is_empty())
        .map(|c| c.path)
}

/// The `0::PATH` cgroup of `pid`, read from `/proc/PID/cgroup` as text.
fn unified_cgroup_of(pid: Pid) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/PID/cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no unified cgroup in {text:?}"))
        .to_owned()
}

/// A cgroup this test created, removed (`rmdir`) when dropped if no one did it before.
struct TestCgroup {
    /// As `/proc/PID/cgroup` names it.
    path: String,
    /// Its directory under the cgroup2 mount.
    dir: PathBuf,
    removed: bool,
}

impl TestCgroup {
    /// Creates cgroup `name` below `parent` (a cgroup path). `None`, with the reason on stderr,
    /// when this machine does not let us: no cgroup2 mount, or a read-only or forbidden one.
    /// Any other failure fails the test.
    fn create(parent: &str, name: &str) -> Option<Self> {
        let path = format!("{}/{name}", parent.trim_end_matches('/'));
        let Some(dir) = tracer::procfs::unified_cgroup_dir(&path).expect("mountinfo") else {
            eprintln!("SKIP: no cgroup2 file system is mounted here");
            return None;
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => Some(TestCgroup {
                path,
                dir,
                removed: false,
            }),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EROFS | libc::EACCES | libc::EPERM)
                ) =>
            {
                eprintln!("SKIP: cannot create cgroup {}: {e}", dir.display());
                None
            }
            Err(e) => panic!("mkdir {}: {e}", dir.display()),
        }
    }

    /// A child cgroup directly under `/` of ours, named after the test and this process.
    fn below_ours(tag: &str) -> Option<Self> {
        let ours = own_unified_cgroup().expect("this process has a unified cgroup");
        Self::create(
            &ours,
            &format!("transplant-spawn-{tag}-{}", std::process::id()),
        )
    }

    /// Writes `value` to the cgroup's control file `file`.
    fn write(&self, file: &str, value: &str) -> std::io::Result<()> {
        std::fs::write(self.dir.join(file), value)
    }

    /// Removes the cgroup, which must be empty by now (every process in it reaped).
    fn remove(mut self) {
        self.removed = true;
        std::fs::remove_dir(&self.dir)
            .unwrap_or_else(|e| panic!("rmdir {}: {e}", self.dir.display()));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if !self.removed {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// The session id of `pid` (field 6 of `/proc/PID/stat`).
fn session_of(pid: Pid) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let (_, rest) = stat.rsplit_once(") ").expect("stat format");
    // state ppid pgrp session
    rest.split_whitespace()
        .nth(3)
        .expect("session field")
        .parse()
        .expect("number")
}

/// A line `key:...` of `/proc/PID/status`.
fn status_line(pid: Pid, key: &str) -> String {
    tracer::procfs::status_field(pid, key).unwrap_or_else(|e| panic!("{key} of {pid}: {e}"))
}

/// Starts a public copy of `report` the way some other service manager would (plain
/// fork/exec, not `tracer::spawn`): as uid/gid 65534 with groups 65534 and 100, in `cwd`,
/// with a small environment of its own, umask 037, and lowered `RLIMIT_NOFILE` and
/// `RLIMIT_CORE`. Returns the process and its report.
fn start_unprivileged_report(
    report: &fixtures::PublicCopy,
    cwd: &Path,
) -> (KillOnDrop, HashMap<String, String>) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(report.path());
    cmd.arg0("report-old")
        .args(["argument", "two words"])
        .env_clear()
        .env("TRANSPLANT_FIXTURE_VAR", "from the old process")
        .env("ONLY_IN_THE_OLD_PROCESS", "1")
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls on stack values (std's `uid`/`groups` cannot be used:
    // std drops privileges before running pre_exec closures, and `groups` is unstable).
    unsafe {
        cmd.pre_exec(|| {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            let nofile = libc::rlimit {
                rlim_cur: 100,
                rlim_max: 150,
            };
            check(libc::setrlimit(libc::RLIMIT_NOFILE, &nofile))?;
            let core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 1 << 20,
            };
            check(libc::setrlimit(libc::RLIMIT_CORE, &core))?;
            libc::umask(0o037);
            let groups: [libc::gid_t; 2] = [65534, 100];
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setgid(65534))?;
            check(libc::setuid(65534))
        });
    }
    let mut child = KillOnDrop(cmd.spawn().expect("start the old report"));
    let stdout = child.0.stdout.take().expect("stdout");
    let mut out = LineReader::new(File::from(OwnedFd::from(stdout)));
    let fields = read_report(&mut out);
    (child, fields)
}

#[test]
fn in_context_reproduces_the_context_of_an_unprivileged_process() {
    let dir = TempDir::new("ctx");
    let report = fixtures::PublicCopy::new("report");
    let (old_child, old) = start_unprivileged_report(&report, &dir.0);
    let old_pid = Pid::from_raw(old_child.0.id() as i32);
    // The old process really runs in the context we meant to give it, else the comparison
    // below proves nothing.
    assert_eq!(old["uid"], "65534");
    assert_eq!(old["gid"], "65534");
    assert_eq!(
        old["groups"].split(',').collect::<BTreeSet<_>>(),
        BTreeSet::from(["100", "65534"])
    );
    assert_eq!(old["nofile"], "100:150");
    assert_eq!(old["umask"], "037");
    assert_eq!(old["env"], "from the old process");
    assert_eq!(Path::new(&old["cwd"]), dir.0.canonicalize().unwrap());
    let our_session = nix::unistd::getsid(None).expect("getsid").as_raw();
    assert_eq!(session_of(old_pid), our_session);

    let ctx = tracer::procfs::exec_context(old_pid).expect("exec_context of the old process");
    assert_eq!(ctx.exe, report.path());
    let (in_r, _in_w) = pipe();
    let (out_r, out_w) = pipe();
    let cfg = SpawnConfig::in_context(report.path(), &ctx)
        .fd(in_r.as_raw_fd(), 0)
        .fd(out_w.as_raw_fd(), 1);
    assert!(cfg.new_session);
    let mut tracee = spawn(&cfg).expect("spawn in the old process's context");
    drop((in_r, out_w));
    let new_pid = tracee.pid();
    tracee.resume_all(Restart::Continue).expect("resume");
    let mut out = LineReader::new(File::from(out_r));
    let new = read_report(&mut out);

    // What the program sees of itself: everything but its pid and its descriptors (the
    // caller's to give; the old process has whatever its starter leaked) is the old one's.
    assert_eq!(new["pid"], new_pid.to_string());
    assert_eq!(new["fds"], "0,1,2");
    let context = |m: &HashMap<String, String>| {
        let mut m = m.clone();
        m.remove("pid");
        m.remove("fds");
        m
    };
    assert_eq!(context(&new), context(&old));
    assert_eq!(
        new["argv0"], "report-old",
        "argv0 is the old one's, not the path"
    );
    assert_eq!(new["argv1"], "argument");
    assert_eq!(new["argv2"], "two words");

    // What the kernel says, byte for byte where it can.
    let raw = |pid: Pid, file: &str| tracer::procfs::read_bytes(pid, file).expect(file);
    assert_eq!(
        raw(new_pid, "environ"),
        raw(old_pid, "environ"),
        "environment"
    );
    assert_eq!(raw(new_pid, "cmdline"), raw(old_pid, "cmdline"), "argv");
    assert_eq!(
        raw(new_pid, "limits"),
        raw(old_pid, "limits"),
        "every rlimit"
    );
    for key in ["Uid", "Gid", "Groups", "Umask"] {
        assert_eq!(
            status_line(new_pid, key),
            status_line(old_pid, key),
            "{key}"
        );
    }
    assert_eq!(
        std::fs::read_link(format!("/proc/{new_pid}/cwd")).unwrap(),
        std::fs::read_link(format!("/proc/{old_pid}/cwd")).unwrap()
    );
    assert_eq!(unified_cgroup_of(new_pid), unified_cgroup_of(old_pid));

    // Not in our session: it leads a new one.
    assert_eq!(session_of(new_pid), new_pid.as_raw());
    assert_ne!(session_of(new_pid), our_session);
}

#[test]
fn new_session_is_asked_for_and_otherwise_ours() {
    let our_session = nix::unistd::getsid(None).expect("getsid").as_raw();
    for new_session in [false, true] {
        let (in_r, _in_w) = pipe();
        let (out_r, out_w) = pipe();
        let mut cfg = SpawnConfig::new(fixtures::path("report"))
            .fd(in_r.as_raw_fd(), 0)
            .fd(out_w.as_raw_fd(), 1);
        if new_session {
            cfg = cfg.new_session();
        }
        let mut tracee = spawn(&cfg).expect("spawn report");
        drop((in_r, out_w));
        tracee.resume_all(Restart::Continue).expect("resume");
        let f = read_report(&mut LineReader::new(File::from(out_r)));
        let pid = tracee.pid();
        assert_eq!(f["pid"], pid.to_string());
        let expected = if new_session {
            pid.as_raw()
        } else {
            our_session
        };
        assert_eq!(session_of(pid), expected, "new_session={new_session}");
    }
}

#[test]
fn in_context_starts_the_program_in_the_old_process_cgroup() {
    // Declared first, dropped last: removed only after both processes are reaped.
    let Some(cgroup) = TestCgroup::below_ours("ctx") else {
        return;
    };
    let (mut old, _) = fixtures::Fixture::start_ready("report", &[]);
    cgroup
        .write("cgroup.procs", &old.pid().to_string())
        .expect("move the old process into the test cgroup");
    assert_eq!(unified_cgroup_of(old.pid()), cgroup.path);
    assert_ne!(own_unified_cgroup().as_deref(), Some(cgroup.path.as_str()));

    let ctx = tracer::procfs::exec_context(old.pid()).expect("exec_context");
    assert_eq!(ctx.unified_cgroup(), Some(cgroup.path.as_str()));
    let (in_r, _in_w) = pipe();
    let (out_r, out_w) = pipe();
    let cfg = SpawnConfig::in_context(fixtures::path("report"), &ctx)
        .fd(in_r.as_raw_fd(), 0)
        .fd(out_w.as_raw_fd(), 1);
    let mut tracee = spawn(&cfg).expect("spawn in the old process's cgroup");
    drop((in_r, out_w));
    // Stopped at its exec event, before its first instruction: it is there already.
    assert_eq!(unified_cgroup_of(tracee.pid()), cgroup.path);
    tracee.resume_all(Restart::Continue).expect("resume");
    let f = read_report(&mut LineReader::new(File::from(out_r)));
    assert_eq!(f["pid"], tracee.pid().to_string());
    let procs = std::fs::read_to_string(cgroup.dir.join("cgroup.procs")).unwrap();
    let procs: BTreeSet<&str> = procs.lines().collect();
    let (a, b) = (old.pid().to_string(), tracee.pid().to_string());
    assert_eq!(procs, BTreeSet::from([a.as_str(), b.as_str()]));

    drop(tracee);
    old.send("exit");
    assert!(old.wait_exit(LINE_TIMEOUT).success());
    drop(old);
    cgroup.remove();
}

#[test]
fn a_cgroup_that_takes_no_processes_is_a_spawn_error_and_leaves_no_zombie() {
    // cgroup-v2.rst: once a child of `top` is threaded, its domain siblings become "domain
    // invalid" and refuse processes (EOPNOTSUPP): the write after the fork fails.
    let Some(top) = TestCgroup::below_ours("invalid") else {
        return;
    };
    let Some(threaded) = TestCgroup::create(&top.path, "threaded") else {
        return;
    };
    let Some(invalid) = TestCgroup::create(&top.path, "invalid") else {
        return;
    };
    threaded
        .write("cgroup.type", "threaded")
        .expect("make a threaded cgroup");
    let kind = std::fs::read_to_string(invalid.dir.join("cgroup.type")).unwrap();
    assert_eq!(kind.trim(), "domain invalid");

    let before = children_of_this_thread();
    let err = spawn(&SpawnConfig::new(fixtures::path("report")).cgroup(&invalid.path))
        .expect_err("spawn must fail");
    let (f, _) = failure(&err);
    assert_eq!((f.step, f.errno), (SpawnStep::Cgroup, libc::EOPNOTSUPP));
    let procs = invalid.dir.join("cgroup.procs");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "moving the child into cgroup {}: writing pid ",
            invalid.path
        )) && msg.contains(&format!("to {}", procs.display()))
            && msg.contains("Operation not supported"),
        "{msg}"
    );
    assert_eq!(children_of_this_thread(), before, "the child was reaped");
    assert_eq!(std::fs::read_to_string(&procs).unwrap(), "");

    invalid.remove();
    threaded.remove();
    top.remove();
}

#[test]
fn a_missing_cgroup_is_refused_before_forking() {
    let ours = own_unified_cgroup().expect("this process has a unified cgroup");
    let missing = format!(
        "{}/transplant-no-such-cgroup-{}",
        ours.trim_end_matches('/'),
        std::process::id()
    );
    let before = children_of_this_thread();
    let err = spawn(&SpawnConfig::new(fixtures::path("report")).cgroup(&missing))
        .expect_err("spawn must fail");
    let (f, kind) = failure(&err);
    assert_eq!((f.step, f.errno), (SpawnStep::Cgroup, libc::ENOENT));
    assert_eq!(kind, std::io::ErrorKind::NotFound);
    assert!(
        err.to_string()
            .contains(&format!("moving the child into cgroup {missing}: ")),
        "{err}"
    );
    assert_eq!(children_of_this_thread(), before);
}

#[test]
fn the_callers_own_cgroup_is_not_written() {
    // Our own cgroup, spelled as /proc names it, is where the child is born: no write, so it
    // works even where its cgroup.procs is not ours to write.
    let ours = own_unified_cgroup().expect("this process has a unified cgroup");
    let (in_r, _in_w) = pipe();
    let (out_r, out_w) = pipe();
    let cfg = SpawnConfig::new(fixtures::path("report"))
        .cgroup(&ours)
        .fd(in_r.as_raw_fd(), 0)
        .fd(out_w.as_raw_fd(), 1);
    let mut tracee = spawn(&cfg).expect("spawn in our own cgroup");
    drop((in_r, out_w));
    assert_eq!(unified_cgroup_of(tracee.pid()), ours);
    tracee.resume_all(Restart::Continue).expect("resume");
    let f = read_report(&mut LineReader::new(File::from(out_r)));
    assert_eq!(f["pid"], tracee.pid().to_string());
}
