//! Proxy failures, classified by the side that failed, and the one responder that turns each
//! into the short answer the client gets, the same on every path (see docs/PIPELINE.md).
//! Response bodies never carry internal details; the access log does.

use std::{error::Error as _, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{header, Response, StatusCode};

use super::ProxyBody;

/// Which side of an exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client sent something the proxy cannot forward, or too slowly: its fault, logged
    /// quietly, never charged to a server.
    Client,
    /// A server could not be reached, failed, or was too slow; charged to that server.
    Server,
    /// The configuration leaves the request nowhere to go (no server is up in its backend).
    Config,
    /// The proxy itself.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Every server of the backend is down.
    #[error("no server is up in backend {backend}")]
    NoServer { backend: String },
    /// Every server that could take the request stayed at its `maxconn` for the backend's
    /// `queue_timeout`.
    #[error("queued for {waited_ms} ms in backend {backend}: every server that could take the request stayed at its maxconn")]
    QueueTimeout { backend: String, waited_ms: u64 },
    /// The chosen server could not be reached or failed mid-exchange (hyper's client).
    #[error("server {server} failed")]
    Upstream {
        server: Arc<str>,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The chosen server did not answer within `timeouts.server`.
    #[error("server {server} did not answer in time")]
    UpstreamTimeout { server: Arc<str> },
    /// The relay's connection to the chosen server failed. `answered`: the client had already
    /// heard part of the answer; `reused`: the connection had served before (or came from the
    /// pool), so the server may have closed it while idle.
    #[error("server {server} failed")]
    ServerIo {
        server: Arc<str>,
        answered: bool,
        reused: bool,
        #[source]
        source: std::io::Error,
    },
    /// The request cannot be forwarded as it is (e.g. a URI we cannot rebuild).
    #[error("request cannot be forwarded")]
    BadRequest(#[source] hyper::http::Error),
    /// The client's request body is malformed (e.g. a bad chunk size) or was cut short.
    #[error("the client's request body is malformed or incomplete")]
    ClientBody(#[source] BodyError),
    /// The client connection failed while the answer was written to it.
    #[error("the client connection failed")]
    ClientGone(#[source] std::io::Error),
    /// The client did not send its request head within `timeouts.client`.
    #[error("client too slow to send its request")]
    ClientTimeout,
    /// The kernel fast path failed while handing the connection over (with an answer).
    #[error("fast path hand-off failed")]
    Handoff(#[source] std::io::Error),
}

/// A client's request body that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// By the relay (a bad chunk, or the client closed mid-body).
    #[error("relaying the request body failed")]
    Relayed(#[source] std::io::Error),
    /// By hyper, while its client forwarded the body (see [`ClientBodyFailed`]).
    #[error("forwarding the request body failed")]
    Forwarded(#[source] hyper_util::client::legacy::Error),
}

impl ProxyError {
    pub fn side(&self) -> Side {
        match self {
            Self::NoServer { .. } => Side::Config,
            // The servers are busy, not failing: the limit is the configuration's.
            Self::QueueTimeout { .. } => Side::Config,
            Self::Upstream { .. } | Self::UpstreamTimeout { .. } | Self::ServerIo { .. } => {
                Side::Server
            }
            Self::BadRequest(_)
            | Self::ClientBody(_)
            | Self::ClientGone(_)
            | Self::ClientTimeout => Side::Client,
            Self::Handoff(_) => Side::Internal,
        }
    }

    /// Whether the request may be sent again, as it is, on a new connection to the same
    /// server: only when a reused connection failed before the client heard anything (the
    /// server may have closed it while idle). Whether the request itself can be repeated
    /// (idempotent, no body) is the caller's to say.
    pub fn retry_allowed(&self) -> bool {
        matches!(
            self,
            Self::ServerIo {
                answered: false,
                reused: true,
                ..
            }
        )
    }

    /// Whether the client is to get [`Self::answer`]: not when it already heard part of the
    /// answer (a failure mid-delivery, or during a hand-off made with it), nor when it is gone.
    pub fn answers_client(&self) -> bool {
        !matches!(
            self,
            Self::ServerIo { answered: true, .. } | Self::ClientGone(_) | Self::Handoff(_)
        )
    }

    /// Whether the fault lies with the client (logged quietly) rather than a server.
    pub fn is_client_fault(&self) -> bool {
        self.side() == Side::Client
    }

    /// Whether the failure counts against the server the exchange went to.
    pub fn charges_server(&self) -> bool {
        self.side() == Side::Server
    }

    /// The answer the client gets.
    pub fn answer(&self) -> &'static Answer {
        match self {
            Self::NoServer { .. } => &NO_SERVER,
            Self::QueueTimeout { .. } => &QUEUE_TIMEOUT,
            Self::Upstream { .. }
            | Self::UpstreamTimeout { .. }
            | Self::ServerIo { .. }
            | Self::Handoff(_) => &SERVER_FAILED,
            Self::BadRequest(_) | Self::ClientBody(_) | Self::ClientGone(_) => &BAD_REQUEST,
            Self::ClientTimeout => &REQUEST_TIMEOUT,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.answer().status
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        self.answer().response()
    }

    /// Classifies a failure of hyper's client: a request body the client could not deliver is
    /// the client's fault (found by its type among the error's causes), the rest the server's.
    pub(super) fn upstream(server: &Arc<str>, source: hyper_util::client::legacy::Error) -> Self {
        let mut cause = source.source();
        while let Some(error) = cause {
            if error.is::<ClientBodyFailed>() {
                return Self::ClientBody(BodyError::Forwarded(source));
            }
            cause = error.source();
        }
        Self::Upstream {
            server: Arc::clone(server),
            source,
        }
    }
}

/// The error a forwarded request body carries when reading it from the client failed: marks
/// the failure as the client's when hyper's client reports it.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body from the client failed")]
pub(super) struct ClientBodyFailed(#[source] pub(super) super::BodyFailed);

/// A short answer generated by the proxy itself, for hyper (`response`) and for the relay,
/// which writes `raw` as it is and closes.
pub struct Answer {
    pub status: StatusCode,
    pub body: &'static str,
    pub raw: &'static [u8],
}

impl Answer {
    pub fn response(&self) -> Response<ProxyBody> {
        short_response(self.status, self.body)
    }
}

/// An [`Answer`]: status, reason, body and the body's length (checked by a test).
macro_rules! answer {
    ($status:ident, $code:literal, $reason:literal, $len:literal, $body:literal) => {
        Answer {
            status: StatusCode::$status,
            body: $body,
            raw: concat!(
                "HTTP/1.1 ",
                $code,
                " ",
                $reason,
                "\r\ncontent-type: text/plain\r\ncache-control: no-cache\r\ncontent-length: ",
                $len,
                "\r\nconnection: close\r\n\r\n",
                $body
            )
            .as_bytes(),
        }
    };
}

pub(super) static NO_SERVER: Answer = answer!(
    SERVICE_UNAVAILABLE,
    503,
    "Service Unavailable",
    72,
    "503 Service Unavailable: no server is available to handle this request.\n"
);
pub(super) static SERVER_FAILED: Answer = answer!(
    SERVICE_UNAVAILABLE,
    503,
    "Service Unavailable",
    54,
    "503 Service Unavailable: the server failed to answer.\n"
);
pub(super) static QUEUE_TIMEOUT: Answer = answer!(
    SERVICE_UNAVAILABLE,
    503,
    "Service Unavailable",
    76,
    "503 Service Unavailable: every server is busy; the request waited too long.\n"
);
pub(super) static BAD_REQUEST: Answer =
    answer!(BAD_REQUEST, 400, "Bad Request", 16, "400 Bad Request\n");
pub(super) static REQUEST_TIMEOUT: Answer = answer!(
    REQUEST_TIMEOUT,
    408,
    "Request Timeout",
    21,
    "408 Request Timeout\r\n"
);

/// A small text response generated by the proxy itself.
pub fn short_response(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_answers_say_their_length_and_match_the_hyper_ones() {
        for answer in [
            &NO_SERVER,
            &SERVER_FAILED,
            &QUEUE_TIMEOUT,
            &BAD_REQUEST,
            &REQUEST_TIMEOUT,
        ] {
            let raw = std::str::from_utf8(answer.raw).unwrap();
            let (head, body) = raw.split_once("\r\n\r\n").unwrap();
            assert_eq!(body, answer.body);
            assert!(head.starts_with(&format!("HTTP/1.1 {} ", answer.status.as_u16())));
            assert!(
                head.contains(&format!("content-length: {}\r\n", body.len())),
                "{head}"
            );
            assert_eq!(answer.response().status(), answer.status);
        }
    }

    #[test]
    fn failures_say_their_side_and_whether_to_retry() {
        let server: Arc<str> = Arc::from("be1");
        let io = |answered, reused| ProxyError::ServerIo {
            server: Arc::clone(&server),
            answered,
            reused,
            source: std::io::Error::other("reset"),
        };
        assert!(io(false, true).retry_allowed());
        assert!(!io(false, false).retry_allowed() && !io(true, true).retry_allowed());
        assert_eq!(io(true, false).side(), Side::Server);
        assert!(io(false, false).charges_server());
        let body = ProxyError::ClientBody(BodyError::Relayed(std::io::Error::other("zz")));
        assert_eq!(
            (body.side(), body.status()),
            (Side::Client, StatusCode::BAD_REQUEST)
        );
        assert!(!body.charges_server() && !body.retry_allowed());
        let none = ProxyError::NoServer {
            backend: "web".into(),
        };
        assert_eq!(none.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!none.charges_server());
    }
}
