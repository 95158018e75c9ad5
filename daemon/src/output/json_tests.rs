//! The JSON lines: the hand-written hit line against the derived serde form (the oracle),
//! and the fields the outputs promise.

use super::*;
use crate::typed_args::ArgValue;
use serde::Serialize;

#[derive(Serialize)]
struct HitLine<'a> {
    r#type: &'static str,
    probe: &'a str,
    probe_id: u32,
    kind: &'static str,
    pid: u32,
    tid: u32,
    ns_pid: Option<u32>,
    ns_tid: Option<u32>,
    comm: &'a str,
    ts_ns: u64,
    addr: String,
    module: Option<&'a str>,
    symbol: Option<&'a str>,
    offset: Option<u64>,
    file_offset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unresolved: Option<&'static str>,
    via: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<Args<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retval: Option<RetVal<'a>>,
    /// Typed string arguments cut at BPF's bound, by index (for a return value: `[0]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    args_truncated: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ret_addr: Option<String>,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    stack: Option<&'a [crate::output::record::Frame]>,
    /// With a stack: whether the walk was cut at an impossible frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    stack_truncated: Option<bool>,
    /// With an unwound stack: why the walk ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    stack_stop: Option<&'static str>,
}

/// A hit's arguments: the six raw registers, or the typed values.
#[derive(Serialize)]
#[serde(untagged)]
enum Args<'a> {
    Raw([u64; 6]),
    Typed(&'a [ArgValue]),
}

/// A hit's return value: the raw register, or the typed value.
#[derive(Serialize)]
#[serde(untagged)]
enum RetVal<'a> {
    Raw(u64),
    Typed(&'a ArgValue),
}

/// The derived form the hand-written line must equal (what `write_hit` wrote before).
fn write_hit_serde(out: &mut impl Write, hit: &HitRecord<'_>) -> io::Result<()> {
    let resolved = hit.resolved.as_ref().ok();
    let line = HitLine {
        r#type: "hit",
        probe: hit.probe,
        probe_id: hit.probe_id,
        kind: hit.kind.as_str(),
        pid: hit.pid,
        tid: hit.tid,
        ns_pid: hit.ns_pid,
        ns_tid: hit.ns_tid,
        comm: hit.comm,
        ts_ns: hit.ts_ns,
        addr: format!("{:#x}", hit.addr),
        module: resolved.map(|r| &*r.module),
        symbol: resolved.and_then(|r| r.symbol.as_deref()),
        offset: resolved.and_then(|r| r.offset),
        file_offset: resolved.map(|r| format!("{:#x}", r.file_offset)),
        unresolved: hit.resolved.as_ref().err().copied(),
        via: hit.via,
        args: match (&hit.typed_args, hit.args) {
            (Some(typed), Some(_)) => Some(Args::Typed(typed)),
            (_, raw) => raw.map(Args::Raw),
        },
        retval: match (&hit.typed_args, hit.retval) {
            (Some(typed), Some(_)) => typed.first().map(RetVal::Typed),
            (_, raw) => raw.map(RetVal::Raw),
        },
        args_truncated: hit.typed_args.as_ref().and_then(|typed| {
            let cut: Vec<usize> = (0..typed.len()).filter(|&i| typed[i].truncated()).collect();
            (!cut.is_empty()).then_some(cut)
        }),
        ret_addr: hit.ret_addr.map(|a| format!("{a:#x}")),
        seq: hit.seq,
        stack: hit.stack.as_deref(),
        stack_truncated: hit.stack.as_ref().map(|_| hit.stack_truncated),
        stack_stop: hit.stack_stop,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}
use crate::{output::Resolved, spec::ProbeKind};

fn record(resolved: Result<Resolved, &'static str>) -> HitRecord<'static> {
    HitRecord {
        tid: 2,
        ns_pid: Some(1),
        ts_ns: 3,
        addr: 0x1139,
        resolved,
        args: Some([1, 2, 3, 4, 5, 6]),
        ..crate::output::record::example_hit()
    }
}

/// The hand-written line is byte for byte the derived one, over records that take every
/// branch: resolved or not, nulls, strings that need escaping (quotes, backslashes,
/// control characters) or not (UTF-8), typed and raw arguments, stacks with every frame
/// form, extreme addresses.
#[test]
fn written_line_equals_the_derived_one() {
    use crate::output::record::Frame;
    let texts = [
        "f",
        "",
        "a\"b",
        "back\\slash",
        "tab\there",
        "\u{1}ctl",
        "grüße",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        // Longer than the escape check's 32-byte steps, the byte to escape in a later step
        // and in the tail after the last whole step.
        "/usr/lib/x86_64-linux-gnu/lib\"quoted\".so.6 and some more text to pass 64",
        "0123456789abcdef0123456789abcdef0123456789\u{7}",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\\",
    ];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..2_000 {
        let pick = |n: u64| texts[(n % texts.len() as u64) as usize];
        let mut hit = record(if next() % 3 == 0 {
            Err(["unmapped", "process_gone"][(next() % 2) as usize])
        } else {
            Ok(Resolved {
                module: pick(next()).into(),
                symbol: (next() % 3 != 0).then(|| pick(next()).into()),
                offset: (next() % 2 == 0).then(|| next() >> (next() % 64)),
                file_offset: next() >> (next() % 64),
            })
        });
        hit.probe = pick(next());
        hit.comm = pick(next());
        hit.via = ["fast", "probe"][(next() % 2) as usize];
        hit.addr = [0, u64::MAX, next()][(next() % 3) as usize];
        hit.ns_pid = (next() % 2 == 0).then(|| next() as u32);
        hit.ns_tid = (next() % 2 == 0).then(|| next() as u32);
        hit.ts_ns = next();
        hit.seq = next() % 1000;
        if next() % 2 == 0 {
            hit.kind = ProbeKind::Return;
            hit.args = None;
            hit.retval = Some(next());
            hit.ret_addr = Some([0, next()][(next() % 2) as usize]);
        }
        if next() % 4 == 0 {
            hit.typed_args = Some(vec![
                ArgValue::Str {
                    text: pick(next()).into(),
                    truncated: next() % 2 == 0,
                },
                ArgValue::Signed(next() as i64),
                ArgValue::Missing(crate::typed_args::STRING_UNREADABLE),
                ArgValue::Ptr(next()),
            ]);
        }
        if next() % 2 == 0 {
            let frames = (0..next() % 5)
                .map(|_| Frame {
                    addr: next(),
                    module: (next() % 3 != 0).then(|| pick(next()).into()),
                    symbol: (next() % 3 != 0).then(|| pick(next()).into()),
                    offset: (next() % 2 == 0).then(|| next() % 4096),
                    unresolved: (next() % 3 == 0).then_some("unnamed"),
                    file: (next() % 4 == 0).then(|| "8:1/1234".to_string()),
                })
                .collect();
            hit.stack = Some(frames);
            hit.stack_truncated = next() % 2 == 0;
            hit.stack_stop = (next() % 2 == 0).then_some("end");
        }
        let (mut mine, mut derived) = (Vec::new(), Vec::new());
        write_hit(&mut mine, &hit).unwrap();
        write_hit_serde(&mut derived, &hit).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&mine),
            String::from_utf8_lossy(&derived),
            "round {round}: {hit:?}"
        );
    }
}

/// Typed values replace the raw registers, and a cut string is flagged by index.
#[test]
fn typed_arguments() {
    let mut hit = record(Err("unmapped"));
    hit.typed_args = Some(vec![
        ArgValue::Str {
            text: "abc".into(),
            truncated: true,
        },
        ArgValue::Signed(-5),
        ArgValue::Missing(crate::typed_args::STRING_UNREADABLE),
    ]);
    let mut buf = Vec::new();
    write_hit(&mut buf, &hit).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    assert_eq!(v["args"], serde_json::json!(["abc", -5, null]));
    assert_eq!(v["args_truncated"], serde_json::json!([0]));
    hit.kind = ProbeKind::Return;
    hit.args = None;
    hit.retval = Some(7);
    hit.typed_args = Some(vec![ArgValue::Ptr(0x10)]);
    let mut buf = Vec::new();
    write_hit(&mut buf, &hit).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    assert_eq!(v["retval"], "0x10");
    assert!(v.get("args").is_none() && v.get("args_truncated").is_none());
}

/// A resolved entry hit carries every field the issue names, with addr as hex text.
#[test]
fn hit_line_fields() {
    let mut buf = Vec::new();
    write_hit(
        &mut buf,
        &record(Ok(Resolved {
            module: "/bin/x".into(),
            symbol: Some("f".into()),
            offset: Some(0),
            file_offset: 0x1139,
        })),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    assert_eq!(v["type"], "hit");
    assert_eq!(v["kind"], "entry");
    assert_eq!(v["addr"], "0x1139");
    assert_eq!(v["module"], "/bin/x");
    assert_eq!(v["symbol"], "f");
    assert_eq!(v["offset"], 0);
    assert_eq!(v["args"][5], 6);
    assert_eq!(
        (&v["ns_pid"], &v["ns_tid"]),
        (&1.into(), &serde_json::Value::Null)
    );
    assert!(v.get("retval").is_none());
    assert!(v.get("unresolved").is_none());
    assert!(buf.ends_with(b"\n"));
}

/// An unresolved hit says why and has null module and symbol.
#[test]
fn unresolved_hit_line() {
    let mut buf = Vec::new();
    write_hit(&mut buf, &record(Err("process_gone"))).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    assert_eq!(v["unresolved"], "process_gone");
    assert!(v["module"].is_null());
    assert!(v["symbol"].is_null());
}

/// The summary line carries each probe's rate_limited and filtered counts.
#[test]
fn summary_line_limits() {
    let summary = crate::output::Summary {
        ended_by: "signal",
        probes: vec![crate::output::ProbeSummary {
            probe: "uprobe:/bin/x:f".into(),
            file: String::new(),
            hits: 10,
            printed: 3,
            rate_limited: 5,
            filtered: 2,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut buf = Vec::new();
    write_summary(&mut buf, &summary).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    assert_eq!(v["type"], "summary");
    let p = &v["probes"][0];
    assert_eq!(
        (&p["rate_limited"], &p["filtered"]),
        (&5.into(), &2.into()),
        "{v}"
    );
}
