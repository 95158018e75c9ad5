//! probed's tasks. `cargo xtask --help` lists them.

mod bench;
mod build;
mod build_ebpf;
mod demo;
mod exec;
mod integration;
mod paths;
mod run;
mod setup;
mod test;
mod toolchain;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "probed's build, test and benchmark tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the BPF object (installs the BPF toolchain first where it is missing).
    BuildEbpf,
    /// Lint the BPF crate (clippy with the BPF toolchain, warnings denied; CI runs it).
    ClippyEbpf,
    /// Build the BPF object and a release `probed` that embeds it.
    Build,
    /// Set up, build, and trace a bundled example: probed's main job in one command.
    Demo,
    /// Build, then run `probed` with the given arguments.
    Run {
        /// Arguments for probed, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests and loom models on the host, root/BPF integration tests in
    /// a privileged container, the kernel suites in QEMU guests of Debian's 6.1 and 6.12.
    Test {
        /// Run the integration tests on the host too (`cargo test`), without a container.
        #[arg(long)]
        host: bool,
        /// Where the containerized integration tests keep their files (fixtures, target
        /// copies): a tmpfs /tmp, the container's overlayfs root, or both (every executable on
        /// tmpfs, then those that depend on mapped files' identities on overlayfs).
        #[arg(long, value_enum, default_value = "both")]
        fixtures: integration::Fixtures,
        /// Only the kernel suite in a guest of this Debian kernel (6.1, 6.12); may be repeated.
        #[arg(long = "kernel", value_name = "LINE")]
        kernels: Vec<String>,
        /// Arguments for the test executables (a test name filter, `--nocapture`, …).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the root/BPF integration tests in a privileged container (podman + runc).
    IntegrationTest {
        /// Only this integration test target (`trace_basic`, …); may be repeated.
        #[arg(long = "test", value_name = "NAME")]
        only: Vec<String>,
        /// Where the tests keep their files: a tmpfs /tmp, the container's overlayfs root,
        /// or both (every executable on tmpfs, then those that depend on mapped files'
        /// identities on overlayfs).
        #[arg(long, value_enum, default_value = "both")]
        fixtures: integration::Fixtures,
        /// Arguments for the test executables (a test name filter, `--nocapture`, …).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a command as root in a QEMU guest of one of Debian's kernels, in the current
    /// directory (the host's root is the guest's, read-only); passes back its exit code.
    Vm {
        /// The kernel line: 6.1 (Debian 12) or 6.12 (Debian 13).
        #[arg(long)]
        kernel: String,
        /// The command and its arguments, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf => build_ebpf::run(),
        Command::ClippyEbpf => build_ebpf::clippy(),
        Command::Build => build::run(),
        Command::Demo => demo::run(),
        Command::Run { args } => run::run(&args),
        Command::Test {
            host,
            fixtures,
            kernels,
            args,
        } => test::run(host, fixtures, &kernels, &args),
        Command::Vm { kernel, command } => {
            let code = vm::run(&kernel, &command)?;
            std::process::exit(code)
        }
        Command::IntegrationTest {
            only,
            fixtures,
            args,
        } => integration::run(&only, fixtures, &args),
        Command::Bench { which } => bench::run(which),
    }
}
