//! `cargo xtask vm --kernel LINE -- CMD…`: runs CMD as root in a guest of one of Debian's
//! kernels (6.1, 6.12), in the caller's directory, the workspace at its own path; and the
//! kernel suites of `cargo xtask test --kernel LINE`.
//!
//! - `kernel.rs`: the kernel lines and their packages (apt-get download, cached in target/vm)
//! - `venv.rs`: virtme-ng from PyPI
//! - `guest.rs`: booting with virtme-ng (KVM only where it can boot the kernel) and running
//!   one command, stdout/stderr/exit code passed back
//! - `suite.rs`: the chosen integration tests in one guest, summarized

mod guest;
mod kernel;
mod suite;
mod venv;

pub use kernel::LINES;
pub use suite::run as suite;

/// Boots a guest of `line` and runs `argv` in the current directory; returns its exit code.
pub fn run(line: &str, argv: &[String]) -> anyhow::Result<i32> {
    anyhow::ensure!(
        !argv.is_empty(),
        "no command given: cargo xtask vm --kernel {line} -- CMD…"
    );
    let kernel = kernel::install(kernel::line(line)?)?;
    let guest = guest::Guest::prepare(kernel)?;
    let cwd = std::env::current_dir()?;
    let env: Vec<(String, String)> = [
        "PATH",
        "RUST_LOG",
        "RUST_BACKTRACE",
        "CI",
        "PROBED_TEST_TIME_SCALE",
        "PROBED_BENCH_PREBUILT",
        "PROBED_BENCH_DIR",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
    .collect();
    let outcome = guest.run(&argv.join(" "), argv, &cwd, &env, None, |l| println!("{l}"))?;
    eprintln!(
        "xtask: guest {} exited {:?} after {:.1} s (boot included)",
        guest.kernel.version,
        outcome.code,
        outcome.elapsed.as_secs_f64()
    );
    Ok(outcome.code.unwrap_or(124))
}
