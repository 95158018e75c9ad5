//! Typed arguments and USDT probes, as bpftrace users write them: a SPEC's argument list
//! (`uprobe:BIN:greet(str,i32)`, `uretprobe:BIN:describe(ret:str)`) and Debian's python3.11
//! USDT probe `python:function__entry` with its semaphore, read as `(str,str,i32)`, and a
//! wildcard USDT SPEC (`python:function__re*`).
//!
//! Expected values come from the fixture's own arguments and the Python script's text.

mod common;

use std::process::Command;

use common::{Probed, Target, num, parse_json};

/// `greet(str,i32)` and `describe(ret:str)`: every call's values exactly, a string longer
/// than BPF's bound cut and flagged, a NULL string shown as null.
#[test]
fn function_arguments_are_typed() {
    if !common::require_bpf("function_arguments_are_typed") {
        return;
    }
    const N: u64 = 200;
    let bin =
        probed::fixtures::build("typed_args.c", "typed_args", &["-O2"]).expect("build typed_args");
    let mut target = Target::start(&bin, &[&N.to_string()]);
    let pid = target.pid.to_string();
    let path = bin.display().to_string();
    let entry = format!("uprobe:{path}:greet(str,i32)");
    let ret = format!("uretprobe:{path}:describe(ret:str)");
    let probed = Probed::start(&["trace", &entry, &ret, "--pid", &pid, "--format", "json"]);
    target.go();
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    target.finish();
    let (hits, summary) = parse_json(&end.stdout);
    let summary = summary.expect("a summary");
    assert_eq!(num(common::probe_summary(&summary, &entry), "printed"), N);
    assert_eq!(num(common::probe_summary(&summary, &ret), "printed"), N);
    let greets: Vec<_> = hits
        .iter()
        .filter(|h| h["probe"] == entry.as_str())
        .collect();
    let describes: Vec<_> = hits.iter().filter(|h| h["probe"] == ret.as_str()).collect();
    assert_eq!(greets.len() as u64, N);
    for (i, h) in greets.iter().enumerate() {
        let args = h["args"].as_array().unwrap_or_else(|| panic!("args: {h}"));
        assert_eq!(args.len(), 2, "{h}");
        assert_eq!(args[1].as_i64(), Some(i as i64 - 5), "{h}");
        match i {
            1 => {
                assert_eq!(args[0].as_str(), Some("x".repeat(255).as_str()), "{h}");
                assert_eq!(h["args_truncated"], serde_json::json!([0]), "{h}");
            }
            2 => {
                assert!(args[0].is_null(), "{h}");
                assert!(h.get("args_truncated").is_none(), "{h}");
            }
            _ => {
                assert_eq!(args[0].as_str(), Some(format!("name-{i}").as_str()), "{h}");
                assert!(h.get("args_truncated").is_none(), "{h}");
            }
        }
    }
    assert_eq!(describes.len() as u64, N);
    for (i, h) in describes.iter().enumerate() {
        let want = if i % 2 == 1 { "odd" } else { "even" };
        assert_eq!(h["retval"].as_str(), Some(want), "{h}");
    }
}

/// Debian's python3.11: `python:function__entry(str,str,i32)` while a script calls `tick`
/// 3,000 times — exactly 3,000 hits of that process name `tick`, with the script's path and
/// the line `tick` is defined on. The probe has a semaphore, which the kernel raises while
/// probed is attached: without it python computes no arguments and never reaches the probe.
/// CPython 3.11 fires function__entry only while a trace function is set (its 3.11 eval
/// loop checks the probe inside the tracing path; bpftrace sees the same), so the script
/// sets one.
#[test]
fn python_usdt_function_entry() {
    if !common::require_bpf("python_usdt_function_entry") {
        return;
    }
    let python = "/usr/bin/python3.11";
    assert!(
        std::path::Path::new(python).exists(),
        "{python} is needed (Debian's python3.11 package)"
    );
    let dir = std::env::temp_dir().join(format!("probed-usdt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("ticks.py");
    std::fs::write(
        &script,
        "import sys\n\
         def tick(i):\n    return i + 1\n\
         sys.settrace(lambda *a: None)\n\
         for i in range(3000):\n    tick(i)\n\
         sys.settrace(None)\n",
    )
    .unwrap();
    let spec = format!("usdt:{python}:python:function__entry(str,str,i32)");
    // A wildcard SPEC beside it: its one match, function__return, named by its own SPEC.
    let returns = format!("usdt:{python}:python:function__re*(str,str,i32)");
    let returned = format!("usdt:{python}:python:function__return(str,str,i32)");
    let probed = Probed::start(&["trace", &spec, &returns, "--format", "json"]);
    let child = Command::new(python)
        .arg(&script)
        .spawn()
        .expect("run python3.11");
    let pid = u64::from(child.id());
    let out = child.wait_with_output().expect("python3.11");
    assert!(out.status.success(), "{out:?}");
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let (hits, summary) = parse_json(&end.stdout);
    let p = common::probe_summary(summary.as_ref().expect("a summary"), &spec);
    assert_eq!(num(p, "lost"), 0, "{p}");
    let ticks: Vec<_> = hits
        .iter()
        .filter(|h| num(h, "pid") == pid && h["probe"] == spec.as_str() && h["args"][1] == "tick")
        .collect();
    assert_eq!(ticks.len(), 3000, "{p}");
    for h in &ticks {
        assert_eq!(h["args"][0].as_str(), Some(script.to_str().unwrap()), "{h}");
        assert_eq!(h["args"][2].as_i64(), Some(2), "{h}");
    }
    let r = common::probe_summary(summary.as_ref().expect("a summary"), &returned);
    assert_eq!(num(r, "lost"), 0, "{r}");
    let tick_returns = hits
        .iter()
        .filter(|h| {
            num(h, "pid") == pid && h["probe"] == returned.as_str() && h["args"][1] == "tick"
        })
        .count();
    assert_eq!(tick_returns, 3000, "{r}");
    std::fs::remove_dir_all(&dir).ok();
}
