//! `cargo xtask bench`: builds stickylb (release), then runs the `lb-bench` binary with the
//! arguments given, as `cargo run -p lb-bench --release -- <args>`. The bench itself, its
//! options (`cargo xtask bench --help`) and its report live in the `lb-bench` crate.

use std::{ffi::OsString, path::Path};

use anyhow::bail;

use crate::{
    build,
    process::{host_cargo, is_root, run_checked},
    setup,
};

/// Builds what the bench measures, then runs it with `args`.
pub(crate) fn run(args: &[OsString]) -> anyhow::Result<()> {
    if asks_for_help(args) {
        // Help needs neither root nor the release build of stickylb.
        return run_checked(&mut lb_bench(args));
    }
    if !is_root() {
        bail!(
            "cargo xtask bench needs root (network namespaces, BPF maps): run it as root or \
             with `sudo -E env PATH=$PATH cargo xtask bench`"
        );
    }
    setup::ensure_bpffs_mounted()?;
    build::build_all(true)?;
    run_checked(&mut lb_bench(args))
}

/// Checks the shape of the report a bench run wrote into `dir` (`lb-bench verify`).
pub(crate) fn verify(dir: &Path) -> anyhow::Result<()> {
    let mut command = lb_bench(&[]);
    command.arg("verify").arg(dir);
    run_checked(&mut command)
}

/// `cargo run -p lb-bench --release -- <args>`, from the workspace root.
fn lb_bench(args: &[OsString]) -> std::process::Command {
    let mut cargo = host_cargo();
    cargo
        .args(["run", "--quiet", "--package", "lb-bench", "--release", "--"])
        .args(args);
    cargo
}

fn asks_for_help(args: &[OsString]) -> bool {
    args.iter().any(|arg| arg == "--help" || arg == "-h")
}
