//! `table del|set|clear`: changes to a backend's stick table by hand.
//!
//! Answers never carry the cookie (they are logged, and a cookie is a credential): they name
//! the backend and the server. A delete is local: peers keep their entries (the peers protocol
//! has no delete message; `docs/PEERS.md`, "Deletes"), and the answer says so.

use std::sync::Arc;

use super::Operator;
use crate::{
    backend::BackendState,
    control::command::TableOperation,
    table::{now_ms, StickTable},
};

pub(super) fn apply(operator: &Operator, operation: TableOperation) -> Result<String, String> {
    match operation {
        TableOperation::Del { backend, cookie } => del(operator.backend(&backend)?, &cookie),
        TableOperation::Set {
            backend,
            cookie,
            server,
        } => set(operator.backend(&backend)?, &cookie, &server),
        TableOperation::Clear { backend, server } => {
            clear(operator.backend(&backend)?, server.as_deref())
        }
    }
}

fn del(backend: &BackendState, cookie: &str) -> Result<String, String> {
    let table = &backend.table;
    let server = table
        .delete(&table.key(cookie.as_bytes()), now_ms())
        .ok_or_else(|| format!("backend {} has no entry for that cookie", backend.name))?;
    Ok(format!(
        "deleted 1 entry of backend {} (server {server}){}",
        backend.name,
        peers_keep_theirs(table)
    ))
}

fn set(backend: &BackendState, cookie: &str, server: &str) -> Result<String, String> {
    let server = known_server(backend, server)?;
    let table = &backend.table;
    let was = match table.set(table.key(cookie.as_bytes()), Arc::clone(&server), now_ms()) {
        Some(before) => format!("was {before}"),
        None => "new entry".to_owned(),
    };
    let told = if table.replicated() {
        "; peers are told"
    } else {
        ""
    };
    Ok(format!(
        "set 1 entry of backend {} to server {server} ({was}){told}",
        backend.name
    ))
}

fn clear(backend: &BackendState, server: Option<&str>) -> Result<String, String> {
    let server = server.map(|name| known_server(backend, name)).transpose()?;
    let table = &backend.table;
    let cleared = table.clear(server.as_deref()).map_err(|error| {
        format!(
            "reading the stick table of backend {} failed: {error}",
            backend.name
        )
    })?;
    let whose = match &server {
        Some(server) => format!(" (server {server})"),
        None => String::new(),
    };
    let entries = if cleared.deleted == 1 {
        "entry"
    } else {
        "entries"
    };
    Ok(format!(
        "deleted {} {entries} of backend {}{whose}{}",
        cleared.deleted,
        backend.name,
        peers_keep_theirs(table)
    ))
}

/// The configured server named `name`, by the name entries use.
fn known_server(backend: &BackendState, name: &str) -> Result<Arc<str>, String> {
    match backend.server(name) {
        Some(server) => Ok(Arc::clone(&server.name)),
        None => {
            let known: Vec<Arc<str>> = backend
                .servers()
                .iter()
                .map(|s| Arc::clone(&s.name))
                .collect();
            Err(format!(
                "backend {} has no server {name:?} (servers: {})",
                backend.name,
                known.join(", ")
            ))
        }
    }
}

fn peers_keep_theirs(table: &StickTable) -> &'static str {
    if table.replicated() {
        "; peers keep their entries"
    } else {
        ""
    }
}
