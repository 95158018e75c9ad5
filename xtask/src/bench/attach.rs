//! `cargo xtask bench attach`: seconds to attach and to detach N uprobes on libc's
//! functions (N = 10, 100, 1,000 and all of them), probed vs bpftrace, interleaved rounds.
//! Writes target/probed-bench/attach.json and prints a table.
//!
//! Both tools trace one idle process (`--pid` / `-p` of a `sleep`): the kernel then writes
//! breakpoints into that process only, so the benchmark does not trap every libc call of the
//! machine (and both pay the same per-probe registration). Attach time is from the tool's
//! start to its "attached" signal — probed's `tracing N probe(s)` line, bpftrace's `BEGIN`
//! output (BEGIN runs once every probe is attached) — so it includes loading the BPF
//! object; detach time is from SIGINT to the tool's exit. The function names come from
//! `probed list 'uprobe:libc:*'`, the same list for both tools.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::harness;
use crate::paths;

/// Rounds per (tool, N), unless `PROBED_BENCH_ROUNDS` says otherwise.
const ROUNDS: usize = 3;
/// The probe counts measured besides "all" (`PROBED_BENCH_ATTACH_ALL=0` leaves "all" out:
/// detaching thousands of uprobes takes minutes per run).
const COUNTS: [usize; 3] = [10, 100, 1000];
/// How long one attach or detach may take before the run is abandoned.
const LIMIT: Duration = Duration::from_secs(300);

/// The two tools.
#[derive(Clone, Copy, Debug)]
enum Tool {
    Probed,
    Bpftrace,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Self::Probed => "probed",
            Self::Bpftrace => "bpftrace",
        }
    }
}

/// Runs the benchmark.
pub fn run() -> Result<()> {
    super::build()?;
    let probed = paths::probed_bin();
    let listed = Command::new(&probed)
        .args(["list", "uprobe:libc:*"])
        .output()
        .context("probed list")?;
    ensure!(listed.status.success(), "probed list failed: {listed:?}");
    let names: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.split('\t').next())
        .filter_map(|spec| spec.strip_prefix("uprobe:libc:"))
        // Plain names only: both tools parse them the same way (no `@VERSION`); libc's
        // exported functions (the debug file's internal `__GI_` aliases include addresses
        // the kernel refuses to probe).
        .filter(|f| f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .filter(|f| !f.starts_with("__GI_"))
        .map(str::to_owned)
        .collect();
    ensure!(
        names.len() > 1000,
        "only {} libc functions listed",
        names.len()
    );
    let mut idle = Command::new("sleep")
        .arg("100000")
        .spawn()
        .context("start sleep")?;
    let pid = idle.id().to_string();
    let mut sizes: Vec<(String, Vec<String>)> = COUNTS
        .iter()
        .map(|&n| (n.to_string(), names[..n].to_vec()))
        .collect();
    if std::env::var("PROBED_BENCH_ATTACH_ALL").as_deref() != Ok("0") {
        sizes.push(("all".into(), vec!["*".into()]));
    }
    let rounds = std::env::var("PROBED_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    let mut results = Vec::new();
    for (label, functions) in &sizes {
        let mut row = json!({ "n": label });
        for tool in [Tool::Probed, Tool::Bpftrace] {
            let (mut attach, mut detach, mut probes) = (Vec::new(), Vec::new(), 0);
            for round in 0..rounds {
                let (a, d, n) = match one(tool, functions, &pid) {
                    Ok(r) => r,
                    Err(e) => bail!("{} with {label} probes, round {round}: {e:#}", tool.name()),
                };
                attach.push(a);
                detach.push(d);
                probes = n;
            }
            let (a, d) = (harness::median(attach), harness::median(detach));
            println!(
                "{:>5} probes  {:<8}  attach {a:>8.3} s  detach {d:>8.3} s  ({probes} attached)",
                label,
                tool.name()
            );
            row[tool.name()] = json!({ "attach_s": a, "detach_s": d, "probes": probes });
        }
        results.push(row);
    }
    idle.kill().ok();
    idle.wait().ok();
    let out = paths::bench_dir().join("attach.json");
    std::fs::create_dir_all(paths::bench_dir())?;
    let report: Value = json!({
        "rounds": rounds,
        "scope": "one idle process (--pid / -p)",
        "libc_functions": names.len(),
        "results": results,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("wrote {}", out.display());
    Ok(())
}

/// One run: (seconds to attach, seconds to detach, probes attached).
fn one(tool: Tool, functions: &[String], pid: &str) -> Result<(f64, f64, usize)> {
    let start = Instant::now();
    let mut child = match tool {
        Tool::Probed => {
            let specs: Vec<String> = functions
                .iter()
                .map(|f| format!("uprobe:libc:{f}"))
                .collect();
            Command::new(paths::probed_bin())
                .arg("trace")
                .args(&specs)
                .args(["--pid", pid, "--format", "json", "--output", "/dev/null"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?
        }
        Tool::Bpftrace => {
            let probes: Vec<String> = functions
                .iter()
                .map(|f| format!("uprobe:libc:{f}"))
                .collect();
            let program = format!(
                "BEGIN {{ printf(\"ready\\n\"); }} {} {{ @ = count(); }}",
                probes.join(",")
            );
            Command::new("bpftrace")
                .args(["-p", pid, "-e", &program])
                .env("BPFTRACE_MAX_PROBES", "100000")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?
        }
    };
    let ready = match tool {
        Tool::Probed => harness::lines(child.stderr.take().expect("piped")),
        Tool::Bpftrace => {
            // bpftrace's errors go to stderr: keep them for the message.
            harness::lines(child.stdout.take().expect("piped"))
        }
    };
    let probes: usize = loop {
        let Some(left) = LIMIT.checked_sub(start.elapsed()) else {
            kill(&mut child);
            bail!("not attached within {LIMIT:?}");
        };
        let Ok(line) = ready.recv_timeout(left) else {
            let status = child.wait()?;
            bail!("exited before attaching ({status})");
        };
        match tool {
            Tool::Probed => {
                if let Some(rest) = line.strip_prefix("probed: tracing ") {
                    break rest.split(' ').next().unwrap_or("0").parse()?;
                }
            }
            Tool::Bpftrace => {
                if line == "ready" {
                    break functions.len();
                }
            }
        }
    };
    let attach = start.elapsed().as_secs_f64();
    let stop = Instant::now();
    // SAFETY: kill has no memory preconditions; the pid is our live child.
    unsafe { libc::kill(i32::try_from(child.id())?, libc::SIGINT) };
    let deadline = Instant::now() + LIMIT;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            kill(&mut child);
            bail!("did not exit within {LIMIT:?} of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok((attach, stop.elapsed().as_secs_f64(), probes))
}

fn kill(child: &mut Child) {
    child.kill().ok();
    child.wait().ok();
}
