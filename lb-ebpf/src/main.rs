//! stickylb's eBPF object.
//!
//! Today it carries the durable copy of the stick table: userspace owns every read and write, the
//! map exists in the kernel so that it outlives the daemon (pinned under
//! `<pin_dir>/<instance>/v1/STICK_TABLE`) and so that `bpftool map dump` decodes it with BTF.
#![no_std]
#![no_main]

mod maps;

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
