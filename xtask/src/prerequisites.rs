//! Probes for what building and testing need, shared by `setup` (which installs what is
//! missing) and the build tasks (which refuse to start without it, naming what is missing).

use std::{fs, process::Command};

use anyhow::{bail, Context as _};

use crate::process::probe_stdout;

/// The toolchain lb-ebpf's `rust-toolchain.toml` asks for.
pub(crate) const NIGHTLY: &str = "nightly";

/// The bpf-linker release this project is built and tested with.
pub(crate) const BPF_LINKER_VERSION: &str = "0.13";

/// Where bpf-linker finds the LLVM it links against when it is built.
pub(crate) const LLVM_BIN_DIR: &str = "/usr/lib/llvm-22/bin";

/// Where pinned maps live.
pub(crate) const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";

/// What `bpf-linker --version` told us.
pub(crate) enum BpfLinker {
    Missing,
    /// On PATH but `--version` fails, typically because its libLLVM is gone.
    Broken,
    Present {
        version: String,
    },
}

/// Whether rustup has the plain `nightly` toolchain (not only dated ones).
pub(crate) fn nightly_installed() -> bool {
    let Some(list) = probe_stdout(Command::new("rustup").args(["toolchain", "list"])) else {
        return false;
    };
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(is_plain_nightly)
}

/// `nightly` or `nightly-<host triple>`, but not `nightly-2025-01-01-<host triple>`.
fn is_plain_nightly(toolchain: &str) -> bool {
    match toolchain.strip_prefix(NIGHTLY) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('-')
            .is_some_and(|triple| !triple.starts_with(|c: char| c.is_ascii_digit())),
        None => false,
    }
}

/// Whether the nightly toolchain has `component` (`rust-src`, `clippy`, ...).
pub(crate) fn nightly_component_installed(component: &str) -> bool {
    let mut command = Command::new("rustup");
    command.args(["component", "list", "--toolchain", NIGHTLY, "--installed"]);
    let Some(list) = probe_stdout(&mut command) else {
        return false;
    };
    let with_target = format!("{component}-");
    list.lines()
        .map(str::trim)
        .any(|line| line == component || line.starts_with(&with_target))
}

pub(crate) fn bpf_linker() -> BpfLinker {
    match Command::new("bpf-linker").arg("--version").output() {
        Err(_) => BpfLinker::Missing,
        Ok(output) if !output.status.success() => BpfLinker::Broken,
        Ok(output) => BpfLinker::Present {
            version: String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        },
    }
}

/// Whether a bpf filesystem is mounted at /sys/fs/bpf, from /proc/mounts.
pub(crate) fn bpffs_mounted() -> anyhow::Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("could not read /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS_MOUNT_POINT) && fields.next() == Some("bpf")
    }))
}

/// Whether dpkg reports `package` as installed.
pub(crate) fn debian_package_installed(package: &str) -> bool {
    let mut command = Command::new("dpkg-query");
    command.args(["-W", "-f=${Status}", package]);
    // "install ok installed", "hold ok installed"; removed ones say "config-files" or
    // "not-installed" there.
    probe_stdout(&mut command)
        .is_some_and(|status| status.split_whitespace().nth(2) == Some("installed"))
}

/// Fails, naming every missing piece and how to get it, unless lb-ebpf can be built.
pub(crate) fn check_ebpf_build() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if !nightly_installed() {
        missing.push(format!(
            "the {NIGHTLY} toolchain is not installed: run `cargo xtask setup` \
             (or: rustup toolchain install {NIGHTLY} --profile minimal)"
        ));
    } else if !nightly_component_installed("rust-src") {
        missing.push(format!(
            "rust-src for {NIGHTLY} is not installed (build-std needs it): run `cargo xtask setup` \
             (or: rustup component add rust-src --toolchain {NIGHTLY})"
        ));
    }
    match bpf_linker() {
        BpfLinker::Present { .. } => {}
        BpfLinker::Missing => missing.push(format!(
            "bpf-linker not found on PATH: run `cargo xtask setup` (or: {})",
            bpf_linker_install_command()
        )),
        BpfLinker::Broken => missing.push(format!(
            "bpf-linker is on PATH but `bpf-linker --version` fails (is llvm-22-dev installed?): \
             run `cargo xtask setup` (or: {})",
            bpf_linker_install_command()
        )),
    }
    report_missing(&missing)
}

/// Fails unless nightly has clippy, which linting lb-ebpf needs.
pub(crate) fn check_nightly_clippy() -> anyhow::Result<()> {
    if nightly_component_installed("clippy") {
        return Ok(());
    }
    report_missing(&[format!(
        "clippy for {NIGHTLY} is not installed (linting lb-ebpf needs it): run `cargo xtask setup` \
         (or: rustup component add clippy --toolchain {NIGHTLY})"
    )])
}

/// The manual equivalent of setup's bpf-linker step, for messages.
pub(crate) fn bpf_linker_install_command() -> String {
    format!(
        "PATH={LLVM_BIN_DIR}:$PATH cargo install bpf-linker --version ~{BPF_LINKER_VERSION} \
         --no-default-features --features llvm-22"
    )
}

fn report_missing(missing: &[String]) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    bail!("missing prerequisites:\n  - {}", missing.join("\n  - "))
}

#[cfg(test)]
mod tests {
    use super::is_plain_nightly;

    #[test]
    fn recognises_only_the_rolling_nightly() {
        assert!(is_plain_nightly("nightly"));
        assert!(is_plain_nightly("nightly-x86_64-unknown-linux-gnu"));
        assert!(!is_plain_nightly(
            "nightly-2025-01-01-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_plain_nightly("stable-x86_64-unknown-linux-gnu"));
        assert!(!is_plain_nightly("nightlyish"));
    }
}
