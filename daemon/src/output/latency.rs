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

use serde::Serialize;

use super::{HitRecord, folded::WordBuild};
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
    by_key: HashMap<String, u32, WordBuild>,
    /// (pid, tid) → the calls it is inside, innermost last.
    threads: HashMap<(u32, u32), Vec<Open>, WordBuild>,
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
                    module: r.module.clone(),
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
mod tests {
    use super::*;
    use crate::output::Resolved;

    /// Every value lands in a bucket that holds it, buckets are contiguous and ordered, and
    /// the last one reaches u64::MAX.
    #[test]
    fn bucket_edges() {
        let probes = (0..200u64)
            .chain((7..64).flat_map(|e| {
                let p = 1u64 << e;
                [p - 1, p, p + 1, p + p / 3]
            }))
            .chain([u64::MAX]);
        for v in probes {
            let (lo, width) = bucket_range(bucket(v));
            assert!(lo <= v && v - lo < width, "{v} not in [{lo}, +{width})");
        }
        for i in 1..BUCKETS {
            let (lo, _) = bucket_range(i);
            let (plo, pw) = bucket_range(i - 1);
            assert_eq!(plo + pw, lo, "bucket {i}");
        }
        let (lo, w) = bucket_range(BUCKETS - 1);
        assert_eq!(lo.wrapping_add(w), 0, "last bucket ends at 2^64");
    }

    /// bpftrace's log2 buckets: [0], [1], [2, 4), [4, 8)…, with 1024-power labels and bars
    /// scaled to the largest bucket; empty buckets between the first and last are printed.
    #[test]
    fn log2_text() {
        let mut h = Histogram::default();
        for v in [0, 1, 1, 3, 1024, 1500, 2047, 2048] {
            h.record(v);
        }
        assert_eq!(log2_bucket(1024), 11);
        let buckets = h.log2_buckets();
        assert_eq!(buckets[0], (0, 1, 1));
        assert_eq!(buckets[1], (1, 2, 2));
        assert_eq!(buckets[2], (2, 4, 1));
        assert_eq!(buckets[3], (4, 8, 0));
        assert_eq!(buckets[buckets.len() - 2], (1024, 2048, 3));
        assert_eq!(buckets[buckets.len() - 1], (2048, 4096, 1));
        let mut out = Vec::new();
        h.write_log2(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "[0]                    1 |@@@@@@@@@@@@@@@@@                                   |"
        );
        assert_eq!(
            lines[lines.len() - 2],
            "[1K, 2K)               3 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|"
        );
        assert!(lines[lines.len() - 1].starts_with("[2K, 4K)  "), "{text}");
        assert_eq!(size_label(1 << 20), "1M");
        assert_eq!(size_label(3 << 30), "3G");
        assert_eq!(size_label(1536), "1536");
    }

    /// Percentiles by nearest rank agree with the exact values within PERCENTILE_ERROR, on
    /// spread-out and on skewed data; min and max are exact.
    #[test]
    fn percentiles_against_exact() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut values: Vec<u64> = (0..20_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 3 == 0 {
                    x % 300
                } else {
                    1_000 + x % 50_000_000
                }
            })
            .collect();
        let mut h = Histogram::default();
        for &v in &values {
            h.record(v);
        }
        values.sort_unstable();
        for p in [1.0, 10.0, 50.0, 90.0, 99.0, 99.9, 100.0] {
            let rank = ((p / 100.0 * values.len() as f64).ceil() as usize).max(1);
            let exact = values[rank - 1];
            let got = h.percentile(p).unwrap();
            let err = got.abs_diff(exact) as f64 / exact.max(1) as f64;
            assert!(
                err <= PERCENTILE_ERROR,
                "p{p}: {got} vs exact {exact} ({err})"
            );
        }
        assert_eq!(h.min(), values.first().copied());
        assert_eq!(h.max(), values.last().copied());
        assert_eq!(h.count(), values.len() as u64);
        assert_eq!(Histogram::default().percentile(50.0), None);
    }

    fn hit(kind: ProbeKind, tid: u32, symbol: &str, ts_ns: u64) -> HitRecord<'static> {
        HitRecord {
            probe: "uprobe:/bin/x:f",
            probe_id: 0,
            kind,
            pid: 7,
            tid,
            ns_pid: None,
            ns_tid: None,
            comm: "x",
            ts_ns,
            addr: 0x1000,
            resolved: Ok(Resolved {
                module: "/bin/x".into(),
                symbol: Some(symbol.into()),
                offset: Some(0),
                file_offset: 0x1000,
            }),
            via: "fast",
            args: None,
            retval: None,
            ret_addr: None,
            seq: 0,
            stack: None,
            stack_truncated: false,
            stack_stop: None,
            typed_args: None,
        }
    }

    use ProbeKind::{Entry, Return};

    /// Calls on different threads interleave without mixing; each duration is its own
    /// thread's return minus entry.
    #[test]
    fn pairs_per_thread() {
        let mut l = Latency::new();
        l.add(&hit(Entry, 1, "f", 100));
        l.add(&hit(Entry, 2, "f", 150));
        l.add(&hit(Return, 1, "f", 1_100));
        l.add(&hit(Return, 2, "f", 5_150));
        let f = &l.functions()[0];
        assert_eq!(f.hist.count(), 2);
        assert_eq!(f.hist.min(), Some(1_000));
        assert_eq!(f.hist.max(), Some(5_000));
        assert_eq!((f.unmatched_entries, f.unmatched_returns), (0, 0));
        assert!(l.threads.is_empty());
    }

    /// Recursion: each return pairs with the innermost open call of its function.
    #[test]
    fn recursion() {
        let mut l = Latency::new();
        for (kind, ts) in [
            (Entry, 0),
            (Entry, 10),
            (Entry, 20),
            (Return, 25),
            (Return, 40),
            (Return, 100),
        ] {
            l.add(&hit(kind, 1, "fact", ts));
        }
        let h = &l.functions()[0].hist;
        assert_eq!(h.count(), 3);
        assert_eq!((h.min(), h.max()), (Some(5), Some(100)));
        assert_eq!(h.percentile(50.0), Some(30));
    }

    /// A return without an open call is an unmatched return; a call left open inside a call
    /// that returned is an unmatched entry; an open call is in flight; two functions on one
    /// thread nest.
    #[test]
    fn unmatched_and_in_flight() {
        let mut l = Latency::new();
        l.add(&hit(Return, 1, "f", 5));
        l.add(&hit(Entry, 1, "f", 10));
        l.add(&hit(Entry, 1, "g", 20));
        l.add(&hit(Entry, 1, "f", 30)); // its return is lost
        l.add(&hit(Return, 1, "g", 50)); // pairs with g at 20; f at 30 is unmatched
        l.add(&hit(Entry, 2, "g", 60)); // still open at the report
        let f = &l.functions()[0];
        let g = &l.functions()[1];
        assert_eq!((f.name.as_str(), g.name.as_str()), ("f", "g"));
        assert_eq!(f.unmatched_returns, 1);
        assert_eq!(f.unmatched_entries, 1);
        assert_eq!(f.hist.count(), 0);
        assert_eq!(g.hist.count(), 1);
        assert_eq!(g.hist.min(), Some(30));
        assert_eq!(l.in_flight(0), 1, "f entered at 10");
        assert_eq!(l.in_flight(1), 1, "g on thread 2");
        let mut out = Vec::new();
        l.write_json(&mut out, true, 1.0).unwrap();
        let lines: Vec<serde_json::Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["type"], "latency");
        assert_eq!(lines[0]["function"], "f");
        assert_eq!(lines[0]["unmatched_returns"], 1);
        assert!(lines[0]["p50"].is_null());
        assert_eq!(lines[1]["count"], 1);
        assert_eq!(lines[1]["p50"], 30);
        assert_eq!(lines[1]["hist"][0]["lo"], 16);
        assert_eq!(lines[1]["hist"][0]["hi"], 32);
    }

    /// Past MAX_DEPTH open calls the oldest is dropped and counted; memory stays bounded.
    #[test]
    fn depth_bound() {
        let mut l = Latency::new();
        for i in 0..MAX_DEPTH as u64 + 3 {
            l.add(&hit(Entry, 1, "f", i));
        }
        assert_eq!(l.functions()[0].unmatched_entries, 3);
        assert_eq!(l.threads[&(7, 1)].len(), MAX_DEPTH);
    }

    /// The text report names the function, the percentiles in readable units and the
    /// histogram.
    #[test]
    fn text_report() {
        let mut l = Latency::new();
        for (i, ms) in [2u64, 5, 10].into_iter().enumerate() {
            let t0 = i as u64 * 100_000_000;
            l.add(&hit(Entry, 1, "work", t0));
            l.add(&hit(Return, 1, "work", t0 + ms * 1_000_000));
        }
        let mut out = Vec::new();
        l.write_text(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("latency of work [/bin/x]: 3 calls  min 2.000ms"),
            "{text}"
        );
        // 5 ms reported as its bucket's midpoint: 4.980736 ms + 32768/2 ns.
        assert!(text.contains("p50 4.997ms"), "{text}");
        assert!(text.contains("[1M, 2M)"), "{text}");
        assert!(text.contains("[8M, 16M)"), "{text}");
    }
}
