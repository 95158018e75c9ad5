//! A minimal reader of the kernel's BTF, enough to turn `struct.member.member` paths into
//! byte offsets for BPF programs that read kernel memory with `bpf_probe_read_kernel` and
//! cannot use CO-RE relocations.
//!
//! aya 0.14 keeps its BTF accessors crate-private and `btf-rs` is LGPL, hence this reader.
//! The format is include/uapi/linux/btf.h, explained in Documentation/bpf/btf.rst:
//!
//! - `parse.rs`: header and type-section walk; every bound is checked once, up front.
//! - `offsets.rs`: [`Btf::member`] / [`Btf::member_offset`] / [`Btf::member_size`].
//!
//! Speed: on this 6.18 kernel (5.5 MB, 126,565 types) [`Btf::from_sys_fs`] takes ~5 ms in a
//! release build, of which ~4 ms is [`Btf::parse`] and the rest the sysfs read; ~40 ms in a
//! debug build (the `parses_running_kernel` test prints it). A member lookup is ~0.4 µs.
//! Only vmlinux BTF is read, not split (module) BTF.

mod kind;
mod names;
mod offsets;
mod parse;

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
pub(crate) mod test_support;

use std::{fmt, ops::Range, path::Path};

pub use kind::Kind;
pub use offsets::{Member, OffsetError};
pub use parse::BtfError;

use self::{kind::RawType, names::NameIndex};

/// Where the running kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A parsed, validated BTF blob.
pub struct Btf {
    /// The whole blob; the sections below are ranges of it.
    data: Box<[u8]>,
    /// The type section.
    types: Range<usize>,
    /// The string section.
    strings: Range<usize>,
    /// Start of each record within the type section; index `id - 1`, as id 0 is `void`.
    offsets: Vec<u32>,
    /// Bytes in a kernel pointer.
    pointer_size: u32,
    /// Named struct/union/fwd ids by name.
    index: NameIndex,
}

impl Btf {
    /// Reads and parses the running kernel's BTF ([`VMLINUX_BTF`]).
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Btf::from_file(Path::new(VMLINUX_BTF))
    }

    /// Reads and parses a raw BTF file (not an ELF `.BTF` section).
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_owned(),
            source,
        })?;
        Btf::from_vec(data)
    }

    /// Parses little-endian BTF from `bytes` (copied).
    pub fn parse(bytes: &[u8]) -> Result<Btf, BtfError> {
        Btf::from_vec(bytes.to_vec())
    }

    /// Parses, keeping `data` without a copy.
    fn from_vec(data: Vec<u8>) -> Result<Btf, BtfError> {
        let layout = parse::parse(&data)?;
        let mut btf = Btf {
            data: data.into_boxed_slice(),
            types: layout.types,
            strings: layout.strings,
            offsets: layout.offsets,
            // Without a `long` to measure, the daemon's own pointer width is the best guess:
            // it runs on the kernel it reads.
            pointer_size: layout.pointer_size.unwrap_or(size_of::<usize>() as u32),
            index: NameIndex::default(),
        };
        btf.index = NameIndex::build(&btf, layout.composites);
        Ok(btf)
    }

    /// Number of types, not counting `void` (id 0).
    pub fn type_count(&self) -> usize {
        self.offsets.len()
    }

    /// The record of type `id`; `None` for `void` (id 0). Ids come from the validated blob
    /// (every reference was checked against the type count), so they are always in range.
    pub(crate) fn ty(&self, id: u32) -> Option<RawType<'_>> {
        let offset = *self.offsets.get((id as usize).checked_sub(1)?)? as usize;
        let types = &self.data[self.types.clone()];
        let (ty, _) = RawType::decode(&types[offset..]).expect("records validated by parse");
        Some(ty)
    }

    /// The string at `offset` (validated by parse to lie in the string section).
    pub(crate) fn name(&self, offset: u32) -> &[u8] {
        parse::name_at(&self.data[self.strings.clone()], offset)
    }

    /// Named STRUCT/UNION/FWD ids called `name`, complete definitions first.
    pub(crate) fn named(&self, name: &str) -> &[u32] {
        self.index.lookup(self, name.as_bytes())
    }
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The blob is megabytes; its shape is what a reader of a log wants.
        f.debug_struct("Btf")
            .field("bytes", &self.data.len())
            .field("types", &self.offsets.len())
            .field("pointer_size", &self.pointer_size)
            .finish_non_exhaustive()
    }
}
