//! `cargo xtask bench pipeline`: the consumer's capacity — events per CPU second of the one
//! thread that decodes, resolves, symbolizes, unwinds, aggregates and writes — measured
//! in-process on recorded real runs, with no BPF and no uprobe trap pacing it.
//!
//! Each workload is traced once with `probed trace --record` (the workload of `bench
//! stacks`, daemon/tests/fixtures/stacks_bench.c, looping on `bench_leaf` at 21 frames deep):
//! - `loop`: entry and return probes on `bench_leaf`, no stacks (two events a call);
//! - `stack_fp`: entry probe with `--stack=fp` (the kernel's 21-frame walk, every frame
//!   resolved and symbolized);
//! - `stack_cfi`: the workload built without frame pointers, `--stack=auto
//!   --stack-copy-kib 4` (registers and 4 KiB of stack a hit, unwound with .eh_frame).
//!
//! Then `probed replay --measure` plays each recording in each output mode, interleaved
//! over [`ROUNDS`] rounds (the order rotates): `json` and `text` lines to a file on tmpfs,
//! `aggregate` (`--aggregate stack`, stack workloads), `latency` (`--latency`, the loop),
//! `count` (`--summary-only`: counted per probe, nothing printed). A replay's figure is its
//! events divided by its thread's CPU time from the first frame to the written summary
//! (symbol tables are loaded before); the report keeps the median. A replay whose seam reads
//! diverged from the run's (`seq_diverged`, `maps_diverged`) is reported as such.
//!
//!
//! A baseline side by side: with `PROBED_BENCH_BASELINE=/path/to/another/probed` (e.g. the
//! build of the commit before a change), every replay is also run with that binary in the
//! same round, right before or after ours (the order alternates), and each mode reports
//! `vs_baseline`: the median over rounds of ours / the baseline's events per CPU second —
//! a ratio from adjacent runs, which this noisy machine's absolute figures are not.
//!
//! Consumer threads (`--consumers`): `loop4` records the same loop in four processes at
//! once (no `--pid`); its `json` mode is replayed with one consumer and with two
//! (`json_2t`), and `scaling_2t` is the median of the rounds' ratios of events per *wall*
//! second (two threads, twice the CPU). Recorded in kseq mode (`auto` here), the replay with
//! two consumers reads the recording split in two rings as BPF splits a live run's
//! (pipeline/rings.rs, recording/ring_lanes.rs); a recording of another mode is dealt from
//! one ring (pipeline/shards.rs). What two cores of this machine give any
//! two busy threads is measured beside it: `machine_2p` runs two one-consumer replays of
//! the same recording at once, and `machine_scaling_2p` is their summed rate over the
//! round's one-consumer rate — the ceiling `scaling_2t` can reach here.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::{
    harness,
    stacks::{Workload, signal, wait_for_line},
};
use crate::paths;

/// Interleaved rounds of every replay.
const ROUNDS: usize = 5;
/// The probed function of the workload.
const SYMBOL: &str = "bench_leaf";

/// A recorded workload.
struct Recorded {
    name: &'static str,
    file: PathBuf,
    modes: &'static [&'static str],
    /// Calls the workload made while recorded.
    calls: u64,
}

/// Runs the benchmark, writes target/probed-bench/pipeline.json and prints a table.
pub fn run() -> Result<()> {
    super::build()?;
    let out_dir = paths::bench_dir();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let (fp, nofp) = super::stacks::compile_workloads(&out_dir)?;
    let scratch = harness::hits_file("pipeline");
    let dir = scratch.parent().context("scratch dir")?.to_owned();
    let rec = |name: &str| dir.join(format!("probed-pipeline-{name}-{}.rec", std::process::id()));

    let entry = |bin: &Path| format!("uprobe:{}:{SYMBOL}", bin.display());
    let ret = |bin: &Path| format!("uretprobe:{}:{SYMBOL}", bin.display());
    let recorded = vec![
        record(
            "loop",
            &fp,
            &[entry(&fp), ret(&fp)],
            &[],
            2.0,
            1,
            &rec("loop"),
            &["json", "text", "latency", "count"],
        )?,
        record(
            "loop4",
            &fp,
            &[entry(&fp), ret(&fp)],
            &[],
            2.0,
            4,
            &rec("loop4"),
            &["json", "json_2t", "machine_2p"],
        )?,
        record(
            "stack_fp",
            &fp,
            &[entry(&fp)],
            &["--stack=fp"],
            2.0,
            1,
            &rec("stack_fp"),
            &["json", "text", "aggregate", "count"],
        )?,
        record(
            "stack_cfi",
            &nofp,
            &[entry(&nofp)],
            &["--stack=auto", "--stack-copy-kib", "4"],
            1.0,
            1,
            &rec("stack_cfi"),
            &["json", "text", "aggregate", "count"],
        )?,
    ];

    let baseline = std::env::var_os("PROBED_BENCH_BASELINE").map(PathBuf::from);
    if let Some(b) = &baseline {
        ensure!(
            b.is_file(),
            "PROBED_BENCH_BASELINE={} is not a file",
            b.display()
        );
    }
    let ours = paths::probed_bin();
    let mut figures: BTreeMap<(&str, &str), Vec<Value>> = BTreeMap::new();
    let mut base_figures: BTreeMap<(&str, &str), Vec<Value>> = BTreeMap::new();
    let plays: Vec<(&Recorded, &str)> = recorded
        .iter()
        .flat_map(|r| r.modes.iter().map(move |m| (r, *m)))
        .collect();
    for round in 0..ROUNDS {
        for i in 0..plays.len() {
            let (r, mode) = plays[(round + i) % plays.len()];
            let m = if mode == "machine_2p" {
                machine_2p(&ours, &r.file, &scratch)?
            } else if let Some(base) = baseline.as_deref() {
                // Adjacent runs, the order alternating by round.
                let (m, b) = if round % 2 == 0 {
                    let m = replay(&ours, &r.file, mode, &scratch)?;
                    (m, replay(base, &r.file, mode, &scratch)?)
                } else {
                    let b = replay(base, &r.file, mode, &scratch)?;
                    (replay(&ours, &r.file, mode, &scratch)?, b)
                };
                base_figures.entry((r.name, mode)).or_default().push(b);
                m
            } else {
                replay(&ours, &r.file, mode, &scratch)?
            };
            eprintln!(
                "pipeline: round {}/{ROUNDS} {:<9} {:<9} {:>10.0} events/CPU-s  ({} events, {:.3} CPU-s)",
                round + 1,
                r.name,
                mode,
                m["events_per_cpu_s"].as_f64().unwrap_or(0.0),
                m["events"],
                m["cpu_s"].as_f64().unwrap_or(0.0)
            );
            figures.entry((r.name, mode)).or_default().push(m);
        }
    }
    for r in &recorded {
        let _ = std::fs::remove_file(&r.file);
    }
    let _ = std::fs::remove_file(&scratch);

    let report = report(&recorded, &figures, &base_figures, baseline.as_deref());
    let out = out_dir.join("pipeline.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", out.display()))?;
    print_table(&report);
    println!("\nwrote {}", out.display());
    Ok(())
}

/// Traces `procs` processes of `bin` (looping for `secs`) with `specs` and `extra` flags
/// into the recording `file`.
#[allow(clippy::too_many_arguments)]
fn record(
    name: &'static str,
    bin: &Path,
    specs: &[String],
    extra: &[&str],
    secs: f64,
    procs: usize,
    file: &Path,
    modes: &'static [&'static str],
) -> Result<Recorded> {
    let mut targets = (0..procs)
        .map(|_| Workload::start_for(bin, secs))
        .collect::<Result<Vec<_>>>()?;
    // One process: only it (`--pid`); several: every process of the binary.
    let pid = targets[0].pid.to_string();
    let only = if procs == 1 {
        vec!["--pid", pid.as_str()]
    } else {
        vec![]
    };
    let mut probed = Command::new(paths::probed_bin())
        .arg("trace")
        .args(specs)
        .args(&only)
        .args(["--format", "json", "--output", "/dev/null"])
        .args(extra)
        .arg("--record")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start probed")?;
    let stderr = harness::lines(probed.stderr.take().context("probed stderr")?);
    wait_for_line(&stderr, "probed: tracing")?;
    for t in &mut targets {
        t.release()?;
    }
    let mut calls = 0;
    for t in &mut targets {
        calls += t.result()?.0;
    }
    signal(probed.id(), libc::SIGINT)?;
    let (status, _) = harness::wait_with_rusage(&mut probed)?;
    ensure!(
        status == 0,
        "probed trace --record exited with wait status {status}"
    );
    let size = std::fs::metadata(file)?.len();
    eprintln!(
        "pipeline: recorded {name}: {calls} calls, {:.1} MiB",
        size as f64 / (1 << 20) as f64
    );
    Ok(Recorded {
        name,
        file: file.to_owned(),
        modes,
        calls,
    })
}

/// One `probed replay --measure` of `file` in `mode` by the binary `probed`; its
/// measurement line.
fn replay(probed: &Path, file: &Path, mode: &str, scratch: &Path) -> Result<Value> {
    let out = replay_cmd(probed, file, mode, scratch)?
        .output()
        .context("run probed replay")?;
    let m = measurement(&out)?;
    let _ = std::fs::remove_file(scratch);
    Ok(m)
}

/// Two one-consumer `json` replays of `file` at once: their summed events per wall second
/// (what two busy threads get from this machine's two cores).
fn machine_2p(probed: &Path, file: &Path, scratch: &Path) -> Result<Value> {
    let other = scratch.with_extension("2");
    let a = replay_cmd(probed, file, "json", scratch)?
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run probed replay")?;
    let b = replay_cmd(probed, file, "json", &other)?
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run probed replay")?;
    let (a, b) = (a.wait_with_output()?, b.wait_with_output()?);
    let (a, b) = (measurement(&a)?, measurement(&b)?);
    let _ = std::fs::remove_file(scratch);
    let _ = std::fs::remove_file(&other);
    let rate = |m: &Value| m["events_per_wall_s"].as_f64().unwrap_or(0.0);
    let cpu = |m: &Value| m["cpu_s"].as_f64().unwrap_or(0.0);
    Ok(json!({
        "events": a["events"].as_u64().unwrap_or(0) + b["events"].as_u64().unwrap_or(0),
        "events_per_wall_s": rate(&a) + rate(&b),
        "events_per_cpu_s": (a["events"].as_f64().unwrap_or(0.0) + b["events"].as_f64().unwrap_or(0.0))
            / (cpu(&a) + cpu(&b)).max(f64::MIN_POSITIVE),
        "cpu_s": cpu(&a) + cpu(&b),
        "seq_diverged": a["seq_diverged"].as_u64().unwrap_or(0) + b["seq_diverged"].as_u64().unwrap_or(0),
        "maps_diverged": a["maps_diverged"].as_u64().unwrap_or(0) + b["maps_diverged"].as_u64().unwrap_or(0),
        "runs": [a, b],
    }))
}

/// The measurement line of a finished `probed replay --measure`.
fn measurement(out: &std::process::Output) -> Result<Value> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "probed replay failed: {stderr}");
    let line = stderr.lines().last().context("no measurement line")?;
    serde_json::from_str(line).with_context(|| format!("measurement: {line}"))
}

/// `probed replay --measure` of `file` in `mode` by the binary `probed`, writing to
/// `scratch`.
fn replay_cmd(probed: &Path, file: &Path, mode: &str, scratch: &Path) -> Result<Command> {
    let flags: &[&str] = match mode {
        "json" => &["--format", "json"],
        "json_2t" => &["--format", "json", "--consumers", "2"],
        "text" => &["--format", "text"],
        "aggregate" => &["--aggregate", "stack"],
        "latency" => &["--latency"],
        "count" => &["--summary-only"],
        other => anyhow::bail!("unknown mode {other}"),
    };
    let mut cmd = Command::new(probed);
    cmd.arg("replay")
        .arg(file)
        .args(flags)
        .arg("--output")
        .arg(scratch)
        .arg("--measure")
        .stdin(Stdio::null());
    Ok(cmd)
}

fn report(
    recorded: &[Recorded],
    figures: &BTreeMap<(&str, &str), Vec<Value>>,
    base_figures: &BTreeMap<(&str, &str), Vec<Value>>,
    baseline: Option<&Path>,
) -> Value {
    let mut workloads = serde_json::Map::new();
    for r in recorded {
        let mut modes = serde_json::Map::new();
        let mut events = 0;
        for mode in r.modes {
            let runs = figures.get(&(r.name, *mode)).cloned().unwrap_or_default();
            let rate = harness::median(
                runs.iter()
                    .filter_map(|m| m["events_per_cpu_s"].as_f64())
                    .collect(),
            );
            let diverged: u64 = runs
                .iter()
                .map(|m| {
                    m["seq_diverged"].as_u64().unwrap_or(0)
                        + m["maps_diverged"].as_u64().unwrap_or(0)
                })
                .sum();
            events = runs.first().and_then(|m| m["events"].as_u64()).unwrap_or(0);
            let mut entry = json!({
                "events_per_core_s": rate,
                "ns_per_event": 1e9 / rate,
                "diverged_reads": diverged,
                "runs": runs,
            });
            if let Some(base) = base_figures.get(&(r.name, *mode)) {
                let cpu_rate = |m: &Value| m["events_per_cpu_s"].as_f64();
                let ratios: Vec<f64> = runs
                    .iter()
                    .zip(base)
                    .filter_map(|(o, b)| Some(cpu_rate(o)? / cpu_rate(b)?))
                    .collect();
                entry["baseline_events_per_core_s"] =
                    json!(harness::median(base.iter().filter_map(cpu_rate).collect()));
                entry["vs_baseline"] = json!(harness::median(ratios.clone()));
                entry["vs_baseline_rounds"] = json!(ratios);
            }
            modes.insert((*mode).to_string(), entry);
        }
        workloads.insert(
            r.name.to_string(),
            json!({ "calls": r.calls, "events": events, "modes": modes }),
        );
    }
    let rate = |w: &str, m: &str| workloads[w]["modes"][m]["events_per_core_s"].clone();
    // Per round: a mode's events per wall second over the one-consumer json replay's.
    let wall_ratio = |mode: &str| {
        let base = figures.get(&("loop4", "json")).cloned().unwrap_or_default();
        let other = figures.get(&("loop4", mode)).cloned().unwrap_or_default();
        let ratios: Vec<f64> = base
            .iter()
            .zip(&other)
            .filter_map(|(b, o)| {
                Some(o["events_per_wall_s"].as_f64()? / b["events_per_wall_s"].as_f64()?)
            })
            .collect();
        (harness::median(ratios.clone()), ratios)
    };
    let (scaling, scaling_rounds) = wall_ratio("json_2t");
    let (machine, machine_rounds) = wall_ratio("machine_2p");
    json!({
        "rounds": ROUNDS,
        "baseline": baseline.map(|b| b.display().to_string()),
        "json_events_per_core_s": rate("loop", "json"),
        "aggregate_events_per_core_s": rate("stack_fp", "aggregate"),
        "scaling_2t": scaling,
        "scaling_2t_rounds": scaling_rounds,
        "machine_scaling_2p": machine,
        "machine_scaling_2p_rounds": machine_rounds,
        "scaling_2t_note": "loop4 (four traced processes), json: events per wall second with \
            --consumers 2 over one consumer, per round; machine_scaling_2p: two one-consumer \
            replays at once over one — what two busy threads get from this machine",
        "goals": {
            "json_events_per_core_s": 1_000_000,
            "aggregate_events_per_core_s": 3_500_000,
            "scaling_2t": 1.8,
        },
        "workloads": workloads,
    })
}

fn print_table(r: &Value) {
    print_modes(r);
    println!(
        "\nloop4 json, events per wall second: --consumers 2 / 1 = {:.2} (scaling_2t); two \
         one-consumer replays at once / one = {:.2} (machine_scaling_2p, this machine's ceiling)",
        r["scaling_2t"].as_f64().unwrap_or(f64::NAN),
        r["machine_scaling_2p"].as_f64().unwrap_or(f64::NAN)
    );
}

fn print_modes(r: &Value) {
    println!(
        "\n{:<10} {:<10} {:>10} {:>16} {:>12} {:>9} {:>12}",
        "workload", "mode", "events", "events/core-s", "ns/event", "diverged", "vs baseline"
    );
    let Some(workloads) = r["workloads"].as_object() else {
        return;
    };
    for (name, w) in workloads {
        let Some(modes) = w["modes"].as_object() else {
            continue;
        };
        for (mode, m) in modes {
            let vs = m["vs_baseline"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
            println!(
                "{:<10} {:<10} {:>10} {:>16.0} {:>12.0} {:>9} {:>12}",
                name,
                mode,
                w["events"],
                m["events_per_core_s"].as_f64().unwrap_or(f64::NAN),
                m["ns_per_event"].as_f64().unwrap_or(f64::NAN),
                m["diverged_reads"],
                vs
            );
        }
    }
}
