//! The monitor: `/monitor` (HTML status page), `/metrics` (Prometheus text) and `/api/table`
//! (JSON), served on `[monitor].bind`.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::daemon::Shared;

/// Serves the monitor endpoints on `listener` forever.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(route(&shared, request.uri().path())) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn route(shared: &Shared, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/api/table" => {
            let tables: Vec<_> = shared
                .backends
                .iter()
                .map(|b| serde_json::json!({ "backend": b.name, "entries": b.table.snapshot() }))
                .collect();
            let body = serde_json::to_vec_pretty(&tables).unwrap_or_default();
            response(StatusCode::OK, "application/json", body)
        }
        _ => response(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    }
}

fn response(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}
