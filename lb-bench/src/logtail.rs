//! Following a child's stderr: every line goes to a log file (kept for diagnosis) and to a
//! channel, so the bench can wait for a line ("stickylb started") without polling a file.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Read, Write as _},
    path::{Path, PathBuf},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::procs;

pub(super) struct LogTail {
    lines: Receiver<String>,
    path: PathBuf,
}

impl LogTail {
    /// Copies `stream` line by line into `path` (appending) from a thread of its own.
    pub(super) fn follow(stream: impl Read + Send + 'static, path: &Path) -> anyhow::Result<Self> {
        let mut file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("could not open {}", path.display()))?;
        let (sender, lines) = mpsc::channel();
        thread::Builder::new()
            .name("bench-log".into())
            .spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(file, "{line}");
                    // The receiver may be gone: the file still gets the line.
                    let _ = sender.send(line);
                }
            })
            .context("could not start a log thread")?;
        Ok(Self {
            lines,
            path: path.to_owned(),
        })
    }

    /// Waits up to `limit` for a line containing `needle` and returns it.
    pub(super) fn wait_for(&self, needle: &str, limit: Duration) -> anyhow::Result<String> {
        let end = Instant::now() + limit;
        loop {
            procs::check_interrupted()?;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no `{needle}` within {limit:?}; log {}:\n{}",
                    self.path.display(),
                    self.tail()
                );
            }
            match self.lines.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!(
                    "the process exited before logging `{needle}`; log {}:\n{}",
                    self.path.display(),
                    self.tail()
                ),
            }
        }
    }

    /// The last lines of the log, for error messages.
    pub(super) fn tail(&self) -> String {
        let text = fs::read_to_string(&self.path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}
