//! Stages the eBPF object that the daemon embeds with
//! `aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stickylb.bpf.o"))`.
//!
//! The object is built by `cargo xtask build-ebpf` (nightly, bpf-linker, BTF post-processing),
//! which this script deliberately does not do itself: a build script cannot switch toolchains
//! cleanly, and `cargo xtask build` passes the path in `STICKYLB_EBPF_OBJ`. Without it the
//! script looks at the default output, `<workspace>/target/ebpf/stickylb.bpf.o`.
//!
//! A path given in `STICKYLB_EBPF_OBJ` must exist. The default one may be missing (a fresh
//! clone, plain `cargo test`): the crate is then built without the object, with the cfg
//! `stickylb_no_ebpf`, so that everything needing neither the object nor root builds and tests;
//! the daemon refuses to start with an error that says how to build the object.
//!
//! Only std is used, so the crate needs no build-dependencies.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::ExitCode,
};

const EBPF_OBJECT_ENV: &str = "STICKYLB_EBPF_OBJ";
const EMBEDDED_NAME: &str = "stickylb.bpf.o";
/// Set when the crate is built without the object (see the module's comment).
const NO_EBPF_CFG: &str = "stickylb_no_ebpf";

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
    println!("cargo::rustc-check-cfg=cfg({NO_EBPF_CFG})");
    let workspace = workspace_root()?;
    let (object, explicit) = ebpf_object_path(&workspace);
    if !object.is_file() {
        if explicit {
            return Err(format!(
                "the eBPF object {} given in {EBPF_OBJECT_ENV} is missing",
                object.display()
            ));
        }
        build_without_object(&object);
        return Ok(());
    }
    println!("cargo::rerun-if-changed={}", object.display());
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

/// Builds the crate without the object, and rebuilds it once `cargo xtask build-ebpf` writes
/// one. Cargo reruns a script that watches a missing file on every build (and recompiles the
/// crate each time), so the script watches the object's directory instead, made empty if need
/// be: a file appearing in it reruns the script.
fn build_without_object(object: &Path) {
    println!("cargo::rustc-cfg={NO_EBPF_CFG}");
    println!(
        "cargo::warning=no eBPF object at {}: building without it; the daemon will not start \
         (run `cargo xtask build-ebpf`, or build through `cargo xtask build`)",
        object.display()
    );
    if let Some(dir) = object.parent() {
        if fs::create_dir_all(dir).is_ok() {
            println!("cargo::rerun-if-changed={}", dir.display());
        }
    }
}

/// `STICKYLB_EBPF_OBJ` if set (relative paths are taken from the workspace root), else the
/// default output of `cargo xtask build-ebpf`; and whether it was set.
fn ebpf_object_path(workspace: &Path) -> (PathBuf, bool) {
    match env::var_os(EBPF_OBJECT_ENV) {
        Some(path) if !path.is_empty() => (workspace.join(path), true),
        _ => (workspace.join("target/ebpf").join(EMBEDDED_NAME), false),
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
