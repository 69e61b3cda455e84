//! The nodes' configurations: the bench's sticky setup (round robin, a JSESSIONID table of
//! [`contender::TABLE_SIZE`], no health checks, the same timeouts as the other workloads) with a
//! peers section naming every node of the mesh, for stickylb and for HAProxy.

use std::{net::SocketAddr, path::Path};

use super::addrs::{node_addr, node_name, MONITOR_PORT, NET, PEERS_PORT};
use crate::contender::{self, BACKEND_NAME, BACKEND_PORTS, FRONTEND_PORT};

fn members(size: usize) -> impl Iterator<Item = (String, SocketAddr)> {
    (0..size).map(|i| (node_name(i), SocketAddr::from((node_addr(i), PEERS_PORT))))
}

/// The bench's stickylb configuration (round robin, a JSESSIONID table of
/// [`contender::TABLE_SIZE`], no health checks) with a `[peers]` section naming every node.
pub(crate) fn stickylb(i: usize, size: usize, pin_dir: &Path, control: &Path) -> String {
    let (addr, backends) = (node_addr(i), NET.backends());
    let servers: String = servers()
        .map(|(name, port)| format!("  {{ name = \"{name}\", addr = \"{backends}:{port}\" }},\n"))
        .collect();
    let members: String = members(size)
        .map(|(name, addr)| format!("  {{ name = \"{name}\", addr = \"{addr}\" }},\n"))
        .collect();
    format!(
        "# Written by `cargo xtask bench` (cluster workloads).\n\
         [instance]\nname = \"{name}\"\npin_dir = \"{pin}\"\ncontrol_socket = \"{control}\"\n\n\
         [[frontend]]\nname = \"www\"\nbind = \"{addr}:{FRONTEND_PORT}\"\nbackend = \"{BACKEND_NAME}\"\nfastpath = \"off\"\n\n\
         [[backend]]\nname = \"{BACKEND_NAME}\"\nbalance = \"roundrobin\"\nstick_cookie = \"JSESSIONID\"\n\
         table_size = {size_}\nexpire = \"30m\"\nhealth_check = {{ enabled = false }}\n\
         servers = [\n{servers}]\n\n\
         [monitor]\nbind = \"{addr}:{MONITOR_PORT}\"\n\n\
         [timeouts]\nconnect = \"5s\"\nclient = \"50s\"\nserver = \"50s\"\ndrain = \"1s\"\n\n\
         [peers]\nbind = \"{addr}:{PEERS_PORT}\"\nmembers = [\n{members}]\n",
        name = node_name(i),
        pin = pin_dir.display(),
        control = control.display(),
        size_ = contender::TABLE_SIZE,
    )
}

/// HAProxy's equivalent: the bench's sticky setup, the table shared with the `mesh` peers.
pub(crate) fn haproxy(i: usize, size: usize, socket: &Path) -> String {
    let (addr, backends) = (node_addr(i), NET.backends());
    let servers: String = servers()
        .map(|(name, port)| format!("    server {name} {backends}:{port}\n"))
        .collect();
    let peers: String = members(size)
        .map(|(name, addr)| format!("    peer {name} {addr}\n"))
        .collect();
    format!(
        "# Written by `cargo xtask bench` (cluster workloads).\n\
         global\n    maxconn 8192\n    localpeer {name}\n    stats socket {socket} level admin\n\n\
         defaults\n    mode http\n    option redispatch\n    option forwardfor\n    http-reuse always\n\
         \x20   timeout connect 5s\n    timeout client 50s\n    timeout server 50s\n\n\
         peers mesh\n{peers}\n\
         frontend www\n    bind {addr}:{FRONTEND_PORT}\n    default_backend {BACKEND_NAME}\n\n\
         backend {BACKEND_NAME}\n    balance roundrobin\n\
         \x20   stick-table type string len 32 size {size_} expire 30m peers mesh\n\
         \x20   stick on req.cook(JSESSIONID)\n    stick store-response res.cook(JSESSIONID)\n\
         {servers}",
        name = node_name(i),
        socket = socket.display(),
        size_ = contender::TABLE_SIZE,
    )
}

pub(crate) fn servers() -> impl Iterator<Item = (String, u16)> {
    BACKEND_PORTS
        .iter()
        .enumerate()
        .map(|(i, port)| (format!("be{}", i + 1), *port))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{haproxy, stickylb};

    #[test]
    fn every_node_lists_every_member() {
        let stickylb = stickylb(1, 5, Path::new("/p"), Path::new("/s"));
        assert!(stickylb.contains("name = \"n2\"\n"));
        assert!(stickylb.contains("bind = \"10.242.0.12:1024\""));
        for i in 1..=5 {
            assert!(stickylb.contains(&format!(
                "{{ name = \"n{i}\", addr = \"10.242.0.{}:1024\" }}",
                10 + i
            )));
        }
        let haproxy = haproxy(1, 5, Path::new("/s"));
        assert!(haproxy.contains("localpeer n2\n"));
        assert!(haproxy.contains("    peer n5 10.242.0.15:1024\n"));
        assert!(haproxy.contains("size 1048576 expire 30m peers mesh\n"));
        assert!(haproxy.contains("    server be4 10.242.0.2:8084\n"));
    }
}
