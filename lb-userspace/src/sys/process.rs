//! The process and its host: the descriptor limit, the host name, the monotonic clock.

use std::io;

use rustix::{
    process::{Resource, Rlimit},
    time::ClockId,
};

/// Raises the soft limit on open descriptors to the hard one (`RLIMIT_NOFILE`).
pub fn raise_nofile_limit() -> io::Result<()> {
    let limit = rustix::process::getrlimit(Resource::Nofile);
    // `None` is RLIM_INFINITY, above every finite limit.
    let below_hard = match (limit.current, limit.maximum) {
        (Some(current), Some(maximum)) => current < maximum,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if !below_hard {
        return Ok(());
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    Ok(rustix::process::setrlimit(Resource::Nofile, raised)?)
}

/// The host name (`uname`'s node name, which is what gethostname(2) returns).
pub fn host_name() -> io::Result<String> {
    let uname = rustix::system::uname();
    uname
        .nodename()
        .to_str()
        .map(str::to_owned)
        .map_err(io::Error::other)
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(ClockId::Monotonic);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// Bytes the allocator holds free in its arenas, not given back to the kernel (glibc's
/// `mallinfo2().fordblks`; 0 elsewhere).
pub fn allocator_free_bytes() -> usize {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics (under its arenas' locks).
        unsafe { libc::mallinfo2() }.fordblks
    }
    #[cfg(not(target_env = "gnu"))]
    {
        0
    }
}

/// Gives the allocator's free pages back to the kernel, in every arena (glibc's
/// `malloc_trim(0)`); whether any were.
pub fn release_free_memory() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only returns pages of free chunks (under its arenas' locks).
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    /// Memory freed after a burst (chunks below glibc's mmap threshold, kept below one still in
    /// use so they stay in the arena) is counted as free, and its pages are given back.
    #[test]
    #[cfg(target_env = "gnu")]
    fn freed_memory_is_counted_and_given_back() {
        let burst: Vec<Vec<u8>> = (0..160).map(|i| vec![i; 100 * 1024]).collect();
        let fence = vec![1u8; 32 * 1024];
        // Seen, so that the allocations are not optimised away.
        std::hint::black_box((&burst, &fence));
        drop(burst);
        let free = super::allocator_free_bytes();
        assert!(free >= 8 << 20, "{free} bytes free after freeing 16 MB");
        assert!(super::release_free_memory(), "no page given back");
        drop(fence);
    }
}
