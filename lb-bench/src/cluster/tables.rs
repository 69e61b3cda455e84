//! Reading each node's stick table from outside: stickylb's pinned map (a lookup by key is one
//! `bpf()` call, a dump walks the map), HAProxy's through `show table` on its stats socket.
//! A table's size comes from stickylb's `/metrics` and from the header of `show table`.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use aya::maps::{HashMap, Map, MapData};
use lb_common::{StickEntry, StickKey, COOKIE_LEN};

use super::{
    addrs,
    cli::{self, Cli},
    mesh::Mesh,
    probe::Prober,
};
use crate::{contender::BACKEND_NAME, metrics::metric_value, scale};

/// A table as compared between nodes: cookie -> server name.
pub(crate) type Dump = BTreeMap<String, String>;

/// One node's table, as the bench reads it.
pub(crate) enum Reader {
    Stickylb {
        map: HashMap<MapData, StickKey, StickEntry>,
        node: usize,
    },
    Haproxy(Cli),
}

impl Reader {
    pub(crate) fn open(mesh: &Mesh<'_>, node: usize) -> anyhow::Result<Self> {
        if mesh.contender.is_stickylb() {
            let path = mesh.pinned_table(node);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening the pinned table {}", path.display()))?;
            let map = HashMap::try_from(Map::from_map_data(data)?)
                .with_context(|| format!("{} is not the stick table", path.display()))?;
            Ok(Self::Stickylb { map, node })
        } else {
            Ok(Self::Haproxy(Cli::connect(&mesh.cli_socket(node))?))
        }
    }

    /// Whether the table holds `cookie`.
    pub(crate) fn has(&mut self, cookie: &str) -> anyhow::Result<bool> {
        match self {
            Self::Stickylb { map, .. } => match map.get(&stick_key(cookie)?, 0) {
                Ok(_) => Ok(true),
                Err(aya::maps::MapError::KeyNotFound) => Ok(false),
                Err(error) => Err(error).context("looking up a key in the pinned table"),
            },
            Self::Haproxy(cli) => {
                let answer = cli.command(&format!("show table {BACKEND_NAME} key {cookie}"))?;
                Ok(answer.lines().any(|line| cli::entry(line).is_some()))
            }
        }
    }

    /// Entries in the table: stickylb's count from its `/metrics` (read through `probe`, in
    /// the client's namespace), HAProxy's from `show table`.
    pub(crate) fn count(&mut self, probe: &Prober) -> anyhow::Result<u64> {
        match self {
            Self::Stickylb { node, .. } => {
                let (status, metrics) = probe.get(addrs::monitor(*node), "/metrics", None)?;
                if status != 200 {
                    bail!("node {node}'s /metrics answered {status}");
                }
                metric_value(&metrics, "stickylb_backend_table_entries")
                    .context("no stickylb_backend_table_entries in /metrics")
            }
            Self::Haproxy(cli) => {
                let answer = cli.command("show table")?;
                scale::haproxy_table_used(&answer, BACKEND_NAME)
                    .with_context(|| format!("unexpected `show table` answer: {answer}"))
            }
        }
    }

    /// Every entry: cookie -> server.
    pub(crate) fn dump(&mut self) -> anyhow::Result<Dump> {
        match self {
            Self::Stickylb { map, .. } => {
                let backend = backend_id(BACKEND_NAME);
                let mut dump = Dump::new();
                for item in map.iter() {
                    let (key, entry) = item.context("reading the pinned table")?;
                    if key.backend_id == backend {
                        dump.insert(field_text(&key.cookie), field_text(&entry.server));
                    }
                }
                Ok(dump)
            }
            Self::Haproxy(cli) => {
                let answer = cli.command(&format!("show table {BACKEND_NAME}"))?;
                Ok(answer.lines().filter_map(cli::entry).collect())
            }
        }
    }
}

/// stickylb's key for `cookie` in the bench's backend. The bench's cookies are short, so they
/// are stored verbatim (NUL-padded); longer ones would be a digest (`docs/TABLE.md`).
fn stick_key(cookie: &str) -> anyhow::Result<StickKey> {
    let bytes = cookie.as_bytes();
    if bytes.len() >= COOKIE_LEN {
        bail!("cookie {cookie:?} is too long to look up verbatim");
    }
    let mut key = StickKey {
        backend_id: backend_id(BACKEND_NAME),
        cookie: [0; COOKIE_LEN],
    };
    key.cookie[..bytes.len()].copy_from_slice(bytes);
    Ok(key)
}

/// A backend's id in stickylb's keys: FNV-1a (32 bit) of its name (`lb-common`'s `StickKey`).
fn backend_id(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

fn field_text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::{backend_id, field_text, stick_key};

    #[test]
    fn keys_are_stickylbs() {
        assert_eq!(backend_id("a"), 0xe40c_292c);
        let key = stick_key("abc").unwrap();
        assert_eq!(field_text(&key.cookie), "abc");
        assert!(stick_key(&"x".repeat(44)).is_err());
    }
}
