//! `cargo xtask bench resolver` (to be written).

/// Runs the resolver benchmarks and writes target/probed-bench/resolver.json.
pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
