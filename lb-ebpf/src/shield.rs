//! The shield's verdict (docs/SHIELD.md): drop packets whose source is on the deny list, and
//! TCP SYNs (without ACK) beyond their source's rate. Two hooks run it:
//!
//! - XDP, on a driver that runs XDP on its own receive buffers: the packet is judged before the
//!   kernel allocates a socket buffer, so a dropped packet costs a header parse, one trie
//!   lookup and, for a SYN, one hash lookup. Reads go through bounds-checked packet pointers.
//! - TC ingress (TCX), where the frames are socket buffers already (a veth gets them from its
//!   peer's stack; generic XDP runs after the buffer exists): the same verdict without the copy
//!   that XDP on such an interface makes of every cloned or paged buffer (every TCP segment).
//!   Reads go through bounds-checked packet pointers in the linear part, and through
//!   `bpf_skb_load_bytes` for headers outside it.
//!
//! Nothing is written to the packet. Only a SYN without ACK to a frontend's port is ever
//! rate-limited: every packet of an established connection (the splice fast path's flows
//! included), and every packet to another port, is judged by the deny list alone.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use lb_common::{
    shield_syn_slot, ShieldAddr, ShieldSynBucket, SHIELD_FAMILY_BITS, SHIELD_FAMILY_V4,
    SHIELD_FAMILY_V6, SHIELD_STAT_DROPPED_DENY, SHIELD_STAT_DROPPED_RATE, SHIELD_STAT_PASSED,
};

use crate::{
    maps::{
        shield_stat_inc, SHIELD_CONFIG, SHIELD_DENY, SHIELD_PORTS, SHIELD_SYN, SHIELD_SYN_SLOTS,
    },
    packet::read_linear,
};

const ETH_HLEN: usize = 14;
const ETH_TYPE_OFF: usize = 12;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
/// The IPv4 header without options, read at once (one helper call at TC instead of one per
/// field); the offsets below are within it.
const IPV4_HLEN: usize = 20;
const IPV4_FRAG_OFF: usize = 6;
const IPV4_PROTO_OFF: usize = 9;
const IPV4_SADDR_OFF: usize = 12;
/// Fragment offset bits of the IPv4 flags/fragment field: non-zero for every fragment but
/// the first, which alone carries the TCP header.
const IPV4_FRAG_MASK: u16 = 0x1fff;
/// The IPv6 header up to the end of the source address, read at once; offsets within it.
const IPV6_HEAD_LEN: usize = 24;
const IPV6_NEXT_OFF: usize = 6;
const IPV6_SADDR_OFF: usize = 8;
const IPV6_HLEN: usize = 40;
/// Offset of the destination port in the TCP header.
const TCP_DPORT_OFF: usize = 2;
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFF: usize = 13;
/// The TCP header bytes the shield reads: up to and including the flags.
const TCP_HEAD_LEN: usize = TCP_FLAGS_OFF + 1;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// A SYN's bucket is per /64 for IPv6: one host commonly owns a whole /64.
const IPV6_BUCKET_BYTES: usize = 8;

/// What the program needs of a packet.
struct Packet {
    source: ShieldAddr,
    /// For a TCP SYN without ACK (a connection attempt) whose header the program could read:
    /// its destination port, host order.
    syn_to: Option<u16>,
}

/// What the shield does with a packet; each hook says it in its own return codes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Drop,
}

/// The packet bytes the shield reads, at offsets from the start of the Ethernet header.
pub(crate) trait Headers {
    /// `N` bytes at `offset`, or `None` when the packet is shorter.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Headers for XdpContext {
    /// From the first buffer of a multi-buffer frame, which holds the headers.
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        read_linear(self.data(), self.data_end(), offset)
    }
}

impl Headers for TcContext {
    /// Through a bounds-checked pointer when the bytes lie in the linear part of the socket
    /// buffer, as the headers of nearly every packet do (a helper call costs more than the
    /// verdict); `bpf_skb_load_bytes` past it.
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        read_linear(self.data(), self.data_end(), offset)
            .or_else(|| self.load::<[u8; N]>(offset).ok())
    }
}

/// Drop for a source on the deny list and for a SYN beyond its source's rate, pass for
/// everything else (other ethertypes, VLAN-tagged frames and frames too short to hold the
/// header included: the stack judges those as it would without the shield).
#[inline(always)]
pub(crate) fn shield_verdict<H: Headers>(ctx: &H) -> Verdict {
    let Some(packet) = parse(ctx) else {
        return pass();
    };
    if is_denied(&packet.source) {
        shield_stat_inc(SHIELD_STAT_DROPPED_DENY);
        return Verdict::Drop;
    }
    let limited = packet.syn_to.is_some_and(is_frontend_port);
    if limited && !syn_allowed(&packet.source) {
        shield_stat_inc(SHIELD_STAT_DROPPED_RATE);
        return Verdict::Drop;
    }
    pass()
}

#[inline(always)]
fn pass() -> Verdict {
    shield_stat_inc(SHIELD_STAT_PASSED);
    Verdict::Pass
}

/// Whether `port` is one of the daemon's frontends' (the SYN limit's scope).
#[inline(always)]
fn is_frontend_port(port: u16) -> bool {
    // SAFETY: the value is only tested for presence, never read: a concurrent update or
    // delete cannot make this read memory it should not.
    unsafe { SHIELD_PORTS.get(port) }.is_some()
}

fn is_denied(source: &ShieldAddr) -> bool {
    let bits = match source.family {
        SHIELD_FAMILY_V4 => 32,
        _ => 128,
    };
    let key = Key::new(SHIELD_FAMILY_BITS + bits, *source);
    SHIELD_DENY.get(&key).is_some()
}

/// Whether the source of a SYN may send it now (GCRA, see `lb_common::ShieldConfig`); takes
/// the SYN from its bucket when it may. Without settings (no daemon wrote them yet) every SYN
/// may.
///
/// A source with a bucket of its own in `SHIELD_SYN` is judged by it. One without shares the
/// bucket of its slot in `SHIELD_SYN_SLOTS` with the other untracked sources that hash there,
/// under the same limit (and the same refunds): while the slot is within it, so is each of
/// them, and the SYN passes without an LRU insert, which with the eviction it brings once the
/// map is full costs several times the rest of the program, on every SYN of a flood from
/// spoofed sources. The first SYN that finds its slot over gives its source a bucket of its
/// own, starting where the slot is: the source is charged for every SYN its slot passed, so
/// it never gets more than its limit. A source that shares its slot with a flood is charged
/// for the flood's SYNs until then: its first SYN may be dropped (its client retransmits), and
/// its burst starts used up.
///
/// Two CPUs updating one bucket at once can both pass a SYN the bucket had room for once:
/// the read and the write are not one atomic step. The limit is then exceeded by at most one
/// SYN per CPU per race, which is not worth a lock on the path every SYN takes.
#[inline(always)]
fn syn_allowed(source: &ShieldAddr) -> bool {
    let Some(config) = SHIELD_CONFIG.get(0) else {
        return true;
    };
    let (interval, window) = (config.syn_interval_ns, config.syn_window_ns);
    if interval == 0 {
        return true;
    }
    let key = bucket_key(source);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(bucket) = SHIELD_SYN.get_ptr_mut(key) {
        // SAFETY: the pointer comes from a successful lookup.
        return unsafe { take(bucket, now, interval, window) };
    }
    let mut own = ShieldSynBucket { tat_ns: now };
    if let Some(slot) = SHIELD_SYN_SLOTS.get_ptr_mut(shield_syn_slot(&key)) {
        // SAFETY: as above.
        if unsafe { take(slot, now, interval, window) } {
            return true;
        }
        // SAFETY: as above.
        own.tat_ns = unsafe { (*slot).tat_ns };
    }
    // SAFETY: a pointer to a local.
    let allowed = unsafe { take(&mut own, now, interval, window) };
    // A failed insert (the map is full of buckets being written) leaves the source to its
    // slot, whose verdict this is.
    let _ = SHIELD_SYN.insert(key, own, 0);
    allowed
}

/// One GCRA step on `bucket`: whether a SYN may pass at `now`, and if so the bucket takes it.
///
/// # Safety
/// `bucket` points into a map's value, from a successful lookup in this run of the program.
#[inline(always)]
unsafe fn take(bucket: *mut ShieldSynBucket, now: u64, interval: u64, window: u64) -> bool {
    // SAFETY: the value is plain data, and a concurrent writer on another CPU can only make
    // it stale (see `syn_allowed`).
    let tat = unsafe { (*bucket).tat_ns };
    let next = if tat > now { tat } else { now }.wrapping_add(interval);
    if next.wrapping_sub(now) > window {
        return false;
    }
    // SAFETY: as above.
    unsafe { (*bucket).tat_ns = next };
    true
}

/// The bucket of `source`: the address cut to /32 (IPv4) or /64 (IPv6).
#[inline(always)]
pub(crate) fn bucket_key(source: &ShieldAddr) -> ShieldAddr {
    let mut key = *source;
    if key.family == SHIELD_FAMILY_V6 {
        key.addr[IPV6_BUCKET_BYTES..].fill(0);
    }
    key
}

/// The source address of an IPv4 or IPv6 packet in an untagged Ethernet frame, and for a TCP
/// SYN without ACK its destination port.
#[inline(always)]
fn parse<H: Headers>(ctx: &H) -> Option<Packet> {
    let ethertype = u16::from_be_bytes(ctx.read::<2>(ETH_TYPE_OFF)?);
    let mut source = ShieldAddr::default();
    let syn_to = match ethertype {
        ETH_P_IP => {
            let ip = ctx.read::<IPV4_HLEN>(ETH_HLEN)?;
            source.family = SHIELD_FAMILY_V4;
            source.addr[..4].copy_from_slice(&ip[IPV4_SADDR_OFF..IPV4_SADDR_OFF + 4]);
            ipv4_syn(ctx, &ip)
        }
        ETH_P_IPV6 => {
            let ip = ctx.read::<IPV6_HEAD_LEN>(ETH_HLEN)?;
            source.family = SHIELD_FAMILY_V6;
            source
                .addr
                .copy_from_slice(&ip[IPV6_SADDR_OFF..IPV6_SADDR_OFF + 16]);
            ipv6_syn(ctx, &ip)
        }
        _ => return None,
    };
    Some(Packet { source, syn_to })
}

/// For an IPv4 TCP SYN without ACK, its destination port: a first (or only) fragment, its
/// header length taken from IHL (options included). `ip`: the header's first 20 bytes.
#[inline(always)]
fn ipv4_syn<H: Headers>(ctx: &H, ip: &[u8; IPV4_HLEN]) -> Option<u16> {
    let frag = u16::from_be_bytes([ip[IPV4_FRAG_OFF], ip[IPV4_FRAG_OFF + 1]]);
    if ip[IPV4_PROTO_OFF] != IPPROTO_TCP || frag & IPV4_FRAG_MASK != 0 {
        return None;
    }
    // IHL counts 32-bit words; masked to 4 bits, so the offset stays bounded for the verifier.
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < IPV4_HLEN {
        return None;
    }
    tcp_syn(ctx, ETH_HLEN + ihl)
}

/// For an IPv6 TCP SYN without ACK, its destination port. A packet with extension headers
/// (TCP not the first next header) is not looked into: it passes as if it were no SYN.
#[inline(always)]
fn ipv6_syn<H: Headers>(ctx: &H, ip: &[u8; IPV6_HEAD_LEN]) -> Option<u16> {
    match ip[IPV6_NEXT_OFF] {
        IPPROTO_TCP => tcp_syn(ctx, ETH_HLEN + IPV6_HLEN),
        _ => None,
    }
}

/// The destination port of the TCP header at `tcp_offset` when it is a SYN without ACK.
/// One read from the port to the flags: the verifier checks a packet read against the bounds
/// check made for that same pointer, and two reads let the compiler drop the second check.
#[inline(always)]
fn tcp_syn<H: Headers>(ctx: &H, tcp_offset: usize) -> Option<u16> {
    let head = ctx.read::<TCP_HEAD_LEN>(tcp_offset)?;
    if head[TCP_FLAGS_OFF] & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return None;
    }
    Some(u16::from_be_bytes([
        head[TCP_DPORT_OFF],
        head[TCP_DPORT_OFF + 1],
    ]))
}
