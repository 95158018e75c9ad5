//! The argument list a SPEC may end with: `(T0,T1,…)` for entry and USDT probes,
//! `(ret:T)` for return probes, T one of `u8 u16 u32 u64 i8 i16 i32 i64 ptr str`.

use std::{fmt, str::FromStr};

use probed_common::ARG_REGS;

/// The type names a list may use, for messages.
pub const TYPE_NAMES: &str = "u8 u16 u32 u64 i8 i16 i32 i64 ptr str";

/// The type of one argument: how many bytes, signed or not, a pointer, or a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArgType {
    /// Unsigned, this many bytes (1, 2, 4, 8).
    Unsigned(u8),
    /// Signed, this many bytes.
    Signed(u8),
    /// An address, shown in hex.
    Ptr,
    /// The address of a NUL-terminated string, read at the hit.
    Str,
}

impl ArgType {
    /// Bytes of the value BPF keeps (a pointer or string address: 8).
    pub fn size(self) -> u8 {
        match self {
            Self::Unsigned(n) | Self::Signed(n) => n,
            Self::Ptr | Self::Str => 8,
        }
    }

    /// Whether BPF sign-extends the value.
    pub fn signed(self) -> bool {
        matches!(self, Self::Signed(_))
    }
}

impl fmt::Display for ArgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsigned(n) => write!(f, "u{}", u32::from(*n) * 8),
            Self::Signed(n) => write!(f, "i{}", u32::from(*n) * 8),
            Self::Ptr => f.write_str("ptr"),
            Self::Str => f.write_str("str"),
        }
    }
}

impl FromStr for ArgType {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "u8" => Self::Unsigned(1),
            "u16" => Self::Unsigned(2),
            "u32" => Self::Unsigned(4),
            "u64" => Self::Unsigned(8),
            "i8" => Self::Signed(1),
            "i16" => Self::Signed(2),
            "i32" => Self::Signed(4),
            "i64" => Self::Signed(8),
            "ptr" => Self::Ptr,
            "str" => Self::Str,
            _ => return Err(()),
        })
    }
}

/// A SPEC's argument list.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ArgList {
    /// `(T0,T1,…)`: the first arguments, in order (at most six).
    Args(Vec<ArgType>),
    /// `(ret:T)`: the return value.
    Ret(ArgType),
}

/// Why an argument list did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgListError {
    /// A name that is not a type.
    #[error("unknown argument type `{0}`: expected one of {TYPE_NAMES}")]
    UnknownType(String),
    /// More than six.
    #[error("at most {ARG_REGS} arguments can be typed, not {0}")]
    TooMany(usize),
    /// `()` or an empty entry (`(u32,,str)`).
    #[error("an empty argument type: expected one of {TYPE_NAMES}, separated by ','")]
    Empty,
    /// `ret:` not alone.
    #[error("`ret:T` must be the only entry of the list: `(ret:str)`")]
    RetNotAlone,
}

impl ArgList {
    /// Parses the text between the parentheses.
    pub fn parse(inner: &str) -> Result<Self, ArgListError> {
        let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
        let ty = |t: &str| -> Result<ArgType, ArgListError> {
            if t.is_empty() {
                return Err(ArgListError::Empty);
            }
            t.parse().map_err(|()| ArgListError::UnknownType(t.into()))
        };
        if let Some(ret) = parts.iter().find_map(|p| p.strip_prefix("ret:")) {
            if parts.len() != 1 {
                return Err(ArgListError::RetNotAlone);
            }
            return Ok(Self::Ret(ty(ret.trim())?));
        }
        if parts.len() > ARG_REGS {
            return Err(ArgListError::TooMany(parts.len()));
        }
        Ok(Self::Args(
            parts.into_iter().map(ty).collect::<Result<_, _>>()?,
        ))
    }
}

impl fmt::Display for ArgList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ret(t) => write!(f, "(ret:{t})"),
            Self::Args(ts) => {
                f.write_str("(")?;
                for (i, t) in ts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{t}")?;
                }
                f.write_str(")")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_print_back() {
        for text in [
            "str,str,i32",
            "u8,u16,u32,u64,i8,i16",
            "ptr",
            "ret:str",
            "ret:i64",
        ] {
            let list = ArgList::parse(text).unwrap();
            assert_eq!(list.to_string(), format!("({text})"));
        }
        assert_eq!(
            ArgList::parse(" str , i32 ").unwrap(),
            ArgList::Args(vec![ArgType::Str, ArgType::Signed(4)])
        );
    }

    #[test]
    fn bad_lists_say_why() {
        assert_eq!(
            ArgList::parse("int"),
            Err(ArgListError::UnknownType("int".into()))
        );
        assert_eq!(ArgList::parse(""), Err(ArgListError::Empty));
        assert_eq!(ArgList::parse("u8,,u8"), Err(ArgListError::Empty));
        assert_eq!(
            ArgList::parse("u8,u8,u8,u8,u8,u8,u8"),
            Err(ArgListError::TooMany(7))
        );
        assert_eq!(ArgList::parse("u8,ret:str"), Err(ArgListError::RetNotAlone));
        assert!(
            ArgList::parse("float")
                .unwrap_err()
                .to_string()
                .contains(TYPE_NAMES)
        );
    }
}
