//! The management API (`/1/lb/*`): list, add and remove nodes, stats, the scale signal, the
//! dashboard, and the metrics (`/1/lb/metrics`; `/metrics` too on a management-only listener). It writes through the [`Store`] and tells the node manager; it never
//! touches routing state.
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use tracing::info;

use crate::answer::{json_msg, json_response, LocalBody};
use crate::discovery::{Store, StoreError};
use crate::metrics;
use crate::node::manager::NodesHandle;
use crate::node::NodeAddr;
use crate::stats::{self, scale};
use crate::telemetry::Observers;

/// A node request is `{"node":"host:port"}`: 64 KiB is far more than any honest one.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Who may change the node set: with a token, PUT and DELETE need `Authorization: Bearer TOKEN`.
#[derive(Clone, Default)]
pub(crate) struct Access {
    pub token: Option<String>,
    /// `-mgmt-max-body`.
    pub max_body: usize,
}

pub(crate) struct Mgmt {
    store: Arc<dyn Store>,
    nodes: NodesHandle,
    access: Access,
    obs: Arc<Observers>,
    capacity: scale::Capacity,
    /// The live balancer count (`None`: `capacity.balancers` as given).
    balancers: Option<crate::route::Balancers>,
    function_keys: Option<Arc<crate::discovery::fnapi::FunctionKeys>>,
    /// This balancer's own listening addresses: a node among them would be a loop.
    listeners: Vec<std::net::SocketAddr>,
    /// Late binding's queue (the proxy's), for its counters.
    waits: Option<crate::route::wait::WaitQueue<Arc<crate::node::Node>>>,
}

/// Paths the management API answers on a listener shared with traffic. Exact matches:
/// `/1/lb/nodes/` is a function path. `/metrics` is not one of them: Fn nodes serve their own
/// `/metrics`, and the original balancer proxied it like any other path; fnlb's own metrics are
/// at `/1/lb/metrics` there.
pub fn is_mgmt_path(path: &str) -> bool {
    matches!(path, "/1/lb/nodes" | "/1/lb/stats" | "/1/lb/dash" | "/1/lb/dash/data" | "/1/lb/cluster" | "/1/lb/metrics")
}

/// Paths a management-only listener answers: those of [`is_mgmt_path`], and `/metrics` (nothing
/// else could claim it there, and it is where Prometheus looks by default).
pub(crate) fn is_mgmt_only_path(path: &str) -> bool {
    is_mgmt_path(path) || path == "/metrics"
}

impl Mgmt {
    pub(crate) fn new(store: Arc<dyn Store>, nodes: NodesHandle) -> Mgmt {
        let capacity = scale::Capacity { per_node: 64, balancers: 1, counted_by: scale::CountedBy::Flag };
        let access = Access { token: None, max_body: MAX_BODY };
        Mgmt {
            store,
            nodes,
            access,
            obs: Arc::new(Observers::default()),
            capacity,
            balancers: None,
            function_keys: None,
            listeners: Vec::new(),
            waits: None,
        }
    }

    /// Reports late binding's queue (`/1/lb/cluster` `waiting`, `/metrics` `fnlb_wait*`).
    pub(crate) fn waiting_in(mut self, queue: Option<crate::route::wait::WaitQueue<Arc<crate::node::Node>>>) -> Mgmt {
        self.waits = queue;
        self
    }

    /// The balancer's own listeners, refused as nodes (every call would come back to us).
    pub(crate) fn listening_on(mut self, listeners: Vec<std::net::SocketAddr>) -> Mgmt {
        self.listeners = listeners;
        self
    }

    /// Requires the token (if any) on changes, and bounds request bodies.
    pub(crate) fn guarded(mut self, access: Access) -> Mgmt {
        self.access = access;
        self
    }

    /// Reads stats from `obs` (shared with the proxy) and judges load against `capacity`.
    pub(crate) fn observing(mut self, obs: Arc<Observers>, capacity: scale::Capacity) -> Mgmt {
        self.obs = obs;
        self.capacity = capacity;
        self
    }

    /// Judges load with the live balancer count, counted by `counted_by`.
    pub(crate) fn counting(mut self, balancers: crate::route::Balancers, counted_by: scale::CountedBy) -> Mgmt {
        self.balancers = Some(balancers);
        self.capacity.counted_by = counted_by;
        self
    }

    /// Shows the trigger-to-function map in `/1/lb/cluster`.
    pub(crate) fn keyed_by(mut self, keys: Arc<crate::discovery::fnapi::FunctionKeys>) -> Mgmt {
        self.function_keys = Some(keys);
        self
    }

    /// The capacity now: the live balancer count read at each answer.
    fn capacity(&self) -> scale::Capacity {
        let mut c = self.capacity;
        if let Some(b) = &self.balancers {
            c.balancers = b.get();
        }
        c
    }

    pub(crate) async fn handle(&self, req: Request<Incoming>) -> Response<LocalBody> {
        match req.uri().path() {
            "/1/lb/nodes" => match *req.method() {
                Method::GET => self.list(),
                Method::PUT => self.change(req, true).await,
                Method::DELETE => self.change(req, false).await,
                _ => not_allowed("GET, PUT, DELETE"),
            },
            "/1/lb/stats" => match *req.method() {
                Method::GET => json_response(StatusCode::OK, stats::stats_json(&self.obs.stats.drain())),
                _ => not_allowed("GET"),
            },
            "/1/lb/dash" => match *req.method() {
                Method::GET => dashboard(),
                _ => not_allowed("GET"),
            },
            "/1/lb/dash/data" => match *req.method() {
                Method::GET => self.dash_data(),
                _ => not_allowed("GET"),
            },
            "/1/lb/cluster" => match *req.method() {
                Method::GET => {
                    let mut c = self.cluster(&scale::nodes_now(&self.nodes.load()));
                    c.function_keys = self.function_keys.as_ref().map(|k| k.status());
                    c.waiting = self.waits.as_ref().map(|q| q.stats().counts());
                    json_response(StatusCode::OK, serde_json::to_string(&c).unwrap_or_default())
                }
                _ => not_allowed("GET"),
            },
            "/1/lb/metrics" | "/metrics" => match *req.method() {
                Method::GET => self.metrics(),
                _ => not_allowed("GET"),
            },
            _ => json_msg(StatusCode::NOT_FOUND, "unknown command"),
        }
    }

    fn cluster(&self, now: &[scale::NodeNow]) -> scale::Cluster {
        self.obs.stats.with_history(stats::time::now_micros(), |h| scale::cluster(h, now, self.capacity()))
    }

    fn dash_data(&self) -> Response<LocalBody> {
        let now = scale::nodes_now(&self.nodes.load());
        let body = self.obs.stats.with_history(stats::time::now_micros(), |h| {
            let mut c = scale::cluster(h, &now, self.capacity());
            c.waiting = self.waits.as_ref().map(|q| q.stats().counts());
            stats::dash::data(h, &now, &c).to_string()
        });
        let mut r = json_response(StatusCode::OK, body);
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    fn metrics(&self) -> Response<LocalBody> {
        let snap = self.nodes.load_full();
        let cluster = self.cluster(&scale::nodes_now(&snap));
        let text = metrics::render(&metrics::Live {
            snapshot: &snap,
            cluster: &cluster,
            stats_dropped: self.obs.stats.dropped(),
            spans: self.obs.tracer.as_ref().map(super::telemetry::zipkin::Tracer::counts),
            waits: self.waits.as_ref().map(|q| q.stats().counts()),
        });
        let mut r = Response::new(LocalBody::full(Bytes::from(text)));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE));
        r
    }

    /// Every node this balancer knows, online when its health checks pass now.
    fn list(&self) -> Response<LocalBody> {
        let snap = self.nodes.load();
        let mut nodes = serde_json::Map::with_capacity(snap.len());
        for (i, n) in snap.nodes().iter().enumerate() {
            let state = if snap.is_healthy(i) { "online" } else { "offline" };
            nodes.insert(n.addr.to_string(), state.into());
        }
        json_response(StatusCode::OK, serde_json::json!({ "nodes": nodes }).to_string())
    }

    async fn change(&self, req: Request<Incoming>, add: bool) -> Response<LocalBody> {
        if let Some(token) = &self.access.token {
            if !authorized(req.headers(), token) {
                let mut r = json_msg(StatusCode::UNAUTHORIZED, "changing nodes needs Authorization: Bearer <token>");
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
        }
        let node = match read_node(req, self.access.max_body).await {
            Ok(n) => n,
            Err(resp) => return resp,
        };
        if add {
            if let Err(why) = node.refuse_loop(&self.listeners) {
                return bad(&why);
            }
        }
        let result = if add { self.store.add(&node).await } else { self.store.remove(&node).await };
        match result {
            Ok(()) => {
                if add {
                    self.nodes.add(node.clone()).await;
                    info!(node = %node, "node added through the API");
                    json_msg(StatusCode::OK, "node added")
                } else {
                    self.nodes.remove(node.clone()).await;
                    info!(node = %node, "node deleted through the API");
                    json_msg(StatusCode::OK, "node deleted")
                }
            }
            Err(e @ StoreError::ReadOnly) => json_msg(StatusCode::CONFLICT, &e.to_string()),
            Err(e @ StoreError::Unavailable(_)) => json_msg(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }
}

fn not_allowed(allow: &'static str) -> Response<LocalBody> {
    let mut r = json_msg(StatusCode::METHOD_NOT_ALLOWED, &format!("method not allowed; use {allow}"));
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn bad(msg: &str) -> Response<LocalBody> {
    json_msg(StatusCode::BAD_REQUEST, msg)
}

/// Reads and validates `{"node":"host:port"}`, answering the client's mistake precisely.
async fn read_node(req: Request<Incoming>, max_body: usize) -> Result<NodeAddr, Response<LocalBody>> {
    let too_large = || json_msg(StatusCode::PAYLOAD_TOO_LARGE, &format!("body larger than {max_body} bytes"));
    // A declared length over the limit is refused before reading a byte of it.
    if req.body().size_hint().lower() > max_body as u64 {
        return Err(too_large());
    }
    let body: Bytes = match Limited::new(req.into_body(), max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => return Err(bad(&format!("cannot read body: {e}"))),
    };
    parse_node(&body).map_err(|m| bad(&m))
}

/// Whether the request carries `Authorization: Bearer <token>`. The comparison takes the same
/// time wherever the first difference is, so the token cannot be guessed byte by byte.
fn authorized(headers: &http::HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return false };
    let given = value.as_bytes();
    let Some(given) = given.strip_prefix(b"Bearer ").or_else(|| given.strip_prefix(b"bearer ")) else {
        return false;
    };
    constant_time_eq(given, token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is not secret (it shows in any timing of the request anyway); the bytes are.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body's node address, or what is wrong with the body.
pub fn parse_node(body: &[u8]) -> Result<NodeAddr, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(r#"empty body; send {"node":"host:port"}"#.into());
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = v.as_object().ok_or(r#"body must be a JSON object like {"node":"host:port"}"#)?;
    let node = obj.get("node").ok_or(r#"missing "node"; send {"node":"host:port"}"#)?;
    let s = node.as_str().ok_or(r#""node" must be a string like "host:port""#)?;
    if s.is_empty() {
        return Err(r#""node" must not be empty"#.into());
    }
    NodeAddr::parse(s).map_err(|e| e.to_string())
}

fn dashboard() -> Response<LocalBody> {
    let mut r = Response::new(LocalBody::full(Bytes::from_static(include_bytes!("dash.html"))));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    // Everything the page uses is in it; it may talk to this balancer only.
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        ),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_rejects_malformed_bodies() {
        for (body, want) in [
            ("", "empty body"),
            ("{", "invalid JSON"),
            ("[]", "JSON object"),
            ("{}", "missing \"node\""),
            (r#"{"node":1}"#, "must be a string"),
            (r#"{"node":""}"#, "must not be empty"),
            (r#"{"node":null}"#, "must be a string"),
        ] {
            let err = parse_node(body.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{body:?}: {err}");
        }
    }

    #[test]
    fn put_rejects_bad_addresses() {
        for body in [r#"{"node":"not a host"}"#, r#"{"node":"http://a:1"}"#, r#"{"node":"a:0"}"#, r#"{"node":"a"}"#] {
            assert!(parse_node(body.as_bytes()).is_err(), "{body} accepted");
        }
    }

    #[test]
    fn put_accepts_host_port() {
        assert_eq!(parse_node(br#"{"node":"127.0.0.1:9001"}"#).unwrap().as_str(), "127.0.0.1:9001");
        assert_eq!(parse_node(br#"{"node":"[::1]:9001"}"#).unwrap().as_str(), "[::1]:9001");
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        let mut h = http::HeaderMap::new();
        assert!(!authorized(&h, "s3cret"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(authorized(&h, "s3cret"));
        assert!(!authorized(&h, "s3cre"));
        assert!(!authorized(&h, "s3creT"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic s3cret"));
        assert!(!authorized(&h, "s3cret"));
    }

    #[test]
    fn only_exact_paths_are_management() {
        assert!(is_mgmt_path("/1/lb/nodes"));
        assert!(is_mgmt_path("/1/lb/cluster") && is_mgmt_path("/1/lb/metrics") && is_mgmt_path("/1/lb/dash/data"));
        // Fn nodes serve their own /metrics: on a shared listener it is a function path.
        assert!(!is_mgmt_path("/metrics"));
        assert!(is_mgmt_only_path("/metrics") && is_mgmt_only_path("/1/lb/metrics"));
        assert!(!is_mgmt_only_path("/metrics/") && !is_mgmt_path("/1/lb/metrics/"));
        assert!(!is_mgmt_path("/1/lb/nodes/"));
        assert!(!is_mgmt_path("/r/app/fn"));
    }
}
