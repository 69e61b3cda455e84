//! IPv4/TCP ingress: look the 4-tuple up in `SPLICE_FLOWS` and observe, complete an armed
//! hand-off, translate, or retire a flow whose 4-tuple a SYN reuses (docs/SPLICE.md, "The
//! program").
//!
//! The parse reads the headers of every packet through a bounds-checked packet pointer (or
//! `bpf_skb_load_bytes` when they are not in the linear part): it runs before any write, and
//! it is most of the cost of a packet that belongs to no flow. Every later read goes through
//! `bpf_skb_load_bytes` into aligned stack structs and every write through
//! `bpf_skb_store_bytes` and the checksum helpers, so there are no packet pointers to
//! revalidate after a write and no offsets the verifier has to bound. The parse, the
//! bookkeeping and the rewrite of a translated packet are generic over the hook ([`Frame`]):
//! the XDP program (`super::xdp`) runs the same ones.

use core::{
    intrinsics::{atomic_xadd, AtomicOrdering},
    ptr,
};

use aya_ebpf::{
    bindings::{BPF_F_INVALIDATE_HASH, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_ktime_get_ns, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use lb_common::{
    SpliceEntry, SpliceKey, SPLICE_F_REDIRECT_PEER, SPLICE_F_SACK, SPLICE_F_TIMESTAMPS,
    SPLICE_SEEN_FIN, SPLICE_SEEN_RST, SPLICE_SEEN_SYN, SPLICE_STATE_ARMED, SPLICE_STATE_OBSERVE,
    SPLICE_STATE_SPLICE, SPLICE_STAT_ARMED_DROPPED, SPLICE_STAT_COMPLETED, SPLICE_STAT_OBSERVED,
    SPLICE_STAT_REDIRECTED, SPLICE_STAT_SACK, SPLICE_STAT_SYN_REUSE,
};

use super::{frame::Frame, options::OptionWalk};
use crate::maps::{stat_inc, SPLICE_FLOWS};

pub(crate) const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IP_OFF: usize = ETH_HLEN;
/// Only IPv4 headers without options are translated: L4 starts here.
pub(crate) const L4_OFF: usize = ETH_HLEN + 20;
pub(crate) const IP_CSUM_OFF: usize = IP_OFF + 10;
const IP_SADDR_OFF: usize = IP_OFF + 12;
const IP_DADDR_OFF: usize = IP_OFF + 16;
const TCP_SEQ_OFF: usize = L4_OFF + 4;
const TCP_ACK_OFF: usize = L4_OFF + 8;
const TCP_WIN_OFF: usize = L4_OFF + 14;
pub(crate) const TCP_CSUM_OFF: usize = L4_OFF + 16;

const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The IPv4 header without options; multi-byte fields in network order.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Ipv4Hdr {
    pub(crate) version_ihl: u8,
    pub(crate) tos: u8,
    pub(crate) tot_len: u16,
    pub(crate) id: u16,
    pub(crate) frag_off: u16,
    pub(crate) ttl: u8,
    pub(crate) protocol: u8,
    pub(crate) check: u16,
    pub(crate) saddr: u32,
    pub(crate) daddr: u32,
}

/// The fixed TCP header; multi-byte fields in network order.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct TcpHdr {
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) seq: u32,
    pub(crate) ack: u32,
    pub(crate) doff: u8,
    pub(crate) flags: u8,
    pub(crate) window: u16,
    pub(crate) check: u16,
    pub(crate) urg: u16,
}

/// Why a packet of a known flow could not be handled (it is dropped).
pub(crate) struct Drop;

impl From<i64> for Drop {
    fn from(_: i64) -> Drop {
        Drop
    }
}

/// An IPv4/TCP packet's headers and its flow map key.
pub(crate) struct Parsed {
    pub(crate) ip: Ipv4Hdr,
    /// IP header length in bytes (options included).
    pub(crate) ihl: usize,
    pub(crate) th: TcpHdr,
    pub(crate) key: SpliceKey,
}

/// The headers of an untagged IPv4/TCP packet that is not a fragment; None for every other
/// packet (it cannot belong to a spliced flow, and passes untouched).
#[inline(always)]
pub(crate) fn parse<F: Frame>(frame: &F) -> Option<Parsed> {
    let proto = frame.head::<u16>(12).ok()?;
    if u16::from_be(proto) != ETH_P_IP {
        return None;
    }
    let ip = frame.head::<Ipv4Hdr>(IP_OFF).ok()?;
    // Fragments never belong to a spliced flow (Linux sets DF and the MSS avoids fragments).
    if ip.protocol != IPPROTO_TCP || u16::from_be(ip.frag_off) & 0x3fff != 0 {
        return None;
    }
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    let th = frame.head::<TcpHdr>(ETH_HLEN + ihl).ok()?;
    let key = SpliceKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: th.sport,
        dport: th.dport,
    };
    Some(Parsed { ip, ihl, th, key })
}

pub(crate) fn try_splice_ingress(ctx: &TcContext) -> Result<i32, Drop> {
    const PASS: Result<i32, Drop> = Ok(TC_ACT_OK);
    let Some(Parsed { ip, ihl, th, key }) = parse(ctx) else {
        return PASS;
    };
    let Some(entry) = SPLICE_FLOWS.get_ptr_mut(key) else {
        return PASS;
    };
    // From here on the packet belongs to a known flow.
    // SAFETY: a successful lookup returns a valid, aligned pointer to the value, which stays
    // valid for this program run (RCU). Other CPUs may write it concurrently: every field is
    // read once and the program's writes are counters, times and bits.
    let state = unsafe { (*entry).state };
    if state == SPLICE_STATE_OBSERVE {
        return observe(ctx, entry, ihl, &th);
    }
    if th.flags & TCP_SYN != 0 {
        // The 4-tuple is being reused by a new connection (a client's SYN, or a server's
        // SYN-ACK to a new connection of ours from a port an old flow used): the old flow ends
        // here, for both directions, so that the handshake's ACK and everything after it reach
        // the stack untranslated. Waiting for the collector would translate them to the old
        // peer (the new connection would be reset).
        retire(entry, &key);
        stat_inc(SPLICE_STAT_SYN_REUSE);
        return PASS;
    }
    if state == SPLICE_STATE_ARMED {
        if !completes_hand_off(entry, &th) {
            // Not the packet that completes the hand-off: an old duplicate, a partial
            // acknowledgement, or a segment that overtook the one that completes it. Its sender
            // sends what matters again; the proxy socket must not see it (its snapshot is
            // taken), and may already be closed.
            stat_inc(SPLICE_STAT_ARMED_DROPPED);
            return Ok(TC_ACT_SHOT);
        }
    } else if state != SPLICE_STATE_SPLICE {
        // CLOSED (or a state this program does not know): never hand it to the stack.
        return Err(Drop);
    }
    if ihl != 20 {
        return Err(Drop);
    }
    translate(ctx, entry, &ip, &th)
}

/// Whether the packet completes an ARMED hand-off: it acknowledges everything the proxy socket
/// sent and does not start beyond its receive stream (see `SPLICE_STATE_ARMED`). If so, the
/// entry is SPLICE from now on, and this packet is the first one translated.
#[inline(always)]
fn completes_hand_off(entry: *mut SpliceEntry, th: &TcpHdr) -> bool {
    // SAFETY: see try_splice_ingress.
    let (armed_seq, armed_ack) = unsafe { ((*entry).armed_seq, (*entry).armed_ack) };
    let (seq, ack) = (u32::from_be(th.seq), u32::from_be(th.ack));
    // seq is armed_seq, or armed_seq - 1 (a keepalive probe); ack is at least armed_ack.
    let completes = th.flags & TCP_ACK != 0
        && armed_seq.wrapping_sub(seq) <= 1
        && ack.wrapping_sub(armed_ack) as i32 >= 0;
    if completes {
        // SAFETY: see try_splice_ingress; a single aligned u32 store.
        unsafe { ptr::write_volatile(&raw mut (*entry).state, SPLICE_STATE_SPLICE) };
        stat_inc(SPLICE_STAT_COMPLETED);
    }
    completes
}

/// OBSERVE passes the packet and records the sender's TSval.
#[inline(always)]
fn observe(ctx: &TcContext, entry: *mut SpliceEntry, ihl: usize, th: &TcpHdr) -> Result<i32, Drop> {
    let l4 = (ETH_HLEN + ihl) as u32;
    let doff = u32::from(th.doff >> 4) * 4;
    if doff < 20 {
        return Err(Drop);
    }
    let walk = OptionWalk::run(ctx, l4 + 20, l4 + doff);
    if walk.ts_off != 0 {
        if let Ok(tsval) = ctx.load::<u32>(walk.ts_off as usize) {
            // SAFETY: see try_splice_ingress.
            unsafe { (*entry).last_tsval = u32::from_be(tsval) };
        }
    }
    touch(entry);
    stat_inc(SPLICE_STAT_OBSERVED);
    Ok(TC_ACT_OK)
}

/// Rewrites a SPLICE flow's packet into the other leg's and redirects it.
#[inline(always)]
fn translate(
    ctx: &TcContext,
    entry: *mut SpliceEntry,
    ip: &Ipv4Hdr,
    th: &TcpHdr,
) -> Result<i32, Drop> {
    // SAFETY: see try_splice_ingress; one copy, so every field below is consistent.
    let e: SpliceEntry = unsafe { ptr::read_volatile(entry) };
    let hdr_end = header_end(th)?;
    account(entry, th, ctx.len().saturating_sub(hdr_end));
    rewrite(ctx, &e, ip, th, hdr_end)?;

    stat_inc(SPLICE_STAT_REDIRECTED);
    let action = if e.flags & SPLICE_F_REDIRECT_PEER != 0 {
        ctx.store(0, &e.new_dmac, 0)?;
        ctx.store(6, &e.new_smac, 0)?;
        // SAFETY: plain helper call.
        unsafe { bpf_redirect_peer(e.out_ifindex, 0) }
    } else {
        // SAFETY: a null params pointer with plen 0 asks the kernel to do the FIB lookup.
        unsafe { bpf_redirect_neigh(e.out_ifindex, ptr::null_mut(), 0, 0) }
    };
    Ok(action as i32)
}

/// Where the TCP header of a packet without IP options ends; its data offset must be valid.
#[inline(always)]
pub(crate) fn header_end(th: &TcpHdr) -> Result<u32, Drop> {
    let doff = u32::from(th.doff >> 4) * 4;
    if doff < 20 {
        return Err(Drop);
    }
    Ok(L4_OFF as u32 + doff)
}

/// The bookkeeping of a translated packet, before its rewrite (so that a FIN or RST is recorded
/// even if the rewrite fails): its `seen` bits, the flow's counters and time. `payload`: the
/// packet's bytes after the TCP header.
#[inline(always)]
pub(crate) fn account(entry: *mut SpliceEntry, th: &TcpHdr, payload: u32) {
    let mut seen = 0;
    if th.flags & TCP_FIN != 0 {
        seen |= SPLICE_SEEN_FIN;
    }
    if th.flags & TCP_RST != 0 {
        seen |= SPLICE_SEEN_RST;
    }
    if seen != 0 {
        set_seen(entry, seen);
    }
    // SAFETY: the counters are naturally aligned u64 fields of the map value. The BPF target has
    // no `AtomicU64::fetch_add`; with its result unused this intrinsic is BPF's atomic add.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &raw mut (*entry).bytes,
            u64::from(payload),
        );
    }
    touch(entry);
}

/// Rewrites the headers of a SPLICE flow's packet (IPv4 without options, TCP header ending at
/// `hdr_end`) into the other leg's, as `e` says: addresses, ports, sequence and
/// acknowledgement numbers, window, timestamps and SACK edges, with the checksum fixes the
/// frame's hook does per field ([`Frame`]). Not the MAC addresses: how the packet leaves is the
/// hook's business.
#[inline(always)]
pub(crate) fn rewrite<F: Frame>(
    frame: &F,
    e: &SpliceEntry,
    ip: &Ipv4Hdr,
    th: &TcpHdr,
    hdr_end: u32,
) -> Result<(), Drop> {
    // Options are read before anything is written.
    let walk = OptionWalk::run(frame, L4_OFF as u32 + 20, hdr_end);

    // L3: addresses, in the IP checksum and the TCP pseudo-header.
    if ip.saddr != e.new_saddr {
        frame.l4_csum_replace(ip.saddr, e.new_saddr, u64::from(BPF_F_PSEUDO_HDR) | 4)?;
        frame.l3_csum_replace(ip.saddr, e.new_saddr, 4)?;
        frame.store(IP_SADDR_OFF, &e.new_saddr, 0)?;
    }
    if ip.daddr != e.new_daddr {
        frame.l4_csum_replace(ip.daddr, e.new_daddr, u64::from(BPF_F_PSEUDO_HDR) | 4)?;
        frame.l3_csum_replace(ip.daddr, e.new_daddr, 4)?;
        frame.store(IP_DADDR_OFF, &e.new_daddr, 0)?;
    }
    // L4: both ports as one 32-bit word (memory order: sport, dport).
    let old_ports = ports_word(th.sport, th.dport);
    let new_ports = ports_word(e.new_sport, e.new_dport);
    if old_ports != new_ports {
        frame.l4_csum_replace(old_ports, new_ports, 4)?;
        frame.store(L4_OFF, &new_ports, u64::from(BPF_F_INVALIDATE_HASH))?;
    }
    add32(frame, TCP_SEQ_OFF as u32, u32::from_be(th.seq), e.seq_delta)?;
    if th.flags & TCP_ACK != 0 {
        add32(frame, TCP_ACK_OFF as u32, u32::from_be(th.ack), e.ack_delta)?;
    }
    rescale_window(frame, u16::from_be(th.window), e.wscale_in, e.wscale_out)?;

    if walk.ts_off != 0 && e.flags & SPLICE_F_TIMESTAMPS != 0 {
        let tsval = u32::from_be(frame.load::<u32>(walk.ts_off as usize)?);
        let tsecr = u32::from_be(frame.load::<u32>(walk.ts_off as usize + 4)?);
        add32(frame, walk.ts_off, tsval, e.tsval_delta)?;
        if tsecr != 0 {
            add32(frame, walk.ts_off + 4, tsecr, e.tsecr_delta)?;
        }
    }
    if walk.sack_off != 0 && e.flags & SPLICE_F_SACK != 0 {
        stat_inc(SPLICE_STAT_SACK);
        // Unrolled: 4 blocks of 2 edges at most.
        for edge in 0..8u32 {
            if edge >= walk.sack_blocks * 2 {
                break;
            }
            let off = walk.sack_off + edge * 4;
            let value = u32::from_be(frame.load::<u32>(off as usize)?);
            add32(frame, off, value, e.ack_delta)?;
        }
    }
    Ok(())
}

/// The two 16-bit network-order ports as the 32-bit word they form in memory.
#[inline(always)]
fn ports_word(sport: u16, dport: u16) -> u32 {
    u32::from(sport) | (u32::from(dport) << 16)
}

/// Adds `delta` to the big-endian 32-bit field at absolute offset `off` whose host-order value
/// is `old`, and fixes the TCP checksum.
#[inline(always)]
fn add32<F: Frame>(frame: &F, off: u32, old: u32, delta: u32) -> Result<(), Drop> {
    if delta == 0 {
        return Ok(());
    }
    let (old_be, new_be) = (old.to_be(), old.wrapping_add(delta).to_be());
    // A field at an odd offset from the start of the TCP header contributes to the one's
    // complement sum with the bytes of each 16-bit lane swapped.
    let (from, to) = if (off - L4_OFF as u32) & 1 != 0 {
        (lane_swap(old_be), lane_swap(new_be))
    } else {
        (old_be, new_be)
    };
    frame.l4_csum_replace(from, to, 4)?;
    frame.store(off as usize, &new_be, 0)
}

#[inline(always)]
fn lane_swap(x: u32) -> u32 {
    ((x & 0x00ff_00ff) << 8) | ((x & 0xff00_ff00) >> 8)
}

/// `window << wscale_in >> wscale_out`, clamped to 16 bits, at least 1 if it was non-zero.
#[inline(always)]
fn rescale_window<F: Frame>(
    frame: &F,
    window: u16,
    wscale_in: u8,
    wscale_out: u8,
) -> Result<(), Drop> {
    if wscale_in == wscale_out {
        return Ok(());
    }
    let real = u64::from(window) << (wscale_in & 15);
    let scaled = (real >> (wscale_out & 15)).min(0xffff);
    let scaled = if scaled == 0 && real != 0 { 1 } else { scaled } as u16;
    let (old_be, new_be) = (window.to_be(), scaled.to_be());
    if old_be != new_be {
        frame.l4_csum_replace(u32::from(old_be), u32::from(new_be), 2)?;
        frame.store(TCP_WIN_OFF, &new_be, 0)?;
    }
    Ok(())
}

/// Deletes a translated flow's entry and its partner (the other direction's, which this one's
/// rewrite names). Either may be gone already (another CPU, the collector): not an error.
#[inline(always)]
fn retire(entry: *mut SpliceEntry, key: &SpliceKey) {
    // SAFETY: see try_splice_ingress; the value stays readable for this run (RCU) even once
    // deleted.
    let partner = SpliceKey::reverse_of(unsafe { &*entry });
    set_seen(entry, SPLICE_SEEN_SYN);
    let _ = SPLICE_FLOWS.remove(partner);
    let _ = SPLICE_FLOWS.remove(key);
}

/// Sets `bits` in the entry's `seen` field. Not atomic (BPF v1 has no atomic OR): bits are only
/// ever set, and two CPUs setting different bits of one direction at the same instant would need
/// a FIN and an RST racing; the next retransmission sets the bit again.
#[inline(always)]
fn set_seen(entry: *mut SpliceEntry, bits: u32) {
    // SAFETY: see try_splice_ingress.
    unsafe {
        let seen = ptr::read_volatile(&raw const (*entry).seen);
        if seen & bits != bits {
            ptr::write_volatile(&raw mut (*entry).seen, seen | bits);
        }
    }
}

#[inline(always)]
pub(crate) fn touch(entry: *mut SpliceEntry) {
    // SAFETY: see try_splice_ingress; bpf_ktime_get_ns has no preconditions.
    unsafe { ptr::write_volatile(&raw mut (*entry).last_seen_ns, bpf_ktime_get_ns()) };
}
