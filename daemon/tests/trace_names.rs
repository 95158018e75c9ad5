//! SPECs the way bpftrace users write them: library names (`uprobe:libc:malloc`),
//! wildcards (`uprobe:PROG:chain_*`, one probe per matching function), and `probed list`.
//!
//! Expected counts come from the fixtures' own call counts; expected names from nm and the
//! target's /proc/PID/maps, never from probed's ELF code.

mod common;

use std::{collections::BTreeMap, path::PathBuf};

use common::{Probed, Target, num, parse_json};

/// `uprobe:libc:malloc --pid P` resolves libc through P's own mappings, says which file it
/// is, and counts exactly the N mallocs of each of the fixture's rounds.
#[test]
fn library_name_counts_malloc_exactly() {
    if !common::require_bpf("library_name_counts_malloc_exactly") {
        return;
    }
    const N: u64 = 20_000;
    let bin = probed::fixtures::build("malloc_count.c", "malloc_count", &["-O2"])
        .expect("build malloc_count");
    let mut target = Target::start(&bin, &[&N.to_string()]);
    let pid = target.pid.to_string();
    let spec = "uprobe:libc:malloc";
    let probed = Probed::start(&["trace", spec, "--pid", &pid, "--format", "json"]);
    for _ in 0..3 {
        target.go();
    }
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let libc_path = common::mapped_libc(&target.pid.to_string());
    let said = end
        .stderr
        .iter()
        .find(|l| l.starts_with("probed: library libc is "))
        .unwrap_or_else(|| panic!("no resolution line: {:?}", end.stderr));
    let shown = PathBuf::from(said.trim_start_matches("probed: library libc is "));
    assert_eq!(shown.canonicalize().unwrap(), libc_path, "{said}");
    let (hits, summary) = parse_json(&end.stdout);
    let summary = summary.expect("a summary");
    let p = common::probe_summary(&summary, spec);
    assert_eq!(num(p, "hits"), 3 * N, "{p}");
    assert_eq!(num(p, "printed"), 3 * N, "{p}");
    assert_eq!(p["file"], libc_path.display().to_string(), "{p}");
    assert_eq!(hits.len() as u64, 3 * N);
    for h in &hits {
        // The symbolizer names the address by its preferred alias (libc's own __libc_malloc).
        assert!(
            h["symbol"] == "malloc" || h["symbol"] == "__libc_malloc",
            "{h}"
        );
        assert_eq!(num(h, "pid"), u64::from(target.pid), "{h}");
        let module = PathBuf::from(h["module"].as_str().expect("a module"));
        assert_eq!(module.canonicalize().unwrap(), libc_path, "{h}");
    }
    target.finish();
}

/// `uprobe:PROG:chain_*` attaches one probe per matching function address — chain_one and
/// its alias chain_alias once — each with its own id and summary line, counting exactly
/// the fixture's calls; not_a_chain is not probed. Where the kernel has uprobe_multi links,
/// the three probes share one link.
#[test]
fn wildcard_is_one_probe_per_function() {
    if !common::require_bpf("wildcard_is_one_probe_per_function") {
        return;
    }
    let bin = probed::fixtures::build("chain.c", "chain", &["-O1"]).expect("build chain");
    let mut target = Target::start(&bin, &["0"]);
    let pattern = format!("uprobe:{}:chain_*", bin.display());
    let probed = Probed::start(&["trace", &pattern, "--format", "json"]);
    // Where the kernel has uprobe_multi links, the file's three probes share one.
    assert_eq!(
        common::multi_links(probed.pid()),
        usize::from(common::kernel_has_uprobe_multi()),
        "{:?}",
        common::link_types(probed.pid())
    );
    target.go();
    target.go();
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    assert!(
        end.stderr
            .iter()
            .any(|l| l == &format!("probed: {pattern} matches 3 function(s)")),
        "{:?}",
        end.stderr
    );
    // chain_one and chain_alias share an address: one probe, named by one, the other its
    // alias.
    let alias_line = end
        .stderr
        .iter()
        .find(|l| l.contains("also matches its aliases"))
        .unwrap_or_else(|| panic!("no alias line: {:?}", end.stderr));
    assert!(
        alias_line.contains("chain_one") && alias_line.contains("chain_alias"),
        "{alias_line}"
    );
    let (hits, summary) = parse_json(&end.stdout);
    let summary = summary.expect("a summary");
    let per_probe: BTreeMap<String, (u64, u64)> = summary["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let spec = p["probe"].as_str().unwrap().to_owned();
            let name = spec.rsplit(':').next().unwrap().to_owned();
            (name, (num(p, "probe_id"), num(p, "hits")))
        })
        .collect();
    let one = per_probe
        .get("chain_one")
        .or_else(|| per_probe.get("chain_alias"))
        .expect("chain_one probed");
    assert_eq!(per_probe.len(), 3, "{per_probe:?}");
    assert_eq!(one.1, 2 * 6000, "{per_probe:?}");
    assert_eq!(per_probe["chain_two"].1, 2 * 3000, "{per_probe:?}");
    assert_eq!(per_probe["chain_three"].1, 2 * 1000, "{per_probe:?}");
    let ids: std::collections::BTreeSet<u64> = per_probe.values().map(|v| v.0).collect();
    assert_eq!(ids, [0, 1, 2].into(), "own ids");
    assert_eq!(hits.len(), 2 * 10_000);
    for p in summary["probes"].as_array().unwrap() {
        assert!(
            p["probe"]
                .as_str()
                .unwrap()
                .starts_with(&format!("uprobe:{}:chain_", bin.display())),
            "{p}"
        );
        assert_eq!(num(p, "printed"), num(p, "hits"), "{p}");
    }
    target.finish();
}

/// `probed list` prints every matching name (aliases too, each once) for functions, and
/// python3.11's USDT probes (8) with their argument specs; it attaches nothing, so it needs
/// no privileges.
#[test]
fn list_prints_probe_points() {
    let bin = probed::fixtures::build("chain.c", "chain", &["-O1"]).expect("build chain");
    let end = common::run_probed(&["list", &format!("uprobe:{}:chain_*", bin.display())]);
    assert!(end.status.success(), "{end:?}");
    let want: Vec<String> = ["chain_alias", "chain_one", "chain_three", "chain_two"]
        .iter()
        .map(|n| format!("uprobe:{}:{n}", bin.display()))
        .collect();
    assert_eq!(end.stdout, want);
    // python3.11 is in the test image and on the machines CI runs on: its absence fails.
    {
        let end = common::run_probed(&["list", "usdt:/usr/bin/python3.11:*"]);
        assert!(end.status.success(), "{end:?}");
        // Debian's python3.11 has 8 notes (readelf -n); bpftrace, when here, lists the same.
        assert_eq!(end.stdout.len(), 8, "{:?}", end.stdout);
        if let Ok(out) = std::process::Command::new("bpftrace")
            .args(["-l", "usdt:/usr/bin/python3.11:*"])
            .output()
            && out.status.success()
        {
            let mut theirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect();
            let mut ours: Vec<String> = end
                .stdout
                .iter()
                .map(|l| l.split('\t').next().unwrap().to_owned())
                .collect();
            theirs.sort();
            ours.sort();
            assert_eq!(ours, theirs, "same probe points as bpftrace -l");
        }
        assert!(end.stdout.contains(
            &"usdt:/usr/bin/python3.11:python:function__entry\t8@%rbp 8@%r12 -4@%eax [semaphore]"
                .to_string()
        ));
        assert!(
            end.stdout
                .iter()
                .all(|l| l.starts_with("usdt:/usr/bin/python3.11:python:"))
        );
    }
}
