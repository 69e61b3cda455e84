//! TCP option walk: one option per `bpf_loop` callback.
//!
//! A bounded loop over the options (at most 40 bytes) blew the verifier's 1M-instruction limit
//! in the prototype: the offset stays precise in every iteration, so states never prune. The
//! `bpf_loop` callback is verified once. Offsets only ever reach the hook's byte helpers (which
//! take any value and check it against the packet), never a packet pointer, so the verifier
//! does not need them bounded. The callback is generic over the hook ([`Frame`]): each program
//! gets its own copy, which calls only the helper its program type has.

use core::{ffi::c_void, marker::PhantomData};

use aya_ebpf::helpers::bpf_loop;

use super::frame::Frame;

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
pub(crate) struct OptionWalk<F> {
    /// The hook's context (`Frame::raw`).
    ctx: *mut c_void,
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
    hook: PhantomData<F>,
}

impl<F: Frame> OptionWalk<F> {
    /// Walks the options between `start` and `end` of `frame`.
    #[inline(always)]
    pub(crate) fn run(frame: &F, start: u32, end: u32) -> OptionWalk<F> {
        let mut walk = OptionWalk {
            ctx: frame.raw(),
            off: start,
            end,
            ts_off: 0,
            sack_off: 0,
            sack_blocks: 0,
            hook: PhantomData,
        };
        // SAFETY: the callback is a plain function that only touches `walk` through the context
        // pointer, which lives for the whole call.
        unsafe {
            bpf_loop(
                MAX_OPTION_STEPS,
                option_step::<F> as *mut c_void,
                (&raw mut walk).cast(),
                0,
            );
        }
        walk
    }
}

/// One option. Returns 1 to stop (end of options, EOL, malformed), 0 to continue.
#[inline(never)]
extern "C" fn option_step<F: Frame>(_index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `OptionWalk` that `OptionWalk::run` passed to bpf_loop.
    let walk = unsafe { &mut *ctx.cast::<OptionWalk<F>>() };
    if walk.off >= walk.end {
        return 1;
    }
    let mut kind_len = [0u8; 2];
    // A NOP in the last byte has no length byte: reading 2 bytes then fails, and stopping is
    // right (nothing follows it).
    if walk.off + 2 > walk.end {
        return 1;
    }
    // SAFETY: kind_len is 2 writable bytes on the stack; `walk.ctx` is F's context.
    let rc = unsafe { F::load_raw(walk.ctx, walk.off, kind_len.as_mut_ptr().cast(), 2) };
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
