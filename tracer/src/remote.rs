//! Running code inside a stopped tracee: system calls, function calls, and batches of calls.
//!
//! A [`RemoteSession`] borrows one stopped thread. It saves the thread's registers (general
//! and the whole `XSAVE` area, so vector registers a callee clobbers come back too), plants a
//! few bytes of trampoline at the program's entry point (code that ran once at start-up and
//! never runs again), and restores all of it when closed or dropped, on every path: after a
//! fault, a timeout, or an error of ours. Every other thread stays stopped throughout.
//!
//! Results come in two levels (as CRIU's compel does): the outer `Result` says whether the
//! injection worked; [`RemoteSession::syscall`] returns the raw kernel result inside it, and
//! the typed wrappers ([`RemoteSession::mmap`], ...) turn `-errno` into
//! [`Error::RemoteSyscall`].
//!
//! Costs (NOTES.md): one injected call is ~20 µs of ptrace round trips; a batch of calls made
//! by a small injected loop ([`RemoteSession::call_many`]) costs ~0.1 µs per call.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{debug, warn};

use crate::addr::RemoteAddr;
use crate::error::{Error, Result};
use crate::mem::{Memory, MemoryMut};
use crate::procfs;
use crate::ptrace::{regs, restart, set_regs, Regs, Restart, Stop, SYSCALL_INSN_LEN};
use crate::tracee::Tracee;

/// How long one injected system call or function call may take before it is abandoned.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `syscall; int3`: the system call trampoline. Its `int3` doubles as the return address of
/// injected function calls.
const SYSCALL_TRAMPOLINE: [u8; 3] = [0x0f, 0x05, 0xcc];

/// The batch loop, entered with `rdi = function, rsi = args, rdx = results, rcx = count` and
/// `rsp` 16-byte aligned. It calls `function(args[i])` for each `i`, stores `rax` in
/// `results[i]`, and traps. rbx and r12–r15 are callee-saved, so they survive the calls.
#[rustfmt::skip]
const BATCH_LOOP: [u8; 37] = [
    0x49, 0x89, 0xfc,             // mov r12, rdi
    0x49, 0x89, 0xf5,             // mov r13, rsi
    0x49, 0x89, 0xd6,             // mov r14, rdx
    0x49, 0x89, 0xcf,             // mov r15, rcx
    0x31, 0xdb,                   // xor ebx, ebx
    0x4c, 0x39, 0xfb,             // loop: cmp rbx, r15
    0x73, 0x11,                   // jae done
    0x49, 0x8b, 0x7c, 0xdd, 0x00, // mov rdi, [r13 + rbx*8]
    0x41, 0xff, 0xd4,             // call r12
    0x49, 0x89, 0x04, 0xde,       // mov [r14 + rbx*8], rax
    0x48, 0xff, 0xc3,             // inc rbx
    0xeb, 0xea,                   // jmp loop
    0xcc,                         // done: int3
];

const PAGE: u64 = 4096;
/// The x86-64 ABI's red zone below `rsp`, which leaf functions use without moving `rsp`.
const RED_ZONE: u64 = 128;
/// `NT_X86_XSTATE`, the regset of the whole XSAVE area (elf.h).
const NT_X86_XSTATE: libc::c_int = 0x202;
/// Room for the XSAVE area (the kernel tells the real size, well under this with AVX-512).
const XSTATE_MAX: usize = 16384;

/// One stopped thread lent to us for running code. See the module documentation.
#[derive(Debug)]
pub struct RemoteSession<'t> {
    tracee: &'t mut Tracee,
    tid: Pid,
    saved: Regs,
    saved_xstate: Vec<u8>,
    original_stop: Stop,
    /// The thread was at a syscall-enter-stop: that call was put aside and is re-entered on close.
    reenter: bool,
    site: RemoteAddr,
    saved_site: Vec<u8>,
    scratch: Option<(RemoteAddr, u64)>,
    closed: bool,
    /// How long one injected call may take ([`CALL_TIMEOUT`] unless set).
    call_timeout: Duration,
}

impl<'t> RemoteSession<'t> {
    /// Opens a session on stopped thread `tid` of `tracee`.
    ///
    /// A thread held at a syscall-enter-stop (as [`Tracee::run`] leaves it) is first taken
    /// out of that call (the call is skipped), and on close re-enters it with its original
    /// arguments, back at the same syscall-enter-stop. A thread in group-stop is refused: running
    /// code would end a stop the program's user asked for.
    pub fn open(tracee: &'t mut Tracee, tid: Pid) -> Result<Self> {
        let stop =
            tracee
                .thread(tid)
                .and_then(|t| t.stop)
                .ok_or_else(|| Error::UnexpectedStop {
                    pid: tid,
                    stop: "running or unknown thread".into(),
                    during: "opening a remote session (the thread must be stopped)".into(),
                })?;
        if let Stop::Group(sig) = stop {
            return Err(Error::UnexpectedStop {
                pid: tid,
                stop: format!("group-stop by {sig}"),
                during: "opening a remote session".into(),
            });
        }
        let pid = tracee.pid();
        let site = procfs::entry_point(pid)?;
        let mut saved = regs(tid)?;
        let saved_xstate = get_xstate(tid)?;
        let mut reenter = false;
        if stop == Stop::SyscallEnter {
            let mut r = saved;
            r.orig_rax = u64::MAX;
            set_regs(tid, &r)?;
            tracee.step_syscall(tid)?;
            reenter = true;
            // The enter-stop's rax is -ENOSYS; what matters on re-entry is orig_rax and args.
            saved.rax = saved.orig_rax;
        }
        let len = SYSCALL_TRAMPOLINE.len() + BATCH_LOOP.len();
        let mut saved_site = vec![0; len];
        let mut session = RemoteSession {
            tracee,
            tid,
            saved,
            saved_xstate,
            original_stop: stop,
            reenter,
            site,
            saved_site: Vec::new(),
            scratch: None,
            closed: false,
            call_timeout: CALL_TIMEOUT,
        };
        session
            .tracee
            .memory()
            .read_via_proc(site, &mut saved_site)?;
        let mut code = SYSCALL_TRAMPOLINE.to_vec();
        code.extend_from_slice(&BATCH_LOOP);
        session.tracee.memory().write_via_proc(site, &code)?;
        session.saved_site = saved_site;
        debug!(pid = pid.as_raw(), tid = tid.as_raw(), %site, "remote session opened");
        Ok(session)
    }

    /// Sets how long each injected call (or batch, plus 50 µs per call) may take before it
    /// counts as hung: [`CALL_TIMEOUT`] by default.
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.call_timeout = timeout;
    }

    /// The thread the session runs code in.
    pub fn tid(&self) -> Pid {
        self.tid
    }

    /// The tracee.
    pub fn tracee(&self) -> &Tracee {
        self.tracee
    }

    /// The registers the thread had when the session opened (restored on close).
    pub fn saved_regs(&self) -> &Regs {
        &self.saved
    }

    /// Executes system call `nr` with `args` in the thread and returns the kernel's raw result
    /// (`-errno` on failure). `Err` means the injection itself failed.
    pub fn syscall(&mut self, nr: i64, args: &[u64]) -> Result<i64> {
        assert!(args.len() <= 6, "a system call takes at most six arguments");
        let mut r = self.saved;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9] = a;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rip = self.site.get();
        set_regs(self.tid, &r)?;
        let end = self.site.get() + SYSCALL_TRAMPOLINE.len() as u64;
        let out = self.run_to_trap(end, &format!("system call {nr}"), self.call_timeout)?;
        Ok(out.rax as i64)
    }

    fn checked(&mut self, call: impl FnOnce() -> String, ret: i64) -> Result<u64> {
        if (-4095..0).contains(&ret) {
            Err(Error::RemoteSyscall {
                pid: self.tracee.pid(),
                call: call(),
                errno: nix::Error::from_raw(-ret as i32),
            })
        } else {
            Ok(ret as u64)
        }
    }

    /// `getpid()` in the tracee.
    pub fn getpid(&mut self) -> Result<Pid> {
        let r = self.syscall(libc::SYS_getpid, &[])?;
        Ok(Pid::from_raw(self.checked(|| "getpid()".into(), r)? as i32))
    }

    /// `mmap(addr, len, prot, flags, fd, offset)` in the tracee.
    pub fn mmap(
        &mut self,
        addr: RemoteAddr,
        len: u64,
        prot: i32,
        flags: i32,
        fd: i32,
        offset: u64,
    ) -> Result<RemoteAddr> {
        let r = self.syscall(
            libc::SYS_mmap,
            &[
                addr.get(),
                len,
                prot as u64,
                flags as u64,
                fd as i64 as u64,
                offset,
            ],
        )?;
        self.checked(
            || format!("mmap(len={len:#x}, prot={prot:#x}, flags={flags:#x})"),
            r,
        )
        .map(RemoteAddr::new)
    }

    /// An anonymous private read-write mapping of `len` bytes in the tracee.
    pub fn mmap_anonymous(&mut self, len: u64) -> Result<RemoteAddr> {
        self.mmap(
            RemoteAddr::NULL,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    }

    /// `munmap(addr, len)` in the tracee.
    pub fn munmap(&mut self, addr: RemoteAddr, len: u64) -> Result<()> {
        let r = self.syscall(libc::SYS_munmap, &[addr.get(), len])?;
        self.checked(|| format!("munmap({addr}, {len:#x})"), r)
            .map(drop)
    }

    /// `dup2(old, new)` in the tracee (as `dup3(old, new, 0)`, or `fcntl` when equal).
    pub fn dup2(&mut self, old: i32, new: i32) -> Result<i32> {
        let r = if old == new {
            // dup3 refuses equal descriptors; dup2's answer is then whether `old` is open.
            let r = self.syscall(libc::SYS_fcntl, &[old as u64, libc::F_GETFD as u64])?;
            if r < 0 {
                r
            } else {
                old as i64
            }
        } else {
            self.syscall(libc::SYS_dup3, &[old as u64, new as u64, 0])?
        };
        self.checked(|| format!("dup2({old}, {new})"), r)
            .map(|v| v as i32)
    }

    /// `close(fd)` in the tracee.
    pub fn close_fd(&mut self, fd: i32) -> Result<()> {
        let r = self.syscall(libc::SYS_close, &[fd as u64])?;
        self.checked(|| format!("close({fd})"), r).map(drop)
    }

    /// Calls the function at `func` in the tracee with up to six integer or pointer `args`
    /// (System V x86-64 ABI) and returns `rax`.
    ///
    /// The call runs on the thread's own stack, below its red zone, and returns into the
    /// trampoline's `int3`. A fault in the callee is [`Error::RemoteFault`]; a callee that
    /// does not return within [`CALL_TIMEOUT`] (e.g. `malloc` waiting for a lock a stopped
    /// thread holds) is interrupted and [`Error::Timeout`]. Registers are restored either way.
    pub fn call(&mut self, func: RemoteAddr, args: &[u64]) -> Result<u64> {
        self.call_with_timeout(func, args, self.call_timeout)
    }

    /// [`RemoteSession::call`] with an explicit time limit.
    pub fn call_with_timeout(
        &mut self,
        func: RemoteAddr,
        args: &[u64],
        timeout: Duration,
    ) -> Result<u64> {
        assert!(args.len() <= 6, "at most six register arguments");
        let ret_addr = self.site.get() + SYSCALL_TRAMPOLINE.len() as u64 - 1;
        let mut r = self.prepare_frame(ret_addr)?;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        [r.rdi, r.rsi, r.rdx, r.rcx, r.r8, r.r9] = a;
        r.rip = func.get();
        set_regs(self.tid, &r)?;
        let out = self.run_to_trap(ret_addr + 1, &format!("call of {func}"), timeout)?;
        Ok(out.rax)
    }

    /// A 16-byte aligned stack pointer below the thread's red zone (and some margin), where
    /// injected code may push without touching the interrupted code's data.
    fn stack_below_red_zone(&self) -> Result<RemoteAddr> {
        Ok(RemoteAddr::new(self.saved.rsp)
            .checked_sub(RED_ZONE + 256)
            .ok_or(Error::UnexpectedStop {
                pid: self.tid,
                stop: format!("rsp {:#x}", self.saved.rsp),
                during: "building a call frame".into(),
            })?
            .align_down(16))
    }

    /// Sets up registers for running code on the thread's stack: below the red zone, 16-byte
    /// aligned, with `ret_addr` pushed as the return address.
    fn prepare_frame(&mut self, ret_addr: u64) -> Result<Regs> {
        let mut r = self.saved;
        let sp = self.stack_below_red_zone()?;
        let sp = RemoteAddr::new(sp.get() - 8);
        self.tracee.memory().write(sp, &ret_addr.to_ne_bytes())?;
        r.rsp = sp.get();
        r.rax = 0; // no vector registers used by a variadic callee
        r.orig_rax = u64::MAX; // not in a system call: no restart logic on resume
        Ok(r)
    }

    /// Calls `func(arg)` for every element of `args` inside the tracee, in one round trip, and
    /// returns the results in order: e.g. the tracee's `malloc` for an array of sizes, or its
    /// `free` for an array of pointers. The arrays travel through a scratch mapping (kept for
    /// the session's later batches and unmapped on close).
    pub fn call_many(&mut self, func: RemoteAddr, args: &[u64]) -> Result<Vec<u64>> {
        if args.is_empty() {
            return Ok(Vec::new());
        }
        let n = args.len() as u64;
        let need = (n * 16).div_ceil(PAGE) * PAGE;
        let scratch = self.scratch(need)?;
        let results = RemoteAddr::new(scratch.get() + n * 8);
        let bytes: Vec<u8> = args.iter().flat_map(|a| a.to_ne_bytes()).collect();
        self.tracee.memory().write(scratch, &bytes)?;
        let loop_start = self.site.get() + SYSCALL_TRAMPOLINE.len() as u64;
        let mut r = self.saved;
        r.rsp = self.stack_below_red_zone()?.get();
        r.rip = loop_start;
        r.rdi = func.get();
        r.rsi = scratch.get();
        r.rdx = results.get();
        r.rcx = n;
        r.rax = 0;
        r.orig_rax = u64::MAX;
        set_regs(self.tid, &r)?;
        let end = loop_start + BATCH_LOOP.len() as u64;
        // A generous limit that grows with the batch: ~0.1 µs per call is expected.
        let timeout = self.call_timeout + Duration::from_micros(50 * n);
        self.run_to_trap(end, &format!("batch of {n} calls of {func}"), timeout)?;
        let out = self.tracee.memory().read_vec(results, (n * 8) as usize)?;
        Ok(out
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    /// A scratch mapping of at least `len` bytes, reused across batches.
    fn scratch(&mut self, len: u64) -> Result<RemoteAddr> {
        if let Some((addr, have)) = self.scratch {
            if have >= len {
                return Ok(addr);
            }
            self.scratch = None;
            self.munmap(addr, have)?;
        }
        let addr = self.mmap_anonymous(len)?;
        self.scratch = Some((addr, len));
        Ok(addr)
    }

    /// Runs the thread until it traps at `expected_ip - 1` (rip == expected_ip after `int3`).
    fn run_to_trap(&mut self, expected_ip: u64, what: &str, timeout: Duration) -> Result<Regs> {
        let deadline = Instant::now() + timeout;
        let tid = self.tid;
        self.tracee.set_stop(tid, None);
        restart(tid, Restart::Continue, None)?;
        loop {
            let got = self.tracee.wait_any(Some(deadline))?;
            let Some((t, stop)) = got else {
                // Stuck: take the thread back, then report. Close restores its registers.
                let _ = nix::sys::ptrace::interrupt(tid);
                while self.tracee.thread(tid).is_some_and(|t| t.stop.is_none()) {
                    if self
                        .tracee
                        .wait_any(Some(Instant::now() + Duration::from_secs(5)))?
                        .is_none()
                    {
                        break;
                    }
                }
                return Err(Error::Timeout {
                    pid: tid,
                    millis: timeout.as_millis() as u64,
                    during: format!("running remote {what}"),
                });
            };
            if t != tid {
                // A thread our code created, or a stray stop: it stays stopped.
                continue;
            }
            match stop {
                Stop::Signal(Signal::SIGTRAP) => {
                    let r = regs(tid)?;
                    if r.rip == expected_ip {
                        return Ok(r);
                    }
                    return Err(Error::RemoteFault {
                        pid: tid,
                        what: format!("{what} (unexpected trap)"),
                        signal: Signal::SIGTRAP,
                        addr: RemoteAddr::new(r.rip),
                    });
                }
                Stop::Signal(
                    sig @ (Signal::SIGSEGV
                    | Signal::SIGBUS
                    | Signal::SIGILL
                    | Signal::SIGFPE
                    | Signal::SIGABRT
                    | Signal::SIGSYS),
                ) => {
                    let r = regs(tid)?;
                    // The signal was caused by our code: it is suppressed when we restore.
                    return Err(Error::RemoteFault {
                        pid: tid,
                        what: what.to_owned(),
                        signal: sig,
                        addr: RemoteAddr::new(r.rip),
                    });
                }
                Stop::Signal(sig) => {
                    // Meant for the program: keep it for when the thread resumes for real.
                    self.tracee.keep_signal(tid, sig);
                    self.tracee.set_stop(tid, None);
                    restart(tid, Restart::Continue, None)?;
                }
                _ => {
                    // A leftover interrupt stop or an event: carry on.
                    self.tracee.set_stop(tid, None);
                    restart(tid, Restart::Continue, None)?;
                }
            }
        }
    }

    /// Ends the session: unmaps scratch memory, restores the trampoline's bytes, the thread's
    /// registers and vector state, and (for a thread that was held at a system call) re-enters
    /// that call. Errors are returned; [`Drop`] does the same and logs them.
    pub fn close(mut self) -> Result<()> {
        self.restore()
    }

    fn restore(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if self.tracee.exit_status().is_some() || self.tracee.thread(self.tid).is_none() {
            return Ok(());
        }
        let mut first_err: Option<Error> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        };
        if let Some((addr, len)) = self.scratch.take() {
            let r = self.munmap(addr, len);
            note(r);
        }
        note(
            self.tracee
                .memory()
                .write_via_proc(self.site, &self.saved_site),
        );
        note(set_xstate(self.tid, &self.saved_xstate));
        if self.reenter {
            let mut r = self.saved;
            r.rip -= SYSCALL_INSN_LEN;
            r.rax = r.orig_rax;
            note(set_regs(self.tid, &r));
            // From the trap's signal-delivery-stop back into the call: the syscall-enter-stop.
            self.tracee
                .set_stop(self.tid, Some(Stop::Signal(Signal::SIGTRAP)));
            note(self.tracee.step_syscall(self.tid));
        } else {
            note(set_regs(self.tid, &self.saved));
            // The thread sits in the trampoline's SIGTRAP stop; restarting it without a signal
            // continues from the restored registers exactly as from its original stop.
            self.tracee.set_stop(self.tid, Some(self.original_stop));
        }
        debug!(tid = self.tid.as_raw(), "remote session closed");
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for RemoteSession<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            warn!(tid = self.tid.as_raw(), error = %e, "restoring thread after remote session");
        }
    }
}

fn get_xstate(tid: Pid) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let len = xstate_regset(tid, libc::PTRACE_GETREGSET, &mut buf)?;
    buf.truncate(len);
    Ok(buf)
}

fn set_xstate(tid: Pid, state: &[u8]) -> Result<()> {
    let mut copy = state.to_vec();
    xstate_regset(tid, libc::PTRACE_SETREGSET, &mut copy).map(drop)
}

/// `PTRACE_GETREGSET`/`PTRACE_SETREGSET` of `NT_X86_XSTATE` through `buf`; returns the length
/// the kernel read or wrote.
fn xstate_regset(tid: Pid, request: libc::c_uint, buf: &mut [u8]) -> Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: with NT_X86_XSTATE, PTRACE_GETREGSET writes at most iov_len bytes into iov_base
    // and PTRACE_SETREGSET reads iov_len bytes from it; both update iov_len to the size used
    // (ptrace(2)). `buf` outlives the call.
    let rc = unsafe {
        libc::ptrace(
            request,
            tid.as_raw(),
            NT_X86_XSTATE as usize as *mut libc::c_void,
            &mut iov as *mut libc::iovec as *mut libc::c_void,
        )
    };
    if rc == -1 {
        return Err(Error::sys(
            tid,
            "PTRACE_GETREGSET/SETREGSET(NT_X86_XSTATE)",
            nix::Error::last(),
        ));
    }
    Ok(iov.iov_len)
}
