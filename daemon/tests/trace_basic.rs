//! `probed trace` against real processes: exact hit counts, every field of a hit, return
//! values, `symbol+N` and raw file-offset SPECs, several probes in one run.
//!
//! Expected offsets come from binutils (nm, readelf, objdump) and expected addresses from the
//! target's /proc/PID/maps, never from probed's own ELF code.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Probed, Target, TargetCopy, num, parse_json, probe_summary};
use serde_json::Value;

/// What a hit must say about where it fired.
struct Place<'a> {
    /// The traced binary.
    copy: &'a TargetCopy,
    /// The target process.
    pid: u32,
    /// The thread ids the target reported.
    tids: &'a BTreeSet<u32>,
    /// The symbol the probe is in.
    symbol: &'a str,
    /// Bytes into the symbol.
    offset: u64,
    /// The file offset of the probed instruction (from nm + readelf).
    file_offset: u64,
    /// The address the target maps that file offset at.
    addr: u64,
}

impl Place<'_> {
    /// Asserts every field of `hit` that depends on where and in whom it fired.
    fn check(&self, hit: &Value, kind: &str) {
        assert_eq!(hit["kind"], kind, "{hit}");
        assert_eq!(num(hit, "pid"), u64::from(self.pid), "{hit}");
        let tid = u32::try_from(num(hit, "tid")).expect("tid fits u32");
        assert!(
            self.tids.contains(&tid),
            "tid {tid} not reported by target: {hit}"
        );
        assert_eq!(hit["comm"], self.copy.comm(), "{hit}");
        assert!(num(hit, "ts_ns") > 0, "{hit}");
        assert_eq!(hit["addr"], format!("{:#x}", self.addr), "{hit}");
        assert_eq!(hit["module"], self.copy.path_str(), "{hit}");
        assert_eq!(hit["symbol"], self.symbol, "{hit}");
        assert_eq!(num(hit, "offset"), self.offset, "{hit}");
        assert_eq!(
            hit["file_offset"],
            format!("{:#x}", self.file_offset),
            "{hit}"
        );
        assert!(hit.get("unresolved").is_none(), "{hit}");
    }
}

/// The six arguments probed_add(i, …, i+5) gets on its i-th call.
fn add_args(i: u64) -> Value {
    serde_json::json!([i, i + 1, i + 2, i + 3, i + 4, i + 5])
}

/// The hits of probe `id`, in output order.
fn of_probe(hits: &[Value], id: u64) -> Vec<&Value> {
    hits.iter().filter(|h| num(h, "probe_id") == id).collect()
}

/// N calls give exactly N entry hits on probed_add and N return hits on probed_other, each
/// with the right pid, tid, comm, module, symbol, offset 0, addr, file offset, the exact six
/// arguments and return value 2*i+1, in call order.
#[test]
fn entry_and_return_hits_are_exact() {
    if !common::require_bpf("entry_and_return_hits_are_exact") {
        return;
    }
    const N: u64 = 100;
    let copy = TargetCopy::new("tb_exact");
    let add = common::symbol_file_offset(&copy.path, "probed_add");
    let other = common::symbol_file_offset(&copy.path, "probed_other");
    let mut target = Target::start(&copy.path, &[&N.to_string()]);
    let specs = [
        copy.spec("uprobe", "probed_add"),
        copy.spec("uretprobe", "probed_other"),
    ];
    let probed = Probed::start(&["trace", &specs[0], &specs[1], "--format", "json"]);
    let round = target.go();
    let tids = common::reported_tids(&round);
    assert_eq!(tids.len(), 1, "{round:?}");
    assert_eq!(common::reported_sum(&round), common::expected_sum(N as i64));
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let (hits, summary) = parse_json(&end.stdout);
    let place = |symbol, file_offset| Place {
        copy: &copy,
        pid: target.pid,
        tids: &tids,
        symbol,
        offset: 0,
        file_offset,
        addr: common::mapped_addr(target.pid, &copy.path, file_offset),
    };
    let (add_place, other_place) = (place("probed_add", add), place("probed_other", other));

    assert_eq!(hits.len() as u64, 2 * N, "hits: {hits:?}");
    // One thread: entry of probed_add(i) then return of probed_other(i), i = 0, 1, …
    for (n, pair) in hits.chunks(2).enumerate() {
        let i = n as u64;
        let (entry, ret) = (&pair[0], &pair[1]);
        assert_eq!(entry["probe"], specs[0].as_str(), "{entry}");
        assert_eq!(num(entry, "probe_id"), 0, "{entry}");
        add_place.check(entry, "entry");
        assert_eq!(entry["args"], add_args(i), "call {i}: {entry}");
        assert!(entry.get("retval").is_none(), "{entry}");
        assert_eq!(ret["probe"], specs[1].as_str(), "{ret}");
        assert_eq!(num(ret, "probe_id"), 1, "{ret}");
        other_place.check(ret, "return");
        assert_eq!(num(ret, "retval"), 2 * i + 1, "call {i}: {ret}");
        assert!(ret.get("args").is_none(), "{ret}");
        assert!(num(entry, "ts_ns") < num(ret, "ts_ns"), "{entry} {ret}");
    }

    let summary = summary.expect("a summary line");
    assert_eq!(summary["ended_by"], "signal", "{summary}");
    for spec in &specs {
        let p = probe_summary(&summary, spec);
        assert_eq!(num(p, "hits"), N, "{p}");
        assert_eq!(num(p, "printed"), N, "{p}");
        assert_eq!(num(p, "lost"), 0, "{p}");
        assert_eq!(num(p, "not_printed"), 0, "{p}");
        assert_eq!(p["unresolved"], serde_json::json!({}), "{p}");
    }
    target.finish();
}

/// With 4 threads making N calls each, every hit's tid is one the target reported, each
/// thread has exactly N entry and N return hits, and each thread's arguments and return
/// values come in its own call order.
#[test]
fn threads_are_told_apart() {
    if !common::require_bpf("threads_are_told_apart") {
        return;
    }
    const N: u64 = 50;
    const THREADS: usize = 4;
    let copy = TargetCopy::new("tb_threads");
    let mut target = Target::start(&copy.path, &[&N.to_string(), &THREADS.to_string()]);
    let specs = [
        copy.spec("uprobe", "probed_add"),
        copy.spec("uretprobe", "probed_other"),
    ];
    let probed = Probed::start(&["trace", &specs[0], &specs[1], "--format", "json"]);
    let round = target.go();
    let tids = common::reported_tids(&round);
    assert_eq!(tids.len(), THREADS, "{round:?}");
    assert_eq!(
        common::reported_sum(&round),
        THREADS as i64 * common::expected_sum(N as i64)
    );
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let (hits, summary) = parse_json(&end.stdout);

    let mut per_tid: BTreeMap<u32, (Vec<&Value>, Vec<&Value>)> = BTreeMap::new();
    for hit in &hits {
        assert_eq!(num(hit, "pid"), u64::from(target.pid), "{hit}");
        assert_eq!(hit["module"], copy.path_str(), "{hit}");
        assert_eq!(hit["comm"], copy.comm(), "{hit}");
        let tid = u32::try_from(num(hit, "tid")).expect("tid fits u32");
        assert!(
            tids.contains(&tid),
            "tid {tid} not reported by target: {hit}"
        );
        let entry = per_tid.entry(tid).or_default();
        match num(hit, "probe_id") {
            0 => entry.0.push(hit),
            1 => entry.1.push(hit),
            other => panic!("unknown probe id {other}: {hit}"),
        }
    }
    assert_eq!(
        per_tid.keys().copied().collect::<BTreeSet<_>>(),
        tids,
        "threads seen vs threads reported"
    );
    for (tid, (adds, rets)) in &per_tid {
        assert_eq!(adds.len() as u64, N, "entry hits of tid {tid}");
        assert_eq!(rets.len() as u64, N, "return hits of tid {tid}");
        for (i, (add, ret)) in adds.iter().zip(rets).enumerate() {
            let i = i as u64;
            assert_eq!(add["symbol"], "probed_add", "{add}");
            assert_eq!(add["args"], add_args(i), "tid {tid} call {i}: {add}");
            assert_eq!(ret["symbol"], "probed_other", "{ret}");
            assert_eq!(num(ret, "retval"), 2 * i + 1, "tid {tid} call {i}: {ret}");
        }
    }
    let summary = summary.expect("a summary line");
    let total = N * THREADS as u64;
    for spec in &specs {
        let p = probe_summary(&summary, spec);
        assert_eq!(num(p, "hits"), total, "{p}");
        assert_eq!(num(p, "printed"), total, "{p}");
    }
    common::assert_summary_adds_up(&summary);
    target.finish();
}

/// `uprobe:PATH:probed_add+N` (N = the second instruction, from objdump) and
/// `uprobe:PATH:0xOFF` (OFF = probed_other's file offset, from nm + readelf) each fire once
/// per call, at that instruction: symbol and offset-in-symbol, file offset and address match.
#[test]
fn symbol_plus_and_file_offset_specs() {
    if !common::require_bpf("symbol_plus_and_file_offset_specs") {
        return;
    }
    const N: u64 = 40;
    let copy = TargetCopy::new("tb_offsets");
    let add = common::symbol_file_offset(&copy.path, "probed_add");
    let plus = common::second_instruction(&copy.path, "probed_add");
    assert!(plus > 0);
    let other = common::symbol_file_offset(&copy.path, "probed_other");
    let mut target = Target::start(&copy.path, &[&N.to_string()]);
    let specs = [
        copy.spec("uprobe", &format!("probed_add+{plus}")),
        copy.spec("uprobe", &format!("{other:#x}")),
    ];
    let probed = Probed::start(&["trace", &specs[0], &specs[1], "--format", "json"]);
    let round = target.go();
    let tids = common::reported_tids(&round);
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let (hits, summary) = parse_json(&end.stdout);

    let plus_place = Place {
        copy: &copy,
        pid: target.pid,
        tids: &tids,
        symbol: "probed_add",
        offset: plus,
        file_offset: add + plus,
        addr: common::mapped_addr(target.pid, &copy.path, add + plus),
    };
    let other_place = Place {
        copy: &copy,
        pid: target.pid,
        tids: &tids,
        symbol: "probed_other",
        offset: 0,
        file_offset: other,
        addr: common::mapped_addr(target.pid, &copy.path, other),
    };
    let pluses = of_probe(&hits, 0);
    let others = of_probe(&hits, 1);
    assert_eq!(pluses.len() as u64, N, "{hits:?}");
    assert_eq!(others.len() as u64, N, "{hits:?}");
    for hit in &pluses {
        assert_eq!(hit["probe"], specs[0].as_str(), "{hit}");
        plus_place.check(hit, "entry");
    }
    for (i, hit) in others.iter().enumerate() {
        assert_eq!(hit["probe"], specs[1].as_str(), "{hit}");
        other_place.check(hit, "entry");
        // At the function's first instruction the first argument is still in its register.
        assert_eq!(hit["args"][0], i as u64, "call {i}: {hit}");
    }
    let summary = summary.expect("a summary line");
    for spec in &specs {
        assert_eq!(num(probe_summary(&summary, spec), "hits"), N);
    }
    common::assert_summary_adds_up(&summary);
    target.finish();
}

/// Five probes in one run — two of them on the very same instruction, written differently —
/// are told apart: every hit's probe and probe_id name the SPEC that fired, its kind and
/// symbol match that SPEC, each probe has exactly N hits, and the summary lists the SPECs in
/// probe id order.
#[test]
fn several_probes_told_apart() {
    if !common::require_bpf("several_probes_told_apart") {
        return;
    }
    const N: u64 = 30;
    let copy = TargetCopy::new("tb_several");
    let mut target = Target::start(&copy.path, &[&N.to_string()]);
    // (SPEC, kind, symbol)
    let probes = [
        (copy.spec("uprobe", "probed_add"), "entry", "probed_add"),
        (
            copy.spec("uretprobe", "probed_other"),
            "return",
            "probed_other",
        ),
        (copy.spec("u", "probed_add"), "entry", "probed_add"),
        (copy.spec("uprobe", "probed_other"), "entry", "probed_other"),
        (copy.spec("ur", "probed_add"), "return", "probed_add"),
    ];
    let mut args = vec!["trace", "--format", "json"];
    args.extend(probes.iter().map(|p| p.0.as_str()));
    let probed = Probed::start(&args);
    // Where the kernel has uprobe_multi links: the three entry probes (two at one offset)
    // share one, the two return probes another; the counts below go through them.
    assert_eq!(
        common::multi_links(probed.pid()),
        2 * usize::from(common::kernel_has_uprobe_multi()),
        "{:?}",
        common::link_types(probed.pid())
    );
    target.go();
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let (hits, summary) = parse_json(&end.stdout);

    for hit in &hits {
        let id = usize::try_from(num(hit, "probe_id")).expect("id fits usize");
        let (spec, kind, symbol) = &probes[id];
        assert_eq!(hit["probe"], spec.as_str(), "{hit}");
        assert_eq!(hit["kind"], *kind, "{hit}");
        assert_eq!(hit["symbol"], *symbol, "{hit}");
    }
    for (id, _) in probes.iter().enumerate() {
        assert_eq!(of_probe(&hits, id as u64).len() as u64, N, "probe {id}");
    }
    for (i, hit) in of_probe(&hits, 4).iter().enumerate() {
        let i = i as u64;
        assert_eq!(
            num(hit, "retval"),
            6 * i + 15,
            "probed_add's return, call {i}"
        );
    }
    for (i, hit) in of_probe(&hits, 3).iter().enumerate() {
        assert_eq!(hit["args"][0], i as u64, "probed_other's entry, call {i}");
    }
    let summary = summary.expect("a summary line");
    let listed: Vec<(&str, u64)> = summary["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .map(|p| (p["probe"].as_str().expect("probe text"), num(p, "probe_id")))
        .collect();
    let expected: Vec<(&str, u64)> = probes
        .iter()
        .enumerate()
        .map(|(id, p)| (p.0.as_str(), id as u64))
        .collect();
    assert_eq!(listed, expected);
    for (spec, _, _) in &probes {
        assert_eq!(num(probe_summary(&summary, spec), "hits"), N, "{spec}");
    }
    common::assert_summary_adds_up(&summary);
    target.finish();
}

/// Hits are written as they come, not held back until the run ends: with probed still
/// running, the lines of 3 calls arrive on its stdout (a pipe) within 5 s.
#[test]
fn hits_are_printed_promptly() {
    if !common::require_bpf("hits_are_printed_promptly") {
        return;
    }
    const N: usize = 3;
    let copy = TargetCopy::new("tb_prompt");
    let mut target = Target::start(&copy.path, &[&N.to_string()]);
    let spec = copy.spec("uprobe", "probed_add");
    let probed = Probed::start(&["trace", &spec, "--format", "json"]);
    target.go();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut early = Vec::new();
    while early.len() < N {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match probed.lines.recv_timeout(left) {
            Ok(line) => early.push(line),
            Err(_) => break,
        }
    }
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let (late_hits, _) = parse_json(&end.stdout);
    assert_eq!(
        early.len(),
        N,
        "only {} of {N} hit lines arrived while probed ran; {} more came out at exit \
         (output is flushed only when the buffer fills or at the end)",
        early.len(),
        late_hits.len()
    );
    let (hits, _) = parse_json(&early);
    assert!(hits.iter().all(|h| h["symbol"] == "probed_add"));
    target.finish();
}

/// `--count-in-bpf`: entry and return probes count every call in BPF (`counted_in_bpf` =
/// hits = N each), nothing is written per hit (no hit line, nothing printed), no process is
/// tracked for it, and the stop does not wait for records that never come.
#[test]
fn counted_in_bpf_exactly() {
    if !common::require_bpf("counted_in_bpf_exactly") {
        return;
    }
    const N: u64 = 1000;
    let copy = TargetCopy::new("tb_count");
    let mut target = Target::start(&copy.path, &[&N.to_string()]);
    let specs = [
        copy.spec("uprobe", "probed_add"),
        copy.spec("uretprobe", "probed_other"),
    ];
    let pid = target.pid.to_string();
    let probed = Probed::start(&[
        "trace",
        &specs[0],
        &specs[1],
        "--pid",
        &pid,
        "--count-in-bpf",
        "--drain-timeout",
        "30",
        "--format",
        "json",
    ]);
    target.go();
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let (hits, summary) = parse_json(&end.stdout);
    assert!(hits.is_empty(), "hit lines: {hits:?}");
    let summary = summary.expect("a summary line");
    for spec in &specs {
        let p = probe_summary(&summary, spec);
        assert_eq!(num(p, "hits"), N, "{p}");
        assert_eq!(num(p, "counted_in_bpf"), N, "{p}");
        assert_eq!(num(p, "printed"), 0, "{p}");
        assert_eq!(num(p, "lost"), 0, "{p}");
        assert_eq!(num(p, "dropped_at_stop"), 0, "{p}");
    }
    assert_eq!(
        num(&summary["resolver"], "processes_tracked"),
        0,
        "{summary}"
    );
    // A stop that waited for records a count-only probe never writes would take the whole
    // 30 s drain deadline.
    assert!(
        end.elapsed < std::time::Duration::from_secs(15),
        "the stop waited for hits that never come: {:?}",
        end.elapsed
    );
    target.finish();
}
