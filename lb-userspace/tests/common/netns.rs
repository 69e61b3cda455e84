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

/// One L2 segment 10.<net>.0.0/24: a bridge `br0` inside a hidden "switch" namespace, and one
/// namespace per host attached to it by a veth pair. Hosts: client 10.<net>.0.100, backends
/// 10.<net>.0.2, lb i (1-based) 10.<net>.0.(10+i). Every namespace (hence every veth) is removed
/// on drop.
pub struct Lan {
    pub switch: NetNs,
    pub client: NetNs,
    pub backends: NetNs,
    pub lbs: Vec<NetNs>,
    pub net: u8,
    /// Switch-side interface of each lb, by index into `lbs`.
    lb_ports: Vec<String>,
    /// Hosts added with [`Lan::add_host`].
    extra: Vec<NetNs>,
}

impl Lan {
    /// `net` must be unique per test so that tests never share a subnet; at most 89 lbs.
    pub fn new(tag: &str, net: u8, lbs: usize) -> Lan {
        assert!(
            lbs <= 89,
            "lb addresses 10.{net}.0.11.. must stay below the client's .100"
        );
        // Every namespace is owned by a local first, so a failed step drops (deletes) them all.
        let switch = NetNs::new(&format!("{tag}s"));
        switch.exec(&[
            "ip",
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ]);
        switch.exec(&["ip", "link", "set", "br0", "up"]);
        let client = NetNs::new(&format!("{tag}c"));
        attach(&switch, &client, &format!("10.{net}.0.100/24"));
        let backends = NetNs::new(&format!("{tag}b"));
        attach(&switch, &backends, &format!("10.{net}.0.2/24"));
        let mut lb_nss = Vec::with_capacity(lbs);
        let mut lb_ports = Vec::with_capacity(lbs);
        for i in 0..lbs {
            let lb = NetNs::new(&format!("{tag}l{i}"));
            lb_ports.push(attach(&switch, &lb, &format!("10.{net}.0.{}/24", 11 + i)));
            lb_nss.push(lb);
        }
        Lan {
            switch,
            client,
            backends,
            lbs: lb_nss,
            net,
            lb_ports,
            extra: Vec::new(),
        }
    }

    /// Address of `lbs[i]` (0-based): 10.<net>.0.(11+i).
    pub fn lb_addr(&self, i: usize) -> String {
        assert!(i < self.lbs.len(), "no lb {i}");
        format!("10.{}.0.{}", self.net, 11 + i)
    }

    pub fn client_addr(&self) -> String {
        format!("10.{}.0.100", self.net)
    }

    pub fn backend_addr(&self) -> String {
        format!("10.{}.0.2", self.net)
    }

    /// Adds one more host namespace on the segment at 10.<net>.0.<host> (e.g. for a HAProxy
    /// peer); the `Lan` owns it and removes it on drop.
    pub fn add_host(&mut self, tag: &str, host: u8) -> &NetNs {
        let ns = NetNs::new(tag);
        attach(&self.switch, &ns, &format!("10.{}.0.{host}/24", self.net));
        self.extra.push(ns);
        &self.extra[self.extra.len() - 1]
    }

    /// Cuts `lbs[i]` off the segment: its switch-side link goes down.
    pub fn partition(&self, i: usize) {
        self.switch
            .exec(&["ip", "link", "set", &self.lb_ports[i], "down"]);
    }

    /// Puts `lbs[i]` back on the segment.
    pub fn heal(&self, i: usize) {
        self.switch
            .exec(&["ip", "link", "set", &self.lb_ports[i], "up"]);
    }
}

/// Connects `host` to the bridge `br0` of `switch` with a veth pair, `addr` (CIDR) on the host
/// end; returns the name of the switch end. Names carry the pid and the counter, so they are
/// unique across concurrently running tests and test binaries (at most 15 chars).
fn attach(switch: &NetNs, host: &NetNs, addr: &str) -> String {
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1_000_000;
    let pid = std::process::id();
    let (sw_if, host_if) = (format!("s{pid}x{n}"), format!("h{pid}x{n}"));
    run(&[
        "ip",
        "link",
        "add",
        &sw_if,
        "netns",
        &switch.name,
        "type",
        "veth",
        "peer",
        "name",
        &host_if,
        "netns",
        &host.name,
    ]);
    switch.exec(&["ip", "link", "set", &sw_if, "master", "br0"]);
    switch.exec(&["ip", "link", "set", &sw_if, "up"]);
    host.exec(&["ip", "addr", "add", addr, "dev", &host_if]);
    host.exec(&["ip", "link", "set", &host_if, "up"]);
    sw_if
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
