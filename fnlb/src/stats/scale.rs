//! The scale signal: from the last minute of history and the nodes now, how loaded the cluster
//! is, and whether to add Fn servers (`scale_out`), remove one (`scale_in`) or leave it (`steady`),
//! with the reason and the figures behind it. Pure: the same history gives the same answer.
//! docs/OPERATIONS.md explains the rule to operators; keep the two in step.
use std::time::Duration;

use serde::Serialize;

use super::history::{History, Second};
use crate::node::{NodeAddr, Snapshot};

/// Seconds of history the signal looks at.
pub(crate) const WINDOW_SECS: usize = 60;
/// Utilisation (mean over the window) at or above which more nodes are needed.
pub(crate) const OUT_UTILISATION: f64 = 0.80;
/// A node may go when, without it, the 95th-percentile utilisation stays below this.
pub(crate) const IN_UTILISATION: f64 = 0.50;
/// What `suggested_nodes` aims for: between the two thresholds, so it does not flap.
pub(crate) const TARGET_UTILISATION: f64 = 0.60;
/// Share of calls answered 503 (Fn's "too busy") at or above which more nodes are needed...
pub(crate) const OUT_BUSY_RATIO: f64 = 0.01;
/// ...once at least this many were.
pub(crate) const OUT_BUSY_MIN: u64 = 5;
/// Mean reported wait (last half window, seconds) at or above which more nodes are needed...
pub(crate) const OUT_WAIT_SECS: f64 = 1.0;
/// ...once at least this many calls reported a wait.
pub(crate) const WAIT_MIN_CALLS: u64 = 10;
/// Scale in only while the mean reported wait stays below this (seconds).
pub(crate) const IN_WAIT_SECS: f64 = 0.1;

/// How many calls a node runs well, and how much of that is this balancer's: with `balancers`
/// balancers sharing the nodes, each sees only its own calls, so it counts on 1/`balancers` of a
/// node. `balancers` is the count at the moment of asking: the `-balancers` flag, or the live
/// count (`route::Balancers`, read anew for every answer by the management API).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Capacity {
    pub per_node: u32,
    pub balancers: u32,
    pub counted_by: CountedBy,
}

/// Who sets the balancer count, as `/1/lb/cluster` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CountedBy {
    /// `-balancers N` (or its default, 1, where nothing counts).
    Flag,
    /// Heartbeat rows in the shared SQL store (`lb_balancers`).
    Heartbeats,
    /// Ready pods of `-balancer-selector` (Kubernetes).
    Pods,
}

impl Capacity {
    /// Concurrent calls of one node this balancer may count on.
    pub(crate) fn share(self) -> f64 {
        f64::from(self.per_node.max(1)) / f64::from(self.balancers.max(1))
    }
}

/// One node as it is now, as the balancer sees it.
#[derive(Clone, Debug)]
pub(crate) struct NodeNow {
    pub addr: NodeAddr,
    pub healthy: bool,
    pub suspect: bool,
    pub in_flight: u32,
    /// The node's decayed mean of its reported waits.
    pub reported_wait: Duration,
}

pub(crate) fn nodes_now(snap: &Snapshot) -> Vec<NodeNow> {
    snap.nodes()
        .iter()
        .enumerate()
        .map(|(i, n)| NodeNow {
            addr: n.addr.clone(),
            healthy: snap.is_healthy(i),
            suspect: n.is_suspect(),
            in_flight: n.in_flight(),
            reported_wait: n.wait(),
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Recommendation {
    ScaleOut,
    ScaleIn,
    Steady,
}

impl Recommendation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Recommendation::ScaleOut => "scale_out",
            Recommendation::ScaleIn => "scale_in",
            Recommendation::Steady => "steady",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Cluster {
    pub recommendation: Recommendation,
    pub reason: String,
    /// Healthy nodes the figures call for (the current count when steady).
    pub suggested_nodes: usize,
    /// Seconds of history the figures cover (up to [`WINDOW_SECS`]).
    pub window_seconds: usize,
    /// Concurrent calls one node is taken to handle (`-node-capacity`).
    pub node_capacity: u32,
    /// Balancers sharing the nodes; this one counts on `node_capacity / balancers`.
    pub balancers: u32,
    /// Where that count comes from: `flag`, `heartbeats` or `pods`.
    pub balancers_counted_by: CountedBy,
    /// The trigger-to-function map the routing keys come from (set by the management API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_keys: Option<crate::discovery::fnapi::Status>,
    /// Late binding's queue (set by the management API; absent with `-late-binding=false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<crate::route::wait::WaitCounts>,
    pub nodes_stored: usize,
    pub nodes_healthy: usize,
    pub calls_per_second: f64,
    /// Mean calls in flight over the window, all nodes.
    pub in_flight: f64,
    /// Mean over the window of calls in flight ÷ (healthy nodes × capacity share).
    pub utilisation: f64,
    /// 95th percentile of the per-second utilisation over the window.
    pub utilisation_p95: f64,
    /// Share of calls the nodes answered 503 (busy).
    pub busy_ratio: f64,
    pub wait: WaitTrend,
    pub nodes: Vec<NodeLoad>,
    pub thresholds: Thresholds,
}

/// Mean reported waits, in seconds, over the whole window and its two halves.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct WaitTrend {
    pub mean: f64,
    pub recent: f64,
    pub previous: f64,
    /// `rising`, `falling`, `flat`, or `unknown` (too few calls to tell).
    pub trend: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct NodeLoad {
    pub node: String,
    pub healthy: bool,
    pub suspect: bool,
    pub in_flight: u32,
    pub in_flight_avg: f64,
    /// Mean calls in flight over the window ÷ capacity share.
    pub utilisation: f64,
    pub calls_per_second: f64,
    pub busy_ratio: f64,
    pub wait: WaitTrend,
    /// The node's decayed mean of the waits it reported, now.
    pub reported_wait: f64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Thresholds {
    pub scale_out_utilisation: f64,
    pub scale_in_utilisation: f64,
    pub target_utilisation: f64,
    pub scale_out_busy_ratio: f64,
    pub scale_out_wait_seconds: f64,
    pub scale_in_wait_seconds: f64,
}

const THRESHOLDS: Thresholds = Thresholds {
    scale_out_utilisation: OUT_UTILISATION,
    scale_in_utilisation: IN_UTILISATION,
    target_utilisation: TARGET_UTILISATION,
    scale_out_busy_ratio: OUT_BUSY_RATIO,
    scale_out_wait_seconds: OUT_WAIT_SECS,
    scale_in_wait_seconds: IN_WAIT_SECS,
};

/// Calls-weighted mean wait of a run of seconds, and how many calls reported one.
#[derive(Default, Clone, Copy)]
struct WaitAcc {
    sum_us: u64,
    n: u64,
}

impl WaitAcc {
    fn add(&mut self, sum_us: u64, n: u32) {
        self.sum_us += sum_us;
        self.n += u64::from(n);
    }

    fn mean(self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.n as f64 / 1e6
        }
    }
}

fn trend(recent: WaitAcc, previous: WaitAcc) -> WaitTrend {
    let (r, p) = (recent.mean(), previous.mean());
    let trend = if recent.n < WAIT_MIN_CALLS || previous.n < WAIT_MIN_CALLS {
        "unknown"
    } else if r > p * 1.5 && r - p > 0.05 {
        "rising"
    } else if r < p / 1.5 && p - r > 0.05 {
        "falling"
    } else {
        "flat"
    };
    let all = WaitAcc { sum_us: recent.sum_us + previous.sum_us, n: recent.n + previous.n };
    WaitTrend { mean: round(all.mean()), recent: round(r), previous: round(p), trend }
}

fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The signal over the newest [`WINDOW_SECS`] seconds of `history` and the nodes now.
pub(crate) fn cluster(history: &History, now: &[NodeNow], capacity: Capacity) -> Cluster {
    let window: Vec<&Second> = history.last(WINDOW_SECS).collect();
    let secs = window.len();
    let half = secs / 2;
    let cap = capacity.share();
    let healthy = now.iter().filter(|n| n.healthy).count();

    let mut calls = 0u64;
    let mut busy = 0u64;
    let (mut w_recent, mut w_prev) = (WaitAcc::default(), WaitAcc::default());
    let mut inflight_total = 0.0;
    let mut per_second_util = Vec::with_capacity(secs);
    for (i, s) in window.iter().enumerate() {
        let load: f64 = s.nodes.iter().map(super::history::NodeSec::in_flight).sum();
        inflight_total += load;
        if healthy > 0 {
            per_second_util.push(load / (healthy as f64 * cap));
        }
        for n in &s.nodes {
            calls += u64::from(n.calls);
            busy += u64::from(n.busy);
            if i >= half {
                w_recent.add(n.wait_sum_us, n.wait_n);
            } else {
                w_prev.add(n.wait_sum_us, n.wait_n);
            }
        }
    }
    let per_sec = |x: f64| if secs == 0 { 0.0 } else { x / secs as f64 };
    let in_flight = per_sec(inflight_total);
    let utilisation = if healthy == 0 { 0.0 } else { in_flight / (healthy as f64 * cap) };
    let p95 = percentile(per_second_util, 0.95);
    let busy_ratio = if calls == 0 { 0.0 } else { busy as f64 / calls as f64 };
    let wait = trend(w_recent, w_prev);

    let nodes = node_loads(&window, now, cap, half);
    // Healthy nodes that would carry the 95th-percentile load at the target utilisation.
    let needed = ((p95 * healthy as f64 / TARGET_UTILISATION).ceil() as usize).max(1);

    // The 95th-percentile utilisation if one healthy node went.
    let without_one = if healthy >= 2 { p95 * healthy as f64 / (healthy - 1) as f64 } else { f64::INFINITY };
    let pct = |x: f64| format!("{:.0}%", x * 100.0);
    let (recommendation, reason, suggested) = if now.is_empty() {
        (Recommendation::ScaleOut, "no nodes: add Fn servers".to_string(), 1)
    } else if healthy == 0 {
        (Recommendation::ScaleOut, format!("no healthy node among {} stored", now.len()), needed)
    } else if busy >= OUT_BUSY_MIN && busy_ratio >= OUT_BUSY_RATIO {
        let why = format!(
            "nodes answered 503 (too busy) to {} of calls over the last {secs} s (threshold {})",
            pct(busy_ratio),
            pct(OUT_BUSY_RATIO)
        );
        (Recommendation::ScaleOut, why, needed.max(healthy + 1))
    } else if utilisation >= OUT_UTILISATION {
        let why = format!(
            "utilisation {} over the last {secs} s is at or above {} ({:.1} calls in flight for {healthy} \
             nodes of {cap:.0})",
            pct(utilisation),
            pct(OUT_UTILISATION),
            in_flight
        );
        (Recommendation::ScaleOut, why, needed.max(healthy + 1))
    } else if w_recent.n >= WAIT_MIN_CALLS && wait.recent >= OUT_WAIT_SECS && wait.trend != "falling" {
        let why = format!(
            "mean reported wait {:.3} s over the last {} s is at or above {OUT_WAIT_SECS} s",
            wait.recent,
            secs - half
        );
        (Recommendation::ScaleOut, why, needed.max(healthy + 1))
    } else if secs < WINDOW_SECS {
        (Recommendation::Steady, format!("observing: {secs} of {WINDOW_SECS} s seen"), healthy)
    } else if healthy >= 2 && without_one <= IN_UTILISATION && busy == 0 && wait.mean < IN_WAIT_SECS {
        let why = format!(
            "95th-percentile utilisation {} would be {} with one node fewer (threshold {}); no busy \
             answers; mean wait {:.3} s",
            pct(p95),
            pct(without_one),
            pct(IN_UTILISATION),
            wait.mean
        );
        (Recommendation::ScaleIn, why, needed.clamp(1, healthy - 1))
    } else {
        let under = format!("utilisation {} is under {}", pct(utilisation), pct(OUT_UTILISATION));
        let why = if healthy < 2 {
            format!("{under} on the only healthy node")
        } else if without_one > IN_UTILISATION {
            format!(
                "{under}; with one node fewer the 95th percentile would be {} (over {})",
                pct(without_one),
                pct(IN_UTILISATION)
            )
        } else if busy > 0 {
            format!("{under}, but nodes answered {busy} calls 503 (busy) in the last {secs} s")
        } else {
            format!("{under}, but the mean reported wait {:.3} s is not under {IN_WAIT_SECS} s", wait.mean)
        };
        (Recommendation::Steady, why, healthy)
    };

    Cluster {
        recommendation,
        reason,
        suggested_nodes: suggested,
        window_seconds: secs,
        node_capacity: capacity.per_node,
        balancers: capacity.balancers,
        balancers_counted_by: capacity.counted_by,
        function_keys: None,
        waiting: None,
        nodes_stored: now.len(),
        nodes_healthy: healthy,
        calls_per_second: round(per_sec(calls as f64)),
        in_flight: round(in_flight),
        utilisation: round(utilisation),
        utilisation_p95: round(p95),
        busy_ratio: round(busy_ratio),
        wait,
        nodes,
        thresholds: THRESHOLDS,
    }
}

fn node_loads(window: &[&Second], now: &[NodeNow], cap: f64, half: usize) -> Vec<NodeLoad> {
    let secs = window.len().max(1) as f64;
    now.iter()
        .map(|n| {
            let (mut calls, mut busy, mut inflight) = (0u64, 0u64, 0.0);
            let (mut recent, mut prev) = (WaitAcc::default(), WaitAcc::default());
            for (i, s) in window.iter().enumerate() {
                if let Ok(k) = s.nodes.binary_search_by(|x| x.addr.cmp(&n.addr)) {
                    let ns = &s.nodes[k];
                    calls += u64::from(ns.calls);
                    busy += u64::from(ns.busy);
                    inflight += ns.in_flight();
                    if i >= half {
                        recent.add(ns.wait_sum_us, ns.wait_n);
                    } else {
                        prev.add(ns.wait_sum_us, ns.wait_n);
                    }
                }
            }
            let avg = inflight / secs;
            NodeLoad {
                node: n.addr.to_string(),
                healthy: n.healthy,
                suspect: n.suspect,
                in_flight: n.in_flight,
                in_flight_avg: round(avg),
                utilisation: round(avg / cap),
                calls_per_second: round(calls as f64 / secs),
                busy_ratio: if calls == 0 { 0.0 } else { round(busy as f64 / calls as f64) },
                wait: trend(recent, prev),
                reported_wait: round(n.reported_wait.as_secs_f64()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    const T0: u64 = 1_700_000_000_000_000;

    fn node(addr: &str, healthy: bool) -> NodeNow {
        NodeNow {
            addr: NodeAddr::parse(addr).unwrap(),
            healthy,
            suspect: false,
            in_flight: 0,
            reported_wait: Duration::ZERO,
        }
    }

    /// `secs` seconds where each node has `inflight` calls in flight, `calls` calls a second with
    /// this wait, `busy` of them answered 503.
    fn history(secs: u64, nodes: &[&str], inflight: u32, calls: u32, wait_ms: u64, busy: u32) -> Stats {
        let st = Stats::new();
        let arcs: Vec<_> =
            nodes.iter().map(|a| crate::node::Node::new(NodeAddr::parse(a).unwrap(), Default::default())).collect();
        for s in 0..secs {
            let t = T0 + s * 1_000_000;
            let sample: Vec<(NodeAddr, u32)> = arcs.iter().map(|n| (n.addr.clone(), inflight)).collect();
            st.tick(t, &sample);
            for n in &arcs {
                for c in 0..calls {
                    let w = Some(Duration::from_millis(wait_ms));
                    st.record_at(t + 1 + u64::from(c), n, 7, "/r/a/f", w, c < busy);
                }
            }
        }
        st.tick(T0 + secs * 1_000_000, &[]);
        st
    }

    fn signal(st: &Stats, now: &[NodeNow], cap: u32) -> Cluster {
        // Read at the last tick's time: later reads would add idle seconds.
        st.with_history(0, |h| cluster(h, now, Capacity { per_node: cap, balancers: 1, counted_by: CountedBy::Flag }))
    }

    #[test]
    fn busy_nodes_call_for_more() {
        let st = history(60, &["a:1", "b:1"], 56, 10, 5, 0);
        let c = signal(&st, &[node("a:1", true), node("b:1", true)], 64);
        assert_eq!(c.recommendation, Recommendation::ScaleOut, "{c:?}");
        assert!((c.utilisation - 56.0 / 64.0).abs() < 1e-6);
        // 112 calls in flight at 60 % of 64 per node: 3 nodes.
        assert_eq!(c.suggested_nodes, 3);
        assert_eq!(c.calls_per_second, 20.0);
    }

    #[test]
    fn idle_nodes_can_go() {
        let st = history(60, &["a:1", "b:1", "c:1"], 2, 5, 3, 0);
        let c = signal(&st, &[node("a:1", true), node("b:1", true), node("c:1", true)], 64);
        assert_eq!(c.recommendation, Recommendation::ScaleIn, "{c:?}");
        assert_eq!(c.suggested_nodes, 1);
        assert_eq!(c.wait.trend, "flat");
    }

    #[test]
    fn a_short_history_is_not_enough_to_scale_in() {
        let st = history(20, &["a:1", "b:1"], 1, 5, 3, 0);
        let c = signal(&st, &[node("a:1", true), node("b:1", true)], 64);
        assert_eq!(c.recommendation, Recommendation::Steady, "{c:?}");
        assert!(c.reason.contains("observing"), "{}", c.reason);
    }

    #[test]
    fn busy_answers_and_long_waits_call_for_more() {
        let st = history(60, &["a:1", "b:1"], 10, 20, 5, 1);
        let c = signal(&st, &[node("a:1", true), node("b:1", true)], 64);
        assert_eq!(c.recommendation, Recommendation::ScaleOut, "{c:?}");
        assert!(c.reason.contains("503"), "{}", c.reason);
        assert_eq!(c.suggested_nodes, 3);

        let st = history(60, &["a:1", "b:1"], 10, 20, 1500, 0);
        let c = signal(&st, &[node("a:1", true), node("b:1", true)], 64);
        assert_eq!(c.recommendation, Recommendation::ScaleOut, "{c:?}");
        assert!(c.reason.contains("wait"), "{}", c.reason);
    }

    #[test]
    fn moderate_load_is_steady_and_no_node_is_scale_out() {
        let st = history(60, &["a:1", "b:1"], 40, 10, 5, 0);
        let c = signal(&st, &[node("a:1", true), node("b:1", true)], 64);
        assert_eq!(c.recommendation, Recommendation::Steady, "{c:?}");
        assert_eq!(c.suggested_nodes, 2);
        assert!(c.reason.contains("with one node fewer the 95th percentile would be 125%"), "{}", c.reason);
        let c = signal(&st, &[node("a:1", false), node("b:1", false)], 64);
        assert_eq!(c.recommendation, Recommendation::ScaleOut);
        let c = signal(&st, &[], 64);
        assert_eq!(c.recommendation, Recommendation::ScaleOut);
        assert_eq!(c.nodes_stored, 0);
    }

    #[test]
    fn each_of_several_balancers_counts_on_its_share() {
        // 16 calls in flight per node from this balancer, one of 4 sharing 64-call nodes: 100 %.
        let st = history(60, &["a:1", "b:1"], 16, 10, 5, 0);
        let now = [node("a:1", true), node("b:1", true)];
        let c = st.with_history(0, |h| {
            cluster(h, &now, Capacity { per_node: 64, balancers: 4, counted_by: CountedBy::Heartbeats })
        });
        assert_eq!(c.utilisation, 1.0);
        assert_eq!(c.recommendation, Recommendation::ScaleOut);
        assert_eq!(c.balancers, 4);
    }

    #[test]
    fn per_node_figures() {
        let st = history(60, &["a:1", "b:1"], 16, 3, 200, 0);
        let c = signal(&st, &[node("a:1", true), node("b:1", true)], 64);
        let a = &c.nodes[0];
        assert_eq!(a.node, "a:1");
        assert_eq!((a.in_flight_avg, a.utilisation, a.calls_per_second), (16.0, 0.25, 3.0));
        assert_eq!(a.wait.mean, 0.2);
    }
}
