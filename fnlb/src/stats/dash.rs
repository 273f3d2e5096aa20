//! The dashboard's feed (`GET /1/lb/dash/data`): the history as series, second by second, per
//! node and for the busiest functions, with the nodes now and the scale signal. Unlike
//! `/1/lb/stats` it drains nothing, so any number of dashboards can watch at once.
use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use super::history::History;
use super::scale::{Cluster, NodeNow};

/// Functions the dashboard charts (the busiest over the history).
pub(crate) const TOP_FUNCS: usize = 8;
/// "Where calls go" covers this many recent seconds.
pub(crate) const RECENT_SECS: usize = 60;

fn mean_wait(sum_us: u64, n: u32) -> Value {
    if n == 0 {
        Value::Null
    } else {
        json!((sum_us as f64 / f64::from(n) / 1e6 * 1e6).round() / 1e6)
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(crate) fn data(history: &History, now: &[NodeNow], cluster: &Cluster) -> Value {
    let secs = history.seconds();
    let n = secs.len();
    let t: Vec<u64> = secs.iter().map(|s| s.t).collect();

    // Nodes: the current ones in their order, then any that served calls and have left since.
    let mut order: Vec<String> = now.iter().map(|x| x.addr.to_string()).collect();
    let mut index: HashMap<String, usize> = order.iter().cloned().enumerate().map(|(i, a)| (a, i)).collect();
    for s in secs {
        for ns in &s.nodes {
            if ns.calls > 0 && !index.contains_key(ns.addr.as_str()) {
                index.insert(ns.addr.to_string(), order.len());
                order.push(ns.addr.to_string());
            }
        }
    }
    let mut tp = vec![vec![0u32; n]; order.len()];
    let mut wait = vec![vec![Value::Null; n]; order.len()];
    let mut inflight = vec![vec![0.0f64; n]; order.len()];
    for (k, s) in secs.iter().enumerate() {
        for ns in &s.nodes {
            if let Some(&i) = index.get(ns.addr.as_str()) {
                tp[i][k] = ns.calls;
                wait[i][k] = mean_wait(ns.wait_sum_us, ns.wait_n);
                inflight[i][k] = round3(ns.in_flight());
            }
        }
    }
    let load: HashMap<&str, _> = cluster.nodes.iter().map(|l| (l.node.as_str(), l)).collect();
    let nodes: Vec<Value> = order
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let cur = now.get(i);
            let state = match cur {
                None => "removed",
                Some(c) if !c.healthy => "offline",
                Some(c) if c.suspect => "suspect",
                Some(_) => "online",
            };
            let l = load.get(addr.as_str());
            json!({
                "node": addr,
                "state": state,
                "in_flight": cur.map_or(0, |c| c.in_flight),
                "reported_wait": cur.map_or(0.0, |c| c.reported_wait.as_secs_f64()),
                "utilisation": l.map_or(0.0, |l| l.utilisation),
                "calls_per_second": l.map_or(0.0, |l| l.calls_per_second),
                "wait_trend": l.map_or("unknown", |l| l.wait.trend),
                "tp": tp[i],
                "wait": wait[i],
                "in_flight_series": inflight[i],
            })
        })
        .collect();

    // Functions: the busiest over the whole history.
    let mut totals: HashMap<&str, u64> = HashMap::new();
    for s in secs {
        for f in &s.funcs {
            *totals.entry(&f.name).or_default() += u64::from(f.calls);
        }
    }
    let mut top: Vec<(&str, u64)> = totals.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    top.truncate(TOP_FUNCS);
    let funcs: Vec<Value> = top
        .iter()
        .map(|(name, total)| {
            let mut tp = vec![0u32; n];
            let mut wait = vec![Value::Null; n];
            let mut served: BTreeMap<&str, u64> = BTreeMap::new();
            let mut recent_calls = 0u64;
            for (k, s) in secs.iter().enumerate() {
                if let Some(f) = s.funcs.iter().find(|f| &*f.name == *name) {
                    tp[k] = f.calls;
                    wait[k] = mean_wait(f.wait_sum_us, f.wait_n);
                    if k + RECENT_SECS >= n {
                        recent_calls += u64::from(f.calls);
                        for (ni, c) in &f.by_node {
                            if let Some(ns) = s.nodes.get(usize::from(*ni)) {
                                *served.entry(ns.addr.as_str()).or_default() += u64::from(*c);
                            }
                        }
                    }
                }
            }
            let served: Vec<Value> =
                served.into_iter().map(|(node, calls)| json!({"node": node, "calls": calls})).collect();
            json!({
                "func": name,
                "calls": total,
                "recent_calls": recent_calls,
                "tp": tp,
                "wait": wait,
                "nodes": served,
            })
        })
        .collect();

    json!({
        "now": t.last().copied().unwrap_or(0),
        "t": t,
        "nodes": nodes,
        "funcs": funcs,
        "cluster": cluster,
    })
}
