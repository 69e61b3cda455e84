//! A relayed connection's progress toward the kernel fast path, on a splicing frontend: which
//! exchanges go over a leg that can be spliced, how attempts went, and the hand-off after a
//! pause. The relay holds one only when the frontend splices (see docs/PIPELINE.md).

use std::{sync::Arc, time::Duration};

use super::{
    leg::{Leg, Tried},
    ClientIo,
};
use crate::{
    backend::{Admin, Decision, ServerState},
    fastpath::{policy::Tracker, Runtime},
    proxy::{message::RequestHead, pool::Pools},
};

/// The client connection's progress toward the kernel fast path, on a splicing frontend.
pub(super) struct Splicing<'a> {
    pub(super) runtime: &'a Arc<Runtime>,
    pub(super) interfaces: &'a [String],
    pub(super) tracker: Tracker,
}

impl Splicing<'_> {
    /// Whether the exchange of `request` (routed to `server` by `decision`) should go over a
    /// leg that can be spliced: a tunnel request, or a sticky session's request when the
    /// policy says the connection has lived long enough. Never a request that closes the
    /// connection (nothing would be left to splice), nor an IPv6 server. Nor a server with a
    /// `maxconn` (the kernel would carry requests the limit cannot count) or one the operator
    /// drains (it is on its way to maintenance, which a spliced connection would not heed).
    pub(super) fn wants(
        &self,
        request: &RequestHead,
        server: &ServerState,
        decision: Decision,
    ) -> bool {
        server.addr.is_ipv4()
            && server.maxconn() == 0
            && server.admin() == Admin::Ready
            && !request.close
            && (request.asks_tunnel() || (decision != Decision::NoCookie && self.tracker.due()))
    }

    /// Tells the policy how an attempt went; `true` once spliced.
    pub(super) fn record(&mut self, tried: Option<Tried>) -> bool {
        match tried {
            Some(Tried::Spliced) => true,
            Some(Tried::Raced) => {
                self.tracker.raced();
                false
            }
            Some(Tried::Again) => {
                self.tracker.failed();
                false
            }
            Some(Tried::Never | Tried::Abandoned) => {
                self.tracker.never();
                false
            }
            None => false,
        }
    }

    /// The client paused after an exchange with a sticky session: hands the connection to the
    /// kernel now, on a new leg to the same server if the current one cannot be spliced (the
    /// pooled one goes back to its pool). `Ok(true)` once spliced.
    pub(super) async fn after_pause<C: ClientIo>(
        &mut self,
        leg: &mut Leg,
        client: &mut C,
        (connect, limit): (Duration, Duration),
    ) -> std::io::Result<bool> {
        if leg.splice.is_none() {
            let Some(socket) = client.socket() else {
                return Ok(false);
            };
            let server = Arc::clone(&leg.server);
            let spliceable =
                Leg::spliceable(self.runtime, server, socket, self.interfaces, connect).await;
            match spliceable {
                Some(fresh) => std::mem::replace(leg, fresh).finish(true),
                None => {
                    self.tracker.failed();
                    return Ok(false);
                }
            }
        }
        if !leg.timestamps_seen().await {
            self.tracker.failed();
            return Ok(false);
        }
        let tried = leg.try_splice(client, &[], limit).await.transpose()?;
        // A pause that ends during its hand-off was too short: ask for a longer one.
        let tried = match tried {
            Some(Tried::Raced) => Some(Tried::Again),
            other => other,
        };
        Ok(self.record(tried))
    }
}

/// The leg for the next exchange, to `server`: the one held if it goes there (and can be
/// spliced, when `spliceable` asks for that), else a new one; the held one goes back to its
/// pool (or closes, if it was reserved).
pub(super) async fn choose_leg<C: ClientIo>(
    held: Option<Leg>,
    server: &Arc<ServerState>,
    spliceable: Option<&Splicing<'_>>,
    client: &mut C,
    (pools, connect_timeout): (&Pools, Duration),
) -> std::io::Result<Leg> {
    if let Some(leg) = held {
        if Arc::ptr_eq(&leg.server, server) && (leg.splice.is_some() || spliceable.is_none()) {
            return Ok(leg);
        }
        leg.finish(true);
    }
    if let Some((splicing, socket)) = spliceable.zip(client.socket()) {
        let prepared = Leg::spliceable(
            splicing.runtime,
            Arc::clone(server),
            socket,
            splicing.interfaces,
            connect_timeout,
        )
        .await;
        if let Some(leg) = prepared {
            return Ok(leg);
        }
    }
    Leg::open(Arc::clone(server), pools, connect_timeout).await
}
