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
    hash::{BuildHasherDefault, Hasher},
    io::{self, Write},
};

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
    /// Folded stack (outermost first) → hits.
    counts: HashMap<String, u64, WordBuild>,
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
        self.count(&key);
        self.key = key;
    }

    /// Counts one hit of the folded stack `key`.
    fn count(&mut self, key: &str) {
        self.hits += 1;
        if let Some(n) = self.counts.get_mut(key) {
            *n += 1;
        } else if self.counts.len() < MAX_STACKS {
            self.counts.insert(key.to_owned(), 1);
        } else {
            *self.counts.entry(OVERFLOW_STACK.to_owned()).or_default() += 1;
        }
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
        let mut v: Vec<(&str, u64)> = self.counts.iter().map(|(k, &n)| (k.as_str(), n)).collect();
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

/// FxHash in four independent lanes of 8-byte words: the keys are ~1 KB folded stacks, which
/// std's SipHash, or a one-lane FxHash (a multiply chain), takes 150–300 ns to hash; nobody
/// picks them to make collisions.
#[derive(Default)]
pub(super) struct WordHasher([u64; 4]);

/// `BuildHasher` of [`WordHasher`].
pub(super) type WordBuild = BuildHasherDefault<WordHasher>;

/// FxHash's odd multiplier.
const FX: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let mut blocks = bytes.chunks_exact(32);
        for block in &mut blocks {
            for (lane, w) in self.0.iter_mut().zip(block.chunks_exact(8)) {
                *lane = (lane.rotate_left(5) ^ word(w)).wrapping_mul(FX);
            }
        }
        let mut tail = [0u8; 32];
        let rest = blocks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        for (lane, w) in self.0.iter_mut().zip(tail.chunks_exact(8)) {
            *lane = (lane.rotate_left(5) ^ word(w) ^ rest.len() as u64).wrapping_mul(FX);
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0[0] = (self.0[0].rotate_left(5) ^ n).wrapping_mul(FX);
    }

    fn finish(&self) -> u64 {
        let h = self
            .0
            .iter()
            .fold(0u64, |h, &lane| (h.rotate_left(5) ^ lane).wrapping_mul(FX));
        h ^ (h >> 32)
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
mod tests {
    use super::*;
    use crate::spec::ProbeKind;

    fn frame(symbol: &str) -> Frame {
        Frame {
            addr: 0x1000,
            module: Some("/usr/bin/app".into()),
            symbol: Some(symbol.into()),
            offset: Some(4),
            unresolved: None,
            file: None,
        }
    }

    /// A hit with the stack `innermost_first`.
    fn hit(stack: Option<Vec<Frame>>) -> HitRecord<'static> {
        HitRecord {
            probe: "uprobe:/usr/bin/app:f",
            probe_id: 0,
            kind: ProbeKind::Entry,
            pid: 1,
            tid: 1,
            ns_pid: None,
            ns_tid: None,
            comm: "app",
            ts_ns: 1,
            addr: 0x1000,
            resolved: Ok(Resolved {
                module: "/usr/bin/app".into(),
                symbol: Some("f".into()),
                offset: Some(0),
                file_offset: 0x1000,
            }),
            via: "fast",
            args: None,
            retval: None,
            ret_addr: None,
            seq: 0,
            stack,
            stack_truncated: false,
            stack_stop: None,
            typed_args: None,
        }
    }

    fn chain(names: &[&str]) -> Option<Vec<Frame>> {
        Some(names.iter().map(|n| frame(n)).collect())
    }

    /// Counts add up to the hits, stacks are printed outermost first, one line per distinct
    /// stack, ordered by their text.
    #[test]
    fn folds_and_counts() {
        let mut c = StackCounts::new();
        for _ in 0..3 {
            c.add(&hit(chain(&["f", "b", "a", "main"])));
        }
        c.add(&hit(chain(&["f", "c", "main"])));
        c.add(&hit(chain(&["f", "b", "a", "main"])));
        assert_eq!(c.hits(), 5);
        let stacks = c.stacks();
        assert_eq!(stacks, vec![("main;a;b;f", 4), ("main;c;f", 1)]);
        assert_eq!(stacks.iter().map(|s| s.1).sum::<u64>(), c.hits());
        let mut out = Vec::new();
        c.write_folded(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "main;a;b;f 4\nmain;c;f 1\n"
        );
    }

    /// Unresolved frames follow the documented rule: module file name with or without an
    /// offset, `[unknown]` without a module; `;` and line breaks cannot split a frame.
    #[test]
    fn unresolved_frames_and_odd_names() {
        let mut frames = chain(&["f", "<[u8; 8] as Debug>::fmt", "main"]).unwrap();
        frames.insert(
            1,
            Frame {
                addr: 0x7f00_0000_1234,
                module: Some("/lib/x86_64-linux-gnu/libstripped.so.1".into()),
                symbol: None,
                offset: None,
                unresolved: Some("no_symbol"),
                file: None,
            },
        );
        frames.insert(
            2,
            Frame {
                addr: 0x7f00_0000_5678,
                module: Some("/opt/lib/libjit.so".into()),
                symbol: None,
                offset: Some(0x5678),
                unresolved: Some("no_symbol"),
                file: None,
            },
        );
        frames.push(Frame {
            addr: 0xdead,
            module: None,
            symbol: None,
            offset: None,
            unresolved: Some("unmapped"),
            file: None,
        });
        let mut c = StackCounts::new();
        c.add(&hit(Some(frames)));
        c.add(&hit(chain(&["line\nbreak"])));
        assert_eq!(
            c.stacks(),
            vec![
                (
                    "[unknown];main;<[u8, 8] as Debug>::fmt;libjit.so+0x5678;[libstripped.so.1];f",
                    1
                ),
                ("line break", 1),
            ]
        );
    }

    /// A hit without a stack folds as its own location and is counted apart.
    #[test]
    fn hit_without_stack() {
        let mut c = StackCounts::new();
        c.add(&hit(None));
        let mut h = hit(Some(Vec::new()));
        h.resolved = Err("process_gone");
        c.add(&h);
        assert_eq!(c.stacks(), vec![("[unknown]", 1), ("f", 1)]);
        assert_eq!(c.without_stack(), 2);
    }

    /// Past MAX_STACKS distinct stacks new ones are counted under one overflow line, so the
    /// counts still add up; known stacks keep counting.
    #[test]
    fn bounded_distinct_stacks() {
        let mut c = StackCounts::new();
        for i in 0..MAX_STACKS + 10 {
            c.count(&format!("main;f{i}"));
        }
        c.count("main;f0");
        assert_eq!(c.counts.len(), MAX_STACKS + 1);
        assert_eq!(c.counts[OVERFLOW_STACK], 10);
        assert_eq!(c.counts["main;f0"], 2);
        assert_eq!(c.counts.values().sum::<u64>(), c.hits());
    }

    /// The JSON form carries every stack and its count, and says whether it is the final one.
    #[test]
    fn json_line() {
        let mut c = StackCounts::new();
        c.add(&hit(chain(&["f", "main"])));
        c.add(&hit(chain(&["f", "main"])));
        let mut out = Vec::new();
        c.write_json(&mut out, true, 1.5).unwrap();
        assert!(out.ends_with(b"\n"));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "folded");
        assert_eq!(v["final"], true);
        assert_eq!(v["hits"], 2);
        assert_eq!(v["stacks"][0]["stack"], "main;f");
        assert_eq!(v["stacks"][0]["count"], 2);
    }

    /// Every `<title>` of an SVG (quick-xml); panics if the SVG is not well-formed XML.
    pub(crate) fn svg_titles(svg: &[u8]) -> Vec<String> {
        use quick_xml::events::Event;
        let mut reader = quick_xml::Reader::from_reader(svg);
        let mut buf = Vec::new();
        let mut titles = Vec::new();
        let mut in_title = false;
        let mut depth = 0i64;
        loop {
            match reader.read_event_into(&mut buf).expect("well-formed XML") {
                Event::Start(e) => {
                    depth += 1;
                    in_title = e.name().as_ref() == b"title";
                    if in_title {
                        titles.push(String::new());
                    }
                }
                Event::End(_) => {
                    depth -= 1;
                    in_title = false;
                }
                Event::Text(t) if in_title => {
                    let text = t.decode().expect("UTF-8 text");
                    titles.last_mut().expect("in a title").push_str(&text);
                }
                Event::GeneralRef(r) if in_title => {
                    // quick-xml reports `&lt;` and friends apart from the text around them.
                    let c = match r.decode().expect("UTF-8 ref").as_ref() {
                        "lt" => "<",
                        "gt" => ">",
                        "amp" => "&",
                        "quot" => "\"",
                        "apos" => "'",
                        other => panic!("unexpected entity {other}"),
                    };
                    titles.last_mut().expect("in a title").push_str(c);
                }
                Event::Eof => break,
                _ => {}
            }
            buf.clear();
        }
        assert_eq!(depth, 0, "unbalanced elements");
        titles
    }

    /// The flame graph is well-formed XML whose frame titles name every function with its
    /// hit count, C++ template names included (escaped for XML).
    #[test]
    fn flamegraph_svg() {
        let mut c = StackCounts::new();
        for _ in 0..3 {
            c.add(&hit(chain(&["f", "b", "a", "main"])));
        }
        c.add(&hit(chain(&["ns::Box<int>::get()", "main"])));
        let mut svg = Vec::new();
        c.write_flamegraph("probed test", &mut svg).unwrap();
        let titles = svg_titles(&svg);
        for name in ["main (4 hits", "a (3 hits", "b (3 hits", "f (3 hits"] {
            assert!(
                titles.iter().any(|t| t.starts_with(name)),
                "{name} not in {titles:?}"
            );
        }
        assert!(
            titles
                .iter()
                .any(|t| t.starts_with("ns::Box<int>::get() (1 hits")),
            "{titles:?}"
        );
    }

    /// Nothing counted: the flame graph says so as an error (the file still holds an SVG).
    #[test]
    fn empty_flamegraph() {
        let mut svg = Vec::new();
        let err = StackCounts::new()
            .write_flamegraph("t", &mut svg)
            .unwrap_err();
        assert!(matches!(err, FlamegraphError::Empty), "{err}");
    }
}
