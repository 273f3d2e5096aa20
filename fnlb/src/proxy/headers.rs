//! Header rules of the hyper path, on a `HeaderMap`: which headers cross the balancer and which
//! stop at it. The decisions are those of [`super::rules`], the table the fast path uses too.
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::rules::{self, Kind};

/// The header nodes use to report their queue wait to the balancer; never shown to clients.
pub(crate) static FXLB_WAIT: HeaderName = HeaderName::from_static("xxx-fxlb-wait");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn kind(name: &HeaderName) -> Kind {
    rules::kind(name.as_str().as_bytes())
}

/// Removes the fields `drops` says stop here, and those the `Connection` header names. Most
/// messages carry none of them, and one pass over the names finds that out.
fn strip(headers: &mut HeaderMap, drops: fn(Kind) -> bool) {
    if !headers.keys().any(|n| drops(kind(n))) {
        return;
    }
    // Collect first: the names borrow the map we remove from.
    let mut gone: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| rules::tokens(v.as_bytes()))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    gone.extend(headers.keys().filter(|n| drops(kind(n))).cloned());
    for name in gone {
        headers.remove(&name);
    }
}

/// Prepares a client's request headers for a node: hop-by-hop fields stop (`TE: trailers`
/// excepted), `X-Forwarded-For` gets the client appended, `Via` gets ours.
pub fn request(headers: &mut HeaderMap, client: IpAddr) {
    // `TE: trailers` is the one TE value a node may see: it says the client accepts trailers.
    let te_trailers = headers.contains_key(header::TE)
        && headers
            .get_all(header::TE)
            .iter()
            .any(|v| rules::tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"trailers")));
    strip(headers, rules::request_drops);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    append_forwarded_for(headers, client);
    headers.append(header::VIA, HeaderValue::from_static(rules::via()));
}

/// HTTP/2 may split `cookie` into several fields; an HTTP/1.1 node wants one line, the pieces
/// joined with `; ` (RFC 9113 §8.2.3).
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    let mut all = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (all.next(), all.next()) else { return };
    let mut v = first.as_bytes().to_vec();
    for c in headers.get_all(header::COOKIE).iter().skip(1) {
        v.extend_from_slice(b"; ");
        v.extend_from_slice(c.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&v) {
        headers.insert(header::COOKIE, v);
    }
}

/// Appends the client address to `X-Forwarded-For`, joining earlier values into one header.
fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let mut ip = IpText::default();
    let ip = ip.format(client);
    let mut prior = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    let value = if prior.peek().is_none() {
        HeaderValue::from_bytes(ip.as_bytes())
    } else {
        let mut v = Vec::with_capacity(64);
        for p in prior {
            v.extend_from_slice(p.as_bytes());
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(ip.as_bytes());
        HeaderValue::from_bytes(&v)
    };
    if let Ok(v) = value {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// An IP address written without `fmt` machinery on the common IPv4 path.
pub(crate) struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        IpText { buf: [0; 48], len: 0 }
    }
}

impl IpText {
    pub(crate) fn format(&mut self, ip: IpAddr) -> &str {
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b'.');
                    }
                    if octet >= 100 {
                        self.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        self.push(b'0' + octet / 10 % 10);
                    }
                    self.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut cur = std::io::Cursor::new(&mut self.buf[..]);
                let _ = write!(cur, "{v6}");
                self.len = cur.position() as usize;
            }
        }
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }
}

/// Prepares a node's response headers for the client; returns the node's reported wait header.
pub fn response(headers: &mut HeaderMap) -> Option<HeaderValue> {
    // A wait header the Connection header names is meant for no one: not a report.
    let named = headers.contains_key(header::CONNECTION)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| rules::tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(FXLB_WAIT.as_str().as_bytes())));
    let wait = if named { None } else { headers.get(&FXLB_WAIT).cloned() };
    strip(headers, rules::response_drops);
    wait
}

/// Trailer fields, either way: only those [`rules::trailer_passes`] (no framing, routing or
/// connection fields, no wait report).
pub(crate) fn trailers(headers: &mut HeaderMap) {
    if headers.keys().any(|n| !rules::trailer_passes(kind(n))) {
        let gone: Vec<HeaderName> = headers.keys().filter(|n| !rules::trailer_passes(kind(n))).cloned().collect();
        for name in gone {
            headers.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn request_drops_hop_by_hop_headers_and_those_connection_names() {
        let mut h = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic Zm9v"),
            ("te", "gzip"),
            ("expect", "100-continue"),
            ("host", "fn.example"),
            ("x-keep", "yes"),
        ]);
        request(&mut h, "127.0.0.1".parse().unwrap());
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "te",
            "expect",
        ] {
            assert!(!h.contains_key(gone), "{gone} was kept");
        }
        assert_eq!(h["host"], "fn.example");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn request_keeps_te_trailers() {
        let mut h = map(&[("te", "trailers, deflate")]);
        request(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = map(&[("x-forwarded-for", "10.9.9.9")]);
        request(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.9.9.9, 127.0.0.1");
        let mut h = HeaderMap::new();
        request(&mut h, "::1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "::1");
        let mut h = map(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2")]);
        request(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in
            ["0.0.0.0", "1.2.3.4", "10.99.100.255", "255.255.255.255", "::1", "fe80::1:2", "2001:db8::ff00:42:8329"]
        {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::default().format(ip), ip.to_string());
        }
    }

    #[test]
    fn response_drops_wait_and_hop_by_hop_headers() {
        let mut h = map(&[
            ("xxx-fxlb-wait", "1.5ms"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("content-type", "text/plain"),
        ]);
        let wait = response(&mut h);
        assert_eq!(wait.unwrap(), "1.5ms");
        assert!(!h.contains_key("xxx-fxlb-wait"));
        assert!(!h.contains_key("keep-alive"));
        assert_eq!(h["content-type"], "text/plain");
    }

    #[test]
    fn request_gets_our_via_after_the_clients() {
        let mut h = map(&[("via", "1.0 edge")]);
        request(&mut h, "127.0.0.1".parse().unwrap());
        let via: Vec<_> = h.get_all("via").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(via, ["1.0 edge", rules::via()]);
    }

    #[test]
    fn http2_cookie_fields_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
        let mut h = map(&[("cookie", "a=1")]);
        join_cookies(&mut h);
        assert_eq!(h["cookie"], "a=1");
    }

    #[test]
    fn trailers_keep_only_what_the_rules_pass() {
        let mut h = map(&[("xxx-fxlb-wait", "1ms"), ("x-sum", "1"), ("content-length", "3"), ("host", "h")]);
        trailers(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-sum"], "1");
    }

    #[test]
    fn a_wait_header_named_by_connection_is_no_report() {
        let mut h = map(&[("connection", "xxx-fxlb-wait"), ("xxx-fxlb-wait", "1ms")]);
        assert_eq!(response(&mut h), None);
        assert!(!h.contains_key("xxx-fxlb-wait"));
    }
}
