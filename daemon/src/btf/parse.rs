//! The BTF header and the type-section walk: checks every bound once, so that lookups later
//! can index the blob without re-validating.

use std::{io, ops::Range, path::PathBuf};

use super::kind::{DecodeError, Kind, RawType, le_u32};

/// `BTF_MAGIC`, read little-endian.
const MAGIC: u16 = 0xeb9f;
/// The only `BTF_VERSION` there is.
const VERSION: u8 = 1;
/// Bytes of `struct btf_header` this reader understands; a longer `hdr_len` (a newer header)
/// is accepted and its extra fields ignored.
const HEADER_LEN: usize = 24;

/// Why a BTF blob was rejected.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("failed to read btf from `{}`", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// Fewer bytes than a header (or than the header's own `hdr_len`).
    #[error("truncated btf header: {len} bytes, need {need}")]
    TruncatedHeader {
        /// Bytes available.
        len: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// Not little-endian BTF.
    #[error("bad btf magic {found:#06x}, expected 0xeb9f (little-endian btf)")]
    BadMagic {
        /// The first two bytes, read little-endian.
        found: u16,
    },
    /// A version other than 1.
    #[error("unsupported btf version {version}")]
    UnsupportedVersion {
        /// The header's version byte.
        version: u8,
    },
    /// A section reaches past the end of the blob.
    #[error(
        "btf {section} section (offset {offset}, length {len}) ends past the {available}-byte blob"
    )]
    SectionOutOfBounds {
        /// "type" or "string".
        section: &'static str,
        /// Its offset after the header.
        offset: u32,
        /// Its length.
        len: u32,
        /// Bytes after the header.
        available: usize,
    },
    /// The string section does not start and end with a NUL.
    #[error("malformed btf string section: {reason}")]
    MalformedStrings {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A type record runs past the end of the type section.
    #[error("btf type {id} at byte {offset} of the type section is truncated")]
    TruncatedType {
        /// Its type id.
        id: u32,
        /// Where it starts in the type section.
        offset: usize,
    },
    /// A kind this reader does not know, so the walk cannot know its length.
    #[error("btf type {id} has unknown kind {kind}")]
    UnknownKind {
        /// Its type id.
        id: u32,
        /// The raw kind number.
        kind: u32,
    },
    /// A name offset outside the string section.
    #[error("btf type {id} names string offset {offset}, past the {len}-byte string section")]
    StringOffsetOutOfRange {
        /// The type (or the type whose member, value or parameter) it names.
        id: u32,
        /// The offset.
        offset: u32,
        /// The string section's length.
        len: usize,
    },
    /// A reference to a type id that does not exist.
    #[error("btf type {id} refers to type {referenced}, but the last type is {last}")]
    TypeIdOutOfRange {
        /// The referring type.
        id: u32,
        /// The id it refers to.
        referenced: u32,
        /// The highest type id present.
        last: u32,
    },
}

/// What the walk learned: where things are, for [`super::Btf`] to keep.
#[derive(Debug)]
pub(crate) struct Layout {
    /// The type section, as a range of the blob.
    pub types: Range<usize>,
    /// The string section, as a range of the blob.
    pub strings: Range<usize>,
    /// Start of each record in the type section; index `id - 1` (id 0 is `void`).
    pub offsets: Vec<u32>,
    /// Ids of named STRUCT, UNION and FWD types, in id order, for the name index.
    pub composites: Vec<u32>,
    /// Bytes in a pointer, from the size of the kernel's `long` (as libbpf guesses it).
    pub pointer_size: Option<u32>,
}

/// Validates `data` and records where each type starts.
pub(crate) fn parse(data: &[u8]) -> Result<Layout, BtfError> {
    let (types, strings) = sections(data)?;
    let str_bytes = &data[strings.clone()];
    // A section that starts and ends with NUL makes every in-range offset a terminated
    // string, so each name needs only a bounds check here, not a scan.
    let reason = match (str_bytes.first(), str_bytes.last()) {
        (None, _) => Some("it is empty"),
        (Some(&first), _) if first != 0 => Some("it does not start with the empty string"),
        (_, Some(&last)) if last != 0 => Some("its last string is not NUL-terminated"),
        _ => None,
    };
    if let Some(reason) = reason {
        return Err(BtfError::MalformedStrings { reason });
    }
    walk(&data[types.clone()], str_bytes).map(|walked| Layout {
        types,
        strings,
        offsets: walked.offsets,
        composites: walked.composites,
        pointer_size: walked.pointer_size,
    })
}

/// Checks the header and returns the type and string sections as ranges of `data`.
fn sections(data: &[u8]) -> Result<(Range<usize>, Range<usize>), BtfError> {
    let header = data.get(..HEADER_LEN).ok_or(BtfError::TruncatedHeader {
        len: data.len(),
        need: HEADER_LEN,
    })?;
    let magic = u16::from_le_bytes([header[0], header[1]]);
    if magic != MAGIC {
        return Err(BtfError::BadMagic { found: magic });
    }
    if header[2] != VERSION {
        return Err(BtfError::UnsupportedVersion { version: header[2] });
    }
    let hdr_len = (le_u32(header, 4) as usize).max(HEADER_LEN);
    let body = data.get(hdr_len..).ok_or(BtfError::TruncatedHeader {
        len: data.len(),
        need: hdr_len,
    })?;
    let section = |section, off_at, len_at| {
        let (offset, len) = (le_u32(header, off_at), le_u32(header, len_at));
        let start = offset as usize;
        match start.checked_add(len as usize) {
            Some(end) if end <= body.len() => Ok(hdr_len + start..hdr_len + end),
            _ => Err(BtfError::SectionOutOfBounds {
                section,
                offset,
                len,
                available: body.len(),
            }),
        }
    };
    Ok((section("type", 8, 12)?, section("string", 16, 20)?))
}

/// The per-type results of [`walk`].
struct Walked {
    offsets: Vec<u32>,
    composites: Vec<u32>,
    pointer_size: Option<u32>,
}

/// Walks every record: decodes it, bounds-checks its names and notes the largest type id it
/// refers to, checked once at the end (types may refer forward).
fn walk(types: &[u8], strings: &[u8]) -> Result<Walked, BtfError> {
    // vmlinux averages ~38 bytes per record; reserving avoids regrowing a 100k+ vector.
    let mut offsets = Vec::with_capacity(types.len() / 32);
    let mut composites = Vec::new();
    let mut pointer_size = None;
    // (highest id referred to, by which type)
    let mut max_ref = (0u32, 0u32);
    let mut pos = 0;
    while pos < types.len() {
        let id = offsets.len() as u32 + 1;
        let (ty, len) = RawType::decode(&types[pos..]).map_err(|e| match e {
            DecodeError::Truncated => BtfError::TruncatedType { id, offset: pos },
            DecodeError::UnknownKind(kind) => BtfError::UnknownKind { id, kind },
        })?;
        let check_name = |offset: u32| {
            if (offset as usize) < strings.len() {
                Ok(())
            } else {
                Err(BtfError::StringOffsetOutOfRange {
                    id,
                    offset,
                    len: strings.len(),
                })
            }
        };
        let mut refers = |target: u32| {
            if target > max_ref.0 {
                max_ref = (target, id);
            }
        };
        check_name(ty.name_off)?;
        if ty.kind.refers_to_type() {
            refers(ty.size_or_type);
        }
        match ty.kind {
            Kind::Struct | Kind::Union => {
                for member in ty.members() {
                    check_name(member.name_off)?;
                    refers(member.type_id);
                }
            }
            Kind::Array => {
                refers(ty.word(0));
                refers(ty.word(1));
            }
            // (name_off, type) pairs
            Kind::FuncProto => {
                for i in 0..ty.vlen {
                    check_name(ty.word(2 * i))?;
                    refers(ty.word(2 * i + 1));
                }
            }
            // (name_off, value) pairs and (name_off, low, high) triples
            Kind::Enum => (0..ty.vlen).try_for_each(|i| check_name(ty.word(2 * i)))?,
            Kind::Enum64 => (0..ty.vlen).try_for_each(|i| check_name(ty.word(3 * i)))?,
            // (type, offset, size) triples
            Kind::Datasec => (0..ty.vlen).for_each(|i| refers(ty.word(3 * i))),
            _ => {}
        }
        if ty.name_off != 0 {
            match ty.kind {
                Kind::Struct | Kind::Union | Kind::Fwd => composites.push(id),
                Kind::Int if is_long(name_at(strings, ty.name_off)) => {
                    pointer_size = Some(ty.size_or_type);
                }
                _ => {}
            }
        }
        offsets.push(pos as u32);
        pos += len;
    }
    let last = offsets.len() as u32;
    if max_ref.0 > last {
        return Err(BtfError::TypeIdOutOfRange {
            id: max_ref.1,
            referenced: max_ref.0,
            last,
        });
    }
    Ok(Walked {
        offsets,
        composites,
        pointer_size,
    })
}

/// The NUL-terminated string at `offset` (bounds already checked; the section ends in NUL).
pub(crate) fn name_at(strings: &[u8], offset: u32) -> &[u8] {
    let tail = &strings[offset as usize..];
    let end = memchr::memchr(0, tail).unwrap_or(tail.len());
    &tail[..end]
}

/// Spellings of C's `long`; its size is the kernel's pointer size on every Linux ABI.
fn is_long(name: &[u8]) -> bool {
    matches!(
        name,
        b"long" | b"long int" | b"unsigned long" | b"long unsigned int"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::test_support::{BtfBuilder, HDR_MAGIC, HDR_STR_LEN, HDR_TYPE_LEN, patch_u32};

    /// A well-formed blob with one type of every kind (vlen-carrying ones with entries) walks
    /// to exactly as many offsets as types, so no kind desyncs the walk.
    #[test]
    fn walks_every_kind_without_desync() {
        let mut b = BtfBuilder::new();
        let last = b.one_of_every_kind();
        let data = b.build();
        let layout = parse(&data).expect("valid btf");
        assert_eq!(layout.offsets.len() as u32, last);
        assert_eq!(layout.types.end, layout.strings.start);
    }

    /// `long` and its spellings set the pointer size; without one it is unknown.
    #[test]
    fn pointer_size_comes_from_long() {
        let mut b = BtfBuilder::new();
        b.int("int", 4);
        assert_eq!(parse(&b.build()).unwrap().pointer_size, None);
        b.int("long int", 8);
        assert_eq!(parse(&b.build()).unwrap().pointer_size, Some(8));
    }

    /// Fewer than 24 bytes is a truncated header.
    #[test]
    fn rejects_truncated_header() {
        let data = BtfBuilder::new().build();
        let err = parse(&data[..20]).unwrap_err();
        assert!(
            matches!(err, BtfError::TruncatedHeader { len: 20, need: 24 }),
            "{err}"
        );
    }

    /// Big-endian (byte-swapped) magic and garbage are both a bad magic, named in the error.
    #[test]
    fn rejects_bad_magic() {
        let mut data = BtfBuilder::new().build();
        data[HDR_MAGIC..HDR_MAGIC + 2].copy_from_slice(&[0xeb, 0x9f]);
        let err = parse(&data).unwrap_err();
        assert!(matches!(err, BtfError::BadMagic { found: 0x9feb }), "{err}");
        assert_eq!(
            err.to_string(),
            "bad btf magic 0x9feb, expected 0xeb9f (little-endian btf)"
        );
    }

    /// Version 2 is refused rather than guessed at.
    #[test]
    fn rejects_unknown_version() {
        let mut data = BtfBuilder::new().build();
        data[2] = 2;
        assert!(matches!(
            parse(&data),
            Err(BtfError::UnsupportedVersion { version: 2 })
        ));
    }

    /// A type section whose declared length runs past the blob is out of bounds.
    #[test]
    fn rejects_section_past_end() {
        let mut b = BtfBuilder::new();
        b.int("int", 4);
        let mut data = b.build();
        patch_u32(&mut data, HDR_STR_LEN, 1000);
        let err = parse(&data).unwrap_err();
        assert!(
            matches!(
                err,
                BtfError::SectionOutOfBounds {
                    section: "string",
                    ..
                }
            ),
            "{err}"
        );
    }

    /// A type section cut inside a record's members reports that record as truncated.
    #[test]
    fn rejects_truncated_type() {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let s = b.struct_("s", 8, &[("a", int, 0), ("b", int, 32)]);
        let mut data = b.build();
        // Shrink the type section by 4 bytes: the struct's last member is cut short.
        patch_u32(&mut data, HDR_TYPE_LEN, b.type_len() - 4);
        let err = parse(&data).unwrap_err();
        assert!(
            matches!(err, BtfError::TruncatedType { id, .. } if id == s),
            "{err}"
        );
    }

    /// A name offset at or past the end of the string section is rejected, for a type's own
    /// name and for a member's.
    #[test]
    fn rejects_string_offset_out_of_range() {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let bad = b.strings_len() + 3;
        b.raw(bad, 1, false, 0, 4, &[32]);
        let err = parse(&b.build()).unwrap_err();
        assert!(
            matches!(err, BtfError::StringOffsetOutOfRange { id: 2, offset, .. } if offset == bad),
            "{err}"
        );

        let mut b = BtfBuilder::new();
        let int2 = b.int("int", 4);
        assert_eq!(int, int2);
        let name = b.str("s");
        let bad = b.strings_len();
        b.raw(name, 4, false, 1, 4, &[bad, int2, 0]);
        assert!(matches!(
            parse(&b.build()),
            Err(BtfError::StringOffsetOutOfRange { id: 2, .. })
        ));
    }

    /// A string section that does not end in NUL could make a name run off the end.
    #[test]
    fn rejects_unterminated_strings() {
        let mut b = BtfBuilder::new();
        b.int("int", 4);
        let mut data = b.build();
        *data.last_mut().unwrap() = b'x';
        assert!(matches!(
            parse(&data),
            Err(BtfError::MalformedStrings { .. })
        ));
    }

    /// Kind 0 and kind 20 have no known length, so the walk stops with an error naming them.
    #[test]
    fn rejects_unknown_kind() {
        for kind in [0, 20] {
            let mut b = BtfBuilder::new();
            b.int("int", 4);
            b.raw(0, kind, false, 0, 0, &[]);
            let err = parse(&b.build()).unwrap_err();
            assert!(
                matches!(err, BtfError::UnknownKind { id: 2, kind: k } if k == kind),
                "{err}"
            );
        }
    }

    /// A member whose type id is past the last type is rejected once the walk is done.
    #[test]
    fn rejects_dangling_type_id() {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        b.struct_("s", 4, &[("a", int + 5, 0)]);
        let err = parse(&b.build()).unwrap_err();
        assert!(
            matches!(
                err,
                BtfError::TypeIdOutOfRange {
                    id: 2,
                    referenced: 6,
                    last: 2
                }
            ),
            "{err}"
        );
    }
}
