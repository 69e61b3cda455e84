//! Where things live in the repository.

use std::{
    env,
    path::{Path, PathBuf},
};

/// The repository root: xtask's manifest directory is `<root>/xtask`.
pub(crate) fn root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// The eBPF crate, built outside the workspace with its own toolchain.
pub(crate) fn ebpf_crate_dir() -> PathBuf {
    root().join("lb-ebpf")
}

/// The object `cargo build --release` leaves in lb-ebpf's own target directory.
pub(crate) fn raw_ebpf_object() -> PathBuf {
    ebpf_crate_dir().join("target/bpfel-unknown-none/release/lb-ebpf")
}

/// The post-processed object that `lb-userspace/build.rs` embeds.
pub(crate) fn ebpf_object() -> PathBuf {
    root().join("target/ebpf/stickylb.bpf.o")
}

/// The host target directory, honouring `CARGO_TARGET_DIR` as cargo does.
pub(crate) fn host_target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// The `stickylb` binary `cargo build -p lb-userspace` produces for a profile.
pub(crate) fn stickylb_binary(release: bool) -> PathBuf {
    let profile = if release { "release" } else { "debug" };
    host_target_dir().join(profile).join("stickylb")
}
