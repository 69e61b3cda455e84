//! Loading the shield's programs (`shield` or `shield_splice` at XDP, `shield_tc` at TC),
//! attaching them and pinning their links and maps.

use std::path::{Path, PathBuf};

use aya::{
    maps::MapData,
    programs::{tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    ShieldAddr, ShieldSynBucket, SHIELD_CONFIG_MAP, SHIELD_DENY_MAP, SHIELD_PORTS_MAP,
    SHIELD_PROGRAM, SHIELD_SPLICE_PROGRAM, SHIELD_STATS_LEN, SHIELD_STATS_MAP, SHIELD_SYN_MAP,
    SHIELD_TC_PROGRAM, SPLICE_FLOWS_MAP, SPLICE_STATS_MAP, SPLICE_XDP_PORTS_MAP,
};

use super::{
    deny::{self, DenyList},
    error::ShieldError,
    limit,
};
use crate::{
    config::ShieldHook,
    dataplane::{self, is_xdp_occupied as is_occupied, MapLayout},
};

/// How the program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver, before a socket buffer exists.
    Native,
    /// Generic XDP in the stack (drivers without XDP support): same verdicts, less gain.
    Generic,
    /// TC ingress (TCX, first): the socket buffer exists already, as it does for every frame
    /// of a veth.
    Tc,
    /// A previous process's pinned XDP link was adopted and its program replaced; the mode is
    /// the one that process got.
    Adopted,
}

impl AttachMode {
    /// The mode in the monitor's and the metrics' words.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Tc => "tc",
            Self::Adopted => "adopted",
        }
    }
}

/// Where the shield runs on one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP, native where the driver has it; `fallback` where it has not.
    Xdp { fallback: Fallback },
    /// TC ingress.
    Tc,
}

/// Where the shield goes on an interface whose driver refuses native XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Generic XDP (`hook = "xdp"`, as asked).
    Generic,
    /// TC ingress: generic XDP runs after the socket buffer exists, as TC does, and copies
    /// every cloned or paged one (`hook = "auto"`).
    Tc,
}

/// Where `[shield] hook` puts the shield on an interface whose driver is `driver` (None: not
/// known), running `program`.
///
/// `auto` takes TC on a veth: its frames are socket buffers its peer's stack built, and its
/// native XDP copies every one that is cloned or paged (every TCP segment) into a buffer of its
/// own first, which costs ordinary traffic more than the shield's verdict (docs/SHIELD.md,
/// "Where it runs"). Elsewhere it takes native XDP, where a dropped packet costs no socket
/// buffer, and TC where the driver has no native XDP. With the fast path translating at XDP
/// ([`Program::WithTranslation`]) the shield's program is the interface's XDP program, so XDP.
pub fn choose_hook(setting: ShieldHook, program: Program, driver: Option<&str>) -> Hook {
    match setting {
        ShieldHook::Xdp => Hook::Xdp {
            fallback: Fallback::Generic,
        },
        ShieldHook::Tc => Hook::Tc,
        ShieldHook::Auto if program == Program::WithTranslation => Hook::Xdp {
            fallback: Fallback::Generic,
        },
        ShieldHook::Auto if driver == Some("veth") => Hook::Tc,
        ShieldHook::Auto => Hook::Xdp {
            fallback: Fallback::Tc,
        },
    }
}

/// What a running daemon's shield is: where its maps are pinned and how it is attached. What
/// the monitor shows.
#[derive(Clone, Debug)]
pub struct Attached {
    /// `<pin_dir>/<instance>/v1`.
    pub root: PathBuf,
    /// Each interface and the mode it got.
    pub interfaces: Vec<(String, AttachMode)>,
    /// How the refund's `sock_ops` program is attached.
    pub refund: Option<super::refund::RefundAttach>,
}

/// Which program holds the shield's interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `shield`: the deny list and the SYN limit.
    Shield,
    /// `shield_splice`: the same, then the splice translation of `splice_xdp`, for a fast path
    /// that translates at XDP (`[fastpath] xdp = "auto"`): an interface runs one XDP program.
    /// It uses the fast path's pinned maps, so the fast path must have loaded them first.
    WithTranslation,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Self::Shield => SHIELD_PROGRAM,
            Self::WithTranslation => SHIELD_SPLICE_PROGRAM,
        }
    }
}

/// The loaded shield of one instance.
pub struct Shield {
    pub(super) ebpf: Ebpf,
    pub(super) root: PathBuf,
    program: Program,
}

impl Shield {
    /// Loads `shield` (through the verifier), adopting its maps (deny list, SYN buckets,
    /// settings, counters) pinned under `root` (`<pin_dir>/<instance>/v1`), each checked for its
    /// layout, or creating and pinning them there.
    pub fn load(root: &Path) -> Result<Shield, ShieldError> {
        Self::load_program(root, Program::Shield)
    }

    /// Loads `program`; [`Program::WithTranslation`] also adopts the fast path's flow map,
    /// counters and device map pinned under `root` (the fast path checked their layouts when
    /// it loaded them).
    pub fn load_program(root: &Path, program: Program) -> Result<Shield, ShieldError> {
        dataplane::prepare_pin_root(root).map_err(ShieldError::PinRoot)?;
        for (name, what, layout) in pinned_maps() {
            let path = root.join(name);
            if path.exists() {
                check_pinned_layout(&path, what, layout)?;
            }
        }
        let mut loader = EbpfLoader::new();
        for (name, _, _) in pinned_maps() {
            loader.map_pin_path(name, root.join(name));
        }
        if program == Program::WithTranslation {
            for name in [SPLICE_FLOWS_MAP, SPLICE_STATS_MAP, SPLICE_XDP_PORTS_MAP] {
                let path = root.join(name);
                if !path.exists() {
                    return Err(ShieldError::FastPathMapMissing { path });
                }
                loader.map_pin_path(name, path);
            }
        } else {
            // The loader also creates the object's other maps; the fast path's flow map is a
            // preallocated hash map, kept to one entry here since `shield` never uses it.
            loader.map_max_entries(SPLICE_FLOWS_MAP, 1);
        }
        let mut ebpf = dataplane::load_object(&mut loader)?;
        let verify = |program| move |source| ShieldError::Verify { program, source };
        program_mut(&mut ebpf, program)?
            .load()
            .map_err(verify(program.name()))?;
        tc_program_mut(&mut ebpf)?
            .load()
            .map_err(verify(SHIELD_TC_PROGRAM))?;
        Ok(Shield {
            ebpf,
            root: root.to_owned(),
            program,
        })
    }

    /// Tells the programs the frontends' `ports`, the only ones whose SYNs the rate limit
    /// counts; before attaching, so that no SYN to another port is ever limited.
    pub fn limit_ports(&mut self, ports: &[u16]) -> Result<(), ShieldError> {
        let map = dataplane::map_mut(&mut self.ebpf, SHIELD_PORTS_MAP)?;
        let mut limited = aya::maps::HashMap::<&mut MapData, u16, u32>::try_from(map)
            .map_err(ShieldError::Ports)?;
        for &port in ports {
            limited.insert(port, 1, 0).map_err(ShieldError::Ports)?;
        }
        Ok(())
    }

    /// Attaches the shield to `interface` at `hook` and pins the link under the root:
    /// `shield_<interface>` for XDP, `shieldtc_<interface>` for TC. A link already pinned there
    /// (a previous process's) is adopted and its program replaced atomically. Returns the mode
    /// it got and the link's path.
    pub fn attach(
        &mut self,
        interface: &str,
        hook: Hook,
    ) -> Result<(AttachMode, PathBuf), ShieldError> {
        match hook {
            Hook::Tc => self.attach_tc(interface),
            Hook::Xdp { fallback } => match self.attach_xdp(interface, fallback)? {
                Some(mode) => Ok((mode, link_path(&self.root, interface))),
                None => self.attach_tc(interface),
            },
        }
    }

    /// XDP, native first; None when the driver refused native XDP and `fallback` is TC.
    fn attach_xdp(
        &mut self,
        interface: &str,
        fallback: Fallback,
    ) -> Result<Option<AttachMode>, ShieldError> {
        let path = link_path(&self.root, interface);
        let program = program_mut(&mut self.ebpf, self.program)?;
        let attach_err = |source| ShieldError::Attach {
            interface: interface.to_owned(),
            source,
        };
        let (link_id, mode) = match dataplane::adopt_pinned_link(&path)? {
            Some(link) => {
                let id = program.attach_to_link(link).map_err(attach_err)?;
                (id, AttachMode::Adopted)
            }
            None => match program.attach(interface, XdpMode::Driver) {
                Ok(id) => (id, AttachMode::Native),
                // Not the driver's refusal: an XDP program is there already, whose link this
                // process cannot see; generic mode would meet it too.
                Err(native) if is_occupied(&native) => {
                    return Err(ShieldError::Occupied {
                        interface: interface.to_owned(),
                        source: native,
                    })
                }
                Err(native) if fallback == Fallback::Tc => {
                    tracing::debug!(%interface, error = %native, "native XDP refused: the shield goes to TC");
                    return Ok(None);
                }
                Err(native) => {
                    tracing::debug!(%interface, error = %native, "native XDP refused");
                    let id = program
                        .attach(interface, XdpMode::Skb)
                        .map_err(attach_err)?;
                    (id, AttachMode::Generic)
                }
            },
        };
        let link = program.take_link(link_id).map_err(attach_err)?;
        dataplane::keep_link(link, &path, mode != AttachMode::Adopted)?;
        Ok(Some(mode))
    }

    /// TCX ingress, in front of the programs there (the fast path's), so that a denied source
    /// never reaches them.
    fn attach_tc(&mut self, interface: &str) -> Result<(AttachMode, PathBuf), ShieldError> {
        let path = tc_link_path(&self.root, interface);
        let program = tc_program_mut(&mut self.ebpf)?;
        let attach_err = |source| ShieldError::Attach {
            interface: interface.to_owned(),
            source,
        };
        let (link_id, created) = match dataplane::adopt_pinned_link(&path)? {
            Some(link) => (program.attach_to_link(link).map_err(attach_err)?, false),
            None => {
                let id = program
                    .attach_with_options(
                        interface,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::first()),
                    )
                    .map_err(attach_err)?;
                (id, true)
            }
        };
        let link = program.take_link(link_id).map_err(attach_err)?;
        dataplane::keep_link(link, &path, created)?;
        Ok((AttachMode::Tc, path))
    }
}

/// Where the XDP link of `interface` is pinned under `root`.
fn link_path(root: &Path, interface: &str) -> PathBuf {
    // bpffs refuses names with a dot (VLAN interfaces have one).
    root.join(format!("{XDP_LINK_PREFIX}{}", interface.replace('.', "_")))
}

/// Where the TC link of `interface` is pinned under `root`.
fn tc_link_path(root: &Path, interface: &str) -> PathBuf {
    root.join(format!("{TC_LINK_PREFIX}{}", interface.replace('.', "_")))
}

/// The pinned XDP links' names start with this, the TC links' with [`TC_LINK_PREFIX`]; neither
/// is a prefix of the other, so an interface's name never makes one link look like the other.
const XDP_LINK_PREFIX: &str = "shield_";
const TC_LINK_PREFIX: &str = "shieldtc_";

/// Detaches the shield everywhere under `root` but at the links in `keep` by removing their
/// pinned links (a link goes away with its last reference): a previous process's attachments
/// outlive it, so a start with the shield off, with fewer interfaces, or with another hook,
/// must undo them. Returns the link files removed.
pub fn detach_others(root: &Path, keep: &[PathBuf]) -> Result<Vec<PathBuf>, ShieldError> {
    let mut removed = dataplane::remove_pinned_links(root, XDP_LINK_PREFIX, keep)?;
    removed.extend(dataplane::remove_pinned_links(root, TC_LINK_PREFIX, keep)?);
    Ok(removed)
}

/// The deny list pinned under `root`, created (with the shield's other maps, by loading the
/// object without attaching anything) when no process has pinned it yet: the operator can fill
/// it before the first start. The settings map stays empty (no SYN limit) until a start.
pub fn open_or_create_deny_list(root: &Path) -> Result<DenyList, ShieldError> {
    if !root.join(SHIELD_DENY_MAP).exists() {
        Shield::load(root)?;
    }
    DenyList::open_pinned(root)
}

/// The program's counters (indexed by `lb_common::SHIELD_STAT_*`), summed over CPUs, read from
/// the stats map pinned under `root`.
pub fn read_pinned_stats(root: &Path) -> Result<[u64; SHIELD_STATS_LEN as usize], ShieldError> {
    let path = root.join(SHIELD_STATS_MAP);
    let map_err = |source| ShieldError::OpenPinned {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(map_err)?;
    let stats = aya::maps::PerCpuArray::<MapData, u64>::try_from(aya::maps::Map::PerCpuArray(data))
        .map_err(map_err)?;
    let mut sums = [0u64; SHIELD_STATS_LEN as usize];
    for (index, sum) in (0u32..).zip(sums.iter_mut()) {
        *sum = stats.get(&index, 0).map_err(map_err)?.iter().sum();
    }
    Ok(sums)
}

fn tc_program_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, ShieldError> {
    Ok(dataplane::program_mut(ebpf, SHIELD_TC_PROGRAM)?)
}

fn program_mut(ebpf: &mut Ebpf, program: Program) -> Result<&mut Xdp, ShieldError> {
    Ok(dataplane::program_mut(ebpf, program.name())?)
}

/// The shield's maps pinned under the root: name, what it is (for errors), layout.
fn pinned_maps() -> [(&'static str, &'static str, MapLayout); 4] {
    [
        (SHIELD_DENY_MAP, "a shield deny list", deny::layout()),
        (
            SHIELD_STATS_MAP,
            "the shield's counters",
            MapLayout::of::<u32, u64>(aya::maps::MapType::PerCpuArray),
        ),
        (
            SHIELD_SYN_MAP,
            "the shield's SYN buckets",
            MapLayout::of::<ShieldAddr, ShieldSynBucket>(aya::maps::MapType::LruHash),
        ),
        (SHIELD_CONFIG_MAP, "the shield's settings", limit::layout()),
    ]
}

/// aya adopts a pinned map by name without checking it: do it here.
fn check_pinned_layout(
    path: &Path,
    what: &'static str,
    layout: MapLayout,
) -> Result<(), ShieldError> {
    let open_err = |source| ShieldError::OpenPinned {
        path: path.to_owned(),
        source,
    };
    let data = MapData::from_pin(path).map_err(open_err)?;
    Ok(dataplane::check_layout(&data, path, what, layout).map_err(open_err)??)
}

#[cfg(test)]
mod tests {
    use std::io;

    use aya::sys::SyscallError;

    use super::*;

    fn failed(errno: i32) -> aya::programs::ProgramError {
        aya::programs::ProgramError::SyscallError(SyscallError {
            call: "bpf_link_create",
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn another_program_on_the_interface_is_told_from_a_driver_refusal() {
        assert!(is_occupied(&failed(libc::EEXIST)));
        assert!(is_occupied(&failed(libc::EBUSY)));
        // What a driver without native XDP answers: try generic.
        assert!(!is_occupied(&failed(libc::EOPNOTSUPP)));
        assert!(!is_occupied(&failed(libc::EINVAL)));
    }

    #[test]
    fn link_names_have_no_dot() {
        let root = Path::new("/sys/fs/bpf/x/v1");
        assert_eq!(
            link_path(root, "eth1.10"),
            Path::new("/sys/fs/bpf/x/v1/shield_eth1_10")
        );
        assert_eq!(
            tc_link_path(root, "eth1.10"),
            Path::new("/sys/fs/bpf/x/v1/shieldtc_eth1_10")
        );
        // An interface named like the other hook's prefix still gets a link of its own hook.
        assert!(!tc_link_path(root, "x")
            .to_string_lossy()
            .contains(XDP_LINK_PREFIX));
    }

    #[test]
    fn auto_takes_tc_on_a_veth_and_xdp_where_the_driver_runs_it_or_the_fast_path_needs_it() {
        let xdp_or = |fallback| Hook::Xdp { fallback };
        let auto = |program, driver| choose_hook(ShieldHook::Auto, program, driver);
        assert_eq!(auto(Program::Shield, Some("veth")), Hook::Tc);
        assert_eq!(
            auto(Program::Shield, Some("mlx5_core")),
            xdp_or(Fallback::Tc)
        );
        assert_eq!(auto(Program::Shield, None), xdp_or(Fallback::Tc));
        // The shield's program is the interface's one XDP program when it also translates.
        assert_eq!(
            auto(Program::WithTranslation, Some("veth")),
            xdp_or(Fallback::Generic)
        );
        for driver in [Some("veth"), Some("ixgbe"), None] {
            let xdp = choose_hook(ShieldHook::Xdp, Program::Shield, driver);
            assert_eq!(xdp, xdp_or(Fallback::Generic));
            assert_eq!(
                choose_hook(ShieldHook::Tc, Program::Shield, driver),
                Hook::Tc
            );
        }
    }
}
