//! HTTP from the cluster's client namespace, for the few requests the bench makes itself (a
//! sample session, a node's `/metrics`): a thread that joined the namespace runs them, so no
//! curl is spawned per request (the mirror-lag sampler sends one every few milliseconds).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _};

type Job = Box<dyn FnOnce() + Send>;

/// A thread in a network namespace that runs the jobs it is given, one at a time.
pub(super) struct Prober {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Prober {
    /// A thread in namespace `netns`; fails when it cannot join it.
    pub(super) fn new(netns: &str) -> anyhow::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (joined, outcome) = mpsc::channel();
        let name = netns.to_owned();
        let thread = thread::spawn(move || {
            let entered = netns_kit::enter(&name);
            let ok = entered.is_ok();
            let _ = joined.send(entered);
            if ok {
                for job in queue {
                    job();
                }
            }
        });
        outcome
            .recv()
            .context("the probe thread ended before joining its namespace")?
            .with_context(|| format!("joining namespace {netns}"))?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `job` in the namespace and returns its result.
    pub(super) fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let (done, result) = mpsc::channel();
        let jobs = self.jobs.as_ref().context("the probe thread is gone")?;
        jobs.send(Box::new(move || {
            let _ = done.send(job());
        }))
        .map_err(|_| anyhow!("the probe thread is gone"))?;
        result.recv().context("the probe thread dropped a job")
    }

    /// GET `path` from `addr` in the namespace; the status and body.
    pub(super) fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        cookie: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let (path, cookie) = (path.to_owned(), cookie.map(str::to_owned));
        self.run(move || get(addr, &path, cookie.as_deref()))?
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One HTTP/1.1 GET on a connection of its own (`Connection: close`), with `JSESSIONID=cookie`
/// when given: the status and body.
pub(super) fn get(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: JSESSIONID={c}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{cookie}Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("sending to {addr}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .with_context(|| format!("reading the answer of {addr}"))?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status from {addr}"))?;
    let Some((_, body)) = text.split_once("\r\n\r\n") else {
        bail!("no end of head in the answer of {addr}");
    };
    Ok((status, body.to_owned()))
}
