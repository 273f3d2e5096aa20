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
