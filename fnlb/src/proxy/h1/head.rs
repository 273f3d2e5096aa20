//! Message heads of the fast path, as pure functions: parse a client's request head and write
//! the node's copy with the rules of [`crate::proxy::rules`] (the table the hyper path uses too);
//! parse a node's response head and write the client's copy. Anything unusual in a request is
//! not handled here: the caller hands the connection to the general (hyper) server, which then
//! decides — refusals included ([`rules::check_request`]), so both answer alike.
use std::mem::MaybeUninit;
use std::time::Duration;

use http::Method;

use super::framing::{content_length, Framing};
use crate::proxy::rules::{self, kind, tokens, Kind, RequestCheck};
use crate::route::goduration::parse_go_duration_bytes;

/// Header fields a head may have (hyper's limit too).
pub(crate) const MAX_HEADERS: usize = 100;

/// The outcome of reading a request head. (On the stack only, so the size of `Ready` is fine.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Request<'b> {
    /// More bytes are needed.
    Partial,
    /// Not for the fast path (malformed, HTTP/1.0, Upgrade, Expect, unusual framing, ...): the
    /// general server takes the connection, with the bytes read so far.
    Fallback,
    Ready(RequestHead<'b>),
}

/// A parsed request head; `headers` borrow the caller's array and buffer.
pub(crate) struct RequestHead<'b> {
    /// Bytes of the head, final CRLF included.
    pub len: usize,
    pub method: Method,
    /// The request target (origin-form).
    pub target: &'b str,
    pub body: Framing,
    /// The client asked to close after this request.
    pub close: bool,
    te_trailers: bool,
    headers: &'b [httparse::Header<'b>],
    /// The bytes the head was parsed from.
    buf: &'b [u8],
    /// Where the request line starts in `buf` (after any empty lines).
    line_at: usize,
    /// The [`Kind`] of each header, found once.
    kinds: [Kind; MAX_HEADERS],
    /// Length of the target's path (up to `?`).
    path_len: usize,
    /// The `Host` value, if the client sent one.
    pub host: Option<&'b [u8]>,
}

/// The `Host` of an earlier request on the connection, found valid then: a kept-alive client
/// sends the same bytes with every request, and they are not checked again (the check cost a
/// call ~185 instructions for `127.0.0.1:18299`; comparing costs ~25). Values over 64 bytes are
/// not kept, and checked each time.
pub(crate) struct KnownHost {
    bytes: [u8; 64],
    len: usize,
}

impl Default for KnownHost {
    fn default() -> Self {
        KnownHost { bytes: [0; 64], len: 0 }
    }
}

impl KnownHost {
    fn is(&self, v: &[u8]) -> bool {
        self.len > 0 && v == &self.bytes[..self.len]
    }

    /// Keeps `v`, a `Host` value of a request that was accepted.
    pub(crate) fn remember(&mut self, v: &[u8]) {
        if v.len() <= self.bytes.len() && !self.is(v) {
            self.bytes[..v.len()].copy_from_slice(v);
            self.len = v.len();
        }
    }
}

/// Standard methods only: the fast path never allocates a method.
fn method(m: &str) -> Option<Method> {
    Some(match m {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "DELETE" => Method::DELETE,
        "HEAD" => Method::HEAD,
        "OPTIONS" => Method::OPTIONS,
        "PATCH" => Method::PATCH,
        "TRACE" => Method::TRACE,
        _ => return None,
    })
}

/// Origin-form targets made of the characters every URI parser accepts; anything else (and
/// absolute-form, `*`) is left to the general server.
fn plain_target(t: &str) -> bool {
    const PLAIN: [bool; 256] = rules::alnum_and(b"-._~!$&'()*+,;=:@/?%");
    t.starts_with('/') && t.bytes().all(|b| PLAIN[usize::from(b)])
}

/// Parses a request head from the start of `buf`; a `Host` equal to `known` is valid.
pub(crate) fn parse_request<'b>(
    buf: &'b [u8],
    headers: &'b mut [MaybeUninit<httparse::Header<'b>>],
    known: &KnownHost,
) -> Request<'b> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Request::Partial,
        Err(_) => return Request::Fallback,
    };
    let httparse::Request { method: Some(m), path: Some(target), version: Some(1), headers } = req else {
        return Request::Fallback;
    };
    let (Some(method), true) = (method(m), plain_target(target)) else { return Request::Fallback };
    // Empty lines before the request line are skipped (RFC 9112 §2.2), never forwarded.
    let line_at = offset(buf, m.as_bytes());
    let mut check = RequestCheck::default();
    let mut close = false;
    let mut te_trailers = false;
    let mut length = None;
    let mut chunked = false;
    let mut host = None;
    let mut kinds = [Kind::Other; MAX_HEADERS];
    for (h, k) in headers.iter().zip(kinds.iter_mut()) {
        *k = kind(h.name.as_bytes());
        match *k {
            Kind::Upgrade | Kind::Expect => return Request::Fallback,
            Kind::Host => {
                if known.is(h.value) {
                    check.known_host();
                } else {
                    check.field(Kind::Host, h.value);
                }
                host = Some(h.value);
            }
            Kind::Via => check.field(Kind::Via, h.value),
            Kind::Connection => {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                        // Headers named by Connection: rare, left to the general rules.
                        return Request::Fallback;
                    }
                }
            }
            Kind::ContentLength => match (length, content_length(h.value)) {
                (None, Some(n)) => length = Some(n),
                _ => return Request::Fallback,
            },
            Kind::TransferEncoding => {
                if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Request::Fallback;
                }
                chunked = true;
            }
            Kind::Te => te_trailers |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"trailers")),
            _ => {}
        }
    }
    if check.result().is_err() {
        // Refused by the hyper path, with the same answer as any request it gets.
        return Request::Fallback;
    }
    let body = match (length, chunked) {
        (Some(_), true) => return Request::Fallback,
        (Some(0) | None, false) => Framing::None,
        (Some(n), false) => Framing::Length(n),
        (None, true) => Framing::Chunked,
    };
    let path_len = target.bytes().position(|b| b == b'?').unwrap_or(target.len());
    Request::Ready(RequestHead {
        len,
        method,
        target,
        body,
        close,
        te_trailers,
        headers,
        buf,
        line_at,
        kinds,
        path_len,
        host,
    })
}

impl<'b> RequestHead<'b> {
    /// The routing key: the target's path, without the query.
    pub(crate) fn path(&self) -> &'b str {
        &self.target[..self.path_len]
    }

    /// The value of a header, for reading trace context.
    pub(crate) fn header(&self, name: &str) -> Option<&'b str> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
    }

    /// Writes the node's copy of the head (`client`: the client's address as text), up to (not including) the node-dependent part: Host
    /// when the client sent none, the trace context and the final CRLF ([`finish_upstream`]).
    /// Returns whether the client sent a Host. The rules are those of
    /// [`crate::proxy::headers::request`]: hop-by-hop headers stop here (`TE: trailers`
    /// excepted), `X-Forwarded-For` gets the client appended, and the framing header is ours.
    pub(crate) fn write_upstream(&self, out: &mut Vec<u8>, client: &[u8], traced: bool) -> bool {
        out.clear();
        let buf = self.buf;
        match self.headers.first().map(|h| offset(buf, h.name.as_bytes())) {
            // Unchanged: the client's request line is `METHOD target HTTP/1.1`.
            Some(first) if buf[..first].ends_with(b"\r\n") => out.extend_from_slice(&buf[self.line_at..first]),
            _ => {
                out.extend_from_slice(self.method.as_str().as_bytes());
                out.push(b' ');
                out.extend_from_slice(self.target.as_bytes());
                out.extend_from_slice(b" HTTP/1.1\r\n");
            }
        }
        let mut has_host = false;
        let mut forwarded = false;
        copy_headers(out, buf, self.headers, |i| match self.kinds[i] {
            Kind::Host => {
                has_host = true;
                true
            }
            Kind::Trace => !traced,
            Kind::ForwardedFor => {
                forwarded = true;
                false
            }
            k => !rules::request_drops(k),
        });
        if self.te_trailers {
            out.extend_from_slice(b"te: trailers\r\n");
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        if forwarded {
            for (h, _) in self.headers.iter().zip(self.kinds).filter(|(_, k)| *k == Kind::ForwardedFor) {
                out.extend_from_slice(h.value);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(client);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(rules::via_line().as_bytes());
        if self.body == Framing::Chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        has_host
    }
}

/// Completes the node's copy of a head for one node: Host if the client sent none, then the
/// final CRLF. (The trace context, if any, goes between the two.)
pub(crate) fn upstream_host(out: &mut Vec<u8>, has_host: bool, node: &str) {
    if !has_host {
        header_line(out, b"host", node.as_bytes());
    }
}

/// Where `part` (a slice of `buf`) starts in `buf`.
fn offset(buf: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - buf.as_ptr() as usize
}

/// Copies the header lines of a head that `keep` keeps: runs of whole CRLF-terminated lines in
/// one copy from `buf`, any other line rewritten as `name: value` CRLF. The lines are
/// contiguous in `buf` (each ends where the next one's name begins, the last at its LF), so a
/// run is two offsets; callgrind put the version with an `Option` per run at ~570 instructions
/// for a node's six response lines.
fn copy_headers(out: &mut Vec<u8>, buf: &[u8], headers: &[httparse::Header<'_>], mut keep: impl FnMut(usize) -> bool) {
    let Some(first) = headers.first() else { return };
    // `run..at`: kept lines not copied yet.
    let mut at = offset(buf, first.name.as_bytes());
    let mut run = at;
    for (i, h) in headers.iter().enumerate() {
        let end = match headers.get(i + 1) {
            Some(next) => offset(buf, next.name.as_bytes()),
            None => last_line_end(buf, h),
        };
        let kept = keep(i);
        if kept && buf[..end].ends_with(b"\r\n") {
            at = end;
            continue;
        }
        if run < at {
            out.extend_from_slice(&buf[run..at]);
        }
        if kept {
            header_line(out, h.name.as_bytes(), h.value);
        }
        at = end;
        run = end;
    }
    if run < at {
        out.extend_from_slice(&buf[run..at]);
    }
}

/// Where the head's last header line `h` ends: after the LF that follows its value, searched
/// from the value's end (from the name's end if the value is not a slice of `buf`).
fn last_line_end(buf: &[u8], h: &httparse::Header<'_>) -> usize {
    let name_end = offset(buf, h.name.as_bytes()) + h.name.len();
    let value_at = (h.value.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    let from = match value_at.checked_add(h.value.len()) {
        Some(end) if value_at >= name_end && end <= buf.len() => end,
        _ => name_end,
    };
    buf[from..].iter().position(|&b| b == b'\n').map_or(buf.len(), |p| from + p + 1)
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The outcome of reading a response head.
pub(crate) enum Response {
    Partial,
    /// Not a usable HTTP/1.x response: the client gets a 502.
    Invalid(&'static str),
    /// An interim (1xx) response of this length: skipped, the final one follows.
    Interim(usize),
    Ready(ResponseHead),
}

pub(crate) struct ResponseHead {
    /// Bytes of the head, final CRLF included.
    pub len: usize,
    pub status: u16,
    /// How the node delimits the body.
    pub body: Framing,
    /// The node will close the connection after this response.
    pub close: bool,
    /// The node's reported queue wait, if it sent a valid one.
    pub wait: Option<Duration>,
}

/// Connection header values a response may carry (more is refused).
const MAX_CONNECTION: usize = 8;

/// Parses a node's response head from the start of `buf` and writes the client's copy into
/// `out`: the rules of [`crate::proxy::headers::response`] (hop-by-hop headers and
/// `XXX-FXLB-WAIT` removed), framing per RFC 9112 §6.3 (a HEAD request's, 1xx, 204 and 304
/// answers have no body; a body delimited by the node closing is re-framed as chunked), and
/// `Connection: close` when the client's connection ends with this response.
pub(crate) fn parse_response(buf: &[u8], head_request: bool, close_client: bool, out: &mut Vec<u8>) -> Response {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Response::Partial,
        Err(httparse::Error::TooManyHeaders) => return Response::Invalid("too many headers"),
        Err(_) => return Response::Invalid("not an HTTP/1.x response"),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Response::Invalid("not an HTTP/1.x response");
    };
    if let Err(why) = rules::check_status(status) {
        return Response::Invalid(why);
    }
    if (100..200).contains(&status) {
        return Response::Interim(len);
    }
    let headers = &*resp.headers;
    let mut connection: [&[u8]; MAX_CONNECTION] = [b""; MAX_CONNECTION];
    let mut n_connection = 0;
    let mut length = None;
    let mut te_chunked = None;
    let mut wait = None;
    let mut wait_seen = false;
    let mut kinds = [Kind::Other; MAX_HEADERS];
    for (h, k) in headers.iter().zip(kinds.iter_mut()) {
        *k = kind(h.name.as_bytes());
        match *k {
            Kind::Connection => {
                if n_connection == MAX_CONNECTION {
                    return Response::Invalid("too many Connection headers");
                }
                connection[n_connection] = h.value;
                n_connection += 1;
            }
            Kind::ContentLength => match (length, content_length(h.value)) {
                (None, Some(n)) => length = Some(n),
                (Some(a), Some(b)) if a == b => {}
                _ => return Response::Invalid("invalid Content-Length"),
            },
            // The last coding decides: chunked or not (then the body runs to the close).
            Kind::TransferEncoding => {
                te_chunked = tokens(h.value).last().map(|t| t.eq_ignore_ascii_case(b"chunked")).or(te_chunked);
            }
            Kind::FxlbWait if !wait_seen => {
                wait_seen = true;
                wait = parse_go_duration_bytes(h.value);
            }
            _ => {}
        }
    }
    if te_chunked.is_some() && length.is_some() {
        return Response::Invalid(rules::LENGTH_AND_CHUNKED);
    }
    let connection = &connection[..n_connection];
    let named = |t: &[u8]| connection.iter().any(|v| tokens(v).any(|c| c.eq_ignore_ascii_case(t)));
    // One pass over Connection's options: `close`, `keep-alive`, and whether it names headers
    // (anything else; usually not).
    let (mut says_close, mut says_keep_alive, mut names_headers) = (false, false, false);
    for c in connection.iter().flat_map(|v| tokens(v)) {
        if c.eq_ignore_ascii_case(b"close") {
            says_close = true;
        } else if c.eq_ignore_ascii_case(b"keep-alive") {
            says_keep_alive = true;
        } else {
            names_headers = true;
        }
    }
    let close = if version == 1 { says_close } else { !says_keep_alive };
    let body = if head_request || status == 204 || status == 304 {
        Framing::None
    } else {
        match (te_chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
        }
    };

    out.clear();
    let reason = resp.reason.unwrap_or("");
    match headers.first().map(|h| offset(buf, h.name.as_bytes())) {
        // Unchanged: an HTTP/1.1 status line with a reason.
        Some(first) if version == 1 && !reason.is_empty() && buf[..first].ends_with(b"\r\n") => {
            // Empty lines a node sent before its status line (httparse skips them) stop here:
            // the client gets a head that starts with the status line.
            let at = buf[..first].iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(0);
            out.extend_from_slice(&buf[at..first]);
        }
        _ => {
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(itoa3(status).as_slice());
            out.push(b' ');
            if reason.is_empty() {
                let canonical = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason());
                out.extend_from_slice(canonical.unwrap_or("").as_bytes());
            } else {
                out.extend_from_slice(reason.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    copy_headers(out, buf, headers, |i| {
        !rules::response_drops(kinds[i]) && (!names_headers || !named(headers[i].name.as_bytes()))
    });
    match body {
        Framing::Chunked | Framing::Close => {
            // The node's codings stay (a body delimited by the close becomes chunked).
            out.extend_from_slice(b"transfer-encoding: ");
            let mut first = true;
            for (h, _) in headers.iter().zip(kinds).filter(|(_, k)| *k == Kind::TransferEncoding) {
                for t in tokens(h.value).filter(|t| body == Framing::Close || !t.eq_ignore_ascii_case(b"chunked")) {
                    if !first {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(t);
                    first = false;
                }
            }
            out.extend_from_slice(if first { &b"chunked\r\n"[..] } else { &b", chunked\r\n"[..] });
        }
        Framing::None | Framing::Length(_) => {}
    }
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Response::Ready(ResponseHead { len, status, body, close, wait })
}

fn itoa3(n: u16) -> [u8; 3] {
    [b'0' + (n / 100 % 10) as u8, b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]
}

/// A short JSON answer of the balancer's own, written whole into `out`.
pub(crate) fn local_response(out: &mut Vec<u8>, status: http::StatusCode, body: &str, close: bool) {
    use std::io::Write;
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{}",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        if close { "connection: close\r\n" } else { "" },
        body
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(raw: &[u8], traced: bool) -> (String, RequestHeadInfo) {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let Request::Ready(h) = parse_request(raw, &mut headers, &KnownHost::default()) else { panic!("not ready") };
        let mut out = Vec::new();
        let has_host = h.write_upstream(&mut out, b"127.0.0.1", traced);
        upstream_host(&mut out, has_host, "10.0.0.1:8080");
        out.extend_from_slice(b"\r\n");
        let info = RequestHeadInfo { len: h.len, body: h.body, close: h.close, path: h.path().to_string() };
        // Every forwarded head carries our Via, once, after the client's fields; the literals
        // below leave it out.
        let out = String::from_utf8(out).unwrap();
        let via = format!("via: {}\r\n", rules::via());
        assert_eq!(out.matches(&via).count(), 1, "{out}");
        (out.replacen(&via, "", 1), info)
    }

    struct RequestHeadInfo {
        len: usize,
        body: Framing,
        close: bool,
        path: String,
    }

    fn outcome(raw: &[u8]) -> &'static str {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        match parse_request(raw, &mut headers, &KnownHost::default()) {
            Request::Partial => "partial",
            Request::Fallback => "fallback",
            Request::Ready(_) => "ready",
        }
    }

    fn outcome_knowing(raw: &[u8], known: &KnownHost) -> &'static str {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        match parse_request(raw, &mut headers, known) {
            Request::Partial => "partial",
            Request::Fallback => "fallback",
            Request::Ready(_) => "ready",
        }
    }

    #[test]
    fn a_known_host_skips_only_its_own_check() {
        let mut known = KnownHost::default();
        known.remember(b"fn.example:8080");
        assert_eq!(outcome_knowing(b"GET / HTTP/1.1\r\nHost: fn.example:8080\r\n\r\n", &known), "ready");
        // A second Host is still a duplicate, the known one first or second.
        let dup = b"GET / HTTP/1.1\r\nHost: fn.example:8080\r\nHost: fn.example:8080\r\n\r\n";
        assert_eq!(outcome_knowing(dup, &known), "fallback");
        let dup = b"GET / HTTP/1.1\r\nHost: other\r\nHost: fn.example:8080\r\n\r\n";
        assert_eq!(outcome_knowing(dup, &known), "fallback");
        // Other bytes are checked as ever.
        assert_eq!(outcome_knowing(b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", &known), "fallback");
        assert_eq!(outcome_knowing(b"GET / HTTP/1.1\r\nHost: fn.example:8080/x\r\n\r\n", &known), "fallback");
        // Nothing is known at first, and a value too long to keep is checked each time.
        let long = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", "a".repeat(100));
        let mut known = KnownHost::default();
        assert!(!known.is(b""), "an empty memo knows no host");
        known.remember(&long.as_bytes()[22..122]);
        assert!(!known.is(&long.as_bytes()[22..122]));
        assert_eq!(outcome_knowing(long.as_bytes(), &known), "ready");
    }

    #[test]
    fn plain_get_is_rewritten_with_forwarded_for_and_host() {
        let raw = b"GET /r/app/hello?x=1 HTTP/1.1\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\nGET /next";
        let (out, info) = upstream(raw, false);
        assert_eq!(
            out,
            "GET /r/app/hello?x=1 HTTP/1.1\r\nUser-Agent: wrk\r\nAccept: */*\r\nx-forwarded-for: 127.0.0.1\r\nhost: 10.0.0.1:8080\r\n\r\n"
        );
        assert_eq!(info.len, raw.len() - "GET /next".len());
        assert_eq!(info.path, "/r/app/hello");
        assert_eq!(info.body, Framing::None);
        assert!(!info.close);
    }

    /// The node's copy of a head as (lowercase name, value) pairs, sorted: what "the same
    /// request" means between the two transports (hyper lowercases names, groups equal names
    /// and writes its own framing header; neither changes what a node understands).
    fn fields(head: &[u8]) -> (String, Vec<(String, String)>) {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Request::new(&mut h);
        assert!(r.parse(head).unwrap().is_complete());
        let line = format!("{} {}", r.method.unwrap(), r.path.unwrap());
        let mut f: Vec<_> = r
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
            .collect();
        f.sort();
        (line, f)
    }

    /// The hyper path's rules ([`crate::proxy::headers::request`]) on the same head, written
    /// as hyper would (Host as on the fast path: the node's when the client sent none).
    fn general(raw: &[u8]) -> (String, Vec<(String, String)>) {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Request::new(&mut h);
        assert!(r.parse(raw).unwrap().is_complete());
        let mut map = http::HeaderMap::new();
        for h in r.headers.iter() {
            map.append(
                http::HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(h.value).unwrap(),
            );
        }
        let chunked = map.get("transfer-encoding").is_some();
        crate::proxy::headers::request(&mut map, "127.0.0.1".parse().unwrap());
        if !map.contains_key("host") {
            map.insert("host", http::HeaderValue::from_static("10.0.0.1:8080"));
        }
        if chunked {
            map.insert("transfer-encoding", http::HeaderValue::from_static("chunked"));
        }
        let mut out = format!("{} {} HTTP/1.1\r\n", r.method.unwrap(), r.path.unwrap()).into_bytes();
        for (k, v) in &map {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        fields(&out)
    }

    /// Both transports' rules on the same request heads give the node the same fields.
    #[test]
    fn request_rules_match_the_general_path() {
        for raw in [
            &b"POST /r/f HTTP/1.1\r\nHost: fn.example\r\nConnection: close\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9v\r\nTE: trailers, deflate\r\nX-Forwarded-For: 10.9.9.9\r\nX-Forwarded-For: 10.8.8.8\r\nContent-Length: 5\r\nX-Keep: yes\r\n\r\n"[..],
            b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /a HTTP/1.1\r\nTE: gzip\r\nVia: 1.0 edge, 1.1 other-lb\r\nVia: 1.1 cdn\r\n\r\n",
            b"GET /a HTTP/1.1\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2\r\nX-B3-TraceId: abc\r\nb3: 1\r\ntraceparent: 00-x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nConnection: keep-alive\r\nXXX-FXLB-WAIT: 1ms\r\nTrailer: X-Sum\r\nCookie: a=1\r\n\r\n",
            b"\r\n\r\nGET /after-empty-lines HTTP/1.1\r\nHost: h:8080\r\n\r\n",
        ] {
            let (out, _) = upstream(raw, false);
            let mut with_via = out.into_bytes();
            let at = with_via.len() - 2;
            with_via.splice(at..at, format!("via: {}\r\n", rules::via()).into_bytes());
            assert_eq!(fields(&with_via), general(raw), "{:?}", String::from_utf8_lossy(raw));
        }
        let (out, info) = upstream(b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", false);
        assert_eq!(
            out,
            "PUT /c HTTP/1.1\r\nHost: h\r\nx-forwarded-for: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(info.body, Framing::Chunked);
        assert_eq!(upstream(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", false).1.body, Framing::None);
    }

    #[test]
    fn empty_lines_before_the_request_line_are_not_forwarded() {
        let raw = b"\r\n\r\n\nGET /r/f HTTP/1.1\r\nHost: h\r\n\r\n";
        let (out, info) = upstream(raw, false);
        assert!(out.starts_with("GET /r/f HTTP/1.1\r\nHost: h\r\n"), "{out:?}");
        assert_eq!(info.len, raw.len());
    }

    #[test]
    fn requests_the_general_path_refuses_go_to_it() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            b"CONNECT host:22 HTTP/1.1\r\nHost: host:22\r\n\r\n",
            format!("GET / HTTP/1.1\r\nVia: 1.0 x, {}\r\n\r\n", rules::via()).as_bytes(),
        ] {
            assert_eq!(outcome(raw), "fallback", "{:?}", String::from_utf8_lossy(raw));
        }
        // A bare CR anywhere in a head is no HTTP: the general server answers 400.
        for raw in [&b"GET / HTTP/1.1\r\nX-A: b\rc\r\n\r\n"[..], b"GET / HTTP/1.1\rX: y\r\n\r\n"] {
            assert_eq!(outcome(raw), "fallback", "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn trace_headers_pass_unless_the_call_is_traced() {
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nb3: 1\r\nX-B3-TraceId: abc\r\ntraceparent: x\r\n\r\n";
        let (out, _) = upstream(raw, false);
        assert!(out.contains("b3: 1\r\n") && out.contains("X-B3-TraceId: abc") && out.contains("traceparent: x"));
        let (out, _) = upstream(raw, true);
        assert!(!out.contains("b3") && !out.contains("traceparent"), "{out}");
    }

    #[test]
    fn unusual_requests_fall_back_to_the_general_server() {
        for raw in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"GARBAGE\r\n\r\n",
            b"CONNECT h:443 HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"BREW /pot HTTP/1.1\r\n\r\n",
            b"GET http://h/x HTTP/1.1\r\n\r\n",
            b"GET /a\xffb HTTP/1.1\r\n\r\n",
            b"GET /a{b} HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: x-hop\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: y\r\n\r\n",
        ] {
            assert_eq!(outcome(raw), "fallback", "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(outcome(b"GET / HTTP/1.1\r\nHost: x\r\n"), "partial");
        assert_eq!(outcome(b"GET / HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\n"), "ready");
    }

    fn client_head(raw: &[u8], head: bool, close: bool) -> (String, ResponseHead) {
        let mut out = Vec::new();
        match parse_response(raw, head, close, &mut out) {
            Response::Ready(r) => (String::from_utf8(out).unwrap(), r),
            Response::Partial => panic!("partial"),
            Response::Interim(_) => panic!("interim"),
            Response::Invalid(why) => panic!("invalid: {why}"),
        }
    }

    #[test]
    fn empty_lines_before_a_status_line_do_not_reach_the_client() {
        // Found by the h1_head fuzz target: the status line was copied with the node's leading
        // empty line, a bare LF in the client's head.
        for raw in [
            &b"\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"[..],
            b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
        ] {
            let (out, r) = client_head(raw, false, false);
            assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out:?}");
            assert_eq!(r.len, raw.len());
        }
    }

    #[test]
    fn response_rules_and_framing() {
        let (out, r) = client_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nXXX-FXLB-WAIT: 1.5ms\r\nConnection: keep-alive, x-priv\r\nX-Priv: 1\r\nKeep-Alive: timeout=5\r\nX-Node: a\r\n\r\nhello",
            false,
            false,
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Node: a\r\n\r\n");
        assert_eq!(
            (r.status, r.body, r.close, r.wait),
            (200, Framing::Length(5), false, Some(Duration::from_micros(1500)))
        );
        let (out, r) =
            client_head(b"HTTP/1.1 201 Made\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n", false, true);
        assert_eq!(out, "HTTP/1.1 201 Made\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");
        assert_eq!((r.body, r.close), (Framing::Chunked, true));
        let (out, r) = client_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false, false);
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert_eq!(r.body, Framing::Chunked);
        // Delimited by the close: re-framed as chunked.
        let (out, r) = client_head(b"HTTP/1.0 200 OK\r\nX: y\r\n\r\n", false, false);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nX: y\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!((r.body, r.close), (Framing::Close, true));
        let (_, r) =
            client_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", false, false);
        assert_eq!((r.body, r.close), (Framing::Length(0), false));
        // No body: HEAD, 204, 304; the Content-Length stays as the node said.
        for (raw, head) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"[..], true),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n", false),
        ] {
            assert_eq!(client_head(raw, head, false).1.body, Framing::None);
        }
        assert!(client_head(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", true, false)
            .0
            .contains("Content-Length: 7"));
        // An empty reason gets the standard one.
        assert!(client_head(b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", false, false)
            .0
            .starts_with("HTTP/1.1 404 Not Found\r\n"));
    }

    #[test]
    fn lines_ending_in_a_bare_lf_are_rewritten() {
        let (out, r) = client_head(b"HTTP/1.1 200 OK\nContent-Length: 2\r\nX: y\n\nok", false, false);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\n");
        assert_eq!(r.body, Framing::Length(2));
        let (out, _) = upstream(b"GET /a HTTP/1.1\nHost: h\nX-A: 1\r\nX-B: 2\n\n", false);
        assert_eq!(out, "GET /a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-B: 2\r\nx-forwarded-for: 127.0.0.1\r\n\r\n");
    }

    #[test]
    fn bad_and_interim_responses() {
        let mut out = Vec::new();
        for (raw, why) in [
            (&b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n"[..], "outside 100-599"),
            (b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n", "outside 100-599"),
            (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "101"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n", "both"),
            (b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", "not an HTTP"),
        ] {
            match parse_response(raw, false, false, &mut out) {
                Response::Invalid(w) => assert!(w.contains(why), "{w}"),
                _ => panic!("accepted {:?}", String::from_utf8_lossy(raw)),
            }
        }
        assert!(matches!(
            parse_response(b"this is not http at all\r\n\r\n", false, false, &mut out),
            Response::Invalid(_)
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false, false, &mut out),
            Response::Invalid(_)
        ));
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                false,
                &mut out
            ),
            Response::Invalid(_)
        ));
        assert!(matches!(parse_response(b"HTTP/1.1 200 OK\r\nContent-", false, false, &mut out), Response::Partial));
        assert!(matches!(
            parse_response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", false, false, &mut out),
            Response::Interim(25)
        ));
    }

    #[test]
    fn local_responses_are_complete() {
        let mut out = Vec::new();
        local_response(&mut out, http::StatusCode::SERVICE_UNAVAILABLE, r#"{"msg":"no nodes available"}"#, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 28\r\n\r\n{\"msg\":\"no nodes available\"}"
        );
    }
}
