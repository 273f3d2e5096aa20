//! Late binding end to end (`-late-binding`, `route/wait.rs` in the call engine): at saturation a
//! call waits at the balancer instead of going onto a full node; a client that leaves while it
//! waits frees its place; a call that cannot be placed in time gets 503 with `Retry-After`.
//! One slow node of `-node-capacity 1`: a second call of the same function finds it full.
mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CALL: &[u8] = b"GET /r/app/slow HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n";
/// HTTP/1.0 goes by the hyper path.
const CALL_10: &[u8] = b"GET /r/app/slow HTTP/1.0\r\nHost: lb\r\n\r\n";

async fn slow_node(delay_ms: u64) -> FakeNode {
    FakeNode::start_with(NodeOpts { delay: Duration::from_millis(delay_ms), ..NodeOpts::default() }).await
}

fn balancer(node: &FakeNode, extra: &[&str]) -> Fnlb {
    let name = node.name();
    let mut args = vec!["-nodes", &name, "-node-capacity", "1", "-function-keys=false"];
    args.extend_from_slice(extra);
    Fnlb::start(&args)
}

/// Sends `bytes` on a new connection, returning the connection (its answer still to come).
async fn open(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

async fn read_all(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls until `f` holds (bounded).
async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of an unlabelled (or exactly labelled) sample of /1/lb/metrics.
async fn metric(lb: &Fnlb, name: &str) -> Option<f64> {
    let text = send("GET", &lb.mgmt_url("/1/lb/metrics"), "").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// Calls in flight on all nodes (the sum of `fnlb_node_in_flight`).
async fn in_flight(lb: &Fnlb) -> f64 {
    let text = send("GET", &lb.mgmt_url("/1/lb/metrics"), "").await.text();
    text.lines()
        .filter(|l| l.starts_with("fnlb_node_in_flight{"))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum()
}

async fn until_metric(lb: &Fnlb, name: &str, want: f64) {
    let start = Instant::now();
    loop {
        let got = metric(lb, name).await;
        if got == Some(want) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{name}: {got:?}, want {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_waiting_frees_its_place_and_never_reaches_the_node() {
    let node = slow_node(3000).await;
    let lb = balancer(&node, &[]);
    // The first call takes the node's one slot.
    let first = tokio::spawn(read_all(open(lb.traffic, CALL).await));
    until("the first call on the node", Duration::from_secs(5), || node.calls.load(Ordering::SeqCst) == 1).await;
    // The second finds it full: it waits at the balancer, then its client leaves.
    let second = open(lb.traffic, CALL).await;
    until_metric(&lb, "fnlb_waiting", 1.0).await;
    drop(second);
    until_metric(&lb, "fnlb_waiting", 0.0).await;
    until_metric(&lb, "fnlb_wait_outcomes_total{outcome=\"left\"}", 1.0).await;
    // A third call is served (handed the container when the first call ends).
    let third = read_all(open(lb.traffic, CALL).await).await;
    assert!(third.starts_with("HTTP/1.1 200"), "third call: {third}");
    assert!(first.await.unwrap().starts_with("HTTP/1.1 200"));
    // The call whose client left never reached the node.
    assert_eq!(node.calls.load(Ordering::SeqCst), 2);
    let cluster = send("GET", &lb.mgmt_url("/1/lb/cluster"), "").await.json();
    assert_eq!(cluster["waiting"]["left"], 1, "{cluster}");
    assert_eq!(cluster["waiting"]["handed_warm"], 1, "{cluster}");
    assert_eq!(cluster["waiting"]["now"], 0, "{cluster}");
}

/// A call that finds the node full for longer than late binding waits (4 s) is refused.
async fn refused_in_time(second_call: &[u8], status_line: &str) {
    let node = slow_node(8000).await;
    let lb = balancer(&node, &[]);
    let _first = tokio::spawn(read_all(open(lb.traffic, CALL).await));
    until("the first call on the node", Duration::from_secs(5), || node.calls.load(Ordering::SeqCst) == 1).await;
    let second = read_all(open(lb.traffic, second_call).await).await;
    assert!(second.starts_with(status_line), "second call: {second}");
    let lower = second.to_ascii_lowercase();
    assert!(lower.contains("\r\nretry-after: 4\r\n"), "second call: {second}");
    assert!(second.contains(r#"{"msg":"#) && second.contains("saturated"), "second call: {second}");
    assert_eq!(node.calls.load(Ordering::SeqCst), 1, "the refused call never reached the node");
    until_metric(&lb, "fnlb_wait_gave_up_total", 1.0).await;
    until_metric(&lb, "fnlb_unserved_requests_total{reason=\"saturated\"}", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_cannot_be_placed_in_time_gets_503_with_retry_after() {
    refused_in_time(CALL, "HTTP/1.1 503").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_hyper_path_too() {
    refused_in_time(CALL_10, "HTTP/1.0 503").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_late_binding_the_second_call_goes_onto_the_full_node() {
    let node = slow_node(2000).await;
    let lb = balancer(&node, &["-late-binding=false"]);
    let first = tokio::spawn(read_all(open(lb.traffic, CALL).await));
    until("the first call on the node", Duration::from_secs(5), || node.calls.load(Ordering::SeqCst) == 1).await;
    let second = tokio::spawn(read_all(open(lb.traffic, CALL).await));
    until("the second call on the node", Duration::from_secs(5), || node.calls.load(Ordering::SeqCst) == 2).await;
    assert!(first.await.unwrap().starts_with("HTTP/1.1 200"));
    assert!(second.await.unwrap().starts_with("HTTP/1.1 200"));
    assert_eq!(metric(&lb, "fnlb_waiting").await, None, "no wait metrics without late binding");
}

/// A start-up storm: 4 functions × 6 calls onto 2 fnsim nodes of 2 slots each (calls of 200 ms;
/// a cold start adds 600 ms). Each function's first call is under way (cold, one per slot) when
/// the other 20 arrive at once. Sent onto full nodes, those queue there and take whatever
/// container frees — another function's, evicted: cold again. Held at the balancer, a call is
/// handed its own function's container. Returns the calls that started cold.
///
/// The first calls go first because, all 24 at once, the count depends on arrival order: when
/// two calls of one function come first, both start cold on free slots (right: nothing is
/// evicted), and a function that came last pays its cold starts after the others (4 to 11 of 24
/// seen on a loaded machine).
async fn storm(late_binding: &str) -> usize {
    let sim = support::fnsim::Fnsim::start(&[
        "--nodes",
        "2",
        "--port",
        "0",
        "--slots",
        "2",
        "--exec-ms",
        "200",
        "--cold-ms",
        "600",
    ]);
    let list = sim.addrs.iter().map(std::string::ToString::to_string).collect::<Vec<_>>().join(",");
    let lb = Fnlb::start(&["-nodes", &list, "-node-capacity", "2", "-function-keys=false", late_binding]);
    let names: Vec<String> = sim.addrs.iter().map(std::string::ToString::to_string).collect();
    let want: Vec<(&str, &str)> = names.iter().map(|a| (a.as_str(), "online")).collect();
    lb.wait_nodes(&want).await;
    let call = |i: usize| {
        let url = lb.url(&format!("/r/app/f{}", i % 4));
        tokio::spawn(async move { send_with("POST", &url, &[("fnsim-exec-ms", "200")], "x".into()).await })
    };
    let mut calls: Vec<_> = (0..4).map(call).collect();
    let start = Instant::now();
    while in_flight(&lb).await < 4.0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the first 4 calls never were all in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    calls.extend((4..24).map(call));
    let mut cold = 0;
    for c in calls {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        cold += usize::from(r.headers["fn-call-cold"] == "true");
    }
    cold
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_storm_at_start_up_stays_mostly_warm() {
    let with = storm("-late-binding=true").await;
    let without = storm("-late-binding=false").await;
    eprintln!("cold starts of 24: {with} with late binding, {without} without");
    assert!(with <= 6, "{with} of 24 calls started cold with late binding ({without} without)");
    assert!(without > with, "without late binding: {without} cold, with: {with}");
}
