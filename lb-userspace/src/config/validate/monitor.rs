//! `[monitor]`: where it listens, and the credentials of `auth`, whose password file is read
//! here, so that a missing or empty one stops a start or a reload like any other problem.

use std::{io, net::SocketAddr, path::PathBuf};

use super::{Checker, Seen};
use crate::config::{
    raw::{RawMonitor, RawMonitorAuth},
    Monitor, MonitorAuth, Password,
};

impl Checker<'_> {
    pub(super) fn monitor(
        &mut self,
        raw: &RawMonitor,
        binds: &mut Seen<SocketAddr>,
    ) -> Option<Monitor> {
        let bind = self
            .required(&raw.bind, None, "monitor", "bind")
            .and_then(|bind| Some((bind, self.addr(bind, "monitor.bind")?)))
            .map(|(bind, addr)| {
                self.unique(binds, addr, bind, "monitor.bind", "monitor");
                addr
            });
        let auth = match &raw.auth {
            None => Some(None),
            Some(auth) => self.monitor_auth(auth).map(Some),
        };
        Some(Monitor {
            bind: bind?,
            auth: auth?,
        })
    }

    fn monitor_auth(&mut self, raw: &RawMonitorAuth) -> Option<MonitorAuth> {
        const KEY: &str = "monitor.auth";
        // An inline table has no span here (see `raw`): a missing key is reported on the line
        // of the other one.
        let line_of = |other: &Option<toml::Spanned<String>>| other.as_ref().map(|o| o.span());
        let user = self
            .required(&raw.user, line_of(&raw.password_file).as_ref(), KEY, "user")
            .and_then(|user| self.text(user, "monitor.auth.user", check_user));
        let file = self
            .required(
                &raw.password_file,
                line_of(&raw.user).as_ref(),
                KEY,
                "password_file",
            )
            .and_then(|file| {
                let path = PathBuf::from(file.get_ref());
                match read_password(&path) {
                    Ok(password) => Some((path, password)),
                    Err(msg) => {
                        self.report(Some(file.span()), "monitor.auth.password_file", msg);
                        None
                    }
                }
            });
        let (password_file, password) = file?;
        Some(MonitorAuth {
            user: user?,
            password_file,
            password,
        })
    }
}

/// RFC 7617: the user id cannot contain a colon, and neither may hold control characters.
fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() {
        Err("must not be empty".to_owned())
    } else if user.contains(':') {
        Err(format!(
            "{user:?} contains ':', which HTTP basic authentication cannot carry in a user"
        ))
    } else if user.chars().any(char::is_control) {
        Err(format!("{user:?} contains a control character"))
    } else {
        Ok(())
    }
}

/// The first line of `path` (an absolute path), without its line ending; not empty.
fn read_password(path: &std::path::Path) -> Result<Password, String> {
    if !path.is_absolute() {
        return Err(format!("{} must be an absolute path", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|error| match error.kind() {
        io::ErrorKind::InvalidData => format!("{} is not UTF-8 text", path.display()),
        _ => format!("cannot read {}: {error}", path.display()),
    })?;
    match text.lines().next() {
        Some(password) if !password.is_empty() => {
            if password.chars().any(char::is_control) {
                return Err(format!(
                    "the password in {} contains a control character",
                    path.display()
                ));
            }
            Ok(Password::new(password.to_owned()))
        }
        _ => Err(format!(
            "the first line of {} is empty; it must hold the password",
            path.display()
        )),
    }
}
