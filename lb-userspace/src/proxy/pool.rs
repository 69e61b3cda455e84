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

use super::workers;

/// Idle connections kept per server; more are closed.
const MAX_IDLE: usize = 256;

/// An idle connection older than this is closed rather than reused: servers close theirs
/// after a keep-alive timeout of their own, often tens of seconds.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle connections, each with the worker whose event loop it is registered with (see
/// [`super::workers`]): a connection is only reused on its own worker.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    worker: Option<usize>,
    stream: TcpStream,
    parked: Instant,
}

impl Pool {
    /// This worker's most recently parked connection that still looks open, if any.
    pub fn take(&self) -> Option<TcpStream> {
        let worker = workers::current();
        loop {
            let idle = {
                let mut idle = self.lock();
                let at = idle.iter().rposition(|i| i.worker == worker)?;
                idle.remove(at)
            };
            if idle.parked.elapsed() < IDLE_TIMEOUT && looks_open(&idle.stream) {
                return Some(idle.stream);
            }
        }
    }

    /// Parks a connection that has just finished an exchange and may be reused.
    pub fn put(&self, stream: TcpStream) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                worker: workers::current(),
                stream,
                parked: Instant::now(),
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proxy::workers::Workers;

    /// Runs `f` on worker `index` of `workers` (dealt in turn, so `next` is called until it is).
    fn on<T: Send + 'static>(
        threads: &Workers,
        index: usize,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let handle = loop {
            let (tx, rx) = std::sync::mpsc::channel();
            let handle = threads.next().clone();
            handle.spawn(async move { tx.send(workers::current()).unwrap() });
            if rx.recv().unwrap() == Some(index) {
                break handle;
            }
        };
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().unwrap()
    }

    #[test]
    fn a_parked_connection_is_reused_on_its_worker_only_and_not_once_closed() {
        let workers = Workers::start_n(2).unwrap();
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let pool = Arc::new(Pool::default());
        let parked = Arc::clone(&pool);
        on(&workers, 0, async move {
            parked.put(TcpStream::connect(addr).await.unwrap());
        });
        let (accepted, _) = server.accept().unwrap();
        let elsewhere = Arc::clone(&pool);
        assert!(on(&workers, 1, async move { elsewhere.take().is_none() }));
        let here = Arc::clone(&pool);
        let taken = on(&workers, 0, async move {
            let stream = here.take();
            let found = stream.is_some();
            if let Some(stream) = stream {
                here.put(stream);
            }
            found
        });
        assert!(taken);
        // The server closes it: the pool notices instead of handing out a dead connection.
        drop(accepted);
        std::thread::sleep(Duration::from_millis(50));
        let closed = Arc::clone(&pool);
        assert!(on(&workers, 0, async move {
            tokio::task::yield_now().await;
            closed.take().is_none()
        }));
        workers.stop();
    }
}
