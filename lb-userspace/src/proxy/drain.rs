//! Graceful shutdown of the hyper connections: hyper-util's `GracefulShutdown` watches plain
//! connections only, and ours are upgradeable (WebSocket through the userspace proxy).

use std::{future::Future, pin::Pin, sync::Mutex};

use tokio::sync::{mpsc, watch};

/// Tells every watched connection to finish its request in progress and close, and waits for
/// them.
pub struct Drain {
    signal: watch::Sender<bool>,
    /// Each watched connection holds a clone; `shutdown` drops this one and waits until the
    /// channel has no sender left.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    gone: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        let (alive, gone) = mpsc::channel(1);
        Self {
            signal: watch::channel(false).0,
            alive: Mutex::new(Some(alive)),
            gone: tokio::sync::Mutex::new(gone),
        }
    }

    /// `connection`, which asks itself to shut down gracefully (`graceful_shutdown`) once
    /// [`Drain::shutdown`] is called.
    pub fn watch<C, E>(
        &self,
        connection: C,
        graceful_shutdown: impl FnOnce(Pin<&mut C>) + Send,
    ) -> impl Future<Output = Result<(), E>> + Send
    where
        C: Future<Output = Result<(), E>> + Send,
    {
        let mut signal = self.signal.subscribe();
        let alive = self
            .alive
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        async move {
            let _alive = alive;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                done = connection.as_mut() => return done,
                _ = signal.wait_for(|stop| *stop) => {}
            }
            graceful_shutdown(connection.as_mut());
            connection.await
        }
    }

    /// Shuts every watched connection down and waits until all have ended.
    pub async fn shutdown(&self) {
        self.signal.send_replace(true);
        self.alive
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        // `None` once every watching connection has dropped its sender.
        while self.gone.lock().await.recv().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Drain;

    #[tokio::test]
    async fn shutdown_asks_each_connection_to_stop_and_waits_for_it() {
        let drain = std::sync::Arc::new(Drain::new());
        let (stopped_tx, mut stopped) = tokio::sync::mpsc::unbounded_channel();
        // A "connection" that ends 50 ms after it is asked to shut down.
        let (ask_tx, ask) = tokio::sync::oneshot::channel::<()>();
        let connection = async move {
            let _ = ask.await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            stopped_tx.send(()).unwrap();
            Ok::<(), ()>(())
        };
        let mut ask_tx = Some(ask_tx);
        let watched = drain.watch(Box::pin(connection), move |_| {
            let _ = ask_tx.take().map(|tx| tx.send(()));
        });
        let task = tokio::spawn(watched);
        drain.shutdown().await;
        assert!(
            stopped.try_recv().is_ok(),
            "shutdown returned before the connection ended"
        );
        assert_eq!(task.await.unwrap(), Ok(()));
        // Nothing watched: returns at once.
        tokio::time::timeout(Duration::from_secs(1), Drain::new().shutdown())
            .await
            .unwrap();
    }
}
