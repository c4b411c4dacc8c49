//! `Tracee::run` on spawned processes: running to a breakpoint, holding at a system call, and
//! rewriting system calls (skip, replace, and a held call made to return `EINTR`).
//!
//! Real processes, synchronised on the lines the fixtures print; every spawned process is
//! killed and reaped by its `Tracee`'s drop, and every blocking step has a time limit.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use fixtures::{LineReader, LINE_TIMEOUT};
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use object::{Object, ObjectKind, ObjectSection, ObjectSegment, ObjectSymbol};
use tracer::ptrace::{Restart, Stop};
use tracer::spawn::{spawn, SpawnConfig};
use tracer::{Held, Memory, Pid, ProcessMemory, RemoteAddr, SyscallAction, SyscallEntry, Tracee};

/// Time limit of every `Tracee::run` here.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe2")
}

/// A fixture spawned under trace (stopped at its exec event) with its stdin and stdout piped
/// to us and its stderr shared with ours.
struct Spawned {
    tracee: Tracee,
    out: LineReader<File>,
    stdin: File,
}

fn start(name: &str, args: &[&str]) -> Spawned {
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let cfg = SpawnConfig::new(fixtures::path(name))
        .argv(std::iter::once(name).chain(args.iter().copied()))
        .no_fds()
        .fd(in_r.as_raw_fd(), 0)
        .fd(out_w.as_raw_fd(), 1)
        .fd(2, 2);
    let tracee = spawn(&cfg).unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    Spawned {
        tracee,
        out: LineReader::new(File::from(out_r)),
        stdin: File::from(in_w),
    }
}

impl Spawned {
    fn line(&mut self) -> String {
        self.out.line(LINE_TIMEOUT).expect("fixture line")
    }

    /// Whether the fixture has written anything we have not read, without waiting.
    fn output_pending(&self) -> bool {
        let mut fds = [PollFd::new(self.out.get_ref().as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).expect("poll") > 0
    }
}

/// The address of `main` in process `pid` running `exe`, and the first byte of its code as the
/// file holds it: the ELF symbol plus the load bias, found from the first mapping of the
/// executable in `/proc/PID/maps`.
fn main_address(pid: Pid, exe: &Path) -> (RemoteAddr, u8) {
    let data = std::fs::read(exe).expect("read fixture");
    let elf = object::File::parse(&*data).expect("parse ELF");
    let sym = elf
        .symbols()
        .find(|s| s.name() == Ok("main"))
        .expect("symbol main");
    let section = elf
        .section_by_index(sym.section_index().expect("main is defined"))
        .expect("section of main");
    let first_byte =
        section.data().expect("section data")[(sym.address() - section.address()) as usize];
    let bias = match elf.kind() {
        ObjectKind::Dynamic => {
            let link_base = elf.segments().map(|s| s.address()).min().expect("segments") & !0xfff;
            let exe_path = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe link");
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
            let start = maps
                .lines()
                .find_map(|l| {
                    let fields: Vec<&str> = l.split_whitespace().collect();
                    let path = fields.get(5)?;
                    (Path::new(path) == exe_path).then_some(())?;
                    u64::from_str_radix(fields[0].split('-').next()?, 16).ok()
                })
                .expect("a mapping of the executable");
            start - link_base
        }
        _ => 0,
    };
    (RemoteAddr::new(bias + sym.address()), first_byte)
}

fn echo(port: u16, msg: &str) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
    writeln!(c, "{msg}").unwrap();
    let mut reply = String::new();
    BufReader::new(c).read_line(&mut reply).expect("echo reply");
    reply.trim_end().to_owned()
}

fn nr(sys: libc::c_long) -> u64 {
    sys as u64
}

#[test]
fn run_until_a_breakpoint_at_main() {
    let mut s = start("echo_server", &["0"]);
    let pid = s.tracee.pid();
    let (addr, first_byte) = main_address(pid, &fixtures::path("echo_server"));
    assert_ne!(first_byte, 0xcc);

    let held = s
        .tracee
        .run(RUN_TIMEOUT, Some(addr), None)
        .expect("run to main");
    assert_eq!(held, Held::Breakpoint { tid: pid, addr });
    assert_eq!(s.tracee.regs(pid).expect("regs").rip, addr.get());
    let mut byte = [0u8];
    s.tracee.memory().read(addr, &mut byte).expect("read main");
    assert_eq!(byte[0], first_byte, "the original byte is back");
    assert!(s.tracee.all_stopped());
    assert!(!s.output_pending(), "main has not run yet");

    s.tracee.resume_all(Restart::Continue).expect("resume");
    let ready = s.line();
    let fields = fixtures::parse_fields(ready.strip_prefix("READY").expect("READY line"));
    assert_eq!(fields["pid"], pid.to_string());
    let port: u16 = fields["port"].parse().unwrap();
    assert_eq!(
        echo(port, "after the breakpoint"),
        format!("{pid} after the breakpoint")
    );
}

#[test]
fn run_until_accept_holds_the_call_unexecuted() {
    let mut s = start("echo_server", &["0"]);
    let pid = s.tracee.pid();
    // glibc's accept() is the accept system call on x86_64; accept4 in case it changes.
    let mut hold_at_accept =
        |_: &ProcessMemory, e: &SyscallEntry| -> tracer::Result<SyscallAction> {
            Ok(
                if e.nr == nr(libc::SYS_accept) || e.nr == nr(libc::SYS_accept4) {
                    SyscallAction::Hold
                } else {
                    SyscallAction::Run
                },
            )
        };
    let held = s
        .tracee
        .run(RUN_TIMEOUT, None, Some(&mut hold_at_accept))
        .expect("run to accept");
    let Held::Syscall(entry) = held else {
        panic!("expected a held system call, got {held:?}");
    };
    assert_eq!(entry.tid, pid);
    // The spawned server has exactly 0, 1, 2: its listening socket is 3.
    assert_eq!(entry.args[0], 3);
    let link = std::fs::read_link(format!("/proc/{pid}/fd/3")).expect("fd 3");
    assert!(link.to_string_lossy().starts_with("socket:"), "{link:?}");
    assert_eq!(
        s.tracee.thread(pid).expect("main thread").stop,
        Some(Stop::SyscallEnter)
    );

    // READY was printed before accept.
    let ready = s.line();
    let fields = fixtures::parse_fields(ready.strip_prefix("READY").expect("READY line"));
    let port: u16 = fields["port"].parse().unwrap();

    // The connection completes through the backlog, but nobody serves it while held.
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    writeln!(client, "while held").unwrap();
    client.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let r = std::io::Read::read(&mut client, &mut buf);
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "no reply while held"
    );
    assert!(s.tracee.all_stopped());

    s.tracee.resume_all(Restart::Continue).expect("resume");
    client.set_nonblocking(false).unwrap();
    client.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
    let mut reply = String::new();
    BufReader::new(client)
        .read_line(&mut reply)
        .expect("reply after release");
    assert_eq!(reply.trim_end(), format!("{pid} while held"));
}

/// Holds at the first `read` of standard input.
fn is_stdin_read(e: &SyscallEntry) -> bool {
    e.nr == nr(libc::SYS_read) && e.args[0] == 0
}

/// Reads the `key=value` lines of `spawn_syscalls` up to its READY line, as (key, value).
fn syscall_report(s: &mut Spawned) -> Vec<(String, String)> {
    let mut v = Vec::new();
    loop {
        let line = s.line();
        if line.starts_with("READY ") {
            return v;
        }
        for kv in line.split_whitespace() {
            let (k, val) = kv.split_once('=').expect("key=value");
            v.push((k.to_owned(), val.to_owned()));
        }
    }
}

fn field<'a>(report: &'a [(String, String)], key: &str, nth: usize) -> &'a str {
    report
        .iter()
        .filter(|(k, _)| k == key)
        .nth(nth)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} #{nth} in {report:?}"))
}

#[test]
fn a_skipped_syscall_returns_the_chosen_result() {
    let mut s = start("spawn_syscalls", &[]);
    let pid = s.tracee.pid();
    let mut skipped = 0;
    let mut cb = |_: &ProcessMemory, e: &SyscallEntry| -> tracer::Result<SyscallAction> {
        Ok(if e.nr == nr(libc::SYS_getppid) {
            skipped += 1;
            SyscallAction::Skip { ret: 4242 }
        } else if is_stdin_read(e) {
            SyscallAction::Hold
        } else {
            SyscallAction::Run
        })
    };
    let held = s.tracee.run(RUN_TIMEOUT, None, Some(&mut cb)).expect("run");
    assert!(
        matches!(held, Held::Syscall(e) if is_stdin_read(&e)),
        "{held:?}"
    );
    assert_eq!(skipped, 1);
    let report = syscall_report(&mut s);
    assert_eq!(field(&report, "pid", 0), pid.to_string());
    assert_eq!(field(&report, "ppid", 0), "4242");
    // Other calls are untouched.
    assert_eq!(field(&report, "dup1", 0), "3");
    assert_eq!(field(&report, "dup2", 0), "4");
}

#[test]
fn a_replaced_syscall_runs_the_other_call() {
    let mut s = start("spawn_syscalls", &[]);
    let mut dups = 0;
    let mut cb = |_: &ProcessMemory, e: &SyscallEntry| -> tracer::Result<SyscallAction> {
        Ok(if e.nr == nr(libc::SYS_dup) {
            dups += 1;
            // dup(0) becomes dup2(0, 42): the program sees 42 and fd 42 is really open. The
            // second becomes dup2(0, 43) with the result overridden to EBADF.
            let (target, ret) = if dups == 1 {
                (42, None)
            } else {
                (43, Some(-(libc::EBADF as i64)))
            };
            SyscallAction::Replace {
                nr: nr(libc::SYS_dup2),
                args: [e.args[0], target, 0, 0, 0, 0],
                ret,
            }
        } else if is_stdin_read(e) {
            SyscallAction::Hold
        } else {
            SyscallAction::Run
        })
    };
    let held = s.tracee.run(RUN_TIMEOUT, None, Some(&mut cb)).expect("run");
    assert!(
        matches!(held, Held::Syscall(e) if is_stdin_read(&e)),
        "{held:?}"
    );
    assert_eq!(dups, 2);
    let report = syscall_report(&mut s);
    // Not rewritten: the parent is still us, tracing does not change it.
    assert_eq!(field(&report, "ppid", 0), std::process::id().to_string());
    assert_eq!(field(&report, "dup1", 0), "42");
    assert_eq!(field(&report, "errno", 0), "0");
    assert_eq!(field(&report, "fd42", 0), "open");
    assert_eq!(field(&report, "dup2", 0), "-1");
    assert_eq!(field(&report, "errno", 1), libc::EBADF.to_string());
    assert_eq!(field(&report, "fd43", 0), "open", "the replacement ran");
}

#[test]
fn a_held_read_made_to_return_eintr() {
    let mut s = start("spawn_eintr", &[]);
    let mut cb = |_: &ProcessMemory, e: &SyscallEntry| -> tracer::Result<SyscallAction> {
        Ok(if is_stdin_read(e) {
            SyscallAction::Hold
        } else {
            SyscallAction::Run
        })
    };
    let held = s.tracee.run(RUN_TIMEOUT, None, Some(&mut cb)).expect("run");
    let Held::Syscall(entry) = held else {
        panic!("expected a held read, got {held:?}");
    };
    assert!(is_stdin_read(&entry));
    assert!(s.line().starts_with("READY "));

    s.tracee
        .skip_held_syscall(entry.tid, -(libc::EINTR as i64))
        .expect("skip the held read");
    assert_eq!(
        s.tracee.thread(entry.tid).expect("thread").stop,
        Some(Stop::SyscallExit)
    );
    s.tracee.resume_all(Restart::Continue).expect("resume");
    assert_eq!(s.line(), "EINTR");
    // The loop goes on: the next read is a real one.
    s.stdin.write_all(b"hello\n").unwrap();
    assert_eq!(s.line(), "READ hello");
}

#[test]
fn a_multithreaded_process_runs_on_after_run_and_resume() {
    // blocker: four worker threads created while we run it, each blocked in its own call when
    // the main thread is held; after resume_all every one of them must serve again, and none
    // may see an EINTR caused by our stops.
    let mut s = start("blocker", &[]);
    let mut cb = |_: &ProcessMemory, e: &SyscallEntry| -> tracer::Result<SyscallAction> {
        Ok(if is_stdin_read(e) {
            SyscallAction::Hold
        } else {
            SyscallAction::Run
        })
    };
    let held = s.tracee.run(RUN_TIMEOUT, None, Some(&mut cb)).expect("run");
    assert!(
        matches!(held, Held::Syscall(e) if is_stdin_read(&e)),
        "{held:?}"
    );
    assert_eq!(s.tracee.tids().len(), 5, "every thread is traced");
    let ready = s.line();
    let fields = fixtures::parse_fields(ready.strip_prefix("READY").expect("READY line"));
    let port: u16 = fields["port"].parse().unwrap();

    s.tracee.resume_all(Restart::Continue).expect("resume");
    s.stdin.write_all(b"poke\n").unwrap();
    let _client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut expected: std::collections::BTreeSet<&str> =
        ["POKED", "WOKE read", "WOKE epoll", "WOKE accept"].into();
    while !expected.is_empty() {
        let line = s.line();
        assert!(
            !line.starts_with("EINTR"),
            "the program saw our stop: {line}"
        );
        assert!(expected.remove(line.as_str()), "unexpected line {line:?}");
    }
}
