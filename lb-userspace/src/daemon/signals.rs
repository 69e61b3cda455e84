//! The signals `stickylb run` answers: SIGINT and SIGTERM stop it, SIGHUP reloads the
//! configuration in place.

use std::io;

use tokio::signal::unix::{signal, SignalKind};

pub(super) struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

pub(super) enum Event {
    Stop,
    Reload,
}

impl Signals {
    /// Installed first thing, so that a SIGHUP arriving during start is a reload, never the
    /// default action (exit).
    pub(super) fn install() -> io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    pub(super) async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.interrupt.recv() => {
                tracing::info!("SIGINT received");
                Event::Stop
            }
            _ = self.terminate.recv() => {
                tracing::info!("SIGTERM received");
                Event::Stop
            }
            _ = self.hangup.recv() => Event::Reload,
        }
    }
}
