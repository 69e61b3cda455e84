//! HAProxy's peers protocol, version 2.1: the wire codec (no I/O of its own) and the sessions
//! that mirror our stick tables with the other members of the peers section.
//!
//! A session is a TCP connection between two members of a peers section. The connecting side
//! sends a text [`handshake::Hello`], the accepting side answers a status line, then both
//! exchange binary [`message::Message`]s: table definitions, entry updates and their acks,
//! resync control and heartbeats. Facts come from HAProxy's `src/peers.c` (2.6) and were
//! checked against a running HAProxy 2.6.12 (see `tests/peers_codec_haproxy.rs`).
//!
//! On top of the codec: [`node`] listens on the peers port and runs one [`link`] per other
//! member, which keeps one [`session`] open with it; [`tables`] says how our backends' tables
//! look on the wire and [`stats`] what the monitor shows. How concurrent choices converge is
//! in [`crate::table`]'s `replica` module.

pub mod connect;
pub mod handshake;
pub mod link;
pub mod message;
pub mod node;
pub mod session;
pub mod stats;
pub mod tables;
pub mod varint;

pub use self::{
    handshake::{accept_hello, decode_status, Hello, HelloError, Status, Version},
    message::{
        decode_frame, DecodeError, Decoder, EncodeError, Encoder, Message, ServerKey,
        TableDefinition, Update, UpdateKind,
    },
};
