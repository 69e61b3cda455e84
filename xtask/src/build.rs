//! `cargo xtask build`: the eBPF object, then the daemon that embeds it.

use std::path::Path;

use crate::{
    ebpf,
    process::{host_cargo, run_checked},
};

/// Tells `lb-userspace/build.rs` which eBPF object to embed.
pub(crate) const EBPF_OBJECT_ENV: &str = "STICKYLB_EBPF_OBJ";

pub(crate) fn build_all(release: bool) -> anyhow::Result<()> {
    let object = ebpf::build()?;
    build_userspace(release, &object)
}

fn build_userspace(release: bool, ebpf_object: &Path) -> anyhow::Result<()> {
    let mut cargo = host_cargo();
    cargo
        .args(["build", "--package", "lb-userspace"])
        .env(EBPF_OBJECT_ENV, ebpf_object);
    if release {
        cargo.arg("--release");
    }
    run_checked(&mut cargo)
}
