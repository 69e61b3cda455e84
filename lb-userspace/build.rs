//! Stages the eBPF object that the daemon embeds with
//! `aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stickylb.bpf.o"))`.
//!
//! The object is built by `cargo xtask build-ebpf` (nightly, bpf-linker, BTF post-processing),
//! which this script deliberately does not do itself: a build script cannot switch toolchains
//! cleanly, and `cargo xtask build` passes the path in `STICKYLB_EBPF_OBJ`. Without it the
//! script looks at the default output, `<workspace>/target/ebpf/stickylb.bpf.o`.
//!
//! Only std is used, so the crate needs no build-dependencies.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::ExitCode,
};

const EBPF_OBJECT_ENV: &str = "STICKYLB_EBPF_OBJ";
const EMBEDDED_NAME: &str = "stickylb.bpf.o";

fn main() -> ExitCode {
    match stage_ebpf_object() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Cargo prints this as the build's error, without a backtrace of build-script noise.
            println!("cargo::error={message}");
            ExitCode::FAILURE
        }
    }
}

fn stage_ebpf_object() -> Result<(), String> {
    println!("cargo::rerun-if-env-changed={EBPF_OBJECT_ENV}");
    let workspace = workspace_root()?;
    let object = ebpf_object_path(&workspace);
    println!("cargo::rerun-if-changed={}", object.display());
    if !object.is_file() {
        return Err(format!(
            "the eBPF object {} is missing: build through `cargo xtask build` \
             (or run `cargo xtask build-ebpf` first)",
            object.display()
        ));
    }
    let out_dir = env::var_os("OUT_DIR").ok_or("cargo did not set OUT_DIR")?;
    let staged = Path::new(&out_dir).join(EMBEDDED_NAME);
    fs::copy(&object, &staged).map_err(|error| {
        format!(
            "could not copy the eBPF object {} to {}: {error}",
            object.display(),
            staged.display()
        )
    })?;
    Ok(())
}

/// `STICKYLB_EBPF_OBJ` if set (relative paths are taken from the workspace root), else the
/// default output of `cargo xtask build-ebpf`.
fn ebpf_object_path(workspace: &Path) -> PathBuf {
    match env::var_os(EBPF_OBJECT_ENV) {
        Some(path) if !path.is_empty() => workspace.join(path),
        _ => workspace.join("target/ebpf").join(EMBEDDED_NAME),
    }
}

/// This crate's manifest directory is `<workspace>/lb-userspace`.
fn workspace_root() -> Result<PathBuf, String> {
    let manifest_dir =
        env::var_os("CARGO_MANIFEST_DIR").ok_or("cargo did not set CARGO_MANIFEST_DIR")?;
    let manifest_dir = PathBuf::from(manifest_dir);
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", manifest_dir.display()))?;
    Ok(workspace.to_path_buf())
}
