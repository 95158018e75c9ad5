//! `cargo xtask bench e2e`: the cost of tracing, end to end. A C target calls a noinline
//! function in a tight loop for a fixed time and reports calls/s; it runs with no probe, with
//! probed tracing the function, and with bpftrace counting it, interleaved over several
//! rounds (each round rotates the order, so drift and noise fall on every mode alike).
//! Writes target/probed-bench/e2e.json and prints a table.
//!
//! Honest terms: probed formats every hit as a JSON line into a file on tmpfs (the hit lines
//! are counted afterwards), where bpftrace only increments an in-kernel counter. So a fourth
//! mode, for reference only, has bpftrace deliver every hit too (`printf` of the six
//! arguments into a file on tmpfs): comparable work, reported as `rate_bpftrace_printf`. Every
//! tracer is attached before the target's first call and stopped after its last, so hits
//! must equal calls exactly. Daemon CPU per event is probed's user+sys time after it
//! attached (total from wait4's rusage minus the per-thread schedstat sum read just before
//! the target starts), divided by the hits it printed; its start-up CPU is reported apart.
//!
//! A fifth mode runs probed with a rate limit that never limits (`--rate-limit 1e9 --burst
//! 1e9`): every hit then takes the limiter's path in BPF (two more array lookups and a
//! compare-and-swap on the shared bucket), so `rate_probed_limited_over_probed` is the
//! limiter's cost on the traced program.
//!
//! The kernel times every BPF program run while the bench runs (bpf_stats.rs): each
//! tracer's per-hit program's mean run time is reported (`bpf_ns_per_hit`), the part of
//! a traced call's cost each tracer adds in BPF (the timing adds two clock reads a run, to
//! every tracer alike).

use super::{
    bpf_stats,
    harness::{self, tool_timeout},
};
use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::{exec, paths};

/// Rounds of (none, probed, bpftrace).
const ROUNDS: usize = 5;
/// Seconds the target loops per run.
const LOOP_SECS: f64 = 3.0;
/// How long a tool may take to attach or to exit.
/// The traced function.
const SYMBOL: &str = "probed_add";

/// One way of running the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// No probe.
    None,
    /// probed printing every hit as JSON.
    Probed,
    /// The same with a rate limit that admits every hit (the limiter's cost).
    ProbedLimited,
    /// probed counting hits in BPF (`--count-in-bpf`): bpftrace `count()`'s work.
    ProbedCount,
    /// bpftrace counting hits in the kernel (the issue's peer).
    Bpftrace,
    /// bpftrace printing every hit (reference: the same work as probed).
    BpftracePrintf,
}

impl Mode {
    const ALL: [Self; 6] = [
        Self::None,
        Self::Probed,
        Self::ProbedLimited,
        Self::ProbedCount,
        Self::Bpftrace,
        Self::BpftracePrintf,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Probed => "probed",
            Self::ProbedLimited => "probed_limited",
            Self::ProbedCount => "probed_count",
            Self::Bpftrace => "bpftrace",
            Self::BpftracePrintf => "bpftrace_printf",
        }
    }

    /// The bpftrace action of a bpftrace mode.
    fn bpftrace_action(self) -> &'static str {
        match self {
            Self::BpftracePrintf => {
                r#"{ printf("%d %d %d %d %d %d\n", arg0, arg1, arg2, arg3, arg4, arg5); }"#
            }
            _ => "{ @c = count(); }",
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
struct Run {
    /// Calls the target made.
    calls: u64,
    /// Calls per second the target reported.
    rate: f64,
    /// Hits the tool reported (printed hit lines for probed, @c for bpftrace).
    hits: Option<u64>,
    /// probed's own count of hits (BPF counter, summary line).
    counted: Option<u64>,
    /// Events probed lost (summary line).
    lost: Option<u64>,
    /// probed's CPU time after attaching, in ns.
    cpu_ns: Option<u64>,
    /// probed's CPU time until it attached, in ns.
    startup_cpu_ns: Option<u64>,
    /// Mean run time of the tracer's per-hit BPF program, in ns.
    bpf_ns: Option<f64>,
}

/// Runs the benchmark, writes the JSON report and prints a table.
pub fn run() -> Result<()> {
    super::build()?;
    let out_dir = paths::bench_dir();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let target = out_dir.join("e2e_target");
    exec::exec(
        Command::new("cc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&target)
            .arg(paths::root().join("daemon/tests/fixtures/trace_target.c")),
    )?;
    exec::output(Command::new("bpftrace").arg("--version"))
        .context("bpftrace is needed as the peer (apt-get install bpftrace)")?;
    let probe_offset = symbol_file_offset(&target, SYMBOL)?;
    let hits_file = harness::hits_file("e2e");

    let _timed = bpf_stats::StatsOn::enable()?;
    let mut runs: Vec<(Mode, Run)> = Vec::new();
    for round in 0..ROUNDS {
        for i in 0..Mode::ALL.len() {
            let mode = Mode::ALL[(round + i) % Mode::ALL.len()];
            let run = match mode {
                Mode::None => run_none(&target)?,
                Mode::Probed => run_probed(&target, &hits_file, &[])?,
                Mode::ProbedLimited => run_probed(
                    &target,
                    &hits_file,
                    &["--rate-limit", "1000000000", "--burst", "1000000000"],
                )?,
                Mode::ProbedCount => run_probed(&target, &hits_file, &["--count-in-bpf"])?,
                Mode::Bpftrace | Mode::BpftracePrintf => {
                    run_bpftrace(mode, &target, probe_offset, &hits_file)?
                }
            };
            eprintln!(
                "e2e: round {}/{ROUNDS} {:<15} {:>12.0} calls/s  calls {:>9}  hits {}  BPF {}",
                round + 1,
                mode.name(),
                run.rate,
                run.calls,
                run.hits.map_or("-".into(), |h| h.to_string()),
                run.bpf_ns.map_or("-".into(), |n| format!("{n:.0} ns/hit"))
            );
            runs.push((mode, run));
        }
    }

    let report = report(&runs);
    let out = out_dir.join("e2e.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", out.display()))?;
    print_table(&report);
    println!("\nwrote {}", out.display());
    Ok(())
}

/// The target alone.
fn run_none(target: &Path) -> Result<Run> {
    let mut t = LoopTarget::start(target)?;
    let (calls, rate) = t.go()?;
    Ok(Run {
        calls,
        rate,
        ..Run::default()
    })
}

/// The target traced by probed (with `extra` arguments), writing JSON lines to `hits_file`.
fn run_probed(target: &Path, hits_file: &Path, extra: &[&str]) -> Result<Run> {
    let mut t = LoopTarget::start(target)?;
    let spec = format!("uprobe:{}:{SYMBOL}", target.display());
    let mut probed = Command::new(paths::probed_bin())
        .args(["trace", &spec, "--format", "json", "--output"])
        .arg(hits_file)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start probed")?;
    let stderr = harness::lines(probed.stderr.take().context("probed stderr")?);
    wait_for_line(&stderr, "probed: tracing", "probed")?;
    let startup_cpu_ns = harness::cpu_ns_so_far(probed.id());
    let (calls, rate) = t.go()?;
    let bpf = bpf_stats::busiest_prog(probed.id());
    signal(probed.id(), libc::SIGINT)?;
    let (status, total_cpu_ns) = harness::wait_with_rusage(&mut probed)?;
    ensure!(status == 0, "probed exited with wait status {status}");

    let file = File::open(hits_file).with_context(|| format!("open {}", hits_file.display()))?;
    let mut hits = 0u64;
    let mut summary = None;
    for line in BufReader::new(file).lines() {
        let line = line?;
        if line.starts_with(r#"{"type":"hit""#) {
            hits += 1;
        } else if line.starts_with(r#"{"type":"summary""#) {
            summary = Some(serde_json::from_str::<Value>(&line)?);
        }
    }
    let _ = std::fs::remove_file(hits_file);
    let summary = summary.context("probed wrote no summary line")?;
    let probe = &summary["probes"][0];
    // Counted in BPF: no hit lines, the summary's count is the tool's answer.
    if extra.contains(&"--count-in-bpf") {
        hits = probe["counted_in_bpf"].as_u64().unwrap_or(0);
    }
    Ok(Run {
        calls,
        rate,
        hits: Some(hits),
        counted: probe["hits"].as_u64(),
        lost: probe["lost"].as_u64(),
        cpu_ns: Some(total_cpu_ns.saturating_sub(startup_cpu_ns)),
        startup_cpu_ns: Some(startup_cpu_ns),
        bpf_ns: bpf.and_then(bpf_stats::ProgRuns::ns_per_run),
    })
}

/// The target with bpftrace on the same probe, its output going to `out_file`.
fn run_bpftrace(mode: Mode, target: &Path, probe_offset: u64, out_file: &Path) -> Result<Run> {
    let mut t = LoopTarget::start(target)?;
    // BEGIN runs once every probe is attached ("Attaching" is printed before).
    let program = format!(
        r#"BEGIN {{ printf("ready\n"); }} uprobe:{}:{SYMBOL} {}"#,
        target.display(),
        mode.bpftrace_action()
    );
    let out = File::create(out_file).with_context(|| format!("create {}", out_file.display()))?;
    let mut bpftrace = Command::new("bpftrace")
        .args(["-e", &program])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .context("start bpftrace")?;
    // Ready, and the breakpoint in the target says the uprobe is in place.
    let deadline = Instant::now() + tool_timeout();
    while !std::fs::read_to_string(out_file)?.contains("ready\n")
        || text_byte(t.pid, target, probe_offset)? != BREAKPOINT_BYTE
    {
        if let Some(status) = bpftrace.try_wait()? {
            bail!("bpftrace exited before attaching: {status}");
        }
        ensure!(Instant::now() < deadline, "bpftrace did not attach");
        thread::sleep(Duration::from_millis(10));
    }
    let (calls, rate) = t.go()?;
    let bpf = bpf_stats::busiest_prog(bpftrace.id());
    signal(bpftrace.id(), libc::SIGINT)?;
    let (status, _) = harness::wait_with_rusage(&mut bpftrace)?;
    ensure!(status == 0, "bpftrace exited with wait status {status}");
    let text = std::fs::read_to_string(out_file)?;
    let _ = std::fs::remove_file(out_file);
    let hits = match mode {
        Mode::BpftracePrintf => text
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
            .count() as u64,
        _ => text
            .lines()
            .find_map(|l| l.strip_prefix("@c: "))
            .map_or(Ok(0), |n| n.trim().parse::<u64>())?,
    };
    Ok(Run {
        calls,
        rate,
        hits: Some(hits),
        bpf_ns: bpf.and_then(bpf_stats::ProgRuns::ns_per_run),
        ..Run::default()
    })
}

/// `trace_target --loop SECONDS --wait`, started and waiting for its go.
struct LoopTarget {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: mpsc::Receiver<String>,
    pid: u32,
}

impl LoopTarget {
    fn start(bin: &Path) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(["--loop", &LOOP_SECS.to_string(), "--wait"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdin = child.stdin.take();
        let stdout = harness::lines(child.stdout.take().context("target stdout")?);
        let ready = stdout
            .recv_timeout(tool_timeout())
            .context("target says ready")?;
        let pid = ready
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("unexpected line from target: {ready}"))?;
        Ok(Self {
            child,
            stdin,
            stdout,
            pid,
        })
    }

    /// Starts the loop and returns (calls, calls/s) once it is over.
    fn go(&mut self) -> Result<(u64, f64)> {
        let mut stdin = self.stdin.take().context("target already started")?;
        stdin.write_all(b"go\n")?;
        drop(stdin);
        let timeout = Duration::from_secs_f64(LOOP_SECS) + tool_timeout();
        let line = self
            .stdout
            .recv_timeout(timeout)
            .context("target reports its calls")?;
        let status = self.child.wait()?;
        ensure!(status.success(), "target failed: {status}");
        // calls N rate R sum S
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["calls", n, "rate", r, ..] => Ok((n.parse()?, r.parse()?)),
            _ => bail!("unexpected line from target: {line}"),
        }
    }
}

impl Drop for LoopTarget {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_for_line(rx: &mpsc::Receiver<String>, prefix: &str, who: &str) -> Result<()> {
    let deadline = Instant::now() + tool_timeout();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .with_context(|| format!("{who} did not print {prefix:?}"))?;
        if line.contains(prefix) {
            return Ok(());
        }
        eprintln!("{who}: {line}");
    }
}

fn signal(pid: u32, sig: i32) -> Result<()> {
    let pid = i32::try_from(pid)?;
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    if unsafe { libc::kill(pid, sig) } != 0 {
        bail!("kill {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The first byte of the software breakpoint instruction (x86-64 int3; aarch64 brk #5).
const BREAKPOINT_BYTE: u8 = if cfg!(target_arch = "x86_64") {
    0xcc
} else {
    0xa0
};

/// The file offset of `symbol` in `bin`, from nm and readelf's PT_LOAD headers.
fn symbol_file_offset(bin: &Path, symbol: &str) -> Result<u64> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16);
    let nm = exec::output(Command::new("nm").arg("--defined-only").arg(bin))?;
    let vaddr = nm
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == symbol).then(|| hex(f[0]).ok())?
        })
        .with_context(|| format!("nm: no {symbol} in {}", bin.display()))?;
    let readelf = exec::output(Command::new("readelf").arg("-lW").arg(bin))?;
    readelf
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD"))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (off, start, size) = (hex(f[1]).ok()?, hex(f[2]).ok()?, hex(f[4]).ok()?);
            (start <= vaddr && vaddr < start + size).then_some(vaddr - start + off)
        })
        .with_context(|| format!("readelf: {vaddr:#x} in no PT_LOAD of {}", bin.display()))
}

/// The byte process `pid` sees at `file_offset` of `bin` (a uprobe shows as a breakpoint).
fn text_byte(pid: u32, bin: &Path, file_offset: u64) -> Result<u8> {
    let hex = |s: &str| u64::from_str_radix(s, 16);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let addr = maps
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || Path::new(f[5]) != bin {
                return None;
            }
            let (start, end) = f[0].split_once('-')?;
            let (start, end, off) = (hex(start).ok()?, hex(end).ok()?, hex(f[2]).ok()?);
            (off <= file_offset && file_offset < off + (end - start))
                .then_some(start + file_offset - off)
        })
        .with_context(|| format!("{} not mapped in {pid}", bin.display()))?;
    let mut mem = File::open(format!("/proc/{pid}/mem"))?;
    mem.seek(SeekFrom::Start(addr))?;
    let mut b = [0u8];
    mem.read_exact(&mut b)?;
    Ok(b[0])
}

fn report(runs: &[(Mode, Run)]) -> Value {
    let of = |mode: Mode| runs.iter().filter(move |(m, _)| *m == mode).map(|(_, r)| r);
    let rate = |mode: Mode| harness::median(of(mode).map(|r| r.rate).collect());
    let sum = |mode: Mode, f: fn(&Run) -> u64| of(mode).map(f).sum::<u64>();
    let (rate_none, rate_probed, rate_bpftrace) =
        (rate(Mode::None), rate(Mode::Probed), rate(Mode::Bpftrace));
    let rate_printf = rate(Mode::BpftracePrintf);
    let rate_limited = rate(Mode::ProbedLimited);
    let calls_probed = sum(Mode::Probed, |r| r.calls);
    let hits_probed = sum(Mode::Probed, |r| r.hits.unwrap_or(0));
    let counted_probed = sum(Mode::Probed, |r| r.counted.unwrap_or(0));
    let lost_probed = sum(Mode::Probed, |r| r.lost.unwrap_or(0));
    let calls_bpftrace = sum(Mode::Bpftrace, |r| r.calls);
    let hits_bpftrace = sum(Mode::Bpftrace, |r| r.hits.unwrap_or(0));
    let calls_printf = sum(Mode::BpftracePrintf, |r| r.calls);
    let hits_printf = sum(Mode::BpftracePrintf, |r| r.hits.unwrap_or(0));
    let cpu_per_event = harness::median(
        of(Mode::Probed)
            .filter_map(|r| Some(r.cpu_ns? as f64 / r.hits.filter(|h| *h > 0)? as f64))
            .collect(),
    );
    let startup_ms = harness::median(
        of(Mode::Probed)
            .filter_map(|r| Some(r.startup_cpu_ns? as f64 / 1e6))
            .collect(),
    );
    let every_count_exact = runs
        .iter()
        .filter(|(m, _)| {
            matches!(
                m,
                Mode::Probed | Mode::ProbedLimited | Mode::ProbedCount | Mode::Bpftrace
            )
        })
        .all(|(_, r)| r.hits == Some(r.calls) && r.counted.is_none_or(|c| c == r.calls));
    let ratio = rate_probed / rate_bpftrace;
    let mut bpf_ns = serde_json::Map::new();
    for mode in Mode::ALL {
        let ns: Vec<f64> = of(mode).filter_map(|r| r.bpf_ns).collect();
        if !ns.is_empty() {
            bpf_ns.insert(mode.name().into(), json!(harness::median(ns)));
        }
    }
    let run_list: Vec<Value> = runs
        .iter()
        .map(|(m, r)| {
            json!({
                "mode": m.name(), "calls": r.calls, "rate": r.rate, "hits": r.hits,
                "counted": r.counted, "lost": r.lost, "cpu_ns": r.cpu_ns,
                "startup_cpu_ns": r.startup_cpu_ns, "bpf_ns_per_hit": r.bpf_ns,
            })
        })
        .collect();
    json!({
        "rate_none": rate_none,
        "rate_probed": rate_probed,
        "rate_bpftrace": rate_bpftrace,
        "rate_probed_over_bpftrace": ratio,
        "rate_probed_over_none": rate_probed / rate_none,
        "rate_bpftrace_over_none": rate_bpftrace / rate_none,
        "hits_probed": hits_probed,
        "hits_probed_counted_in_bpf": counted_probed,
        "calls_probed": calls_probed,
        "hits_bpftrace": hits_bpftrace,
        "calls_bpftrace": calls_bpftrace,
        "rate_probed_limited": rate_limited,
        "rate_probed_limited_over_probed": rate_limited / rate_probed,
        "hits_probed_limited": sum(Mode::ProbedLimited, |r| r.hits.unwrap_or(0)),
        "calls_probed_limited": sum(Mode::ProbedLimited, |r| r.calls),
        "rate_probed_count": rate(Mode::ProbedCount),
        "rate_probed_count_over_bpftrace": rate(Mode::ProbedCount) / rate_bpftrace,
        "hits_probed_count": sum(Mode::ProbedCount, |r| r.hits.unwrap_or(0)),
        "calls_probed_count": sum(Mode::ProbedCount, |r| r.calls),
        "rate_bpftrace_printf": rate_printf,
        "rate_probed_over_bpftrace_printf": rate_probed / rate_printf,
        "rate_bpftrace_printf_over_none": rate_printf / rate_none,
        "hits_bpftrace_printf": hits_printf,
        "calls_bpftrace_printf": calls_printf,
        "every_count_exact": every_count_exact,
        "lost_probed": lost_probed,
        "daemon_cpu_ns_per_event": cpu_per_event,
        "daemon_startup_cpu_ms": startup_ms,
        "bpf_ns_per_hit": bpf_ns,
        "bpf_ns_note": "median over rounds of the mean run time of each tracer's per-hit BPF \
            program (the kernel's run_time_ns / run_cnt, BPF_ENABLE_STATS on for every mode)",
        "rounds": ROUNDS,
        "loop_seconds": LOOP_SECS,
        "output": "probed --format json and bpftrace printf to files on tmpfs; every hit line counted",
        "goals": {
            "rate_probed_over_bpftrace": {"goal": ">= 0.98", "met": ratio >= 0.98},
            "identical_counts": {"goal": "hits == calls for every traced run", "met": every_count_exact},
            "zero_lost": {"goal": "== 0", "met": lost_probed == 0},
        },
        "runs": run_list,
    })
}

fn print_table(r: &Value) {
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let u = |k: &str| r[k].as_u64().unwrap_or(0);
    println!(
        "\ne2e: {ROUNDS} rounds x {LOOP_SECS} s, medians of the target's calls/s ({SYMBOL} in a loop)"
    );
    println!(
        "{:<16}{:>14}{:>10}{:>24}{:>8}{:>16}",
        "tracer", "calls/s", "vs none", "hits / calls", "lost", "CPU/event"
    );
    println!(
        "{:<16}{:>14.0}{:>10}{:>24}{:>8}{:>16}",
        "none",
        f("rate_none"),
        "1.000",
        "-",
        "-",
        "-"
    );
    println!(
        "{:<16}{:>14.0}{:>10.1e}{:>24}{:>8}{:>13.0} ns",
        "probed",
        f("rate_probed"),
        f("rate_probed_over_none"),
        format!("{} / {}", u("hits_probed"), u("calls_probed")),
        u("lost_probed"),
        f("daemon_cpu_ns_per_event")
    );
    for (name, key) in [
        ("probed limited", "probed_limited"),
        ("probed count", "probed_count"),
        ("bpftrace", "bpftrace"),
        ("bpftrace printf", "bpftrace_printf"),
    ] {
        println!(
            "{:<16}{:>14.0}{:>10.1e}{:>24}{:>8}{:>16}",
            name,
            f(&format!("rate_{key}")),
            f(&format!("rate_{key}")) / f("rate_none"),
            format!(
                "{} / {}",
                u(&format!("hits_{key}")),
                u(&format!("calls_{key}"))
            ),
            "-",
            "-"
        );
    }
    let met = |g: &str| {
        if r["goals"][g]["met"].as_bool() == Some(true) {
            "met"
        } else {
            "MISSED"
        }
    };
    println!(
        "\nrate probed / bpftrace = {:.3} (goal >= 0.98: {}); identical counts: {}; zero lost: {}",
        f("rate_probed_over_bpftrace"),
        met("rate_probed_over_bpftrace"),
        met("identical_counts"),
        met("zero_lost")
    );
    println!(
        "rate probed / bpftrace printf (same per-hit delivery, reference) = {:.3}",
        f("rate_probed_over_bpftrace_printf")
    );
    println!(
        "probed start-up CPU (median): {:.1} ms, not included in CPU/event",
        f("daemon_startup_cpu_ms")
    );
    let bpf: Vec<String> = r["bpf_ns_per_hit"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k} {:.0}", v.as_f64().unwrap_or(f64::NAN)))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "BPF run time per hit (ns, median of rounds): {}",
        bpf.join(", ")
    );
}
