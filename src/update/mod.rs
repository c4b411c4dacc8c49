//! The update transaction (DESIGN.md, "The update transaction"): time-traveling state
//! transfer from a running process into a new version of its program.
//!
//! 1. Check: both binaries load with debug info, the mapping between them refuses nothing,
//!    the process exists and nobody traces it. Nothing is touched yet.
//! 2. Start-up, while the old process still serves: the future (new binary) and the reversed
//!    process (the old binary, through `/proc/PID/exe`) are spawned in the old process's
//!    execution context, their `bind` on an address the old process listens on rewritten into
//!    a `dup2` of its socket, and held at their own quiescent point; their start-up states are
//!    captured.
//! 3. The old process is seized and quiesced (downtime starts), and captured. It is only read.
//! 4. Forward transfer into the future: memory, then every descriptor at the same number, then
//!    each epoll instance rebuilt fresh with its registrations' data relocated.
//! 5. Reverse transfer of the future's state into the reversed process, which is captured and
//!    compared with the old state ([`crate::verify`]).
//! 6. Commit: the future's held call returns `EINTR` and it runs on; the reversed and the old
//!    process are killed. Or abort: the spawned processes are killed and the old process is
//!    detached, and carries on exactly where it was.
//!
//! Every phase is timed; the [`Report`] says what happened either way.

pub mod corrupt;
mod fds;
pub mod inject;
mod spawned;

use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracer::{Held, Pid, Tracee};

use crate::debuginfo::Binary;
use crate::mapping::rules::Rules;
use crate::mapping::Mapping;
use crate::state::live::{CaptureError, LiveCapture, Prepared};
use crate::state::StateGraph;
use crate::transfer::{apply, plan_mapped, read_only_data, Applied, Destination, Plan};
use crate::verify;

pub use inject::Injection;
pub use spawned::HoldAt;

/// What to update, and how.
#[derive(Clone, Debug)]
pub struct Config {
    /// The running process.
    pub pid: Pid,
    /// The new version's executable.
    pub to: PathBuf,
    /// Rules for what names cannot decide.
    pub rules: Rules,
    /// How long to wait for the old process to be quiescent.
    pub quiesce_timeout: Duration,
    /// How long a spawned process's start-up may take before it counts as hung.
    pub step_timeout: Duration,
    /// How long one call run inside a spawned process during a transfer (a batch of
    /// `malloc`s, a system call) may take before it counts as hung.
    pub call_timeout: Duration,
    /// Hold the processes at this function instead of at a quiescent system call.
    pub at: Option<String>,
    /// Run the time-traveling check (reverse transfer and comparison).
    pub verify: bool,
    /// Commit when everything succeeded. `false` runs the whole transaction and aborts at the
    /// end (fault-injection campaigns, dry runs).
    pub commit: bool,
    /// A fault to inject (tests and experiments).
    pub inject: Option<Injection>,
}

impl Config {
    /// Defaults: 10 s to quiesce, 30 s per step, verified, committed.
    pub fn new(pid: Pid, to: impl Into<PathBuf>) -> Config {
        Config {
            pid,
            to: to.into(),
            rules: Rules::default(),
            quiesce_timeout: Duration::from_secs(10),
            step_timeout: Duration::from_secs(30),
            call_timeout: tracer::remote::CALL_TIMEOUT,
            at: None,
            verify: true,
            commit: true,
            inject: None,
        }
    }
}

/// The phases of an update, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Loading both binaries and the mapping; checking the process.
    Check,
    /// Spawning and holding the future and the reversed process.
    Startup,
    /// Stopping the old process at a quiescent point.
    Quiesce,
    /// Capturing the old state.
    Capture,
    /// Transferring into the future.
    Forward,
    /// Transferring back into the reversed process.
    Reverse,
    /// Comparing the old and the reversed state.
    Compare,
    /// Letting the future run in the old process's place.
    Commit,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Phase::Check => "check",
            Phase::Startup => "start-up",
            Phase::Quiesce => "quiesce",
            Phase::Capture => "capture",
            Phase::Forward => "forward transfer",
            Phase::Reverse => "reverse transfer",
            Phase::Compare => "compare",
            Phase::Commit => "commit",
        };
        f.write_str(s)
    }
}

/// Why an update did not happen; the old process was left as it was.
#[derive(Debug, thiserror::Error)]
#[error("{phase}: {message}")]
pub struct Abort {
    /// Where it failed.
    pub phase: Phase,
    /// What went wrong, with the cause chain.
    pub message: String,
}

impl Abort {
    fn new(phase: Phase, e: impl Into<anyhow::Error>) -> Abort {
        let e: anyhow::Error = e.into();
        // Many errors print their source in their own message too (`{path}: {source}`), and
        // a context may repeat what its cause says first (`process N`): say each thing once.
        let mut message = e.to_string();
        let mut last = message.clone();
        for cause in e.chain().skip(1) {
            let cause = cause.to_string();
            if message.ends_with(&cause) {
                continue;
            }
            if cause.starts_with(&last) {
                message.truncate(message.len() - last.len());
            } else {
                message.push_str(": ");
            }
            message.push_str(&cause);
            last = cause;
        }
        Abort { phase, message }
    }
}

/// How the update ended.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The new version runs in the old one's place.
    Committed,
    /// Nothing changed: the old process runs on.
    Aborted {
        /// The phase that failed.
        phase: Phase,
        /// Why.
        reason: String,
    },
}

/// Phase times in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Times {
    /// Loading binaries and the mapping.
    pub check: f64,
    /// Spawning and holding the future and reversed processes (the old one still serves).
    pub startup: f64,
    /// Stopping the old process at a quiescent point.
    pub quiesce: f64,
    /// Capturing its state.
    pub capture: f64,
    /// Forward transfer: memory, descriptors, epoll.
    pub forward: f64,
    /// Reverse transfer (capture of the future included).
    pub reverse: f64,
    /// Capture of the reversed process and comparison.
    pub compare: f64,
    /// The old process stopped until the future runs (or the old one runs again on abort).
    pub downtime: f64,
    /// Everything.
    pub total: f64,
}

/// What an update did.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Committed or aborted.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The old process.
    pub old_pid: i32,
    /// The new process (running after a commit; gone after an abort).
    pub new_pid: Option<i32>,
    /// The reversed process (always gone at the end).
    pub reversed_pid: Option<i32>,
    /// Whether the time-traveling check ran (`--no-verify` skips it).
    pub verified: bool,
    /// Phase times.
    pub times_ms: Times,
    /// Objects transferred forward (globals and heap objects).
    pub objects: u64,
    /// Heap objects among them.
    pub heap_objects: u64,
    /// Bytes written forward.
    pub bytes: u64,
    /// Descriptors installed in the future.
    pub fds: u64,
    /// Epoll instances rebuilt.
    pub epolls: u64,
    /// Listening sockets handed over.
    pub listeners: u64,
    /// Differences between the old and the reversed state (empty when committed).
    pub differences: Vec<verify::Difference>,
    /// How many differences there were in all (the list may be capped).
    pub differences_total: u64,
    /// Things worth knowing that did not stop the update.
    pub warnings: Vec<String>,
    /// Where an injected fault struck (tests and fault campaigns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
}

impl Report {
    fn new(pid: Pid, verified: bool) -> Report {
        Report {
            outcome: Outcome::Committed,
            old_pid: pid.as_raw(),
            new_pid: None,
            reversed_pid: None,
            verified,
            times_ms: Times::default(),
            objects: 0,
            heap_objects: 0,
            bytes: 0,
            fds: 0,
            epolls: 0,
            listeners: 0,
            differences: Vec::new(),
            differences_total: 0,
            warnings: Vec::new(),
            fault: None,
        }
    }

    /// Whether the new version took over.
    pub fn committed(&self) -> bool {
        matches!(self.outcome, Outcome::Committed)
    }
}

/// Whether process `pid` has exited (a zombie, or gone).
fn exited(pid: Pid) -> bool {
    tracer::procfs::status_field(pid, "State").map_or(true, |s| s.starts_with(['Z', 'X']))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Everything checked before any process is touched.
struct Checked {
    old_exe: PathBuf,
    old_binary: Arc<Binary>,
    new_binary: Arc<Binary>,
    forward: Mapping,
    reverse: Mapping,
}

/// Loads both binaries and both mappings and checks the process: precise errors, nothing
/// touched.
fn check(cfg: &Config) -> Result<Checked, Abort> {
    let pid = cfg.pid;
    let fail = |e: anyhow::Error| Abort::new(Phase::Check, e);
    if !tracer::procfs::exists(pid) {
        return Err(fail(tracer::Error::NoSuchProcess { pid }.into()));
    }
    if let Some(st) = tracer::procfs::status_field(pid, "State")
        .ok()
        .filter(|s| s.starts_with('Z'))
    {
        return Err(fail(anyhow::anyhow!(
            "process {pid} has exited (state {st}); nothing to update"
        )));
    }
    match tracer::procfs::tracer_of(pid) {
        Ok(Some(tracer)) => return Err(fail(tracer::Error::AlreadyTraced { pid, tracer }.into())),
        Ok(None) => {}
        Err(e) => return Err(fail(e.into())),
    }
    // May we trace it? Opening /proc/PID/mem takes the kernel's decision for PTRACE_SEIZE
    // (ptrace(2), "Ptrace access mode checking": PTRACE_MODE_ATTACH) without tracing it.
    if let Err(e) = std::fs::File::open(format!("/proc/{pid}/mem")) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            let uid = |p: Pid| tracer::procfs::credentials(p).map_or(-1, |c| i64::from(c.euid));
            return Err(fail(anyhow::anyhow!(
                "not permitted to trace process {pid} (it runs as uid {}, transplant as uid {}): \
                 {e}",
                uid(pid),
                uid(Pid::this())
            )));
        }
    }
    let new_binary = Binary::load(&cfg.to)
        .map_err(|e| fail(anyhow::Error::new(e).context("the new version (--to)")))?;
    let old_exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let old_binary = Binary::load(&old_exe).map_err(|e| {
        fail(anyhow::Error::new(e).context(format!("the program of process {pid}")))
    })?;
    let forward = Mapping::new(&old_binary, &new_binary, &cfg.rules);
    let reverse = Mapping::reverse(&old_binary, &new_binary, &cfg.rules);
    for m in [&forward, &reverse] {
        let refused: Vec<String> = m.refused().map(|d| d.to_string()).collect();
        if !refused.is_empty() {
            return Err(fail(anyhow::anyhow!(
                "the {} mapping from {} to {} refuses {} difference(s) (see `transplant plan`):\n  {}",
                if m.direction == crate::mapping::Direction::Forward { "forward" } else { "reverse" },
                m.old_binary,
                m.new_binary,
                refused.len(),
                refused.join("\n  ")
            )));
        }
    }
    Ok(Checked {
        old_exe,
        old_binary: Arc::new(old_binary),
        new_binary: Arc::new(new_binary),
        forward,
        reverse,
    })
}

/// Updates process `cfg.pid` to `cfg.to`. Returns the report; `Err` only for what the check
/// phase refuses (bad input, nothing touched). Either way, unless the report says committed,
/// the old process runs on exactly as it was and nothing transplant started is left.
pub fn update(cfg: &Config) -> Result<Report, Abort> {
    run_update(cfg, false).map(|(r, _)| r)
}

/// What a transaction saw, for fault campaigns: the state graphs it captured.
pub struct Observed {
    /// The old version's executable.
    pub old_binary: Arc<Binary>,
    /// The new version's executable.
    pub new_binary: Arc<Binary>,
    /// The old state, if it was captured.
    pub old_state: Option<StateGraph>,
    /// The future's state after the forward transfer, if it was captured (for the reverse
    /// transfer).
    pub future_state: Option<StateGraph>,
}

/// As [`update`], also returning the state graphs the transaction captured.
pub fn update_observed(cfg: &Config) -> Result<(Report, Observed), Abort> {
    run_update(cfg, true)
}

fn run_update(cfg: &Config, keep: bool) -> Result<(Report, Observed), Abort> {
    let t0 = Instant::now();
    let checked = check(cfg)?;
    let mut report = Report::new(cfg.pid, cfg.verify);
    report.times_ms.check = ms(t0.elapsed());
    let mut txn = Transaction {
        cfg,
        checked: &checked,
        report: &mut report,
        downtime_start: None,
        observed: keep.then(|| Observed {
            old_binary: checked.old_binary.clone(),
            new_binary: checked.new_binary.clone(),
            old_state: None,
            future_state: None,
        }),
        phase: None,
    };
    let result = txn.run();
    let phase_under_way = txn.phase;
    let downtime_start = txn.downtime_start;
    let observed = txn.observed.take();
    match result {
        Ok(()) => {}
        Err(mut abort) => {
            // The failed phase's time so far (a hang's time limit, say).
            if let Some((phase, since)) = phase_under_way.filter(|(p, _)| *p == abort.phase) {
                let t = &mut report.times_ms;
                let slot = match phase {
                    Phase::Startup => Some(&mut t.startup),
                    Phase::Quiesce => Some(&mut t.quiesce),
                    Phase::Capture => Some(&mut t.capture),
                    Phase::Forward => Some(&mut t.forward),
                    Phase::Reverse => Some(&mut t.reverse),
                    Phase::Compare => Some(&mut t.compare),
                    Phase::Check | Phase::Commit => None,
                };
                if let Some(slot) = slot.filter(|v| **v == 0.0) {
                    *slot = ms(since.elapsed());
                }
            }
            // Whatever failed, a process that ended under us is the reason to tell first.
            if exited(cfg.pid) {
                abort.message = format!(
                    "process {} exited during the update: {}",
                    cfg.pid, abort.message
                );
            }
            report.outcome = Outcome::Aborted {
                phase: abort.phase,
                reason: abort.message,
            };
        }
    }
    if let (Some(start), 0.0) = (downtime_start, report.times_ms.downtime) {
        report.times_ms.downtime = ms(start.elapsed());
    }
    report.times_ms.total = ms(t0.elapsed());
    let observed = observed.unwrap_or_else(|| Observed {
        old_binary: checked.old_binary.clone(),
        new_binary: checked.new_binary.clone(),
        old_state: None,
        future_state: None,
    });
    Ok((report, observed))
}

/// The processes of one transaction. Dropping it aborts: the spawned processes are killed
/// (their `Drop`), the old process is detached.
struct Participants {
    old: Option<Tracee>,
    future: Option<spawned::Spawned>,
    reversed: Option<spawned::Spawned>,
}

impl Drop for Participants {
    fn drop(&mut self) {
        // Kill the spawned processes first: they share the old process's sockets, and must
        // be gone before it serves again.
        for s in [self.future.take(), self.reversed.take()]
            .into_iter()
            .flatten()
        {
            let pid = s.tracee.pid();
            if let Err(e) = s.tracee.kill() {
                tracing::warn!(pid = pid.as_raw(), "killing a spawned process: {e}");
            }
        }
        if let Some(old) = self.old.take() {
            let pid = old.pid();
            if let Err(e) = old.detach() {
                tracing::warn!(pid = pid.as_raw(), "detaching the old process: {e}");
            }
        }
    }
}

struct Transaction<'a> {
    cfg: &'a Config,
    checked: &'a Checked,
    report: &'a mut Report,
    downtime_start: Option<Instant>,
    /// What to hand back to [`update_observed`].
    observed: Option<Observed>,
    /// The phase under way and when it began: an abort reports its time too.
    phase: Option<(Phase, Instant)>,
}

/// The kernel state of the old process to bring along: its descriptors, taken into ours.
struct OldFds {
    fds: Vec<fds::OldFd>,
}

impl Transaction<'_> {
    fn injected(&self, at: inject::Point) -> Option<Injection> {
        self.cfg.inject.clone().filter(|i| i.point() == at)
    }

    /// An injected [`Injection::KillOld`] striking at `at`.
    fn strike_old_at(&self, at: inject::Point) -> anyhow::Result<()> {
        self.injected(at)
            .map_or(Ok(()), |i| i.strike_old(self.cfg.pid))
    }

    fn run(&mut self) -> Result<(), Abort> {
        let cfg = self.cfg;
        let pid = cfg.pid;
        let mut parts = Participants {
            old: None,
            future: None,
            reversed: None,
        };

        // Start-up: everything that can happen while the old process serves.
        let t = Instant::now();
        self.phase = Some((Phase::Startup, t));
        let startup = |e: anyhow::Error| Abort::new(Phase::Startup, e);
        let context = tracer::procfs::exec_context(pid)
            .map_err(|e| startup(anyhow::Error::new(e).context("reading its execution context")))?;
        raise_nofile_limit();
        let listeners = spawned::listeners(pid).map_err(|e| startup(e.into()))?;
        let old_max_fd = tracer::fd::list_fds(pid)
            .map_err(|e| startup(e.into()))?
            .iter()
            .map(|f| f.fd)
            .max()
            .unwrap_or(2);
        let stdio = stdio_of(pid).map_err(|e| startup(e.into()))?;
        let high_fd = spare_fd_base(&context, old_max_fd, listeners.len())
            .map_err(|e| startup(anyhow::anyhow!(e)))?;
        let channel = tracer::fdpass::FdChannel::new().map_err(|e| startup(e.into()))?;
        let hold = match &cfg.at {
            Some(f) => HoldAt::Function(f.clone()),
            None => HoldAt::Quiescent(tracer::quiesce::default_quiescent_calls()),
        };
        let future_plan = spawned::SpawnPlan {
            program: &cfg.to,
            context: &context,
            stdio: &stdio,
            listeners: &listeners,
            high_fd,
            channel: Some(std::os::fd::AsRawFd::as_raw_fd(&channel.remote_end())),
            hold: &hold,
            timeout: cfg.step_timeout,
        };
        let reversed_plan = spawned::SpawnPlan {
            program: &self.checked.old_exe,
            channel: None,
            ..future_plan.clone()
        };
        let future =
            spawned::spawn_held("the future", &future_plan).map_err(|e| startup(e.into()))?;
        self.report.new_pid = Some(future.tracee.pid().as_raw());
        parts.future = Some(future);
        if cfg.verify {
            let reversed = spawned::spawn_held("the reversed process", &reversed_plan)
                .map_err(|e| startup(e.into()))?;
            self.report.reversed_pid = Some(reversed.tracee.pid().as_raw());
            parts.reversed = Some(reversed);
        }
        self.report.listeners = listeners.len() as u64;
        let rebound = &parts.future.as_ref().expect("spawned").rebound;
        for l in &listeners {
            if !rebound.iter().any(|(_, old)| *old == l.fd) {
                self.report.warnings.push(format!(
                    "the new version did not bind {:?} during its start-up; the old process's \
                     listening socket (descriptor {}) is installed at the same number anyway",
                    l.addr, l.fd
                ));
            }
        }
        let future_pid = parts
            .future
            .as_ref()
            .map(|f| f.tracee.pid())
            .expect("spawned");
        let future_start = capture_held(
            &parts.future.as_ref().expect("spawned").tracee,
            &self.checked.new_binary,
        )
        .map_err(|e| {
            startup(anyhow::Error::new(e).context("capturing the future's start-up state"))
        })?;
        let reversed_start = match &parts.reversed {
            Some(r) => Some(
                capture_held(&r.tracee, &self.checked.old_binary).map_err(|e| {
                    startup(
                        anyhow::Error::new(e)
                            .context("capturing the reversed process's start-up state"),
                    )
                })?,
            ),
            None => None,
        };
        let old_prepared = Prepared::with_binary(pid, self.checked.old_binary.clone())
            .map_err(|e| startup(e.into()))?;
        // The captures of the verification, prepared now so that loading nothing counts as
        // downtime: their mappings of libc do not change.
        let (future_prepared, reversed_prepared) = if cfg.verify {
            let future = Prepared::with_binary(future_pid, self.checked.new_binary.clone())
                .map_err(|e| startup(e.into()))?;
            let reversed_pid = parts.reversed.as_ref().expect("spawned").tracee.pid();
            let reversed = Prepared::with_binary(reversed_pid, self.checked.old_binary.clone())
                .map_err(|e| startup(e.into()))?;
            (Some(future), Some(reversed))
        } else {
            (None, None)
        };
        let future_dest = DestinationData::new(future_pid, future_start)
            .map_err(|e| startup(anyhow::Error::new(e).context("the future's symbols")))?;
        let reversed_dest = match (&parts.reversed, reversed_start) {
            (Some(r), Some(start)) => {
                Some(DestinationData::new(r.tracee.pid(), start).map_err(|e| {
                    startup(anyhow::Error::new(e).context("the reversed process's symbols"))
                })?)
            }
            _ => None,
        };
        self.report.times_ms.startup = ms(t.elapsed());

        // Quiesce: the old process stops here; downtime starts.
        let t = Instant::now();
        self.phase = Some((Phase::Quiesce, t));
        let quiesce = |e: anyhow::Error| Abort::new(Phase::Quiesce, e);
        self.strike_old_at(inject::Point::Quiesce)
            .map_err(quiesce)?;
        let mut old = Tracee::seize(pid).map_err(|e| quiesce(e.into()))?;
        self.downtime_start = Some(Instant::now());
        let old_held = self.quiesce_old(&mut old).map_err(|e| {
            // Not quiescent in time: it runs on untouched.
            quiesce(e)
        });
        parts.old = Some(old);
        old_held?;
        self.report.times_ms.quiesce = ms(t.elapsed());

        // Capture.
        let t = Instant::now();
        self.phase = Some((Phase::Capture, t));
        let capture_err = |e: anyhow::Error| Abort::new(Phase::Capture, e);
        self.strike_old_at(inject::Point::Capture)
            .map_err(capture_err)?;
        if let Some(i) = self
            .injected(inject::Point::Capture)
            .filter(|i| *i == Injection::CaptureError)
        {
            return Err(capture_err(i.fail_here()));
        }
        let old_tracee = parts.old.as_ref().expect("seized");
        let old_state = old_prepared
            .capture(old_tracee)
            .map_err(|e| capture_err(anyhow::Error::new(e).context(format!("process {pid}"))))?;
        let old_fds = OldFds {
            fds: fds::take_all(pid).map_err(|e| capture_err(e.into()))?,
        };
        self.report.times_ms.capture = ms(t.elapsed());
        if let Some(o) = &mut self.observed {
            o.old_state = Some(old_state.graph.clone());
        }

        // Forward.
        let t = Instant::now();
        self.phase = Some((Phase::Forward, t));
        let forward_err = |e: anyhow::Error| Abort::new(Phase::Forward, e);
        self.strike_old_at(inject::Point::Forward)
            .map_err(forward_err)?;
        let rules = &cfg.rules;
        let forward_plan = plan_mapped(
            &old_state.graph,
            &old_state.binary,
            &future_dest.destination(&self.checked.new_binary),
            &self.checked.forward,
            rules,
        )
        .map_err(|e| forward_err(anyhow::Error::new(e).context("planning the forward transfer")))?;
        self.report.objects = forward_plan.objects.len() as u64;
        self.report.heap_objects = forward_plan.heap_objects() as u64;
        self.report.bytes = forward_plan.bytes();
        let future = parts.future.as_mut().expect("spawned");
        let injected = self.injected(inject::Point::Forward);
        let applied = transfer_into(
            future,
            &forward_plan,
            &future_dest,
            injected,
            cfg.call_timeout,
            &mut self.report.fault,
        )
        .map_err(|e| forward_err(e.context(format!("into the future (process {future_pid})"))))?;
        let kernel = fds::install(
            future,
            &channel,
            &old_fds.fds,
            &old_state,
            &forward_plan,
            &applied,
        )
        .map_err(|e| {
            forward_err(e.context(format!(
                "descriptors into the future (process {future_pid})"
            )))
        })?;
        self.report.fds = kernel.fds;
        self.report.epolls = kernel.epolls;
        self.report.times_ms.forward = ms(t.elapsed());

        // The verification's big values are kept until after the commit: freeing them is
        // not the old process's downtime.
        let mut leftovers: Vec<Box<dyn std::any::Any>> = Vec::new();
        if cfg.verify {
            // Reverse: the future's state back into a fresh old version.
            let t = Instant::now();
            self.phase = Some((Phase::Reverse, t));
            let reverse_err = |e: anyhow::Error| Abort::new(Phase::Reverse, e);
            self.strike_old_at(inject::Point::Reverse)
                .map_err(reverse_err)?;
            let future = parts.future.as_ref().expect("spawned");
            let future_state = future_prepared
                .expect("prepared when verifying")
                .capture(&future.tracee)
                .map_err(|e| {
                    reverse_err(
                        anyhow::Error::new(e).context("capturing the future after the transfer"),
                    )
                })?;
            if let Some(o) = &mut self.observed {
                o.future_state = Some(future_state.graph.clone());
            }
            let reversed = parts.reversed.as_mut().expect("spawned when verifying");
            let reversed_pid = reversed.tracee.pid();
            let reversed_dest = reversed_dest.expect("prepared when verifying");
            let reverse_plan = plan_mapped(
                &future_state.graph,
                &future_state.binary,
                &reversed_dest.destination(&self.checked.old_binary),
                &self.checked.reverse,
                &rules.inverted(),
            )
            .map_err(|e| {
                reverse_err(anyhow::Error::new(e).context("planning the reverse transfer"))
            })?;
            let injected = self.injected(inject::Point::Reverse);
            transfer_into(
                reversed,
                &reverse_plan,
                &reversed_dest,
                injected,
                cfg.call_timeout,
                &mut self.report.fault,
            )
            .map_err(|e| {
                reverse_err(e.context(format!("into the reversed process {reversed_pid}")))
            })?;
            self.report.times_ms.reverse = ms(t.elapsed());

            // Compare.
            let t = Instant::now();
            self.phase = Some((Phase::Compare, t));
            let compare_err = |e: anyhow::Error| Abort::new(Phase::Compare, e);
            self.strike_old_at(inject::Point::Compare)
                .map_err(compare_err)?;
            if let Some(i) = self.injected(inject::Point::Compare) {
                i.corrupt(&reversed.tracee, &self.checked.old_binary)
                    .map_err(compare_err)?;
            }
            let reversed_state = reversed_prepared
                .expect("prepared when verifying")
                .capture(&reversed.tracee)
                .map_err(|e| {
                    compare_err(anyhow::Error::new(e).context("capturing the reversed process"))
                })?;
            let exclusions = verify::Exclusions::from_forward(&self.checked.forward);
            let diff = verify::diff(
                &self.checked.old_binary,
                &old_state.graph,
                &reversed_state.graph,
                &exclusions,
            );
            self.report.times_ms.compare = ms(t.elapsed());
            if !diff.is_exact() {
                self.report.differences_total = diff.total() as u64;
                self.report.differences = diff.differences;
                return Err(Abort {
                    phase: Phase::Compare,
                    message: format!(
                        "the time-traveling check failed: the state transferred forward and back \
                         differs from the original in {} place(s)",
                        self.report.differences_total
                    ),
                });
            }
            leftovers.push(Box::new(future_state));
            leftovers.push(Box::new(reverse_plan));
            leftovers.push(Box::new(reversed_state));
            leftovers.push(Box::new(reversed_dest));
        }

        if !cfg.commit {
            return Err(Abort {
                phase: Phase::Commit,
                message: "not committed (dry run): every check passed".into(),
            });
        }
        let committed = self.commit(parts);
        drop(leftovers);
        committed
    }

    /// Brings the old process to its quiescent point (or its `--at` function).
    fn quiesce_old(&self, old: &mut Tracee) -> Result<(), anyhow::Error> {
        let cfg = self.cfg;
        match &cfg.at {
            None => {
                old.interrupt_all(cfg.quiesce_timeout)?;
                tracer::quiesce::quiesce(
                    old,
                    &tracer::quiesce::default_quiescent_calls(),
                    cfg.quiesce_timeout,
                )?;
            }
            Some(function) => {
                let addr = tracer::symbols::lookup(cfg.pid, function).map_err(|e| {
                    anyhow::Error::new(e).context(format!(
                        "--at {function}: no such function in process {}",
                        cfg.pid
                    ))
                })?;
                old.run(cfg.quiesce_timeout, Some(addr), None)?;
            }
        }
        Ok(())
    }

    /// Lets the future run in the old process's place; kills the reversed and the old
    /// process.
    fn commit(&mut self, mut parts: Participants) -> Result<(), Abort> {
        let commit_err = |e: anyhow::Error| Abort::new(Phase::Commit, e);
        // It was stopped throughout, so only a SIGKILL (an operator, the OOM killer) can have
        // ended it: its end was wanted, and the new version must not take over.
        if exited(self.cfg.pid) {
            return Err(commit_err(anyhow::anyhow!(
                "it was killed while stopped for the update, so the new version does not take over"
            )));
        }
        if let Some(r) = parts.reversed.take() {
            // How it ended does not matter: it was killed.
            let _status = r.tracee.kill().map_err(|e| commit_err(e.into()))?;
        }
        let mut future = parts.future.take().expect("spawned");
        let released = release_future(&mut future);
        if let Err(e) = released {
            parts.future = Some(future);
            return Err(commit_err(e));
        }
        // Signals pending in the old process (blocked ones a signalfd would read, say) are
        // the program's state too: queue them for the future, delivered when it runs.
        for sig in pending_signals(self.cfg.pid) {
            if let Err(e) = nix::sys::signal::kill(future.tracee.pid(), sig) {
                self.report.warnings.push(format!(
                    "passing pending signal {sig} to the new process: {e}"
                ));
            }
        }
        // The point of no return: the future runs, the old process must go.
        let downtime = self.downtime_start.map(|s| s.elapsed());
        if let Err(e) = future.tracee.detach() {
            self.report
                .warnings
                .push(format!("detaching the new process: {e}"));
        }
        if let Some(d) = downtime {
            self.report.times_ms.downtime = ms(d);
        }
        if let Some(old) = parts.old.take() {
            let pid = old.pid();
            if let Err(e) = old.kill() {
                self.report
                    .warnings
                    .push(format!("ending the old process {pid}: {e}"));
            }
        }
        Ok(())
    }
}

/// The signals pending for process `pid` or any of its threads (`ShdPnd`, `SigPnd` of
/// `/proc/PID/task/*/status`), standard signals once each (as the kernel keeps them).
fn pending_signals(pid: Pid) -> Vec<nix::sys::signal::Signal> {
    let mut mask = 0u64;
    let parse = |v: Result<String, tracer::Error>| {
        v.ok()
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    mask |= parse(tracer::procfs::status_field(pid, "ShdPnd"));
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let text = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            if let Some(v) = text.lines().find_map(|l| l.strip_prefix("SigPnd:")) {
                mask |= u64::from_str_radix(v.trim(), 16).unwrap_or(0);
            }
        }
    }
    (1..=64)
        .filter(|n| mask & (1u64 << (n - 1)) != 0)
        .filter_map(|n| nix::sys::signal::Signal::try_from(n).ok())
        .collect()
}

/// Makes the future's held call return `EINTR` (its arguments came from its own start-up
/// state), and closes what only the update needed in it.
fn release_future(future: &mut spawned::Spawned) -> anyhow::Result<()> {
    let tid = future.held.tid();
    {
        let mut s = tracer::remote::RemoteSession::open(&mut future.tracee, tid)?;
        for fd in future.spare_fds.iter().chain(future.channel_fd.iter()) {
            s.close_fd(*fd)?;
        }
        s.close()?;
    }
    if let Held::Syscall(_) = future.held {
        future
            .tracee
            .skip_held_syscall(tid, -(libc::EINTR as i64))?;
    }
    Ok(())
}

/// The target side of a transfer, owned.
struct DestinationData {
    state: LiveCapture,
    symbols: tracer::symbols::SymbolResolver,
    rodata: Vec<(tracer::RemoteAddr, Vec<u8>)>,
    malloc: tracer::RemoteAddr,
    free: tracer::RemoteAddr,
}

impl DestinationData {
    fn new(pid: Pid, state: LiveCapture) -> tracer::Result<DestinationData> {
        let symbols = tracer::symbols::SymbolResolver::new(pid)?;
        let rodata = read_only_data(pid)?;
        let malloc = symbols.lookup_in("libc.so", "malloc")?;
        let free = symbols.lookup_in("libc.so", "free")?;
        Ok(DestinationData {
            state,
            symbols,
            rodata,
            malloc,
            free,
        })
    }

    fn destination<'a>(&'a self, binary: &'a Binary) -> Destination<'a> {
        Destination {
            binary,
            bias: self.state.bias,
            symbols: &self.symbols,
            graph: &self.state.graph,
            rodata: &self.rodata,
        }
    }
}

/// Captures a spawned process held at its quiescent point.
fn capture_held(tracee: &Tracee, binary: &Arc<Binary>) -> Result<LiveCapture, CaptureError> {
    Prepared::with_binary(tracee.pid(), binary.clone())?.capture(tracee)
}

/// Carries out `plan` in the held process `to`, with an injected fault if any.
fn transfer_into(
    to: &mut spawned::Spawned,
    plan: &Plan,
    dest: &DestinationData,
    injected: Option<Injection>,
    call_timeout: Duration,
    fault: &mut Option<String>,
) -> anyhow::Result<Applied> {
    let tid = to.held.tid();
    let mut corrupted = None;
    if let Some(i) = &injected {
        i.before_apply(&to.tracee, &dest.symbols, dest.malloc)?;
        let mut bad = plan.clone();
        *fault = i.corrupt_plan(&mut bad);
        if fault.is_some() {
            corrupted = Some(bad);
        } else if !matches!(i, Injection::Plan { .. }) {
            *fault = Some(format!("{i:?}"));
        }
    }
    let plan = corrupted.as_ref().unwrap_or(plan);
    let mut s = tracer::remote::RemoteSession::open(&mut to.tracee, tid)?;
    s.set_call_timeout(call_timeout);
    let applied = apply(&mut s, dest.malloc, dest.free, plan)?;
    s.close()?;
    if let Some(i) = injected {
        i.after_apply(&to.tracee, plan, &applied)?;
    }
    Ok(applied)
}

/// The old process's standard descriptors, taken into ours, for the spawned processes.
fn stdio_of(pid: Pid) -> tracer::Result<Vec<(OwnedFd, RawFd)>> {
    let mut out = Vec::new();
    for n in 0..3 {
        match tracer::fd::take_fd(pid, n) {
            Ok(fd) => out.push((fd, n)),
            // A closed standard descriptor stays closed.
            Err(tracer::Error::Fd {
                source: nix::Error::EBADF,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Where the spawned processes keep the listening sockets and the descriptor channel: above
/// every descriptor of the old process, below its descriptor limit.
fn spare_fd_base(
    ctx: &tracer::procfs::ExecContext,
    old_max: RawFd,
    n: usize,
) -> Result<RawFd, String> {
    let limit = ctx
        .rlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |l| l.soft.min(1 << 20)) as RawFd;
    let base = old_max + 16;
    if base + n as RawFd + 1 >= limit {
        return Err(format!(
            "no room for {} spare descriptors above descriptor {old_max} under the process's \
             limit of {limit} open files",
            n + 1
        ));
    }
    Ok(base)
}

/// Raises our own soft limit of open files to the hard limit: every descriptor of the old
/// process passes through us.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}
