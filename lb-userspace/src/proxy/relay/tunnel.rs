//! A relayed connection that became a tunnel (an accepted upgrade or CONNECT, or a response
//! framed by the server's close): handed to the kernel when it can be, else bytes both ways.

use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{
    leg::{Leg, Tried},
    ClientIo,
};

/// The connection is a tunnel to its server. A leg that can be spliced is handed to the kernel
/// as soon as both sides are quiet, relaying what either sends meanwhile; then, or when it
/// cannot be spliced, bytes are relayed both ways until both sides closed. `pending`: client
/// bytes read after the request head.
pub(super) async fn tunnel_leg<C: ClientIo>(
    client: &mut C,
    mut leg: Leg,
    pending: BytesMut,
    limit: std::time::Duration,
) {
    if !pending.is_empty() && leg.stream.write_all(&pending).await.is_err() {
        return;
    }
    // What arrives before the hand-off is passed on as it comes, not gathered.
    let mut chunk = vec![0u8; 16 * 1024];
    while let Some(tried) = leg.try_splice(client, &[], limit).await {
        let Ok(tried) = tried else {
            return;
        };
        match tried {
            Tried::Spliced => {
                tracing::debug!("tunnel spliced");
                return;
            }
            Tried::Raced | Tried::Again => {}
            Tried::Never | Tried::Abandoned => break,
        }
        // A leg that can be spliced has a client socket (see `ClientIo`).
        let Some(socket) = client.socket() else { break };
        if !matches!(
            relay_ready(socket, &mut leg.stream, &mut chunk).await,
            Ok(true)
        ) {
            // A side closed (or failed): the rest is relayed here, half-closes included.
            leg.stop_observing();
        }
    }
    tunnel(client, &mut leg.stream, &[]).await;
}

/// Waits until either side of a tunnel has something, and passes on what is there. `false`
/// when that side has closed.
async fn relay_ready(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    chunk: &mut [u8],
) -> std::io::Result<bool> {
    let client_first = tokio::select! {
        ready = client.readable() => { ready?; true }
        ready = upstream.readable() => { ready?; false }
    };
    let (from, to) = if client_first {
        (client, upstream)
    } else {
        (upstream, client)
    };
    match from.try_read(chunk) {
        Ok(0) => Ok(false),
        Ok(n) => {
            to.write_all(&chunk[..n]).await?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(true),
        Err(e) => Err(e),
    }
}

/// Relays bytes both ways until both sides closed; `pending` goes to the server first.
pub(super) async fn tunnel<C>(client: &mut C, upstream: &mut TcpStream, pending: &[u8])
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    if upstream.write_all(pending).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(client, upstream).await;
    }
}
