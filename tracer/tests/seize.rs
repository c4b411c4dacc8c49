//! Seizing a running process and letting it go must be invisible to it (issue point 1), and
//! must never take it down with us (point 2).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use fixtures::{Fixture, LineReader};
use tracer::ptrace::Stop;
use tracer::{Error, Pid, Tracee};

/// Wakes every worker of `blocker` once and waits for the three "WOKE" lines (the sleeper
/// sleeps on). With `strict`, any EINTR line fails the test: after our detach no thread may
/// see one. Without, only liveness is checked: a tracer killed outright cannot re-issue an
/// epoll_wait its stop broke (signal(7)).
fn wake_all_checked(f: &mut Fixture, port: u16, strict: bool) {
    f.send("poke");
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // The accept thread closes the connection at once: EOF proves it was accepted.
    let mut buf = [0u8; 1];
    assert_eq!(c.read(&mut buf).unwrap(), 0);
    let mut woke = std::collections::BTreeSet::new();
    while woke.len() < 3 {
        let l = f.line();
        assert!(
            !strict || !l.starts_with("EINTR"),
            "a thread saw EINTR: {l}"
        );
        if let Some(who) = l.strip_prefix("WOKE ") {
            woke.insert(who.to_owned());
        }
    }
    assert_eq!(
        woke.into_iter().collect::<Vec<_>>(),
        ["accept", "epoll", "read"]
    );
}

fn wake_all(f: &mut Fixture, port: u16) {
    wake_all_checked(f, port, true)
}

#[test]
fn seize_stops_every_thread_and_detach_is_invisible() {
    let (mut f, ready) = Fixture::start_ready("blocker", &[]);
    let pid = f.pid();
    let port: u16 = ready["port"].parse().unwrap();
    wait_blocker_blocked(pid);

    // Several rounds, so that an EINTR leaking out of any of them would be caught.
    for _ in 0..5 {
        let t = Tracee::seize(pid).unwrap();
        let tids = t.tids();
        assert_eq!(tids.len(), 5, "main thread and four workers");
        assert_eq!(tids[0], pid, "main thread first");
        for &tid in &tids {
            assert_eq!(t.thread(tid).unwrap().stop, Some(Stop::Interrupt));
            assert_eq!(task_state(pid, tid), 't', "thread {tid} in tracing stop");
        }
        // TracerPid names the tracer thread.
        assert_eq!(
            tracer::procfs::tracer_of(pid).unwrap(),
            Some(nix::unistd::gettid())
        );
        t.detach().unwrap();
        assert_eq!(tracer::procfs::tracer_of(pid).unwrap(), None);
        wait_blocker_blocked(pid);
    }
    let stats = f.ask("stats", "STATS");
    assert!(stats.ends_with("eintr=0"), "{stats}");
    wake_all(&mut f, port);
    let stats = f.ask("stats", "STATS");
    assert_eq!(stats, "STATS accepted=1 epolled=1 read=1 slept=0 eintr=0");
}

#[test]
fn resume_and_interrupt_while_traced() {
    let (mut f, ready) = Fixture::start_ready("blocker", &[]);
    let pid = f.pid();
    let port: u16 = ready["port"].parse().unwrap();
    wait_blocker_blocked(pid);
    let mut t = Tracee::seize(pid).unwrap();
    // Let it run traced: it serves as usual.
    t.resume_all(tracer::ptrace::Restart::Continue).unwrap();
    wake_all(&mut f, port);
    wait_blocker_blocked(pid);
    t.interrupt_all(Duration::from_secs(10)).unwrap();
    assert!(t.all_stopped());
    drop(t); // detaches
    wait_blocker_blocked(pid);
    wake_all(&mut f, port);
    assert!(f.ask("stats", "STATS").ends_with("eintr=0"));
}

#[test]
fn a_stopped_process_stays_stopped_after_detach() {
    let (mut f, _) = Fixture::start_ready("blocker", &[]);
    let pid = f.pid();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // Wait for the group-stop to complete (every thread 'T').
    wait_all_stopped(pid);
    let t = Tracee::seize(pid).unwrap();
    assert!(matches!(t.thread(pid).unwrap().stop, Some(Stop::Group(_))));
    t.detach().unwrap();
    // On detach the kernel re-arms the group-stop and wakes each thread, which passes through
    // 'R' on its way back into 'T': wait for that, do not sample.
    wait_all_stopped(pid);
    // Stopped for good: nothing answers until SIGCONT (checked after it, in order).
    f.send("stats");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    // (The stop signal itself may have made epoll_wait fail with EINTR, as signal(7) says:
    // that is the program's to see, so only the answer is checked.)
    assert!(f.line_starting("STATS").starts_with("STATS accepted=0"));
}

#[test]
fn seize_errors_are_precise() {
    // No such process.
    let e = Tracee::seize(Pid::from_raw(i32::MAX - 7)).unwrap_err();
    assert!(matches!(e, Error::NoSuchProcess { .. }), "{e}");
    assert_eq!(e.to_string(), format!("no such process {}", i32::MAX - 7));
    // Already traced: by a tracer of ours on another thread (ptrace belongs to threads).
    let (f, _) = Fixture::start_ready("blocker", &[]);
    let pid = f.pid();
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let t = Tracee::seize(pid).unwrap();
        tx.send(()).unwrap();
        done_rx.recv().unwrap();
        drop(t);
    });
    rx.recv().unwrap();
    let e = Tracee::seize(pid).unwrap_err();
    match &e {
        Error::AlreadyTraced { pid: p, tracer } => {
            assert_eq!(*p, pid);
            assert_eq!(tgid(*tracer), nix::unistd::getpid());
            assert_ne!(*tracer, nix::unistd::gettid());
        }
        other => panic!("expected AlreadyTraced, got {other}"),
    }
    assert!(e.to_string().contains("already traced"), "{e}");
    done_tx.send(()).unwrap();
    holder.join().unwrap();
}

/// Not a test on its own: the tracer process of `seized_process_survives_tracer_sigkill`.
/// It seizes the pid in `TRACER_TEST_SEIZE_PID`, says "SEIZED", and waits to be killed.
#[test]
#[ignore = "helper process, run by seized_process_survives_tracer_sigkill"]
fn helper_seize_and_hold() {
    let pid: i32 = std::env::var("TRACER_TEST_SEIZE_PID")
        .unwrap()
        .parse()
        .unwrap();
    let _t = Tracee::seize(Pid::from_raw(pid)).unwrap();
    println!("SEIZED");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    unreachable!("killed before stdin closes");
}

#[test]
fn seized_process_survives_tracer_sigkill() {
    let (mut f, ready) = Fixture::start_ready("blocker", &[]);
    let pid = f.pid();
    let port: u16 = ready["port"].parse().unwrap();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_seize_and_hold",
            "--ignored",
            "--nocapture",
        ])
        .env("TRACER_TEST_SEIZE_PID", pid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _reap = fixtures::Reaper(Pid::from_raw(helper.id() as i32));
    let mut out = LineReader::new(helper.stdout.take().unwrap());
    while out.line(fixtures::LINE_TIMEOUT).unwrap() != "SEIZED" {}
    let tracer = tracer::procfs::tracer_of(pid)
        .unwrap()
        .expect("traced by the helper");
    assert_eq!(tgid(tracer), Pid::from_raw(helper.id() as i32));
    helper.kill().unwrap();
    helper.wait().unwrap();
    // The kernel detached the tracees while the tracer exited, before it could be reaped.
    assert_eq!(tracer::procfs::tracer_of(pid).unwrap(), None);
    assert!(f.is_alive());
    wake_all_checked(&mut f, port, false);
}

/// Waits (bounded) until every thread of `pid` is in job-control stop ('T').
fn wait_all_stopped(pid: Pid) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !tracer::procfs::threads(pid)
        .unwrap()
        .iter()
        .all(|&t| task_state(pid, t) == 'T')
    {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} did not stop"
        );
        std::thread::yield_now();
    }
}
