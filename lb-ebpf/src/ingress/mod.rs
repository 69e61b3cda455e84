//! Ingress programs, by protocol.

pub(crate) mod frame;
pub(crate) mod options;
pub(crate) mod tcp;
pub(crate) mod xdp;
