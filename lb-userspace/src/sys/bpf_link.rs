//! Link commands of `bpf(2)` that aya 0.14 has no public call for, for a cgroup link pinned by
//! a previous process: opening the pin as a descriptor (`BPF_OBJ_GET`) and replacing the
//! link's program in place (`BPF_LINK_UPDATE`), so that a restart or an upgrade swaps the
//! program without a moment in which it is detached (or attached twice).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use super::bpf::bpf;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// The `BPF_OBJ_*` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// The `link_update` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// The BPF object pinned at `path` (a link, here), as a descriptor; `NotFound` when nothing is
/// pinned there.
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_bytes())?;
    let mut attr = ObjAttr {
        pathname: name.as_ptr() as u64,
        ..ObjAttr::default()
    };
    // SAFETY: `attr` is the member BPF_OBJ_GET reads, its size is passed, and `pathname`
    // points to a NUL-terminated string that outlives the call.
    let fd = unsafe { bpf(BPF_OBJ_GET, &mut attr)? };
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Replaces the program of the link `link` with `program` (of the same type).
pub fn replace_program(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let fd = |fd: BorrowedFd<'_>| u32::try_from(fd.as_raw_fd()).map_err(io::Error::other);
    let mut attr = LinkUpdateAttr {
        link_fd: fd(link)?,
        new_prog_fd: fd(program)?,
        ..LinkUpdateAttr::default()
    };
    // SAFETY: `attr` is the member BPF_LINK_UPDATE reads, with no pointers.
    unsafe { bpf(BPF_LINK_UPDATE, &mut attr)? };
    Ok(())
}
