//! A real Prometheus server (Debian's `prometheus` package) as a test child, and the plain
//! HTTP/1.0 GET the tests use to talk to it and to probed's endpoint.
//!
//! The server gets its own config, data directory and port (never the packaged service's
//! 9090 or /var/lib/prometheus), and is killed on drop.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::PrivateDir;

/// How long Prometheus may take to become ready (it opens its TSDB first).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A port on 127.0.0.1 that was free a moment ago (bound, read, released). Another process
/// could take it in between; the callers bind it at once.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// `GET path` over HTTP/1.0 (so the server closes after the reply; no chunked encoding):
/// the status code and the body. `Err` if the server cannot be reached.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no end of head in {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// Percent-encodes a query parameter (PromQL has braces, quotes, spaces).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `prometheus` binary, if installed.
pub fn prometheus_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

/// Whether Prometheus tests can run; panics under CI=true when they cannot (the Debian
/// package is installed by .ci/run), else prints why they skip.
pub fn require_prometheus(test: &str) -> bool {
    if prometheus_bin().is_some() {
        return true;
    }
    let why = "no `prometheus` binary (apt-get install prometheus)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: cannot run under CI=true: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// A running Prometheus scraping `targets` every second.
pub struct Prometheus {
    child: Child,
    /// Its HTTP API address.
    pub addr: SocketAddr,
    /// Config, data and log.
    dir: PrivateDir,
}

impl Prometheus {
    /// Starts Prometheus with a config scraping `targets` at `/metrics` every second, and
    /// waits until it is ready.
    pub fn start(targets: &[SocketAddr]) -> Self {
        let bin = prometheus_bin().expect("prometheus installed (see require_prometheus)");
        let dir = PrivateDir::new("prometheus");
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: probed\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [{list}]\n"
        );
        let config_path = dir.path.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path.join("prometheus.log")).expect("log file");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut me = Self { child, addr, dir };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok((200, _)) = http_get(addr, "/-/ready") {
                return me;
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("prometheus exited ({status}); log:\n{}", me.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "prometheus not ready in {READY_TIMEOUT:?}; log:\n{}",
                    me.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Prometheus's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the `data.result` array (vector samples).
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = http_get(self.addr, &path).expect("query prometheus");
        assert_eq!(status, 200, "{promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{promql}: no result array: {v}"))
            .clone()
    }

    /// The scrape targets' state (`/api/v1/targets` → `data.activeTargets`).
    pub fn targets(&self) -> Vec<serde_json::Value> {
        let (status, body) = http_get(self.addr, "/api/v1/targets").expect("targets");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("targets JSON");
        v["data"]["activeTargets"]
            .as_array()
            .expect("activeTargets")
            .clone()
    }

    /// Waits (up to `timeout`) until every target has been scraped successfully at or after
    /// `since` (by Prometheus's `lastScrape` time), so queries then see data from after it.
    /// Panics with the targets' state and the log otherwise.
    pub fn wait_scraped_after(&self, since: std::time::SystemTime, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let targets = self.targets();
            let scraped_since = |t: &serde_json::Value| {
                t["lastScrape"]
                    .as_str()
                    .and_then(parse_rfc3339)
                    .is_some_and(|at| at >= since)
            };
            // A failed scrape after `since` (unreachable, unparsable) fails at once, with
            // Prometheus's reason — except a timeout (a loaded test machine), which the next
            // scrape may not repeat.
            let timed_out = |t: &serde_json::Value| {
                t["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("deadline exceeded"))
            };
            if let Some(t) = targets
                .iter()
                .find(|t| scraped_since(t) && t["health"] != "up" && !timed_out(t))
            {
                panic!("scrape failed: {}\ntarget: {t:#}", t["lastError"]);
            }
            if !targets.is_empty()
                && targets
                    .iter()
                    .all(|t| scraped_since(t) && t["health"] == "up")
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "targets not scraped after {since:?} within {timeout:?}: {targets:#?}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a vector sample (`"value": [time, "string"]`) as f64.
pub fn sample_value(sample: &serde_json::Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {sample}"))
}

/// Parses the RFC 3339 UTC-or-offset timestamps Prometheus writes (`2026-11-28T01:02:03.456789Z`
/// or with `+00:00`), to the precision of the fraction given.
pub fn parse_rfc3339(s: &str) -> Option<std::time::SystemTime> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    // Split the time from the zone: Z, +hh:mm or -hh:mm.
    let (time, offset) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0)
    } else {
        let i = rest.rfind(['+', '-'])?;
        let (t, z) = rest.split_at(i);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (hh, mm) = z[1..].split_once(':')?;
        (
            t,
            sign * (hh.parse::<i64>().ok()? * 3600 + mm.parse::<i64>().ok()? * 60),
        )
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, mi, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(std::time::UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}
