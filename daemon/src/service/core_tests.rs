//! The daemon core in-process, without root: the real loop (`core::serve`), control socket,
//! metrics endpoint, outputs, pipeline and resolver, over a fake kernel side
//! (`fake_kernel.rs`) and a ring fed by the test. A config probe on the system's libc is
//! attached, a hit sent into the ring is written to its output named malloc, `ctl add` and
//! `ctl remove` change the probes live, a reload replaces them, /metrics and `ctl stats`
//! count what happened, and a stop drains every hit still in the ring. A probe the kernel
//! refuses fails the start (config) or is answered with why (`ctl add`), leaving no link.

use std::{
    io::{Read as _, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::{
    control::{AddRequest, ControlSocket, Request},
    core::{self, Core, CoreError, Signal},
    daemon::Daemon,
    fake_kernel::{FakeKernel, FakeProc, KernelLog},
    notify::Notifier,
    outputs::Outputs,
    reply::{ListReply, StatsReply},
};
use crate::{
    config::{Config, Source},
    events::{EventStream, test_records},
    file_id::FileId,
    pipeline::Pipeline,
    probes,
    resolve::{
        ProcKey, Resolver, UserSeq,
        testing::{FakeMaps, FakeVma, render},
    },
    ring_source::ChannelRing,
    symbolize::Symbolizer,
};

const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
const PID: u32 = 4242;
const GEN: u64 = 7;
const BASE: u64 = 0x7f00_0000_0000;

/// A directory of its own under the system's temporary directory, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("probed-core-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// libc's text mapped at [`BASE`] from file offset 0 in process [`PID`].
fn libc_proc() -> FakeProc {
    let meta = std::fs::metadata(LIBC).unwrap();
    let vma = FakeVma {
        start: BASE,
        end: BASE + 0x20_0000,
        perms: "r-xp",
        pgoff: 0,
        major: libc::major(meta.dev()),
        minor: libc::minor(meta.dev()),
        ino: meta.ino(),
        path: LIBC.into(),
    };
    FakeProc {
        key: ProcKey::new(PID, GEN),
        file: FileId::of_path(Path::new(LIBC)).unwrap(),
        maps: render(&[vma]),
    }
}

/// The file offset of `symbol` in libc, as a probe on it would have it.
fn offset_of(symbol: &str) -> u64 {
    let spec = format!("uprobe:{LIBC}:{symbol}").parse().unwrap();
    probes::prepare_one(0, spec, probes::Scope::default())
        .unwrap()
        .file_offset
}

/// A hit of probe `id` at libc's `offset` in [`PID`], stamped with the process's sequence,
/// as the ring holds it.
fn hit(id: u32, offset: u64, seq: u64) -> Vec<u8> {
    test_records::bytes(&test_records::hit(id, PID, GEN, BASE + offset, seq))
}

/// The pieces of one in-process daemon, before it runs.
struct Setup {
    core: Core<FakeKernel>,
    log: Arc<Mutex<KernelLog>>,
    ring: mpsc::UnboundedSender<Vec<u8>>,
    seq: Arc<UserSeq>,
    metrics: std::net::SocketAddr,
    /// The config as loaded (its text is in `config_path`).
    source: Source,
    config: Config,
    config_path: PathBuf,
    /// The control socket and the file the config's output writes.
    socket: PathBuf,
    out: PathBuf,
    _dir: TempDir,
}

/// A daemon (directory `name`) whose config probes libc's `specs` into one file, over a
/// fake kernel that refuses probes at `refuse_offset`.
async fn setup(name: &str, specs: &[&str], refuse_offset: Option<u64>) -> Setup {
    let dir = TempDir::new(name);
    let (socket, out) = (dir.0.join("ctl.sock"), dir.0.join("hits.jsonl"));
    let config_path = dir.0.join("probed.toml");
    std::fs::write(&config_path, config_text(&socket, &out, specs)).unwrap();
    let (source, config) = crate::config::load(&config_path).unwrap();
    let seq = Arc::new(UserSeq::with_capacity(4));
    let maps = Arc::new(FakeMaps::new());
    let kernel = FakeKernel::new(seq.clone(), maps.clone(), vec![libc_proc()], refuse_offset);
    let log = kernel.log.clone();
    let resolver = Arc::new(Resolver::new(seq.clone(), maps));
    let pipeline = Pipeline::new(
        Vec::new(),
        Outputs::stdout_writer(),
        None,
        &resolver,
        Arc::new(Symbolizer::new()),
    )
    .keep_going_on_write_errors();
    let (ring, items) = ChannelRing::new();
    let (daemon, inbox) = Daemon::new(
        kernel,
        pipeline,
        EventStream::from_source(items),
        config_path.clone(),
    );
    let control = ControlSocket::bind(&socket).unwrap();
    let listener = crate::metrics::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let metrics = listener.local_addr().unwrap();
    let core = Core {
        daemon,
        inbox,
        control,
        metrics: Some(listener),
        notifier: Notifier::disabled(),
    };
    Setup {
        core,
        log,
        ring,
        seq,
        metrics,
        source,
        config,
        config_path,
        socket,
        out,
        _dir: dir,
    }
}

/// A `ctl` call, off the runtime's thread (the client blocks).
async fn ctl(socket: &Path, request: Request) -> serde_json::Value {
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || super::ctl::call(&socket, &request).unwrap())
        .await
        .unwrap()
}

/// The probes `list` shows, as (id, spec, state).
async fn list(socket: &Path) -> Vec<(u32, String, String)> {
    let reply: ListReply = serde_json::from_value(ctl(socket, Request::List).await).unwrap();
    reply
        .probes
        .into_iter()
        .map(|p| (p.id, p.spec, p.state))
        .collect()
}

/// Waits (polling) until `done` holds, at most 10 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The lines of `file` (none if it does not exist yet).
fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A GET of /metrics, off the runtime's thread; the response body.
async fn scrape(at: std::net::SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        let mut conn = std::net::TcpStream::connect(at).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    })
    .await
    .unwrap()
}

/// A config whose probes write libc's `specs` to the file `out`.
fn config_text(socket: &Path, out: &Path, specs: &[&str]) -> String {
    let mut text = format!(
        "control_socket = \"{}\"\n[outputs.hits]\nkind = \"file\"\npath = \"{}\"\n",
        socket.display(),
        out.display()
    );
    for spec in specs {
        text += &format!("[[probes]]\nspec = \"uprobe:{LIBC}:{spec}\"\noutput = \"hits\"\n");
    }
    text
}

/// The whole life of a daemon, in-process: start, hits, live changes, scrape, reload, stop.
#[tokio::test(flavor = "current_thread")]
async fn the_core_serves_a_config_over_a_fake_kernel() {
    let s = setup("serve", &["malloc"], None).await;
    let (socket, out, config_path) = (&s.socket, &s.out, &s.config_path);
    let (signals_tx, signals) = mpsc::unbounded_channel();
    let (log, ring, seq) = (s.log.clone(), s.ring.clone(), s.seq.clone());
    let malloc = offset_of("malloc");
    let free = offset_of("free");
    let libc = FileId::of_path(Path::new(LIBC)).unwrap();
    let proc = ProcKey::new(PID, GEN);
    let send = |id: u32, offset: u64| {
        *log.lock().unwrap().written.entry(id).or_default() += 1;
        ring.send(hit(id, offset, seq.current(proc).unwrap()))
            .unwrap();
    };

    let script = async {
        // Started: the config's probe is attached with its file watched, and the process
        // that maps libc is tracked.
        let listed = list(socket).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].2, "attached");
        {
            let log = log.lock().unwrap();
            assert_eq!(log.attached.get(&listed[0].0), Some(&(malloc, Some(libc))));
            assert_eq!(log.tracked, [proc]);
        }
        let id = listed[0].0;

        // A hit goes through the real pipeline and comes out named malloc.
        send(id, malloc);
        until("the hit is written", || lines(out).len() == 1).await;
        let line: serde_json::Value = serde_json::from_str(&lines(out)[0]).unwrap();
        // (libc names malloc's address __libc_malloc too; the first name is taken.)
        assert!(
            line["symbol"].as_str().unwrap().ends_with("malloc"),
            "{line}"
        );
        assert_eq!(line["probe_id"], id);
        assert_eq!(line["pid"], PID);

        // `ctl add` attaches a second probe live; its hits go to stdout (not the file).
        let added = ctl(
            socket,
            Request::Add(AddRequest {
                spec: format!("uprobe:{LIBC}:free"),
                ..AddRequest::default()
            }),
        )
        .await;
        assert_eq!(added["ok"], true, "{added}");
        let free_id = added["id"].as_u64().unwrap() as u32;
        assert_eq!(log.lock().unwrap().attached.get(&free_id).unwrap().0, free);

        // Counters: the scrape and `ctl stats` agree with what was sent, 0 mismatched.
        let body = scrape(s.metrics).await;
        let sample = |family: &str| {
            body.lines()
                .find(|l| l.starts_with(family) && l.contains(":malloc\""))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(
            sample("probed_probe_hits_total{").as_deref(),
            Some("1"),
            "{body}"
        );
        assert_eq!(sample("probed_probe_mismatch_total{").as_deref(), Some("0"));
        let stats: StatsReply = serde_json::from_value(ctl(socket, Request::Stats).await).unwrap();
        let row = stats.probes.iter().find(|p| p.counters.id == id).unwrap();
        assert_eq!((row.counters.hits, row.counters.written), (1, 1), "{row:?}");
        assert_eq!(row.counters.probe_mismatch, 0);

        // `ctl remove` closes the probe's link and frees it.
        let removed = ctl(socket, Request::Remove { id: free_id }).await;
        assert_eq!(removed["ok"], true, "{removed}");
        assert!(!log.lock().unwrap().attached.contains_key(&free_id));
        assert_eq!(log.lock().unwrap().open_links, 1);

        // A reload to a config with free instead of malloc swaps them.
        std::fs::write(config_path, config_text(socket, out, &["free"])).unwrap();
        signals_tx.send(Signal::Reload).unwrap();
        let mut now = Vec::new();
        for _ in 0..500 {
            now = list(socket).await;
            if now.len() == 1 && now[0].1.ends_with(":free") && now[0].2 == "attached" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(now.len() == 1 && now[0].1.ends_with(":free"), "{now:?}");
        let free_id = now[0].0;
        until("malloc's link is closed", || {
            let log = log.lock().unwrap();
            log.open_links == 1 && log.attached.keys().eq([&free_id])
        })
        .await;

        // Hits still in the ring at the stop are drained, not lost.
        for _ in 0..100 {
            send(free_id, free);
        }
        signals_tx.send(Signal::Stop).unwrap();
    };
    let (result, ()) = tokio::join!(core::serve(s.core, &s.source, &s.config, signals), script);
    result.unwrap();
    let lines = lines(out);
    assert_eq!(lines.len(), 101, "every hit written, the stop's included");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.contains(":free\",") && !l.contains("malloc")),
        "{lines:?}"
    );
    let log = log.lock().unwrap();
    assert!(log.stopped_admitting);
    assert_eq!((log.open_links, log.attached.len()), (0, 0));
    assert!(!socket.exists(), "the control socket is removed at exit");
}

/// A probe the kernel refuses fails the start, and nothing stays attached.
#[tokio::test(flavor = "current_thread")]
async fn a_refused_probe_fails_the_start_and_leaves_nothing() {
    let s = setup("refused", &["malloc", "free"], Some(offset_of("free"))).await;
    let log = s.log.clone();
    let (_signals_tx, signals) = mpsc::unbounded_channel();
    let err = core::serve(s.core, &s.source, &s.config, signals)
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::Start { .. }), "{err:?}");
    let message = crate::cli::one_line(&anyhow::Error::new(err));
    assert!(message.contains("cannot attach uprobe"), "{message}");
    let log = log.lock().unwrap();
    assert_eq!(log.open_links, 0, "malloc's link was closed again");
    assert!(!s.socket.exists());
}

/// A `ctl add` the kernel refuses is answered with why, leaves no link, and frees its id for
/// the next probe; the daemon goes on.
#[tokio::test(flavor = "current_thread")]
async fn a_refused_add_is_answered_and_frees_its_id() {
    let s = setup("refused-add", &["malloc"], Some(offset_of("free"))).await;
    let socket = &s.socket;
    let log = s.log.clone();
    let (signals_tx, signals) = mpsc::unbounded_channel();
    let add = |symbol: &str| {
        Request::Add(AddRequest {
            spec: format!("uprobe:{LIBC}:{symbol}"),
            ..AddRequest::default()
        })
    };
    let script = async {
        let refused = ctl(socket, add("free")).await;
        assert_eq!(refused["ok"], false, "{refused}");
        let why = refused["error"].as_str().unwrap();
        assert!(why.contains("cannot attach uprobe"), "{why}");
        assert_eq!(log.lock().unwrap().open_links, 1);
        assert_eq!(list(socket).await.len(), 1);
        // The refused probe's id was given back: the next probe gets it.
        let added = ctl(socket, add("calloc")).await;
        assert_eq!(added["ok"], true, "{added}");
        assert_eq!(added["id"], 1);
        signals_tx.send(Signal::Stop).unwrap();
    };
    let (result, ()) = tokio::join!(core::serve(s.core, &s.source, &s.config, signals), script);
    result.unwrap();
    assert_eq!(log.lock().unwrap().open_links, 0);
}
