//! From the two legs' snapshots to the two `SPLICE_FLOWS` entries (`docs/SPLICE.md`,
//! "Translation").
//!
//! A is the client leg (client <-> proxy), B the server leg (proxy <-> server). Sequence
//! numbers: what the client sends continues the proxy's stream to the server, so
//! client->server `seq += B.snd - A.rcv` and `ack += B.rcv - A.snd` (SACK edges like ack);
//! server->client is the mirror image. Timestamps: each peer's TSval is mapped onto the clock
//! of the proxy socket that faced the other peer (plus a 2 ms margin for `TCP_TIMESTAMP`
//! clearing the low bit), and each TSecr is mapped back.

use std::net::SocketAddrV4;

use lb_common::{SpliceEntry, SpliceKey, SPLICE_F_SACK, SPLICE_F_TIMESTAMPS, SPLICE_STATE_SPLICE};

use super::repair::{
    Snapshot, TCPI_OPT_ECN, TCPI_OPT_SACK, TCPI_OPT_TIMESTAMPS, TCPI_OPT_USEC_TS, TCPI_OPT_WSCALE,
    TCP_ESTABLISHED,
};

/// Margin added to the timestamp offsets, in timestamp ticks (ms).
const TS_MARGIN: u32 = 2;

/// One proxy socket and what the program observed of its peer.
#[derive(Clone, Copy, Debug)]
pub struct Leg {
    /// The proxy socket's address.
    pub local: SocketAddrV4,
    /// Its peer's (the client's, or the server's).
    pub peer: SocketAddrV4,
    /// The interface toward the peer: where the other direction's packets are redirected.
    pub ifindex: u32,
    pub snapshot: Snapshot,
    /// The latest TSval the program saw from the peer (0: none).
    pub peer_last_tsval: u32,
}

impl Leg {
    /// The key under which the peer's packets arrive.
    pub fn arrival_key(&self) -> SpliceKey {
        tuple_key(self.peer, self.local)
    }
}

/// TCP option bytes of every segment when timestamps are on (TSopt, 10 bytes, padded to 12).
const TIMESTAMP_OPTION_LEN: u32 = 12;

/// The MSS rule: once spliced, each peer's segments (sized for the proxy socket it talks to)
/// go on unchanged to the other peer, so each peer's largest segment must fit the MSS of the
/// other leg. A peer's largest payload is what that leg's proxy socket advertised, less the
/// options; the other peer accepts what the proxy socket facing it sends (`snd_mss`). With the
/// same MTU on both sides, both hold with equality.
fn check_mss(a: &Snapshot, b: &Snapshot, timestamps: bool) -> Result<(), Refusal> {
    let options = if timestamps { TIMESTAMP_OPTION_LEN } else { 0 };
    for (from, to, sender, receiver) in [("client", "server", a, b), ("server", "client", b, a)] {
        let sent = sender.adv_mss.saturating_sub(options);
        if sent > receiver.snd_mss {
            return Err(Refusal::MssTooLarge {
                from,
                to,
                sent,
                allowed: receiver.snd_mss,
            });
        }
    }
    Ok(())
}

/// The key of packets from `src` to `dst`.
pub fn tuple_key(src: SocketAddrV4, dst: SocketAddrV4) -> SpliceKey {
    SpliceKey {
        saddr: u32::from_ne_bytes(src.ip().octets()),
        daddr: u32::from_ne_bytes(dst.ip().octets()),
        sport: src.port().to_be(),
        dport: dst.port().to_be(),
    }
}

/// Why two legs cannot be spliced (the connection stays in userspace).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("leg {leg} is not established (state {state})")]
    NotEstablished { leg: char, state: u8 },
    #[error("leg {leg} has queued bytes (in {inq}, out {outq})")]
    Queued { leg: char, inq: u32, outq: u32 },
    #[error("leg {leg} uses microsecond timestamps")]
    UsecTimestamps { leg: char },
    #[error("the legs negotiated different options (client leg {a:#x}, server leg {b:#x})")]
    OptionMismatch { a: u8, b: u8 },
    #[error("timestamps are on but no TSval was observed from the {peer}")]
    NoTsval { peer: &'static str },
    #[error(
        "segments of up to {sent} bytes from the {from} would exceed the {to}'s MSS of {allowed}"
    )]
    MssTooLarge {
        from: &'static str,
        to: &'static str,
        sent: u32,
        allowed: u32,
    },
}

/// The two entries to commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Client -> server: packets arriving from the client.
    pub client_key: SpliceKey,
    pub client_entry: SpliceEntry,
    /// Server -> client: packets arriving from the server.
    pub server_key: SpliceKey,
    pub server_entry: SpliceEntry,
}

/// Checks that the legs can be spliced and computes both entries.
pub fn translate(a: &Leg, b: &Leg) -> Result<Translation, Refusal> {
    for (leg, name) in [(a, 'A'), (b, 'B')] {
        let s = &leg.snapshot;
        if s.state != TCP_ESTABLISHED {
            return Err(Refusal::NotEstablished {
                leg: name,
                state: s.state,
            });
        }
        if s.inq != 0 || s.outq != 0 {
            return Err(Refusal::Queued {
                leg: name,
                inq: s.inq,
                outq: s.outq,
            });
        }
        if s.options & TCPI_OPT_USEC_TS != 0 {
            return Err(Refusal::UsecTimestamps { leg: name });
        }
    }
    let mask = TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE | TCPI_OPT_ECN;
    let (a_opts, b_opts) = (a.snapshot.options & mask, b.snapshot.options & mask);
    if a_opts != b_opts {
        return Err(Refusal::OptionMismatch {
            a: a.snapshot.options,
            b: b.snapshot.options,
        });
    }
    let timestamps = a_opts & TCPI_OPT_TIMESTAMPS != 0;
    check_mss(&a.snapshot, &b.snapshot, timestamps)?;
    if timestamps {
        if a.peer_last_tsval == 0 {
            return Err(Refusal::NoTsval { peer: "client" });
        }
        if b.peer_last_tsval == 0 {
            return Err(Refusal::NoTsval { peer: "server" });
        }
    }
    let mut flags = 0;
    if timestamps {
        flags |= SPLICE_F_TIMESTAMPS;
    }
    if a_opts & TCPI_OPT_SACK != 0 {
        flags |= SPLICE_F_SACK;
    }
    let (sa, sb) = (&a.snapshot, &b.snapshot);
    // Client clock -> B's clock, server clock -> A's clock.
    let off_cs = sb
        .ts_clock
        .wrapping_sub(a.peer_last_tsval)
        .wrapping_add(TS_MARGIN);
    let off_sc = sa
        .ts_clock
        .wrapping_sub(b.peer_last_tsval)
        .wrapping_add(TS_MARGIN);
    let client_entry = SpliceEntry {
        state: SPLICE_STATE_SPLICE,
        flags,
        out_ifindex: b.ifindex,
        seq_delta: sb.snd_nxt.wrapping_sub(sa.rcv_nxt),
        ack_delta: sb.rcv_nxt.wrapping_sub(sa.snd_nxt),
        tsval_delta: off_cs,
        tsecr_delta: off_sc.wrapping_neg(),
        wscale_in: sa.snd_wscale,
        wscale_out: sb.rcv_wscale,
        last_tsval: a.peer_last_tsval,
        ..rewrite_to(b.local, b.peer)
    };
    let server_entry = SpliceEntry {
        state: SPLICE_STATE_SPLICE,
        flags,
        out_ifindex: a.ifindex,
        seq_delta: sa.snd_nxt.wrapping_sub(sb.rcv_nxt),
        ack_delta: sa.rcv_nxt.wrapping_sub(sb.snd_nxt),
        tsval_delta: off_sc,
        tsecr_delta: off_cs.wrapping_neg(),
        wscale_in: sb.snd_wscale,
        wscale_out: sa.rcv_wscale,
        last_tsval: b.peer_last_tsval,
        ..rewrite_to(a.local, a.peer)
    };
    Ok(Translation {
        client_key: a.arrival_key(),
        client_entry,
        server_key: b.arrival_key(),
        server_entry,
    })
}

/// An entry whose packets leave as `src` -> `dst`.
fn rewrite_to(src: SocketAddrV4, dst: SocketAddrV4) -> SpliceEntry {
    let key = tuple_key(src, dst);
    SpliceEntry {
        new_saddr: key.saddr,
        new_daddr: key.daddr,
        new_sport: key.sport,
        new_dport: key.dport,
        ..SpliceEntry::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(snd_nxt: u32, rcv_nxt: u32, ts_clock: u32, snd_ws: u8, rcv_ws: u8) -> Snapshot {
        Snapshot {
            snd_nxt,
            rcv_nxt,
            ts_clock,
            state: TCP_ESTABLISHED,
            options: TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE,
            snd_wscale: snd_ws,
            rcv_wscale: rcv_ws,
            snd_mss: 1448,
            rcv_mss: 1448,
            adv_mss: 1460,
            inq: 0,
            outq: 0,
        }
    }

    fn legs() -> (Leg, Leg) {
        let a = Leg {
            local: "10.0.1.1:8080".parse().unwrap(),
            peer: "10.0.1.2:40000".parse().unwrap(),
            ifindex: 2,
            snapshot: snap(5000, 1000, 700, 7, 9),
            peer_last_tsval: 100,
        };
        let b = Leg {
            local: "10.0.2.1:50000".parse().unwrap(),
            peer: "10.0.2.2:80".parse().unwrap(),
            ifindex: 3,
            snapshot: snap(u32::MAX - 10, 9000, 800, 10, 8),
            peer_last_tsval: 200,
        };
        (a, b)
    }

    #[test]
    fn client_bytes_continue_the_server_legs_stream() {
        let (a, b) = legs();
        let t = translate(&a, &b).unwrap();
        // The client's next byte (A.rcv_nxt) becomes the proxy's next byte to the server.
        assert_eq!(
            1000u32.wrapping_add(t.client_entry.seq_delta),
            u32::MAX - 10
        );
        // The client acknowledging A.snd_nxt acknowledges B.rcv_nxt to the server.
        assert_eq!(5000u32.wrapping_add(t.client_entry.ack_delta), 9000);
        // And the mirror image.
        assert_eq!(9000u32.wrapping_add(t.server_entry.seq_delta), 5000);
        assert_eq!((u32::MAX - 10).wrapping_add(t.server_entry.ack_delta), 1000);
        assert_eq!(t.client_entry.out_ifindex, 3);
        assert_eq!(t.server_entry.out_ifindex, 2);
        assert_eq!(
            (t.client_entry.wscale_in, t.client_entry.wscale_out),
            (7, 8)
        );
        assert_eq!(
            (t.server_entry.wscale_in, t.server_entry.wscale_out),
            (10, 9)
        );
        assert_eq!(t.client_entry.flags, SPLICE_F_TIMESTAMPS | SPLICE_F_SACK);
    }

    #[test]
    fn keys_and_rewrites_are_each_others_reverse() {
        let (a, b) = legs();
        let t = translate(&a, &b).unwrap();
        assert_eq!(t.client_key, tuple_key(a.peer, a.local));
        assert_eq!(t.server_key, tuple_key(b.peer, b.local));
        // What the client entry emits is what the server answers to, reversed.
        assert_eq!(SpliceKey::reverse_of(&t.client_entry), t.server_key);
        assert_eq!(SpliceKey::reverse_of(&t.server_entry), t.client_key);
    }

    #[test]
    fn timestamps_map_onto_the_far_sockets_clock_and_back() {
        let (a, b) = legs();
        let t = translate(&a, &b).unwrap();
        // The client's last TSval lands just past B's clock, which the server last saw.
        assert_eq!(
            100u32.wrapping_add(t.client_entry.tsval_delta),
            800 + TS_MARGIN
        );
        assert_eq!(
            200u32.wrapping_add(t.server_entry.tsval_delta),
            700 + TS_MARGIN
        );
        // A translated server TSval echoed by the client maps back to the server's value.
        let to_client = 250u32.wrapping_add(t.server_entry.tsval_delta);
        assert_eq!(to_client.wrapping_add(t.client_entry.tsecr_delta), 250);
    }

    #[test]
    fn refuses_what_cannot_be_translated() {
        let (mut a, b) = legs();
        a.snapshot.options &= !TCPI_OPT_TIMESTAMPS;
        assert!(matches!(
            translate(&a, &b),
            Err(Refusal::OptionMismatch { .. })
        ));
        let (mut a, b) = legs();
        a.snapshot.outq = 10;
        assert!(matches!(
            translate(&a, &b),
            Err(Refusal::Queued { leg: 'A', .. })
        ));
        let (a, mut b) = legs();
        b.peer_last_tsval = 0;
        assert_eq!(translate(&a, &b), Err(Refusal::NoTsval { peer: "server" }));
    }

    #[test]
    fn segments_must_fit_the_other_legs_mss() {
        // A client behind a smaller MTU (1400): the server's 1448-byte segments would not fit.
        let (mut a, b) = legs();
        a.snapshot.snd_mss = 1348;
        assert_eq!(
            translate(&a, &b),
            Err(Refusal::MssTooLarge {
                from: "server",
                to: "client",
                sent: 1448,
                allowed: 1348
            })
        );
        // The proxy advertised more to the client than the server accepts.
        let (mut a, b) = legs();
        a.snapshot.adv_mss = 9000;
        assert!(matches!(
            translate(&a, &b),
            Err(Refusal::MssTooLarge { from: "client", .. })
        ));
        // A server that accepts more than the client sends is fine.
        let (a, mut b) = legs();
        b.snapshot.snd_mss = 8948;
        assert!(translate(&a, &b).is_ok());
    }
}
