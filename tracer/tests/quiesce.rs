//! Waiting until every thread is blocked in a quiescent system call.

mod common;

use std::time::Duration;

use common::*;
use fixtures::Fixture;
use tracer::quiesce::{default_quiescent_calls, quiesce};
use tracer::{Error, Tracee};

#[test]
fn a_process_blocked_everywhere_is_quiescent_at_once() {
    let (mut f, _) = Fixture::start_ready("blocker", &[]);
    let pid = f.pid();
    wait_blocker_blocked(pid);
    // The main thread too: after printing READY it goes on into read(stdin).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while blocked_in(pid, pid) != Some(libc::SYS_read) {
        assert!(
            std::time::Instant::now() < deadline,
            "main thread never blocked in read"
        );
        std::thread::yield_now();
    }
    let mut t = Tracee::seize(pid).unwrap();
    let q = quiesce(&mut t, &default_quiescent_calls(), Duration::from_secs(10)).unwrap();
    assert_eq!(q.attempts, 1, "quiescent at the first look");
    assert_eq!(q.threads.len(), 5);
    let names = threads_by_name(pid);
    let call_of = |name: &str| q.threads.iter().find(|(t, _)| *t == names[name]).unwrap().1;
    assert!([libc::SYS_accept, libc::SYS_accept4].contains(&call_of("accept")));
    assert!([libc::SYS_epoll_wait, libc::SYS_epoll_pwait].contains(&call_of("epoll")));
    assert_eq!(call_of("read"), libc::SYS_read);
    t.detach().unwrap();
    assert!(f.ask("stats", "STATS").ends_with("eintr=0"));
}

#[test]
fn a_thread_that_never_blocks_is_named_and_the_process_left_running() {
    let (mut f, _) = Fixture::start_ready("spinner", &["0"]);
    let pid = f.pid();
    let mut t = Tracee::seize(pid).unwrap();
    let e = quiesce(
        &mut t,
        &default_quiescent_calls(),
        Duration::from_millis(300),
    )
    .unwrap_err();
    let Error::Timeout { during, millis, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(*millis, 300);
    let spin = threads_by_name(pid)["spin"];
    assert!(
        during.contains(&format!("thread {spin} (spin) running")),
        "{during}"
    );
    assert!(
        !during.contains(&format!("thread {pid} ")),
        "the main thread was quiescent: {during}"
    );
    assert!(t.all_stopped());
    t.detach().unwrap();
    // Untouched: still spinning, still answering.
    let a: u64 = f
        .ask("ping", "PONG")
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let b: u64 = f
        .ask("ping", "PONG")
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(b >= a);
}

#[test]
fn a_thread_that_blocks_later_is_waited_for() {
    // Spins ~0.1–1 s, then blocks in read: quiescence comes after several looks.
    let (mut f, _) = Fixture::start_ready("spinner", &["300000000"]);
    let pid = f.pid();
    let mut t = Tracee::seize(pid).unwrap();
    let q = quiesce(&mut t, &default_quiescent_calls(), Duration::from_secs(60)).unwrap();
    assert!(
        q.attempts >= 2,
        "the spinner was not blocked at the first look"
    );
    assert!(q.threads.iter().all(|&(_, nr)| nr == libc::SYS_read));
    t.detach().unwrap();
    assert_eq!(f.ask("ping", "PONG"), "PONG 300000000");
}
