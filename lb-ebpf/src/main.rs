//! stickylb's eBPF object.
//!
//! - `STICK_TABLE`: the durable copy of the stick table. Userspace owns every read and write;
//!   the map exists in the kernel so that it outlives the daemon (pinned under
//!   `<pin_dir>/<instance>/v1/STICK_TABLE`) and so that `bpftool map dump` decodes it with BTF.
//! - `SERVER_ADMIN`: the operator's server settings (admin state, runtime weight), pinned
//!   beside the table for the same reasons; userspace only.
//! - `splice_ingress`: the TCP splice fast path (`docs/SPLICE.md`), a TC classifier on the
//!   ingress of the load balancer's interfaces, with its maps `SPLICE_FLOWS` and
//!   `SPLICE_STATS` (see [`ingress`]).
//! - `shield`: an XDP program on the frontend interfaces that drops packets from sources on the
//!   deny list `SHIELD_DENY` and SYNs beyond a per-source rate (buckets in `SHIELD_SYN`,
//!   settings in `SHIELD_CONFIG`), counting in `SHIELD_STATS`; all pinned like the table (see
//!   [`shield`] and docs/SHIELD.md). `shield_tc` is the same at TC ingress, for the interfaces
//!   whose frames are socket buffers already.
//! - `shield_refund`: a `sock_ops` program that gives a SYN back to its source's bucket when the
//!   connection it opened on one of the daemon's frontends (`SHIELD_FRONTENDS`) is established.
//! - `splice_xdp`: the splice fast path's translation of SPLICE flows at XDP, on the interfaces
//!   where the daemon attaches it (docs/SPLICE.md, "At XDP"); it shares `SPLICE_FLOWS` and
//!   `SPLICE_STATS` with `splice_ingress` and redirects through `SPLICE_XDP_PORTS`.
//! - `shield_splice`: the shield and `splice_xdp` in one program, for the interfaces the shield
//!   holds while the fast path translates at XDP (an interface has one XDP program).
#![no_std]
#![no_main]
// Atomic adds on map values: the BPF target has no `AtomicU64::fetch_add` (no CAS), but BPF has
// an atomic add, which the intrinsic lowers to.
#![expect(
    internal_features,
    reason = "core_intrinsics for atomic_xadd, see below"
)]
#![feature(core_intrinsics)]

mod ingress;
mod maps;
mod packet;
mod shield;
mod shield_refund;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, sock_ops, xdp},
    programs::{SockOpsContext, TcContext, XdpContext},
};

/// The splice fast path.
///
/// - Attach point: TC ingress (TCX or clsact, direct action) of every interface that faces
///   clients or servers.
/// - Minimum kernel: 5.17 (`bpf_loop`); 6.6 for TCX links. Tested on 6.18.
/// - Returns `TC_ACT_OK` for every packet that matches no `SPLICE_FLOWS` entry (untouched), an
///   OBSERVE entry, or that is a SYN (or SYN-ACK) on any other entry; `TC_ACT_SHOT` for every
///   packet of a CLOSED entry (or of a state it does not know), a packet of a SPLICE entry (or
///   the one completing an ARMED entry) that cannot be translated, and a packet of an ARMED
///   entry that does not complete its hand-off; `TC_ACT_REDIRECT` for a translated packet.
/// - Reads `SPLICE_FLOWS`; writes its `seen`, `last_tsval`, counters and time, and the state of
///   an ARMED entry whose hand-off a packet completes; deletes both entries of a translated
///   flow whose 4-tuple a SYN reuses; writes `SPLICE_STATS`.
///
/// Fail closed once a flow is known: an error after the map lookup drops the packet (the peer
/// retransmits), because passing a packet of a spliced flow to the stack resets the connection.
/// Errors before the lookup cannot belong to a known flow and pass the packet.
#[classifier]
pub fn splice_ingress(ctx: TcContext) -> i32 {
    match ingress::tcp::try_splice_ingress(&ctx) {
        Ok(action) => action,
        Err(_) => {
            maps::stat_inc(lb_common::SPLICE_STAT_DROPPED);
            TC_ACT_SHOT
        }
    }
}

/// The splice translation at XDP.
///
/// - Attach point: XDP, native mode only (generic XDP would run after the socket buffer exists
///   and gain nothing over TC), on the fast path's interfaces where the daemon's `[fastpath]
///   xdp` setting and the driver allow it. `splice_ingress` stays attached behind it.
/// - Minimum kernel: 5.18 (`bpf_xdp_load_bytes`). Tested on 6.18.
/// - Returns `XDP_REDIRECT` for a translated packet of a SPLICE entry (not a SYN, IPv4 without
///   options, the MAC addresses of its direction learned, fitting the MTU of its out interface,
///   which is in `SPLICE_XDP_PORTS`); `XDP_PASS`,
///   untouched, for every other packet, which `splice_ingress` then handles as it would
///   without this program; `XDP_DROP` for a packet whose rewrite failed after it began.
/// - Reads `SPLICE_FLOWS` and `SPLICE_XDP_PORTS`; writes the translated entries' `seen`,
///   counters and time exactly as `splice_ingress` does, the MAC addresses (`new_smac`,
///   `new_dmac`) of the partner of every ARMED or SPLICE entry a packet arrives for, and
///   `SPLICE_STATS` (slot `SPLICE_STAT_XDP_REDIRECTED` besides the others).
#[xdp]
pub fn splice_xdp(ctx: XdpContext) -> u32 {
    translate_at_xdp(&ctx)
}

/// `splice_xdp`'s body, which `shield_splice` runs too.
#[inline(always)]
fn translate_at_xdp(ctx: &XdpContext) -> u32 {
    match ingress::xdp::try_splice_xdp(ctx) {
        Ok(action) => action,
        Err(_) => {
            maps::stat_inc(lb_common::SPLICE_STAT_DROPPED);
            xdp_action::XDP_DROP
        }
    }
}

/// The shield: the deny list and the SYN rate limit.
///
/// - Attach point: XDP (native where the driver has it, generic otherwise) of every interface
///   a frontend listens on. Declared multi-buffer aware (`xdp.frags`): it reads only the
///   headers, which lie in the first buffer, so jumbo frames and large GRO packets need not
///   be linearized for it, and drivers do not refuse it on a large MTU.
/// - Returns `XDP_DROP` for an IPv4 or IPv6 packet whose source matches a `SHIELD_DENY`
///   prefix, and for a TCP SYN without ACK whose source (/32, or /64 for IPv6) exceeds the
///   rate in `SHIELD_CONFIG`; `XDP_PASS` for everything else.
/// - Reads `SHIELD_DENY` and `SHIELD_CONFIG`; reads and writes `SHIELD_SYN`; writes
///   `SHIELD_STATS`.
#[xdp(frags)]
pub fn shield(ctx: XdpContext) -> u32 {
    match shield::shield_verdict(&ctx) {
        shield::Verdict::Pass => xdp_action::XDP_PASS,
        shield::Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// The shield at TC: what `shield` does, where the frames are socket buffers already.
///
/// - Attach point: TCX ingress, first, of the interfaces the shield holds where XDP would gain
///   nothing over TC (a veth, whose frames its peer's stack built, and drivers without native
///   XDP, where XDP would be generic) and would cost a copy of every cloned or paged buffer
///   (docs/SHIELD.md, "Where it runs").
/// - Returns `TC_ACT_SHOT` for what `shield` drops; `TC_ACT_UNSPEC` (TCX's "next") for every
///   other packet, so that the programs behind it (the fast path's `splice_ingress`) still see
///   it, and the stack after them.
/// - Maps: those of `shield`, the same pinned maps.
#[classifier]
pub fn shield_tc(ctx: TcContext) -> i32 {
    match shield::shield_verdict(&ctx) {
        shield::Verdict::Pass => TC_ACT_UNSPEC,
        shield::Verdict::Drop => TC_ACT_SHOT,
    }
}

/// The shield, then the splice translation: what `shield` and `splice_xdp` do, in one program.
///
/// - Attach point: XDP of the interfaces the shield holds, in its mode (native where the driver
///   has it), when the fast path translates at XDP (`[fastpath] xdp = "auto"`): an interface
///   runs one XDP program, and the translation of the packets arriving there would otherwise
///   stay in TC.
/// - Returns the shield's `XDP_DROP` first; for a packet the shield passes, what `splice_xdp`
///   returns. Declared multi-buffer aware like `shield`: the translation takes only frames
///   whose packet lies in the first buffer and passes the others to TC untouched.
/// - Maps: those of `shield` and of `splice_xdp`, the same pinned maps.
#[xdp(frags)]
pub fn shield_splice(ctx: XdpContext) -> u32 {
    if shield::shield_verdict(&ctx) == shield::Verdict::Drop {
        return xdp_action::XDP_DROP;
    }
    translate_at_xdp(&ctx)
}

/// The shield's refund: a SYN that became a connection goes back to its source's bucket, so
/// that only SYNs that never complete a handshake are rate-limited (docs/SHIELD.md).
///
/// - Attach point: `BPF_CGROUP_SOCK_OPS` of a cgroup v2 (the root of the daemon's hierarchy,
///   multi-attach beside other daemons' programs). Acts on `BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB`
///   only, for connections whose (network namespace cookie, local port) is in
///   `SHIELD_FRONTENDS`.
/// - Minimum kernel: 5.15 (`bpf_get_netns_cookie` in sock_ops). Tested on 6.18.
/// - Returns 1 (the kernel ignores the value for this callback); sets no flags or reply.
/// - Reads `SHIELD_FRONTENDS` and `SHIELD_CONFIG`; writes an existing bucket of `SHIELD_SYN`
///   (never creates one) and `SHIELD_STATS` (slot `SHIELD_STAT_REFUNDED`).
#[sock_ops]
pub fn shield_refund(ctx: SockOpsContext) -> u32 {
    shield_refund::refund(&ctx);
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No code path here can panic (no unwrap, no indexing); the verifier rejects an unbounded
    // loop, so spinning is the conventional unreachable body.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
