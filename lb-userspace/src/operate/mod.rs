//! What an operator changes in a running daemon through the control socket: a server's admin
//! state and weight ([`server`]), and stick table entries ([`table`]). Each answer is one line
//! that says what changed, without a session cookie in it (it is logged).

mod server;
mod table;

use std::sync::Arc;

use crate::{backend::BackendState, control::command::Operation};

/// Carries out [`Operation`]s on the daemon's backends (the set a reload never changes).
pub struct Operator {
    backends: Vec<Arc<BackendState>>,
}

impl Operator {
    pub fn new(backends: Vec<Arc<BackendState>>) -> Self {
        Self { backends }
    }

    /// Carries out `operation`: what changed, or why not.
    pub fn apply(&self, operation: Operation) -> Result<String, String> {
        match operation {
            Operation::Server {
                backend,
                server,
                action,
            } => server::apply(self.backend(&backend)?, &server, action),
            Operation::Table(operation) => table::apply(self, operation),
        }
    }

    fn backend(&self, name: &str) -> Result<&Arc<BackendState>, String> {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.backends.iter().map(|b| b.name.as_str()).collect();
                format!("no backend {name:?} (backends: {})", known.join(", "))
            })
    }
}
