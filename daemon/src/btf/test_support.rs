//! A tiny BTF writer for unit tests: header + type records + strings, little-endian, laid out
//! exactly as include/uapi/linux/btf.h describes, so the reader is tested against blobs whose
//! every byte the test chose.

use super::kind::Kind;

/// Byte offset of `magic` in the header.
pub(crate) const HDR_MAGIC: usize = 0;
/// Byte offset of `type_len` in the header.
pub(crate) const HDR_TYPE_LEN: usize = 12;
/// Byte offset of `str_len` in the header.
pub(crate) const HDR_STR_LEN: usize = 20;

/// Overwrites the little-endian u32 at `at`.
pub(crate) fn patch_u32(data: &mut [u8], at: usize, value: u32) {
    data[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// The uapi number of `kind`.
fn raw_kind(kind: Kind) -> u32 {
    (1..=19)
        .find(|&n| Kind::from_raw(n) == Some(kind))
        .expect("every kind has a number")
}

/// Builds a BTF blob type by type; each method returns the new type's id.
pub(crate) struct BtfBuilder {
    /// The type section so far.
    types: Vec<u8>,
    /// The string section so far (starts with the empty string).
    strings: Vec<u8>,
    /// The id the next type gets.
    next_id: u32,
}

impl BtfBuilder {
    /// An empty blob: no types, and only the empty string.
    pub(crate) fn new() -> Self {
        BtfBuilder {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
        }
    }

    /// Adds `s` to the string section; "" is offset 0.
    pub(crate) fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    /// Current length of the string section.
    pub(crate) fn strings_len(&self) -> u32 {
        self.strings.len() as u32
    }

    /// Current length of the type section.
    pub(crate) fn type_len(&self) -> u32 {
        self.types.len() as u32
    }

    /// Appends a record with any field values, valid or not.
    pub(crate) fn raw(
        &mut self,
        name_off: u32,
        kind: u32,
        kind_flag: bool,
        vlen: u32,
        size_or_type: u32,
        trailing: &[u32],
    ) -> u32 {
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        for word in [name_off, info, size_or_type].iter().chain(trailing) {
            self.types.extend_from_slice(&word.to_le_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }

    /// A record of a known kind.
    fn add(
        &mut self,
        name: &str,
        kind: Kind,
        vlen: u32,
        size_or_type: u32,
        trailing: &[u32],
    ) -> u32 {
        let name_off = self.str(name);
        self.raw(
            name_off,
            raw_kind(kind),
            false,
            vlen,
            size_or_type,
            trailing,
        )
    }

    /// A whole-width signed integer of `size` bytes.
    pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
        self.int_bits(name, size, size * 8)
    }

    /// An integer of `size` bytes carrying only `bits` bits (the pre-kind_flag bitfield
    /// encoding when `bits < 8 * size`).
    pub(crate) fn int_bits(&mut self, name: &str, size: u32, bits: u32) -> u32 {
        // BTF_INT_SIGNED in bits 24..28, bit width in bits 0..8.
        self.add(name, Kind::Int, 0, size, &[(1 << 24) | bits])
    }

    /// A pointer, typedef, const, volatile, restrict or type tag on `target`.
    pub(crate) fn refer(&mut self, kind: Kind, name: &str, target: u32) -> u32 {
        self.add(name, kind, 0, target, &[])
    }

    /// A forward declaration of a struct (or union).
    pub(crate) fn fwd(&mut self, name: &str, union: bool) -> u32 {
        let name_off = self.str(name);
        self.raw(name_off, raw_kind(Kind::Fwd), union, 0, 0, &[])
    }

    /// An array of `n` elements of `elem`.
    pub(crate) fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
        self.add("", Kind::Array, 0, 0, &[elem, index, n])
    }

    /// A struct without kind_flag; members are (name, type, bit offset).
    pub(crate) fn struct_(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        self.composite(Kind::Struct, name, size, members)
    }

    /// A struct or union without kind_flag.
    pub(crate) fn composite(
        &mut self,
        kind: Kind,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32)],
    ) -> u32 {
        let with_sizes: Vec<_> = members.iter().map(|&(n, t, o)| (n, t, o, 0)).collect();
        self.composite_with(kind, name, size, false, &with_sizes)
    }

    /// A struct or union, members as (name, type, bit offset, bitfield size); with
    /// `kind_flag` the offset word packs the bitfield size into its high 8 bits.
    pub(crate) fn composite_with(
        &mut self,
        kind: Kind,
        name: &str,
        size: u32,
        kind_flag: bool,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let mut trailing = Vec::new();
        for &(member, type_id, bit_offset, bitfield_size) in members {
            let offset = if kind_flag {
                (bitfield_size << 24) | bit_offset
            } else {
                bit_offset
            };
            trailing.extend([self.str(member), type_id, offset]);
        }
        let name_off = self.str(name);
        self.raw(
            name_off,
            raw_kind(kind),
            kind_flag,
            members.len() as u32,
            size,
            &trailing,
        )
    }

    /// One record of every kind, each vlen-carrying one with two entries, then a struct
    /// `last { int x; }` whose id it returns: a desync anywhere would misplace that struct.
    pub(crate) fn one_of_every_kind(&mut self) -> u32 {
        let int = self.int("int", 4);
        let ptr = self.refer(Kind::Ptr, "", int);
        self.array(int, int, 4);
        let s = self.struct_("pair", 8, &[("a", int, 0), ("b", int, 32)]);
        self.composite(Kind::Union, "either", 4, &[("a", int, 0), ("b", ptr, 0)]);
        let (one, two) = (self.str("ONE"), self.str("TWO"));
        self.add("e", Kind::Enum, 2, 4, &[one, 1, two, 2]);
        self.fwd("later", false);
        self.refer(Kind::Typedef, "pair_t", s);
        self.refer(Kind::Volatile, "", int);
        self.refer(Kind::Const, "", int);
        self.refer(Kind::Restrict, "", ptr);
        let (x, y) = (self.str("x"), self.str("y"));
        let proto = self.add("", Kind::FuncProto, 2, int, &[x, int, y, ptr]);
        // FUNC's vlen is linkage (1: global); nothing follows it.
        let func = self.add("f", Kind::Func, 1, proto, &[]);
        let var = self.add("v", Kind::Var, 0, int, &[1]);
        self.add(".data", Kind::Datasec, 2, 8, &[var, 0, 4, var, 4, 4]);
        self.add("double", Kind::Float, 0, 8, &[]);
        self.add("tag", Kind::DeclTag, 0, func, &[u32::MAX]);
        self.refer(Kind::TypeTag, "user", int);
        self.add("e64", Kind::Enum64, 2, 8, &[one, 1, 0, two, 0, 1]);
        self.struct_("last", 4, &[("x", int, 0)])
    }

    /// Header + types + strings.
    pub(crate) fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.types.len() + self.strings.len());
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.extend_from_slice(&[1, 0]); // version, flags
        let (type_len, str_len) = (self.types.len() as u32, self.strings.len() as u32);
        for word in [24, 0, type_len, type_len, str_len] {
            out.extend_from_slice(&u32::to_le_bytes(word));
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}
