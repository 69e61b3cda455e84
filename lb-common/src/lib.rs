//! The kernel/user ABI of stickylb: every key and value stored in a pinned BPF map.
//!
//! Pinned maps outlive the daemon, so these layouts are an on-disk format. Changing a size or a
//! field's meaning requires a new [`PIN_VERSION`]; the daemon refuses to adopt a pinned map whose
//! type, key size, value size or capacity does not match what it expects.
//!
//! All multi-byte integers are in host byte order unless a field says otherwise. Text fields are
//! NUL-padded byte arrays: `bpftool map dump` prints them as strings because the build marks the
//! `u8` BTF type as a character type (see `xtask`'s BTF post-processing).
#![no_std]

use core::mem::size_of;

/// Directory component under `<pin_dir>/<instance>/` that versions every pinned object.
pub const PIN_VERSION: &str = "v1";

/// Name of the stick table map in the eBPF object (and the file name it is pinned under).
pub const STICK_TABLE_MAP: &str = "STICK_TABLE";

/// Bytes of cookie text a [`StickKey`] holds, including at least one terminating NUL.
pub const COOKIE_LEN: usize = 44;

/// Bytes of server name a [`StickEntry`] holds, including at least one terminating NUL.
pub const SERVER_NAME_LEN: usize = 32;

/// Capacity used by the eBPF object's map definition; the daemon sets the real capacity from
/// the configuration before loading.
pub const STICK_TABLE_DEFAULT_ENTRIES: u32 = 1024;

/// Key of the durable stick table.
///
/// `cookie` holds the cookie value verbatim when it is at most `COOKIE_LEN - 1` bytes long.
/// A longer value is stored as `~` followed by 32 lowercase hex digits of a 128-bit digest of
/// the value, so it still identifies the session (see `lb-userspace/src/table/key.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StickKey {
    /// Identifies the backend: FNV-1a (32 bit) of the backend's name. The daemon refuses a
    /// configuration in which two backends share an id.
    pub backend_id: u32,
    /// NUL-padded cookie value (or its digest form, see above).
    pub cookie: [u8; COOKIE_LEN],
}

/// Value of the durable stick table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StickEntry {
    /// NUL-padded name of the server the session is stuck to.
    pub server: [u8; SERVER_NAME_LEN],
    /// Wall-clock time the session was last used, in milliseconds since the Unix epoch.
    pub last_seen_ms: u64,
}

const _: () = assert!(size_of::<StickKey>() == 48);
const _: () = assert!(size_of::<StickEntry>() == 40);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both types are repr(C), contain only integers and byte arrays, and have no padding
    // (checked by the size assertions above).
    unsafe impl aya::Pod for super::StickKey {}
    unsafe impl aya::Pod for super::StickEntry {}
}
