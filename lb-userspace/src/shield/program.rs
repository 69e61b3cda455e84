//! Loading the XDP program `shield`, attaching it and pinning its links and maps.

use std::path::{Path, PathBuf};

use aya::{
    maps::MapData,
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    ShieldAddr, ShieldSynBucket, SHIELD_CONFIG_MAP, SHIELD_DENY_MAP, SHIELD_PROGRAM,
    SHIELD_SPLICE_PROGRAM, SHIELD_STATS_LEN, SHIELD_STATS_MAP, SHIELD_SYN_MAP, SPLICE_FLOWS_MAP,
    SPLICE_STATS_MAP, SPLICE_XDP_PORTS_MAP,
};

use super::{
    deny::{self, DenyList},
    error::ShieldError,
    limit,
};
use crate::dataplane::{self, is_xdp_occupied as is_occupied, MapLayout};

/// How the program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver, before a socket buffer exists.
    Native,
    /// Generic XDP in the stack (drivers without XDP support): same verdicts, less gain.
    Generic,
    /// A previous process's pinned link was adopted and its program replaced; the mode is the
    /// one that process got.
    Adopted,
}

impl AttachMode {
    /// The mode in the monitor's and the metrics' words.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Adopted => "adopted",
        }
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
        program_mut(&mut ebpf, program)?
            .load()
            .map_err(ShieldError::Verify)?;
        Ok(Shield {
            ebpf,
            root: root.to_owned(),
            program,
        })
    }

    /// Attaches the program to `interface` and pins the link as `<root>/shield_<interface>`:
    /// native XDP where the driver has it, generic otherwise. A link already pinned there (a
    /// previous process's) is adopted and its program replaced atomically.
    pub fn attach(&mut self, interface: &str) -> Result<AttachMode, ShieldError> {
        let path = self.link_path(interface);
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
        Ok(mode)
    }

    fn link_path(&self, interface: &str) -> PathBuf {
        link_path(&self.root, interface)
    }
}

/// Where the link of `interface` is pinned under `root`.
fn link_path(root: &Path, interface: &str) -> PathBuf {
    // bpffs refuses names with a dot (VLAN interfaces have one).
    root.join(format!("{SHIELD_PROGRAM}_{}", interface.replace('.', "_")))
}

/// Detaches the shield from every interface under `root` but `keep` by removing their pinned
/// links (a link goes away with its last reference): a previous process's attachments outlive
/// it, so a start with the shield off, or with fewer interfaces, must undo them. Returns the
/// link files removed.
pub fn detach_others(root: &Path, keep: &[String]) -> Result<Vec<PathBuf>, ShieldError> {
    let kept: Vec<PathBuf> = keep.iter().map(|i| link_path(root, i)).collect();
    let prefix = format!("{SHIELD_PROGRAM}_");
    Ok(dataplane::remove_pinned_links(root, &prefix, &kept)?)
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

fn program_mut(ebpf: &mut Ebpf, program: Program) -> Result<&mut Xdp, ShieldError> {
    let missing = dataplane::ObjectError::Missing {
        what: "program",
        name: program.name(),
    };
    let Some(program) = ebpf.program_mut(program.name()) else {
        return Err(missing.into());
    };
    program.try_into().map_err(|_| missing.into())
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
    }
}
