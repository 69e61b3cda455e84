//! Mirror lag: `stickylb-load` creates new sessions on node 1 at a fixed rate, in two shapes
//! ([`Shape`]): a new connection per session, as browsers arrive, and new sessions over
//! connections kept open, as they arrive through a proxy or CDN tier (the one that reaches the
//! rate on a small machine, where opening connections costs the load generator and the kernel
//! more than mirroring costs the nodes); meanwhile a sampler thread creates sample sessions
//! of its own, and the bench polls every other node's table for each until it appears there.
//! A sample's lag on a node runs from when its request was sent (so it includes node 1
//! answering it) to the first poll that finds it, polls about a millisecond apart.
//!
//! The load also gives the per-node costs of mirroring: the CPU of the nodes that only receive
//! (they serve no client), the bytes their LAN interface received and sent (the peers traffic,
//! headers included, plus a little ARP), and their established peer connections.

use std::{
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::{
    addrs, linked_readers,
    mesh::{self, Hosts, Mesh},
    per, probe,
    tables::Reader,
    ClusterPlan,
};
use crate::{
    contender::Contender,
    env::Env,
    load::{self, LoadSpec},
    procs,
    stats::nearest_rank,
};

/// A sample not seen on a node within this long counts as missing there.
const GIVE_UP: Duration = Duration::from_secs(5);
/// Concurrent connections of the load generator (each paced).
const CONNECTIONS: u32 = 64;
/// Load before the first sample: the mesh at its steady state.
const WARM_UP: Duration = Duration::from_secs(1);

/// How the load's new sessions reach node 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Shape {
    /// Each session is a new connection with one request.
    NewConnection,
    /// Every request of [`CONNECTIONS`] kept-open connections starts a new session.
    KeptOpen,
}

impl Shape {
    pub(crate) const ALL: [Shape; 2] = [Shape::NewConnection, Shape::KeptOpen];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Shape::NewConnection => "a new connection per session",
            Shape::KeptOpen => "new sessions on kept-open connections",
        }
    }

    fn spec<'a>(self, target: &'a str, duration: Duration, rate: f64) -> LoadSpec<'a> {
        let spec = LoadSpec {
            rate,
            ..LoadSpec::new(target, CONNECTIONS, duration, "lag")
        };
        match self {
            Shape::NewConnection => LoadSpec {
                per_connection: 1,
                pool: 0,
                ..spec
            },
            Shape::KeptOpen => LoadSpec {
                session_per_request: true,
                ..spec
            },
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct LagResult {
    pub(crate) contender: Contender,
    pub(crate) shape: Shape,
    pub(crate) nodes: usize,
    pub(crate) target_rate: f64,
    /// New sessions per second the load generator achieved on node 1.
    pub(crate) achieved_rate: f64,
    pub(crate) load_errors: u64,
    pub(crate) samples: usize,
    /// (sample, node) pairs not seen within [`GIVE_UP`].
    pub(crate) missing: usize,
    /// Lag until visible on one other node, over every (sample, node) pair.
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    /// Lag until visible on every other node.
    pub(crate) all_p50_ms: Option<f64>,
    pub(crate) all_p99_ms: Option<f64>,
    /// The longest poll round (every sample watched, on every other node): the resolution of
    /// the lags above at their worst.
    pub(crate) slowest_poll_ms: f64,
    pub(crate) costs: Costs,
}

impl LagResult {
    pub(crate) fn progress(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        format!(
            "{}: {:.0} new sessions/s (of {:.0}), lag p50 {} ms p99 {} ms, on all {} ms / {} ms, \
             {} missing (slowest poll round {:.1} ms), receivers {} µs CPU and {} bytes in per \
             mirrored session",
            self.shape.label(),
            self.achieved_rate,
            self.target_rate,
            ms(self.p50_ms),
            ms(self.p99_ms),
            ms(self.all_p50_ms),
            ms(self.all_p99_ms),
            self.missing,
            self.slowest_poll_ms,
            ms(self.costs.receiver_cpu_us_per_session),
            ms(self.costs.bytes_in_per_session),
        )
    }
}

/// What mirroring costs each node, per session made on node 1.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Costs {
    pub(crate) sessions: u64,
    /// Established peer connections of each node at the end.
    pub(crate) peer_connections: Vec<usize>,
    /// Node 1's CPU per session: serving the request and pushing it to every peer.
    pub(crate) sender_cpu_us_per_session: Option<f64>,
    /// A receiving node's CPU per mirrored session (mean over the receivers).
    pub(crate) receiver_cpu_us_per_session: Option<f64>,
    /// Bytes a receiving node's interface took in per mirrored session (mean over receivers).
    pub(crate) bytes_in_per_session: Option<f64>,
    /// Bytes it sent back (acknowledgements) per mirrored session.
    pub(crate) bytes_out_per_session: Option<f64>,
}

/// One measurement in `shape`, on a mesh started for it (empty tables).
pub(crate) fn measure(
    env: &Env,
    hosts: &Hosts,
    contender: Contender,
    plan: &ClusterPlan,
    shape: Shape,
) -> anyhow::Result<LagResult> {
    let mut mesh = Mesh::new(env, hosts, contender, plan.lag_nodes)?;
    mesh.start_all()?;
    mesh.run_then_stop(|mesh| run(env, hosts, mesh, plan, shape))
}

fn run(
    env: &Env,
    hosts: &Hosts,
    mesh: &mut Mesh<'_>,
    plan: &ClusterPlan,
    shape: Shape,
) -> anyhow::Result<LagResult> {
    let (_, mut readers) = linked_readers(hosts, mesh, mesh.size, plan.limit)?;
    let target = addrs::frontend(0).to_string();
    let duration = WARM_UP + plan.lag_duration + Duration::from_millis(500);
    let spec = shape.spec(&target, duration, plan.lag_rate);
    let before = Snapshot::take(hosts, mesh)?;
    let load = load::start(hosts.client(), &env.load, &spec)?;
    let lags = procs::sleep(WARM_UP).and_then(|()| {
        let count = (plan.lag_duration.as_secs_f64() * plan.lag_samples_per_s) as usize;
        sample(hosts, &mut readers[1..], count, plan.lag_samples_per_s)
    });
    let generated = load::finish(load, duration)?;
    let after = Snapshot::take(hosts, mesh)?;
    let polled = lags?;
    let sessions = generated.requests + polled.lags.len() as u64;
    let peer_connections = (0..mesh.size)
        .map(|i| mesh::peer_connections(hosts, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let costs = Costs::of(&before, &after, sessions, peer_connections);
    Ok(summarise(mesh, plan, shape, &generated, polled, costs))
}

fn summarise(
    mesh: &Mesh<'_>,
    plan: &ClusterPlan,
    shape: Shape,
    generated: &load::LoadResult,
    polled: Polled,
    costs: Costs,
) -> LagResult {
    let lags = polled.lags;
    let micros = |d: &Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let mut each: Vec<u64> = lags.iter().flatten().flatten().map(micros).collect();
    let missing = lags.iter().flatten().filter(|l| l.is_none()).count();
    // A sample missing on some node has no "visible everywhere" time.
    let mut all: Vec<u64> = lags
        .iter()
        .filter_map(|l| l.iter().copied().collect::<Option<Vec<_>>>())
        .filter_map(|l| l.iter().max().map(micros))
        .collect();
    each.sort_unstable();
    all.sort_unstable();
    let ms = |sorted: &[u64], p| nearest_rank(sorted, p).map(|us| us as f64 / 1e3);
    LagResult {
        contender: mesh.contender,
        shape,
        nodes: mesh.size,
        target_rate: plan.lag_rate,
        achieved_rate: generated.requests as f64 / generated.seconds,
        load_errors: generated.errors + generated.status_errors,
        samples: lags.len(),
        missing,
        p50_ms: ms(&each, 50.0),
        p99_ms: ms(&each, 99.0),
        all_p50_ms: ms(&all, 50.0),
        all_p99_ms: ms(&all, 99.0),
        slowest_poll_ms: polled.slowest.as_secs_f64() * 1e3,
        costs,
    }
}

/// A sample the sampler thread made: its cookie and when its request was sent.
struct Made {
    cookie: String,
    sent: Instant,
}

/// Makes `count` sample sessions on node 1 at `per_s`, from a thread in the client's
/// namespace, and times each until `readers` (the other nodes) all have it.
fn sample(
    hosts: &Hosts,
    readers: &mut [(usize, Reader)],
    count: usize,
    per_s: f64,
) -> anyhow::Result<Polled> {
    let (made, arrivals) = mpsc::channel::<anyhow::Result<Made>>();
    let netns = hosts.client().name().to_owned();
    let interval = Duration::from_secs_f64(1.0 / per_s);
    let sampler = thread::spawn(move || {
        if let Err(error) = netns_kit::enter(&netns) {
            let _ = made.send(Err(error).context("joining the client's namespace"));
            return;
        }
        let start = Instant::now();
        for k in 0..count {
            let due = start + interval.mul_f64(k as f64);
            thread::sleep(due.saturating_duration_since(Instant::now()));
            let cookie = format!("lagsample{k:08}");
            let sent = Instant::now();
            let outcome = match probe::get(addrs::frontend(0), "/", Some(&cookie)) {
                Ok((200, _)) => Ok(Made { cookie, sent }),
                Ok((status, _)) => Err(anyhow::anyhow!("a sample session was answered {status}")),
                Err(error) => Err(error),
            };
            if made.send(outcome).is_err() {
                return;
            }
        }
    });
    let result = poll(readers, &arrivals, count);
    let _ = sampler.join();
    result
}

/// One sample being watched: its lag per reader so far.
struct Watched {
    made: Made,
    seen: Vec<Option<Duration>>,
}

fn poll(
    readers: &mut [(usize, Reader)],
    arrivals: &mpsc::Receiver<anyhow::Result<Made>>,
    count: usize,
) -> anyhow::Result<Polled> {
    let mut watching: Vec<Watched> = Vec::new();
    let mut done = Vec::with_capacity(count);
    let mut received = 0;
    let mut slowest = Duration::ZERO;
    while done.len() < count {
        procs::check_interrupted()?;
        let round = Instant::now();
        while let Ok(made) = arrivals.try_recv() {
            received += 1;
            watching.push(Watched {
                made: made?,
                seen: vec![None; readers.len()],
            });
        }
        for watched in &mut watching {
            for (seen, (_, reader)) in watched.seen.iter_mut().zip(readers.iter_mut()) {
                if seen.is_none() && reader.has(&watched.made.cookie)? {
                    *seen = Some(watched.made.sent.elapsed());
                }
            }
        }
        let (finished, still): (Vec<Watched>, Vec<Watched>) = watching
            .into_iter()
            .partition(|w| w.seen.iter().all(Option::is_some) || w.made.sent.elapsed() >= GIVE_UP);
        watching = still;
        slowest = slowest.max(round.elapsed());
        done.extend(finished.into_iter().map(|w| w.seen));
        if received < count && watching.is_empty() {
            // Nothing to watch: wait for the next sample instead of spinning.
            match arrivals.recv_timeout(Duration::from_secs(10)) {
                Ok(made) => {
                    received += 1;
                    watching.push(Watched {
                        made: made?,
                        seen: vec![None; readers.len()],
                    });
                }
                Err(_) => bail!("the sampler stopped after {received} of {count} samples"),
            }
        } else {
            thread::sleep(Duration::from_micros(500));
        }
    }
    Ok(Polled {
        lags: done,
        slowest,
    })
}

/// Each sample's lag per reader (None: not seen within [`GIVE_UP`]), and the longest poll round.
struct Polled {
    lags: Vec<Vec<Option<Duration>>>,
    slowest: Duration,
}

/// CPU and interface counters of every node at one moment.
struct Snapshot {
    cpu: Vec<f64>,
    wire: Vec<(u64, u64)>,
}

impl Snapshot {
    fn take(hosts: &Hosts, mesh: &Mesh<'_>) -> anyhow::Result<Self> {
        Ok(Self {
            cpu: mesh.cpu_seconds()?,
            wire: (0..mesh.size)
                .map(|i| mesh::wire_bytes(hosts, i))
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

impl Costs {
    /// Node 1 sends; the others receive.
    fn of(
        before: &Snapshot,
        after: &Snapshot,
        sessions: u64,
        peer_connections: Vec<usize>,
    ) -> Self {
        let receivers = before.cpu.len().saturating_sub(1) as f64;
        let mirrored = sessions as f64 * receivers;
        let cpu = |i: usize| after.cpu[i] - before.cpu[i];
        let receivers_cpu: f64 = (1..before.cpu.len()).map(cpu).sum();
        let sum = |pick: fn(&(u64, u64)) -> u64| -> f64 {
            (1..before.wire.len())
                .map(|i| pick(&after.wire[i]).saturating_sub(pick(&before.wire[i])) as f64)
                .sum()
        };
        Self {
            sessions,
            peer_connections,
            sender_cpu_us_per_session: per(cpu(0) * 1e6, sessions as f64),
            receiver_cpu_us_per_session: per(receivers_cpu * 1e6, mirrored),
            bytes_in_per_session: per(sum(|w| w.0), mirrored),
            bytes_out_per_session: per(sum(|w| w.1), mirrored),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Costs, Snapshot};

    #[test]
    fn costs_are_per_mirrored_session_and_receiver() {
        let before = Snapshot {
            cpu: vec![1.0, 1.0, 1.0],
            wire: vec![(0, 0), (100, 10), (100, 10)],
        };
        let after = Snapshot {
            cpu: vec![2.0, 1.5, 1.5],
            wire: vec![(5000, 5000), (10_100, 1010), (10_100, 1010)],
        };
        let costs = Costs::of(&before, &after, 100, vec![2, 2, 2]);
        assert_eq!(costs.sender_cpu_us_per_session, Some(10_000.0));
        assert_eq!(costs.receiver_cpu_us_per_session, Some(5000.0));
        assert_eq!(costs.bytes_in_per_session, Some(100.0));
        assert_eq!(costs.bytes_out_per_session, Some(10.0));
    }
}
