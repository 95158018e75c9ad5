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
//! Writes target/probed-bench/tracker.json and prints a table. Other tracers (e.g. other
//! probed instances) running on the host attach the same system-wide syscall tracepoints and
//! slow every mode down: their number is recorded in the report.

use super::harness::{self, TOOL_TIMEOUT};
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

/// Rounds of (none, tracked).
const ROUNDS: usize = 5;
/// Seconds the mapping workload runs per run.
const RUN_SECS: f64 = 3.0;
/// Runs of the loop target for the fast-path share, and their length.
const FAST_RUNS: usize = 2;
const LOOP_SECS: f64 = 3.0;
/// How long a tool may take to attach or to exit.
/// Goals (issue 4).
const GOAL_RATIO: f64 = 1.10;
const GOAL_FAST_SHARE: f64 = 0.99;

/// One run of the mapping workload.
#[derive(Clone, Debug, Default)]
struct Run {
    tracked: bool,
    ops: u64,
    rate: f64,
    ticks: u64,
    syscalls: u64,
    /// Tracked runs: probed's summary.
    summary: Option<Value>,
    /// Tracked runs: probed's CPU time after attaching, in ns.
    daemon_cpu_ns: Option<u64>,
}

/// Runs the benchmark, writes the JSON report and prints a table.
pub fn run() -> Result<()> {
    crate::build::run()?;
    let out_dir = paths::bench_dir();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let fixtures = paths::root().join("daemon/tests/fixtures");
    let workload = out_dir.join("tracker_bench");
    let mapped = out_dir.join("tracker_bench_mapped.so");
    let loop_target = out_dir.join("tracker_loop_target");
    for (out, source, flags) in [
        (&workload, "tracker_bench.c", &["-O2"][..]),
        (
            &mapped,
            "churn_lib.c",
            &["-O2", "-shared", "-fPIC", "-DWHICH=1"][..],
        ),
        (&loop_target, "trace_target.c", &["-O2", "-pthread"][..]),
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

    let mut runs = Vec::new();
    for round in 0..ROUNDS {
        for tracked in [round % 2 == 1, round % 2 == 0] {
            let run = run_workload(&workload, &mapped, tracked, &hits_file)?;
            eprintln!(
                "tracker: round {}/{ROUNDS} {:<8} {:>10.0} iterations/s  ({} iterations, {} ticks)",
                round + 1,
                if tracked { "tracked" } else { "none" },
                run.rate,
                run.ops,
                run.ticks
            );
            runs.push(run);
        }
    }
    let mut fast_runs = Vec::new();
    for i in 0..FAST_RUNS {
        let summary = run_loop(&loop_target, &hits_file)?;
        let (fast, hits) = fast_and_hits(&summary)?;
        eprintln!(
            "tracker: fast-path run {}/{FAST_RUNS}: {fast} of {hits} hits on the fast path",
            i + 1
        );
        fast_runs.push(summary);
    }

    let report = report(&runs, &fast_runs, others)?;
    let out = out_dir.join("tracker.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", out.display()))?;
    print_table(&report);
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
fn run_workload(workload: &Path, mapped: &Path, tracked: bool, hits_file: &Path) -> Result<Run> {
    let secs = RUN_SECS.to_string();
    let mut target = Waiting::start(
        workload,
        &[mapped.to_str().context("UTF-8 path")?, &secs, "--wait"],
    )?;
    let probed = if tracked {
        let spec = format!("uprobe:{}:bench_tick", workload.display());
        Some(Tracer::start(&spec, hits_file)?)
    } else {
        None
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
        tracked,
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

/// The loop target under probed; returns probed's summary.
fn run_loop(target: &Path, hits_file: &Path) -> Result<Value> {
    let secs = LOOP_SECS.to_string();
    let mut t = Waiting::start(target, &["--loop", &secs, "--wait"])?;
    let probed = Tracer::start(
        &format!("uprobe:{}:probed_add", target.display()),
        hits_file,
    )?;
    let line = t.go(Duration::from_secs_f64(LOOP_SECS))?;
    ensure!(line.starts_with("calls "), "unexpected line: {line}");
    Ok(probed.finish(hits_file)?.0)
}

/// (fast_path, hits resolved) from a summary's resolver counters.
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
    Ok((get("fast_path"), get("fast_path") + fallbacks))
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
        let ready = stdout.recv_timeout(TOOL_TIMEOUT).context("ready line")?;
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
            .recv_timeout(length + TOOL_TIMEOUT)
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
    fn start(spec: &str, hits_file: &Path) -> Result<Self> {
        let mut child = Command::new(paths::probed_bin())
            .args(["trace", spec, "--format", "json", "--output"])
            .arg(hits_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start probed")?;
        let stderr = harness::lines(child.stderr.take().context("probed stderr")?);
        let deadline = Instant::now() + TOOL_TIMEOUT;
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

fn report(runs: &[Run], fast_runs: &[Value], others: usize) -> Result<Value> {
    let rate = |tracked: bool| {
        harness::median(
            runs.iter()
                .filter(|r| r.tracked == tracked)
                .map(|r| r.rate)
                .collect(),
        )
    };
    let (rate_none, rate_tracked) = (rate(false), rate(true));
    let ratio = rate_none / rate_tracked;
    let tracked: Vec<&Run> = runs.iter().filter(|r| r.tracked).collect();
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
    let syscalls_tracked = sum(&|r| r.syscalls);
    let changes_replayed = sum(&|r| counter(r, "changes_replayed"));
    let changes_unreplayable = sum(&|r| counter(r, "changes_unreplayable"));
    let ticks = sum(&|r| r.ticks);
    let tick_hits = sum(&|r| probe(r, "hits"));
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
    let mut fast = 0;
    let mut mirror = 0;
    let mut hits = 0;
    for s in fast_runs {
        let (f, h) = fast_and_hits(s)?;
        fast += f;
        hits += h;
        mirror += s["resolver"]["from_mirror"].as_u64().unwrap_or(0);
    }
    let fast_share = fast as f64 / hits.max(1) as f64;
    let fast_or_mirror = (fast + mirror) as f64 / hits.max(1) as f64;
    let run_list: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "mode": if r.tracked { "tracked" } else { "none" },
                "iterations": r.ops, "rate": r.rate, "ticks": r.ticks, "syscalls": r.syscalls,
                "daemon_cpu_ns": r.daemon_cpu_ns,
                "resolver": r.summary.as_ref().map(|s| s["resolver"].clone()),
                "probe": r.summary.as_ref().map(|s| s["probes"][0].clone()),
            })
        })
        .collect();
    Ok(json!({
        "rate_none": rate_none,
        "rate_tracked": rate_tracked,
        "rate_none_over_tracked": ratio,
        "fast_path_share": fast_share,
        "fast_path_share_counts": "hits answered via=fast (speculative, sequence-validated lookup) / all hits of the loop target",
        "fast_or_mirror_share": fast_or_mirror,
        "fast_path_hits": fast,
        "fast_path_run_hits": hits,
        "rate_unit": "workload iterations/s (one read+exec file mmap + munmap each, an anonymous mmap + munmap every 4th)",
        "tracked_syscalls": syscalls_tracked,
        "tracked_changes_replayed": changes_replayed,
        "tracked_changes_unreplayable": changes_unreplayable,
        "tracked_ticks": ticks,
        "tracked_tick_hits": tick_hits,
        "tracked_tick_unresolved": tick_unresolved,
        "daemon_cpu_share_tracked": daemon_cpu_share,
        "other_tracers_running": others,
        "rounds": ROUNDS,
        "run_seconds": RUN_SECS,
        "fast_path_runs": FAST_RUNS,
        "loop_seconds": LOOP_SECS,
        "goals": {
            "rate_none_over_tracked": {"goal": format!("<= {GOAL_RATIO}"), "met": ratio <= GOAL_RATIO},
            "fast_path_share": {"goal": format!(">= {GOAL_FAST_SHARE}"), "met": fast_share >= GOAL_FAST_SHARE},
        },
        "runs": run_list,
        "fast_path_summaries": fast_runs,
    }))
}

fn print_table(r: &Value) {
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let u = |k: &str| r[k].as_u64().unwrap_or(0);
    let met = |g: &str| {
        if r["goals"][g]["met"].as_bool() == Some(true) {
            "met"
        } else {
            "MISSED"
        }
    };
    println!(
        "\ntracker: {ROUNDS} rounds x {RUN_SECS} s of mmap/munmap churn, medians of iterations/s"
    );
    println!("{:<10}{:>14}{:>12}", "mode", "iterations/s", "vs none");
    println!("{:<10}{:>14.0}{:>12}", "none", f("rate_none"), "1.000");
    println!(
        "{:<10}{:>14.0}{:>12.3}",
        "tracked",
        f("rate_tracked"),
        f("rate_tracked") / f("rate_none")
    );
    println!(
        "\nrate_none / rate_tracked = {:.3} (goal <= {GOAL_RATIO}: {})",
        f("rate_none_over_tracked"),
        met("rate_none_over_tracked")
    );
    println!(
        "tracked runs: {} mapping syscalls, {} changes replayed, {} unreplayable; bench_tick hits {} / calls {} ({} unresolved); probed CPU {:.0}% of a core",
        u("tracked_syscalls"),
        u("tracked_changes_replayed"),
        u("tracked_changes_unreplayable"),
        u("tracked_tick_hits"),
        u("tracked_ticks"),
        u("tracked_tick_unresolved"),
        100.0 * f("daemon_cpu_share_tracked")
    );
    println!(
        "fast path (loop target, stable mappings, {FAST_RUNS} x {LOOP_SECS} s): {} of {} hits = {:.4} (goal >= {GOAL_FAST_SHARE}: {}); fast or mirror {:.4}",
        u("fast_path_hits"),
        u("fast_path_run_hits"),
        f("fast_path_share"),
        met("fast_path_share"),
        f("fast_or_mirror_share")
    );
    if u("other_tracers_running") > 0 {
        println!(
            "note: {} other tracer process(es) were running during the benchmark",
            u("other_tracers_running")
        );
    }
}
