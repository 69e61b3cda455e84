//! The relay's state machine driven over an in-memory client stream (`tokio::io::duplex`) and
//! a scripted server on loopback: no namespaces, no root, no BPF (the hand-off is off: no
//! fast path runtime, and an in-memory client has no socket to hand over).

use std::{net::SocketAddr, sync::atomic::Ordering::Relaxed, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream},
    net::TcpListener,
};

use super::*;
use crate::{backend::BackendState, config::Config, proxy::error::SERVER_FAILED, table};

impl ClientIo for DuplexStream {
    fn socket(&mut self) -> Option<&mut TcpStream> {
        None
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A frontend whose backend has one server at `server`, and a proxy.
fn frontend(server: SocketAddr) -> (Frontend, Proxy) {
    let config = Config::from_toml(&format!(
        "[instance]\nname = \"lb\"\n\n[[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:1\"\nbackend = \"web\"\n\n\
         [[backend]]\nname = \"web\"\nhealth_check = {{ enabled = false }}\nservers = [ {{ name = \"s1\", addr = \"{server}\" }} ]\n"
    ))
    .unwrap();
    let backend = BackendState::in_memory(&config.backends[0], table::memory::store(64));
    let frontend = Frontend::new("www".into(), Arc::new(backend));
    let proxy = Proxy::new(Duration::from_secs(1), Duration::from_secs(2));
    (frontend, proxy)
}

fn settings() -> ConnSettings {
    ConnSettings {
        client_timeout: Duration::from_secs(2),
        max_header_bytes: 8192,
        drain: Duration::from_secs(1),
    }
}

/// Runs the relay on one end of a duplex stream while `client` drives the other.
async fn relay<F, T>(
    frontend: &Frontend,
    proxy: &Proxy,
    client: impl FnOnce(DuplexStream) -> F,
) -> (Release<DuplexStream>, T)
where
    F: std::future::Future<Output = T>,
{
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (_stop, stop) = watch::channel(false);
    let served = serve(
        ours,
        peer(),
        (frontend, proxy),
        settings(),
        None,
        (stop, None),
    );
    tokio::join!(served, client(theirs))
}

fn peer() -> SocketAddr {
    "10.0.0.9:40000".parse().unwrap()
}

/// Reads one head from `stream` (and nothing after it).
async fn head_of(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads until `stream` holds `n` bytes or closes.
async fn read_n(stream: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        match stream.read(&mut out[filled..]).await.unwrap() {
            0 => break,
            read => filled += read,
        }
    }
    out.truncate(filled);
    out
}

async fn read_to_end(stream: &mut DuplexStream) -> Vec<u8> {
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn keep_alive_serves_two_requests_over_one_server_connection() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (frontend, proxy) = frontend(server.local_addr().unwrap());
    let scripted = tokio::spawn(async move {
        let (mut conn, _) = server.accept().await.unwrap();
        let mut heads = Vec::new();
        for _ in 0..2 {
            heads.push(head_of(&mut conn).await);
            conn.write_all(OK).await.unwrap();
        }
        heads
    });
    let (released, answers) = relay(&frontend, &proxy, |mut client| async move {
        let mut answers = Vec::new();
        for path in ["/a", "/b"] {
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            client.write_all(request.as_bytes()).await.unwrap();
            answers.push(read_n(&mut client, OK.len()).await);
        }
        answers
    })
    .await;
    assert!(matches!(released, Release::Done));
    assert_eq!(answers, [OK, OK]);
    let heads = scripted.await.unwrap();
    assert!(heads[0].starts_with("GET /a HTTP/1.1\r\n"), "{heads:?}");
    assert!(
        heads[1].contains("x-forwarded-for: 10.0.0.9\r\n"),
        "{heads:?}"
    );
    let s1 = frontend.backend.server("s1").unwrap();
    assert_eq!(s1.stats.requests_total.load(Relaxed), 2);
    assert_eq!(s1.stats.responses[2].load(Relaxed), 2);
}

#[tokio::test]
async fn a_server_that_closes_before_answering_gets_the_client_a_503() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (frontend, proxy) = frontend(server.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut conn, _) = server.accept().await.unwrap();
        head_of(&mut conn).await;
    });
    let (released, answer) = relay(&frontend, &proxy, |mut client| async move {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_to_end(&mut client).await
    })
    .await;
    assert!(matches!(released, Release::Done));
    assert_eq!(answer, SERVER_FAILED.raw);
    let s1 = frontend.backend.server("s1").unwrap();
    assert_eq!(s1.stats.failures.load(Relaxed), 1);
}

#[tokio::test]
async fn garbage_and_chunked_requests_go_to_hyper_with_what_was_read() {
    let (frontend, proxy) = frontend("127.0.0.1:1".parse().unwrap());
    for sent in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let (released, ()) = relay(&frontend, &proxy, |mut client| async move {
            client.write_all(sent).await.unwrap();
            // Held open until the relay let go of it.
            tokio::time::sleep(Duration::from_millis(50)).await;
        })
        .await;
        let Release::ToHyper(_, read) = released else {
            panic!("relayed {sent:?}");
        };
        assert_eq!(&read[..], sent);
    }
    let s1 = frontend.backend.server("s1").unwrap();
    assert_eq!(s1.stats.requests_total.load(Relaxed), 0);
}

#[tokio::test]
async fn a_chunked_response_is_passed_on_whole_and_the_connection_goes_on() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (frontend, proxy) = frontend(server.local_addr().unwrap());
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    tokio::spawn(async move {
        let (mut conn, _) = server.accept().await.unwrap();
        head_of(&mut conn).await;
        // In two pieces: the relay copies the rest from the server.
        conn.write_all(&CHUNKED[..50]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        conn.write_all(&CHUNKED[50..]).await.unwrap();
        head_of(&mut conn).await;
        conn.write_all(OK).await.unwrap();
    });
    let (_, answers) = relay(&frontend, &proxy, |mut client| async move {
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        client.write_all(get).await.unwrap();
        let first = read_n(&mut client, CHUNKED.len()).await;
        client.write_all(get).await.unwrap();
        let second = read_n(&mut client, OK.len()).await;
        (first, second)
    })
    .await;
    assert_eq!(answers, (CHUNKED.to_vec(), OK.to_vec()));
    let s1 = frontend.backend.server("s1").unwrap();
    assert_eq!(s1.stats.bytes_out.load(Relaxed), 5 + 2);
}

#[tokio::test]
async fn an_accepted_upgrade_becomes_a_tunnel() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (frontend, proxy) = frontend(server.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut conn, _) = server.accept().await.unwrap();
        let head = head_of(&mut conn).await;
        assert!(head.contains("upgrade: websocket\r\n"), "{head}");
        conn.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhi")
            .await
            .unwrap();
        // An echo, until the client closes.
        let (mut from, mut to) = conn.split();
        let _ = tokio::io::copy(&mut from, &mut to).await;
    });
    let (released, (head, echoed)) = relay(&frontend, &proxy, |mut client| async move {
        client
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            )
            .await
            .unwrap();
        let head = read_n(&mut client, 79).await;
        client.write_all(b"ping").await.unwrap();
        let echoed = read_n(&mut client, 4).await;
        drop(client);
        (String::from_utf8(head).unwrap(), echoed)
    })
    .await;
    assert!(matches!(released, Release::Done));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.ends_with("\r\n\r\nhi"), "{head}");
    assert_eq!(echoed, b"ping");
}

#[tokio::test]
async fn a_request_with_no_server_up_is_answered_503_and_no_server_is_charged() {
    let (frontend, proxy) = frontend("127.0.0.1:1".parse().unwrap());
    let s1 = frontend.backend.server("s1").unwrap();
    s1.set_up(false);
    let (released, answer) = relay(&frontend, &proxy, |mut client| async move {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_to_end(&mut client).await
    })
    .await;
    assert!(matches!(released, Release::Done));
    assert_eq!(answer, crate::proxy::error::NO_SERVER.raw);
    assert_eq!(s1.stats.failures.load(Relaxed), 0);
}

#[tokio::test]
async fn a_body_the_client_cuts_short_is_its_fault_answered_400_and_not_charged() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (frontend, proxy) = frontend(server.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut conn, _) = server.accept().await.unwrap();
        let mut sink = Vec::new();
        let _ = conn.read_to_end(&mut sink).await;
    });
    let (released, answer) = relay(&frontend, &proxy, |mut client| async move {
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        read_to_end(&mut client).await
    })
    .await;
    assert!(matches!(released, Release::Done));
    assert_eq!(answer, crate::proxy::error::BAD_REQUEST.raw);
    let s1 = frontend.backend.server("s1").unwrap();
    assert_eq!(s1.stats.failures.load(Relaxed), 0);
    assert_eq!(s1.stats.responses[0].load(Relaxed), 0);
}

/// The relay speaks cleartext to servers: a backend with a server reached over TLS is served by
/// hyper, from its first request on.
#[tokio::test]
async fn a_backend_with_a_tls_server_goes_to_hyper() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let made = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
    std::fs::write(&ca, made.cert.pem()).unwrap();
    let config = Config::from_toml(&format!(
        "[instance]\nname = \"lb\"\n\n[[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:1\"\nbackend = \"web\"\n\n\
         [[backend]]\nname = \"web\"\nhealth_check = {{ enabled = false }}\nservers = [ \
         {{ name = \"s1\", addr = \"127.0.0.1:1\" }}, \
         {{ name = \"s2\", addr = \"127.0.0.1:2\", tls = true, ca = \"{}\" }} ]\n",
        ca.display()
    ))
    .unwrap();
    let backend = BackendState::in_memory(&config.backends[0], table::memory::store(64));
    let frontend = Frontend::new("www".into(), Arc::new(backend));
    let proxy = Proxy::new(Duration::from_secs(1), Duration::from_secs(2));
    let sent = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=a\r\n\r\n";
    let (released, ()) = relay(&frontend, &proxy, |mut client| async move {
        client.write_all(sent).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    })
    .await;
    let Release::ToHyper(_, read) = released else {
        panic!("relayed a request to a backend with a TLS server");
    };
    assert_eq!(&read[..], sent);
    assert_eq!(frontend.backend.stats.new_sessions.load(Relaxed), 0);
}
