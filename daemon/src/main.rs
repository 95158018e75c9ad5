//! The `probed` command line: parses arguments, sets up logging, runs the chosen job.
//!
//! Every failure ends here as one line on stderr (`probed: error: …` with its causes) and a
//! non-zero exit: 1 for a failed run, 2 for bad usage (clap's convention).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use probed::{
    cli::TraceArgs,
    service::{ctl::CtlArgs, run::DaemonArgs},
    trace,
};

#[derive(Parser)]
#[command(
    name = "probed",
    version,
    about = "Trace user-space functions with eBPF uprobes"
)]
struct Cli {
    /// More log output on stderr (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach probes and print every hit until stopped.
    Trace(TraceArgs),
    /// Run as a service: probes and outputs from a TOML config, SIGHUP reloads it, a control
    /// socket changes probes live (see `probed ctl`).
    Daemon(DaemonArgs),
    /// Talk to a running daemon: list, add, remove probes; read counters.
    Ctl(CtlArgs),
    /// List the probe points a pattern names (functions, USDT probes with their arguments)
    /// without attaching anything, like `bpftrace -l`.
    List(probed::list::ListArgs),
    /// Check that this probed can trace here: BPF object present, privileges, kernel support.
    SelfCheck,
    /// Feed a run recorded with `probed trace --record FILE` through the pipeline again (no
    /// BPF, no privileges): another output format, an aggregation, or a measurement.
    Replay(probed::cli::ReplayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A service logs its lifecycle (attach, reload, stop) by default; a command line tool
    // only warnings. The config's log_level applies later (logging::apply_config_level).
    let quiet = if matches!(cli.command, Command::Daemon(_)) {
        "info"
    } else {
        probed::logging::DEFAULT_LEVEL
    };
    let _log = probed::logging::init(cli.verbose, quiet);
    let result = match cli.command {
        Command::Trace(args) => run_async(trace::run(args)),
        Command::Daemon(args) => {
            // Read (and removed from the environment) here, before any other thread exists.
            let notifier = probed::service::notify::Notifier::from_env().unwrap_or_else(|err| {
                tracing::warn!("not notifying systemd: {err}");
                probed::service::notify::Notifier::disabled()
            });
            run_async(probed::service::run::run(args, notifier))
        }
        Command::Ctl(args) => probed::service::ctl::run(args),
        Command::List(args) => probed::list::run(args),
        Command::SelfCheck => probed::self_check::run(),
        Command::Replay(args) => probed::recording::play::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("probed: error: {}", probed::cli::one_line(&err));
            ExitCode::FAILURE
        }
    }
}

fn run_async(job: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(job)
}
