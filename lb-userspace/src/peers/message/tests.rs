use super::*;

/// Bytes from space-separated hex.
fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect()
}

fn key(name: &str) -> ServerKey {
    ServerKey::new(name).unwrap()
}

/// Decodes exactly one message filling `bytes`.
fn decode_one(decoder: &mut Decoder, bytes: &[u8]) -> Message {
    let (message, used) = decoder.decode(bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len(), "{message:?} left bytes");
    message
}

fn encode(encoder: &mut Encoder, message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encoder.encode(message, &mut out).unwrap();
    out
}

fn back_session(expire_ms: u64) -> TableDefinition {
    TableDefinition::sticky_string(1, "back-session", 32, expire_ms)
}

fn as_update(message: Message) -> Update {
    match message {
        Message::Update(update) => update,
        other => panic!("not an update: {other:?}"),
    }
}

/// What HAProxy 2.6.12 sent for `backend back-session` /
/// `stick-table type string len 32 size 1m expire 30m peers mypeers` with `stick on` and
/// `stick store-response` rules, captured by `tests/peers_codec_haproxy.rs`.
fn haproxy_definition() -> Vec<u8> {
    [
        &hex("0a 82 18 01 0c")[..],
        b"back-session",
        &hex("06 21 f1 f1 fe 00 f0 e5 ed 05"),
    ]
    .concat()
}

/// HAProxy 2.6.12's first live update after that definition: a request with
/// `Cookie: JSESSIONID=zzz9` stuck to server be1 (id 1).
fn haproxy_update() -> Vec<u8> {
    [
        &hex("0a 80 10 00 00 00 01 04")[..],
        b"zzz9",
        &hex("01 05 01 03"),
        b"be1",
    ]
    .concat()
}

#[test]
fn definition_from_the_protocol_notes() {
    // The notes' example is a table without `expire`: the expire varint is 0.
    let expected = [
        &hex("0a 82 15 01 0c")[..],
        b"back-session",
        &hex("06 21 f1 f1 fe 00 00"),
    ]
    .concat();
    let def = back_session(0);
    assert_eq!(
        encode(&mut Encoder::new(), &Message::TableDefinition(def.clone())),
        expected
    );
    assert_eq!(
        decode_one(&mut Decoder::new(), &expected),
        Message::TableDefinition(def)
    );
}

#[test]
fn definition_sent_by_haproxy() {
    let bytes = haproxy_definition();
    let def = back_session(1_800_000);
    assert_eq!(
        decode_one(&mut Decoder::new(), &bytes),
        Message::TableDefinition(def.clone())
    );
    assert_eq!(def.key_len, 33);
    assert_eq!(def.data_types.0, 0x80001);
    // And ours is byte for byte the same.
    assert_eq!(
        encode(&mut Encoder::new(), &Message::TableDefinition(def)),
        bytes
    );
}

#[test]
fn update_sent_by_haproxy() {
    let mut decoder = Decoder::new();
    decode_one(&mut decoder, &haproxy_definition());
    let update = as_update(decode_one(&mut decoder, &haproxy_update()));
    assert_eq!(
        update,
        Update {
            table_id: 1,
            kind: UpdateKind::Explicit,
            update_id: 1,
            expire_ms: None,
            key: b"zzz9".to_vec(),
            server_id: Some(1),
            server_key: Some(key("be1")),
        }
    );
    assert_eq!(decoder.last_update_id(1), Some(1));
    let mut encoder = Encoder::new();
    let mut out = Vec::new();
    encoder
        .encode(&Message::TableDefinition(back_session(1_800_000)), &mut out)
        .unwrap();
    out.clear();
    encoder.encode(&Message::Update(update), &mut out).unwrap();
    assert_eq!(out, haproxy_update());
}

#[test]
fn messages_sent_by_haproxy() {
    // HAProxy 2.6.12: an entry set with `set table back-session key yyy8 data.server_id 2`
    // (no server key: `00`), and its ack of our update 1 of our table 5.
    let mut decoder = Decoder::new();
    decode_one(&mut decoder, &haproxy_definition());
    let cli_set = [&hex("0a 80 0b 00 00 00 03 04")[..], b"yyy8", &hex("02 00")].concat();
    let update = as_update(decode_one(&mut decoder, &cli_set));
    assert_eq!(
        (update.update_id, update.server_id, update.server_key),
        (3, Some(2), None)
    );
    assert_eq!(
        decode_one(&mut decoder, &hex("0a 84 05 05 00 00 00 01")),
        Message::Ack {
            table_id: 5,
            update_id: 1
        }
    );
}

#[test]
fn resync_lesson_sent_by_haproxy() {
    // HAProxy 2.6.12 answering our `00 00`: its definition, then every entry as a timed update
    // (explicit id when not consecutive), then `00 01`. Entries it learned from a peer carry
    // ids offset by 2^31. be2 is taught once, then sent by slot.
    let lesson = [
        haproxy_definition(),
        [
            &hex("0a 85 16 80 00 00 01 00 09 27 81 06")[..],
            b"abc123",
            &hex("02 05 01 03"),
            b"be2",
        ]
        .concat(),
        [
            &hex("0a 85 15 80 00 00 04 00 1b 77 2d 09")[..],
            b"after-ack",
            &hex("02 01 01"),
        ]
        .concat(),
        [
            &hex("0a 85 14 00 00 00 02 00 1b 77 02 04")[..],
            b"zzz9",
            &hex("01 05 02 03"),
            b"be1",
        ]
        .concat(),
        [&hex("0a 86 0b 00 1b 77 02 04")[..], b"yyy8", &hex("02 00")].concat(),
        hex("00 01"),
    ]
    .concat();
    let mut decoder = Decoder::new();
    let mut rest = &lesson[..];
    let mut updates = Vec::new();
    let mut last = None;
    while let Some((message, used)) = decoder.decode(rest).unwrap() {
        rest = &rest[used..];
        match message {
            Message::Update(u) => updates.push((
                u.kind,
                u.update_id,
                u.expire_ms,
                String::from_utf8(u.key).unwrap(),
                u.server_id,
                u.server_key.map(|k| k.as_str().to_owned()),
            )),
            other => last = Some(other),
        }
    }
    assert!(rest.is_empty());
    assert_eq!(last, Some(Message::ResyncFinished));
    let be = |name: &str| Some(name.to_owned());
    assert_eq!(
        updates,
        [
            (
                UpdateKind::Timed,
                0x8000_0001,
                Some(599_937),
                "abc123".into(),
                Some(2),
                be("be2")
            ),
            (
                UpdateKind::Timed,
                0x8000_0004,
                Some(1_799_981),
                "after-ack".into(),
                Some(2),
                be("be2")
            ),
            (
                UpdateKind::Timed,
                2,
                Some(1_799_938),
                "zzz9".into(),
                Some(1),
                be("be1")
            ),
            (
                UpdateKind::TimedIncremental,
                3,
                Some(1_799_938),
                "yyy8".into(),
                Some(2),
                None
            ),
        ]
    );
}

#[test]
fn update_from_the_protocol_notes() {
    // Key md5("_1") in hex: any 32 bytes have the same layout.
    let md5 = b"0123456789abcdef0123456789abcdef";
    let expected = [
        &hex("0a 80 2c 00 00 00 01 20")[..],
        md5,
        &hex("01 05 01 03"),
        b"be1",
    ]
    .concat();
    let mut encoder = Encoder::new();
    encode(&mut encoder, &Message::TableDefinition(back_session(0)));
    let mut out = Vec::new();
    let id = encoder
        .push(1, md5, Some(1), Some(&key("be1")), None, &mut out)
        .unwrap();
    assert_eq!(id, 1);
    assert_eq!(out, expected);
}

#[test]
fn later_pushes_are_incremental_and_use_the_dictionary() {
    let mut encoder = Encoder::new();
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    encoder
        .encode(&Message::TableDefinition(back_session(0)), &mut out)
        .unwrap();
    encoder
        .push(1, b"a", Some(1), Some(&key("be1")), None, &mut out)
        .unwrap();
    let start = out.len();
    assert_eq!(
        encoder.push(1, b"b", Some(1), Some(&key("be1")), None, &mut out),
        Ok(2)
    );
    // 0x81, no id; server_key by slot alone: `01 01`.
    assert_eq!(
        out[start..],
        [&hex("0a 81 05 01")[..], b"b", &hex("01 01 01")].concat()
    );
    let start = out.len();
    encoder
        .push(1, b"c", Some(2), Some(&key("be2")), Some(60_000), &mut out)
        .unwrap();
    assert_eq!(
        out[start..],
        [
            &hex("0a 86 0d 00 00 ea 60 01")[..],
            b"c",
            &hex("02 05 02 03"),
            b"be2"
        ]
        .concat()
    );
    let mut rest = &out[..];
    let mut updates = Vec::new();
    while let Some((message, used)) = decoder.decode(rest).unwrap() {
        rest = &rest[used..];
        if let Message::Update(update) = message {
            updates.push(update);
        }
    }
    assert!(rest.is_empty());
    let summary: Vec<_> = updates
        .iter()
        .map(|u| {
            (
                u.kind,
                u.update_id,
                u.expire_ms,
                u.key.as_slice(),
                u.server_key.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (UpdateKind::Explicit, 1, None, &b"a"[..], Some(key("be1"))),
            (UpdateKind::Incremental, 2, None, b"b", Some(key("be1"))),
            (
                UpdateKind::TimedIncremental,
                3,
                Some(60_000),
                b"c",
                Some(key("be2"))
            ),
        ]
    );
}

#[test]
fn timed_explicit_update_and_negative_server_id() {
    let mut encoder = Encoder::new();
    let mut decoder = Decoder::new();
    decode_one(
        &mut decoder,
        &encode(&mut encoder, &Message::TableDefinition(back_session(0))),
    );
    let update = Update {
        table_id: 1,
        kind: UpdateKind::Timed,
        update_id: 70_000,
        expire_ms: Some(1234),
        key: b"k".to_vec(),
        server_id: Some(-1),
        server_key: None,
    };
    let bytes = encode(&mut encoder, &Message::Update(update.clone()));
    // -1 is sign-extended, as HAProxy's int is: ten bytes. No server key: `00`.
    let mut expected = [&hex("0a 85 15 00 01 11 70 00 00 04 d2 01")[..], b"k"].concat();
    varint::encode(u64::MAX, &mut expected);
    expected.push(0);
    assert_eq!(bytes, expected);
    assert_eq!(decode_one(&mut decoder, &bytes), Message::Update(update));
}

#[test]
fn ack_and_control_messages() {
    let mut encoder = Encoder::new();
    let ack = Message::Ack {
        table_id: 1,
        update_id: 1,
    };
    assert_eq!(encode(&mut encoder, &ack), hex("0a 84 05 01 00 00 00 01"));
    assert_eq!(
        decode_one(&mut Decoder::new(), &hex("0a 84 05 01 00 00 00 01")),
        ack
    );
    for (message, bytes) in [
        (Message::ResyncRequest, [0, 0]),
        (Message::ResyncFinished, [0, 1]),
        (Message::ResyncPartial, [0, 2]),
        (Message::ResyncConfirm, [0, 3]),
        (Message::Heartbeat, [0, 4]),
        (Message::ProtocolError, [1, 0]),
        (Message::SizeLimit, [1, 1]),
    ] {
        assert_eq!(encode(&mut encoder, &message), bytes);
        assert_eq!(decode_one(&mut Decoder::new(), &bytes), message);
    }
}

#[test]
fn switch_table_selects_the_table_of_later_updates() {
    let mut encoder = Encoder::new();
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    let other = TableDefinition::sticky_string(2, "other", 8, 0);
    encoder
        .encode(&Message::TableDefinition(back_session(0)), &mut out)
        .unwrap();
    encoder
        .encode(&Message::TableDefinition(other), &mut out)
        .unwrap();
    encoder
        .encode(&Message::SwitchTable { table_id: 1 }, &mut out)
        .unwrap();
    encoder.push(1, b"x", None, None, None, &mut out).unwrap();
    // Pushing to table 2 re-sends its definition first, as HAProxy does.
    encoder.push(2, b"y", None, None, None, &mut out).unwrap();
    let mut rest = &out[..];
    let mut seen = Vec::new();
    while let Some((message, used)) = decoder.decode(rest).unwrap() {
        rest = &rest[used..];
        seen.push(match message {
            Message::TableDefinition(def) => format!("def {}", def.table_id),
            Message::SwitchTable { table_id } => format!("switch {table_id}"),
            Message::Update(update) => format!("update {} {}", update.table_id, update.update_id),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        seen,
        [
            "def 1",
            "def 2",
            "switch 1",
            "update 1 1",
            "def 2",
            "update 2 1"
        ]
    );
    assert_eq!(
        decoder.decode(&hex("0a 83 01 09")),
        Err(DecodeError::UnknownTable { table_id: 9 })
    );
}

#[test]
fn skips_data_types_it_does_not_store() {
    // server_id, gpc0, conn_rate(10s), bytes_in_cnt, server_key, gpc[2], gpc_rate[2](1s).
    let types: u64 = [0u8, 2, 5, 13, 19, 23, 24]
        .iter()
        .map(|dt| 1u64 << dt)
        .sum();
    let mut payload = hex("07 01 74 06 09");
    varint::encode(types, &mut payload);
    payload.extend(hex("00"));
    payload.push(5); // conn_rate, period 10000
    varint::encode(10_000, &mut payload);
    payload.extend(hex("17 02")); // gpc, 2 elements
    payload.extend(hex("18 02")); // gpc_rate, 2 elements, period 1000
    varint::encode(1000, &mut payload);
    let mut bytes = hex("0a 82");
    varint::encode(payload.len() as u64, &mut bytes);
    bytes.extend(&payload);
    let mut decoder = Decoder::new();
    let Message::TableDefinition(def) = decode_one(&mut decoder, &bytes) else {
        panic!("not a definition");
    };
    assert_eq!(
        def.params,
        [
            TypeParam {
                data_type: 5,
                array_len: None,
                period_ms: Some(10_000)
            },
            TypeParam {
                data_type: 23,
                array_len: Some(2),
                period_ms: None
            },
            TypeParam {
                data_type: 24,
                array_len: Some(2),
                period_ms: Some(1000)
            },
        ]
    );
    // server_id 7, gpc0, conn_rate (3 varints), bytes_in_cnt 270, server_key be7, gpc[2],
    // gpc_rate[2] (3 varints each).
    let mut values = hex("07 00 04 01 02 fe 01 05 01 03");
    values.extend(b"be7");
    values.extend(hex("01 02 01 02 03 04 05 06"));
    let mut update = hex("0a 81");
    varint::encode(values.len() as u64 + 2, &mut update);
    update.extend(hex("01 74"));
    update.extend(&values);
    let update = as_update(decode_one(&mut decoder, &update));
    assert_eq!(
        (update.server_id, update.server_key),
        (Some(7), Some(key("be7")))
    );
    assert_eq!(update.key, b"t");
}

#[test]
fn definition_errors() {
    let definition = |types: u64, rest: &str| {
        let mut payload = hex("01 01 74 06 09");
        varint::encode(types, &mut payload);
        payload.extend(hex(rest));
        let mut bytes = hex("0a 82");
        varint::encode(payload.len() as u64, &mut bytes);
        bytes.extend(payload);
        Decoder::new().decode(&bytes)
    };
    assert_eq!(
        definition(1 << 27, "00"),
        Err(DecodeError::UnknownDataType { data_type: 27 })
    );
    assert_eq!(
        definition(1 << 63, ""),
        Err(DecodeError::UnknownDataType { data_type: 63 })
    );
    assert_eq!(
        definition(1 << 5, "00 06 10"),
        Err(DecodeError::ParamsMismatch {
            expected: 5,
            name: "conn_rate",
            found: 6
        })
    );
    assert_eq!(
        definition(1 << 5, "00"),
        Err(DecodeError::Truncated {
            field: "data type parameters"
        })
    );
    // An old-format definition (no expire) cannot size arrays, but is fine otherwise.
    assert_eq!(
        definition(1 << 23, ""),
        Err(DecodeError::MissingArrayLen {
            data_type: 23,
            name: "gpc"
        })
    );
    assert!(definition(1 << 5, "").is_ok());
    assert_eq!(
        definition(1 << 23, "00 17 65"),
        Err(DecodeError::BadArrayLen {
            data_type: 23,
            name: "gpc",
            len: 101
        })
    );
    assert_eq!(
        Decoder::new().decode(&hex("0a 82 04 01 02 ff fe")),
        Err(DecodeError::NotUtf8 {
            field: "table name"
        })
    );
    assert_eq!(
        Decoder::new().decode(&hex("0a 82 03 01 05 61")),
        Err(DecodeError::Truncated {
            field: "table name"
        })
    );
}

#[test]
fn update_errors() {
    assert_eq!(
        Decoder::new().decode(&hex("0a 81 02 01 61")),
        Err(DecodeError::NoTable)
    );
    let with_table = |update: &[u8]| {
        let mut decoder = Decoder::new();
        decode_one(&mut decoder, &haproxy_definition());
        decoder.decode(update)
    };
    // Slot 1 was never taught.
    assert_eq!(
        with_table(&hex("0a 81 05 01 61 01 01 01")),
        Err(DecodeError::UnknownDictionaryId { id: 1 })
    );
    assert_eq!(
        with_table(&hex("0a 81 07 01 61 01 03 00 01 61")),
        Err(DecodeError::BadDictionaryId { id: 0 })
    );
    assert_eq!(
        with_table(&[&hex("0a 81 08 01 61 01 04 f0 01 01 61")[..]].concat()),
        Err(DecodeError::BadDictionaryId { id: 256 })
    );
    assert_eq!(
        with_table(&hex("0a 81 08 01 61 01 04 01 01 61 00")),
        Err(DecodeError::DictionaryLength {
            declared: 4,
            used: 3
        })
    );
    assert_eq!(
        with_table(&hex("0a 81 07 01 61 01 03 01 01 00")),
        Err(DecodeError::BadServerKey(ServerKeyError::HasNul))
    );
    assert_eq!(
        with_table(&hex("0a 81 06 01 61 01 03 01 01")),
        Err(DecodeError::Truncated {
            field: "server_key"
        })
    );
    assert_eq!(
        with_table(&hex("0a 80 02 00 00")),
        Err(DecodeError::Truncated { field: "update id" })
    );
    assert_eq!(
        with_table(&hex("0a 81 02 05 61")),
        Err(DecodeError::Truncated { field: "key" })
    );
}

#[test]
fn framing_errors_and_limits() {
    assert_eq!(
        decode_frame(&[255, 0], DEFAULT_MAX_LEN),
        Err(DecodeError::Reserved { kind: 0 })
    );
    assert_eq!(
        decode_frame(&[2, 0], DEFAULT_MAX_LEN),
        Err(DecodeError::UnknownClass { class: 2, kind: 0 })
    );
    for (class, kind) in [(0, 5), (1, 2), (10, 0x87), (10, 0x01), (0, 0x80)] {
        assert_eq!(
            decode_frame(&[class, kind, 0], DEFAULT_MAX_LEN),
            Err(DecodeError::UnknownType { class, kind })
        );
    }
    // Too long is reported from the length alone, without waiting for the payload.
    let mut too_long = hex("0a 80");
    varint::encode(DEFAULT_MAX_LEN as u64 + 1, &mut too_long);
    assert_eq!(
        decode_frame(&too_long, DEFAULT_MAX_LEN),
        Err(DecodeError::TooLong {
            len: 16385,
            max: DEFAULT_MAX_LEN
        })
    );
    assert_eq!(
        Decoder::with_max_len(4).decode(&hex("0a 84 05")),
        Err(DecodeError::TooLong { len: 5, max: 4 })
    );
    let mut bad_len = hex("0a 80");
    bad_len.extend([0xff; 10]);
    assert_eq!(
        decode_frame(&bad_len, DEFAULT_MAX_LEN),
        Err(DecodeError::BadLength {
            source: VarintError::TooLong
        })
    );
}

#[test]
fn every_prefix_is_incomplete() {
    let mut stream = haproxy_definition();
    stream.extend(haproxy_update());
    stream.extend([0, 4]);
    let mut decoder = Decoder::new();
    let first = haproxy_definition().len();
    for cut in 0..first {
        assert_eq!(decoder.decode(&stream[..cut]), Ok(None), "cut at {cut}");
    }
    decode_one(&mut decoder, &stream[..first]);
    let rest = &stream[first..];
    let second = haproxy_update().len();
    for cut in 0..second {
        assert_eq!(decoder.decode(&rest[..cut]), Ok(None), "cut at {cut}");
    }
    assert!(matches!(decoder.decode(rest), Ok(Some((Message::Update(_), n))) if n == second));
    assert_eq!(
        decoder.decode(&rest[second..]),
        Ok(Some((Message::Heartbeat, 2)))
    );
}

#[test]
fn dictionary_stays_in_step_past_128_names() {
    let mut encoder = Encoder::new();
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    encoder
        .encode(&Message::TableDefinition(back_session(0)), &mut out)
        .unwrap();
    let names: Vec<String> = (0..300).map(|i| format!("srv{}", i % 200)).collect();
    for (i, name) in names.iter().enumerate() {
        let key_bytes = format!("k{i}");
        encoder
            .push(
                1,
                key_bytes.as_bytes(),
                None,
                Some(&key(name)),
                None,
                &mut out,
            )
            .unwrap();
    }
    let mut rest = &out[..];
    let mut got = Vec::new();
    while let Some((message, used)) = decoder.decode(rest).unwrap() {
        rest = &rest[used..];
        if let Message::Update(update) = message {
            got.push(update.server_key.unwrap().as_str().to_owned());
        }
    }
    assert_eq!(got, names);
}

#[test]
fn encoder_refusals() {
    let mut encoder = Encoder::new();
    let mut out = Vec::new();
    assert_eq!(
        encoder.push(1, b"a", None, None, None, &mut out),
        Err(EncodeError::UndefinedTable { table_id: 1 })
    );
    let mut def = back_session(0);
    def.data_types = DataTypes(def.data_types.0 | (1 << 2));
    assert_eq!(
        encoder.encode(&Message::TableDefinition(def), &mut out),
        Err(EncodeError::UnsupportedDataType { data_type: 2 })
    );
    encoder
        .encode(&Message::TableDefinition(back_session(0)), &mut out)
        .unwrap();
    let long = [b'x'; 33];
    assert_eq!(
        encoder.push(1, &long, None, None, None, &mut out),
        Err(EncodeError::KeyLength {
            len: 33,
            key_len: 33
        })
    );
    assert!(encoder
        .push(1, &long[..32], None, None, None, &mut out)
        .is_ok());
    assert_eq!(
        encoder.push(1, b"a\0b", None, None, None, &mut out),
        Err(EncodeError::KeyHasNul)
    );
    let update = |kind, update_id, expire_ms| {
        Message::Update(Update {
            table_id: 1,
            kind,
            update_id,
            expire_ms,
            key: b"a".to_vec(),
            server_id: None,
            server_key: Some(key("be1")),
        })
    };
    assert_eq!(
        encoder.encode(&update(UpdateKind::Incremental, 5, None), &mut out),
        Err(EncodeError::NotIncremental {
            expected: 2,
            found: 5
        })
    );
    assert_eq!(
        encoder.encode(&update(UpdateKind::Timed, 5, None), &mut out),
        Err(EncodeError::MissingExpire {
            kind: UpdateKind::Timed
        })
    );
    // The refused updates did not use up a dictionary slot: be1 is still sent in full.
    out.clear();
    encoder
        .encode(&update(UpdateKind::Explicit, 9, None), &mut out)
        .unwrap();
    assert!(out.ends_with(b"be1"));
    assert_eq!(encoder.last_pushed(1), Some(9));
}

#[test]
fn server_keys() {
    assert_eq!(ServerKey::new(""), Err(ServerKeyError::Empty));
    assert_eq!(ServerKey::new("a\0"), Err(ServerKeyError::HasNul));
    assert_eq!(
        ServerKey::new("x".repeat(MAX_SERVER_KEY_LEN + 1)),
        Err(ServerKeyError::TooLong {
            len: MAX_SERVER_KEY_LEN + 1
        })
    );
    assert_eq!(ServerKey::from_bytes(&[0xff]), Err(ServerKeyError::NotUtf8));
    assert_eq!(key("be1").as_str(), "be1");
}
