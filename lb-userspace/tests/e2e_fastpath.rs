//! The kernel fast path (issue 7): the splice program passes the verifier, attaches with TCX
//! and pins; a keep-alive connection relayed in userspace is handed to the kernel with the
//! SPLICE.md protocol and keeps working without the relay.

mod common;

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    sync::mpsc,
    thread,
    time::Duration,
};

use common::{netns::NetNs, PinDir, Topology};
use lb_common::{
    SPLICE_FLOWS_MAP, SPLICE_SEEN_FIN, SPLICE_SEEN_RST, SPLICE_STATE_SPLICE, SPLICE_STATS_MAP,
};
use sha2::{Digest as _, Sha256};
use stickylb::{
    dataplane::pin_root,
    fastpath::{
        program::{open_pinned_flows, Attachment},
        splice::{Observed, Outcome},
        FastPath,
    },
};

/// Runs `f` on a thread that joined network namespace `ns` (network namespaces are per thread).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        join_netns(&path);
        f()
    })
    .join()
    .expect("netns thread panicked")
}

fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        join_netns(&path);
        f()
    })
}

fn join_netns(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: a valid namespace fd; only this thread changes namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// The interface of namespace `ns` that carries `addr`.
fn interface_with(ns: &NetNs, addr: &str) -> String {
    let out = ns.exec(&["ip", "-o", "-4", "addr", "show"]);
    out.lines()
        .find(|line| line.contains(&format!(" {addr}/")))
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no interface with {addr} in {out}"))
        .to_owned()
}

fn ifindex(ns: &NetNs, name: &str) -> u32 {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{name}/ifindex")]);
    out.trim().parse().expect("ifindex")
}

#[test]
fn splice_program_passes_the_verifier_attaches_and_is_adopted() {
    if !common::privileged() {
        return;
    }
    let pins = PinDir::new("fastpath-load");
    let root = pin_root(&pins.0, "fp");
    let topo = Topology::new("fpv", 230);
    let lb_if = interface_with(&topo.lb, "10.230.1.1");
    let (r, i) = (root.clone(), lb_if.clone());
    let first = in_netns(&topo.lb.name, move || {
        let mut fastpath = FastPath::load(&r).expect("load (verifier)");
        fastpath.attach(&i).expect("attach")
    });
    assert_eq!(first, Attachment::Created);
    for name in [
        SPLICE_FLOWS_MAP,
        SPLICE_STATS_MAP,
        &format!("splice_ingress_{lb_if}"),
    ] {
        assert!(root.join(name).exists(), "{name} is not pinned");
    }
    // A second process (here: a second load) adopts the pinned link and replaces the program.
    let (r, i) = (root.clone(), lb_if.clone());
    let second = in_netns(&topo.lb.name, move || {
        let mut fastpath = FastPath::load(&r).expect("load again");
        fastpath.attach(&i).expect("attach again")
    });
    assert_eq!(second, Attachment::Replaced);
    // Traffic that matches no entry passes untouched.
    let (ok, out) = topo
        .client
        .try_exec(&["ping", "-c", "1", "-W", "2", &topo.lb_addr()]);
    assert!(ok, "ping through the attached program: {out}");
}
