//! Client and upstream limits, and hostile input, over raw sockets where a client library would
//! refuse to send the bad bytes.
mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection; returns what came and how long it took.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<(String, Duration)> {
    let start = Instant::now();
    let mut out = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut out)).await {
        Ok(_) => Some((String::from_utf8_lossy(&out).into_owned(), start.elapsed())),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_is_cut_off() {
    let lb = Fnlb::start(&["-client-header-timeout", "1"]);
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    s.write_all(b"GET /r/app/slow HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (_, took) = read_until_closed(&mut s, Duration::from_secs(10)).await.expect("connection was never closed");
    assert!(took >= Duration::from_millis(900), "closed too early: {took:?}");
    // A connection that sends nothing at all is cut off too.
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    read_until_closed(&mut s, Duration::from_secs(10)).await.expect("silent connection was never closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connection_is_closed_but_a_long_call_is_not() {
    let slow = FakeNode::start_with(NodeOpts { delay: Duration::from_millis(2500), ..Default::default() }).await;
    let lb = Fnlb::start(&["-nodes", &slow.name(), "-keepalive-timeout", "1", "-client-header-timeout", "1"]);
    lb.wait_nodes(&[(&slow.name(), "online")]).await;
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    // The call takes longer than both timeouts: it must still be answered.
    s.write_all(b"GET /r/app/long HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    // Then, idle, the connection is closed.
    let (_, took) = read_until_closed(&mut s, Duration::from_secs(10)).await.expect("idle connection kept open");
    assert!(took >= Duration::from_millis(900), "closed too early: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_node_is_a_504_json() {
    let slow = FakeNode::start_with(NodeOpts { delay: Duration::from_secs(5), ..Default::default() }).await;
    let lb = Fnlb::start(&["-nodes", &slow.name(), "-upstream-timeout", "1"]);
    lb.wait_nodes(&[(&slow.name(), "online")]).await;
    let r = send("GET", &lb.url("/r/app/slow"), "").await;
    assert_eq!(r.status, 504);
    assert!(r.json()["msg"].as_str().unwrap().contains("did not answer"), "{}", r.text());
    // Slow is not dead: the node stays online.
    lb.wait_nodes(&[(&slow.name(), "online")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_is_refused() {
    let a = FakeNode::start().await;
    let lb = Fnlb::start(&["-nodes", &a.name(), "-max-header-size", "8192"]);
    lb.wait_nodes(&[(&a.name(), "online")]).await;
    let big = "x".repeat(20_000);
    let req = format!("GET /r/app/h HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let out = raw(lb.traffic, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{}", &out[..out.len().min(200)]);
    assert_eq!(a.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400_and_never_reach_a_node() {
    let a = FakeNode::start().await;
    let lb = Fnlb::start(&["-nodes", &a.name()]);
    lb.wait_nodes(&[(&a.name(), "online")]).await;
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /r/a\x01b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /r/a\xffb HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /r/ab HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"GET /r/ab HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
        b"POST /r/ab HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /r/ab HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /r/ab HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        let out = raw(lb.traffic, bad).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{:?} -> {:?}", String::from_utf8_lossy(bad), out);
    }
    assert_eq!(a.calls.load(std::sync::atomic::Ordering::SeqCst), 0, "a malformed request reached the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_is_not_smuggled() {
    // Both headers: the chunked framing wins (RFC 9112 §6.3) and the node sees one request whose
    // body is the chunked one, without a Content-Length; the smuggled tail is no request.
    let a = FakeNode::start().await;
    let lb = Fnlb::start(&["-nodes", &a.name()]);
    lb.wait_nodes(&[(&a.name(), "online")]).await;
    let req = b"POST /r/app/s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /r/app/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let out = raw(lb.traffic, req).await;
    let calls = a.calls.load(std::sync::atomic::Ordering::SeqCst);
    if out.starts_with("HTTP/1.1 400") {
        assert_eq!(calls, 0);
    } else {
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.to_ascii_lowercase().contains("x-seen-body-len: 5"), "{out}");
        assert!(!out.contains("smuggled"), "{out}");
        assert_eq!(calls, 1, "the smuggled request reached the node");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_wait_for_a_busy_one_to_finish() {
    let slow = FakeNode::start_with(NodeOpts { delay: Duration::from_millis(1500), ..Default::default() }).await;
    let lb = Fnlb::start(&["-nodes", &slow.name(), "-max-connections", "2"]);
    lb.wait_nodes(&[(&slow.name(), "online")]).await;
    // Two connections with a call in flight each: busy, so not closed to make room.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(lb.traffic).await.unwrap();
        s.write_all(b"GET /r/app/k HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        held.push(s);
    }
    let mut third = TcpStream::connect(lb.traffic).await.unwrap();
    third.write_all(b"GET /r/app/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await.is_err(),
        "a third connection was served while two calls were in flight"
    );
    // The held calls are answered; their connections, idle now, make room for the third.
    for s in &mut held {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_token_guards_changes_but_not_reads() {
    let a = FakeNode::start().await;
    let lb = Fnlb::start(&["-mgmt-token", "s3cret"]);
    let url = lb.mgmt_url("/1/lb/nodes");
    let body = format!(r#"{{"node":"{}"}}"#, a.name());
    let r = send("PUT", &url, &body).await;
    assert_eq!(r.status, 401);
    assert!(r.json()["msg"].is_string());
    let r = send_with("PUT", &url, &[("authorization", "Bearer wrong")], body.clone().into()).await;
    assert_eq!(r.status, 401);
    let r = send_with("PUT", &url, &[("authorization", "Bearer s3cret")], body.clone().into()).await;
    assert_eq!(r.status, 200);
    let r = send_with("DELETE", &url, &[], body.clone().into()).await;
    assert_eq!(r.status, 401);
    assert_eq!(send("GET", &url, "").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_listener_without_token_warns_at_start() {
    let lb = Fnlb::start(&[]);
    assert!(lb.log().contains("-mgmt-token is not set"), "{}", lb.log());
}
