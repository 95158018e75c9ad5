//! `cargo xtask demo`: builds everything, then traces a bundled example for a few seconds —
//! probed's main job on a real probe, from a fresh machine, in one command.

use std::process::{Command, Stdio};

use anyhow::Context as _;

use crate::{build, exec::exec, paths, setup};

/// Compiles the example target, runs it, and traces two of its functions with probed.
pub fn run() -> anyhow::Result<()> {
    setup::demo()?;
    build::run()?;
    let out = paths::target_dir().join("demo");
    std::fs::create_dir_all(&out)?;
    let target = out.join("trace_target");
    exec(
        Command::new("cc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&target)
            .arg(paths::root().join("daemon/tests/fixtures/trace_target.c")),
    )?;
    // The example calls probed_add() in a tight loop for 4 seconds.
    let mut example = Command::new(&target)
        .args(["--loop", "4"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting the example")?;
    let spec_entry = format!("uprobe:{}:probed_add", target.display());
    let spec_return = format!("uretprobe:{}:probed_add", target.display());
    eprintln!("xtask: tracing the example: probed trace {spec_entry} {spec_return} --count 10");
    let traced = exec(Command::new(paths::probed_bin()).args([
        "trace",
        &spec_entry,
        &spec_return,
        "--count",
        "10",
        "--duration",
        "3",
    ]));
    let _ = example.wait();
    traced
}
