//! Faults injected into an update on purpose: to prove, in tests and experiments, that every
//! failure ends with the old process running as before. Each fault is real where it can be:
//! a crash is an instruction that faults inside the spawned process's own `malloc`, a hang is
//! a loop there, a difference is a byte changed in the reversed process's memory, an exit is
//! a `SIGKILL`.

use serde::Serialize;
use tracer::{Pid, RemoteAddr, Tracee};

use super::corrupt::PlanFault;
use crate::debuginfo::Binary;
use crate::transfer::{Applied, Plan};

/// Where in the transaction a fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Point {
    /// Just before the old process is seized and quiesced: it still runs freely.
    Quiesce,
    /// While capturing the old state.
    Capture,
    /// During the forward transfer, in the future.
    Forward,
    /// During the reverse transfer, in the reversed process.
    Reverse,
    /// Between the reverse transfer and the comparison.
    Compare,
    /// When the new version starts serving on probation.
    Probation,
}

/// How a spawned process is made to crash during a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashSignal {
    /// Its `malloc` executes `hlt`, privileged in user mode: `SIGSEGV`.
    Segv,
    /// A `SIGBUS` arrives while it runs the transfer's calls (as from a truncated mapping).
    Bus,
    /// Its `malloc` jumps to `abort`: `SIGABRT`.
    Abort,
}

impl CrashSignal {
    /// Every way.
    pub const ALL: [CrashSignal; 3] = [CrashSignal::Segv, CrashSignal::Bus, CrashSignal::Abort];

    /// `sigsegv`, `sigbus`, `sigabrt`.
    pub fn name(self) -> &'static str {
        match self {
            CrashSignal::Segv => "sigsegv",
            CrashSignal::Bus => "sigbus",
            CrashSignal::Abort => "sigabrt",
        }
    }
}

/// One fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Injection {
    /// The capture of the old state fails.
    CaptureError,
    /// The spawned process crashes during the transfer.
    Crash {
        /// In which transfer.
        at: Point,
        /// How.
        signal: CrashSignal,
    },
    /// The spawned process hangs in its `malloc` (a jump to itself).
    Hang {
        /// In which transfer.
        at: Point,
    },
    /// A byte of global `variable` of the reversed process is flipped before the comparison:
    /// a difference the time-traveling check must catch.
    FlipGlobal {
        /// The global's name.
        variable: String,
    },
    /// The old process is killed (`SIGKILL`) at `at`, and has exited before the update goes
    /// on: a process that exits during the update. Needs the caller to be the old process's
    /// parent or tracer (to wait for its exit): a test's fixture, or any point after
    /// [`Point::Quiesce`].
    KillOld {
        /// When.
        at: Point,
    },
    /// A signal is sent to the old process at `at` (while it is stopped for the update): a
    /// signal it blocks stays pending, and must reach the new version.
    SignalOld {
        /// When.
        at: Point,
        /// The signal's number.
        signal: i32,
    },
    /// The new version crashes (a `SIGSEGV`) right after it takes over, as a new version
    /// that dereferences the transferred state wrongly would: probation must catch it.
    CrashNew,
    /// The transfer plan is corrupted: what a buggy transfer would write.
    Plan {
        /// Which transfer.
        at: Point,
        /// The corruption.
        fault: PlanFault,
        /// Where it strikes (a number the campaign draws from its seed).
        pick: u64,
    },
}

impl Injection {
    /// Where it strikes.
    pub fn point(&self) -> Point {
        match self {
            Injection::CaptureError => Point::Capture,
            Injection::Crash { at, .. }
            | Injection::Hang { at }
            | Injection::KillOld { at }
            | Injection::SignalOld { at, .. }
            | Injection::Plan { at, .. } => *at,
            Injection::FlipGlobal { .. } => Point::Compare,
            Injection::CrashNew => Point::Probation,
        }
    }

    /// The error of a phase that fails outright.
    pub(crate) fn fail_here(&self) -> anyhow::Error {
        anyhow::anyhow!("injected fault: {self:?}")
    }

    /// The faults that strike the old process itself. [`Injection::KillOld`]: kills process
    /// `old` and waits until it has exited, without reaping it (`waitid` with `WNOWAIT`): it
    /// stays for its parent to reap, and whatever the update does next finds it gone, not
    /// dying. [`Injection::SignalOld`]: sends the signal. Other faults do nothing here.
    pub(crate) fn strike_old(&self, old: Pid) -> anyhow::Result<()> {
        use nix::sys::wait::{waitid, Id, WaitPidFlag};
        if let Injection::SignalOld { signal, .. } = self {
            let sig = nix::sys::signal::Signal::try_from(*signal)?;
            nix::sys::signal::kill(old, sig)?;
            return Ok(());
        }
        if !matches!(self, Injection::KillOld { .. }) {
            return Ok(());
        }
        nix::sys::signal::kill(old, nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| anyhow::anyhow!("injected fault: kill process {old}: {e}"))?;
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::__WALL;
        loop {
            match waitid(Id::Pid(old), flags) {
                Ok(_) => return Ok(()),
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "injected fault: wait for process {old} to exit (are we its parent or \
                         tracer?): {e}"
                    ))
                }
            }
        }
    }

    /// [`Injection::CrashNew`]: the new version, about to serve, gets a `SIGSEGV` (delivered
    /// as soon as it runs).
    pub(crate) fn strike_new(&self, new: Pid) -> anyhow::Result<()> {
        if matches!(self, Injection::CrashNew) {
            nix::sys::signal::kill(new, nix::sys::signal::Signal::SIGSEGV)?;
        }
        Ok(())
    }

    /// Before a transfer's remote calls: plant the crash or the hang in the target's `malloc`.
    pub(crate) fn before_apply(
        &self,
        target: &Tracee,
        symbols: &tracer::symbols::SymbolResolver,
        malloc: RemoteAddr,
    ) -> anyhow::Result<()> {
        match self {
            // hlt is privileged: executing it in user mode raises SIGSEGV.
            Injection::Crash {
                signal: CrashSignal::Segv,
                ..
            } => target.poke(malloc, &[0xf4])?,
            Injection::Crash {
                signal: CrashSignal::Bus,
                ..
            } => nix::sys::signal::kill(target.pid(), nix::sys::signal::Signal::SIGBUS)?,
            Injection::Crash {
                signal: CrashSignal::Abort,
                ..
            } => {
                // movabs rax, abort; jmp rax
                let abort = symbols.lookup_in("libc.so", "abort")?;
                let mut code = vec![0x48, 0xb8];
                code.extend_from_slice(&abort.get().to_le_bytes());
                code.extend_from_slice(&[0xff, 0xe0]);
                target.poke(malloc, &code)?;
            }
            // jmp -2: malloc never returns.
            Injection::Hang { .. } => target.poke(malloc, &[0xeb, 0xfe])?,
            _ => {}
        }
        Ok(())
    }

    /// Corrupts the plan of the transfer (a copy), for [`Injection::Plan`]; says where it
    /// struck, or `None` when the plan had no place for the fault.
    pub(crate) fn corrupt_plan(&self, plan: &mut Plan) -> Option<String> {
        match self {
            Injection::Plan { fault, pick, .. } => fault.apply(plan, *pick),
            _ => None,
        }
    }

    /// After a transfer's remote calls.
    pub(crate) fn after_apply(
        &self,
        _target: &Tracee,
        _plan: &Plan,
        _applied: &Applied,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// Before the comparison: change the reversed process's state.
    pub(crate) fn corrupt(&self, reversed: &Tracee, binary: &Binary) -> anyhow::Result<()> {
        let Injection::FlipGlobal { variable } = self else {
            return Ok(());
        };
        let var = binary
            .variables()
            .iter()
            .find(|v| &v.name == variable)
            .ok_or_else(|| anyhow::anyhow!("injected fault: no global `{variable}`"))?;
        let main = tracer::symbols::loaded_objects(reversed.pid())?
            .into_iter()
            .find(|o| o.role == tracer::symbols::ObjectRole::Main)
            .ok_or_else(|| anyhow::anyhow!("no main executable mapping"))?;
        let addr = RemoteAddr::new(binary.load_bias(main.base.get()) + var.address);
        let mut byte = [0u8; 1];
        tracer::Memory::read(reversed.memory(), addr, &mut byte)?;
        reversed.poke(addr, &[byte[0] ^ 1])?;
        Ok(())
    }
}
