//! Every exit path leaves nothing behind: after SIGINT, SIGTERM, `--count`, `--duration`,
//! SIGKILL and an attach error, none of the BPF programs, maps or links probed held is still
//! loaded, no breakpoint is left in the traced process, and the process runs on normally.
//!
//! Tests run in parallel, so each one follows the ids its own probed held (from
//! /proc/PID/fdinfo while it ran) rather than diffing the whole system's lists.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{BpfIds, Probed, Target, TargetCopy, parse_json};

/// How long the kernel may take to free what a dead process held.
const UNLOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls per round of the target.
const N: u64 = 20;

/// How a run is ended.
#[derive(Clone, Copy, Debug)]
enum Exit {
    /// A signal sent after the target's round.
    Signal(i32),
    /// `--count`, reached during the target's round.
    Count,
    /// `--duration`, with no calls meanwhile.
    Duration,
}

/// A target traced by a probed that has attached, with what that probed holds.
struct Traced {
    /// The traced binary.
    copy: TargetCopy,
    /// The traced process.
    target: Target,
    /// The BPF objects probed held while tracing.
    held: BpfIds,
    /// (file offset, byte in the file) of each probed instruction.
    sites: Vec<(u64, u8)>,
}

impl Traced {
    /// Starts a target and a probed tracing it (entry of probed_add, return of probed_other)
    /// with `extra` arguments; checks probed holds programs and links and that the target
    /// has its breakpoints.
    fn start(name: &str, extra: &[&str]) -> (Self, Probed) {
        let copy = TargetCopy::new(name);
        let target = Target::start(&copy.path, &[&N.to_string()]);
        let specs = [
            copy.spec("uprobe", "probed_add"),
            copy.spec("uretprobe", "probed_other"),
        ];
        let mut args = vec!["trace", "--format", "json", &specs[0], &specs[1]];
        args.extend_from_slice(extra);
        let probed = Probed::start(&args);
        let held = common::held_by(probed.pid());
        assert!(held.progs.len() >= 2, "programs held: {held:?}");
        assert!(held.links.len() >= 2, "links held: {held:?}");
        assert!(!held.maps.is_empty(), "maps held: {held:?}");
        // The ids read from fdinfo are the ones bpftool lists, or "gone later" proves nothing.
        assert_eq!(
            common::loaded().intersection(&held),
            held,
            "bpftool vs fdinfo"
        );
        let sites: Vec<(u64, u8)> = ["probed_add", "probed_other"]
            .iter()
            .map(|sym| {
                let off = common::symbol_file_offset(&copy.path, sym);
                (off, common::file_byte(&copy.path, off))
            })
            .collect();
        for &(off, _) in &sites {
            assert_eq!(
                common::text_byte(target.pid, &copy.path, off),
                common::BREAKPOINT_BYTE,
                "no breakpoint at {off:#x} while tracing"
            );
        }
        let traced = Self {
            copy,
            target,
            held,
            sites,
        };
        (traced, probed)
    }

    /// After probed is gone: nothing it held is loaded, the target's code is the file's
    /// again, and another round of calls completes with the right result.
    fn assert_clean(mut self) {
        let left = common::wait_unloaded(&self.held, UNLOAD_TIMEOUT);
        assert!(
            left.is_empty(),
            "still loaded after probed exited: {left:?}"
        );
        for &(off, byte) in &self.sites {
            assert_eq!(
                common::text_byte(self.target.pid, &self.copy.path, off),
                byte,
                "a breakpoint is left at {off:#x}"
            );
        }
        let round = self.target.go();
        assert_eq!(common::reported_sum(&round), common::expected_sum(N as i64));
        self.target.finish();
    }
}

/// Runs one exit path end to end and checks what is left.
fn exit_path(name: &str, exit: Exit) {
    let extra: &[&str] = match exit {
        Exit::Signal(_) => &[],
        Exit::Count => &["--count", "7"],
        Exit::Duration => &["--duration", "0.5"],
    };
    let (mut traced, probed) = Traced::start(name, extra);
    let end = match exit {
        Exit::Signal(sig) => {
            traced.target.go();
            probed.stop(sig)
        }
        Exit::Count => {
            traced.target.go();
            probed.wait()
        }
        Exit::Duration => probed.wait(),
    };
    assert!(end.status.success(), "{exit:?}: {end:?}");
    let (hits, summary) = parse_json(&end.stdout);
    let summary = summary.expect("a summary line");
    let (ended_by, printed) = match exit {
        Exit::Signal(_) => ("signal", 2 * N),
        Exit::Count => ("count", 7),
        Exit::Duration => ("duration", 0),
    };
    assert_eq!(summary["ended_by"], ended_by, "{summary}");
    assert_eq!(hits.len() as u64, printed, "{exit:?}");
    traced.assert_clean();
}

/// SIGINT: probed prints every hit and the summary, and leaves nothing loaded.
#[test]
fn sigint_leaves_nothing() {
    if !common::require_bpf("sigint_leaves_nothing") {
        return;
    }
    exit_path("tc_sigint", Exit::Signal(libc::SIGINT));
}

/// SIGTERM: same as SIGINT.
#[test]
fn sigterm_leaves_nothing() {
    if !common::require_bpf("sigterm_leaves_nothing") {
        return;
    }
    exit_path("tc_sigterm", Exit::Signal(libc::SIGTERM));
}

/// `--count`: probed ends by itself and leaves nothing loaded.
#[test]
fn count_leaves_nothing() {
    if !common::require_bpf("count_leaves_nothing") {
        return;
    }
    exit_path("tc_count", Exit::Count);
}

/// `--duration`: probed ends by itself and leaves nothing loaded.
#[test]
fn duration_leaves_nothing() {
    if !common::require_bpf("duration_leaves_nothing") {
        return;
    }
    exit_path("tc_duration", Exit::Duration);
}

/// SIGKILL: probed cannot clean up, and the kernel frees everything with its descriptors.
#[test]
fn sigkill_leaves_nothing() {
    if !common::require_bpf("sigkill_leaves_nothing") {
        return;
    }
    let (traced, probed) = Traced::start("tc_sigkill", &[]);
    let end = probed.stop(libc::SIGKILL);
    assert!(!end.status.success());
    traced.assert_clean();
}

/// An attach error after the BPF programs were loaded and a first probe attached (the
/// kernel refuses a breakpoint instruction): no program of probed's stays loaded and the
/// first probe's breakpoint is gone.
#[test]
fn attach_error_leaves_nothing() {
    if !common::require_bpf("attach_error_leaves_nothing") {
        return;
    }
    // The names of probed's programs, from a run that attaches.
    let (reference, probed) = Traced::start("tc_attach_ref", &[]);
    let names = common::prog_names(&reference.held.progs);
    assert!(!names.is_empty());
    assert!(probed.stop(libc::SIGINT).status.success());
    reference.assert_clean();

    let copy = TargetCopy::new("tc_attach_err");
    let mut target = Target::start(&copy.path, &[&N.to_string()]);
    let add = common::symbol_file_offset(&copy.path, "probed_add");
    let add_byte = common::file_byte(&copy.path, add);
    let before = common::loaded();
    let end = common::run_probed(&[
        "trace",
        &copy.spec("uprobe", "probed_add"),
        &copy.spec("uprobe", "probed_trap"),
    ]);
    assert!(!end.status.success(), "{end:?}");
    assert!(
        end.stderr.iter().any(|l| l.contains("cannot attach")),
        "{end:?}"
    );

    // Programs with probed's names loaded since `before` and held by no live process (so
    // not another test's probed) must go away.
    let orphans = || -> BTreeSet<u32> {
        let now = common::loaded();
        let new: BTreeSet<u32> = now.progs.difference(&before.progs).copied().collect();
        let held = held_by_anyone();
        new.into_iter()
            .filter(|id| !held.contains(id))
            .filter(|id| {
                common::prog_names(&BTreeSet::from([*id]))
                    .iter()
                    .any(|n| names.contains(n))
            })
            .collect()
    };
    let mut left = orphans();
    common::wait_until(UNLOAD_TIMEOUT, || {
        left = orphans();
        left.is_empty()
    });
    assert!(left.is_empty(), "probed programs left loaded: {left:?}");
    assert_eq!(common::text_byte(target.pid, &copy.path, add), add_byte);
    let round = target.go();
    assert_eq!(common::reported_sum(&round), common::expected_sum(N as i64));
    target.finish();
}

/// Program ids any live process holds a descriptor to (directly or through a link).
fn held_by_anyone() -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        ids.extend(common::held_by(pid).progs);
    }
    ids
}
