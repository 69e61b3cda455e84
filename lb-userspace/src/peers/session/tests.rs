//! The session replayed against sessions recorded with HAProxy 2.6 (`tests/fixtures/peers/`):
//! what HAProxy sent is fed in, and what the session answers is compared with what HAProxy
//! accepted in the recording, byte for byte where our side was ours to choose.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    super::{
        message::{Encoder, ServerKey},
        opening::{Answer, Answered, Dial},
        transcript::{Side, Transcript},
        Version,
    },
    *,
};

/// Our table in the recordings: `back-session`, `len 32`, `expire 30m`, which we number 5
/// (HAProxy numbers its own 1).
const OUR_TABLE_ID: u64 = 5;
const MEMBERS: [&str; 2] = ["hap", "us"];

fn our_table(key_len: u64) -> TableDefinition {
    TableDefinition::sticky_string(OUR_TABLE_ID, "back-session", key_len, 1_800_000)
}

fn setup(key_len: u64) -> Setup {
    Setup {
        tables: vec![our_table(key_len)],
        timed: true,
        resume: Vec::new(),
        ask_resync: true,
    }
}

fn entry(key: &str, server: &str, server_id: i64) -> LocalEntry {
    LocalEntry {
        key: key.as_bytes().to_vec(),
        server: Arc::from(server),
        server_id,
    }
}

fn learned(key: &str, server: &str, expire_ms: Option<u32>) -> Event {
    Event::Learned(Learned {
        table: 0,
        key: key.as_bytes().to_vec(),
        server: ServerKey::new(server).unwrap(),
        expire_ms,
    })
}

/// Everything the session has to send, as one stream.
fn drain(session: &mut Session, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(bytes) = session.poll_transmit(now).unwrap() {
        out.extend(bytes);
    }
    out
}

fn events(session: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

fn encoded(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new().encode(message, &mut out).unwrap();
    out
}

fn ack(table_id: u64, update_id: u32) -> Vec<u8> {
    encoded(&Message::Ack {
        table_id,
        update_id,
    })
}

/// Accepts the recorded hello: answers what we answered in the recording.
fn answer_hello(transcript: &mut Transcript) -> Version {
    let members = MEMBERS.map(String::from);
    let hello = transcript.next(Side::Haproxy);
    let Some(Answered::Accepted { reply, hello, open }) =
        Answer::new("us", &members).received(&hello)
    else {
        panic!("HAProxy's hello was not accepted");
    };
    assert_eq!(reply, transcript.next(Side::Us));
    assert_eq!((hello.caller.as_str(), open.leftover.len()), ("hap", 0));
    open.version
}

#[test]
fn haproxy_dialling_us_is_taught_acks_and_pushes_live_updates() {
    let mut transcript = Transcript::load("haproxy-dials-us");
    let version = answer_hello(&mut transcript);
    assert!(version.has_timed_updates());
    let t0 = Instant::now();
    let mut session = Session::new(setup(32), t0).unwrap();
    // Every session asks for a full resync first (the recording's harness did not).
    assert_eq!(drain(&mut session, t0), [0x00, 0x00]);

    // HAProxy asks us for a resync; our lesson is what HAProxy took in the recording.
    session
        .received(&transcript.next(Side::Haproxy), t0)
        .unwrap();
    assert!(session.wants_lesson());
    session.teach(vec![Lesson {
        table: 0,
        seq: 7,
        entries: vec![(entry("abc123", "be2", 2), 600_000)],
    }]);
    assert_eq!(session.teaching(), Teaching::Sending);
    assert_eq!(drain(&mut session, t0), transcript.next_run(Side::Us));
    assert_eq!(session.teaching(), Teaching::Idle);
    assert_eq!(events(&mut session), [Event::LessonTaught { entries: 1 }]);
    assert_eq!(session.pushed_seq(0), 7);

    // It acknowledges our update (naming the table by our id) and confirms the lesson.
    let ack_and_confirm = [
        transcript.next(Side::Haproxy),
        transcript.next(Side::Haproxy),
    ];
    session.received(&ack_and_confirm.concat(), t0).unwrap();
    assert_eq!(events(&mut session), [Event::Acked { table: 0, seq: 7 }]);
    assert!(drain(&mut session, t0).is_empty());

    // Its definition and a live update: learned, and acked with its table id.
    let haproxy_update = transcript.next_run(Side::Haproxy);
    session.received(&haproxy_update, t0).unwrap();
    assert_eq!(events(&mut session), [learned("zzz9", "be1", None)]);
    assert_eq!(drain(&mut session, t0), transcript.next(Side::Us));

    // An entry set from its CLI has no server name: reported, not applied, still acked.
    session
        .received(&transcript.next(Side::Haproxy), t0)
        .unwrap();
    assert_eq!(
        events(&mut session),
        [Event::Nameless {
            table: 0,
            server_id: Some(2)
        }]
    );
    assert_eq!(drain(&mut session, t0), transcript.next(Side::Us));

    // A local change goes out live, incremental, its server by dictionary slot alone.
    let change = Change {
        seq: 8,
        entry: entry("after-ack", "be2", 2),
    };
    session.push(0, &[change]).unwrap();
    assert_eq!(drain(&mut session, t0), transcript.next(Side::Us));
    assert_eq!(session.pushed_seq(0), 8);
    assert!(transcript.is_done());
    assert_eq!(
        session.take_tally(),
        Tally {
            updates_sent: 2,
            updates_received: 2,
            updates_acked: 1,
            keys_too_long: 0,
        }
    );
    assert_eq!(session.state(), &State::Learning);
}

#[test]
fn dialling_haproxy_we_learn_its_lesson_confirm_and_ack() {
    let mut transcript = Transcript::load("we-dial-haproxy");
    // Our hello is the recorded one, given the recording's pid.
    let recorded_hello = transcript.next(Side::Us);
    let pid = String::from_utf8_lossy(&recorded_hello)
        .split_whitespace()
        .nth(4)
        .and_then(|pid| pid.parse().ok())
        .unwrap();
    let (mut dial, hello) = Dial::start("hap", "us", pid).unwrap();
    assert_eq!(hello, recorded_hello);
    let open = dial
        .received(&transcript.next(Side::Haproxy))
        .unwrap()
        .unwrap();
    assert_eq!((open.version, open.leftover.len()), (Version::V2_1, 0));

    let t0 = Instant::now();
    let mut session = Session::new(setup(32), t0).unwrap();
    assert_eq!(drain(&mut session, t0), transcript.next(Side::Us));

    // The lesson, in one read.
    let lesson = transcript.next_run(Side::Haproxy);
    session.received(&lesson, t0).unwrap();
    let learned_all = events(&mut session);
    assert_eq!(
        learned_all,
        [
            learned("abc123", "be2", Some(599_937)),
            learned("after-ack", "be2", Some(1_799_985)),
            learned("zzz9", "be1", Some(1_799_937)),
            Event::Nameless {
                table: 0,
                server_id: Some(2)
            },
            Event::LessonLearned { partial: false },
        ]
    );
    assert_eq!(session.state(), &State::Synced);
    // Our confirm, as HAProxy took it, then one ack for the table: its last update id.
    let confirm = transcript.next(Side::Us);
    assert_eq!(
        drain(&mut session, t0),
        [confirm.clone(), ack(1, 3)].concat()
    );

    // Fed a byte at a time, every message is reassembled; each read is acked.
    let mut bytewise = Session::new(setup(32), t0).unwrap();
    drain(&mut bytewise, t0);
    for byte in &lesson {
        bytewise.received(&[*byte], t0).unwrap();
    }
    assert_eq!(events(&mut bytewise), learned_all);
    let acks = [
        ack(1, 0x8000_0001),
        ack(1, 0x8000_0004),
        ack(1, 2),
        ack(1, 3),
    ];
    assert_eq!(drain(&mut bytewise, t0), [acks.concat(), confirm].concat());

    // A live update after the lesson.
    session
        .received(&transcript.next(Side::Haproxy), t0)
        .unwrap();
    assert_eq!(events(&mut session), [learned("last1", "be2", None)]);
    assert_eq!(drain(&mut session, t0), ack(1, 5));
    assert!(transcript.is_done());
}

#[test]
fn an_idle_session_sends_heartbeats_and_ends_when_the_peer_is_silent() {
    let mut transcript = Transcript::load("haproxy-heartbeat");
    answer_hello(&mut transcript);
    let t0 = Instant::now();
    let mut session = Session::new(setup(32), t0).unwrap();
    session
        .received(&transcript.next(Side::Haproxy), t0)
        .unwrap();
    // An empty lesson is just "finished", after our own resync request.
    session.teach(vec![Lesson {
        table: 0,
        seq: 0,
        entries: Vec::new(),
    }]);
    let finished = transcript.next(Side::Us);
    assert_eq!(
        drain(&mut session, t0),
        [vec![0x00, 0x00], finished].concat()
    );
    session
        .received(&transcript.next(Side::Haproxy), t0)
        .unwrap();
    assert_eq!(events(&mut session), [Event::LessonTaught { entries: 0 }]);

    // Nothing sent for less than the interval: no heartbeat; then one, as HAProxy took it.
    let early = t0 + HEARTBEAT_INTERVAL - Duration::from_millis(1);
    session.tick(early).unwrap();
    assert!(drain(&mut session, early).is_empty());
    let t3 = t0 + HEARTBEAT_INTERVAL;
    session.tick(t3).unwrap();
    assert_eq!(drain(&mut session, t3), transcript.next(Side::Us));
    let _second_of_ours = transcript.next(Side::Us);

    // HAProxy's heartbeat keeps the session alive; silence past DEAD_AFTER ends it.
    let t4 = t3 + Duration::from_secs(1);
    session
        .received(&transcript.next(Side::Haproxy), t4)
        .unwrap();
    assert!(transcript.is_done());
    assert_eq!(events(&mut session), []);
    session.tick(t4 + DEAD_AFTER).unwrap();
    let late = t4 + DEAD_AFTER + Duration::from_millis(1);
    assert_eq!(session.tick(late), Err(End::Silent));
    assert_eq!(session.state(), &State::Closed(End::Silent));
    assert_eq!(session.received(&[0x00, 0x04], late), Err(End::Silent));
}

#[test]
fn a_table_of_another_shape_is_reported_once_and_not_applied_but_acked() {
    let mut transcript = Transcript::load("haproxy-dials-us");
    answer_hello(&mut transcript);
    let t0 = Instant::now();
    // Ours is `len 16`, HAProxy's `len 32`.
    let mut session = Session::new(setup(16), t0).unwrap();
    drain(&mut session, t0);
    // Past its resync request and our lesson: its ack, confirm, definition and an update.
    transcript.next(Side::Haproxy);
    transcript.next_run(Side::Us);
    let definition_and_update = transcript.next_run(Side::Haproxy);
    session.received(&definition_and_update, t0).unwrap();
    let mismatch = Mismatch::KeyLength {
        found: 33,
        ours: 17,
    };
    assert_eq!(
        events(&mut session),
        [Event::NotSynced {
            name: "back-session".to_owned(),
            why: NotSynced::Mismatch(mismatch),
        }]
    );
    assert_eq!(drain(&mut session, t0), ack(1, 2));
    // The same again: reported once per session.
    session.received(&definition_and_update, t0).unwrap();
    assert!(events(&mut session).is_empty());
}

#[test]
fn a_key_longer_than_the_table_is_counted_and_skipped() {
    let t0 = Instant::now();
    let mut session = Session::new(setup(4), t0).unwrap();
    drain(&mut session, t0);
    let changes = [
        Change {
            seq: 1,
            entry: entry("abcde", "be1", 1),
        },
        Change {
            seq: 2,
            entry: entry("abcd", "be1", 1),
        },
    ];
    session.push(0, &changes).unwrap();
    let sent = drain(&mut session, t0);
    let mut decoder = super::super::message::Decoder::new();
    let (first, used) = decoder.decode(&sent).unwrap().unwrap();
    assert!(matches!(first, Message::TableDefinition(_)), "{first:?}");
    let (second, _) = decoder.decode(&sent[used..]).unwrap().unwrap();
    let Message::Update(update) = second else {
        panic!("{second:?}");
    };
    assert_eq!(update.key, b"abcd");
    assert_eq!(session.pushed_seq(0), 2);
    let tally = session.take_tally();
    assert_eq!((tally.updates_sent, tally.keys_too_long), (1, 1));
}

#[test]
fn a_peer_closing_mid_message_or_reporting_an_error_ends_the_session() {
    let t0 = Instant::now();
    let mut session = Session::new(setup(32), t0).unwrap();
    session.received(&[0x0a, 0x80, 0x10, 0x00], t0).unwrap();
    assert_eq!(session.closed_by_peer(), End::ClosedMidMessage { bytes: 4 });
    let mut session = Session::new(setup(32), t0).unwrap();
    assert_eq!(
        session.received(&encoded(&Message::ProtocolError), t0),
        Err(End::PeerProtocolError)
    );
    assert!(session.poll_transmit(t0).is_err());
}

/// A later session with a peer resumes instead of asking for everything again; a peer that
/// asks (new, or restarted) is asked in turn, once.
#[test]
fn a_resumed_session_asks_for_a_resync_only_when_the_peer_asks() {
    let now = Instant::now();
    let mut session = Session::new(
        Setup {
            ask_resync: false,
            ..setup(32)
        },
        now,
    )
    .unwrap();
    assert_eq!(session.state(), &State::Synced);
    let request = encoded(&Message::ResyncRequest);
    let first = drain(&mut session, now);
    assert!(
        !first
            .windows(request.len())
            .any(|w| w == request.as_slice()),
        "no resync request: {first:?}"
    );

    session.received(&request, now).unwrap();
    assert!(session.wants_lesson(), "the peer is taught");
    assert_eq!(session.state(), &State::Learning, "and asked in turn");
    assert_eq!(drain(&mut session, now), request);
    session.received(&request, now).unwrap();
    assert!(
        drain(&mut session, now).is_empty(),
        "asked once per session"
    );

    // A first session asks, first thing.
    let mut first = Session::new(setup(32), now).unwrap();
    assert_eq!(first.state(), &State::Learning);
    assert!(drain(&mut first, now).starts_with(&request));
}
