//! The relay's states, one method each (see [`State`]): what each does, and which state
//! comes next. The shape of the machine and its driver are in the parent module.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use bytes::{Buf as _, BytesMut};
use tokio::{io::AsyncWriteExt as _, sync::watch};

use super::{
    forward::{deliver, forward, retry_on_a_new_connection, unreached, Answer, Delivered},
    io::read_head,
    leg::Leg,
    splicing::choose_leg,
    tunnel::{tunnel, tunnel_leg},
    ClientIo, Conn, Exchange, State, PAUSE_CONNECT,
};
use crate::{
    backend::{Decision, ServerState},
    proxy::{
        error::ProxyError,
        exchange::{self, Access, Via},
        message::{Framing, RequestHead},
        ConnSettings,
    },
};

impl<'a, C: ClientIo> Conn<'a, C> {
    /// Timeouts, errors and oversized heads go to hyper, which answers them as it always does.
    pub(super) async fn reading_first_head(&mut self) -> State {
        let max = self.settings.max_header_bytes;
        let read = read_head(&mut self.client, &mut self.buf, max);
        match tokio::time::timeout(self.settings.client_timeout, read).await {
            Ok(Ok(Some(head))) => {
                self.timeouts = self.proxy.timeouts();
                State::Routing { head, held: None }
            }
            _ => State::ToHyper,
        }
    }

    /// A request the relay does not serve simply (HTTP/1.0, a chunked or `Expect` body, a
    /// malformed head, a backend with a server reached over TLS) goes to hyper; one with no
    /// server to go to is answered `503`.
    pub(super) async fn routing(&mut self, head: usize, held: Option<Leg>) -> State {
        // The relay and the kernel speak cleartext to servers: hyper serves a backend with a
        // TLS server (checked per request, as a reload may add one to a connection's backend).
        let parsed = RequestHead::parse(&self.buf[..head])
            .filter(|_| !self.frontend.backend.has_tls_servers());
        let Some(request) = parsed else {
            if let Some(leg) = held {
                leg.finish(true);
            }
            return State::ToHyper;
        };
        let backend = &self.frontend.backend;
        let cookie = request.cookie(&backend.stick_cookie);
        let (admitted, decision) = match exchange::route(backend, self.peer, cookie).await {
            Ok(routed) => routed,
            Err(error) => {
                if let Some(leg) = held {
                    leg.finish(true);
                }
                let access = self.access(&request, None, Via::Pooled, Instant::now());
                self.fail(&access, &error).await;
                return State::Closing;
            }
        };
        let server = Arc::clone(admitted.server());
        if server.tls.is_some() {
            // A reload gave the backend this TLS server after the check above: hyper routes
            // the request again (it is counted twice, once).
            drop(admitted);
            if let Some(leg) = held {
                leg.finish(true);
            }
            return State::ToHyper;
        }
        // A candidate exchange goes over a leg that can be spliced and is followed by an
        // attempt; the others are relayed as with the fast path off.
        let candidate = self
            .splicing
            .as_ref()
            .is_some_and(|s| s.wants(&request, &server, decision));
        let spliceable = self.splicing.as_ref().filter(|_| candidate);
        let pools = (&self.proxy.pools, self.timeouts.0);
        let leg = match choose_leg(held, &server, spliceable, &mut self.client, pools).await {
            Ok(leg) => leg,
            Err(source) => {
                let error = unreached(&server, source);
                let routed = Some((&*server, decision));
                let access = self.access(&request, routed, Via::Pooled, Instant::now());
                self.fail(&access, &error).await;
                return State::Done;
            }
        };
        if let Some(splicing) = self
            .splicing
            .as_mut()
            .filter(|_| candidate && leg.splice.is_none())
        {
            // No leg that can be spliced was to be had (counted by the fast path): later.
            splicing.tracker.failed();
        }
        self.buf.advance(head);
        State::Forwarding(Exchange {
            request,
            decision,
            candidate,
            started: Instant::now(),
            in_flight: admitted,
            leg,
        })
    }

    /// Sends the request, retrying once on a new connection when a reused one failed before
    /// answering a request that can be repeated.
    pub(super) async fn forwarding(&mut self, mut x: Exchange) -> State {
        let out_head = x.request.forwarded(self.peer.ip(), self.tls.is_some());
        let cookie = &*self.frontend.backend.stick_cookie;
        let mut retried = false;
        let forwarded = loop {
            let forwarded = forward(
                &mut self.client,
                &mut x.leg,
                &mut self.buf,
                &out_head,
                (&x.request, cookie),
                self.timeouts.1,
            )
            .await;
            match forwarded {
                Err(error) if !retried && retry_on_a_new_connection(&error, &x.leg, &x.request) => {
                    tracing::debug!(%error, server = %x.leg.server.name, "a reused server connection failed before answering; retrying once on a new one");
                    retried = true;
                    match x.leg.reopen(self.timeouts.0).await {
                        Ok(fresh) => x.leg = fresh,
                        Err(source) => break Err(unreached(&x.leg.server, source)),
                    }
                }
                other => break other,
            }
        };
        match forwarded {
            Ok(answer) => State::Delivering(x, answer),
            Err(error) => self.failed(x, &error).await,
        }
    }

    /// Delivers the answer; a candidate exchange of a sticky session is handed to the kernel
    /// as it is delivered (a tunnel belongs to its server whatever the cookie). Then the
    /// connection goes on as the response says.
    pub(super) async fn delivering(&mut self, mut x: Exchange, answer: Answer) -> State {
        let hand_off = x.candidate
            && x.leg.can_splice()
            && (x.decision != Decision::NoCookie
                || answer.head.sets_cookie.is_some()
                || answer.head.body == Framing::Tunnel)
            && self.buf.is_empty();
        let limit = hand_off.then_some(self.settings.client_timeout);
        let backend = &self.frontend.backend;
        let delivered = deliver(
            &mut self.client,
            &mut x.leg,
            answer,
            backend,
            &x.request,
            limit,
        )
        .await;
        let Delivered {
            response,
            learned,
            body,
            tried,
        } = match delivered {
            Ok(delivered) => delivered,
            Err(error) => return self.failed(x, &error).await,
        };
        let Exchange {
            request,
            decision,
            mut leg,
            started,
            in_flight,
            ..
        } = x;
        leg.reused = true;
        drop(in_flight);
        let via = if leg.splice.is_some() {
            Via::Fastpath
        } else {
            Via::Pooled
        };
        self.access(&request, Some((&leg.server, decision)), via, started)
            .served(response.status);
        let sticky = decision != Decision::NoCookie || learned;
        if let Some(splicing) = self.splicing.as_mut() {
            splicing.tracker.exchanged(body);
            if splicing.record(tried) {
                tracing::debug!(client = %self.peer, server = %leg.server.name, "spliced");
                return State::Done;
            }
        }
        if response.body == Framing::Tunnel {
            return State::Tunnelling(leg);
        }
        if response.close || request.close {
            leg.finish(!response.close);
            return State::Closing;
        }
        if response.body == Framing::Unframed {
            return State::Streaming(leg);
        }
        let pause = self
            .splicing
            .as_ref()
            .filter(|_| sticky && self.buf.is_empty())
            .and_then(|s| s.tracker.pause());
        State::ReadingHead { leg, pause }
    }

    /// The next request, or a pause long enough for a hand-off.
    pub(super) async fn reading_head(&mut self, leg: Leg, pause: Option<Duration>) -> State {
        let next = read_next(
            &mut self.client,
            &mut self.buf,
            self.settings,
            &mut self.stop,
            pause,
        )
        .await;
        match next {
            Next::Head(head) => State::Routing {
                head,
                held: Some(leg),
            },
            Next::Paused if self.splicing.is_some() => State::HandingOff(leg),
            Next::Paused => State::ReadingHead { leg, pause: None },
            Next::End => {
                leg.finish(true);
                State::Closing
            }
        }
    }

    pub(super) async fn handing_off(&mut self, mut leg: Leg) -> State {
        // A reload gave the backend a TLS server: never spliced (its next request goes to
        // hyper, see `routing`).
        let tls = self.frontend.backend.has_tls_servers();
        let Some(splicing) = self.splicing.as_mut().filter(|_| !tls) else {
            return State::ReadingHead { leg, pause: None };
        };
        let connect = self.timeouts.0.min(PAUSE_CONNECT);
        let limits = (connect, self.settings.client_timeout);
        match splicing
            .after_pause(&mut leg, &mut self.client, limits)
            .await
        {
            Ok(true) => {
                tracing::debug!(client = %self.peer, server = %leg.server.name, "spliced after a pause");
                State::Done
            }
            Ok(false) => State::ReadingHead { leg, pause: None },
            Err(_) => {
                leg.finish(true);
                State::Closing
            }
        }
    }

    pub(super) async fn tunnelling(&mut self, leg: Leg) -> State {
        let pending = std::mem::take(&mut self.buf);
        tunnel_leg(&mut self.client, leg, pending, self.settings.client_timeout).await;
        State::Done
    }

    /// Forwarded until the server closes: the rest is tunnelled as bytes.
    pub(super) async fn streaming(&mut self, mut leg: Leg) -> State {
        if leg.can_splice() {
            if let Some(splicing) = &self.splicing {
                splicing.runtime.stats.unframed.fetch_add(1, Relaxed);
            }
        }
        leg.stop_observing();
        tunnel(&mut self.client, &mut leg.stream, &self.buf).await;
        State::Done
    }

    /// The exchange failed: counted, logged and answered (when the client can still hear
    /// one), then the connection closes.
    async fn failed(&mut self, x: Exchange, error: &ProxyError) -> State {
        drop(x.in_flight);
        let routed = Some((&*x.leg.server, x.decision));
        let access = self.access(&x.request, routed, Via::Pooled, x.started);
        self.fail(&access, error).await;
        State::Closing
    }

    async fn fail(&mut self, access: &Access<'_>, error: &ProxyError) {
        if access.failed(error).is_some() && self.client.write_all(error.answer().raw).await.is_ok()
        {
            // Not every failure closes the connection after it (see `State::Done`): the answer
            // must not stay in a TLS buffer.
            let _ = self.client.flush().await;
        }
    }

    fn access<'r>(
        &self,
        request: &'r RequestHead,
        routed: Option<(&'r ServerState, Decision)>,
        via: Via,
        started: Instant,
    ) -> Access<'r>
    where
        'a: 'r,
    {
        Access {
            frontend: self.frontend,
            client: self.peer,
            method: request.method(),
            path: request.path(),
            routed,
            // A TLS connection is never spliced: its lines say TLS.
            via: self.tls.map_or(via, Via::Tls),
            started,
        }
    }
}

/// How the wait for the next request ended.
enum Next {
    /// A complete head of this length is in the buffer.
    Head(usize),
    /// The client paused (sent nothing) for as long as asked.
    Paused,
    /// The client closed, failed, timed out, or the daemon stops.
    End,
}

/// Waits for the next request head. With `pause`, gives up waiting after that long if nothing
/// came at all ([`Next::Paused`]). A stopping daemon closes an idle connection (as hyper's
/// graceful shutdown does), not one whose next request has begun.
async fn read_next<C: ClientIo>(
    client: &mut C,
    buf: &mut BytesMut,
    settings: ConnSettings,
    stop: &mut watch::Receiver<bool>,
    pause: Option<Duration>,
) -> Next {
    let idle = buf.is_empty();
    let limit = pause.map_or(settings.client_timeout, |p| p.min(settings.client_timeout));
    let read = tokio::time::timeout(limit, read_head(client, buf, settings.max_header_bytes));
    let read = tokio::select! {
        read = read => read,
        _ = stop.wait_for(|stop| *stop), if idle => return Next::End,
    };
    match read {
        Ok(Ok(Some(len))) => Next::Head(len),
        Ok(_) => Next::End,
        Err(_) if pause.is_some() && buf.is_empty() => Next::Paused,
        // The request began during the pause: its head gets the whole client timeout.
        Err(_) if pause.is_some() => Box::pin(read_next(client, buf, settings, stop, None)).await,
        Err(_) => Next::End,
    }
}
