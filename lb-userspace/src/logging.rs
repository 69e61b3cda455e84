//! The log's way out of the process: the lines the workers format go into a bounded buffer in
//! memory, and one thread of its own writes them to standard error.
//!
//! Why not write each line where it is made: a write to standard error blocks while the
//! reader on the other end (journald, a container runtime, a log shipper, a terminal paused
//! with ^S) does not read. With a line per request, a worker that blocks there stops every
//! connection it serves, and soon the whole load balancer stops answering because its log
//! reader is slow. Here a worker only copies its line into the buffer; when the buffer is
//! full the line is dropped and counted (`stickylb_log_lines_dropped_total`), and once the
//! reader catches up the log says how many were lost. Traffic never waits for the log.
//!
//! It is also cheaper: the thread writes whatever accumulated while it was writing in one
//! system call, where every access line used to cost a `write(2)` on the request's path.

use std::{
    io::{self, Write},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use tracing_subscriber::fmt::{
    format::Writer as FmtWriter,
    time::{FormatTime, SystemTime},
    MakeWriter,
};

/// Lines waiting for the writer, in bytes. An access line is about 200 bytes, so this holds
/// some 20 000 requests' lines: a reader that stalls for a fraction of a second at 100 000
/// requests per second loses nothing.
pub const CAPACITY: usize = 4 << 20;

/// How long the process waits at exit for its last lines to be written, before it gives up on
/// a reader that does not read.
const EXIT_WAIT: Duration = Duration::from_secs(3);

/// After a write, the writer lets lines gather this long before the next one: a busy process
/// writes its lines in batches, a write every few milliseconds, instead of waking the writer
/// (a `futex` and a context switch) and writing for every line. A quiet process's line is
/// written at once.
const GATHER: Duration = Duration::from_millis(5);

/// Lines dropped because the buffer was full or the write failed, since the process started
/// (for `/metrics`).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines this process dropped: its buffer was full because the reader of standard error
/// was slower than the traffic, or the write failed (the reader is gone).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Relaxed)
}

/// The writer side, which `tracing_subscriber` formats into: [`Output::sink`].
#[derive(Clone)]
pub struct Sink(Arc<Shared>);

/// The writing thread. Dropping it writes what is left (waiting at most [`EXIT_WAIT`]).
pub struct Output {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// The writer waits here for lines (or for the end).
    pending: Condvar,
    /// The process waits here at exit for the writer to finish.
    finished: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct State {
    lines: Vec<u8>,
    /// Dropped for a full buffer since the writer last said so.
    dropped: u64,
    /// The writer sleeps on `pending` until a line wakes it (it does not when busy).
    idle: bool,
    closing: bool,
    done: bool,
}

impl Output {
    /// Starts the thread that writes to standard error.
    pub fn to_stderr() -> io::Result<Output> {
        Output::start(io::stderr(), CAPACITY)
    }

    /// Starts the thread that writes the buffered lines (at most `capacity` bytes) to `out`.
    pub fn start(out: impl Write + Send + 'static, capacity: usize) -> io::Result<Output> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            pending: Condvar::new(),
            finished: Condvar::new(),
            capacity,
        });
        let writer = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("stickylb-log".into())
            .spawn(move || writer.write_out(out))?;
        Ok(Output {
            shared,
            thread: Some(thread),
        })
    }

    /// What the subscriber writes into.
    pub fn sink(&self) -> Sink {
        Sink(Arc::clone(&self.shared))
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closing = true;
        self.shared.pending.notify_one();
        let (state, waited) = self
            .shared
            .finished
            .wait_timeout_while(state, EXIT_WAIT, |state| !state.done)
            .unwrap_or_else(PoisonError::into_inner);
        let done = state.done;
        drop(state);
        // A writer still blocked in `write` after the wait stays behind: the process is ending,
        // and a reader that does not read must not keep it alive.
        if done && !waited.timed_out() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain bytes behind, still worth writing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one formatted event (the subscriber writes each whole, in one call), or counts it
    /// dropped when it does not fit: a line is kept whole or not at all.
    fn push(&self, line: &[u8]) {
        let mut state = self.lock();
        if state.lines.len() + line.len() > self.capacity {
            state.dropped += 1;
            DROPPED.fetch_add(1, Relaxed);
            return;
        }
        state.lines.extend_from_slice(line);
        // Only a line that finds the writer asleep wakes it; a busy writer comes back by
        // itself.
        let wake = std::mem::replace(&mut state.idle, false);
        drop(state);
        if wake {
            self.pending.notify_one();
        }
    }

    /// The writer thread: swaps the buffer out, writes it, and says how many lines were
    /// dropped meanwhile, until the process ends.
    fn write_out(&self, mut out: impl Write) {
        let mut batch = Vec::with_capacity(64 * 1024);
        loop {
            let (dropped, closing) = {
                let mut state = self.lock();
                while state.lines.is_empty() && state.dropped == 0 && !state.closing {
                    state.idle = true;
                    state = self
                        .pending
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                state.idle = false;
                std::mem::swap(&mut state.lines, &mut batch);
                (std::mem::take(&mut state.dropped), state.closing)
            };
            if dropped > 0 {
                dropped_notice(&mut batch, dropped);
            }
            if !batch.is_empty() && (out.write_all(&batch).and_then(|()| out.flush())).is_err() {
                // The reader is gone (EPIPE) or the file failed: these lines are lost too.
                // Nothing is said about it, since saying it would fail the same way.
                let lines = batch.iter().filter(|&&b| b == b'\n').count();
                DROPPED.fetch_add(lines as u64, Relaxed);
            }
            batch.clear();
            if closing {
                if self.lock().lines.is_empty() {
                    break;
                }
            } else {
                thread::sleep(GATHER);
            }
        }
        let mut state = self.lock();
        state.done = true;
        self.finished.notify_all();
    }
}

/// The line that says lines were lost, in the subscriber's format (a warning).
fn dropped_notice(batch: &mut Vec<u8>, dropped: u64) {
    let mut time = String::new();
    // Formatting the clock into a String cannot fail; a missing time is still a notice.
    let _ = SystemTime.format_time(&mut FmtWriter::new(&mut time));
    let _ = writeln!(
        batch,
        "{time}  WARN {dropped} log lines dropped: standard error was read slower than the \
         load balancer wrote (the traffic did not wait for it)"
    );
}

/// One event's bytes on their way into the buffer.
pub struct SinkWriter<'a>(&'a Shared);

impl Write for SinkWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.0.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> SinkWriter<'a> {
        SinkWriter(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader};

    use super::*;

    /// A reader that does not read: every line is taken at once, those beyond the buffer are
    /// dropped and counted, and once the reader reads it gets whole lines and the count.
    #[test]
    fn a_reader_that_does_not_read_never_blocks_the_lines_writers() {
        let (reader, writer) = io::pipe().expect("a pipe");
        // 64 KiB in the pipe and 64 KiB in the buffer take about 1 300 of these lines.
        let output = Output::start(writer, 64 * 1024).expect("the log thread");
        let sink = output.sink();
        let total = 10_000;
        let before = dropped_lines();
        for n in 0..total {
            let line = format!("line {n:05} {}\n", "x".repeat(80));
            sink.make_writer()
                .write_all(line.as_bytes())
                .expect("never fails");
        }
        let dropped = dropped_lines() - before;
        assert!(
            dropped > 0 && dropped < total,
            "{dropped} of {total} dropped"
        );
        let reading = thread::spawn(move || {
            BufReader::new(reader)
                .lines()
                .map(|line| line.expect("utf-8 lines"))
                .collect::<Vec<_>>()
        });
        drop(sink);
        drop(output);
        let lines = reading.join().expect("the reader");
        let kept: Vec<&String> = lines.iter().filter(|l| l.starts_with("line ")).collect();
        let notices: Vec<&String> = lines.iter().filter(|l| l.contains("WARN")).collect();
        assert_eq!(lines.len(), kept.len() + notices.len(), "{lines:?}");
        assert_eq!(kept.len() as u64 + dropped, total);
        // Whole lines, in order.
        assert!(kept.iter().all(|l| l.len() == "line 00000 ".len() + 80));
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
        // Each stall the writer sees is said once, with its count; together they are all.
        let said: u64 = notices
            .iter()
            .map(|notice| {
                let count = notice
                    .split(" WARN ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|n| n.parse::<u64>().ok());
                assert!(notice.contains(" log lines dropped: "), "{notice}");
                count.unwrap_or_else(|| panic!("a count in {notice:?}"))
            })
            .sum();
        assert!(!notices.is_empty());
        assert_eq!(said, dropped, "{notices:?}");
    }

    /// At the end every line still in the buffer is written before the process goes.
    #[test]
    fn the_last_lines_are_written_at_exit() {
        let (reader, writer) = io::pipe().expect("a pipe");
        let output = Output::start(writer, CAPACITY).expect("the log thread");
        let sink = output.sink();
        for n in 0..100 {
            sink.make_writer()
                .write_all(format!("last {n}\n").as_bytes())
                .expect("never fails");
        }
        drop(sink);
        drop(output);
        let lines: Vec<String> = BufReader::new(reader)
            .lines()
            .map(|l| l.expect("utf-8"))
            .collect();
        let expected: Vec<String> = (0..100).map(|n| format!("last {n}")).collect();
        assert_eq!(lines, expected);
    }
}
