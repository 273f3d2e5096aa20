//! Clients that hold the balancer: a body that stops arriving (`-client-body-timeout`), a client
//! that stops reading its answer (`-send-timeout`), and idle kept-alive connections at
//! `-max-connections`. Each must lose its connection and permit, so that the next client is
//! served. Raw sockets against the real binary; HTTP/1.0 requests go through the general (hyper)
//! server, HTTP/1.1 ones through the fast path.
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(20);

/// A node whose every call is answered with `size` bytes (its health check with a version).
async fn big_node(size: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let big = Bytes::from(vec![b'x'; size]);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let big = big.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = if req.uri().path() == "/version" {
                        Bytes::from_static(br#"{"version":"0.3.753"}"#)
                    } else {
                        big.clone()
                    };
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

/// Sends `req` on a new connection and reads the start of the answer (bounded).
async fn first_bytes(addr: SocketAddr, req: &[u8], limit: Duration) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut buf = vec![0u8; 256];
    match tokio::time::timeout(limit, s.read(&mut buf)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

/// Reads (and drops) what comes until the server closes; false if it is still open at `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let drain = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, drain).await.is_ok()
}

/// The third client's request: a management read, so that it needs a connection permit and
/// nothing else (whatever the call engine makes of the node the slow calls were on).
const THIRD: &[u8] = b"GET /1/lb/nodes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

async fn slow_readers_free_their_permits(request: &[u8]) {
    let node = big_node(64 * 1024 * 1024).await;
    let lb = Fnlb::start(&[
        "-function-keys=false",
        "-nodes",
        &node.to_string(),
        "-max-connections",
        "2",
        "-send-timeout",
        "1",
        "-client-body-timeout",
        "1",
    ]);
    lb.wait_nodes(&[(&node.to_string(), "online")]).await;
    // Two clients ask for 64 MiB and never read: more than the sockets' buffers hold, so fnlb's
    // writes block.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(lb.traffic).await.unwrap();
        s.write_all(request).await.unwrap();
        slow.push(s);
    }
    let sent = tokio::time::Instant::now();
    let third = first_bytes(lb.traffic, THIRD, LIMIT).await.expect("a third client was never served");
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    // Reading unblocks fnlb's writes: only past every slow client's send deadline (1 s from its
    // first blocked write) does a drained connection show whether it was cut.
    tokio::time::sleep_until(sent + Duration::from_secs(3)).await;
    for mut s in slow {
        assert!(closed_within(&mut s, LIMIT).await, "a client that did not read kept its connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_connection_hyper_path() {
    slow_readers_free_their_permits(b"GET /r/app/big HTTP/1.0\r\nHost: x\r\n\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_connection_fast_path() {
    slow_readers_free_their_permits(b"GET /r/app/big HTTP/1.1\r\nHost: x\r\n\r\n").await;
}

async fn slow_bodies_free_their_permits(head: &[u8]) {
    let node = FakeNode::start().await;
    let lb = Fnlb::start(&[
        "-nodes",
        &node.name(),
        "-max-connections",
        "2",
        "-send-timeout",
        "1",
        "-client-body-timeout",
        "1",
    ]);
    lb.wait_nodes(&[(&node.name(), "online")]).await;
    // Two clients declare a 1 MB body and send one byte of it.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(lb.traffic).await.unwrap();
        s.write_all(head).await.unwrap();
        s.write_all(b"x").await.unwrap();
        slow.push(s);
    }
    let third = first_bytes(lb.traffic, THIRD, LIMIT).await.expect("a third client was never served");
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    for mut s in slow {
        assert!(closed_within(&mut s, LIMIT).await, "a client whose body stopped kept its connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_loses_its_connection_hyper_path() {
    slow_bodies_free_their_permits(b"POST /r/app/up HTTP/1.0\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_loses_its_connection_fast_path() {
    slow_bodies_free_their_permits(b"POST /r/app/up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n").await;
}

/// One keep-alive call on a new connection, its answer read; the connection stays open.
async fn kept_alive(lb: &Fnlb, req: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(LIMIT, s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1."), "{}", String::from_utf8_lossy(&buf[..n]));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_idle_kept_alive_connections_make_room() {
    let node = FakeNode::start().await;
    let lb = Fnlb::start(&["-nodes", &node.name(), "-max-connections", "2", "-keepalive-timeout", "60"]);
    lb.wait_nodes(&[(&node.name(), "online")]).await;
    // Both permits held by idle kept-alive connections: one on the fast path, one on hyper's.
    let mut fast = kept_alive(&lb, b"GET /r/app/k HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut general = kept_alive(&lb, b"GET /r/app/k HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n").await;
    // A new client is served long before the keep-alive timeout, and the idle ones are closed.
    let third = first_bytes(lb.traffic, b"GET /r/app/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", LIMIT)
        .await
        .expect("a new client was not served while idle connections held every permit");
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    assert!(closed_within(&mut fast, LIMIT).await, "the idle fast-path connection was kept");
    assert!(closed_within(&mut general, LIMIT).await, "the idle hyper connection was kept");
}

/// The fast path listens for the ring with one wait per connection, which also hears a ring
/// from while the connection had a call in flight. Such a ring was for a client that has since
/// been served: the connection, idle afterwards, stays (as it did when the wait was made per
/// request head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_heard_while_busy_does_not_close_the_connection_once_idle() {
    let node = FakeNode::start_with(NodeOpts { delay: Duration::from_millis(800), ..NodeOpts::default() }).await;
    let lb = Fnlb::start(&["-nodes", &node.name(), "-max-connections", "2", "-keepalive-timeout", "60"]);
    lb.wait_nodes(&[(&node.name(), "online")]).await;
    let call = b"GET /r/app/k HTTP/1.1\r\nHost: x\r\n\r\n";
    // One idle kept-alive connection, and one with a call in flight: every permit taken.
    let mut idle = kept_alive(&lb, call).await;
    let mut busy = TcpStream::connect(lb.traffic).await.unwrap();
    busy.write_all(call).await.unwrap();
    // Its call has reached the node (so its connection's wait exists) before anyone rings.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while node.calls.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the busy call never reached the node");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A third client rings; the idle connection makes room, the busy one hears the ring too.
    let third = first_bytes(lb.traffic, THIRD, LIMIT).await.expect("a third client was never served");
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    assert!(closed_within(&mut idle, LIMIT).await, "the idle connection was kept");
    // The busy connection gets its answer, goes idle with no client waiting, and serves again.
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(LIMIT, busy.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    busy.write_all(call).await.unwrap();
    let n = tokio::time::timeout(LIMIT, busy.read(&mut buf)).await.unwrap().unwrap();
    assert!(n > 0, "the connection busy at the ring was closed once idle");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
}
