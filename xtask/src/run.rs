//! `cargo xtask run`: build, then become `stickylb` (as root: it loads BPF and pins maps).
//! With no arguments it runs the local example: seven backends on 127.0.0.1:8081-8087 and
//! stickylb on `examples/local.toml`.

use std::{
    convert::Infallible,
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
};

use anyhow::Context as _;

use crate::{
    build,
    process::{describe, is_root},
    workspace,
};

const EXAMPLE_CONFIG: &str = "examples/local.toml";
const EXAMPLE_BACKENDS: u16 = 7;

/// Builds, then replaces this process with `stickylb`, so its exit code, signals and terminal
/// are its own. Returns only if that fails.
pub(crate) fn run(release: bool, stickylb_args: &[String]) -> anyhow::Result<Infallible> {
    build::build_all(release)?;
    let mut args = stickylb_args.to_vec();
    if args.is_empty() {
        let backends = start_example_backends(release)?;
        println!(
            "xtask run: {EXAMPLE_BACKENDS} example backends on 127.0.0.1:8081-808{EXAMPLE_BACKENDS} (pid {}); \
             stickylb on {EXAMPLE_CONFIG}: http://127.0.0.1:8080, monitor http://127.0.0.1:8404/monitor",
            backends.id()
        );
        // Not waited for: the backends die with stickylb (PR_SET_PDEATHSIG).
        drop(backends);
        let config = workspace::root().join(EXAMPLE_CONFIG);
        args = vec![
            "run".into(),
            "--config".into(),
            config.display().to_string(),
        ];
    }
    let binary = workspace::stickylb_binary(release);
    let mut command = if is_root() {
        Command::new(&binary)
    } else {
        // -E: keep RUST_LOG and friends.
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&binary);
        sudo
    };
    command.args(&args);
    let error = command.exec();
    Err(error).with_context(|| format!("could not start `{}`", describe(&command)))
}

fn start_example_backends(release: bool) -> anyhow::Result<Child> {
    let binary = workspace::stickylb_binary(release).with_file_name("stickylb-backend");
    let mut command = Command::new(&binary);
    for n in 1..=EXAMPLE_BACKENDS {
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{}=Backend {n}", 8080 + n));
    }
    command.stdout(Stdio::null());
    command.spawn().with_context(|| {
        format!(
            "could not start the example backends `{}`",
            describe(&command)
        )
    })
}
