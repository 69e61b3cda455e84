//! What routes where, built from a configuration: a [`BackendState`] per backend (its stick
//! table in the shared [`Store`]) and a [`Frontend`] per frontend, pointing at its backend's.
//!
//! The daemon builds this set once at start; a reload reconfigures the backends in it and
//! never changes the set (adding or removing a frontend or a backend needs an upgrade). Unit
//! tests build it without sockets or the kernel.

use std::sync::Arc;

use crate::{
    backend::{BackendState, SharedSettings},
    config::Config,
    proxy::{Certificates, Frontend},
    table::Store,
};

/// The backends' runtime state (their tables in `store`, their servers' operator settings in
/// `settings`) and the frontends that route to them. Validation guarantees every frontend names a configured backend.
pub fn build(
    config: &Config,
    store: &Store,
    settings: &SharedSettings,
) -> (Vec<Arc<BackendState>>, Vec<Arc<Frontend>>) {
    let backends: Vec<Arc<BackendState>> = config
        .backends
        .iter()
        .map(|b| Arc::new(BackendState::new(b, store.clone(), Arc::clone(settings))))
        .collect();
    let frontends = config
        .frontends
        .iter()
        .filter_map(|f| {
            let backend = backends.iter().find(|b| b.name == f.backend)?;
            let mut frontend = Frontend::new(f.name.clone(), Arc::clone(backend));
            frontend.fastpath_interfaces = f.fastpath_interfaces.clone();
            frontend.tls = f.tls.as_ref().map(|tls| Arc::new(Certificates::new(tls)));
            frontend.hsts = f.hsts.and_then(hsts_value);
            frontend.redirect = f.redirect_http_to.as_deref().map(Arc::from);
            Some(Arc::new(frontend))
        })
        .collect();
    (backends, frontends)
}

/// `Strict-Transport-Security` for a `max-age` (a whole number of seconds: always a valid
/// header value).
fn hsts_value(max_age: std::time::Duration) -> Option<hyper::header::HeaderValue> {
    format!("max-age={}", max_age.as_secs()).parse().ok()
}
