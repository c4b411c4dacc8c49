//! Bad input and credentials (issue 5): every kind of bad input gets a precise error, through
//! the library and through the binary, and leaves the running process exactly as it was; a
//! process that exits during the update aborts it, naming the process, with nothing left
//! behind; and the new version runs with the old process's credentials, never the caller's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use fixtures::{Fixture, LineClient, ProcView, PublicCopy, Reaper, Scratch};
use tracer::{Pid, Tracee};
use transplant::update::inject::Point;
use transplant::update::{update, Config, Injection, Outcome, Phase, Report};

/// The unprivileged user (and group) the credential tests run things as.
const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------------------
// Harness

/// A running, filled `upd_hash_v1` with everything needed to prove later that it was not
/// touched: a connection opened before, its data, and its `/proc` view.
struct Old {
    /// Kills and reaps it when dropped.
    _fixture: Fixture,
    pid: Pid,
    port: u16,
    client: LineClient,
    dump: Vec<String>,
    sum: String,
    view: ProcView,
}

impl Old {
    /// Starts and fills `upd_hash_v1`, as root.
    fn start() -> Old {
        Old::start_with(fixtures::path("upd_hash_v1"), |_| {})
    }

    /// Starts and fills the program at `program` (a copy of `upd_hash_v1`), letting the
    /// caller adjust the command (credentials).
    fn start_with(program: PathBuf, adjust: impl FnOnce(&mut Command)) -> Old {
        let mut fixture = Fixture::start_with("upd_hash_v1", &["0"], |cmd| {
            *cmd = rebuilt_with_program(cmd, &program);
            adjust(cmd);
        });
        let ready = fixture.wait_ready();
        let port: u16 = ready["port"].parse().unwrap();
        let pid = fixture.pid();
        let mut client = LineClient::connect(port);
        for i in 0..30 {
            let cmd = if i % 3 == 0 {
                format!("SET key{i:02} text{i}")
            } else {
                format!("SET key{i:02} {}", i * 1000 - 7000)
            };
            assert_eq!(client.ask(&cmd), "OK", "{cmd}");
        }
        assert_eq!(client.ask("VERSION"), "v1");
        let dump = client.dump();
        let sum = client.ask("SUM");
        let view = ProcView::of(pid);
        Old {
            _fixture: fixture,
            pid,
            port,
            client,
            dump,
            sum,
            view,
        }
    }

    /// Asserts that the process was not touched: the same descriptors and mappings, nobody
    /// tracing it, the same data served on the connection opened before and on a fresh one,
    /// and no process of ours left behind.
    fn assert_untouched(&mut self, what: &str) {
        assert!(fixtures::is_running(self.pid), "{what}: process is gone");
        assert_eq!(
            ProcView::of(self.pid),
            self.view,
            "{what}: descriptors or mappings changed"
        );
        assert_eq!(
            tracer::procfs::tracer_of(self.pid).unwrap(),
            None,
            "{what}: still traced"
        );
        assert_eq!(self.client.ask("VERSION"), "v1", "{what}");
        assert_eq!(self.client.dump(), self.dump, "{what}");
        assert_eq!(self.client.ask("SUM"), self.sum, "{what}");
        let mut fresh = LineClient::connect(self.port);
        assert_eq!(fresh.ask("SUM"), self.sum, "{what}");
        assert_no_strays(&[self.pid], what);
    }
}

/// `cmd` with its program replaced by `program`, keeping its arguments and stdio.
fn rebuilt_with_program(cmd: &Command, program: &Path) -> Command {
    let mut c = Command::new(program);
    c.args(cmd.get_args())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    c
}

/// Children of this test process other than `known`, with their state (`Z` for a zombie).
fn stray_children(known: &[Pid]) -> Vec<String> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // A process that ends while we look has no stat any more.
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((name, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut f = rest.split(' ');
        let state = f.next().unwrap_or("?");
        let ppid: i32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == me && !known.contains(&Pid::from_raw(pid)) {
            out.push(format!("{pid} {name}) {state}"));
        }
    }
    out
}

fn assert_no_strays(known: &[Pid], what: &str) {
    let strays = stray_children(known);
    assert!(
        strays.is_empty(),
        "{what}: processes left behind: {strays:?}"
    );
}

/// A copy of the `transplant` binary any user may execute (the target directory may sit under
/// a directory only its owner can enter), removed when dropped.
struct PublicBinary(PathBuf);

impl PublicBinary {
    fn new() -> PublicBinary {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("transplant-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create public binary dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dst = dir.join("transplant");
        std::fs::copy(env!("CARGO_BIN_EXE_transplant"), &dst).expect("copy transplant");
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
        PublicBinary(dir)
    }

    fn path(&self) -> PathBuf {
        self.0.join("transplant")
    }
}

impl Drop for PublicBinary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `program` (the `transplant` binary or a copy) with `args`, optionally as `nobody`;
/// fails the test after a minute.
fn run_binary(program: PathBuf, args: Vec<String>, as_nobody: bool) -> Output {
    fixtures::within(Duration::from_secs(60), "transplant", move || {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(program);
        cmd.args(&args).current_dir("/");
        if as_nobody {
            // As root, std drops the supplementary groups too (setgroups(0)) before setuid.
            cmd.uid(NOBODY).gid(NOBODY);
        }
        cmd.output().expect("run transplant")
    })
}

/// `transplant --pid PID --to TO EXTRA...` as root.
fn transplant(pid: Pid, to: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--pid".to_owned(),
        pid.to_string(),
        "--to".to_owned(),
        to.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run_binary(env!("CARGO_BIN_EXE_transplant").into(), args, false)
}

/// Asserts that the binary failed and that its stderr contains every one of `needles`.
fn assert_cli_refused(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "exit status {:?}; stdout {}; stderr {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}:\n{stderr}");
    }
    stderr
}

/// Asserts that the library refused `cfg` in the check phase, with a message containing every
/// one of `needles`.
fn assert_refused(cfg: &Config, needles: &[&str]) -> String {
    let abort = match update(cfg) {
        Err(a) => a,
        Ok(r) => panic!("not refused: {r:#?}"),
    };
    assert_eq!(abort.phase, Phase::Check, "{abort}");
    for n in needles {
        assert!(abort.message.contains(n), "message lacks {n:?}: {abort}");
    }
    abort.message
}

fn v2() -> PathBuf {
    fixtures::path("upd_hash_v2")
}

// ---------------------------------------------------------------------------------------
// Bad input

#[test]
fn a_pid_that_does_not_exist_is_refused_by_number() {
    let mut old = Old::start();
    let mut child = Command::new("true").spawn().expect("run true");
    let gone = Pid::from_raw(child.id() as i32);
    child.wait().unwrap();

    let msg = format!("no such process {gone}");
    assert_refused(&Config::new(gone, v2()), &[&msg]);
    old.assert_untouched("library");

    let out = transplant(gone, &v2(), &[]);
    assert_cli_refused(
        &out,
        &[
            &format!("cannot update process {gone}"),
            &msg,
            "was not touched",
        ],
    );
    old.assert_untouched("binary");
}

#[test]
fn a_pid_we_may_not_trace_is_refused_with_the_reason() {
    let mut old = Old::start();
    let bin = PublicBinary::new();
    let to = PublicCopy::new("upd_hash_v2");
    let args = vec![
        "--pid".to_owned(),
        old.pid.to_string(),
        "--to".to_owned(),
        to.path().display().to_string(),
    ];
    let out = run_binary(bin.path(), args, true);
    let stderr = assert_cli_refused(
        &out,
        &[
            &format!("cannot update process {}", old.pid),
            "not permitted to trace",
            "was not touched",
        ],
    );
    assert!(stderr.contains("uid 0"), "names the owner: {stderr}");
    old.assert_untouched("binary as nobody");
}

#[test]
fn a_process_already_traced_is_refused_naming_the_tracer() {
    let mut old = Old::start();
    let tracee = Tracee::seize(old.pid).expect("seize");
    // TracerPid names the tracing thread: this one.
    let me = nix::unistd::gettid();
    let msg = format!("process {} is already traced by process {me}", old.pid);
    assert_refused(&Config::new(old.pid, v2()), &[&msg]);
    let out = transplant(old.pid, &v2(), &[]);
    assert_cli_refused(&out, &[&msg, "was not touched"]);
    assert_eq!(tracer::procfs::tracer_of(old.pid).unwrap(), Some(me));

    tracee.detach().expect("detach");
    old.assert_untouched("after our own tracer let go");
}

/// Asserts that `--to to` is refused with every one of `needles`, through the library and the
/// binary, the process untouched; returns the library's message.
fn bad_to(to: &Path, needles: &[&str]) -> String {
    let mut old = Old::start();
    let path = to.display().to_string();
    let mut all = vec![path.as_str(), "the new version (--to)"];
    all.extend_from_slice(needles);
    let message = assert_refused(&Config::new(old.pid, to), &all);
    old.assert_untouched("library");
    let out = transplant(old.pid, to, &[]);
    assert_cli_refused(&out, &all);
    old.assert_untouched("binary");
    message
}

#[test]
fn a_missing_new_version_is_refused_by_path() {
    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "update-input-missing");
    let missing = scratch.path("no-such-binary");
    let message = bad_to(&missing, &["No such file"]);
    // Each cause said once, though the error's message and its source both carry the OS's.
    assert_eq!(message.matches("No such file").count(), 1, "{message}");
}

#[test]
fn a_new_version_that_is_not_elf_is_refused() {
    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "update-input-not-elf");
    let text = scratch.path("notes.txt");
    std::fs::write(&text, "upd_hash v2, honestly\n").unwrap();
    bad_to(&text, &["not an ELF file"]);
}

#[test]
fn a_new_version_for_another_architecture_is_refused() {
    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "update-input-foreign");
    // v2 with its e_machine patched to AArch64 (183).
    let mut data = std::fs::read(v2()).unwrap();
    data[18..20].copy_from_slice(&183u16.to_le_bytes());
    let arm = scratch.path("upd_hash_v2-aarch64");
    std::fs::write(&arm, &data).unwrap();
    bad_to(&arm, &["Aarch64", "supports only x86_64"]);
}

#[test]
fn a_new_version_without_debug_info_is_refused() {
    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "update-input-stripped");
    let stripped = scratch.path("upd_hash_v2-stripped");
    let out = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(v2())
        .output()
        .expect("run strip (binutils)");
    assert!(out.status.success(), "strip: {out:?}");
    bad_to(&stripped, &["no usable debug info"]);
}

// ---------------------------------------------------------------------------------------
// A process that exits during the update

/// Kills the old process at `at` and checks the update aborts in `phase` naming it, with the
/// spawned processes gone and no process of ours left but the old one's remains.
fn killed_during_the_update(at: Point, phase: Phase) -> Report {
    let old = Old::start();
    let mut cfg = Config::new(old.pid, v2());
    cfg.inject = Some(Injection::KillOld { at });
    let report = update(&cfg).expect("no bad input");
    let Outcome::Aborted { phase: p, reason } = &report.outcome else {
        panic!("committed although the process was killed: {report:#?}");
    };
    assert_eq!(*p, phase, "{report:#?}");
    let want = format!("process {} exited during the update", old.pid);
    assert!(reason.starts_with(&want), "{reason}");
    let twice = format!("process {0}: process {0}:", old.pid);
    assert!(!reason.contains(&twice), "said once: {reason}");
    assert!(report.new_pid.is_some() && report.reversed_pid.is_some());
    for spawned in [report.new_pid, report.reversed_pid].into_iter().flatten() {
        assert!(
            !Path::new(&format!("/proc/{spawned}")).exists(),
            "spawned process {spawned} left behind"
        );
    }
    assert!(fixtures::is_zombie(old.pid), "the old process was killed");
    // Its zombie is our fixture's to reap; nothing else of ours may remain, not even a zombie.
    assert_no_strays(&[old.pid], "after the abort");
    drop(old);
    assert_no_strays(&[], "after reaping the old process");
    report
}

#[test]
fn a_process_that_exits_before_it_is_seized_aborts_the_update() {
    let r = killed_during_the_update(Point::Quiesce, Phase::Quiesce);
    assert_eq!(r.times_ms.capture, 0.0, "{r:#?}");
}

#[test]
fn a_process_killed_while_stopped_before_capture_aborts_the_update() {
    killed_during_the_update(Point::Capture, Phase::Capture);
}

#[test]
fn a_process_killed_during_the_forward_transfer_is_not_replaced() {
    // Its state was captured already; the new version must still not take over.
    killed_during_the_update(Point::Forward, Phase::Probation);
}

#[test]
fn a_process_killed_during_the_reverse_transfer_is_not_replaced() {
    killed_during_the_update(Point::Reverse, Phase::Probation);
}

#[test]
fn a_process_killed_before_the_comparison_is_not_replaced() {
    killed_during_the_update(Point::Compare, Phase::Probation);
}

// ---------------------------------------------------------------------------------------
// Credentials

/// `Uid`, `Gid` and `Groups` of `/proc/PID/status`.
fn ids(pid: Pid) -> (String, String, String) {
    let f = |k| tracer::procfs::status_field(pid, k).unwrap();
    (f("Uid"), f("Gid"), f("Groups"))
}

#[test]
fn the_new_version_runs_with_the_old_processs_credentials() {
    use std::os::unix::process::CommandExt;
    let program = PublicCopy::new("upd_hash_v1");
    let to = PublicCopy::new("upd_hash_v2");
    let mut old = Old::start_with(program.path().to_owned(), |cmd| {
        // A working directory nobody may enter: the new version's start-up enters it as nobody.
        cmd.current_dir("/");
        cmd.uid(NOBODY).gid(NOBODY);
    });
    let (uid, gid, groups) = ids(old.pid);
    let nobody = format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}");
    assert_eq!((uid.as_str(), gid.as_str()), (&*nobody, &*nobody));

    let report = update(&Config::new(old.pid, to.path())).expect("no bad input");
    let new = Reaper(Pid::from_raw(report.new_pid.expect("spawned")));
    assert!(report.committed(), "{report:#?}");
    assert_eq!(ids(new.0), (nobody.clone(), nobody, groups), "credentials");
    assert_eq!(old.client.ask("VERSION"), "v2");
    assert_eq!(old.client.dump(), old.dump);
    assert_eq!(old.client.ask("SUM"), old.sum);
    assert_eq!(old.client.ask("CHECK"), "PASS");
    assert!(fixtures::is_zombie(old.pid), "the old process is gone");
    drop(new);
    drop(old);
    assert_no_strays(&[], "after the update");
}

// ---------------------------------------------------------------------------------------
// The binary's report of a committed update

/// Makes this test process the reaper of orphans it leaves: the new version, a child of the
/// `transplant` process, becomes ours when that process exits (the tests run one per
/// process, so this changes no other test).
fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

#[test]
fn json_report_of_a_committed_update() {
    adopt_orphans();
    let mut old = Old::start();
    let out = transplant(old.pid, &v2(), &["--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    let new = Reaper(Pid::from_raw(
        report["new_pid"].as_i64().expect("new_pid") as i32
    ));
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["outcome"], "committed", "{report:#}");
    assert_eq!(report["old_pid"], old.pid.as_raw());
    assert_ne!(new.0, old.pid);
    assert_eq!(report["verified"], true);
    for t in [
        "quiesce", "capture", "forward", "reverse", "compare", "downtime", "total",
    ] {
        let v = report["times_ms"][t]
            .as_f64()
            .unwrap_or_else(|| panic!("times_ms.{t}: {report:#}"));
        assert!(v > 0.0, "times_ms.{t} = {v}");
    }
    assert!(report["objects"].as_u64().unwrap() > 30, "{report:#}");
    assert!(report["bytes"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(report["differences"], serde_json::json!([]));
    assert_eq!(old.client.ask("VERSION"), "v2");
    assert_eq!(old.client.ask("SUM"), old.sum);
    drop(new);
    drop(old);
    assert_no_strays(&[], "after the update");
}

#[test]
fn no_verify_says_the_check_was_skipped() {
    adopt_orphans();
    let mut old = Old::start();
    let out = transplant(old.pid, &v2(), &["--no-verify", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let new = Reaper(Pid::from_raw(report["new_pid"].as_i64().unwrap() as i32));
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["outcome"], "committed", "{report:#}");
    assert_eq!(report["verified"], false);
    assert_eq!(report["times_ms"]["reverse"], 0.0);
    assert_eq!(report["times_ms"]["compare"], 0.0);
    assert_eq!(old.client.ask("VERSION"), "v2");
    assert_eq!(old.client.ask("SUM"), old.sum);
    drop(new);
    drop(old);

    // The text report says so.
    let mut old = Old::start();
    let out = transplant(old.pid, &v2(), &["--no-verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let committed = format!("committed: process {} is now process ", old.pid);
    let new_pid: i32 = text
        .lines()
        .find_map(|l| l.strip_prefix(&committed))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{text}\n{}", String::from_utf8_lossy(&out.stderr)));
    let new = Reaper(Pid::from_raw(new_pid));
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("time-traveling check: SKIPPED (--no-verify): the transfer was not verified"),
        "{text}"
    );
    assert_eq!(old.client.ask("VERSION"), "v2");
    assert_eq!(old.client.ask("SUM"), old.sum);
    drop(new);
    drop(old);
    assert_no_strays(&[], "after the updates");
}
