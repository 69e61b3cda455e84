//! Maps shared with userspace. Layouts live in `lb-common`.

use aya_ebpf::{btf_maps::LruHashMap, macros::btf_map};
use lb_common::{StickEntry, StickKey, STICK_TABLE_DEFAULT_ENTRIES};

/// The durable stick table: cookie -> server. Written by userspace only; the capacity is set by
/// the daemon at load time from the sum of the backends' `table_size`.
#[btf_map]
pub(crate) static STICK_TABLE: LruHashMap<StickKey, StickEntry, { STICK_TABLE_DEFAULT_ENTRIES as usize }> =
    LruHashMap::new();
