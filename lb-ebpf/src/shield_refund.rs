//! The shield's refund (docs/SHIELD.md, "The refund"): when the kernel establishes a passive
//! TCP connection on one of the daemon's frontends, the SYN that opened it goes back to its
//! source's bucket in `SHIELD_SYN` (or, for a source without one, to the slot of
//! `SHIELD_SYN_SLOTS` it shares with the other untracked sources). A legitimate client's SYNs become connections and so cost
//! it nothing; a flood's never do, and meet the limit as before. A NAT, a proxy tier or a load
//! generator opening thousands of completed connections a second from one address is never
//! limited.
//!
//! GCRA (see `shield::syn_allowed`): a bucket is its theoretical arrival time `tat`; giving one
//! SYN back is `tat -= interval`. A `tat` below now is a full bucket, so a refund never gives a
//! source more than `syn_burst` at once.

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, helpers::bpf_get_netns_cookie,
    programs::SockOpsContext, EbpfContext,
};
use lb_common::{
    shield_syn_slot, ShieldAddr, ShieldFrontend, SHIELD_FAMILY_V4, SHIELD_FAMILY_V6,
    SHIELD_STAT_REFUNDED,
};

use crate::{
    maps::{shield_stat_inc, SHIELD_CONFIG, SHIELD_FRONTENDS, SHIELD_SYN, SHIELD_SYN_SLOTS},
    shield::bucket_key,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Gives the SYN of a connection just established on one of the daemon's frontends back to its
/// source's bucket, or to its slot when it has none. Every other callback, a connection of
/// another namespace or port, and a shield without settings are left alone.
#[inline(always)]
pub(crate) fn refund(ctx: &SockOpsContext) {
    if ctx.op() != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        return;
    }
    // SAFETY: the helper takes the program's context, which `ctx` is.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let frontend = ShieldFrontend {
        netns_cookie,
        // A TCP port fits 16 bits; `local_port` is in host order.
        port: ctx.local_port() as u16,
        _pad: [0; 6],
    };
    // SAFETY: only the presence of the key is read, never the value behind the reference.
    if unsafe { SHIELD_FRONTENDS.get(frontend) }.is_none() {
        return;
    }
    let Some(source) = remote(ctx) else {
        return;
    };
    let Some(config) = SHIELD_CONFIG.get(0) else {
        return;
    };
    let interval = config.syn_interval_ns;
    if interval == 0 {
        return;
    }
    // The source's own bucket, or else the slot it shares with the other untracked sources
    // (`shield::syn_allowed`), which took the SYN.
    let key = bucket_key(&source);
    let bucket = match SHIELD_SYN.get_ptr_mut(key) {
        Some(bucket) => bucket,
        None => match SHIELD_SYN_SLOTS.get_ptr_mut(shield_syn_slot(&key)) {
            Some(slot) => slot,
            None => return,
        },
    };
    // SAFETY: the pointer comes from a successful lookup; the value is plain data. A race with
    // the XDP program on another CPU can lose one update, as between two SYNs there.
    unsafe { (*bucket).tat_ns = (*bucket).tat_ns.saturating_sub(interval) };
    shield_stat_inc(SHIELD_STAT_REFUNDED);
}

/// The remote address in the shield's key layout; an IPv4-mapped IPv6 address (a dual-stack
/// listener's IPv4 client) as the IPv4 address the XDP program saw.
#[inline(always)]
fn remote(ctx: &SockOpsContext) -> Option<ShieldAddr> {
    let mut source = ShieldAddr::default();
    match ctx.family() {
        AF_INET => {
            source.family = SHIELD_FAMILY_V4;
            // Network order in memory: the bytes as on the wire.
            source.addr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
        }
        AF_INET6 => {
            let words = remote_ip6(ctx);
            let [w0, w1, w2, w3] = words.map(u32::to_ne_bytes);
            if w0 == [0; 4] && w1 == [0; 4] && w2 == [0, 0, 0xff, 0xff] {
                source.family = SHIELD_FAMILY_V4;
                source.addr[..4].copy_from_slice(&w3);
            } else {
                source.family = SHIELD_FAMILY_V6;
                source.addr[..4].copy_from_slice(&w0);
                source.addr[4..8].copy_from_slice(&w1);
                source.addr[8..12].copy_from_slice(&w2);
                source.addr[12..].copy_from_slice(&w3);
            }
        }
        _ => return None,
    }
    Some(source)
}

/// `remote_ip6`, one 4-byte context load per word: the verifier refuses wider loads of it.
#[inline(always)]
fn remote_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    // SAFETY: `ops` is the context the kernel passed; each read is one aligned u32 field.
    unsafe {
        let ops = ctx.ops;
        [
            core::ptr::read_volatile(&raw const (*ops).remote_ip6[0]),
            core::ptr::read_volatile(&raw const (*ops).remote_ip6[1]),
            core::ptr::read_volatile(&raw const (*ops).remote_ip6[2]),
            core::ptr::read_volatile(&raw const (*ops).remote_ip6[3]),
        ]
    }
}
