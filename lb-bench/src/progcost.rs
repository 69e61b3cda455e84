//! What stickylb's kernel programs cost per packet in the default configuration (the fast
//! path's and the shield's programs at TC on the frontend's veth), measured apart from the
//! machine's noise: `BPF_PROG_TEST_RUN` (`bpftool prog run`) of each attached program, many
//! times over, on packets built here. The request workloads show what the programs do to req/s
//! on a loaded machine, within their runs' scatter; this shows their own price, steady to a few
//! nanoseconds, and so the effect of a change to a program.
//!
//! The fast path attaches its program at its first candidate: one keep-alive connection of a
//! dozen requests makes it attach to the client's and the servers' interfaces first.
//!
//! The packets: an ACK of an established connection to the frontend (what every packet of an
//! ordinary connection is to both programs: looked at, passed), and a SYN to the frontend
//! repeated from one source (the shield passes its burst, then drops the rest: a flood). The SYN
//! comes from a documentation address (192.0.2.0/24) that no client of the bench uses, and the
//! pinned maps are removed afterwards, so the bucket it empties is gone before the next run.

use std::{fs, net::Ipv4Addr, path::Path};

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::{
    bpftool::{bpftool, number},
    contender::{self, Contender},
    env::{Env, Layout},
};

/// Runs per round, and rounds (the median is reported).
const REPEAT: &str = "200000";
const ROUNDS: usize = 5;
/// The flood's source: TEST-NET-1, never a bench client.
const FLOOD_SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
/// Requests on the connection that makes the fast path attach: past the hand-off policy's 8.
const LONG_CONNECTION: usize = 12;

#[derive(Clone, Debug, Serialize)]
pub(super) struct ProgramCost {
    /// The program's name in the kernel (`splice_ingress`, `shield_tc`, ...).
    pub(super) program: String,
    /// The pinned link it runs behind (which names the interface).
    pub(super) link: String,
    pub(super) packet: &'static str,
    /// Median over the rounds of the kernel's average run time.
    pub(super) ns_per_packet: f64,
    /// The program's return code on the last run (TC: 0 or -1 pass, 2 drop; XDP: 1 drop,
    /// 2 pass).
    pub(super) verdict: i64,
}

/// The packets each program is run on.
struct Packet {
    what: &'static str,
    bytes: Vec<u8>,
}

/// Starts stickylb with the fast path and the shield on (the default configuration, at its
/// default SYN limit), runs each program it attached, and stops it.
pub(super) fn measure(env: &Env) -> anyhow::Result<Vec<ProgramCost>> {
    let contender = Contender::StickylbFastPath;
    if let Some(why) = contender.unavailable() {
        bail!("{}: {why}", contender.label());
    }
    env.reset_table()?;
    env.set_shield(Some(contender::DEFAULT_SHIELD));
    let started = env.start(contender, Layout::Routed);
    env.set_shield(None);
    let (lb, _) = started?;
    let measured = attach_by_a_long_connection(env).and_then(|()| measure_links(env));
    lb.stop()?;
    env.reset_table()?;
    measured
}

/// One keep-alive connection with a session, long enough for the hand-off policy (its default:
/// the 8th answer), so that the fast path attaches its program to the client's and the
/// servers' interfaces: it does so for the first candidate, not at start. Waits for both links.
fn attach_by_a_long_connection(env: &Env) -> anyhow::Result<()> {
    let topology = env.topology(Layout::Routed);
    let url = Contender::StickylbFastPath.base_url(&topology.addrs);
    let mut args = vec![
        "--silent".to_owned(),
        "--fail".to_owned(),
        "--max-time".to_owned(),
        "10".to_owned(),
        "--header".to_owned(),
        "Cookie: JSESSIONID=progcost".to_owned(),
    ];
    // One curl, one connection: it reuses it for every URL given.
    args.extend((0..LONG_CONNECTION).map(|i| format!("{url}/progcost/{i}")));
    let status = topology
        .client
        .command("curl")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .context("could not run curl")?;
    if !status.success() {
        bail!("the long connection that attaches the fast path failed ({status})");
    }
    let dir = env.shield_links();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let attached = fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("splice_ingress_")
            })
            .count();
        if attached >= 2 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the fast path attached to {attached} interface(s) after a long connection, not 2"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn measure_links(env: &Env) -> anyhow::Result<Vec<ProgramCost>> {
    let addrs = &env.topology(Layout::Routed).addrs;
    let packets = [
        Packet {
            what: "ACK of an established connection",
            bytes: tcp_packet(addrs.client, addrs.lb, TCP_ACK),
        },
        Packet {
            what: "SYN flood from one source",
            bytes: tcp_packet(FLOOD_SOURCE, addrs.lb, TCP_SYN),
        },
    ];
    let mut files = Vec::new();
    for (index, packet) in packets.iter().enumerate() {
        let path = env.work_dir.join(format!("progcost-{index}.bin"));
        fs::write(&path, &packet.bytes)
            .with_context(|| format!("could not write {}", path.display()))?;
        files.push(path);
    }
    let mut links: Vec<(String, u64)> = Vec::new();
    let dir = env.shield_links();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if ["splice_ingress_", "splice_xdp_", "shieldtc_", "shield_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            let link = bpftool(&["link", "show", "pinned"], &entry.path())?;
            links.push((name, number(&link, "prog_id")?));
        }
    }
    if links.is_empty() {
        bail!("no fast path or shield link pinned in {}", dir.display());
    }
    links.sort();
    let mut costs = Vec::new();
    for (link, id) in links {
        let program = bpftool(&["prog", "show", "id"], Path::new(&id.to_string()))?;
        let name = program
            .get("name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?")
            .to_owned();
        for (packet, file) in packets.iter().zip(&files) {
            // The flood packet only means something to the shield.
            if packet.bytes[TCP_FLAGS_AT] == TCP_SYN && !name.starts_with("shield") {
                continue;
            }
            let (ns_per_packet, verdict) = run(id, file)?;
            costs.push(ProgramCost {
                program: name.clone(),
                link: link.clone(),
                packet: packet.what,
                ns_per_packet,
                verdict,
            });
        }
    }
    Ok(costs)
}

/// The median of the rounds' average run time, and the last return code.
fn run(id: u64, packet: &Path) -> anyhow::Result<(f64, i64)> {
    let id = id.to_string();
    let mut durations = Vec::with_capacity(ROUNDS);
    let mut verdict = 0;
    for _ in 0..ROUNDS {
        let args = ["prog", "run", "id", &id, "repeat", REPEAT, "data_in"];
        let result = bpftool(&args, packet)?;
        durations.push(number(&result, "duration")? as f64);
        // bpftool prints the kernel's u32; TC's codes are signed (-1: TC_ACT_UNSPEC).
        let retval = number(&result, "retval")?;
        verdict = i64::from(u32::try_from(retval).unwrap_or(u32::MAX) as i32);
    }
    let median = super::stats::median(&durations).context("no round ran")?;
    Ok((median, verdict))
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// Where the TCP flags byte is in the packets built here (14 + 20 + 13).
const TCP_FLAGS_AT: usize = 47;

/// An Ethernet frame with an IPv4 header (no options, checksum right) and a bare TCP header
/// from `source`:40000 to `destination`:80 with `flags`. The programs do not check the TCP
/// checksum, so it is left 0.
fn tcp_packet(source: Ipv4Addr, destination: Ipv4Addr, flags: u8) -> Vec<u8> {
    let mut frame = Vec::with_capacity(54);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&source.octets());
    ip[16..20].copy_from_slice(&destination.octets());
    let checksum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&contender::FRONTEND_PORT.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    if flags & TCP_ACK != 0 {
        tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    }
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    frame.extend_from_slice(&tcp);
    frame
}

fn ipv4_checksum(header: &[u8; 20]) -> u16 {
    let mut sum: u32 = header
        .chunks_exact(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::{ipv4_checksum, tcp_packet, TCP_ACK, TCP_FLAGS_AT, TCP_SYN};

    #[test]
    fn the_packets_are_ipv4_tcp_frames_with_a_valid_header_checksum() {
        let (source, destination) = (Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(10, 4, 5, 6));
        let syn = tcp_packet(source, destination, TCP_SYN);
        assert_eq!(syn.len(), 54);
        assert_eq!(&syn[12..14], &[0x08, 0x00]);
        assert_eq!(&syn[26..30], &source.octets());
        assert_eq!(&syn[30..34], &destination.octets());
        assert_eq!(&syn[36..38], &80u16.to_be_bytes());
        assert_eq!(syn[TCP_FLAGS_AT], TCP_SYN);
        assert_eq!(
            tcp_packet(source, destination, TCP_ACK)[TCP_FLAGS_AT],
            TCP_ACK
        );
        // A header with its checksum in place sums to 0xffff (its complement is 0).
        let header: [u8; 20] = syn[14..34].try_into().unwrap();
        assert_eq!(ipv4_checksum(&header), 0);
    }
}
