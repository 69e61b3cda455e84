//! HAProxy's stats socket in interactive mode (`prompt`): one connection for many commands, so
//! polling a key every millisecond costs a round trip, not a connection.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};

/// What HAProxy prints after each answer in interactive mode.
const PROMPT: &[u8] = b"\n> ";

pub(super) struct Cli {
    path: PathBuf,
    stream: UnixStream,
    buffer: Vec<u8>,
}

impl Cli {
    pub(super) fn connect(path: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("could not connect to {}", path.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut cli = Self {
            path: path.to_owned(),
            stream,
            buffer: Vec::with_capacity(64 * 1024),
        };
        cli.command("prompt")?;
        Ok(cli)
    }

    /// Sends `command` and returns its answer (without the prompt).
    pub(super) fn command(&mut self, command: &str) -> anyhow::Result<String> {
        self.stream
            .write_all(format!("{command}\n").as_bytes())
            .with_context(|| format!("sending `{command}` to {}", self.path.display()))?;
        self.buffer.clear();
        let mut chunk = [0u8; 64 * 1024];
        while !self.buffer.ends_with(PROMPT) {
            let n = self
                .stream
                .read(&mut chunk)
                .with_context(|| format!("reading the answer to `{command}`"))?;
            if n == 0 {
                bail!("{} closed during `{command}`", self.path.display());
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
        let answer = &self.buffer[..self.buffer.len() - PROMPT.len()];
        Ok(String::from_utf8_lossy(answer).into_owned())
    }
}

/// `(key, server)` of an entry line of `show table`:
/// `0x55..: key=abc use=0 exp=1799800 server_id=1 server_key=be1`. The server is its name
/// (`server_key`), or `#<id>` when HAProxy has no name for it.
pub(super) fn entry(line: &str) -> Option<(String, String)> {
    let mut key = None;
    let (mut id, mut name) = (None, None);
    for field in line.split_whitespace() {
        if let Some(value) = field.strip_prefix("key=") {
            key = Some(value);
        } else if let Some(value) = field.strip_prefix("server_id=") {
            id = Some(value);
        } else if let Some(value) = field.strip_prefix("server_key=") {
            name = Some(value).filter(|v| *v != "-");
        }
    }
    let server = match (name, id) {
        (Some(name), _) => name.to_owned(),
        (None, Some(id)) => format!("#{id}"),
        (None, None) => return None,
    };
    Some((key?.to_owned(), server))
}

#[cfg(test)]
mod tests {
    use super::entry;
    use crate::scale::haproxy_table_used as table_used;

    #[test]
    fn reads_show_table_answers() {
        let answer = "# table: web, type: string, size:1048576, used:2\n\
            0x5639696df4c0: key=abc use=0 exp=1799800 server_id=1 server_key=be1\n\
            0x5639696df4c8: key=def use=0 exp=1799800 server_id=2 server_key=-\n";
        assert_eq!(table_used(answer, "web"), Some(2));
        let entries: Vec<_> = answer.lines().filter_map(entry).collect();
        assert_eq!(
            entries,
            [
                ("abc".to_owned(), "be1".to_owned()),
                ("def".to_owned(), "#2".to_owned())
            ]
        );
    }
}
