//! The cost of rendering a scrape (runs in the HTTP task, not the daemon loop): snapshots of
//! 10 and 1,000 probes, each with two unresolved reasons, and the resolver's counters.

use std::hint::black_box;

use criterion::Criterion;
use probed::metrics::{MetricsSnapshot, ProbeMetrics, render};

fn snapshot(probes: u32) -> MetricsSnapshot {
    MetricsSnapshot {
        probes: (0..probes)
            .map(|id| {
                let mut p = ProbeMetrics {
                    id,
                    spec: format!("uprobe:/usr/lib/x86_64-linux-gnu/libc.so.6:function_{id}"),
                    output: "hits".into(),
                    hits: 1_000_000 + u64::from(id),
                    written: 999_000,
                    lost: 12,
                    ..ProbeMetrics::default()
                };
                p.unresolved.insert("unmapped".into(), 3);
                p.unresolved.insert("not_file_backed".into(), 1);
                p
            })
            .collect(),
        uptime_seconds: 12345.678,
        ..MetricsSnapshot::default()
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(30)
        .measurement_time(std::time::Duration::from_secs(2))
        .configure_from_args();
    let mut group = c.benchmark_group("metrics_render");
    for probes in [10, 1000] {
        let snap = snapshot(probes);
        let bytes = render(&snap, "0.1.0").len();
        eprintln!("{probes} probes: {bytes} bytes of exposition text");
        group.bench_function(format!("{probes}_probes"), |b| {
            b.iter(|| render(black_box(&snap), "0.1.0"))
        });
    }
    group.finish();
    c.final_summary();
}
