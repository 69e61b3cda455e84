//! The original demo's story as data, what the original demo printed at each step, and the comparison `--check`
//! makes. No I/O here: `play` performs the steps.

use anyhow::bail;

use super::Lb;

/// One thing a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// `./access-N.sh FROM TO` with TO = FROM + backends.len() - 1; the original demo's answer for
    /// session FROM + i is `Backend backends[i]`.
    Access {
        lb: Lb,
        from: u32,
        backends: &'static [u32],
    },
    /// Waits until `lb`'s pinned table holds sessions FROM..=TO, learned from its peer.
    AwaitTable { lb: Lb, from: u32, to: u32 },
    /// SIGTERM: a graceful stop (`service stickylb stop`).
    Stop(Lb),
    /// SIGKILL: a crash.
    Kill(Lb),
    /// `stickylb run`.
    Start(Lb),
    /// `stickylb reload --upgrade` (`service stickylb reload`).
    Reload(Lb),
    /// Waits until `lb` logs that the full resync from its peer is done.
    AwaitResync(Lb),
}

pub(crate) struct Step {
    pub(crate) title: &'static str,
    pub(crate) actions: Vec<Action>,
}

/// A fresh balancer's first five sessions, round robin over be1..be7.
const FIRST_FIVE: &[u32] = &[1, 2, 3, 4, 5];
/// The next five on a balancer that already placed five.
const NEXT_FIVE: &[u32] = &[6, 7, 1, 2, 3];

/// The original demo's README, step by step, then what HAProxy cannot do.
pub(crate) fn story() -> Vec<Step> {
    use Action::{Access, AwaitResync, AwaitTable, Kill, Reload, Start, Stop};
    let access = |lb, from, backends| Access { lb, from, backends };
    vec![
        Step {
            title: "access-1 1..5: lb-1 balances new sessions round robin; again: they stick",
            actions: vec![
                access(Lb::One, 1, FIRST_FIVE),
                access(Lb::One, 1, FIRST_FIVE),
            ],
        },
        Step {
            title: "access-2 101..105: lb-2 balances on its own, from Backend 1",
            actions: vec![access(Lb::Two, 101, FIRST_FIVE)],
        },
        Step {
            title: "access-1 101..105: lb-1 learned lb-2's sessions (synced)",
            actions: vec![
                AwaitTable {
                    lb: Lb::One,
                    from: 101,
                    to: 105,
                },
                access(Lb::One, 101, FIRST_FIVE),
            ],
        },
        Step {
            title: "access-1 21..25: new sessions round robin on lb-1; access-2 21..25: the same",
            actions: vec![
                access(Lb::One, 21, NEXT_FIVE),
                AwaitTable {
                    lb: Lb::Two,
                    from: 21,
                    to: 25,
                },
                access(Lb::Two, 21, NEXT_FIVE),
            ],
        },
        Step {
            title: "stop lb-2; reload lb-1; access-1 21..25: the table survives the reload",
            actions: vec![
                Stop(Lb::Two),
                Reload(Lb::One),
                access(Lb::One, 21, NEXT_FIVE),
            ],
        },
        Step {
            title: "beyond the original demo: restart lb-1 (HAProxy loses the table here), kill -9 it, \
                    start lb-2 again",
            actions: vec![
                Stop(Lb::One),
                Start(Lb::One),
                access(Lb::One, 21, NEXT_FIVE),
                Kill(Lb::One),
                Start(Lb::One),
                access(Lb::One, 21, NEXT_FIVE),
                Start(Lb::Two),
                AwaitResync(Lb::Two),
                access(Lb::Two, 21, NEXT_FIVE),
            ],
        },
    ]
}

/// The last session number of an access of `backends.len()` sessions from `from`.
pub(crate) fn last_session(from: u32, backends: &[u32]) -> u32 {
    let count = u32::try_from(backends.len()).unwrap_or(u32::MAX);
    from.saturating_add(count.saturating_sub(1))
}

/// What the original demo's access script printed: `NNNNN - Backend N` per session.
pub(crate) fn expected_output(from: u32, backends: &[u32]) -> Vec<String> {
    (from..)
        .zip(backends)
        .map(|(session, backend)| format!("{session:05} - Backend {backend}"))
        .collect()
}

/// `None` when `actual` prints exactly the `expected` lines; otherwise every line, marked
/// `  ` (same), `- ` (expected, missing or different) or `+ ` (printed instead).
pub(crate) fn diff(expected: &[String], actual: &str) -> Option<Vec<String>> {
    let actual: Vec<&str> = actual.lines().collect();
    if actual.len() == expected.len() && actual.iter().zip(expected).all(|(a, e)| a == e) {
        return None;
    }
    let mut lines = Vec::new();
    for i in 0..expected.len().max(actual.len()) {
        match (expected.get(i), actual.get(i)) {
            (Some(e), Some(a)) if e == a => lines.push(format!("  {e}")),
            (e, a) => {
                lines.extend(e.map(|e| format!("- {e}")));
                lines.extend(a.map(|a| format!("+ {a}")));
            }
        }
    }
    Some(lines)
}

/// Which steps matched what the original demo printed.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    steps: usize,
    differing: Vec<usize>,
}

impl Outcome {
    pub(crate) fn record(&mut self, step: usize, matched: bool) {
        self.steps += 1;
        if !matched {
            self.differing.push(step);
        }
    }

    /// The `--check` summary line.
    pub(crate) fn summary(&self) -> String {
        if self.differing.is_empty() {
            format!("all {} steps as expected", self.steps)
        } else {
            let steps: Vec<String> = self.differing.iter().map(ToString::to_string).collect();
            format!(
                "{} of {} steps differ from the expected output: {}",
                self.differing.len(),
                self.steps,
                steps.join(", ")
            )
        }
    }

    /// Under `--check`, prints the summary and fails if any step differed.
    pub(crate) fn into_result(self, check: bool) -> anyhow::Result<()> {
        if !check {
            return Ok(());
        }
        println!("\n==> demo --check: {}", self.summary());
        if !self.differing.is_empty() {
            bail!("demo --check: {}", self.summary());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
