//! Kernel structure offsets for the tracker's `bpf_probe_read_kernel` reads.

use probed_common::KernelOffsets;

/// The offsets of the running kernel, or all-unknown (`valid == 0`), in which case the
/// tracker reports changes without mapping identities and the resolver rescans instead of
/// replaying.
pub fn kernel_offsets() -> KernelOffsets {
    KernelOffsets::default()
}
