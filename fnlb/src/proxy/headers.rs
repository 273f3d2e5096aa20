//! Header rules of the data path: which headers cross the balancer and which stop at it.
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The header nodes use to report their queue wait to the balancer; never shown to clients.
pub static FXLB_WAIT: HeaderName = HeaderName::from_static("xxx-fxlb-wait");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Whether a header names one hop rather than the message (RFC 9110 §7.6.1, plus the legacy
/// `Proxy-Connection`). Standard names compare as enum tags: no hashing.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TE
        || name == header::PROXY_AUTHORIZATION
        || name == header::EXPECT
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Removes the headers that describe one hop, not the message: those the `Connection` header
/// names, and the fixed list. Most messages carry none of them, and one pass over the names
/// finds that out without a hash lookup per listed header.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // Collect first: the names borrow the map we remove from.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(&name);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
}

/// Prepares a client's request headers for a node.
pub fn request(headers: &mut HeaderMap, client: IpAddr) {
    if headers.keys().any(is_hop_by_hop) {
        // `TE: trailers` is the one TE value a node may see: it says the client accepts trailers.
        let te_trailers = headers.get_all(header::TE).iter().any(|v| {
            v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))).unwrap_or(false)
        });
        strip_hop_by_hop(headers);
        headers.remove(header::TE);
        headers.remove(header::PROXY_AUTHORIZATION);
        // 100-continue is answered by this balancer when it starts reading the body.
        headers.remove(header::EXPECT);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    append_forwarded_for(headers, client);
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
    strip_hop_by_hop(headers);
    headers.remove(&FXLB_WAIT)
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
}
