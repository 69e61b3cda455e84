//! Where the daemon's listening sockets come from: the running instance's when upgrading (taken
//! over the control socket), else bound here; and the control socket's path, taken over last.
//! Every listening socket is also kept, duplicated, for a successor.

use std::{io, net::SocketAddr, os::fd::AsFd as _, path::Path};

use tokio::net::{TcpListener, UnixListener};

use super::error::StartError;
use crate::{
    control::{self, Handover, Takeover},
    proxy::listener,
};

/// Where listening sockets come from: the predecessor's when upgrading, else bound here. Every
/// one is also kept (duplicated) for a successor.
#[derive(Default)]
pub(super) struct Sockets {
    pub(super) takeover: Option<Takeover>,
    pub(super) handover: Handover,
}

impl Sockets {
    pub(super) fn listen(
        &mut self,
        role: &str,
        addr: SocketAddr,
        what: &str,
    ) -> Result<TcpListener, StartError> {
        let bind_error = |source| StartError::Bind {
            what: what.to_owned(),
            addr,
            source,
        };
        let listener = match self.takeover.as_mut().and_then(|t| t.listener(role, addr)) {
            Some(listener) => {
                tracing::info!(role, %addr, "took over the listening socket");
                listener
            }
            None => listener::bind(addr).map_err(bind_error)?,
        };
        self.handover
            .add(role.to_owned(), addr, listener.as_fd())
            .map_err(bind_error)?;
        Ok(listener)
    }
}

/// Asks the running instance for its sockets; `None` (start fresh) when none answers.
pub(super) async fn take_over(path: &Path) -> Result<Option<Takeover>, StartError> {
    let owned = path.to_owned();
    let takeover = tokio::task::spawn_blocking(move || Takeover::request(&owned))
        .await
        .map_err(|e| StartError::Upgrade(io::Error::other(e)))?
        .map_err(StartError::Upgrade)?;
    match &takeover {
        Some(_) => {
            tracing::info!(control = %path.display(), "upgrading: took the listening sockets of the running instance")
        }
        None => {
            tracing::warn!(control = %path.display(), "--upgrade: no running instance answers; starting fresh")
        }
    }
    Ok(takeover)
}

/// Tells the predecessor we serve, waits until it stopped accepting, then takes the control
/// socket's path over.
pub(super) async fn finish_takeover(
    takeover: Option<Takeover>,
    path: &Path,
) -> Result<UnixListener, StartError> {
    if let Some(takeover) = takeover {
        tokio::task::spawn_blocking(move || takeover.finish())
            .await
            .map_err(|e| StartError::Upgrade(io::Error::other(e)))?
            .map_err(StartError::Upgrade)?;
        tracing::info!("the previous instance stopped accepting; it drains and exits");
    }
    Ok(control::bind(path, true)?)
}
