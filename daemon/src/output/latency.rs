//! `--latency`: how long calls of a function probed at entry and return take.
//!
//! Entry and return hits are paired per thread (pid, tid): each thread keeps a stack of the
//! calls it is inside, so recursion pairs every return with the innermost open call of the
//! same function. A function is identified by its module and symbol (the file offset when no
//! symbol covers it), so `uprobe:/x:f` and `uretprobe:/x:f` pair, as does an entry probe at
//! `f+16`. What cannot be paired is counted, never guessed: a return with no open call of its
//! function (its entry was lost, or happened before the run) is an unmatched return; calls
//! left open inside a call that returned (their own return was lost), or pushed off a
//! thread's stack past [`MAX_DEPTH`], are unmatched entries; calls still open when a report
//! is made are in flight.
//!
//! Durations (return `ts_ns` − entry `ts_ns`, both CLOCK_MONOTONIC in BPF) go into a
//! log-linear histogram: exact below 128 ns, then 128 sub-buckets per power of two, so a
//! percentile (nearest rank, reported as its bucket's midpoint) is within 1/256 (0.4%) of the
//! exact value, in 59 KiB per function whatever the run's length. Count, min and max are
//! exact. Printed as a log2 histogram in bpftrace's `hist()` style, and as JSON lines.
//!
//! Done in userspace from resolved hits: pairing costs ~35 ns per hit
//! (`output::tests::aggregation_cost`), against ~10 µs for each uprobe hit in the traced
//! program and ~0.9 µs of daemon CPU to deliver and resolve it (CI-class VM, `cargo xtask
//! bench stacks` / `e2e`). A BPF version (entry time in a per-thread map, histogram in an
//! array map) would save the daemon that delivery, but not the uprobes' cost to the program,
//! could only tell functions apart by probe rather than by resolved symbol, and gives no
//! exact min and max.

use std::{
    collections::HashMap,
    io::{self, Write},
};

use rustc_hash::FxBuildHasher;
use serde::Serialize;

use super::HitRecord;
use crate::spec::ProbeKind;

/// Most calls one thread may have open; deeper ones push the oldest out (unmatched).
pub const MAX_DEPTH: usize = 512;

/// Largest relative error of a reported percentile (half a bucket of 1/128 of its power of
/// two).
pub const PERCENTILE_ERROR: f64 = 1.0 / 256.0;

/// Sub-buckets per power of two, as bits.
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
/// Buckets: exact values below SUB, then SUB per power of two from 2^SUB_BITS to 2^63.
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

/// Durations in ns: exact count, min and max, percentiles within [`PERCENTILE_ERROR`].
#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            count: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

/// The fine bucket of `v`.
fn bucket(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let sub = (v >> (exp - SUB_BITS)) as usize - SUB;
    SUB + (exp - SUB_BITS) as usize * SUB + sub
}

/// The values fine bucket `i` holds: `[lo, lo + width)`.
fn bucket_range(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, 1);
    }
    let shift = ((i - SUB) / SUB) as u32;
    let sub = ((i - SUB) % SUB) as u64;
    ((SUB as u64 + sub) << shift, 1 << shift)
}

/// bpftrace's `hist()` bucket of `v`: 0 holds 0, 1 holds 1, k holds [2^(k-1), 2^k).
fn log2_bucket(v: u64) -> usize {
    64 - v.leading_zeros() as usize
}

impl Histogram {
    /// Records one duration.
    pub fn record(&mut self, ns: u64) {
        self.buckets[bucket(ns)] += 1;
        self.count += 1;
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
    }

    /// Adds `other`'s durations.
    pub fn absorb(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Durations recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The shortest (exact), if any.
    pub fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }

    /// The longest (exact), if any.
    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// The `p`-th percentile (0 < p ≤ 100) by nearest rank, within [`PERCENTILE_ERROR`]: the
    /// midpoint of the bucket holding that rank, kept within [min, max].
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p / 100.0 * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (lo, width) = bucket_range(i);
                return Some((lo + (width - 1) / 2).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// bpftrace-style log2 buckets from the lowest to the highest non-empty one:
    /// `(lo, hi exclusive, count)`, with `[0]` and `[1]` as `(0, 1, n)` and `(1, 2, n)`.
    pub fn log2_buckets(&self) -> Vec<(u64, u64, u64)> {
        let mut counts = [0u64; 65];
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 {
                counts[log2_bucket(bucket_range(i).0)] += n;
            }
        }
        let Some(first) = counts.iter().position(|&n| n > 0) else {
            return Vec::new();
        };
        let last = counts.iter().rposition(|&n| n > 0).unwrap_or(first);
        (first..=last)
            .map(|k| {
                let lo = if k == 0 { 0 } else { 1u64 << (k - 1) };
                let hi = if k == 64 { u64::MAX } else { 1u64 << k };
                (lo, hi, counts[k])
            })
            .collect()
    }

    /// Writes the log2 buckets like bpftrace's `hist()`: `[1K, 2K)  count |@@@@   |`.
    pub fn write_log2(&self, out: &mut impl Write) -> io::Result<()> {
        const WIDTH: usize = 52;
        let buckets = self.log2_buckets();
        let top = buckets.iter().map(|b| b.2).max().unwrap_or(0).max(1);
        for (lo, hi, n) in buckets {
            let label = if hi - lo == 1 {
                format!("[{lo}]")
            } else {
                format!("[{}, {})", size_label(lo), size_label(hi))
            };
            let bar = "@".repeat((n as f64 / top as f64 * WIDTH as f64) as usize);
            writeln!(out, "{label:<16}{n:>8} |{bar:<WIDTH$}|")?;
        }
        Ok(())
    }
}

/// bpftrace's bucket label: a power of 1024 as K, M, G, T, P.
fn size_label(n: u64) -> String {
    for (shift, suffix) in [(50, 'P'), (40, 'T'), (30, 'G'), (20, 'M'), (10, 'K')] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", n >> shift);
        }
    }
    n.to_string()
}

/// A duration for people: `850ns`, `12.4us`, `5.072ms`, `1.250s`.
fn human(ns: u64) -> String {
    let v = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}us", v / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.3}ms", v / 1e6)
    } else {
        format!("{:.3}s", v / 1e9)
    }
}

/// One probed function's calls.
#[derive(Clone, Debug, Default)]
pub struct Function {
    /// Its symbol, or `+0xOFF` (file offset) when no symbol covers it.
    pub name: String,
    /// Its module.
    pub module: String,
    /// Call durations.
    pub hist: Histogram,
    /// Returns with no open call of this function on their thread.
    pub unmatched_returns: u64,
    /// Calls that never got their return (an outer call returned first, or too deep).
    pub unmatched_entries: u64,
}

/// A call a thread is inside.
#[derive(Clone, Copy, Debug)]
struct Open {
    function: u32,
    ts_ns: u64,
}

/// Entry/return pairing and per-function histograms.
#[derive(Debug, Default)]
pub struct Latency {
    functions: Vec<Function>,
    /// `name\0module` → index in `functions`.
    by_key: HashMap<String, u32, FxBuildHasher>,
    /// (pid, tid) → the calls it is inside, innermost last.
    threads: HashMap<(u32, u32), Vec<Open>, FxBuildHasher>,
    /// Hits whose location is unknown (cannot say which function returned).
    pub unidentified: u64,
    /// Reused key buffer.
    key: String,
}

impl Latency {
    /// No calls yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one entry or return hit.
    pub fn add(&mut self, hit: &HitRecord<'_>) {
        let Ok(r) = &hit.resolved else {
            self.unidentified += 1;
            return;
        };
        let mut key = std::mem::take(&mut self.key);
        key.clear();
        match &r.symbol {
            Some(s) => key.push_str(s),
            None => key.push_str(&format!("+{:#x}", r.file_offset)),
        }
        let name_len = key.len();
        key.push('\0');
        key.push_str(&r.module);
        let function = match self.by_key.get(key.as_str()) {
            Some(&f) => f,
            None => {
                let f = self.functions.len() as u32;
                self.functions.push(Function {
                    name: key[..name_len].to_owned(),
                    module: r.module.to_string(),
                    ..Function::default()
                });
                self.by_key.insert(key.clone(), f);
                f
            }
        };
        self.key = key;
        self.call(hit.pid, hit.tid, function, hit.kind, hit.ts_ns);
    }

    /// Pairs an entry or return of `function` on thread (pid, tid) at `ts_ns`.
    fn call(&mut self, pid: u32, tid: u32, function: u32, kind: ProbeKind, ts_ns: u64) {
        let open = self.threads.entry((pid, tid)).or_default();
        match kind {
            ProbeKind::Entry => {
                if open.len() == MAX_DEPTH {
                    let oldest = open.remove(0);
                    self.functions[oldest.function as usize].unmatched_entries += 1;
                }
                open.push(Open { function, ts_ns });
            }
            ProbeKind::Return => match open.iter().rposition(|o| o.function == function) {
                Some(i) => {
                    for o in open.drain(i + 1..) {
                        self.functions[o.function as usize].unmatched_entries += 1;
                    }
                    let entry = open.pop().expect("position i exists");
                    self.functions[function as usize]
                        .hist
                        .record(ts_ns.saturating_sub(entry.ts_ns));
                }
                None => self.functions[function as usize].unmatched_returns += 1,
            },
        }
        if open.is_empty() {
            self.threads.remove(&(pid, tid));
        }
    }

    /// Adds `other`'s calls (another consumer thread's share of the run: other processes,
    /// so other threads).
    pub fn absorb(&mut self, other: Latency) {
        let mut index = Vec::with_capacity(other.functions.len());
        for f in other.functions {
            let key = format!("{}\0{}", f.name, f.module);
            let i = match self.by_key.get(key.as_str()) {
                Some(&i) => {
                    let mine = &mut self.functions[i as usize];
                    mine.hist.absorb(&f.hist);
                    mine.unmatched_returns += f.unmatched_returns;
                    mine.unmatched_entries += f.unmatched_entries;
                    i
                }
                None => {
                    let i = self.functions.len() as u32;
                    self.functions.push(f);
                    self.by_key.insert(key, i);
                    i
                }
            };
            index.push(i);
        }
        for (thread, open) in other.threads {
            let open = open.into_iter().map(|o| Open {
                function: index[o.function as usize],
                ts_ns: o.ts_ns,
            });
            self.threads.entry(thread).or_default().extend(open);
        }
        self.unidentified += other.unidentified;
    }

    /// The functions seen, in order of first hit.
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// Calls of function `i` still open (entered, not returned) on some thread.
    fn in_flight(&self, i: usize) -> u64 {
        self.threads
            .values()
            .flatten()
            .filter(|o| o.function as usize == i)
            .count() as u64
    }

    /// Writes every function's summary line and log2 histogram (ns).
    pub fn write_text(&self, out: &mut impl Write) -> io::Result<()> {
        if self.functions.is_empty() {
            return writeln!(out, "latency: no entry or return hits yet");
        }
        for (i, f) in self.functions.iter().enumerate() {
            let h = &f.hist;
            let show = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), human);
            writeln!(
                out,
                "latency of {} [{}]: {} calls  min {}  p50 {}  p99 {}  max {}",
                f.name,
                f.module,
                h.count(),
                show(h.min()),
                show(h.percentile(50.0)),
                show(h.percentile(99.0)),
                show(h.max()),
            )?;
            writeln!(
                out,
                "  unmatched: {} entries, {} returns; {} in flight (histogram in ns; p50/p99 \
                 within 0.4%)",
                f.unmatched_entries,
                f.unmatched_returns,
                self.in_flight(i)
            )?;
            h.write_log2(out)?;
        }
        Ok(())
    }

    /// Writes one JSON line per function: `{"type":"latency","final","elapsed_s",
    /// "function","module","unit":"ns","count","min","p50","p99","max",
    /// "percentile_error","unmatched_entries","unmatched_returns","in_flight",
    /// "hist":[{"lo","hi","count"}…]}` (`hi` exclusive).
    pub fn write_json(&self, out: &mut impl Write, last: bool, elapsed_s: f64) -> io::Result<()> {
        #[derive(Serialize)]
        struct Line<'a> {
            r#type: &'static str,
            r#final: bool,
            elapsed_s: f64,
            function: &'a str,
            module: &'a str,
            unit: &'static str,
            count: u64,
            min: Option<u64>,
            p50: Option<u64>,
            p99: Option<u64>,
            max: Option<u64>,
            percentile_error: f64,
            unmatched_entries: u64,
            unmatched_returns: u64,
            in_flight: u64,
            hist: Vec<Bucket>,
        }
        #[derive(Serialize)]
        struct Bucket {
            lo: u64,
            hi: u64,
            count: u64,
        }
        for (i, f) in self.functions.iter().enumerate() {
            let h = &f.hist;
            let line = Line {
                r#type: "latency",
                r#final: last,
                elapsed_s,
                function: &f.name,
                module: &f.module,
                unit: "ns",
                count: h.count(),
                min: h.min(),
                p50: h.percentile(50.0),
                p99: h.percentile(99.0),
                max: h.max(),
                percentile_error: PERCENTILE_ERROR,
                unmatched_entries: f.unmatched_entries,
                unmatched_returns: f.unmatched_returns,
                in_flight: self.in_flight(i),
                hist: h
                    .log2_buckets()
                    .into_iter()
                    .map(|(lo, hi, count)| Bucket { lo, hi, count })
                    .collect(),
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "latency_tests.rs"]
mod tests;
