//! Separate debug files from a real debuginfod server (elfutils' `debuginfod`, Debian
//! package `debuginfod`) serving a local directory.
//!
//! The fixture (daemon/tests/fixtures/debuginfod_target.c) is built with `-g`; its debug
//! file is split off (`objcopy --only-keep-debug`) into the directory the server indexes,
//! and the binary stripped of `.symtab` (`objcopy --strip-all`: its build-id note stays), so
//! its static functions are named only by the debug file. probed runs with
//! `DEBUGINFOD_URLS` pointing at the server and a private cache
//! (`DEBUGINFOD_CACHE_PATH`):
//!
//! - attaching `uprobe:STRIPPED:hidden_leaf` by name fetches the debug file (synchronously,
//!   at attach) and every call is a hit named `hidden_leaf`, with the stack named from it;
//! - a probe on libc called from the stripped binary never waits for the fetch: the
//!   binary's frames are symbolized from `.dynsym` (no names) until the file arrives in the
//!   background, then named (`resymbolized`).

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{Probed, Target, num};
use serde_json::Value;

/// Calls per round of the fixture.
const CALLS: u64 = 50;

/// The fixture split as distributions ship it: the stripped binary, its debug file in a
/// directory of its own, the build-id.
struct Split {
    dir: PathBuf,
    stripped: PathBuf,
    debug_dir: PathBuf,
    build_id: String,
}

impl Split {
    fn new(name: &str) -> Self {
        let full =
            probed::fixtures::build("debuginfod_target.c", "debuginfod_target", &["-g", "-O2"])
                .expect("build debuginfod_target");
        let dir = std::env::temp_dir().join(format!("probed-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let debug_dir = dir.join("served");
        std::fs::create_dir_all(&debug_dir).expect("mkdir");
        let debug = debug_dir.join("debuginfod_target.debug");
        let stripped = dir.join("debuginfod_target");
        objcopy(&["--only-keep-debug"], &full, &debug);
        objcopy(&["--strip-all"], &full, &stripped);
        let build_id = common::build_id(&stripped);
        assert_eq!(
            build_id,
            common::build_id(&debug),
            "the debug file is the binary's"
        );
        let symbols = |file: &Path| {
            let out = Command::new("readelf")
                .arg("-sW")
                .arg(file)
                .output()
                .expect("readelf");
            String::from_utf8(out.stdout).expect("UTF-8")
        };
        assert!(
            !symbols(&stripped).contains("hidden_leaf"),
            "the stripped binary must not name its static function"
        );
        assert!(
            symbols(&debug).contains("hidden_leaf"),
            "the debug file names it"
        );
        Self {
            dir,
            stripped,
            debug_dir,
            build_id,
        }
    }

    /// A server on this split's debug directory (its database beside it), and the private
    /// cache probed is to use.
    fn serve(&self) -> (Server, PathBuf) {
        let server = Server::start(&self.debug_dir, &self.dir.join("db.sqlite"), &self.build_id);
        (server, self.dir.join("cache"))
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn objcopy(args: &[&str], from: &Path, to: &Path) {
    let out = Command::new("objcopy")
        .args(args)
        .arg(from)
        .arg(to)
        .output()
        .expect("run objcopy (binutils)");
    assert!(out.status.success(), "objcopy {args:?}: {out:?}");
}

/// A `debuginfod` serving one directory on a free local port; killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Starts the server on `dir` and waits until it serves `build_id`'s debug file.
    fn start(dir: &Path, db: &Path, build_id: &str) -> Self {
        // A port the kernel just gave out and took back: free unless someone races for it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("debuginfod")
            .arg("-F")
            .args(["-p", &port.to_string()])
            .arg("-d")
            .arg(db)
            // One scan at start (no rescans, no grooming while the test runs).
            .args(["-t", "0", "-g", "0"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start debuginfod (Debian package debuginfod)");
        let server = Self { child, port };
        let path = format!("/buildid/{build_id}/debuginfo");
        let indexed = common::wait_until(Duration::from_secs(30), || {
            server.status(&path) == Some(200)
        });
        assert!(indexed, "debuginfod did not serve {path} within 30 s");
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The HTTP status of `GET path` (HTTP/1.0, body discarded), if the server answers.
    fn status(&self, path: &str) -> Option<u16> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `probed trace ARGS` with `url` as its only debuginfod server and `cache` as its cache.
fn probed(url: &str, cache: &Path, args: &[&str]) -> Probed {
    let mut cmd = Command::new(common::probed_bin());
    cmd.args(args)
        .env("DEBUGINFOD_URLS", url)
        .env("DEBUGINFOD_CACHE_PATH", cache)
        // The server is local: no proxy in between.
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("ALL_PROXY");
    Probed::start_command(&mut cmd)
}

/// Runs one round of `CALLS` calls under `args`; returns the hits and the summary.
fn run(split: &Split, url: &str, cache: &Path, spec: &str, extra: &[&str]) -> (Vec<Value>, Value) {
    let mut target = Target::start(&split.stripped, &["calls", &CALLS.to_string()]);
    let pid = target.pid.to_string();
    let mut args = vec!["trace", spec, "--pid", &pid, "--format", "json"];
    args.extend_from_slice(extra);
    let probed = probed(url, cache, &args);
    target.go();
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    target.finish();
    let (hits, summary) = common::parse_json(&end.stdout);
    let summary = summary.unwrap_or_else(|| panic!("no summary: {end:?}"));
    common::assert_summary_adds_up(&summary);
    (hits, summary)
}

/// A static function of a stripped binary attaches by name through the debug file the
/// server serves; every call is one hit named by it, its stack named up to main; the file
/// is cached under the build-id, and a second run uses the cache (no fetch).
#[test]
fn static_function_by_name_from_debuginfod() {
    if !common::require_bpf("static_function_by_name_from_debuginfod") {
        return;
    }
    let split = Split::new("debuginfod-attach");
    let (server, cache) = split.serve();
    let spec = format!("uprobe:{}:hidden_leaf", split.stripped.display());

    let (hits, summary) = run(&split, &server.url(), &cache, &spec, &["--stack"]);
    assert_eq!(hits.len() as u64, CALLS, "one hit per call: {summary}");
    let probe = common::probe_summary(&summary, &spec);
    assert_eq!(
        (num(probe, "hits"), num(probe, "printed")),
        (CALLS, CALLS),
        "{probe}"
    );
    let module = split.stripped.to_str().expect("UTF-8");
    for hit in &hits {
        assert_eq!(hit["probe"], spec.as_str(), "{hit}");
        assert_eq!(hit["symbol"], "hidden_leaf", "{hit}");
        let stack: Vec<&Value> = hit["stack"].as_array().expect("a stack").iter().collect();
        let names: Vec<&str> = stack
            .iter()
            .take(3)
            .map(|f| f["symbol"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(names, ["hidden_leaf", "hidden_mid", "main"], "{hit}");
        assert!(stack[..3].iter().all(|f| f["module"] == module), "{hit}");
    }
    let cached = cache.join(&split.build_id).join("debuginfo");
    let served = std::fs::read(split.debug_dir.join("debuginfod_target.debug")).expect("read");
    assert_eq!(
        std::fs::read(&cached).expect("the cached debug file"),
        served
    );
    // (Not debuginfod_failed: where libc's debug file is not installed, libc's frames
    // ask the server for it too, and it has none.)
    assert_eq!(
        num(&summary["resolver"], "debuginfod_fetched"),
        1,
        "{summary}"
    );

    // From the cache: the server is gone (nothing listens on port 1) and not needed.
    drop(server);
    let (hits, summary) = run(&split, "http://127.0.0.1:1", &cache, &spec, &[]);
    assert_eq!(hits.len() as u64, CALLS, "{summary}");
    assert!(
        hits.iter().all(|h| h["symbol"] == "hidden_leaf"),
        "{hits:?}"
    );
    assert_eq!(
        num(&summary["resolver"], "debuginfod_fetched"),
        0,
        "{summary}"
    );
}

/// The hit path never waits: a probe on libc, whose callers are in the stripped binary,
/// does not fetch at attach; the first frame in the binary is answered at once without a
/// name while the debug file is fetched in the background; once it has arrived, the same
/// frames are named hidden_leaf, hidden_mid, main.
#[test]
fn frames_named_when_the_debug_file_arrives() {
    if !common::require_bpf("frames_named_when_the_debug_file_arrives") {
        return;
    }
    let split = Split::new("debuginfod-frames");
    let (server, cache) = split.serve();
    let spec = "uprobe:libc:getppid";
    let mut target = Target::start(&split.stripped, &["calls", &CALLS.to_string()]);
    let pid = target.pid.to_string();
    let probed = probed(
        &server.url(),
        &cache,
        &["trace", spec, "--pid", &pid, "--stack", "--format", "json"],
    );
    // Round after round until the file has arrived (bounded).
    let cached = cache.join(&split.build_id).join("debuginfo");
    let mut rounds = 0;
    while rounds < 50 {
        target.go();
        rounds += 1;
        if cached.exists() {
            // One more round, once the worker has had time to swap the symbols in (it
            // parses the file after renaming it into the cache).
            std::thread::sleep(Duration::from_secs(1));
            target.go();
            rounds += 1;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    target.finish();
    let (hits, summary) = common::parse_json(&end.stdout);
    let summary = summary.unwrap_or_else(|| panic!("no summary: {end:?}"));
    common::assert_summary_adds_up(&summary);
    assert_eq!(hits.len() as u64, CALLS * rounds, "{summary}");
    let callers = |hit: &Value| -> Vec<Value> {
        hit["stack"].as_array().expect("a stack")[1..4]
            .iter()
            .map(|f| f["symbol"].clone())
            .collect()
    };
    // The lookup that loaded the binary (the first hit's first frame in it) was answered
    // at once, from .dynsym, while the fetch had only been started.
    let first = &hits[0]["stack"][1];
    assert_eq!(
        (&first["symbol"], &first["unresolved"]),
        (&Value::Null, &Value::from("no_symbol")),
        "the first lookup waited for the debug file: {}",
        hits[0]
    );
    let last = hits.last().expect("hits");
    assert_eq!(
        callers(last),
        ["hidden_leaf", "hidden_mid", "main"],
        "{last}"
    );
    let resolver = &summary["resolver"];
    assert_eq!(num(resolver, "debuginfod_fetched"), 1, "{summary}");
    assert_eq!(num(resolver, "resymbolized"), 1, "{summary}");
    assert!(cached.exists());
}

/// How long [`SlowProxy`] holds each connection before passing it on.
const HOLD: Duration = Duration::from_secs(6);

/// A TCP proxy in front of a server that holds whatever the client sends [`HOLD`] before
/// passing it on — every request, also those on a connection kept alive: a debuginfod that
/// takes its time (a remote one, a slow link).
struct SlowProxy {
    port: u16,
}

impl SlowProxy {
    fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("its address").port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut from, mut to) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                // Requests: held, then passed on.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        std::thread::sleep(HOLD);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
                // Answers: passed on at once.
                let (mut from, mut to) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// `probed ctl --json list` against `socket` every 200 ms until `stop` is set, from a
/// thread of its own; each call's duration, or why it failed.
fn keep_listing(
    socket: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Result<Duration, String>>> {
    std::thread::spawn(move || {
        let mut calls = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let out = common::run_to_end(
                Command::new(common::probed_bin())
                    .args(["ctl", "--json", "--socket"])
                    .arg(&socket)
                    .arg("list"),
            );
            calls.push(if out.status.success() {
                Ok(out.elapsed)
            } else {
                Err(format!("{out:?}"))
            });
            std::thread::sleep(Duration::from_millis(200));
        }
        calls
    })
}

/// The daemon's loop goes on while a probe waits for its debug file (checking a probe is
/// done off the loop). Through a server that answers each request only after 6 s: a `ctl
/// add` of the stripped binary's static function returns after the fetch, attached (every
/// call a hit); a reload adding another (its file removed from the cache first, so fetched
/// again) applies after the fetch. All the while `ctl list` answers within a second.
#[test]
fn daemon_answers_while_a_debug_file_is_fetched() {
    if !common::require_bpf("daemon_answers_while_a_debug_file_is_fetched") {
        return;
    }
    let split = Split::new("debuginfod-daemon");
    let (server, cache) = split.serve();
    let slow = SlowProxy::start(server.port);
    let mut daemon = common::daemon::Daemon::start_with(
        common::PrivateDir::new("debuginfod-daemon"),
        "",
        |cmd| {
            cmd.env("DEBUGINFOD_URLS", slow.url())
                .env("DEBUGINFOD_CACHE_PATH", &cache)
                .env_remove("http_proxy")
                .env_remove("HTTP_PROXY")
                .env_remove("ALL_PROXY");
        },
    );
    let leaf = format!("uprobe:{}:hidden_leaf", split.stripped.display());
    let mid = format!("uprobe:{}:hidden_mid", split.stripped.display());
    let cached = cache.join(&split.build_id);

    // ctl add, while another thread lists.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lister = keep_listing(daemon.socket(), stop.clone());
    let started = std::time::Instant::now();
    let added = daemon.ctl(&["add", &leaf]);
    let add_took = started.elapsed();
    assert!(added.status.success(), "ctl add: {added:?}");
    let reply: Value = serde_json::from_str(&added.stdout[0]).expect("JSON reply");
    let id = reply["id"].as_u64().expect("an id");
    assert!(
        add_took >= HOLD,
        "the add did not wait for the fetch: {add_took:?}"
    );
    assert!(cached.join("debuginfo").exists(), "fetched into the cache");
    let mut target = Target::start(&split.stripped, &["calls", &CALLS.to_string()]);
    target.go();
    let counted = common::wait_until(Duration::from_secs(10), || daemon.hits(id) == CALLS);
    assert!(counted, "hits of {leaf}: {}", daemon.hits(id));

    // A reload adding a probe on hidden_mid: fetched again.
    std::fs::remove_dir_all(&cached).expect("empty the cache");
    let started = std::time::Instant::now();
    let line = daemon.reload(&format!(
        "[[probes]]\nspec = \"{mid}\"\noutput = \"stdout\"\n"
    ));
    let reload_took = started.elapsed();
    assert!(
        line.contains("reloaded") && line.contains("1 probe(s) attached"),
        "{line}"
    );
    assert!(
        reload_took >= HOLD,
        "the reload did not wait for the fetch: {reload_took:?}: {line}; {:?}",
        daemon.seen_errors
    );
    assert!(cached.join("debuginfo").exists(), "fetched again");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls = lister.join().expect("the lister");
    target.go();
    target.finish();

    let slowest = calls.iter().flatten().max().copied().unwrap_or_default();
    let failed: Vec<&String> = calls.iter().filter_map(|c| c.as_ref().err()).collect();
    eprintln!(
        "add {add_took:?}, reload {reload_took:?}; {} ctl list calls meanwhile, slowest {slowest:?}",
        calls.len()
    );
    assert!(failed.is_empty(), "ctl list failed: {failed:?}");
    // Two fetches of 6 s, a call every ~0.2 s: dozens of calls, each answered at once.
    assert!(calls.len() >= 20, "{} calls", calls.len());
    assert!(
        slowest < Duration::from_secs(1),
        "a ctl list took {slowest:?}"
    );
    let (end, _dir) = daemon.stop(libc::SIGTERM, Duration::from_secs(30));
    assert!(end.status.success(), "{end:?}");
}
