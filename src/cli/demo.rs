//! `transplant demo`.

use std::process::ExitCode;

/// Runs the bundled demo. The live update it shows is not built yet (issue 5); until then it
/// says so and exits with status 2, so nobody mistakes it for a working update.
pub fn run() -> anyhow::Result<ExitCode> {
    println!(
        "transplant demo: the live-update demo is not built yet.\n\
         What works today is the process-control layer (crate `tracer`); see README.md."
    );
    Ok(ExitCode::from(2))
}
