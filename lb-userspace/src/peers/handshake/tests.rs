use super::*;

const MEMBERS: [&str; 2] = ["hap", "us"];

fn accept(bytes: &[u8]) -> Result<Option<(Hello, usize)>, HelloError> {
    accept_hello(bytes, "us", &MEMBERS)
}

fn refusal(bytes: &[u8]) -> Status {
    match accept(bytes) {
        Err(err) => err.status(),
        other => panic!("{bytes:?} accepted: {other:?}"),
    }
}

#[test]
fn builds_the_hello_haproxy_sends() {
    let mut out = Vec::new();
    Hello::new("us", "hap", 11270).encode(&mut out).unwrap();
    // Byte for byte what HAProxy 2.6.12 sent when dialling peer "us".
    assert_eq!(out, b"HAProxyS 2.1\nus\nhap 11270 1\n");
}

#[test]
fn accepts_a_hello_in_pieces() {
    let bytes = b"HAProxyS 2.1\r\nus\r\nhap 11270 1\r\nrest";
    for cut in 0..bytes.len() - 4 {
        assert_eq!(accept(&bytes[..cut]), Ok(None), "cut at {cut}");
    }
    let (hello, used) = accept(bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len() - 4);
    assert_eq!(
        hello,
        Hello {
            version: Version::V2_1,
            callee: "us".into(),
            caller: "hap".into(),
            pid: 11270,
            relative_pid: 1
        }
    );
}

#[test]
fn accepts_version_2_0_as_a_downgrade() {
    let (hello, _) = accept(b"HAProxyS 2.0\nus\nhap 1 1\n").unwrap().unwrap();
    assert_eq!(hello.version, Version::V2_0);
    assert!(!hello.version.has_timed_updates());
}

#[test]
fn refuses_with_haproxys_status_codes() {
    assert_eq!(
        refusal(b"HAProxyX 2.1\nus\nhap 1 1\n"),
        Status::ProtocolError
    );
    assert_eq!(
        refusal(b"HAProxyS2.1\nus\nhap 1 1\n"),
        Status::ProtocolError
    );
    assert_eq!(refusal(b"HAProxyS 2.2\nus\nhap 1 1\n"), Status::BadVersion);
    assert_eq!(refusal(b"HAProxyS 3.0\nus\nhap 1 1\n"), Status::BadVersion);
    assert_eq!(refusal(b"HAProxyS 2.1a\nus\nhap 1 1\n"), Status::BadVersion);
    assert_eq!(refusal(b"HAProxyS 2\nus\nhap 1 1\n"), Status::BadVersion);
    assert_eq!(refusal(b"HAProxyS 2.1\nhap\nhap 1 1\n"), Status::BadHost);
    assert_eq!(refusal(b"HAProxyS 2.1\nus\nhap\n"), Status::ProtocolError);
    assert_eq!(
        refusal(b"HAProxyS 2.1\nus\nnobody 1 1\n"),
        Status::UnknownPeer
    );
    // Pids are not checked.
    assert!(accept(b"HAProxyS 2.1\nus\nhap x\n").unwrap().is_some());
}

#[test]
fn checks_in_haproxys_order_and_before_the_hello_is_complete() {
    // The version is refused before any other line arrives.
    assert_eq!(refusal(b"HAProxyS 9.9\n"), Status::BadVersion);
    // A wrong callee wins over a malformed third line.
    assert_eq!(refusal(b"HAProxyS 2.1\nother\nnospace\n"), Status::BadHost);
    assert_eq!(refusal(b"HAProxyS 2.1\nother\n"), Status::BadHost);
}

#[test]
fn bounds_line_length() {
    let mut long = b"HAProxyS 2.1\nus\n".to_vec();
    long.extend(std::iter::repeat_n(b'a', MAX_LINE_LEN));
    assert_eq!(accept(&long), Err(HelloError::LineTooLong { line: 3 }));
    let mut almost = b"HAProxyS 2.1\nus\n".to_vec();
    almost.extend(std::iter::repeat_n(b'a', MAX_LINE_LEN - 1));
    assert_eq!(accept(&almost), Ok(None));
    assert_eq!(refusal(&[0xff, b'\n']), Status::ProtocolError);
}

#[test]
fn refuses_names_that_cannot_be_sent() {
    for name in ["", "a b", "a\nb", &"x".repeat(MAX_LINE_LEN)] {
        let err = Hello::new(name, "hap", 1)
            .encode(&mut Vec::new())
            .unwrap_err();
        assert_eq!(
            err,
            HelloError::InvalidName {
                name: name.to_owned()
            }
        );
    }
}

#[test]
fn status_lines() {
    let mut out = Vec::new();
    Status::Success.encode(&mut out);
    assert_eq!(out, b"200\n");
    for status in [
        Status::Success,
        Status::TryAgain,
        Status::ProtocolError,
        Status::BadVersion,
        Status::BadHost,
        Status::UnknownPeer,
    ] {
        let mut out = Vec::new();
        status.encode(&mut out);
        assert_eq!(decode_status(&out), Ok(Some((status, out.len()))));
    }
    assert_eq!(decode_status(b"20"), Ok(None));
    assert_eq!(
        decode_status(b"503\r\n\x00\x00"),
        Ok(Some((Status::BadHost, 5)))
    );
    assert_eq!(
        decode_status(b"abc\n"),
        Err(StatusLineError::NotNumber {
            found: "abc".into()
        })
    );
    assert_eq!(
        decode_status(b"404\n"),
        Err(StatusLineError::UnknownCode { code: 404 })
    );
    assert_eq!(
        decode_status(&[b'2'; MAX_LINE_LEN]),
        Err(StatusLineError::TooLong)
    );
}
