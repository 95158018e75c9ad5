//! The BPF object embedded at build time (see build.rs for why embedded, not located).

/// The BPF object's bytes, 8-byte aligned as aya's ELF parser requires.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probed.bpf.o"));

/// Why the embedded object cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// This binary was built without the BPF object (a check-only build).
    #[error(
        "this probed binary was built without its BPF object; run `cargo xtask build-ebpf` \
         and rebuild (or build with `cargo xtask build`)"
    )]
    Missing,
}

/// The embedded BPF object, or an error when this is a check-only build.
pub fn bytes() -> Result<&'static [u8], ObjectError> {
    if OBJECT.is_empty() {
        Err(ObjectError::Missing)
    } else {
        Ok(OBJECT)
    }
}
