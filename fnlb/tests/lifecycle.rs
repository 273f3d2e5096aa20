//! Health checks and shutdown, end to end.
mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_goes_offline_and_back() {
    let (a, b) = (FakeNode::start().await, FakeNode::start().await);
    let lb = Fnlb::start(&["-nodes", &format!("{},{}", a.name(), b.name())]);
    lb.wait_nodes(&[(&a.name(), "online"), (&b.name(), "online")]).await;
    a.healthy.store(false, Ordering::SeqCst);
    lb.wait_nodes(&[(&a.name(), "offline"), (&b.name(), "online")]).await;
    for i in 0..20 {
        assert_eq!(send("GET", &lb.url(&format!("/r/x/{i}")), "").await.node(), b.name());
    }
    a.healthy.store(true, Ordering::SeqCst);
    lb.wait_nodes(&[(&a.name(), "online"), (&b.name(), "online")]).await;
    let log = lb.log();
    assert_eq!(log.matches("node unhealthy").count(), 1, "state change logged once:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_below_min_api_version_is_offline() {
    let old = FakeNode::start_with(NodeOpts { version: "0.0.100", ..Default::default() }).await;
    let new = FakeNode::start().await;
    let lb = Fnlb::start(&["-nodes", &format!("{},{}", old.name(), new.name()), "-min-api-version", "0.1.0"]);
    lb.wait_nodes(&[(&old.name(), "offline"), (&new.name(), "online")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_taken_out_and_returns() {
    let a = FakeNode::start().await;
    let addr = a.addr;
    let lb = Fnlb::start(&["-nodes", &a.name()]);
    lb.wait_nodes(&[(&a.name(), "online")]).await;
    a.stop();
    drop(a);
    lb.wait_nodes(&[(&addr.to_string(), "offline")]).await;
    assert_eq!(send("GET", &lb.url("/r/app/x"), "").await.status, 503);
    let _back = FakeNode::start_on(addr, NodeOpts::default()).await;
    lb.wait_nodes(&[(&addr.to_string(), "online")]).await;
    assert_eq!(send("GET", &lb.url("/r/app/x"), "").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish() {
    let slow = FakeNode::start_with(NodeOpts { delay: Duration::from_millis(1500), ..Default::default() }).await;
    let mut lb = Fnlb::start(&["-nodes", &slow.name()]);
    lb.wait_nodes(&[(&slow.name(), "online")]).await;
    let url = lb.url("/r/app/slow");
    let call = tokio::spawn(async move { send("POST", &url, "work").await });
    wait_for_call(&slow).await;
    lb.signal("TERM");
    let r = call.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let code = tokio::task::spawn_blocking(move || lb.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_bounds_the_drain() {
    let slow = FakeNode::start_with(NodeOpts { delay: Duration::from_secs(30), ..Default::default() }).await;
    let mut lb = Fnlb::start(&["-nodes", &slow.name(), "-shutdown-timeout", "1"]);
    lb.wait_nodes(&[(&slow.name(), "online")]).await;
    let url = lb.url("/r/app/forever");
    let _call = tokio::spawn(async move { send("POST", &url, "work").await });
    wait_for_call(&slow).await;
    lb.signal("INT");
    let code = tokio::task::spawn_blocking(move || lb.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert_eq!(code, Some(0), "did not exit within the shutdown timeout");
}

/// Waits (bounded) until the node has received a call.
async fn wait_for_call(node: &FakeNode) {
    for _ in 0..500 {
        if node.calls.load(Ordering::SeqCst) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the node never received the call");
}
