//! JSON lines: `{"type":"hit",…}` per hit and one final `{"type":"summary",…}`.

use std::io::{self, Write};

use serde::Serialize;

use super::{HitRecord, Summary};

/// Writes one hit as a JSON line: the fields of `HitLine` (the tests' oracle, below), in
/// its order and form, written directly — the line is the output of every printed hit, and
/// serde's derived writer (a call and an escape scan per piece, `String`s for the hex
/// addresses) was most of the JSON mode's cost (README "The consumer's capacity").
pub fn write_hit(out: &mut impl Write, hit: &HitRecord<'_>) -> io::Result<()> {
    let resolved = hit.resolved.as_ref().ok();
    out.write_all(b"{\"type\":\"hit\",\"probe\":")?;
    string(out, hit.probe)?;
    out.write_all(b",\"probe_id\":")?;
    number(out, hit.probe_id)?;
    out.write_all(b",\"kind\":")?;
    string(out, hit.kind.as_str())?;
    out.write_all(b",\"pid\":")?;
    number(out, hit.pid)?;
    out.write_all(b",\"tid\":")?;
    number(out, hit.tid)?;
    out.write_all(b",\"ns_pid\":")?;
    optional(out, hit.ns_pid, number)?;
    out.write_all(b",\"ns_tid\":")?;
    optional(out, hit.ns_tid, number)?;
    out.write_all(b",\"comm\":")?;
    string(out, hit.comm)?;
    out.write_all(b",\"ts_ns\":")?;
    number(out, hit.ts_ns)?;
    out.write_all(b",\"addr\":")?;
    hex(out, hit.addr)?;
    out.write_all(b",\"module\":")?;
    optional(out, resolved.map(|r| &*r.module), string)?;
    out.write_all(b",\"symbol\":")?;
    optional(out, resolved.and_then(|r| r.symbol.as_deref()), string)?;
    out.write_all(b",\"offset\":")?;
    optional(out, resolved.and_then(|r| r.offset), number)?;
    out.write_all(b",\"file_offset\":")?;
    optional(out, resolved.map(|r| r.file_offset), hex)?;
    if let Err(reason) = &hit.resolved {
        out.write_all(b",\"unresolved\":")?;
        string(out, reason)?;
    }
    out.write_all(b",\"via\":")?;
    string(out, hit.via)?;
    match (&hit.typed_args, hit.args) {
        (Some(typed), Some(_)) => {
            out.write_all(b",\"args\":")?;
            serde_json::to_writer(&mut *out, typed)?;
        }
        (_, Some(raw)) => {
            out.write_all(b",\"args\":[")?;
            for (i, v) in raw.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                number(out, *v)?;
            }
            out.write_all(b"]")?;
        }
        _ => {}
    }
    match (&hit.typed_args, hit.retval) {
        (Some(typed), Some(_)) => {
            if let Some(first) = typed.first() {
                out.write_all(b",\"retval\":")?;
                serde_json::to_writer(&mut *out, first)?;
            }
        }
        (_, Some(raw)) => {
            out.write_all(b",\"retval\":")?;
            number(out, raw)?;
        }
        _ => {}
    }
    if let Some(typed) = &hit.typed_args {
        let mut cut = (0..typed.len())
            .filter(|&i| typed[i].truncated())
            .peekable();
        if cut.peek().is_some() {
            out.write_all(b",\"args_truncated\":[")?;
            for (n, i) in cut.enumerate() {
                if n > 0 {
                    out.write_all(b",")?;
                }
                number(out, i)?;
            }
            out.write_all(b"]")?;
        }
    }
    if let Some(ret_addr) = hit.ret_addr {
        out.write_all(b",\"ret_addr\":")?;
        hex(out, ret_addr)?;
    }
    out.write_all(b",\"seq\":")?;
    number(out, hit.seq)?;
    if let Some(stack) = &hit.stack {
        out.write_all(b",\"stack\":[")?;
        for (i, frame) in stack.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            write_frame(out, frame)?;
        }
        out.write_all(b"],\"stack_truncated\":")?;
        out.write_all(if hit.stack_truncated {
            b"true"
        } else {
            b"false"
        })?;
    }
    if let Some(stop) = hit.stack_stop {
        out.write_all(b",\"stack_stop\":")?;
        string(out, stop)?;
    }
    out.write_all(b"}\n")
}

/// One stack frame as `Frame`'s derived form writes it.
fn write_frame(out: &mut impl Write, frame: &super::record::Frame) -> io::Result<()> {
    out.write_all(b"{\"addr\":")?;
    hex(out, frame.addr)?;
    out.write_all(b",\"module\":")?;
    optional(out, frame.module.as_deref(), string)?;
    out.write_all(b",\"symbol\":")?;
    optional(out, frame.symbol.as_deref(), string)?;
    out.write_all(b",\"offset\":")?;
    optional(out, frame.offset, number)?;
    if let Some(reason) = frame.unresolved {
        out.write_all(b",\"unresolved\":")?;
        string(out, reason)?;
    }
    if let Some(file) = &frame.file {
        out.write_all(b",\"file\":")?;
        string(out, file)?;
    }
    out.write_all(b"}")
}

/// A JSON string: as is between quotes when nothing in it needs escaping (control
/// characters, `"` and `\`: serde_json's set; other bytes, UTF-8 included, pass), else
/// escaped by serde_json.
fn string<W: Write>(out: &mut W, s: &str) -> io::Result<()> {
    if !needs_escaping(s.as_bytes()) {
        out.write_all(b"\"")?;
        out.write_all(s.as_bytes())?;
        out.write_all(b"\"")
    } else {
        serde_json::to_writer(out, s).map_err(io::Error::from)
    }
}

/// Whether `bytes` hold a control character, a quote or a backslash. Every byte is looked
/// at, with no early exit, so the compiler checks 32 at a time (`all()`, which stops at the
/// first match, went a byte at a time: `string` was 10% of a live JSON run's profile).
#[inline]
fn needs_escaping(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |found, &b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// A JSON number.
fn number<W: Write>(out: &mut W, n: impl itoa::Integer) -> io::Result<()> {
    out.write_all(itoa::Buffer::new().format(n).as_bytes())
}

/// `"0x…"`: lowercase hexadecimal text, as `format!("{:#x}")` writes it.
fn hex<W: Write>(out: &mut W, v: u64) -> io::Result<()> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 20];
    let mut i = buf.len() - 1;
    buf[i] = b'"';
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = DIGITS[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    buf[i - 3..i].copy_from_slice(b"\"0x");
    out.write_all(&buf[i - 3..])
}

/// `value` by `write`, or `null`.
fn optional<W: Write, T>(
    out: &mut W,
    value: Option<T>,
    write: impl FnOnce(&mut W, T) -> io::Result<()>,
) -> io::Result<()> {
    match value {
        Some(v) => write(out, v),
        None => out.write_all(b"null"),
    }
}

#[derive(Serialize)]
struct SummaryLine<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    summary: &'a Summary,
}

/// Writes the summary as the final JSON line.
pub fn write_summary(out: &mut impl Write, summary: &Summary) -> io::Result<()> {
    serde_json::to_writer(
        &mut *out,
        &SummaryLine {
            r#type: "summary",
            summary,
        },
    )?;
    out.write_all(b"\n")
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
