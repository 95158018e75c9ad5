//! Reading kernel structures by byte offset (`bpf_probe_read_kernel`), with offsets the
//! daemon computed from the running kernel's BTF (aya-ebpf has no CO-RE relocations).

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_probe_read_kernel, bpf_probe_read_kernel_str};
use probed_common::{KernelOffsets, NAME_LEN, PidOffsets, RetOffsets, VmaInfo};

use crate::maps::TRACK_CONFIG;

/// The offsets, if the daemon found them all.
#[inline(always)]
pub fn offsets() -> Option<&'static KernelOffsets> {
    TRACK_CONFIG
        .get(0)
        .map(|c| &c.offsets)
        .filter(|o| o.valid == 1)
}

/// Reads the u64 at `base + off`; 0 if unreadable.
#[inline(always)]
pub fn read_u64(base: u64, off: u32) -> u64 {
    let mut v: u64 = 0;
    // SAFETY: bpf_probe_read_kernel copies 8 bytes into `v` (a valid stack slot) and fails
    // cleanly, leaving `v` zeroed, if the source address is not readable kernel memory.
    unsafe {
        bpf_probe_read_kernel(
            (&raw mut v).cast::<c_void>(),
            8,
            (base.wrapping_add(off as u64)) as *const c_void,
        )
    };
    v
}

/// Reads the u32 at `base + off`; 0 if unreadable.
#[inline(always)]
pub fn read_u32(base: u64, off: u32) -> u32 {
    let mut v: u32 = 0;
    // SAFETY: as in read_u64, for 4 bytes.
    unsafe {
        bpf_probe_read_kernel(
            (&raw mut v).cast::<c_void>(),
            4,
            (base.wrapping_add(off as u64)) as *const c_void,
        )
    };
    v
}

/// Fills `out` from the `vm_area_struct` at `vma`, and `name` with its file's last path
/// component. Returns whether the mapping is file-backed.
#[inline(always)]
pub fn read_vma(o: &KernelOffsets, vma: u64, out: &mut VmaInfo, name: &mut [u8; NAME_LEN]) -> bool {
    read_vma_range(o, vma, out);
    let file = read_u64(vma, o.vma_file);
    read_file(o, file, out, name)
}

/// The `vm_area_struct` at `vma`'s start, end, pgoff and flags into `out`.
#[inline(always)]
pub fn read_vma_range(o: &KernelOffsets, vma: u64, out: &mut VmaInfo) {
    out.start = read_u64(vma, o.vma_start);
    out.end = read_u64(vma, o.vma_end);
    out.pgoff = read_u64(vma, o.vma_pgoff);
    out.flags = read_u64(vma, o.vma_flags);
}

/// The identity (kernel dev, inode) of the `struct file` at `file`.
#[inline(always)]
pub fn file_identity(o: &KernelOffsets, file: u64) -> (u64, u64) {
    let inode = read_u64(file, o.file_inode);
    let sb = read_u64(inode, o.inode_sb);
    (read_u32(sb, o.sb_dev) as u64, read_u64(inode, o.inode_ino))
}

/// Fills the file identity of `out` (and `name`) from the `struct file` at `file`; returns
/// whether there is a file.
#[inline(always)]
pub fn read_file(
    o: &KernelOffsets,
    file: u64,
    out: &mut VmaInfo,
    name: &mut [u8; NAME_LEN],
) -> bool {
    if file == 0 {
        out.dev = 0;
        out.ino = 0;
        return false;
    }
    let inode = read_u64(file, o.file_inode);
    out.ino = read_u64(inode, o.inode_ino);
    let sb = read_u64(inode, o.inode_sb);
    out.dev = read_u32(sb, o.sb_dev) as u64;
    let dentry = read_u64(file, o.file_dentry);
    let name_ptr = read_u64(dentry, o.dentry_name);
    // SAFETY: copies at most NAME_LEN bytes, NUL-terminated, into `name` (valid memory);
    // fails cleanly on an unreadable source.
    unsafe {
        bpf_probe_read_kernel_str(
            name.as_mut_ptr().cast::<c_void>(),
            NAME_LEN as u32,
            name_ptr as *const c_void,
        )
    };
    true
}

/// The `struct file` behind descriptor `fd` of the current task, or 0.
#[inline(always)]
pub fn file_of_fd(o: &KernelOffsets, fd: u64) -> u64 {
    // SAFETY: bpf_get_current_task has no preconditions; the value is only an address read
    // through bpf_probe_read_kernel.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() };
    let files = read_u64(task, o.task_files);
    let fdt = read_u64(files, o.files_fdt);
    let max = read_u32(fdt, o.fdt_max_fds) as u64;
    if fd >= max {
        return 0;
    }
    let array = read_u64(fdt, o.fdt_fd);
    read_u64(array, (fd * 8) as u32)
}

/// The namespace pid offsets, if the daemon found them all.
#[inline(always)]
pub fn pid_offsets() -> Option<&'static PidOffsets> {
    TRACK_CONFIG
        .get(0)
        .map(|c| &c.pid_offsets)
        .filter(|o| o.valid == 1)
}

/// The current task's `mm` (0 if the offsets are unknown).
#[inline(always)]
pub fn current_mm() -> u64 {
    let Some(o) = offsets() else { return 0 };
    // SAFETY: bpf_get_current_task has no preconditions; the value is only an address read
    // through bpf_probe_read_kernel.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() };
    read_u64(task, o.task_mm)
}

/// The depth of the current task's pid namespace (0: the initial one); None if the offsets
/// are unknown.
#[inline(always)]
pub fn ns_level() -> Option<u32> {
    let o = pid_offsets()?;
    // SAFETY: bpf_get_current_task has no preconditions; the value is only an address read
    // through bpf_probe_read_kernel.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() };
    Some(read_u32(read_u64(task, o.task_thread_pid), o.pid_level))
}

/// The current task's (process id, thread id) in its own — innermost — pid namespace, as
/// `getpid()`/`gettid()` return them there: `numbers[level].nr` of the `struct pid` of the
/// group leader and of the thread, `level` being its namespace's depth as [`ns_level`] read
/// it (kept per process: proc_facts.rs). `(tgid, tid)` unchanged at level 0 (the initial
/// namespace, no read); (0, 0) when the offsets are unknown.
#[inline(always)]
pub fn ns_pids(tgid: u32, tid: u32, level: u32) -> (u32, u32) {
    if level == 0 {
        return (tgid, tid);
    }
    let Some(o) = pid_offsets() else {
        return (0, 0);
    };
    // Pid namespaces nest at most 32 deep (MAX_PID_NS_LEVEL); a larger value is a bad read
    // (or `NS_LEVEL_UNKNOWN`).
    if level > 32 {
        return (0, 0);
    }
    // SAFETY: bpf_get_current_task has no preconditions; the value is only an address read
    // through bpf_probe_read_kernel.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() };
    let thread_pid = read_u64(task, o.task_thread_pid);
    let at = o.pid_numbers + level * o.upid_size;
    let ns_tid = read_u32(thread_pid, at);
    let leader = read_u64(task, o.task_group_leader);
    let leader_pid = read_u64(leader, o.task_thread_pid);
    (read_u32(leader_pid, at), ns_tid)
}

/// The uretprobe bookkeeping offsets, if the daemon found them all.
#[inline(always)]
fn ret_offsets() -> Option<&'static RetOffsets> {
    TRACK_CONFIG
        .get(0)
        .map(|c| &c.ret_offsets)
        .filter(|o| o.valid == 1)
}

/// At a uretprobe hit, the address of the function returning, from the kernel's own record of
/// it: `current->utask->return_instances->func`. The trampoline handler runs the return
/// consumers before it pops the task's `return_instances`, so its head is the instance
/// returning (for a chain of tail calls between probed functions: the chain's first, the
/// known limit). 0 when the offsets are unknown or a read fails.
#[inline(always)]
pub fn uretprobe_func() -> u64 {
    let Some(o) = ret_offsets() else {
        return 0;
    };
    // SAFETY: bpf_get_current_task has no preconditions; the value is only an address read
    // through bpf_probe_read_kernel.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() };
    let utask = read_u64(task, o.task_utask);
    if utask == 0 {
        return 0;
    }
    let ri = read_u64(utask, o.utask_return_instances);
    if ri == 0 {
        return 0;
    }
    read_u64(ri, o.ri_func)
}
