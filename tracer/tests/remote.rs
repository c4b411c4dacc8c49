//! Running system calls and functions inside a stopped tracee (issue points 4 and 5): results
//! come back, and registers, vector state and patched code are restored on every path.

mod common;

use std::io::Read;
use std::net::TcpStream;

use common::*;
use fixtures::Fixture;
use tracer::remote::RemoteSession;
use tracer::{Error, Memory, MemoryMut, Pid, RemoteAddr, Tracee};

fn libc_fn(pid: Pid, name: &str) -> RemoteAddr {
    tracer::symbols::lookup_in(pid, "libc.so", name).unwrap()
}

/// The blocker fixture, ready and with every worker blocked.
fn blocker() -> (Fixture, u16) {
    let (f, ready) = Fixture::start_ready("blocker", &[]);
    wait_blocker_blocked(f.pid());
    (f, ready["port"].parse().unwrap())
}

/// Proves the process still works after we let it go: every thread wakes, none saw EINTR.
fn still_serves(f: &mut Fixture, port: u16) {
    wait_blocker_blocked(f.pid());
    f.send("poke");
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 0);
    let mut woke = 0;
    while woke < 3 {
        let l = f.line();
        assert!(!l.starts_with("EINTR"), "{l}");
        woke += l.starts_with("WOKE") as usize;
    }
    assert!(f.ask("stats", "STATS").ends_with("eintr=0"));
}

fn entry_bytes(t: &Tracee) -> Vec<u8> {
    let entry = tracer::procfs::entry_point(t.pid()).unwrap();
    let mut b = vec![0; 64];
    t.memory().read_via_proc(entry, &mut b).unwrap();
    b
}

fn maps_text(pid: Pid) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap()
}

#[test]
fn remote_syscalls_run_inside_the_tracee() {
    let (mut f, port) = blocker();
    let pid = f.pid();
    let mut t = Tracee::seize(pid).unwrap();
    let before_regs = t.regs(pid).unwrap();
    let before_code = entry_bytes(&t);
    {
        let mut s = RemoteSession::open(&mut t, pid).unwrap();
        assert_eq!(s.getpid().unwrap(), pid);

        let addr = s.mmap_anonymous(8192).unwrap();
        assert!(maps_text(pid).contains(&format!("{:x}-", addr.get())));
        s.tracee()
            .memory()
            .write(addr, b"written from outside")
            .unwrap();
        assert_eq!(
            s.tracee().memory().read_vec(addr, 20).unwrap(),
            b"written from outside"
        );
        s.munmap(addr, 8192).unwrap();
        assert!(!maps_text(pid).contains(&format!("{:x}-", addr.get())));

        assert_eq!(s.dup2(1, 77).unwrap(), 77);
        assert!(std::path::Path::new(&format!("/proc/{pid}/fd/77")).exists());
        s.close_fd(77).unwrap();
        assert!(!std::path::Path::new(&format!("/proc/{pid}/fd/77")).exists());

        // The kernel's own error comes back typed and named.
        let e = s.close_fd(12345).unwrap_err();
        assert!(
            matches!(
                e,
                Error::RemoteSyscall {
                    errno: nix::Error::EBADF,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("close(12345)"), "{e}");
        // The raw level: -errno.
        assert_eq!(
            s.syscall(libc::SYS_close, &[12345]).unwrap(),
            -(libc::EBADF as i64)
        );
        s.close().unwrap();
    }
    assert_eq!(
        format!("{:?}", t.regs(pid).unwrap()),
        format!("{before_regs:?}")
    );
    assert_eq!(entry_bytes(&t), before_code);
    t.detach().unwrap();
    still_serves(&mut f, port);
}

#[test]
fn remote_calls_use_the_tracees_own_malloc() {
    let (mut f, port) = blocker();
    let pid = f.pid();
    let malloc = libc_fn(pid, "malloc");
    let free = libc_fn(pid, "free");
    let usable = libc_fn(pid, "malloc_usable_size");
    let mut t = Tracee::seize(pid).unwrap();
    // On the main thread and on a worker blocked in epoll_wait.
    let epoll_tid = threads_by_name(pid)["epoll"];
    for tid in [pid, epoll_tid] {
        let before = t.regs(tid).unwrap();
        let mut s = RemoteSession::open(&mut t, tid).unwrap();
        let p = RemoteAddr::new(s.call(malloc, &[100]).unwrap());
        assert!(!p.is_null());
        assert!(s.call(usable, &[p.get()]).unwrap() >= 100);
        s.tracee().memory().write(p, &[0xab; 100]).unwrap();
        assert_eq!(
            s.tracee().memory().read_vec(p, 100).unwrap(),
            vec![0xab; 100]
        );
        s.call(free, &[p.get()]).unwrap();
        s.close().unwrap();
        assert_eq!(format!("{:?}", t.regs(tid).unwrap()), format!("{before:?}"));
    }
    t.detach().unwrap();
    still_serves(&mut f, port);
}

#[test]
fn a_faulting_call_is_reported_and_undone() {
    let (mut f, port) = blocker();
    let pid = f.pid();
    let mut t = Tracee::seize(pid).unwrap();
    let before = t.regs(pid).unwrap();
    let code = entry_bytes(&t);
    {
        let mut s = RemoteSession::open(&mut t, pid).unwrap();
        let e = s.call(RemoteAddr::new(0x10), &[]).unwrap_err();
        match &e {
            Error::RemoteFault { signal, addr, .. } => {
                assert_eq!(*signal, nix::sys::signal::Signal::SIGSEGV);
                assert_eq!(addr.get(), 0x10);
            }
            other => panic!("expected a fault, got {other}"),
        }
        // The session is still usable after a fault.
        assert_eq!(s.getpid().unwrap(), pid);
        // Dropped without close: Drop restores.
    }
    assert_eq!(format!("{:?}", t.regs(pid).unwrap()), format!("{before:?}"));
    assert_eq!(entry_bytes(&t), code);
    t.detach().unwrap();
    // The SIGSEGV our call caused was never delivered: the process lives on.
    assert!(f.is_alive());
    still_serves(&mut f, port);
}

#[test]
fn batched_calls_allocate_many_objects_in_one_round_trip() {
    let (mut f, port) = blocker();
    let pid = f.pid();
    let malloc = libc_fn(pid, "malloc");
    let free = libc_fn(pid, "free");
    let usable = libc_fn(pid, "malloc_usable_size");
    let mut t = Tracee::seize(pid).unwrap();
    let before = t.regs(pid).unwrap();
    {
        let mut s = RemoteSession::open(&mut t, pid).unwrap();
        let sizes: Vec<u64> = (1..=5000u64).map(|i| (i % 300) * 8 + 1).collect();
        let ptrs = s.call_many(malloc, &sizes).unwrap();
        assert_eq!(ptrs.len(), sizes.len());
        assert!(ptrs.iter().all(|&p| p != 0));
        let mut sorted = ptrs.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ptrs.len(), "distinct objects");
        let usable_sizes = s.call_many(usable, &ptrs).unwrap();
        for (u, want) in usable_sizes.iter().zip(&sizes) {
            assert!(u >= want, "usable {u} < requested {want}");
        }
        s.call_many(free, &ptrs).unwrap();
        // malloc still works after the frees (no heap corruption).
        let p = s.call(malloc, &[64]).unwrap();
        assert_ne!(p, 0);
        s.call(free, &[p]).unwrap();
        s.close().unwrap();
    }
    assert_eq!(format!("{:?}", t.regs(pid).unwrap()), format!("{before:?}"));
    // The scratch mapping is gone: no anonymous mapping of ours is left behind.
    t.detach().unwrap();
    still_serves(&mut f, port);
}

#[test]
fn scratch_memory_is_released_on_close() {
    let (mut f, port) = blocker();
    let pid = f.pid();
    let getpid_fn = libc_fn(pid, "getpid");
    let before_maps = maps_text(pid);
    let mut t = Tracee::seize(pid).unwrap();
    {
        let mut s = RemoteSession::open(&mut t, pid).unwrap();
        let pids = s.call_many(getpid_fn, &vec![0; 20000]).unwrap();
        assert!(pids.iter().all(|&p| p == pid.as_raw() as u64));
        s.close().unwrap();
    }
    t.detach().unwrap();
    assert_eq!(maps_text(pid), before_maps);
    still_serves(&mut f, port);
}
