//! Tests of `--latency`: histogram buckets and percentiles, entry/return pairing per thread
//! (recursion, unmatched returns, entries in flight, the depth bound) and the reports.

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
        kind,
        pid: 7,
        tid,
        ts_ns,
        resolved: Ok(Resolved {
            module: "/bin/x".into(),
            symbol: Some(symbol.into()),
            offset: Some(0),
            file_offset: 0x1000,
        }),
        ..crate::output::record::example_hit()
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
