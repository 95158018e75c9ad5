//! Tracing processes in real containers (podman + runc, unprivileged), from the host:
//! `--container PID` resolves a SPEC's path inside the container's root, hits carry both the
//! host pids and the pids inside the container, symbols come from the container's file,
//! one uprobe on a shared image file covers every container of the image, and a container
//! that stops while traced leaves its hits resolved and nothing behind.
//!
//! Needs root, the BPF object and podman (`apt-get install podman runc`); under CI=true a
//! missing one fails the test.

mod common;

use std::{collections::BTreeSet, path::Path};

use common::{
    Probed, TargetCopy,
    container::{APP, Container, require_podman},
    num, parse_json, probe_summary,
};

fn ready(test: &str) -> bool {
    common::require_bpf(test) && require_podman(test)
}

/// The summary's resolver gauge `name`.
fn gauge(summary: &serde_json::Value, name: &str) -> u64 {
    summary["resolver"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no resolver.{name} in {summary}"))
}

/// A target in an unprivileged container, traced from the host with `--container <its host
/// pid>` and the path as the container sees it (the host has no such file): exactly its N
/// hits, symbol `probed_add` from the container's file, host pid = the container process's
/// pid here, ns_pid/ns_tid = its pid inside (1, as it printed it and NSpid says).
#[test]
fn container_path_symbols_and_both_pids() {
    if !ready("container_path_symbols_and_both_pids") {
        return;
    }
    const N: u64 = 200;
    assert!(
        !Path::new(APP).exists(),
        "{APP} must exist only in the image"
    );
    let mut c = Container::start("probed-ct-a", "a", &[&N.to_string()]);
    let nspids = c.nspids();
    assert_eq!(
        nspids,
        vec![c.host_pid, c.ns_pid],
        "host pid, then the pid the target printed inside"
    );
    let spec = format!("uprobe:{APP}:probed_add");
    let pid = c.host_pid.to_string();
    let probed = Probed::start(&["trace", &spec, "--container", &pid, "--format", "json"]);
    let round = c.go();
    assert_eq!(common::reported_sum(&round), common::expected_sum(N as i64));
    let inside_tid = common::reported_tids(&round);
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let stderr = end.stderr.join("\n");
    assert!(
        stderr.contains(&format!("/proc/{pid}/root{APP}")),
        "the resolved host path is reported: {stderr}"
    );
    let (hits, summary) = parse_json(&end.stdout);
    assert_eq!(hits.len() as u64, N, "{stderr}");
    for (i, hit) in hits.iter().enumerate() {
        assert_eq!(hit["probe"], spec, "the SPEC as written: {hit}");
        assert_eq!(hit["symbol"], "probed_add", "{hit}");
        assert_eq!(hit["module"], APP, "{hit}");
        assert_eq!(num(hit, "pid"), u64::from(c.host_pid), "{hit}");
        assert_eq!(num(hit, "tid"), u64::from(c.host_pid), "one thread: {hit}");
        assert_eq!(num(hit, "ns_pid"), u64::from(c.ns_pid), "{hit}");
        assert_eq!(
            BTreeSet::from([num(hit, "ns_tid") as u32]),
            inside_tid,
            "the tid the target printed inside: {hit}"
        );
        assert_eq!(hit["args"][0], i as u64, "{hit}");
    }
    let summary = summary.expect("a summary line");
    let p = probe_summary(&summary, &spec);
    assert_eq!((num(p, "hits"), num(p, "filtered")), (N, 0), "{p}");
    assert_eq!(p["resolved_by_probe"], serde_json::json!({}), "{p}");
    common::assert_summary_adds_up(&summary);
    c.finish();
}

/// A SPEC path that exists on the host but not in the container is one error naming both
/// paths; a container pid that has exited is one error; nothing is attached either way.
#[test]
fn host_only_path_and_dead_container_are_errors() {
    if !ready("host_only_path_and_dead_container_are_errors") {
        return;
    }
    let copy = TargetCopy::new("ct_hostonly");
    let c = Container::start("probed-ct-err", "err", &["1"]);
    let pid = c.host_pid.to_string();
    let spec = copy.spec("uprobe", "probed_add");
    let end = common::run_probed(&["trace", &spec, "--container", &pid]);
    let text = end.stderr.join("\n");
    assert!(!end.status.success(), "{end:?}");
    assert!(
        text.contains(copy.path_str())
            && text.contains(&format!("/proc/{pid}/root{}", copy.path_str()))
            && text.contains("the host has that path"),
        "{text}"
    );
    assert!(!text.contains("probed: tracing"), "{text}");
    assert_eq!(end.stderr.len(), 1, "one line: {text}");
    c.finish();
    // The container is gone: its pid names no process.
    let end = common::run_probed(&[
        "trace",
        &format!("uprobe:{APP}:probed_add"),
        "--container",
        &pid,
    ]);
    let text = end.stderr.join("\n");
    assert!(!end.status.success(), "{end:?}");
    assert!(
        text.contains("--container") && text.contains(&format!("no process with pid {pid}")),
        "{text}"
    );
    assert_eq!(end.stderr.len(), 1, "one line: {text}");
}

/// Two containers of one image: the target file is the same inode in both (the image's
/// lower layer; each overlay mount has its own device). One probe, attached through one
/// container's root, fires in both — the kernel keys uprobes on the real inode — and each
/// hit carries its own container's host pid and pid inside. The ELF file is parsed once,
/// though /proc shows it under one (device, inode) per container.
#[test]
fn two_containers_one_image_one_probe() {
    if !ready("two_containers_one_image_one_probe") {
        return;
    }
    const N: u64 = 150;
    let mut a = Container::start("probed-ct-b1", "b", &[&N.to_string()]);
    let mut b = Container::start("probed-ct-b2", "b", &[&N.to_string()]);
    let (sa, sb) = (a.stat(APP), b.stat(APP));
    eprintln!("{APP}: (st_dev, st_ino) in one container {sa:?}, in the other {sb:?}");
    assert_eq!(
        sa.1, sb.1,
        "one inode: both containers map the image's file"
    );
    // No --container (it would filter to one pid namespace): the host path of the file.
    let spec = format!("uprobe:/proc/{}/root{APP}:probed_add", a.host_pid);
    let probed = Probed::start(&["trace", &spec, "--format", "json"]);
    let (ra, rb) = std::thread::scope(|s| {
        let other = s.spawn(|| b.go());
        let ra = a.go();
        (ra, other.join().expect("second container"))
    });
    assert_eq!(common::reported_sum(&ra), common::expected_sum(N as i64));
    assert_eq!(common::reported_sum(&rb), common::expected_sum(N as i64));
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let (hits, summary) = parse_json(&end.stdout);
    let summary = summary.expect("a summary line");
    for c in [&a, &b] {
        let own: Vec<_> = hits
            .iter()
            .filter(|h| num(h, "pid") == u64::from(c.host_pid))
            .collect();
        assert_eq!(own.len() as u64, N, "{} hits of {}", own.len(), c.name);
        for hit in own {
            assert_eq!(num(hit, "ns_pid"), u64::from(c.ns_pid), "{hit}");
            assert_eq!(hit["symbol"], "probed_add", "{hit}");
            assert_eq!(hit["module"], APP, "{hit}");
        }
    }
    assert_eq!(hits.len() as u64, 2 * N);
    let p = probe_summary(&summary, &spec);
    assert_eq!(num(p, "hits"), 2 * N, "one probe counted both: {p}");
    assert_eq!(p["resolved_by_probe"], serde_json::json!({}), "{p}");
    // /proc names the file by a different (device, inode) in each container (overlay
    // devices); the symbolizer still parses it once: the second identity's miss is answered
    // by the image of the same real file (overlay file handle).
    let identities = BTreeSet::from([sa, sb]).len() as u64;
    let (loads, shared) = (gauge(&summary, "elf_loads"), gauge(&summary, "elf_shared"));
    eprintln!(
        "elf_loads {loads}, elf_shared {shared} for {identities} distinct (dev, ino) over {} hits",
        2 * N
    );
    assert_eq!(loads, 1, "{summary}");
    assert_eq!(loads + shared, identities, "{summary}");
    assert_eq!(gauge(&summary, "elf_load_failures"), 0, "{summary}");
    a.finish();
    b.finish();
}

/// A container that makes its calls and stops while probed is frozen (SIGSTOP), so every
/// one of its hits is handled after its process exited and its container was removed (its
/// root and /proc entry gone, its path not on the host): every hit still resolves to
/// `probed_add` in the container's file (the process's retained picture; the ELF image read
/// when the SPEC was checked), probed keeps running, and at the end it tracks no live
/// process.
#[test]
fn container_stopping_while_traced() {
    if !ready("container_stopping_while_traced") {
        return;
    }
    const N: u64 = 2000;
    let mut c = Container::start("probed-ct-c", "c", &[&N.to_string()]);
    let pid = c.host_pid;
    let spec = format!("uprobe:{APP}:probed_add");
    let mut probed = Probed::start(&[
        "trace",
        &spec,
        "--container",
        &pid.to_string(),
        "--format",
        "json",
    ]);
    let probed_pid = i32::try_from(probed.pid()).expect("pid fits i32");
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(probed_pid, libc::SIGSTOP) }, 0);
    c.send_go();
    c.close_stdin();
    let round = c.rest_of_round();
    assert_eq!(common::reported_sum(&round), common::expected_sum(N as i64));
    c.wait();
    assert!(
        common::wait_until(std::time::Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{pid}")).exists()
        }),
        "the container's process is gone"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(probed_pid, libc::SIGCONT) }, 0);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        probed.child.try_wait().expect("try_wait").is_none(),
        "probed keeps running after the container stopped"
    );
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let (hits, summary) = parse_json(&end.stdout);
    let summary = summary.expect("a summary line");
    assert_eq!(hits.len() as u64, N, "{summary}");
    let mut via = std::collections::BTreeMap::<String, u64>::new();
    for hit in &hits {
        assert_eq!(hit["symbol"], "probed_add", "{hit}");
        assert_eq!(hit["module"], APP, "{hit}");
        assert_eq!(num(hit, "pid"), u64::from(pid), "{hit}");
        // Resolved and symbolized by the resolver and the symbolizer themselves, not by the
        // probe's own location (the fallback for hits they cannot answer).
        assert_ne!(hit["via"], "probe", "{hit}");
        *via.entry(hit["via"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    eprintln!(
        "resolved via {via:?}; elf_loads {}, exited_retained {}",
        gauge(&summary, "elf_loads"),
        gauge(&summary, "exited_retained")
    );
    let p = probe_summary(&summary, &spec);
    assert_eq!(num(p, "hits"), N, "{p}");
    assert_eq!(p["unresolved"], serde_json::json!({}), "{p}");
    assert_eq!(p["resolved_by_probe"], serde_json::json!({}), "{p}");
    common::assert_summary_adds_up(&summary);
    assert_eq!(gauge(&summary, "processes_tracked"), 0, "{summary}");
    assert!(gauge(&summary, "exited_retained") >= 1, "{summary}");
}

/// The daemon: `probed ctl add SPEC --container PID` resolves the SPEC's path in the
/// container too; the probe counts exactly the container's calls, its hits carry both pids,
/// and once the container has stopped the daemon runs on, tracking no live process of it.
#[test]
fn daemon_ctl_add_in_a_container() {
    if !ready("daemon_ctl_add_in_a_container") {
        return;
    }
    const N: u64 = 120;
    let daemon = common::daemon::Daemon::start(common::PrivateDir::new("ct-daemon"), "");
    let live = |d: &common::daemon::Daemon| num(&d.ctl_ok(&["stats"]), "processes_tracked");
    let before = live(&daemon);
    let mut c = Container::start("probed-ct-d", "d", &[&N.to_string()]);
    let spec = format!("uprobe:{APP}:probed_add");
    let pid = c.host_pid.to_string();
    let id = daemon.ctl_ok(&["add", &spec, "--container", &pid])["id"]
        .as_u64()
        .expect("an id");
    c.go();
    assert!(
        common::wait_until(std::time::Duration::from_secs(10), || daemon.hits(id) == N),
        "hits {} of {N}",
        daemon.hits(id)
    );
    assert!(
        live(&daemon) > before,
        "the container's process is tracked while it runs"
    );
    let mut seen = 0;
    while seen < N {
        let line = daemon
            .lines
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a hit line on the daemon's stdout");
        let hit: serde_json::Value = serde_json::from_str(&line).expect("JSON hit");
        assert_eq!(hit["probe"], spec, "{hit}");
        assert_eq!(hit["symbol"], "probed_add", "{hit}");
        assert_eq!(num(&hit, "pid"), u64::from(c.host_pid), "{hit}");
        assert_eq!(num(&hit, "ns_pid"), u64::from(c.ns_pid), "{hit}");
        seen += 1;
    }
    let host_pid = c.host_pid;
    c.finish();
    assert!(!Path::new(&format!("/proc/{host_pid}")).exists());
    assert!(
        common::wait_until(std::time::Duration::from_secs(10), || live(&daemon)
            <= before),
        "live tracked processes back to {before}: {}",
        daemon.ctl_ok(&["stats"])
    );
    let (end, _dir) = daemon.stop(libc::SIGTERM, std::time::Duration::from_secs(20));
    assert!(end.status.success(), "{end:?}");
}

/// A process of the host's pid namespace: `ns_pid`/`ns_tid` are its host pid and tids (level
/// 0), for every thread.
#[test]
fn host_process_ns_pids_are_host_pids() {
    if !common::require_bpf("host_process_ns_pids_are_host_pids") {
        return;
    }
    const N: u64 = 50;
    let copy = TargetCopy::new("ct_hostns");
    let mut target = common::Target::start(&copy.path, &[&N.to_string(), "3"]);
    let spec = copy.spec("uprobe", "probed_add");
    let pid = target.pid.to_string();
    let probed = Probed::start(&["trace", &spec, "--pid", &pid, "--format", "json"]);
    let round = target.go();
    let tids = common::reported_tids(&round);
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let (hits, _) = parse_json(&end.stdout);
    assert_eq!(hits.len() as u64, 3 * N);
    let mut seen = BTreeSet::new();
    for hit in &hits {
        assert_eq!(num(hit, "ns_pid"), u64::from(target.pid), "{hit}");
        assert_eq!(num(hit, "ns_tid"), num(hit, "tid"), "{hit}");
        seen.insert(num(hit, "ns_tid") as u32);
    }
    assert_eq!(seen, tids, "every thread, by the tid it printed");
    target.finish();
}

/// probed running in a privileged container with the host pid namespace and the host's root
/// mounted read-only at /host — as the DaemonSet runs it — traces a process of the host:
/// exactly its N hits, each with the host pid and the symbol from the host file.
#[test]
fn probed_in_a_privileged_container_traces_a_host_process() {
    if !ready("probed_in_a_privileged_container_traces_a_host_process") {
        return;
    }
    const N: u64 = 150;
    let copy = TargetCopy::new("ct_from_inside");
    let mut target = common::Target::start(&copy.path, &[&N.to_string()]);
    // The image only gives the container a root; probed runs from the host's build through
    // the host's own loader and libraries under /host (no copy of them needed).
    let image = common::container::image("privileged-probed");
    let probed = format!("/host{}", common::probed_bin().display());
    let spec = format!("uprobe:/host{}:probed_add", copy.path_str());
    let pid = target.pid.to_string();
    let count = N.to_string();
    let mut cmd = std::process::Command::new("podman");
    cmd.args([
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--privileged",
        "--pid=host",
    ])
    .args(["--network=none", "--ulimit", "nofile=20000:20000"])
    .args(["--ulimit", "nproc=4096:4096", "-v", "/:/host:ro"])
    .arg(&image)
    .arg(format!("/host{}", host_loader()))
    .arg("--library-path")
    .arg("/host/lib/x86_64-linux-gnu:/host/usr/lib/x86_64-linux-gnu")
    .arg(&probed)
    .args([
        "trace", &spec, "--pid", &pid, "--format", "json", "--count", &count,
    ]);
    let probed = Probed::start_command(&mut cmd);
    target.go();
    let end = probed.wait();
    target.finish();
    assert!(end.status.success(), "{:?}", end.stderr);
    let (hits, summary) = parse_json(&end.stdout);
    assert_eq!(hits.len() as u64, N, "hits");
    for hit in &hits {
        assert_eq!(num(hit, "pid"), u64::from(target_pid(&pid)), "{hit}");
        assert_eq!(hit["symbol"], "probed_add", "{hit}");
    }
    let summary = summary.expect("summary line");
    assert_eq!(num(probe_summary(&summary, &spec), "hits"), N);
}

/// The host's dynamic loader, links resolved (they may be absolute, which would point out of
/// /host inside the container).
fn host_loader() -> String {
    std::fs::canonicalize("/lib64/ld-linux-x86-64.so.2")
        .expect("the host's x86-64 loader")
        .to_string_lossy()
        .into_owned()
}

fn target_pid(pid: &str) -> u32 {
    pid.parse().expect("numeric pid")
}
