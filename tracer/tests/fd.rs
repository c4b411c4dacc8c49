//! Descriptors of real processes: listing them, taking them, describing their sockets.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use fixtures::Fixture;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracer::fd::{
    self, AcceptQueue, FdInfo, FdTarget, SockAddr, SocketDomain, SocketType, TcpState, UnixAddr,
};
use tracer::Error;

fn num(ready: &HashMap<String, String>, key: &str) -> i32 {
    ready[key].parse().unwrap()
}

fn localhost(port: i32) -> SockAddr {
    SockAddr::Inet(SocketAddr::from((Ipv4Addr::LOCALHOST, port as u16)))
}

/// Blocks until `fd` is readable (for a listening socket: its accept queue is not empty).
fn wait_readable(fd: &OwnedFd) {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let n = poll(
        &mut fds,
        PollTimeout::try_from(fixtures::LINE_TIMEOUT.as_millis() as i32).unwrap(),
    )
    .unwrap();
    assert_eq!(n, 1, "not readable in time");
}

fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fd-{test}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `fd_sockets` with its Unix socket and file in a scratch directory.
fn start_sockets(test: &str) -> (Fixture, HashMap<String, String>, PathBuf, PathBuf) {
    let dir = scratch(test);
    let (unix, file) = (dir.join("listen.sock"), dir.join("appended"));
    let (f, ready) = Fixture::start_ready(
        "fd_sockets",
        &[unix.to_str().unwrap(), file.to_str().unwrap()],
    );
    (f, ready, unix, file)
}

fn by_fd(list: &[FdInfo], fd: RawFd) -> &FdInfo {
    list.iter()
        .find(|i| i.fd == fd)
        .unwrap_or_else(|| panic!("fd {fd} not listed"))
}

#[test]
fn listing_names_every_kind_of_descriptor() {
    let (f, ready, _, file) = start_sockets("list");
    let list = fd::list_fds(f.pid()).unwrap();
    assert!(list.windows(2).all(|w| w[0].fd < w[1].fd));
    // stdin and stdout are the harness's pipes.
    assert!(matches!(by_fd(&list, 0).target, FdTarget::Pipe(_)));
    assert!(matches!(by_fd(&list, 1).target, FdTarget::Pipe(_)));
    for key in [
        "listener", "conn", "client", "unix", "dgram0", "dgram1", "udp",
    ] {
        let info = by_fd(&list, num(&ready, key));
        let FdTarget::Socket(inode) = info.target else {
            panic!("{key}: {:?}", info.target)
        };
        assert_eq!(info.ino, Some(inode), "{key}");
        assert!(!info.cloexec(), "{key}");
    }

    let ev = by_fd(&list, num(&ready, "eventfd"));
    assert_eq!(ev.target, FdTarget::AnonInode("eventfd".into()));
    assert_eq!(
        u64::from_str_radix(ev.extra("eventfd-count").unwrap(), 16).unwrap(),
        7
    );

    let appended = by_fd(&list, num(&ready, "file"));
    assert_eq!(
        appended.target,
        FdTarget::Path {
            path: file.canonicalize().unwrap(),
            deleted: false
        }
    );
    assert_eq!(appended.pos, 10);
    assert_eq!(appended.flags & libc::O_ACCMODE, libc::O_WRONLY);
    assert_ne!(appended.flags & libc::O_APPEND, 0);

    // The epoll instance: close-on-exec, with both registrations as the fixture made them.
    let ep = by_fd(&list, num(&ready, "epoll"));
    assert!(ep.is_epoll() && ep.cloexec());
    let always = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
    let mut regs = ep.epoll.clone();
    regs.sort_by_key(|r| r.tfd);
    assert_eq!(regs.len(), 2);
    let dgram1 = num(&ready, "dgram1");
    let conn = num(&ready, "conn");
    let (first, second) = if dgram1 < conn { (0, 1) } else { (1, 0) };
    assert_eq!(regs[first].tfd, dgram1);
    assert_eq!(
        regs[first].events,
        (libc::EPOLLIN | libc::EPOLLET) as u32 | always
    );
    assert_eq!(regs[first].data, 0x1122_3344_5566_7788);
    assert_eq!(Some(regs[first].ino), by_fd(&list, dgram1).ino);
    assert_eq!(regs[second].tfd, conn);
    assert_eq!(
        regs[second].events,
        (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 | always
    );
    assert_eq!(regs[second].data, conn as u64);
    assert_eq!(Some(regs[second].ino), by_fd(&list, conn).ino);
}

#[test]
fn sockets_describe_addresses_states_and_queues() {
    let (f, ready, unix, _) = start_sockets("sockets");
    let pid = f.pid();
    let take = |key: &str| fd::take_fd(pid, num(&ready, key)).unwrap();

    let listener = take("listener");
    let info = fd::socket_info(listener.as_fd()).unwrap();
    assert_eq!(
        (info.domain, info.sock_type, info.protocol),
        (SocketDomain::Inet, SocketType::Stream, 6)
    );
    assert!(info.listening);
    assert_eq!(info.local, Some(localhost(num(&ready, "lport"))));
    assert_eq!(info.peer, None);
    assert_eq!(info.tcp_state, Some(TcpState::Listen));
    assert_eq!(info.accept_queue, Some(AcceptQueue { len: 0, backlog: 7 }));
    assert_eq!((info.recv_queue, info.send_queue), (None, None));

    // The fixture never accepts: a connection waits in the queue, seen through our copy.
    let _client = TcpStream::connect(("127.0.0.1", num(&ready, "lport") as u16)).unwrap();
    wait_readable(&listener);
    let info = fd::socket_info(listener.as_fd()).unwrap();
    assert_eq!(info.accept_queue, Some(AcceptQueue { len: 1, backlog: 7 }));

    let conn = fd::socket_info(take("conn").as_fd()).unwrap();
    assert!(!conn.listening);
    assert_eq!(conn.tcp_state, Some(TcpState::Established));
    assert_eq!(conn.local, Some(localhost(num(&ready, "cport"))));
    assert_eq!(conn.peer, Some(localhost(num(&ready, "clientport"))));
    assert_eq!(conn.recv_queue, Some(5), "the unread \"hello\"");
    assert_eq!(conn.send_queue, Some(0));
    assert_eq!(conn.accept_queue, None);
    let client = fd::socket_info(take("client").as_fd()).unwrap();
    assert_eq!(client.peer, conn.local);
    assert_eq!(client.local, conn.peer);

    let ux = fd::socket_info(take("unix").as_fd()).unwrap();
    assert_eq!(
        (ux.domain, ux.sock_type, ux.protocol),
        (SocketDomain::Unix, SocketType::Stream, 0)
    );
    assert!(ux.listening);
    assert_eq!(ux.local, Some(SockAddr::Unix(UnixAddr::Path(unix))));
    assert_eq!((ux.tcp_state, ux.accept_queue), (None, None));

    let dgram = fd::socket_info(take("dgram1").as_fd()).unwrap();
    assert_eq!(
        (dgram.domain, dgram.sock_type),
        (SocketDomain::Unix, SocketType::Datagram)
    );
    assert_eq!(dgram.local, Some(SockAddr::Unix(UnixAddr::Unnamed)));
    assert_eq!(dgram.peer, Some(SockAddr::Unix(UnixAddr::Unnamed)));
    assert_eq!(dgram.recv_queue, Some(3), "the queued datagram");

    let udp = fd::socket_info(take("udp").as_fd()).unwrap();
    assert_eq!(
        (udp.domain, udp.sock_type, udp.protocol),
        (SocketDomain::Inet, SocketType::Datagram, 17)
    );
    assert_eq!(udp.local, Some(localhost(num(&ready, "uport"))));
    assert_eq!((udp.peer, udp.recv_queue), (None, Some(0)));
}

#[test]
fn errors_name_the_process_and_descriptor() {
    let (f, ready, _, _) = start_sockets("errors");
    let pid = f.pid();
    match fd::take_fd(pid, 999) {
        Err(e @ Error::Fd { .. }) => {
            let Error::Fd { pid: p, fd, op, .. } = &e else {
                unreachable!()
            };
            assert_eq!((*p, *fd, *op), (pid, 999, "pidfd_getfd"));
            assert_eq!(
                e.to_string(),
                format!("pidfd_getfd on descriptor 999 of process {pid}: EBADF: Bad file number")
            );
        }
        other => panic!("{other:?}"),
    }
    // Not a socket: the error says which call refused.
    let ev = fd::take_fd(pid, num(&ready, "eventfd")).unwrap();
    let err = fd::socket_info(ev.as_fd()).unwrap_err().to_string();
    assert!(err.contains("SO_DOMAIN"), "{err}");
    assert_eq!(fd::fd_info(pid, 999).unwrap(), None);

    let mut f = f;
    f.send("exit");
    assert!(f.wait_exit(fixtures::LINE_TIMEOUT).success());
    drop(f);
    assert!(fd::take_fd(pid, 0).unwrap_err().is_gone());
    assert!(fd::list_fds(pid).unwrap_err().is_gone());
    assert!(fd::PidFd::open(pid).unwrap_err().is_gone());
}

#[test]
fn echo_server_listener_and_connection() {
    let (f, ready) = Fixture::start_ready("echo_server", &["0"]);
    let pid = f.pid();
    let port: u16 = ready["port"].parse().unwrap();
    let sockets = |list: Vec<FdInfo>| -> Vec<RawFd> {
        list.into_iter()
            .filter(|i| matches!(i.target, FdTarget::Socket(_)))
            .map(|i| i.fd)
            .collect()
    };
    let listening = sockets(fd::list_fds(pid).unwrap());
    assert_eq!(listening.len(), 1);
    let listener = fd::take_fd(pid, listening[0]).unwrap();
    let info = fd::socket_info(listener.as_fd()).unwrap();
    assert!(info.listening);
    assert_eq!(
        info.local,
        Some(SockAddr::Inet(SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            port
        ))))
    );
    assert_eq!(
        info.accept_queue,
        Some(AcceptQueue {
            len: 0,
            backlog: 64
        })
    );

    // A client the server is serving (it answered), so it holds an accepted connection.
    let mut a = TcpStream::connect(("127.0.0.1", port)).unwrap();
    a.write_all(b"ping\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&a).read_line(&mut reply).unwrap();
    assert_eq!(reply, format!("{pid} ping\n"));
    let now = sockets(fd::list_fds(pid).unwrap());
    let accepted: Vec<RawFd> = now.into_iter().filter(|fd| *fd != listening[0]).collect();
    assert_eq!(accepted.len(), 1);
    let conn = fd::socket_info(fd::take_fd(pid, accepted[0]).unwrap().as_fd()).unwrap();
    assert_eq!(
        conn.peer.as_ref().and_then(SockAddr::inet),
        Some(a.local_addr().unwrap())
    );
    assert_eq!(
        conn.local.as_ref().and_then(SockAddr::inet),
        Some(a.peer_addr().unwrap())
    );
    assert_eq!(conn.tcp_state, Some(TcpState::Established));

    // While it serves A it does not accept: B waits in the queue.
    let _b = TcpStream::connect(("127.0.0.1", port)).unwrap();
    wait_readable(&listener);
    let info = fd::socket_info(listener.as_fd()).unwrap();
    assert_eq!(
        info.accept_queue,
        Some(AcceptQueue {
            len: 1,
            backlog: 64
        })
    );
}

#[test]
fn blocker_epoll_set_has_its_one_pipe() {
    let (f, _) = Fixture::start_ready("blocker", &[]);
    let list = fd::list_fds(f.pid()).unwrap();
    let epolls: Vec<&FdInfo> = list.iter().filter(|i| i.is_epoll()).collect();
    assert_eq!(epolls.len(), 1);
    let regs = &epolls[0].epoll;
    assert_eq!(regs.len(), 1);
    let reg = regs[0];
    assert_eq!(
        reg.events,
        (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32
    );
    assert_eq!(reg.data, 0);
    // The registered descriptor is the read end of a pipe, the very file registered.
    let target = by_fd(&list, reg.tfd);
    let FdTarget::Pipe(inode) = target.target else {
        panic!("{target:?}")
    };
    assert_eq!(reg.ino, inode);
    assert_eq!(target.flags & libc::O_ACCMODE, libc::O_RDONLY);
    // blocker's fds: 3 listener, 4-5 a pipe, 6-7 the epoll pipe, 8 epoll.
    assert_eq!((reg.tfd, epolls[0].fd), (6, 8));
}
