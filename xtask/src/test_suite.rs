//! `cargo xtask test`: every check CI runs, in order, stopping at the first failure.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{
    bench,
    build::EBPF_OBJECT_ENV,
    ebpf, prerequisites,
    process::{describe, host_cargo, is_root, run_checked},
    setup, workspace,
};

/// Tells the privileged tests to fail, not skip, when they cannot get root, bpffs or BPF.
const REQUIRE_PRIVILEGED_ENV: &str = "STICKYLB_REQUIRE_PRIVILEGED";

pub(crate) fn run(cargo_test_args: &[String]) -> anyhow::Result<()> {
    refuse_unprivileged_ci()?;

    stage("bpffs");
    setup::ensure_bpffs_mounted()?;

    stage("build-ebpf");
    let ebpf_object = ebpf::build()?;

    // Nightly rustfmt: rustfmt.toml's import grouping options are nightly-only.
    stage("rustfmt (nightly)");
    run_checked(&mut nightly_fmt_check())?;

    stage("clippy (workspace)");
    run_checked(
        host_cargo()
            .args(["clippy", "--workspace", "--all-targets", "--locked", "--"])
            .args(["-D", "warnings"])
            .env(EBPF_OBJECT_ENV, &ebpf_object),
    )?;

    stage("clippy (lb-ebpf)");
    prerequisites::check_nightly_clippy()?;
    run_checked(ebpf::ebpf_cargo().args(["clippy", "--release", "--", "-D", "warnings"]))?;

    stage("shellcheck and bash -n");
    check_shell_scripts()?;

    stage("ruby -c vagrant/Vagrantfile");
    check_vagrantfile()?;

    stage("cargo test");
    run_checked(
        host_cargo()
            .args(["test", "--workspace", "--locked"])
            .args(cargo_test_args)
            .env(EBPF_OBJECT_ENV, &ebpf_object)
            .env(REQUIRE_PRIVILEGED_ENV, "1"),
    )?;

    // The README's first command: CI proves the original demo's story plays as documented.
    stage("demo --check");
    if is_root() {
        // Through cargo, as `cargo xtask demo` does: this binary may have been rebuilt since.
        run_checked(host_cargo().args([
            "run",
            "--quiet",
            "--locked",
            "--package",
            "xtask",
            "--",
            "demo",
            "--check",
        ]))?;
    } else {
        println!("skipped: the demo needs root, like the privileged tests");
    }

    // A benchmark, not a test: no figure is judged, only that it runs and writes its tables.
    stage("bench --quick");
    if is_root() {
        let output = workspace::host_target_dir().join("bench/test-suite-quick");
        let xtask = env::current_exe().context("finding the xtask binary")?;
        run_checked(
            Command::new(xtask)
                .args(["bench", "--quick", "--output"])
                .arg(&output),
        )?;
        bench::verify(&output)?;
    } else {
        println!("skipped: the bench needs root, like the privileged tests");
    }

    println!("\n==> xtask test: all stages passed");
    Ok(())
}

fn stage(name: &str) {
    println!("\n==> xtask test: {name}");
}

/// Under CI the privileged tests must run, not skip, so a non-root CI run is a setup mistake.
fn refuse_unprivileged_ci() -> anyhow::Result<()> {
    if running_in_ci() && !is_root() {
        bail!(
            "CI is set but `cargo xtask test` is not running as root: the privileged tests \
             (BPF maps, bpffs, network namespaces) would fail. Run CI as root."
        );
    }
    Ok(())
}

/// `CI` set to a true value (`true`, `1`, `yes`, `on`), as CI services do.
fn running_in_ci() -> bool {
    env::var("CI").is_ok_and(|value| is_true(&value))
}

fn is_true(value: &str) -> bool {
    ["true", "1", "yes", "on"]
        .iter()
        .any(|truthy| value.trim().eq_ignore_ascii_case(truthy))
}

/// shellcheck on every `*.sh` under vagrant/ and .ci/, and on `.ci/run` itself (a bash script
/// without the extension).
fn check_shell_scripts() -> anyhow::Result<()> {
    let root = workspace::root();
    let mut scripts = Vec::new();
    for dir in ["vagrant", ".ci"] {
        collect_shell_scripts(&root.join(dir), &mut scripts)?;
    }
    let ci_entry_point = root.join(".ci/run");
    if ci_entry_point.is_file() {
        scripts.push(ci_entry_point);
    }
    if scripts.is_empty() {
        println!("no shell scripts: skipped");
        return Ok(());
    }
    scripts.sort();
    let mut shellcheck = Command::new("shellcheck");
    shellcheck.args(&scripts);
    println!("{}", describe(&shellcheck));
    run_checked(&mut shellcheck)?;
    // bash's own parser as well: shellcheck reads scripts its own way.
    for script in &scripts {
        let mut parse = Command::new("bash");
        parse.arg("-n").arg(script);
        println!("{}", describe(&parse));
        run_checked(&mut parse)?;
    }
    Ok(())
}

/// Appends every `*.sh` under `dir` (recursively) to `scripts`; a missing `dir` holds none.
fn collect_shell_scripts(dir: &Path, scripts: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    let entries = fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("could not list {}", dir.display()))?
            .path();
        if path.is_dir() {
            collect_shell_scripts(&path, scripts)?;
        } else if path.extension().is_some_and(|ext| ext == "sh") {
            scripts.push(path);
        }
    }
    Ok(())
}

fn check_vagrantfile() -> anyhow::Result<()> {
    let vagrantfile = workspace::root().join("vagrant/Vagrantfile");
    if !vagrantfile.is_file() {
        println!("no vagrant/Vagrantfile: skipped");
        return Ok(());
    }
    run_checked(Command::new("ruby").arg("-c").arg(vagrantfile))
}

/// `cargo +nightly fmt --check` through the rustup proxy (`$CARGO` is the stable cargo itself,
/// which does not understand `+toolchain`).
fn nightly_fmt_check() -> std::process::Command {
    let mut command = std::process::Command::new("cargo");
    command
        .current_dir(crate::workspace::root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["+nightly", "fmt", "--all", "--", "--check"]);
    command
}

#[cfg(test)]
mod tests {
    use super::is_true;

    #[test]
    fn reads_ci_truthiness_like_ci_services_set_it() {
        for value in ["true", "TRUE", "1", "yes", "on", " true "] {
            assert!(is_true(value), "{value:?}");
        }
        for value in ["", "0", "false", "no", "off"] {
            assert!(!is_true(value), "{value:?}");
        }
    }
}
