//! The CPU time of the fast path's TC program. It runs in the kernel on the packet path, not in
//! the daemon's process, so `/proc/PID/stat` misses it; the kernel counts it per program once
//! run-time statistics are on (`BPF_ENABLE_STATS`, which lasts as long as its fd: nothing to
//! restore if we die), and bpftool reads it (`run_time_ns`).

use std::{
    collections::BTreeSet,
    fs,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::Context as _;

use super::bpftool::{bpftool, number};

/// `BPF_ENABLE_STATS` of `enum bpf_cmd`, and `BPF_STATS_RUN_TIME` of `enum bpf_stats_type`.
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Run-time statistics of every BPF program are kept while this lives.
pub(super) struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    pub(super) fn enable() -> anyhow::Result<Self> {
        // `union bpf_attr`'s `enable_stats` member: a single u32.
        let attr: u32 = BPF_STATS_RUN_TIME;
        // SAFETY: the kernel reads `size_of::<u32>()` bytes from a valid, live u32 and returns a
        // new file descriptor (or -1); no memory of ours is written.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &attr as *const u32,
                std::mem::size_of::<u32>(),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("BPF_ENABLE_STATS");
        }
        let fd = i32::try_from(fd).context("BPF_ENABLE_STATS returned no file descriptor")?;
        // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
        Ok(Self {
            _fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

/// Seconds the programs behind the links pinned in `dir` (`splice_ingress_<interface>`, and
/// `splice_xdp_<interface>` with the translation at XDP) have run so far; 0 when there are
/// none.
pub(super) fn fastpath_program_seconds(dir: &Path) -> anyhow::Result<f64> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(0.0);
    };
    let mut programs = BTreeSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("splice_ingress_") || name.starts_with("splice_xdp_") {
            let link = bpftool(&["link", "show", "pinned"], &entry.path())?;
            programs.insert(number(&link, "prog_id")?);
        }
    }
    let mut nanoseconds = 0;
    for id in programs {
        let program = bpftool(&["prog", "show", "id"], Path::new(&id.to_string()))?;
        // Absent while statistics are off.
        nanoseconds += number(&program, "run_time_ns").unwrap_or(0);
    }
    Ok(nanoseconds as f64 / 1e9)
}
