//! Maps shared with userspace. Layouts live in `lb-common`.

use aya_ebpf::{
    btf_maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    ServerAdminEntry, ServerAdminKey, ShieldAddr, ShieldConfig, ShieldFrontend, ShieldRule,
    ShieldSynBucket, SpliceEntry, SpliceKey, StickEntry, StickKey, SERVER_ADMIN_ENTRIES,
    SHIELD_DENY_ENTRIES, SHIELD_FRONTENDS_ENTRIES, SHIELD_PORTS_ENTRIES, SHIELD_STATS_LEN,
    SHIELD_SYN_ENTRIES, SHIELD_SYN_SLOTS_LEN, SPLICE_FLOWS_DEFAULT_ENTRIES, SPLICE_STATS_LEN,
    SPLICE_XDP_PORTS_ENTRIES, STICK_TABLE_DEFAULT_ENTRIES,
};

/// The durable stick table: cookie -> server. Written by userspace only; the capacity is set by
/// the daemon at load time from the sum of the backends' `table_size`.
#[btf_map]
pub(crate) static STICK_TABLE: LruHashMap<
    StickKey,
    StickEntry,
    { STICK_TABLE_DEFAULT_ENTRIES as usize },
> = LruHashMap::new();

/// The operator's server settings (admin state, runtime weight). Written by userspace only;
/// defined here so that it is created, pinned and described (BTF) like the stick table.
#[btf_map]
pub(crate) static SERVER_ADMIN: HashMap<
    ServerAdminKey,
    ServerAdminEntry,
    { SERVER_ADMIN_ENTRIES as usize },
> = HashMap::new();

/// Observed and spliced TCP flows, one entry per direction, keyed by the 4-tuple as the packet
/// arrives (layout and states: docs/SPLICE.md). Userspace creates, arms, disarms and deletes
/// entries; `splice_ingress` updates the `seen`, `last_tsval`, counter and time fields, switches
/// an ARMED entry to SPLICE when a packet completes its hand-off, and deletes a flow's two
/// entries when a SYN reuses its 4-tuple. A plain hash map on purpose: an LRU could evict a live
/// flow, whose next packet would then meet a stack without a socket (RST to the client, the
/// server side orphaned).
#[btf_map]
pub(crate) static SPLICE_FLOWS: HashMap<
    SpliceKey,
    SpliceEntry,
    { SPLICE_FLOWS_DEFAULT_ENTRIES as usize },
> = HashMap::new();

/// Per-CPU counters of `splice_ingress`, indexed by `lb_common::SPLICE_STAT_*`.
#[btf_map]
pub(crate) static SPLICE_STATS: PerCpuArray<u64, { SPLICE_STATS_LEN as usize }> =
    PerCpuArray::new();

/// The interfaces `splice_xdp` may redirect translated frames to, keyed by ifindex: those the
/// daemon found able to transmit redirected frames (docs/SPLICE.md, "At XDP"). A frame whose
/// `out_ifindex` is not here passes to the TC program.
#[btf_map]
pub(crate) static SPLICE_XDP_PORTS: DevMapHash<{ SPLICE_XDP_PORTS_ENTRIES as usize }> =
    DevMapHash::new();

/// `splice_xdp`'s buffer for the TCP checksum: one chunk of the segment, per CPU.
#[btf_map]
pub(crate) static SPLICE_XDP_SCRATCH: PerCpuArray<[u32; 128], 1> = PerCpuArray::new();

/// Adds one to the `SPLICE_STATS` slot `index`.
#[inline(always)]
pub(crate) fn stat_inc(index: u32) {
    if let Some(counter) = SPLICE_STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array: it is valid,
        // aligned, and only this CPU's program runs on it (with preemption disabled).
        unsafe { *counter += 1 };
    }
}

/// The operator's deny list: source prefixes of both families in one trie, tagged by family
/// (`lb_common::ShieldAddr`). Written by userspace only (`stickylb deny`); read by `shield`.
#[btf_map]
pub(crate) static SHIELD_DENY: LpmTrie<ShieldAddr, ShieldRule, { SHIELD_DENY_ENTRIES as usize }> =
    LpmTrie::new();

/// The SYN rate limit's buckets: one per source, keyed by its address cut to /32 (IPv4) or /64
/// (IPv6) in the deny list's layout. Written by `shield` only. An LRU: a flood from many
/// sources evicts the buckets of the quietest ones (which start full again) instead of making
/// inserts fail.
#[btf_map]
pub(crate) static SHIELD_SYN: LruHashMap<
    ShieldAddr,
    ShieldSynBucket,
    { SHIELD_SYN_ENTRIES as usize },
> = LruHashMap::new();

/// The SYN rate limit's slots: the sources without a bucket in `SHIELD_SYN`, counted together
/// by a hash of the address (`lb_common::shield_syn_slot`). Written by `shield` only; not
/// pinned.
#[btf_map]
pub(crate) static SHIELD_SYN_SLOTS: Array<ShieldSynBucket, { SHIELD_SYN_SLOTS_LEN as usize }> =
    Array::new();

/// The shield's settings (one entry), written by userspace at start and on a reload.
#[btf_map]
pub(crate) static SHIELD_CONFIG: Array<ShieldConfig, 1> = Array::new();

/// The frontends (network namespace, local port) whose established connections give their SYN
/// back (`shield_refund`). Written by the daemon that loaded the program, at start; not pinned.
#[btf_map]
pub(crate) static SHIELD_FRONTENDS: HashMap<
    ShieldFrontend,
    u32,
    { SHIELD_FRONTENDS_ENTRIES as usize },
> = HashMap::new();

/// The TCP ports whose SYNs the shield rate-limits (the frontends'), host order. Written by
/// the daemon that loaded the program, at start; not pinned.
#[btf_map]
pub(crate) static SHIELD_PORTS: HashMap<u16, u32, { SHIELD_PORTS_ENTRIES as usize }> =
    HashMap::new();

/// Per-CPU counters of `shield` and `shield_refund`, indexed by `lb_common::SHIELD_STAT_*`.
#[btf_map]
pub(crate) static SHIELD_STATS: PerCpuArray<u64, { SHIELD_STATS_LEN as usize }> =
    PerCpuArray::new();

/// Adds one to the `SHIELD_STATS` slot `index`.
#[inline(always)]
pub(crate) fn shield_stat_inc(index: u32) {
    if let Some(counter) = SHIELD_STATS.get_ptr_mut(index) {
        // SAFETY: as in `stat_inc`.
        unsafe { *counter += 1 };
    }
}
