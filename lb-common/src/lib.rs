//! The kernel/user ABI of stickylb: every key and value stored in a pinned BPF map.
//!
//! Pinned maps outlive the daemon, so these layouts are an on-disk format. Changing a size or a
//! field's meaning requires a new [`PIN_VERSION`]; the daemon refuses to adopt a pinned map whose
//! type, key size or value size does not match what it expects. (A pinned stick table of another
//! capacity is migrated at a start, kept as it is by an upgrade: `docs/TABLE.md`.)
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

/// Key of the durable stick table (format and lifecycle: `docs/TABLE.md`).
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

// ---------------------------------------------------------------------------------------------
// The operator's server settings (docs/OPERATIONS.md): admin state and runtime weight of each
// server, kept beside the stick table so that reloads, upgrades, restarts and crashes keep them.
// ---------------------------------------------------------------------------------------------

/// Name of the server settings map in the eBPF object (and the file name it is pinned under).
pub const SERVER_ADMIN_MAP: &str = "SERVER_ADMIN";

/// Capacity of [`SERVER_ADMIN_MAP`]: servers across every backend. A plain hash map: an entry
/// is an operator's decision and must never be evicted.
pub const SERVER_ADMIN_ENTRIES: u32 = 4096;

/// [`ServerAdminEntry::admin`]: serves as usual.
pub const SERVER_ADMIN_READY: u32 = 0;
/// Keeps its sessions, takes no new ones.
pub const SERVER_ADMIN_DRAIN: u32 = 1;
/// Takes no traffic; its sessions are redispatched.
pub const SERVER_ADMIN_MAINT: u32 = 2;

/// Key of [`SERVER_ADMIN_MAP`]: a server by backend and name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServerAdminKey {
    /// As in [`StickKey::backend_id`].
    pub backend_id: u32,
    /// NUL-padded server name.
    pub server: [u8; SERVER_NAME_LEN],
}

/// Value of [`SERVER_ADMIN_MAP`]: what the operator set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerAdminEntry {
    /// `SERVER_ADMIN_READY`, `SERVER_ADMIN_DRAIN` or `SERVER_ADMIN_MAINT`.
    pub admin: u32,
    /// The weight set at run time (0..=256).
    pub weight: u32,
    /// The configuration's weight when `weight` was set: a configuration that changed the
    /// server's weight since wins over the runtime one.
    pub config_weight: u32,
    /// Reserved, zero.
    pub flags: u32,
    /// When the operator last changed it, in milliseconds since the Unix epoch.
    pub changed_ms: u64,
}

const _: () = assert!(size_of::<ServerAdminKey>() == 36);
const _: () = assert!(size_of::<ServerAdminEntry>() == 24);

// ---------------------------------------------------------------------------------------------
// The TCP splice fast path (docs/SPLICE.md). One `SPLICE_FLOWS` entry per direction of an
// observed or spliced connection, keyed by the 4-tuple as the packet arrives on the load
// balancer's interface.
// ---------------------------------------------------------------------------------------------

/// Name of the splice flow map in the eBPF object (and the file name it is pinned under).
pub const SPLICE_FLOWS_MAP: &str = "SPLICE_FLOWS";

/// Name of the fast path's per-CPU counters map (indices `SPLICE_STAT_*`).
pub const SPLICE_STATS_MAP: &str = "SPLICE_STATS";

/// Name of the TC program (and of its pinned TCX link, suffixed with the interface name).
pub const SPLICE_PROGRAM: &str = "splice_ingress";

/// Name of the XDP program that translates SPLICE flows (docs/SPLICE.md, "At XDP"), and of its
/// pinned links, suffixed with the interface name.
pub const SPLICE_XDP_PROGRAM: &str = "splice_xdp";

/// Name of the device map of the interfaces [`SPLICE_XDP_PROGRAM`] may redirect to (keyed by
/// ifindex). Not pinned: each process fills its own object's map.
pub const SPLICE_XDP_PORTS_MAP: &str = "SPLICE_XDP_PORTS";

/// Capacity of [`SPLICE_XDP_PORTS_MAP`]: interfaces.
pub const SPLICE_XDP_PORTS_ENTRIES: u32 = 64;

/// Capacity of [`SPLICE_FLOWS_MAP`] in the eBPF object; two entries per spliced connection.
/// A plain hash map, never LRU: evicting a live flow resets the client and orphans the server.
pub const SPLICE_FLOWS_DEFAULT_ENTRIES: u32 = 65536;

/// The TC program passes packets and records the peer's latest TSval ([`SpliceEntry::last_tsval`]).
pub const SPLICE_STATE_OBSERVE: u32 = 0;
/// Not written any more (an earlier hand-off froze flows in it). The program treats it as a
/// state it does not know (drops the packets, a SYN retires the pair); the collector removes
/// such an entry when no live connection owns it.
pub const SPLICE_STATE_RETIRED_HOLD: u32 = 1;
/// The TC program translates every packet and redirects it to [`SpliceEntry::out_ifindex`]
/// (where [`SPLICE_XDP_PROGRAM`] is attached, it translates them first, see docs/SPLICE.md).
pub const SPLICE_STATE_SPLICE: u32 = 2;
/// The program drops the flow's packets (never hands them to a stack that has no socket for
/// them) until the entry is deleted; the collector removes the pair after 5 s without activity
/// (its RST grace). Nothing in the daemon writes this state: the collector deletes entries
/// instead.
pub const SPLICE_STATE_CLOSED: u32 = 3;
/// The client direction of a hand-off in progress: the translation is written, and the program
/// switches the entry to SPLICE itself on the first packet from the client that acknowledges
/// everything the proxy socket sent ([`SpliceEntry::armed_ack`]) and starts no later than where
/// the proxy socket's receive stream ends ([`SpliceEntry::armed_seq`]): that packet and every
/// later one are translated. The client's other packets are dropped (old duplicates, partial
/// acknowledgements: their sender sends what matters again): from the moment the entry is
/// armed, nothing of the client's reaches the proxy socket, whose state the translation froze
/// and which the proxy may close before the client's next packet.
pub const SPLICE_STATE_ARMED: u32 = 4;

/// [`SpliceEntry::flags`]: both legs negotiated TCP timestamps; translate TSval/TSecr.
pub const SPLICE_F_TIMESTAMPS: u32 = 1 << 0;
/// [`SpliceEntry::flags`]: both legs negotiated SACK; translate SACK block edges.
pub const SPLICE_F_SACK: u32 = 1 << 1;
/// [`SpliceEntry::flags`]: redirect with `bpf_redirect_peer` (veth/netkit only) after writing
/// [`SpliceEntry::new_smac`]/[`SpliceEntry::new_dmac`], instead of `bpf_redirect_neigh`. The
/// program supports it; the daemon does not set it.
pub const SPLICE_F_REDIRECT_PEER: u32 = 1 << 2;

/// [`SpliceEntry::seen`] (written by the program): a FIN went through in this direction.
pub const SPLICE_SEEN_FIN: u32 = 1 << 0;
/// [`SpliceEntry::seen`]: an RST went through in this direction.
pub const SPLICE_SEEN_RST: u32 = 1 << 1;
/// [`SpliceEntry::seen`]: a SYN hit an entry in any state but OBSERVE (the 4-tuple is being
/// reused). The program passed the SYN to the stack untranslated and deleted both entries of
/// the flow; the bit is only seen by a reader that copied the entry in that instant.
pub const SPLICE_SEEN_SYN: u32 = 1 << 2;

/// [`SPLICE_STATS_MAP`] index: packets translated and redirected (of a SPLICE entry, or the
/// packet that completed an ARMED one).
pub const SPLICE_STAT_REDIRECTED: u32 = 0;
/// [`SPLICE_STATS_MAP`] index: packets passed in OBSERVE.
pub const SPLICE_STAT_OBSERVED: u32 = 1;
/// [`SPLICE_STATS_MAP`] index: packets of an ARMED entry that did not complete the hand-off
/// (old duplicates, partial acknowledgements: their senders send what matters again).
pub const SPLICE_STAT_ARMED_DROPPED: u32 = 2;
/// [`SPLICE_STATS_MAP`] index: packets of a known flow dropped because they could not be
/// parsed or rewritten (IP options, a bad data offset, a failed helper), or because the entry
/// was CLOSED or in a state the program does not know.
pub const SPLICE_STAT_DROPPED: u32 = 3;
/// [`SPLICE_STATS_MAP`] index: SYNs (or SYN-ACKs) that hit an entry in any state but OBSERVE:
/// passed to the stack, the flow's two entries deleted.
pub const SPLICE_STAT_SYN_REUSE: u32 = 4;
/// [`SPLICE_STATS_MAP`] index: SACK options translated.
pub const SPLICE_STAT_SACK: u32 = 5;
/// [`SPLICE_STATS_MAP`] index: hand-offs the program completed (ARMED -> SPLICE).
pub const SPLICE_STAT_COMPLETED: u32 = 6;
/// [`SPLICE_STATS_MAP`] index: of the packets in [`SPLICE_STAT_REDIRECTED`], those the XDP
/// program translated (the rest were translated by the TC program).
pub const SPLICE_STAT_XDP_REDIRECTED: u32 = 7;
/// Number of [`SPLICE_STATS_MAP`] slots.
pub const SPLICE_STATS_LEN: u32 = 8;

/// Key of the splice flow map: the IPv4/TCP 4-tuple exactly as the packet arrives on the load
/// balancer's ingress interface. Every field is in network byte order (the bytes as they are in
/// the packet), so the program copies them without swapping. 12 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpliceKey {
    /// IPv4 source address, network order.
    pub saddr: u32,
    /// IPv4 destination address, network order.
    pub daddr: u32,
    /// TCP source port, network order.
    pub sport: u16,
    /// TCP destination port, network order.
    pub dport: u16,
}

/// Value of the splice flow map: how to translate one direction of a spliced connection, and
/// what the program saw of it.
///
/// Written by userspace: `state`, `flags`, `out_ifindex`, the `new_*` fields, the deltas, the
/// window shifts and the `armed_*` fields. Written by the program: `seen`, `last_tsval`,
/// `packets`, `bytes`, `last_seen_ns`, and `state` when it completes an ARMED hand-off; it also
/// deletes both entries of a flow whose 4-tuple a SYN reuses. The XDP program writes the same
/// counters for the packets it translates, and `new_smac`/`new_dmac`. Deltas are in host order and added
/// modulo 2^32 to the host-order value of the field; addresses and ports are in network order.
/// The layout, field by field, is in docs/SPLICE.md.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SpliceEntry {
    /// `SPLICE_STATE_*`.
    pub state: u32,
    /// `SPLICE_F_*`.
    pub flags: u32,
    /// Interface the translated packet is redirected to.
    pub out_ifindex: u32,
    /// New IPv4 source address, network order.
    pub new_saddr: u32,
    /// New IPv4 destination address, network order.
    pub new_daddr: u32,
    /// New TCP source port, network order.
    pub new_sport: u16,
    /// New TCP destination port, network order.
    pub new_dport: u16,
    /// Added to the sequence number.
    pub seq_delta: u32,
    /// Added to the acknowledgement number and to every SACK block edge.
    pub ack_delta: u32,
    /// Added to TSval (maps the sender's clock onto the far proxy socket's clock).
    pub tsval_delta: u32,
    /// Added to a non-zero TSecr (the negation of the other direction's `tsval_delta`).
    pub tsecr_delta: u32,
    /// Window scale of the incoming segment's window field (the sender's `snd_wscale` as the
    /// proxy socket saw it).
    pub wscale_in: u8,
    /// Window scale the receiver of the outgoing segment applies (the far proxy socket's
    /// `rcv_wscale`).
    pub wscale_out: u8,
    /// Zero.
    pub _pad0: [u8; 2],
    /// `SPLICE_SEEN_*`, set by the program.
    pub seen: u32,
    /// Latest TSval the program saw in this direction while OBSERVE, host order (the
    /// translation copies the observed value into the SPLICE and ARMED entries).
    pub last_tsval: u32,
    /// ARMED: the hand-off completes on a packet acknowledging at least this (host order).
    pub armed_ack: u32,
    /// Packets translated in SPLICE state (a GSO/GRO super-packet counts once).
    pub packets: u64,
    /// TCP payload bytes translated in SPLICE state.
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet seen.
    pub last_seen_ns: u64,
    /// Source MAC written with [`SPLICE_F_REDIRECT_PEER`], and by [`SPLICE_XDP_PROGRAM`]. The XDP
    /// program learns it from the other direction's packets (their destination MAC) and writes
    /// it here; zero until then.
    pub new_smac: [u8; 6],
    /// Destination MAC written with [`SPLICE_F_REDIRECT_PEER`], and by [`SPLICE_XDP_PROGRAM`]
    /// (learned from the other direction's packets: their source MAC).
    pub new_dmac: [u8; 6],
    /// ARMED: where the proxy socket's receive stream ends (`rcv_nxt`, host order); the packet
    /// that completes the hand-off starts there (or one before: a keepalive probe).
    pub armed_seq: u32,
}

impl SpliceKey {
    /// The key of the opposite direction's entry, given this direction's translated header
    /// (what `entry` rewrites this key's packets into, seen from the other side).
    pub const fn reverse_of(entry: &SpliceEntry) -> SpliceKey {
        SpliceKey {
            saddr: entry.new_daddr,
            daddr: entry.new_saddr,
            sport: entry.new_dport,
            dport: entry.new_sport,
        }
    }
}

const _: () = assert!(size_of::<SpliceKey>() == 12);
const _: () = assert!(size_of::<SpliceEntry>() == 96);
const _: () = assert!(core::mem::offset_of!(SpliceEntry, wscale_in) == 40);
const _: () = assert!(core::mem::offset_of!(SpliceEntry, seen) == 44);
const _: () = assert!(core::mem::offset_of!(SpliceEntry, packets) == 56);
const _: () = assert!(core::mem::offset_of!(SpliceEntry, new_smac) == 80);
const _: () = assert!(core::mem::offset_of!(SpliceEntry, armed_ack) == 52);
const _: () = assert!(core::mem::offset_of!(SpliceEntry, armed_seq) == 92);

// ---------------------------------------------------------------------------------------------
// The shield (docs/SHIELD.md): an XDP program on the frontend interfaces that drops packets from
// sources on the operator's deny list, and TCP SYNs beyond a per-source rate, before the stack
// sees them.
// ---------------------------------------------------------------------------------------------

/// Name of the deny list map in the eBPF object (and the file name it is pinned under).
pub const SHIELD_DENY_MAP: &str = "SHIELD_DENY";

/// Name of the shield's counters map (per CPU, indexed by `SHIELD_STAT_*`).
pub const SHIELD_STATS_MAP: &str = "SHIELD_STATS";

/// Name of the shield's XDP program.
pub const SHIELD_PROGRAM: &str = "shield";

/// Name of the shield's XDP program that also translates spliced flows (the shield's verdict,
/// then [`SPLICE_XDP_PROGRAM`]'s translation): the one XDP program of an interface the shield
/// holds while the fast path translates at XDP.
pub const SHIELD_SPLICE_PROGRAM: &str = "shield_splice";

/// Name of the shield's TC program: the same verdict at TC ingress, for interfaces whose frames
/// are socket buffers before XDP sees them (veth, drivers without native XDP).
pub const SHIELD_TC_PROGRAM: &str = "shield_tc";

/// Capacity of the deny list.
pub const SHIELD_DENY_ENTRIES: u32 = 65536;

/// [`ShieldAddr::family`] of an IPv4 prefix.
pub const SHIELD_FAMILY_V4: u8 = 4;
/// [`ShieldAddr::family`] of an IPv6 prefix.
pub const SHIELD_FAMILY_V6: u8 = 6;

/// Bits of the family tag that precede the address in a deny list key: an LPM key's prefix
/// length is this plus the CIDR's prefix length.
pub const SHIELD_FAMILY_BITS: u32 = 8;

/// [`SHIELD_STATS_MAP`] slot: packets dropped because their source is on the deny list.
pub const SHIELD_STAT_DROPPED_DENY: u32 = 0;
/// [`SHIELD_STATS_MAP`] slot: packets passed to the stack.
pub const SHIELD_STAT_PASSED: u32 = 1;
/// [`SHIELD_STATS_MAP`] slot: TCP SYNs (without ACK) dropped because their source sent more
/// than its rate allows ([`ShieldConfig`]).
pub const SHIELD_STAT_DROPPED_RATE: u32 = 2;
/// [`SHIELD_STATS_MAP`] slot: SYNs given back to their source's bucket because the connection
/// they opened was established (the `sock_ops` program [`SHIELD_REFUND_PROGRAM`]).
pub const SHIELD_STAT_REFUNDED: u32 = 3;
/// Number of [`SHIELD_STATS_MAP`] slots.
pub const SHIELD_STATS_LEN: u32 = 4;

/// Name of the shield's `sock_ops` program, which gives a SYN back to its source's bucket when
/// the kernel establishes the connection it opened on one of the daemon's frontends: only SYNs
/// that never become connections are rate-limited (docs/SHIELD.md, "The refund").
pub const SHIELD_REFUND_PROGRAM: &str = "shield_refund";

/// Name of the map of the frontends whose established connections refund their SYN: one
/// [`ShieldFrontend`] per listening port of the daemon that loaded the program. Not pinned:
/// each process fills its own, and its program holds it while attached.
pub const SHIELD_FRONTENDS_MAP: &str = "SHIELD_FRONTENDS";

/// Capacity of [`SHIELD_FRONTENDS_MAP`].
pub const SHIELD_FRONTENDS_ENTRIES: u32 = 256;

/// Key of [`SHIELD_FRONTENDS_MAP`]: a network namespace and a local TCP port. A `sock_ops`
/// program attached to a cgroup sees the connections of every namespace and process under it;
/// this is how one daemon's program refunds only for its own frontends.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ShieldFrontend {
    /// The namespace's cookie (`SO_NETNS_COOKIE`, `bpf_get_netns_cookie`), host order.
    pub netns_cookie: u64,
    /// The frontend's port, host order (as `bpf_sock_ops.local_port` has it).
    pub port: u16,
    /// Zero.
    pub _pad: [u8; 6],
}

const _: () = assert!(size_of::<ShieldFrontend>() == 16);

/// Name of the map of the TCP ports whose SYNs the shield rate-limits: the frontends' ports
/// (host order, value 1). A SYN to any other port (the monitor, the peers, another service on
/// the host) is judged by the deny list alone. Not pinned, like [`SHIELD_FRONTENDS_MAP`]: each
/// process fills its own, and the programs it attaches hold it.
pub const SHIELD_PORTS_MAP: &str = "SHIELD_PORTS";

/// Capacity of [`SHIELD_PORTS_MAP`].
pub const SHIELD_PORTS_ENTRIES: u32 = 256;

/// Name of the SYN rate limit's buckets map: one entry per source (/32 for IPv4, /64 for
/// IPv6), an LRU hash so that a flood of new sources evicts the oldest instead of failing.
pub const SHIELD_SYN_MAP: &str = "SHIELD_SYN";

/// Capacity of [`SHIELD_SYN_MAP`]: sources tracked at once.
pub const SHIELD_SYN_ENTRIES: u32 = 65536;

/// Name of the SYN rate limit's slots: an array of [`ShieldSynBucket`] indexed by a hash of the
/// source, which counts the SYNs of the sources not tracked in [`SHIELD_SYN_MAP`] together. A
/// source gets a bucket of its own only once its slot has gone over the per-source limit: a
/// flood from many (spoofed) sources, each sending a few SYNs, then costs one array update per
/// SYN instead of an LRU insert and eviction each. Not pinned: the shield's program holds it,
/// and a new one starts cold (the sources already tracked keep their buckets).
pub const SHIELD_SYN_SLOTS_MAP: &str = "SHIELD_SYN_SLOTS";

/// `log2` of the number of [`SHIELD_SYN_SLOTS_MAP`] slots. 65536 slots of 8 bytes: a spoofed
/// flood spread over them stays below a 200/s limit in every slot up to about 13 million SYNs
/// per second.
pub const SHIELD_SYN_SLOT_BITS: u32 = 16;

/// Number of [`SHIELD_SYN_SLOTS_MAP`] slots.
pub const SHIELD_SYN_SLOTS_LEN: u32 = 1 << SHIELD_SYN_SLOT_BITS;

/// The slot of a source's bucket key (the address cut to /32 or /64) in
/// [`SHIELD_SYN_SLOTS_MAP`]: Fibonacci hashing of its bytes folded to 64 bits. Unseeded on
/// purpose: sources chosen to share a slot only make that slot go over sooner, which gives
/// each of them an exact bucket (what every source had before the slots), never a drop that
/// its own rate does not call for.
#[inline(always)]
pub fn shield_syn_slot(key: &ShieldAddr) -> u32 {
    let mut low = [0u8; 8];
    let mut high = [0u8; 8];
    low.copy_from_slice(&key.addr[..8]);
    high.copy_from_slice(&key.addr[8..]);
    let folded =
        u64::from_le_bytes(low) ^ u64::from_le_bytes(high).rotate_left(29) ^ u64::from(key.family);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHIELD_SYN_SLOT_BITS)) as u32
}

/// Name of the shield's settings map: an array of one [`ShieldConfig`], written by the daemon
/// at start and on a reload.
pub const SHIELD_CONFIG_MAP: &str = "SHIELD_CONFIG";

/// The shield's settings, read by the program for every SYN. The SYN rate limit is a GCRA
/// (a token bucket kept as one timestamp per source): a source may send a SYN when its
/// theoretical arrival time plus `syn_interval_ns` lies at most `syn_window_ns` ahead of now.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ShieldConfig {
    /// Nanoseconds between two SYNs at the sustained rate (`1e9 / syn_rate`); 0: no limit
    /// (a map nobody wrote yet).
    pub syn_interval_ns: u64,
    /// `syn_interval_ns * syn_burst`: how far ahead of now a source's arrival time may run,
    /// so that `syn_burst` SYNs pass back to back.
    pub syn_window_ns: u64,
}

/// Value of [`SHIELD_SYN_MAP`]: one source's bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ShieldSynBucket {
    /// The source's theoretical arrival time (`bpf_ktime_get_ns`, CLOCK_MONOTONIC): when its
    /// bucket is full again is this minus the window.
    pub tat_ns: u64,
}

const _: () = assert!(size_of::<ShieldConfig>() == 16);
const _: () = assert!(size_of::<ShieldSynBucket>() == 8);

/// The data part of a deny list key (an LPM trie key is a `u32` prefix length, in bits, followed
/// by this). One trie holds both families: the family byte comes first, so a prefix always
/// covers it (prefix length = [`SHIELD_FAMILY_BITS`] + the CIDR's bits) and an IPv4 prefix can
/// never match an IPv6 source or the other way round. One map means one lookup per packet, one
/// pinned file and one `bpftool map dump` for the operator.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ShieldAddr {
    /// [`SHIELD_FAMILY_V4`] or [`SHIELD_FAMILY_V6`].
    pub family: u8,
    /// The address in network order; an IPv4 address fills the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
    /// Zero. Never covered by a prefix (at most 8 + 128 bits).
    pub _pad: [u8; 3],
}

/// Value of the deny list: reserved (zero today); kept a `u32` so that a later reason or
/// counter does not change the map's value size.
pub type ShieldRule = u32;

const _: () = assert!(size_of::<ShieldAddr>() == 20);

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    fn v4(a: [u8; 4]) -> ShieldAddr {
        let mut key = ShieldAddr {
            family: SHIELD_FAMILY_V4,
            ..ShieldAddr::default()
        };
        key.addr[..4].copy_from_slice(&a);
        key
    }

    #[test]
    fn syn_slots_spread_neighbouring_sources_and_tell_the_families_apart() {
        // A /24 of clients, and the first 4096 of a /16: few share a slot.
        for (count, most_shared) in [(256u32, 1), (4096, 3)] {
            let mut hits = std::collections::HashMap::<u32, u32>::new();
            for i in 0..count {
                let [_, _, c, d] = i.to_be_bytes();
                let slot = shield_syn_slot(&v4([198, 51, c, d]));
                assert!(slot < SHIELD_SYN_SLOTS_LEN);
                *hits.entry(slot).or_default() += 1;
            }
            let max = hits.values().copied().max().unwrap_or(0);
            assert!(max <= most_shared, "{count} sources: {max} in one slot");
        }
        // The same bytes as an IPv6 /64 are another source.
        let mut six = v4([198, 51, 100, 7]);
        six.family = SHIELD_FAMILY_V6;
        assert_ne!(
            shield_syn_slot(&six),
            shield_syn_slot(&v4([198, 51, 100, 7]))
        );
    }

    #[test]
    fn reverse_key_is_the_other_directions_arrival_tuple() {
        // client 10.0.0.2:40000 -> lb 10.0.0.1:8080 becomes lb 10.0.1.1:50000 -> server 10.0.1.2:80;
        // the server's answers arrive as 10.0.1.2:80 -> 10.0.1.1:50000.
        let entry = SpliceEntry {
            new_saddr: u32::from_ne_bytes([10, 0, 1, 1]),
            new_daddr: u32::from_ne_bytes([10, 0, 1, 2]),
            new_sport: 50000u16.to_be(),
            new_dport: 80u16.to_be(),
            ..SpliceEntry::default()
        };
        let reverse = SpliceKey::reverse_of(&entry);
        assert_eq!(reverse.saddr.to_ne_bytes(), [10, 0, 1, 2]);
        assert_eq!(reverse.daddr.to_ne_bytes(), [10, 0, 1, 1]);
        assert_eq!(u16::from_be(reverse.sport), 80);
        assert_eq!(u16::from_be(reverse.dport), 50000);
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is repr(C), contains only integers and byte arrays, and has no implicit
    // padding (its padding is explicit `_pad` fields; checked by the size assertions above).
    unsafe impl aya::Pod for super::StickKey {}
    unsafe impl aya::Pod for super::StickEntry {}
    unsafe impl aya::Pod for super::SpliceKey {}
    unsafe impl aya::Pod for super::SpliceEntry {}
    unsafe impl aya::Pod for super::ServerAdminKey {}
    unsafe impl aya::Pod for super::ServerAdminEntry {}
    unsafe impl aya::Pod for super::ShieldAddr {}
    unsafe impl aya::Pod for super::ShieldConfig {}
    unsafe impl aya::Pod for super::ShieldSynBucket {}
    unsafe impl aya::Pod for super::ShieldFrontend {}
}
