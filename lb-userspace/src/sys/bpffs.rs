//! The bpf filesystem: whether a path is on one (`statfs`), which one (`stat`), and mounting
//! one (`mount`).

use std::{io, path::Path};

use rustix::{fs::FsWord, mount::MountFlags};

/// `BPF_FS_MAGIC` (linux/magic.h), as `f_type` holds it: the cast keeps its bits whatever the
/// width of `f_type` on this target, as the kernel stores it.
const BPFFS_MAGIC: FsWord = 0xcafe_4a11_u32 as FsWord;

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let stat = rustix::fs::statfs(path)?;
    Ok(stat.f_type == BPFFS_MAGIC)
}

/// Mounts a bpf filesystem at `target`, which must exist.
pub fn mount_bpffs(target: &Path) -> io::Result<()> {
    Ok(rustix::mount::mount(
        c"bpf",
        target,
        c"bpf",
        MountFlags::empty(),
        None,
    )?)
}

/// The device of the filesystem `path` is on (`st_dev`): every bpf filesystem mounted with
/// `mount -t bpf` has one of its own, and a bind mount shares its source's.
pub fn device_of(path: &Path) -> io::Result<u64> {
    Ok(rustix::fs::stat(path)?.st_dev)
}
