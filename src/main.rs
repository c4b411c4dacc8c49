//! The `transplant` command line: thin, one module per subcommand, each turning its arguments
//! into a plain configuration for the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// Live-update a running, unmodified C or Rust process to a new version of its program.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    /// The process to update.
    #[arg(long, requires = "to")]
    pid: Option<i32>,
    /// The new version of its program (an ELF binary with debug information).
    #[arg(long, requires = "pid")]
    to: Option<std::path::PathBuf>,
    /// A rules file (TOML) for renames, dropped state, defaults and value conversions.
    #[arg(long, requires = "pid")]
    rules: Option<std::path::PathBuf>,
    /// Seconds to wait until every thread is at a quiescent point.
    #[arg(long, default_value_t = 10.0, requires = "pid")]
    timeout: f64,
    /// Hold the process (and the new version) at this function instead of at a quiescent
    /// system call.
    #[arg(long, value_name = "FUNCTION", requires = "pid")]
    at: Option<String>,
    /// Milliseconds the new version must run, serving, with the old process stopped but kept,
    /// before the old one is killed; a crash, an exit or a second start-up in that time rolls
    /// back to the old process.
    #[arg(long, value_name = "MS", default_value_t = 300, requires = "pid")]
    probation: u64,
    /// The argument vector to start the new version with (after `--`), for a process that
    /// rewrote its title so that /proc/PID/cmdline no longer is its argv.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "ARG", requires = "pid")]
    argv: Option<Vec<std::ffi::OsString>>,
    /// Skip the time-traveling check (the reverse transfer and comparison).
    #[arg(long, requires = "pid")]
    no_verify: bool,
    /// Do not print values in differences (for sensitive data).
    #[arg(long, requires = "pid")]
    no_values: bool,
    /// Print the update's report as JSON.
    #[arg(long, requires = "pid")]
    json: bool,
    /// Log verbosity (`-v` info, `-vv` debug, `-vvv` trace); `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the bundled example server pair, update a running v1 to v2 live, and show it.
    Demo,
    /// Show a live process's globals (and with --heap its heap objects) as typed values.
    Inspect {
        /// The process to look at; it is stopped while its memory is read, then resumed.
        #[arg(long, required_unless_present = "stacks")]
        pid: Option<i32>,
        /// Also show the heap objects reachable from the globals, and a summary of the graph.
        #[arg(long, conflicts_with = "stacks")]
        heap: bool,
        /// Show every thread's call stack instead (`--stacks PID`, or `--pid PID --stacks`),
        /// with each frame's parameters and locals.
        #[arg(long, value_name = "PID", num_args = 0..=1)]
        stacks: Option<Option<i32>>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run many update transactions against a live process, each with one injected fault,
    /// never committing; classify what caught each fault. Exit status 0 when the old process
    /// survived every run and no undetected fault harmed state the round trip covers.
    Faults {
        /// The live process (it keeps running and is never written to).
        #[arg(long)]
        pid: i32,
        /// The new version.
        #[arg(long)]
        to: std::path::PathBuf,
        /// A rules file (TOML), as for an update.
        #[arg(long)]
        rules: Option<std::path::PathBuf>,
        /// How many runs.
        #[arg(long, default_value_t = 100)]
        runs: u64,
        /// The seed: the same seed gives the same faults at the same places.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Fault kinds to draw from (names, or the groups all, forward, reverse, crash, hang);
        /// comma-separated. Default: all.
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
        /// Seconds before a call into a spawned process counts as hung.
        #[arg(long, default_value_t = 1.0)]
        hang_timeout: f64,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// One line per run on stderr.
        #[arg(long)]
        progress: bool,
    },
    /// Show what changes between two versions of a program and what the update will do about
    /// each change (automatic, by rule, or refused), without touching any process. Exit status:
    /// 0 if nothing is refused, 1 if something is.
    Plan {
        /// The old version's binary.
        #[arg(long)]
        from: std::path::PathBuf,
        /// The new version's binary.
        #[arg(long)]
        to: std::path::PathBuf,
        /// A rules file (TOML) for renames, dropped state, defaults and value conversions.
        #[arg(long)]
        rules: Option<std::path::PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match (&cli.command, cli.pid) {
        (Some(Command::Demo), _) => cli::demo::run(),
        (
            Some(Command::Faults {
                pid,
                to,
                rules,
                runs,
                seed,
                kinds,
                hang_timeout,
                json,
                progress,
            }),
            _,
        ) => cli::faults::run(cli::faults::Config {
            pid: *pid,
            to: to.clone(),
            rules: rules.clone(),
            runs: *runs,
            seed: *seed,
            kinds: kinds.clone(),
            hang_timeout: *hang_timeout,
            json: *json,
            progress: *progress,
        }),
        (
            Some(Command::Inspect {
                pid,
                heap,
                stacks,
                json,
            }),
            _,
        ) => match (stacks, pid) {
            (Some(Some(p)), _) | (Some(None), Some(p)) => cli::inspect::run_stacks(*p, *json),
            (Some(None), None) => Err(anyhow::anyhow!("--stacks needs a PID (or --pid)")),
            (None, Some(p)) => cli::inspect::run(cli::inspect::Config {
                pid: *p,
                heap: *heap,
                json: *json,
            }),
            (None, None) => Err(anyhow::anyhow!("inspect needs --pid")),
        },
        (
            Some(Command::Plan {
                from,
                to,
                rules,
                json,
            }),
            _,
        ) => cli::plan::run(cli::plan::Config {
            from: from.clone(),
            to: to.clone(),
            rules: rules.clone(),
            json: *json,
        }),
        (None, Some(pid)) => cli::update::run(cli::update::Config {
            pid,
            to: cli.to.clone().expect("clap requires --to"),
            rules: cli.rules.clone(),
            timeout: cli.timeout,
            at: cli.at.clone(),
            probation: cli.probation,
            argv: cli.argv.clone(),
            no_verify: cli.no_verify,
            no_values: cli.no_values,
            json: cli.json,
        }),
        (None, None) => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // The whole cause chain: which process, which variable, which system call.
            eprintln!("transplant: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
