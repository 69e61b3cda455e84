//! `cargo xtask setup`: installs what building and testing need, skipping what is present.
//!
//! Every step probes first, so a machine that has everything is done in seconds; a step that
//! installs probes again afterwards, so an install that "succeeds" without effect (say,
//! `~/.cargo/bin` missing from PATH) fails here rather than in a later build.

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use crate::{
    prerequisites::{
        self, BpfLinker, BPFFS_MOUNT_POINT, BPF_LINKER_VERSION, LLVM_BIN_DIR, NIGHTLY,
    },
    process::{as_root, host_cargo, run_checked},
};

/// Debian packages for building bpf-linker (LLVM 22 and what it links) and for the tests
/// (bpftool, load generators (h2load is in nghttp2-client), packet tools (hping3 floods the
/// shield with SYNs), script checkers) and for `bench --perf` (perf).
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "haproxy",
    "wrk",
    "nghttp2-client",
    "curl",
    "iproute2",
    "iputils-ping",
    "tcpdump",
    "hping3",
    "shellcheck",
    "ruby",
    "python3",
    "linux-perf",
];

/// Components needed on nightly: rust-src for lb-ebpf's build-std, clippy and rustfmt for
/// `xtask test` (rustfmt.toml's import options are nightly-only).
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy", "rustfmt"];

pub(crate) fn run() -> anyhow::Result<()> {
    ensure_step(
        "nightly toolchain",
        || Ok(prerequisites::nightly_installed()),
        install_nightly,
    )?;
    for &component in NIGHTLY_COMPONENTS {
        ensure_step(
            &format!("{component} for {NIGHTLY}"),
            || Ok(prerequisites::nightly_component_installed(component)),
            || install_nightly_component(component),
        )?;
    }
    ensure_step(
        "Debian packages",
        || Ok(missing_debian_packages().is_empty()),
        || install_debian_packages(&missing_debian_packages()),
    )?;
    ensure_step("bpf-linker", bpf_linker_present, install_bpf_linker)?;
    ensure_bpffs_mounted()?;
    println!("setup: all steps done");
    Ok(())
}

/// Mounts the bpf filesystem at /sys/fs/bpf unless it is there; `xtask test` needs it too.
pub(crate) fn ensure_bpffs_mounted() -> anyhow::Result<()> {
    ensure_step(
        &format!("bpffs at {BPFFS_MOUNT_POINT}"),
        prerequisites::bpffs_mounted,
        mount_bpffs,
    )
}

/// Runs `install` unless `is_present` says the step is already satisfied, then checks again.
fn ensure_step(
    step: &str,
    is_present: impl Fn() -> anyhow::Result<bool>,
    install: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if is_present()? {
        println!("setup: {step}: already present");
        return Ok(());
    }
    println!("setup: {step}: installing...");
    install().with_context(|| format!("setup: {step}: installing failed"))?;
    if !is_present()? {
        bail!("setup: {step}: installed, but still not detected");
    }
    println!("setup: {step}: done");
    Ok(())
}

fn install_nightly() -> anyhow::Result<()> {
    run_checked(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
    ]))
}

fn install_nightly_component(component: &str) -> anyhow::Result<()> {
    run_checked(Command::new("rustup").args([
        "component",
        "add",
        component,
        "--toolchain",
        NIGHTLY,
    ]))
}

fn missing_debian_packages() -> Vec<&'static str> {
    DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| !prerequisites::debian_package_installed(package))
        .collect()
}

fn install_debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    println!("setup: Debian packages: missing {}", packages.join(" "));
    // `env` carries DEBIAN_FRONTEND through sudo, which would otherwise reset it.
    run_checked(
        as_root("env")
            .args(["DEBIAN_FRONTEND=noninteractive", "apt-get", "update"])
            .stdin(Stdio::null()),
    )?;
    run_checked(
        as_root("env")
            .args([
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
            ])
            .args(packages)
            .stdin(Stdio::null()),
    )
}

/// Any working bpf-linker is accepted; a version other than the tested one is only noted.
fn bpf_linker_present() -> anyhow::Result<bool> {
    match prerequisites::bpf_linker() {
        BpfLinker::Present { version } => {
            if !version.contains(BPF_LINKER_VERSION) {
                println!(
                    "setup: bpf-linker: note: found `{version}`, this project is tested with \
                     {BPF_LINKER_VERSION}"
                );
            }
            Ok(true)
        }
        BpfLinker::Missing | BpfLinker::Broken => Ok(false),
    }
}

/// Builds bpf-linker against Debian's LLVM 22 (its `llvm-config` must come first on PATH).
fn install_bpf_linker() -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut search_path = vec![LLVM_BIN_DIR.into()];
    search_path.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(search_path).context("PATH holds an invalid entry")?;
    run_checked(
        host_cargo()
            .args(["install", "bpf-linker", "--version"])
            .arg(format!("~{BPF_LINKER_VERSION}"))
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path),
    )
    .with_context(|| {
        format!(
            "manual equivalent: {}",
            prerequisites::bpf_linker_install_command()
        )
    })
}

fn mount_bpffs() -> anyhow::Result<()> {
    run_checked(as_root("mount").args(["-t", "bpf", "bpf", BPFFS_MOUNT_POINT]))
}
