//! HAProxy's peers protocol, version 2.1, at the wire level: the codec a peers session is
//! built on, with no I/O of its own.
//!
//! A session is a TCP connection between two members of a peers section. The connecting side
//! sends a text [`handshake::Hello`], the accepting side answers a status line, then both
//! exchange binary [`message::Message`]s: table definitions, entry updates and their acks,
//! resync control and heartbeats. Facts come from HAProxy's `src/peers.c` (2.6) and were
//! checked against a running HAProxy 2.6.12 (see `tests/peers_codec_haproxy.rs`).

pub mod handshake;
pub mod message;
pub mod varint;

pub use self::{
    handshake::{accept_hello, decode_status, Hello, HelloError, Status, Version},
    message::{
        decode_frame, DecodeError, Decoder, EncodeError, Encoder, Message, ServerKey,
        TableDefinition, Update, UpdateKind,
    },
};
