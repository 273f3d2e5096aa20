//! Load-aware routing end to end: a hot function outgrows its home and spills along its own
//! order; a function whose home is healthy and unloaded never leaves it.
mod support;

use std::collections::HashMap;
use std::time::Duration;

use fnlb::node::NodeAddr;
use fnlb::route::table::{key_hash, Table};
use support::*;

/// The key's order of nodes as every balancer computes it (sorted node list, rendezvous table).
fn order(nodes: &[&FakeNode], key: &str) -> Vec<String> {
    let mut addrs: Vec<NodeAddr> = nodes.iter().map(|n| NodeAddr::parse(&n.name()).unwrap()).collect();
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
    let page = send("GET", &lb.url("/metrics"), "").await.text();
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
