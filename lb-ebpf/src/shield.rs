//! The shield's XDP program: drop packets whose source is on the deny list (docs/SHIELD.md).
//!
//! XDP sees the packet before the kernel allocates a socket buffer, so a denied source costs a
//! header parse and one trie lookup. Reads go through bounds-checked packet pointers (XDP has
//! no `load_bytes` helper that is cheaper); nothing is written to the packet.

use aya_ebpf::{bindings::xdp_action, maps::lpm_trie::Key, programs::XdpContext};
use lb_common::{
    ShieldAddr, SHIELD_FAMILY_BITS, SHIELD_FAMILY_V4, SHIELD_FAMILY_V6, SHIELD_STAT_DROPPED_DENY,
    SHIELD_STAT_PASSED,
};

use crate::maps::{shield_stat_inc, SHIELD_DENY};

const ETH_HLEN: usize = 14;
const ETH_TYPE_OFF: usize = 12;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPV4_SADDR_OFF: usize = ETH_HLEN + 12;
const IPV6_SADDR_OFF: usize = ETH_HLEN + 8;

/// `XDP_DROP` for a source on the deny list, `XDP_PASS` for everything else (other
/// ethertypes, VLAN-tagged frames and frames too short to hold the header included: the stack
/// judges those as it would without the shield).
#[inline(always)]
pub(crate) fn shield_verdict(ctx: &XdpContext) -> u32 {
    match source_of(ctx) {
        Some(source) if is_denied(&source) => {
            shield_stat_inc(SHIELD_STAT_DROPPED_DENY);
            xdp_action::XDP_DROP
        }
        _ => {
            shield_stat_inc(SHIELD_STAT_PASSED);
            xdp_action::XDP_PASS
        }
    }
}

fn is_denied(source: &ShieldAddr) -> bool {
    let bits = match source.family {
        SHIELD_FAMILY_V4 => 32,
        _ => 128,
    };
    let key = Key::new(SHIELD_FAMILY_BITS + bits, *source);
    SHIELD_DENY.get(&key).is_some()
}

/// The source address of an IPv4 or IPv6 packet in an untagged Ethernet frame.
#[inline(always)]
fn source_of(ctx: &XdpContext) -> Option<ShieldAddr> {
    let ethertype = u16::from_be_bytes(read::<2>(ctx, ETH_TYPE_OFF)?);
    let mut source = ShieldAddr::default();
    match ethertype {
        ETH_P_IP => {
            let addr = read::<4>(ctx, IPV4_SADDR_OFF)?;
            source.family = SHIELD_FAMILY_V4;
            source.addr[..4].copy_from_slice(&addr);
        }
        ETH_P_IPV6 => {
            source.family = SHIELD_FAMILY_V6;
            source.addr = read::<16>(ctx, IPV6_SADDR_OFF)?;
        }
        _ => return None,
    }
    Some(source)
}

/// `N` bytes of the packet at `offset`, or `None` when the packet is shorter.
#[inline(always)]
fn read<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return None;
    }
    let ptr = (start + offset) as *const [u8; N];
    // SAFETY: the bounds check above is the one the verifier requires; the bytes lie inside
    // the packet. Read unaligned: IP headers after a 14-byte Ethernet header are 2-aligned.
    Some(unsafe { core::ptr::read_unaligned(ptr) })
}
