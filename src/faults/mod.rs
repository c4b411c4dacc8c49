//! Fault-injection campaigns: many update transactions against one live process, each with
//! one fault injected into the state transfer (or a crash or hang of a spawned process), none
//! committed. Each run is classified by what caught the fault — an error, crash or timeout;
//! the time-traveling check; or nothing — and an undetected fault by whether it harmed the new
//! version's state, in state the round trip covers or in state only the new version has.
//! After every run the old process must still be alive with its state unchanged.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracer::Pid;

use crate::debuginfo::Binary;
use crate::mapping::rules::Rules;
use crate::mapping::Mapping;
use crate::state::StateGraph;
use crate::update::corrupt::PlanFault;
use crate::update::inject::{CrashSignal, Point};
use crate::update::{self, Injection, Outcome, Phase};
use crate::verify::{self, Exclusions};

/// One kind of fault a run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A plan fault in the forward transfer (old -> future).
    Forward(PlanFault),
    /// A plan fault in the reverse transfer (future -> reversed).
    Reverse(PlanFault),
    /// The future crashes during the forward transfer.
    FutureCrash(CrashSignal),
    /// The future hangs during the forward transfer.
    FutureHang,
    /// The reversed process crashes during the reverse transfer.
    ReversedCrash(CrashSignal),
    /// The reversed process hangs during the reverse transfer.
    ReversedHang,
    /// The new version crashes right after it takes over (a `SIGSEGV`): probation must
    /// catch it, and the old process resume.
    NewCrash,
}

impl Kind {
    /// Every kind.
    pub fn all() -> Vec<Kind> {
        let mut v: Vec<Kind> = PlanFault::ALL.iter().map(|f| Kind::Forward(*f)).collect();
        v.extend(PlanFault::ALL.iter().map(|f| Kind::Reverse(*f)));
        for s in CrashSignal::ALL {
            v.push(Kind::FutureCrash(s));
        }
        v.push(Kind::FutureHang);
        v.push(Kind::ReversedCrash(CrashSignal::Segv));
        v.push(Kind::ReversedHang);
        v.push(Kind::NewCrash);
        v
    }

    /// The name used on the command line and in tables (`bit_flip`, `reverse_bit_flip`,
    /// `future_crash_sigsegv`, ...).
    pub fn name(&self) -> String {
        let plan = |f: &PlanFault| {
            serde_json::to_value(f)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        match self {
            Kind::Forward(f) => plan(f),
            Kind::Reverse(f) => format!("reverse_{}", plan(f)),
            Kind::FutureCrash(s) => format!("future_crash_{}", s.name()),
            Kind::FutureHang => "future_hang".into(),
            Kind::ReversedCrash(s) => format!("reversed_crash_{}", s.name()),
            Kind::ReversedHang => "reversed_hang".into(),
            Kind::NewCrash => "new_crash_after_cut_over".into(),
        }
    }

    /// Parses [`Kind::name`]s, or a group: `forward`, `reverse`, `crash`, `hang`, `all`.
    pub fn parse_list(names: &[String]) -> Result<Vec<Kind>, String> {
        let all = Kind::all();
        let mut out = Vec::new();
        for n in names {
            let group: Vec<Kind> = match n.as_str() {
                "all" => all.clone(),
                "forward" => all.iter().copied().filter(|k| matches!(k, Kind::Forward(_))).collect(),
                "reverse" => all.iter().copied().filter(|k| matches!(k, Kind::Reverse(_))).collect(),
                "crash" => all
                    .iter()
                    .copied()
                    .filter(|k| {
                        matches!(k, Kind::FutureCrash(_) | Kind::ReversedCrash(_) | Kind::NewCrash)
                    })
                    .collect(),
                "hang" => vec![Kind::FutureHang, Kind::ReversedHang],
                name => match all.iter().find(|k| k.name() == name) {
                    Some(k) => vec![*k],
                    None => {
                        return Err(format!(
                            "unknown fault kind `{name}`; kinds: {} (or all, forward, reverse, crash, hang)",
                            all.iter().map(Kind::name).collect::<Vec<_>>().join(", ")
                        ))
                    }
                },
            };
            for k in group {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        Ok(out)
    }

    fn injection(self, pick: u64) -> Injection {
        match self {
            Kind::Forward(fault) => Injection::Plan {
                at: Point::Forward,
                fault,
                pick,
            },
            Kind::Reverse(fault) => Injection::Plan {
                at: Point::Reverse,
                fault,
                pick,
            },
            Kind::FutureCrash(signal) => Injection::Crash {
                at: Point::Forward,
                signal,
            },
            Kind::FutureHang => Injection::Hang { at: Point::Forward },
            Kind::ReversedCrash(signal) => Injection::Crash {
                at: Point::Reverse,
                signal,
            },
            Kind::ReversedHang => Injection::Hang { at: Point::Reverse },
            Kind::NewCrash => Injection::CrashNew,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// What caught a fault, or what it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// An error, crash or timeout aborted the transaction.
    DetectedByError,
    /// The new version failed its probation (it crashed, exited or started over after it
    /// took over), and the old process resumed.
    DetectedByProbation,
    /// The time-traveling check found a difference.
    DetectedByCheck,
    /// Not detected, and the new version's state equals a fault-free transfer's.
    Harmless,
    /// Not detected, and the new version's state differs in state the round trip covers.
    HarmfulCovered,
    /// Not detected, and the new version's state differs only in state only it has (which
    /// the reverse transfer cannot bring back, so the check cannot see).
    HarmfulUncovered,
    /// The fault found no place to strike in this state (e.g. no pointer at all).
    NotApplicable,
}

/// One run of a campaign.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// Its number.
    pub run: u64,
    /// The fault.
    pub kind: Kind,
    /// Its name.
    pub kind_name: String,
    /// Where it struck.
    pub location: Option<String>,
    /// What came of it.
    pub verdict: Verdict,
    /// The phase the transaction aborted in.
    pub phase: Phase,
    /// Why it aborted (or, for an undetected fault, the first differing path).
    pub reason: String,
    /// Whether the old process was alive after the run.
    pub old_alive: bool,
    /// Whether the old process's state was the same as before the campaign.
    pub old_unchanged: bool,
    /// How long the run took, in ms.
    pub ms: f64,
}

/// Counts for one kind (or all).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tally {
    /// Runs.
    pub runs: u64,
    /// Caught by an error, crash or timeout.
    pub detected_by_error: u64,
    /// Caught by the time-traveling check.
    pub detected_by_check: u64,
    /// Caught by probation after the cut-over.
    pub detected_by_probation: u64,
    /// Undetected, harmless.
    pub harmless: u64,
    /// Undetected, harmful in state the round trip covers.
    pub harmful_covered: u64,
    /// Undetected, harmful only in state only the new version has.
    pub harmful_uncovered: u64,
    /// The fault had no place to strike.
    pub not_applicable: u64,
    /// Runs after which the old process was alive with its state unchanged.
    pub old_survived: u64,
}

impl Tally {
    fn add(&mut self, r: &Run) {
        self.runs += 1;
        match r.verdict {
            Verdict::DetectedByError => self.detected_by_error += 1,
            Verdict::DetectedByProbation => self.detected_by_probation += 1,
            Verdict::DetectedByCheck => self.detected_by_check += 1,
            Verdict::Harmless => self.harmless += 1,
            Verdict::HarmfulCovered => self.harmful_covered += 1,
            Verdict::HarmfulUncovered => self.harmful_uncovered += 1,
            Verdict::NotApplicable => self.not_applicable += 1,
        }
        if r.old_alive && r.old_unchanged {
            self.old_survived += 1;
        }
    }
}

/// A campaign's configuration.
#[derive(Clone, Debug)]
pub struct CampaignConfig {
    /// The live process.
    pub pid: Pid,
    /// The new version.
    pub to: PathBuf,
    /// Rules.
    pub rules: Rules,
    /// How many runs.
    pub runs: u64,
    /// The seed: the same seed, process and binaries give the same faults.
    pub seed: u64,
    /// The kinds to draw from.
    pub kinds: Vec<Kind>,
    /// How long a call into a spawned process may take before it counts as hung.
    pub hang_timeout: Duration,
    /// How long to wait for the old process to be quiescent in each run.
    pub quiesce_timeout: Duration,
}

/// A campaign's results.
#[derive(Clone, Debug, Serialize)]
pub struct Campaign {
    /// The process.
    pub pid: i32,
    /// The new version.
    pub to: String,
    /// The seed.
    pub seed: u64,
    /// Per kind.
    pub by_kind: BTreeMap<String, Tally>,
    /// All runs.
    pub totals: Tally,
    /// Every run.
    pub runs: Vec<Run>,
    /// The fault-free transaction every run is compared with: its times.
    pub baseline_ms: f64,
    /// Whether the old process was alive, with its state unchanged, after every run.
    pub old_survived_all: bool,
    /// Total time, in seconds.
    pub seconds: f64,
}

/// Why a campaign could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// The update itself is refused (bad input).
    #[error("cannot update process {pid}: {abort}")]
    Refused {
        /// The process.
        pid: Pid,
        /// Why.
        abort: update::Abort,
    },
    /// The fault-free transaction fails: there is nothing to inject faults into.
    #[error("the fault-free update of process {pid} does not pass ({phase}: {reason}); a campaign needs one that does")]
    Baseline {
        /// The process.
        pid: Pid,
        /// Where it failed.
        phase: Phase,
        /// Why.
        reason: String,
    },
    /// The old process died.
    #[error("process {pid} died during the campaign (after run {run})")]
    OldDied {
        /// The process.
        pid: Pid,
        /// The last run.
        run: u64,
    },
}

/// splitmix64: a small, well-mixed generator; the same seed gives the same campaign.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs a campaign; `progress` is called after each run.
pub fn run_campaign(
    cfg: &CampaignConfig,
    mut progress: impl FnMut(&Run),
) -> Result<Campaign, CampaignError> {
    let t0 = Instant::now();
    let pid = cfg.pid;
    let base_cfg = {
        let mut c = update::Config::new(pid, &cfg.to);
        c.rules = cfg.rules.clone();
        c.commit = false;
        c.call_timeout = cfg.hang_timeout;
        c.quiesce_timeout = cfg.quiesce_timeout;
        c
    };
    // The fault-free transaction: what every run's future is compared with.
    let (report, baseline) = update::update_observed(&base_cfg)
        .map_err(|abort| CampaignError::Refused { pid, abort })?;
    let dry_run_passed = matches!(
        &report.outcome,
        Outcome::Aborted {
            phase: Phase::Commit,
            ..
        }
    );
    let (Some(base_old), Some(base_future), true) =
        (baseline.old_state, baseline.future_state, dry_run_passed)
    else {
        let (phase, reason) = match report.outcome {
            Outcome::Aborted { phase, reason } | Outcome::Refused { phase, reason } => {
                (phase, reason)
            }
            Outcome::Committed => (Phase::Commit, "committed".into()),
        };
        return Err(CampaignError::Baseline { pid, phase, reason });
    };
    let old_binary = baseline.old_binary;
    let new_binary = baseline.new_binary;
    let reverse = Mapping::reverse(&old_binary, &new_binary, &cfg.rules);
    let new_only = Exclusions::from_forward(&reverse);

    let mut runs = Vec::new();
    let mut rng = cfg.seed;
    for run in 0..cfg.runs {
        let t = Instant::now();
        let r1 = splitmix(&mut rng);
        let pick = splitmix(&mut rng);
        let kind = cfg.kinds[(r1 % cfg.kinds.len() as u64) as usize];
        let mut c = base_cfg.clone();
        c.inject = Some(kind.injection(pick));
        // A crash after the cut-over needs the cut-over: the dry run goes through probation.
        c.probation_in_dry_run = kind == Kind::NewCrash;
        let (report, got) = match update::update_observed(&c) {
            Ok(x) => x,
            Err(abort) => {
                if !tracer::procfs::exists(pid) {
                    return Err(CampaignError::OldDied { pid, run });
                }
                return Err(CampaignError::Refused { pid, abort });
            }
        };
        let (phase, reason) = match &report.outcome {
            Outcome::Aborted { phase, reason } | Outcome::Refused { phase, reason } => {
                (*phase, reason.clone())
            }
            Outcome::Committed => (Phase::Commit, "committed".into()),
        };
        let verdict = if report.fault.is_none()
            && !matches!(
                kind,
                Kind::FutureCrash(_)
                    | Kind::FutureHang
                    | Kind::ReversedCrash(_)
                    | Kind::ReversedHang
                    | Kind::NewCrash
            ) {
            Verdict::NotApplicable
        } else {
            match phase {
                Phase::Commit => classify(
                    &new_binary,
                    &base_future,
                    got.future_state.as_ref(),
                    &new_only,
                ),
                Phase::Compare if report.differences_total > 0 => Verdict::DetectedByCheck,
                Phase::Probation => Verdict::DetectedByProbation,
                _ => Verdict::DetectedByError,
            }
        };
        let old_alive = tracer::procfs::exists(pid)
            && !tracer::procfs::status_field(pid, "State").is_ok_and(|s| s.starts_with('Z'));
        let old_unchanged = match &got.old_state {
            Some(now) => verify::diff(&old_binary, &base_old, now, &Exclusions::none()).is_exact(),
            // Not captured this run (it failed before): look now.
            None => old_alive,
        };
        let r = Run {
            run,
            kind,
            kind_name: kind.name(),
            location: report.fault.clone(),
            verdict,
            phase,
            reason: first_line(&reason),
            old_alive,
            old_unchanged,
            ms: t.elapsed().as_secs_f64() * 1e3,
        };
        progress(&r);
        let dead = !old_alive;
        runs.push(r);
        if dead {
            return Err(CampaignError::OldDied { pid, run });
        }
    }
    let mut by_kind: BTreeMap<String, Tally> = BTreeMap::new();
    let mut totals = Tally::default();
    for r in &runs {
        by_kind.entry(r.kind_name.clone()).or_default().add(r);
        totals.add(r);
    }
    Ok(Campaign {
        pid: pid.as_raw(),
        to: cfg.to.display().to_string(),
        seed: cfg.seed,
        old_survived_all: totals.old_survived == totals.runs,
        by_kind,
        totals,
        runs,
        baseline_ms: report.times_ms.total,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// An undetected fault: harmless if the future's state is the fault-free one's; else harmful,
/// covered or not by the round trip.
fn classify(
    new_binary: &Binary,
    baseline: &StateGraph,
    future: Option<&StateGraph>,
    new_only: &Exclusions,
) -> Verdict {
    let Some(future) = future else {
        return Verdict::HarmfulCovered;
    };
    if verify::diff(new_binary, baseline, future, &Exclusions::none()).is_exact() {
        Verdict::Harmless
    } else if verify::diff(new_binary, baseline, future, new_only).is_exact() {
        Verdict::HarmfulUncovered
    } else {
        Verdict::HarmfulCovered
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

/// The campaign's table, as text.
pub fn table(c: &Campaign) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:>6} {:>8} {:>8} {:>9} {:>9} {:>11} {:>5} {:>8}",
        "kind", "runs", "error", "check", "harmless", "harmful", "harmful-new", "n/a", "old-ok"
    );
    let row = |out: &mut String, name: &str, t: &Tally| {
        let _ = writeln!(
            out,
            "{:<28} {:>6} {:>8} {:>8} {:>9} {:>9} {:>11} {:>5} {:>8}",
            name,
            t.runs,
            t.detected_by_error,
            t.detected_by_check,
            t.harmless,
            t.harmful_covered,
            t.harmful_uncovered,
            t.not_applicable,
            t.old_survived
        );
    };
    for (k, t) in &c.by_kind {
        row(&mut out, k, t);
    }
    row(&mut out, "total", &c.totals);
    let _ = writeln!(
        out,
        "\nerror = detected by an error, crash or timeout; check = detected by the time-traveling check;\n\
         harmful = undetected, wrong state the round trip covers; harmful-new = undetected, wrong state only\n\
         the new version has; old-ok = runs after which process {} was alive with its state unchanged.\n\
         {} runs in {:.1} s (seed {}); the old process {} every run.",
        c.pid,
        c.totals.runs,
        c.seconds,
        c.seed,
        if c.old_survived_all { "survived" } else { "did NOT survive" }
    );
    out
}
