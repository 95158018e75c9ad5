//! `probed daemon` speaks sd_notify to a NOTIFY_SOCKET this test owns, as systemd would:
//! READY=1 only once the probes are attached (a process started right after READY=1 is
//! traced from its first call), WATCHDOG=1 every WATCHDOG_USEC/2, RELOADING=1 then READY=1
//! around a SIGHUP, STOPPING=1 on SIGTERM, then exit 0 — in that order.

mod common;

use std::{
    os::unix::net::UnixDatagram,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::{PrivateDir, Target, TargetCopy};

/// Calls the target makes after READY=1.
const CALLS: u64 = 50;
/// The watchdog timeout given to probed: pings are expected every 200 ms.
const WATCHDOG_USEC: u64 = 400_000;

/// Every datagram on the socket, with its arrival time, until the socket is dropped.
fn listen(socket: UnixDatagram) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if tx.send((Instant::now(), msg)).is_err() {
                        return;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // Stop once the test has dropped the receiver.
                    if tx.send((Instant::now(), String::new())).is_err() {
                        return;
                    }
                }
                Err(e) => panic!("notify socket: {e}"),
            }
        }
    });
    rx
}

/// Messages received so far and later, up to `until` returning true or `timeout`.
fn collect_until(
    rx: &mpsc::Receiver<(Instant, String)>,
    log: &mut Vec<(Instant, String)>,
    timeout: Duration,
    mut until: impl FnMut(&[(Instant, String)]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if until(log) {
            return true;
        }
        if let Ok((at, msg)) = rx.recv_timeout(Duration::from_millis(50))
            && !msg.is_empty()
        {
            log.push((at, msg));
        }
    }
    until(log)
}

fn count(log: &[(Instant, String)], msg: &str) -> usize {
    log.iter().filter(|(_, m)| m == msg).count()
}

/// The daemon, killed if the test fails before it exits (a failed assertion must not leave
/// it running with its probes attached).
struct KillOnDrop(std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(pid: u32, sig: i32) {
    let pid = i32::try_from(pid).expect("pid fits i32");
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {sig}");
}

#[test]
fn ready_watchdog_reload_stopping_in_order() {
    if !common::require_bpf("ready_watchdog_reload_stopping_in_order") {
        return;
    }
    let dir = PrivateDir::new("notify");
    let notify_path = dir.path.join("notify.sock");
    let rx = listen(UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET"));
    let copy = TargetCopy::new("sn_ready");
    let spec = copy.spec("uprobe", "probed_add");
    let config = dir.path.join("probed.toml");
    std::fs::write(
        &config,
        format!(
            "control_socket = \"{}\"\n\n[[probes]]\nspec = \"{spec}\"\n",
            dir.path.join("control.sock").display()
        ),
    )
    .expect("write config");

    let mut child = KillOnDrop(
        Command::new(common::probed_bin())
            .args(["daemon", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start probed daemon"),
    );
    let stdout = common::line_channel(child.stdout.take().expect("stdout"));
    let stderr = common::line_channel(child.stderr.take().expect("stderr"));
    let mut log = Vec::new();

    // READY=1, and nothing before it.
    let ready = collect_until(&rx, &mut log, Duration::from_secs(30), |l| {
        count(l, "READY=1") > 0
    });
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "no READY=1 within 30 s: {log:?}; stderr {:?}",
            common::drain(&stderr)
        );
    }
    assert_eq!(log[0].1, "READY=1", "first message: {log:?}");
    let ready_at = log[0].0;

    // At READY=1 the probe is attached: a process started now is traced from its first call.
    let mut target = Target::start(&copy.path, &[&CALLS.to_string()]);
    let round = target.go();
    assert_eq!(
        common::reported_sum(&round),
        common::expected_sum(CALLS as i64)
    );
    let mut hits = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while hits < CALLS && Instant::now() < deadline {
        if let Ok(line) = stdout.recv_timeout(Duration::from_millis(100)) {
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line {line:?}: {e}"));
            if v["type"] == "hit" && v["pid"] == target.pid && v["symbol"] == "probed_add" {
                hits += 1;
            }
        }
    }
    assert_eq!(hits, CALLS, "hits of the process started after READY=1");
    target.finish();

    // Watchdog pings: every 200 ms, so at least 3 within the first second after READY=1.
    collect_until(&rx, &mut log, Duration::from_secs(3), |l| {
        l.last()
            .is_some_and(|(at, _)| *at >= ready_at + Duration::from_millis(1500))
    });
    let first_second = log
        .iter()
        .filter(|(at, m)| m == "WATCHDOG=1" && *at <= ready_at + Duration::from_secs(1))
        .count();
    assert!(first_second >= 3, "{first_second} pings in 1 s: {log:?}");

    // SIGHUP: RELOADING=1 (with MONOTONIC_USEC for Type=notify-reload), then READY=1.
    let before = log.len();
    signal(child.id(), libc::SIGHUP);
    assert!(
        collect_until(&rx, &mut log, Duration::from_secs(10), |l| {
            count(&l[before..], "READY=1") > 0
        }),
        "no READY=1 after SIGHUP: {:?}",
        &log[before..]
    );
    let reload: Vec<&String> = log[before..]
        .iter()
        .map(|(_, m)| m)
        .filter(|m| *m != "WATCHDOG=1")
        .collect();
    assert_eq!(reload.len(), 2, "{reload:?}");
    assert!(
        reload[0].starts_with("RELOADING=1\nMONOTONIC_USEC=")
            && reload[0]["RELOADING=1\nMONOTONIC_USEC=".len()..]
                .parse::<u64>()
                .is_ok(),
        "{reload:?}"
    );
    assert_eq!(reload[1], "READY=1");

    // SIGTERM: STOPPING=1, exit 0 within 5 s.
    let term_at = Instant::now();
    signal(child.id(), libc::SIGTERM);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if term_at.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("probed daemon did not exit within 5 s of SIGTERM");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let err = common::drain(&stderr);
    assert!(status.success(), "exit {status}: {err:?}");
    assert!(
        collect_until(&rx, &mut log, Duration::from_secs(2), |l| {
            count(l, "STOPPING=1") > 0
        }),
        "no STOPPING=1: {log:?}"
    );

    // The order: READY, (pings), RELOADING, READY, (pings), STOPPING — nothing after it.
    let kinds: Vec<&str> = log
        .iter()
        .map(|(_, m)| m.split('\n').next().unwrap_or(""))
        .filter(|m| !m.starts_with("STATUS="))
        .collect();
    let last = kinds.len() - 1;
    assert_eq!(kinds[last], "STOPPING=1", "{kinds:?}");
    assert_eq!(count(&log, "STOPPING=1"), 1, "{kinds:?}");
    let pings = kinds.iter().filter(|k| **k == "WATCHDOG=1").count();
    let others: Vec<&&str> = kinds.iter().filter(|k| **k != "WATCHDOG=1").collect();
    assert_eq!(
        others,
        [&"READY=1", &"RELOADING=1", &"READY=1", &"STOPPING=1"],
        "{kinds:?}"
    );
    assert!(
        kinds.iter().position(|k| *k == "WATCHDOG=1") > Some(0),
        "{kinds:?}"
    );
    println!(
        "{} messages, {pings} watchdog pings; exit {:?} after SIGTERM",
        kinds.len(),
        term_at.elapsed()
    );
    drop(rx);
}
