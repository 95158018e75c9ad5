//! Naming a mapped file at the moment its mapping is reported: the full path, walked from
//! the file's dentry up `d_parent` and across mounts, as `d_path()` would (bpf_d_path is
//! not allowed in tracepoint programs), and the user-visible identity of an overlayfs
//! backing file. Read when the report is written, so the name is the name of the file mapped
//! then — /proc/PID/map_files, read later by the daemon, names whatever is mapped there
//! *now* (a library dlclosed and replaced at the same address would get its successor's).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_probe_read_kernel},
    macros::map,
    maps::PerCpuArray,
};
use probed_common::{FilePath, PATH_BACKING, PATH_LEN, PATH_TRUNCATED, PathOffsets};

use crate::{
    kread::{read_u32, read_u64},
    maps::TRACK_CONFIG,
};

/// Most steps of one walk: path components plus mount crossings (a bound the verifier
/// needs; a deeper path is reported truncated, and the daemon then looks it up by identity).
const MAX_STEPS: u32 = 40;
/// `PATH_LEN - 1`: every offset and length into the scratch buffer is masked with it, so
/// that the verifier can prove `offset + length < 2 * PATH_LEN` without knowing that the
/// walk's own checks keep the path inside the first `PATH_LEN` bytes.
const MASK: u32 = PATH_LEN as u32 - 1;

/// The path is assembled right to left (leaf first) in the first `PATH_LEN` bytes of a
/// per-CPU buffer twice that size (the second half only makes masked accesses provably in
/// bounds), then copied into the report. Private to the walk: its own map, here, rather than
/// in maps.rs, because nothing else reads or writes it.
#[map(name = "PATH_SCRATCH")]
static PATH_SCRATCH: PerCpuArray<[u8; 2 * PATH_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// The state of one walk, shared with [`walk_step`] through bpf_loop.
#[repr(C)]
struct Walk {
    /// The current `struct vfsmount *`.
    mnt: u64,
    /// The current dentry.
    dentry: u64,
    /// Where the path assembled so far starts in the scratch buffer (it ends at PATH_LEN).
    pos: u32,
    /// `PATH_*` bits.
    flags: u16,
    /// 1 once the walk reached the root (or gave up).
    finished: u16,
}

/// One step of the walk: prepend the current dentry's name, or cross from a mount's root
/// to its mountpoint. Returns 1 to stop (root reached, or the path does not fit).
extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    let Some(o) = offsets() else { return 1 };
    let Some(scratch) = PATH_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let scratch = scratch.cast::<u8>();
    // SAFETY: `ctx` is the `Walk` read_file_path passed, alive on its stack during bpf_loop.
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    let mnt_root = read_u64(w.mnt, o.vfsmount_root);
    let parent = read_u64(w.dentry, o.dentry_parent);
    if w.dentry == mnt_root || w.dentry == parent || parent == 0 {
        // The root of this mount: continue at its mountpoint in the parent mount, or stop
        // at the root of the namespace (a mount that is its own parent).
        let mount = w.mnt.wrapping_sub(o.mount_mnt as u64);
        let up = read_u64(mount, o.mount_parent);
        if up == mount || up == 0 || w.dentry != mnt_root {
            w.finished = 1;
            return 1;
        }
        w.dentry = read_u64(mount, o.mount_mountpoint);
        w.mnt = up.wrapping_add(o.mount_mnt as u64);
        return 0;
    }
    let len = read_u32(w.dentry, o.dentry_name_len);
    let pos = w.pos;
    if len.wrapping_add(1) > pos || len > MASK {
        w.flags |= PATH_TRUNCATED;
        w.finished = 1;
        return 1;
    }
    let at = pos - (len + 1);
    w.pos = at;
    let name = read_u64(w.dentry, o.dentry_name);
    // SAFETY: `scratch` is a live per-CPU map value of 2 * PATH_LEN bytes; both offsets and
    // the length are masked below PATH_LEN (the verifier cannot relate `at` and `len`
    // through the check above, so the masks are what bound the accesses), so every byte
    // written is inside it. bpf_probe_read_kernel fails cleanly on an unreadable source.
    unsafe {
        scratch.add((at & MASK) as usize).write(b'/');
        bpf_probe_read_kernel(
            scratch
                .add((at.wrapping_add(1) & MASK) as usize)
                .cast::<c_void>(),
            len & MASK,
            name as *const c_void,
        );
    }
    w.dentry = parent;
    0
}

/// The path offsets, if the daemon found them all.
#[inline(always)]
fn offsets() -> Option<&'static PathOffsets> {
    TRACK_CONFIG
        .get(0)
        .map(|c| &c.path_offsets)
        .filter(|o| o.valid == 1)
}

/// The (kernel dev, inode) of the file the user opened, if the `struct file` at `file` is an
/// overlayfs backing file (its own inode is the real, lower or upper, file's).
#[inline(always)]
pub fn user_identity(file: u64) -> Option<(u64, u64)> {
    let o = offsets()?;
    if file == 0 || o.fmode_backing == 0 || read_u32(file, o.file_mode) & o.fmode_backing == 0 {
        return None;
    }
    let dentry = read_u64(file, o.backing_user_dentry);
    Some(identity(o, dentry))
}

/// (kernel dev, inode) of the dentry's inode.
#[inline(always)]
fn identity(o: &PathOffsets, dentry: u64) -> (u64, u64) {
    let inode = read_u64(dentry, o.dentry_inode);
    let sb = read_u64(inode, o.inode_sb);
    (read_u32(sb, o.sb_dev) as u64, read_u64(inode, o.inode_ino))
}

/// Fills `out` (in a reserved ring buffer record) with the path and user-visible identity
/// of the `struct file` at `file`; `len` 0 when there is no file or no offsets. Bytes of
/// `out.bytes` past `len` are left as they were.
///
/// # Safety
/// `out` must point to writable memory of `FilePath`'s size.
#[inline(always)]
pub unsafe fn read_file_path(file: u64, out: *mut FilePath) {
    // SAFETY: the caller's contract.
    unsafe {
        (&raw mut (*out).len).write(0);
        (&raw mut (*out).flags).write(0);
        (&raw mut (*out)._reserved).write(0);
        (&raw mut (*out).user_dev).write(0);
        (&raw mut (*out).user_ino).write(0);
    }
    let Some(o) = offsets() else { return };
    if file == 0 {
        return;
    }
    let Some(scratch) = PATH_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let scratch = scratch.cast::<u8>();
    // A backing file (overlayfs) is named by the path the user opened: its own f_path is
    // on a private clone of the layer's mount, relative to the layer directory.
    let backing = o.fmode_backing != 0 && read_u32(file, o.file_mode) & o.fmode_backing != 0;
    let mut walk = if backing {
        Walk {
            mnt: read_u64(file, o.backing_user_mnt),
            dentry: read_u64(file, o.backing_user_dentry),
            pos: PATH_LEN as u32,
            flags: PATH_BACKING,
            finished: 0,
        }
    } else {
        Walk {
            mnt: read_u64(file, o.file_mnt),
            dentry: read_u64(file, o.file_dentry),
            pos: PATH_LEN as u32,
            flags: 0,
            finished: 0,
        }
    };
    let (user_dev, user_ino) = identity(o, walk.dentry);
    // bpf_loop, not a loop: the verifier checks the step once instead of once per
    // iteration and branch (an unrolled 40-step walk exceeded its 1M-instruction budget).
    // SAFETY: `walk_step` is a static callback with the signature bpf_loop expects, and
    // `walk` a live stack object it receives for the duration of the call.
    unsafe {
        bpf_loop(
            MAX_STEPS,
            walk_step as *mut c_void,
            (&raw mut walk).cast::<c_void>(),
            0,
        );
    }
    let (pos, mut flags, finished) = (walk.pos, walk.flags, walk.finished != 0);
    if !finished {
        flags |= PATH_TRUNCATED;
    }
    // Volatile: keeps the mask, which the verifier needs to bound the copy below.
    // SAFETY: a read of a live stack variable.
    let at = unsafe { core::ptr::read_volatile(&pos) } & MASK;
    let mut n = PATH_LEN as u32 - at;
    if pos == PATH_LEN as u32 {
        n = 0;
    }
    if n > PATH_LEN as u32 {
        n = PATH_LEN as u32;
    }
    // SAFETY: `out.bytes` holds PATH_LEN bytes and `n <= PATH_LEN`; the source is the
    // scratch buffer's path part (`at + n == PATH_LEN`).
    unsafe {
        if n > 0 {
            bpf_probe_read_kernel(
                (&raw mut (*out).bytes).cast::<c_void>(),
                n,
                scratch.add(at as usize) as *const c_void,
            );
        }
        (&raw mut (*out).len).write(n as u16);
        (&raw mut (*out).flags).write(flags);
        (&raw mut (*out).user_dev).write(user_dev);
        (&raw mut (*out).user_ino).write(user_ino);
    }
}
