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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Config,
        control::command::Operation,
        table::{self, Store},
    };

    const COOKIE: &str = "SecretSessionValue";

    /// An operator over backend `web` with servers `s1` and `s2`, its table on `store`.
    fn operator(store: Store) -> Operator {
        let config = Config::from_toml(
            "[instance]\nname = \"lb\"\n\n[[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:1\"\n\
             backend = \"web\"\n\n[[backend]]\nname = \"web\"\nhealth_check = { enabled = false }\n\
             servers = [ { name = \"s1\", addr = \"127.0.0.1:2\" }, { name = \"s2\", addr = \"127.0.0.1:3\" } ]\n",
        )
        .unwrap();
        Operator::new(vec![Arc::new(BackendState::in_memory(
            &config.backends[0],
            store,
        ))])
    }

    fn run(operator: &Operator, line: &str) -> Result<String, String> {
        let answer = operator.apply(Operation::parse(line).unwrap().unwrap());
        let text = answer.as_ref().unwrap_or_else(|why| why);
        assert!(
            !text.contains(COOKIE),
            "an answer showed the cookie: {text}"
        );
        answer
    }

    #[test]
    fn answers_name_backend_and_server_and_never_the_cookie() {
        let operator = operator(table::memory::store(16));
        assert_eq!(
            run(&operator, &format!("table set web {COOKIE} s2")),
            Ok("set 1 entry of backend web to server s2 (new entry); peers are told".into())
        );
        assert_eq!(
            run(&operator, &format!("table set web {COOKIE} s1")),
            Ok("set 1 entry of backend web to server s1 (was s2); peers are told".into())
        );
        assert_eq!(
            run(&operator, &format!("table del web {COOKIE}")),
            Ok("deleted 1 entry of backend web (server s1); peers keep their entries".into())
        );
        assert_eq!(
            run(&operator, &format!("table del web {COOKIE}")),
            Err("backend web has no entry for that cookie".into())
        );
        run(&operator, "table set web a s1").unwrap();
        run(&operator, "table set web b s2").unwrap();
        run(&operator, "table set web c s2").unwrap();
        assert_eq!(
            run(&operator, "table clear web s2"),
            Ok("deleted 2 entries of backend web (server s2); peers keep their entries".into())
        );
        assert_eq!(
            run(&operator, "table clear web"),
            Ok("deleted 1 entry of backend web; peers keep their entries".into())
        );
    }

    #[test]
    fn unknown_backends_and_servers_are_refused_and_change_nothing() {
        let operator = operator(table::memory::store(16));
        let refused = run(&operator, &format!("table set web {COOKIE} s9")).unwrap_err();
        assert_eq!(
            refused,
            "backend web has no server \"s9\" (servers: s1, s2)"
        );
        assert!(run(&operator, "table clear web s9").is_err());
        let refused = run(&operator, &format!("table del nope {COOKIE}")).unwrap_err();
        assert!(refused.starts_with("no backend \"nope\""), "{refused}");
        assert!(operator.backends[0].table.is_empty());
    }

    #[test]
    fn without_peers_answers_say_nothing_of_them() {
        let storage = Arc::new(table::memory::MemoryStorage::new(16));
        let operator = operator(Store::new(storage, false));
        assert_eq!(
            run(&operator, &format!("table set web {COOKIE} s1")),
            Ok("set 1 entry of backend web to server s1 (new entry)".into())
        );
        assert_eq!(
            run(&operator, &format!("table del web {COOKIE}")),
            Ok("deleted 1 entry of backend web (server s1)".into())
        );
    }
}
