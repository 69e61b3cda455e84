//! Choosing a server for a request that is not (or no longer) stuck to one.
//!
//! Selection only ever sees the servers that take new sessions (a weight above zero: up, ready,
//! not drained) and have room below their `maxconn`. Round robin advances only when it is asked
//! to choose, which happens for new sessions, redispatches and cookie-less requests, never for
//! a sticky hit: that is what makes sessions 21-25 of the demo (README.md, step 4) land on 6,
//! 7, 1, 2, 3. With weights that differ it is a smooth weighted round robin (each server's
//! share in proportion to its weight, interleaved); with equal weights it is the plain rotation
//! in configuration order, whatever the weight.
//!
//! `consistent` is the exception that depends on the request: rendezvous hashing of the
//! request's [`Affinity`] (its stickiness cookie, else its client's address) over the servers
//! that take new sessions, so that every node of a cluster, knowing nothing of the others,
//! chooses the same server for the same cookie, and a server going down moves only the keys it
//! had (docs/PEERS.md, "A cluster").

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use rand::Rng as _;

use crate::config::Balance;

mod rendezvous;

pub use rendezvous::Rendezvous;

/// What selection knows of a server (the backend's server state implements it): selection
/// depends on this, not on the backend.
pub trait Candidate {
    /// Its share of new sessions in [`WEIGHT_SCALE`] units; 0: it takes none.
    fn weight(&self) -> u32;
    /// Whether it can take one more request now (below its `maxconn`).
    fn has_room(&self) -> bool;
    /// Requests in flight.
    fn in_flight(&self) -> u64;
    /// What identifies it on every node (its name): what consistent hashing hashes it by, so
    /// that the order of the configuration does not matter.
    fn identity(&self) -> &[u8];
}

/// What a request offers a consistent choice to hash (the other algorithms ignore it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity<'a> {
    /// The stickiness cookie's value the request carries.
    Cookie(&'a [u8]),
    /// A request without the cookie: its client's address (without the port, which an ECMP
    /// router hashes to spread one client's connections over the nodes).
    Client(IpAddr),
    /// Nothing known (tests, tools).
    Nothing,
}

/// Weights are kept in these units internally, so that a server ramping up from weight 1
/// (`slowstart`) still has steps between nothing and all.
pub const WEIGHT_SCALE: u32 = 16;

/// The weight `server` is chosen with now: 0 when it takes no new session or has no room.
fn usable<S: Candidate>(server: &S) -> u32 {
    match server.weight() {
        0 => 0,
        weight if server.has_room() => weight,
        _ => 0,
    }
}

/// Requests in flight per unit of weight, to compare servers of different weights: with equal
/// weights, the order of requests in flight.
fn load<S: Candidate>(server: &S, weight: u32) -> u64 {
    ((server.in_flight() + 1) << 16) / u64::from(weight.max(1))
}

/// A load-balancing algorithm.
pub trait Select<S>: Send + Sync {
    /// Picks one of `servers` that is up for a request offering `affinity`, or `None` when
    /// none is.
    fn select(&self, servers: &[Arc<S>], affinity: Affinity<'_>) -> Option<Arc<S>>;
}

pub fn selector<S: Candidate>(balance: Balance) -> Box<dyn Select<S>> {
    match balance {
        Balance::RoundRobin => Box::new(RoundRobin::default()),
        Balance::LeastConn => Box::new(LeastConn::default()),
        Balance::Random => Box::new(RandomTwoChoices),
        Balance::Consistent => Box::new(Rendezvous),
    }
}

/// A selector with the algorithm it runs, so that a reload replaces it (and resets its rotation)
/// only when the algorithm changes.
pub struct Balancer<S> {
    algorithm: Balance,
    select: Box<dyn Select<S>>,
}

impl<S: Candidate> Balancer<S> {
    pub fn new(algorithm: Balance) -> Self {
        Self {
            algorithm,
            select: selector(algorithm),
        }
    }

    pub fn algorithm(&self) -> Balance {
        self.algorithm
    }
}

impl<S> Select<S> for Balancer<S> {
    fn select(&self, servers: &[Arc<S>], affinity: Affinity<'_>) -> Option<Arc<S>> {
        self.select.select(servers, affinity)
    }
}

/// The algorithm's name as the configuration spells it.
pub fn algorithm_name(balance: Balance) -> &'static str {
    match balance {
        Balance::RoundRobin => "roundrobin",
        Balance::LeastConn => "leastconn",
        Balance::Random => "random",
        Balance::Consistent => "consistent",
    }
}

/// Servers in configuration order, skipping those that take no new session; in proportion to
/// their weights when these differ.
#[derive(Default)]
pub struct RoundRobin {
    state: Mutex<Rotation>,
}

#[derive(Default)]
struct Rotation {
    /// Where the plain rotation goes on.
    next: usize,
    /// The smooth weighted round robin's running credit of each server, by position.
    credit: Vec<i64>,
    /// Each server's usable weight for the choice under way, read once per choice (kept to
    /// reuse its allocation).
    usable: Vec<u32>,
}

impl<S: Candidate> Select<S> for RoundRobin {
    fn select(&self, servers: &[Arc<S>], _: Affinity<'_>) -> Option<Arc<S>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.usable.clear();
        state.usable.extend(servers.iter().map(|s| usable(&**s)));
        let (mut lowest, mut highest) = (u32::MAX, 0);
        for &weight in state.usable.iter().filter(|w| **w > 0) {
            lowest = lowest.min(weight);
            highest = highest.max(weight);
        }
        if highest == 0 {
            return None;
        }
        let index = if lowest == highest {
            state.rotate()?
        } else {
            state.weighted()?
        };
        servers.get(index).cloned()
    }
}

impl Rotation {
    /// The next usable server at or after `next`, in configuration order.
    fn rotate(&mut self) -> Option<usize> {
        let count = self.usable.len();
        let start = self.next % count.max(1);
        let index = (0..count)
            .map(|offset| (start + offset) % count)
            .find(|&i| self.usable[i] > 0)?;
        self.next = index + 1;
        Some(index)
    }

    /// Smooth weighted round robin: every usable server earns its weight; the richest (the
    /// first among equals) is chosen and pays the total.
    fn weighted(&mut self) -> Option<usize> {
        self.credit.resize(self.usable.len(), 0);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, &weight) in self.usable.iter().enumerate() {
            if weight == 0 {
                continue;
            }
            self.credit[i] += i64::from(weight);
            total += i64::from(weight);
            if best.is_none_or(|b| self.credit[i] > self.credit[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.credit[chosen] -= total;
        self.next = chosen + 1;
        Some(chosen)
    }
}

/// The server with the fewest requests in flight per unit of weight; ties are broken in
/// rotation.
#[derive(Default)]
pub struct LeastConn {
    rotation: AtomicUsize,
}

impl<S: Candidate> Select<S> for LeastConn {
    fn select(&self, servers: &[Arc<S>], _: Affinity<'_>) -> Option<Arc<S>> {
        let count = servers.len();
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % count.max(1);
        (0..count)
            .filter_map(|offset| servers.get((start + offset) % count))
            .map(|s| (s, usable(&**s)))
            .filter(|(_, weight)| *weight > 0)
            .min_by_key(|(s, weight)| load(&***s, *weight))
            .map(|(s, _)| Arc::clone(s))
    }
}

/// Two servers drawn at random in proportion to their weights; the one with fewer requests in
/// flight per unit of weight wins.
pub struct RandomTwoChoices;

impl<S: Candidate> Select<S> for RandomTwoChoices {
    fn select(&self, servers: &[Arc<S>], _: Affinity<'_>) -> Option<Arc<S>> {
        let weights: Vec<(usize, u32)> = servers
            .iter()
            .enumerate()
            .map(|(i, s)| (i, usable(&**s)))
            .filter(|(_, w)| *w > 0)
            .collect();
        let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut rng = rand::thread_rng();
        let mut draw = || {
            let mut point = rng.gen_range(0..total);
            weights.iter().find_map(|&(i, w)| {
                let w = u64::from(w);
                if point < w {
                    Some((i, w))
                } else {
                    point -= w;
                    None
                }
            })
        };
        let (a, wa) = draw()?;
        let (b, wb) = draw()?;
        let (sa, sb) = (servers.get(a)?, servers.get(b)?);
        let wa = u32::try_from(wa).unwrap_or(u32::MAX);
        let wb = u32::try_from(wb).unwrap_or(u32::MAX);
        let winner = if load(&**sb, wb) < load(&**sa, wa) {
            sb
        } else {
            sa
        };
        Some(Arc::clone(winner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ServerState;

    fn servers(n: usize) -> Vec<Arc<ServerState>> {
        (1..=n)
            .map(|i| {
                Arc::new(ServerState::new(
                    &format!("be{i}"),
                    format!("127.0.0.1:{}", 8080 + i).parse().unwrap(),
                ))
            })
            .collect()
    }

    fn names(picks: impl IntoIterator<Item = Option<Arc<ServerState>>>) -> Vec<String> {
        picks
            .into_iter()
            .map(|s| s.unwrap().name.to_string())
            .collect()
    }

    #[test]
    fn round_robin_follows_the_seed_transcript() {
        let servers = servers(7);
        let rr = RoundRobin::default();
        let first: Vec<_> = (0..5)
            .map(|_| rr.select(&servers, Affinity::Nothing))
            .collect();
        assert_eq!(names(first), ["be1", "be2", "be3", "be4", "be5"]);
        let next: Vec<_> = (0..5)
            .map(|_| rr.select(&servers, Affinity::Nothing))
            .collect();
        assert_eq!(names(next), ["be6", "be7", "be1", "be2", "be3"]);
    }

    #[test]
    fn round_robin_skips_down_servers_and_keeps_its_rotation() {
        let servers = servers(3);
        servers[1].set_up(false);
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..4)
            .map(|_| rr.select(&servers, Affinity::Nothing))
            .collect();
        assert_eq!(names(picks), ["be1", "be3", "be1", "be3"]);
    }

    #[test]
    fn nothing_is_chosen_when_every_server_is_down() {
        let servers = servers(2);
        for s in &servers {
            s.set_up(false);
        }
        assert!(RoundRobin::default()
            .select(&servers, Affinity::Nothing)
            .is_none());
        assert!(LeastConn::default()
            .select(&servers, Affinity::Nothing)
            .is_none());
        assert!(RandomTwoChoices
            .select(&servers, Affinity::Nothing)
            .is_none());
        let none: &[Arc<ServerState>] = &[];
        assert!(RoundRobin::default()
            .select(none, Affinity::Nothing)
            .is_none());
    }

    #[test]
    fn least_conn_prefers_the_idlest_server() {
        let servers = servers(3);
        let _busy = [
            servers[0].start_request(),
            servers[0].start_request(),
            servers[2].start_request(),
        ];
        let lc = LeastConn::default();
        for _ in 0..5 {
            assert_eq!(
                lc.select(&servers, Affinity::Nothing)
                    .unwrap()
                    .name
                    .as_ref(),
                "be2"
            );
        }
    }

    #[test]
    fn least_conn_rotates_between_equals() {
        let servers = servers(3);
        let lc = LeastConn::default();
        let mut seen: Vec<_> = names((0..3).map(|_| lc.select(&servers, Affinity::Nothing)));
        seen.sort();
        assert_eq!(seen, ["be1", "be2", "be3"]);
    }

    #[test]
    fn random_two_choices_uses_only_live_servers_and_avoids_the_busy_one() {
        let servers = servers(2);
        let _busy = servers[0].start_request();
        let picks = names((0..50).map(|_| RandomTwoChoices.select(&servers, Affinity::Nothing)));
        assert!(picks.iter().filter(|n| *n == "be2").count() > 25);
        servers[1].set_up(false);
        assert!(
            names((0..10).map(|_| RandomTwoChoices.select(&servers, Affinity::Nothing)))
                .iter()
                .all(|n| n == "be1")
        );
    }
}
