//! Sessions with HAProxy 2.6 as recorded in `tests/fixtures/peers/` (how: that directory's
//! README), for the unit tests of the machines that replay them.

use std::collections::VecDeque;

/// Who sent a recorded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Haproxy,
    Us,
}

/// A recorded session: its messages in the order they went, each with who sent it.
pub(super) struct Transcript(VecDeque<(Side, Vec<u8>)>);

impl Transcript {
    /// The fixture `name` (without `.txt`).
    pub(super) fn load(name: &str) -> Self {
        let text = match name {
            "haproxy-dials-us" => include_str!("../../tests/fixtures/peers/haproxy-dials-us.txt"),
            "we-dial-haproxy" => include_str!("../../tests/fixtures/peers/we-dial-haproxy.txt"),
            "haproxy-heartbeat" => {
                include_str!("../../tests/fixtures/peers/haproxy-heartbeat.txt")
            }
            other => panic!("no transcript {other}"),
        };
        Self(text.lines().filter_map(parse_line).collect())
    }

    /// The next message, which `from` must have sent.
    pub(super) fn next(&mut self, from: Side) -> Vec<u8> {
        match self.0.pop_front() {
            Some((sender, bytes)) if sender == from => bytes,
            other => panic!("expected a message from {from:?}, the transcript has {other:?}"),
        }
    }

    /// The next messages `from` sent in a row, as one stream.
    pub(super) fn next_run(&mut self, from: Side) -> Vec<u8> {
        let mut run = Vec::new();
        while self.0.front().is_some_and(|(sender, _)| *sender == from) {
            run.extend(self.next(from));
        }
        run
    }

    pub(super) fn is_done(&self) -> bool {
        self.0.is_empty()
    }
}

/// `< 00 01  # comment` (HAProxy sent) or `> ...` (we sent); `#` lines are comments.
fn parse_line(line: &str) -> Option<(Side, Vec<u8>)> {
    let (way, rest) = line.split_at_checked(1)?;
    let side = match way {
        "<" => Side::Haproxy,
        ">" => Side::Us,
        _ => return None,
    };
    let hex = rest.split('#').next().unwrap_or_default();
    let bytes = hex
        .split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("fixture byte"))
        .collect();
    Some((side, bytes))
}
