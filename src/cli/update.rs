//! `transplant --pid N --to NEW`: the live update.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use transplant::mapping::rules::Rules;
use transplant::update::{self, Outcome, Report};

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
    /// Skip the time-traveling check.
    pub no_verify: bool,
    /// Hide values in differences.
    pub no_values: bool,
    /// Print JSON.
    pub json: bool,
}

/// Runs the update and prints its report. Exit status 0 only when committed.
pub fn run(c: Config) -> anyhow::Result<ExitCode> {
    let rules = match &c.rules {
        Some(p) => Rules::load(p)?,
        None => Rules::default(),
    };
    anyhow::ensure!(
        c.timeout.is_finite() && c.timeout > 0.0,
        "--timeout must be a positive number of seconds"
    );
    let mut cfg = update::Config::new(tracer::Pid::from_raw(c.pid), &c.to);
    cfg.rules = rules;
    cfg.quiesce_timeout = Duration::from_secs_f64(c.timeout);
    cfg.at = c.at.clone();
    cfg.verify = !c.no_verify;
    let mut report = update::update(&cfg).map_err(|abort| {
        anyhow::anyhow!(
            "cannot update process {} to {}: {abort}\nthe process was not touched",
            c.pid,
            c.to.display()
        )
    })?;
    if c.no_values {
        report.differences = report
            .differences
            .iter()
            .map(|d| d.without_values())
            .collect();
    }
    let mut out = std::io::stdout().lock();
    if c.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_report(&mut out, &report)?;
    }
    Ok(if report.committed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The report as text.
pub fn print_report(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    match &r.outcome {
        Outcome::Committed => writeln!(
            out,
            "committed: process {} is now process {} (new version)",
            r.old_pid,
            r.new_pid.unwrap_or(0)
        )?,
        Outcome::Aborted { phase, reason } => {
            writeln!(
                out,
                "aborted in {phase}: {reason}\nprocess {} runs on unchanged; nothing transplant started is left",
                r.old_pid
            )?;
        }
    }
    let t = &r.times_ms;
    writeln!(
        out,
        "phases (ms): start-up {:.1}, quiesce {:.1}, capture {:.1}, forward {:.1}, reverse {:.1}, compare {:.1}",
        t.startup, t.quiesce, t.capture, t.forward, t.reverse, t.compare
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
    if !r.verified {
        writeln!(
            out,
            "time-traveling check: SKIPPED (--no-verify): the transfer was not verified"
        )?;
    } else if r.committed() {
        writeln!(
            out,
            "time-traveling check: the state came back exactly through the new version"
        )?;
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
    Ok(())
}
