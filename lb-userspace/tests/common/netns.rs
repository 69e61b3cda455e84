//! Network namespaces and veth links for the end-to-end tests.

use std::{process::Command, sync::atomic::AtomicU32};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted (with every process still in it) on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates namespace `slb-<tag>-<pid>-<n>` with loopback up.
    pub fn new(tag: &str) -> NetNs {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("slb-{tag}-{}-{n}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command in the namespace, panicking on failure.
    pub fn exec(&self, argv: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// Runs a command in the namespace and returns (success, stdout+stderr).
    pub fn try_exec(&self, argv: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .expect("ip");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Links `a` and `b` with a veth pair, addresses `a_addr`/`b_addr` (CIDR) on each end.
pub fn link(a: &NetNs, a_addr: &str, b: &NetNs, b_addr: &str) {
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (a_if, b_if) = (format!("va{n}"), format!("vb{n}"));
    run(&[
        "ip", "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if,
        "netns", &b.name,
    ]);
    a.exec(&["ip", "addr", "add", a_addr, "dev", &a_if]);
    b.exec(&["ip", "addr", "add", b_addr, "dev", &b_if]);
    a.exec(&["ip", "link", "set", &a_if, "up"]);
    b.exec(&["ip", "link", "set", &b_if, "up"]);
}

/// client <-> lb <-> backends, on subnets 10.<net>.1.0/24 and 10.<net>.2.0/24.
/// Addresses: client 10.<net>.1.2, lb 10.<net>.1.1 and 10.<net>.2.1, backends 10.<net>.2.2.
pub struct Topology {
    pub client: NetNs,
    pub lb: NetNs,
    pub backends: NetNs,
    pub net: u8,
}

impl Topology {
    /// `net` must be unique per test so that tests never share a subnet.
    pub fn new(tag: &str, net: u8) -> Topology {
        let client = NetNs::new(&format!("{tag}c"));
        let lb = NetNs::new(&format!("{tag}l"));
        let backends = NetNs::new(&format!("{tag}b"));
        link(
            &client,
            &format!("10.{net}.1.2/24"),
            &lb,
            &format!("10.{net}.1.1/24"),
        );
        link(
            &lb,
            &format!("10.{net}.2.1/24"),
            &backends,
            &format!("10.{net}.2.2/24"),
        );
        client.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.{net}.1.1"),
        ]);
        backends.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.{net}.2.1"),
        ]);
        Topology {
            client,
            lb,
            backends,
            net,
        }
    }

    pub fn lb_addr(&self) -> String {
        format!("10.{}.1.1", self.net)
    }

    pub fn client_addr(&self) -> String {
        format!("10.{}.1.2", self.net)
    }

    pub fn backend_addr(&self) -> String {
        format!("10.{}.2.2", self.net)
    }
}

fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{argv:?} failed: {text}");
    text
}
