//! `cargo xtask test --kernel LINE`: the kernel-dependent part of the integration suite in
//! one guest of that kernel.
//!
//! Under QEMU emulation a boot costs a minute or more and everything runs many times slower,
//! so the guest boots once and runs a chosen set of test executables (built on the host) one
//! after the other; a marker line before and after each tells their outputs apart. The set
//! covers every path that depends on the kernel: see [`SELECTED`].

use std::{
    io::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::bail;

use super::{guest::Guest, kernel};
use crate::integration::{self, PASS_ENV, Tally, TestExe};

/// A test executable run in the guests, the tests of it that run (libtest name filters; all
/// when empty), and what of the kernel it exercises.
struct Selected {
    exe: &'static str,
    filters: &'static [&'static str],
    why: &'static str,
}

/// The set run in each guest. README "Kernels" names it.
const SELECTED: &[Selected] = &[
    Selected {
        exe: "kernel_paths",
        filters: &[],
        why: "self-check's kernel version and chosen paths; ns pids read in BPF through \
              BTF offsets of struct pid, in a new pid namespace",
    },
    Selected {
        exe: "trace_basic",
        filters: &[],
        why: "every program loads on this verifier; exact hit counts (entry, return, \
              threads, offsets) through the ring buffer",
    },
    Selected {
        exe: "stacks_basic",
        // One case: frames of a library dlclosed before probed reads them, every frame exact
        // (bpf_get_stack, replayed pictures). pie_chain adds no kernel path to it, exited
        // processes are tracker_short's and tracker_churn's; each case costs about two
        // minutes under emulation (measured: 3 cases, 369 s on 6.1).
        filters: &["dlclosed_library_frames_resolve"],
        why: "bpf_get_stack user stacks, frames exact, of a dlclosed library",
    },
    Selected {
        exe: "stacks_cfi",
        // One case: the stack copy (registers and 4–64 KiB of user stack read in BPF straight
        // into a ring record, one path per size: all verified at load) through this
        // verifier, unwound with .eh_frame.
        filters: &["chain_without_frame_pointers_unwinds"],
        why: "registers and a 4-64 KiB user-stack copy read in BPF; .eh_frame unwinding of a \
              chain built without frame pointers",
    },
    Selected {
        exe: "tracker_churn",
        // The 500-round churn (every hit resolved after its process exited, from replayed
        // pictures). The 50,000- and 10,000-round ones need more than the tests' 60 s per
        // round under emulation (measured on 6.12: timeouts, not wrong answers).
        filters: &["churn_resolved_after_the_process_exited"],
        why: "the change tracker's syscall hooks, bpf_find_vma and BTF offsets of \
              vm_area_struct/file/inode: dlopen churn resolved with 0 wrong",
    },
    Selected {
        exe: "tracker_short",
        // Its exec case also covers tracker_exec's kernel path (exec reports: the
        // sched_process_exec hook, mm->start_code, the loader's mapping), which was left
        // out to keep both kernels inside CI's hour (65 s on 6.1, measured).
        filters: &[],
        why: "processes that exec or fork, hit and exit before userspace looks (exec reports: \
              mm->start_code, the loader's mapping; fork pictures): 0 wrong",
    },
    Selected {
        exe: "trace_ratelimit",
        // Not one_bucket_across_cpus: it reads the ring buffer only after a round, assuming
        // the round's records fit (4 MiB); under emulation the calls are so slow that the
        // rate limiter admits more and the ring overflows (measured on 6.1: 27,594 records
        // delivered = the ring's capacity, 599 lost) — a limit of the test, not the kernel.
        filters: &["container_keeps_only_its_namespace"],
        why: "bpf_get_ns_current_pid_tgid: only the namespaced process's hits, exactly",
    },
];

/// How long one kernel's run may take before the guest is stopped; what it cuts off fails
/// the suite (not run is not passed). Measured under emulation on the 2-core machine
/// (README "Kernels"), this set with tracker_churn's kprobe case: 576 s on 6.1 and 327 s on
/// 6.12 at load average 3–4 (another build beside them). 14 minutes each leaves 6.1 room at
/// higher load; two budgets on top of the rest of CI (≈ 28 min) stay under an hour.
const BUDGET: Duration = Duration::from_secs(14 * 60);

/// The factor the guests' tests stretch their timeouts by (`PROBED_TEST_TIME_SCALE`,
/// daemon/tests/common/mod.rs).
const TIME_SCALE: u32 = 3;

/// Marks the start of an executable's output in the guest's stdout.
const BEGIN: &str = "=== probed-vm begin ";
/// Marks its end, followed by the exit code.
const END: &str = "=== probed-vm end ";

/// How many times a guest that ended in the middle of the suite (its kernel or QEMU gone,
/// not a test failing) is booted again for the executables it left unfinished. The kernel's
/// console and vng's exit status are printed each time; a second death fails the suite.
const BOOTS: usize = 2;

/// What booting a guest again adds to the budget (a boot under emulation: 15–30 s measured,
/// the first test's BPF loads included).
const REBOOT: Duration = Duration::from_secs(60);

/// Runs [`SELECTED`] of `exes` (built by `integration::build_tests`) in a guest of `line`;
/// fails naming every executable that failed.
pub fn run(line: &str, exes: &[TestExe], args: &[String]) -> anyhow::Result<()> {
    if !integration::is_root() {
        bail!("the kernel suites need root (depmod of the guest's modules, BPF in the guest)");
    }
    let kernel = kernel::install(kernel::line(line)?)?;
    let guest = Guest::prepare(kernel)?;
    let mut todo: Vec<(&Selected, &TestExe)> = Vec::new();
    for sel in SELECTED {
        let Some(exe) = exes.iter().find(|e| e.integration && e.name == sel.exe) else {
            bail!("no integration test executable {} was built", sel.exe);
        };
        eprintln!("xtask: kernel {line}: {} ({})", sel.exe, sel.why);
        todo.push((sel, exe));
    }
    let names: Vec<&str> = SELECTED.iter().map(|s| s.exe).collect();
    let start = Instant::now();
    let mut tally = Tally::default();
    let mut guest_time = Duration::ZERO;
    let mut budget_hit = false;
    let mut not_run = 0;
    for boot in 1..=BOOTS {
        // A second boot gets what the first left of the budget, plus a boot's time.
        let limit =
            BUDGET.saturating_sub(guest_time) + if boot > 1 { REBOOT } else { Duration::ZERO };
        let run = boot_once(&guest, &todo, args, limit, &mut tally)?;
        guest_time += run.outcome.elapsed;
        let unfinished: Vec<(&Selected, &TestExe)> = todo
            .iter()
            .filter(|(sel, _)| !run.ended.iter().any(|e| e == sel.exe))
            .copied()
            .collect();
        if unfinished.is_empty() {
            break;
        }
        let died = run.outcome.code.is_some();
        budget_hit |= !died;
        let why = if died {
            format!(
                "the guest ended first, vng {}; its kernel's console is above",
                run.outcome.status
            )
        } else {
            "stopped at the time budget".to_string()
        };
        let list = unfinished
            .iter()
            .map(|(sel, _)| sel.exe)
            .collect::<Vec<_>>()
            .join(", ");
        if died && boot < BOOTS {
            eprintln!(
                "xtask: kernel {line}: {why}; booting it again (boot {} of {BOOTS}) for what \
                 it left unfinished: {list}",
                boot + 1
            );
            todo = unfinished;
            continue;
        }
        // What the budget (or a guest that died or never booted) cut short counts as
        // failed: a test that did not run has not passed.
        for (sel, _) in unfinished {
            if run.started.iter().any(|s| s == sel.exe) {
                tally
                    .failures
                    .push(format!("{} (did not finish: {why})", sel.exe));
            } else {
                not_run += 1;
                tally.failures.push(format!("{} (not run: {why})", sel.exe));
            }
        }
        break;
    }
    eprintln!(
        "xtask: kernel {line} suite ({} {}): {} executables ({not_run} not run), {} tests \
         passed, {} failed, {} ignored, in {:.0} s (guest {:.0} s{})",
        guest.kernel.package,
        guest.kernel.version,
        names.len(),
        tally.passed,
        tally.failed,
        tally.ignored,
        start.elapsed().as_secs_f64(),
        guest_time.as_secs_f64(),
        if budget_hit {
            format!(", stopped at the {} s budget", BUDGET.as_secs())
        } else {
            String::new()
        }
    );
    if !tally.failures.is_empty() {
        for f in &tally.failures {
            eprintln!("xtask:   FAILED on {line}: {f}");
        }
        bail!(
            "{} of {} test executables failed on kernel {line}",
            tally.failures.len(),
            names.len()
        );
    }
    Ok(())
}

/// What one boot ran.
struct BootRun {
    outcome: super::guest::Outcome,
    /// Executables whose begin marker came.
    started: Vec<String>,
    /// Executables whose end marker came (their failures are in the tally).
    ended: Vec<String>,
}

/// Boots the guest once and runs `todo` in it, one after the other, counting into `tally`.
fn boot_once(
    guest: &Guest,
    todo: &[(&Selected, &TestExe)],
    args: &[String],
    limit: Duration,
    tally: &mut Tally,
) -> anyhow::Result<BootRun> {
    let mut script = String::new();
    for (sel, exe) in todo {
        script.push_str(&runner(exe, sel.filters, args));
    }
    // What the guest's kernel said about crashed or killed processes (a test target that
    // dies shows only as a closed pipe in the test's output).
    script.push_str(
        "dmesg | grep -iE 'segfault|general protection|trap|oom|BUG|WARNING' | tail -40 >&2\n",
    );
    let mut env: Vec<(String, String)> = PASS_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
    env.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
    env.push(("RUSTC".into(), rustc()?.display().to_string()));
    // The tests' limits for a wedged process (probed's attach, a target's line, an exit) are
    // set for a real CPU; under emulation a BPF load alone can take most of the 20 s attach
    // limit (seen on 6.1 at load average 8: `did not start tracing`).
    env.push(("PROBED_TEST_TIME_SCALE".into(), TIME_SCALE.to_string()));
    let mut current: Option<(String, bool)> = None;
    let mut started = Vec::new();
    let mut ended = Vec::new();
    let mut out = std::io::stdout();
    let names: Vec<&str> = todo.iter().map(|(sel, _)| sel.exe).collect();
    let outcome = guest.run(
        &format!("the kernel suite ({})", names.join(", ")),
        &["sh".into(), "-c".into(), script],
        &crate::paths::root(),
        &env,
        Some(limit),
        |l| {
            let _ = writeln!(out, "{l}");
            if let Some(name) = l.strip_prefix(BEGIN) {
                started.push(name.to_string());
                current = Some((name.to_string(), false));
            } else if let Some(rest) = l.strip_prefix(END) {
                let (name, saw) = current.take().unwrap_or_default();
                let code = rest.rsplit(' ').next().unwrap_or("?").to_string();
                if code != "0" {
                    tally.failures.push(format!("{name} (exit {code})"));
                } else if !saw {
                    tally
                        .failures
                        .push(format!("{name} (exited 0 without a `test result:` line)"));
                }
                ended.push(name);
            } else if tally.count(l)
                && let Some((_, saw)) = current.as_mut()
            {
                *saw = true;
            }
        },
    )?;
    Ok(BootRun {
        outcome,
        started,
        ended,
    })
}

/// The shell lines that run one executable between markers, in its package's directory.
fn runner(exe: &TestExe, filters: &[&str], args: &[String]) -> String {
    let mut words = vec![shell(&exe.path.to_string_lossy())];
    // A name filter from the caller replaces ours; flags (`--nocapture`) add to them.
    if args.iter().all(|a| a.starts_with('-')) {
        words.extend(filters.iter().map(|f| shell(f)));
    }
    words.extend(args.iter().map(|a| shell(a)));
    // One test at a time in a guest: two probed processes starting at once on 6.1 under
    // QEMU emulation once locked both CPUs up (soft lockups, "stuck for 782s! [probed]",
    // in a 12-run loop of stacks_basic's two tests, 2026-12-06; not seen one at a time,
    // README "Kernels"). A hang ends the whole guest; one at a time, the suite tests each
    // kernel path rather than that race.
    words.push("--test-threads=1".into());
    format!(
        "echo '{BEGIN}{name}'\n(cd {dir} && {cmd})\necho \"{END}{name} $?\"\n",
        name = exe.name,
        dir = shell(&exe.dir.to_string_lossy()),
        cmd = words.join(" "),
    )
}

fn shell(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The rustc of the build (stacks tests compile a Rust fixture with `$RUSTC`).
fn rustc() -> anyhow::Result<PathBuf> {
    let sysroot =
        crate::exec::output(std::process::Command::new("rustc").args(["--print", "sysroot"]))?;
    Ok(PathBuf::from(sysroot.trim()).join("bin/rustc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_marks_begin_and_end_with_the_exit_code() {
        let exe = TestExe {
            name: "trace_basic".into(),
            path: "/w/target/release/deps/trace_basic-1".into(),
            dir: "/w/daemon".into(),
            integration: true,
        };
        let s = runner(&exe, &["a", "b"], &[]);
        assert_eq!(
            s,
            "echo '=== probed-vm begin trace_basic'\n\
             (cd '/w/daemon' && '/w/target/release/deps/trace_basic-1' 'a' 'b' --test-threads=1)\n\
             echo \"=== probed-vm end trace_basic $?\"\n"
        );
        let s = runner(&exe, &["a"], &["--nocapture".into()]);
        assert!(
            s.contains("trace_basic-1' 'a' '--nocapture' --test-threads=1)"),
            "{s}"
        );
        let s = runner(&exe, &["a"], &["other".into()]);
        assert!(
            s.contains("trace_basic-1' 'other' --test-threads=1)"),
            "{s}"
        );
    }
}
