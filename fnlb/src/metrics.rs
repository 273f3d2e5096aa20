//! Prometheus metrics (`GET /1/lb/metrics`; `/metrics` too on a separate management listener),
//! Prometheus text format 0.0.4, every name prefixed `fnlb_`. Counters and histograms live in one
//! process-wide [`Metrics`] that the data path updates through per-node handles (resolved once per
//! attempt, so a call costs a few atomic adds and one histogram lock); gauges about nodes, the
//! cluster, stats and tracing are read from their owners at scrape time. A node that leaves the
//! node set leaves the output at the next scrape, so labels stay bounded by membership.
//!
//! [`spill`] is for routing policies: call it when a call goes to a node other than its key's home.
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::node::{Node, NodeAddr, Snapshot};
use crate::stats::scale::{Cluster, Recommendation};

/// The `Content-Type` of `/metrics`.
pub(crate) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Seconds: 1 ms to 60 s, for call durations and reported waits (cold starts take seconds).
const BUCKETS: [f64; 15] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_index(status: u16) -> usize {
    (usize::from(status / 100)).clamp(1, 5) - 1
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeL {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeClassL {
    node: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeKindL {
    node: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonL {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassL {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateL {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecL {
    recommendation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeL {
    outcome: &'static str,
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Why a node failed a call; the `kind` label of `fnlb_upstream_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpstreamError {
    /// No connection could be made (refused, timed out).
    Connect,
    /// The connection broke after the request was sent, before an answer.
    Send,
    /// The node answered something that is not HTTP.
    InvalidResponse,
    /// The node did not start answering within -upstream-timeout.
    Timeout,
}

impl UpstreamError {
    fn index(self) -> usize {
        self as usize
    }
}

const ERROR_KINDS: [&str; 4] = ["connect", "send", "invalid_response", "timeout"];

/// Why a call moved on; the `reason` label of `fnlb_retries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// The previous node could not be connected to: the call goes to the next node.
    ConnectFailed,
    /// The previous node failed after the call was sent, and the call may be resent
    /// (`-retry-idempotent`, or `Idempotency-Key`) and the retry budget allowed it.
    SendFailed,
    /// A pooled connection closed before the request went out: resent on a new connection.
    StaleConnection,
}

const RETRY_REASONS: [&str; 3] = ["connect_failed", "send_failed", "stale_connection"];

/// Why the balancer answered a call itself; the `reason` label of `fnlb_unserved_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unserved {
    /// No healthy node (503).
    NoNodes,
    /// No node tried could be connected to: nothing ran (503).
    Unreachable,
    /// A node answered something that is not HTTP (502).
    BadGateway,
    /// The node failed after the call was sent to it: the call may have run, and was not sent
    /// again (502).
    NodeFailed,
    /// The node did not start answering in time (504).
    Timeout,
    /// A resend was refused by the retry budget (502).
    Budget,
    /// Late binding could not place the call in time, or its queue was full (503 + Retry-After).
    Saturated,
}

const UNSERVED_REASONS: [&str; 7] =
    ["no_nodes", "unreachable", "bad_gateway", "node_failed", "timeout", "budget", "saturated"];

/// The metric handles of one node, resolved once and shared.
pub(crate) struct NodeMetrics {
    requests: [Counter; 5],
    upstream: Histogram,
    reported_wait: Histogram,
    errors: [Counter; 4],
    spills: Counter,
}

impl NodeMetrics {
    /// A node answered with this status after this round trip, reporting this wait.
    pub(crate) fn answered(&self, status: u16, round_trip: Duration, wait: Option<Duration>) {
        self.requests[class_index(status)].inc();
        self.upstream.observe(round_trip.as_secs_f64());
        if let Some(w) = wait {
            self.reported_wait.observe(w.as_secs_f64());
        }
    }

    /// A call counted under this node without an answer of the node's: the client left (499).
    pub(crate) fn abandoned(&self, status: u16) {
        self.requests[class_index(status)].inc();
    }

    pub(crate) fn error(&self, kind: UpstreamError) {
        self.errors[kind.index()].inc();
    }

    pub(crate) fn spill(&self) {
        self.spills.inc();
    }

    #[cfg(test)]
    pub(crate) fn errors_snapshot(&self) -> [u64; 4] {
        self.errors.each_ref().map(prometheus_client::metrics::counter::Counter::get)
    }
}

pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<NodeClassL, Counter>,
    upstream: HistFamily<NodeL>,
    reported_wait: HistFamily<NodeL>,
    errors: Family<NodeKindL, Counter>,
    spills: Family<NodeL, Counter>,
    retries: [Counter; 3],
    unserved: [Counter; 7],
    duration: [Histogram; 5],
    nodes: RwLock<HashMap<NodeAddr, Arc<NodeMetrics>>>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics.
pub(crate) fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// Counts a spill: a call served by `node` although its key's home is another node (the home
/// was loaded or down). For routing policies; cheap (the node's attached handles and an atomic add).
pub(crate) fn spill(node: &Node) {
    of(node).spill();
}

/// The metric handles of `node`, found once per node (attached to it) rather than in the map
/// at each call: the map's lock and hash were a tenth of a call's instructions.
pub(crate) fn of(node: &Node) -> &NodeMetrics {
    node.attached.get_or_init(|| get().node(&node.addr))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fnlb");
        let requests = Family::<NodeClassL, Counter>::default();
        registry.register(
            "requests",
            "Calls a node answered, by node and status class (4xx includes 499: the client left first)",
            requests.clone(),
        );
        let upstream: HistFamily<NodeL> = Family::new_with_constructor(histogram);
        registry.register(
            "upstream_duration_seconds",
            "Round trip to a node: request sent to response headers, by node",
            upstream.clone(),
        );
        let reported_wait: HistFamily<NodeL> = Family::new_with_constructor(histogram);
        registry.register(
            "reported_wait_seconds",
            "Queue wait (cold start included) nodes reported in XXX-FXLB-WAIT, by node",
            reported_wait.clone(),
        );
        let errors = Family::<NodeKindL, Counter>::default();
        registry.register(
            "upstream_errors",
            "Attempts a node failed: connect, send (broke after sending), invalid_response or timeout",
            errors.clone(),
        );
        let spills = Family::<NodeL, Counter>::default();
        registry.register(
            "spills",
            "Calls served by a node other than their key's home, by serving node",
            spills.clone(),
        );

        let retries = Family::<ReasonL, Counter>::default();
        registry.register("retries", "Calls moved to another attempt, by reason", retries.clone());
        let unserved = Family::<ReasonL, Counter>::default();
        registry.register(
            "unserved_requests",
            "Calls the balancer answered itself because no node could (no_nodes, unreachable, bad_gateway, node_failed, timeout, budget)",
            unserved.clone(),
        );
        let duration: HistFamily<ClassL> = Family::new_with_constructor(histogram);
        registry.register(
            "request_duration_seconds",
            "Time from a call's arrival to its response headers, by status class (balancer answers included)",
            duration.clone(),
        );
        Metrics {
            registry,
            requests,
            upstream,
            reported_wait,
            errors,
            spills,
            retries: RETRY_REASONS.map(|reason| retries.get_or_create(&ReasonL { reason }).clone()),
            unserved: UNSERVED_REASONS.map(|reason| unserved.get_or_create(&ReasonL { reason }).clone()),
            duration: CLASSES.map(|class| duration.get_or_create(&ClassL { class }).clone()),
            nodes: RwLock::new(HashMap::new()),
        }
    }

    /// The handles of one node (created at its first call).
    pub(crate) fn node(&self, addr: &NodeAddr) -> Arc<NodeMetrics> {
        if let Some(m) = self.nodes.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(addr.as_str()) {
            return m.clone();
        }
        let node = addr.to_string();
        let m = Arc::new(NodeMetrics {
            requests: CLASSES
                .map(|class| self.requests.get_or_create(&NodeClassL { node: node.clone(), class }).clone()),
            upstream: self.upstream.get_or_create(&NodeL { node: node.clone() }).clone(),
            reported_wait: self.reported_wait.get_or_create(&NodeL { node: node.clone() }).clone(),
            errors: ERROR_KINDS.map(|kind| self.errors.get_or_create(&NodeKindL { node: node.clone(), kind }).clone()),
            spills: self.spills.get_or_create(&NodeL { node }).clone(),
        });
        self.nodes.write().unwrap_or_else(std::sync::PoisonError::into_inner).entry(addr.clone()).or_insert(m).clone()
    }

    pub(crate) fn retry(&self, why: Retry) {
        self.retries[why as usize].inc();
    }

    /// One call is answered (by a node or by the balancer) after `elapsed`.
    pub(crate) fn finished(&self, status: u16, elapsed: Duration, unserved: Option<Unserved>) {
        self.duration[class_index(status)].observe(elapsed.as_secs_f64());
        if let Some(u) = unserved {
            self.unserved[u as usize].inc();
        }
    }

    /// Forgets the series of nodes that are no longer in the node set.
    fn prune(&self, live: &HashSet<&str>) {
        let mut nodes = self.nodes.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let gone: Vec<NodeAddr> = nodes.keys().filter(|a| !live.contains(a.as_str())).cloned().collect();
        for addr in gone {
            nodes.remove(&addr);
            let node = addr.to_string();
            for class in CLASSES {
                self.requests.remove(&NodeClassL { node: node.clone(), class });
            }
            for kind in ERROR_KINDS {
                self.errors.remove(&NodeKindL { node: node.clone(), kind });
            }
            self.upstream.remove(&NodeL { node: node.clone() });
            self.reported_wait.remove(&NodeL { node: node.clone() });
            self.spills.remove(&NodeL { node });
        }
    }
}

/// What `/metrics` reads from the rest of the balancer at scrape time.
pub(crate) struct Live<'a> {
    pub snapshot: &'a Snapshot,
    pub cluster: &'a Cluster,
    pub stats_dropped: crate::stats::Dropped,
    /// `None` when tracing is off.
    pub spans: Option<crate::telemetry::zipkin::SpanCounts>,
    /// Late binding's counters; `None` when it is off.
    pub waits: Option<crate::route::wait::WaitCounts>,
}

/// The whole `/metrics` page.
pub(crate) fn render(live: &Live<'_>) -> String {
    let m = get();
    let snap = live.snapshot;
    let addrs: HashSet<&str> = snap.nodes().iter().map(|n| n.addr.as_str()).collect();
    m.prune(&addrs);

    let mut out = String::with_capacity(16 * 1024);
    let _ = prometheus_text::encode(&mut out, &m.registry);
    let _ = prometheus_text::encode(&mut out, &scrape_registry(live));
    if !out.ends_with('\n') {
        let _ = writeln!(out);
    }
    out
}

fn scrape_registry(live: &Live<'_>) -> Registry {
    let snap = live.snapshot;
    let c = live.cluster;
    let mut r = Registry::with_prefix("fnlb");
    let gauge_f = || Family::<NodeL, Gauge<f64, AtomicU64>>::default();
    let (healthy, suspect, in_flight, wait, util) = (gauge_f(), gauge_f(), gauge_f(), gauge_f(), gauge_f());
    let utilisation: HashMap<&str, f64> = c.nodes.iter().map(|n| (n.node.as_str(), n.utilisation)).collect();
    for (i, n) in snap.nodes().iter().enumerate() {
        let l = NodeL { node: n.addr.to_string() };
        healthy.get_or_create(&l).set(if snap.is_healthy(i) { 1.0 } else { 0.0 });
        suspect.get_or_create(&l).set(if n.is_suspect() { 1.0 } else { 0.0 });
        in_flight.get_or_create(&l).set(f64::from(n.in_flight()));
        wait.get_or_create(&l).set(n.wait().as_secs_f64());
        util.get_or_create(&l).set(utilisation.get(n.addr.as_str()).copied().unwrap_or(0.0));
    }
    r.register("node_healthy", "1 when the node's health checks pass", healthy);
    r.register("node_suspect", "1 when the proxy failed to reach the node since its last passing check", suspect);
    r.register("node_in_flight", "Calls in flight on the node now", in_flight);
    r.register("node_wait_seconds", "The node's decayed mean of the waits it reported", wait);
    r.register(
        "node_utilisation",
        "Mean calls in flight on the node over the scale window, divided by --node-capacity",
        util,
    );
    let nodes = Family::<StateL, Gauge>::default();
    nodes.get_or_create(&StateL { state: "online" }).set(snap.healthy_count() as i64);
    nodes.get_or_create(&StateL { state: "offline" }).set((snap.len() - snap.healthy_count()) as i64);
    r.register("nodes", "Stored nodes by health", nodes);

    let gauge = |v: f64| {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(v);
        g
    };
    r.register(
        "cluster_utilisation",
        "Calls in flight over the scale window divided by healthy nodes × --node-capacity",
        gauge(c.utilisation),
    );
    r.register(
        "cluster_utilisation_p95",
        "95th percentile of the per-second cluster utilisation over the scale window",
        gauge(c.utilisation_p95),
    );
    r.register("cluster_busy_ratio", "Share of calls nodes answered 503 over the scale window", gauge(c.busy_ratio));
    r.register("cluster_wait_seconds", "Mean reported wait over the scale window", gauge(c.wait.mean));
    r.register("cluster_suggested_nodes", "Healthy nodes the scale signal calls for", gauge(c.suggested_nodes as f64));
    let rec = Family::<RecL, Gauge>::default();
    for x in [Recommendation::ScaleOut, Recommendation::ScaleIn, Recommendation::Steady] {
        rec.get_or_create(&RecL { recommendation: x.as_str() }).set(i64::from(c.recommendation == x));
    }
    r.register("cluster_recommendation", "The scale signal: 1 for the current recommendation", rec);

    let dropped = Family::<ReasonL, Counter>::default();
    dropped.get_or_create(&ReasonL { reason: "overflow" }).inc_by(live.stats_dropped.overflow_calls);
    dropped.get_or_create(&ReasonL { reason: "unread" }).inc_by(live.stats_dropped.unread_entries);
    r.register(
        "stats_dropped",
        "Stats bounds at work: calls pooled under (other) in a full window; window entries never read",
        dropped,
    );
    if let Some(w) = live.waits {
        let waits = Family::<OutcomeL, Counter>::default();
        waits.get_or_create(&OutcomeL { outcome: "handed_warm" }).inc_by(w.handed_warm);
        waits.get_or_create(&OutcomeL { outcome: "handed_room" }).inc_by(w.handed_room);
        waits.get_or_create(&OutcomeL { outcome: "went_cold" }).inc_by(w.went_cold);
        waits.get_or_create(&OutcomeL { outcome: "gave_up" }).inc_by(w.gave_up);
        waits.get_or_create(&OutcomeL { outcome: "left" }).inc_by(w.left);
        r.register(
            "wait_outcomes",
            "How waits at the balancer ended: handed a container of their function, a node with room, cold at their deadline, refused, client left",
            waits,
        );
        let total = Counter::<u64>::default();
        total.inc_by(w.waits);
        r.register("waits", "Calls that waited at the balancer (late binding)", total);
        let gave_up = Counter::<u64>::default();
        gave_up.inc_by(w.gave_up + w.refused_full);
        r.register(
            "wait_gave_up",
            "Calls late binding refused with 503 and Retry-After (after waiting, or the queue was full)",
            gave_up,
        );
        let secs = Counter::<f64, AtomicU64>::default();
        secs.inc_by(w.waited_ms as f64 / 1000.0);
        r.register("wait_seconds", "Time calls waited at the balancer before they were placed", secs);
        let now = Gauge::<i64>::default();
        now.set(w.now as i64);
        r.register("waiting", "Calls waiting at the balancer now", now);
    }
    if let Some(s) = live.spans {
        let spans = Family::<OutcomeL, Counter>::default();
        spans.get_or_create(&OutcomeL { outcome: "exported" }).inc_by(s.exported);
        spans.get_or_create(&OutcomeL { outcome: "queue_full" }).inc_by(s.queue_full);
        spans.get_or_create(&OutcomeL { outcome: "export_failed" }).inc_by(s.export_failed);
        r.register(
            "trace_spans",
            "Zipkin spans: exported, or dropped because the queue was full or the collector failed",
            spans,
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_handles_are_shared_and_pruned() {
        let addr = NodeAddr::parse("metrics-test-node:1").unwrap();
        let a = get().node(&addr);
        let b = get().node(&addr);
        assert!(Arc::ptr_eq(&a, &b));
        a.answered(204, Duration::from_millis(3), Some(Duration::from_millis(1)));
        let mut out = String::new();
        prometheus_text::encode(&mut out, &get().registry).unwrap();
        assert!(out.contains(r#"fnlb_requests_total{node="metrics-test-node:1",class="2xx"} 1"#), "{out}");
        get().prune(&HashSet::new());
        let mut out = String::new();
        prometheus_text::encode(&mut out, &get().registry).unwrap();
        assert!(!out.contains("metrics-test-node:1"), "{out}");
    }
}
