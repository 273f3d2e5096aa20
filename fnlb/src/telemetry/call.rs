//! What the proxy tells the observers about one call, at the moments that matter: a node is
//! picked ([`CallObs::attempt`]), a connection fails, the request is sent, it fails after sending,
//! the node answers, the call is answered. Each moment feeds the metrics, the stats, the trace
//! and the access log. Lean on purpose: without tracing and the access log a call costs two clock
//! reads, a few atomic adds, one histogram lock and one stats-shard lock, and no allocation.
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, StatusCode};
use tracing::info;

use super::trace::{self, CallTrace};
use super::Observers;
use crate::metrics::{self, Retry, Unserved, UpstreamError};
use crate::node::{Node, NodeAddr};

pub(crate) struct CallObs<'a> {
    obs: &'a Observers,
    start: Instant,
    method: Method,
    /// The request's path (the function).
    path: &'a str,
    trace: Option<Box<CallTrace>>,
    attempts: u32,
    /// Why the previous attempt did not get an answer; counted as a retry when another begins.
    failure: Option<Retry>,
    /// The node of the current attempt, once the request is being sent.
    node: Option<NodeAddr>,
    sent_at: Option<Instant>,
    wait: Option<Duration>,
}

impl Observers {
    /// Begins observing a call from its hyper request (the benchmark below; the proxy calls
    /// [`Observers::start`] with its own header lookup).
    #[cfg(test)]
    pub(crate) fn call<'a, B>(&'a self, req: &'a http::Request<B>, client: std::net::SocketAddr) -> CallObs<'a> {
        let headers = req.headers();
        self.start(
            req.method().clone(),
            req.uri().path(),
            |name| headers.get(name).and_then(|v| v.to_str().ok()),
            client,
            Instant::now(),
        )
    }

    /// Begins observing a call from its parts: method, path, a lookup of the caller's headers
    /// (read only when tracing is on), and when it arrived (the fast path: when its head's first
    /// bytes came, as nginx's `$request_time` counts; that is also when its deadline began).
    pub(crate) fn start<'a, 'h>(
        &'a self,
        method: Method,
        path: &'a str,
        header: impl Fn(&str) -> Option<&'h str>,
        client: std::net::SocketAddr,
        start: Instant,
    ) -> CallObs<'a> {
        let trace = match &self.tracer {
            Some(_) => CallTrace::start(trace::extract_with(header), client, start).map(Box::new),
            None => None,
        };
        CallObs {
            obs: self,
            start,
            method,
            path,
            trace,
            attempts: 0,
            failure: None,
            node: None,
            sent_at: None,
            wait: None,
        }
    }
}

impl CallObs<'_> {
    fn emit(&self, span: trace::Span) {
        if let Some(t) = &self.obs.tracer {
            t.emit(span);
        }
    }

    /// The policy picked a node for a new attempt.
    pub(crate) fn attempt(&mut self) {
        self.attempts += 1;
        if let Some(why) = self.failure.take() {
            metrics::get().retry(why);
        }
        if let Some(t) = &mut self.trace {
            t.attempt(Instant::now());
        }
    }

    /// An attempt on `node` failed. `kind`: the node's fault, counted against it (None: not the
    /// node's fault, nothing counted); `retry`: why the next attempt, if one is made, is made.
    /// The call engine ([`crate::proxy::call`]) decides both.
    pub(crate) fn failed(&mut self, node: &Node, kind: Option<UpstreamError>, retry: Option<Retry>, error: &str) {
        if let Some(kind) = kind {
            metrics::of(node).error(kind);
        }
        self.failure = retry;
        if let Some(t) = &self.trace {
            let now = Instant::now();
            let span = if kind == Some(UpstreamError::Connect) {
                t.route_span(now, &node.addr, self.attempts, Some(error))
            } else {
                t.upstream_span(now, &node.addr, None, Some(error))
            };
            self.emit(span);
        }
    }

    /// The request is about to go to the node: ends the `route` span and writes the trace context
    /// into the request's headers.
    pub(crate) fn sending(&mut self, node: &Node, headers: &mut HeaderMap) {
        let now = self.sending_to(node);
        if let Some(t) = &mut self.trace {
            t.send(now, headers);
        }
    }

    /// [`CallObs::sending`] for a head being written as bytes: appends the trace context's
    /// header lines to `out` (nothing when the call is not traced).
    /// Returns that instant: the shell's deadline for the answer may start there.
    pub(crate) fn sending_raw(&mut self, node: &Node, out: &mut Vec<u8>) -> Instant {
        let now = self.sending_to(node);
        if let Some(t) = &mut self.trace {
            t.send_raw(now, out);
        }
        now
    }

    /// Whether this call is traced: then the caller's trace context headers are replaced.
    pub(crate) fn is_traced(&self) -> bool {
        self.trace.is_some()
    }

    fn sending_to(&mut self, node: &Node) -> Instant {
        let now = Instant::now();
        if self.node.as_ref() != Some(&node.addr) {
            self.node = Some(node.addr.clone());
        }
        self.sent_at = Some(now);
        if let Some(t) = &self.trace {
            let route = t.route_span(now, &node.addr, self.attempts, None);
            if let Some(tr) = &self.obs.tracer {
                tr.emit(route);
            }
        }
        now
    }

    /// When the current attempt was written to its node.
    pub(crate) fn sent_at(&self) -> Option<Instant> {
        self.sent_at
    }

    /// The node answered with `status`, reporting `wait` (if it said one), `now`, `round_trip`
    /// after [`CallObs::sent_at`] (the engine needs it too, and works it out once). `hash` is
    /// the key's.
    pub(crate) fn answered(
        &mut self,
        node: &Node,
        hash: u64,
        status: StatusCode,
        wait: Option<Duration>,
        round_trip: Duration,
        now: Instant,
    ) {
        metrics::of(node).answered(status.as_u16(), round_trip, wait);
        self.obs.stats.record(node, hash, self.path, wait, status == StatusCode::SERVICE_UNAVAILABLE);
        self.wait = wait;
        if let Some(t) = &self.trace {
            self.emit(t.upstream_span(now, &node.addr, Some(status.as_u16()), None));
        }
    }

    /// The client left before its call was answered (499): counted against the call's node (if
    /// one was picked) in the metrics and the stats, then finished like any call.
    pub(crate) fn abandoned(self, node: Option<&Node>, hash: u64) {
        let status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
        if let Some(node) = node {
            metrics::of(node).abandoned(status.as_u16());
            self.obs.stats.record(node, hash, self.path, None, false);
        }
        self.finish(status, None);
    }

    /// The client's answer is ready (its body may still be streaming). `unserved`: why the
    /// balancer answered itself, when it did.
    pub(crate) fn finish(self, status: StatusCode, unserved: Option<Unserved>) {
        self.finish_at(status, unserved, Instant::now());
    }

    /// [`CallObs::finish`] at `now`, read once by a caller that needs it too. By reference, for
    /// the call engine's answer, which drops the observer in place right after: moving it out of
    /// its `Option` to finish it cost two copies of it (two `memcpy` calls a call).
    pub(crate) fn finish_at(&self, status: StatusCode, unserved: Option<Unserved>, now: Instant) {
        let elapsed = now.saturating_duration_since(self.start);
        metrics::get().finished(status.as_u16(), elapsed, unserved);
        let node = self.node.as_ref();
        if let Some(t) = &self.trace {
            self.emit(t.serve_span(now, self.method.as_str(), self.path, status.as_u16(), node));
        }
        if self.obs.access_log {
            // Milliseconds to the microsecond.
            let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
            info!(
                target: "fnlb::access",
                method = %self.method,
                path = %self.path,
                node = %node.map_or("-", |n| n.as_str()),
                status = status.as_u16(),
                duration_ms = ms(elapsed),
                wait_ms = self.wait.map(ms),
                "call"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use http::{Request, StatusCode};

    use crate::node::{Node, NodeAddr};
    use crate::telemetry::Observers;

    /// What observing one call costs on the data path, without and with tracing:
    /// `cargo test --release -p fnlb --lib observe_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn observe_cost() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let nodes: Vec<Arc<Node>> = (1..=3)
            .map(|i| Node::new(NodeAddr::parse(&format!("10.0.0.{i}:8080")).unwrap(), Default::default()))
            .collect();
        let paths: Vec<String> = (0..1000).map(|i| format!("/r/app/fn{i}")).collect();
        let reqs: Vec<Request<()>> = paths.iter().map(|p| Request::get(p.as_str()).body(()).unwrap()).collect();
        let client = "127.0.0.1:40000".parse().unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let traced = Observers {
            tracer: Some(crate::telemetry::zipkin::Tracer::spawn(&format!("http://{dead}/api/v2/spans")).unwrap()),
            ..Observers::default()
        };
        for (name, obs) in [("untraced", Observers::default()), ("traced", traced)] {
            let n = 1_000_000;
            let t = Instant::now();
            for i in 0..n {
                let req = &reqs[i % reqs.len()];
                let node = &nodes[i % 3];
                let mut call = obs.call(req, client);
                call.attempt();
                let mut headers = http::HeaderMap::new();
                call.sending(node, &mut headers);
                let (wait, round_trip) = (Some(Duration::from_micros(1500)), Duration::from_millis(2));
                call.answered(node, i as u64, StatusCode::OK, wait, round_trip, Instant::now());
                call.finish(StatusCode::OK, None);
            }
            let per = t.elapsed().as_nanos() as f64 / n as f64;
            println!("{name}: {per:.0} ns per call ({n} calls over 1000 functions and 3 nodes)");
        }
    }
}
