//! probed against a reference: bpftrace counting the same probe at the same time must count
//! exactly what probed printed, and both must equal the calls the target made.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::{Probed, Target, TargetCopy, num, parse_json, probe_summary};

/// bpftrace's `@c = count()` and probed's hits for `uprobe:PATH:probed_add` on a 2-thread
/// target are identical and equal the calls made.
#[test]
fn same_count_as_bpftrace() {
    if !common::require_bpf("same_count_as_bpftrace") {
        return;
    }
    const N: u64 = 250;
    const THREADS: u64 = 2;
    let copy = TargetCopy::new("tbt_count");
    let mut target = Target::start(&copy.path, &[&N.to_string(), &THREADS.to_string()]);
    let add = common::symbol_file_offset(&copy.path, "probed_add");
    let original = common::file_byte(&copy.path, add);
    assert_ne!(original, common::BREAKPOINT_BYTE);

    // BEGIN runs once every probe is attached (bpftrace prints "Attaching" before).
    let program = format!(
        r#"BEGIN {{ printf("ready\n"); }} uprobe:{}:probed_add {{ @c = count(); }}"#,
        copy.path_str()
    );
    let mut bpftrace = Command::new("bpftrace")
        .args(["-e", &program])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bpftrace (apt-get install bpftrace)");
    let out = common::line_channel(bpftrace.stdout.take().expect("stdout"));
    let err = common::line_channel(bpftrace.stderr.take().expect("stderr"));
    let mut printed = Vec::new();
    while printed.last().is_none_or(|l: &String| l != "ready") {
        let line = out.recv_timeout(Duration::from_secs(30));
        let Ok(line) = line else {
            panic!(
                "bpftrace did not attach: {printed:?}, stderr {:?}",
                err.try_iter().collect::<Vec<_>>()
            );
        };
        printed.push(line);
    }
    // And the breakpoint in the target says the uprobe is in place.
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            common::text_byte(target.pid, &copy.path, add) == common::BREAKPOINT_BYTE
        }),
        "bpftrace's uprobe never appeared in the target"
    );

    let spec = copy.spec("uprobe", "probed_add");
    let probed = Probed::start(&["trace", &spec, "--format", "json"]);
    let round = target.go();
    assert_eq!(common::reported_tids(&round).len() as u64, THREADS);
    let calls = N * THREADS;

    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let pid = i32::try_from(bpftrace.id()).expect("pid fits i32");
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = wait_with_timeout(&mut bpftrace, Duration::from_secs(30));
    assert!(status.success(), "bpftrace: {status}");
    printed.extend(common::drain(&out));
    let bpftrace_count = printed
        .iter()
        .find_map(|l| l.strip_prefix("@c: "))
        .map_or(0, |n| n.trim().parse::<u64>().expect("numeric @c"));

    let (hits, summary) = parse_json(&end.stdout);
    let summary = summary.expect("a summary line");
    let p = probe_summary(&summary, &spec);
    assert_eq!(num(p, "lost"), 0, "{p}");
    assert_eq!(
        (hits.len() as u64, num(p, "hits"), bpftrace_count),
        (calls, calls, calls),
        "(probed printed, probed counted, bpftrace counted) vs calls made"
    );
    assert!(hits.iter().all(|h| num(h, "pid") == u64::from(target.pid)));
    target.finish();
}

/// Waits for `child` at most `timeout`, killing it (and failing) past that.
fn wait_with_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::process::ExitStatus {
    let mut status = None;
    let exited = common::wait_until(timeout, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if !exited {
        let pid = child.id();
        let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        panic!("{child:?} did not exit within {timeout:?}; wchan {wchan}; kernel stack:\n{stack}");
    }
    status.expect("exited")
}
