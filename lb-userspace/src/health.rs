//! Active health checks: `HEAD <path>` on every server at the backend's interval. A server goes
//! down after `fall` consecutive failures and up again after `rise` consecutive successes
//! (HAProxy's `option httpchk` semantics: any 2xx or 3xx status is a success). A server
//! reached over TLS is checked over TLS, verified as its requests are (a certificate that
//! does not verify is a failed check, with the reason).

use std::{sync::Arc, time::Instant};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinHandle,
    time::{timeout, MissedTickBehavior},
};

use crate::{
    backend::{BackendState, ServerState},
    config::HealthCheck,
};

/// The checker tasks of one backend; dropping this stops them.
pub struct Checks(Vec<JoinHandle<()>>);

impl Checks {
    /// Starts checking `backend`'s current servers with its current settings; a reload that
    /// changes either starts a new `Checks` in place of this one.
    pub fn start(backend: &Arc<BackendState>) -> Checks {
        Checks(spawn_checks(backend))
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

/// Starts one checker task per server of `backend`. Abort the handles to stop them.
pub fn spawn_checks(backend: &Arc<BackendState>) -> Vec<JoinHandle<()>> {
    let hc = backend.health_check();
    if !hc.enabled {
        return Vec::new();
    }
    backend
        .servers()
        .iter()
        .map(|server| {
            tokio::spawn(check_forever(
                Arc::clone(backend),
                Arc::clone(server),
                Arc::clone(&hc),
            ))
        })
        .collect()
}

/// Checks `server` with the settings `hc` it was started with (see [`Checks::start`]).
async fn check_forever(backend: Arc<BackendState>, server: Arc<ServerState>, hc: Arc<HealthCheck>) {
    let mut ticker = tokio::time::interval(hc.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let outcome = match timeout(hc.timeout, probe(&server, &hc.path)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("timeout after {} ms", hc.timeout.as_millis())),
        };
        record(
            &backend,
            &server,
            &hc,
            outcome,
            started.elapsed().as_millis(),
        );
    }
}

fn record(
    backend: &BackendState,
    server: &ServerState,
    hc: &HealthCheck,
    outcome: Result<u16, String>,
    elapsed_ms: u128,
) {
    let mut transition = None;
    server.update_check(|status| match &outcome {
        Ok(code) if (200..400).contains(code) => {
            status.last_result = format!("L7OK {code} in {elapsed_ms} ms");
            status.consecutive_ok = status.consecutive_ok.saturating_add(1);
            status.consecutive_failed = 0;
            if !server.is_up() && status.consecutive_ok >= hc.rise.get() {
                transition = Some(true);
            }
        }
        failed => {
            status.last_result = match failed {
                Ok(code) => format!("L7STS {code} in {elapsed_ms} ms"),
                Err(reason) => format!("L4/L7 failed: {reason}"),
            };
            status.consecutive_failed = status.consecutive_failed.saturating_add(1);
            status.consecutive_ok = 0;
            if server.is_up() && status.consecutive_failed >= hc.fall.get() {
                transition = Some(false);
            }
        }
    });
    let Some(up) = transition else { return };
    if server.set_up(up) {
        let live = backend.servers().iter().filter(|s| s.is_up()).count();
        let result = server.check_status().last_result;
        if up {
            tracing::info!(backend = %backend.name, server = %server.name, %result, live, "server is UP");
        } else {
            tracing::warn!(backend = %backend.name, server = %server.name, %result, live, "server is DOWN");
        }
    }
}

/// One check: the response's status code, or why there was none.
async fn probe(server: &ServerState, path: &str) -> Result<u16, String> {
    let stream = TcpStream::connect(server.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(tls) = &server.tls else {
        return exchange(stream, server, path).await;
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.client));
    let stream = connector
        .connect(tls.name.clone(), stream)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    exchange(stream, server, path).await
}

/// The `Host` a check names: a TLS server's `sni` (the name it serves and is verified by; its
/// port only when not 443), else the server's address.
fn host(server: &ServerState) -> String {
    match server.tls.as_ref().and_then(|tls| tls.sni.as_deref()) {
        Some(name) if server.addr.port() == 443 => name.to_owned(),
        Some(name) => format!("{name}:{}", server.addr.port()),
        None => server.addr.to_string(),
    }
}

/// `HEAD path` on a connection to `server`, and the status code of the answer.
async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    server: &ServerState,
    path: &str,
) -> Result<u16, String> {
    let request = format!(
        "HEAD {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: stickylb-check\r\nConnection: close\r\n\r\n",
        host(server)
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream
            .read(&mut head[len..])
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err("connection closed before a status line".into());
        }
        len += n;
    }
    status_code(&head[..len]).ok_or_else(|| "malformed status line".into())
}

/// The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
fn status_code(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let digits = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 20"), None);
        assert_eq!(status_code(b"SSH-2.0-OpenSSH_9"), None);
        assert_eq!(status_code(b"HTTP/1.1 2x0 OK"), None);
    }

    /// A TLS server's check names the host it serves (its `sni`), as a client would.
    #[test]
    fn a_check_names_the_sni_host_of_a_tls_server() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let made = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        std::fs::write(&ca, made.cert.pem()).unwrap();
        let ca = ca.display();
        let config = crate::config::Config::from_toml(&format!(
            "[instance]\nname = \"lb\"\n\n[[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:1\"\nbackend = \"web\"\n\n\
             [[backend]]\nname = \"web\"\nservers = [\n\
               {{ name = \"a\", addr = \"10.0.0.2:443\", tls = true, sni = \"a.internal\", ca = \"{ca}\" }},\n\
               {{ name = \"b\", addr = \"10.0.0.3:8443\", tls = true, sni = \"b.internal\", ca = \"{ca}\" }},\n\
               {{ name = \"c\", addr = \"10.0.0.4:8443\", tls = true, ca = \"{ca}\" }},\n\
               {{ name = \"d\", addr = \"10.0.0.5:80\" }},\n]\n"
        ))
        .unwrap();
        let backend = BackendState::in_memory(&config.backends[0], crate::table::memory::store(16));
        let hosts: Vec<String> = backend.servers().iter().map(|s| host(s)).collect();
        assert_eq!(
            hosts,
            [
                "a.internal",
                "b.internal:8443",
                "10.0.0.4:8443",
                "10.0.0.5:80"
            ]
        );
    }
}
