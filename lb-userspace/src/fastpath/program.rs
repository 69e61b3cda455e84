//! Loading `splice_ingress`, attaching it with TCX and pinning links and maps; and, with
//! `[fastpath] xdp = "auto"`, `splice_xdp` in front of it (docs/SPLICE.md, "At XDP").

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{DevMapHash, MapData, MapType, PerCpuArray},
    programs::{
        tc::TcAttachOptions, LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{
    SpliceEntry, SpliceKey, SPLICE_FLOWS_MAP, SPLICE_PROGRAM, SPLICE_STATS_LEN, SPLICE_STATS_MAP,
    SPLICE_XDP_PORTS_MAP, SPLICE_XDP_PROGRAM,
};

use super::flows::Flows;
use crate::dataplane::{self, DataplaneError, LayoutMismatch, MapLayout};

/// Errors loading, attaching or adopting the fast path.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error("preparing the pin directory")]
    PinRoot(#[source] DataplaneError),
    #[error(transparent)]
    Incompatible(#[from] LayoutMismatch),
    #[error("opening the pinned map {path}")]
    OpenPinned {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Object(#[from] dataplane::ObjectError),
    #[error("loading the program {SPLICE_PROGRAM} into the kernel (verifier)")]
    Verify(#[source] ProgramError),
    #[error("loading the program {SPLICE_XDP_PROGRAM} into the kernel (verifier)")]
    VerifyXdp(#[source] ProgramError),
    #[error("attaching {SPLICE_XDP_PROGRAM} to {interface}")]
    AttachXdp {
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("allowing XDP redirects to interface {ifindex}")]
    XdpPorts {
        ifindex: u32,
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("attaching {SPLICE_PROGRAM} to {interface}")]
    Attach {
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("fastpath_interfaces names {interface}, which this network namespace does not have")]
    NoInterface {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Link(#[from] dataplane::PinnedLinkError),
    #[error("splice flow map operation")]
    Map(#[from] aya::maps::MapError),
    #[error("reading the splice flow map")]
    Read(#[source] io::Error),
}

/// How an interface's attachment came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// No pinned link: a new TCX link was created and pinned.
    Created,
    /// A pinned link existed: its program was atomically replaced by this one.
    Replaced,
}

/// How the XDP translation came out on an interface (TC is attached on every one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachment {
    /// `[fastpath] xdp = "off"`: TC only.
    Off,
    /// `splice_xdp` runs in the driver (native XDP), in front of TC.
    Native,
    /// The driver has no native XDP (or refuses this program, e.g. for its MTU): TC only.
    /// Generic XDP is not used: it runs where TC runs, on a socket buffer, and gains nothing.
    Unsupported,
    /// Another XDP program (someone else's) holds the interface: TC only.
    Occupied,
    /// The shield holds the interface's XDP and runs the translation too (`shield_splice`).
    Shield,
}

impl XdpAttachment {
    /// Where the translation of the packets arriving on the interface runs, in the log's,
    /// the monitor's and the metrics' words: `xdp` or `tc`.
    pub fn translation(self) -> &'static str {
        match self {
            Self::Native | Self::Shield => "xdp",
            Self::Off | Self::Unsupported | Self::Occupied => "tc",
        }
    }

    /// Why it is `tc`, or `native`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Native => "native",
            Self::Unsupported => "unsupported",
            Self::Occupied => "occupied",
            Self::Shield => "shield",
        }
    }
}

/// The loaded program and the pinned flow map of one instance.
pub struct FastPath {
    ebpf: Ebpf,
    root: PathBuf,
    /// `splice_xdp` was loaded too (`[fastpath] xdp = "auto"`).
    xdp: bool,
}

impl FastPath {
    /// Loads `splice_ingress` (through the verifier), adopting the maps pinned under `root`
    /// (`<pin_dir>/<instance>/v1`) or creating and pinning them there; with `xdp`, loads
    /// `splice_xdp` too. The XDP links a previous process pinned are removed (TC translates
    /// meanwhile): each process attaches its own program, whose device map it fills.
    pub fn load(root: &Path, xdp: bool) -> Result<FastPath, FastPathError> {
        dataplane::prepare_pin_root(root).map_err(FastPathError::PinRoot)?;
        let flows_path = root.join(SPLICE_FLOWS_MAP);
        if flows_path.exists() {
            check_flows_layout(&flows_path)?;
        }
        let stats_path = root.join(SPLICE_STATS_MAP);
        let mut loader = EbpfLoader::new();
        loader
            .map_pin_path(SPLICE_FLOWS_MAP, flows_path)
            .map_pin_path(SPLICE_STATS_MAP, stats_path);
        if xdp {
            // Pinned for the shield's `shield_splice`, which redirects through the same
            // interfaces on the interfaces the shield holds. Its entries are interface indexes,
            // valid for any process (the kernel removes an interface's entry when it goes).
            loader.map_pin_path(SPLICE_XDP_PORTS_MAP, root.join(SPLICE_XDP_PORTS_MAP));
        }
        dataplane::without_shield_buckets(&mut loader);
        let mut ebpf = dataplane::load_object(&mut loader)?;
        program_mut(&mut ebpf)?
            .load()
            .map_err(FastPathError::Verify)?;
        if xdp {
            xdp_program_mut(&mut ebpf)?
                .load()
                .map_err(FastPathError::VerifyXdp)?;
        }
        for link in dataplane::remove_pinned_links(root, &xdp_link_prefix(), &[])? {
            tracing::info!(link = %link.display(), "fast path: removed a previous XDP attachment");
        }
        Ok(FastPath {
            ebpf,
            root: root.to_owned(),
            xdp,
        })
    }

    /// Attaches `splice_xdp` to `interface` in native mode and pins the link as
    /// `<root>/splice_xdp_<interface>`, when this process loaded it; says how it came out.
    /// Every outcome but an error leaves TC translating what XDP does not.
    pub fn attach_xdp(&mut self, interface: &str) -> Result<XdpAttachment, FastPathError> {
        if !self.xdp {
            return Ok(XdpAttachment::Off);
        }
        let path = xdp_link_path(&self.root, interface);
        let program = xdp_program_mut(&mut self.ebpf)?;
        let attach_err = |source| FastPathError::AttachXdp {
            interface: interface.to_owned(),
            source,
        };
        let id = match program.attach(interface, XdpMode::Driver) {
            Ok(id) => id,
            Err(error) if dataplane::is_xdp_occupied(&error) => return Ok(XdpAttachment::Occupied),
            Err(error) => {
                tracing::debug!(%interface, %error, "native XDP refused");
                return Ok(XdpAttachment::Unsupported);
            }
        };
        let link = program.take_link(id).map_err(attach_err)?;
        dataplane::keep_link(link, &path, true)?;
        Ok(XdpAttachment::Native)
    }

    /// What an interface the shield takes gets: the shield's own program translates there
    /// (`shield_splice`, see `shield::program::Program`), or, when this process runs no XDP
    /// translation at all, TC only (`Off`). One XDP program per interface.
    pub fn xdp_left_to_shield(&self) -> XdpAttachment {
        if self.xdp {
            XdpAttachment::Shield
        } else {
            XdpAttachment::Off
        }
    }

    /// Lets `splice_xdp` redirect translated frames to interface `ifindex` (it passes the
    /// frames of flows leaving by any other to TC).
    pub fn allow_xdp_redirect(&mut self, ifindex: u32) -> Result<(), FastPathError> {
        let map_err = |source| FastPathError::XdpPorts { ifindex, source };
        let map = dataplane::map_mut(&mut self.ebpf, SPLICE_XDP_PORTS_MAP)?;
        let mut ports: DevMapHash<_> = DevMapHash::try_from(map).map_err(|e| map_err(e.into()))?;
        ports.insert(ifindex, ifindex, None, 0).map_err(map_err)
    }

    /// Attaches the program to `interface`'s ingress with TCX and pins the link as
    /// `<root>/splice_ingress_<interface>`. A link already pinned there (a previous process's)
    /// is adopted: its program is replaced atomically, so traffic never sees a gap.
    pub fn attach(&mut self, interface: &str) -> Result<Attachment, FastPathError> {
        let path = self.link_path(interface);
        let program = program_mut(&mut self.ebpf)?;
        let attach_err = |source| FastPathError::Attach {
            interface: interface.to_owned(),
            source,
        };
        let (link_id, attachment) = match dataplane::adopt_pinned_link(&path)? {
            Some(link) => (
                program.attach_to_link(link).map_err(attach_err)?,
                Attachment::Replaced,
            ),
            None => {
                let id = program
                    .attach_with_options(
                        interface,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(attach_err)?;
                (id, Attachment::Created)
            }
        };
        let link = program.take_link(link_id).map_err(attach_err)?;
        dataplane::keep_link(link, &path, attachment == Attachment::Created)?;
        Ok(attachment)
    }

    /// Detaches the program from `interface` by removing its pinned link (the link goes away
    /// with its last reference). Spliced flows through that interface stop being translated.
    pub fn detach(&self, interface: &str) -> Result<(), FastPathError> {
        let path = self.link_path(interface);
        std::fs::remove_file(&path)
            .map_err(|source| dataplane::PinnedLinkError::Unpin { path, source }.into())
    }

    /// The flow map (the pinned one: entries written here are seen by every process).
    pub fn flows(&mut self) -> Result<Flows, FastPathError> {
        let missing = dataplane::ObjectError::Missing {
            what: "map",
            name: SPLICE_FLOWS_MAP,
        };
        match self.ebpf.take_map(SPLICE_FLOWS_MAP) {
            // Our own object's map: its layout is the one Flows reads.
            Some(aya::maps::Map::HashMap(data)) => Ok(Flows::new(data)?),
            _ => Err(missing.into()),
        }
    }

    /// Whether a TC link is pinned for `interface` (this process's or a previous one's).
    pub fn has_pinned_link(&self, interface: &str) -> bool {
        self.link_path(interface).exists()
    }

    fn link_path(&self, interface: &str) -> PathBuf {
        // bpffs refuses names with a dot (VLAN interfaces have one).
        self.root.join(format!(
            "{}{}",
            tc_link_prefix(),
            interface.replace('.', "_")
        ))
    }
}

/// Removes every link of the fast path pinned under `root` (`splice_ingress_<interface>` at TC,
/// `splice_xdp_<interface>` at XDP), which detaches the programs from their interfaces; for a
/// stopped instance (`stickylb detach`). Returns the link files removed.
pub fn detach_all(root: &Path) -> Result<Vec<PathBuf>, FastPathError> {
    let mut removed = dataplane::remove_pinned_links(root, &tc_link_prefix(), &[])?;
    removed.extend(dataplane::remove_pinned_links(
        root,
        &xdp_link_prefix(),
        &[],
    )?);
    Ok(removed)
}

/// Whether a link of the fast path is pinned under `root` (its programs are attached
/// somewhere, by this process or a previous one).
pub fn any_link_pinned(root: &Path) -> bool {
    [tc_link_prefix(), xdp_link_prefix()]
        .iter()
        .any(|prefix| dataplane::pinned_links(root, prefix).is_ok_and(|links| !links.is_empty()))
}

/// The pinned TC links' names start with this.
fn tc_link_prefix() -> String {
    format!("{SPLICE_PROGRAM}_")
}

/// The pinned XDP links' names start with this.
fn xdp_link_prefix() -> String {
    format!("{SPLICE_XDP_PROGRAM}_")
}

/// Where the XDP link of `interface` is pinned under `root`.
fn xdp_link_path(root: &Path, interface: &str) -> PathBuf {
    // bpffs refuses names with a dot (VLAN interfaces have one).
    root.join(format!(
        "{}{}",
        xdp_link_prefix(),
        interface.replace('.', "_")
    ))
}

fn xdp_program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, FastPathError> {
    Ok(dataplane::program_mut(ebpf, SPLICE_XDP_PROGRAM)?)
}

/// Opens the flow map pinned under `root` without loading the program (tools, tests).
pub fn open_pinned_flows(root: &Path) -> Result<Flows, FastPathError> {
    let path = root.join(SPLICE_FLOWS_MAP);
    check_flows_layout(&path)?;
    let data = MapData::from_pin(&path).map_err(|source| FastPathError::OpenPinned {
        path: path.clone(),
        source,
    })?;
    Ok(Flows::new(data)?)
}

/// The program's counters (indexed by `lb_common::SPLICE_STAT_*`), summed over CPUs, read from
/// the stats map pinned under `root`.
pub fn read_pinned_stats(root: &Path) -> Result<[u64; SPLICE_STATS_LEN as usize], FastPathError> {
    let path = root.join(SPLICE_STATS_MAP);
    let data = MapData::from_pin(&path).map_err(|source| FastPathError::OpenPinned {
        path: path.clone(),
        source,
    })?;
    let stats = PerCpuArray::<MapData, u64>::try_from(aya::maps::Map::PerCpuArray(data))?;
    let mut sums = [0u64; SPLICE_STATS_LEN as usize];
    for (index, sum) in (0u32..).zip(sums.iter_mut()) {
        *sum = stats.get(&index, 0)?.iter().sum();
    }
    Ok(sums)
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, FastPathError> {
    Ok(dataplane::program_mut(ebpf, SPLICE_PROGRAM)?)
}

/// aya adopts a pinned map by name without checking it: do it here.
fn check_flows_layout(path: &Path) -> Result<(), FastPathError> {
    let data = MapData::from_pin(path).map_err(|source| FastPathError::OpenPinned {
        path: path.to_owned(),
        source,
    })?;
    let expected = MapLayout::of::<SpliceKey, SpliceEntry>(MapType::Hash);
    Ok(dataplane::check_layout(
        &data,
        path,
        "a splice flow map",
        expected,
    )??)
}
