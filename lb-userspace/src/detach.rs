//! `stickylb detach`: takes out of the kernel what a stopped instance left attached there.
//!
//! The programs' links are pinned so that they outlive the process (a restart or an upgrade
//! finds the shield applied and the spliced flows translated). That is also why stopping the
//! daemon leaves them attached: the shield keeps dropping denied sources and SYN floods, the
//! fast path's programs keep running on their interfaces, and the refund stays on the cgroup
//! root. Decommissioning a host, or going back to another load balancer, needs them gone;
//! removing a pinned link detaches its program (a link goes away with its last reference, and
//! a stopped daemon holds none).
//!
//! Only the links go. The stick table, the deny list and the other pinned maps stay, as after
//! any stop: a start attaches the programs again and finds its sessions. Refused while the
//! instance runs (its process holds the links, and its next start would only attach them
//! again), while a process holds its control socket without answering (a hung daemon holds
//! its links just the same), and while spliced connections are open unless forced: their proxy sockets are gone,
//! and without the program their packets reach no socket.

use std::path::{Path, PathBuf};

use crate::{
    config::Config,
    control, dataplane,
    fastpath::{self, program::FastPathError},
    shield::{self, ShieldError},
};

/// What [`detach`] took out: the link files it removed.
#[derive(Debug)]
pub struct Detached {
    pub root: PathBuf,
    pub links: Vec<PathBuf>,
    /// Spliced connections that were open (only with `force`: they no longer pass).
    pub broken_flows: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error(
        "instance {instance} is running (pid {pid}): stop it first (its process holds the links, \
         and a start attaches them again)"
    )]
    Running { instance: String, pid: u32 },
    #[error(
        "instance {instance}: a process holds its control socket {path} but does not answer; it \
         may be hung, and would keep the links attached: stop it first"
    )]
    Unresponsive {
        instance: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{count} spliced connection(s) are open in the flow map under {root}: detaching the fast \
         path breaks them (their proxy sockets are gone); `--force` detaches anyway"
    )]
    SplicedFlows { count: u64, root: PathBuf },
    #[error("opening the flow map under {root}")]
    Flows {
        root: PathBuf,
        #[source]
        source: Box<FastPathError>,
    },
    #[error("reading the flow map under {root}")]
    FlowsRead {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("detaching the fast path's programs under {root}")]
    FastPath {
        root: PathBuf,
        #[source]
        source: Box<FastPathError>,
    },
    #[error("detaching the shield under {root}")]
    Shield {
        root: PathBuf,
        #[source]
        source: Box<ShieldError>,
    },
}

/// Detaches every program the stopped instance of `config` left attached: the shield's (XDP
/// and TC), the refund, and the fast path's (TC and XDP). `force` detaches even while spliced
/// connections are open.
pub fn detach(config: &Config, force: bool) -> Result<Detached, DetachError> {
    let instance = || config.instance.name.clone();
    match control::probe(&config.instance.control_socket) {
        control::Probe::Nobody => {}
        // A reply without a pid is no stickylb's; it still holds the socket.
        control::Probe::Answers(status) => match control::status_pid(&status) {
            Some(pid) => {
                return Err(DetachError::Running {
                    instance: instance(),
                    pid,
                })
            }
            None => {
                return Err(DetachError::Unresponsive {
                    instance: instance(),
                    path: config.instance.control_socket.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("unexpected status reply {status:?}"),
                    ),
                })
            }
        },
        control::Probe::Unresponsive(source) => {
            return Err(DetachError::Unresponsive {
                instance: instance(),
                path: config.instance.control_socket.clone(),
                source,
            })
        }
    }
    let root = dataplane::pin_root(&config.instance.pin_dir, &config.instance.name);
    let open = open_spliced(&root)?;
    if open > 0 && !force {
        return Err(DetachError::SplicedFlows { count: open, root });
    }
    let shield_err = |source| DetachError::Shield {
        root: root.clone(),
        source: Box::new(source),
    };
    let mut links = shield::program::detach_others(&root, &[]).map_err(shield_err)?;
    if shield::refund::detach(&root).map_err(shield_err)? {
        links.push(root.join(shield::refund::LINK_NAME));
    }
    links.extend(
        fastpath::program::detach_all(&root).map_err(|source| DetachError::FastPath {
            root: root.clone(),
            source: Box::new(source),
        })?,
    );
    Ok(Detached {
        root,
        links,
        broken_flows: open,
    })
}

/// Spliced connections in the flow map pinned under `root` that pass through an attached
/// program; none when no program of the fast path is attached (they do not pass already) or
/// without a flow map (the fast path never ran).
fn open_spliced(root: &Path) -> Result<u64, DetachError> {
    if !fastpath::program::any_link_pinned(root) || !root.join(lb_common::SPLICE_FLOWS_MAP).exists()
    {
        return Ok(0);
    }
    let flows =
        fastpath::program::open_pinned_flows(root).map_err(|source| DetachError::Flows {
            root: root.to_owned(),
            source: Box::new(source),
        })?;
    let entries = flows.entries().map_err(|source| DetachError::FlowsRead {
        root: root.to_owned(),
        source,
    })?;
    Ok(fastpath::report::summary(&entries).spliced)
}
