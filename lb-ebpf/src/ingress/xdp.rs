//! The splice translation at XDP (docs/SPLICE.md, "At XDP"): the packets of SPLICE entries,
//! translated before the kernel builds a socket buffer for them, and redirected to the other
//! leg's interface through `SPLICE_XDP_PORTS`.
//!
//! Only the steady state runs here. Every packet this program does not translate passes
//! untouched to the TC program, which runs the whole state machine as before: no entry,
//! OBSERVE, ARMED, CLOSED, a SYN on any entry, IP options, a flow whose next hop's MAC address
//! is not known yet, a frame too large for its out interface, or an out interface that cannot
//! take redirected frames.
//! Every such decision is made before the first write, so a passed packet is the packet that
//! arrived; from the first write on, an error drops the packet as TC does (the peer
//! retransmits).
//!
//! MAC addresses: `bpf_fib_lookup` refuses to work on an interface without IP forwarding, and a
//! load balancer that terminates TCP does not forward. So the program learns them from the
//! flow itself: a packet of one direction arrives on the interface the other direction leaves
//! by, from the host the other direction goes to; its source MAC address is the other
//! direction's destination, its destination MAC address the other direction's source. Every
//! packet of an ARMED or SPLICE entry writes them into its partner entry (`new_dmac`,
//! `new_smac`) when they differ and the partner leaves by the interface the packet came in on;
//! until the partner's first packet, a direction's packets go through TC
//! (`bpf_redirect_neigh`).
//!
//! Checksums: XDP has no incremental checksum helpers, and cannot tell whether the TCP
//! checksum field holds a full checksum (a packet from the wire) or the pseudo-header seed of
//! a checksum the sender left to the hardware (a packet from a veth peer in the same host).
//! A redirected frame reaches the next stack with no checksum state at all, so this program
//! computes both checksums afresh after the rewrite: right in both cases.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_check_mtu, bpf_csum_diff, bpf_loop, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use lb_common::{
    SpliceEntry, SpliceKey, SPLICE_STATE_ARMED, SPLICE_STATE_SPLICE, SPLICE_STAT_REDIRECTED,
    SPLICE_STAT_XDP_REDIRECTED,
};

use super::{
    frame::Frame,
    tcp::{
        account, header_end, parse, rewrite, Drop, Ipv4Hdr, Parsed, TcpHdr, ETH_HLEN, IPPROTO_TCP,
        IP_CSUM_OFF, IP_OFF, L4_OFF, TCP_CSUM_OFF, TCP_SYN,
    },
};
use crate::maps::{stat_inc, SPLICE_FLOWS, SPLICE_XDP_PORTS, SPLICE_XDP_SCRATCH};

/// Bytes summed per `bpf_loop` step: `bpf_csum_diff`'s largest buffer, the scratch buffer's size.
const CHUNK: u32 = 512;
/// Steps of the TCP checksum: segments up to 9 KiB (jumbo frames); a larger one passes to TC.
const MAX_CHUNKS: u32 = 18;

#[inline(always)]
pub(crate) fn try_splice_xdp(ctx: &XdpContext) -> Result<u32, Drop> {
    const PASS: Result<u32, Drop> = Ok(xdp_action::XDP_PASS);
    let Some(Parsed { ip, ihl, th, key }) = parse(ctx) else {
        return PASS;
    };
    // A SYN retires its flow, in TC; IP options are TC's to drop. Neither needs a lookup here.
    if th.flags & TCP_SYN != 0 || ihl != 20 {
        return PASS;
    }
    let Some(entry) = SPLICE_FLOWS.get_ptr_mut(key) else {
        return PASS;
    };
    // SAFETY: a successful lookup returns a valid, aligned pointer to the value, which stays
    // valid for this program run (RCU); one copy, so every field below is consistent (as in
    // the TC program).
    let e: SpliceEntry = unsafe { ptr::read_volatile(entry) };
    if e.state == SPLICE_STATE_ARMED || e.state == SPLICE_STATE_SPLICE {
        learn_macs(ctx, &e);
    }
    // ARMED entries complete their hand-off in TC.
    if e.state != SPLICE_STATE_SPLICE || e.new_dmac == [0; 6] {
        return PASS;
    }
    let Ok(hdr_end) = header_end(&th) else {
        return PASS;
    };
    let frame_len = ctx.len();
    let tot_len = u32::from(u16::from_be(ip.tot_len));
    let l4_len = tot_len.saturating_sub(20);
    if ETH_HLEN as u32 + tot_len > frame_len
        || L4_OFF as u32 + l4_len < hdr_end
        || l4_len > CHUNK * MAX_CHUNKS
    {
        return PASS;
    }
    if !fits(ctx, e.out_ifindex) || SPLICE_XDP_PORTS.get_ifindex(e.out_ifindex).is_none() {
        return PASS;
    }

    // The packet is this program's from here on.
    account(entry, &th, frame_len.saturating_sub(hdr_end));
    rewrite_frame(ctx, &e, &ip, &th, hdr_end)?;
    checksums(ctx, &e, l4_len)?;
    ctx.store(0, &e.new_dmac, 0)?;
    ctx.store(6, &e.new_smac, 0)?;
    stat_inc(SPLICE_STAT_REDIRECTED);
    stat_inc(SPLICE_STAT_XDP_REDIRECTED);
    // With flags 0 a missing entry (removed since the lookup above) aborts: the packet is
    // rewritten and cannot go back to the stack.
    Ok(match SPLICE_XDP_PORTS.redirect(e.out_ifindex, 0) {
        Ok(action) | Err(action) => action,
    })
}

/// The shared rewrite, in a subprogram of its own: the verifier's 512-byte limit is on the
/// stacks of a call chain together, and the rewrite's temporaries, the entry and headers of the
/// caller and the option walk's callback do not fit in one frame.
#[inline(never)]
fn rewrite_frame(
    ctx: &XdpContext,
    e: &SpliceEntry,
    ip: &Ipv4Hdr,
    th: &TcpHdr,
    hdr_end: u32,
) -> Result<(), Drop> {
    rewrite(ctx, e, ip, th, hdr_end)
}

/// Writes the MAC addresses the packet came with into its partner entry, as the partner's
/// destination and source (see the module's documentation), if the partner leaves by the
/// interface the packet came in on and they changed.
#[inline(never)]
fn learn_macs(ctx: &XdpContext, e: &SpliceEntry) {
    let Some(partner) = SPLICE_FLOWS.get_ptr_mut(SpliceKey::reverse_of(e)) else {
        return;
    };
    let Ok(macs) = ctx.load::<[[u8; 6]; 2]>(0) else {
        return;
    };
    let [dst, src] = macs;
    // SAFETY: a successful lookup's value stays valid for this run (RCU). Other CPUs may write
    // it: a reader on another CPU can see a half-written address only while the addresses
    // change (a new next hop), and the packet it sends then is one a stale neighbour entry
    // would have sent too.
    unsafe {
        if (*partner).out_ifindex != ctx.ingress_ifindex() as u32 {
            return;
        }
        if ptr::read_volatile(&raw const (*partner).new_dmac) != src {
            ptr::write_volatile(&raw mut (*partner).new_dmac, src);
        }
        if ptr::read_volatile(&raw const (*partner).new_smac) != dst {
            ptr::write_volatile(&raw mut (*partner).new_smac, dst);
        }
    }
}

/// Whether the frame fits the MTU of interface `ifindex` (a redirect of a larger one fails,
/// and the frame would be lost; TC's redirect handles it as the stack would).
#[inline(always)]
fn fits(ctx: &XdpContext, ifindex: u32) -> bool {
    let mut mtu = 0u32;
    // SAFETY: the context is this program's; `mtu` is a writable u32.
    let rc = unsafe { bpf_check_mtu(ctx.ctx.cast(), ifindex, &raw mut mtu, 0, 0) };
    rc == 0
}

/// Writes both checksums of the rewritten packet. A subprogram of its own (as is
/// [`learn_macs`]): its stack does not add to the caller's, which holds the entry and headers.
#[inline(never)]
fn checksums(ctx: &XdpContext, e: &SpliceEntry, l4_len: u32) -> Result<(), Drop> {
    ip_checksum(ctx)?;
    tcp_checksum(ctx, e, l4_len)
}

/// Writes the IP header checksum of the rewritten header.
#[inline(always)]
fn ip_checksum(ctx: &XdpContext) -> Result<(), Drop> {
    let mut header = ctx.load::<Ipv4Hdr>(IP_OFF)?;
    header.check = 0;
    let sum = csum_diff((&raw mut header).cast(), size_of::<Ipv4Hdr>() as u32, 0)?;
    ctx.store(IP_CSUM_OFF, &fold(sum), 0)
}

/// The TCP pseudo-header (RFC 793), as it lies in memory.
#[repr(C)]
struct PseudoHeader {
    saddr: u32,
    daddr: u32,
    zero: u8,
    protocol: u8,
    /// Network order.
    length: u16,
}

/// Writes the TCP checksum of the rewritten segment (`l4_len` bytes: header and payload).
#[inline(always)]
fn tcp_checksum(ctx: &XdpContext, e: &SpliceEntry, l4_len: u32) -> Result<(), Drop> {
    ctx.store(TCP_CSUM_OFF, &0u16, 0)?;
    let mut pseudo = PseudoHeader {
        saddr: e.new_saddr,
        daddr: e.new_daddr,
        zero: 0,
        protocol: IPPROTO_TCP,
        length: (l4_len as u16).to_be(),
    };
    let seed = csum_diff((&raw mut pseudo).cast(), size_of::<PseudoHeader>() as u32, 0)?;
    let mut sum = SegmentSum {
        ctx: ctx.raw(),
        off: L4_OFF as u32,
        end: L4_OFF as u32 + l4_len,
        sum: seed,
        failed: 0,
    };
    // SAFETY: the callback only touches `sum` through the context pointer, which lives for the
    // whole call.
    unsafe {
        bpf_loop(
            MAX_CHUNKS,
            sum_step as *mut c_void,
            (&raw mut sum).cast(),
            0,
        );
    }
    if sum.failed != 0 || sum.off != sum.end {
        return Err(Drop);
    }
    ctx.store(TCP_CSUM_OFF, &fold(sum.sum), 0)
}

/// The state of the TCP checksum's `bpf_loop`.
#[repr(C)]
struct SegmentSum {
    ctx: *mut c_void,
    /// Next byte to sum (absolute offset).
    off: u32,
    end: u32,
    /// The running 32-bit one's complement sum.
    sum: u32,
    failed: u32,
}

/// Sums one chunk of the segment: its whole 32-bit words through the scratch buffer, then (in
/// the last chunk) the 1 to 3 bytes left, padded with zeros as the checksum pads an odd end.
/// Chunks are whole words, so every word lies where it lies in the segment. Returns 1 to stop.
#[inline(never)]
extern "C" fn sum_step(_index: u32, data: *mut c_void) -> i64 {
    // SAFETY: `data` is the `SegmentSum` that `tcp_checksum` passed to bpf_loop.
    let s = unsafe { &mut *data.cast::<SegmentSum>() };
    if s.off >= s.end {
        return 1;
    }
    let Some(buf) = SPLICE_XDP_SCRATCH.get_ptr_mut(0) else {
        s.failed = 1;
        return 1;
    };
    let left = s.end - s.off;
    let n = if left > CHUNK { CHUNK } else { left };
    // Masked so that the verifier sees both sizes bounded by the buffers.
    let words = n & (CHUNK | (CHUNK - 4));
    let rest = (n - words) & 3;
    if words != 0 && words <= CHUNK {
        // SAFETY: `buf` is the CHUNK-byte per-CPU scratch buffer; `words` <= CHUNK.
        let rc = unsafe { bpf_xdp_load_bytes(s.ctx.cast(), s.off, buf.cast(), words) };
        if rc != 0 {
            s.failed = 1;
            return 1;
        }
        match csum_diff(buf.cast(), words, s.sum) {
            Ok(sum) => s.sum = sum,
            Err(Drop) => {
                s.failed = 1;
                return 1;
            }
        }
    }
    if rest != 0 {
        let mut tail = [0u8; 4];
        // SAFETY: `tail` is 4 writable bytes; `rest` < 4.
        let rc =
            unsafe { bpf_xdp_load_bytes(s.ctx.cast(), s.off + words, tail.as_mut_ptr().cast(), rest) };
        let sum = if rc == 0 {
            csum_diff(tail.as_mut_ptr().cast(), 4, s.sum)
        } else {
            Err(Drop)
        };
        match sum {
            Ok(sum) => s.sum = sum,
            Err(Drop) => {
                s.failed = 1;
                return 1;
            }
        }
    }
    s.off += n;
    0
}

/// The one's complement sum of `len` bytes (a multiple of 4) at `to`, added to `seed`.
#[inline(always)]
fn csum_diff(to: *mut u32, len: u32, seed: u32) -> Result<u32, Drop> {
    // SAFETY: `to` points to `len` readable bytes (a stack value or the scratch buffer); a null
    // `from` of size 0 makes this a plain sum.
    let sum = unsafe { bpf_csum_diff(ptr::null_mut(), 0, to, len, seed) };
    if sum < 0 {
        return Err(Drop);
    }
    Ok(sum as u32)
}

/// A 32-bit one's complement sum folded to the 16-bit checksum to store, in memory order.
#[inline(always)]
fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
