//! `cargo xtask bench tracker`: what the BPF change tracker costs a process that changes its
//! mappings all the time, and how often hits of a process whose mappings do not change take
//! the fast path.
//!
//! 1. Mapping churn. A C workload (daemon/tests/fixtures/tracker_bench.c) maps an executable
//!    file read+exec and unmaps it as fast as it can, with an anonymous map+unmap every 4th
//!    iteration, and calls `bench_tick` every 256 iterations; it reports iterations/s. It runs
//!    alone ("none") and under `probed trace uprobe:WORKLOAD:bench_tick` ("tracked": the
//!    process maps the probed file, so probed tracks it from the start and replays every one
//!    of its changes), interleaved over several rounds (the order alternates, so drift falls
//!    on both alike). Both modes start the workload the same way (`--wait`, then a go line).
//! 2. Fast-path share. The e2e loop target (trace_target.c --loop: one thread calling
//!    `probed_add` in a tight loop, no mapping changes) runs under probed; the share is
//!    `fast_path / hits` from probed's summary counters: only hits answered by the
//!    speculative, sequence-validated lookup (no lock, no allocation, no syscall). Answers
//!    from the published mirror are lock-free as well but enter through the slow path (a
//!    first hit, a newer picture), so they are reported apart (`fast_or_mirror_share`), not
//!    counted in the goal's share.
//!
//! 3. Host tax (issue 11). Processes probed does *not* track make system calls as fast as they
//!    can (daemon/tests/fixtures/tax_loop.c): `getppid` (a syscall that changes nothing) and
//!    an anonymous 64 KiB mmap + munmap. Each runs alone and while probed traces a probe in
//!    another program (`uprobe:tracker_bench:bench_tick`, not running), interleaved;
//!    `tax_getppid` and `tax_mmap_untracked` are the medians' ratios with / without probed.
//!    `rate_tracked_over_none` is the churn workload's (1.) tracked / alone ratio.
//!
//! Every measurement with probed is made once per tracker mode (`--tracker syscalls,lock,kseq`:
//! probed's `--tracker`), in the same interleaved rounds, so the modes are compared on the
//! same machine state. Writes target/probed-bench/tracker.json and prints a table. Other
//! tracers (e.g. other probed instances) running on the host attach system-wide tracepoints
//! and slow every mode down: their number is recorded in the report.

use super::harness::{self, tool_timeout};
use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::{exec, paths};

/// Rounds of (none, tracked in each mode).
const ROUNDS: usize = 7;
/// Seconds the mapping workload runs per run.
const RUN_SECS: f64 = 3.0;
/// Seconds each tax workload runs per run.
const TAX_SECS: f64 = 2.0;
/// Runs of the loop target for the fast-path share, and their length.
const FAST_RUNS: usize = 2;
const LOOP_SECS: f64 = 3.0;
/// Goals (issue 4).
const GOAL_RATIO: f64 = 1.10;
const GOAL_FAST_SHARE: f64 = 0.99;
/// Goals (issue 11).
const GOAL_TAX: f64 = 0.98;
const GOAL_TRACKED_OVER_NONE: f64 = 0.90;
/// The tax workloads: (name in the report, tax_loop mode).
const TAX_WORKLOADS: [(&str, &str); 2] =
    [("tax_getppid", "getppid"), ("tax_mmap_untracked", "mmap")];

/// One run of the mapping workload.
#[derive(Clone, Debug, Default)]
struct Run {
    round: usize,
    /// The tracker mode probed ran with; `None`: the workload ran alone.
    mode: Option<String>,
    ops: u64,
    rate: f64,
    ticks: u64,
    syscalls: u64,
    /// Tracked runs: probed's summary.
    summary: Option<Value>,
    /// Tracked runs: probed's CPU time after attaching, in ns.
    daemon_cpu_ns: Option<u64>,
}

/// One run of a tax workload.
#[derive(Clone, Debug)]
struct TaxRun {
    round: usize,
    workload: &'static str,
    /// The tracker mode of the probed running meanwhile; `None`: no probed.
    mode: Option<String>,
    rate: f64,
    /// probed's CPU time after attaching, in ns.
    daemon_cpu_ns: Option<u64>,
}

/// Runs the benchmark with each of `modes` (probed's `--tracker` values), writes the JSON
/// report and prints a table.
pub fn run(modes: &[String]) -> Result<()> {
    ensure!(!modes.is_empty(), "no tracker mode to measure");
    super::build()?;
    let out_dir = paths::bench_dir();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let fixtures = paths::root().join("daemon/tests/fixtures");
    let workload = out_dir.join("tracker_bench");
    let mapped = out_dir.join("tracker_bench_mapped.so");
    let loop_target = out_dir.join("tracker_loop_target");
    let tax = out_dir.join("tax_loop");
    for (out, source, flags) in [
        (&workload, "tracker_bench.c", &["-O2"][..]),
        (
            &mapped,
            "churn_lib.c",
            &["-O2", "-shared", "-fPIC", "-DWHICH=1"][..],
        ),
        (&loop_target, "trace_target.c", &["-O2", "-pthread"][..]),
        (&tax, "tax_loop.c", &["-O2"][..]),
    ] {
        exec::exec(
            Command::new("cc")
                .args(flags)
                .arg("-o")
                .arg(out)
                .arg(fixtures.join(source)),
        )?;
    }
    let others = other_tracers();
    if others > 0 {
        eprintln!(
            "tracker: warning: {others} other probed/bpftrace process(es) running; they slow every mode"
        );
    }
    let hits_file = harness::hits_file("tracker");
    // The order alternates round by round so that drift falls on every state alike.
    let states = |round: usize| {
        let mut s: Vec<Option<String>> = std::iter::once(None)
            .chain(modes.iter().cloned().map(Some))
            .collect();
        if round % 2 == 1 {
            s.reverse();
        }
        s
    };

    let mut runs = Vec::new();
    let mut tax_runs = Vec::new();
    // probed traces a probe in a program that is not running: the tax runs measure the
    // tracker alone, on processes it does not track.
    let idle_spec = format!("uprobe:{}:bench_tick", workload.display());
    for round in 0..ROUNDS {
        for mode in states(round) {
            let mut run = run_workload(&workload, &mapped, mode.as_deref(), &hits_file)?;
            run.round = round;
            eprintln!(
                "tracker: round {}/{ROUNDS} churn {:<10} {:>10.0} iterations/s  ({} iterations, {} ticks)",
                round + 1,
                mode.as_deref().unwrap_or("none"),
                run.rate,
                run.ops,
                run.ticks
            );
            runs.push(run);
        }
        for (name, arg) in TAX_WORKLOADS {
            for mode in states(round + 1) {
                let mut run = run_tax(&tax, arg, name, mode, &idle_spec, &hits_file)?;
                run.round = round;
                eprintln!(
                    "tracker: round {}/{ROUNDS} {name:<19} {:<10} {:>12.0} calls/s",
                    round + 1,
                    run.mode.as_deref().unwrap_or("none"),
                    run.rate,
                );
                tax_runs.push(run);
            }
        }
    }
    let mut fast_runs = Vec::new();
    for mode in modes {
        for i in 0..FAST_RUNS {
            let summary = run_loop(&loop_target, mode, &hits_file)?;
            let (fast, hits) = fast_and_hits(&summary)?;
            eprintln!(
                "tracker: fast-path run {}/{FAST_RUNS} ({mode}): {fast} of {hits} hits on the fast path",
                i + 1
            );
            fast_runs.push((mode.clone(), summary));
        }
    }

    let report = report(modes, &runs, &tax_runs, &fast_runs, others)?;
    let out = out_dir.join("tracker.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", out.display()))?;
    print_table(modes, &report);
    println!("\nwrote {}", out.display());
    Ok(())
}

/// Running probed or bpftrace processes other than ours (they attach tracepoints too).
fn other_tracers() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| matches!(c.trim(), "probed" | "bpftrace"))
        })
        .count()
}

/// One run of the mapping workload, alone or under probed.
fn run_workload(
    workload: &Path,
    mapped: &Path,
    mode: Option<&str>,
    hits_file: &Path,
) -> Result<Run> {
    let secs = RUN_SECS.to_string();
    let mut target = Waiting::start(
        workload,
        &[mapped.to_str().context("UTF-8 path")?, &secs, "--wait"],
    )?;
    let probed = match mode {
        Some(mode) => {
            let spec = format!("uprobe:{}:bench_tick", workload.display());
            Some(Tracer::start(&spec, mode, hits_file)?)
        }
        None => None,
    };
    let line = target.go(Duration::from_secs_f64(RUN_SECS))?;
    // ops N rate R ticks T syscalls S
    let f: Vec<&str> = line.split_whitespace().collect();
    let (ops, rate, ticks, syscalls) = match f.as_slice() {
        ["ops", n, "rate", r, "ticks", t, "syscalls", s] => {
            (n.parse()?, r.parse()?, t.parse()?, s.parse()?)
        }
        _ => bail!("unexpected line from the workload: {line}"),
    };
    let mut run = Run {
        mode: mode.map(str::to_owned),
        ops,
        rate,
        ticks,
        syscalls,
        ..Run::default()
    };
    if let Some(probed) = probed {
        let (summary, cpu_ns) = probed.finish(hits_file)?;
        run.summary = Some(summary);
        run.daemon_cpu_ns = Some(cpu_ns);
    }
    Ok(run)
}

/// One run of a tax workload, alone (`mode` None) or while probed traces `spec`.
fn run_tax(
    tax: &Path,
    arg: &str,
    workload: &'static str,
    mode: Option<String>,
    spec: &str,
    hits_file: &Path,
) -> Result<TaxRun> {
    let secs = TAX_SECS.to_string();
    let mut target = Waiting::start(tax, &[arg, &secs, "--wait"])?;
    let probed = match &mode {
        Some(mode) => Some(Tracer::start(spec, mode, hits_file)?),
        None => None,
    };
    let line = target.go(Duration::from_secs_f64(TAX_SECS))?;
    let rate = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["ops", _, "rate", r] => r.parse()?,
        _ => bail!("unexpected line from tax_loop: {line}"),
    };
    let daemon_cpu_ns = match probed {
        Some(p) => Some(p.finish(hits_file)?.1),
        None => None,
    };
    Ok(TaxRun {
        round: 0,
        workload,
        mode,
        rate,
        daemon_cpu_ns,
    })
}

/// The loop target under probed; returns probed's summary.
fn run_loop(target: &Path, mode: &str, hits_file: &Path) -> Result<Value> {
    let secs = LOOP_SECS.to_string();
    let mut t = Waiting::start(target, &["--loop", &secs, "--wait"])?;
    let probed = Tracer::start(
        &format!("uprobe:{}:probed_add", target.display()),
        mode,
        hits_file,
    )?;
    let line = t.go(Duration::from_secs_f64(LOOP_SECS))?;
    ensure!(line.starts_with("calls "), "unexpected line: {line}");
    Ok(probed.finish(hits_file)?.0)
}

/// (fast_path, hits resolved) from a summary's resolver counters (kseq mode: its answers
/// from captures at the hit's counter value are its fast path).
fn fast_and_hits(summary: &Value) -> Result<(u64, u64)> {
    let r = summary["resolver"]
        .as_object()
        .context("resolver counters")?;
    let get = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
    let fallbacks: u64 = r
        .iter()
        .filter(|(k, _)| k.starts_with("fallback_"))
        .filter_map(|(_, v)| v.as_u64())
        .sum();
    // Kseq mode's lock-free path: a hit answered from a capture at its counter value.
    let fast = get("fast_path") + get("kseq_answered");
    Ok((fast, fast + fallbacks + get("kseq_missed")))
}

/// A fixture started with `--wait`: it printed "ready PID" and waits for a go line.
struct Waiting {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: mpsc::Receiver<String>,
}

impl Waiting {
    fn start(bin: &Path, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdin = child.stdin.take();
        let stdout = harness::lines(child.stdout.take().context("stdout")?);
        let ready = stdout.recv_timeout(tool_timeout()).context("ready line")?;
        ensure!(ready.starts_with("ready "), "unexpected line: {ready}");
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// Sends the go line and returns the result line (the run lasts about `length`).
    fn go(&mut self, length: Duration) -> Result<String> {
        let mut stdin = self.stdin.take().context("already started")?;
        stdin.write_all(b"go\n")?;
        drop(stdin);
        let line = self
            .stdout
            .recv_timeout(length + tool_timeout())
            .context("result line")?;
        let status = self.child.wait()?;
        ensure!(status.success(), "workload failed: {status}");
        Ok(line)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running `probed trace SPEC --format json --output FILE`.
struct Tracer {
    child: Child,
    startup_cpu_ns: u64,
}

impl Tracer {
    fn start(spec: &str, mode: &str, hits_file: &Path) -> Result<Self> {
        let mut child = Command::new(paths::probed_bin())
            .args([
                "trace",
                spec,
                "--tracker",
                mode,
                "--format",
                "json",
                "--output",
            ])
            .arg(hits_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start probed")?;
        let stderr = harness::lines(child.stderr.take().context("probed stderr")?);
        let deadline = Instant::now() + tool_timeout();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = stderr
                .recv_timeout(left)
                .context("probed did not start tracing")?;
            if line.contains("probed: tracing") {
                break;
            }
            eprintln!("probed: {line}");
        }
        let startup_cpu_ns = harness::cpu_ns_so_far(child.id());
        Ok(Self {
            child,
            startup_cpu_ns,
        })
    }

    /// Stops probed (SIGINT) and returns its summary and its CPU time after attaching.
    fn finish(mut self, hits_file: &Path) -> Result<(Value, u64)> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        let rc = unsafe { libc::kill(pid, libc::SIGINT) };
        ensure!(rc == 0, "kill probed: {}", std::io::Error::last_os_error());
        let (status, cpu_ns) = harness::wait_with_rusage(&mut self.child)?;
        ensure!(status == 0, "probed exited with wait status {status}");
        let file =
            File::open(hits_file).with_context(|| format!("open {}", hits_file.display()))?;
        let mut summary = None;
        for line in BufReader::new(file).lines() {
            let line = line?;
            if line.starts_with(r#"{"type":"summary""#) {
                summary = Some(serde_json::from_str::<Value>(&line)?);
            }
        }
        let _ = std::fs::remove_file(hits_file);
        Ok((
            summary.context("probed wrote no summary line")?,
            cpu_ns.saturating_sub(self.startup_cpu_ns),
        ))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The report of one tracker mode.
fn mode_report(
    mode: &str,
    runs: &[Run],
    tax_runs: &[TaxRun],
    fast_runs: &[(String, Value)],
) -> Result<Value> {
    let rate = |m: Option<&str>| {
        harness::median(
            runs.iter()
                .filter(|r| r.mode.as_deref() == m)
                .map(|r| r.rate)
                .collect(),
        )
    };
    let (rate_none, rate_tracked) = (rate(None), rate(Some(mode)));
    let ratio = rate_none / rate_tracked;
    // The median of per-round paired ratios (see `paired_ratio`).
    let tracked_over_none = paired_ratio(
        runs.iter().map(|r| (r.round, r.mode.as_deref(), r.rate)),
        mode,
    );
    let tracked: Vec<&Run> = runs
        .iter()
        .filter(|r| r.mode.as_deref() == Some(mode))
        .collect();
    let counter = |r: &Run, k: &str| {
        r.summary
            .as_ref()
            .and_then(|s| s["resolver"][k].as_u64())
            .unwrap_or(0)
    };
    let probe = |r: &Run, k: &str| {
        r.summary
            .as_ref()
            .and_then(|s| s["probes"][0][k].as_u64())
            .unwrap_or(0)
    };
    let sum = |f: &dyn Fn(&Run) -> u64| tracked.iter().map(|r| f(r)).sum::<u64>();
    let tick_unresolved: u64 = tracked
        .iter()
        .filter_map(|r| {
            r.summary.as_ref()?["probes"][0]["unresolved"]
                .as_object()
                .cloned()
        })
        .flat_map(|m| m.into_iter().filter_map(|(_, v)| v.as_u64()))
        .sum();
    let daemon_cpu_share = harness::median(
        tracked
            .iter()
            .filter_map(|r| Some(r.daemon_cpu_ns? as f64 / (RUN_SECS * 1e9)))
            .collect(),
    );
    let tax_rate = |w: &str, m: Option<&str>| {
        harness::median(
            tax_runs
                .iter()
                .filter(|r| r.workload == w && r.mode.as_deref() == m)
                .map(|r| r.rate)
                .collect(),
        )
    };
    let paired = |w: &str| {
        paired_ratio(
            tax_runs
                .iter()
                .filter(|r| r.workload == w)
                .map(|r| (r.round, r.mode.as_deref(), r.rate)),
            mode,
        )
    };
    let mut taxes = serde_json::Map::new();
    for (name, _) in TAX_WORKLOADS {
        let (with, without) = (tax_rate(name, Some(mode)), tax_rate(name, None));
        taxes.insert(name.into(), json!(paired(name)));
        taxes.insert(format!("{name}_ratio_of_medians"), json!(with / without));
        taxes.insert(format!("{name}_rate_with"), json!(with));
        taxes.insert(format!("{name}_rate_without"), json!(without));
    }
    let (mut fast, mut mirror, mut hits) = (0, 0, 0);
    for (_, s) in fast_runs.iter().filter(|(m, _)| m == mode) {
        let (f, h) = fast_and_hits(s)?;
        fast += f;
        hits += h;
        mirror += s["resolver"]["from_mirror"].as_u64().unwrap_or(0);
    }
    let fast_share = fast as f64 / hits.max(1) as f64;
    let fast_or_mirror = (fast + mirror) as f64 / hits.max(1) as f64;
    let tax_getppid = taxes["tax_getppid"].as_f64().unwrap_or(f64::NAN);
    let tax_mmap = taxes["tax_mmap_untracked"].as_f64().unwrap_or(f64::NAN);
    let mut out = json!({
        "rate_none": rate_none,
        "rate_tracked": rate_tracked,
        "rate_none_over_tracked": ratio,
        "rate_tracked_over_none": tracked_over_none,
        "rate_tracked_over_none_ratio_of_medians": rate_tracked / rate_none,
        "fast_path_share": fast_share,
        "fast_or_mirror_share": fast_or_mirror,
        "fast_path_hits": fast,
        "fast_path_run_hits": hits,
        "tracked_syscalls": sum(&|r| r.syscalls),
        "tracked_changes_replayed": sum(&|r| counter(r, "changes_replayed")),
        "tracked_changes_unreplayable": sum(&|r| counter(r, "changes_unreplayable")),
        "tracked_rescans": sum(&|r| counter(r, "rescans")),
        "tracked_ticks": sum(&|r| r.ticks),
        "tracked_tick_hits": sum(&|r| probe(r, "hits")),
        "tracked_tick_unresolved": tick_unresolved,
        "tracked_tick_via": tracked.iter().filter_map(|r| r.summary.as_ref().map(|s| s["resolver"].clone())).collect::<Vec<_>>(),
        "daemon_cpu_share_tracked": daemon_cpu_share,
        "daemon_cpu_share_tax": harness::median(
            tax_runs
                .iter()
                .filter(|r| r.mode.as_deref() == Some(mode))
                .filter_map(|r| Some(r.daemon_cpu_ns? as f64 / (TAX_SECS * 1e9)))
                .collect(),
        ),
        "goals": {
            "tax_getppid": {"goal": format!(">= {GOAL_TAX}"), "met": tax_getppid >= GOAL_TAX},
            "tax_mmap_untracked": {"goal": format!(">= {GOAL_TAX}"), "met": tax_mmap >= GOAL_TAX},
            "rate_tracked_over_none": {"goal": format!(">= {GOAL_TRACKED_OVER_NONE}"), "met": tracked_over_none >= GOAL_TRACKED_OVER_NONE},
            "rate_none_over_tracked": {"goal": format!("<= {GOAL_RATIO}"), "met": ratio <= GOAL_RATIO},
            "fast_path_share": {"goal": format!(">= {GOAL_FAST_SHARE}"), "met": fast_share >= GOAL_FAST_SHARE},
        },
    });
    if let Some(o) = out.as_object_mut() {
        o.extend(taxes);
    }
    Ok(out)
}

/// The median over rounds of each round's paired ratio: `mode`'s rate over the rate without
/// probed (`None`), from (round, mode, rate) samples. Pairing runs made one right after the
/// other cancels the drift of a shared machine that a ratio of medians would keep.
fn paired_ratio<'a>(
    samples: impl Iterator<Item = (usize, Option<&'a str>, f64)>,
    mode: &str,
) -> f64 {
    let samples: Vec<_> = samples.collect();
    let rounds = samples.iter().map(|s| s.0).max().map_or(0, |m| m + 1);
    harness::median(
        (0..rounds)
            .filter_map(|round| {
                let rate = |m: Option<&str>| {
                    samples
                        .iter()
                        .find(|s| s.0 == round && s.1 == m)
                        .map(|s| s.2)
                };
                Some(rate(Some(mode))? / rate(None)?)
            })
            .collect(),
    )
}

fn report(
    modes: &[String],
    runs: &[Run],
    tax_runs: &[TaxRun],
    fast_runs: &[(String, Value)],
    others: usize,
) -> Result<Value> {
    let mut per_mode = serde_json::Map::new();
    for mode in modes {
        per_mode.insert(mode.clone(), mode_report(mode, runs, tax_runs, fast_runs)?);
    }
    let run_list: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "mode": r.mode.as_deref().unwrap_or("none"),
                "iterations": r.ops, "rate": r.rate, "ticks": r.ticks, "syscalls": r.syscalls,
                "daemon_cpu_ns": r.daemon_cpu_ns,
                "resolver": r.summary.as_ref().map(|s| s["resolver"].clone()),
                "probe": r.summary.as_ref().map(|s| s["probes"][0].clone()),
                "tracker": r.summary.as_ref().map(|s| s["tracker"].clone()),
            })
        })
        .collect();
    let tax_list: Vec<Value> = tax_runs
        .iter()
        .map(|r| {
            json!({
                "workload": r.workload, "mode": r.mode.as_deref().unwrap_or("none"),
                "rate": r.rate, "daemon_cpu_ns": r.daemon_cpu_ns,
            })
        })
        .collect();
    Ok(json!({
        "modes": per_mode,
        "ratios": "tax_* and rate_tracked_over_none: median over rounds of the round's paired ratio (with probed / without); *_ratio_of_medians: ratio of the medians of rates",
        "rate_unit": "churn: workload iterations/s (one read+exec file mmap + munmap each, an anonymous mmap + munmap every 4th); tax: calls/s (getppid, or anonymous 64 KiB mmap + munmap) of a process probed does not track",
        "fast_path_share_counts": "hits answered via=fast (speculative, sequence-validated lookup) / all hits of the loop target",
        "other_tracers_running": others,
        "rounds": ROUNDS,
        "run_seconds": RUN_SECS,
        "tax_seconds": TAX_SECS,
        "fast_path_runs": FAST_RUNS,
        "loop_seconds": LOOP_SECS,
        "runs": run_list,
        "tax_runs": tax_list,
        "fast_path_summaries": fast_runs.iter().map(|(m, s)| json!({"mode": m, "summary": s})).collect::<Vec<_>>(),
    }))
}

fn print_table(modes: &[String], report: &Value) {
    println!(
        "\ntracker: {ROUNDS} interleaved rounds; churn {RUN_SECS} s, tax {TAX_SECS} s per run; medians of per-round paired ratios"
    );
    println!(
        "{:<10}{:>14}{:>20}{:>14}{:>13}{:>11}{:>12}",
        "mode",
        "tax_getppid",
        "tax_mmap_untracked",
        "tracked/none",
        "fast share",
        "rescans",
        "probed CPU"
    );
    for mode in modes {
        let r = &report["modes"][mode];
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<10}{:>14.3}{:>20.3}{:>14.3}{:>13.4}{:>11}{:>11.0}%",
            mode,
            f("tax_getppid"),
            f("tax_mmap_untracked"),
            f("rate_tracked_over_none"),
            f("fast_path_share"),
            r["tracked_rescans"].as_u64().unwrap_or(0),
            100.0 * f("daemon_cpu_share_tracked"),
        );
        let goals = r["goals"].as_object().cloned().unwrap_or_default();
        let missed: Vec<&String> = goals
            .iter()
            .filter(|(_, g)| g["met"].as_bool() != Some(true))
            .map(|(k, _)| k)
            .collect();
        println!(
            "  {mode}: tick hits {} / calls {} ({} unresolved); goals missed: {}",
            r["tracked_tick_hits"].as_u64().unwrap_or(0),
            r["tracked_ticks"].as_u64().unwrap_or(0),
            r["tracked_tick_unresolved"].as_u64().unwrap_or(0),
            if missed.is_empty() {
                "none".to_string()
            } else {
                missed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    let others = report["other_tracers_running"].as_u64().unwrap_or(0);
    if others > 0 {
        println!("note: {others} other tracer process(es) were running during the benchmark");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each round's ratio pairs runs of that round only: a machine twice as fast in round 1
    /// leaves the paired ratio at 0.5, and a round missing either side is left out.
    #[test]
    fn paired_ratio_pairs_within_rounds() {
        let samples = [
            (0, None, 100.0),
            (0, Some("lock"), 50.0),
            (1, Some("lock"), 100.0),
            (1, None, 200.0),
            (2, None, 300.0),
            (1, Some("syscalls"), 20.0),
        ];
        assert_eq!(paired_ratio(samples.into_iter(), "lock"), 0.5);
        assert_eq!(paired_ratio(samples.into_iter(), "syscalls"), 0.1);
    }
}
