//! `cargo xtask build-ebpf`: builds lb-ebpf with its own toolchain, then post-processes the
//! object into target/ebpf/stickylb.bpf.o.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{btf, prerequisites, process::run_checked, workspace};

/// Builds the eBPF object and returns the absolute path of the final, post-processed one.
///
/// Always lb-ebpf's release profile: both its profiles are optimized (the verifier rejects
/// unoptimized code), so there is nothing a debug build of it would add.
pub(crate) fn build() -> anyhow::Result<PathBuf> {
    prerequisites::check_ebpf_build()?;
    run_checked(ebpf_cargo().args(["build", "--release"]))?;
    let object = workspace::ebpf_object();
    write_post_processed(&workspace::raw_ebpf_object(), &object)?;
    println!("build-ebpf: wrote {}", object.display());
    Ok(object)
}

/// `cargo` (the rustup proxy) in lb-ebpf, stripped of what the outer `cargo xtask` set, so
/// that lb-ebpf's rust-toolchain.toml (nightly) and .cargo/config.toml (BPF target) apply.
pub(crate) fn ebpf_cargo() -> Command {
    let mut command = Command::new("cargo");
    command.current_dir(workspace::ebpf_crate_dir());
    for (name, _) in env::vars_os() {
        if name.to_str().is_some_and(is_outer_toolchain_variable) {
            command.env_remove(name);
        }
    }
    match library_path_without_outer_toolchain() {
        Some(path) => command.env("LD_LIBRARY_PATH", path),
        None => command.env_remove("LD_LIBRARY_PATH"),
    };
    command
}

/// Variables that pin the outer (stable) toolchain or describe the crate cargo is running.
/// User-level cargo settings (home, network, registries, terminal) are kept.
fn is_outer_toolchain_variable(name: &str) -> bool {
    const KEPT_CARGO_PREFIXES: &[&str] = &[
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
    ];
    match name {
        "CARGO" | "RUSTUP_TOOLCHAIN" | "RUSTUP_TOOLCHAIN_SOURCE" | "RUSTFLAGS" => true,
        _ if name.starts_with("RUSTC") || name.starts_with("RUSTDOC") => true,
        _ if name.starts_with("CARGO_") => !KEPT_CARGO_PREFIXES
            .iter()
            .any(|kept| name.starts_with(kept)),
        _ => false,
    }
}

/// `cargo run` puts the stable toolchain's and the workspace's library directories on
/// LD_LIBRARY_PATH; keep only what the user had.
fn library_path_without_outer_toolchain() -> Option<OsString> {
    let path = env::var_os("LD_LIBRARY_PATH")?;
    let rustup_home = env::var_os("RUSTUP_HOME").map(PathBuf::from);
    let outer = |dir: &Path| {
        dir.starts_with(workspace::host_target_dir())
            || rustup_home
                .as_ref()
                .is_some_and(|home| dir.starts_with(home.join("toolchains")))
    };
    let kept: Vec<PathBuf> = env::split_paths(&path).filter(|dir| !outer(dir)).collect();
    if kept.is_empty() {
        return None;
    }
    env::join_paths(kept).ok()
}

/// Copies the raw object to `output` with its BTF patched, through a temporary file so that a
/// failed run never leaves a half-written object for lb-userspace's build script to embed.
fn write_post_processed(raw: &Path, output: &Path) -> anyhow::Result<()> {
    let mut elf = fs::read(raw).with_context(|| format!("could not read {}", raw.display()))?;
    btf::mark_u8_as_char_in_elf(&mut elf)
        .with_context(|| format!("could not post-process the BTF of {}", raw.display()))?;
    let dir = output
        .parent()
        .with_context(|| format!("{} has no parent directory", output.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let partial = output.with_extension("o.partial");
    fs::write(&partial, &elf).with_context(|| format!("could not write {}", partial.display()))?;
    fs::rename(&partial, output)
        .with_context(|| format!("could not move {} into place", partial.display()))
}

#[cfg(test)]
mod tests {
    use super::is_outer_toolchain_variable;

    #[test]
    fn strips_outer_toolchain_but_keeps_user_settings() {
        for name in [
            "CARGO",
            "RUSTUP_TOOLCHAIN",
            "RUSTC",
            "RUSTC_WRAPPER",
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_TARGET_DIR",
            "CARGO_MANIFEST_DIR",
            "CARGO_BUILD_TARGET",
        ] {
            assert!(is_outer_toolchain_variable(name), "{name} kept");
        }
        for name in [
            "CARGO_HOME",
            "CARGO_NET_OFFLINE",
            "RUSTUP_HOME",
            "PATH",
            "HOME",
        ] {
            assert!(!is_outer_toolchain_variable(name), "{name} stripped");
        }
    }
}
