//! Idle keep-alive connections to one server, reused by the relay across client connections
//! (HAProxy's `http-reuse always`): a client that opens a connection per request costs no
//! connection to the server.

use std::{
    io,
    sync::Mutex,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

/// Idle connections kept per server; more are closed.
const MAX_IDLE: usize = 256;

/// An idle connection older than this is closed rather than reused: servers close theirs
/// after a keep-alive timeout of their own, often tens of seconds.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<(TcpStream, Instant)>>,
}

impl Pool {
    /// The most recently parked connection that still looks open, if any.
    pub fn take(&self) -> Option<TcpStream> {
        loop {
            let (stream, parked) = self.lock().pop()?;
            if parked.elapsed() < IDLE_TIMEOUT && looks_open(&stream) {
                return Some(stream);
            }
        }
    }

    /// Parks a connection that has just finished an exchange and may be reused.
    pub fn put(&self, stream: TcpStream) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push((stream, Instant::now()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(TcpStream, Instant)>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether an idle connection has heard nothing from its server: no close, no reset, no stray
/// bytes. Uses the readiness the runtime already knows, so an idle connection costs a syscall
/// only when something did arrive.
fn looks_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut byte = [0u8; 1];
            matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}
