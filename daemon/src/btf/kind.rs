//! The layout of one BTF type record (`struct btf_type` in include/uapi/linux/btf.h): its kind,
//! and how many bytes of kind-specific data follow the common 12-byte header.
//!
//! Knowing the trailing length of *every* kind is what keeps the type-section walk in step:
//! one kind skipped wrongly and every later type id is off.

use std::fmt;

/// Bytes in the common part of a record: `name_off`, `info`, `size`/`type`.
pub(crate) const TYPE_HEADER_LEN: usize = 12;

/// Bytes in one STRUCT/UNION member (`struct btf_member`): `name_off`, `type`, `offset`.
const MEMBER_LEN: usize = 12;

/// A BTF type kind (`BTF_KIND_*`), numbered as in the uapi header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An integer; 4 trailing bytes give its bit width and encoding.
    Int,
    /// A pointer to `type`.
    Ptr,
    /// An array; 12 trailing bytes give element type, index type and length.
    Array,
    /// A struct; `vlen` members follow.
    Struct,
    /// A union; `vlen` members follow.
    Union,
    /// A 32-bit enum; `vlen` (name, value) pairs follow.
    Enum,
    /// A forward declaration of a struct (or, with `kind_flag`, a union).
    Fwd,
    /// A typedef of `type`.
    Typedef,
    /// `volatile type`.
    Volatile,
    /// `const type`.
    Const,
    /// `restrict type`.
    Restrict,
    /// A function; `type` is its FUNC_PROTO, `vlen` its linkage (not a count).
    Func,
    /// A function signature; `vlen` parameters follow.
    FuncProto,
    /// A variable; 4 trailing bytes give its linkage.
    Var,
    /// A data section; `vlen` variable placements follow.
    Datasec,
    /// A floating-point type.
    Float,
    /// A declaration tag on `type`; 4 trailing bytes give the component index.
    DeclTag,
    /// A type tag (e.g. `__user`) on `type`.
    TypeTag,
    /// A 64-bit enum; `vlen` (name, low, high) triples follow.
    Enum64,
}

impl Kind {
    /// The kind with uapi number `raw`, or `None` for 0 (`BTF_KIND_UNKN`) and numbers newer
    /// than this reader knows.
    pub(crate) fn from_raw(raw: u32) -> Option<Kind> {
        use Kind::*;
        Some(match raw {
            1 => Int,
            2 => Ptr,
            3 => Array,
            4 => Struct,
            5 => Union,
            6 => Enum,
            7 => Fwd,
            8 => Typedef,
            9 => Volatile,
            10 => Const,
            11 => Restrict,
            12 => Func,
            13 => FuncProto,
            14 => Var,
            15 => Datasec,
            16 => Float,
            17 => DeclTag,
            18 => TypeTag,
            19 => Enum64,
            _ => return None,
        })
    }

    /// Bytes that follow the common header in a record of this kind with this `vlen`.
    pub(crate) fn trailing_len(self, vlen: usize) -> usize {
        use Kind::*;
        match self {
            Int | Var | DeclTag => 4,
            Array => 12,
            Struct | Union => MEMBER_LEN * vlen,
            Datasec | Enum64 => 12 * vlen,
            Enum | FuncProto => 8 * vlen,
            // FUNC's vlen is its linkage, not a count of anything that follows.
            Ptr | Fwd | Typedef | Volatile | Const | Restrict | Func | Float | TypeTag => 0,
        }
    }

    /// Whether the header's `size`/`type` word names another type rather than a byte size.
    pub(crate) fn refers_to_type(self) -> bool {
        use Kind::*;
        matches!(
            self,
            Ptr | Typedef
                | Volatile
                | Const
                | Restrict
                | Func
                | FuncProto
                | Var
                | DeclTag
                | TypeTag
        )
    }

    /// Kinds that only qualify or rename another type without changing its layout.
    pub(crate) fn is_modifier(self) -> bool {
        use Kind::*;
        matches!(self, Typedef | Volatile | Const | Restrict | TypeTag)
    }

    /// The name bpftool and the kernel docs use, lowercased.
    pub fn name(self) -> &'static str {
        use Kind::*;
        match self {
            Int => "int",
            Ptr => "ptr",
            Array => "array",
            Struct => "struct",
            Union => "union",
            Enum => "enum",
            Fwd => "fwd",
            Typedef => "typedef",
            Volatile => "volatile",
            Const => "const",
            Restrict => "restrict",
            Func => "func",
            FuncProto => "func_proto",
            Var => "var",
            Datasec => "datasec",
            Float => "float",
            DeclTag => "decl_tag",
            TypeTag => "type_tag",
            Enum64 => "enum64",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a record could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The record (header or trailing data) runs past the end of the type section.
    Truncated,
    /// The kind number is not one [`Kind::from_raw`] knows.
    UnknownKind(u32),
}

/// One decoded record, borrowing its trailing bytes from the type section.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawType<'a> {
    /// Offset of the name in the string section (0: anonymous).
    pub name_off: u32,
    /// The kind.
    pub kind: Kind,
    /// `info` bit 31; meaning depends on the kind (bitfield offsets for STRUCT/UNION, union
    /// for FWD).
    pub kind_flag: bool,
    /// `info` bits 0–15: members/values/parameters for most kinds, linkage for FUNC.
    pub vlen: usize,
    /// The `size` or `type` word (see [`Kind::refers_to_type`]).
    pub size_or_type: u32,
    /// The kind-specific bytes after the header.
    pub trailing: &'a [u8],
}

impl<'a> RawType<'a> {
    /// Decodes the record at the start of `bytes`; returns it and its total length.
    pub(crate) fn decode(bytes: &'a [u8]) -> Result<(RawType<'a>, usize), DecodeError> {
        let header = bytes.get(..TYPE_HEADER_LEN).ok_or(DecodeError::Truncated)?;
        let info = le_u32(header, 4);
        let raw_kind = (info >> 24) & 0x1f;
        let kind = Kind::from_raw(raw_kind).ok_or(DecodeError::UnknownKind(raw_kind))?;
        let vlen = (info & 0xffff) as usize;
        let len = TYPE_HEADER_LEN + kind.trailing_len(vlen);
        let trailing = bytes
            .get(TYPE_HEADER_LEN..len)
            .ok_or(DecodeError::Truncated)?;
        let ty = RawType {
            name_off: le_u32(header, 0),
            kind,
            kind_flag: info >> 31 == 1,
            vlen,
            size_or_type: le_u32(header, 8),
            trailing,
        };
        Ok((ty, len))
    }

    /// The `i`-th little-endian u32 of the trailing data.
    pub(crate) fn word(&self, i: usize) -> u32 {
        le_u32(self.trailing, 4 * i)
    }

    /// STRUCT/UNION members, in declaration order.
    pub(crate) fn members(&self) -> impl Iterator<Item = RawMember> + 'a {
        self.trailing.chunks_exact(MEMBER_LEN).map(|m| RawMember {
            name_off: le_u32(m, 0),
            type_id: le_u32(m, 4),
            offset: le_u32(m, 8),
        })
    }
}

/// One `struct btf_member`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawMember {
    /// Offset of the name in the string section (0: anonymous member).
    pub name_off: u32,
    /// The member's type.
    pub type_id: u32,
    /// Bit offset; with the parent's `kind_flag`, bitfield size in the high 8 bits.
    pub offset: u32,
}

/// The little-endian u32 at byte `at` of `bytes`; callers have bounds-checked the record.
pub(crate) fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let word: [u8; 4] = bytes[at..at + 4].try_into().expect("4-byte slice");
    u32::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every uapi kind number 1..=19 maps to a kind and back to a lowercase name; 0 and 20+
    /// are unknown.
    #[test]
    fn kind_numbers_round_trip() {
        for raw in 1..=19 {
            let kind = Kind::from_raw(raw).expect("known kind");
            assert_eq!(kind.name(), kind.name().to_lowercase());
        }
        assert_eq!(Kind::from_raw(0), None);
        assert_eq!(Kind::from_raw(20), None);
        assert_eq!(Kind::from_raw(31), None);
    }

    /// Trailing lengths match btf.rst for the vlen-dependent kinds and FUNC ignores vlen.
    #[test]
    fn trailing_lengths_follow_btf_rst() {
        assert_eq!(Kind::Struct.trailing_len(3), 36);
        assert_eq!(Kind::Enum.trailing_len(3), 24);
        assert_eq!(Kind::Enum64.trailing_len(3), 36);
        assert_eq!(Kind::FuncProto.trailing_len(2), 16);
        assert_eq!(Kind::Datasec.trailing_len(2), 24);
        assert_eq!(Kind::Func.trailing_len(2), 0);
        assert_eq!(Kind::Array.trailing_len(0), 12);
    }

    /// A record whose trailing members run past the buffer is truncated, not misread.
    #[test]
    fn decode_rejects_short_trailing_data() {
        let mut rec = Vec::new();
        rec.extend_from_slice(&1u32.to_le_bytes());
        rec.extend_from_slice(&((4u32 << 24) | 2).to_le_bytes()); // STRUCT, vlen 2
        rec.extend_from_slice(&8u32.to_le_bytes());
        rec.extend_from_slice(&[0; 12]); // only one member
        assert_eq!(RawType::decode(&rec).unwrap_err(), DecodeError::Truncated);
        rec.extend_from_slice(&[0; 12]);
        let (ty, len) = RawType::decode(&rec).expect("complete");
        assert_eq!((ty.kind, ty.vlen, len), (Kind::Struct, 2, 36));
    }
}
