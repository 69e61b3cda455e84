//! When a relayed connection is worth handing to the kernel.
//!
//! A hand-off costs a new connection to the server from a reserved port (the pooled ones cannot
//! be spliced: see [`super::ports`]), two map entries, a few dozen syscalls and, if a request
//! races it, that request's retransmission. It pays only on connections that go on carrying
//! requests afterwards. So a connection is served exactly as with `fastpath = "off"` (pooled
//! server connections, each request routed by its own cookie) until it has shown that it lives
//! long, by any of:
//!
//! - **exchanges**: it reached its [`Policy::exchanges`]-th request (the hand-off goes with that
//!   request's answer; a connection's expected remaining life grows with its age);
//! - **a pause**: its client sent nothing for [`Policy::idle`] after a complete exchange (a
//!   person reading a page; a closed-loop benchmark never pauses);
//! - **a large body**: a response of [`LARGE_BODY`] bytes or more (bulk transfers come in
//!   series);
//! - **a tunnel**: an accepted upgrade (`101`) or `CONNECT` (handed over at once).
//!
//! Only connections whose last exchange had a sticky session are handed over: the rest of the
//! connection goes to that session's server. A failed attempt doubles the exchanges and the
//! pause the connection must show before the next one; a connection whose legs cannot be
//! translated is never tried again.

use std::time::Duration;

/// A response body this large makes the next exchange a hand-off candidate.
pub const LARGE_BODY: u64 = 1 << 20;

/// Races (see [`Tracker::raced`]) a connection may have before it backs off as after a failure.
const RACES_PER_BACKOFF: u32 = 16;

/// The longest pause the backoff asks for.
const MAX_IDLE: Duration = Duration::from_secs(10);

/// The thresholds (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The request (counting from 1) whose answer hands the connection over: it goes over a leg
    /// that can be spliced, and the attempt follows its answer.
    pub exchanges: u32,
    /// A pause of the client this long after an exchange triggers a hand-off.
    pub idle: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            exchanges: 8,
            idle: Duration::from_millis(50),
        }
    }
}

/// One connection's progress toward a hand-off.
#[derive(Clone, Debug)]
pub struct Tracker {
    /// Complete exchanges so far.
    exchanges: u32,
    /// The exchange (1-based) from which the next attempt is due.
    due_at: u32,
    idle: Duration,
    /// The last exchange asked for the next one to be a candidate (a large body).
    next_is_due: bool,
    /// Attempts that found a request already there.
    races: u32,
    never: bool,
}

impl Tracker {
    pub fn new(policy: Policy) -> Self {
        Self {
            exchanges: 0,
            due_at: policy.exchanges.max(1),
            idle: policy.idle,
            next_is_due: false,
            races: 0,
            never: false,
        }
    }

    /// Records a complete exchange and how large its response body was.
    pub fn exchanged(&mut self, response_body: u64) {
        self.exchanges = self.exchanges.saturating_add(1);
        self.next_is_due = response_body >= LARGE_BODY;
    }

    /// Whether the exchange about to start should go over a leg that can be spliced (it is
    /// tried after that exchange).
    pub fn due(&self) -> bool {
        !self.never && (self.next_is_due || self.exchanges.saturating_add(1) >= self.due_at)
    }

    /// How long to wait for the next request before trying a hand-off; `None`: do not.
    pub fn pause(&self) -> Option<Duration> {
        (!self.never).then_some(self.idle)
    }

    /// An attempt found a request already there before it armed anything (it cost a few
    /// syscalls): the next exchange is tried again, but a connection that keeps racing (a
    /// closed-loop client) backs off every [`RACES_PER_BACKOFF`] races.
    pub fn raced(&mut self) {
        self.races = self.races.saturating_add(1);
        if self.races.is_multiple_of(RACES_PER_BACKOFF) {
            self.failed();
        }
    }

    /// An attempt did not splice: ask for twice the evidence before the next one.
    pub fn failed(&mut self) {
        self.due_at = self
            .exchanges
            .saturating_mul(2)
            .max(self.due_at.saturating_add(1));
        self.idle = (self.idle * 2).min(MAX_IDLE);
        self.next_is_due = false;
    }

    /// The connection cannot be spliced (its legs cannot be translated): never try again.
    pub fn never(&mut self) {
        self.never = true;
    }

    pub fn exchanges(&self) -> u32 {
        self.exchanges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            exchanges: 4,
            idle: Duration::from_millis(50),
        }
    }

    #[test]
    fn a_connection_is_due_from_its_nth_exchange_and_backs_off_after_a_failure() {
        let mut tracker = Tracker::new(policy());
        let mut due = Vec::new();
        for _ in 0..20 {
            let candidate = tracker.due();
            due.push(candidate);
            tracker.exchanged(100);
            if candidate {
                // The attempt after the exchange failed.
                tracker.failed();
            }
        }
        // Exchanges are 1-based: the 4th is the first candidate; after failing there, the 8th;
        // then the 16th.
        let at: Vec<usize> = due
            .iter()
            .enumerate()
            .filter(|(_, due)| **due)
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(at, [4, 8, 16]);
    }

    #[test]
    fn races_back_off_only_every_so_often() {
        let mut tracker = Tracker::new(policy());
        for _ in 0..3 {
            tracker.exchanged(100);
        }
        let mut tried = 0;
        for _ in 0..100 {
            if tracker.due() {
                tried += 1;
                tracker.exchanged(100);
                tracker.raced();
            } else {
                tracker.exchanged(100);
            }
        }
        // From exchange 4: 16 races in a row (4 to 19), then due again from exchange 38 (twice
        // the 19 exchanges by then): 16 more until 53, then not before 106.
        assert_eq!(tried, 32);
    }

    #[test]
    fn pauses_double_and_stop_at_the_cap() {
        let mut tracker = Tracker::new(policy());
        assert_eq!(tracker.pause(), Some(Duration::from_millis(50)));
        tracker.failed();
        assert_eq!(tracker.pause(), Some(Duration::from_millis(100)));
        for _ in 0..20 {
            tracker.failed();
        }
        assert_eq!(tracker.pause(), Some(MAX_IDLE));
        tracker.never();
        assert_eq!(tracker.pause(), None);
        assert!(!tracker.due());
    }

    #[test]
    fn a_large_body_makes_the_next_exchange_a_candidate() {
        let mut tracker = Tracker::new(policy());
        tracker.exchanged(LARGE_BODY);
        assert!(tracker.due());
        tracker.exchanged(10);
        assert!(!tracker.due());
    }
}
