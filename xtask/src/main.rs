//! probed's tasks. `cargo xtask --help` lists them.

mod bench;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "probed's build, test and benchmark tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench { which } => bench::run(which),
    }
}
