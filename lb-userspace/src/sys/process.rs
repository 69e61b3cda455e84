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
