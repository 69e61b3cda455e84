//! Why `stickylb run` could not start: each part of the start names what failed.

use std::{io, net::SocketAddr};

use crate::{
    backend::pinned::SettingsError, control, dataplane::DataplaneError, fastpath::FastPathError,
    peers::tls::TlsSetupError, shield::ShieldError, table::pinned::DurableError,
};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Durable(#[from] DurableError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot listen on {addr} for {what}")]
    Bind {
        what: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Control(#[from] control::BindError),
    #[error("upgrade: cannot take over from the running instance")]
    Upgrade(#[source] io::Error),
    #[error("cannot start the data plane's threads")]
    Workers(#[source] io::Error),
    #[error("cannot install the signal handlers")]
    Signals(#[source] io::Error),
    #[error("cannot start the kernel fast path (set fastpath = \"off\" to run without it)")]
    FastPath(#[source] FastPathError),
    #[error("cannot start the shield (set [shield] enabled = false to run without it)")]
    Shield(#[source] ShieldError),
    #[error("cannot set up [peers] tls")]
    PeersTls(#[from] TlsSetupError),
}
