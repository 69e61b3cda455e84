//! Following a child's stderr: every line goes to a log file (kept for diagnosis) and to a
//! channel, so the bench can wait for a line ("stickylb started") without polling a file.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, BufWriter, Read, Write as _},
    path::{Path, PathBuf},
    sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::procs;

/// Lines waiting for [`LogTail::wait_for`]; later ones only go to the file.
const KEPT_LINES: usize = 1024;

pub(super) struct LogTail {
    lines: Receiver<String>,
    path: PathBuf,
}

impl LogTail {
    /// Copies `stream` line by line into `path` (appending) from a thread of its own.
    ///
    /// With `--access-log` that is a line per request: the file is written in batches (flushed
    /// whenever the stream has nothing more to read, so a failure's tail is complete), and
    /// only the first lines are kept for [`LogTail::wait_for`], which looks for start-up lines.
    pub(super) fn follow(stream: impl Read + Send + 'static, path: &Path) -> anyhow::Result<Self> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("could not open {}", path.display()))?;
        let (sender, lines) = mpsc::sync_channel(KEPT_LINES);
        thread::Builder::new()
            .name("bench-log".into())
            .spawn(move || copy_lines(stream, file, &sender))
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

fn copy_lines(stream: impl Read, file: File, sender: &SyncSender<String>) {
    let mut reader = BufReader::new(stream);
    let mut file = BufWriter::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches('\n');
        let _ = writeln!(file, "{text}");
        // Full or gone: the file still gets the line.
        let _ = sender.try_send(text.to_owned());
        if reader.buffer().is_empty() {
            let _ = file.flush();
        }
    }
    let _ = file.flush();
}
