//! The kernel side of the daemon: the embedded eBPF object, bpffs and the pin directory.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    programs::links::{FdLink, LinkError, PinnedLink},
    sys::SyscallError,
    Ebpf, EbpfLoader,
};
use lb_common::{
    PIN_VERSION, SHIELD_SYN_MAP, SHIELD_SYN_SLOTS_MAP, SPLICE_FLOWS_MAP, STICK_TABLE_MAP,
};

use crate::sys::bpffs;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded so one binary is all a host needs.
#[cfg(not(stickylb_no_ebpf))]
static EBPF_OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/stickylb.bpf.o"
)));
/// `build.rs` found no object (a fresh clone, plain `cargo build`): see [`ebpf_object`].
#[cfg(stickylb_no_ebpf)]
static EBPF_OBJECT: Option<&[u8]> = None;

const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// This binary was built without the eBPF object (plain `cargo build` or `cargo test` before
/// `cargo xtask build-ebpf`): whatever needs the program or its maps cannot start.
#[derive(Debug, thiserror::Error)]
#[error(
    "this build has no eBPF object: run `cargo xtask build-ebpf`, then build again \
     (or build with `cargo xtask build`)"
)]
pub struct NoEbpfObject;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "{path} is not on a bpf filesystem and mounting one at {DEFAULT_BPFFS} failed; \
         mount it with `mount -t bpf bpf {DEFAULT_BPFFS}` (needs root)"
    )]
    NoBpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pin_dir {path} must be under {DEFAULT_BPFFS} or another mounted bpf filesystem")]
    PinDirOutsideBpffs { path: PathBuf },
    #[error("creating the pin directory {path}")]
    CreatePinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading the eBPF object (are you root, with CAP_BPF and CAP_NET_ADMIN?)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error(transparent)]
    NoEbpfObject(#[from] NoEbpfObject),
}

/// Loading the embedded object for a program of ours (the fast path's, the shield's), or
/// finding a program or map in it.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("loading the eBPF object (are you root, with CAP_BPF and CAP_NET_ADMIN?)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error(transparent)]
    NoEbpfObject(#[from] NoEbpfObject),
    #[error("the eBPF object has no {what} {name}")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
}

/// The object's program `name` as its kind `P` (`Xdp`, `SchedClassifier`, `SockOps`), or an
/// error naming it: an object without it, or with it of another kind, is from another revision
/// of lb-ebpf.
pub fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, ObjectError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    let missing = || ObjectError::Missing {
        what: "program",
        name,
    };
    ebpf.program_mut(name)
        .ok_or_else(missing)?
        .try_into()
        .map_err(|_| missing())
}

/// The object's map `name`, or an error naming it (an object from another revision of lb-ebpf).
pub fn map_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::maps::Map, ObjectError> {
    ebpf.map_mut(name)
        .ok_or(ObjectError::Missing { what: "map", name })
}

/// Adopting or pinning the link of one of our programs (the fast path's, the shield's) on an
/// interface.
#[derive(Debug, thiserror::Error)]
pub enum PinnedLinkError {
    #[error("adopting the pinned link {path}")]
    Adopt {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("pinning the link at {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("removing the pinned link {path}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The link a previous process pinned at `path`, ready for the program's `attach_to_link`
/// (which replaces its program atomically, so traffic never sees a gap); None when nothing is
/// pinned there.
pub fn adopt_pinned_link<L>(path: &Path) -> Result<Option<L>, PinnedLinkError>
where
    L: TryFrom<FdLink, Error = LinkError>,
{
    let adopt_err = |source| PinnedLinkError::Adopt {
        path: path.to_owned(),
        source,
    };
    match PinnedLink::from_pin(path) {
        Ok(pinned) => FdLink::from(pinned).try_into().map(Some).map_err(adopt_err),
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(source) => Err(adopt_err(source)),
    }
}

/// Keeps an attachment past this process: `link` (taken from the program) becomes a plain fd
/// link, pinned at `path` when `pin` (a new attachment; an adopted one is pinned already).
/// Dropping the fd afterwards leaves the pinned link, and so the attachment, in place, where
/// dropping the program's own link would detach it.
pub fn keep_link<L>(link: L, path: &Path, pin: bool) -> Result<(), PinnedLinkError>
where
    L: TryInto<FdLink, Error = LinkError>,
{
    let link: FdLink = link.try_into().map_err(|source| PinnedLinkError::Adopt {
        path: path.to_owned(),
        source,
    })?;
    if pin {
        link.pin(path).map_err(|source| PinnedLinkError::Pin {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(())
}

/// The links pinned under `root` whose file names start with `prefix`; none when `root` does
/// not exist.
pub fn pinned_links(root: &Path, prefix: &str) -> Result<Vec<PathBuf>, PinnedLinkError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PinnedLinkError::Unpin {
                path: root.to_owned(),
                source,
            })
        }
    };
    Ok(entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .map(|entry| entry.path())
        .collect())
}

/// Removes the links pinned under `root` whose file names start with `prefix`, but those in
/// `keep` (a link goes away with its last reference, and its attachment with it): a previous
/// process's attachments outlive it, so a start that wants fewer must undo them. Returns the
/// link files removed.
pub fn remove_pinned_links(
    root: &Path,
    prefix: &str,
    keep: &[PathBuf],
) -> Result<Vec<PathBuf>, PinnedLinkError> {
    let mut removed = Vec::new();
    for path in pinned_links(root, prefix)? {
        if keep.contains(&path) {
            continue;
        }
        std::fs::remove_file(&path).map_err(|source| PinnedLinkError::Unpin {
            path: path.clone(),
            source,
        })?;
        removed.push(path);
    }
    Ok(removed)
}

/// Whether attaching an XDP program failed because another XDP program is attached to the
/// interface (not the driver's refusal: generic mode would meet it too).
pub fn is_xdp_occupied(error: &aya::programs::ProgramError) -> bool {
    let aya::programs::ProgramError::SyscallError(SyscallError { io_error, .. }) = error else {
        return false;
    };
    matches!(io_error.raw_os_error(), Some(libc::EEXIST | libc::EBUSY))
}

/// Where this instance's pinned objects live: `<pin_dir>/<instance>/<version>/`.
pub fn pin_root(pin_dir: &Path, instance: &str) -> PathBuf {
    pin_dir.join(instance).join(PIN_VERSION)
}

/// The pinned stick table's path.
pub fn stick_table_path(pin_dir: &Path, instance: &str) -> PathBuf {
    pin_root(pin_dir, instance).join(STICK_TABLE_MAP)
}

/// Makes sure `pin_root` exists on a bpf filesystem, mounting bpffs at /sys/fs/bpf when the
/// host has not (Debian does not by default); says which it was.
pub fn prepare_pin_root(pin_root: &Path) -> Result<BpffsOrigin, DataplaneError> {
    let mut origin = BpffsOrigin::Found;
    if !nearest_existing_is_bpffs(pin_root) {
        if !pin_root.starts_with(DEFAULT_BPFFS) {
            return Err(DataplaneError::PinDirOutsideBpffs {
                path: pin_root.to_owned(),
            });
        }
        mount_bpffs(Path::new(DEFAULT_BPFFS)).map_err(|source| DataplaneError::NoBpffs {
            path: pin_root.to_owned(),
            source,
        })?;
        tracing::info!(path = DEFAULT_BPFFS, "mounted bpffs");
        origin = BpffsOrigin::MountedHere;
    }
    std::fs::create_dir_all(pin_root).map_err(|source| DataplaneError::CreatePinDir {
        path: pin_root.to_owned(),
        source,
    })?;
    Ok(origin)
}

/// The root of PID 1's view of the file system: where the host's mounts are seen from a
/// private mount namespace.
const INIT_ROOT: &str = "/proc/1/root";

/// How a pin root came to be on a bpf filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpffsOrigin {
    /// It already was.
    Found,
    /// [`prepare_pin_root`] mounted a bpffs at /sys/fs/bpf, which had none.
    MountedHere,
}

/// Whether what is pinned under a pin root outlives this process.
#[derive(Debug)]
pub enum Durability {
    /// The pin root's bpffs is the one PID 1 sees: pins stay until they are removed.
    Durable,
    /// PID 1's view cannot be read (it takes ptrace access to PID 1, which some sandboxes
    /// deny), and the bpffs was there before this process: taken as durable.
    Unverified {
        init_view: PathBuf,
        source: io::Error,
    },
    /// The pin root's bpffs goes with this process's mount namespace, and the next start
    /// begins with an empty table.
    Private(PrivateBpffs),
}

/// Why a pin root's bpffs is taken to be private to this process's mount namespace.
#[derive(Debug, thiserror::Error)]
pub enum PrivateBpffs {
    #[error("PID 1 does not see {path} (no {init_view})")]
    NotSeenByInit { path: PathBuf, init_view: PathBuf },
    #[error(
        "{path} is on another bpf filesystem than PID 1 sees there (device {ours:#x} here, \
         {theirs:#x} in {init_view})"
    )]
    OtherDevice {
        path: PathBuf,
        init_view: PathBuf,
        ours: u64,
        theirs: u64,
    },
    #[error(
        "this process found no bpffs at {DEFAULT_BPFFS} and mounted one, and cannot read PID \
         1's view ({init_view}) to see whether PID 1 shares it"
    )]
    MountedHere {
        init_view: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Whether `pin_root` (which exists, on a bpffs that came as `origin` says) outlives this
/// process: whether its bpffs is the one PID 1's mount namespace has at the same path. Under
/// `ip netns exec` (which gives the command a fresh /sys, so [`prepare_pin_root`] mounts a
/// bpffs of its own) or in a container without the host's bpffs it is not.
///
/// Inside a container PID 1 is the container's init, so a bpffs mounted in the container's
/// own mount namespace counts as durable here although it ends with the container.
pub fn pin_root_durability(pin_root: &Path, origin: BpffsOrigin) -> Durability {
    let path = std::fs::canonicalize(pin_root).unwrap_or_else(|_| pin_root.to_owned());
    let init_view = Path::new(INIT_ROOT).join(path.strip_prefix("/").unwrap_or(&path));
    let theirs = match bpffs::device_of(&init_view) {
        Ok(theirs) => theirs,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Durability::Private(PrivateBpffs::NotSeenByInit { path, init_view });
        }
        Err(source) => {
            return match origin {
                BpffsOrigin::Found => Durability::Unverified { init_view, source },
                BpffsOrigin::MountedHere => {
                    Durability::Private(PrivateBpffs::MountedHere { init_view, source })
                }
            };
        }
    };
    match bpffs::device_of(&path) {
        Ok(ours) if ours == theirs => Durability::Durable,
        Ok(ours) => Durability::Private(PrivateBpffs::OtherDevice {
            path,
            init_view,
            ours,
            theirs,
        }),
        // Statted a moment ago by the caller: only a concurrent removal gets here.
        Err(source) => Durability::Unverified { init_view, source },
    }
}

/// The embedded eBPF object (for loaders that need their own options, like the fast path), or
/// [`NoEbpfObject`] when this build has none.
pub fn ebpf_object() -> Result<&'static [u8], NoEbpfObject> {
    EBPF_OBJECT.ok_or(NoEbpfObject)
}

/// Loads the embedded eBPF object with `loader`'s options (pin paths, map sizes).
pub fn load_object(loader: &mut EbpfLoader<'_>) -> Result<Ebpf, ObjectError> {
    loader
        .load(ebpf_object()?)
        .map_err(|e| ObjectError::Load(Box::new(e)))
}

/// Loads the embedded eBPF object with the stick table sized to `stick_capacity` entries.
///
/// The object also defines the fast path's and the shield's maps; this loader does not use
/// them, so the large ones are created with one entry (a hash map preallocates its capacity,
/// an array allocates it). The fast path loads the object on its own (`fastpath::FastPath::load`).
pub fn load(stick_capacity: u32) -> Result<Ebpf, DataplaneError> {
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(STICK_TABLE_MAP, stick_capacity)
        .map_max_entries(SPLICE_FLOWS_MAP, 1);
    without_shield_buckets(&mut loader)
        .load(ebpf_object()?)
        .map_err(|e| DataplaneError::Load(Box::new(e)))
}

/// Sizes the shield's SYN buckets to one entry, for a loader of the object other than the
/// shield's (the stick table's, the fast path's): the kernel allocates them whole when it
/// creates them, 6.3 MB for the LRU (`SHIELD_SYN`) and 0.5 MB for the slots, which only the
/// shield's programs use.
pub fn without_shield_buckets<'l, 'a>(loader: &'l mut EbpfLoader<'a>) -> &'l mut EbpfLoader<'a> {
    loader
        .map_max_entries(SHIELD_SYN_MAP, 1)
        .map_max_entries(SHIELD_SYN_SLOTS_MAP, 1)
}

fn nearest_existing_is_bpffs(path: &Path) -> bool {
    path.ancestors()
        .find(|p| p.exists())
        .is_some_and(|p| bpffs::is_bpffs(p).unwrap_or(false))
}

fn mount_bpffs(target: &Path) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    bpffs::mount_bpffs(target)
}

/// What a pinned map must be for us to adopt it. aya adopts a pinned map by name without
/// checking it, and a map of another type or layout would be misread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapLayout {
    pub map_type: aya::maps::MapType,
    pub key_size: u32,
    pub value_size: u32,
}

impl MapLayout {
    /// A map of `map_type` with keys `K` and values `V`.
    pub fn of<K, V>(map_type: aya::maps::MapType) -> Self {
        Self {
            map_type,
            key_size: size_u32::<K>(),
            value_size: size_u32::<V>(),
        }
    }
}

/// A pinned map that is not the map of this version.
#[derive(Debug, thiserror::Error)]
#[error(
    "the pinned map {path} is not {what} of this version (type {found_type:?}, key {found_key} \
     bytes, value {found_value} bytes; expected {:?}, {}, {}); move it away or remove it",
    expected.map_type,
    expected.key_size,
    expected.value_size
)]
pub struct LayoutMismatch {
    pub path: PathBuf,
    /// What the map should be, e.g. "a stick table".
    pub what: &'static str,
    pub found_type: Option<aya::maps::MapType>,
    pub found_key: u32,
    pub found_value: u32,
    pub expected: MapLayout,
}

/// Checks the pinned map `data` (at `path`) against `expected`: `Ok(Err(..))` when it is
/// another map.
pub fn check_layout(
    data: &aya::maps::MapData,
    path: &Path,
    what: &'static str,
    expected: MapLayout,
) -> Result<Result<(), LayoutMismatch>, aya::maps::MapError> {
    let info = data.info()?;
    let found_type = info.map_type().ok();
    if found_type == Some(expected.map_type)
        && info.key_size() == expected.key_size
        && info.value_size() == expected.value_size
    {
        return Ok(Ok(()));
    }
    Ok(Err(LayoutMismatch {
        path: path.to_owned(),
        what,
        found_type,
        found_key: info.key_size(),
        found_value: info.value_size(),
        expected,
    }))
}

fn size_u32<T>() -> u32 {
    u32::try_from(std::mem::size_of::<T>()).unwrap_or(u32::MAX)
}
