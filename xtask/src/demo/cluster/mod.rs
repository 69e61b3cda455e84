//! `cargo xtask demo --nodes N` (3..=7): the original demo's story on a cluster. N stickylb
//! nodes, every one a peer of every other, behind a router that spreads connections over them
//! by ECMP (netns-kit's `Cluster`); seven backends behind them; one client in front. It shows
//! that sessions made through whichever node a connection lands on are served by the same
//! server through all of them, that every node's pinned table is the same, and how long the
//! tables take to agree again after a node was cut off from its peers. Then it takes
//! everything down.
//!
//! Everything lives in namespaces named `slbcluster-<pid>-...`, pins under
//! [`nodes::PIN_ROOT`] and files under target/demo-cluster. A run that was interrupted
//! (Ctrl-C reaches the daemons too) leaves its namespaces; the next run removes them.

mod nodes;
mod story;

use anyhow::Context as _;
use netns_kit::{Cluster, ClusterAddrs, Names};

use self::nodes::Nodes;
use crate::{build, setup};

/// The range of `--nodes`.
pub(crate) const NODES: std::ops::RangeInclusive<usize> = 3..=7;

/// The cluster's namespaces; a prefix no other user of the kit continues.
const NAMES: Names = Names::new("slbcluster-");
/// 10.147.x.x: no test's subnet (the namespaces are isolated anyway).
const NET: u8 = 147;

/// Builds (unless `prebuilt`), brings the cluster up, plays the story, takes it down.
pub(crate) fn run(nodes: usize, release: bool, prebuilt: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        NODES.contains(&nodes),
        "--nodes {nodes}: the cluster demo runs {} to {} nodes",
        NODES.start(),
        NODES.end()
    );
    for stale in NAMES.remove_stale() {
        println!(
            "==> cluster: removed namespace {} left by process {}",
            stale.name, stale.pid
        );
    }
    setup::ensure_bpffs_mounted()?;
    if !prebuilt {
        let profile = if release { "release" } else { "debug" };
        println!("==> cluster: building ({profile})");
        build::build_all(release)?;
    }
    let addrs = ClusterAddrs::new(NET);
    println!(
        "==> cluster: a router (ECMP, hashing addresses and ports) in front of {nodes} stickylb \
         nodes that each hold {} on lo; 7 backends at {}; the client at {}",
        addrs.service(),
        addrs.backends(),
        addrs.client()
    );
    let name = |role: &str| NAMES.name(role);
    let cluster = Cluster::create(addrs, nodes, &name).context("building the namespaces")?;
    // Dropped before `cluster`: the processes stop before their namespaces go.
    let mut nodes = Nodes::start(&cluster, release)?;
    let played = story::play(&cluster, &mut nodes);
    println!("\n==> cluster: removing the processes, namespaces and pinned tables");
    nodes.stop();
    drop(cluster);
    played
}
