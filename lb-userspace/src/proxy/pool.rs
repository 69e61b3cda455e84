//! Idle keep-alive connections to one server, reused by the relay across client connections
//! (HAProxy's `http-reuse always`): a client that opens a connection per request costs no
//! connection to the server. The proxy keeps one pool per server ([`Pools`]); the backend's
//! server state knows nothing of connections.

use std::{
    io,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use tokio::net::TcpStream;

use super::workers;
use crate::backend::ServerState;

/// Idle connections kept per server and worker; more are closed.
const MAX_IDLE: usize = 256;

/// An idle connection older than this is closed rather than reused: servers close theirs
/// after a keep-alive timeout of their own, often tens of seconds.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The pool of each server the relay has connected to, found by the server's identity (its
/// state's allocation: a server a reload replaces, even at the same address, gets a new one).
/// Looked up when a relayed connection needs a new server connection, lock-free; a server seen
/// for the first time adds its pool, and drops those of servers that are gone.
#[derive(Default)]
pub struct Pools {
    pools: ArcSwap<Vec<(Weak<ServerState>, Arc<Pool>)>>,
}

impl Pools {
    /// `server`'s pool.
    pub fn of(&self, server: &Arc<ServerState>) -> Arc<Pool> {
        if let Some(pool) = find(&self.pools.load(), server) {
            return pool;
        }
        let mut found = None;
        self.pools.rcu(|current| {
            if let Some(pool) = find(current, server) {
                found = Some(pool);
                return Arc::clone(current);
            }
            let pool = Arc::new(Pool::default());
            found = Some(Arc::clone(&pool));
            let mut next: Vec<_> = current
                .iter()
                .filter(|(server, _)| server.strong_count() > 0)
                .cloned()
                .collect();
            next.push((Arc::downgrade(server), pool));
            Arc::new(next)
        });
        found.unwrap_or_default()
    }
}

/// The pool of `server` in `pools`. A `Weak` keeps its server's allocation, so no other server
/// can have the same address while the entry exists.
fn find(pools: &[(Weak<ServerState>, Arc<Pool>)], server: &Arc<ServerState>) -> Option<Arc<Pool>> {
    pools
        .iter()
        .find(|(known, _)| std::ptr::eq(known.as_ptr(), Arc::as_ptr(server)))
        .map(|(_, pool)| Arc::clone(pool))
}

/// Idle connections, each with the worker whose event loop it is registered with (see
/// [`super::workers`]): a connection is only reused on its own worker. Kept in one shard per
/// worker (and one for other threads), so that workers taking and parking connections at
/// once neither wait for one lock nor move its cache line between their CPUs at every
/// request.
pub struct Pool {
    shards: Box<[Shard]>,
}

/// The idle connections parked by some of the threads (see [`Pool::shard`]), alone on its
/// cache lines.
#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<Vec<Idle>>);

impl Default for Pool {
    fn default() -> Self {
        Self {
            shards: (0..=workers::expected())
                .map(|_| Shard::default())
                .collect(),
        }
    }
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
                let mut idle = self.lock(worker);
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
        let worker = workers::current();
        let mut idle = self.lock(worker);
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                worker,
                stream,
                parked: Instant::now(),
            });
        }
    }

    /// The shard of `worker`'s connections: its own, unless there are more workers than
    /// expected (they share then, and [`Idle::worker`] still tells theirs apart); the last
    /// for other threads.
    fn lock(&self, worker: Option<usize>) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        let last = self.shards.len() - 1;
        let shard = worker.map_or(last, |worker| worker % last.max(1));
        self.shards[shard]
            .0
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

    #[test]
    fn each_server_has_its_own_pool_and_a_gone_server_loses_its_pool() {
        let pools = Pools::default();
        let addr = "127.0.0.1:1".parse().unwrap();
        let (a, b) = (
            Arc::new(ServerState::new("a", addr)),
            Arc::new(ServerState::new("a", addr)),
        );
        assert!(Arc::ptr_eq(&pools.of(&a), &pools.of(&a)));
        assert!(
            !Arc::ptr_eq(&pools.of(&a), &pools.of(&b)),
            "a replaced server starts afresh"
        );
        drop(a);
        let c = Arc::new(ServerState::new("c", addr));
        pools.of(&c);
        assert_eq!(pools.pools.load().len(), 2, "b and c");
    }
}
