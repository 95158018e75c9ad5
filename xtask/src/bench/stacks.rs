//! `cargo xtask bench stacks`: what user stacks cost the daemon, frame by frame.
//!
//! A C workload (daemon/tests/fixtures/stacks_bench.c, frame pointers) calls `bench_leaf`
//! through 18 recursive frames in a tight loop for a fixed time, so every hit carries a
//! 21-frame user stack (leaf, 18 × bench_descend, main, libc). It runs, interleaved over
//! several rounds (the order rotates, so drift falls on every mode alike):
//! - `none`: alone;
//! - `hits`: under `probed trace --format json` without stacks (the per-hit baseline);
//! - `stack`: with `--stack`, every frame resolved and written as JSON;
//! - `aggregate`: with `--stack --aggregate stack` (frames resolved, stacks counted, no
//!   per-hit lines);
//! - `cfi_none`, `cfi_hits`, `cfi_stack`: the same workload built without frame pointers
//!   (`-fomit-frame-pointer`), alone, without stacks, and with `--stack=auto` (BPF copies
//!   16 KiB of stack per hit; the daemon unwinds it with .eh_frame). Its frames are the
//!   unwinder's count (`unwound_frames`), since the unwinder's own lookups are resolver
//!   lookups too. The fp modes run `--stack=fp`.
//!
//! Every probed is attached before the first call and stopped after the last, so hits must
//! equal calls, and `lost` must stay 0 ("no loss with stacks on"). Resolver lookups (one per
//! hit address plus one per frame) come from probed's summary counters: frames = lookups −
//! hits, plus the frames answered by captures or kseq mode's store (`*_frames`: those take
//! no mirror lookup); `fast_path_share` = fast-path answers / lookups. `frames_per_sec` is frames
//! resolved per second of the run (the kernel's pace: a uprobe hit with a stack walk costs
//! the target ~10 µs here); `frames_per_daemon_cpu_sec` is the daemon's capacity.
//!
//! The resolver's share of daemon CPU comes from one more `stack` run profiled with
//! `perf record -e cpu-clock` (samples attributed by symbol name: `probed::resolve::` and
//! the arc-swap snapshot loads are the resolver; `probed::symbolize`/`probed::elf` the
//! symbolizer; code inlined across those lines is counted where it landed, so the split is
//! approximate). `resolver_ns_per_frame` = that share × daemon CPU / lookups;
//! `resolver_ns_per_frame_upper` adds the pipeline's own symbols (where the resolver's fast
//! path is inlined, and each Frame is built), and is held against the goal of 2 × a bare
//! speculative lookup (daemon/benches/resolver.rs: 27.7 ns, README).
//! Finally the aggregators' own cost per hit is timed in-process
//! (`output::tests::aggregation_cost`, release).
//!
//! Writes target/probed-bench/stacks.json and prints a table.

use super::harness::{self, tool_timeout};
use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::{exec, paths};

/// Rounds of every mode.
const ROUNDS: usize = 3;
/// Seconds the workload loops per run.
const LOOP_SECS: f64 = 3.0;
/// The probed function.
const SYMBOL: &str = "bench_leaf";
/// A bare speculative lookup, ns (daemon/benches/resolver.rs, ~650 VMAs; README).
const BARE_LOOKUP_NS: f64 = 27.7;
/// Goal: resolving a frame costs at most this many bare lookups.
const GOAL_RATIO: f64 = 2.0;
/// perf sampling frequency of the profiled run.
const PERF_HZ: &str = "2999";

/// One way of running the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    None,
    Hits,
    Stack,
    Aggregate,
    /// The workload built without frame pointers, alone.
    CfiNone,
    /// … under probed without stacks.
    CfiHits,
    /// … with `--stack` (auto: a 16 KiB stack copy per hit, unwound with .eh_frame).
    CfiStack,
}

impl Mode {
    const ALL: [Self; 7] = [
        Self::None,
        Self::Hits,
        Self::Stack,
        Self::Aggregate,
        Self::CfiNone,
        Self::CfiHits,
        Self::CfiStack,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Hits => "hits",
            Self::Stack => "stack",
            Self::Aggregate => "aggregate",
            Self::CfiNone => "cfi_none",
            Self::CfiHits => "cfi_hits",
            Self::CfiStack => "cfi_stack",
        }
    }

    /// Whether the run uses the workload built without frame pointers.
    fn cfi(self) -> bool {
        matches!(self, Self::CfiNone | Self::CfiHits | Self::CfiStack)
    }

    /// probed's options beyond the SPEC, if probed runs.
    fn args(self) -> Option<&'static [&'static str]> {
        match self {
            Self::None | Self::CfiNone => None,
            Self::Hits | Self::CfiHits => Some(&[]),
            Self::Stack => Some(&["--stack=fp"]),
            Self::Aggregate => Some(&["--stack=fp", "--aggregate", "stack"]),
            Self::CfiStack => Some(&["--stack=auto"]),
        }
    }
}

/// One run of the workload.
#[derive(Clone, Debug)]
struct Run {
    mode: Mode,
    calls: u64,
    rate: f64,
    /// probed runs: hits counted in BPF, printed/aggregated, lost.
    hits: u64,
    handled: u64,
    lost: u64,
    /// Resolver lookups and fast-path answers.
    lookups: u64,
    fast: u64,
    /// Frames of stacks unwound in the daemon (CFI mode; the unwinder's own lookups are
    /// resolver lookups too, so frames are not lookups − hits there).
    unwound: u64,
    /// Hits and frames answered without the mirror's lookups: by their captures (lock and
    /// kseq modes) or by kseq mode's store of them, answered or not (`captured`,
    /// `capture_failed`, `kseq_answered`, `kseq_missed` and their `_frames`).
    captured_hits: u64,
    captured_frames: u64,
    /// probed's CPU after attaching, ns.
    cpu_ns: u64,
}

impl Run {
    fn frames(&self) -> u64 {
        if self.mode == Mode::CfiStack {
            self.unwound
        } else {
            // The mirror's lookups are its hits' and its frames'.
            let mirror_hits = self.handled.saturating_sub(self.captured_hits);
            self.captured_frames + self.lookups.saturating_sub(mirror_hits)
        }
    }
}

/// Runs the benchmark, writes the JSON report and prints a table.
pub fn run() -> Result<()> {
    super::build()?;
    let out_dir = paths::bench_dir();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let (workload, workload_cfi) = compile_workloads(&out_dir)?;
    let out_file = harness::hits_file("stacks");

    let mut runs = Vec::new();
    for round in 0..ROUNDS {
        for i in 0..Mode::ALL.len() {
            let mode = Mode::ALL[(round + i) % Mode::ALL.len()];
            let bin = if mode.cfi() { &workload_cfi } else { &workload };
            let run = run_mode(mode, bin, &out_file, None)?;
            eprintln!(
                "stacks: round {}/{ROUNDS} {:<9} {:>9.0} calls/s  hits {:>8}  lost {}  frames {:>9}  cpu {:.2} s",
                round + 1,
                mode.name(),
                run.rate,
                run.hits,
                run.lost,
                run.frames(),
                run.cpu_ns as f64 / 1e9
            );
            runs.push(run);
        }
    }
    let perf_data = out_dir.join("stacks.perf.data");
    let profiled = run_mode(Mode::Stack, &workload, &out_file, Some(&perf_data))?;
    let shares = perf_shares(&perf_data)?;
    let aggregation = aggregation_cost()?;

    let report = report(&runs, &profiled, &shares, &aggregation);
    let out = out_dir.join("stacks.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", out.display()))?;
    print_table(&report);
    println!("\nwrote {}", out.display());
    Ok(())
}

/// Builds the workload into `out_dir` with frame pointers and, as distributions build,
/// without (only .eh_frame).
pub(super) fn compile_workloads(out_dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let compile = |name: &str, frame_pointer: &str| -> Result<PathBuf> {
        let out = out_dir.join(name);
        exec::exec(
            Command::new("cc")
                .args(["-O1", frame_pointer, "-fno-inline", "-o"])
                .arg(&out)
                .arg(paths::root().join("daemon/tests/fixtures/stacks_bench.c")),
        )?;
        Ok(out)
    };
    Ok((
        compile("stacks_bench", "-fno-omit-frame-pointer")?,
        compile("stacks_bench_nofp", "-fomit-frame-pointer")?,
    ))
}

/// One run of the workload in `mode`; with `perf_data`, probed is profiled into it.
fn run_mode(mode: Mode, workload: &Path, out_file: &Path, perf_data: Option<&Path>) -> Result<Run> {
    let mut target = Workload::start(workload)?;
    let Some(extra) = mode.args() else {
        let (calls, rate) = target.go()?;
        return Ok(Run {
            mode,
            calls,
            rate,
            hits: 0,
            handled: 0,
            lost: 0,
            lookups: 0,
            fast: 0,
            unwound: 0,
            captured_hits: 0,
            captured_frames: 0,
            cpu_ns: 0,
        });
    };
    let spec = format!("uprobe:{}:{SYMBOL}", workload.display());
    let pid = target.pid.to_string();
    let mut probed = Command::new(paths::probed_bin())
        .args(["trace", &spec, "--pid", &pid, "--format", "json"])
        .args(extra)
        .arg("--output")
        .arg(out_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start probed")?;
    let stderr = harness::lines(probed.stderr.take().context("probed stderr")?);
    wait_for_line(&stderr, "probed: tracing")?;
    let perf = perf_data
        .map(|data| start_perf(probed.id(), data))
        .transpose()?;
    let startup_cpu_ns = harness::cpu_ns_so_far(probed.id());
    let (calls, rate) = target.go()?;
    if let Some(perf) = perf {
        stop_perf(perf)?;
    }
    signal(probed.id(), libc::SIGINT)?;
    let (status, cpu_ns) = harness::wait_with_rusage(&mut probed)?;
    ensure!(status == 0, "probed exited with wait status {status}");
    let summary = last_line(out_file)?;
    let _ = std::fs::remove_file(out_file);
    let probe = &summary["probes"][0];
    let resolver = summary["resolver"]
        .as_object()
        .context("resolver counters")?;
    let get = |k: &str| resolver.get(k).and_then(Value::as_u64).unwrap_or(0);
    let fallbacks: u64 = resolver
        .iter()
        .filter(|(k, _)| k.starts_with("fallback_"))
        .filter_map(|(_, v)| v.as_u64())
        .sum();
    Ok(Run {
        mode,
        calls,
        rate,
        hits: probe["hits"].as_u64().unwrap_or(0),
        handled: probe["printed"].as_u64().unwrap_or(0),
        lost: probe["lost"].as_u64().unwrap_or(0),
        lookups: get("fast_path") + fallbacks,
        fast: get("fast_path"),
        unwound: get("unwound_frames"),
        captured_hits: ["captured", "capture_failed", "kseq_answered", "kseq_missed"]
            .iter()
            .map(|k| get(k))
            .sum(),
        captured_frames: [
            "captured_frames",
            "capture_failed_frames",
            "kseq_answered_frames",
            "kseq_missed_frames",
        ]
        .iter()
        .map(|k| get(k))
        .sum(),
        cpu_ns: cpu_ns.saturating_sub(startup_cpu_ns),
    })
}

/// The last line of `file` (probed's summary), parsed; read from the end, since a `stack`
/// run's file holds hundreds of megabytes of hits.
fn last_line(file: &Path) -> Result<Value> {
    let mut f = File::open(file).with_context(|| format!("open {}", file.display()))?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)))?;
    let mut tail = String::new();
    f.read_to_string(&mut tail)?;
    let line = tail
        .lines()
        .rev()
        .find(|l| l.starts_with(r#"{"type":"summary""#))
        .context("probed wrote no summary line")?;
    Ok(serde_json::from_str(line)?)
}

/// `perf record` of process `pid` into `data`, started once it samples.
fn start_perf(pid: u32, data: &Path) -> Result<Child> {
    let child = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", PERF_HZ, "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start perf (apt-get install linux-perf)")?;
    // perf attaches in well under this; samples before the workload starts are few anyway.
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

fn stop_perf(mut perf: Child) -> Result<()> {
    signal(perf.id(), libc::SIGINT)?;
    let status = perf.wait()?;
    // perf record ends by re-raising the SIGINT once it has written its data.
    ensure!(
        status.success() || status.signal() == Some(libc::SIGINT),
        "perf record failed: {status}"
    );
    Ok(())
}

/// Share of probed's CPU samples per part, from `perf report` by symbol.
fn perf_shares(data: &Path) -> Result<BTreeMap<&'static str, f64>> {
    let text = exec::output(
        Command::new("perf")
            .args(["report", "--stdio", "--no-children", "--sort", "sym", "-q"])
            .args(["--percent-limit", "0", "-i"])
            .arg(data),
    )?;
    let mut shares = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(pct), Some(kind)) = (f.next(), f.next()) else {
            continue;
        };
        let Ok(pct) = pct.trim_end_matches('%').parse::<f64>() else {
            continue;
        };
        let sym = f.collect::<Vec<_>>().join(" ");
        *shares.entry(part(kind, &sym)).or_insert(0.0) += pct / 100.0;
    }
    ensure!(!shares.is_empty(), "perf report gave no samples");
    Ok(shares)
}

/// Which part of the daemon a sampled symbol belongs to.
fn part(kind: &str, sym: &str) -> &'static str {
    let has = |s: &str| sym.contains(s);
    if kind == "[k]" {
        "kernel"
    } else if has("probed::resolve::") || has("arc_swap") {
        "resolver"
    } else if has("probed::symbolize") || has("probed::elf::") || has("demangle") {
        "symbolizer"
    } else if has("probed::pipeline::") || has("probed::track::apply::") {
        "pipeline"
    } else if has("serde")
        || has("probed::output::")
        || has("fmt")
        || has("itoa")
        || has("BufWriter")
        || has("lossy")
    {
        "output"
    } else if has("malloc") || has("free") || has("realloc") || has("memmove") || has("memcpy") {
        "allocator_and_copies"
    } else {
        "other"
    }
}

/// The aggregators' own ns per hit, timed in-process (release build).
fn aggregation_cost() -> Result<BTreeMap<String, f64>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let text = exec::output(
        Command::new(cargo)
            .current_dir(paths::root())
            .args(["test", "--release", "-p", "probed", "--lib"])
            .args([
                "output::tests::aggregation_cost",
                "--",
                "--ignored",
                "--nocapture",
            ]),
    )?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("aggregation_cost "))
        .context("aggregation_cost printed no figures")?;
    line.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').context("key=value")?;
            Ok((k.to_owned(), v.parse()?))
        })
        .collect()
}

fn report(
    runs: &[Run],
    profiled: &Run,
    shares: &BTreeMap<&'static str, f64>,
    aggregation: &BTreeMap<String, f64>,
) -> Value {
    let of = |mode: Mode| runs.iter().filter(move |r| r.mode == mode);
    let rate = |mode: Mode| harness::median(of(mode).map(|r| r.rate).collect());
    let cpu_per_hit = |mode: Mode| {
        harness::median(
            of(mode)
                .map(|r| r.cpu_ns as f64 / r.hits.max(1) as f64)
                .collect(),
        )
    };
    // A median over the runs of `mode` of a per-run figure.
    let median = |mode: Mode, f: fn(&Run) -> f64| harness::median(of(mode).map(f).collect());
    let per_hit = |r: &Run| r.frames() as f64 / r.handled.max(1) as f64;
    let per_sec = |r: &Run| r.frames() as f64 / LOOP_SECS;
    let per_cpu_sec = |r: &Run| r.frames() as f64 / (r.cpu_ns as f64 / 1e9);
    let frames_per_hit = median(Mode::Stack, per_hit);
    let frames_per_sec = median(Mode::Stack, per_sec);
    let frames_per_cpu_sec = median(Mode::Stack, per_cpu_sec);
    let cfi_frames_per_hit = median(Mode::CfiStack, per_hit);
    let cfi_frames_per_sec = median(Mode::CfiStack, per_sec);
    let cfi_frames_per_cpu_sec = median(Mode::CfiStack, per_cpu_sec);
    let cfi_lost: u64 = of(Mode::CfiStack).map(|r| r.lost).sum();
    let stack_runs: Vec<&Run> = runs
        .iter()
        .filter(|r| matches!(r.mode, Mode::Stack | Mode::Aggregate))
        .collect();
    let lookups: u64 = stack_runs.iter().map(|r| r.lookups).sum();
    let fast: u64 = stack_runs.iter().map(|r| r.fast).sum();
    let fast_path_share = fast as f64 / lookups.max(1) as f64;
    // The no-loss goal is the frame-pointer modes' (CFI's 16 KiB records are reported apart).
    let lost: u64 = runs.iter().filter(|r| !r.mode.cfi()).map(|r| r.lost).sum();
    let every_call_hit = runs
        .iter()
        .filter(|r| !matches!(r.mode, Mode::None) && !r.mode.cfi())
        .all(|r| r.hits == r.calls && r.handled == r.hits);
    let share = |k: &str| shares.get(k).copied().unwrap_or(0.0);
    // Per address looked up: a hit's and each of its frames' (the mirror's lookups in the
    // replaying modes; kseq mode answers them from its store, without one).
    let addresses = profiled.handled + profiled.frames();
    let per_lookup = |k: &str| share(k) * profiled.cpu_ns as f64 / addresses.max(1) as f64;
    let resolver_ns = per_lookup("resolver");
    // The pipeline's own frames (resolve_frame and its closures) hold the resolver's fast
    // path where it was inlined, and the building of each Frame: an upper bound.
    let resolver_upper_ns = resolver_ns + per_lookup("pipeline");
    let symbolizer_ns = per_lookup("symbolizer");
    // Marginal daemon CPU of a frame: stack runs minus no-stack runs, per frame.
    let marginal = |mode: Mode| (cpu_per_hit(mode) - cpu_per_hit(Mode::Hits)) / frames_per_hit;
    let ratio = resolver_upper_ns / BARE_LOOKUP_NS;
    let run_list: Vec<Value> = runs
        .iter()
        .chain(std::iter::once(profiled))
        .map(|r| {
            json!({
                "mode": r.mode.name(), "calls": r.calls, "rate": r.rate, "hits": r.hits,
                "handled": r.handled, "lost": r.lost, "lookups": r.lookups,
                "fast_path": r.fast, "frames": r.frames(), "daemon_cpu_ns": r.cpu_ns,
                "profiled": std::ptr::eq(r, profiled),
            })
        })
        .collect();
    json!({
        "frames_per_sec": frames_per_sec,
        "frames_per_daemon_cpu_sec": frames_per_cpu_sec,
        "frames_per_hit": frames_per_hit,
        "resolver_ns_per_frame": resolver_ns,
        "resolver_ns_per_frame_upper": resolver_upper_ns,
        "symbolizer_ns_per_frame": symbolizer_ns,
        "fast_path_share": fast_path_share,
        "resolver_share_of_daemon_cpu": share("resolver"),
        "daemon_cpu_shares": shares,
        "daemon_cpu_ns_per_hit": {
            "hits": cpu_per_hit(Mode::Hits),
            "stack": cpu_per_hit(Mode::Stack),
            "aggregate": cpu_per_hit(Mode::Aggregate),
            "cfi_hits": cpu_per_hit(Mode::CfiHits),
            "cfi_stack": cpu_per_hit(Mode::CfiStack),
        },
        "cfi": {
            "frames_per_hit": cfi_frames_per_hit,
            "frames_per_sec": cfi_frames_per_sec,
            "frames_per_daemon_cpu_sec": cfi_frames_per_cpu_sec,
            "lost": cfi_lost,
            "hits_per_call": harness::median(
                of(Mode::CfiStack)
                    .map(|r| r.hits as f64 / r.calls.max(1) as f64)
                    .collect(),
            ),
        },
        "marginal_daemon_ns_per_frame": {
            "stack_json": marginal(Mode::Stack),
            "stack_aggregated": marginal(Mode::Aggregate),
        },
        "rate": {
            "none": rate(Mode::None),
            "hits": rate(Mode::Hits),
            "stack": rate(Mode::Stack),
            "aggregate": rate(Mode::Aggregate),
            "cfi_none": rate(Mode::CfiNone),
            "cfi_hits": rate(Mode::CfiHits),
            "cfi_stack": rate(Mode::CfiStack),
        },
        "lost": lost,
        "every_call_hit": every_call_hit,
        "aggregation_ns_per_hit": aggregation,
        "bare_lookup_ns": BARE_LOOKUP_NS,
        "rounds": ROUNDS,
        "loop_seconds": LOOP_SECS,
        "goals": {
            "resolver_ns_per_frame": {
                "goal": format!("<= {GOAL_RATIO} x {BARE_LOOKUP_NS} ns (upper bound)"),
                "ratio": ratio,
                "met": ratio <= GOAL_RATIO,
            },
            "no_loss_with_stacks": {"goal": "lost == 0 and hits == calls", "met": lost == 0 && every_call_hit},
        },
        "runs": run_list,
    })
}

fn print_table(r: &Value) {
    let f = |p: &[&str]| p.iter().fold(r, |v, k| &v[*k]).as_f64().unwrap_or(f64::NAN);
    let met = |g: &str| {
        if r["goals"][g]["met"].as_bool() == Some(true) {
            "met"
        } else {
            "MISSED"
        }
    };
    println!(
        "\nstacks: {ROUNDS} rounds x {LOOP_SECS} s, {:.1} frames per hit, medians",
        f(&["frames_per_hit"])
    );
    println!("{:<11}{:>12}{:>18}", "mode", "calls/s", "daemon ns/hit");
    println!("{:<11}{:>12.0}{:>18}", "none", f(&["rate", "none"]), "-");
    println!(
        "{:<11}{:>12.0}{:>18}",
        "cfi_none",
        f(&["rate", "cfi_none"]),
        "-"
    );
    for m in ["hits", "stack", "aggregate", "cfi_hits", "cfi_stack"] {
        println!(
            "{m:<11}{:>12.0}{:>18.0}",
            f(&["rate", m]),
            f(&["daemon_cpu_ns_per_hit", m])
        );
    }
    println!(
        "\nframes/s {:.0} (daemon capacity {:.0} frames per CPU-second); fast path {:.4}",
        f(&["frames_per_sec"]),
        f(&["frames_per_daemon_cpu_sec"]),
        f(&["fast_path_share"])
    );
    println!(
        "resolver {:.1} ns/frame (with the pipeline's inlined part, at most {:.1} = {:.2} x bare lookup; goal <= {GOAL_RATIO}: {}); symbolizer {:.1} ns/frame; resolver share of daemon CPU {:.1}%",
        f(&["resolver_ns_per_frame"]),
        f(&["resolver_ns_per_frame_upper"]),
        f(&["goals", "resolver_ns_per_frame", "ratio"]),
        met("resolver_ns_per_frame"),
        f(&["symbolizer_ns_per_frame"]),
        100.0 * f(&["resolver_share_of_daemon_cpu"])
    );
    println!(
        "marginal daemon CPU per frame: {:.0} ns written as JSON, {:.0} ns aggregated",
        f(&["marginal_daemon_ns_per_frame", "stack_json"]),
        f(&["marginal_daemon_ns_per_frame", "stack_aggregated"])
    );
    println!(
        "CFI (no frame pointers, --stack=auto): {:.1} frames per hit, frames/s {:.0} (daemon capacity {:.0} frames per CPU-second), lost {}",
        f(&["cfi", "frames_per_hit"]),
        f(&["cfi", "frames_per_sec"]),
        f(&["cfi", "frames_per_daemon_cpu_sec"]),
        r["cfi"]["lost"]
    );
    println!(
        "no loss with stacks (fp modes): lost {} ({})",
        r["lost"],
        met("no_loss_with_stacks")
    );
    println!(
        "aggregators alone: {:.0} ns per hit (folded, 20 frames), {:.0} ns per hit (latency)",
        f(&["aggregation_ns_per_hit", "folded_ns_per_hit"]),
        f(&["aggregation_ns_per_hit", "latency_ns_per_hit"])
    );
}

/// The workload, started: it printed "ready PID" and waits for a go line.
pub(super) struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: mpsc::Receiver<String>,
    pub(super) pid: u32,
}

impl Workload {
    fn start(bin: &Path) -> Result<Self> {
        Self::start_for(bin, LOOP_SECS)
    }

    /// The workload at `bin`, to loop for `secs` once started.
    pub(super) fn start_for(bin: &Path, secs: f64) -> Result<Self> {
        let mut child = Command::new(bin)
            .arg(secs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdin = child.stdin.take();
        let stdout = harness::lines(child.stdout.take().context("workload stdout")?);
        let ready = stdout.recv_timeout(tool_timeout()).context("ready line")?;
        let pid = ready
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("unexpected line: {ready}"))?;
        Ok(Self {
            child,
            stdin,
            stdout,
            pid,
        })
    }

    /// Starts the loop and returns (calls, calls/s) once it is over.
    pub(super) fn go(&mut self) -> Result<(u64, f64)> {
        self.release()?;
        self.result()
    }

    /// Starts the loop (several workloads loop at once: release each, then wait for each).
    pub(super) fn release(&mut self) -> Result<()> {
        let mut stdin = self.stdin.take().context("already started")?;
        stdin.write_all(b"go\n")?;
        drop(stdin);
        Ok(())
    }

    /// (calls, calls/s) of a released loop, once it is over.
    pub(super) fn result(&mut self) -> Result<(u64, f64)> {
        let line = self
            .stdout
            .recv_timeout(Duration::from_secs(60) + tool_timeout())
            .context("result line")?;
        let status = self.child.wait()?;
        ensure!(status.success(), "workload failed: {status}");
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["calls", n, "rate", r, ..] => Ok((n.parse()?, r.parse()?)),
            _ => bail!("unexpected line from the workload: {line}"),
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(super) fn wait_for_line(rx: &mpsc::Receiver<String>, prefix: &str) -> Result<()> {
    let deadline = Instant::now() + tool_timeout();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .with_context(|| format!("probed did not print {prefix:?}"))?;
        if line.contains(prefix) {
            return Ok(());
        }
        eprintln!("probed: {line}");
    }
}

pub(super) fn signal(pid: u32, sig: i32) -> Result<()> {
    let pid = i32::try_from(pid)?;
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    if unsafe { libc::kill(pid, sig) } != 0 {
        bail!("kill {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
