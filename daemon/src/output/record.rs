//! One hit, resolved as far as it could be: what every output format prints.

use std::sync::Arc;

use crate::spec::ProbeKind;

/// Where a hit address resolved to.
// Serialize: the derived form is the JSON tests' oracle (output/json_tests.rs); the output
// itself is written by hand (output/json.rs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct Resolved {
    /// Absolute path of the mapped file (shared: `pipeline/names.rs`).
    pub module: Arc<str>,
    /// The symbol containing the address (demangled), if one does.
    pub symbol: Option<Arc<str>>,
    /// Bytes from the symbol's start to the address.
    pub offset: Option<u64>,
    /// Byte offset of the address in the file.
    pub file_offset: u64,
}

/// One frame of a user stack, innermost first, resolved as far as it could be.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct Frame {
    /// The frame's address (the probed instruction for the innermost frame of an entry
    /// probe, a return address for the others).
    #[cfg_attr(test, serde(serialize_with = "hex"))]
    pub addr: u64,
    /// Absolute path of the mapped file, if resolved.
    pub module: Option<Arc<str>>,
    /// The symbol containing the frame (demangled), if one does.
    pub symbol: Option<Arc<str>>,
    /// Bytes from the symbol's start to the frame's address.
    pub offset: Option<u64>,
    /// Why the frame could not be resolved (resolver or symbolizer reason), if it could not.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub unresolved: Option<&'static str>,
    /// The mapped file's identity (`MAJOR:MINOR/INODE`) when its mapping was found but no
    /// name for it is known (`unresolved: "unnamed"`): never another file's name.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub file: Option<String>,
}

#[cfg(test)]
fn hex<S: serde::Serializer>(addr: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{addr:#x}"))
}

/// A hit ready for output. Borrowed parts come from the probe table and the event.
#[derive(Clone, Debug)]
pub struct HitRecord<'a> {
    /// The SPEC of the probe that fired, as the user wrote it.
    pub probe: &'a str,
    /// The probe id.
    pub probe_id: u32,
    /// Entry or return.
    pub kind: ProbeKind,
    /// Process id (initial pid namespace).
    pub pid: u32,
    /// Thread id (initial pid namespace).
    pub tid: u32,
    /// Process id in the process's own pid namespace (inside its container), if known.
    pub ns_pid: Option<u32>,
    /// Thread id in the process's own pid namespace, if known.
    pub ns_tid: Option<u32>,
    /// The thread's comm.
    pub comm: &'a str,
    /// CLOCK_MONOTONIC nanoseconds at the hit.
    pub ts_ns: u64,
    /// The probed address in the process.
    pub addr: u64,
    /// Resolution of `addr`, or why it failed.
    pub resolved: Result<Resolved, &'static str>,
    /// Which resolver path answered (`fast`, `mirror`, `retained`, `rescan`).
    pub via: &'static str,
    /// The first six integer arguments (entry probes).
    pub args: Option<[u64; 6]>,
    /// The return value (return probes).
    pub retval: Option<u64>,
    /// The address the function returned to (return probes).
    pub ret_addr: Option<u64>,
    /// The process's address-space change sequence at hit time.
    pub seq: u64,
    /// The user stack, innermost first, if the probe captures stacks.
    pub stack: Option<Vec<Frame>>,
    /// Whether the stack walk was cut at an impossible frame (see `pipeline::stack`).
    pub stack_truncated: bool,
    /// Why an unwound stack (a stack copy, `--stack=auto|dwarf`) ends (`unwind::StopReason`);
    /// None for the kernel's frame-pointer walk.
    pub stack_stop: Option<&'static str>,
    /// Typed arguments (entry, USDT) or the typed return value (one value), when the SPEC
    /// or the USDT note types them; they replace `args` / `retval` in the output.
    pub typed_args: Option<Vec<crate::typed_args::ArgValue>>,
}

/// The `comm` bytes of a hit as text (up to the first NUL, lossy UTF-8).
pub fn comm_str(comm: &[u8]) -> std::borrow::Cow<'_, str> {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    // `from_utf8`'s check is the fast one (words at a time); the lossy walk only for a
    // name that is not UTF-8.
    match std::str::from_utf8(&comm[..len]) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(&comm[..len]),
    }
}

/// A hit for the output tests to start from: an entry of `f` in `/bin/x` (pid and tid 1),
/// resolved at its first byte, file offset 0x1000, no arguments or stack; each test changes
/// what it looks at with struct update syntax.
#[cfg(test)]
pub(crate) fn example_hit() -> HitRecord<'static> {
    HitRecord {
        probe: "uprobe:/bin/x:f",
        probe_id: 0,
        kind: ProbeKind::Entry,
        pid: 1,
        tid: 1,
        ns_pid: None,
        ns_tid: None,
        comm: "x",
        ts_ns: 1,
        addr: 0x1000,
        resolved: Ok(Resolved {
            module: "/bin/x".into(),
            symbol: Some("f".into()),
            offset: Some(0),
            file_offset: 0x1000,
        }),
        via: "fast",
        args: None,
        retval: None,
        ret_addr: None,
        seq: 0,
        stack: None,
        stack_truncated: false,
        stack_stop: None,
        typed_args: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// comm stops at the first NUL and keeps all 16 bytes when there is none.
    #[test]
    fn comm_text() {
        assert_eq!(comm_str(b"bash\0\0\0\0\0\0\0\0\0\0\0\0"), "bash");
        assert_eq!(comm_str(b"0123456789abcdef"), "0123456789abcdef");
    }
}
