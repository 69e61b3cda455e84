//! What the demo started, and taking it all down again: at the end, on an error, on SIGINT or
//! SIGTERM, and for `--down` (also after `--keep`, from another run).
//!
//! One lock orders the two threads that may act: the main thread holds it while it creates
//! anything (namespaces, processes), the signal thread while it takes everything down. The
//! signal thread raises [`INTERRUPTED`] before it waits for the lock, so whatever the main
//! thread would create afterwards is refused rather than left behind.

use std::{
    ffi::OsStr,
    fs, io,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{self, Child, Command, ExitStatus},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, MutexGuard, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};

use super::{files::Paths, topology, Lb};
use crate::process::alive;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The demo's children that are not reaped yet, so that their pids cannot be reused: a
/// zombie's pid stays taken until it is waited for.
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// The default pin root and control sockets of the demo's instances: `demo/stickylb.toml`
/// leaves both at their defaults.
const PIN_ROOT: &str = "/sys/fs/bpf/stickylb";
const RUN_DIR: &str = "/run/stickylb";

/// How long the demo's processes get to stop on SIGTERM before SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(3);

fn children() -> MutexGuard<'static, Vec<Child>> {
    CHILDREN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Blocks SIGINT and SIGTERM in this (the main) thread, which every later thread inherits, and
/// starts the one thread that waits for them: it takes the demo down and exits with 130.
/// Children inherit the mask (std keeps it across exec): start them with [`command`].
pub(super) fn handle_interrupts(paths: Paths) -> anyhow::Result<()> {
    // SAFETY: sigset_t is plain data that sigemptyset initializes before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid; pthread_sigmask only
    // changes this thread's mask.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc)).context("could not block SIGINT/SIGTERM");
    }
    thread::Builder::new()
        .name("demo-signals".into())
        .spawn(move || {
            let mut signal = 0;
            // SAFETY: `set` is initialized and `signal` is a valid out pointer.
            let rc = unsafe { libc::sigwait(&set, &mut signal) };
            INTERRUPTED.store(true, Ordering::SeqCst);
            let name = if signal == libc::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            if rc == 0 {
                eprintln!("\n==> demo: {name}: taking the demo down");
            }
            match down(&paths) {
                Ok(removed) => report_down(&removed),
                Err(error) => eprintln!("error: {error:#}"),
            }
            process::exit(130);
        })
        .context("could not start the signal thread")?;
    Ok(())
}

/// When the demo was interrupted, waits for the signal thread to finish taking it down and
/// exit with 130: for the main thread after a failure (a child killed by the same Ctrl-C), or
/// before it prints what a torn-down demo did.
pub(super) fn settle_if_interrupted() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        // The signal thread exits the process when it is done.
        loop {
            thread::sleep(Duration::from_secs(1));
        }
    }
}

/// A command whose process starts with no signal blocked: the daemons must stop on SIGTERM,
/// a build or a script on Ctrl-C, whatever the mask of the thread that starts them.
pub(super) fn command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    unblock_signals(&mut command);
    command
}

/// Makes `command`'s process start with no signal blocked (see [`command`]).
pub(super) fn unblock_signals(command: &mut Command) {
    // SAFETY: the hook runs between fork and exec and only calls sigemptyset and
    // pthread_sigmask, which are async-signal-safe, on a set on its own stack.
    unsafe {
        command.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            match libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) {
                0 => Ok(()),
                rc => Err(io::Error::from_raw_os_error(rc)),
            }
        });
    }
}

fn refuse_if_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs `create` unless the demo is being taken down, and never at the same time.
pub(super) fn guarded<T>(create: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let _children = children();
    refuse_if_interrupted()?;
    create()
}

/// Starts `command` and keeps its handle until it exits; returns its pid.
pub(super) fn spawn(command: &mut Command) -> anyhow::Result<u32> {
    let mut children = children();
    refuse_if_interrupted()?;
    let child = command.spawn()?;
    let pid = child.id();
    children.push(child);
    Ok(pid)
}

/// Waits up to `limit` for process `pid` to end; returns its exit status when it was our
/// child (reaping it), `None` when it was not.
pub(super) fn wait_exit(pid: u32, limit: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = poll_exit(&mut children(), pid) {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            bail!("pid {pid} still runs after {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// `None` while `pid` runs; once it ended, its exit status if it was our child (now reaped).
fn poll_exit(children: &mut Vec<Child>, pid: u32) -> Option<Option<ExitStatus>> {
    let Some(child) = children.iter_mut().find(|child| child.id() == pid) else {
        return (!alive(pid)).then_some(None);
    };
    let ended = match child.try_wait() {
        Ok(None) => return None,
        Ok(Some(status)) => Some(status),
        // Not waitable (already reaped elsewhere): it is gone.
        Err(_) => None,
    };
    children.retain(|child| child.id() != pid);
    Some(ended)
}

pub(super) fn signal(pid: u32, signal: libc::c_int) -> anyhow::Result<()> {
    let raw = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(raw, signal) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ESRCH) {
            return Err(error).with_context(|| format!("could not signal pid {pid}"));
        }
    }
    Ok(())
}

/// Removes every trace of the demo, whatever state it is in; returns what it removed. Safe to
/// run any number of times.
pub(super) fn down(paths: &Paths) -> anyhow::Result<Vec<String>> {
    let mut children = children();
    let mut removed = Vec::new();
    let mut pids = Vec::new();
    if let Some(pid) = paths.running_forwarder() {
        pids.push(pid);
        removed.push(format!("port forwarder (pid {pid})"));
    }
    pids.extend(children.iter().map(Child::id));
    for ns in topology::NAMESPACES {
        pids.extend(topology::pids_in(ns)?);
    }
    pids.sort_unstable();
    pids.dedup();
    stop_all(&mut children, &pids)?;
    if !pids.is_empty() {
        removed.push(format!("{} processes", pids.len()));
    }
    topology::remove(&mut removed)?;
    for lb in Lb::ALL {
        let pins = Path::new(PIN_ROOT).join(lb.name());
        if pins.exists() {
            fs::remove_dir_all(&pins)
                .with_context(|| format!("could not remove the pins {}", pins.display()))?;
            removed.push(format!("pinned table {}", pins.display()));
        }
        let socket = Path::new(RUN_DIR).join(format!("{}.sock", lb.name()));
        if socket.exists() {
            fs::remove_file(&socket)
                .with_context(|| format!("could not remove {}", socket.display()))?;
            removed.push(format!("control socket {}", socket.display()));
        }
    }
    paths.remove_pid_files()?;
    Ok(removed)
}

/// SIGTERM to all (the daemons flush and stop), SIGKILL to what is left after
/// [`STOP_LIMIT`].
fn stop_all(children: &mut Vec<Child>, pids: &[u32]) -> anyhow::Result<()> {
    for &pid in pids {
        signal(pid, libc::SIGTERM)?;
    }
    let deadline = Instant::now() + STOP_LIMIT;
    let mut left: Vec<u32> = pids.to_vec();
    while !left.is_empty() {
        left.retain(|&pid| poll_exit(children, pid).is_none());
        if Instant::now() >= deadline {
            for &pid in &left {
                signal(pid, libc::SIGKILL)?;
            }
            thread::sleep(Duration::from_millis(100));
            left.retain(|&pid| poll_exit(children, pid).is_none());
            if !left.is_empty() {
                return Err(anyhow!("processes {left:?} survived SIGKILL"));
            }
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

pub(super) fn report_down(removed: &[String]) {
    if removed.is_empty() {
        println!("demo: nothing to remove");
    } else {
        println!("demo: removed {}", removed.join(", "));
    }
}

/// Takes the demo down when dropped (an error or a panic on the way), unless disarmed
/// (`--keep`) or finished explicitly.
pub(super) struct Teardown {
    paths: Option<Paths>,
}

impl Teardown {
    pub(super) fn arm(paths: Paths) -> Teardown {
        Teardown { paths: Some(paths) }
    }

    /// Leaves everything up.
    pub(super) fn disarm(mut self) {
        self.paths = None;
    }

    /// Takes the demo down now, reporting a failure as an error.
    pub(super) fn finish(mut self) -> anyhow::Result<()> {
        match self.paths.take() {
            Some(paths) => down(&paths).map(|removed| report_down(&removed)),
            None => Ok(()),
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(paths) = self.paths.take() {
            settle_if_interrupted();
            eprintln!("==> demo: failed; taking the demo down");
            if let Err(error) = down(&paths) {
                eprintln!("error: could not take the demo down: {error:#}");
            }
        }
    }
}
