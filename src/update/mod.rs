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
pub mod coverage;
mod fds;
pub mod frames;
pub mod held;
pub mod inject;
mod output;
mod spawned;

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracer::{Pid, Tracee};

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
    /// In a dry run (`commit` false), let the new version serve its probation before the
    /// abort (fault campaigns that crash it after the cut-over): requests it reads then are
    /// lost to the clients.
    pub probation_in_dry_run: bool,
    /// A fault to inject (tests and experiments).
    pub inject: Option<Injection>,
    /// How long the new version must run, with the old process kept stopped, before the old
    /// one is killed.
    pub probation: Duration,
    /// The argument vector to start the new version with, when `/proc/PID/cmdline` no longer
    /// is the old process's (it rewrote its title).
    pub argv: Option<Vec<std::ffi::OsString>>,
}

/// The default of [`Config::probation`]: long enough for a loop to go round with the
/// transferred state and for a crash on it to show, short enough to be unnoticed.
pub const DEFAULT_PROBATION: Duration = Duration::from_millis(300);

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
            probation_in_dry_run: false,
            inject: None,
            probation: DEFAULT_PROBATION,
            argv: None,
        }
    }
}

/// The phases of an update, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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
    /// The future runs with the transferred state, the old process still stopped.
    Probation,
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
            Phase::Probation => "probation",
            Phase::Commit => "commit",
        };
        f.write_str(s)
    }
}

/// Which process of the transaction something happened to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The running process being updated.
    Old,
    /// The new version.
    Future,
    /// The fresh old version of the time-traveling check.
    Reversed,
    /// Not known.
    Other,
}

/// Why an update did not happen, as a kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// Refused: something the update cannot carry (state the capture does not cover, no
    /// matching held point, bad input).
    Refused,
    /// A step failed (the message says which and why).
    Failed,
    /// A process of the transaction ended.
    Exited {
        /// Its id.
        pid: i32,
        /// Which one.
        role: Role,
        /// How.
        how: String,
    },
    /// The old process itself ended during the update.
    OldExited,
    /// The time-traveling check found differences.
    Differences,
    /// A dry run ended before the commit.
    DryRun,
}

/// Why an update did not happen; the old process was left as it was.
#[derive(Debug, thiserror::Error)]
#[error("{phase}: {message}")]
pub struct Abort {
    /// Where it failed.
    pub phase: Phase,
    /// What kind of failure.
    pub cause: Cause,
    /// What went wrong, with the cause chain.
    pub message: String,
}

impl Abort {
    fn refused(phase: Phase, message: String) -> Abort {
        Abort {
            phase,
            cause: Cause::Refused,
            message,
        }
    }

    fn new(phase: Phase, e: impl Into<anyhow::Error>) -> Abort {
        let e: anyhow::Error = e.into();
        let cause = e
            .chain()
            .find_map(|c| match c.downcast_ref::<tracer::Error>() {
                Some(tracer::Error::Gone { pid, status }) => Some(Cause::Exited {
                    pid: pid.as_raw(),
                    role: Role::Other,
                    how: describe_status(*status),
                }),
                _ => None,
            })
            .unwrap_or(if phase == Phase::Check {
                Cause::Refused
            } else {
                Cause::Failed
            });
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
        Abort {
            phase,
            cause,
            message,
        }
    }
}

/// How the update ended.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The new version runs in the old one's place, and survived its probation.
    Committed,
    /// Refused before the old process was stopped: nothing was touched.
    Refused {
        /// The phase that refused.
        phase: Phase,
        /// Why.
        reason: String,
    },
    /// Stopped, then resumed: the old process runs on as before.
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
    /// The future serving on probation, the old process stopped but kept.
    pub probation: f64,
    /// From the moment the old process stops serving to the moment the new one serves (the
    /// start of probation), or the old one serves again on an abort.
    pub downtime: f64,
    /// Everything.
    pub total: f64,
}

impl Times {
    fn slot(&mut self, phase: Phase) -> Option<&mut f64> {
        match phase {
            Phase::Startup => Some(&mut self.startup),
            Phase::Quiesce => Some(&mut self.quiesce),
            Phase::Capture => Some(&mut self.capture),
            Phase::Forward => Some(&mut self.forward),
            Phase::Reverse => Some(&mut self.reverse),
            Phase::Compare => Some(&mut self.compare),
            Phase::Probation => Some(&mut self.probation),
            Phase::Check | Phase::Commit => None,
        }
    }
}

/// What became of the time-traveling check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The state came back exactly.
    Passed,
    /// It found differences.
    Failed,
    /// `--no-verify`.
    Skipped,
    /// The update ended before it.
    NotReached,
}

/// Where the processes were held, and how the new version's call was resumed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HeldReport {
    /// The old process's wait, seen by the probe.
    pub old: Option<String>,
    /// The new version's held call.
    pub new: Option<String>,
    /// How the new version's held call is resumed.
    pub resume: Option<held::Resume>,
}

/// How the new version did on probation.
#[derive(Clone, Debug, Serialize)]
pub struct ProbationReport {
    /// How long it ran.
    pub ms: f64,
    /// How many times its held thread came back to a wait.
    pub waits: u64,
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
    /// Whether the time-traveling check ran and the state came back exactly.
    pub verified: bool,
    /// What became of the time-traveling check.
    pub check: Check,
    /// Why it did not commit, as a kind (absent when committed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// Whether the old process still runs (false after a commit, or when it ended).
    pub old_running: bool,
    /// Where the processes were held.
    pub held: HeldReport,
    /// How the new version did on probation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probation: Option<ProbationReport>,
    /// State the capture does not cover (each one refuses the update).
    pub findings: Vec<coverage::Finding>,
    /// The last of what the spawned processes printed, when they did not take over.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub spawned_output: String,
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
    fn new(pid: Pid, verify: bool) -> Report {
        Report {
            outcome: Outcome::Refused {
                phase: Phase::Check,
                reason: String::new(),
            },
            old_pid: pid.as_raw(),
            new_pid: None,
            reversed_pid: None,
            verified: false,
            check: if verify {
                Check::NotReached
            } else {
                Check::Skipped
            },
            cause: None,
            old_running: true,
            held: HeldReport::default(),
            probation: None,
            findings: Vec::new(),
            spawned_output: String::new(),
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

    /// A report of an update refused in its check, nothing touched.
    pub fn refused(pid: Pid, abort: &Abort) -> Report {
        let mut r = Report::new(pid, true);
        r.outcome = Outcome::Refused {
            phase: abort.phase,
            reason: abort.message.clone(),
        };
        r.cause = Some(abort.cause.clone());
        r
    }

    /// The exit status the command line gives this outcome: 0 committed, 1 aborted (the old
    /// process serves as before), 3 refused (nothing touched), 4 the old process ended during
    /// the update (nothing transplant started is left). 2 is for usage errors.
    pub fn exit_status(&self) -> u8 {
        match &self.outcome {
            Outcome::Committed => 0,
            _ if !self.old_running => 4,
            Outcome::Refused { .. } => 3,
            Outcome::Aborted { .. } => 1,
        }
    }

    fn role_of(&self, pid: i32) -> Role {
        if pid == self.old_pid {
            Role::Old
        } else if Some(pid) == self.new_pid {
            Role::Future
        } else if Some(pid) == self.reversed_pid {
            Role::Reversed
        } else {
            Role::Other
        }
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
        downtime_end: None,
        observed: keep.then(|| Observed {
            old_binary: checked.old_binary.clone(),
            new_binary: checked.new_binary.clone(),
            old_state: None,
            future_state: None,
        }),
        phase: None,
        output: None,
    };
    let result = txn
        .startup()
        .and_then(|s| txn.quiesce(s))
        .and_then(|s| txn.capture(s))
        .and_then(|c| txn.forward(c))
        .and_then(|f| txn.verify(f))
        .and_then(|v| txn.probation(v))
        .and_then(|p| txn.commit(p));
    let phase_under_way = txn.phase;
    let downtime = (txn.downtime_start, txn.downtime_end);
    let observed = txn.observed.take();
    let output = txn.output.take();
    if let Err(mut abort) = result {
        // The failed phase's time so far (a hang's time limit, say).
        if let Some((phase, since)) = phase_under_way.filter(|(p, _)| *p == abort.phase) {
            if let Some(slot) = report.times_ms.slot(phase).filter(|v| **v == 0.0) {
                *slot = ms(since.elapsed());
            }
        }
        // Whatever failed, a process that ended under us is the reason to tell first.
        let old_gone = exited(cfg.pid);
        if old_gone {
            abort.cause = Cause::OldExited;
            abort.message = format!(
                "process {} exited during the update (it was killed, or ended by itself), so the \
                 new version does not take over either: {}",
                cfg.pid, abort.message
            );
        } else if let Cause::Exited { pid, role, .. } = &mut abort.cause {
            *role = report.role_of(*pid);
        }
        report.cause = Some(abort.cause.clone());
        report.old_running = !old_gone;
        report.outcome = if abort.phase <= Phase::Startup && !old_gone {
            Outcome::Refused {
                phase: abort.phase,
                reason: abort.message,
            }
        } else {
            Outcome::Aborted {
                phase: abort.phase,
                reason: abort.message,
            }
        };
        if let Some(o) = &output {
            report.spawned_output = o.tail();
        }
    }
    match downtime {
        (Some(start), Some(end)) => report.times_ms.downtime = ms(end - start),
        (Some(start), None) => report.times_ms.downtime = ms(start.elapsed()),
        _ => {}
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

impl Participants {
    fn future(&self) -> &spawned::Spawned {
        self.future
            .as_ref()
            .expect("the future lives until the commit")
    }

    fn future_mut(&mut self) -> &mut spawned::Spawned {
        self.future
            .as_mut()
            .expect("the future lives until the commit")
    }
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
    /// When the old process stopped serving.
    downtime_start: Option<Instant>,
    /// When the future (or, on an abort, the old process) serves again.
    downtime_end: Option<Instant>,
    /// What to hand back to [`update_observed`].
    observed: Option<Observed>,
    /// The phase under way and when it began: an abort reports its time too.
    phase: Option<(Phase, Instant)>,
    /// What the spawned processes print.
    output: Option<output::Output>,
}

/// The spawned processes held at the point that matches the old process's, their start-up
/// states captured, and everything prepared that need not wait for the stop.
struct Started {
    parts: Participants,
    channel: tracer::fdpass::FdChannel,
    listeners: Vec<spawned::Listener>,
    old_at: held::Point,
    /// What the probe saw of the old process (its objects, frames), unless `--at`.
    old_probe: Option<held::OldAt>,
    /// The future's program frames at its held point, with what its loop carries.
    frames: Option<frames::Frames>,
    resume: held::Resume,
    old_prepared: Option<Prepared>,
    future_prepared: Option<Prepared>,
    reversed_prepared: Option<Prepared>,
    future_dest: DestinationData,
    reversed_dest: Option<DestinationData>,
}

/// The old process stopped at its quiescent point.
struct Stopped {
    s: Started,
}

/// Its state captured, its descriptors taken.
struct Captured {
    s: Started,
    old_state: LiveCapture,
    old_fds: Vec<fds::OldFd>,
}

/// The state transferred into the future.
struct Forwarded {
    c: Captured,
}

/// The time-traveling check passed (or was skipped); what it used, kept until after the
/// commit (freeing it is not downtime).
struct Verified {
    f: Forwarded,
    leftovers: Vec<Box<dyn std::any::Any>>,
}

/// The future ran on probation and is stopped again, the old process still stopped.
struct Proven {
    v: Verified,
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

    fn begin(&mut self, phase: Phase) -> Instant {
        let t = Instant::now();
        self.phase = Some((phase, t));
        t
    }

    /// Start-up: everything that can happen while the old process serves. Refusals here
    /// leave it untouched (the probe stops it for an instant only).
    fn startup(&mut self) -> Result<Started, Abort> {
        let cfg = self.cfg;
        let pid = cfg.pid;
        let t = self.begin(Phase::Startup);
        let startup = |e: anyhow::Error| Abort::new(Phase::Startup, e);
        let refuse = |message: String| Abort::refused(Phase::Startup, message);

        // What the capture would not cover, and where the old process waits.
        let mut findings = coverage::before_stop(
            pid,
            &self.checked.old_binary,
            &cfg.rules,
            cfg.argv.is_some(),
        );
        if !findings.is_empty() {
            self.report.findings = findings.clone();
            return Err(refuse(coverage::refusal(&findings)));
        }
        let old_at = if cfg.at.is_some() {
            None
        } else {
            let at = held::probe_old(
                pid,
                &self.checked.old_binary,
                &cfg.rules,
                cfg.quiesce_timeout,
            )
            .map_err(|e| startup(e.context("probing where the old process waits")))?;
            findings.extend(at.findings.iter().cloned());
            Some(at)
        };
        let old_probe = old_at;
        let old_at = old_probe.as_ref().map(|p| p.main.clone());
        self.report.findings = findings.clone();
        if !findings.is_empty() {
            return Err(refuse(coverage::refusal(&findings)));
        }
        if let Some(at) = &old_at {
            self.report.held.old = Some(at.describe());
        }

        let mut context = tracer::procfs::exec_context(pid)
            .map_err(|e| startup(anyhow::Error::new(e).context("reading its execution context")))?;
        if let Some(argv) = &cfg.argv {
            context.argv = argv.clone();
        }
        raise_nofile_limit();
        let listeners = spawned::listeners(pid)
            .map_err(|e| startup(anyhow::Error::new(e).context("its listening sockets")))?;
        let old_max_fd = tracer::fd::list_fds(pid)
            .map_err(|e| startup(anyhow::Error::new(e).context("its descriptors")))?
            .iter()
            .map(|f| f.fd)
            .max()
            .unwrap_or(2);
        let open_std: Vec<RawFd> = (0..3)
            .filter(|&n| matches!(tracer::fd::fd_info(pid, n), Ok(Some(_))))
            .collect();
        let mut out = output::Output::new(&open_std).map_err(|e| {
            startup(anyhow::Error::new(e).context("pipes for the spawned processes"))
        })?;
        let high_fd = spare_fd_base(&context, old_max_fd, listeners.len())
            .map_err(|e| startup(anyhow::anyhow!(e)))?;
        let channel = tracer::fdpass::FdChannel::new()
            .map_err(|e| startup(anyhow::Error::new(e).context("a descriptor channel")))?;
        let hold = match &cfg.at {
            Some(f) => HoldAt::Function(f.clone()),
            None => HoldAt::Quiescent(tracer::quiesce::default_quiescent_calls()),
        };
        let remote_end = channel.remote_end();
        let future_plan = spawned::SpawnPlan {
            program: &cfg.to,
            context: &context,
            stdio: &out.child_ends,
            listeners: &listeners,
            high_fd,
            channel: Some(std::os::fd::AsRawFd::as_raw_fd(&remote_end)),
            hold: &hold,
            matching: old_at.as_ref(),
            timeout: cfg.step_timeout,
        };
        let mut parts = Participants {
            old: None,
            future: None,
            reversed: None,
        };

        // The future, held where the old process waits, and how its held call will resume:
        // tried on it now, while nothing depends on it (a fresh one if it did not survive).
        let mut resume = held::Resume::Reissue;
        let mut tried: Vec<String> = Vec::new();
        'spawn: loop {
            let future =
                spawned::spawn_held("the future", &future_plan).map_err(|e| startup(e.into()))?;
            self.report.new_pid = Some(future.tracee.pid().as_raw());
            parts.future = Some(future);
            let Some(old) = &old_at else { break };
            let tracer::Held::Syscall(entry) = parts.future().held else {
                break;
            };
            let candidates = held::Resume::candidates(entry.nr as i64);
            let remaining: Vec<held::Resume> = candidates
                .iter()
                .copied()
                .filter(|c| !tried.iter().any(|t| t.starts_with(&format!("{c:?}"))))
                .collect();
            let Some(&first) = remaining.first() else {
                return Err(refuse(format!(
                    "the new version's held {} cannot be resumed safely: {}",
                    held::name(entry.nr as i64),
                    tried.join("; ")
                )));
            };
            if first == held::Resume::Reissue {
                resume = first;
                break;
            }
            for c in remaining {
                match self.try_resume(parts.future_mut(), c, old, &entry) {
                    Ok(()) => {
                        resume = c;
                        break 'spawn;
                    }
                    Err(why) => {
                        tried.push(format!("{c:?}: {why}"));
                        if parts.future().tracee.exit_status().is_some()
                            || exited(parts.future().tracee.pid())
                        {
                            // It did not survive: a fresh one for the next candidate.
                            parts.future = None;
                            continue 'spawn;
                        }
                    }
                }
            }
            return Err(refuse(format!(
                "the new version cannot be resumed safely from its held {}: {}",
                held::name(entry.nr as i64),
                tried.join("; ")
            )));
        }
        self.report.held.resume = Some(resume);
        let frames = match &old_probe {
            Some(probe) => Some(self.match_frames(&mut parts, probe, resume)?),
            None => None,
        };
        if let tracer::Held::Syscall(e) = parts.future().held {
            self.report.held.new = Some(held::Point::new(e.tid, e.nr as i64, e.args).describe());
        }
        if cfg.verify {
            let reversed_plan = spawned::SpawnPlan {
                program: &self.checked.old_exe,
                channel: None,
                ..future_plan.clone()
            };
            let reversed = spawned::spawn_held("the reversed process", &reversed_plan)
                .map_err(|e| startup(e.into()))?;
            self.report.reversed_pid = Some(reversed.tracee.pid().as_raw());
            parts.reversed = Some(reversed);
        }
        out.close_child_ends();
        self.output = Some(out);
        self.report.listeners = listeners.len() as u64;
        for l in &listeners {
            if !parts.future().rebound.iter().any(|(_, old)| *old == l.fd) {
                self.report.warnings.push(format!(
                    "the new version did not bind {:?} during its start-up; the old process's \
                     listening socket (descriptor {}) is installed at the same number anyway",
                    l.addr, l.fd
                ));
            }
        }
        let future_pid = parts.future().tracee.pid();
        let future_start =
            capture_held(&parts.future().tracee, &self.checked.new_binary).map_err(|e| {
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
        let old_prepared =
            Prepared::with_binary(pid, self.checked.old_binary.clone()).map_err(|e| {
                startup(anyhow::Error::new(e).context("preparing the capture of the old process"))
            })?;
        // The captures of the verification, prepared now so that loading nothing counts as
        // downtime: their mappings of libc do not change.
        let (future_prepared, reversed_prepared) = match &parts.reversed {
            Some(r) => (
                Some(
                    Prepared::with_binary(future_pid, self.checked.new_binary.clone()).map_err(
                        |e| {
                            startup(
                                anyhow::Error::new(e)
                                    .context("preparing the capture of the future"),
                            )
                        },
                    )?,
                ),
                Some(
                    Prepared::with_binary(r.tracee.pid(), self.checked.old_binary.clone())
                        .map_err(|e| {
                            startup(
                                anyhow::Error::new(e)
                                    .context("preparing the capture of the reversed process"),
                            )
                        })?,
                ),
            ),
            None => (None, None),
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
        let old_at = old_at.unwrap_or_else(|| {
            let e = parts.future().held;
            let nr = match e {
                tracer::Held::Syscall(e) => e.nr as i64,
                tracer::Held::Breakpoint { .. } => -1,
            };
            held::Point::new(e.tid(), nr, [0; 6])
        });
        Ok(Started {
            parts,
            channel,
            listeners,
            old_at,
            old_probe,
            frames,
            resume,
            old_prepared: Some(old_prepared),
            future_prepared,
            reversed_prepared,
            future_dest,
            reversed_dest,
        })
    }

    /// The future's program frames at its held point: the same functions as the old
    /// process's, from the outermost inwards, and no state in them that the new version's
    /// frames lack (see [`frames`]): found by one round of its loop with its frames poisoned.
    fn match_frames(
        &self,
        parts: &mut Participants,
        probe: &held::OldAt,
        resume: held::Resume,
    ) -> Result<frames::Frames, Abort> {
        let cfg = self.cfg;
        let startup = |e: anyhow::Error| Abort::new(Phase::Startup, e);
        let refuse = |message: String| Abort::refused(Phase::Startup, message);
        let future = parts.future_mut();
        let future_pid = future.tracee.pid();
        let images = crate::stack::ProcessImages::load_with(
            future_pid,
            &crate::debuginfo::LoadOptions::default(),
            Some(self.checked.new_binary.clone()),
        )
        .map_err(|e| startup(anyhow::Error::new(e).context("the new version's objects")))?;
        let read = |t: &Tracee, tid: Pid| {
            frames::read(t, tid, &images, &self.checked.new_binary).map_err(|e| {
                startup(anyhow::Error::new(e).context(format!(
                    "unwinding the new version (process {future_pid}) at its held point"
                )))
            })
        };
        let mut new = read(&future.tracee, future.held.tid())?;
        if let tracer::Held::Syscall(e) = &future.held {
            frames::written_by_call(&mut new, e);
        }
        let no_match = |new: &frames::Frames| {
            refuse(format!(
                "no matching held point: the old process waits in {} through {}, but the new \
                 version's start-up reached a wait through {}",
                probe.main.describe(),
                probe.frames.describe(),
                new.describe()
            ))
        };
        if !frames::chains_match(&probe.frames, &new, &cfg.rules) {
            return Err(no_match(&new));
        }
        // The locals that differ from the old process's get the old process's values for one
        // round of its loop: what the loop writes it computes again on every round; what
        // keeps the old value it carries (and gets back its own).
        let differing: Vec<usize> = frames::differences(
            &probe.frames,
            &self.checked.old_binary,
            &probe.regions,
            &new,
            &self.checked.new_binary,
            cfg.pid,
            &cfg.rules,
        )
        .into_iter()
        .filter_map(|(i, _)| i)
        .filter(|&i| new.slots[i].addr.is_some())
        .collect();
        if resume != held::Resume::Reissue && !differing.is_empty() {
            let seeded = frames::seed(
                &future.tracee,
                &new,
                &self.checked.new_binary,
                &differing,
                &probe.frames,
            )
            .map_err(|e| startup(anyhow::Error::new(e).context("seeding its frames")))?;
            let entry = match future.held {
                tracer::Held::Syscall(e) => e,
                tracer::Held::Breakpoint { .. } => unreachable!("held at a call"),
            };
            if let Err(why) = self.try_resume(future, resume, &probe.main, &entry) {
                let names: Vec<String> = differing
                    .iter()
                    .map(|&i| format!("{}::{}", new.slots[i].function, new.slots[i].name))
                    .collect();
                return Err(refuse(format!(
                    "the new version's loop reads locals of its frames that hold other values in \
                     the old process before it computes them again (with the old process's \
                     values, {why}): its frames hold state, which is not carried yet; locals: {}",
                    names.join(", ")
                )));
            }
            frames::unseed(&future.tracee, &mut new, &seeded)
                .map_err(|e| startup(anyhow::Error::new(e).context("restoring its frames")))?;
            let again = read(&future.tracee, future.held.tid())?;
            if !frames::chains_match(&probe.frames, &again, &cfg.rules) {
                return Err(no_match(&again));
            }
        }
        let findings = frames::compare(
            &probe.frames,
            &self.checked.old_binary,
            &probe.regions,
            &new,
            &self.checked.new_binary,
            cfg.pid,
            &cfg.rules,
        );
        if !findings.is_empty() {
            return Err(refuse(coverage::refusal(&findings)));
        }
        Ok(new)
    }

    /// Tries `resume` on the held future before anything depends on it: it must come back,
    /// alive, to a wait that corresponds to the old process's within the start-up limit.
    /// It is then held there.
    fn try_resume(
        &self,
        future: &mut spawned::Spawned,
        resume: held::Resume,
        old: &held::Point,
        entry: &tracer::SyscallEntry,
    ) -> Result<(), String> {
        let stack_only = stack_writer(future.tracee.pid(), entry.tid);
        resume
            .apply(&mut future.tracee, entry, &stack_only)
            .map_err(|e| e.to_string())?;
        let calls = tracer::quiesce::default_quiescent_calls();
        let tid = entry.tid;
        let mut elsewhere = None;
        let mut hook = |mem: &tracer::ProcessMemory,
                        e: &tracer::SyscallEntry|
         -> tracer::Result<tracer::SyscallAction> {
            let nr = e.nr as i64;
            if nr == libc::SYS_bind || nr == libc::SYS_listen {
                elsewhere = Some(format!("it called {}", held::name(nr)));
                return Ok(tracer::SyscallAction::Hold);
            }
            if e.tid != tid || !calls.contains(&nr) || !held::blocks(mem, e)? {
                return Ok(tracer::SyscallAction::Run);
            }
            if !held::corresponds(old, e) {
                elsewhere = Some(format!(
                    "it went on to {} instead",
                    held::Point::new(e.tid, nr, e.args).describe()
                ));
            }
            Ok(tracer::SyscallAction::Hold)
        };
        let held = future
            .tracee
            .run(self.cfg.step_timeout, None, Some(&mut hook))
            .map_err(|e| match e {
                tracer::Error::Gone { status, .. } => {
                    format!("it ended ({})", describe_status(status))
                }
                tracer::Error::Timeout { .. } => format!(
                    "it did not come back to a {} within {} ms",
                    old.call,
                    self.cfg.step_timeout.as_millis()
                ),
                e => e.to_string(),
            })?;
        if let Some(why) = elsewhere {
            return Err(why);
        }
        future.held = held;
        Ok(())
    }

    /// Quiesce: the old process stops here; downtime starts. It is held where the future is
    /// held: a call that corresponds to the future's.
    fn quiesce(&mut self, mut s: Started) -> Result<Stopped, Abort> {
        let t = self.begin(Phase::Quiesce);
        let quiesce = |e: anyhow::Error| Abort::new(Phase::Quiesce, e);
        self.strike_old_at(inject::Point::Quiesce)
            .map_err(quiesce)?;
        let mut old = Tracee::seize(self.cfg.pid).map_err(|e| quiesce(e.into()))?;
        self.downtime_start = Some(Instant::now());
        let held = self.quiesce_old(&mut old, &s);
        s.parts.old = Some(old);
        held.map_err(quiesce)?;
        // Everything the probe saw before, again on the stopped process.
        let old = s.parts.old.as_ref().expect("seized");
        let mut findings = coverage::stopped(old, &self.checked.old_binary, &self.cfg.rules);
        if let (Some(probe), Some(new)) = (&s.old_probe, &s.frames) {
            let tid = self.cfg.pid;
            let now = frames::read(old, tid, &probe.images, &self.checked.old_binary)
                .map_err(|e| quiesce(anyhow::Error::new(e).context("unwinding its main thread")))?;
            if !frames::chains_match(&now, new, &self.cfg.rules) {
                return Err(Abort::refused(
                    Phase::Quiesce,
                    format!(
                        "stopped, the old process waits through {}, not where the new version is \
                         held ({})",
                        now.describe(),
                        new.describe()
                    ),
                ));
            }
            let regions = frames::Regions::of(tid, now.extent);
            findings.extend(frames::compare(
                &now,
                &self.checked.old_binary,
                &regions,
                new,
                &self.checked.new_binary,
                tid,
                &self.cfg.rules,
            ));
        }

        if !findings.is_empty() {
            self.report.findings.extend(findings.clone());
            return Err(Abort::refused(Phase::Quiesce, coverage::refusal(&findings)));
        }
        self.report.times_ms.quiesce = ms(t.elapsed());
        Ok(Stopped { s })
    }

    /// Brings the old process to the quiescent point the future is held at (or its `--at`
    /// function).
    fn quiesce_old(&self, old: &mut Tracee, s: &Started) -> Result<(), anyhow::Error> {
        let cfg = self.cfg;
        match &cfg.at {
            None => {
                old.interrupt_all(cfg.quiesce_timeout)?;
                // Only calls of the same kind as the future's held one.
                let want = match s.parts.future().held {
                    tracer::Held::Syscall(e) => held::class(e.nr as i64),
                    tracer::Held::Breakpoint { .. } => held::class(s.old_at.nr),
                };
                let calls: Vec<i64> = tracer::quiesce::default_quiescent_calls()
                    .into_iter()
                    .filter(|&nr| {
                        held::class(nr) == want
                            || (nr == libc::SYS_restart_syscall
                                && matches!(want, Some(held::Class::Sleep | held::Class::Poll)))
                    })
                    .collect();
                let q = tracer::quiesce::quiesce(old, &calls, cfg.quiesce_timeout)?;
                // A re-issued call must be the very call the old process would make.
                if s.resume == held::Resume::Reissue {
                    if let tracer::Held::Syscall(f) = s.parts.future().held {
                        let (tid, nr) = q.threads[0];
                        let r = old.regs(tid)?;
                        let non_pointer = |nr: i64, a: &[u64]| match held::class(nr) {
                            Some(held::Class::Accept | held::Class::Read | held::Class::Recv) => {
                                vec![a[0]]
                            }
                            _ => vec![],
                        };
                        let old_args = [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9];
                        if non_pointer(nr, &old_args) != non_pointer(f.nr as i64, &f.args) {
                            anyhow::bail!(
                                "the old process waits in {} but the new version in {}: \
                                 resuming the new version's call would wait on something else",
                                held::Point::new(tid, nr, old_args).describe(),
                                held::Point::new(f.tid, f.nr as i64, f.args).describe()
                            );
                        }
                    }
                }
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

    /// Capture of the old state (it is only read) and of its descriptors.
    fn capture(&mut self, st: Stopped) -> Result<Captured, Abort> {
        let mut s = st.s;
        let pid = self.cfg.pid;
        let t = self.begin(Phase::Capture);
        let capture_err = |e: anyhow::Error| Abort::new(Phase::Capture, e);
        self.strike_old_at(inject::Point::Capture)
            .map_err(capture_err)?;
        if let Some(i) = self
            .injected(inject::Point::Capture)
            .filter(|i| *i == Injection::CaptureError)
        {
            return Err(capture_err(i.fail_here()));
        }
        let old_tracee = s.parts.old.as_ref().expect("seized");
        let old_state = s
            .old_prepared
            .take()
            .expect("prepared at start-up")
            .capture(old_tracee)
            .map_err(|e| capture_err(anyhow::Error::new(e).context(format!("process {pid}"))))?;
        let findings = coverage::pointers_into_stacks(pid, &old_state.graph, &self.cfg.rules);
        if !findings.is_empty() {
            self.report.findings.extend(findings.clone());
            return Err(Abort::refused(Phase::Capture, coverage::refusal(&findings)));
        }
        let old_fds = fds::take_all(pid).map_err(|e| capture_err(e.into()))?;
        self.report.times_ms.capture = ms(t.elapsed());
        if let Some(o) = &mut self.observed {
            o.old_state = Some(old_state.graph.clone());
        }
        Ok(Captured {
            s,
            old_state,
            old_fds,
        })
    }

    /// Forward transfer: memory, then descriptors and epoll instances.
    fn forward(&mut self, mut c: Captured) -> Result<Forwarded, Abort> {
        let t = self.begin(Phase::Forward);
        let forward_err = |e: anyhow::Error| Abort::new(Phase::Forward, e);
        self.strike_old_at(inject::Point::Forward)
            .map_err(forward_err)?;
        let forward_plan = plan_mapped(
            &c.old_state.graph,
            &c.old_state.binary,
            &c.s.future_dest.destination(&self.checked.new_binary),
            &self.checked.forward,
            &self.cfg.rules,
        )
        .map_err(|e| forward_err(anyhow::Error::new(e).context("planning the forward transfer")))?;
        self.report.objects = forward_plan.objects.len() as u64;
        self.report.heap_objects = forward_plan.heap_objects() as u64;
        self.report.bytes = forward_plan.bytes();
        let future_pid = c.s.parts.future().tracee.pid();
        let injected = self.injected(inject::Point::Forward);
        let applied = transfer_into(
            c.s.parts.future_mut(),
            &forward_plan,
            &c.s.future_dest,
            injected,
            self.cfg.call_timeout,
            &mut self.report.fault,
        )
        .map_err(|e| forward_err(e.context(format!("into the future (process {future_pid})"))))?;
        let kernel = fds::install(
            c.s.parts.future_mut(),
            &c.s.channel,
            &c.old_fds,
            &c.old_state,
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
        drop(forward_plan);
        drop(applied);
        c.old_fds.clear();
        Ok(Forwarded { c })
    }

    /// The time-traveling check: the future's state back into a fresh old version, captured
    /// and compared with the old state.
    fn verify(&mut self, mut f: Forwarded) -> Result<Verified, Abort> {
        let mut leftovers: Vec<Box<dyn std::any::Any>> = Vec::new();
        if !self.cfg.verify {
            self.report.check = Check::Skipped;
            return Ok(Verified { f, leftovers });
        }
        let s = &mut f.c.s;
        let t = self.begin(Phase::Reverse);
        let reverse_err = |e: anyhow::Error| Abort::new(Phase::Reverse, e);
        self.strike_old_at(inject::Point::Reverse)
            .map_err(reverse_err)?;
        let future_state = s
            .future_prepared
            .take()
            .expect("prepared when verifying")
            .capture(&s.parts.future().tracee)
            .map_err(|e| {
                reverse_err(
                    anyhow::Error::new(e).context("capturing the future after the transfer"),
                )
            })?;
        if let Some(o) = &mut self.observed {
            o.future_state = Some(future_state.graph.clone());
        }
        let reversed = s.parts.reversed.as_mut().expect("spawned when verifying");
        let reversed_pid = reversed.tracee.pid();
        let reversed_dest = s.reversed_dest.take().expect("prepared when verifying");
        let reverse_plan = plan_mapped(
            &future_state.graph,
            &future_state.binary,
            &reversed_dest.destination(&self.checked.old_binary),
            &self.checked.reverse,
            &self.cfg.rules.inverted(),
        )
        .map_err(|e| reverse_err(anyhow::Error::new(e).context("planning the reverse transfer")))?;
        let injected = self.injected(inject::Point::Reverse);
        transfer_into(
            reversed,
            &reverse_plan,
            &reversed_dest,
            injected,
            self.cfg.call_timeout,
            &mut self.report.fault,
        )
        .map_err(|e| reverse_err(e.context(format!("into the reversed process {reversed_pid}"))))?;
        self.report.times_ms.reverse = ms(t.elapsed());

        let t = self.begin(Phase::Compare);
        let compare_err = |e: anyhow::Error| Abort::new(Phase::Compare, e);
        self.strike_old_at(inject::Point::Compare)
            .map_err(compare_err)?;
        if let Some(i) = self.injected(inject::Point::Compare) {
            i.corrupt(&reversed.tracee, &self.checked.old_binary)
                .map_err(compare_err)?;
        }
        let reversed_state = s
            .reversed_prepared
            .take()
            .expect("prepared when verifying")
            .capture(&reversed.tracee)
            .map_err(|e| {
                compare_err(anyhow::Error::new(e).context("capturing the reversed process"))
            })?;
        let exclusions = verify::Exclusions::from_forward(&self.checked.forward);
        let diff = verify::diff(
            &self.checked.old_binary,
            &f.c.old_state.graph,
            &reversed_state.graph,
            &exclusions,
        );
        self.report.times_ms.compare = ms(t.elapsed());
        if !diff.is_exact() {
            self.report.check = Check::Failed;
            self.report.differences_total = diff.total() as u64;
            self.report.differences = diff.differences;
            return Err(Abort {
                phase: Phase::Compare,
                cause: Cause::Differences,
                message: format!(
                    "the time-traveling check failed: the state transferred forward and back \
                     differs from the original in {} place(s)",
                    self.report.differences_total
                ),
            });
        }
        self.report.check = Check::Passed;
        self.report.verified = true;
        leftovers.push(Box::new(future_state));
        leftovers.push(Box::new(reverse_plan));
        leftovers.push(Box::new(reversed_state));
        leftovers.push(Box::new(reversed_dest));
        Ok(Verified { f, leftovers })
    }

    /// Probation: the future resumes its held call and serves, while the old process stays
    /// stopped. It must stay alive for `--probation`, come back to a wait of its main loop
    /// (or still be in the resumed one), and never bind an address it inherited again (a
    /// start-up run a second time). Any of these aborts: the future is killed, the old
    /// process resumes.
    fn probation(&mut self, mut v: Verified) -> Result<Proven, Abort> {
        if !self.cfg.commit && !self.cfg.probation_in_dry_run {
            return Err(Abort {
                phase: Phase::Commit,
                cause: Cause::DryRun,
                message: "not committed (dry run): every check passed".into(),
            });
        }
        let t = self.begin(Phase::Probation);
        let probation_err = |e: anyhow::Error| Abort::new(Phase::Probation, e);
        let cfg = self.cfg;
        // It was stopped throughout, so only a SIGKILL (an operator, the OOM killer) can have
        // ended it: its end was wanted, and the new version must not take over.
        if exited(cfg.pid) {
            return Err(probation_err(anyhow::anyhow!(
                "found gone as the new version was about to take over"
            )));
        }
        let s = &mut v.f.c.s;
        if let Some(r) = s.parts.reversed.take() {
            // How it ended does not matter: it was killed.
            let _status = r.tracee.kill();
        }
        let resume = s.resume;
        let old_at = s.old_at.clone();
        let listeners: Vec<tracer::fd::SockAddr> =
            s.listeners.iter().map(|l| l.addr.clone()).collect();
        let future = s.parts.future_mut();
        let future_pid = future.tracee.pid();
        close_spare_fds(future).map_err(probation_err)?;
        // Signals pending in the old process (blocked ones a signalfd would read, say) are
        // the program's state too: queue them for the future, delivered when it runs.
        for sig in pending_signals(cfg.pid) {
            if let Err(e) = nix::sys::signal::kill(future_pid, sig) {
                self.report.warnings.push(format!(
                    "passing pending signal {sig} to the new process: {e}"
                ));
            }
        }
        let entry = match future.held {
            tracer::Held::Syscall(e) => Some(e),
            tracer::Held::Breakpoint { .. } => None,
        };
        if let Some(e) = &entry {
            let writer = stack_writer(future_pid, e.tid);
            resume.apply(&mut future.tracee, e, &writer).map_err(|e| {
                probation_err(anyhow::Error::new(e).context("resuming its held call"))
            })?;
        }
        if let Some(i) = self.injected(inject::Point::Probation) {
            i.strike_new(future_pid).map_err(probation_err)?;
        }
        // From here the new version serves.
        self.downtime_end = Some(Instant::now());
        let held_tid = future.held.tid();
        let calls = tracer::quiesce::default_quiescent_calls();
        let mut waits = 0u64;
        let mut rebound: Option<String> = None;
        let mut hook = |mem: &tracer::ProcessMemory,
                        e: &tracer::SyscallEntry|
         -> tracer::Result<tracer::SyscallAction> {
            let nr = e.nr as i64;
            if nr == libc::SYS_bind {
                let len = (e.args[2] as usize).min(128);
                let raw = tracer::Memory::read_vec(mem, tracer::RemoteAddr::new(e.args[1]), len)?;
                if let Some(addr) = spawned::decode_sockaddr(&raw) {
                    if listeners.contains(&addr) {
                        rebound = Some(format!("{addr:?}"));
                        return Ok(tracer::SyscallAction::Hold);
                    }
                }
            }
            if e.tid == held_tid && calls.contains(&nr) && held::blocks(mem, e)? {
                waits += 1;
            }
            Ok(tracer::SyscallAction::Run)
        };
        let ran = future.tracee.run(cfg.probation, None, Some(&mut hook));
        let lived = t.elapsed();
        self.report.probation = Some(ProbationReport {
            ms: ms(lived),
            waits,
        });
        let died = |how: String| {
            probation_err(anyhow::anyhow!(
                "the new version (process {future_pid}) {how} {:.0} ms after it took over; \
                 process {} resumes",
                ms(lived),
                cfg.pid
            ))
        };
        match ran {
            Err(tracer::Error::Timeout { .. }) => {}
            Err(tracer::Error::Gone { status, .. }) => {
                let mut a = died(describe_status(status));
                a.cause = Cause::Exited {
                    pid: future_pid.as_raw(),
                    role: Role::Future,
                    how: describe_status(status),
                };
                return Err(a);
            }
            Err(e) => return Err(probation_err(e.into())),
            Ok(_) => {
                return Err(died(format!(
                    "bound {} again, an address it inherited (it ran its start-up again)",
                    rebound.unwrap_or_default()
                )))
            }
        }
        if waits == 0 {
            // Still in the resumed call is at rest too (an `accept` no client reached).
            let at_rest = matches!(
                tracer::quiesce::thread_point(&future.tracee, held_tid, &calls),
                Ok(tracer::quiesce::ThreadPoint::Quiescent { .. })
            );
            if !at_rest || resume != held::Resume::Reissue {
                return Err(died(format!(
                    "did not come back to a wait of its main loop (the old process waits in {})",
                    old_at.describe()
                )));
            }
        }
        self.report.times_ms.probation = ms(lived);
        Ok(Proven { v })
    }

    /// The point of no return: the future runs free, the old process is killed.
    fn commit(&mut self, p: Proven) -> Result<(), Abort> {
        let _t = self.begin(Phase::Commit);
        if !self.cfg.commit {
            return Err(Abort {
                phase: Phase::Commit,
                cause: Cause::DryRun,
                message: "not committed (dry run): every check passed, probation too".into(),
            });
        }
        let commit_err = |e: anyhow::Error| Abort::new(Phase::Commit, e);
        let Verified { f, leftovers } = p.v;
        let mut parts = f.c.s.parts;
        if exited(self.cfg.pid) {
            return Err(commit_err(anyhow::anyhow!(
                "found gone at the commit, after the new version's probation"
            )));
        }
        let future = parts.future.take().expect("spawned");
        if let Err(e) = future.tracee.detach() {
            self.report
                .warnings
                .push(format!("detaching the new process: {e}"));
        }
        if let Some(old) = parts.old.take() {
            let pid = old.pid();
            if let Err(e) = old.kill() {
                self.report
                    .warnings
                    .push(format!("ending the old process {pid}: {e}"));
            }
        }
        self.report.outcome = Outcome::Committed;
        self.report.old_running = false;
        drop(leftovers);
        Ok(())
    }
}

/// `exited with status 1`, `killed by SIGSEGV`.
fn describe_status(status: Option<tracer::ExitStatus>) -> String {
    match status {
        Some(Ok(code)) => format!("exited with status {code}"),
        Some(Err(sig)) => format!("was killed by {sig}"),
        None => "ended".into(),
    }
}

/// Where a resumed call's results may be cleared in process `pid`: thread `tid`'s stack and
/// the executable's own writable data, never the heap, which the transfer rewrote.
fn stack_writer(pid: Pid, tid: Pid) -> impl Fn(u64, u64) -> bool {
    let maps = tracer::procfs::maps(pid).unwrap_or_default();
    let exe = tracer::procfs::exe(pid).ok();
    let sp = tracer::procfs::read_text(pid, &format!("task/{tid}/syscall"))
        .ok()
        .and_then(|t| t.split_whitespace().nth(7).map(str::to_owned))
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok());
    move |addr: u64, len: u64| {
        let Some(i) = maps
            .iter()
            .position(|m| m.range.contains(tracer::RemoteAddr::new(addr)))
        else {
            return false;
        };
        let m = &maps[i];
        if addr + len > m.range.end.get() || !m.perms.write {
            return false;
        }
        let stack = matches!(m.kind, tracer::procfs::MappingKind::Stack)
            || sp.is_some_and(|sp| m.range.contains(tracer::RemoteAddr::new(sp)));
        let own_data = m.path().is_some() && m.path() == exe.as_deref()
            || (i > 0
                && maps[i - 1].range.end == m.range.start
                && maps[i - 1].path().is_some()
                && maps[i - 1].path() == exe.as_deref()
                && matches!(m.kind, tracer::procfs::MappingKind::Anonymous));
        stack || own_data
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

/// Closes what only the update needed in the future: the listening sockets it was given
/// before its `bind`s took them, and the descriptor channel.
fn close_spare_fds(future: &mut spawned::Spawned) -> anyhow::Result<()> {
    let tid = future.held.tid();
    let mut s = tracer::remote::RemoteSession::open(&mut future.tracee, tid)?;
    for fd in future.spare_fds.iter().chain(future.channel_fd.iter()) {
        s.close_fd(*fd)?;
    }
    s.close()?;
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
