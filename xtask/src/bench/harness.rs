//! Pieces every end-to-end benchmark harness needs: child output as lines, a bounded wait
//! that also returns the child's CPU time, CPU time of a live process, medians, and where
//! probed's hit output goes.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::Child,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};

use crate::paths;

/// How long a benchmarked tool may take to start, attach or exit: 30 s, or 180 s in a
/// kernel guest (`PROBED_BENCH_PREBUILT`: QEMU emulation runs probed's start — BTF, the
/// verifier — 10–30× slower; the one guest run with 30 s stopped at round 4 on it).
pub fn tool_timeout() -> Duration {
    if std::env::var_os("PROBED_BENCH_PREBUILT").is_some() {
        Duration::from_secs(180)
    } else {
        Duration::from_secs(30)
    }
}

/// Where `bench` has probed write its JSON hits: tmpfs if there is one, so the disk does not
/// pace the daemon.
pub fn hits_file(bench: &str) -> PathBuf {
    let name = format!("probed-{bench}-{}.jsonl", std::process::id());
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.join(name)
    } else {
        paths::bench_dir().join(name)
    }
}

/// The lines of `stream`, read on a thread.
pub fn lines(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for `child` (bounded) and returns its raw wait status and user+sys CPU in ns.
pub fn wait_with_rusage(child: &mut Child) -> Result<(i32, u64)> {
    let pid = i32::try_from(child.id())?;
    let deadline = Instant::now() + tool_timeout();
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: status and usage are valid, writable, and live for the call; the pid is
        // our child, which std has not reaped (we never call its wait).
        let got = unsafe { libc::wait4(pid, &raw mut status, libc::WNOHANG, &raw mut usage) };
        if got == pid {
            break;
        }
        ensure!(got == 0, "wait4: {}", std::io::Error::last_os_error());
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("pid {pid} did not exit within {:?}", tool_timeout());
        }
        thread::sleep(Duration::from_millis(5));
    }
    let ns = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_usec).unwrap_or(0) * 1_000
    };
    Ok((status, ns(usage.ru_utime) + ns(usage.ru_stime)))
}

/// CPU time the live process `pid` has used so far, in ns (the sum of its threads'
/// /proc/PID/task/TID/schedstat run times); 0 if it cannot be read.
pub fn cpu_ns_so_far(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The median (NaN for no values).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Medians of odd and even counts, and of nothing.
    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
