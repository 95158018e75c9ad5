//! A strict parser of the Prometheus text exposition format 0.0.4, for the tests of
//! `render.rs` (render_tests.rs): written from the format's description, not from `render`,
//! so that the rendered text reading back through it means something. Its own test checks
//! that it rejects what the format forbids.

use std::collections::{BTreeMap, BTreeSet};

/// One parsed sample: metric name, labels, value.
pub(super) type Sample = (String, BTreeMap<String, String>, f64);

/// Parses text exposition format 0.0.4 strictly: every line ends with `\n`; `# HELP` and
/// `# TYPE` at most once per family and before its samples; a family's samples contiguous;
/// names and label names from the legal character sets; label values with only the `\\`,
/// `\"` and `\n` escapes; values Go-float syntax. Returns the samples and each family's type.
pub(super) fn parse(text: &str) -> Result<(Vec<Sample>, BTreeMap<String, String>), String> {
    let body = text.strip_suffix('\n').ok_or("no final line feed")?;
    let mut types = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut closed = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    for line in body.split('\n') {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest
                .split_once(' ')
                .ok_or(format!("HELP without text: {line}"))?;
            check_name(name, true)?;
            unescape(help, false)?;
            if !helps.insert(name.to_owned()) {
                return Err(format!("second HELP for {name}"));
            }
            enter(&mut current, &mut closed, name)?;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
            check_name(name, true)?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("unknown type {kind}"));
            }
            if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                return Err(format!("second TYPE for {name}"));
            }
            enter(&mut current, &mut closed, name)?;
        } else if line.starts_with('#') {
            return Err(format!("unexpected comment: {line}"));
        } else {
            let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let inner = rest
                        .strip_suffix('}')
                        .ok_or(format!("unclosed labels: {line}"))?;
                    (name, parse_labels(inner)?)
                }
            };
            check_name(name, true)?;
            if !types.contains_key(name) {
                return Err(format!("sample before TYPE: {line}"));
            }
            enter(&mut current, &mut closed, name)?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().map_err(|e| format!("bad value {v}: {e}"))?,
            };
            samples.push((name.to_owned(), labels, value));
        }
    }
    Ok((samples, types))
}

/// Moves to family `name`; a family seen before and left is an error (not contiguous).
fn enter(
    current: &mut Option<String>,
    closed: &mut BTreeSet<String>,
    name: &str,
) -> Result<(), String> {
    if current.as_deref() == Some(name) {
        return Ok(());
    }
    if closed.contains(name) {
        return Err(format!("family {name} is not contiguous"));
    }
    if let Some(prev) = current.replace(name.to_owned()) {
        closed.insert(prev);
    }
    Ok(())
}

/// Metric names `[a-zA-Z_:][a-zA-Z0-9_:]*`; label names the same without `:`.
fn check_name(name: &str, metric: bool) -> Result<(), String> {
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (metric && c == ':');
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(ok_first);
    if first_ok && chars.all(|c| ok_first(c) || c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("bad name {name:?}"))
    }
}

/// `k="v",k="v"` (a trailing comma allowed, as the format allows).
fn parse_labels(mut s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (name, rest) = s.split_once("=\"").ok_or(format!("bad label at {s}"))?;
        check_name(name, false)?;
        // The value ends at the first `"` not escaped.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or("unterminated label value")?;
        let value = unescape(&rest[..end], true)?;
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    Ok(labels)
}

/// Undoes `\\`, `\n` and (in label values) `\"`; any other escape, or a raw `"` in a label
/// value, is an error.
fn unescape(s: &str, label: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('"') if label => out.push('"'),
                other => return Err(format!("bad escape \\{other:?} in {s:?}")),
            },
            '"' if label => return Err(format!("raw quote in {s:?}")),
            '\n' => return Err("raw line feed".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The value of the one sample of `name` whose labels include `labels`.
pub(super) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].2
}

/// The test parser itself rejects what the format forbids (else the tests of
/// render_tests.rs prove nothing).
#[test]
fn the_test_parser_rejects_bad_text() {
    assert!(parse("# TYPE a_total counter\na_total 1\n").is_ok());
    for bad in [
        "# TYPE a gauge\na 1",                                      // no final LF
        "a 1\n",                                                    // sample before TYPE
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",                    // TYPE twice
        "# TYPE a gauge\na{x=\"1\"} 1\n# TYPE b gauge\nb 1\na 2\n", // not contiguous
        "# TYPE a gauge\na{x=\"a\"b\"} 1\n",                        // raw quote
        "# TYPE a gauge\na{x=\"\\t\"} 1\n",                         // unknown escape
        "# TYPE a gauge\na{1x=\"a\"} 1\n",                          // bad label name
        "# TYPE a gauge\na one\n",                                  // bad value
        "# TYPE 1a gauge\n1a 1\n",                                  // bad metric name
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
    // A sample whose own name has no TYPE line (the TYPE is for `a`, not `a_total`).
    assert!(parse("# TYPE a counter\na_total 1\n").is_err());
}
