//! `cargo xtask demo`: the original demo's Vagrant demo (dschneller/haproxy-peers-demo) in network
//! namespaces on this machine, played step by step.
//!
//! The original demo's three VMs become namespaces on one bridged LAN, 192.168.33.0/24: `slbdemo-web`
//! (.10, seven backends on :8081-8087), `slbdemo-lb1` (.11) and `slbdemo-lb2` (.12), both running
//! `demo/stickylb.toml`, the file the Vagrant VMs run. The host joins the LAN (.1 on `slbdemo0`)
//! and forwards Vagrant's ports: localhost:8080 and :9080 to the lbs' port 80, :8404 and :9404
//! to their monitors. The story runs `vagrant/access-1.sh` and `access-2.sh`, as a user would.
//!
//! Processes join only the network namespace (`nsenter --net`): `ip netns exec` would mount a
//! private /sys and hide the host's bpffs, where the pinned tables must outlive the daemons.

mod cluster;
mod files;
mod lifecycle;
mod nodes;
mod play;
mod story;
mod topology;

use std::{env, os::unix::process::CommandExt as _, process::Command};

use anyhow::Context as _;

use self::{lifecycle::Teardown, nodes::Nodes};
use crate::{build, process::is_root, setup, workspace};

/// The one configuration both load balancers run (shared with the Vagrant provisioning).
const CONFIG: &str = "demo/stickylb.toml";

/// The load balancers of the original demo: haproxy-1 and haproxy-2, here lb-1 and lb-2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lb {
    One,
    Two,
}

impl Lb {
    pub(crate) const ALL: [Lb; 2] = [Lb::One, Lb::Two];

    /// The instance name: what `--name` passes and what `[peers].members` lists.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Lb::One => "lb-1",
            Lb::Two => "lb-2",
        }
    }

    fn index(self) -> usize {
        match self {
            Lb::One => 0,
            Lb::Two => 1,
        }
    }

    /// The original demo's access script for this load balancer, in vagrant/.
    pub(crate) fn access_script(self) -> &'static str {
        match self {
            Lb::One => "access-1.sh",
            Lb::Two => "access-2.sh",
        }
    }

    fn namespace(self) -> &'static str {
        match self {
            Lb::One => topology::LB1_NS,
            Lb::Two => topology::LB2_NS,
        }
    }

    fn addr(self) -> &'static str {
        match self {
            Lb::One => "192.168.33.11",
            Lb::Two => "192.168.33.12",
        }
    }

    /// Vagrant's forwarded host ports: (guest 80, guest 8404).
    fn host_ports(self) -> (u16, u16) {
        match self {
            Lb::One => (8080, 8404),
            Lb::Two => (9080, 9404),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    pub(crate) release: bool,
    pub(crate) check: bool,
    pub(crate) keep: bool,
    pub(crate) down: bool,
    /// Set when a non-root run built as its user and re-ran itself through `sudo`.
    pub(crate) prebuilt: bool,
    /// `--nodes N`: the ECMP cluster demo ([`cluster`]) instead of the two-node one.
    pub(crate) nodes: Option<usize>,
}

pub(crate) fn run(options: Options) -> anyhow::Result<()> {
    if !is_root() {
        return rerun_as_root(options);
    }
    if let Some(nodes) = options.nodes {
        return cluster::run(nodes, options.release, options.prebuilt);
    }
    let paths = files::Paths::new();
    if options.down {
        return lifecycle::down(&paths).map(|removed| lifecycle::report_down(&removed));
    }
    let result = up_and_play(options, paths);
    if result.is_err() {
        // A child that failed from the same Ctrl-C: the signal thread has the last word.
        lifecycle::settle_if_interrupted();
    }
    result
}

fn up_and_play(options: Options, paths: files::Paths) -> anyhow::Result<()> {
    let leftovers = lifecycle::down(&paths)?;
    if !leftovers.is_empty() {
        println!("==> demo: removed what an earlier run left behind");
        lifecycle::report_down(&leftovers);
    }
    topology::check_free()?;
    setup::ensure_bpffs_mounted()?;
    if !options.prebuilt {
        let profile = if options.release { "release" } else { "debug" };
        println!("==> demo: building ({profile})");
        build::build_all(options.release)?;
    }

    // Nothing to undo until now: an interrupt simply ends xtask (and the build). From here on
    // one thread takes SIGINT/SIGTERM and takes the demo down; blocked before any thread
    // starts, so that no other thread can receive them.
    lifecycle::handle_interrupts(paths.clone())?;
    let teardown = Teardown::arm(paths.clone());
    println!(
        "==> demo: bringing up web ({}), lb-1 ({}) and lb-2 ({}) in network namespaces, \
         bridged with this host ({})",
        topology::WEB_ADDR,
        Lb::One.addr(),
        Lb::Two.addr(),
        topology::HOST_ADDR
    );
    lifecycle::guarded(topology::create)?;
    let mut nodes = Nodes::new(paths, options.release)?;
    nodes.bring_up()?;
    let outcome = play::play(&mut nodes, options.check)?;

    if options.keep {
        teardown.disarm();
        nodes.print_keep_help();
    } else {
        println!("\n==> demo: removing the namespaces, processes and pinned tables");
        teardown.finish()?;
    }
    outcome.into_result(options.check)
}

/// Builds as this user (so target/ stays theirs), then runs the rest as root through
/// `sudo -E`, as `cargo xtask run` does for the daemon.
fn rerun_as_root(options: Options) -> anyhow::Result<()> {
    if !options.down && !options.prebuilt {
        build::build_all(options.release)?;
    }
    let exe = env::current_exe().context("finding the xtask binary")?;
    let mut sudo = Command::new("sudo");
    sudo.arg("-E").arg(exe).arg("demo");
    for (set, flag) in [
        (options.release, "--release"),
        (options.check, "--check"),
        (options.keep, "--keep"),
        (options.down, "--down"),
        (!options.down, "--prebuilt"),
    ] {
        if set {
            sudo.arg(flag);
        }
    }
    if let Some(nodes) = options.nodes {
        sudo.arg("--nodes").arg(nodes.to_string());
    }
    sudo.current_dir(workspace::root());
    let error = sudo.exec();
    Err(error).context("could not run the demo as root through `sudo`")
}
