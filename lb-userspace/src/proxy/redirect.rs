//! A frontend with `redirect_http_to`: every request on it is answered with `308 Permanent
//! Redirect` to the same path and query under the configured `https://` origin. Nothing is
//! routed, so no backend, table or fast path is involved. 308 (not 301) keeps the method and
//! body of a POST; browsers treat both as permanent.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{HeaderValue, CONNECTION, CONTENT_TYPE, LOCATION},
    server::conn::http1,
    service::service_fn,
    Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{drain::Drain, ConnSettings};

const HYPER_MIN_BUF: usize = 8192;

/// Serves `stream`'s requests with redirects to `base` on a task of its own, watched by
/// `graceful`. Each answer has its access line, like a routed exchange's (no backend, no
/// server, `relay="redirect"`).
pub(super) fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    (frontend, base): (&str, &Arc<str>),
    settings: ConnSettings,
    graceful: &Drain,
) {
    let (frontend, base): (Arc<str>, _) = (Arc::from(frontend), Arc::clone(base));
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = redirect(&base, &request);
        tracing::info!(
            target: "access",
            frontend = %frontend,
            status = response.status().as_u16(),
            client = %peer,
            method = %request.method(),
            path = request.uri().path(),
            relay = "redirect",
        );
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(settings.client_timeout)
        .max_buf_size(settings.max_header_bytes.max(HYPER_MIN_BUF));
    let connection = graceful.watch(
        builder.serve_connection(TokioIo::new(stream), service),
        |connection| connection.graceful_shutdown(),
    );
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%peer, %error, "redirected client connection ended with an error");
        }
    });
}

/// The answer to `request`: its path and query under `base`. A request body is not read;
/// the connection closes after the answer when one was sent, so that it is never taken for
/// the next request.
fn redirect<B>(base: &str, request: &Request<B>) -> Response<Full<Bytes>> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str);
    // `OPTIONS *` has no path: the origin's root. (An absolute-form target keeps its path.)
    let path = if path.starts_with('/') { path } else { "/" };
    let location = format!("{base}{path}");
    let body = format!("Moved permanently to {location}\n");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let headers = response.headers_mut();
    if let Ok(value) = location.parse() {
        headers.insert(LOCATION, value);
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if has_body(request) {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn has_body<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    headers.contains_key(hyper::header::TRANSFER_ENCODING)
        || headers
            .get(hyper::header::CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() != b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(target: &str, body_len: Option<&str>) -> Response<Full<Bytes>> {
        let mut request = Request::builder().uri(target);
        if let Some(len) = body_len {
            request = request.header("content-length", len);
        }
        redirect("https://www.example.test", &request.body(()).unwrap())
    }

    #[test]
    fn a_request_is_sent_to_its_path_and_query_under_the_https_origin() {
        let response = answer("/cart/checkout?step=2", None);
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            response.headers()[LOCATION],
            "https://www.example.test/cart/checkout?step=2"
        );
        assert!(!response.headers().contains_key(CONNECTION));
        assert_eq!(
            answer("http://other.test/x", None).headers()[LOCATION],
            "https://www.example.test/x"
        );
        assert_eq!(
            answer("*", None).headers()[LOCATION],
            "https://www.example.test/"
        );
        assert_eq!(answer("/", Some("12")).headers()[CONNECTION], "close");
    }
}
