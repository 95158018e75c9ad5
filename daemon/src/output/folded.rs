//! `--aggregate stack` and `--flamegraph`: hits counted per distinct user stack, printed as
//! folded stacks (`outer;…;inner count`, the input format of flame graph tools) and drawn as
//! a flame graph SVG by `inferno`.
//!
//! Frame names (`frame_name`), so that the same function in every process folds together:
//! - a frame with a symbol is the demangled symbol alone (no offset, no module);
//! - a frame whose module is known but no symbol covers it is `[libfoo.so]` (the module's
//!   file name), or `libfoo.so+0xOFF` when it carries an offset;
//! - a frame nothing is known of (unmapped, process gone without a picture) is `[unknown]`.
//!
//! `;` would split a frame in two and a line break would end the line, so in names they are
//! written `,` and ` ` (`<[u8; 8] as Debug>::fmt` folds as `<[u8, 8] as Debug>::fmt`).
//! A hit without a stack (its probe does not capture one) folds as a one-frame stack: the
//! hit's own location, named by the same rule.
//!
//! Done in userspace from resolved hits, not in a BPF stack map. Measured (`cargo xtask bench
//! stacks`, 21-frame stacks, the 2-core CI-class VM): counting costs ~110 ns per hit (~5 ns
//! per frame; `output::tests::aggregation_cost`), and the daemon spends 2.6 µs per hit with
//! `--aggregate stack` (mostly resolving 21 frames: resolver ≤ 30 ns, symbolizer ~37 ns, the
//! rest building each frame), against 6.6 µs when every hit is written as JSON. A BPF stack
//! map with a count per stack id would save the daemon those 2.6 µs and a ~1 KiB ring-buffer
//! record per hit, but not the traced program's cost, which is the uprobe and the stack walk
//! (78k calls/s with stacks aggregated or written alike, 92k without stacks, 53M untraced);
//! and its raw addresses could only be symbolized after the fact, when a dlclosed library
//! or an exited process no longer resolves (and every ASLR layout is a key of its own).

use std::{
    collections::HashMap,
    io::{self, Write},
};

use rustc_hash::FxBuildHasher;
use serde::Serialize;

use super::{Frame, HitRecord, Resolved};

/// Most distinct stacks kept; hits of further new stacks are counted under
/// [`OVERFLOW_STACK`], so the counts still add up to the hits.
pub const MAX_STACKS: usize = 65_536;

/// The folded "stack" that counts hits of new stacks once [`MAX_STACKS`] are kept.
pub const OVERFLOW_STACK: &str = "[too many distinct stacks]";

/// Why a flame graph could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum FlamegraphError {
    /// No hit was counted: there is nothing to draw (the file says so).
    #[error("no stacks to draw (no hits were counted)")]
    Empty,
    /// Writing the SVG failed.
    #[error("cannot write the flame graph")]
    Io(#[source] io::Error),
}

/// Hits counted per distinct stack.
#[derive(Debug, Default)]
pub struct StackCounts {
    /// Folded stack (outermost first) → its entry in `counts`. FxHash (rustc-hash 2, whose
    /// byte hashing is not a one-lane multiply chain): the keys are ~1 KB folded stacks
    /// nobody picks to make collisions, which std's SipHash takes 150–300 ns to hash.
    /// Measured (`output::tests::aggregation_cost`, 5 runs each, loaded 2-core VM): 352–404
    /// ns per hit, against 386–459 ns with the hand-written four-lane FxHash it replaced.
    index: HashMap<String, usize, FxBuildHasher>,
    /// Hits per entry: a hit whose stack is known by its entry (`count_entry`, the stack
    /// memo's) is counted without hashing its kilobyte of folded text.
    counts: Vec<u64>,
    /// The entry counted last.
    last: Option<usize>,
    /// Hits counted.
    hits: u64,
    /// Hits that came without a stack (folded as their own location).
    without_stack: u64,
    /// Reused buffer for the folded key of the hit being counted.
    key: String,
}

impl StackCounts {
    /// No hits yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one hit under its stack (or, without one, its own location).
    pub fn add(&mut self, hit: &HitRecord<'_>) {
        let mut key = std::mem::take(&mut self.key);
        key.clear();
        match &hit.stack {
            Some(frames) if !frames.is_empty() => fold_into(&mut key, frames),
            _ => {
                self.without_stack += 1;
                hit_name(&mut key, &hit.resolved);
            }
        }
        self.count_n(&key, 1);
        self.key = key;
    }

    /// The entry of the hit [`StackCounts::add`] counted last (`None` before any).
    pub fn last_entry(&self) -> Option<usize> {
        self.last
    }

    /// Counts one more hit of entry `entry` (as [`StackCounts::last_entry`] gave it for an
    /// earlier hit with the same stack).
    pub fn count_entry(&mut self, entry: usize) {
        self.hits += 1;
        self.counts[entry] += 1;
        self.last = Some(entry);
    }

    /// Counts `n` hits of the folded stack `key`; past [`MAX_STACKS`] distinct stacks, a new
    /// one counts under [`OVERFLOW_STACK`].
    fn count_n(&mut self, key: &str, n: u64) {
        self.hits += n;
        let entry = match self.index.get(key) {
            Some(&e) => e,
            None => {
                let key = if self.index.len() < MAX_STACKS {
                    key
                } else {
                    OVERFLOW_STACK
                };
                let next = self.counts.len();
                let e = *self.index.entry(key.to_owned()).or_insert(next);
                if e == next {
                    self.counts.push(0);
                }
                e
            }
        };
        self.counts[entry] += n;
        self.last = Some(entry);
    }

    /// Adds `other`'s counts (another consumer thread's share of the run).
    pub fn absorb(&mut self, other: StackCounts) {
        // `count_n` counts the hits too (a run's hits are the sum of its entries' counts).
        for (key, e) in &other.index {
            self.count_n(key, other.counts[*e]);
        }
        self.without_stack += other.without_stack;
    }

    /// Hits counted.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Hits counted that had no stack.
    pub fn without_stack(&self) -> u64 {
        self.without_stack
    }

    /// Every distinct stack with its count, ordered by folded text (the order flame graph
    /// tools sort into, and stable from one report to the next).
    pub fn stacks(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self
            .index
            .iter()
            .map(|(k, &e)| (k.as_str(), self.counts[e]))
            .collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Writes one `outer;…;inner count` line per distinct stack.
    pub fn write_folded(&self, out: &mut impl Write) -> io::Result<()> {
        for (stack, n) in self.stacks() {
            writeln!(out, "{stack} {n}")?;
        }
        Ok(())
    }

    /// Writes `{"type":"folded","final","elapsed_s","hits","without_stack","stacks":[{"stack",
    /// "count"}…]}` as one JSON line.
    pub fn write_json(&self, out: &mut impl Write, last: bool, elapsed_s: f64) -> io::Result<()> {
        #[derive(Serialize)]
        struct Line<'a> {
            r#type: &'static str,
            r#final: bool,
            elapsed_s: f64,
            hits: u64,
            without_stack: u64,
            stacks: Vec<Stack<'a>>,
        }
        #[derive(Serialize)]
        struct Stack<'a> {
            stack: &'a str,
            count: u64,
        }
        let line = Line {
            r#type: "folded",
            r#final: last,
            elapsed_s,
            hits: self.hits,
            without_stack: self.without_stack,
            stacks: self
                .stacks()
                .into_iter()
                .map(|(stack, count)| Stack { stack, count })
                .collect(),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")
    }

    /// Draws the counted stacks as a flame graph SVG (inferno) titled `title`.
    pub fn write_flamegraph(&self, title: &str, out: impl Write) -> Result<(), FlamegraphError> {
        let lines: Vec<String> = self
            .stacks()
            .into_iter()
            .map(|(stack, n)| format!("{stack} {n}"))
            .collect();
        let mut options = inferno::flamegraph::Options::default();
        title.clone_into(&mut options.title);
        "hits".clone_into(&mut options.count_name);
        // Colours from the function name, so two runs' pictures compare.
        options.hash = true;
        let empty = lines.is_empty();
        let drawn =
            inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out);
        match drawn {
            // inferno still writes an SVG saying there was no input.
            Err(_) if empty => Err(FlamegraphError::Empty),
            Err(e) => Err(FlamegraphError::Io(e)),
            Ok(()) => Ok(()),
        }
    }
}

/// Appends the frames (innermost first) to `key` outermost first, `;`-separated.
fn fold_into(key: &mut String, frames: &[Frame]) {
    let start = key.len();
    append_frames(key, frames, String::push_str);
    // Names almost never hold a `;` or a line break: check the whole line once (two SIMD
    // scans) rather than every name, and fold again, cleaning, when one does.
    let line = &key.as_bytes()[start..];
    let clean = memchr::memchr2(b'\n', b'\r', line).is_none()
        && memchr::memchr_iter(b';', line).count() + 1 == frames.len();
    if !clean {
        key.truncate(start);
        append_frames(key, frames, push_clean);
    }
}

/// Appends the frames outermost first, each name appended by `push`.
fn append_frames(key: &mut String, frames: &[Frame], push: fn(&mut String, &str)) {
    for (i, frame) in frames.iter().rev().enumerate() {
        if i > 0 {
            key.push(';');
        }
        name_with(key, frame, push);
    }
}

/// Appends the folded name of `frame` (see the module doc for the rule).
pub fn frame_name(out: &mut String, frame: &Frame) {
    name_with(out, frame, push_clean);
}

/// [`frame_name`], with names appended by `push`.
fn name_with(out: &mut String, frame: &Frame, push: fn(&mut String, &str)) {
    match (&frame.symbol, &frame.module, frame.offset) {
        (Some(symbol), _, _) => push(out, symbol),
        (None, Some(module), Some(offset)) => {
            push(out, file_name(module));
            out.push_str(&format!("+{offset:#x}"));
        }
        (None, Some(module), None) => {
            out.push('[');
            push(out, file_name(module));
            out.push(']');
        }
        (None, None, _) => out.push_str("[unknown]"),
    }
}

/// Appends the folded name of a hit's own location.
fn hit_name(out: &mut String, resolved: &Result<Resolved, &'static str>) {
    match resolved {
        Ok(r) => frame_name(
            out,
            &Frame {
                addr: 0,
                module: Some(r.module.clone()),
                symbol: r.symbol.clone(),
                offset: r.symbol.is_none().then_some(r.file_offset),
                unresolved: None,
                file: None,
            },
        ),
        Err(_) => out.push_str("[unknown]"),
    }
}

/// The last component of a module path.
fn file_name(module: &str) -> &str {
    module.rsplit('/').next().unwrap_or(module)
}

/// Appends `name` with the characters that would break a folded line replaced.
fn push_clean(out: &mut String, name: &str) {
    if memchr::memchr3(b';', b'\n', b'\r', name.as_bytes()).is_some() {
        out.extend(name.chars().map(|c| match c {
            ';' => ',',
            '\n' | '\r' => ' ',
            c => c,
        }));
    } else {
        out.push_str(name);
    }
}

#[cfg(test)]
#[path = "folded_tests.rs"]
mod tests;
