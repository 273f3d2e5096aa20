//! Routing by function: the trigger-to-function map learned from the nodes' own Fn API (a fake
//! that speaks Fn's v2 JSON and paginates like Fn, tests/support/fnapi.rs), used for the key;
//! pagination, the bound, an API that fails (the map kept, then expired, then learned again);
//! and the real binary learning the map from its nodes.
mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fnlb::discovery::fnapi::{self, FunctionKeys, Refresh};
use fnlb::health::probe::Prober;
use fnlb::health::Thresholds;
use fnlb::node::manager::{self, HealthConfig, NodesHandle};
use fnlb::node::table::key_hash;
use fnlb::node::NodeAddr;
use support::fnapi::FakeFnApi;
use support::*;

/// Bound on anything the background refresh should have done by now.
const WITHIN: Duration = Duration::from_secs(15);

async fn node_with(api: &FakeFnApi) -> FakeNode {
    FakeNode::start_with(NodeOpts { fn_api: Some(api.clone()), ..Default::default() }).await
}

/// The node manager over these nodes, once each has been checked.
async fn nodes_of(nodes: &[&FakeNode]) -> NodesHandle {
    let handle = manager::spawn(HealthConfig {
        interval: Duration::from_millis(200),
        max_ejected: 0.5,
        thresholds: Thresholds { unhealthy: 1, healthy: 1 },
        prober: Prober::new("/version".into(), Duration::from_secs(1), semver::Version::new(0, 0, 1)),
    });
    let addrs = nodes.iter().map(|n| NodeAddr::parse(&n.name()).unwrap()).collect();
    handle.set_desired(addrs, handle.mutation_seq());
    handle.when_checked().await;
    handle
}

fn fast(max_paths: usize) -> Refresh {
    Refresh {
        interval: Duration::from_millis(100),
        ttl: Duration::from_secs(3),
        timeout: Duration::from_secs(1),
        max_paths,
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WITHIN, "{what}: not within {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two apps: `shop` with 250 functions (three pages of triggers), `hello` with one function and
/// two triggers. Returns the ids of `shop`'s functions and `hello`'s one.
fn populate(api: &FakeFnApi) -> (Vec<String>, String) {
    let shop = api.app("shop");
    let fns: Vec<String> = (0..250)
        .map(|i| {
            let f = api.function(&shop, &format!("f{i}"));
            api.trigger(&shop, &f, &format!("t{i}"), &format!("/item/{i}"));
            f
        })
        .collect();
    let app = api.app("hello");
    let hello = api.function(&app, "hello");
    api.trigger(&app, &hello, "hello", "/hello");
    api.trigger(&app, &hello, "hi", "/greet/hi");
    (fns, hello)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_paths_share_their_functions_key() {
    let api = FakeFnApi::new();
    let (shop, hello) = populate(&api);
    let node = node_with(&api).await;
    let nodes = nodes_of(&[&node]).await;
    let keys = FunctionKeys::new(true);
    assert_eq!(keys.key("/t/hello/hello"), key_hash(b"/t/hello/hello"), "nothing learned yet: the path");
    tokio::spawn(fnapi::refresh(keys.clone(), nodes, fast(100_000)));
    wait_for("map learned", || keys.status().paths == 252).await;

    let invoke = format!("/invoke/{hello}");
    assert_eq!(keys.key("/t/hello/hello"), keys.key(&invoke));
    assert_eq!(keys.key("/t/hello/greet/hi"), keys.key(&invoke));
    assert_eq!(keys.key(&invoke), key_hash(invoke.as_bytes()), "/invoke/<id> is its own key");
    // Every page was followed: the last of 250 triggers is known too.
    assert_eq!(keys.key("/t/shop/item/249"), keys.key(&format!("/invoke/{}", shop[249])));
    assert_ne!(keys.key("/t/shop/item/249"), keys.key("/t/shop/item/248"));
    // Unknown paths keep the path as key.
    assert_eq!(keys.key("/t/hello/nope"), key_hash(b"/t/hello/nope"));
    assert_eq!(keys.key("/r/hello/hello"), key_hash(b"/r/hello/hello"));
    let st = keys.status();
    assert_eq!((st.paths, st.functions, st.truncated), (252, 251, false));
    assert_eq!(st.learned_from.as_deref(), Some(node.name().as_str()));
    // One page of apps, three of shop's triggers, one of hello's.
    assert!(api.requests.load(Ordering::SeqCst) >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_is_bounded() {
    let api = FakeFnApi::new();
    populate(&api);
    let node = node_with(&api).await;
    let keys = FunctionKeys::new(true);
    tokio::spawn(fnapi::refresh(keys.clone(), nodes_of(&[&node]).await, fast(100)));
    wait_for("map learned", || keys.status().paths > 0).await;
    let st = keys.status();
    assert_eq!((st.paths, st.truncated), (100, true), "{st:?}");
    // Beyond the bound, a trigger keeps its path as key.
    assert_eq!(keys.key("/t/shop/item/200"), key_hash(b"/t/shop/item/200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_api_keeps_the_map_until_the_ttl_then_paths_until_it_answers() {
    let api = FakeFnApi::new();
    let (_, hello) = populate(&api);
    let node = node_with(&api).await;
    let keys = FunctionKeys::new(true);
    tokio::spawn(fnapi::refresh(keys.clone(), nodes_of(&[&node]).await, fast(100_000)));
    let invoke = key_hash(format!("/invoke/{hello}").as_bytes());
    wait_for("map learned", || keys.key("/t/hello/hello") == invoke).await;

    api.set_failing(true);
    let failed_from = api.requests.load(Ordering::SeqCst);
    // Refreshes fail, and the learned map keeps routing meanwhile.
    wait_for("a failed refresh", || api.requests.load(Ordering::SeqCst) > failed_from).await;
    let age = keys.status().age_seconds.unwrap();
    if age < 2.5 {
        // Only meaningful while the map is younger than its TTL (3 s); it is one refresh old.
        assert_eq!(keys.key("/t/hello/hello"), invoke, "the map is kept while younger than its TTL");
    }
    // Then it expires: keys are paths.
    wait_for("map expired", || keys.key("/t/hello/hello") == key_hash(b"/t/hello/hello")).await;
    assert_eq!(keys.status().paths, 0);
    assert_eq!(keys.status().age_seconds, None);

    api.set_failing(false);
    wait_for("map learned again", || keys.key("/t/hello/hello") == invoke).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_node_hands_over_to_the_next() {
    let (api1, api2) = (FakeFnApi::new(), FakeFnApi::new());
    let (n1, n2) = (node_with(&api1).await, node_with(&api2).await);
    let nodes = nodes_of(&[&n1, &n2]).await;
    // The node a refresh asks first answers 503 from its API; the other one knows the triggers.
    let first = nodes.load_full().nodes()[0].addr.to_string();
    let (broken, good, good_node) = if first == n1.name() { (&api1, &api2, &n2) } else { (&api2, &api1, &n1) };
    broken.set_failing(true);
    let (_, hello) = populate(good);
    let keys = FunctionKeys::new(true);
    // One refresh only (the next one is an hour away): it must hand over within itself.
    let once = Refresh { interval: Duration::from_secs(3600), ..fast(100_000) };
    tokio::spawn(fnapi::refresh(keys.clone(), nodes, once));
    let invoke = key_hash(format!("/invoke/{hello}").as_bytes());
    wait_for("map learned", || keys.key("/t/hello/hello") == invoke).await;
    assert!(broken.requests.load(Ordering::SeqCst) >= 1, "the failing node was asked first");
    assert_eq!(keys.status().learned_from.as_deref(), Some(good_node.name().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_keys_are_paths() {
    let api = FakeFnApi::new();
    populate(&api);
    let node = node_with(&api).await;
    let keys = FunctionKeys::new(false);
    tokio::spawn(fnapi::refresh(keys.clone(), nodes_of(&[&node]).await, fast(100_000)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.requests.load(Ordering::SeqCst), 0, "nothing is asked of the API");
    assert_eq!(keys.key("/t/hello/hello"), key_hash(b"/t/hello/hello"));
}

// ---------------------------------------------------------------------------------------------
// The real binary

async fn cluster(lb: &Fnlb) -> serde_json::Value {
    let r = send("GET", &lb.mgmt_url("/1/lb/cluster"), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_learns_the_map_from_its_nodes() {
    let api = FakeFnApi::new();
    populate(&api);
    let nodes = [node_with(&api).await, node_with(&api).await, node_with(&api).await];
    let list = nodes.iter().map(FakeNode::name).collect::<Vec<_>>().join(",");
    let lb = Fnlb::start(&["-nodes", &list, "-policy", "ch"]);
    let start = Instant::now();
    loop {
        let c = cluster(&lb).await;
        if c["function_keys"]["paths"] == 252 {
            assert_eq!(c["function_keys"]["functions"], 251);
            assert_eq!(c["function_keys"]["enabled"], true);
            break;
        }
        assert!(start.elapsed() < WITHIN, "map not learned: {c}\n{}", lb.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lb.log().contains("function keys: trigger map learned"), "{}", lb.log());
    // The API requests are not calls.
    assert!(nodes.iter().all(|n| n.calls.load(Ordering::SeqCst) == 0));

    let off = Fnlb::start(&["-nodes", &list, "-function-keys=false"]);
    let c = cluster(&off).await;
    assert_eq!(c["function_keys"]["enabled"], false, "{c}");
    assert_eq!(c["function_keys"]["paths"], 0, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_functions_urls_go_to_one_node() {
    let api = FakeFnApi::new();
    let (shop, _) = populate(&api);
    let nodes = [node_with(&api).await, node_with(&api).await, node_with(&api).await];
    let list = nodes.iter().map(FakeNode::name).collect::<Vec<_>>().join(",");
    let lb = Fnlb::start(&["-nodes", &list, "-policy", "ch"]);
    let start = Instant::now();
    while cluster(&lb).await["function_keys"]["paths"] != 252 {
        assert!(start.elapsed() < WITHIN, "map not learned\n{}", lb.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 30 functions, each by its trigger and by its ID: the same node. Keyed by path, the two
    // URLs of a function would meet on one of 3 nodes only by chance (1 in 3 each).
    for (i, f) in shop.iter().enumerate().take(30) {
        let by_trigger = send("GET", &lb.url(&format!("/t/shop/item/{i}")), "").await;
        let by_id = send("GET", &lb.url(&format!("/invoke/{f}")), "").await;
        assert_eq!((by_trigger.status, by_id.status), (200, 200));
        assert_eq!(by_trigger.node(), by_id.node(), "function {i}: /t/shop/item/{i} and /invoke/{f}");
    }
}
