//! Helpers shared by the tracer's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracer::Pid;

/// Thread ids of `pid` by thread name (`/proc/PID/task/TID/comm`).
pub fn threads_by_name(pid: Pid) -> BTreeMap<String, Pid> {
    tracer::procfs::threads(pid)
        .unwrap()
        .into_iter()
        .map(|tid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap();
            (comm.trim().to_owned(), tid)
        })
        .collect()
}

/// The system call thread `tid` is blocked in (`/proc/PID/task/TID/syscall`), or `None` when
/// it is running or not in a call.
pub fn blocked_in(pid: Pid, tid: Pid) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let first = s.split_whitespace().next()?;
    first.parse().ok().filter(|n: &i64| *n >= 0)
}

/// The blocking calls of the `blocker` fixture's threads, as glibc 2.36 issues them.
pub fn blocker_calls() -> Vec<(&'static str, Vec<i64>)> {
    vec![
        ("accept", vec![libc::SYS_accept, libc::SYS_accept4]),
        (
            "epoll",
            vec![
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_pwait2,
            ],
        ),
        ("read", vec![libc::SYS_read]),
        // A sleep restarted after a stop continues as restart_syscall(2).
        (
            "sleep",
            vec![
                libc::SYS_nanosleep,
                libc::SYS_clock_nanosleep,
                libc::SYS_restart_syscall,
            ],
        ),
    ]
}

/// Waits until every worker thread of `blocker` is back in its blocking call (the kernel's own
/// report, so a thread that left its call and looped is seen going back in). Bounded.
pub fn wait_blocker_blocked(pid: Pid) {
    let names = threads_by_name(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    for (name, calls) in blocker_calls() {
        let tid = names[name];
        while !blocked_in(pid, tid).is_some_and(|n| calls.contains(&n)) {
            assert!(
                Instant::now() < deadline,
                "thread {name} never blocked in {calls:?}"
            );
            std::thread::yield_now();
        }
    }
}

/// Process state letter of `/proc/PID/task/TID/stat` (R, S, t, T, Z, ...).
pub fn task_state(pid: Pid, tid: Pid) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    s.rsplit_once(") ").unwrap().1.chars().next().unwrap()
}

/// The process (thread group) a thread id belongs to.
pub fn tgid(tid: Pid) -> Pid {
    Pid::from_raw(
        tracer::procfs::status_field(tid, "Tgid")
            .unwrap()
            .parse()
            .unwrap(),
    )
}
