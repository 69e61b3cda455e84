//! The operator's requests on the control socket, as words on one line: what `stickylb server`
//! and `stickylb table` send and the daemon parses. Both sides use these types, so a request
//! the command line can write is one the daemon reads.
//!
//! Words are separated by single spaces. Names and cookie values cannot contain whitespace or
//! control characters (a cookie value cannot by RFC 6265, and names are checked by the
//! configuration), so no quoting is needed; [`word`] refuses anything else before it is sent.

use std::fmt;

/// A request that changes what the running daemon does, answered by its operator handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `server BACKEND/SERVER ready|drain|maint` or `server BACKEND/SERVER weight N`.
    Server {
        backend: String,
        server: String,
        action: ServerAction,
    },
    /// `table del|set|clear ...`.
    Table(TableOperation),
}

/// What to do to one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerAction {
    Ready,
    Drain,
    Maint,
    /// 0..=256.
    Weight(u16),
}

/// A change to a backend's stick table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableOperation {
    /// `table del BACKEND COOKIE`: forget one session.
    Del { backend: String, cookie: String },
    /// `table set BACKEND COOKIE SERVER`: stick one session to a server.
    Set {
        backend: String,
        cookie: String,
        server: String,
    },
    /// `table clear BACKEND [SERVER]`: forget every session (of one server).
    Clear {
        backend: String,
        server: Option<String>,
    },
}

pub use crate::config::MAX_WEIGHT;

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server {
                backend,
                server,
                action,
            } => {
                write!(f, "server {backend}/{server} ")?;
                match action {
                    ServerAction::Ready => f.write_str("ready"),
                    ServerAction::Drain => f.write_str("drain"),
                    ServerAction::Maint => f.write_str("maint"),
                    ServerAction::Weight(n) => write!(f, "weight {n}"),
                }
            }
            Self::Table(TableOperation::Del { backend, cookie }) => {
                write!(f, "table del {backend} {cookie}")
            }
            Self::Table(TableOperation::Set {
                backend,
                cookie,
                server,
            }) => write!(f, "table set {backend} {cookie} {server}"),
            Self::Table(TableOperation::Clear { backend, server }) => {
                write!(f, "table clear {backend}")?;
                match server {
                    Some(server) => write!(f, " {server}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl Operation {
    /// Parses a request line; `Ok(None)` when it is not an operation (another request).
    pub fn parse(line: &str) -> Result<Option<Self>, String> {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["server", target, rest @ ..] => {
                let (backend, server) = split_target(target)?;
                let action = match rest {
                    ["ready"] => ServerAction::Ready,
                    ["drain"] => ServerAction::Drain,
                    ["maint"] => ServerAction::Maint,
                    ["weight", n] => ServerAction::Weight(parse_weight(n)?),
                    _ => {
                        return Err(
                            "usage: server BACKEND/SERVER ready|drain|maint|weight N".to_owned()
                        )
                    }
                };
                Ok(Some(Self::Server {
                    backend,
                    server,
                    action,
                }))
            }
            ["table", "del", backend, cookie] => Ok(Some(Self::Table(TableOperation::Del {
                backend: word(backend)?,
                cookie: word(cookie)?,
            }))),
            ["table", "set", backend, cookie, server] => {
                Ok(Some(Self::Table(TableOperation::Set {
                    backend: word(backend)?,
                    cookie: word(cookie)?,
                    server: word(server)?,
                })))
            }
            ["table", "clear", backend] => Ok(Some(Self::Table(TableOperation::Clear {
                backend: word(backend)?,
                server: None,
            }))),
            ["table", "clear", backend, server] => Ok(Some(Self::Table(TableOperation::Clear {
                backend: word(backend)?,
                server: Some(word(server)?),
            }))),
            ["table", ..] => Err(
                "usage: table del BACKEND COOKIE | table set BACKEND COOKIE SERVER | \
                 table clear BACKEND [SERVER]"
                    .to_owned(),
            ),
            _ => Ok(None),
        }
    }
}

/// `BACKEND/SERVER`.
pub fn split_target(target: &str) -> Result<(String, String), String> {
    match target.split_once('/') {
        Some((backend, server)) if !backend.is_empty() && !server.is_empty() => {
            Ok((word(backend)?, word(server)?))
        }
        _ => Err(format!("{target:?} is not BACKEND/SERVER")),
    }
}

/// A weight, 0..=[`MAX_WEIGHT`].
pub fn parse_weight(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|n| *n <= MAX_WEIGHT)
        .ok_or_else(|| format!("weight {text:?} is not a whole number from 0 to {MAX_WEIGHT}"))
}

/// One word of a request: not empty, no whitespace or control characters.
pub fn word(text: &str) -> Result<String, String> {
    if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{text:?} cannot be sent: it is empty or holds whitespace or control characters"
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_reads_back_as_written() {
        let operations = [
            Operation::Server {
                backend: "web".into(),
                server: "be1".into(),
                action: ServerAction::Drain,
            },
            Operation::Server {
                backend: "web".into(),
                server: "be1".into(),
                action: ServerAction::Weight(256),
            },
            Operation::Table(TableOperation::Del {
                backend: "web".into(),
                cookie: "ABC".into(),
            }),
            Operation::Table(TableOperation::Set {
                backend: "web".into(),
                cookie: "ABC".into(),
                server: "be2".into(),
            }),
            Operation::Table(TableOperation::Clear {
                backend: "web".into(),
                server: Some("be2".into()),
            }),
            Operation::Table(TableOperation::Clear {
                backend: "web".into(),
                server: None,
            }),
        ];
        for operation in operations {
            let line = operation.to_string();
            assert_eq!(Operation::parse(&line), Ok(Some(operation)), "{line}");
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert!(Operation::parse("server web ready").is_err());
        assert!(Operation::parse("server web/be1 weight 257").is_err());
        assert!(Operation::parse("server web/be1 weight -1").is_err());
        assert!(Operation::parse("server web/be1 pause").is_err());
        assert!(Operation::parse("table del web").is_err());
        assert!(Operation::parse("table del web  x").is_err());
        assert_eq!(Operation::parse("status"), Ok(None));
        assert!(word("a\tb").is_err());
    }
}
