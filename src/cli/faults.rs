//! `transplant faults --pid N --to NEW`: a fault-injection campaign against a live process.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use transplant::faults::{run_campaign, table, CampaignConfig, Kind};
use transplant::mapping::rules::Rules;

/// The command line of a campaign.
pub struct Config {
    /// The live process.
    pub pid: i32,
    /// The new version.
    pub to: PathBuf,
    /// Rules file.
    pub rules: Option<PathBuf>,
    /// Runs.
    pub runs: u64,
    /// Seed.
    pub seed: u64,
    /// Kinds (names or groups).
    pub kinds: Vec<String>,
    /// Seconds before a call into a spawned process counts as hung.
    pub hang_timeout: f64,
    /// Print JSON.
    pub json: bool,
    /// Print one line per run on stderr.
    pub progress: bool,
}

/// Runs the campaign and prints its table (or JSON). Exit status 0 when the old process
/// survived every run and no fault harmed state the round trip covers without being detected.
pub fn run(c: Config) -> anyhow::Result<ExitCode> {
    let rules = match &c.rules {
        Some(p) => Rules::load(p)?,
        None => Rules::default(),
    };
    let kinds = if c.kinds.is_empty() {
        Kind::all()
    } else {
        Kind::parse_list(&c.kinds).map_err(|e| anyhow::anyhow!(e))?
    };
    anyhow::ensure!(
        c.hang_timeout.is_finite() && c.hang_timeout > 0.0,
        "--hang-timeout must be a positive number of seconds"
    );
    let cfg = CampaignConfig {
        pid: tracer::Pid::from_raw(c.pid),
        to: c.to.clone(),
        rules,
        runs: c.runs,
        seed: c.seed,
        kinds,
        hang_timeout: Duration::from_secs_f64(c.hang_timeout),
        quiesce_timeout: Duration::from_secs(10),
    };
    let total = c.runs;
    let campaign = run_campaign(&cfg, |r| {
        if c.progress {
            eprintln!(
                "run {}/{total}: {} -> {:?} ({:.0} ms){}",
                r.run + 1,
                r.kind_name,
                r.verdict,
                r.ms,
                if r.old_alive && r.old_unchanged {
                    ""
                } else {
                    "  OLD PROCESS CHANGED"
                }
            );
        }
    })?;
    let mut out = std::io::stdout().lock();
    if c.json {
        serde_json::to_writer_pretty(&mut out, &campaign)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", table(&campaign))?;
    }
    Ok(
        if campaign.old_survived_all && campaign.totals.harmful_covered == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}
