//! A process under our trace, all of its threads.
//!
//! A [`Tracee`] is either *seized* ([`Tracee::seize`]): a running process we found, which must
//! come out of our hands exactly as it went in, so dropping it detaches and it is never attached
//! with `PTRACE_O_EXITKILL`; or *spawned* ([`crate::spawn`]): a process we started, killed with
//! `PTRACE_O_EXITKILL` if we die and killed and reaped when dropped.
//!
//! Invariant between calls: every thread is in a ptrace-stop, unless [`Tracee::resume_all`] let
//! them run. The tracer is a thread, not a process (ptrace(2): "a tracee is attached to a
//! tracer thread"), so a `Tracee` must be used from the thread that created it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use nix::sys::ptrace::{self, Options};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

use crate::addr::RemoteAddr;
use crate::error::{Error, ExitStatus, Result};
use crate::mem::{MemoryMut, ProcessMemory};
use crate::procfs;
use crate::ptrace::{
    regs, restart, set_regs, wait_until, Regs, Restart, Status, Stop, SYSCALL_INSN_LEN,
};

/// How long [`Tracee::seize`] and [`Tracee::interrupt_all`] wait for threads to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How we came to trace the process, which decides what dropping it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Found running and seized: detached on drop, never killed.
    Seized,
    /// Started by us: killed and reaped on drop.
    Spawned,
}

/// One traced thread.
#[derive(Debug, Clone)]
pub struct Thread {
    /// Its id.
    pub tid: Pid,
    /// `Some(stop)` while in a ptrace-stop, `None` while running.
    pub stop: Option<Stop>,
    /// Signals that arrived while we held the thread, delivered when it resumes.
    pending: VecDeque<Signal>,
    /// Stopped by our `PTRACE_INTERRUPT`: a system call it was blocked in may
    /// have returned `EINTR` only because of us, and is restarted when it resumes.
    interrupted: bool,
    /// A syscall rewrite to finish at this thread's next syscall-exit-stop.
    rewrite: Option<i64>,
    /// Created while we traced and not yet seen stopping: its automatic first stop is still to
    /// come, so it must not be interrupted (that would leave a second trap pending).
    fresh: bool,
}

impl Thread {
    fn new(tid: Pid, stop: Option<Stop>) -> Self {
        Thread {
            tid,
            stop,
            pending: VecDeque::new(),
            interrupted: false,
            rewrite: None,
            fresh: false,
        }
    }
}

/// A system call a thread is about to execute (at a syscall-enter-stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallEntry {
    /// The thread.
    pub tid: Pid,
    /// The system call number (`orig_rax`).
    pub nr: u64,
    /// Its six arguments (`rdi, rsi, rdx, r10, r8, r9`).
    pub args: [u64; 6],
}

impl SyscallEntry {
    fn from_regs(tid: Pid, r: &Regs) -> Self {
        SyscallEntry {
            tid,
            nr: r.orig_rax,
            args: [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9],
        }
    }
}

/// What to do with a system call seen at its syscall-enter-stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallAction {
    /// Let it run unchanged.
    Run,
    /// Do not execute it; the program sees `ret` as its result (`-errno` for an error).
    Skip {
        /// The result the program sees.
        ret: i64,
    },
    /// Execute another call instead; the program sees `ret` if given, else the real result.
    Replace {
        /// The call to execute.
        nr: u64,
        /// Its arguments.
        args: [u64; 6],
        /// The result the program sees, if not the replacement's own.
        ret: Option<i64>,
    },
    /// Stop here: the thread stays at its syscall-enter-stop, the call not executed, and
    /// every other thread is stopped too. [`Tracee::run`] returns.
    Hold,
}

/// The callback of [`Tracee::run`] that decides, at each syscall-enter-stop, what happens to
/// the call; it may read the tracee's memory (e.g. a `sockaddr` argument).
pub type SyscallHook<'a> = dyn FnMut(&ProcessMemory, &SyscallEntry) -> Result<SyscallAction> + 'a;

/// Where [`Tracee::run`] stopped the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A thread is held at the syscall-enter-stop of this call, not yet executed.
    Syscall(SyscallEntry),
    /// A thread reached the breakpoint; its `rip` is the breakpoint address.
    Breakpoint {
        /// The thread.
        tid: Pid,
        /// The address.
        addr: RemoteAddr,
    },
}

impl Held {
    /// The thread that is held.
    pub fn tid(&self) -> Pid {
        match self {
            Held::Syscall(e) => e.tid,
            Held::Breakpoint { tid, .. } => *tid,
        }
    }
}

/// A traced process. See the module documentation.
#[derive(Debug)]
pub struct Tracee {
    pid: Pid,
    origin: Origin,
    threads: BTreeMap<Pid, Thread>,
    mem: ProcessMemory,
    exit: Option<ExitStatus>,
    done: bool,
}

const SEIZE_OPTIONS: Options = Options::PTRACE_O_TRACESYSGOOD.union(Options::PTRACE_O_TRACECLONE);

impl Tracee {
    /// Seizes process `pid` and every one of its threads, and stops them all.
    ///
    /// Uses `PTRACE_SEIZE` (not `PTRACE_ATTACH`, which would send a `SIGSTOP` the program
    /// could observe) and `PTRACE_INTERRUPT`; never `PTRACE_O_EXITKILL`, so the process outlives
    /// us whatever happens to us. Threads created meanwhile are caught by `PTRACE_O_TRACECLONE`.
    /// Fails with [`Error::NoSuchProcess`] for a missing process, [`Error::AlreadyTraced`] if another
    /// tracer holds it, [`Error::PermissionDenied`] if we may not trace it; on failure every
    /// thread already seized is detached again.
    pub fn seize(pid: Pid) -> Result<Tracee> {
        if pid.as_raw() <= 0 || !procfs::exists(pid) {
            return Err(Error::NoSuchProcess { pid });
        }
        if let Some(tracer) = procfs::tracer_of(pid)? {
            return Err(Error::AlreadyTraced { pid, tracer });
        }
        let mut t = Tracee {
            pid,
            origin: Origin::Seized,
            threads: BTreeMap::new(),
            mem: ProcessMemory::new(pid),
            exit: None,
            done: false,
        };
        // Seize until a pass over /proc/PID/task finds no thread we do not have: a thread
        // created between listing and seizing its parent is caught by TRACECLONE, one created
        // before the parent was seized by the next pass.
        loop {
            let mut new = 0;
            for tid in procfs::threads(pid)? {
                if t.threads.contains_key(&tid) {
                    continue;
                }
                match ptrace::seize(tid, SEIZE_OPTIONS) {
                    Ok(()) => {
                        t.threads.insert(tid, Thread::new(tid, None));
                        new += 1;
                    }
                    // Exited meanwhile.
                    Err(nix::Error::ESRCH) if tid != pid => {}
                    Err(nix::Error::EPERM) => {
                        if let Ok(Some(tracer)) = procfs::tracer_of(pid) {
                            // TracerPid names the tracer thread.
                            if tracer != nix::unistd::gettid() {
                                return Err(Error::AlreadyTraced { pid, tracer });
                            }
                        }
                        return Err(Error::sys(pid, "PTRACE_SEIZE", nix::Error::EPERM));
                    }
                    Err(e) => return Err(Error::sys(tid, "PTRACE_SEIZE", e)),
                }
            }
            if new == 0 {
                break;
            }
        }
        t.interrupt_all(STOP_TIMEOUT)?;
        debug!(pid = pid.as_raw(), threads = t.threads.len(), "seized");
        Ok(t)
    }

    /// Wraps a process started by [`crate::spawn`], stopped at its exec event.
    pub(crate) fn spawned(pid: Pid, stop: Stop) -> Tracee {
        let mut threads = BTreeMap::new();
        threads.insert(pid, Thread::new(pid, Some(stop)));
        Tracee {
            pid,
            origin: Origin::Spawned,
            threads,
            mem: ProcessMemory::new(pid),
            exit: None,
            done: false,
        }
    }

    /// The process id.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// How we came to trace it.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Its memory.
    pub fn memory(&self) -> &ProcessMemory {
        &self.mem
    }

    /// The ids of its threads, the main thread first.
    pub fn tids(&self) -> Vec<Pid> {
        let mut v: Vec<Pid> = self.threads.keys().copied().collect();
        v.sort_by_key(|t| (*t != self.pid, *t));
        v
    }

    /// The thread `tid`, if traced.
    pub fn thread(&self, tid: Pid) -> Option<&Thread> {
        self.threads.get(&tid)
    }

    /// How the process ended, if we saw it end.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// Whether every thread is in a ptrace-stop.
    pub fn all_stopped(&self) -> bool {
        self.threads.values().all(|t| t.stop.is_some())
    }

    /// The registers of stopped thread `tid`.
    pub fn regs(&self, tid: Pid) -> Result<Regs> {
        regs(tid)
    }

    /// Sets the registers of stopped thread `tid`.
    pub fn set_regs(&self, tid: Pid, r: &Regs) -> Result<()> {
        set_regs(tid, r)
    }

    fn gone(&self) -> Error {
        Error::Gone {
            pid: self.pid,
            status: self.exit,
        }
    }

    /// Waits for the next stop or exit of any of our threads until `deadline`, and records it.
    /// Returns `None` at the deadline. New threads are added; exited threads removed; the
    /// whole process ending is [`Error::Gone`] with its status.
    pub(crate) fn wait_any(&mut self, deadline: Option<Instant>) -> Result<Option<(Pid, Stop)>> {
        loop {
            if self.exit.is_some() || self.threads.is_empty() {
                return Err(self.gone());
            }
            // Wait for our threads only: other tracees of this tracer thread (another Tracee)
            // must not have their events taken here. Waiting on each tid in turn would block on
            // one while another stops, so poll them all.
            let got = self.poll_threads(deadline)?;
            let Some((tid, status)) = got else {
                return Ok(None);
            };
            match status {
                Status::Exited(code) => {
                    self.threads.remove(&tid);
                    if tid == self.pid {
                        self.exit = Some(Ok(code));
                        self.reap_threads();
                    }
                }
                Status::Killed(sig) => {
                    self.threads.remove(&tid);
                    if tid == self.pid {
                        self.exit = Some(Err(sig));
                        self.reap_threads();
                    }
                }
                Status::Stopped(stop) => {
                    let th = self
                        .threads
                        .entry(tid)
                        .or_insert_with(|| Thread::new(tid, None));
                    th.stop = Some(stop);
                    th.fresh = false;
                    if let Stop::Event {
                        event: crate::ptrace::Event::Clone,
                        msg,
                    } = stop
                    {
                        let child = Pid::from_raw(msg as i32);
                        // The new thread reports its own first stop (an interrupt stop).
                        self.threads.entry(child).or_insert_with(|| Thread {
                            fresh: true,
                            ..Thread::new(child, None)
                        });
                    }
                    return Ok(Some((tid, stop)));
                }
            }
        }
    }

    fn poll_threads(&mut self, deadline: Option<Instant>) -> Result<Option<(Pid, Status)>> {
        let mut backoff = crate::ptrace::Backoff::default();
        loop {
            let tids: Vec<Pid> = self.threads.keys().copied().collect();
            for tid in tids {
                match wait_until(Some(tid), Some(Instant::now())) {
                    Ok(Some(r)) => return Ok(Some(r)),
                    Ok(None) => {}
                    // Not our child any more (already reaped): treat as exited.
                    Err(Error::Gone { .. }) => {
                        self.threads.remove(&tid);
                        if tid == self.pid {
                            self.exit.get_or_insert(Ok(0));
                            return Err(self.gone());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            if self.threads.is_empty() {
                return Err(self.gone());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            backoff.pause();
        }
    }

    fn reap_threads(&mut self) {
        for tid in std::mem::take(&mut self.threads).into_keys() {
            let _ = crate::ptrace::wait_raw(Some(tid), false);
        }
    }

    /// Stops every running thread with `PTRACE_INTERRUPT` and waits until all are stopped.
    ///
    /// A thread blocked in a system call leaves it with `-ERESTART*` (restarted transparently
    /// when it resumes) or, for calls such as `epoll_wait`, with `-EINTR`; such a call is
    /// re-issued when the thread resumes (see [`Tracee::resume_all`]). Signals that arrive meanwhile are kept and delivered
    /// when the thread resumes.
    pub fn interrupt_all(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for th in self.threads.values() {
            if th.stop.is_none() && !th.fresh {
                match ptrace::interrupt(th.tid) {
                    Ok(()) | Err(nix::Error::ESRCH) => {}
                    Err(e) => return Err(Error::sys(th.tid, "PTRACE_INTERRUPT", e)),
                }
            }
        }
        while !self.all_stopped() {
            match self.wait_any(Some(deadline))? {
                None => {
                    return Err(Error::Timeout {
                        pid: self.pid,
                        millis: timeout.as_millis() as u64,
                        during: "stopping every thread".into(),
                    })
                }
                Some((tid, stop)) => self.park(tid, stop)?,
            }
        }
        Ok(())
    }

    /// Files a stop seen while stopping threads. An interrupt or group stop parks the thread.
    /// Any other stop has consumed our pending `PTRACE_INTERRUPT` (kernel `ptrace_stop()`: "any
    /// trap clears pending STOP trap"), so the thread is made ready to resume correctly later
    /// and then interrupted again, to park at an interrupt stop like the others:
    /// - a signal is kept for delivery when the thread resumes for real;
    /// - a system call seen at its entry is rewound, to be issued afresh on resume (not run now,
    ///   unseen by a syscall hook);
    /// - a rewritten call seen at its exit gets its rewritten result now.
    fn park(&mut self, tid: Pid, stop: Stop) -> Result<()> {
        let th = self.threads.get_mut(&tid).expect("known thread");
        match stop {
            Stop::Interrupt => {
                th.interrupted = true;
                return Ok(());
            }
            // Stopped by a stop signal before or while we came: an EINTR it caused is the
            // program's to see (signal(7)), not ours to hide.
            Stop::Group(_) => return Ok(()),
            Stop::Signal(sig) => th.pending.push_back(sig),
            Stop::SyscallEnter => {
                let mut r = regs(tid)?;
                r.rax = r.orig_rax;
                r.orig_rax = u64::MAX;
                r.rip -= SYSCALL_INSN_LEN;
                set_regs(tid, &r)?;
                th.rewrite = None;
            }
            Stop::SyscallExit => {
                if let Some(ret) = th.rewrite.take() {
                    let mut r = regs(tid)?;
                    r.rax = ret as u64;
                    set_regs(tid, &r)?;
                }
            }
            Stop::Event { .. } => {}
        }
        th.interrupted = false;
        th.stop = None;
        match ptrace::interrupt(tid) {
            Ok(()) | Err(nix::Error::ESRCH) => {}
            Err(e) => return Err(Error::sys(tid, "PTRACE_INTERRUPT", e)),
        }
        restart(tid, Restart::Continue, None)
    }

    /// Restarts every stopped thread (`how`), delivering kept signals, and re-issuing a system
    /// call that our interrupt broke with `EINTR` (see below). The process runs, traced: with
    /// `PTRACE_O_TRACECLONE` it stops at every thread it creates until someone waits for it
    /// ([`Tracee::run`], [`Tracee::interrupt_all`]).
    ///
    /// signal(7): "certain blocking interfaces can fail with the error EINTR after the process
    /// is stopped ... and then resumed", among them `epoll_wait`. A program must not see that
    /// because of us: when the thread was stopped by our interrupt on the way out of such a
    /// call (`orig_rax >= 0`, `rax == -EINTR`) and no signal with a handler is pending for it,
    /// its registers are set as the kernel's own restart would (`rax = orig_rax`, `rip -= 2`).
    pub fn resume_all(&mut self, how: Restart) -> Result<()> {
        let tids: Vec<Pid> = self.threads.keys().copied().collect();
        for tid in tids {
            self.resume_thread(tid, how)?;
        }
        Ok(())
    }

    fn resume_thread(&mut self, tid: Pid, how: Restart) -> Result<()> {
        let Some(th) = self.threads.get_mut(&tid) else {
            return Ok(());
        };
        let Some(stop) = th.stop else { return Ok(()) };
        if th.interrupted {
            restart_eintr(self.pid, tid)?;
            th.interrupted = false;
        }
        let deliver = match stop {
            Stop::Signal(sig) if sig != Signal::SIGTRAP => Some(sig),
            _ => th.pending.pop_front(),
        };
        // Signals beyond the one a restart can deliver are queued again to the thread.
        for sig in th.pending.drain(..) {
            let _ = tgkill(self.pid, tid, sig);
        }
        let how = match stop {
            Stop::Group(_) => Restart::Listen,
            _ => how,
        };
        match restart(tid, how, deliver) {
            Ok(()) | Err(Error::Gone { .. }) => {}
            Err(e) => return Err(e),
        }
        th.stop = None;
        Ok(())
    }

    /// Restarts one stopped thread with `PTRACE_CONT` (delivering any signal it stopped for).
    pub fn resume(&mut self, tid: Pid) -> Result<()> {
        self.resume_thread(tid, Restart::Continue)
    }

    /// Detaches from every thread, leaving the process exactly as it was: threads blocked in
    /// system calls go back to them, kept signals are delivered, a process that was in
    /// group-stop stays stopped. Running threads are stopped first (`PTRACE_DETACH` needs a
    /// stopped tracee).
    pub fn detach(mut self) -> Result<()> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        if self.exit.is_some() {
            return Ok(());
        }
        if !self.all_stopped() {
            self.interrupt_all(STOP_TIMEOUT)?;
        }
        let mut first_err = None;
        for th in std::mem::take(&mut self.threads).into_values() {
            if th.interrupted {
                if let Err(e) = restart_eintr(self.pid, th.tid) {
                    first_err.get_or_insert(e);
                }
            }
            let mut pending = th.pending;
            let deliver = match th.stop {
                Some(Stop::Signal(sig)) if sig != Signal::SIGTRAP => Some(sig),
                _ => pending.pop_front(),
            };
            for sig in pending {
                let _ = tgkill(self.pid, th.tid, sig);
            }
            match ptrace::detach(th.tid, deliver) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => {
                    first_err.get_or_insert(Error::sys(th.tid, "PTRACE_DETACH", e));
                }
            }
        }
        debug!(pid = self.pid.as_raw(), "detached");
        first_err.map_or(Ok(()), Err)
    }

    /// Kills the process (`SIGKILL`) and reaps it; for spawned processes. Returns how it ended.
    pub fn kill(mut self) -> Result<ExitStatus> {
        self.kill_inner()
    }

    fn kill_inner(&mut self) -> Result<ExitStatus> {
        if self.done {
            return self.exit.ok_or_else(|| self.gone());
        }
        self.done = true;
        if let Some(st) = self.exit {
            return Ok(st);
        }
        match signal::kill(self.pid, Signal::SIGKILL) {
            Ok(()) | Err(nix::Error::ESRCH) => {}
            Err(e) => return Err(Error::sys(self.pid, "kill", e)),
        }
        // Reap every thread; the leader last reports the process's end.
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.exit.is_none() {
            match self.wait_any(Some(deadline)) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(Error::Timeout {
                        pid: self.pid,
                        millis: STOP_TIMEOUT.as_millis() as u64,
                        during: "reaping after SIGKILL".into(),
                    })
                }
                Err(Error::Gone { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(self.exit.unwrap_or(Err(Signal::SIGKILL)))
    }

    /// Runs the process until `until` holds, rewriting system calls on the way.
    ///
    /// With `syscalls` given, threads run under `PTRACE_SYSCALL` and the callback decides at
    /// every syscall-enter-stop what happens to the call (run, skip, replace, or hold: stop
    /// here). With `breakpoint` given, an `int3` is planted there (through `/proc/PID/mem`,
    /// the original byte restored on every path) and the first thread to reach it is held with
    /// `rip` at the address. Signals the program receives are delivered as usual. On return
    /// every thread is stopped. Fails with [`Error::Timeout`] at the deadline (all threads
    /// stopped again, breakpoint removed) or [`Error::Gone`] if the process ends.
    pub fn run(
        &mut self,
        timeout: Duration,
        breakpoint: Option<RemoteAddr>,
        mut syscalls: Option<&mut SyscallHook<'_>>,
    ) -> Result<Held> {
        let deadline = Instant::now() + timeout;
        if !self.all_stopped() {
            // Running under PTRACE_CONT (after resume_all): stop first, so every thread
            // restarts the way this run needs.
            self.interrupt_all(STOP_TIMEOUT)?;
        }
        let how = if syscalls.is_some() {
            Restart::Syscall
        } else {
            Restart::Continue
        };
        let planted = match breakpoint {
            Some(addr) => {
                let mut orig = [0u8; 1];
                self.mem.read_via_proc(addr, &mut orig)?;
                self.mem.write_via_proc(addr, &[0xcc])?;
                Some((addr, orig[0]))
            }
            None => None,
        };
        let result = self
            .run_loop(deadline, how, planted.map(|p| p.0), &mut syscalls)
            .map_err(|e| match e {
                Error::Timeout { pid, during, .. } => Error::Timeout {
                    pid,
                    millis: timeout.as_millis() as u64,
                    during,
                },
                e => e,
            });
        if let Some((addr, byte)) = planted {
            // Every thread is stopped again here (or the process is gone).
            if self.exit.is_none() {
                if let Err(e) = self.mem.write_via_proc(addr, &[byte]) {
                    warn!(pid = self.pid.as_raw(), %addr, error = %e, "cannot remove breakpoint");
                    return Err(e);
                }
            }
        }
        let held = result?;
        Ok(held)
    }

    fn run_loop(
        &mut self,
        deadline: Instant,
        how: Restart,
        breakpoint: Option<RemoteAddr>,
        syscalls: &mut Option<&mut SyscallHook<'_>>,
    ) -> Result<Held> {
        self.resume_all(how)?;
        loop {
            let Some((tid, stop)) = self.wait_any(Some(deadline))? else {
                self.interrupt_all(STOP_TIMEOUT)?;
                self.unwind_rewrites();
                return Err(Error::Timeout {
                    pid: self.pid,
                    millis: 0, // `run` fills in the caller's limit
                    during: "running to the stop condition".into(),
                });
            };
            let held = match stop {
                Stop::SyscallEnter => {
                    let r = regs(tid)?;
                    let entry = SyscallEntry::from_regs(tid, &r);
                    let action = match syscalls.as_mut() {
                        Some(f) => f(&self.mem, &entry)?,
                        None => SyscallAction::Run,
                    };
                    match action {
                        SyscallAction::Run => None,
                        SyscallAction::Hold => Some(Held::Syscall(entry)),
                        SyscallAction::Skip { ret } => {
                            let mut r2 = r;
                            r2.orig_rax = u64::MAX; // -1: the kernel skips the call
                            set_regs(tid, &r2)?;
                            self.threads.get_mut(&tid).expect("thread").rewrite = Some(ret);
                            None
                        }
                        SyscallAction::Replace { nr, args, ret } => {
                            let mut r2 = r;
                            r2.orig_rax = nr;
                            [r2.rdi, r2.rsi, r2.rdx, r2.r10, r2.r8, r2.r9] = args;
                            set_regs(tid, &r2)?;
                            self.threads.get_mut(&tid).expect("thread").rewrite = ret;
                            None
                        }
                    }
                }
                Stop::SyscallExit => {
                    if let Some(ret) = self.threads.get_mut(&tid).expect("thread").rewrite.take() {
                        let mut r = regs(tid)?;
                        r.rax = ret as u64;
                        set_regs(tid, &r)?;
                    }
                    None
                }
                Stop::Signal(Signal::SIGTRAP) if breakpoint.is_some() => {
                    let mut r = regs(tid)?;
                    let bp = breakpoint.expect("checked");
                    if r.rip == bp.get() + 1 {
                        r.rip = bp.get();
                        set_regs(tid, &r)?;
                        // The trap is ours, not the program's.
                        self.threads.get_mut(&tid).expect("thread").stop = Some(Stop::Interrupt);
                        Some(Held::Breakpoint { tid, addr: bp })
                    } else {
                        None
                    }
                }
                _ => None,
            };
            if let Some(held) = held {
                // Stop the others, then report. The held thread stays where it is.
                self.interrupt_all(STOP_TIMEOUT)?;
                return Ok(held);
            }
            self.resume_thread(tid, how)?;
        }
    }

    fn unwind_rewrites(&mut self) {
        for th in self.threads.values_mut() {
            th.rewrite = None;
        }
    }

    /// Finishes the system call that thread `tid` is held at (a syscall-enter-stop) without
    /// executing it: the program sees `ret` as its result (e.g. `-EINTR`, so that its loop
    /// computes the call's arguments again). The thread ends at its syscall-exit-stop.
    pub fn skip_held_syscall(&mut self, tid: Pid, ret: i64) -> Result<()> {
        let th = self.threads.get(&tid).ok_or_else(|| self.gone())?;
        if th.stop != Some(Stop::SyscallEnter) {
            return Err(Error::UnexpectedStop {
                pid: tid,
                stop: format!("{:?}", th.stop),
                during: "skipping a held system call (needs a syscall-enter-stop)".into(),
            });
        }
        let mut r = regs(tid)?;
        r.orig_rax = u64::MAX;
        set_regs(tid, &r)?;
        self.step_syscall(tid)?;
        let mut r = regs(tid)?;
        r.rax = ret as u64;
        set_regs(tid, &r)
    }

    /// Runs thread `tid` from a syscall-enter-stop to its syscall-exit-stop (or back from a
    /// syscall-exit-stop to the next enter), keeping signals that arrive for later.
    pub(crate) fn step_syscall(&mut self, tid: Pid) -> Result<()> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        let target = match self.threads.get(&tid).and_then(|t| t.stop) {
            Some(Stop::SyscallEnter) => Stop::SyscallExit,
            _ => Stop::SyscallEnter,
        };
        self.threads.get_mut(&tid).expect("thread").stop = None;
        restart(tid, Restart::Syscall, None)?;
        loop {
            match self.wait_any(Some(deadline))? {
                None => {
                    return Err(Error::Timeout {
                        pid: tid,
                        millis: STOP_TIMEOUT.as_millis() as u64,
                        during: "stepping over a system call".into(),
                    })
                }
                Some((t, stop)) if t == tid && stop == target => return Ok(()),
                Some((t, Stop::Signal(sig))) if t == tid => {
                    let th = self.threads.get_mut(&tid).expect("thread");
                    th.pending.push_back(sig);
                    th.stop = None;
                    restart(tid, Restart::Syscall, None)?;
                }
                Some((t, _)) if t == tid => {
                    self.threads.get_mut(&tid).expect("thread").stop = None;
                    restart(tid, Restart::Syscall, None)?;
                }
                // Another thread (e.g. a new one) stopped: leave it stopped.
                Some(_) => {}
            }
        }
    }

    pub(crate) fn set_stop(&mut self, tid: Pid, stop: Option<Stop>) {
        if let Some(th) = self.threads.get_mut(&tid) {
            th.stop = stop;
        }
    }

    pub(crate) fn keep_signal(&mut self, tid: Pid, sig: Signal) {
        if let Some(th) = self.threads.get_mut(&tid) {
            th.pending.push_back(sig);
        }
    }

    /// Writes `data` at `addr`, through `/proc/PID/mem` if the page is read-only.
    pub fn poke(&self, addr: RemoteAddr, data: &[u8]) -> Result<()> {
        self.mem.write(addr, data)
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if self.done {
            // Already detached, killed or reaped.
            return;
        }
        let r = match self.origin {
            Origin::Seized => self.detach_inner(),
            Origin::Spawned => self.kill_inner().map(|_| ()),
        };
        if let Err(e) = r {
            warn!(pid = self.pid.as_raw(), error = %e, "releasing tracee");
        }
    }
}

fn tgkill(pid: Pid, tid: Pid, sig: Signal) -> nix::Result<()> {
    // SAFETY: tgkill(2) takes plain integers; no memory is passed.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid.as_raw(), tid.as_raw(), sig as i32) };
    if rc == -1 {
        Err(nix::Error::last())
    } else {
        Ok(())
    }
}

/// Re-arms a system call that our interrupt broke with `EINTR` (see [`Tracee::resume_all`]).
fn restart_eintr(pid: Pid, tid: Pid) -> Result<()> {
    let mut r = match regs(tid) {
        Ok(r) => r,
        Err(Error::Gone { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    if (r.orig_rax as i64) < 0 || r.rax as i64 != -(libc::EINTR as i64) {
        return Ok(());
    }
    let masks = procfs::signal_masks(pid, tid)?;
    if masks.deliverable_to_handler() != 0 {
        // A handler will run: the program is meant to see this EINTR.
        return Ok(());
    }
    debug!(
        tid = tid.as_raw(),
        nr = r.orig_rax,
        "re-issuing system call interrupted by our stop"
    );
    r.rax = r.orig_rax;
    r.rip -= SYSCALL_INSN_LEN;
    set_regs(tid, &r)
}
