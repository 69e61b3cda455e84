//! `server BACKEND/SERVER ready|drain|maint|weight N`.

use crate::{backend::BackendState, control::command::ServerAction};

pub(super) fn apply(
    backend: &BackendState,
    server: &str,
    action: ServerAction,
) -> Result<String, String> {
    let _ = (backend, server, action);
    Err("server states are not implemented yet".to_owned())
}
