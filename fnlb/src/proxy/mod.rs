//! The data path: forwards one client request to the node routing picks, streams both bodies,
//! and turns failures into the client's answer. A node that cannot be reached is not the
//! client's problem: the call moves on along the key's order while that is safe.
pub mod body;
pub mod h1;
pub mod headers;
pub mod pool;
pub mod rules;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use tracing::debug;

use crate::node::manager::NodesHandle;
use crate::node::Node;
use crate::route::{goduration::parse_go_duration_bytes, table::key_hash, Attempt, Policy};
use crate::telemetry::{call::CallObs, Observers};
use body::{ReqBody, RespBody, UpstreamBody};

/// Distinct nodes one call may be tried on before the client gets an error.
const MAX_NODES_TRIED: usize = 3;

pub struct Proxy {
    nodes: NodesHandle,
    policy: Box<dyn Policy>,
    connect_timeout: Duration,
    /// How long a node may take to start answering (None: no limit).
    upstream_timeout: Option<Duration>,
    /// Metrics, stats, traces and the access log hear about every call.
    obs: Arc<Observers>,
}

/// A short JSON answer made by the balancer itself: `{"msg": ...}`.
pub fn json_msg(status: StatusCode, msg: &str) -> Response<RespBody> {
    let body = serde_json::json!({ "msg": msg }).to_string();
    json_response(status, body)
}

pub fn json_response(status: StatusCode, body: String) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn no_nodes() -> Response<RespBody> {
    json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"msg":"no nodes available"}"#.to_string())
}

/// Safe to send twice (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE)
}

/// What to resend when a request failed after it was sent: only bodiless idempotent requests
/// can be rebuilt, since a streamed body is gone once sent.
struct Replay {
    method: Method,
    uri: Uri,
    headers: http::HeaderMap,
}

impl Proxy {
    pub fn new(nodes: NodesHandle, policy: Box<dyn Policy>, limits: &crate::config::Limits) -> Proxy {
        Proxy {
            nodes,
            policy,
            connect_timeout: limits.upstream_connect_timeout,
            upstream_timeout: limits.upstream_timeout,
            obs: Arc::new(Observers::default()),
        }
    }

    /// Reports every call to `obs` (shared with the management API, which reads it back).
    pub fn observed_by(mut self, obs: Arc<Observers>) -> Proxy {
        self.obs = obs;
        self
    }

    pub fn policy(&self) -> &dyn Policy {
        &*self.policy
    }

    pub async fn forward(&self, req: Request<Incoming>, client: SocketAddr) -> Response<RespBody> {
        let uri = req.uri().clone();
        let headers = req.headers();
        let lookup = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let mut obs = self.obs.start(req.method().clone(), uri.path(), lookup, client);
        let resp = self.forward_observed(req, client, &mut obs).await;
        obs.finish(resp.status());
        resp
    }

    async fn forward_observed(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
        obs: &mut CallObs<'_>,
    ) -> Response<RespBody> {
        let (mut parts, body) = req.into_parts();
        // Hook: the requests no node gets (CONNECT, bad Host, a loop), as on the fast path.
        if let Err(r) = rules::check_request(&parts.method, &parts.headers) {
            return rules::answer(r);
        }
        headers::request(&mut parts.headers, client.ip());
        // HTTP/2 names the host in `:authority` (now the URI's authority), usually without a
        // Host header: the HTTP/1.1 node gets it as Host (any userinfo left out).
        if parts.version == http::Version::HTTP_2 {
            headers::join_cookies(&mut parts.headers);
            let authority = parts.uri.authority().map(|a| a.as_str().rsplit('@').next().unwrap_or_default());
            if let Some(host) = authority.and_then(|a| HeaderValue::from_str(a).ok()) {
                parts.headers.insert(header::HOST, host);
            }
        }
        // Nodes want origin-form; a client talking to us as a proxy sends absolute-form.
        if parts.uri.authority().is_some() {
            let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            parts.uri = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
        }
        parts.version = http::Version::HTTP_11;
        let hash = key_hash(parts.uri.path().as_bytes());
        let snap = self.nodes.load_full();

        let mut replay = None;
        if idempotent(&parts.method) && body.is_end_stream() {
            replay =
                Some(Replay { method: parts.method.clone(), uri: parts.uri.clone(), headers: parts.headers.clone() });
        }
        let mut req = Some(Request::from_parts(parts, ReqBody::Stream(body)));
        let mut tried = [usize::MAX; MAX_NODES_TRIED];
        let mut n_tried = 0;
        let mut last_error = String::new();
        while n_tried < MAX_NODES_TRIED {
            let Some(attempt) = self.policy.pick(&snap, hash, &tried[..n_tried]) else {
                break;
            };
            let (i, node) = (attempt.index(), attempt.node());
            tried[n_tried] = i;
            n_tried += 1;
            obs.attempt();
            let call = node.start_call();
            let mut conn = match self.connection(node).await {
                Ok(c) => c,
                Err(error) => {
                    // Nothing was sent: the request is intact and can go to the next node.
                    debug!(node = %node.addr, %error, "cannot connect; trying the next node");
                    obs.connect_failed(node, &error);
                    last_error = error;
                    self.nodes.report_unreachable(node);
                    continue;
                }
            };
            let Some(mut r) = req.take() else { break };
            if r.headers().get(header::HOST).is_none() {
                if let Ok(host) = HeaderValue::from_str(node.addr.as_str()) {
                    r.headers_mut().insert(header::HOST, host);
                }
            }
            obs.sending(node, r.headers_mut());
            let sent = match self.upstream_timeout {
                None => conn.try_send_request(r).await,
                Some(limit) => match tokio::time::timeout(limit, conn.try_send_request(r)).await {
                    Ok(sent) => sent,
                    Err(_) => {
                        // Slow is not dead: the node is not skipped, and the call is not resent
                        // (it may be running). Dropping the connection cancels it upstream.
                        let msg = format!("node {} did not answer within {}s", node.addr, limit.as_secs_f64());
                        obs.send_failed(node, false, &msg);
                        return json_msg(StatusCode::GATEWAY_TIMEOUT, &msg);
                    }
                },
            };
            match sent {
                Ok(resp) => {
                    // Hook: a node answer that is not one to pass on (status, framing) is a 502.
                    if let Err(why) = rules::check_response(resp.status().as_u16(), resp.headers()) {
                        let error = format!("node {}: {why}", node.addr);
                        obs.send_failed(node, true, &error);
                        return json_msg(StatusCode::BAD_GATEWAY, &format!("invalid response from {error}"));
                    }
                    if snap.table().home(hash) != Some(i) {
                        // Served away from its home: full, down, or a retry moved it.
                        crate::metrics::spill(node);
                    }
                    return self.respond(resp, attempt, node, hash, conn, call, obs);
                }
                Err(mut e) => {
                    let error = pool_error(e.error());
                    if let Some(back) = e.take_message() {
                        // The connection closed before the request went out: resend it as is.
                        debug!(node = %node.addr, %error, "connection closed before sending; retrying");
                        obs.stale_connection();
                        req = Some(back);
                        n_tried -= 1;
                        continue;
                    }
                    last_error = format!("node {}: {error}", node.addr);
                    let invalid = e.error().is_parse() || e.error().is_parse_status();
                    obs.send_failed(node, invalid, &error);
                    if invalid {
                        // The node answered, but not HTTP: its answer is the error.
                        return json_msg(StatusCode::BAD_GATEWAY, &format!("invalid response from {last_error}"));
                    }
                    self.nodes.report_unreachable(node);
                    match &replay {
                        Some(rp) => {
                            let mut again = Request::new(ReqBody::Empty);
                            *again.method_mut() = rp.method.clone();
                            *again.uri_mut() = rp.uri.clone();
                            *again.headers_mut() = rp.headers.clone();
                            req = Some(again);
                        }
                        None => {
                            return json_msg(
                                StatusCode::BAD_GATEWAY,
                                &format!("{last_error} (request not retried: its body was sent)"),
                            );
                        }
                    }
                }
            }
        }
        if n_tried == 0 {
            return no_nodes();
        }
        json_msg(StatusCode::SERVICE_UNAVAILABLE, &format!("no node could be reached: {last_error}"))
    }

    /// A pooled connection that is ready, or a new one.
    async fn connection(&self, node: &Arc<Node>) -> Result<pool::Sender, String> {
        while let Some(mut c) = node.pool.take_idle() {
            if c.ready().await.is_ok() {
                return Ok(c);
            }
        }
        node.pool.connect(self.connect_timeout).await.map_err(|e| e.to_string())
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        resp: Response<Incoming>,
        attempt: Attempt<'_>,
        node: &Arc<Node>,
        hash: u64,
        conn: pool::Sender,
        call: crate::node::InFlight,
        obs: &mut CallObs<'_>,
    ) -> Response<RespBody> {
        let (mut parts, body) = resp.into_parts();
        let wait = headers::response(&mut parts.headers).and_then(|v| parse_go_duration_bytes(v.as_bytes()));
        if let Some(w) = wait {
            node.observe_wait(w);
        }
        attempt.answered(wait, parts.status);
        obs.answered(node, hash, parts.status, wait);
        Response::from_parts(parts, RespBody::Upstream(UpstreamBody::new(body, conn, call)))
    }
}

/// A hyper error with its cause, which hyper keeps in the source chain.
fn pool_error(e: &hyper::Error) -> String {
    crate::health::probe::error_chain(e)
}
