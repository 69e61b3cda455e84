//! The data plane's threads: one single-threaded runtime per CPU, each with its own event
//! loop, as HAProxy's threads. A connection lives on one thread from accept to close: no work
//! stealing, no cross-thread wakeup per request. The control plane (health checks, peers,
//! monitor, control socket) stays on the main runtime.

use std::{
    cell::Cell,
    io,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Mutex,
    },
    thread::JoinHandle,
};

use tokio::{runtime::Handle, sync::oneshot};

thread_local! {
    /// This thread's index among the workers; `usize::MAX` off them.
    static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Each worker's stop signal and thread, taken by [`Workers::stop`].
    threads: Mutex<Vec<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl Workers {
    /// One worker per CPU the process may use ([`expected`]).
    pub fn start() -> io::Result<Workers> {
        Self::start_n(expected())
    }

    pub fn start_n(count: usize) -> io::Result<Workers> {
        let mut handles = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("stickylb-w{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    // Until stopped; dropping the runtime then cancels what is left.
                    let _ = runtime.block_on(stopped);
                })?;
            threads.push((stop, thread));
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            threads: Mutex::new(threads),
        })
    }

    /// The worker that accepts connections.
    pub fn first(&self) -> &Handle {
        &self.handles[0]
    }

    /// The worker for the next connection, in turn.
    pub fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Relaxed) % self.handles.len();
        &self.handles[i]
    }

    /// Stops every worker (tasks still running are cancelled) and waits for their threads.
    pub fn stop(&self) {
        let threads = std::mem::take(
            &mut *self
                .threads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let me = std::thread::current().id();
        for (stop, thread) in threads {
            let _ = stop.send(());
            // The last handle can go on a worker (a task there held it while a failed start
            // unwound): that worker ends when this returns; joining itself would panic.
            if thread.thread().id() != me {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How many workers [`Workers::start`] starts: one per CPU the process may use.
pub fn expected() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The worker the calling thread is, if it is one: connections registered with a worker's
/// event loop are only reused on that worker (the relay's server connection pool and the
/// hyper path's clients ask).
pub fn current() -> Option<usize> {
    let index = INDEX.with(Cell::get);
    (index != usize::MAX).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_dealt_to_each_worker_in_turn_and_stop_joins_them() {
        let workers = Workers::start_n(2).unwrap();
        let on = |handle: &Handle| {
            let (tx, rx) = std::sync::mpsc::channel();
            handle.spawn(async move { tx.send(current()).unwrap() });
            rx.recv().unwrap()
        };
        let seen: Vec<Option<usize>> = (0..4).map(|_| on(workers.next())).collect();
        assert_eq!(seen, [Some(0), Some(1), Some(0), Some(1)]);
        assert_eq!(on(workers.first()), Some(0));
        assert_eq!(current(), None, "the test's thread is no worker");
        workers.stop();
        assert!(workers.threads.lock().unwrap().is_empty());
    }

    #[test]
    fn the_last_handle_can_go_on_a_worker() {
        let workers = std::sync::Arc::new(Workers::start_n(2).unwrap());
        let held = std::sync::Arc::clone(&workers);
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (done, finished) = std::sync::mpsc::channel();
        workers.first().spawn(async move {
            let _ = tokio::task::spawn_blocking(move || wait.recv()).await;
            // The last handle: stops both workers from worker 0, joining only worker 1.
            drop(held);
            let _ = done.send(current());
        });
        drop(workers);
        go.send(()).unwrap();
        assert_eq!(
            finished.recv_timeout(std::time::Duration::from_secs(5)),
            Ok(Some(0))
        );
    }
}
