//! `probed self-check`: can this probed trace on this host? Loads the real BPF programs
//! (so the verifier and the privileges are really exercised), then unloads them. First it
//! prints the kernel and the path probed takes for each kernel-dependent part, and why
//! (`kernel_paths.rs`).

use anyhow::Context as _;

use crate::attach::Tracer;

/// Runs the checks, printing one line per check; fails at the first that does not pass.
pub fn run() -> anyhow::Result<()> {
    let (release, version) = crate::kernel_paths::release();
    println!("kernel: {release} ({version})");
    for c in crate::kernel_paths::choices() {
        println!("path: {}: {} — {}", c.part, c.chosen, c.why);
    }
    crate::bpf_object::bytes()?;
    println!("ok: BPF object embedded");
    crate::privileges::check()?;
    println!("ok: privileges ({})", crate::privileges::NEEDED);
    let mut tracer =
        Tracer::load(crate::track::TrackerChoice::Auto).context("loading the BPF programs")?;
    tracer
        .load_probe_programs()
        .context("loading the uprobe programs")?;
    let (mode, why) = tracer.tracker_mode();
    let why = why.to_owned();
    drop(tracer);
    println!("ok: BPF programs load and pass the verifier");
    println!("ok: change tracker runs in {mode} mode ({why})");
    Ok(())
}
