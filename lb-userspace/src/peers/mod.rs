//! HAProxy's peers protocol, version 2.1, as docs/PEERS.md describes it: the wire codec and
//! the session state machines (no I/O of their own), and the tasks that run them over TCP to
//! mirror our stick tables with the other members of the peers section.
//!
//! A session is a TCP connection between two members of a peers section. The connecting side
//! sends a text [`handshake::Hello`], the accepting side answers a status line, then both
//! exchange binary [`message::Message`]s: table definitions, entry updates and their acks,
//! resync control and heartbeats.
//!
//! Without I/O: [`varint`], [`message`] and [`handshake`] are the codec; [`opening`] is the
//! handshake and [`session`] the rest of a session, both as state machines fed with bytes and
//! time. Tests replay bytes recorded from HAProxy 2.6 into them
//! (`tests/fixtures/peers/README.md`).
//!
//! With I/O: [`node`] listens on the peers port (taking connections from `allow`ed sources
//! only) and runs one [`link`] per other member, which keeps a session open with it
//! ([`connect`] opens it, over [`tls`] when configured; [`driver`] runs it); [`tables`] turns
//! our backends' tables into the session's inputs and its learned entries into table changes;
//! [`stats`] is what the monitor shows. How concurrent choices converge is in
//! [`crate::table`]'s `replica` module.

pub mod connect;
pub mod driver;
pub mod handshake;
pub mod link;
pub mod message;
pub mod node;
pub mod opening;
pub mod session;
pub mod stats;
pub mod tables;
pub mod tls;
#[cfg(test)]
mod transcript;
pub mod varint;

pub use self::{
    handshake::{accept_hello, decode_status, Hello, HelloError, Status, Version},
    message::{
        decode_frame, DecodeError, Decoder, EncodeError, Encoder, Message, ServerKey,
        TableDefinition, Update, UpdateKind,
    },
};
