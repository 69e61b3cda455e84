//! The field-level checks [`Checker`] applies: required keys, uniqueness, names, addresses,
//! integers and durations, each reporting a [`Problem`] with its key and line.

use std::{
    fmt,
    net::SocketAddr,
    ops::{Range, RangeInclusive},
    time::Duration,
};

use toml::Spanned;

use super::{Checker, Problem, Seen, MS, NAME_CHARSET};
use crate::config::{
    parse_duration,
    raw::{line_of, RawDuration},
};

impl Checker<'_> {
    pub(super) fn report(
        &mut self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) {
        let line = span.map(|span| self.line(&span));
        self.problems.push(Problem {
            line,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(super) fn line(&self, span: &Range<usize>) -> usize {
        line_of(self.text, span.start)
    }

    /// `value`, or a "missing" problem on the line of the `table` at `key` that lacks `field`.
    pub(super) fn required<'v, T>(
        &mut self,
        value: &'v Option<Spanned<T>>,
        table: Option<&Range<usize>>,
        key: &str,
        field: &str,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() {
            self.report(
                table.cloned(),
                &format!("{key}.{field}"),
                "missing required key",
            );
        }
        value.as_ref()
    }

    /// Records `value` at `at` in `seen`, reporting it if it was already there.
    pub(super) fn unique<K: std::hash::Hash + Eq + fmt::Debug, T>(
        &mut self,
        seen: &mut Seen<K>,
        value: K,
        at: &Spanned<T>,
        key: &str,
        what: &str,
    ) {
        let line = self.line(&at.span());
        match seen.get(&value) {
            Some((first, first_line)) => {
                let msg = format!("{value:?} is already used by {first} (line {first_line})");
                self.report(Some(at.span()), key, msg);
            }
            None => {
                seen.insert(value, (what.to_owned(), line));
            }
        }
    }

    pub(super) fn name(
        &mut self,
        value: &Spanned<String>,
        key: &str,
        max: usize,
    ) -> Option<String> {
        self.text(value, key, |name| check_name(name, max))
    }

    /// `value` if `check` accepts it, else `None` and a problem with `check`'s message.
    pub(super) fn text(
        &mut self,
        value: &Spanned<String>,
        key: &str,
        check: impl FnOnce(&str) -> Result<(), String>,
    ) -> Option<String> {
        match check(value.get_ref()) {
            Ok(()) => Some(value.get_ref().clone()),
            Err(msg) => {
                self.report(Some(value.span()), key, msg);
                None
            }
        }
    }

    pub(super) fn addr(&mut self, value: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        let text = value.get_ref();
        let addr = text.parse().ok();
        if addr.is_none() {
            let msg = format!(
                "invalid socket address {text:?} (expected IP:port; names are not resolved)"
            );
            self.report(Some(value.span()), key, msg);
        }
        addr
    }

    pub(super) fn integer(
        &mut self,
        value: Option<&Spanned<i64>>,
        key: &str,
        default: i64,
        range: RangeInclusive<i64>,
    ) -> Option<i64> {
        let Some(value) = value else {
            return Some(default);
        };
        let n = *value.get_ref();
        if range.contains(&n) {
            return Some(n);
        }
        let (min, max) = range.into_inner();
        self.report(
            Some(value.span()),
            key,
            format!("{n} is out of range {min}..={max}"),
        );
        None
    }

    pub(super) fn duration(
        &mut self,
        value: Option<&Spanned<RawDuration>>,
        key: &str,
        default: Duration,
        min: Duration,
    ) -> Option<Duration> {
        let Some(value) = value else {
            return Some(default);
        };
        let parsed = match value.get_ref() {
            RawDuration::Text(text) => parse_duration(text).map_err(|e| e.to_string()),
            RawDuration::Millis(n) => u64::try_from(*n)
                .map(Duration::from_millis)
                .map_err(|_| format!("negative duration {n}")),
        };
        let msg = match parsed {
            Ok(d) if d >= min => return Some(d),
            Ok(_) if min == MS => "must be more than 0".to_owned(),
            Ok(d) => format!("{d:?} is too short: must be at least {min:?}"),
            Err(msg) => msg,
        };
        self.report(Some(value.span()), key, msg);
        None
    }
}

/// Names: non-empty, at most `max` bytes, from [`NAME_CHARSET`].
pub(super) fn check_name(name: &str, max: usize) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() {
        Err("must not be empty".to_owned())
    } else if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
        Err(format!(
            "{name:?} contains {bad:?}; names may only use {NAME_CHARSET}"
        ))
    } else if name.len() > max {
        Err(format!(
            "{name:?} is {} bytes long, more than {max}",
            name.len()
        ))
    } else {
        Ok(())
    }
}

/// RFC 6265 `cookie-name`, that is an RFC 2616 `token`: visible ASCII except separators.
pub(super) fn check_cookie_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
    match name.chars().find(|&c| !allowed(c)) {
        _ if name.is_empty() => Err("must not be empty".to_owned()),
        Some(bad) => Err(format!(
            "{name:?} is not a cookie name: {bad:?} is not allowed"
        )),
        None => Ok(()),
    }
}

/// A health check request target: absolute path, nothing that needs escaping on the wire.
pub(super) fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        Err(format!("{path:?} must start with '/'"))
    } else if !path.chars().all(|c| c.is_ascii_graphic()) {
        Err(format!(
            "{path:?} must be printable ASCII without spaces (percent-encode the rest)"
        ))
    } else {
        Ok(())
    }
}
