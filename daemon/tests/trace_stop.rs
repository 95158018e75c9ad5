//! probed never traces itself, and every stop is bounded: a malloc return probe with no
//! filter ends on time and shows no probed process; a flood of hits that probed cannot keep
//! up with is stopped by SIGINT within the drain deadline with exact accounting; a second
//! SIGINT exits at once; the daemon stops within 3 s while malloc is hammered.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use common::{
    PrivateDir, Probed, TargetCopy, assert_summary_adds_up, daemon::Daemon, num, probe_summary,
    require_bpf,
};
use serde_json::Value;

/// One flood at a time: each test saturates both cores of the machine on purpose (a malloc
/// hammer, looping targets, probed itself), and their deadlines are about one run each, not
/// five floods sharing two cores.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the malloc hammer for `seconds`; returns once it runs.
fn hammer(seconds: u32) -> Child {
    let bin = probed::fixtures::build("malloc_hammer.c", "malloc_hammer", &["-O2"])
        .expect("build malloc_hammer");
    let mut child = Command::new(bin)
        .arg(seconds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start malloc_hammer");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    assert!(line.starts_with("ready "), "hammer said {line:?}");
    child
}

/// Reads a JSON-lines output file: the hits' comms (counted) and the summary.
fn read_output(path: &Path) -> (u64, Vec<String>, Value) {
    let file = std::fs::File::open(path).expect("open output");
    let mut hits = 0;
    let mut probed_comms = Vec::new();
    let mut summary = None;
    for line in BufReader::new(file).lines() {
        let line = line.expect("read output line");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        match v["type"].as_str() {
            Some("hit") => {
                hits += 1;
                let comm = v["comm"].as_str().unwrap_or_default();
                if comm.starts_with("probed") {
                    probed_comms.push(line);
                }
            }
            Some("summary") => summary = Some(v),
            other => panic!("unexpected line type {other:?}"),
        }
    }
    (hits, probed_comms, summary.expect("a summary line"))
}

/// The README's malloc return probe, with no pid filter and no rate limit, for 4 s, in two
/// `probed trace` runs at once: each ends by itself within 6 s with exit 0, no hit of
/// either comes from a process named probed (neither its own nor the other's: no probed's
/// output feeds another probed's input), and each counted probed's allocations as
/// self_excluded (they happened: probed allocates for every hit it prints).
#[test]
fn malloc_return_probe_ends_and_never_traces_itself() {
    if !require_bpf("malloc_return_probe_ends_and_never_traces_itself") {
        return;
    }
    let _serial = one_at_a_time();
    let libc = common::mapped_libc("self");
    let spec = format!("uretprobe:{}:malloc", libc.display());
    let dir = PrivateDir::new("trace_stop_malloc");
    let outs = [dir.path.join("a.jsonl"), dir.path.join("b.jsonl")];
    let mut busy = hammer(8);
    let runs: Vec<Probed> = outs
        .iter()
        .map(|out| {
            Probed::start(&[
                "trace",
                &spec,
                "--format",
                "json",
                "--duration",
                "4",
                "-o",
                out.to_str().expect("UTF-8 path"),
            ])
        })
        .collect();
    let finished: Vec<common::Finished> = runs.into_iter().map(Probed::wait).collect();
    let _ = busy.kill();
    let _ = busy.wait();
    for (finished, out) in finished.iter().zip(&outs) {
        assert!(
            finished.status.success(),
            "exit {:?}: {:?}",
            finished.status,
            finished.stderr
        );
        assert!(
            finished.elapsed < Duration::from_secs(6),
            "took {:?} after tracing began",
            finished.elapsed
        );
        let (hits, probed_comms, summary) = read_output(out);
        assert!(
            probed_comms.is_empty(),
            "{} hits from probed, e.g. {:?}",
            probed_comms.len(),
            probed_comms.first()
        );
        let p = probe_summary(&summary, &spec);
        assert!(hits > 0, "no hits at all: {summary}");
        assert!(num(p, "self_excluded") > 0, "probed's own mallocs: {p}");
        assert_summary_adds_up(&summary);
        // Repeated warnings are folded: never a line per event.
        let warnings = finished
            .stderr
            .iter()
            .filter(|l| l.contains("WARN"))
            .count();
        assert!(
            warnings <= 10,
            "{warnings} warning lines: {:?}",
            finished.stderr
        );
    }
}

/// A traced process that execs probed is probed from then on. BPF keeps the self filter's
/// answer per process generation (ebpf proc_facts.rs), not per hit; exec starts a new
/// generation. A bash, traced at its mallocs, ends with `exec probed --version`: its own
/// mallocs are hits (comm bash), and none of the probed it became is.
#[test]
fn a_traced_process_that_execs_probed_is_excluded_from_then_on() {
    if !require_bpf("a_traced_process_that_execs_probed_is_excluded_from_then_on") {
        return;
    }
    let _serial = one_at_a_time();
    let libc = common::mapped_libc("self");
    let spec = format!("uprobe:{}:malloc", libc.display());
    let dir = PrivateDir::new("trace_stop_exec_probed");
    let out = dir.path.join("out.jsonl");
    let run = Probed::start(&[
        "trace",
        &spec,
        "--format",
        "json",
        "--duration",
        "3",
        "-o",
        out.to_str().expect("UTF-8 path"),
    ]);
    let script = format!(
        "for i in $(seq 100); do v=\"$v$i\"; done; exec {} --version",
        common::probed_bin().display()
    );
    let shell = Command::new("bash")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .spawn()
        .expect("start bash");
    let pid = shell.id();
    let status = shell.wait_with_output().expect("wait for bash").status;
    assert!(status.success(), "bash/probed --version: {status}");
    let finished = run.wait();
    assert!(finished.status.success(), "{:?}", finished.stderr);
    let file = std::fs::File::open(&out).expect("open output");
    let mut comms = std::collections::BTreeMap::<String, u64>::new();
    for line in BufReader::new(file).lines() {
        let v: Value = serde_json::from_str(&line.expect("line")).expect("JSON line");
        if v["type"] == "hit" && v["pid"] == pid {
            *comms
                .entry(v["comm"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    assert!(
        comms.get("bash").is_some_and(|&n| n > 0),
        "bash's mallocs were not traced: {comms:?}"
    );
    assert!(
        comms.keys().all(|c| !c.starts_with("probed")),
        "hits of the probed pid {pid} became: {comms:?}"
    );
}

/// Two targets calling a probed function in tight loops with `--stack`, while probed is
/// frozen (SIGSTOP) so the ring buffer fills and hits arrive faster than they can be
/// printed; SIGINT as it thaws: exit 0 within the 2 s drain deadline plus slack, and the
/// summary adds up exactly (`lost` > 0: the ring overflowed).
#[test]
fn flood_then_sigint_stops_within_the_deadline() {
    if !require_bpf("flood_then_sigint_stops_within_the_deadline") {
        return;
    }
    let _serial = one_at_a_time();
    let flood = flood_and_stop("flood_sigint", &[], &[libc::SIGINT]);
    let p = flood.stopped_within(Duration::from_millis(3_500));
    assert!(num(p, "lost") > 0, "the ring never overflowed: {p}");
    assert!(num(p, "printed") > 0, "{p}");
}

/// As above with `--drain-timeout 0`: what the ring holds at the stop is not processed but
/// counted, per probe, as dropped_at_stop — and the summary still adds up. (Closing the
/// tracker's ~20 links takes the kernel ~1 s under load: the slack.)
#[test]
fn drain_deadline_counts_what_is_left() {
    if !require_bpf("drain_deadline_counts_what_is_left") {
        return;
    }
    let _serial = one_at_a_time();
    let flood = flood_and_stop("flood_deadline", &["--drain-timeout", "0"], &[libc::SIGINT]);
    let p = flood.stopped_within(Duration::from_millis(2_500));
    assert!(
        num(p, "dropped_at_stop") > 0,
        "nothing left at the stop: {p}"
    );
}

/// A second signal ends the stop's drain at once: SIGINT and SIGTERM are both pending when
/// probed thaws with a full ring, the first stops the run, the second finds the drain (whose
/// deadline is 30 s) and ends it before it processes anything — so the full ring is counted
/// as dropped_at_stop, which a drain that ignored the second signal would have left at 0.
#[test]
fn second_signal_ends_the_drain_at_once() {
    if !require_bpf("second_signal_ends_the_drain_at_once") {
        return;
    }
    let _serial = one_at_a_time();
    let flood = flood_and_stop(
        "flood_twice",
        &["--drain-timeout", "30"],
        &[libc::SIGINT, libc::SIGTERM],
    );
    let p = flood.stopped_within(Duration::from_millis(3_500));
    assert!(num(p, "dropped_at_stop") > 0, "the drain went on: {p}");
    assert!(
        flood
            .finished
            .stderr
            .iter()
            .any(|l| l.contains("ended=\"interrupted\"")),
        "{:?}",
        flood.finished.stderr
    );
}

/// What a flood run left: probed's output and exit, its summary, the SPEC, and the time
/// from its thaw (with the signals pending) to its exit.
struct Flood {
    finished: common::Finished,
    summary: Value,
    spec: String,
    since_signal: Duration,
}

impl Flood {
    /// Asserts exit 0 within `limit` of the signals and exact accounting; the probe's
    /// summary.
    fn stopped_within(&self, limit: Duration) -> &Value {
        assert!(
            self.finished.status.success(),
            "exit {:?}: {:?}",
            self.finished.status,
            self.finished.stderr
        );
        assert!(
            self.since_signal < limit,
            "exit {:?} after the signal",
            self.since_signal
        );
        assert_summary_adds_up(&self.summary);
        probe_summary(&self.summary, &self.spec)
    }
}

/// Runs the flood: two looping targets, probed tracing them with stacks into a file, probed
/// frozen for a second once hits flow (the ring fills), `signals` sent while it is frozen,
/// then thawed.
fn flood_and_stop(name: &str, extra: &[&str], signals: &[i32]) -> Flood {
    let copy = TargetCopy::new(name);
    let spec = copy.spec("uprobe", "probed_add");
    let dir = PrivateDir::new(name);
    let out = dir.path.join("hits.jsonl");
    let mut targets: Vec<Child> = (0..2)
        .map(|_| {
            let mut child = spawn_retrying_etxtbsy(|| {
                let mut cmd = Command::new(&copy.path);
                cmd.args(["--loop", "20", "--wait"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped());
                cmd
            });
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().expect("stdout"))
                .read_line(&mut line)
                .expect("ready line");
            assert!(line.starts_with("ready "), "{line:?}");
            child
        })
        .collect();
    let mut args = vec![
        "trace",
        spec.as_str(),
        "--stack",
        "--format",
        "json",
        "-o",
        out.to_str().expect("UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    let probed = Probed::start(&args);
    for t in &mut targets {
        writeln!(t.stdin.as_mut().expect("stdin"), "go").expect("release target");
    }
    let pid = i32::try_from(probed.pid()).expect("pid fits");
    thread::sleep(Duration::from_millis(700));
    // SAFETY: kill has no memory-safety preconditions; `pid` is our unreaped child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    thread::sleep(Duration::from_millis(1_000));
    for &signal in signals {
        // SAFETY: as above. Pending while probed is stopped; delivered at SIGCONT.
        unsafe { libc::kill(pid, signal) };
    }
    let thawed = Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let finished = probed.wait();
    let since_signal = thawed.elapsed();
    for mut t in targets {
        let _ = t.kill();
        let _ = t.wait();
    }
    let (_, _, summary) = read_output(&out);
    Flood {
        finished,
        summary,
        spec,
        since_signal,
    }
}

/// Starts the command `make` builds, again (up to 10 times) while exec fails with ETXTBSY: a
/// just-copied binary stays "busy" while a child forked meanwhile by another test thread
/// still holds the copy's write descriptor (until that child execs).
fn spawn_retrying_etxtbsy(mut make: impl FnMut() -> Command) -> Child {
    for _ in 0..10 {
        match make().spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                thread::sleep(Duration::from_millis(100));
            }
            other => return other.expect("start target"),
        }
    }
    make().spawn().expect("start target")
}

/// `probed daemon` with the malloc return probe and stacks, while another process hammers
/// malloc and `probed ctl` is used: no hit from a probed process in the output, probed's
/// own allocations counted as self_excluded in `ctl stats`, and SIGTERM ends it with exit 0
/// within 3 s.
#[test]
fn daemon_stops_within_3s_under_malloc_load() {
    if !require_bpf("daemon_stops_within_3s_under_malloc_load") {
        return;
    }
    let _serial = one_at_a_time();
    let libc = common::mapped_libc("self");
    let spec = format!("uretprobe:{}:malloc", libc.display());
    let dir = PrivateDir::new("daemon_stop_malloc");
    let hits = dir.path.join("hits.jsonl");
    let config = format!(
        "[outputs.hits]\nkind = \"file\"\npath = \"{}\"\n\n[[probes]]\nspec = \"{spec}\"\n\
         output = \"hits\"\nstack = true\n",
        hits.display()
    );
    let mut busy = hammer(20);
    let mut daemon = Daemon::start(dir, &config);
    thread::sleep(Duration::from_millis(1_500));
    let stats = daemon.ctl_ok(&["stats"]);
    let probe = &stats["probes"][0];
    assert!(num(probe, "self_excluded") > 0, "{probe}");
    assert!(num(probe, "hits") > 0, "{probe}");
    let pid = i32::try_from(daemon.pid()).expect("pid fits");
    let sent = Instant::now();
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = daemon.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "daemon still running 10 s after SIGTERM"
        );
        thread::sleep(Duration::from_millis(10));
    };
    let took = sent.elapsed();
    let _ = busy.kill();
    let _ = busy.wait();
    assert!(status.success(), "exit {status:?}");
    assert!(
        took < Duration::from_secs(3),
        "stopped {took:?} after SIGTERM"
    );
    let file = std::fs::File::open(&hits).expect("hits file");
    let mut n = 0;
    for line in BufReader::new(file).lines() {
        let v: Value = serde_json::from_str(&line.expect("line")).expect("JSON hit");
        assert_ne!(v["comm"], "probed", "a hit of probed itself: {v}");
        n += 1;
    }
    assert!(n > 0, "no hits written");
}
