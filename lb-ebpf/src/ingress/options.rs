//! TCP option walk: one option per `bpf_loop` callback.
//!
//! A bounded loop over the options (at most 40 bytes) blew the verifier's 1M-instruction limit
//! in the prototype: the offset stays precise in every iteration, so states never prune. The
//! `bpf_loop` callback is verified once. Offsets only ever reach `bpf_skb_load_bytes` and
//! `bpf_skb_store_bytes` (which take any value and check it against the packet), never a packet
//! pointer, so the verifier does not need them bounded.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_loop, bpf_skb_load_bytes},
};

const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_SACK: u8 = 5;
const TCPOPT_TIMESTAMP: u8 = 8;
const TCPOLEN_TIMESTAMP: u8 = 10;
/// Options occupy at most 40 bytes; each iteration consumes at least one.
const MAX_OPTION_STEPS: u32 = 40;

/// Where the options this program rewrites are. Offsets are absolute (from the start of the
/// frame); 0 means absent.
#[repr(C)]
pub(crate) struct OptionWalk {
    skb: *mut __sk_buff,
    /// Next option's offset.
    off: u32,
    /// First byte after the TCP header.
    end: u32,
    /// Offset of TSval (TSecr follows).
    pub(crate) ts_off: u32,
    /// Offset of the first SACK block.
    pub(crate) sack_off: u32,
    /// SACK blocks (8 bytes each, at most 4).
    pub(crate) sack_blocks: u32,
}

impl OptionWalk {
    /// Walks the options between `start` and `end` of `skb`.
    #[inline(always)]
    pub(crate) fn run(skb: *mut __sk_buff, start: u32, end: u32) -> OptionWalk {
        let mut walk = OptionWalk {
            skb,
            off: start,
            end,
            ts_off: 0,
            sack_off: 0,
            sack_blocks: 0,
        };
        // SAFETY: the callback is a plain function that only touches `walk` through the context
        // pointer, which lives for the whole call.
        unsafe {
            bpf_loop(
                MAX_OPTION_STEPS,
                option_step as *mut c_void,
                (&raw mut walk).cast(),
                0,
            );
        }
        walk
    }
}

/// One option. Returns 1 to stop (end of options, EOL, malformed), 0 to continue.
#[inline(never)]
extern "C" fn option_step(_index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `OptionWalk` that `OptionWalk::run` passed to bpf_loop.
    let walk = unsafe { &mut *ctx.cast::<OptionWalk>() };
    if walk.off >= walk.end {
        return 1;
    }
    let mut kind_len = [0u8; 2];
    // A NOP in the last byte has no length byte: reading 2 bytes then fails, and stopping is
    // right (nothing follows it).
    if walk.off + 2 > walk.end {
        return 1;
    }
    // SAFETY: kind_len is 2 writable bytes on the stack.
    let rc =
        unsafe { bpf_skb_load_bytes(walk.skb.cast(), walk.off, kind_len.as_mut_ptr().cast(), 2) };
    if rc != 0 {
        return 1;
    }
    let [kind, len] = kind_len;
    match kind {
        TCPOPT_EOL => return 1,
        TCPOPT_NOP => {
            walk.off += 1;
            return 0;
        }
        _ => {}
    }
    if len < 2 || walk.off + u32::from(len) > walk.end {
        return 1;
    }
    if kind == TCPOPT_TIMESTAMP && len == TCPOLEN_TIMESTAMP {
        walk.ts_off = walk.off + 2;
    } else if kind == TCPOPT_SACK && (10..=34).contains(&len) && (len - 2) % 8 == 0 {
        walk.sack_off = walk.off + 2;
        walk.sack_blocks = u32::from((len - 2) / 8);
    }
    walk.off += u32::from(len);
    0
}
