//! Aligned text for people: one line per hit, then a summary table.

use std::{
    fmt,
    io::{self, Write},
};

use super::{HitRecord, Summary};
use crate::spec::ProbeKind;

/// Writes the column header.
pub fn write_header(out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{:>17} {:>7} {:>7} {:<16} {:<3} {:<18} WHERE / VALUES",
        "TIME(s)", "PID", "TID", "COMM", "", "ADDR"
    )
}

/// A short text formatted into a buffer on the stack, so that it can be padded to its column
/// like a `String` without allocating one per hit (a `malloc` per column would be a trap of
/// probed itself when it traces `malloc`).
struct Short {
    buf: [u8; 24],
    len: usize,
}

impl Short {
    fn of(args: fmt::Arguments<'_>) -> Self {
        let mut s = Self {
            buf: [0; 24],
            len: 0,
        };
        // Every use fits (a u32 pair, a 64-bit address in hex); a longer one is cut.
        let _ = fmt::write(&mut s, args);
        s
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl fmt::Write for Short {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dest = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dest.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A host id, followed by `/` and the id inside the process's own pid namespace when that
/// is known and differs (a process in a container): `3650/1`.
fn ids(host: u32, ns: Option<u32>) -> Short {
    match ns {
        Some(ns) if ns != host => Short::of(format_args!("{host}/{ns}")),
        _ => Short::of(format_args!("{host}")),
    }
}

/// An address as `0x…`, for a padded column.
fn hex(addr: u64) -> Short {
    Short::of(format_args!("{addr:#x}"))
}

/// Writes one hit: time, ids, comm, entry/return arrow, address, symbol+offset [module],
/// then the arguments or the return value.
pub fn write_hit(out: &mut impl Write, hit: &HitRecord<'_>) -> io::Result<()> {
    let arrow = match hit.kind {
        ProbeKind::Entry => "->",
        ProbeKind::Return => "<-",
    };
    let secs = hit.ts_ns as f64 / 1e9;
    write!(
        out,
        "{secs:>17.6} {:>7} {:>7} {:<16} {arrow:<3} {:<18} ",
        ids(hit.pid, hit.ns_pid).as_str(),
        ids(hit.tid, hit.ns_tid).as_str(),
        hit.comm,
        hex(hit.addr).as_str()
    )?;
    match &hit.resolved {
        Ok(r) => match (&r.symbol, r.offset) {
            (Some(sym), Some(0)) => write!(out, "{sym} [{}]", r.module)?,
            (Some(sym), Some(off)) => write!(out, "{sym}+{off:#x} [{}]", r.module)?,
            _ => write!(out, "{}+{:#x}", r.module, r.file_offset)?,
        },
        Err(reason) => write!(out, "?? ({reason})")?,
    }
    if let Some(typed) = &hit.typed_args {
        match hit.kind {
            ProbeKind::Entry => {
                out.write_all(b" (")?;
                for (i, value) in typed.iter().enumerate() {
                    if i > 0 {
                        out.write_all(b", ")?;
                    }
                    write!(out, "{value}")?;
                }
                out.write_all(b")")?;
            }
            ProbeKind::Return => {
                if let Some(value) = typed.first() {
                    write!(out, " = {value}")?;
                }
            }
        }
    } else if let Some(args) = hit.args {
        write!(
            out,
            " ({:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x})",
            args[0], args[1], args[2], args[3], args[4], args[5]
        )?;
    }
    if let (Some(ret), None) = (hit.retval, &hit.typed_args) {
        write!(out, " = {ret} ({ret:#x})")?;
    }
    writeln!(out)?;
    for (i, frame) in hit.stack.iter().flatten().enumerate() {
        write!(out, "{:>22}#{i:<3} {:<18} ", "", hex(frame.addr).as_str())?;
        match (&frame.symbol, &frame.module, frame.unresolved) {
            (Some(sym), Some(module), _) => writeln!(
                out,
                "{sym}+{:#x} [{module}]",
                frame.offset.unwrap_or_default()
            )?,
            (None, Some(module), _) => writeln!(out, "[{module}]")?,
            (_, _, Some(why)) => match &frame.file {
                Some(file) => writeln!(out, "?? ({why}) [file {file}]")?,
                None => writeln!(out, "?? ({why})")?,
            },
            _ => writeln!(out, "??")?,
        }
    }
    if hit.stack_truncated {
        writeln!(out, "{:>22}(stack cut at an impossible frame)", "")?;
    }
    // An unwound stack that did not reach its outermost frame says why.
    if let Some(why) = hit.stack_stop.filter(|&w| w != "end") {
        writeln!(out, "{:>22}(unwinding stopped: {why})", "")?;
    }

    Ok(())
}

/// A probe's name in the summary table: its SPEC, and the file when the SPEC does not show
/// it (a library name: `uprobe:libc:malloc [/usr/lib/x86_64-linux-gnu/libc.so.6]`).
fn probe_column(p: &super::ProbeSummary) -> String {
    if p.file.is_empty() || p.probe.contains(&p.file) {
        p.probe.clone()
    } else {
        format!("{} [{}]", p.probe, p.file)
    }
}

/// Writes the per-probe summary table.
pub fn write_summary(out: &mut impl Write, s: &Summary) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "--- probed: {:.1}s, ended by {} ---",
        s.duration_s, s.ended_by
    )?;
    writeln!(
        out,
        "{:>4} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10} {:>8} {:>8}  {:<40} UNRESOLVED",
        "ID",
        "HITS",
        "PRINTED",
        "LOST",
        "NOT SHOWN",
        "LIMITED",
        "FILTERED",
        "SELF",
        "AT STOP",
        "PROBE"
    )?;
    for p in &s.probes {
        let mut unresolved = if p.unresolved.is_empty() {
            "0".to_string()
        } else {
            p.unresolved
                .iter()
                .map(|(why, n)| format!("{why}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        if !p.resolved_by_probe.is_empty() {
            let by: Vec<String> = p
                .resolved_by_probe
                .iter()
                .map(|(why, n)| format!("{why}={n}"))
                .collect();
            unresolved.push_str(&format!(" (answered by the probe: {})", by.join(" ")));
        }
        writeln!(
            out,
            "{:>4} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10} {:>8} {:>8}  {:<40} {unresolved}",
            p.probe_id,
            p.hits,
            p.printed,
            p.lost,
            p.not_printed,
            p.rate_limited,
            p.filtered,
            p.self_excluded,
            p.dropped_at_stop,
            probe_column(p)
        )?;
    }
    for p in s.probes.iter().filter(|p| p.counted_in_bpf > 0) {
        writeln!(
            out,
            "counted in BPF (--count-in-bpf): {} {}",
            p.counted_in_bpf,
            probe_column(p)
        )?;
    }
    if !s.tracker.is_empty() {
        writeln!(out, "tracker: {}", s.tracker)?;
    }
    if s.consumers > 1 {
        match s.rings {
            0 | 1 => writeln!(out, "consumers: {} (dealt from one ring)", s.consumers)?,
            n => writeln!(out, "consumers: {} (a ring each: {n} rings)", s.consumers)?,
        }
    }
    if s.tracker_errors.values().any(|&n| n > 0) {
        let parts: Vec<String> = s
            .tracker_errors
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(out, "tracker errors: {}", parts.join(" "))?;
    }
    if !s.resolver.is_empty() {
        let parts: Vec<String> = s.resolver.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "resolver: {}", parts.join(" "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{ProbeSummary, Resolved};

    /// A hit line shows symbol, module and arguments; the summary lists every probe.
    /// The widest ids and addresses fit the stack buffer whole.
    #[test]
    fn short_columns_fit() {
        assert_eq!(ids(3650, Some(1)).as_str(), "3650/1");
        assert_eq!(ids(3650, Some(3650)).as_str(), "3650");
        assert_eq!(ids(7, None).as_str(), "7");
        assert_eq!(
            ids(u32::MAX, Some(u32::MAX - 1)).as_str(),
            "4294967295/4294967294"
        );
        assert_eq!(hex(u64::MAX).as_str(), "0xffffffffffffffff");
        assert_eq!(
            format!("{:<20}|", hex(0x10).as_str()),
            "0x10                |"
        );
    }

    #[test]
    fn hit_and_summary_text() {
        let hit = HitRecord {
            pid: 10,
            tid: 11,
            ns_pid: Some(1),
            ns_tid: Some(11),
            ts_ns: 1_500_000_000,
            addr: 0x1139,
            resolved: Ok(Resolved {
                module: "/bin/x".into(),
                symbol: Some("f".into()),
                offset: Some(4),
                file_offset: 0x1139,
            }),
            args: Some([1, 2, 3, 4, 5, 6]),
            ..crate::output::record::example_hit()
        };
        let mut buf = Vec::new();
        write_hit(&mut buf, &hit).unwrap();
        let line = String::from_utf8(buf).unwrap();
        assert!(line.contains("f+0x4 [/bin/x]"), "{line}");
        // The namespace pid differs from the host's, the namespace tid does not.
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1..3], ["10/1", "11"], "{line}");
        assert!(line.contains("(0x1, 0x2, 0x3, 0x4, 0x5, 0x6)"), "{line}");
        let summary = Summary {
            ended_by: "count",
            duration_s: 1.0,
            probes: vec![ProbeSummary {
                probe: "uprobe:/bin/x:f".into(),
                file: String::new(),
                hits: 7,
                printed: 2,
                rate_limited: 4,
                filtered: 1,
                ..Default::default()
            }],
            resolver: Default::default(),
            tracker: "kprobes",
            tracker_errors: [("exits_missed", 3), ("reports_lost", 0)].into(),
            consumers: 2,
            rings: 2,
        };
        let mut buf = Vec::new();
        write_summary(&mut buf, &summary).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains("uprobe:/bin/x:f"), "{text}");
        assert!(text.contains("ended by count"), "{text}");
        assert!(
            text.contains("consumers: 2 (a ring each: 2 rings)"),
            "{text}"
        );
        assert!(text.contains("tracker: kprobes"), "{text}");
        // Only the counters that moved are named.
        assert!(text.contains("tracker errors: exits_missed=3\n"), "{text}");
        assert!(
            text.contains("LIMITED") && text.contains("FILTERED"),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.contains("uprobe:/bin/x:f"))
            .unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[..7], ["0", "7", "2", "0", "0", "4", "1"], "{row}");
    }
}
