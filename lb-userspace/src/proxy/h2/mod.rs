//! The HTTP/2 server of TLS frontends (a client that chose `h2` by ALPN): frames in
//! [`frame`], HPACK decoding in [`hpack`], requests' and answers' fields in [`fields`],
//! request bodies in [`body`], and one connection's state machine in [`conn`]. Each request goes through the
//! same pipeline as every other ([`Proxy::serve`]).
//!
//! Why not hyper's HTTP/2 server (the `h2` crate), which served these connections before: it
//! runs each stream on a task of its own, behind a lock shared with the connection's task, and
//! builds a header map for every request and answer. Measured on the same load (see
//! docs/BENCHMARKS.md), that layer alone cost more CPU per request than all of HAProxy's
//! HTTP/2 and TLS. Here a connection is one task: requests are read and answered in place,
//! and the answers ready at once leave in one write. See docs/PIPELINE.md, "HTTP/2".

mod body;
mod conn;
mod fields;
pub(super) mod frame;
mod hpack;

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use hyper::{Response, StatusCode};

pub(super) use self::conn::{Connection, Limits};
use self::{body::RequestBody, conn::Service};
use super::{exchange::Via, Answer, Frontend, Proxy};

/// The pipeline behind one client connection's streams.
pub(super) struct Pipeline {
    /// One handle per connection, cloned per request (see `tls::service`).
    shared: Arc<(Arc<Frontend>, Arc<Proxy>)>,
    peer: SocketAddr,
    via: Via,
}

impl Pipeline {
    pub(super) fn new(
        frontend: &Arc<Frontend>,
        proxy: &Arc<Proxy>,
        peer: SocketAddr,
        via: Via,
    ) -> Self {
        Self {
            shared: Arc::new((Arc::clone(frontend), Arc::clone(proxy))),
            peer,
            via,
        }
    }
}

impl Service for Pipeline {
    type Body = Answer;

    fn call(
        &mut self,
        request: hyper::Request<RequestBody>,
    ) -> Pin<Box<dyn Future<Output = Response<Answer>> + Send>> {
        let shared = Arc::clone(&self.shared);
        let (peer, via) = (self.peer, self.via);
        Box::pin(async move {
            let (frontend, proxy) = &*shared;
            let mut response = proxy.serve(frontend, peer, via, request).await;
            super::tls::add_hsts(frontend, response.headers_mut());
            response
        })
    }

    fn short(&self, status: StatusCode, text: &'static str) -> Response<Answer> {
        super::short_response(status, text).map(Answer::Own)
    }
}

#[cfg(test)]
pub(super) mod tests;
