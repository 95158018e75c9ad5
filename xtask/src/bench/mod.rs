//! `cargo xtask bench …`: benchmark harnesses writing target/probed-bench/*.json.

mod resolver;

/// Which benchmark to run.
#[derive(clap::Subcommand)]
pub enum Which {
    /// Resolver micro-benchmarks (criterion) → target/probed-bench/resolver.json.
    Resolver,
}

/// Runs the chosen benchmark.
pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Resolver => resolver::run(),
    }
}
