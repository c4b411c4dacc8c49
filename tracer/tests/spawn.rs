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
