//! The processes the bench starts: spawning them so they die with us, waiting without missing
//! a Ctrl-C, stopping them, and reading their CPU time and memory from `/proc`.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use netns_kit::{describe, NetNs};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Relaxed);
}

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// While alive, SIGINT, SIGTERM and SIGHUP only set a flag that the bench checks between and
/// during its steps, so that it stops and cleans up (namespaces, pinned maps) instead of dying
/// with them in place. The children started from a terminal get the terminal's Ctrl-C too.
pub(super) struct SignalGuard(());

impl SignalGuard {
    pub(super) fn install() -> Self {
        INTERRUPTED.store(false, Relaxed);
        for signal in SIGNALS {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe {
                libc::signal(
                    signal,
                    on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
                )
            };
        }
        Self(())
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for signal in SIGNALS {
            // SAFETY: restoring the default disposition has no preconditions.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
}

/// Fails once the user asked us to stop.
pub(super) fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `duration`, waking early (with an error) when interrupted.
pub(super) fn sleep(duration: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + duration;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Starts `command` so that it is killed if we die without cleaning up (`PR_SET_PDEATHSIG`).
pub(super) fn spawn(command: &mut Command) -> anyhow::Result<Child> {
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("could not start `{}`", describe(command)))
}

/// Starts `binary` (a `stickylb-backend`) in `netns` with one `--listen ADDR:PORT=NAME` per
/// item of `listens`, its stderr in `log`, and waits for the `ready` line it prints once every
/// listener is bound. `what` names the backends in the error, which carries the log.
pub(super) fn start_backend_server(
    netns: &NetNs,
    binary: &Path,
    listens: impl IntoIterator<Item = String>,
    log: &Path,
    what: &str,
) -> anyhow::Result<Child> {
    let mut command = netns.command(binary);
    for listen in listens {
        command.arg("--listen").arg(listen);
    }
    let stderr =
        fs::File::create(log).with_context(|| format!("could not create {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = spawn(&mut command)?;
    let mut first_line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut first_line);
    }
    if first_line.trim() != "ready" {
        kill(&mut child);
        bail!(
            "{what} did not start:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
    }
    Ok(child)
}

/// Waits for `child` at most `limit`; kills it (and fails) when the limit passes or when we are
/// interrupted.
pub(super) fn wait(child: &mut Child, limit: Duration, what: &str) -> anyhow::Result<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().context("waitpid")? {
            return Ok(status);
        }
        if let Err(error) = check_interrupted() {
            kill(child);
            return Err(error);
        }
        if Instant::now() >= end {
            kill(child);
            bail!("{what} did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Sends SIGTERM and waits up to `limit` for the exit, then SIGKILL. Returns how long it took.
pub(super) fn terminate(child: &mut Child, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    if child.try_wait().context("waitpid")?.is_none() {
        signal(child.id(), libc::SIGTERM);
        let end = started + limit;
        while child.try_wait().context("waitpid")?.is_none() {
            if Instant::now() >= end {
                kill(child);
                bail!("process {} ignored SIGTERM for {limit:?}", child.id());
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(started.elapsed())
}

/// SIGKILL and reap; for cleanup, so errors are ignored.
pub(super) fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub(super) fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions; a stale pid only fails.
        unsafe { libc::kill(pid, signal) };
    }
}

/// User plus system CPU time of every thread of `pid` so far, in seconds.
pub(super) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    let ticks = parse_cpu_ticks(&stat).with_context(|| format!("unexpected format of {path}"))?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if per_second <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(ticks as f64 / per_second as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line; the command name (field 2) may
/// hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
pub(super) fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    parse_status_kib(&status, field)
        .map(|kib| kib * 1024)
        .with_context(|| format!("no {field} in {path}"))
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::{parse_cpu_ticks, parse_status_kib};

    #[test]
    fn reads_utime_and_stime_after_an_awkward_command_name() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1041 0 0 0 250 17 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(267));
        assert_eq!(parse_cpu_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn reads_kib_fields_of_status() {
        let status = "Name:\tstickylb\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }
}
