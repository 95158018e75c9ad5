//! `cargo xtask bench …`: benchmark harnesses writing target/probed-bench/*.json.

mod attach;
mod bpf_stats;
mod e2e;
mod harness;
mod pipeline;
mod resolver;
mod stacks;
mod tracker;

/// Which benchmark to run.
#[derive(clap::Subcommand)]
pub enum Which {
    /// Resolver micro-benchmarks (criterion) → target/probed-bench/resolver.json.
    Resolver,
    /// probed vs bpftrace vs no probe on a C target's call loop → target/probed-bench/e2e.json.
    E2e,
    /// mmap/munmap churn with and without probed tracking it, and the fast-path share of a
    /// process with stable mappings, and the tax on untracked processes' syscalls (getppid,
    /// anonymous mmap) → target/probed-bench/tracker.json.
    Tracker {
        /// probed's tracker modes to measure side by side (comma-separated: syscalls, lock,
        /// kseq, kprobes, auto).
        #[arg(long, value_delimiter = ',', default_value = "syscalls,lock,kseq")]
        tracker: Vec<String>,
    },
    /// Seconds to attach and detach 10, 100, 1,000 and all of libc's functions, probed vs
    /// bpftrace → target/probed-bench/attach.json.
    Attach,
    /// Resolved frames per second with ~20-frame user stacks, the resolver's share of daemon
    /// CPU, the fast-path share, no loss → target/probed-bench/stacks.json.
    Stacks,
    /// The consumer's events per CPU second on recorded runs (`probed trace --record`,
    /// `probed replay --measure`), per output mode → target/probed-bench/pipeline.json.
    Pipeline,
}

/// Builds what a benchmark runs (the BPF object and a release probed), unless
/// `PROBED_BENCH_PREBUILT` is set: in a kernel guest (`cargo xtask vm --kernel LINE -- …`) the
/// workspace is read-only, so the host builds first and the guest runs what it built.
fn build() -> anyhow::Result<()> {
    if std::env::var_os("PROBED_BENCH_PREBUILT").is_none() {
        return crate::build::run();
    }
    let probed = crate::paths::root().join("target/release/probed");
    anyhow::ensure!(
        probed.exists(),
        "PROBED_BENCH_PREBUILT is set but {} is missing: run `cargo xtask build` first",
        probed.display()
    );
    Ok(())
}

/// Runs the chosen benchmark.
pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Resolver => resolver::run(),
        Which::E2e => e2e::run(),
        Which::Tracker { tracker } => tracker::run(&tracker),
        Which::Stacks => stacks::run(),
        Which::Attach => attach::run(),
        Which::Pipeline => pipeline::run(),
    }
}
