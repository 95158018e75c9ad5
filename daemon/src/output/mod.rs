//! Output: resolved hits and run summaries, as JSON lines or aligned text for people.

pub mod folded;
pub mod json;
pub mod latency;
pub mod record;
pub mod sink;
pub mod summary;
pub mod text;

use std::io::{self, Write};

pub use folded::StackCounts;
pub use latency::Latency;
pub use record::{Frame, HitRecord, Resolved};
pub use summary::{ProbeSummary, Summary};

/// What a run aggregates (`--aggregate stack`, `--flamegraph`, `--latency`), fed with every
/// hit the pipeline handles.
#[derive(Debug, Default)]
pub struct Aggregations {
    /// Hits per distinct stack (`--aggregate stack` or `--flamegraph`).
    pub stacks: Option<StackCounts>,
    /// Whether the stacks are printed (`--aggregate stack`), not only drawn.
    pub print_stacks: bool,
    /// Entry/return pairing and durations (`--latency`).
    pub latency: Option<Latency>,
}

impl Aggregations {
    /// Adds `other`'s aggregations (another consumer thread's share of the run).
    pub fn absorb(&mut self, other: Aggregations) {
        if let (Some(mine), Some(theirs)) = (&mut self.stacks, other.stacks) {
            mine.absorb(theirs);
        }
        if let (Some(mine), Some(theirs)) = (&mut self.latency, other.latency) {
            mine.absorb(theirs);
        }
    }

    /// Whether nothing is aggregated.
    pub fn is_empty(&self) -> bool {
        self.stacks.is_none() && self.latency.is_none()
    }

    /// Takes one hit into every aggregation.
    pub fn add(&mut self, hit: &HitRecord<'_>) {
        if let Some(stacks) = &mut self.stacks {
            stacks.add(hit);
        }
        if let Some(latency) = &mut self.latency {
            latency.add(hit);
        }
    }
}

/// The output formats of `probed trace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Text,
    /// One JSON object per line.
    Json,
}

/// Writes hits and the final summary in one format.
pub struct Writer<W: Write> {
    /// The destination (stdout for `probed trace`).
    out: W,
    /// The format.
    format: Format,
    /// Whether the text header has been written.
    header_done: bool,
}

impl<W: Write> Writer<W> {
    /// A writer of `format` onto `out`.
    pub fn new(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            header_done: false,
        }
    }

    /// This writer's text header is written by another (several consumer threads share
    /// one output).
    pub fn header_written(mut self) -> Self {
        self.header_done = true;
        self
    }

    /// Writes the text header now (before any hit) and flushes.
    pub fn header_now(&mut self) -> io::Result<()> {
        if self.format == Format::Text && !self.header_done {
            text::write_header(&mut self.out)?;
            self.header_done = true;
        }
        self.out.flush()
    }

    /// Writes one hit.
    pub fn hit(&mut self, hit: &HitRecord<'_>) -> io::Result<()> {
        match self.format {
            Format::Json => json::write_hit(&mut self.out, hit),
            Format::Text => {
                if !self.header_done {
                    text::write_header(&mut self.out)?;
                    self.header_done = true;
                }
                text::write_hit(&mut self.out, hit)
            }
        }
    }

    /// Writes the printed aggregations as they stand after `elapsed_s` seconds (`last`: at the
    /// end of the run); text, or `{"type":"folded"}` / `{"type":"latency"}` JSON lines.
    pub fn aggregations(
        &mut self,
        agg: &Aggregations,
        last: bool,
        elapsed_s: f64,
    ) -> io::Result<()> {
        let stacks = agg.stacks.as_ref().filter(|_| agg.print_stacks);
        let when = if last {
            "at the end".to_owned()
        } else {
            format!("after {elapsed_s:.1}s")
        };
        match self.format {
            Format::Json => {
                if let Some(s) = stacks {
                    s.write_json(&mut self.out, last, elapsed_s)?;
                }
                if let Some(l) = &agg.latency {
                    l.write_json(&mut self.out, last, elapsed_s)?;
                }
            }
            Format::Text => {
                if let Some(s) = stacks {
                    writeln!(
                        self.out,
                        "--- folded stacks {when}: {} hits, {} distinct (outermost first, \
                         count last) ---",
                        s.hits(),
                        s.stacks().len()
                    )?;
                    s.write_folded(&mut self.out)?;
                }
                if let Some(l) = &agg.latency {
                    writeln!(self.out, "--- latency {when} ---")?;
                    l.write_text(&mut self.out)?;
                }
            }
        }
        self.out.flush()
    }

    /// Writes the summary and flushes.
    pub fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        match self.format {
            Format::Json => json::write_summary(&mut self.out, summary)?,
            Format::Text => text::write_summary(&mut self.out, summary)?,
        }
        self.out.flush()
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::{hint::black_box, time::Instant};

    use super::*;
    use crate::spec::ProbeKind;

    /// Hits of `stacks` distinct 20-frame stacks, with names as long as real C++/Rust ones.
    fn hits(stacks: usize) -> Vec<HitRecord<'static>> {
        (0..stacks)
            .map(|s| HitRecord {
                probe: "uprobe:/usr/bin/app:f",
                kind: if s % 2 == 0 {
                    ProbeKind::Entry
                } else {
                    ProbeKind::Return
                },
                comm: "app",
                ts_ns: s as u64 * 1_000,
                resolved: Ok(Resolved {
                    module: "/usr/bin/app".into(),
                    symbol: Some("app::server::handle_request".into()),
                    offset: Some(0),
                    file_offset: 0x1000,
                }),
                stack: Some(
                    (0..20)
                        .map(|f| Frame {
                            addr: 0x5555_0000 + f,
                            module: Some("/usr/bin/app".into()),
                            symbol: Some(
                                format!("app::module_{}::function_number_{f}", s / 2).into(),
                            ),
                            offset: Some(f),
                            unresolved: None,
                            file: None,
                        })
                        .collect(),
                ),
                ..crate::output::record::example_hit()
            })
            .collect()
    }

    /// The aggregations print before the summary: in text, a folded-stacks section and a
    /// latency section (folded stacks only when asked, not for a flame graph alone); in JSON,
    /// one `folded` line and one `latency` line per function, marked final.
    #[test]
    fn aggregations_output() {
        let mut agg = Aggregations {
            stacks: Some(StackCounts::new()),
            print_stacks: true,
            latency: Some(Latency::new()),
        };
        for hit in &hits(2) {
            agg.add(hit);
        }
        let mut text = Writer::new(Vec::new(), Format::Text);
        text.aggregations(&agg, true, 1.0).unwrap();
        let text = String::from_utf8(text.out).unwrap();
        assert!(
            text.starts_with("--- folded stacks at the end: 2 hits, 1 distinct"),
            "{text}"
        );
        assert!(
            text.contains("app::module_0::function_number_0 2\n"),
            "{text}"
        );
        assert!(text.contains("--- latency at the end ---\nlatency of app::server::handle_request [/usr/bin/app]: 1 calls"), "{text}");

        let mut json = Writer::new(Vec::new(), Format::Json);
        json.aggregations(&agg, false, 2.5).unwrap();
        let lines: Vec<serde_json::Value> = json
            .out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["type"], "folded");
        assert_eq!(lines[0]["final"], false);
        assert_eq!(lines[0]["elapsed_s"], 2.5);
        assert_eq!(lines[1]["type"], "latency");
        assert_eq!(lines[1]["count"], 1);

        agg.print_stacks = false;
        let mut text = Writer::new(Vec::new(), Format::Text);
        text.aggregations(&agg, true, 1.0).unwrap();
        let text = String::from_utf8(text.out).unwrap();
        assert!(!text.contains("folded"), "{text}");
    }

    /// The userspace cost of aggregating: ns per hit for stack counting (20-frame stacks, 32
    /// distinct) and for latency pairing (alternating entry/return). Timing: run in release
    /// (`cargo xtask bench stacks` does); fails only if a hit costs over 5 µs, which would
    /// make aggregation, not the uprobe, the bottleneck.
    #[test]
    #[ignore = "timing; run in release: cargo test --release -p probed --lib aggregation_cost -- --ignored --nocapture"]
    fn aggregation_cost() {
        const ROUNDS: usize = 20_000;
        let hits = hits(64);
        let time = |agg: &mut Aggregations| {
            let started = Instant::now();
            for _ in 0..ROUNDS {
                for hit in &hits {
                    agg.add(black_box(hit));
                }
            }
            started.elapsed().as_nanos() as f64 / (ROUNDS * hits.len()) as f64
        };
        let mut stacks = Aggregations {
            stacks: Some(StackCounts::new()),
            ..Aggregations::default()
        };
        let folded_ns = time(&mut stacks);
        let mut latency = Aggregations {
            latency: Some(Latency::new()),
            ..Aggregations::default()
        };
        let latency_ns = time(&mut latency);
        let counted = stacks.stacks.as_ref().map_or(0, StackCounts::hits);
        assert_eq!(counted, (ROUNDS * hits.len()) as u64);
        let paired = latency
            .latency
            .as_ref()
            .map_or(0, |l| l.functions()[0].hist.count());
        assert_eq!(paired, (ROUNDS * hits.len() / 2) as u64);
        println!(
            "aggregation_cost folded_ns_per_hit={folded_ns:.1} latency_ns_per_hit={latency_ns:.1}"
        );
        assert!(folded_ns < 5_000.0 && latency_ns < 5_000.0);
    }
}
