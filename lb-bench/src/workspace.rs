//! Where things live in the repository.

use std::{
    env,
    path::{Path, PathBuf},
};

/// The repository root: this crate's manifest directory is `<root>/lb-bench`.
pub(crate) fn root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
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
