//! Typed argument values of one hit, as the outputs show them: numbers by their type, a
//! pointer in hex, a string read at the hit (flagged when cut), or missing (unreadable
//! address, or its strings record lost with a full ring).

use std::fmt;

use probed_common::{ARG_REGS, ArgStringsEvent};

use super::{plan::ArgPlan, types::ArgType};

/// Why a string value is missing.
pub const STRING_UNREADABLE: &str = "unreadable";
/// The string's address was NULL.
pub const STRING_NULL: &str = "null";
/// The hit's strings record was not written (ring buffer full) or not found.
pub const STRING_LOST: &str = "lost";

/// One typed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgValue {
    /// An unsigned integer.
    Unsigned(u64),
    /// A signed integer.
    Signed(i64),
    /// An address.
    Ptr(u64),
    /// A string; `truncated` if it was longer than BPF reads.
    Str {
        /// The bytes read (lossy UTF-8).
        text: String,
        /// Cut at `ARG_STR_LEN - 1` bytes.
        truncated: bool,
    },
    /// A string that could not be read, and why.
    Missing(&'static str),
}

impl ArgValue {
    /// Whether this is a cut string.
    pub fn truncated(&self) -> bool {
        matches!(
            self,
            Self::Str {
                truncated: true,
                ..
            }
        )
    }
}

impl serde::Serialize for ArgValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Unsigned(v) => s.serialize_u64(*v),
            Self::Signed(v) => s.serialize_i64(*v),
            Self::Ptr(v) => s.serialize_str(&format!("{v:#x}")),
            Self::Str { text, .. } => s.serialize_str(text),
            Self::Missing(_) => s.serialize_none(),
        }
    }
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsigned(v) => write!(f, "{v}"),
            Self::Signed(v) => write!(f, "{v}"),
            Self::Ptr(v) => write!(f, "{v:#x}"),
            Self::Str { text, truncated } => {
                write!(f, "\"{}\"", text.escape_debug())?;
                if *truncated {
                    f.write_str("...")?;
                }
                Ok(())
            }
            Self::Missing(why) => write!(f, "<{why}>"),
        }
    }
}

impl ArgPlan {
    /// The values of a hit: `raw` its evaluated slots (`HitEvent::args`, or for a return
    /// probe `[retval, 0, …]`), `strings` its strings record if one was joined to it.
    pub fn values(
        &self,
        raw: &[u64; ARG_REGS],
        strings: Option<&ArgStringsEvent>,
    ) -> Vec<ArgValue> {
        self.types
            .iter()
            .enumerate()
            .map(|(i, ty)| match ty {
                ArgType::Unsigned(_) => ArgValue::Unsigned(raw[i]),
                ArgType::Signed(_) => ArgValue::Signed(raw[i] as i64),
                ArgType::Ptr => ArgValue::Ptr(raw[i]),
                ArgType::Str if raw[i] == 0 => ArgValue::Missing(STRING_NULL),
                ArgType::Str => string(strings, i),
            })
            .collect()
    }
}

/// Slot `i` of a strings record.
fn string(strings: Option<&ArgStringsEvent>, i: usize) -> ArgValue {
    let Some(e) = strings else {
        return ArgValue::Missing(STRING_LOST);
    };
    let bit = 1u8 << i;
    if e.read & bit == 0 {
        return ArgValue::Missing(STRING_UNREADABLE);
    }
    let len = usize::from(e.lens[i]).min(e.data[i].len());
    ArgValue::Str {
        text: String::from_utf8_lossy(&e.data[i][..len]).into_owned(),
        truncated: e.truncated & bit != 0,
    }
}

#[cfg(test)]
mod tests {
    use probed_common::{ARG_STR_LEN, EVENT_ARG_STRINGS};

    use super::*;
    use crate::typed_args::ArgList;

    fn strings(slot: usize, text: &[u8], truncated: bool) -> Box<ArgStringsEvent> {
        let mut e = Box::new(ArgStringsEvent {
            event: EVENT_ARG_STRINGS,
            probe_id: 0,
            tid: 1,
            read: 1 << slot,
            truncated: u8::from(truncated) << slot,
            faulted: 0,
            _reserved: 0,
            ts_ns: 5,
            lens: [0; ARG_REGS],
            _reserved2: 0,
            data: [[0; ARG_STR_LEN]; ARG_REGS],
        });
        e.lens[slot] = text.len() as u16;
        e.data[slot][..text.len()].copy_from_slice(text);
        e
    }

    #[test]
    fn values_by_type() {
        let plan = ArgPlan::for_usdt(
            "8@%rbp 8@%r12 -4@%eax",
            0,
            &|_| None,
            Some(&ArgList::parse("ptr,str,i32").unwrap()),
        )
        .unwrap();
        let e = strings(1, b"tick", false);
        let raw = [0x7f00, 0x1234, 0xffff_fffe, 0, 0, 0];
        let v = plan.values(&raw, Some(&e));
        assert_eq!(
            v,
            [
                ArgValue::Ptr(0x7f00),
                ArgValue::Str {
                    text: "tick".into(),
                    truncated: false
                },
                ArgValue::Signed(0xffff_fffe_u64 as i64),
            ]
        );
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"["0x7f00","tick",4294967294]"#
        );
        assert_eq!(plan.values(&raw, None)[1], ArgValue::Missing(STRING_LOST));
        let unread = strings(0, b"", false);
        assert_eq!(
            plan.values(&raw, Some(&unread))[1],
            ArgValue::Missing(STRING_UNREADABLE)
        );
        let cut = strings(1, b"a\"b", true);
        assert_eq!(plan.values(&raw, Some(&cut))[1].to_string(), r#""a\"b"..."#);
    }
}
