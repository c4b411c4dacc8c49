//! Descriptors of ours given to a tracee held at a system call, each at its number, over an
//! `SCM_RIGHTS` channel; the tracee's own descriptors in the way moved out; epoll sets rebuilt
//! fresh in the tracee from the registrations of one of ours, which stays untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use fixtures::LineReader;
use tracer::fd::{fd_info, EpollRegistration};
use tracer::fdpass::{rebuild_epoll, FdChannel, FdToInstall, EPOLL_PRIVATE_BITS};
use tracer::ptrace::{Restart, Stop};
use tracer::remote::RemoteSession;
use tracer::spawn::{spawn, SpawnConfig};
use tracer::{Error, Memory, Pid, SyscallAction, SyscallEntry, Tracee};

/// Where the tracee finds the channel's remote end, unless a test says otherwise.
const CHANNEL_FD: RawFd = 900;

/// `echo_server` spawned under trace with `extra` descriptors of ours (source, number) and
/// held at its first `accept`, after its `READY` line: its own descriptors are 0, 1, 2, its
/// listening socket at 3, and the extras. Returns the tracee, the held call and the port.
fn held_echo_server(extra: &[(RawFd, RawFd)]) -> (Tracee, SyscallEntry, u16) {
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let mut cfg = SpawnConfig::new(fixtures::path("echo_server"))
        .argv(["echo_server", "0"])
        .fd(out_w.as_raw_fd(), 1);
    for &(src, target) in extra {
        cfg = cfg.fd(src, target);
    }
    let mut tracee = spawn(&cfg).unwrap();
    drop(out_w);
    let mut hold_accept = |_: &tracer::ProcessMemory, e: &SyscallEntry| {
        Ok(match e.nr as i64 {
            libc::SYS_accept | libc::SYS_accept4 => SyscallAction::Hold,
            _ => SyscallAction::Run,
        })
    };
    let held = tracee
        .run(Duration::from_secs(20), None, Some(&mut hold_accept))
        .unwrap();
    let tracer::Held::Syscall(entry) = held else {
        panic!("held at {held:?}")
    };
    assert_eq!(entry.args[0], 3, "accept on its listening socket");
    let mut out = LineReader::new(File::from(out_r));
    let ready = out.line(fixtures::LINE_TIMEOUT).unwrap();
    let fields = fixtures::parse_fields(ready.strip_prefix("READY").unwrap());
    (tracee, entry, fields["port"].parse().unwrap())
}

/// The open descriptor numbers of `pid`.
fn fd_numbers(pid: Pid) -> BTreeSet<RawFd> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect()
}

/// Whether descriptor `fd` of `pid` and `ours` of this process are the same open file
/// description. `kcmp(KCMP_FILE)` compares the kernel's `struct file`, where `stat` cannot:
/// both ends of a pipe share an inode, and every eventfd and epoll instance shares the one
/// anonymous inode (`anon_inode:[...]`).
fn same_file(pid: Pid, fd: RawFd, ours: impl AsFd) -> bool {
    let me = nix::unistd::getpid();
    // SAFETY: kcmp(2) takes two pids, a type and two descriptor numbers; no memory is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid.as_raw(),
            me.as_raw(),
            KCMP_FILE,
            fd as libc::c_ulong,
            ours.as_fd().as_raw_fd() as libc::c_ulong,
        )
    };
    assert!(
        r >= 0,
        "kcmp({pid}, {fd}): {}",
        std::io::Error::last_os_error()
    );
    r == 0
}

/// `KCMP_FILE` of linux/kcmp.h.
const KCMP_FILE: libc::c_int = 0;

fn cloexec(pid: Pid, fd: RawFd) -> bool {
    fd_info(pid, fd).unwrap().unwrap().cloexec()
}

/// Takes ownership of a descriptor a raw libc call returned.
fn owned(fd: libc::c_int, what: &str) -> OwnedFd {
    assert!(fd >= 0, "{what}: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just returned by eventfd(2)/epoll_create1(2), is open and owned by nobody
    // else, so OwnedFd may close it (OwnedFd::from_raw_fd).
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd(2) takes an initial value and flags and returns a new descriptor or -1.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) }, "eventfd")
}

fn epoll_add(ep: &OwnedFd, fd: &impl AsRawFd, events: u32, data: u64) {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: epoll_ctl(2) reads one struct epoll_event from `ev`, valid for the call.
    let r =
        unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev) };
    assert_eq!(r, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
}

/// The ready events of `ep` right now, as (events, data).
fn epoll_ready(ep: &OwnedFd) -> Vec<(u32, u64)> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
    // SAFETY: epoll_wait(2) writes at most `maxevents` (8) structs into `evs`; timeout 0.
    let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), evs.as_mut_ptr(), 8, 0) };
    assert!(n >= 0, "epoll_wait: {}", std::io::Error::last_os_error());
    evs[..n as usize]
        .iter()
        .map(|e| ({ e.events }, { e.u64 }))
        .collect()
}

/// A connected TCP pair over loopback: (accepted end, client end).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    (server, client)
}

#[test]
fn descriptors_arrive_at_their_numbers_and_the_tracees_own_move_out() {
    let channel = FdChannel::new().unwrap();
    // The tracee's own descriptor 4: a pipe end of ours (3 is its listening socket).
    let (own4, _own4_w) = nix::unistd::pipe().unwrap();
    let (mut tracee, entry, _its_port) = held_echo_server(&[
        (channel.remote_end().as_raw_fd(), CHANNEL_FD),
        (own4.as_raw_fd(), 4),
    ]);
    let pid = tracee.pid();
    let before = fd_numbers(pid);
    assert_eq!(before, BTreeSet::from([0, 1, 2, 3, 4, CHANNEL_FD]));
    // Ours, to compare with later: a copy of its listening socket.
    let its_listener = tracer::fd::take_fd(pid, 3).unwrap();
    let own_cloexec = (cloexec(pid, 3), cloexec(pid, 4));

    // Ours: a listening socket to replace its own at 3 (so that it serves through ours once
    // released), a connected socket at 4, a pipe's ends, an eventfd and a file. Targets 6, 7, 8
    // are where temporaries land (the lowest free numbers 3..8), 60 is far off.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (conn, _client) = tcp_pair();
    let (pipe_r, pipe_w) = nix::unistd::pipe().unwrap();
    let ev = eventfd();
    let file = File::open(fixtures::path("blocker")).unwrap();
    let wanted: Vec<(&dyn AsFd, RawFd, bool)> = vec![
        (&listener, 3, false),
        (&conn, 4, true),
        (&pipe_r, 6, false),
        (&ev, 7, true),
        (&file, 8, false),
        (&pipe_w, 60, true),
    ];
    let fds: Vec<FdToInstall<'_>> = wanted
        .iter()
        .map(|&(f, target, cloexec)| FdToInstall {
            file: f.as_fd(),
            target,
            cloexec,
        })
        .collect();

    let installed = {
        let mut s = RemoteSession::open(&mut tracee, entry.tid).unwrap();
        let installed = channel.install_fds(&mut s, CHANNEL_FD, &fds).unwrap();
        s.close().unwrap();
        installed
    };
    assert_eq!(
        tracee.thread(entry.tid).unwrap().stop,
        Some(Stop::SyscallEnter),
        "back at its held accept"
    );

    // Its own 3 and 4 moved above every target and the channel, to the lowest free numbers.
    assert_eq!(installed.moved, BTreeMap::from([(3, 901), (4, 902)]));
    assert_eq!(installed.channel, CHANNEL_FD);
    assert!(same_file(pid, 901, &its_listener));
    assert!(same_file(pid, 902, &own4));
    assert_eq!((cloexec(pid, 901), cloexec(pid, 902)), own_cloexec);
    assert!(same_file(pid, CHANNEL_FD, channel.remote_end()));

    for &(f, target, want_cloexec) in &wanted {
        assert!(same_file(pid, target, f.as_fd()), "file at {target}");
        assert_eq!(cloexec(pid, target), want_cloexec, "O_CLOEXEC of {target}");
    }
    // Nothing else: no temporary left behind.
    let expected: BTreeSet<RawFd> = [0, 1, 2, CHANNEL_FD, 901, 902]
        .into_iter()
        .chain(wanted.iter().map(|w| w.1))
        .collect();
    assert_eq!(fd_numbers(pid), expected);
    // 2 moves, 1 close_range, mmap, recvmsg, 4 dup3 (the chain 8→60, 7→8, 6→7, 5→6),
    // 1 F_SETFD (3 arrived in place, close-on-exec), close(5), munmap.
    assert_eq!(installed.remote_syscalls, 12, "{installed:?}");
    // Our descriptors are still ours.
    assert!(cloexec(nix::unistd::getpid(), listener.as_raw_fd()));

    // Released, it accepts on descriptor 3: our listening socket.
    tracee.resume_all(Restart::Continue).unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(fixtures::LINE_TIMEOUT)).unwrap();
    let mut conn = BufReader::new(s);
    conn.get_mut().write_all(b"through ours\n").unwrap();
    let mut reply = String::new();
    conn.read_line(&mut reply).unwrap();
    assert_eq!(reply, format!("{pid} through ours\n"));
    assert_eq!(
        tracee.kill().unwrap(),
        Err(nix::sys::signal::Signal::SIGKILL)
    );
}

#[test]
fn a_channel_in_the_way_moves_and_hundreds_of_descriptors_go_in_batches() {
    let channel = FdChannel::new().unwrap();
    let (mut tracee, entry, _) = held_echo_server(&[(channel.remote_end().as_raw_fd(), 10)]);
    let pid = tracee.pid();
    assert_eq!(fd_numbers(pid), BTreeSet::from([0, 1, 2, 3, 10]));
    let its_listener = tracer::fd::take_fd(pid, 3).unwrap();
    // 300 descriptors of one file at 5..=304: two batches (253 + 47), and 10 is the channel.
    let file = File::open(fixtures::path("blocker")).unwrap();
    let targets: Vec<RawFd> = (5..=304).collect();
    let fds: Vec<FdToInstall<'_>> = targets
        .iter()
        .map(|&target| FdToInstall {
            file: file.as_fd(),
            target,
            cloexec: target % 3 == 0,
        })
        .collect();
    let mut s = RemoteSession::open(&mut tracee, entry.tid).unwrap();

    // A wrong channel number is refused before anything changes.
    let err = channel.install_fds(&mut s, 3, &fds).unwrap_err();
    assert!(matches!(err, Error::FdTransfer { fd: 3, .. }), "{err}");
    assert_eq!(fd_numbers(pid), BTreeSet::from([0, 1, 2, 3, 10]));

    let installed = channel.install_fds(&mut s, 10, &fds).unwrap();
    assert!(installed.moved.is_empty(), "{installed:?}");
    assert_eq!(
        installed.channel, 305,
        "the channel moved above every target"
    );
    assert!(same_file(pid, 305, channel.remote_end()));
    // About one call per descriptor: close(10), mmap, 2 recvmsg, 300 dup3 (each batch arrives
    // one below its targets, from the free 4), a close per batch, munmap.
    assert!(installed.remote_syscalls <= 310, "{installed:?}");

    // The moved channel still works: one more descriptor through it.
    let extra = eventfd();
    let more = channel
        .install_fds(
            &mut s,
            installed.channel,
            &[FdToInstall {
                file: extra.as_fd(),
                target: 400,
                cloexec: false,
            }],
        )
        .unwrap();
    assert_eq!(more.channel, 305);
    s.close().unwrap();

    for &t in &targets {
        assert!(same_file(pid, t, &file), "file at {t}");
        assert_eq!(cloexec(pid, t), t % 3 == 0, "O_CLOEXEC of {t}");
    }
    assert!(same_file(pid, 400, &extra));
    assert!(!cloexec(pid, 400));
    assert!(same_file(pid, 3, &its_listener), "not a target: untouched");
    let expected: BTreeSet<RawFd> = [0, 1, 2, 3, 305, 400]
        .into_iter()
        .chain(targets.iter().copied())
        .collect();
    assert_eq!(fd_numbers(pid), expected);
    drop(tracee); // spawned: killed and reaped
}

#[test]
fn epoll_sets_are_rebuilt_fresh_in_the_tracee() {
    // Our epoll set: a pipe (level-triggered), an eventfd (edge-triggered), and a one-shot pipe
    // that fired, so is disarmed.
    let ep = owned(
        // SAFETY: epoll_create1(2) takes flags and returns a new descriptor or -1.
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        "epoll_create1",
    );
    let (pr, pw) = nix::unistd::pipe().unwrap();
    let ev = eventfd();
    let (qr, qw) = nix::unistd::pipe().unwrap();
    let (epollin, et, oneshot) = (
        libc::EPOLLIN as u32,
        libc::EPOLLET as u32,
        libc::EPOLLONESHOT as u32,
    );
    epoll_add(&ep, &pr, epollin, 0x1111);
    epoll_add(&ep, &ev, epollin | et, 0x2222);
    epoll_add(&ep, &qr, epollin | oneshot, 0x3333);
    nix::unistd::write(&qw, b"q").unwrap();
    assert_eq!(epoll_ready(&ep), [(epollin, 0x3333)]);
    assert_eq!(epoll_ready(&ep), Vec::new(), "one-shot: disarmed");

    let me = nix::unistd::getpid();
    let ours_before = fd_info(me, ep.as_raw_fd()).unwrap().unwrap();
    let regs = ours_before.epoll.clone();
    let by_fd = |regs: &[EpollRegistration], fd: RawFd| -> EpollRegistration {
        *regs.iter().find(|r| r.tfd == fd).unwrap()
    };
    let (errhup, rw) = (
        (libc::EPOLLERR | libc::EPOLLHUP) as u32,
        libc::EPOLLIN as u32,
    );
    // What the kernel prints: the mask as given plus EPOLLERR|EPOLLHUP, which ADD always adds;
    // a disarmed one-shot keeps only its private bits.
    assert_eq!(by_fd(&regs, pr.as_raw_fd()).events, rw | errhup);
    assert_eq!(by_fd(&regs, ev.as_raw_fd()).events, rw | errhup | et);
    assert_eq!(by_fd(&regs, qr.as_raw_fd()).events, oneshot);
    assert_eq!(oneshot & !EPOLL_PRIVATE_BITS, 0);

    let channel = FdChannel::new().unwrap();
    let (mut tracee, entry, _) =
        held_echo_server(&[(channel.remote_end().as_raw_fd(), CHANNEL_FD)]);
    let pid = tracee.pid();
    let maps_before = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut s = RemoteSession::open(&mut tracee, entry.tid).unwrap();
    // The registered files first, at the numbers they have here.
    let files: Vec<FdToInstall<'_>> = [pr.as_fd(), ev.as_fd(), qr.as_fd()]
        .into_iter()
        .map(|f| FdToInstall {
            file: f,
            target: f.as_raw_fd(),
            cloexec: true,
        })
        .collect();
    channel.install_fds(&mut s, CHANNEL_FD, &files).unwrap();
    let table = fd_numbers(pid);

    // A registration that cannot be added (a regular file does not support epoll: EPERM) fails
    // cleanly: no new descriptor, no mapping left.
    let file = File::open(fixtures::path("blocker")).unwrap();
    let installed = channel
        .install_fds(
            &mut s,
            CHANNEL_FD,
            &[FdToInstall {
                file: file.as_fd(),
                target: 500,
                cloexec: true,
            }],
        )
        .unwrap();
    assert!(installed.moved.is_empty());
    let table = table.into_iter().chain([500]).collect::<BTreeSet<_>>();
    let bad = EpollRegistration {
        tfd: 500,
        events: rw,
        data: 0,
        pos: 0,
        ino: 0,
        sdev: 0,
    };
    let err = rebuild_epoll(&mut s, &[regs[0], bad], &|d| d, true, None).unwrap_err();
    assert!(
        matches!(&err, Error::RemoteSyscall { errno: nix::Error::EPERM, call, .. } if call.contains(", 500,")),
        "{err}"
    );
    assert_eq!(fd_numbers(pid), table);
    // A registration whose number holds another file is refused before anything runs.
    let stale = EpollRegistration {
        tfd: 500,
        ..regs[0]
    };
    let err = rebuild_epoll(&mut s, &[stale], &|d| d, true, None).unwrap_err();
    assert!(matches!(err, Error::FdTransfer { fd: 500, .. }), "{err}");

    // Rebuilt at our epoll's number, with relocated data words.
    let target = ep.as_raw_fd();
    let rebuilt = rebuild_epoll(&mut s, &regs, &|d| d + 0x1000, true, Some(target)).unwrap();
    assert_eq!(rebuilt.fd, target);
    let theirs = fd_info(pid, target).unwrap().unwrap();
    assert!(theirs.is_epoll() && theirs.cloexec(), "{theirs:?}");
    assert!(!same_file(pid, target, &ep), "a new instance, not ours");
    assert_eq!(theirs.epoll.len(), 3, "{theirs:?}");
    for reg in &regs {
        let got = by_fd(&theirs.epoll, reg.tfd);
        assert_eq!(got.data, reg.data + 0x1000, "{got:?}");
        assert_eq!((got.ino, got.sdev), (reg.ino, reg.sdev), "{got:?}");
        if reg.tfd == qr.as_raw_fd() {
            // The one state that does not round-trip: ADD arms EPOLLERR|EPOLLHUP again.
            assert_eq!(got.events, reg.events | errhup, "{got:?}");
        } else {
            assert_eq!(got.events, reg.events, "{got:?}");
        }
    }

    // Both sets work, each with its own data words: the pipe becomes readable.
    nix::unistd::write(&pw, b"p").unwrap();
    let buf = s.mmap_anonymous(4096).unwrap();
    let n = s
        .syscall(libc::SYS_epoll_wait, &[target as u64, buf.get(), 8, 0])
        .unwrap();
    assert_eq!(n, 1);
    let bytes = s.tracee().memory().read_vec(buf, 12).unwrap();
    let events = u32::from_ne_bytes(bytes[..4].try_into().unwrap());
    let data = u64::from_ne_bytes(bytes[4..].try_into().unwrap());
    assert_eq!((events, data), (epollin, 0x2111));
    s.munmap(buf, 4096).unwrap();
    s.close().unwrap();
    assert_eq!(epoll_ready(&ep), [(epollin, 0x1111)]);

    // Ours is as it was; nothing of the exchanges is left mapped in the tracee.
    let ours_after = fd_info(me, ep.as_raw_fd()).unwrap().unwrap();
    assert_eq!(ours_after.epoll, ours_before.epoll);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap(),
        maps_before
    );
    assert_eq!(
        tracee.kill().unwrap(),
        Err(nix::sys::signal::Signal::SIGKILL)
    );
}
