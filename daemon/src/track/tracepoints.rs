//! The kernel tracepoints the change tracker attaches to, and tracefs set-up.

use std::path::Path;

/// Syscalls that can change a process's file-backed executable mappings (or, for brk and
/// anonymous mmap, the rest of its address space — tracked too, so that every reason the
/// resolver gives is exact, not only its file answers), each with the BPF program for its
/// entry (one per argument layout: the kernel refuses a program that reads past the end of
/// a tracepoint record). Every exit goes to `probed_mm_exit`.
pub const SYSCALLS: [(&str, &str); 9] = [
    ("mmap", "probed_mmap_enter"),
    ("munmap", "probed_munmap_enter"),
    ("mremap", "probed_mremap_enter"),
    ("mprotect", "probed_mprotect_enter"),
    ("pkey_mprotect", "probed_mprotect_enter"),
    ("brk", "probed_brk_enter"),
    ("shmat", "probed_other_enter"),
    ("shmdt", "probed_other_enter"),
    ("remap_file_pages", "probed_other_enter"),
];

/// The entry programs named in [`SYSCALLS`], once each.
pub const ENTER_PROGRAMS: [&str; 6] = [
    "probed_mmap_enter",
    "probed_munmap_enter",
    "probed_mremap_enter",
    "probed_mprotect_enter",
    "probed_brk_enter",
    "probed_other_enter",
];

/// The tracepoints lock mode attaches to (as raw tracepoints): category, name.
pub const LOCK_TRACEPOINTS: [(&str, &str); 2] = [
    ("mmap_lock", "mmap_lock_acquire_returned"),
    ("mmap_lock", "mmap_lock_released"),
];

/// The first lock-mode tracepoint this kernel lacks, as `category:name`; `None` if it has
/// them all.
pub fn lock_tracepoints_missing() -> Option<String> {
    LOCK_TRACEPOINTS
        .iter()
        .find(|(c, n)| !exists(c, n))
        .map(|(c, n)| format!("{c}:{n}"))
}

/// Where tracefs is normally mounted.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Why tracefs is not usable.
#[derive(Debug, thiserror::Error)]
#[error("tracefs is not mounted at {TRACEFS} and mounting it failed (needs CAP_SYS_ADMIN)")]
pub struct TracefsError(#[source] std::io::Error);

/// Mounts tracefs at its usual place if nothing is there yet; attaching tracepoints needs
/// their ids from it. Mounting an already-mounted tracefs is never attempted.
pub fn ensure_tracefs() -> Result<(), TracefsError> {
    let events = Path::new(TRACEFS).join("events");
    if events.is_dir() {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL");
    let fstype = std::ffi::CString::new("tracefs").expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call;
    // data may be null for tracefs.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// Whether this kernel has a tracepoint.
pub fn exists(category: &str, name: &str) -> bool {
    Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .is_dir()
}

/// The byte offset of `group_dead` in the sched_process_exit record, if the kernel has it
/// (added in Linux 6.16); 0 otherwise.
pub fn exit_group_dead_offset() -> u32 {
    let format = Path::new(TRACEFS).join("events/sched/sched_process_exit/format");
    std::fs::read_to_string(format)
        .ok()
        .and_then(|text| field_offset(&text, "group_dead"))
        .unwrap_or(0)
}

/// Finds `offset:N;` of a field in a tracepoint format description.
fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.split_whitespace().last()?;
        if name.trim_start_matches('*') != field {
            return None;
        }
        rest.trim()
            .strip_prefix("offset:")?
            .split(';')
            .next()?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offset of a named field is read from a tracepoint format text; absent fields give
    /// None.
    #[test]
    fn format_offsets() {
        let text = "name: sched_process_exit\nformat:\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";
        assert_eq!(field_offset(text, "group_dead"), Some(32));
        assert_eq!(field_offset(text, "pid"), Some(24));
        assert_eq!(field_offset(text, "prio"), None);
    }
}
