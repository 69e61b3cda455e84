//! Reading packet bytes through a bounds-checked pointer: the one way every program reads the
//! headers it parses, where they lie in the linear part of the packet (an XDP frame's first
//! buffer, a socket buffer's linear data).

/// A `T` at `offset` from `data` when all of it lies before `data_end`; `None` otherwise.
/// `offset` is a constant or bounded (a header length), as the verifier needs.
#[inline(always)]
pub(crate) fn read_linear<T>(data: usize, data_end: usize, offset: usize) -> Option<T> {
    if data + offset + size_of::<T>() > data_end {
        return None;
    }
    // SAFETY: the check above is the bounds check the verifier requires: the bytes lie in the
    // packet. Read unaligned: an IP header after a 14-byte Ethernet header is only 2-aligned.
    // T is plain data (headers, integers, byte arrays).
    Some(unsafe { core::ptr::read_unaligned((data + offset) as *const T) })
}
