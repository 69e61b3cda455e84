//! The control socket of a running daemon: `stickylb reload` asks it to re-read its
//! configuration, and an upgrading process (`stickylb run --upgrade`) takes its listening
//! sockets through it, then tells it to stop.
//!
//! Protocol, one text line per request: `reload` -> `ok <summary>` | `error <why>`; `status` ->
//! `stickylb <version> pid <pid> instance <name>`; `takeover` -> one message carrying the
//! listening sockets (`SCM_RIGHTS`) and a JSON line describing them; the successor then sends
//! `ready` once it serves, and we answer `bye` once we stopped accepting and our table writes
//! are flushed. Then we drain and exit. The operator's requests (`server ...`, `table ...`,
//! see [`command`]) -> `ok <what changed>` | `error <why>`.

pub mod command;
pub mod systemd;

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::SocketAddr,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::{fs::FileTypeExt as _, net::UnixStream as StdUnixStream},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::{watch, Notify},
};

use self::command::Operation;
use crate::sys::fds;

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a successor may take between `takeover` and `ready` (loading and adopting maps).
const SUCCESSOR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `status` may take when asking whether a daemon runs: it answers from memory, and
/// one that takes longer is taken for hung (never for stopped).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Request lines are a few words (a cookie value is the longest).
const MAX_LINE: usize = 1024;

/// A listening socket, as handed to a successor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketRole {
    /// `frontend:<name>`, `monitor` or `peers`.
    pub role: String,
    pub addr: SocketAddr,
}

/// The listening sockets a daemon can hand to its successor: duplicates of its own.
#[derive(Default)]
pub struct Handover {
    sockets: Vec<(SocketRole, OwnedFd)>,
}

impl Handover {
    /// Records `fd` (duplicated) as the socket for `role`.
    pub fn add(
        &mut self,
        role: String,
        addr: SocketAddr,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> io::Result<()> {
        self.sockets
            .push((SocketRole { role, addr }, fd.try_clone_to_owned()?));
        Ok(())
    }
}

/// What the control server needs from the daemon.
pub struct Context {
    pub instance: String,
    pub handover: Handover,
    /// Applies the configuration file in place: a summary, or why not.
    pub reload: Box<dyn Fn() -> Result<String, String> + Send + Sync>,
    /// Carries out an operator's request: what changed, or why not.
    pub operate: Box<dyn Fn(Operation) -> Result<String, String> + Send + Sync>,
    /// Asks the daemon to stop (a successor took over).
    pub stop: Arc<Notify>,
    /// Turns true once the daemon stopped accepting and flushed its table writes.
    pub stopped_accepting: watch::Receiver<bool>,
}

/// Why the control socket cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another stickylb instance answers on {path}: {status}; stop it, or start with --upgrade to take over from it")]
    AlreadyRunning { path: PathBuf, status: String },
    #[error("a process listens on the control socket {path} but does not answer: it may be a hung stickylb; stop it first")]
    Unresponsive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind the control socket {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds the control socket at `path`. A stale socket file (no process listens on it) is
/// replaced; a live daemon's is not, unless `replace` (we are its successor), nor one whose
/// process does not answer: replacing it would leave a hung daemon running beside us, holding
/// its maps and links.
pub fn bind(path: &Path, replace: bool) -> Result<UnixListener, BindError> {
    let io_error = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !replace {
            match probe(path) {
                Probe::Nobody => {}
                Probe::Answers(status) => {
                    return Err(BindError::AlreadyRunning {
                        path: path.to_owned(),
                        status,
                    })
                }
                Probe::Unresponsive(source) => {
                    return Err(BindError::Unresponsive {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(io_error)?;
        }
    }
    UnixListener::bind(path).map_err(io_error)
}

/// Answers requests until the daemon stops.
pub async fn serve(listener: UnixListener, context: Arc<Context>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, Arc::clone(&context)));
            }
            Err(error) => {
                tracing::warn!("control socket: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(stream: UnixStream, context: Arc<Context>) {
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        (&mut reader)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
    })
    .await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return;
    }
    let mut stream = reader.into_inner();
    let reply = match line.trim() {
        "status" => format!(
            "stickylb {} pid {} instance {}",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            context.instance
        ),
        "reload" => {
            let context = Arc::clone(&context);
            match tokio::task::spawn_blocking(move || (context.reload)()).await {
                Ok(Ok(summary)) => format!("ok {summary}"),
                Ok(Err(why)) => format!("error {}", why.replace('\n', "; ")),
                Err(_) => "error the reload task failed".to_owned(),
            }
        }
        "takeover" => return hand_over(stream, &context).await,
        other => match Operation::parse(other) {
            Ok(Some(operation)) => operate(&context, operation).await,
            Ok(None) => {
                format!("error unknown request {other:?} (status, reload, takeover, server, table)")
            }
            Err(why) => format!("error {why}"),
        },
    };
    let _ = stream.write_all(format!("{reply}\n").as_bytes()).await;
}

/// Runs an operator's request off the async workers (it may write to the pinned maps).
async fn operate(context: &Arc<Context>, operation: Operation) -> String {
    // The request line is not logged: it may carry a session cookie. The handler's answer
    // says what changed without one.
    let context = Arc::clone(context);
    match tokio::task::spawn_blocking(move || (context.operate)(operation)).await {
        Ok(Ok(done)) => {
            tracing::info!("control socket: {done}");
            format!("ok {done}")
        }
        Ok(Err(why)) => {
            tracing::warn!("control socket: refused: {why}");
            format!("error {}", why.replace('\n', "; "))
        }
        Err(_) => "error the request's task failed".to_owned(),
    }
}

/// Sends our listening sockets, waits for the successor's `ready`, then stops accepting and
/// answers `bye`.
async fn hand_over(stream: UnixStream, context: &Arc<Context>) {
    tracing::info!("a successor asks to take over the listening sockets");
    let Ok(stream) = stream.into_std() else {
        return;
    };
    let sent = {
        let context = Arc::clone(context);
        tokio::task::spawn_blocking(move || send_sockets_and_wait_ready(stream, &context)).await
    };
    let mut stream = match sent {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::warn!("upgrade abandoned, still serving: {error}");
            return;
        }
        Err(_) => return,
    };
    tracing::info!("successor is ready: stopping accepting, then draining");
    context.stop.notify_one();
    let mut stopped = context.stopped_accepting.clone();
    let _ = stopped.wait_for(|stopped| *stopped).await;
    let _ = tokio::task::spawn_blocking(move || stream.write_all(b"bye\n")).await;
}

fn send_sockets_and_wait_ready(
    stream: StdUnixStream,
    context: &Context,
) -> io::Result<StdUnixStream> {
    stream.set_nonblocking(false)?;
    let roles: Vec<&SocketRole> = context
        .handover
        .sockets
        .iter()
        .map(|(role, _)| role)
        .collect();
    let mut description = serde_json::to_vec(&roles).map_err(io::Error::other)?;
    description.push(b'\n');
    let fds: Vec<_> = context
        .handover
        .sockets
        .iter()
        .map(|(_, fd)| fd.as_fd())
        .collect();
    fds::send_with_fds(&stream, &description, &fds)?;
    stream.set_read_timeout(Some(SUCCESSOR_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .take(MAX_LINE as u64)
        .read_line(&mut line)?;
    if line.trim() != "ready" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("successor said {:?} instead of ready", line.trim()),
        ));
    }
    Ok(stream)
}

/// Sends one request line to the daemon at `path` and returns its reply line.
pub fn request(path: &Path, command: &str) -> io::Result<String> {
    exchange(connect(path)?, command, REPLY_TIMEOUT)
}

fn exchange(mut stream: StdUnixStream, command: &str, timeout: Duration) -> io::Result<String> {
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// Who is at a control socket.
#[derive(Debug)]
pub enum Probe {
    /// No socket file, or one no process listens on (a stopped or killed daemon's).
    Nobody,
    /// A daemon answered `status`: its reply.
    Answers(String),
    /// A process holds the socket (the connection was accepted into its queue) but did not
    /// answer `status` in time, or closed without answering: hung, or stopping. Never taken
    /// for stopped: its process may still hold links and maps.
    Unresponsive(io::Error),
}

/// Asks the socket at `path` for `status`, for at most [`PROBE_TIMEOUT`].
pub fn probe(path: &Path) -> Probe {
    probe_within(path, PROBE_TIMEOUT)
}

fn probe_within(path: &Path, timeout: Duration) -> Probe {
    let stream = match connect_if_listening(path) {
        Ok(Some(stream)) => stream,
        Ok(None) => return Probe::Nobody,
        Err(e) => return Probe::Unresponsive(e),
    };
    match exchange(stream, "status", timeout) {
        Ok(status) if !status.is_empty() => Probe::Answers(status),
        Ok(_) => Probe::Unresponsive(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed the connection without answering",
        )),
        Err(e) => Probe::Unresponsive(e),
    }
}

/// A connection to the socket at `path`; `None` when there is no socket file, or one no process
/// listens on (a stopped or killed daemon's). A listener whose backlog is full (a hung daemon
/// that others have tried before) is an error at once, not a wait for ever.
fn connect_if_listening(path: &Path) -> io::Result<Option<StdUnixStream>> {
    match connect(path) {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A connection to the socket at `path`, or an error at once: a daemon that has stopped
/// accepting, its queue full, is an error (`TimedOut`), not a wait for ever.
fn connect(path: &Path) -> io::Result<StdUnixStream> {
    crate::sys::socket::connect_unix_at_once(path).map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "its connection queue is full: nothing accepts",
            )
        } else {
            e
        }
    })
}

/// The pid in a `status` reply (`stickylb <version> pid <pid> instance <name>`).
pub fn status_pid(status: &str) -> Option<u32> {
    status
        .split(" pid ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// The pid of the daemon answering `status` at `path`, if one does.
pub fn running_pid(path: &Path) -> Option<u32> {
    match probe(path) {
        Probe::Answers(status) => status_pid(&status),
        Probe::Nobody | Probe::Unresponsive(_) => None,
    }
}

/// Sends `operation` to the daemon at `path`: what it changed, or why it refused.
pub fn send_operation(path: &Path, operation: &Operation) -> io::Result<Result<String, String>> {
    let reply = request(path, &operation.to_string())?;
    Ok(match reply.strip_prefix("ok ") {
        Some(done) => Ok(done.to_owned()),
        None => Err(reply.strip_prefix("error ").unwrap_or(&reply).to_owned()),
    })
}

/// The sockets taken from a running daemon, and the line to it.
pub struct Takeover {
    stream: StdUnixStream,
    sockets: Vec<(SocketRole, OwnedFd)>,
}

impl Takeover {
    /// Asks the daemon at `path` for its listening sockets. `Ok(None)` when no daemon answers
    /// there (nothing to take over: start fresh).
    pub fn request(path: &Path) -> io::Result<Option<Takeover>> {
        let Some(mut stream) = connect_if_listening(path)? else {
            return Ok(None);
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.write_all(b"takeover\n")?;
        let mut buf = vec![0u8; 64 * 1024];
        let (n, fds) = fds::recv_with_fds(&stream, &mut buf)?;
        let roles: Vec<SocketRole> = serde_json::from_slice(buf[..n].trim_ascii_end())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if roles.len() != fds.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} sockets described, {} received", roles.len(), fds.len()),
            ));
        }
        Ok(Some(Takeover {
            stream,
            sockets: roles.into_iter().zip(fds).collect(),
        }))
    }

    /// The socket the old daemon listened on for `role` at `addr`, as a tokio listener; `None`
    /// when it had none (a new frontend, or a changed address: bind anew).
    pub fn listener(&mut self, role: &str, addr: SocketAddr) -> Option<tokio::net::TcpListener> {
        let at = self
            .sockets
            .iter()
            .position(|(r, _)| r.role == role && r.addr == addr)?;
        let (_, fd) = self.sockets.swap_remove(at);
        let listener = std::net::TcpListener::from(fd);
        let usable = listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener));
        match usable {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(role, %addr, "inherited socket unusable, binding anew: {error}");
                None
            }
        }
    }

    /// Tells the old daemon we serve, and waits until it stopped accepting.
    pub fn finish(mut self) -> io::Result<()> {
        for (role, _) in &self.sockets {
            tracing::info!(role = %role.role, addr = %role.addr, "not taking over a socket the new configuration does not use");
        }
        self.sockets.clear();
        self.stream.write_all(b"ready\n")?;
        let mut line = String::new();
        BufReader::new(&self.stream).read_line(&mut line)?;
        match line.trim() {
            "bye" => Ok(()),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("old daemon answered {other:?} instead of bye"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener as StdUnixListener;

    use super::*;

    const SHORT: Duration = Duration::from_millis(300);

    #[test]
    fn a_missing_or_stale_socket_is_nobody_and_a_silent_listener_is_unresponsive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        assert!(matches!(probe_within(&path, SHORT), Probe::Nobody));

        // Bound and listening, never accepting: the kernel queues the connection, the read
        // times out. That is a hung daemon, not a stopped one.
        let silent = StdUnixListener::bind(&path).unwrap();
        match probe_within(&path, SHORT) {
            Probe::Unresponsive(e) => assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "{e}"
            ),
            other => panic!("expected Unresponsive, got {other:?}"),
        }

        // Its process gone (the listener closed), the file stays: a killed daemon's.
        drop(silent);
        assert!(path.exists());
        assert!(matches!(probe_within(&path, SHORT), Probe::Nobody));
    }

    #[test]
    fn a_daemon_answering_status_gives_its_pid_and_one_closing_without_answer_is_unresponsive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = StdUnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut first, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&first).read_line(&mut line).unwrap();
            assert_eq!(line, "status\n");
            first
                .write_all(b"stickylb 0.1.0 pid 4242 instance demo\n")
                .unwrap();
            // The second reads the request and closes without a word, as a daemon does when
            // it stops mid-request.
            let (second, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&second).read_line(&mut line).unwrap();
            drop(second);
        });
        assert_eq!(running_pid_within(&path), Some(4242));
        assert!(matches!(
            probe_within(&path, SHORT),
            Probe::Unresponsive(e) if e.kind() == io::ErrorKind::UnexpectedEof
        ));
        server.join().unwrap();
    }

    fn running_pid_within(path: &Path) -> Option<u32> {
        match probe_within(path, SHORT) {
            Probe::Answers(status) => status_pid(&status),
            other => panic!("expected Answers, got {other:?}"),
        }
    }

    #[test]
    fn bind_refuses_a_socket_whose_process_does_not_answer_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let silent = StdUnixListener::bind(&path).unwrap();
        let refused = bind(&path, false).unwrap_err();
        assert!(
            matches!(refused, BindError::Unresponsive { .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("does not answer"), "{refused}");
        drop(silent);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async { bind(&path, false) }).unwrap();
    }
}
