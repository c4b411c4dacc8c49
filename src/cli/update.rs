//! `transplant --pid N --to NEW`: the live update.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use transplant::mapping::rules::Rules;
use transplant::update::{self, Check, Outcome, Phase, Report};

/// The command line of an update, as plain values.
pub struct Config {
    /// The process.
    pub pid: i32,
    /// The new binary.
    pub to: PathBuf,
    /// A rules file.
    pub rules: Option<PathBuf>,
    /// Seconds to wait for quiescence.
    pub timeout: f64,
    /// Hold at this function instead of a quiescent system call.
    pub at: Option<String>,
    /// Milliseconds of probation.
    pub probation: u64,
    /// The argument vector for the new version, if given.
    pub argv: Option<Vec<std::ffi::OsString>>,
    /// Skip the time-traveling check.
    pub no_verify: bool,
    /// Hide values in differences.
    pub no_values: bool,
    /// Print JSON.
    pub json: bool,
}

/// Runs the update and prints its report (JSON with `--json`, for every outcome). The exit
/// status is [`Report::exit_status`]: 0 committed, 1 aborted with the old process serving, 3
/// refused with nothing touched, 4 the old process ended during the update.
pub fn run(c: Config) -> anyhow::Result<ExitCode> {
    let pid = tracer::Pid::from_raw(c.pid);
    let refused = |phase: Phase, message: String| {
        let abort = update::Abort {
            phase,
            cause: update::Cause::Refused,
            message,
        };
        Report::refused(pid, &abort)
    };
    let mut report = match config(&c) {
        Err(e) => refused(Phase::Check, format!("{e:#}")),
        Ok(cfg) => match update::update(&cfg) {
            Ok(r) => r,
            Err(abort) => Report::refused(pid, &abort),
        },
    };
    if c.no_values {
        report.differences = report
            .differences
            .iter()
            .map(|d| d.without_values())
            .collect();
    }
    if c.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else if report.committed() {
        print_report(&mut std::io::stdout().lock(), &report, &c.to)?;
    } else {
        // What went wrong is an error: on stderr, where scripts and supervisors look.
        print_report(&mut std::io::stderr().lock(), &report, &c.to)?;
    }
    Ok(ExitCode::from(report.exit_status()))
}

fn config(c: &Config) -> anyhow::Result<update::Config> {
    let rules = match &c.rules {
        Some(p) => Rules::load(p)?,
        None => Rules::default(),
    };
    anyhow::ensure!(
        c.timeout.is_finite() && c.timeout > 0.0 && c.timeout < 1e9,
        "--timeout must be a positive number of seconds below 1e9"
    );
    let mut cfg = update::Config::new(tracer::Pid::from_raw(c.pid), &c.to);
    cfg.rules = rules;
    cfg.quiesce_timeout = Duration::from_secs_f64(c.timeout);
    cfg.at = c.at.clone();
    cfg.verify = !c.no_verify;
    cfg.probation = Duration::from_millis(c.probation);
    cfg.argv = c.argv.clone();
    Ok(cfg)
}

/// The report as text.
pub fn print_report(out: &mut impl Write, r: &Report, to: &std::path::Path) -> std::io::Result<()> {
    match &r.outcome {
        Outcome::Committed => writeln!(
            out,
            "committed: process {} is now process {} (new version), which survived {:.0} ms of \
             probation",
            r.old_pid,
            r.new_pid.unwrap_or(0),
            r.times_ms.probation
        )?,
        Outcome::Refused { phase, reason } => {
            writeln!(
                out,
                "refused in {phase}: cannot update process {} to {}: {reason}",
                r.old_pid,
                to.display()
            )?;
            if r.old_running {
                writeln!(out, "process {} was not touched", r.old_pid)?;
            }
            if !r.spawned_output.is_empty() {
                print_spawned_output(out, r)?;
            }
            return Ok(());
        }
        Outcome::Aborted { phase, reason } => {
            writeln!(out, "aborted in {phase}: {reason}")?;
            if r.old_running {
                writeln!(
                    out,
                    "process {} runs on as before; nothing transplant started is left",
                    r.old_pid
                )?;
            } else {
                writeln!(
                    out,
                    "process {} is gone; nothing transplant started is left",
                    r.old_pid
                )?;
            }
        }
    }
    if matches!(
        r.outcome,
        Outcome::Refused {
            phase: Phase::Check,
            ..
        }
    ) {
        return Ok(());
    }
    if let (Some(old), Some(new)) = (&r.held.old, &r.held.new) {
        writeln!(
            out,
            "held: the old process in {old}, the new version in {new}{}",
            r.held
                .resume
                .map(|m| format!(" (resumed: {m:?})"))
                .unwrap_or_default()
        )?;
    }
    let t = &r.times_ms;
    writeln!(
        out,
        "phases (ms): start-up {:.1}, quiesce {:.1}, capture {:.1}, forward {:.1}, reverse {:.1}, compare {:.1}, probation {:.1}",
        t.startup, t.quiesce, t.capture, t.forward, t.reverse, t.compare, t.probation
    )?;
    writeln!(
        out,
        "downtime {:.1} ms, total {:.1} ms",
        t.downtime, t.total
    )?;
    writeln!(
        out,
        "state: {} objects ({} on the heap), {} bytes; {} descriptors, {} epoll instance(s), {} listening socket(s)",
        r.objects, r.heap_objects, r.bytes, r.fds, r.epolls, r.listeners
    )?;
    match r.check {
        Check::Skipped => writeln!(
            out,
            "time-traveling check: SKIPPED (--no-verify): the transfer was not verified"
        )?,
        Check::Passed => writeln!(
            out,
            "time-traveling check: the state came back exactly through the new version"
        )?,
        Check::Failed => writeln!(out, "time-traveling check: FAILED")?,
        Check::NotReached => writeln!(out, "time-traveling check: not reached")?,
    }
    if r.differences_total > 0 {
        writeln!(out, "differences ({} in all):", r.differences_total)?;
        for d in &r.differences {
            writeln!(out, "  {}: {} != {}", d.path, d.old, d.reversed)?;
        }
    }
    for w in &r.warnings {
        writeln!(out, "warning: {w}")?;
    }
    if !r.spawned_output.is_empty() {
        writeln!(
            out,
            "output of the spawned processes (never in the old process's logs):"
        )?;
        for l in r
            .spawned_output
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            writeln!(out, "  | {l}")?;
        }
    }
    Ok(())
}

/// The last lines the spawned processes printed (kept out of the old process's logs).
fn print_spawned_output(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "last output of the spawned processes (never written to the old process's logs):"
    )?;
    let lines: Vec<&str> = r.spawned_output.lines().collect();
    for l in &lines[lines.len().saturating_sub(20)..] {
        writeln!(out, "  | {l}")?;
    }
    Ok(())
}
