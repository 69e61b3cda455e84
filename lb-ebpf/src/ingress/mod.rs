//! Ingress programs, by protocol.

pub(crate) mod options;
pub(crate) mod tcp;
