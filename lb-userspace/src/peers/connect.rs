//! Opening a session over TCP: dialling a peer, or answering a peer that dialled us on the
//! peers port, first with a TLS handshake when `[peers] tls` is set ([`super::tls`]). Only
//! moves bytes and enforces [`HANDSHAKE_TIMEOUT`]; what to send and what the answer means is
//! [`super::opening`]'s. Both end with an [`Opened`] connection ready for messages.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use super::{
    handshake::{HelloError, Status, StatusLineError, Version},
    opening::{Answer, Answered, Dial, DialError, Open, Refusal},
    tls::{PeerStream, PeerTls},
};

/// Connecting, and each side of the handshake, must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection past the handshake.
pub struct Opened {
    pub stream: PeerStream,
    /// Bytes read past the handshake: the first messages, if the peer was quick.
    pub leftover: Vec<u8>,
    /// What the peer speaks: whether it takes timed updates.
    pub version: Version,
    pub remote: SocketAddr,
}

impl Opened {
    fn new(stream: PeerStream, open: Open, remote: SocketAddr) -> Self {
        Self {
            stream,
            leftover: open.leftover,
            version: open.version,
            remote,
        }
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("timed out after {HANDSHAKE_TIMEOUT:?} {during}")]
    Timeout { during: &'static str },
    /// The TLS handshake failed: most often a certificate that is missing, not signed by
    /// our `ca`, expired, or (dialling) without the peer's name.
    #[error("TLS handshake failed")]
    Tls(#[source] io::Error),
    #[error("connection error during the handshake")]
    Io(#[from] io::Error),
    #[error("connection closed during the handshake")]
    Closed,
    #[error("cannot build our hello")]
    Hello(#[source] HelloError),
    #[error("unreadable answer to our hello")]
    StatusLine(#[from] StatusLineError),
    #[error("peer refused us with {code}: {meaning}", code = .0.code(), meaning = refusal_meaning(*.0))]
    Refused(Status),
    #[error("bad hello from {addr}")]
    BadHello {
        addr: SocketAddr,
        #[source]
        source: HelloError,
    },
}

/// Dials `addr`, which should be peer `callee`, introducing ourselves as `caller`; over TLS
/// when `tls` is given.
pub async fn dial(
    addr: SocketAddr,
    callee: &str,
    caller: &str,
    tls: Option<&PeerTls>,
) -> Result<Opened, ConnectError> {
    let tcp = timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout {
            during: "connecting",
        })?
        .map_err(|source| ConnectError::Connect { addr, source })?;
    tcp.set_nodelay(true)?;
    let mut stream = match tls {
        None => PeerStream::Plain(tcp),
        Some(tls) => tls_handshake(tls.connect(tcp, callee, addr)).await?,
    };
    let (mut dial, hello) =
        Dial::start(callee, caller, std::process::id()).map_err(ConnectError::Hello)?;
    let open = timeout(HANDSHAKE_TIMEOUT, async {
        write(&mut stream, &hello).await?;
        read_until(&mut stream, |bytes| {
            dial.received(bytes).map_err(Into::into)
        })
        .await
    })
    .await
    .map_err(|_| ConnectError::Timeout {
        during: "waiting for the peer's answer",
    })?
    .map_err(tls_alert)?;
    Ok(Opened::new(stream, open, addr))
}

/// Reads a hello on an accepted connection (after the TLS handshake when `tls` is given) and
/// answers it. `members` are every configured peer name, ours included. Returns the caller's
/// name and the open connection; on a refusal the status is sent before the error is returned.
pub async fn answer(
    tcp: TcpStream,
    remote: SocketAddr,
    local_name: &str,
    members: &[String],
    tls: Option<&PeerTls>,
) -> Result<(String, Opened), ConnectError> {
    tcp.set_nodelay(true)?;
    let mut stream = match tls {
        None => PeerStream::Plain(tcp),
        Some(tls) => tls_handshake(tls.accept(tcp)).await?,
    };
    let mut answer = Answer::new(local_name, members);
    let answered = timeout(
        HANDSHAKE_TIMEOUT,
        read_until(&mut stream, |bytes| Ok(answer.received(bytes))),
    )
    .await
    .map_err(|_| ConnectError::Timeout {
        during: "waiting for a hello",
    })?
    .map_err(tls_alert)?;
    match answered {
        Answered::Accepted { reply, hello, open } => {
            send_status(&mut stream, &reply).await;
            Ok((hello.caller, Opened::new(stream, open, remote)))
        }
        Answered::Refused { reply, why } => {
            send_status(&mut stream, &reply).await;
            Err(match why {
                Refusal::BadHello(source) => ConnectError::BadHello {
                    addr: remote,
                    source,
                },
                Refusal::OurOwnName => ConnectError::Refused(Status::TryAgain),
            })
        }
    }
}

async fn send_status(stream: &mut PeerStream, line: &[u8]) {
    // The connection is being refused or is about to be used: a failed write shows up soon
    // enough as a closed session.
    let _ = write(stream, line).await;
}

/// Writes `bytes` and flushes them: over TLS a write may leave a record in rustls' buffer.
async fn write(stream: &mut PeerStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Runs a TLS handshake within [`HANDSHAKE_TIMEOUT`].
async fn tls_handshake(
    handshake: impl std::future::Future<Output = io::Result<PeerStream>>,
) -> Result<PeerStream, ConnectError> {
    timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| ConnectError::Timeout {
            during: "in the TLS handshake",
        })?
        .map_err(ConnectError::Tls)
}

/// A TLS error met after the handshake (with TLS 1.3 the server checks the client's
/// certificate after the client is done, so a refusal arrives as an alert when it reads the
/// answer) is reported as the TLS failure it is, not as a connection error.
fn tls_alert(error: ConnectError) -> ConnectError {
    match error {
        ConnectError::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            ConnectError::Tls(io)
        }
        other => other,
    }
}

/// Feeds what arrives to `step` until it has an outcome. The machines behind `step` refuse
/// an overlong line as soon as it is seen, so what a peer can make us hold is bounded.
async fn read_until<T>(
    stream: &mut PeerStream,
    mut step: impl FnMut(&[u8]) -> Result<Option<T>, ConnectError>,
) -> Result<T, ConnectError> {
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ConnectError::Closed);
        }
        if let Some(outcome) = step(&chunk[..n])? {
            return Ok(outcome);
        }
    }
}

impl From<DialError> for ConnectError {
    fn from(error: DialError) -> Self {
        match error {
            DialError::StatusLine(source) => Self::StatusLine(source),
            DialError::Refused(status) => Self::Refused(status),
        }
    }
}

/// What a refusal code means, for the log line.
fn refusal_meaning(status: Status) -> &'static str {
    match status {
        Status::Success => "success",
        Status::TryAgain => "it already has a session with our name; retrying later",
        Status::ProtocolError => "it did not understand our hello",
        Status::BadVersion => "it does not speak peers protocol 2.1",
        Status::BadHost => {
            "its name is not the one we dialled: check the member names and addresses"
        }
        Status::UnknownPeer => "our name is not a member of its peers section",
    }
}
