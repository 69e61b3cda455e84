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
//! system call, where every access line used to cost a `write(2)` on the request's path. And
//! [`Lines`] formats the access line itself, the one line per request, to the same bytes as
//! the subscriber's own format but without its general machinery.

use std::{
    cell::RefCell,
    fmt,
    io::{self, Write},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use tracing::{field::Field, Event, Level, Subscriber};
use tracing_subscriber::{
    field::{Visit, VisitOutput as _},
    fmt::{
        format::{DefaultVisitor, Format, Full, Writer as FmtWriter},
        time::SystemTime,
        FmtContext, FormatEvent, FormatFields, MakeWriter,
    },
    registry::LookupSpan,
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

/// What a buffer keeps between bursts.
const KEPT_CAPACITY: usize = 64 * 1024;

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
        let mut batch = Vec::with_capacity(KEPT_CAPACITY);
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
            // A burst grows the buffers to [`CAPACITY`]; quiet times give the memory back.
            if batch.capacity() > KEPT_CAPACITY && batch.len() < KEPT_CAPACITY / 4 {
                batch = Vec::with_capacity(KEPT_CAPACITY);
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
    let mut head = String::new();
    // Writing to a String cannot fail.
    let _ = write_timestamp(&mut FmtWriter::new(&mut head));
    head.push_str(level_column(&Level::WARN));
    let _ = writeln!(
        batch,
        "{head}{dropped} log lines dropped: standard error was read slower than the load \
         balancer wrote (the traffic did not wait for it)"
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

/// The subscriber's line format (`tracing_subscriber`'s full format without the target), with
/// the access line, one per request, written by hand: the same bytes, for about half the CPU
/// (the general format pays for styles even when they are off, a calendar conversion per line,
/// and `Debug` for every quoted value). Any other line, a line inside a span, and any line on a
/// terminal (with colours) go to the general format.
pub struct Lines {
    general: Format<Full, SystemTime>,
}

impl Lines {
    pub fn new() -> Lines {
        Lines {
            general: tracing_subscriber::fmt::format().with_target(false),
        }
    }
}

impl Default for Lines {
    fn default() -> Self {
        Lines::new()
    }
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: FmtWriter<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != "access" || writer.has_ansi_escapes() || ctx.event_scope().is_some() {
            return self.general.format_event(ctx, writer, event);
        }
        #[cfg(test)]
        tests::BY_HAND.fetch_add(1, Relaxed);
        write_timestamp(&mut writer)?;
        writer.write_str(level_column(meta.level()))?;
        let mut fields = Fields {
            writer: writer.by_ref(),
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The level as the general format pads it, with the space after it.
fn level_column(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE ",
        Level::DEBUG => "DEBUG ",
        Level::INFO => " INFO ",
        Level::WARN => " WARN ",
        Level::ERROR => "ERROR ",
    }
}

thread_local! {
    /// The second last formatted on this thread and its text up to the fraction
    /// (`2026-12-05T00:41:07.`): lines of the same second reuse it.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ ` in UTC, as `tracing_subscriber`'s `SystemTime` writes it;
/// as there, a clock before 1970 writes `<unknown time> ` (no reason to lose the line).
fn write_timestamp(writer: &mut FmtWriter<'_>) -> fmt::Result {
    let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
        return writer.write_str("<unknown time> ");
    };
    let secs = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            cached.1.clear();
            calendar_second(&mut cached.1, secs);
            cached.0 = secs;
        }
        let mut digits = [b'0'; 6];
        write_padded(&mut digits, u64::from(since.subsec_micros()));
        // Six ASCII digits.
        let micros = std::str::from_utf8(&digits).unwrap_or("000000");
        writer.write_str(&cached.1)?;
        writer.write_str(micros)?;
        writer.write_str("Z ")
    })
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SS.` (the proleptic Gregorian calendar, days
/// to civil date by eras of 400 years).
fn calendar_second(out: &mut String, secs: u64) {
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    // Days from 0000-03-01, so that the leap day ends a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60
    );
}

/// `value`'s last `digits.len()` decimal digits, zero-padded.
fn write_padded(digits: &mut [u8], mut value: u64) {
    for digit in digits.iter_mut().rev() {
        // A digit: value % 10 < 10.
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The access line's fields, `name=value` separated by spaces, as the general format writes
/// them: strings quoted and escaped as `Debug` does, numbers plain, `%` values by `Display`.
/// The rare kinds (a message, an error, a float) go to the general visitor.
struct Fields<'w> {
    writer: FmtWriter<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_> {
    /// Starts `name=`, after a space unless it is the first field; `false` when the field is
    /// one the general visitor must write.
    fn start(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name == "message" || name.starts_with("r#") || name.starts_with("log.") {
            return false;
        }
        if self.result.is_ok() {
            let pad = if self.first { "" } else { " " };
            self.first = false;
            self.result = self
                .writer
                .write_str(pad)
                .and_then(|()| self.writer.write_str(name))
                .and_then(|()| self.writer.write_char('='));
        }
        true
    }

    fn general(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.first);
        record(&mut visitor);
        self.result = visitor.finish();
        // The general visitor skips `log.` fields without a space; any other field it wrote.
        self.first = false;
    }

    /// A number or a bool, as `Debug` writes it (the same as `Display` for these).
    fn plain_value(&mut self, value: impl fmt::Display) {
        if self.result.is_ok() {
            self.result = write!(self.writer, "{value}");
        }
    }

    fn write(&mut self, text: &str) {
        if self.result.is_ok() {
            self.result = self.writer.write_str(text);
        }
    }
}

/// Whether `Debug` would write `text` between quotes as it is: printable ASCII without `"`
/// or `\`.
fn plain(text: &str) -> bool {
    text.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.start(field) {
            return self.general(|v| v.record_str(field, value));
        }
        if plain(value) {
            self.write("\"");
            self.write(value);
            self.write("\"");
        } else if self.result.is_ok() {
            self.result = write!(self.writer, "{value:?}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !self.start(field) {
            return self.general(|v| v.record_u64(field, value));
        }
        self.plain_value(value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if !self.start(field) {
            return self.general(|v| v.record_i64(field, value));
        }
        self.plain_value(value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if !self.start(field) {
            return self.general(|v| v.record_bool(field, value));
        }
        self.plain_value(value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.general(|v| v.record_f64(field, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.general(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.start(field) {
            return self.general(|v| v.record_debug(field, value));
        }
        if self.result.is_ok() {
            self.result = write!(self.writer, "{value:?}");
        }
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

    /// Access lines [`Lines`] wrote by hand (the test below must not pass on the general
    /// format alone).
    pub(super) static BY_HAND: AtomicU64 = AtomicU64::new(0);

    /// Captures what a subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .expect("not poisoned")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Access lines of every kind the proxy writes, with values that need escaping, and lines
    /// that are not access lines.
    fn events() {
        let client: std::net::SocketAddr = "10.0.0.9:40000".parse().expect("an address");
        let frontend: Arc<str> = Arc::from("www");
        tracing::info!(
            target: "access",
            frontend = %frontend,
            backend = %"web",
            server = %"be1",
            status = 200u16,
            ms = 3u64,
            decision = "sticky",
            client = %client,
            method = %"GET",
            path = "/a\"b\\c\nd\u{e9}\u{7}",
            relay = "pooled",
            tls = "1.3",
            alpn = "h2",
        );
        tracing::warn!(
            target: "access",
            frontend = %frontend,
            status = "-",
            below = -5i64,
            big = u64::MAX,
            zero = 0u64,
            spliced = true,
            error = %"connection refused: os error 111",
            "relayed exchange failed; closing"
        );
        let error = io::Error::other("boom");
        tracing::debug!(
            target: "access",
            error = &error as &(dyn std::error::Error + 'static),
            ratio = 0.5f64,
            r#type = "x",
            "a message\twith a tab"
        );
        tracing::info!(path = "/x", "not an access line");
        tracing::error!(target: "access", "only a message");
    }

    /// The access line written by hand is the general format's, byte for byte (but the time).
    #[test]
    fn the_access_line_is_the_general_formats_line() {
        fn capture<S: Subscriber + Send + Sync + 'static>(
            subscriber: impl FnOnce(Capture) -> S,
        ) -> String {
            let out = Capture::default();
            tracing::subscriber::with_default(subscriber(out.clone()), events);
            let text = out.0.lock().expect("not poisoned").clone();
            String::from_utf8(text).expect("utf-8")
        }
        let builder = |out: Capture| {
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || out.clone())
        };
        let general = capture(|out| builder(out).with_target(false).finish());
        let before = BY_HAND.load(Relaxed);
        let by_hand = capture(|out| builder(out).event_format(Lines::new()).finish());
        // The four access lines outside a span, with no colours.
        assert_eq!(BY_HAND.load(Relaxed) - before, 4);
        let general: Vec<&str> = general.lines().collect();
        let by_hand: Vec<&str> = by_hand.lines().collect();
        assert_eq!(general.len(), 5, "{general:?}");
        assert_eq!(by_hand.len(), general.len(), "{by_hand:?}");
        for (hand, gen) in by_hand.iter().zip(&general) {
            // `2026-12-05T00:41:07.123456Z` then the rest.
            let (hand_time, hand_rest) = hand.split_at(27);
            let (gen_time, gen_rest) = gen.split_at(27);
            assert_eq!(hand_rest, gen_rest);
            assert_eq!(hand_time.len(), gen_time.len());
            assert!(
                hand_time.ends_with('Z') && hand_time.as_bytes()[10] == b'T',
                "{hand}"
            );
        }
        let path = format!(" path={:?} ", "/a\"b\\c\nd\u{e9}\u{7}");
        assert!(by_hand[0].contains(&path), "{}", by_hand[0]);
    }

    /// Dates across leap days, centuries and now, as the general format's clock writes them.
    #[test]
    fn the_calendar_is_the_general_formats_calendar() {
        let day = |secs: u64| {
            let mut out = String::new();
            calendar_second(&mut out, secs);
            out
        };
        assert_eq!(day(0), "1970-01-01T00:00:00.");
        assert_eq!(day(951_782_400), "2000-02-29T00:00:00.");
        assert_eq!(day(951_868_800), "2000-03-01T00:00:00.");
        assert_eq!(day(4_107_542_399), "2100-02-28T23:59:59.");
        assert_eq!(day(4_107_542_400), "2100-03-01T00:00:00.");
        assert_eq!(day(1_798_761_599), "2026-12-31T23:59:59.");
        assert_eq!(day(1_709_164_800), "2024-02-29T00:00:00.");
        // Now, against the general clock (again if a second began between the two readings).
        let matched = (0..3).any(|_| {
            let mut general = String::new();
            let _ = tracing_subscriber::fmt::time::FormatTime::format_time(
                &SystemTime,
                &mut FmtWriter::new(&mut general),
            );
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs();
            general.starts_with(&day(secs))
        });
        assert!(matched);
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
