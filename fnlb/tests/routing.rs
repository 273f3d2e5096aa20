//! Load-aware routing end to end: a hot function outgrows its home and spills along its own
//! order; a function whose home is healthy and unloaded never leaves it. Once with fake nodes
//! that sleep, once with fnsim's container model, which shows where calls started cold.
mod support;

use std::collections::HashMap;
use std::time::Duration;

use fnlb::node::table::{key_hash, Table};
use fnlb::node::NodeAddr;
use support::fnsim::Fnsim;
use support::*;

/// The key's order of nodes as every balancer computes it (sorted node list, rendezvous table).
fn order(nodes: &[&FakeNode], key: &str) -> Vec<String> {
    order_of(nodes.iter().map(|n| n.name()), key)
}

fn order_of(nodes: impl Iterator<Item = String>, key: &str) -> Vec<String> {
    let mut addrs: Vec<NodeAddr> = nodes.map(|n| NodeAddr::parse(&n).unwrap()).collect();
    addrs.sort();
    let t = Table::build(&addrs);
    t.order(key_hash(key.as_bytes())).map(|i| addrs[i].to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_function_spills_along_its_order_and_cool_one_stays_home() {
    let opts = NodeOpts { delay: Duration::from_millis(1500), ..Default::default() };
    let nodes = [
        FakeNode::start_with(opts.clone()).await,
        FakeNode::start_with(opts.clone()).await,
        FakeNode::start_with(opts.clone()).await,
        FakeNode::start_with(opts.clone()).await,
    ];
    let refs: Vec<&FakeNode> = nodes.iter().collect();
    let list = refs.iter().map(|n| n.name()).collect::<Vec<_>>().join(",");
    // Capacity 8 per node: the floor is 4 calls, so 12 at once cannot all stay home.
    let lb = Fnlb::start(&["-nodes", &list, "-node-capacity", "8"]);
    let want: Vec<(String, &str)> = refs.iter().map(|n| (n.name(), "online")).collect();
    let want: Vec<(&str, &str)> = want.iter().map(|(a, b)| (a.as_str(), *b)).collect();
    lb.wait_nodes(&want).await;

    let hot = "/r/app/hot";
    let hot_order = order(&refs, hot);
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let url = lb.url(hot);
            tokio::spawn(async move { send("POST", &url, "x").await })
        })
        .collect();
    let mut served: HashMap<String, usize> = HashMap::new();
    for c in calls {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        *served.entry(r.node()).or_default() += 1;
    }
    assert!(served.len() >= 2, "12 concurrent calls all stayed on one node: {served:?}");
    // Spilled calls land on the key's next choices, in order: home first, and no node outside
    // the first ones the spill needed.
    assert!(served.get(&hot_order[0]).copied().unwrap_or(0) >= 4, "home took too few: {served:?} order {hot_order:?}");
    for node in served.keys() {
        let rank = hot_order.iter().position(|n| n == node).unwrap();
        assert!(rank < served.len(), "{node} (choice {rank}) served a spill before an earlier choice: {served:?}");
    }
    let page = send("GET", &lb.url("/1/lb/metrics"), "").await.text();
    assert!(
        page.lines().any(|l| l.starts_with("fnlb_spills_total") && !l.trim_end().ends_with(" 0")),
        "no spill counted:\n{page}"
    );

    // One call at a time: never more than the floor, so it always stays home.
    let cool = "/r/app/cool";
    let cool_home = &order(&refs, cool)[0];
    for _ in 0..4 {
        let r = send("POST", &lb.url(cool), "x").await;
        assert_eq!(&r.node(), cool_home);
    }
}

/// Sends `n` calls for `path` at once; returns, per call, the address of the fnsim node that ran
/// it and whether it started cold.
async fn wave(lb: &Fnlb, sim: &Fnsim, path: &str, n: usize, exec_ms: &str) -> Vec<(String, bool)> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let url = lb.url(path);
            let exec_ms = exec_ms.to_string();
            tokio::spawn(async move { send_with("POST", &url, &[("fnsim-exec-ms", &exec_ms)], "x".into()).await })
        })
        .collect();
    let mut out = Vec::new();
    for c in calls {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let index: usize = r.headers["fn-node"].to_str().unwrap().parse().unwrap();
        out.push((sim.addrs[index].to_string(), r.headers["fn-call-cold"] == "true"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fnsim_a_hot_function_spills_along_its_order_and_stays_warm_there() {
    // Four simulated nodes with 4 container slots each; fnlb told so (-node-capacity 4: the
    // floor is 2 calls a node). Calls run 1.5 s; a cold start adds 200 ms.
    let sim = Fnsim::start(&["--nodes", "4", "--port", "0", "--slots", "4", "--exec-ms", "1500", "--cold-ms", "200"]);
    let list = sim.addrs.iter().map(std::string::ToString::to_string).collect::<Vec<_>>().join(",");
    let lb = Fnlb::start(&["-nodes", &list, "-node-capacity", "4"]);
    let names: Vec<String> = sim.addrs.iter().map(std::string::ToString::to_string).collect();
    let want: Vec<(&str, &str)> = names.iter().map(|a| (a.as_str(), "online")).collect();
    lb.wait_nodes(&want).await;

    // A cool function, one call at a time on an idle cluster: always its home, warm after the
    // first call. (Checked before the hot bursts: after them its home may hold the hot
    // function's idle containers in every slot, and then going elsewhere instead of evicting one
    // is the policy's rule, not a fault; whether it does depends on the ports the nodes got.)
    let cool = "/r/app/cool";
    let cool_home = &order_of(names.iter().cloned(), cool)[0];
    let mut colds = Vec::new();
    for _ in 0..5 {
        let calls = wave(&lb, &sim, cool, 1, "5").await;
        assert_eq!(&calls[0].0, cool_home, "the cool function left its idle home");
        colds.push(calls[0].1);
    }
    assert_eq!(colds, [true, false, false, false, false]);

    let hot = "/r/app/hot";
    let hot_order = order_of(names.iter().cloned(), hot);
    let first = wave(&lb, &sim, hot, 8, "1500").await;
    let mut served: HashMap<String, usize> = HashMap::new();
    for (node, _) in &first {
        *served.entry(node.clone()).or_default() += 1;
    }
    // 8 calls at once cannot all stay on a node whose floor is 2: they spill, along the key's
    // order and nowhere else.
    assert!(served.len() >= 2, "8 concurrent calls all ran on one node: {served:?}");
    assert!(served.get(&hot_order[0]).copied().unwrap_or(0) >= 2, "home ran too few: {served:?} order {hot_order:?}");
    for node in served.keys() {
        let rank = hot_order.iter().position(|n| n == node).unwrap();
        assert!(rank < served.len(), "{node} (choice {rank}) ran a spill before an earlier choice: {served:?}");
    }
    assert!(first.iter().all(|(_, cold)| *cold), "a first call found a warm container: {first:?}");

    // The same burst again finds the containers the first one left on those nodes: where a
    // locality-blind policy would start containers on other nodes, at most a call or two (a
    // placement differing by one between the bursts) starts cold.
    let second = wave(&lb, &sim, hot, 8, "1500").await;
    let cold_again = second.iter().filter(|(_, cold)| *cold).count();
    assert!(cold_again <= 2, "{cold_again} of 8 calls started cold again: {second:?} after {first:?}");
    for (node, _) in &second {
        let rank = hot_order.iter().position(|n| n == node).unwrap();
        assert!(rank < 4, "second burst reached {node} (choice {rank})");
    }
}
