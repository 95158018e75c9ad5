//! A probe's options as the kernel and BPF take them: a `--pid` checked alive before
//! anything is attached, and the BPF flags of a stack mode.
//!
//! Apart from the run (`trace.rs`) because the daemon (`service/`) sets the same options
//! on its probes and uses these too.

use std::{io, num::NonZeroU32};

/// A `--pid` that names no live process is an error before anything is attached.
pub(super) fn check_alive(pid: NonZeroU32) -> anyhow::Result<()> {
    if !is_alive(pid) {
        anyhow::bail!("no process with pid {pid} (it may have exited)");
    }
    Ok(())
}

/// Whether `pid` names a live process (one we may not signal counts).
pub(crate) fn is_alive(pid: NonZeroU32) -> bool {
    let Ok(raw) = i32::try_from(pid.get()) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the pid exists.
    let signalled = unsafe { libc::kill(raw, 0) } == 0;
    signalled || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The BPF probe flags of a stack mode: the kernel's frame-pointer walk, or registers and a
/// stack copy of `copy_pages` pages (one of `STACK_COPY_PAGE_CHOICES`; another size takes
/// the default) for the daemon's unwinder.
pub fn stack_flags(mode: crate::unwind::StackMode, copy_pages: usize) -> u32 {
    if mode.copies_stack() {
        let copy = probed_common::stack_copy_flags(copy_pages)
            .or(probed_common::stack_copy_flags(
                probed_common::STACK_COPY_DEFAULT_PAGES,
            ))
            .unwrap_or(probed_common::PROBE_FLAG_STACK_COPY);
        probed_common::PROBE_FLAG_STACK | copy
    } else {
        probed_common::PROBE_FLAG_STACK
    }
}
