//! What the splice rewrite needs of a packet, for both hooks that run it: the TC program reads
//! and writes a socket buffer, the XDP program a frame (docs/SPLICE.md, "At XDP").
//!
//! Apart from the parse's header reads ([`Frame::head`]), both go through the kernel's byte
//! helpers (`bpf_skb_load_bytes`/`bpf_xdp_load_bytes` and
//! their `store` twins), which check every offset against the packet at run time: no packet
//! pointer to revalidate after a write, no offset the verifier has to bound, and one rewrite
//! ([`super::tcp::rewrite`]) for both. What differs is the checksums: TC has the kernel's
//! incremental helpers, which know whether the TCP checksum field holds a full checksum or the
//! seed of an offloaded one; XDP has neither that knowledge nor the helpers, so it recomputes
//! both checksums once the rewrite is done (see `super::xdp`).

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    helpers::{bpf_skb_load_bytes, bpf_skb_store_bytes, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::{TcContext, XdpContext},
};

use super::tcp::{Drop, IP_CSUM_OFF, TCP_CSUM_OFF};
use crate::packet::read_linear;

/// A packet the splice rewrite can read and write at absolute offsets (from the start of the
/// Ethernet header).
pub(crate) trait Frame {
    /// The context pointer the hook's byte helpers take.
    fn raw(&self) -> *mut c_void;

    /// Reads `len` bytes at `off` into `to` (the hook's `load_bytes` helper); 0 or a negative
    /// error. A plain function of the raw context so that a `bpf_loop` callback can call it.
    ///
    /// # Safety
    /// `ctx` is this hook's context and `to` points to `len` writable bytes.
    unsafe fn load_raw(ctx: *mut c_void, off: u32, to: *mut c_void, len: u32) -> i64;

    /// Bytes of the packet (of a GSO packet: all of its segments).
    fn len(&self) -> u32;

    /// Writes `len` bytes at `off`; `flags` as `bpf_skb_store_bytes` takes them (ignored at
    /// XDP, which has no hash to invalidate).
    fn store_raw(&self, off: u32, from: *const c_void, len: u32, flags: u64) -> i64;

    /// Replaces `from` by `to` in the TCP checksum (`flags` as `bpf_l4_csum_replace`).
    fn l4_csum_replace(&self, from: u32, to: u32, flags: u64) -> Result<(), Drop>;

    /// Replaces `from` by `to` (`size` bytes) in the IP header checksum.
    fn l3_csum_replace(&self, from: u32, to: u32, size: u64) -> Result<(), Drop>;

    /// The linear part of the packet, `(data, data_end)`: the bytes a program may read through
    /// a bounds-checked pointer.
    fn linear(&self) -> (usize, usize);

    /// A header `T` at `off` (a constant, or one bounded by a header length): read through a
    /// packet pointer when it lies in the linear part, as it does in nearly every packet, else
    /// with the byte helper. The parse of every packet reads this way: a helper call costs
    /// more than the rest of the miss path (docs/SPLICE.md, "The program").
    #[inline(always)]
    fn head<T>(&self, off: usize) -> Result<T, Drop> {
        let (start, end) = self.linear();
        match read_linear(start, end, off) {
            Some(value) => Ok(value),
            None => self.load(off),
        }
    }

    /// A `T` read at `off`.
    #[inline(always)]
    fn load<T>(&self, off: usize) -> Result<T, Drop> {
        let mut value = MaybeUninit::<T>::uninit();
        // SAFETY: `value` is size_of::<T>() writable bytes; the helper fills all of them or
        // fails, and it is only read when it succeeded. T is plain data (headers, integers).
        let rc = unsafe {
            Self::load_raw(
                self.raw(),
                off as u32,
                value.as_mut_ptr().cast(),
                size_of::<T>() as u32,
            )
        };
        if rc != 0 {
            return Err(Drop);
        }
        // SAFETY: initialized by the successful load above.
        Ok(unsafe { value.assume_init() })
    }

    /// Writes `value` at `off`.
    #[inline(always)]
    fn store<T>(&self, off: usize, value: &T, flags: u64) -> Result<(), Drop> {
        let from: *const T = value;
        match self.store_raw(off as u32, from.cast(), size_of::<T>() as u32, flags) {
            0 => Ok(()),
            _ => Err(Drop),
        }
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.skb.skb.cast()
    }

    #[inline(always)]
    fn linear(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }

    #[inline(always)]
    unsafe fn load_raw(ctx: *mut c_void, off: u32, to: *mut c_void, len: u32) -> i64 {
        // SAFETY: the caller's contract.
        unsafe { bpf_skb_load_bytes(ctx.cast_const(), off, to, len) }
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    #[inline(always)]
    fn store_raw(&self, off: u32, from: *const c_void, len: u32, flags: u64) -> i64 {
        // SAFETY: `from` points to `len` readable bytes (a value of the caller's).
        unsafe { bpf_skb_store_bytes(self.skb.skb.cast(), off, from, len, flags) }
    }

    #[inline(always)]
    fn l4_csum_replace(&self, from: u32, to: u32, flags: u64) -> Result<(), Drop> {
        Ok(TcContext::l4_csum_replace(
            self,
            TCP_CSUM_OFF,
            u64::from(from),
            u64::from(to),
            flags,
        )?)
    }

    #[inline(always)]
    fn l3_csum_replace(&self, from: u32, to: u32, size: u64) -> Result<(), Drop> {
        Ok(TcContext::l3_csum_replace(
            self,
            IP_CSUM_OFF,
            u64::from(from),
            u64::from(to),
            size,
        )?)
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.ctx.cast()
    }

    #[inline(always)]
    fn linear(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }

    #[inline(always)]
    unsafe fn load_raw(ctx: *mut c_void, off: u32, to: *mut c_void, len: u32) -> i64 {
        // SAFETY: the caller's contract.
        unsafe { bpf_xdp_load_bytes(ctx.cast(), off, to, len) }
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        // The program is not multi-buffer aware (no `xdp.frags`): the frame is linear.
        (self.data_end() - self.data()) as u32
    }

    #[inline(always)]
    fn store_raw(&self, off: u32, from: *const c_void, len: u32, _flags: u64) -> i64 {
        // SAFETY: `from` points to `len` readable bytes; the helper does not write them
        // (its prototype lacks `const`).
        unsafe { bpf_xdp_store_bytes(self.ctx, off, from.cast_mut(), len) }
    }

    /// Nothing: the XDP program recomputes the TCP checksum after the rewrite.
    #[inline(always)]
    fn l4_csum_replace(&self, _from: u32, _to: u32, _flags: u64) -> Result<(), Drop> {
        Ok(())
    }

    /// Nothing: the XDP program recomputes the IP checksum after the rewrite.
    #[inline(always)]
    fn l3_csum_replace(&self, _from: u32, _to: u32, _size: u64) -> Result<(), Drop> {
        Ok(())
    }
}
