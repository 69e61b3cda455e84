//! What can go wrong, naming the command or namespace that failed.

use std::{io, path::PathBuf, process::ExitStatus};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The program could not be started (not installed, or not on the PATH).
    #[error("could not start `{command}`")]
    Start {
        command: String,
        #[source]
        source: io::Error,
    },
    /// The program ran and failed; `stderr` is what it said.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// A namespace's handle under [`crate::NETNS_DIR`] could not be opened.
    #[error("could not open network namespace {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `setns` refused the handle.
    #[error("could not join network namespace {}", path.display())]
    Join {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A LAN layout asked for more load balancers than its address plan has room for.
    #[error(
        "{count} load balancers from 10.{net}.0.{first} would reach the LAN's fixed hosts \
         (.2 and .100)"
    )]
    LanFull { net: u8, first: u8, count: usize },
    /// Turning GRO on or off failed (the ioctl, or the thread that joins the namespace).
    #[error("could not turn GRO {} on {dev} in {netns}", if *on { "on" } else { "off" })]
    Gro {
        netns: String,
        dev: String,
        on: bool,
        #[source]
        source: io::Error,
    },
}
