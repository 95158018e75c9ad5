//! The metrics endpoint scraped by a real Prometheus server (Debian's `prometheus`).
//!
//! - `prometheus_reads_our_exposition`: probed's HTTP server and renderer with a fixed
//!   snapshot; Prometheus must accept every sample (its own `scrape_samples_scraped`), keep
//!   the HELP/TYPE metadata, and return our values and label values (escapes included).
//!   Needs no root.
//! - `daemon_metrics_match_hits`: `probed daemon` with two probes on a fixture, the fixture
//!   makes exactly N calls; once Prometheus has scraped after the calls, it must report N
//!   hits per probe, no loss, and fast-path resolutions. Needs root and BPF.

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use common::{
    PrivateDir, Target, TargetCopy,
    prometheus::{self, Prometheus, http_get, sample_value},
};
use probed::{
    metrics::{MetricsSnapshot, ProbeMetrics, ScrapeRequest},
    resolve::Counters,
};

/// How long Prometheus may take to scrape after a given moment (interval 1 s; a scrape
/// starts at a random offset within the first interval).
const SCRAPE_WAIT: Duration = Duration::from_secs(30);

/// The samples of one instant query, keyed by the value of `label`.
fn by_label(
    samples: &[serde_json::Value],
    label: &str,
) -> BTreeMap<String, (f64, serde_json::Value)> {
    samples
        .iter()
        .map(|s| {
            let key = s["metric"][label]
                .as_str()
                .unwrap_or_else(|| panic!("no {label} in {s}"))
                .to_owned();
            (key, (sample_value(s), s["metric"].clone()))
        })
        .collect()
}

/// The single sample of `promql`'s result.
fn single(prom: &Prometheus, promql: &str) -> f64 {
    let r = prom.query(promql);
    assert_eq!(r.len(), 1, "{promql}: {r:?}");
    sample_value(&r[0])
}

#[test]
fn rfc3339_timestamps_parse() {
    use prometheus::parse_rfc3339 as p;
    let epoch = std::time::UNIX_EPOCH;
    assert_eq!(
        p("1970-01-02T00:00:01.5Z"),
        Some(epoch + Duration::from_millis(86_401_500))
    );
    assert_eq!(p("2026-11-28T02:00:00+01:00"), p("2026-11-28T01:00:00Z"));
    // `date -u -d @1795824000` = Sat Nov 28 00:00:00 UTC 2026
    assert_eq!(
        p("2026-11-28T00:00:00Z"),
        Some(epoch + Duration::from_secs(1_795_824_000))
    );
    assert_eq!(
        p("2026-11-28T00:00:00.123456789Z"),
        Some(epoch + Duration::new(1_795_824_000, 123_456_789))
    );
    assert_eq!(p("garbage"), None);
}

/// Prometheus scrapes probed's server with a fixed snapshot: every sample is accepted, the
/// metadata kept, values and escaped label values come back as they were.
#[test]
fn prometheus_reads_our_exposition() {
    if !prometheus::require_prometheus("prometheus_reads_our_exposition") {
        return;
    }
    let weird = "uprobe:/tmp/we\"ird\\dir/t:f";
    let mut p0 = ProbeMetrics {
        id: 0,
        spec: "uprobe:/bin/t:probed_add".into(),
        output: "stdout".into(),
        hits: 7,
        written: 7,
        ..ProbeMetrics::default()
    };
    p0.unresolved.insert("unmapped".into(), 2);
    let p1 = ProbeMetrics {
        id: 1,
        spec: weird.into(),
        output: "hits".into(),
        hits: 1_234_567,
        lost: 3,
        rate_limited: 11,
        disabled: true,
        ..ProbeMetrics::default()
    };
    let snapshot = MetricsSnapshot {
        probes: vec![p0, p1],
        resolver: Counters {
            fast: 99,
            fallback_in_flight: 1,
            fallback_no_snapshot: 2,
            ..Counters::default()
        },
        processes_tracked: 3,
        mirrors: 2,
        uptime_seconds: 12.5,
        ..MetricsSnapshot::default()
    };
    let rendered = probed::metrics::render(&snapshot, env!("CARGO_PKG_VERSION"));
    let sample_lines = rendered.lines().filter(|l| !l.starts_with('#')).count();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let addr: SocketAddr = rt.block_on(async {
        let listener = probed::metrics::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ScrapeRequest>(4);
        let snap = snapshot.clone();
        tokio::spawn(async move {
            while let Some(reply) = rx.recv().await {
                let _ = reply.send(snap.clone());
            }
        });
        tokio::spawn(probed::metrics::serve(listener, tx));
        addr
    });

    let prom = Prometheus::start(&[addr]);
    prom.wait_scraped_after(SystemTime::now(), SCRAPE_WAIT);

    // Every sample line was ingested (Prometheus drops none silently: a parse error fails
    // the whole scrape, and this counts what it stored).
    assert_eq!(
        single(&prom, "scrape_samples_scraped{job=\"probed\"}"),
        sample_lines as f64
    );
    let hits = by_label(&prom.query("probed_probe_hits_total"), "probe_id");
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits["0"].0, 7.0);
    assert_eq!(hits["1"].0, 1_234_567.0);
    assert_eq!(
        hits["1"].1["spec"], weird,
        "escaped label value read back: {:?}",
        hits["1"]
    );
    assert_eq!(hits["1"].1["output"], "hits");
    assert_eq!(hits["0"].1["job"], "probed");
    let lost = by_label(&prom.query("probed_probe_lost_total"), "probe_id");
    assert_eq!((lost["0"].0, lost["1"].0), (0.0, 3.0));
    assert_eq!(
        single(&prom, "probed_probe_rate_limited_total{probe_id=\"1\"}"),
        11.0
    );
    assert_eq!(single(&prom, "probed_probe_disabled{probe_id=\"1\"}"), 1.0);
    assert_eq!(single(&prom, "probed_probes_attached"), 1.0);
    assert_eq!(
        single(
            &prom,
            "probed_unresolved_addresses_total{probe_id=\"0\",reason=\"unmapped\"}"
        ),
        2.0
    );
    assert_eq!(single(&prom, "probed_resolver_fast_path_total"), 99.0);
    assert_eq!(single(&prom, "sum(probed_resolver_fallbacks_total)"), 3.0);
    assert_eq!(single(&prom, "probed_processes_tracked"), 3.0);
    assert_eq!(single(&prom, "probed_uptime_seconds"), 12.5);
    let info = prom.query("probed_build_info");
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));

    // The TYPE and HELP lines were read: Prometheus knows each family's type.
    let (status, body) = http_get(prom.addr, "/api/v1/metadata").expect("metadata");
    assert_eq!(status, 200, "{body}");
    let meta: serde_json::Value = serde_json::from_str(&body).expect("metadata JSON");
    for (family, kind) in [
        ("probed_probe_hits_total", "counter"),
        ("probed_resolver_fallbacks_total", "counter"),
        ("probed_processes_tracked", "gauge"),
        ("probed_build_info", "gauge"),
    ] {
        let m = &meta["data"][family][0];
        assert_eq!(m["type"], kind, "{family}: {m}");
        assert!(
            !m["help"].as_str().unwrap_or_default().is_empty(),
            "{family}: {m}"
        );
    }
    drop(rt);
}

/// A `probed daemon` child, terminated on drop.
struct Daemon {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Daemon {
    fn start(config: &Path, dir: &Path) -> Self {
        let stderr = dir.join("probed.stderr");
        let child = Command::new(common::probed_bin())
            .args(["daemon", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("probed.stdout")).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start probed daemon");
        Self { child, stderr }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Fails the test if the daemon has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "probed daemon exited ({status}); stderr:\n{}",
                self.stderr()
            );
        }
    }

    /// SIGTERM, then waits (≤ 30 s) for a clean exit.
    fn stop(mut self) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "daemon did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "daemon exit {status}; stderr:\n{}",
            self.stderr()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `probed daemon` with an entry probe and a return probe on a private copy of the trace
/// target; the target makes exactly N calls of each function. Before the calls Prometheus
/// reads 0 hits; after them, once it has scraped again, exactly N per probe, no loss, and
/// resolutions by the fast path.
#[test]
fn daemon_metrics_match_hits() {
    if !common::require_bpf("daemon_metrics_match_hits")
        || !prometheus::require_prometheus("daemon_metrics_match_hits")
    {
        return;
    }
    const N: u64 = 100;
    let dir = PrivateDir::new("service-metrics");
    let copy = TargetCopy::new("sm_target");
    let specs = [
        copy.spec("uprobe", "probed_add"),
        copy.spec("uretprobe", "probed_other"),
    ];
    let mut target = Target::start(&copy.path, &[&N.to_string()]);

    let metrics: SocketAddr = format!("127.0.0.1:{}", prometheus::free_port())
        .parse()
        .expect("addr");
    // Hits go to the daemon's stdout (a file here): the output's name only labels the
    // series; which output gets which hits is service_daemon.rs's business.
    let config = format!(
        "control_socket = \"{dir}/control.sock\"\n\
         [metrics]\nlisten = \"{metrics}\"\n\
         [[probes]]\nspec = \"{s0}\"\n\
         [[probes]]\nspec = \"{s1}\"\n",
        dir = dir.path.display(),
        s0 = specs[0],
        s1 = specs[1],
    );
    let config_path = dir.path.join("probed.toml");
    std::fs::write(&config_path, &config).expect("write config");
    let mut daemon = Daemon::start(&config_path, &dir.path);

    // Attached once its own endpoint says so (no reliance on log wording).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        daemon.assert_running();
        if let Ok((200, body)) = http_get(metrics, "/metrics")
            && body.lines().any(|l| l == "probed_probes_attached 2")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics endpoint never showed 2 attached probes; stderr:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A scrape's round trip (connect, loop answers, render, close), 20 times.
    let mut rtt: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let (status, _) = http_get(metrics, "/metrics").expect("scrape");
            assert_eq!(status, 200);
            t.elapsed()
        })
        .collect();
    rtt.sort();
    eprintln!(
        "daemon_metrics_match_hits: scrape round trip median {:?}, max {:?}",
        rtt[10], rtt[19]
    );
    assert!(rtt[10] < Duration::from_millis(100), "{rtt:?}");

    let prom = Prometheus::start(&[metrics]);
    prom.wait_scraped_after(SystemTime::now(), SCRAPE_WAIT);
    let before = by_label(&prom.query("probed_probe_hits_total"), "spec");
    assert_eq!(before.len(), 2, "{before:?}");
    for spec in &specs {
        assert_eq!(before[spec.as_str()].0, 0.0, "{spec} before the calls");
    }

    // Two rounds of N calls each. In lock mode (auto on 6.14+) the daemon's first picture of
    // the target is taken after its first hit, so the first round's hits answer from their
    // own captures; the second round's take the fast path.
    for _ in 0..2 {
        let round = target.go();
        assert_eq!(common::reported_sum(&round), common::expected_sum(N as i64));
        std::thread::sleep(Duration::from_millis(200));
    }
    let calls_done = SystemTime::now();
    prom.wait_scraped_after(calls_done, SCRAPE_WAIT);
    daemon.assert_running();

    let hits = by_label(&prom.query("probed_probe_hits_total"), "spec");
    let lost = by_label(&prom.query("probed_probe_lost_total"), "spec");
    for spec in &specs {
        assert_eq!(
            hits[spec.as_str()].0,
            2.0 * N as f64,
            "{spec} hits: {hits:?}"
        );
        assert_eq!(hits[spec.as_str()].1["output"], "stdout", "{hits:?}");
        assert_eq!(lost[spec.as_str()].0, 0.0, "{spec} lost: {lost:?}");
    }
    // Kseq mode (auto on 6.14+): hits are answered from a capture at their counter value,
    // the mode's lock-free path (result="kseq"); elsewhere the resolver's fast path.
    let fast = single(&prom, "probed_resolver_fast_path_total")
        + single(&prom, r#"probed_captures_total{what="hit",result="kseq"}"#);
    assert!(fast > 0.0, "no fast-path resolution in {} hits", 4 * N);
    let fallbacks = single(&prom, "sum(probed_resolver_fallbacks_total)");
    // Lock and kseq modes: a hit whose process changed since the daemon's last picture (or
    // its last capture) is answered from its own hit-time capture (or counted as a failed
    // capture, or as kseq_missed).
    let captured = single(
        &prom,
        r#"sum(probed_captures_total{what="hit",result!="kseq"})"#,
    );
    // Every delivered hit is resolved once: by the fast path, after a fallback, or from its
    // capture.
    assert_eq!(
        fast + fallbacks + captured,
        4.0 * N as f64,
        "fast {fast} + fallbacks {fallbacks} + captured {captured}"
    );
    eprintln!(
        "daemon_metrics_match_hits: 2×{N} calls → hits {:?}, lost {:?}, fast path {fast}, \
         fallbacks {fallbacks}, captured {captured}",
        hits.values().map(|v| v.0).collect::<Vec<_>>(),
        lost.values().map(|v| v.0).collect::<Vec<_>>(),
    );
    // The target process is tracked (it hit a probe and still lives).
    let tracked = single(&prom, "probed_processes_tracked");
    assert!(tracked >= 1.0, "processes tracked: {tracked}");

    // Written to the output: every hit, once the pipeline has drained (it drains every
    // 20 ms, so at the latest by the next scrape or two).
    let deadline = Instant::now() + SCRAPE_WAIT;
    loop {
        let written = by_label(&prom.query("probed_probe_written_total"), "spec");
        if specs
            .iter()
            .all(|s| written[s.as_str()].0 == 2.0 * N as f64)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "written never reached 2×{N}: {written:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    daemon.stop();
    target.finish();
}

/// The value of the sample of `family` whose labels include every `labels` pair, read from
/// the exposition text itself (`None` if there is no such sample).
fn endpoint_value(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// Scrapes `addr` until `cond` holds for the text (≤ 30 s); returns that text.
fn scrape_until(
    daemon: &mut Daemon,
    addr: SocketAddr,
    what: &str,
    cond: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        daemon.assert_running();
        if let Ok((200, body)) = http_get(addr, "/metrics")
            && cond(&body)
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never seen on the endpoint; stderr:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A probe detached for exceeding its `disable_above` shows as disabled (and no longer
/// attached) while the other stays; SIGHUP reloads count as applied, a broken config as
/// rejected, and the daemon keeps serving.
#[test]
fn runaway_and_reloads_show_in_metrics() {
    if !common::require_bpf("runaway_and_reloads_show_in_metrics") {
        return;
    }
    let dir = PrivateDir::new("service-metrics-runaway");
    let copy = TargetCopy::new("sm_runaway");
    let (add, other) = (
        copy.spec("uprobe", "probed_add"),
        copy.spec("uprobe", "probed_other"),
    );
    let mut target = Target::start(&copy.path, &["--loop", "3", "--wait"]);
    let metrics: SocketAddr = format!("127.0.0.1:{}", prometheus::free_port())
        .parse()
        .expect("addr");
    let config = format!(
        "control_socket = \"{dir}/control.sock\"\n[metrics]\nlisten = \"{metrics}\"\n\
         [[probes]]\nspec = \"{add}\"\ndisable_above = 1000\n\
         [[probes]]\nspec = \"{other}\"\n",
        dir = dir.path.display(),
    );
    let config_path = dir.path.join("probed.toml");
    std::fs::write(&config_path, &config).expect("write config");
    let mut daemon = Daemon::start(&config_path, &dir.path);
    scrape_until(&mut daemon, metrics, "2 probes attached", |t| {
        endpoint_value(t, "probed_probes_attached", &[]) == Some(2.0)
    });

    // probed_add in a tight loop for 3 s: far above 1,000/s (the runaway check runs every s).
    let round = target.go();
    let calls = common::reported_calls(&round);
    let text = scrape_until(&mut daemon, metrics, "the runaway disabled", |t| {
        endpoint_value(t, "probed_probe_disabled", &[("spec", &add)]) == Some(1.0)
    });
    assert_eq!(
        endpoint_value(&text, "probed_probe_disabled", &[("spec", &other)]),
        Some(0.0)
    );
    assert_eq!(
        endpoint_value(&text, "probed_probes_attached", &[]),
        Some(1.0)
    );
    let hits = endpoint_value(&text, "probed_probe_hits_total", &[("spec", &add)]).expect("hits");
    eprintln!("runaway: {calls} calls in 3 s, {hits} hits counted before the probe was detached");
    assert!(
        hits > 1000.0 && hits < calls as f64,
        "hits {hits}, calls {calls}"
    );

    // An unchanged config reloads (applied); a broken one is rejected; still serving.
    let pid = i32::try_from(daemon.child.id()).expect("pid");
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    scrape_until(&mut daemon, metrics, "one applied reload", |t| {
        endpoint_value(t, "probed_config_reloads_total", &[("result", "applied")]) == Some(1.0)
    });
    std::fs::write(&config_path, "[[probes]]\nspec = 42\n").expect("break config");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let text = scrape_until(&mut daemon, metrics, "one rejected reload", |t| {
        endpoint_value(t, "probed_config_reloads_total", &[("result", "rejected")]) == Some(1.0)
    });
    assert_eq!(
        endpoint_value(
            &text,
            "probed_config_reloads_total",
            &[("result", "applied")]
        ),
        Some(1.0)
    );
    assert_eq!(
        endpoint_value(&text, "probed_probes_attached", &[]),
        Some(1.0)
    );
    daemon.stop();
    target.finish();
}

/// A metrics address already in use stops the daemon at start with an error naming the
/// address, before anything is loaded or attached. (Bound before the BPF object is loaded,
/// so this needs neither root nor BPF.)
#[test]
fn busy_metrics_address_is_a_startup_error() {
    let dir = PrivateDir::new("service-metrics-busy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let config = format!(
        "control_socket = \"{dir}/control.sock\"\n[metrics]\nlisten = \"{addr}\"\n\
         [[probes]]\nspec = \"uprobe:/bin/true:main\"\n",
        dir = dir.path.display(),
    );
    let config_path = dir.path.join("probed.toml");
    std::fs::write(&config_path, config).expect("write config");
    let end = common::run_to_end(
        Command::new(common::probed_bin())
            .args(["daemon", "--config"])
            .arg(&config_path),
    );
    assert!(!end.status.success(), "{end:?}");
    let stderr = end.stderr.join("\n");
    assert!(
        stderr.contains(&format!("cannot listen for metrics on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
    // The control socket it had bound is gone again.
    assert!(!dir.path.join("control.sock").exists());
}
