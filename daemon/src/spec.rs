//! The probe SPEC grammar (bpftrace-style) → typed probe requests.
//!
//! ```text
//! SPEC     := KIND ":" PATH ":" LOCATION [ARGS]
//!           | "usdt" ":" PATH ":" [PROVIDER ":"] NAME [ARGS]   (either part may be a GLOB)
//! KIND     := "uprobe" | "u" | "uretprobe" | "ur"
//! PATH     := an absolute path to an ELF executable or shared library (no ':')
//!           | a library name without '/': `libc`, `libssl.so.3` (see `libpath`)
//! LOCATION := SYMBOL | SYMBOL "+" OFFSET | "0x" HEX     (the last one is a file offset)
//!           | GLOB                                       (`*`, `?`, `[…]`; see `glob`)
//! OFFSET   := decimal or 0x-prefixed hex
//! ARGS     := "(" TYPE ("," TYPE)* ")" | "(ret:" TYPE ")"   (see `typed_args`)
//! ```
//! Parsing is pure: whether the file exists or the symbol is in it is checked when the probe
//! is resolved against the ELF file (see `elf`); a library name is resolved then too
//! (`probes::prepare`), and a GLOB expanded into one probe per matching function.

use std::{fmt, path::PathBuf, str::FromStr};

use crate::{
    glob::{Glob, GlobError, is_pattern},
    typed_args::{ArgList, ArgListError},
};

/// The forms a SPEC may take, shown in every parse error.
pub const EXPECTED_FORMS: &str = "uprobe:/path/to/binary:symbol, uretprobe:/path:symbol, \
                                  uprobe:/path:symbol+16, uprobe:/path:0x1a2b (file offset), \
                                  uprobe:/path:read* (wildcard), uprobe:libc:malloc (library), \
                                  usdt:/path:provider:name, each optionally typed: \
                                  uprobe:/path:f(str,i32), uretprobe:/path:f(ret:str)";

/// Whether a probe fires at function entry or at function return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// A uprobe: fires when the instruction at the location is about to run.
    Entry,
    /// A uretprobe: fires when the function at the location returns.
    Return,
}

impl ProbeKind {
    /// The name used in output (`"entry"` / `"return"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Entry => "entry",
            Self::Return => "return",
        }
    }
}

/// Where in the file the probe goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    /// A symbol, plus a byte offset into it (0 for the symbol itself).
    Symbol {
        /// The symbol's name as written (raw, as in the ELF symbol table).
        name: String,
        /// Bytes past the symbol's start.
        offset: u64,
    },
    /// A byte offset into the file (what the kernel's uprobe takes).
    FileOffset(u64),
    /// Every function whose name (raw, without version, or demangled) matches.
    Pattern(Glob),
    /// A USDT probe point (`.note.stapsdt`): every site of `provider:name` (or of `name`,
    /// if it is one provider's only). Either part may be a wildcard: then every probe that
    /// matches, each with its sites (`name` alone also matches `provider:name`).
    Usdt {
        /// The provider, if given.
        provider: Option<String>,
        /// The probe's name.
        name: String,
    },
}

/// Which file: a path, or a library name the loader would resolve.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileRef {
    /// An absolute path.
    Path(PathBuf),
    /// A library name (`libc`, `libssl.so.3`), resolved by [`crate::libpath`].
    Library(String),
}

impl fmt::Display for FileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(p) => write!(f, "{}", p.display()),
            Self::Library(name) => f.write_str(name),
        }
    }
}

/// One parsed SPEC.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProbeSpec {
    /// The SPEC exactly as the user wrote it; output names probes by it.
    pub text: String,
    /// Entry or return probe.
    pub kind: ProbeKind,
    /// The file to probe, as written.
    pub file: FileRef,
    /// Where in the file.
    pub location: Location,
    /// The argument list, if the SPEC types its arguments.
    pub args: Option<ArgList>,
}

/// Why a SPEC did not parse. Each message names the offending part and the expected forms.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The text before the first ':' is not a probe kind.
    #[error("unknown probe type `{kind}` in `{spec}`: expected {EXPECTED_FORMS}")]
    UnknownKind {
        /// The whole SPEC.
        spec: String,
        /// The unknown kind.
        kind: String,
    },
    /// Not of the form KIND:PATH:LOCATION.
    #[error("cannot parse `{spec}`: expected {EXPECTED_FORMS}")]
    Shape {
        /// The whole SPEC.
        spec: String,
    },
    /// The path is not absolute.
    #[error(
        "the path in `{spec}` must be absolute (start with '/') or be a library name without '/': expected {EXPECTED_FORMS}"
    )]
    RelativePath {
        /// The whole SPEC.
        spec: String,
    },
    /// A wildcard with `+OFFSET`.
    #[error("`{spec}`: a wildcard cannot take +OFFSET")]
    PatternOffset {
        /// The whole SPEC.
        spec: String,
    },
    /// A malformed wildcard.
    #[error("`{spec}`: {source}")]
    Glob {
        /// The whole SPEC.
        spec: String,
        /// What is wrong.
        #[source]
        source: GlobError,
    },
    /// The argument list did not parse.
    #[error("`{spec}`: {source}")]
    Args {
        /// The whole SPEC.
        spec: String,
        /// What is wrong.
        #[source]
        source: ArgListError,
    },
    /// A number did not parse.
    #[error("bad offset `{number}` in `{spec}`: expected a decimal or 0x-prefixed hex number")]
    Number {
        /// The whole SPEC.
        spec: String,
        /// The text that is not a number.
        number: String,
    },
}

impl FromStr for ProbeSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let shape = || SpecError::Shape { spec: spec.into() };
        let (body, args) = split_args(spec)?;
        let (kind, rest) = body.split_once(':').ok_or_else(shape)?;
        if kind == "usdt" {
            return usdt(spec, rest, args);
        }
        let kind = match kind {
            "uprobe" | "u" => ProbeKind::Entry,
            "uretprobe" | "ur" => ProbeKind::Return,
            other => {
                return Err(SpecError::UnknownKind {
                    spec: spec.into(),
                    kind: other.into(),
                });
            }
        };
        let (path, location) = rest.split_once(':').ok_or_else(shape)?;
        if path.is_empty() || location.is_empty() {
            return Err(shape());
        }
        let file = file_ref(spec, path)?;
        let number = |text: &str| {
            parse_number(text).ok_or_else(|| SpecError::Number {
                spec: spec.into(),
                number: text.into(),
            })
        };
        let location = if is_pattern(location) {
            if location.contains('+') {
                return Err(SpecError::PatternOffset { spec: spec.into() });
            }
            Location::Pattern(Glob::new(location).map_err(|source| SpecError::Glob {
                spec: spec.into(),
                source,
            })?)
        } else if location.starts_with("0x") || location.starts_with("0X") {
            Location::FileOffset(number(location)?)
        } else if let Some((name, offset)) = location.rsplit_once('+') {
            if name.is_empty() {
                return Err(shape());
            }
            Location::Symbol {
                name: name.into(),
                offset: number(offset)?,
            }
        } else {
            Location::Symbol {
                name: location.into(),
                offset: 0,
            }
        };
        Ok(Self {
            text: spec.into(),
            kind,
            file,
            location,
            args,
        })
    }
}

/// Splits a trailing `(…)` argument list off `spec`.
fn split_args(spec: &str) -> Result<(&str, Option<ArgList>), SpecError> {
    let Some(open) = spec.strip_suffix(')').and_then(|s| s.rfind('(')) else {
        return Ok((spec, None));
    };
    let list =
        ArgList::parse(&spec[open + 1..spec.len() - 1]).map_err(|source| SpecError::Args {
            spec: spec.into(),
            source,
        })?;
    Ok((&spec[..open], Some(list)))
}

/// The file part: an absolute path or a library name.
fn file_ref(spec: &str, path: &str) -> Result<FileRef, SpecError> {
    if path.starts_with('/') {
        Ok(FileRef::Path(PathBuf::from(path)))
    } else if crate::libpath::is_library_name(path) {
        Ok(FileRef::Library(path.into()))
    } else {
        Err(SpecError::RelativePath { spec: spec.into() })
    }
}

/// `usdt:PATH:[PROVIDER:]NAME` (`rest` is what follows `usdt:`).
fn usdt(spec: &str, rest: &str, args: Option<ArgList>) -> Result<ProbeSpec, SpecError> {
    let shape = || SpecError::Shape { spec: spec.into() };
    let mut parts = rest.splitn(3, ':');
    let (path, first, second) = (parts.next(), parts.next(), parts.next());
    let (Some(path), Some(first)) = (path, first) else {
        return Err(shape());
    };
    let (provider, name) = match second {
        Some(name) => (Some(first), name),
        None => (None, first),
    };
    let bad = |part: &str| part.is_empty() || part.contains(':');
    if path.is_empty() || bad(name) || provider.is_some_and(bad) {
        return Err(shape());
    }
    // Wildcards in either part (`usdt:PATH:python:function__*`, `usdt:PATH:*`) are checked
    // here, matched against the file's notes when the probe is resolved.
    for part in provider.into_iter().chain([name]) {
        if is_pattern(part) {
            Glob::new(part).map_err(|source| SpecError::Glob {
                spec: spec.into(),
                source,
            })?;
        }
    }
    Ok(ProbeSpec {
        text: spec.into(),
        kind: ProbeKind::Entry,
        file: file_ref(spec, path)?,
        location: Location::Usdt {
            provider: provider.map(Into::into),
            name: name.into(),
        },
        args,
    })
}

impl Location {
    /// Whether it names a set of probe points (a wildcard) rather than one.
    pub fn is_pattern(&self) -> bool {
        match self {
            Self::Pattern(_) => true,
            Self::Usdt { provider, name } => {
                is_pattern(name) || provider.as_deref().is_some_and(is_pattern)
            }
            Self::Symbol { .. } | Self::FileOffset(_) => false,
        }
    }
}

impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() => u64::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok(),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ProbeSpec, SpecError> {
        s.parse()
    }

    /// A symbol entry probe keeps the text, the kind, the path and the symbol.
    #[test]
    fn entry_symbol() {
        let p = parse("uprobe:/bin/bash:readline").unwrap();
        assert_eq!(p.kind, ProbeKind::Entry);
        assert_eq!(p.file, FileRef::Path(PathBuf::from("/bin/bash")));
        assert_eq!(
            p.location,
            Location::Symbol {
                name: "readline".into(),
                offset: 0
            }
        );
        assert_eq!(p.to_string(), "uprobe:/bin/bash:readline");
    }

    /// Return probes and the short kind names parse.
    #[test]
    fn kinds() {
        assert_eq!(parse("uretprobe:/a:f").unwrap().kind, ProbeKind::Return);
        assert_eq!(parse("ur:/a:f").unwrap().kind, ProbeKind::Return);
        assert_eq!(parse("u:/a:f").unwrap().kind, ProbeKind::Entry);
    }

    /// `0x…` is a file offset, `sym+N` a symbol offset in decimal or hex.
    #[test]
    fn offsets() {
        assert_eq!(
            parse("uprobe:/a:0x1a2b").unwrap().location,
            Location::FileOffset(0x1a2b)
        );
        assert_eq!(
            parse("uprobe:/a:f+16").unwrap().location,
            Location::Symbol {
                name: "f".into(),
                offset: 16
            }
        );
        assert_eq!(
            parse("uprobe:/a:f+0x10").unwrap().location,
            Location::Symbol {
                name: "f".into(),
                offset: 16
            }
        );
    }

    /// A file part without '/' is a library name; a wildcard location is a pattern.
    #[test]
    fn libraries_and_patterns() {
        let p = parse("uprobe:libc:malloc").unwrap();
        assert_eq!(p.file, FileRef::Library("libc".into()));
        let p = parse("uretprobe:libssl.so.3:SSL_*").unwrap();
        assert_eq!(p.file, FileRef::Library("libssl.so.3".into()));
        let Location::Pattern(glob) = p.location else {
            panic!("{:?}", p.location)
        };
        assert!(glob.matches("SSL_write"));
        assert!(matches!(
            parse("uprobe:/app:ns::Widget::*").unwrap().location,
            Location::Pattern(_)
        ));
    }

    /// USDT SPECs with and without provider; argument lists on any kind.
    #[test]
    fn usdt_and_argument_lists() {
        let p = parse("usdt:/usr/bin/python3.11:python:function__entry(str,str,i32)").unwrap();
        assert_eq!(
            p.location,
            Location::Usdt {
                provider: Some("python".into()),
                name: "function__entry".into()
            }
        );
        assert_eq!(p.kind, ProbeKind::Entry);
        assert_eq!(p.args.unwrap().to_string(), "(str,str,i32)");
        let p = parse("usdt:libstdc++:throw").unwrap();
        assert_eq!(p.file, FileRef::Library("libstdc++".into()));
        assert_eq!(
            p.location,
            Location::Usdt {
                provider: None,
                name: "throw".into()
            }
        );
        assert_eq!(p.args, None);
        let p = parse("uretprobe:/bin/bash:readline(ret:str)").unwrap();
        assert_eq!(p.kind, ProbeKind::Return);
        assert_eq!(p.args.unwrap().to_string(), "(ret:str)");
        assert_eq!(
            parse("uprobe:/a:f+4(u8)").unwrap().location,
            Location::Symbol {
                name: "f".into(),
                offset: 4
            }
        );
    }

    /// Every malformed SPEC gives the matching error, and the message shows the expected forms.
    #[test]
    fn errors() {
        assert!(matches!(
            parse("kprobe:/a:f"),
            Err(SpecError::UnknownKind { .. })
        ));
        assert!(matches!(parse("uprobe"), Err(SpecError::Shape { .. })));
        assert!(matches!(parse("uprobe:/a"), Err(SpecError::Shape { .. })));
        assert!(matches!(parse("uprobe::f"), Err(SpecError::Shape { .. })));
        assert!(matches!(parse("uprobe:/a:"), Err(SpecError::Shape { .. })));
        assert!(matches!(
            parse("uprobe:/a:+4"),
            Err(SpecError::Shape { .. })
        ));
        assert!(matches!(
            parse("uprobe:bin/a:f"),
            Err(SpecError::RelativePath { .. })
        ));
        assert!(matches!(
            parse("uprobe:/a:0xzz"),
            Err(SpecError::Number { .. })
        ));
        assert!(matches!(
            parse("uprobe:/a:0x"),
            Err(SpecError::Number { .. })
        ));
        assert!(matches!(
            parse("uprobe:/a:f+x"),
            Err(SpecError::Number { .. })
        ));
        assert!(matches!(
            parse("uprobe:/a:f*+4"),
            Err(SpecError::PatternOffset { .. })
        ));
        assert!(matches!(
            parse("uprobe:/a:f[ab"),
            Err(SpecError::Glob { .. })
        ));
        assert!(matches!(
            parse("uprobe:/a:f(int)"),
            Err(SpecError::Args { .. })
        ));
        assert!(matches!(parse("usdt:/a"), Err(SpecError::Shape { .. })));
        assert!(matches!(parse("usdt:/a:p:"), Err(SpecError::Shape { .. })));
        assert!(matches!(parse("usdt:/a:p:n["), Err(SpecError::Glob { .. })));
        // A USDT wildcard parses; it is matched against the notes later.
        assert!(parse("usdt:/a:p:n*").unwrap().location.is_pattern());
        assert!(parse("usdt:/a:*").unwrap().location.is_pattern());
        assert!(!parse("usdt:/a:p:n").unwrap().location.is_pattern());
        let msg = parse("nope:/a:f").unwrap_err().to_string();
        assert!(msg.contains("uprobe:/path/to/binary:symbol"), "{msg}");
    }
}
