//! Kernel structure offsets for the tracker's `bpf_probe_read_kernel` reads, from the
//! running kernel's BTF (aya-ebpf has no CO-RE relocations).

use probed_common::{KernelOffsets, PathOffsets, PidOffsets, RetOffsets, TrackConfig};

use crate::btf::{Btf, OffsetError};

/// Why the kernel's structures do not fit what the tracker reads.
#[derive(Debug, thiserror::Error)]
pub enum KernelOffsetsError {
    /// A member is missing or not readable as a whole field.
    #[error(transparent)]
    Offset(#[from] OffsetError),
    /// A member has another width than the tracker reads.
    #[error("`{ty}.{member}` is {size} bytes, the tracker reads {want}")]
    Width {
        /// The struct.
        ty: String,
        /// The member path.
        member: String,
        /// Its size.
        size: u32,
        /// The size read.
        want: u32,
    },
}

/// Everything the BPF side reads by offset, from one parse of the running kernel's BTF
/// (~5 ms here). Each part that the kernel's structures do not fit is left all-unknown
/// (`valid == 0`, or 0) with a warning saying what is lost; without BTF at all, one warning
/// and every part unknown.
pub fn track_config(exit_group_dead_offset: u32) -> TrackConfig {
    let mut config = TrackConfig {
        exit_group_dead_offset,
        mm_exe_file: 0,
        offsets: KernelOffsets::default(),
        path_offsets: PathOffsets::default(),
        pid_offsets: PidOffsets::default(),
        ret_offsets: RetOffsets::default(),
        mm_lock_seq: 0,
        _reserved: 0,
    };
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(err) => {
            tracing::warn!(error = %err, "no kernel BTF: address-space changes will be rescanned, not replayed; no namespace pids, no paths in reports, probed recognized by its pid only");
            return config;
        }
    };
    match from_btf(&btf) {
        Ok(offsets) => config.offsets = offsets,
        Err(err) => {
            tracing::warn!(error = %err, "kernel BTF lacks a member the tracker reads: changes will be rescanned, not replayed")
        }
    }
    match mm_exe_file_from_btf(&btf) {
        Ok(offset) => config.mm_exe_file = offset,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read a process's executable in BPF: other probed processes will not be excluded")
        }
    }
    match pid_offsets_from_btf(&btf) {
        Ok(offsets) => config.pid_offsets = offsets,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read namespace pids: hits will carry no ns_pid/ns_tid")
        }
    }
    match ret_offsets_from_btf(&btf) {
        Ok(offsets) => config.ret_offsets = offsets,
        Err(err) => {
            // Only matters where bpf_get_func_ip gives uprobes nothing (Linux < 6.4): there,
            // return hits keep the registers' ip (the caller's return address).
            tracing::debug!(error = %err, "cannot read the uretprobe bookkeeping in BPF")
        }
    }
    match mm_lock_seq_from_btf(&btf) {
        Ok(offset) => config.mm_lock_seq = offset,
        // Only kseq mode reads it; `TrackerChoice::decide` says why that mode is unavailable.
        Err(err) => tracing::debug!(error = %err, "no address-space seqcount in this kernel"),
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    match crate::track::path_offsets::from_btf(&btf, &release) {
        Ok(offsets) => config.path_offsets = offsets,
        Err(err) => {
            tracing::warn!(error = %err, "cannot name mapped files in BPF: replayed mappings are named from /proc, checked by identity")
        }
    }
    config
}

/// `mm_struct.exe_file` from `btf`, checked to be a pointer-wide field.
pub fn mm_exe_file_from_btf(btf: &Btf) -> Result<u32, KernelOffsetsError> {
    sized_member(btf, "mm_struct", &["exe_file"], 8)
}

/// `mm_struct.mm_lock_seq.sequence`: the address space's seqcount, which `mmap_write_lock`
/// makes odd and the write section's end even again (Linux 6.14+, `CONFIG_PER_VMA_LOCK`).
/// Before 6.14 `mm_lock_seq` was a plain `int` bumped only at the end of a write section —
/// not odd while a change is under way — so the path through `sequence` fails there, as it
/// must: kseq mode needs a counter that is odd during changes.
pub fn mm_lock_seq_from_btf(btf: &Btf) -> Result<u32, KernelOffsetsError> {
    sized_member(btf, "mm_struct", &["mm_lock_seq", "sequence"], 4)
}

/// Why kseq mode cannot run on this kernel (`None`: it can): it reads the address space's
/// seqcount and the task/VMA/file offsets of [`from_btf`].
pub fn kseq_mode_unavailable() -> Option<String> {
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(err) => return Some(format!("no kernel BTF ({err})")),
    };
    if let Err(err) = from_btf(&btf) {
        return Some(format!(
            "the kernel's BTF lacks a member the capture reads ({err})"
        ));
    }
    mm_lock_seq_from_btf(&btf).err().map(|err| {
        format!(
            "the kernel has no address-space seqcount (mm_struct.mm_lock_seq.sequence, Linux \
             6.14+: {err})"
        )
    })
}

/// Every offset the tracker needs, with the width it reads checked.
pub fn from_btf(btf: &Btf) -> Result<KernelOffsets, KernelOffsetsError> {
    let u64_at = |ty: &str, path: &[&str]| sized_member(btf, ty, path, 8);
    // Nested members are looked up one struct at a time: f_path is a `struct path`, d_name a
    // `struct qstr`.
    let file_path = btf.member_offset("file", &["f_path"])?;
    let path_dentry = u64_at("path", &["dentry"])?;
    let dentry_name = btf.member_offset("dentry", &["d_name"])?;
    let qstr_name = u64_at("qstr", &["name"])?;
    let u32_at = |ty: &str, path: &[&str]| sized_member(btf, ty, path, 4);
    Ok(KernelOffsets {
        valid: 1,
        task_mm: u64_at("task_struct", &["mm"])?,
        task_pid: u32_at("task_struct", &["pid"])?,
        task_tgid: u32_at("task_struct", &["tgid"])?,
        task_files: u64_at("task_struct", &["files"])?,
        files_fdt: u64_at("files_struct", &["fdt"])?,
        fdt_fd: u64_at("fdtable", &["fd"])?,
        fdt_max_fds: u32_at("fdtable", &["max_fds"])?,
        mm_start_code: u64_at("mm_struct", &["start_code"])?,
        mm_start_brk: u64_at("mm_struct", &["start_brk"])?,
        mm_brk: u64_at("mm_struct", &["brk"])?,
        vma_start: u64_at("vm_area_struct", &["vm_start"])?,
        vma_end: u64_at("vm_area_struct", &["vm_end"])?,
        vma_pgoff: u64_at("vm_area_struct", &["vm_pgoff"])?,
        vma_flags: u64_at("vm_area_struct", &["vm_flags"])?,
        vma_file: u64_at("vm_area_struct", &["vm_file"])?,
        file_inode: u64_at("file", &["f_inode"])?,
        file_dentry: file_path + path_dentry,
        inode_ino: u64_at("inode", &["i_ino"])?,
        inode_sb: u64_at("inode", &["i_sb"])?,
        sb_dev: u32_at("super_block", &["s_dev"])?,
        dentry_name: dentry_name + qstr_name,
    })
}

/// `task_struct.thread_pid`, `task_struct.group_leader`, `pid.level`, `pid.numbers` and the
/// size of a `struct upid`, with the widths BPF reads checked.
pub fn pid_offsets_from_btf(btf: &Btf) -> Result<PidOffsets, KernelOffsetsError> {
    let sized = |ty: &str, path: &[&str], want: u32| sized_member(btf, ty, path, want);
    // `numbers` is a flexible array (`numbers[]`, size 0 in BTF): only its offset matters.
    let numbers = btf.member_offset("pid", &["numbers"])?;
    // BPF reads `nr` at the start of each `struct upid`; its stride is the struct's size,
    // which with `ns` (a pointer) as the last, widest member is where `ns` ends.
    let nr = sized("upid", &["nr"], 4)?;
    if nr != 0 {
        return Err(KernelOffsetsError::Width {
            ty: "upid".into(),
            member: format!("nr (at offset {nr}, expected 0)"),
            size: 4,
            want: 4,
        });
    }
    let ns = btf.member("upid", &["ns"])?;
    Ok(PidOffsets {
        valid: 1,
        task_thread_pid: sized("task_struct", &["thread_pid"], 8)?,
        task_group_leader: sized("task_struct", &["group_leader"], 8)?,
        pid_level: sized("pid", &["level"], 4)?,
        pid_numbers: numbers,
        upid_size: ns.offset + ns.size,
    })
}

/// `task_struct.utask`, `uprobe_task.return_instances` and `return_instance.func`: where a
/// uretprobe hit finds its function's address when `bpf_get_func_ip` cannot give it (see
/// [`RetOffsets`]). All three are pointer-wide.
pub fn ret_offsets_from_btf(btf: &Btf) -> Result<RetOffsets, KernelOffsetsError> {
    let u64_at = |ty: &str, path: &[&str]| sized_member(btf, ty, path, 8);
    Ok(RetOffsets {
        valid: 1,
        task_utask: u64_at("task_struct", &["utask"])?,
        utask_return_instances: u64_at("uprobe_task", &["return_instances"])?,
        ri_func: u64_at("return_instance", &["func"])?,
    })
}

/// The offset of member `path` of struct `ty`, checked to be `want` bytes wide (the width BPF
/// reads it with).
pub(crate) fn sized_member(
    btf: &Btf,
    ty: &str,
    path: &[&str],
    want: u32,
) -> Result<u32, KernelOffsetsError> {
    let m = btf.member(ty, path)?;
    if m.size == want {
        Ok(m.offset)
    } else {
        Err(KernelOffsetsError::Width {
            ty: ty.to_string(),
            member: path.join("."),
            size: m.size,
            want,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the running kernel every offset is found and the result is marked valid; the
    /// file's dentry is found through f_path.
    #[test]
    fn running_kernel_offsets() {
        let Ok(btf) = Btf::from_sys_fs() else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "no /sys/kernel/btf/vmlinux under CI"
            );
            eprintln!("SKIPPED running_kernel_offsets: no kernel BTF");
            return;
        };
        let o = from_btf(&btf).unwrap();
        assert_eq!(o.valid, 1);
        assert_eq!(
            o.vma_start, 0,
            "vm_start opens vm_area_struct on every kernel we know"
        );
        assert_eq!(o.vma_end, 8);
        let p = pid_offsets_from_btf(&btf).unwrap();
        assert_eq!(p.valid, 1);
        assert_eq!(
            p.upid_size, 16,
            "struct upid {{ int nr; struct pid_namespace *ns; }}"
        );
        assert!(p.pid_numbers > p.pid_level, "{p:?}");
        assert_ne!(p.task_thread_pid, p.task_group_leader);
        // This machine's kernel (6.18) has the 6.14+ seqcount, never at offset 0.
        assert!(mm_lock_seq_from_btf(&btf).unwrap() > 0);
        let r = ret_offsets_from_btf(&btf).unwrap();
        assert_eq!(r.valid, 1);
        assert_ne!(r.task_utask, 0, "{r:?}");
        assert!(
            r.ri_func > 0,
            "return_instance opens with its uprobe (an hprobe in newer kernels), func follows: {r:?}"
        );
        assert_eq!(
            o.file_dentry,
            btf.member_offset("file", &["f_path"]).unwrap()
                + btf.member_offset("path", &["dentry"]).unwrap()
        );
    }
}
