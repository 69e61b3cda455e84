//! Opening a session: dialling a peer and sending our hello, or answering a peer's hello on
//! the peers port. Both end with an [`Opened`] connection ready for messages.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use super::handshake::{
    accept_hello, decode_status, Hello, HelloError, Status, StatusLineError, Version, MAX_LINE_LEN,
};

/// Connecting, and each side of the handshake, must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection past the handshake.
pub struct Opened {
    pub stream: TcpStream,
    /// Bytes read past the handshake: the first messages, if the peer was quick.
    pub leftover: Vec<u8>,
    /// What the peer speaks: whether it takes timed updates.
    pub version: Version,
    pub remote: SocketAddr,
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

/// Dials `addr`, which should be peer `callee`, introducing ourselves as `caller`.
pub async fn dial(addr: SocketAddr, callee: &str, caller: &str) -> Result<Opened, ConnectError> {
    let stream = timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout {
            during: "connecting",
        })?
        .map_err(|source| ConnectError::Connect { addr, source })?;
    stream.set_nodelay(true)?;
    let mut stream = stream;
    let mut hello = Vec::new();
    Hello::new(callee, caller, std::process::id())
        .encode(&mut hello)
        .map_err(ConnectError::Hello)?;
    let (status, leftover) = timeout(HANDSHAKE_TIMEOUT, async {
        stream
            .write_all(&hello)
            .await
            .map_err(|e| ReadError::Io(e.into()))?;
        read_until(&mut stream, decode_status).await
    })
    .await
    .map_err(|_| ConnectError::Timeout {
        during: "waiting for the peer's answer",
    })??;
    match status {
        Status::Success => Ok(Opened {
            stream,
            leftover,
            version: Version::V2_1,
            remote: addr,
        }),
        refused => Err(ConnectError::Refused(refused)),
    }
}

/// Reads a hello on an accepted connection and answers it. `members` are every configured
/// peer name, ours included. Returns the caller's name and the open connection; on a refusal
/// the status is sent before the error is returned.
pub async fn answer(
    mut stream: TcpStream,
    remote: SocketAddr,
    local_name: &str,
    members: &[String],
) -> Result<(String, Opened), ConnectError> {
    stream.set_nodelay(true)?;
    let read = timeout(
        HANDSHAKE_TIMEOUT,
        read_until(&mut stream, |buf| accept_hello(buf, local_name, members)),
    )
    .await
    .map_err(|_| ConnectError::Timeout {
        during: "waiting for a hello",
    })?;
    let (hello, leftover) = match read {
        Ok(read) => read,
        Err(ReadError::Parse(source)) => {
            send_status(&mut stream, source.status()).await;
            return Err(ConnectError::BadHello {
                addr: remote,
                source,
            });
        }
        Err(ReadError::Io(e)) => return Err(e),
    };
    // Our own name calling is an older process of ours (a reload): HAProxy's answer to that
    // is "try again later".
    let status = if hello.caller == local_name {
        Status::TryAgain
    } else {
        Status::Success
    };
    send_status(&mut stream, status).await;
    if status != Status::Success {
        return Err(ConnectError::Refused(status));
    }
    Ok((
        hello.caller,
        Opened {
            stream,
            leftover,
            version: hello.version,
            remote,
        },
    ))
}

async fn send_status(stream: &mut TcpStream, status: Status) {
    let mut line = Vec::new();
    status.encode(&mut line);
    // The connection is being refused or is about to be used: a failed write shows up soon
    // enough as a closed session.
    let _ = stream.write_all(&line).await;
}

/// A handshake read failure: the parse error decides the refusal to send.
enum ReadError<E> {
    Parse(E),
    Io(ConnectError),
}

impl<E> From<ReadError<E>> for ConnectError
where
    ConnectError: From<E>,
{
    fn from(error: ReadError<E>) -> Self {
        match error {
            ReadError::Parse(e) => e.into(),
            ReadError::Io(e) => e,
        }
    }
}

/// Reads until `parse` finds a complete handshake part; returns it and the bytes after it.
/// Reads at most a few lines' worth, so a peer cannot make us buffer more.
async fn read_until<T, E>(
    stream: &mut TcpStream,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, E>,
) -> Result<(T, Vec<u8>), ReadError<E>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if let Some((value, used)) = parse(&buf).map_err(ReadError::Parse)? {
            return Ok((value, buf.split_off(used)));
        }
        if buf.len() > 4 * MAX_LINE_LEN {
            // `parse` refuses an overlong line itself; this only bounds what a peer that
            // keeps sending short garbage can make us hold.
            return Err(ReadError::Io(ConnectError::Closed));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ReadError::Io(e.into()))?;
        if n == 0 {
            return Err(ReadError::Io(ConnectError::Closed));
        }
        buf.extend_from_slice(&chunk[..n]);
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
