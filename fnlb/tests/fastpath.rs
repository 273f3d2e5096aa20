//! The HTTP/1.1 fast path (`proxy/h1`): framing both ways, keep-alive on both sides,
//! pipelining, and the hand-over to the general server, over raw sockets against scripted nodes
//! whose exact bytes the tests choose.
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A node speaking raw HTTP/1.1: `/version` answers a version; every other request is answered
/// with the bytes `reply` returns for its head, then the connection closes if it says so.
struct ScriptNode {
    addr: SocketAddr,
    /// Connections that carried function calls (health checks have their own).
    conns: Arc<AtomicUsize>,
    /// Request heads and bodies, as received.
    seen: Arc<Mutex<Vec<String>>>,
}

type Reply = fn(&str) -> (Vec<u8>, bool);

async fn script_node(reply: Reply) -> ScriptNode {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c, s) = (conns.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = l.accept().await.unwrap();
            let (c, s) = (c.clone(), s.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut counted = false;
                loop {
                    let Some(msg) = read_message(&mut sock, &mut buf).await else { return };
                    if msg.starts_with("GET /version ") {
                        let body = r#"{"version":"0.3.753"}"#;
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        if sock.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    if !counted {
                        counted = true;
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                    s.lock().unwrap().push(msg.clone());
                    let (bytes, close) = reply(&msg);
                    if sock.write_all(&bytes).await.is_err() {
                        return;
                    }
                    if close {
                        let _ = sock.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    ScriptNode { addr, conns, seen }
}

/// Reads one request (head and a Content-Length or chunked body) from `buf` + the socket.
async fn read_message(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let lower = head.to_ascii_lowercase();
            let total = if let Some(i) = lower.find("content-length: ") {
                let n: usize = lower[i + 16..].split("\r\n").next().unwrap().trim().parse().unwrap();
                Some(end + 4 + n)
            } else if lower.contains("transfer-encoding: chunked") {
                find(&buf[end + 4..], b"0\r\n\r\n").map(|i| end + 4 + i + 5)
            } else {
                Some(end + 4)
            };
            if let Some(total) = total.filter(|t| *t <= buf.len()) {
                let msg = String::from_utf8_lossy(&buf[..total]).to_string();
                buf.drain(..total);
                return Some(msg);
            }
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn balancer(node: &SocketAddr) -> Fnlb {
    // Not reading the node's Fn API for function keys: these tests count the node's connections
    // and requests, and a raw node knows no /v2 API.
    let lb = Fnlb::start(&["-nodes", &node.to_string(), "-function-keys=false"]);
    lb.wait_nodes(&[(&node.to_string(), "online")]).await;
    lb
}

/// Reads one response (head, and a body by Content-Length or chunked framing, or none when
/// `bodiless`) from a kept-alive connection.
async fn response(s: &mut TcpStream, buf: &mut Vec<u8>, bodiless: bool) -> (String, String) {
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let lower = head.to_ascii_lowercase();
            let body_end = if bodiless {
                Some(end + 4)
            } else if let Some(i) = lower.find("content-length: ") {
                let n: usize = lower[i + 16..].split("\r\n").next().unwrap().trim().parse().unwrap();
                Some(end + 4 + n).filter(|t| *t <= buf.len())
            } else if lower.contains("transfer-encoding: chunked") {
                find(&buf[end + 4..], b"0\r\n\r\n").map(|i| end + 4 + i + 5)
            } else {
                panic!("response without framing: {head}");
            };
            if let Some(t) = body_end {
                let body = String::from_utf8_lossy(&buf[end + 4..t]).to_string();
                buf.drain(..t);
                return (head, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("no response in time")
            .unwrap();
        assert!(n > 0, "connection closed; got {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn ok(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nXXX-FXLB-WAIT: 2ms\r\n\r\n{body}", body.len()).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_pass_through_and_both_connections_are_reused() {
    let node = script_node(|_| {
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Fn: yes\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                .to_vec(),
            false,
        )
    })
    .await;
    let lb = balancer(&node.addr).await;
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..20 {
        s.write_all(format!("GET /r/app/c{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let (head, body) = response(&mut s, &mut buf, false).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("X-Fn: yes") && head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
            "{head}"
        );
        assert_eq!(body, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    }
    assert_eq!(node.conns.load(Ordering::SeqCst), 1, "the upstream connection was not reused");
    let seen = node.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 20);
    assert!(seen[0].contains("x-forwarded-for: 127.0.0.1\r\n"), "{}", seen[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_sized_request_bodies_stream_and_pipelined_requests_are_answered_in_order() {
    let node = script_node(|req| (ok(&format!("{}", req.len())), false)).await;
    let lb = balancer(&node.addr).await;
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    // A chunked body much bigger than the buffers, in several writes.
    let mut chunked = Vec::from(&b"POST /r/app/up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..]);
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n", 5000).as_bytes());
        chunked.extend_from_slice(&[b'a'; 5000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for part in chunked.chunks(7000) {
        s.write_all(part).await.unwrap();
    }
    let mut buf = Vec::new();
    let (head, _) = response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let up = node.seen.lock().unwrap().last().unwrap().clone();
    assert!(up.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{up}");
    assert!(up.ends_with("\r\n0\r\n\r\n") && up.matches(&"a".repeat(5000)).count() == 40);
    // Three pipelined requests in one write: sized bodies and a bodiless one.
    s.write_all(
        b"POST /r/app/p1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcPUT /r/app/p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /r/app/p3 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..3 {
        let (head, _) = response(&mut s, &mut buf, false).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let seen = node.seen.lock().unwrap().clone();
    let n = seen.len();
    assert!(seen[n - 3].starts_with("POST /r/app/p1 ") && seen[n - 3].ends_with("\r\n\r\nabc"), "{}", seen[n - 3]);
    assert!(seen[n - 2].starts_with("PUT /r/app/p2 ") && seen[n - 2].ends_with("\r\n\r\nhello"), "{}", seen[n - 2]);
    assert!(seen[n - 1].starts_with("GET /r/app/p3 "), "{}", seen[n - 1]);
    // A big sized body, sent slowly in pieces.
    let big = vec![b'z'; 300_000];
    s.write_all(format!("POST /r/app/big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", big.len()).as_bytes())
        .await
        .unwrap();
    for part in big.chunks(50_000) {
        s.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (head, _) = response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(node.seen.lock().unwrap().last().unwrap().ends_with(&"z".repeat(1000)));
    assert_eq!(node.conns.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_answers_head_204_304_keep_the_connection_in_step() {
    let node = script_node(|req| {
        let r: &[u8] = if req.starts_with("HEAD ") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"
        } else if req.contains("/r/app/204") {
            b"HTTP/1.1 204 No Content\r\n\r\n"
        } else if req.contains("/r/app/304") {
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n"
        } else {
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        (r.to_vec(), false)
    })
    .await;
    let lb = balancer(&node.addr).await;
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    let mut buf = Vec::new();
    for (req, bodiless, status) in [
        ("HEAD /r/app/h HTTP/1.1\r\nHost: x\r\n\r\n", true, "200"),
        ("GET /r/app/204 HTTP/1.1\r\nHost: x\r\n\r\n", true, "204"),
        ("GET /r/app/304 HTTP/1.1\r\nHost: x\r\n\r\n", true, "304"),
        ("GET /r/app/x HTTP/1.1\r\nHost: x\r\n\r\n", false, "200"),
        ("HEAD /r/app/h HTTP/1.1\r\nHost: x\r\n\r\n", true, "200"),
        ("GET /r/app/x HTTP/1.1\r\nHost: x\r\n\r\n", false, "200"),
    ] {
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = response(&mut s, &mut buf, bodiless).await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{req}: {head}");
        if !bodiless {
            assert_eq!(body, "ok");
        }
    }
    assert!(buf.is_empty(), "extra bytes: {:?}", String::from_utf8_lossy(&buf));
    assert_eq!(node.conns.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_delimited_by_the_close_is_rechunked_and_the_client_stays_connected() {
    let node = script_node(|_| (b"HTTP/1.1 200 OK\r\nX-Old: 1\r\n\r\nuntil the end".to_vec(), true)).await;
    let lb = balancer(&node.addr).await;
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..3 {
        s.write_all(b"GET /r/app/old HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let (head, body) = response(&mut s, &mut buf, false).await;
        assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
        assert_eq!(body, "d\r\nuntil the end\r\n0\r\n\r\n");
    }
    assert_eq!(node.conns.load(Ordering::SeqCst), 3, "a closed upstream connection was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_closed_while_idle_are_retried_transparently() {
    // The node closes every connection after answering, without saying so: the next call finds
    // a pooled connection closed, and must not fail because of it.
    let node = script_node(|_| (ok("fine"), true)).await;
    let lb = balancer(&node.addr).await;
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..30 {
        let req = if i % 2 == 0 {
            format!("GET /r/app/k{i} HTTP/1.1\r\nHost: x\r\n\r\n")
        } else {
            format!("POST /r/app/k{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        };
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = response(&mut s, &mut buf, false).await;
        assert!(head.starts_with("HTTP/1.1 200"), "call {i}: {head}{body}");
        assert_eq!(body, "fine");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_and_upgrade_requests_go_to_the_general_server() {
    let node = script_node(|_| (ok("proxied"), false)).await;
    let lb = balancer(&node.addr).await;
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /r/app/first HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (head, body) = response(&mut s, &mut buf, false).await;
    // The fast path passes the node's head as it is: the node sent no Date.
    assert!(head.starts_with("HTTP/1.1 200") && !head.to_ascii_lowercase().contains("date:"), "{head}");
    assert_eq!(body, "proxied");
    // A management request on the same connection, then a proxied one again.
    s.write_all(b"GET /1/lb/nodes HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (head, body) = response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains(&node.addr.to_string()), "{body}");
    s.write_all(b"GET /r/app/second HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (head, body) = response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "proxied");
    // Upgrade is the general server's: it answers (hyper adds a Date) without upgrading.
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    s.write_all(b"GET /r/app/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("HTTP/1.1 200") && head.to_ascii_lowercase().contains("date:"), "{head}");
    assert_eq!(body, "proxied");
    let up = node.seen.lock().unwrap().last().unwrap().to_ascii_lowercase();
    assert!(up.starts_with("get /r/app/ws ") && !up.contains("upgrade"), "{up}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_upstream_framing_and_heads_are_502() {
    let node = script_node(|req| {
        let r: &[u8] = if req.contains("/r/app/twolengths") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
        } else {
            b"HTTP/1.1 2xx OK\r\n\r\n"
        };
        (r.to_vec(), true)
    })
    .await;
    let lb = balancer(&node.addr).await;
    for path in ["/r/app/twolengths", "/r/app/nonsense"] {
        let r = send("GET", &lb.url(path), "").await;
        assert_eq!(r.status, 502, "{path}");
        assert!(r.json()["msg"].as_str().unwrap().contains("invalid response"), "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_of_the_balancer_consume_their_request() {
    let lb = Fnlb::start(&[]);
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(
        b"GET /r/app/a HTTP/1.1\r\nHost: x\r\n\r\nPOST /r/app/b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await
    .unwrap();
    for _ in 0..2 {
        let (head, body) = response(&mut s, &mut buf, false).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert_eq!(body, r#"{"msg":"no nodes available"}"#);
    }
    let mut more = [0u8; 64];
    let extra = tokio::time::timeout(Duration::from_millis(300), s.read(&mut more)).await;
    assert!(extra.is_err(), "more answers than requests: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_call() {
    // A node that never answers calls, and reports when the balancer drops the connection.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = l.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(msg) = read_message(&mut sock, &mut buf).await {
                    if msg.starts_with("GET /version ") {
                        let body = r#"{"version":"0.3.753"}"#;
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        let _ = sock.write_all(head.as_bytes()).await;
                        continue;
                    }
                    // A call: wait for the balancer to hang up.
                    let mut b = [0u8; 1];
                    let _ = sock.read(&mut b).await;
                    let _ = tx.send(());
                    return;
                }
            });
        }
    });
    let lb = balancer(&addr).await;
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    s.write_all(b"GET /r/app/long HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the node's connection stayed open after the client left")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_the_node_took_and_dropped_is_not_sent_again() {
    // The node answers GETs on a kept-alive connection, and reads a POST and closes without a
    // word, as a node that died running it would. The POST may have run: it must not run twice.
    let node =
        script_node(|head| if head.starts_with("POST") { (Vec::new(), true) } else { (ok("fine"), false) }).await;
    let lb = balancer(&node.addr).await;
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /r/app/f HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (head, _) = response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The POST goes out on the connection the GET left in the pool.
    s.write_all(b"POST /r/app/f HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi").await.unwrap();
    let (head, body) = response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}{body}");
    assert!(body.contains("may have run"), "{body}");
    let posts = node.seen.lock().unwrap().iter().filter(|m| m.starts_with("POST")).count();
    assert_eq!(posts, 1, "the POST reached the node {posts} times");
    assert_eq!(node.conns.load(Ordering::SeqCst), 1);
}
