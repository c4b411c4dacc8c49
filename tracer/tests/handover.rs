//! A listening TCP socket taken from one running server (`pidfd_getfd`) and handed to a new
//! server spawned under trace, whose own `bind` on that address is rewritten into a `dup2` of
//! the inherited socket (issue points 6, 7 and 8 together). No connection is refused: clients
//! that connect while neither server accepts wait in the socket's queue and are served by the
//! new one.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use fixtures::{Fixture, LineReader};
use tracer::fd::{list_fds, socket_info, take_fd, FdTarget};
use tracer::remote::RemoteSession;
use tracer::spawn::{spawn, SpawnConfig};
use tracer::{Held, Memory, Pid, RemoteAddr, SyscallAction};

/// Where the new program finds the inherited socket before its `bind` is rewritten.
const HELD_FD: i32 = 100;

/// The listening socket of `pid`, taken into this process.
fn take_listener(pid: Pid) -> (i32, OwnedFd) {
    for info in list_fds(pid).unwrap() {
        if !matches!(info.target, FdTarget::Socket(_)) {
            continue;
        }
        let fd = take_fd(pid, info.fd).unwrap();
        if socket_info(fd.as_fd()).unwrap().listening {
            return (info.fd, fd);
        }
    }
    panic!("process {pid} has no listening socket");
}

/// Sends a line and returns the reply's pid field ("<pid> <line>").
fn ask(conn: &mut BufReader<TcpStream>, line: &str) -> i32 {
    conn.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let mut reply = String::new();
    conn.read_line(&mut reply).unwrap();
    let (pid, echoed) = reply.trim_end().split_once(' ').unwrap();
    assert_eq!(echoed, line);
    pid.parse().unwrap()
}

fn connect(port: u16) -> BufReader<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connection refused");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    BufReader::new(s)
}

/// Decodes a `struct sockaddr_in` read from the tracee.
fn sockaddr_in(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([bytes[0], bytes[1]]);
    (family == libc::AF_INET as u16).then(|| {
        let port = u16::from_be_bytes([bytes[2], bytes[3]]);
        let ip = std::net::Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
        SocketAddr::from((ip, port))
    })
}

#[test]
fn a_listening_socket_moves_to_a_new_process_without_refusing_a_connection() {
    let (old, ready) = Fixture::start_ready("echo_server", &["0"]);
    let old_pid = old.pid();
    let port: u16 = ready["port"].parse().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // The old server serves a client on a connection opened before the move.
    let mut before = connect(port);
    assert_eq!(ask(&mut before, "before"), old_pid.as_raw());

    // Take its listening socket and look at it.
    let (old_fd, listener) = take_listener(old_pid);
    let info = socket_info(listener.as_fd()).unwrap();
    assert!(info.listening);
    assert_eq!(info.local.as_ref().and_then(|a| a.inet()), Some(addr));
    assert_eq!(info.accept_queue.map(|q| q.len), Some(0));

    // Spawn the new server with the socket at HELD_FD and its stdout on a pipe of ours.
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let cfg = SpawnConfig::new(fixtures::path("echo_server"))
        .argv(["echo_server", &port.to_string()])
        .fd(out_w.as_raw_fd(), 1)
        .fd(listener.as_raw_fd(), HELD_FD);
    let mut new = spawn(&cfg).unwrap();
    drop(out_w);
    let new_pid = new.pid();
    let mut rewritten = Vec::new();
    let mut on_syscall = |mem: &tracer::ProcessMemory, e: &tracer::SyscallEntry| {
        match e.nr as i64 {
            libc::SYS_bind => {
                let sa = mem.read_vec(RemoteAddr::new(e.args[1]), 16)?;
                if sockaddr_in(&sa) == Some(addr) {
                    rewritten.push(e.args[0]);
                    // dup2(HELD_FD, its fd): its socket becomes ours; bind "succeeds".
                    return Ok(SyscallAction::Replace {
                        nr: libc::SYS_dup2 as u64,
                        args: [HELD_FD as u64, e.args[0], 0, 0, 0, 0],
                        ret: Some(0),
                    });
                }
                Ok(SyscallAction::Run)
            }
            libc::SYS_accept | libc::SYS_accept4 => Ok(SyscallAction::Hold),
            _ => Ok(SyscallAction::Run),
        }
    };
    let held = new
        .run(Duration::from_secs(20), None, Some(&mut on_syscall))
        .unwrap();
    assert_eq!(rewritten.len(), 1, "exactly one bind rewritten");
    let Held::Syscall(entry) = held else {
        panic!("held at {held:?}")
    };
    assert_eq!(
        entry.args[0], rewritten[0],
        "accept on the rewritten descriptor"
    );
    // The new server believes it bound the address itself.
    let mut out = LineReader::new(std::fs::File::from(out_r));
    let line = out.line(fixtures::LINE_TIMEOUT).unwrap();
    assert_eq!(line, format!("READY port={port} pid={new_pid}"));

    // Tidy the new process while it is held: the inherited spare descriptor is closed by a
    // remote system call from its syscall-enter-stop, which it re-enters afterwards.
    {
        let mut s = RemoteSession::open(&mut new, entry.tid).unwrap();
        s.close_fd(HELD_FD).unwrap();
        s.close().unwrap();
    }
    assert_eq!(
        new.thread(entry.tid).unwrap().stop,
        Some(tracer::ptrace::Stop::SyscallEnter)
    );
    assert_eq!(new.regs(entry.tid).unwrap().orig_rax, entry.nr);
    assert!(!std::path::Path::new(&format!("/proc/{new_pid}/fd/{HELD_FD}")).exists());

    // The old server goes away; nobody accepts now, yet connecting works: the queue holds it.
    drop(old);
    let mut queued = connect(port);
    let info = socket_info(listener.as_fd()).unwrap();
    assert_eq!(info.accept_queue.map(|q| q.len), Some(1), "{info:?}");
    assert_eq!(old_fd, 3);

    // Release the new server: it serves the queued client, then fresh ones.
    new.resume_all(tracer::ptrace::Restart::Continue).unwrap();
    assert_eq!(ask(&mut queued, "queued"), new_pid.as_raw());
    drop(queued);
    let mut fresh = connect(port);
    assert_eq!(ask(&mut fresh, "fresh"), new_pid.as_raw());
    // The connection the old server had is gone with it (it held that socket alone).
    let mut buf = String::new();
    assert_eq!(before.read_line(&mut buf).unwrap_or(0), 0);
    drop(new); // spawned: killed and reaped
}
