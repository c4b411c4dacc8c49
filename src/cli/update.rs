//! `transplant --pid N --to NEW`: the live update.

use std::path::Path;
use std::process::ExitCode;

/// Updates process `pid` to the program `to`. Not built yet (issue 5): refuses, touching
/// nothing.
pub fn run(pid: i32, to: &Path) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "cannot update process {pid} to {}: the live update transaction is not built yet; \
         the process was not touched",
        to.display()
    )
}
