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

/// The tracepoints lock mode attaches to (as raw tracepoints): category, name.
pub const LOCK_TRACEPOINTS: [(&str, &str); 2] = [
    ("mmap_lock", "mmap_lock_acquire_returned"),
    ("mmap_lock", "mmap_lock_released"),
];

/// Why lock mode cannot run on this kernel; `None` if it can.
///
/// Its raw tracepoints must exist and have the Linux 6.14+ arguments `(mm, write[, success])`.
/// Before 6.14 they took a `memcg_path` argument second (the BPF programs would read the
/// path pointer as `write`), and an enabled event built that cgroup path string for every
/// mmap_lock operation of every process: both wrong and costly, so such kernels keep
/// syscall mode. The tracefs format says which: the old events carry a `memcg_path` field.
pub fn lock_mode_unavailable() -> Option<String> {
    let format = |c: &str, n: &str| {
        std::fs::read_to_string(
            Path::new(TRACEFS)
                .join("events")
                .join(c)
                .join(n)
                .join("format"),
        )
    };
    LOCK_TRACEPOINTS.iter().find_map(|(c, n)| {
        if !exists(c, n) {
            return Some(format!("no tracepoint {c}:{n}"));
        }
        lock_format_problem(c, n, &format(c, n).unwrap_or_default())
    })
}

/// [`lock_mode_unavailable`]'s check of one tracepoint's tracefs format text.
pub fn lock_format_problem(category: &str, name: &str, format: &str) -> Option<String> {
    if format.contains("memcg_path") {
        return Some(format!(
            "tracepoint {category}:{name} has the pre-6.14 arguments (a memcg_path, built for \
             every mmap_lock operation while enabled)"
        ));
    }
    if !format.contains("bool write") {
        return Some(format!(
            "tracepoint {category}:{name} has no `write` argument in its tracefs format"
        ));
    }
    None
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

    /// Lock mode is refused on the pre-6.14 events (6.1's and 6.12's format carries a
    /// memcg_path string) and accepted on 6.14+'s (memcg_id, write, success).
    #[test]
    fn lock_formats() {
        let old = "name: mmap_lock_acquire_returned\nformat:\n\tfield:struct mm_struct * mm;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:__data_loc char[] memcg_path;\toffset:16;\tsize:4;\tsigned:0;\n\tfield:bool write;\toffset:20;\tsize:1;\tsigned:0;\n";
        let new = "name: mmap_lock_acquire_returned\nformat:\n\tfield:struct mm_struct * mm;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:u64 memcg_id;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:bool write;\toffset:24;\tsize:1;\tsigned:0;\n\tfield:bool success;\toffset:25;\tsize:1;\tsigned:0;\n";
        let problem = lock_format_problem("mmap_lock", "mmap_lock_acquire_returned", old);
        assert!(problem.is_some_and(|p| p.contains("pre-6.14")));
        assert_eq!(
            lock_format_problem("mmap_lock", "mmap_lock_acquire_returned", new),
            None
        );
        assert!(lock_format_problem("mmap_lock", "x", "").is_some());
    }
}
