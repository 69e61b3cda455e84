//! A frontend's `redirect_http_to` (cleartext frontends) and `hsts` (TLS frontends).

use std::time::Duration;

use hyper::Uri;

use super::Checker;
use crate::config::raw::RawFrontend;

impl Checker<'_> {
    /// `redirect_http_to` of frontend `key`: an `https://` origin with an optional path
    /// prefix, kept without its trailing `/` (the request's path is appended to it).
    pub(super) fn redirect_http_to(
        &mut self,
        key: &str,
        raw: &RawFrontend,
    ) -> Option<Option<String>> {
        let Some(target) = &raw.redirect_http_to else {
            return Some(None);
        };
        let field = format!("{key}.redirect_http_to");
        if raw.tls.is_some() {
            let msg = "is for a cleartext frontend; this one has tls (add a cleartext frontend \
                       that redirects to it)";
            self.report(Some(target.span()), &field, msg);
            return None;
        }
        match check_redirect(target.get_ref()) {
            Ok(base) => Some(Some(base)),
            Err(msg) => {
                self.report(Some(target.span()), &field, msg);
                None
            }
        }
    }

    /// `hsts` of frontend `key`: the `max-age` (0 tells browsers to forget it).
    pub(super) fn hsts(&mut self, key: &str, raw: &RawFrontend) -> Option<Option<Duration>> {
        let Some(value) = &raw.hsts else {
            return Some(None);
        };
        let field = format!("{key}.hsts");
        if raw.tls.is_none() {
            let msg = "browsers ignore Strict-Transport-Security over cleartext; set it on \
                       the TLS frontend";
            self.report(Some(value.span()), &field, msg);
            return None;
        }
        self.duration(Some(value), &field, Duration::ZERO, Duration::ZERO)
            .map(Some)
    }
}

/// An `https://` URL with a host, no query or fragment, no user info; its trailing `/`s
/// removed.
fn check_redirect(target: &str) -> Result<String, String> {
    const FORM: &str = "must be https://HOST[:PORT][/PATH], e.g. \"https://www.example.com\"";
    let uri: Uri = target
        .parse()
        .map_err(|error| format!("{error}: {target:?} {FORM}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{target:?} is not an https:// URL; {FORM}"));
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{target:?} has no host; {FORM}"));
    };
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(format!("{target:?} needs a host and no user; {FORM}"));
    }
    if uri.query().is_some() || target.contains('#') {
        return Err(format!("{target:?} has a query or fragment; {FORM}"));
    }
    Ok(target.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::check_redirect;

    #[test]
    fn a_redirect_target_is_an_https_origin_with_an_optional_prefix() {
        for (target, base) in [
            ("https://www.example.com", "https://www.example.com"),
            ("https://www.example.com/", "https://www.example.com"),
            (
                "https://example.com:8443/app/",
                "https://example.com:8443/app",
            ),
            ("https://10.0.0.1", "https://10.0.0.1"),
        ] {
            assert_eq!(check_redirect(target).as_deref(), Ok(base), "{target}");
        }
        for bad in [
            "http://www.example.com",
            "www.example.com",
            "https://",
            "https://u:p@example.com",
            "https://example.com/?a=1",
            "https://example.com/#top",
            "",
            "https://exa mple.com",
        ] {
            assert!(check_redirect(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
