//! ELF reading: symbols, segments, file offset math, build-id.
//!
//! Files are read with positional reads into owned data ([`ElfImage`]), never memory-mapped,
//! so a binary truncated or replaced while probed runs yields an error, not a SIGBUS.
//! Virtual address ↔ file offset translation goes through the `PT_LOAD` segment containing
//! the address ([`Segments`]), never through section headers.
//!
//! - [`ElfImage`]: one parsed file (`ElfImage::open`).
//! - [`SymbolTable`]: `.symtab` + `.dynsym` merged, sorted; address → symbol, name → symbol,
//!   "did you mean" suggestions.
//! - [`open_source`]: the exact file a process maps, by (device, inode), even if its path
//!   was replaced or lives in a container.
//! - [`resolve_attach`] / [`resolve_attach_offset`]: `SPEC` attach points → file offsets.
//! - [`debuginfod`]: separate debug files from debuginfod servers, cached.
//! - [`read_notes`]: USDT probes (`.note.stapsdt`).
//! - [`SymbolTable::matching`]: the functions a wildcard names, one per address.

mod attach;
mod build_id;
mod debug_file;
pub mod debuginfod;
mod debuginfod_clean;
mod demangle;
mod error;
mod image;
mod locate;
mod parse;
mod pattern;
mod reader;
mod segments;
mod suggest;
mod symbols;
mod usdt;

pub use attach::{AttachError, AttachTarget, resolve_attach, resolve_attach_offset};
pub use build_id::BuildId;
pub use debug_file::{DEBUG_ROOT, DebugLink};
pub use demangle::demangle;
pub use error::ElfError;
pub use image::{DebugFetch, ElfImage, ElfType};
pub use locate::{FileSource, LocateError, Mapping, open_source};
pub(crate) use locate::{OVERLAYFS_SUPER_MAGIC, fs_magic};
pub use pattern::{PatternMatch, name_matches};
pub use segments::{LoadSegment, Segments};
pub use symbols::{Symbol, SymbolBinding, SymbolKind, SymbolTable};
pub use usdt::{UsdtError, UsdtNote, parse_notes, read_notes};

#[cfg(test)]
pub(crate) mod test_support;
