//! `/proc` parsers against real fixtures started in a chosen execution context.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};

use fixtures::{Fixture, LineReader, Reaper, LINE_TIMEOUT};
use tracer::procfs::{self, MappingKind, Resource, Rlimit};
use tracer::{Pid, RemoteAddr};

/// A process started by a test through a wrapper (`sh`, `setpriv`) that `exec`s the fixture, so
/// the pid stays the fixture's. Killed and reaped on drop; stdin stays open until then, so the
/// fixture keeps waiting.
struct Wrapped {
    out: LineReader<ChildStdout>,
    _stdin: ChildStdin,
    reaper: Reaper,
}

impl Wrapped {
    // The child is reaped by its `Reaper` (waitpid on drop), not through `Child`.
    #[allow(clippy::zombie_processes)]
    fn start(cmd: &mut Command) -> Wrapped {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn wrapper");
        Wrapped {
            out: LineReader::new(child.stdout.take().unwrap()),
            _stdin: child.stdin.take().unwrap(),
            reaper: Reaper(Pid::from_raw(child.id() as i32)),
        }
    }

    fn pid(&self) -> Pid {
        self.reaper.0
    }

    /// The `key=value` lines printed before `READY`, and the ready line's fields.
    fn lines_until_ready(&mut self) -> (HashMap<String, String>, HashMap<String, String>) {
        let mut before = HashMap::new();
        loop {
            let line = self.out.line(LINE_TIMEOUT).expect("line from fixture");
            if let Some(rest) = line.strip_prefix("READY") {
                return (before, fixtures::parse_fields(rest));
            }
            if let Some((k, v)) = line.split_once('=') {
                before.insert(k.to_owned(), v.to_owned());
            }
        }
    }
}

fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("procfs-{test}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn hex(v: &str) -> u64 {
    u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn maps_hold_the_executable_heap_stack_and_vdso() {
    let (f, ready) = Fixture::start_ready("procfs_symbols", &[]);
    let maps = procfs::maps(f.pid()).unwrap();
    let exe = fixtures::path("procfs_symbols").canonicalize().unwrap();
    let containing = |addr: u64| {
        maps.iter()
            .find(|m| m.range.contains(RemoteAddr::new(addr)))
            .unwrap_or_else(|| panic!("{addr:#x} not mapped"))
    };

    // Code of the program: an executable, private, read-only mapping of its file.
    let code = containing(hex(&ready["main"]));
    assert_eq!(code.kind, MappingKind::File(exe.clone()));
    assert!(code.perms.read && code.perms.exec && !code.perms.write && !code.perms.shared);
    assert!(code.inode != 0 && !code.deleted);
    // Its initialised global: a writable private mapping of the same file.
    let data = containing(hex(&ready["global"]));
    assert_eq!(data.kind, MappingKind::File(exe.clone()));
    assert!(data.perms.write && !data.perms.exec && !data.perms.shared);
    assert_eq!(data.inode, code.inode);
    // The program's first mapping holds its ELF header.
    let first = maps
        .iter()
        .find(|m| m.path() == Some(exe.as_path()))
        .unwrap();
    assert_eq!(first.offset, 0);
    // The block malloc gave it lies in the program break area.
    assert_eq!(containing(hex(&ready["heap"])).kind, MappingKind::Heap);
    // Addresses are in order and non-overlapping.
    assert!(maps.windows(2).all(|w| w[0].range.end <= w[1].range.start));
    let count = |kind: MappingKind| maps.iter().filter(|m| m.kind == kind).count();
    assert_eq!(count(MappingKind::Stack), 1);
    assert_eq!(count(MappingKind::Vdso), 1);
    assert!(count(MappingKind::Vvar) >= 1);
    let libc = containing(hex(&ready["malloc"]));
    assert!(libc.path().unwrap().to_str().unwrap().contains("libc.so"));
    assert!(libc.perms.exec);
}

#[test]
fn exec_context_is_what_the_process_was_started_with() {
    let dir = scratch_dir("context");
    let exe = fixtures::path("report");
    let mut cmd = Command::new("/bin/sh");
    // `exec` keeps the pid; "$0" and "$@" pass the fixture path and arguments through verbatim.
    cmd.arg("-c")
        .arg("umask 027; ulimit -S -n 100; ulimit -H -n 200; exec \"$0\" \"$@\"")
        .arg(&exe)
        .args(["one", "two words", ""])
        .current_dir(&dir)
        .env("TRANSPLANT_FIXTURE_VAR", "a=b c");
    let mut p = Wrapped::start(&mut cmd);
    let (said, ready) = p.lines_until_ready();
    assert_eq!(ready["pid"], p.pid().to_string());
    let ctx = procfs::exec_context(p.pid()).unwrap();

    assert_eq!(ctx.exe, exe.canonicalize().unwrap());
    let argv: Vec<OsString> = [
        exe.as_os_str(),
        "one".as_ref(),
        "two words".as_ref(),
        "".as_ref(),
    ]
    .iter()
    .map(|s| s.to_os_string())
    .collect();
    assert_eq!(ctx.argv, argv);
    assert_eq!(ctx.env_var("TRANSPLANT_FIXTURE_VAR").unwrap(), "a=b c");
    assert_eq!(said["env"], "a=b c");
    assert_eq!(ctx.cwd, dir.canonicalize().unwrap());
    assert_eq!(Path::new(&said["cwd"]), ctx.cwd);
    assert_eq!(ctx.umask, 0o027);
    assert_eq!(said["umask"], "027");
    let nofile = ctx.rlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert_eq!((nofile.soft, nofile.hard), (100, 200));
    assert_eq!(said["nofile"], "100:200");
    assert_eq!(ctx.rlimits.len(), procfs::ALL_RESOURCES.len());
    // Both ways of reading limits agree, on every resource.
    assert_eq!(
        procfs::rlimits_from_limits_file(p.pid()).unwrap(),
        ctx.rlimits
    );
    // Limits not touched are inherited from us.
    let (soft, hard) = nix::sys::resource::getrlimit(Resource::RLIMIT_STACK).unwrap();
    assert_eq!(
        ctx.rlimit(Resource::RLIMIT_STACK).unwrap(),
        Rlimit {
            resource: Resource::RLIMIT_STACK,
            soft,
            hard
        }
    );
    // Same identity and cgroups as us, who started it.
    let me = nix::unistd::getpid();
    assert_eq!(ctx.credentials, procfs::credentials(me).unwrap());
    assert_eq!(ctx.cgroup, procfs::cgroup(me).unwrap());
    assert_eq!(said["uid"], ctx.credentials.uid.to_string());
}

#[test]
fn credentials_name_all_ids_and_groups() {
    // setpriv(1) changes real, effective and saved ids and the supplementary groups, then
    // execs the fixture in place.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65533", "--groups=4,20,1234", "--"])
        .arg(fixtures::path("report"))
        .current_dir("/");
    let mut p = Wrapped::start(&mut cmd);
    let (said, _) = p.lines_until_ready();
    let c = procfs::credentials(p.pid()).unwrap();
    assert_eq!(
        (c.uid, c.euid, c.suid, c.fsuid),
        (65534, 65534, 65534, 65534)
    );
    assert_eq!(
        (c.gid, c.egid, c.sgid, c.fsgid),
        (65533, 65533, 65533, 65533)
    );
    assert_eq!(c.groups, [4, 20, 1234]);
    assert_eq!(said["groups"], "4,20,1234");
    assert_eq!(said["uid"], "65534");
    // Root may still read everything about it.
    assert_eq!(
        procfs::exe(p.pid()).unwrap(),
        fixtures::path("report").canonicalize().unwrap()
    );
    assert!(!procfs::environ(p.pid()).unwrap().is_empty());
}

#[test]
fn rlimits_can_be_applied_to_another_process() {
    let (f, _) = Fixture::start_ready("procfs_symbols", &[]);
    let limit = Rlimit {
        resource: Resource::RLIMIT_CORE,
        soft: 4096,
        hard: 1 << 20,
    };
    limit.apply_to(f.pid()).unwrap();
    let all = procfs::rlimits(f.pid()).unwrap();
    assert!(all.contains(&limit));
    // Raising a soft limit up to the hard one needs no privilege (raising a hard limit needs
    // CAP_SYS_RESOURCE, which the test may not have).
    let raised = Rlimit {
        soft: 1 << 20,
        ..limit
    };
    raised.apply_to(f.pid()).unwrap();
    assert!(procfs::rlimits_from_limits_file(f.pid())
        .unwrap()
        .contains(&raised));
}

#[test]
fn a_reaped_process_is_gone() {
    let mut f = Fixture::start("procfs_symbols", &[]);
    let pid = f.pid();
    f.wait_ready();
    f.send("exit");
    assert!(f.wait_exit(LINE_TIMEOUT).success());
    drop(f);
    for result in [
        procfs::maps(pid).map(drop),
        procfs::exe(pid).map(drop),
        procfs::cmdline(pid).map(drop),
        procfs::credentials(pid).map(drop),
        procfs::umask(pid).map(drop),
        procfs::rlimits(pid).map(drop),
        procfs::cgroup(pid).map(drop),
        procfs::exec_context(pid).map(drop),
    ] {
        let err = result.unwrap_err();
        assert!(err.is_gone(), "{err}");
    }
}
