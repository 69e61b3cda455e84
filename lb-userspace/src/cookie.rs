//! Finding the stickiness cookie in request `Cookie` and response `Set-Cookie` headers.
//!
//! Like HAProxy's `req.cook()`, the last occurrence wins when a cookie appears more than once.
//! Values are returned without surrounding whitespace or double quotes; empty values count as
//! absent.

use hyper::header::{HeaderMap, COOKIE, SET_COOKIE};

/// The value of cookie `name` in the request headers, if any.
pub fn request_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    request_cookie_in(headers.get_all(COOKIE).iter().map(|v| v.as_bytes()), name)
}

/// [`request_cookie`] over the values of the `Cookie` headers, in order.
pub fn request_cookie_in<'h>(
    values: impl DoubleEndedIterator<Item = &'h [u8]>,
    name: &str,
) -> Option<&'h [u8]> {
    values
        .flat_map(|value| value.split(|&b| b == b';'))
        .filter_map(|pair| cookie_pair(pair, name))
        .next_back()
}

/// The value the response sets for cookie `name`, if any.
pub fn response_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    response_cookie_in(
        headers.get_all(SET_COOKIE).iter().map(|v| v.as_bytes()),
        name,
    )
}

/// [`response_cookie`] over the values of the `Set-Cookie` headers, in order.
pub fn response_cookie_in<'h>(
    values: impl DoubleEndedIterator<Item = &'h [u8]>,
    name: &str,
) -> Option<&'h [u8]> {
    values
        .filter_map(|value| {
            let first = value.split(|&b| b == b';').next()?;
            cookie_pair(first, name)
        })
        .next_back()
}

/// The value of `pair` (`name=value`) if its name is `name` and its value is not empty.
fn cookie_pair<'a>(pair: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    let (key, value) = (trim(&pair[..eq]), trim(&pair[eq + 1..]));
    if key != name.as_bytes() {
        return None;
    }
    let value = unquote(value);
    (!value.is_empty()).then_some(value)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_space = |b: &u8| b.is_ascii_whitespace();
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn unquote(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn headers(name: hyper::header::HeaderName, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(name.clone(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn req(values: &[&str]) -> Option<Vec<u8>> {
        request_cookie(&headers(COOKIE, values), "JSESSIONID").map(<[u8]>::to_vec)
    }

    #[test]
    fn finds_the_cookie_among_several_in_one_header() {
        assert_eq!(req(&["c1=1; c2=2; JSESSIONID=x"]), Some(b"x".to_vec()));
    }

    #[test]
    fn finds_the_cookie_in_any_of_several_headers() {
        assert_eq!(
            req(&["c1=1", "JSESSIONID=abc; c2=2", "c3=3"]),
            Some(b"abc".to_vec())
        );
    }

    /// HTTP/2 sends each cookie in a field of its own (RFC 9113 section 8.2.3): the stickiness
    /// cookie is found in whichever field carries it, the last field included.
    #[test]
    fn finds_the_cookie_in_http2_split_fields() {
        assert_eq!(
            req(&["theme=dark", "lang=en", "JSESSIONID=h2s"]),
            Some(b"h2s".to_vec())
        );
        assert_eq!(req(&["JSESSIONID=h2s", "lang=en"]), Some(b"h2s".to_vec()));
    }

    #[test]
    fn tolerates_odd_spacing_and_quotes() {
        assert_eq!(
            req(&["c1=1 ;   JSESSIONID =  \"q v\"  ;c2=2"]),
            Some(b"q v".to_vec())
        );
        assert_eq!(req(&[";;JSESSIONID=a;;"]), Some(b"a".to_vec()));
    }

    #[test]
    fn last_occurrence_wins_like_haproxy() {
        assert_eq!(
            req(&["JSESSIONID=first; JSESSIONID=second"]),
            Some(b"second".to_vec())
        );
    }

    #[test]
    fn similar_names_empty_values_and_absence_are_not_matches() {
        assert_eq!(req(&["XJSESSIONID=a; JSESSIONIDX=b; jsessionid=c"]), None);
        assert_eq!(req(&["JSESSIONID="]), None);
        assert_eq!(req(&["JSESSIONID=\"\""]), None);
        assert_eq!(req(&["JSESSIONID"]), None);
        assert_eq!(req(&[]), None);
    }

    #[test]
    fn value_may_contain_equals_signs() {
        assert_eq!(req(&["JSESSIONID=a=b=="]), Some(b"a=b==".to_vec()));
    }

    #[test]
    fn reads_the_value_a_response_sets() {
        let h = headers(
            SET_COOKIE,
            &[
                "other=1; Path=/",
                "JSESSIONID=srv42; Path=/; HttpOnly",
                "x=JSESSIONID=no",
            ],
        );
        assert_eq!(response_cookie(&h, "JSESSIONID"), Some(&b"srv42"[..]));
        let none = headers(SET_COOKIE, &["a=1; JSESSIONID=notthecookie"]);
        assert_eq!(response_cookie(&none, "JSESSIONID"), None);
    }
}
