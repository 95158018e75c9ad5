//! Fakes at the syscall seam, for tests and benchmarks: a maps source whose text the test
//! sets (and which can tear reads like the kernel's chunked reads do), and a renderer that
//! writes maps text from a list of mappings. Not part of probed's behaviour.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use super::{
    proc_key::ProcKey,
    seq::{SeqError, UserSeq},
    source::{MapsSource, ScanError},
};

/// A maps source serving texts set by the test.
#[derive(Default)]
pub struct FakeMaps {
    texts: Mutex<HashMap<ProcKey, Arc<Vec<u8>>>>,
    tear: AtomicBool,
    reads: AtomicU64,
}

impl FakeMaps {
    /// An empty source: every process is gone until given a text.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the text `proc`'s maps read as from now on.
    pub fn set(&self, proc: ProcKey, text: Vec<u8>) {
        self.lock().insert(proc, Arc::new(text));
    }

    /// Makes `proc` gone.
    pub fn remove(&self, proc: ProcKey) {
        self.lock().remove(&proc);
    }

    /// When on, each read returns the first half of the text current when the read starts
    /// and the second half of the text current after a yield: a concurrent change makes it a
    /// torn mix, as a real chunked read of /proc/PID/maps can be.
    pub fn set_tearing(&self, on: bool) {
        self.tear.store(on, Ordering::Relaxed);
    }

    /// Number of reads served.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProcKey, Arc<Vec<u8>>>> {
        self.texts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, proc: ProcKey) -> Result<Arc<Vec<u8>>, ScanError> {
        self.lock().get(&proc).cloned().ok_or(ScanError::Gone(proc))
    }
}

impl MapsSource for FakeMaps {
    fn read_maps(&self, proc: ProcKey, buf: &mut Vec<u8>) -> Result<(), ScanError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        buf.clear();
        let first = self.get(proc)?;
        if !self.tear.load(Ordering::Relaxed) {
            buf.extend_from_slice(&first);
            return Ok(());
        }
        let half = first.len() / 2;
        buf.extend_from_slice(&first[..half]);
        std::thread::yield_now();
        let second = self.get(proc)?;
        buf.extend_from_slice(second.get(half..).unwrap_or_default());
        Ok(())
    }
}

/// One mapping to render as a maps line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeVma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Permission column, e.g. `"r-xp"`.
    pub perms: &'static str,
    /// File offset.
    pub pgoff: u64,
    /// Device major.
    pub major: u32,
    /// Device minor.
    pub minor: u32,
    /// Inode (0 = anonymous).
    pub ino: u64,
    /// Path column as the kernel would print it (escaped, maybe " (deleted)").
    pub path: String,
}

/// Renders mappings as /proc/PID/maps text, in the kernel's format (padding included).
pub fn render(vmas: &[FakeVma]) -> Vec<u8> {
    let mut out = String::with_capacity(vmas.len() * 100);
    for v in vmas {
        let len = out.len();
        let _ = write!(
            out,
            "{:08x}-{:08x} {} {:08x} {:02x}:{:02x} {}",
            v.start, v.end, v.perms, v.pgoff, v.major, v.minor, v.ino
        );
        if !v.path.is_empty() {
            // The kernel pads to column 73 (25 + 6 × pointer size, minus one) before a path.
            let width = out.len() - len;
            out.push_str(&" ".repeat(73usize.saturating_sub(width).max(1)));
            out.push_str(&v.path);
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// Applies `text` as `proc`'s new maps, bracketed by a change of its sequence, the way the
/// kernel's change points would be; returns the new (even) sequence.
pub fn change(
    seq: &UserSeq,
    maps: &FakeMaps,
    proc: ProcKey,
    text: Vec<u8>,
) -> Result<u64, SeqError> {
    seq.begin_change(proc)?;
    maps.set(proc, text);
    seq.end_change(proc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::maps::parse_line;

    /// Rendered lines parse back to what was rendered.
    #[test]
    fn render_round_trips() {
        let v = FakeVma {
            start: 0x1000,
            end: 0x2000,
            perms: "r-xp",
            pgoff: 0x3000,
            major: 0x103,
            minor: 2,
            ino: 77,
            path: "/lib/a.so".into(),
        };
        let text = render(std::slice::from_ref(&v));
        let line = parse_line(text.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!((line.start, line.end, line.pgoff), (0x1000, 0x2000, 0x3000));
        assert_eq!((line.major, line.minor, line.ino), (0x103, 2, 77));
        assert_eq!(line.path, b"/lib/a.so");
    }
}
