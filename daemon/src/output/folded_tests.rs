//! Tests of `--aggregate stack`: folding and counting, unresolved frames and odd names, hits
//! without a stack, the bound on distinct stacks, the JSON line and the flame graph.

use super::*;

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
        comm: "app",
        resolved: Ok(Resolved {
            module: "/usr/bin/app".into(),
            symbol: Some("f".into()),
            offset: Some(0),
            file_offset: 0x1000,
        }),
        stack,
        ..crate::output::record::example_hit()
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
        c.count_n(&format!("main;f{i}"), 1);
    }
    c.count_n("main;f0", 1);
    let count = |c: &StackCounts, key: &str| c.counts[c.index[key]];
    assert_eq!(c.index.len(), MAX_STACKS + 1);
    assert_eq!(count(&c, OVERFLOW_STACK), 10);
    assert_eq!(count(&c, "main;f0"), 2);
    assert_eq!(c.counts.iter().sum::<u64>(), c.hits());
    // A stack known by its entry (the memo's way) counts where its text would.
    let entry = c.index["main;f1"];
    c.count_entry(entry);
    assert_eq!(count(&c, "main;f1"), 2);
    assert_eq!(c.last_entry(), Some(entry));
    assert_eq!(c.counts.iter().sum::<u64>(), c.hits());
}

/// Two consumer threads' counts add up by stack, the overflow included.
#[test]
fn absorbed_counts_add_by_stack() {
    let mut a = StackCounts::new();
    let mut b = StackCounts::new();
    a.count_n("main;f", 2);
    b.count_n("main;g", 1);
    b.count_n("main;f", 3);
    a.absorb(b);
    assert_eq!(a.stacks(), vec![("main;f", 5), ("main;g", 1)]);
    assert_eq!(a.hits(), 6);
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
