//! Offsets for naming mapped files in BPF (`ebpf/src/path.rs`): the dentry/mount walk and
//! the user path of an overlayfs backing file, from the running kernel's BTF.

use probed_common::PathOffsets;

use crate::{
    btf::Btf,
    track::offsets::{KernelOffsetsError, sized_member},
};

/// Every offset the walk reads, with the widths checked; `release` is the kernel release
/// (`uname -r`, /proc/sys/kernel/osrelease), which decides `FMODE_BACKING`.
pub fn from_btf(btf: &Btf, release: &str) -> Result<PathOffsets, KernelOffsetsError> {
    let sized = |ty: &str, path: &[&str], want: u32| sized_member(btf, ty, path, want);
    let f_path = btf.member_offset("file", &["f_path"])?;
    let path_mnt = sized("path", &["mnt"], 8)?;
    let path_dentry = sized("path", &["dentry"], 8)?;
    let d_name = btf.member_offset("dentry", &["d_name"])?;
    // `len` is the upper half of `hash_len` (an anonymous struct in a union): read as the
    // u64's second u32, little-endian.
    let hash_len = sized("qstr", &["hash_len"], 8)?;
    // Kernels without backing files (before 6.6) map the real file itself: no user path.
    let (fmode_backing, user_path) = match btf.member_offset("backing_file", &["user_path"]) {
        Ok(off) => (fmode_backing(release), off),
        Err(_) => (0, 0),
    };
    Ok(PathOffsets {
        valid: 1,
        file_mode: sized("file", &["f_mode"], 4)?,
        file_mnt: f_path + path_mnt,
        file_dentry: f_path + path_dentry,
        fmode_backing,
        backing_user_mnt: user_path + path_mnt,
        backing_user_dentry: user_path + path_dentry,
        dentry_parent: sized("dentry", &["d_parent"], 8)?,
        dentry_name_len: d_name + hash_len + 4,
        dentry_name: d_name + sized("qstr", &["name"], 8)?,
        dentry_inode: sized("dentry", &["d_inode"], 8)?,
        inode_ino: sized("inode", &["i_ino"], 8)?,
        inode_sb: sized("inode", &["i_sb"], 8)?,
        sb_dev: sized("super_block", &["s_dev"], 4)?,
        vfsmount_root: sized("vfsmount", &["mnt_root"], 8)?,
        mount_mnt: btf.member_offset("mount", &["mnt"])?,
        mount_parent: sized("mount", &["mnt_parent"], 8)?,
        mount_mountpoint: sized("mount", &["mnt_mountpoint"], 8)?,
    })
}

/// `FMODE_BACKING` of kernel `release`: a preprocessor constant (not in BTF). It was bit 25
/// when backing files came (6.6) and became bit 24 in 6.14 (the fsnotify pre-content
/// series renumbered the FMODE bits). 0 (no backing files) before 6.6 or if unparsable.
fn fmode_backing(release: &str) -> u32 {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return 0;
    };
    match (major, minor) {
        (m, _) if m < 6 => 0,
        (6, n) if n < 6 => 0,
        (6, n) if n < 14 => 1 << 25,
        _ => 1 << 24,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fmode_backing_by_release() {
        assert_eq!(fmode_backing("5.15.0-91-generic"), 0);
        assert_eq!(fmode_backing("6.1.0-18-amd64"), 0);
        assert_eq!(fmode_backing("6.6.8"), 1 << 25);
        assert_eq!(fmode_backing("6.12.5-amd64"), 1 << 25);
        assert_eq!(fmode_backing("6.14.0"), 1 << 24);
        assert_eq!(fmode_backing("6.18.44-fc-v1294"), 1 << 24);
        assert_eq!(fmode_backing("garbage"), 0);
    }

    /// On the running kernel every offset is found; the walk's members sit where this
    /// kernel's headers put them (d_name.len right after d_name.hash).
    #[test]
    fn running_kernel_path_offsets() {
        let Ok(btf) = Btf::from_sys_fs() else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "no /sys/kernel/btf/vmlinux under CI"
            );
            eprintln!("SKIPPED running_kernel_path_offsets: no kernel BTF");
            return;
        };
        let o = from_btf(&btf, "6.18.0").unwrap();
        assert_eq!(o.valid, 1);
        assert_eq!(
            o.dentry_name_len + 4,
            o.dentry_name,
            "qstr {{ hash, len, name }}"
        );
        assert_eq!(o.vfsmount_root, 0, "mnt_root opens struct vfsmount");
        assert!(o.mount_mnt > o.mount_mountpoint, "{o:?}");
        assert_eq!(o.fmode_backing, 1 << 24);
        assert!(o.backing_user_dentry > o.file_dentry, "{o:?}");
    }
}
