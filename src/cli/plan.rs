//! `transplant plan --from OLD --to NEW [--rules FILE] [--json]`: what changes between two
//! versions of a program and what the update will do about each change, from their debug
//! information alone (no process is touched).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use transplant::debuginfo::Binary;
use transplant::mapping::{Decision, Mapping, Rules};

/// What to compare.
#[derive(Debug, Clone)]
pub struct Config {
    /// The old version's binary.
    pub from: PathBuf,
    /// The new version's binary.
    pub to: PathBuf,
    /// A rules file.
    pub rules: Option<PathBuf>,
    /// Machine-readable output.
    pub json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    forward: &'a Mapping,
    reverse: &'a Mapping,
    refused: usize,
}

/// Prints the plan; exit status 0 when nothing is refused in either direction, 1 otherwise.
pub fn run(config: Config) -> anyhow::Result<ExitCode> {
    let rules = match &config.rules {
        Some(p) => Rules::load(p)?,
        None => Rules::default(),
    };
    let old = Binary::load(&config.from)
        .with_context(|| format!("loading the old version {}", config.from.display()))?;
    let new = Binary::load(&config.to)
        .with_context(|| format!("loading the new version {}", config.to.display()))?;
    let forward = Mapping::new(&old, &new, &rules);
    let reverse = Mapping::reverse(&old, &new, &rules);
    let refused = forward.refused().count() + reverse.refused().count();
    if config.json {
        let report = Report {
            forward: &forward,
            reverse: &reverse,
            refused,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&forward, &reverse));
    }
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn file_name(p: &str) -> String {
    std::path::Path::new(p)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.to_owned())
}

fn decision_line(d: &Decision) -> String {
    match d {
        Decision::Automatic { how } => format!("automatic: {how}"),
        Decision::CheckedPerValue { check } => format!("checked per value: {check}"),
        Decision::ByRule { rule, how } => format!("by rule {rule}: {how}"),
        Decision::Refused { reason } => format!("REFUSED: {reason}"),
    }
}

/// The text report: a header, one entry per difference, a summary, and the reverse
/// transfer's refusals (the round-trip check needs it too).
fn render(forward: &Mapping, reverse: &Mapping) -> String {
    let mut s = String::new();
    let rules = forward
        .rules
        .as_deref()
        .map(|r| format!("rules {}", file_name(r)))
        .unwrap_or_else(|| "no rules".into());
    let _ = writeln!(
        s,
        "plan: {} -> {} ({rules})",
        file_name(&forward.old_binary),
        file_name(&forward.new_binary)
    );
    let both = forward
        .globals
        .iter()
        .filter(|g| g.old.is_some() && g.new.is_some())
        .count();
    let added = forward.globals.iter().filter(|g| g.old.is_none()).count();
    let removed = forward.globals.iter().filter(|g| g.new.is_none()).count();
    let _ = writeln!(
        s,
        "globals: {both} matched, {added} added, {removed} removed; struct/union types mapped: {}",
        forward.types.len()
    );
    let _ = writeln!(s);
    for d in &forward.differences {
        let _ = writeln!(s, "{}: {}", d.path, d.what);
        let _ = writeln!(s, "    {}", decision_line(&d.decision));
    }
    let (a, c, r, x) = forward.counts();
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{} differences: {a} automatic, {c} checked per value, {r} by rule, {x} refused",
        forward.differences.len()
    );
    let back: Vec<_> = reverse.refused().collect();
    if back.is_empty() {
        let _ = writeln!(s, "reverse transfer (round-trip check): nothing refused");
    } else {
        let _ = writeln!(
            s,
            "reverse transfer (round-trip check): {} refused",
            back.len()
        );
        for d in back {
            let _ = writeln!(s, "  {}: {}", d.path, d.what);
            let _ = writeln!(s, "      {}", decision_line(&d.decision));
        }
    }
    let back = reverse.refused().count();
    if x + back == 0 {
        let _ = writeln!(s, "result: the update can proceed");
    } else {
        let _ = writeln!(
            s,
            "result: refused ({x} forward, {back} in the reverse transfer; rules can settle them)"
        );
    }
    s
}
