//! The cgroup v2 hierarchy, where `sock_ops` programs attach: finding where it is mounted
//! (`/proc/self/mountinfo`), mounting it where it is not (a host with only cgroup v1 at
//! `/sys/fs/cgroup`), and opening a cgroup directory for an attachment.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use rustix::mount::MountFlags;

/// Where the root of the cgroup v2 hierarchy is mounted in this process's mount namespace,
/// if anywhere (the first such mount).
pub fn cgroup2_root() -> io::Result<Option<PathBuf>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mountinfo.lines().find_map(cgroup2_root_in))
}

/// The mount point of a mountinfo line that mounts the root (`/`) of a cgroup2 filesystem.
/// Fields: id, parent, major:minor, root, mount point, options, optional fields, `-`, type,
/// source, super options.
fn cgroup2_root_in(line: &str) -> Option<PathBuf> {
    let (mount, fs) = line.split_once(" - ")?;
    if fs.split(' ').next()? != "cgroup2" {
        return None;
    }
    let mut fields = mount.split(' ');
    let root = fields.nth(3)?;
    let point = fields.next()?;
    (root == "/").then(|| PathBuf::from(unescape(point)))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and tab, newline, backslash).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Mounts the cgroup v2 hierarchy at `target`, created if missing.
pub fn mount_cgroup2(target: &Path) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    Ok(rustix::mount::mount(
        c"cgroup2",
        target,
        c"cgroup2",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )?)
}

/// A cgroup's directory, opened for an attachment.
pub fn open(dir: &Path) -> io::Result<File> {
    File::open(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_root_mount_is_found_and_others_are_not() {
        let v2 = "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(cgroup2_root_in(v2), Some(PathBuf::from("/sys/fs/cgroup")));
        let v1 = "30 25 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        assert_eq!(cgroup2_root_in(v1), None);
        // A bind mount of a sub-cgroup is not the root: attaching there misses the rest.
        let sub = "40 24 0:30 /system.slice /mnt/x rw - cgroup2 cgroup2 rw";
        assert_eq!(cgroup2_root_in(sub), None);
        let spaced = "41 24 0:30 / /run/a\\040b rw - cgroup2 cgroup2 rw";
        assert_eq!(cgroup2_root_in(spaced), Some(PathBuf::from("/run/a b")));
    }
}
