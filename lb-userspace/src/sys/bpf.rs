//! Map commands of `bpf(2)`: lookup, update, delete and batch lookup on a typed hash map.
//!
//! aya 0.14 has the first three but takes `&mut` for writes, which would serialise every user
//! of a map on one lock (request paths included), and it lacks batch lookups. The kernel needs
//! no such lock: every command here is safe to call from any number of threads at once.
//!
//! The functions are safe because of their argument's type: an aya `HashMap<_, K, V>` exists
//! only after aya checked that the map's key and value sizes are those of `K` and `V`
//! (`HashMap::try_from`), and `K` and `V` are [`Pod`], so any bytes the kernel writes into them
//! are valid values. The kernel copies exactly the map's key and value sizes, from and into them.

use std::{
    borrow::Borrow,
    io,
    mem::{size_of, MaybeUninit},
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    maps::{HashMap, IterableMap as _, MapData},
    Pod,
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `BPF_ANY`: create or replace.
pub const ANY: u64 = 0;
/// `BPF_NOEXIST`: create only.
pub const NOEXIST: u64 = 1;
/// `BPF_EXIST`: replace only.
pub const EXIST: u64 = 2;

/// Entries per batch lookup.
const BATCH: usize = 4096;

/// The element-command member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The value stored under `key`, if any.
pub fn lookup<T: Borrow<MapData>, K: Pod, V: Pod>(
    map: &HashMap<T, K, V>,
    key: &K,
) -> io::Result<Option<V>> {
    let mut value = MaybeUninit::<V>::uninit();
    let mut attr = ElemAttr {
        map_fd: fd(map)?,
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    // SAFETY: an element attr whose key and value point to a K and a V, the map's types (see
    // the module's comment).
    match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
        // SAFETY: the kernel wrote a whole value of plain old data.
        Ok(_) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `value` under `key`; `flags` is [`ANY`], [`NOEXIST`] or [`EXIST`].
pub fn update<T: Borrow<MapData>, K: Pod, V: Pod>(
    map: &HashMap<T, K, V>,
    key: &K,
    value: &V,
    flags: u64,
) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd(map)?,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_ref(value) as u64,
        flags,
        ..ElemAttr::default()
    };
    // SAFETY: as in `lookup`; the kernel only reads the value.
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map(drop)
}

/// Writes `value` under `key` unless the key is there already: `false` then.
pub fn insert_new<T: Borrow<MapData>, K: Pod, V: Pod>(
    map: &HashMap<T, K, V>,
    key: &K,
    value: &V,
) -> io::Result<bool> {
    match update(map, key, value, NOEXIST) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes `key`; `false` when it was not there.
pub fn delete<T: Borrow<MapData>, K: Pod, V: Pod>(
    map: &HashMap<T, K, V>,
    key: &K,
) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd(map)?,
        key: std::ptr::from_ref(key) as u64,
        ..ElemAttr::default()
    };
    // SAFETY: as in `lookup`, with no value.
    match unsafe { bpf(BPF_MAP_DELETE_ELEM, &mut attr) } {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What [`lookup_batches`] calls with each batch of entries.
pub type Visit<'a, K, V> = dyn FnMut(&[(K, V)]) + 'a;

/// Visits the whole map, a few thousand entries per syscall. A hash map's entries that change
/// while it is read may be seen twice or not at all, as with any iteration of a live map.
/// An error for which [`batches_unsupported`] is true means this kernel or map type has no
/// batch lookups.
pub fn lookup_batches<T: Borrow<MapData>, K: Pod, V: Pod>(
    map: &HashMap<T, K, V>,
    visit: &mut Visit<'_, K, V>,
) -> io::Result<()> {
    let fd = fd(map)?;
    let mut keys = vec![MaybeUninit::<K>::uninit(); BATCH];
    let mut values = vec![MaybeUninit::<V>::uninit(); BATCH];
    // Hash maps use a bucket index (a u32) as the position token; 8 bytes are ample.
    let (mut position, mut next) = (0u64, 0u64);
    let mut batch = Vec::with_capacity(BATCH);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_ref(&position) as u64
            },
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // ENOENT: this batch holds the last entries.
        // SAFETY: a batch attr; keys and values have room for `count` Ks and Vs, the map's
        // types (see the module's comment).
        let done = match unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        let count = (attr.count as usize).min(BATCH);
        batch.clear();
        // SAFETY: the kernel wrote `count` keys and values of plain old data.
        batch.extend(
            (0..count).map(|i| unsafe { (keys[i].assume_init(), values[i].assume_init()) }),
        );
        visit(&batch);
        if done {
            return Ok(());
        }
        position = next;
        first = false;
    }
}

/// The error of a [`lookup_batches`] on a kernel or map type without batch lookups
/// (`EINVAL`, `EOPNOTSUPP`).
pub fn batches_unsupported(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP))
}

fn fd<T: Borrow<MapData>, K: Pod, V: Pod>(map: &HashMap<T, K, V>) -> io::Result<u32> {
    let raw = map.map().fd().as_fd().as_raw_fd();
    u32::try_from(raw).map_err(|_| io::Error::other("bad map fd"))
}

/// `bpf(2)`: `command` with `attr`; the call's non-negative result (a descriptor for the
/// commands that create one, 0 for the others).
///
/// # Safety
///
/// `attr` is the `bpf_attr` member `command` reads, and every pointer in it is valid for the
/// call: for the map commands, buffers the size of the map's keys and values (`count` of them
/// for batches).
pub(super) unsafe fn bpf<A>(command: libc::c_long, attr: &mut A) -> io::Result<i32> {
    // SAFETY: see the function's contract.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            size_of::<A>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    i32::try_from(rc).map_err(io::Error::other)
}
