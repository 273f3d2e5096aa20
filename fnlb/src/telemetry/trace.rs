//! Trace context: reading the caller's (B3 single `b3`, B3 multi `X-B3-*`, or W3C `traceparent`),
//! writing ours to the node (both B3 and `traceparent`), and the spans one call makes: `serve`
//! (the whole call, SERVER), `route` (choosing a node and getting a connection to it) and
//! `upstream` (request sent to response headers, CLIENT). Pure apart from ids and clocks.
use std::net::SocketAddr;
use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::node::NodeAddr;

/// A trace id: 64 or 128 bits. A 64-bit id stays 64-bit (16 hex digits) in our spans, as B3 allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceId {
    pub hi: u64,
    pub lo: u64,
    pub wide: bool,
}

impl TraceId {
    pub(crate) fn hex(&self) -> String {
        if self.wide {
            format!("{:016x}{:016x}", self.hi, self.lo)
        } else {
            format!("{:016x}", self.lo)
        }
    }

    /// Always 32 digits, for `traceparent`.
    pub(crate) fn hex32(&self) -> String {
        format!("{:016x}{:016x}", self.hi, self.lo)
    }

    fn parse(s: &str) -> Option<TraceId> {
        let id = match s.len() {
            16 => TraceId { hi: 0, lo: hex64(s)?, wide: false },
            32 => TraceId { hi: hex64(&s[..16])?, lo: hex64(&s[16..])?, wide: true },
            _ => return None,
        };
        (id.hi != 0 || id.lo != 0).then_some(id)
    }

    pub(crate) fn random() -> TraceId {
        TraceId { hi: span_id(), lo: span_id(), wide: true }
    }
}

fn hex64(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn span_hex(s: &str) -> Option<u64> {
    hex64(s).filter(|v| *v != 0)
}

/// A random non-zero span id.
pub(crate) fn span_id() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

/// What the caller sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Incoming {
    /// Trace id and the caller's span id, when it sent a valid context.
    pub context: Option<(TraceId, u64)>,
    /// The caller's sampling decision, when it made one.
    pub sampled: Option<bool>,
}

const B3: &str = "b3";
const B3_TRACE: &str = "x-b3-traceid";
const B3_SPAN: &str = "x-b3-spanid";
const B3_PARENT: &str = "x-b3-parentspanid";
const B3_SAMPLED: &str = "x-b3-sampled";
const B3_FLAGS: &str = "x-b3-flags";
const TRACEPARENT: &str = "traceparent";

#[cfg(test)]
fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn sampling(s: &str) -> Option<bool> {
    match s {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// Reads the caller's context: `b3` first, then `X-B3-*`, then `traceparent`; an invalid one is
/// ignored (the next is tried).
#[cfg(test)]
pub(crate) fn extract(h: &HeaderMap) -> Incoming {
    extract_with(|name| header(h, name))
}

/// [`extract`] over any header lookup (`get` returns the first value of a header).
pub(crate) fn extract_with<'h>(get: impl Fn(&str) -> Option<&'h str>) -> Incoming {
    let header = |name: &str| get(name).map(str::trim);
    if let Some(v) = header(B3) {
        if let Some(x) = parse_b3_single(v) {
            return x;
        }
    }
    let sampled = match header(B3_FLAGS) {
        Some("1") => Some(true),
        _ => header(B3_SAMPLED).and_then(sampling),
    };
    if let (Some(t), Some(s)) = (header(B3_TRACE), header(B3_SPAN)) {
        if let (Some(t), Some(s)) = (TraceId::parse(t), span_hex(s)) {
            return Incoming { context: Some((t, s)), sampled };
        }
    }
    if sampled.is_some() {
        return Incoming { context: None, sampled };
    }
    if let Some(v) = header(TRACEPARENT) {
        if let Some(x) = parse_traceparent(v) {
            return x;
        }
    }
    Incoming::default()
}

/// `{TraceId}-{SpanId}[-{Sampled}[-{ParentSpanId}]]`, or a lone sampling decision.
fn parse_b3_single(v: &str) -> Option<Incoming> {
    if let Some(s) = sampling(v) {
        return Some(Incoming { context: None, sampled: Some(s) });
    }
    let mut parts = v.split('-');
    let trace = TraceId::parse(parts.next()?)?;
    let span = span_hex(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some(s) => Some(sampling(s)?),
    };
    if let Some(parent) = parts.next() {
        span_hex(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Incoming { context: Some((trace, span)), sampled })
}

/// `{version}-{trace-id}-{parent-id}-{flags}` (W3C Trace Context).
fn parse_traceparent(v: &str) -> Option<Incoming> {
    let parts: Vec<&str> = v.split('-').collect();
    if parts.len() < 4 || parts[0].len() != 2 || parts[3].len() != 2 {
        return None;
    }
    let version = u8::from_str_radix(parts[0], 16).ok()?;
    if version == 0xff || (version == 0 && parts.len() != 4) {
        return None;
    }
    if parts[1].len() != 32 {
        return None;
    }
    let trace = TraceId::parse(parts[1])?;
    let span = span_hex(parts[2])?;
    let flags = u8::from_str_radix(parts[3], 16).ok()?;
    Some(Incoming { context: Some((TraceId { wide: true, ..trace }, span)), sampled: Some(flags & 1 == 1) })
}

/// Replaces the caller's context with ours: the node's parent is our `upstream` span.
pub(crate) fn inject(h: &mut HeaderMap, trace: TraceId, upstream_span: u64, serve_span: u64) {
    for name in [B3, B3_TRACE, B3_SPAN, B3_PARENT, B3_SAMPLED, B3_FLAGS, TRACEPARENT] {
        h.remove(name);
    }
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::try_from(value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    put(B3_TRACE, trace.hex());
    put(B3_SPAN, format!("{upstream_span:016x}"));
    put(B3_PARENT, format!("{serve_span:016x}"));
    put(B3_SAMPLED, "1".to_string());
    put(TRACEPARENT, format!("00-{}-{upstream_span:016x}-01", trace.hex32()));
}

/// [`inject`] as header lines appended to a head being written (the caller has left the
/// caller's context headers out).
pub(crate) fn inject_raw(out: &mut Vec<u8>, trace: TraceId, upstream_span: u64, serve_span: u64) {
    use std::io::Write;
    let _ = write!(
        out,
        "{B3_TRACE}: {}\r\n{B3_SPAN}: {upstream_span:016x}\r\n{B3_PARENT}: {serve_span:016x}\r\n{B3_SAMPLED}: 1\r\n{TRACEPARENT}: 00-{}-{upstream_span:016x}-01\r\n",
        trace.hex(),
        trace.hex32()
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Server,
    Client,
}

/// Where the other side of a span is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Remote {
    Client(SocketAddr),
    Node(NodeAddr),
}

/// One finished span, ready for the exporter.
#[derive(Clone, Debug)]
pub(crate) struct Span {
    pub trace: TraceId,
    pub id: u64,
    pub parent: Option<u64>,
    pub name: &'static str,
    pub kind: Option<Kind>,
    /// Microseconds since the epoch.
    pub timestamp_us: u64,
    pub duration_us: u64,
    pub remote: Option<Remote>,
    pub tags: Vec<(&'static str, String)>,
}

/// The trace of one sampled call as it goes.
pub(crate) struct CallTrace {
    pub trace: TraceId,
    /// The caller's span, parent of `serve`.
    pub parent: Option<u64>,
    pub serve_id: u64,
    start: Instant,
    start_us: u64,
    pub client: SocketAddr,
    attempt_start: Instant,
    upstream_id: u64,
    upstream_start: Instant,
}

impl CallTrace {
    /// A trace for a call, or `None` when the caller decided not to sample it (its headers then
    /// pass through untouched).
    pub(crate) fn start(incoming: Incoming, client: SocketAddr, start: Instant) -> Option<CallTrace> {
        if incoming.sampled == Some(false) {
            return None;
        }
        let (trace, parent) = match incoming.context {
            Some((t, s)) => (t, Some(s)),
            None => (TraceId::random(), None),
        };
        Some(CallTrace {
            trace,
            parent,
            serve_id: span_id(),
            start,
            start_us: crate::stats::time::now_micros(),
            client,
            attempt_start: start,
            upstream_id: 0,
            upstream_start: start,
        })
    }

    fn at(&self, t: Instant) -> u64 {
        self.start_us + t.saturating_duration_since(self.start).as_micros() as u64
    }

    fn child(&self, name: &'static str, kind: Option<Kind>, id: u64, from: Instant, to: Instant) -> Span {
        Span {
            trace: self.trace,
            id,
            parent: Some(self.serve_id),
            name,
            kind,
            timestamp_us: self.at(from),
            duration_us: (to.saturating_duration_since(from).as_micros() as u64).max(1),
            remote: None,
            tags: Vec::new(),
        }
    }

    pub(crate) fn attempt(&mut self, now: Instant) {
        self.attempt_start = now;
    }

    /// The `route` span of the current attempt, ended now (a connection is ready, or none could
    /// be made).
    pub(crate) fn route_span(&self, now: Instant, node: &NodeAddr, attempt: u32, error: Option<&str>) -> Span {
        let mut s = self.child("route", None, span_id(), self.attempt_start, now);
        s.tags.push(("fnlb.node", node.to_string()));
        s.tags.push(("fnlb.attempt", attempt.to_string()));
        if let Some(e) = error {
            s.tags.push(("error", e.to_string()));
        }
        s
    }

    /// Starts the `upstream` span and writes the context the node should continue.
    pub(crate) fn send(&mut self, now: Instant, headers: &mut HeaderMap) {
        self.upstream_id = span_id();
        self.upstream_start = now;
        inject(headers, self.trace, self.upstream_id, self.serve_id);
    }

    /// [`CallTrace::send`] for a head being written as bytes.
    pub(crate) fn send_raw(&mut self, now: Instant, out: &mut Vec<u8>) {
        self.upstream_id = span_id();
        self.upstream_start = now;
        inject_raw(out, self.trace, self.upstream_id, self.serve_id);
    }

    /// The `upstream` span, ended now with the node's status or an error.
    pub(crate) fn upstream_span(
        &self,
        now: Instant,
        node: &NodeAddr,
        status: Option<u16>,
        error: Option<&str>,
    ) -> Span {
        let mut s = self.child("upstream", Some(Kind::Client), self.upstream_id, self.upstream_start, now);
        s.remote = Some(Remote::Node(node.clone()));
        s.tags.push(("fnlb.node", node.to_string()));
        if let Some(code) = status {
            s.tags.push(("http.status_code", code.to_string()));
        }
        if let Some(e) = error {
            s.tags.push(("error", e.to_string()));
        }
        s
    }

    /// The `serve` span: the whole call, from arrival to response headers.
    pub(crate) fn serve_span(
        &self,
        now: Instant,
        method: &str,
        path: &str,
        status: u16,
        node: Option<&NodeAddr>,
    ) -> Span {
        let mut s = Span {
            trace: self.trace,
            id: self.serve_id,
            parent: self.parent,
            name: "serve",
            kind: Some(Kind::Server),
            timestamp_us: self.start_us,
            duration_us: (now.saturating_duration_since(self.start).as_micros() as u64).max(1),
            remote: Some(Remote::Client(self.client)),
            tags: vec![
                ("http.method", method.to_string()),
                ("http.path", path.to_string()),
                ("http.status_code", status.to_string()),
            ],
        };
        if let Some(n) = node {
            s.tags.push(("fnlb.node", n.to_string()));
        }
        if status >= 500 {
            s.tags.push(("error", status.to_string()));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.insert(HeaderName::try_from(*k).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const T128: &str = "463ac35c9f6413ad48485a3953bb6124";
    const S: &str = "a2fb4a1d1a96d312";

    #[test]
    fn reads_b3_multi() {
        let x = extract(&headers(&[("X-B3-TraceId", T128), ("X-B3-SpanId", S), ("X-B3-Sampled", "1")]));
        let (t, s) = x.context.unwrap();
        assert_eq!((t.hex(), s, x.sampled), (T128.to_string(), 0xa2fb4a1d1a96d312, Some(true)));
        let x = extract(&headers(&[("X-B3-TraceId", "48485a3953bb6124"), ("X-B3-SpanId", S)]));
        assert_eq!(x.context.unwrap().0.hex(), "48485a3953bb6124", "a 64-bit id stays 64-bit");
        assert_eq!(x.sampled, None);
        let x = extract(&headers(&[("X-B3-Sampled", "0")]));
        assert_eq!(x, Incoming { context: None, sampled: Some(false) });
        let x = extract(&headers(&[("X-B3-TraceId", "zz"), ("X-B3-SpanId", S)]));
        assert_eq!(x, Incoming::default());
    }

    #[test]
    fn reads_b3_single() {
        let x = extract(&headers(&[("b3", &format!("{T128}-{S}-1-0020000000000001"))]));
        assert_eq!(x.context.unwrap().0.hex(), T128);
        assert_eq!(x.sampled, Some(true));
        assert_eq!(extract(&headers(&[("b3", "0")])).sampled, Some(false));
        assert_eq!(extract(&headers(&[("b3", &format!("{T128}-{S}"))])).sampled, None);
        assert_eq!(extract(&headers(&[("b3", &format!("{T128}-{S}-x"))])), Incoming::default());
    }

    #[test]
    fn reads_traceparent() {
        let x = extract(&headers(&[("traceparent", &format!("00-{T128}-{S}-01"))]));
        assert_eq!((x.context.unwrap().0.hex(), x.sampled), (T128.to_string(), Some(true)));
        let x = extract(&headers(&[("traceparent", &format!("00-{T128}-{S}-00"))]));
        assert_eq!(x.sampled, Some(false));
        for bad in [
            format!("00-{}-{S}-01", "0".repeat(32)),
            format!("00-{T128}-{}-01", "0".repeat(16)),
            format!("ff-{T128}-{S}-01"),
            format!("00-{T128}-{S}-01-extra"),
            "garbage".to_string(),
        ] {
            assert_eq!(extract(&headers(&[("traceparent", &bad)])), Incoming::default(), "{bad}");
        }
    }

    #[test]
    fn writes_our_context_over_the_callers() {
        let mut h = headers(&[("b3", "abc"), ("X-B3-Flags", "1"), ("tracestate", "k=v")]);
        let t = TraceId::parse(T128).unwrap();
        inject(&mut h, t, 0x1111, 0x2222);
        assert_eq!(h["x-b3-traceid"], T128);
        assert_eq!(h["x-b3-spanid"], "0000000000001111");
        assert_eq!(h["x-b3-parentspanid"], "0000000000002222");
        assert_eq!(h["x-b3-sampled"], "1");
        assert_eq!(h["traceparent"], format!("00-{T128}-0000000000001111-01"));
        assert!(h.get("b3").is_none() && h.get("x-b3-flags").is_none());
        assert_eq!(h["tracestate"], "k=v", "tracestate passes through");
    }

    #[test]
    fn unsampled_calls_make_no_trace() {
        let client: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let now = Instant::now();
        assert!(CallTrace::start(Incoming { context: None, sampled: Some(false) }, client, now).is_none());
        let t = CallTrace::start(Incoming::default(), client, now).unwrap();
        assert!(t.trace.wide && t.parent.is_none());
    }
}
