//! The HTTP rules of the data path, once for both transports: which header fields cross the
//! balancer in which direction, which requests are refused before any node sees them, and which
//! node answers are not HTTP a client should get. Pure functions over names, values and status
//! codes; the hyper path ([`super::headers`], on a `HeaderMap`) and the fast path
//! ([`super::h1`], on bytes) both call them, so the two cannot drift apart.
//!
//! Where RFC 9112 lets a recipient choose, the choice here is the strict one: a request the fast
//! path would have to guess about is handed to the hyper path, which refuses it with the status
//! and message below.
use std::sync::OnceLock;

use http::{header, HeaderMap, Method, StatusCode};

/// What a header field name means to the balancer (case-insensitive). One table: the fast path
/// reads it on raw names, the hyper path on `HeaderName`s (lowercase already).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Any other field: passed on unchanged.
    Other,
    Host,
    /// Framing: the balancer re-frames every message it forwards.
    ContentLength,
    TransferEncoding,
    /// Hop-by-hop (RFC 9110 §7.6.1), plus the legacy `Keep-Alive` and `Proxy-Connection`.
    Connection,
    Upgrade,
    /// `100-continue` is answered by the balancer when it starts reading the body.
    Expect,
    /// Only `TE: trailers` reaches a node.
    Te,
    KeepAlive,
    ProxyConnection,
    /// Credentials for this hop's proxy, i.e. the balancer: never forwarded.
    ProxyAuthorization,
    ForwardedFor,
    /// A trace context header (`b3`, `X-B3-*`, `traceparent`), replaced when the call is traced.
    Trace,
    /// The node's queue wait (`XXX-FXLB-WAIT`), never shown to clients.
    FxlbWait,
    /// `Via` (RFC 9110 §7.6.3): passed on, with ours added; ours coming back in is a loop.
    Via,
    /// `Trailer`: which trailer fields follow.
    Trailer,
}

/// The [`Kind`] of a header field name, a token (RFC 9110 §5.6.2: every caller's is; httparse,
/// hyper and the trailer parser check it).
pub(crate) fn kind(name: &[u8]) -> Kind {
    let is = |s: &str| is_named(name, s.as_bytes());
    let Some(&first) = name.first() else { return Kind::Other };
    // Length and first letter rule out most names before any comparison.
    match (name.len(), first | 0x20) {
        (2, b't') if is("te") => Kind::Te,
        (2, b'b') if is("b3") => Kind::Trace,
        (3, b'v') if is("via") => Kind::Via,
        (4, b'h') if is("host") => Kind::Host,
        (6, b'e') if is("expect") => Kind::Expect,
        (7, b'u') if is("upgrade") => Kind::Upgrade,
        (7, b't') if is("trailer") => Kind::Trailer,
        (10, b'c') if is("connection") => Kind::Connection,
        (10, b'k') if is("keep-alive") => Kind::KeepAlive,
        (10, b'x') if is("x-b3-flags") => Kind::Trace,
        (11, b'x') if is("x-b3-spanid") => Kind::Trace,
        (11, b't') if is("traceparent") => Kind::Trace,
        (12, b'x') if is("x-b3-traceid") || is("x-b3-sampled") => Kind::Trace,
        (13, b'x') if is("xxx-fxlb-wait") => Kind::FxlbWait,
        (14, b'c') if is("content-length") => Kind::ContentLength,
        (15, b'x') if is("x-forwarded-for") => Kind::ForwardedFor,
        (16, b'p') if is("proxy-connection") => Kind::ProxyConnection,
        (17, b't') if is("transfer-encoding") => Kind::TransferEncoding,
        (17, b'x') if is("x-b3-parentspanid") => Kind::Trace,
        (19, b'p') if is("proxy-authorization") => Kind::ProxyAuthorization,
        _ => Kind::Other,
    }
}

/// Whether the token `name` is `lower` (lowercase letters, digits and `-`) in any case, eight
/// bytes at a time. Setting bit 0x20 lowercases a letter and leaves `-` and digits alone, and of
/// the bytes it turns into one of those, only letters are token characters, so the comparison
/// is exact for a token. (Byte by byte, the names a head carries cost a call ~500 instructions.)
fn is_named(name: &[u8], lower: &[u8]) -> bool {
    const CASE: u64 = 0x2020_2020_2020_2020;
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    if n < 8 {
        return name.eq_ignore_ascii_case(lower);
    }
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(w)
    };
    // Whole words, then the last eight bytes (overlapping the previous word when n is not a
    // multiple of 8).
    (0..n / 8).all(|i| word(name, 8 * i) | CASE == word(lower, 8 * i)) && word(name, n - 8) | CASE == word(lower, n - 8)
}

/// A table of bytes: ASCII letters and digits, and `extra`.
pub(crate) const fn alnum_and(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// The bytes of a reg-name (RFC 3986 §3.2.2) other than `%`: unreserved and sub-delims.
const REG_NAME: [bool; 256] = alnum_and(b"-._~!$&'()*+,;=");

/// Whether a client's header field of this kind stops at the balancer (RFC 9110 §7.6.1). `TE`
/// stops too, and comes back as `TE: trailers` when the client listed `trailers`; the framing
/// header is the balancer's own. Fields the `Connection` header names stop as well (the caller
/// knows them).
pub(crate) fn request_drops(k: Kind) -> bool {
    hop_by_hop(k) || matches!(k, Kind::Te | Kind::ProxyAuthorization | Kind::Expect)
}

/// The fields that describe one hop in either direction (RFC 9110 §7.6.1, plus the legacy
/// `Proxy-Connection`).
fn hop_by_hop(k: Kind) -> bool {
    matches!(k, Kind::Connection | Kind::KeepAlive | Kind::ProxyConnection | Kind::TransferEncoding | Kind::Upgrade)
}

/// Whether a node's header field of this kind stops at the balancer: hop-by-hop fields, and the
/// node's wait report. (`Content-Length` is decided by the framing, not here.)
pub(crate) fn response_drops(k: Kind) -> bool {
    hop_by_hop(k) || k == Kind::FxlbWait
}

/// Whether a trailer field of this kind is passed on. RFC 9110 §6.5.1 forbids framing, routing
/// and connection fields in trailers; the wait report is never shown, in a trailer neither.
pub(crate) fn trailer_passes(k: Kind) -> bool {
    matches!(k, Kind::Other)
}

/// The comma-separated tokens of a list header value, trimmed, empty ones skipped.
pub(crate) fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// The balancer's pseudonym in `Via` (`fnlb-` and 8 hex digits, random per process), so that a
/// call coming back to the process that sent it is recognised, while a chain of distinct
/// balancers is not a loop.
pub(crate) fn pseudonym() -> &'static str {
    &via()[4..]
}

/// The `Via` value the balancer adds to every forwarded call: `1.1 fnlb-<random>`.
pub(crate) fn via() -> &'static str {
    static VIA: OnceLock<String> = OnceLock::new();
    VIA.get_or_init(|| format!("1.1 fnlb-{:08x}", rand::random::<u32>()))
}

/// The balancer's `Via` header line, CRLF included, for the fast path to write in one piece.
pub(crate) fn via_line() -> &'static str {
    static LINE: OnceLock<String> = OnceLock::new();
    LINE.get_or_init(|| format!("via: {}\r\n", via()))
}

/// Whether a `Via` value lists this process: the call went round in a circle.
pub(crate) fn via_is_ours(v: &[u8]) -> bool {
    let me = pseudonym().as_bytes();
    // Each entry is `protocol received-by [comment]`.
    tokens(v).any(|entry| entry.split(|b| *b == b' ' || *b == b'\t').filter(|p| !p.is_empty()).nth(1) == Some(me))
}

/// A `Host` value that is `host[:port]` (RFC 9112 §3.2, RFC 3986 §3.2.2): a reg-name of
/// unreserved, sub-delims and percent-escapes, or an `[IPv6]` literal, and an optional port of
/// at most 5 digits. An empty value is allowed (RFC 9112 §3.2). Refused: userinfo (`@`), a path
/// (`/`), a query, whitespace, anything else.
pub(crate) fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        let Some(close) = v.iter().position(|b| *b == b']') else { return false };
        let inner = &v[1..close];
        let ipv6 = std::str::from_utf8(inner).ok().and_then(|s| s.parse::<std::net::Ipv6Addr>().ok());
        if ipv6.is_none() {
            return false;
        }
        match &v[close + 1..] {
            [] => (&v[..0], None),
            [b':', port @ ..] => (&v[..0], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|b| *b == b':') {
            Some(c) => (&v[..c], Some(&v[c + 1..])),
            None => (v, None),
        }
    };
    if let Some(port) = port {
        if port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
            return false;
        }
    }
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' => {
                if !(host.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && host.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return false;
                }
                i += 3;
                continue;
            }
            b if REG_NAME[usize::from(b)] => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// A request the balancer answers itself instead of forwarding: the status and the `msg` of its
/// JSON body (and, for 405, the methods allowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub msg: &'static str,
}

impl Refusal {
    /// The `Allow` header that goes with a 405.
    pub(crate) fn allow(&self) -> Option<&'static str> {
        (self.status == StatusCode::METHOD_NOT_ALLOWED).then_some(ALLOW)
    }
}

/// The balancer's answer to a refused request: `{"msg": ...}`, with `Allow` on a 405.
pub(crate) fn answer(r: Refusal) -> http::Response<super::body::RespBody> {
    let mut resp = crate::answer::json_msg(r.status, r.msg).map(super::body::RespBody::from);
    if let Some(allow) = r.allow() {
        resp.headers_mut().insert(header::ALLOW, http::HeaderValue::from_static(allow));
    }
    resp
}

/// The methods a function call may use (`Allow` of the 405 answer to `CONNECT`).
pub(crate) const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE";

pub(crate) const CONNECT_REFUSED: Refusal = Refusal {
    status: StatusCode::METHOD_NOT_ALLOWED,
    msg: "CONNECT is not supported: fnlb forwards function calls, not tunnels",
};
pub(crate) const DUPLICATE_HOST: Refusal =
    Refusal { status: StatusCode::BAD_REQUEST, msg: "invalid request: more than one Host header" };
pub(crate) const INVALID_HOST: Refusal =
    Refusal { status: StatusCode::BAD_REQUEST, msg: "invalid request: Host must be host[:port]" };
pub(crate) const LOOP: Refusal = Refusal {
    status: StatusCode::LOOP_DETECTED,
    msg: "loop detected: this call already passed through this balancer (its Via names us); is the balancer one of its own nodes?",
};

/// Checks what is method- and header-independent of the transport: `CONNECT` (405), the `Host`
/// header (at most one, well-formed: 400) and `Via` (ours already in it: 508). Called by the
/// hyper path on every call; the fast path hands any request that would fail it to the hyper
/// path ([`RequestCheck`] on its side), so both answer the same.
pub(crate) fn check_request(method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
    if method == Method::CONNECT {
        return Err(CONNECT_REFUSED);
    }
    let mut check = RequestCheck::default();
    for v in headers.get_all(header::HOST) {
        check.field(Kind::Host, v.as_bytes());
    }
    for v in headers.get_all(header::VIA) {
        check.field(Kind::Via, v.as_bytes());
    }
    check.result()
}

/// [`check_request`]'s header part, fed one field at a time (the fast path's loop over a head).
#[derive(Default)]
pub(crate) struct RequestCheck {
    hosts: u8,
    refusal: Option<Refusal>,
}

impl RequestCheck {
    pub(crate) fn field(&mut self, k: Kind, value: &[u8]) {
        match k {
            Kind::Host => {
                self.known_host();
                if self.hosts == 1 && !valid_host(value) {
                    self.refuse(INVALID_HOST);
                }
            }
            Kind::Via if via_is_ours(value) => self.refuse(LOOP),
            _ => {}
        }
    }

    /// [`RequestCheck::field`] for a `Host` whose bytes were found valid before (the previous
    /// request's on a kept-alive connection): counted, for a duplicate, but not read again.
    pub(crate) fn known_host(&mut self) {
        self.hosts = self.hosts.saturating_add(1);
        if self.hosts > 1 {
            self.refuse(DUPLICATE_HOST);
        }
    }

    /// The first refusal found, in the order the fields came; a loop wins over a bad Host.
    fn refuse(&mut self, r: Refusal) {
        if self.refusal.is_none() || r == LOOP {
            self.refusal = Some(r);
        }
    }

    pub(crate) fn result(&self) -> Result<(), Refusal> {
        self.refusal.map_or(Ok(()), Err)
    }
}

/// Whether a node's status can be passed to a client. The balancer never forwards `Upgrade`, so
/// a `101` is never an answer to anything it asked (RFC 9110 §15.2.2); three digits outside
/// 100-599 are not a status (§15).
pub(crate) fn check_status(status: u16) -> Result<(), &'static str> {
    match status {
        101 => Err("unexpected 101 Switching Protocols (the balancer never asks to upgrade)"),
        100..=599 => Ok(()),
        _ => Err("status code outside 100-599"),
    }
}

/// A node response head with both `Content-Length` and `Transfer-Encoding` is refused (RFC 9112
/// §6.3 item 3 lets a proxy treat it as an error, and it is the shape of response smuggling).
pub(crate) const LENGTH_AND_CHUNKED: &str = "both Content-Length and Transfer-Encoding";

/// [`check_status`] and the framing rule on a node's response head (the hyper path's check).
pub(crate) fn check_response(status: u16, headers: &HeaderMap) -> Result<(), &'static str> {
    check_status(status)?;
    if headers.contains_key(header::CONTENT_LENGTH) && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(LENGTH_AND_CHUNKED);
    }
    Ok(())
}

/// A header field name is a token (RFC 9110 §5.6.2).
pub(crate) fn is_token(name: &[u8]) -> bool {
    const TOKEN: [bool; 256] = alnum_and(b"!#$%&'*+-.^_`|~");
    !name.is_empty() && name.iter().all(|&b| TOKEN[usize::from(b)])
}

/// A field value has no control characters but HTAB (obs-text, bytes >= 0x80, is allowed).
pub(crate) fn is_field_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_knows_every_special_name_in_any_case() {
        for (name, k) in [
            ("TE", Kind::Te),
            ("b3", Kind::Trace),
            ("VIA", Kind::Via),
            ("Host", Kind::Host),
            ("Expect", Kind::Expect),
            ("upgrade", Kind::Upgrade),
            ("Trailer", Kind::Trailer),
            ("Connection", Kind::Connection),
            ("Keep-Alive", Kind::KeepAlive),
            ("X-B3-Flags", Kind::Trace),
            ("X-B3-SpanId", Kind::Trace),
            ("traceparent", Kind::Trace),
            ("X-B3-TraceId", Kind::Trace),
            ("X-B3-Sampled", Kind::Trace),
            ("XXX-FXLB-WAIT", Kind::FxlbWait),
            ("Content-Length", Kind::ContentLength),
            ("X-Forwarded-For", Kind::ForwardedFor),
            ("Proxy-Connection", Kind::ProxyConnection),
            ("Transfer-Encoding", Kind::TransferEncoding),
            ("X-B3-ParentSpanId", Kind::Trace),
            ("Proxy-Authorization", Kind::ProxyAuthorization),
            ("X-Other", Kind::Other),
            ("", Kind::Other),
            ("Hosts", Kind::Other),
            ("vie", Kind::Other),
            // A byte off in the first word, the middle word, the overlapping last word; and
            // token characters one bit 0x20 away from `-` or a letter's case.
            ("Dontent-Length", Kind::Other),
            ("Content-Lzngth", Kind::Other),
            ("Content-Lengtz", Kind::Other),
            ("Content_Length", Kind::Other),
            ("Content^Length", Kind::Other),
            ("CONTENT-LENGTH", Kind::ContentLength),
            ("x-b3-parentspanID", Kind::Trace),
            ("X-B3-ParentSpanIf", Kind::Other),
        ] {
            assert_eq!(kind(name.as_bytes()), k, "{name}");
        }
    }

    #[test]
    fn directions_drop_what_describes_one_hop() {
        assert!(request_drops(Kind::Te) && request_drops(Kind::Expect) && request_drops(Kind::ProxyAuthorization));
        assert!(!request_drops(Kind::FxlbWait) && !request_drops(Kind::Via) && !request_drops(Kind::Host));
        assert!(response_drops(Kind::FxlbWait) && response_drops(Kind::Connection));
        assert!(!response_drops(Kind::ContentLength) && !response_drops(Kind::Via));
        assert!(trailer_passes(Kind::Other));
        for k in [Kind::FxlbWait, Kind::ContentLength, Kind::TransferEncoding, Kind::Host, Kind::Connection] {
            assert!(!trailer_passes(k), "{k:?}");
        }
    }

    #[test]
    fn hosts() {
        for ok in ["", "fn.example", "fn.example:8080", "10.0.0.1", "10.0.0.1:80", "[::1]", "[::1]:8080", "a%20b", "h:"]
        {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "a/b",
            "user@host",
            "h:80/x",
            "h:808080",
            "h:8a",
            "h h",
            "h\t",
            "[::1",
            "[zz]:80",
            "[::1]x",
            "h?q",
            "h#f",
            "a%2",
            "a%zz",
            "h:1:2",
            "\u{e9}.example",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn requests_refused_before_any_node() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            m
        };
        assert_eq!(check_request(&Method::GET, &h(&[("host", "x")])), Ok(()));
        assert_eq!(check_request(&Method::GET, &h(&[])), Ok(()));
        assert_eq!(check_request(&Method::CONNECT, &h(&[("host", "x:22")])), Err(CONNECT_REFUSED));
        assert_eq!(CONNECT_REFUSED.allow(), Some(ALLOW));
        assert_eq!(check_request(&Method::GET, &h(&[("host", "a"), ("host", "a")])), Err(DUPLICATE_HOST));
        assert_eq!(check_request(&Method::GET, &h(&[("host", "a@b")])), Err(INVALID_HOST));
        assert_eq!(check_request(&Method::GET, &h(&[("host", "a/b")])), Err(INVALID_HOST));
        let ours = via();
        assert_eq!(check_request(&Method::GET, &h(&[("via", ours)])), Err(LOOP));
        assert_eq!(
            check_request(&Method::GET, &h(&[("host", "a/b"), ("via", &format!("1.0 x, {ours} (c)"))])),
            Err(LOOP)
        );
        // Another balancer's Via, or ours as a comment, is no loop.
        assert_eq!(check_request(&Method::GET, &h(&[("via", "1.1 fnlb-00000000x, 1.1 proxy")])), Ok(()));
        assert_eq!(check_request(&Method::GET, &h(&[("via", &format!("1.1 other ({})", pseudonym()))])), Ok(()));
        assert!(via().starts_with("1.1 fnlb-") && via().len() == 17);
    }

    #[test]
    fn node_statuses() {
        for ok in [100, 200, 204, 404, 599] {
            assert_eq!(check_status(ok), Ok(()), "{ok}");
        }
        for bad in [0, 99, 101, 600, 999] {
            assert!(check_status(bad).is_err(), "{bad}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        assert_eq!(check_response(200, &h), Ok(()));
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        assert_eq!(check_response(200, &h), Err(LENGTH_AND_CHUNKED));
    }

    #[test]
    fn field_syntax() {
        assert!(is_token(b"X-T") && !is_token(b"X T") && !is_token(b"") && !is_token(b"a:b"));
        assert!(is_field_value(b"a\tb \x80") && !is_field_value(b"a\rb") && !is_field_value(b"a\0"));
    }
}
