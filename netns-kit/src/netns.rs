//! One network namespace: creating it, running commands in it, and removing it with whatever
//! still runs there.

use std::{
    ffi::OsStr,
    fs::File,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{command::run, sys, Error, Result};

/// Where `ip netns add` keeps the handle of a namespace (what `nsenter --net=` takes).
pub const NETNS_DIR: &str = "/var/run/netns";

/// A named network namespace with its loopback up, removed when dropped (also while a panic
/// unwinds) together with every process still in it, which takes its ends of veth links along.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// False once [`NetNs::keep`] hands the namespace over.
    owned: bool,
}

impl NetNs {
    /// `ip netns add <name>`, then loopback up. Fails if the name is taken.
    pub fn create(name: impl Into<String>) -> Result<NetNs> {
        let name = name.into();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // Owned from here on: a failed step below removes it again.
        let netns = NetNs { name, owned: true };
        netns.set_link_up("lo")?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The handle under [`NETNS_DIR`].
    pub fn path(&self) -> PathBuf {
        path(&self.name)
    }

    /// `program`, to be run inside this namespace (its network only: see the crate's docs).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.name, program)
    }

    /// Runs `argv` inside the namespace; its stdout, or an error with its stderr.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        let (program, args) = argv.split_first().map_or(("", &[][..]), |(p, a)| (*p, a));
        run(self.command(program).args(args))
    }

    /// `sysctl -w key=value` inside the namespace (the `net.*` keys are the namespace's own).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Adds `cidr` (`10.0.0.1/24`) to interface `dev`.
    pub fn add_address(&self, dev: &str, cidr: &str) -> Result<()> {
        self.run(&["ip", "addr", "add", cidr, "dev", dev]).map(drop)
    }

    pub fn set_link_up(&self, dev: &str) -> Result<()> {
        self.run(&["ip", "link", "set", dev, "up"]).map(drop)
    }

    pub fn set_link_down(&self, dev: &str) -> Result<()> {
        self.run(&["ip", "link", "set", dev, "down"]).map(drop)
    }

    /// The default route, through `gateway`.
    /// Turns GRO on or off for `dev` (`ethtool -K dev gro on|off`, without ethtool), from a
    /// thread that joins the namespace. A veth whose peer has GRO on (or an XDP program)
    /// takes the frames an XDP program redirects to that peer's other end.
    pub fn set_gro(&self, dev: &str, on: bool) -> Result<()> {
        let (name, owned) = (self.name.clone(), dev.to_owned());
        let joined = std::thread::spawn(move || -> std::io::Result<()> {
            enter(&name).map_err(std::io::Error::other)?;
            sys::set_gro(&owned, on)
        })
        .join();
        let result = joined.unwrap_or_else(|_| Err(std::io::Error::other("the thread panicked")));
        result.map_err(|source| Error::Gro {
            netns: self.name.clone(),
            dev: dev.to_owned(),
            on,
            source,
        })
    }

    pub fn add_default_route(&self, gateway: &str) -> Result<()> {
        self.run(&["ip", "route", "add", "default", "via", gateway])
            .map(drop)
    }

    /// Leaves the namespace in place when the guard goes (a demo that keeps running); returns
    /// its name, which [`remove`] takes later.
    pub fn keep(mut self) -> String {
        self.owned = false;
        std::mem::take(&mut self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.owned {
            // Nothing to report to: a drop (maybe while unwinding) can only try.
            let _ = remove(&self.name);
        }
    }
}

/// Where namespace `name`'s handle is.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// `program`, to be run inside namespace `name` with `nsenter --net` (see the crate's docs).
pub fn command_in(name: &str, program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", path(name).display()))
        .arg("--")
        .arg(program);
    command
}

/// The processes in namespace `name` (`ip netns pids`); none when it does not exist.
pub fn pids(name: &str) -> Result<Vec<u32>> {
    if !exists(name) {
        return Ok(Vec::new());
    }
    let listed = run(Command::new("ip").args(["netns", "pids", name]))?;
    Ok(listed
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect())
}

/// Kills (SIGKILL) what still runs in namespace `name`, then deletes it; nothing to do when it
/// does not exist. The kernel frees the namespace, and its interfaces, once the last process
/// in it is gone. Stop processes more gently before, where that matters.
pub fn remove(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    for pid in pids(name)? {
        sys::kill(pid);
    }
    run(Command::new("ip").args(["netns", "del", name])).map(drop)
}

/// Moves the calling thread into namespace `name` (its network only): sockets it opens from
/// then on are the namespace's. Meant for a thread of its own, which the caller ends after use.
pub fn enter(name: &str) -> Result<()> {
    let path = path(name);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(source) => return Err(Error::Open { path, source }),
    };
    sys::join_net(&file).map_err(|source| Error::Join { path, source })
}
