//! The data path end to end: the real binary in front of fake Fn nodes on loopback.
mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use support::*;

async fn balancer_with(nodes: &[&FakeNode]) -> Fnlb {
    let list: Vec<String> = nodes.iter().map(|n| n.name()).collect();
    let joined = list.join(",");
    let lb = Fnlb::start(&["-nodes", &joined]);
    let want: Vec<(&str, &str)> = list.iter().map(|n| (n.as_str(), "online")).collect();
    lb.wait_nodes(&want).await;
    lb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_each_path_to_one_node_and_spreads_paths() {
    let (a, b, c) = (FakeNode::start().await, FakeNode::start().await, FakeNode::start().await);
    let lb = balancer_with(&[&a, &b, &c]).await;
    let mut homes: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for i in 0..60 {
            let path = format!("/r/app/fn{i}");
            let r = send("POST", &lb.url(&path), "x").await;
            assert_eq!(r.status, 200);
            let home = homes.entry(path.clone()).or_insert_with(|| r.node());
            assert_eq!(*home, r.node(), "{path} moved on round {round}");
        }
    }
    let used: HashSet<&String> = homes.values().collect();
    assert_eq!(used.len(), 3, "60 paths should use all 3 nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_string_is_not_part_of_the_key() {
    let (a, b, c) = (FakeNode::start().await, FakeNode::start().await, FakeNode::start().await);
    let lb = balancer_with(&[&a, &b, &c]).await;
    for i in 0..20 {
        let first = send("GET", &lb.url(&format!("/r/app/q{i}")), "").await.node();
        let with_query = send("GET", &lb.url(&format!("/r/app/q{i}?x={i}&y=2")), "").await;
        assert_eq!(first, with_query.node());
        assert!(with_query.text().contains(&format!("?x={i}&y=2")), "query not forwarded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_node_answers_503_json() {
    let lb = Fnlb::start(&[]);
    let r = send("GET", &lb.url("/r/app/fn"), "").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json()["msg"], "no nodes available");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_headers_follow_the_proxy_rules() {
    let a = FakeNode::start().await;
    let lb = balancer_with(&[&a]).await;
    let r = send_with(
        "GET",
        &lb.url("/r/app/h"),
        &[
            ("host", "functions.example"),
            ("x-forwarded-for", "10.9.9.9"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic Zm9v"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-seen-host"], "functions.example");
    assert_eq!(r.headers["x-seen-xff"], "10.9.9.9, 127.0.0.1");
    assert_eq!(r.headers["x-seen-te"], "trailers");
    assert!(r.headers.get("x-seen-x-hop").is_none(), "a header named by Connection reached the node");
    assert!(r.headers.get("x-seen-proxy-authorization").is_none());
    assert!(r.headers.get("xxx-fxlb-wait").is_none(), "the wait header reached the client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways() {
    let a = FakeNode::start().await;
    let lb = balancer_with(&[&a]).await;
    let big = Bytes::from(vec![b'x'; 3 * 1024 * 1024]);
    let r = send_with("POST", &lb.url("/r/app/big"), &[], big).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-seen-body-len"], (3 * 1024 * 1024).to_string());
    // A chunked request body (no Content-Length) arrives whole too.
    let raw_req = b"POST /r/app/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let out = raw(lb.traffic, raw_req).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-seen-body-len: 11"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_are_served() {
    let a = FakeNode::start().await;
    let lb = balancer_with(&[&a]).await;
    let out = raw(lb.traffic, b"GET /r/app/old HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert!(out.contains("GET /r/app/old"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_requests_get_no_body() {
    let a = FakeNode::start().await;
    let lb = balancer_with(&[&a]).await;
    let out = raw(lb.traffic, b"HEAD /r/app/head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("\r\n\r\n"), "HEAD answer had a body: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_honoured() {
    let a = FakeNode::start().await;
    let lb = balancer_with(&[&a]).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(lb.traffic).await.unwrap();
    s.write_all(
        b"POST /r/app/e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"));
    s.write_all(b"body").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest).to_ascii_lowercase();
    assert!(rest.contains("200 ok") && rest.contains("x-seen-body-len: 4"), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_status_passes_through() {
    let a = FakeNode::start_with(NodeOpts { status: 500, ..Default::default() }).await;
    let lb = balancer_with(&[&a]).await;
    let r = send("GET", &lb.url("/r/app/err"), "").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.node(), a.name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_garbage_is_a_502_json() {
    // A node whose /version is fine but whose function calls answer garbage.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                if req.starts_with("GET /version") {
                    let body = r#"{"version":"0.3.753"}"#;
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
                        )
                        .await;
                } else {
                    let _ = s.write_all(b"this is not http at all\r\n\r\n").await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    let lb = Fnlb::start(&["-nodes", &addr.to_string()]);
    lb.wait_nodes(&[(&addr.to_string(), "online")]).await;
    let r = send("GET", &lb.url("/r/app/garbage"), "").await;
    assert_eq!(r.status, 502);
    assert!(r.json()["msg"].as_str().unwrap().contains("invalid response"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_node_is_not_the_clients_problem() {
    let (a, b, c) = (FakeNode::start().await, FakeNode::start().await, FakeNode::start().await);
    // Slow health checks: the retry, not the checker, must save these calls.
    let list = format!("{},{},{}", a.name(), b.name(), c.name());
    let lb = Fnlb::start(&["-nodes", &list, "-hc-interval", "30"]);
    lb.wait_nodes(&[(&a.name(), "online"), (&b.name(), "online"), (&c.name(), "online")]).await;
    // Warm pooled connections to every node, then kill one.
    for i in 0..30 {
        assert_eq!(send("GET", &lb.url(&format!("/r/app/d{i}")), "").await.status, 200);
    }
    b.stop();
    for i in 0..30 {
        for method in ["GET", "POST"] {
            let r = send(method, &lb.url(&format!("/r/app/d{i}")), "payload").await;
            assert_eq!(r.status, 200, "{method} /r/app/d{i}: {}", r.text());
            assert_ne!(r.node(), b.name());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_other_nodes_do_not_move_when_a_node_fails() {
    let (a, b, c) = (FakeNode::start().await, FakeNode::start().await, FakeNode::start().await);
    let lb = balancer_with(&[&a, &b, &c]).await;
    let mut before = HashMap::new();
    for i in 0..60 {
        let p = format!("/r/app/m{i}");
        before.insert(p.clone(), send("GET", &lb.url(&p), "").await.node());
    }
    c.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    lb.wait_nodes(&[(&a.name(), "online"), (&b.name(), "online"), (&c.name(), "offline")]).await;
    for (p, home) in &before {
        let now = send("GET", &lb.url(p), "").await.node();
        if *home != c.name() {
            assert_eq!(&now, home, "{p} moved although its node is healthy");
        } else {
            assert_ne!(now, c.name());
        }
    }
}
