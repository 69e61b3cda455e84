//! Choosing a server for a request that is not (or no longer) stuck to one.
//!
//! Selection only ever sees the servers that are up. Round robin advances only when it is asked
//! to choose, which happens for new sessions, redispatches and cookie-less requests, never for
//! a sticky hit: that is what makes sessions 21-25 of the demo (README.md, step 4) land on 6,
//! 7, 1, 2, 3.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex, PoisonError,
};

use rand::Rng as _;

use crate::config::Balance;

/// What selection knows of a server (the backend's server state implements it): selection
/// depends on this, not on the backend.
pub trait Candidate {
    fn is_up(&self) -> bool;
    /// Requests in flight.
    fn in_flight(&self) -> u64;
}

/// A load-balancing algorithm.
pub trait Select<S>: Send + Sync {
    /// Picks one of `servers` that is up, or `None` when none is.
    fn select(&self, servers: &[Arc<S>]) -> Option<Arc<S>>;
}

pub fn selector<S: Candidate>(balance: Balance) -> Box<dyn Select<S>> {
    match balance {
        Balance::RoundRobin => Box::new(RoundRobin::default()),
        Balance::LeastConn => Box::new(LeastConn::default()),
        Balance::Random => Box::new(RandomTwoChoices),
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
    fn select(&self, servers: &[Arc<S>]) -> Option<Arc<S>> {
        self.select.select(servers)
    }
}

/// The algorithm's name as the configuration spells it.
pub fn algorithm_name(balance: Balance) -> &'static str {
    match balance {
        Balance::RoundRobin => "roundrobin",
        Balance::LeastConn => "leastconn",
        Balance::Random => "random",
    }
}

/// Servers in configuration order, skipping those that are down.
#[derive(Default)]
pub struct RoundRobin {
    next: Mutex<usize>,
}

impl<S: Candidate> Select<S> for RoundRobin {
    fn select(&self, servers: &[Arc<S>]) -> Option<Arc<S>> {
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let count = servers.len();
        let start = *next % count.max(1);
        let (index, server) = (0..count)
            .map(|offset| (start + offset) % count)
            .find_map(|i| servers.get(i).filter(|s| s.is_up()).map(|s| (i, s)))?;
        *next = index + 1;
        Some(Arc::clone(server))
    }
}

/// The server with the fewest requests in flight; ties are broken in rotation.
#[derive(Default)]
pub struct LeastConn {
    rotation: AtomicUsize,
}

impl<S: Candidate> Select<S> for LeastConn {
    fn select(&self, servers: &[Arc<S>]) -> Option<Arc<S>> {
        let count = servers.len();
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % count.max(1);
        (0..count)
            .filter_map(|offset| servers.get((start + offset) % count))
            .filter(|s| s.is_up())
            .min_by_key(|s| s.in_flight())
            .cloned()
    }
}

/// Two servers drawn at random; the one with fewer requests in flight wins.
pub struct RandomTwoChoices;

impl<S: Candidate> Select<S> for RandomTwoChoices {
    fn select(&self, servers: &[Arc<S>]) -> Option<Arc<S>> {
        let up: Vec<&Arc<S>> = servers.iter().filter(|s| s.is_up()).collect();
        let mut rng = rand::thread_rng();
        let a = up.get(rng.gen_range(0..up.len().max(1)))?;
        let b = up.get(rng.gen_range(0..up.len()))?;
        let winner = if b.in_flight() < a.in_flight() { b } else { a };
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
        let first: Vec<_> = (0..5).map(|_| rr.select(&servers)).collect();
        assert_eq!(names(first), ["be1", "be2", "be3", "be4", "be5"]);
        let next: Vec<_> = (0..5).map(|_| rr.select(&servers)).collect();
        assert_eq!(names(next), ["be6", "be7", "be1", "be2", "be3"]);
    }

    #[test]
    fn round_robin_skips_down_servers_and_keeps_its_rotation() {
        let servers = servers(3);
        servers[1].set_up(false);
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..4).map(|_| rr.select(&servers)).collect();
        assert_eq!(names(picks), ["be1", "be3", "be1", "be3"]);
    }

    #[test]
    fn nothing_is_chosen_when_every_server_is_down() {
        let servers = servers(2);
        for s in &servers {
            s.set_up(false);
        }
        assert!(RoundRobin::default().select(&servers).is_none());
        assert!(LeastConn::default().select(&servers).is_none());
        assert!(RandomTwoChoices.select(&servers).is_none());
        let none: &[Arc<ServerState>] = &[];
        assert!(RoundRobin::default().select(none).is_none());
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
            assert_eq!(lc.select(&servers).unwrap().name.as_ref(), "be2");
        }
    }

    #[test]
    fn least_conn_rotates_between_equals() {
        let servers = servers(3);
        let lc = LeastConn::default();
        let mut seen: Vec<_> = names((0..3).map(|_| lc.select(&servers)));
        seen.sort();
        assert_eq!(seen, ["be1", "be2", "be3"]);
    }

    #[test]
    fn random_two_choices_uses_only_live_servers_and_avoids_the_busy_one() {
        let servers = servers(2);
        let _busy = servers[0].start_request();
        let picks = names((0..50).map(|_| RandomTwoChoices.select(&servers)));
        assert!(picks.iter().filter(|n| *n == "be2").count() > 25);
        servers[1].set_up(false);
        assert!(names((0..10).map(|_| RandomTwoChoices.select(&servers)))
            .iter()
            .all(|n| n == "be1"));
    }
}
