//! The aggregations a `probed trace` run asks for (`--aggregate stack`, `--latency`,
//! `--flamegraph`), and the flame graph drawn from the counted stacks at its end.
//!
//! Apart from the run (`trace.rs`): what the run counts and draws, not how it runs.

use std::{
    fs::File,
    io::{BufWriter, Write},
};

use anyhow::Context as _;

use crate::{
    cli::{Aggregate, TraceArgs},
    output::{Aggregations, Latency, StackCounts, folded::FlamegraphError},
};

/// The aggregations `args` ask for.
pub(super) fn aggregations(args: &TraceArgs) -> Aggregations {
    let stacks = args.aggregate == Some(Aggregate::Stack);
    Aggregations {
        stacks: (stacks || args.flamegraph.is_some()).then(StackCounts::new),
        print_stacks: stacks,
        latency: args.latency.then(Latency::new),
    }
}

/// Writes the flame graph of the counted stacks into `file` (at `path`); a run that counted
/// nothing gets a picture saying so, and a warning.
pub(super) fn draw_flamegraph(
    aggregations: &Aggregations,
    specs: &[String],
    path: &std::path::Path,
    file: File,
) -> anyhow::Result<()> {
    let Some(stacks) = &aggregations.stacks else {
        return Ok(());
    };
    let mut out = BufWriter::new(file);
    let title = format!("probed: {}", specs.join(" "));
    match stacks.write_flamegraph(&title, &mut out) {
        Ok(()) => {}
        Err(err @ FlamegraphError::Empty) => {
            eprintln!("probed: warning: {}: {err}", path.display());
        }
        Err(err) => {
            return Err(err).with_context(|| format!("cannot write {}", path.display()));
        }
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}
