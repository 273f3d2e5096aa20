//! The management API end to end, on the shared and on a separate listener.
mod support;

use std::time::Duration;

use bytes::Bytes;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_list_delete_nodes() {
    let (a, b) = (FakeNode::start().await, FakeNode::start().await);
    let lb = Fnlb::start(&[]);
    let r = send("GET", &lb.mgmt_url("/1/lb/nodes"), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json(), serde_json::json!({"nodes": {}}));

    let url = lb.mgmt_url("/1/lb/nodes");
    let put = |n: String| {
        let url = url.clone();
        async move { send("PUT", &url, &format!(r#"{{"node":"{n}"}}"#)).await }
    };
    let r = put(a.name()).await;
    assert_eq!((r.status, r.json()["msg"].as_str().unwrap()), (200, "node added"));
    let r = put(a.name()).await;
    assert_eq!(r.status, 200, "adding a present node is fine");
    put(b.name()).await;
    lb.wait_nodes(&[(&a.name(), "online"), (&b.name(), "online")]).await;
    assert_eq!(send("GET", &lb.url("/r/app/x"), "").await.status, 200);

    let r = send("DELETE", &lb.mgmt_url("/1/lb/nodes"), &format!(r#"{{"node":"{}"}}"#, a.name())).await;
    assert_eq!((r.status, r.json()["msg"].as_str().unwrap()), (200, "node deleted"));
    // Deleted means no traffic from the moment the answer came.
    for i in 0..30 {
        assert_eq!(send("GET", &lb.url(&format!("/r/app/{i}")), "").await.node(), b.name());
    }
    let r = send("DELETE", &lb.mgmt_url("/1/lb/nodes"), &format!(r#"{{"node":"{}"}}"#, a.name())).await;
    assert_eq!(r.status, 200, "deleting an absent node is fine");
    lb.wait_nodes(&[(&b.name(), "online")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_rejects_malformed_input_with_400_json() {
    let lb = Fnlb::start(&[]);
    for body in [
        "",
        "{",
        "{}",
        "[]",
        r#"{"node":""}"#,
        r#"{"node":42}"#,
        r#"{"node":"not a host"}"#,
        r#"{"node":"http://127.0.0.1:9000"}"#,
        r#"{"node":"127.0.0.1:9000/path"}"#,
        r#"{"node":"127.0.0.1"}"#,
        r#"{"node":"127.0.0.1:0"}"#,
        r#"{"node":"127.0.0.1:70000"}"#,
        r#"{"node":"::1:80"}"#,
    ] {
        for method in ["PUT", "DELETE"] {
            let r = send(method, &lb.mgmt_url("/1/lb/nodes"), body).await;
            assert_eq!(r.status, 400, "{method} {body:?}: {}", r.text());
            assert_eq!(r.headers["content-type"], "application/json");
            assert!(!r.json()["msg"].as_str().unwrap().is_empty());
        }
    }
    // None of it was stored.
    assert_eq!(send("GET", &lb.mgmt_url("/1/lb/nodes"), "").await.json(), serde_json::json!({"nodes": {}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413_without_reading_it() {
    let lb = Fnlb::start(&[]);
    let r = send_with("PUT", &lb.mgmt_url("/1/lb/nodes"), &[], Bytes::from(vec![b' '; 65 * 1024])).await;
    assert_eq!(r.status, 413);
    assert!(r.json()["msg"].is_string());
    // A declared length far over the limit is refused at once, before the body is sent.
    let out = raw(lb.mgmt, b"PUT /1/lb/nodes HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_are_405_with_allow() {
    let lb = Fnlb::start(&[]);
    let r = send("POST", &lb.mgmt_url("/1/lb/nodes"), "{}").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, PUT, DELETE");
    assert!(r.json()["msg"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_mgmt_listener_serves_only_management() {
    let a = FakeNode::start().await;
    let lb = Fnlb::start(&["-mgmt-listen", "127.0.0.2:0", "-nodes", &a.name()]);
    assert_ne!(lb.traffic, lb.mgmt);
    lb.wait_nodes(&[(&a.name(), "online")]).await;
    let r = send("GET", &lb.mgmt_url("/r/app/fn"), "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["msg"], "unknown command");
    // The traffic listener proxies everything, management paths included.
    let r = send("GET", &lb.url("/1/lb/nodes"), "").await;
    assert_eq!(r.node(), a.name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_with_trailing_slash_is_proxied() {
    let a = FakeNode::start().await;
    let lb = Fnlb::start(&["-nodes", &a.name()]);
    lb.wait_nodes(&[(&a.name(), "online")]).await;
    let r = send("GET", &lb.url("/1/lb/nodes/"), "").await;
    assert_eq!(r.node(), a.name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_persist_in_a_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite3://{}", dir.path().join("nodes.db").display());
    let a = FakeNode::start().await;
    {
        let lb = Fnlb::start(&["-db", &db]);
        let r = send("PUT", &lb.mgmt_url("/1/lb/nodes"), &format!(r#"{{"node":"{}"}}"#, a.name())).await;
        assert_eq!(r.status, 200);
    }
    let lb = Fnlb::start(&["-db", &db]);
    lb.wait_nodes(&[(&a.name(), "online")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_balancers_share_a_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite3://{}", dir.path().join("shared.db").display());
    let a = FakeNode::start().await;
    let one = Fnlb::start(&["-db", &db]);
    let two = Fnlb::start(&["-db", &db]);
    let r = send("PUT", &one.mgmt_url("/1/lb/nodes"), &format!(r#"{{"node":"{}"}}"#, a.name())).await;
    assert_eq!(r.status, 200);
    // The other balancer re-reads the store every interval (0.2 s here).
    two.wait_nodes(&[(&a.name(), "online")]).await;
    let r = send("DELETE", &two.mgmt_url("/1/lb/nodes"), &format!(r#"{{"node":"{}"}}"#, a.name())).await;
    assert_eq!(r.status, 200);
    one.wait_nodes(&[]).await;
    let _ = Duration::ZERO;
}
