//! The HTTP rules of the data path (`proxy/rules.rs`), end to end over raw sockets: what a node
//! receives (nodes here log the exact bytes they got), what a client is answered when the request
//! or the node's answer breaks a rule, and that the fast path and the hyper path agree.
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(10);

/// Decides a node's answer from the bytes a call's connection carried so far: `None` to read
/// more. The node closes the connection after answering.
type Reply = fn(&[u8]) -> Option<Vec<u8>>;

/// A node speaking raw HTTP/1.1 that logs every byte of every call connection (health checks,
/// `GET /version`, are answered and not logged).
struct RawNode {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawNode {
    async fn start(reply: Reply) -> RawNode {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = calls.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = l.accept().await else { return };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut slot = None;
                    let mut chunk = [0u8; 16384];
                    loop {
                        let n = match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.starts_with(b"GET /version ") {
                            if find(&buf, b"\r\n\r\n").is_some() {
                                let body = r#"{"version":"0.3.753"}"#;
                                let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                                let _ = sock.write_all(r.as_bytes()).await;
                                buf.clear();
                            }
                            continue;
                        }
                        let i = *slot.get_or_insert_with(|| {
                            let mut calls = log.lock().unwrap();
                            calls.push(Vec::new());
                            calls.len() - 1
                        });
                        log.lock().unwrap()[i] = buf.clone();
                        if let Some(answer) = reply(&buf) {
                            let _ = sock.write_all(&answer).await;
                            let _ = sock.shutdown().await;
                            return;
                        }
                    }
                });
            }
        });
        RawNode { addr, calls }
    }

    /// Every call connection's bytes, as text.
    fn seen(&self) -> Vec<String> {
        self.calls.lock().unwrap().iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect()
    }

    /// Waits (bounded) until a call connection carried bytes that `done` accepts; returns them.
    async fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(c) = self.seen().into_iter().find(|c| done(c)) {
                return c;
            }
            assert!(Instant::now() < deadline, "the node never received {what}; it got {:?}", self.seen());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request is complete: its head, and a body by Content-Length or a chunked body ending in a
/// CRLF-terminated empty line.
fn complete(buf: &[u8]) -> bool {
    let Some(end) = find(buf, b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    if let Some(i) = head.find("content-length: ") {
        let n: usize = head[i + 16..].split("\r\n").next().unwrap().trim().parse().unwrap();
        return body.len() >= n;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"\r\n\r\n") || body == b"0\r\n\r\n";
    }
    true
}

fn answer_ok(buf: &[u8]) -> Option<Vec<u8>> {
    complete(buf).then(|| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
}

async fn balancer(node: &SocketAddr) -> Fnlb {
    // The logging node records every request: the function-key refresher's API reads stay out.
    let lb = Fnlb::start(&["-nodes", &node.to_string(), "-function-keys=false"]);
    lb.wait_nodes(&[(&node.to_string(), "online")]).await;
    lb
}

/// Sends `bytes` on a new connection and reads one response (head and a Content-Length or
/// chunked body, or up to the close); returns it as text.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_response(&mut s, &mut Vec::new()).await
}

async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let total = if let Some(i) = head.find("content-length: ") {
                let n: usize = head[i + 16..].split("\r\n").next().unwrap().trim().parse().unwrap();
                Some(end + 4 + n)
            } else if head.contains("transfer-encoding: chunked") {
                find(&buf[end + 4..], b"\r\n\r\n").map(|i| end + 4 + i + 4)
            } else {
                None
            };
            if let Some(t) = total.filter(|t| *t <= buf.len()) {
                let text = String::from_utf8_lossy(&buf[..t]).into_owned();
                buf.drain(..t);
                return text;
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => panic!("no complete response in time; got {:?}", String::from_utf8_lossy(buf)),
            Ok(Ok(0) | Err(_)) => return String::from_utf8_lossy(buf).into_owned(),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The `msg` of a JSON answer.
fn msg(resp: &str) -> String {
    let body = &resp[resp.find("\r\n\r\n").expect("no head") + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {resp}"));
    v["msg"].as_str().unwrap_or_else(|| panic!("no msg: {resp}")).to_string()
}

fn status(resp: &str) -> &str {
    resp.get(9..12).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailer_lines_ending_in_a_bare_lf_reach_the_node_with_crlf() {
    let node = RawNode::start(answer_ok).await;
    let lb = balancer(&node.addr).await;
    let resp = exchange(
        lb.traffic,
        b"POST /r/app/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-T: y\n\r\n",
    )
    .await;
    assert_eq!(status(&resp), "200", "{resp}");
    let got = node.wait_for("the request", |c| c.contains("2\r\nhi\r\n")).await;
    assert!(got.ends_with("\r\n\r\n2\r\nhi\r\n0\r\nX-T: y\r\n\r\n"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_cr_in_a_trailer_is_400_and_nothing_is_smuggled() {
    let node = RawNode::start(answer_ok).await;
    let lb = balancer(&node.addr).await;
    let resp = exchange(
        lb.traffic,
        b"POST /r/app/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: y\r\rGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(status(&resp), "400", "{resp}");
    assert!(msg(&resp).contains("chunked"), "{resp}");
    // The head may have gone out before the body was judged; the trailer never did.
    assert!(node.seen().iter().all(|c| !c.contains("X-T") && !c.contains("smuggled")), "{:?}", node.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_cr_in_a_request_head_is_400() {
    let node = RawNode::start(answer_ok).await;
    let lb = balancer(&node.addr).await;
    let resp =
        exchange(lb.traffic, b"GET /r/app/a HTTP/1.1\r\nHost: x\r\nX-A: b\rGET /smuggled HTTP/1.1\r\n\r\n").await;
    assert_eq!(status(&resp), "400", "{resp}");
    assert!(node.seen().is_empty(), "{:?}", node.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_report_in_a_node_trailer_never_reaches_the_client() {
    fn reply(buf: &[u8]) -> Option<Vec<u8>> {
        complete(buf).then(|| {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: XXX-FXLB-WAIT, X-Sum\r\n\r\n2\r\nok\r\n0\r\nXXX-FXLB-WAIT: 5ms\r\nX-Sum: 1\n\r\n"
                .to_vec()
        })
    }
    let node = RawNode::start(reply).await;
    let lb = balancer(&node.addr).await;
    let resp = exchange(lb.traffic, b"GET /r/app/t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n").await;
    assert_eq!(status(&resp), "200", "{resp}");
    assert!(!resp.to_ascii_lowercase().contains("xxx-fxlb-wait: "), "{resp:?}");
    assert!(resp.ends_with("2\r\nok\r\n0\r\nX-Sum: 1\r\n\r\n"), "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lines_before_a_request_line_are_not_forwarded() {
    let node = RawNode::start(answer_ok).await;
    let lb = balancer(&node.addr).await;
    let resp = exchange(lb.traffic, b"\r\n\r\nGET /r/app/e HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&resp), "200", "{resp}");
    let got = node.wait_for("the request", |c| c.contains("/r/app/e")).await;
    assert!(got.starts_with("GET /r/app/e HTTP/1.1\r\n"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_or_malformed_host_is_400() {
    let node = RawNode::start(answer_ok).await;
    let lb = balancer(&node.addr).await;
    for req in [
        &b"GET /r/app/h HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
        b"GET /r/app/h HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET /r/app/h HTTP/1.1\r\nHost: user@evil\r\n\r\n",
        b"GET /r/app/h HTTP/1.1\r\nHost: a b\r\n\r\n",
    ] {
        let resp = exchange(lb.traffic, req).await;
        assert_eq!(status(&resp), "400", "{:?}: {resp}", String::from_utf8_lossy(req));
        assert!(msg(&resp).contains("Host"), "{resp}");
    }
    assert!(node.seen().is_empty(), "{:?}", node.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_405_with_allow() {
    let node = RawNode::start(answer_ok).await;
    let lb = balancer(&node.addr).await;
    let resp = exchange(lb.traffic, b"CONNECT host:22 HTTP/1.1\r\nHost: host:22\r\n\r\n").await;
    assert_eq!(status(&resp), "405", "{resp}");
    assert!(resp.to_ascii_lowercase().contains("\r\nallow: get, "), "{resp}");
    assert!(msg(&resp).contains("CONNECT"), "{resp}");
    assert!(node.seen().is_empty(), "{:?}", node.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_statuses_outside_100_599_and_unasked_101_are_502() {
    fn reply(buf: &[u8]) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(buf);
        complete(buf).then(|| {
            if text.contains("/r/app/099") {
                b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok".to_vec()
            } else if text.contains("/r/app/600") {
                b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok".to_vec()
            } else {
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n".to_vec()
            }
        })
    }
    let node = RawNode::start(reply).await;
    let lb = balancer(&node.addr).await;
    for path in ["/r/app/099", "/r/app/600", "/r/app/101"] {
        // Both transports: the fast path, and hyper (a connection that started with a
        // management request stays with hyper).
        for hyper in [false, true] {
            let resp = if hyper {
                via_hyper(lb.traffic, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await
            } else {
                exchange(lb.traffic, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await
            };
            assert_eq!(status(&resp), "502", "{path} (hyper: {hyper}): {resp}");
            assert!(msg(&resp).contains("invalid response"), "{resp}");
        }
    }
}

/// Sends `bytes` through the hyper path: first a management request on the same connection
/// (which hands it to hyper for the rest of its life), then the request.
async fn via_hyper(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /1/lb/nodes HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let first = read_response(&mut s, &mut buf).await;
    assert!(first.starts_with("HTTP/1.1 200") && first.to_ascii_lowercase().contains("date:"), "{first}");
    s.write_all(bytes).await.unwrap();
    read_response(&mut s, &mut buf).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answer_with_length_and_chunked_is_502_on_both_transports() {
    fn reply(buf: &[u8]) -> Option<Vec<u8>> {
        complete(buf).then(|| {
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec()
        })
    }
    let node = RawNode::start(reply).await;
    let lb = balancer(&node.addr).await;
    let req = b"GET /r/app/clte HTTP/1.1\r\nHost: x\r\n\r\n";
    for resp in [exchange(lb.traffic, req).await, via_hyper(lb.traffic, req).await] {
        assert_eq!(status(&resp), "502", "{resp}");
        assert!(msg(&resp).contains("Content-Length and Transfer-Encoding"), "{resp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunked_framing_after_the_head_cuts_the_client_and_counts_against_the_node() {
    fn reply(buf: &[u8]) -> Option<Vec<u8>> {
        complete(buf).then(|| b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n".to_vec())
    }
    let node = RawNode::start(reply).await;
    let lb = balancer(&node.addr).await;
    for hyper in [false, true] {
        let mut s = TcpStream::connect(lb.traffic).await.unwrap();
        let mut buf = Vec::new();
        if hyper {
            s.write_all(b"GET /1/lb/nodes HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            read_response(&mut s, &mut buf).await;
        }
        s.write_all(b"GET /r/app/broken HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        // The connection must end (not hang) without the body's end.
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(LIMIT, s.read(&mut chunk)).await {
                Err(_) => panic!("the client was left hanging (hyper: {hyper}): {:?}", String::from_utf8_lossy(&buf)),
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let got = String::from_utf8_lossy(&buf).into_owned();
        assert!(got.contains("HTTP/1.1 200") && !got.ends_with("0\r\n\r\n"), "hyper: {hyper}: {got:?}");
    }
    let metrics = send("GET", &lb.url("/1/lb/metrics"), "").await.text();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("fnlb_upstream_errors_total")
                && l.contains(&node.addr.to_string())
                && l.contains("invalid_response")
        })
        .unwrap_or_else(|| panic!("no invalid_response count for the node:\n{metrics}"));
    assert!(
        line.ends_with(" 2"),
        "{line}\n{}",
        metrics.lines().filter(|l| l.contains("upstream_errors")).collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_carry_our_via_and_a_call_that_comes_back_is_508() {
    let node = RawNode::start(answer_ok).await;
    let lb = balancer(&node.addr).await;
    let resp = exchange(lb.traffic, b"GET /r/app/v HTTP/1.1\r\nHost: x\r\nVia: 1.0 edge\r\n\r\n").await;
    assert_eq!(status(&resp), "200", "{resp}");
    let got = node.wait_for("the request", |c| c.contains("/r/app/v")).await;
    let ours: Vec<&str> = got.lines().filter(|l| l.to_ascii_lowercase().starts_with("via: 1.1 fnlb-")).collect();
    assert_eq!(ours.len(), 1, "{got}");
    assert!(got.contains("Via: 1.0 edge\r\n"), "{got}");
    // The same Via coming back in is a loop, on both transports; nothing reaches the node.
    let before = node.seen().len();
    let req = format!("GET /r/app/v HTTP/1.1\r\nHost: x\r\nVia: 1.0 edge, {}\r\n\r\n", &ours[0][5..]);
    for resp in [exchange(lb.traffic, req.as_bytes()).await, via_hyper(lb.traffic, req.as_bytes()).await] {
        assert_eq!(status(&resp), "508", "{resp}");
        assert!(msg(&resp).contains("loop detected"), "{resp}");
    }
    assert_eq!(node.seen().len(), before, "{:?}", node.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_own_listener_is_refused_as_a_node() {
    // A listener on 0.0.0.0 takes calls on every local address.
    let lb = Fnlb::start_raw(&["-listen", "0.0.0.0:0", "-mgmt-listen", "0.0.0.0:0", "-hc-interval", "0.2"], &[]);
    let port = lb.traffic.port();
    let url = format!("http://127.0.0.1:{port}/1/lb/nodes");
    for me in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("0.0.0.0:{port}")] {
        let r = send("PUT", &url, &format!(r#"{{"node":"{me}"}}"#)).await;
        assert_eq!(r.status, 400, "{me}: {}", r.text());
        assert!(r.json()["msg"].as_str().unwrap().contains("own listener"), "{}", r.text());
    }
    let listed = send("GET", &url, "").await.json();
    assert_eq!(listed["nodes"], serde_json::json!({}), "{listed}");
    // Another port on the same host is a node like any other.
    let r = send("PUT", &url, &format!(r#"{{"node":"127.0.0.1:{}"}}"#, if port == 1 { 2 } else { port - 1 })).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_host_names_are_not_node_addresses() {
    let lb = Fnlb::start(&[]);
    for addr in ["0x7f.0.0.1:80", "0x7f000001:80", "2130706433:80", "0177.0.0.1:80"] {
        let r = send("PUT", &lb.mgmt_url("/1/lb/nodes"), &format!(r#"{{"node":"{addr}"}}"#)).await;
        assert_eq!(r.status, 400, "{addr}: {}", r.text());
    }
    let r = send("PUT", &lb.mgmt_url("/1/lb/nodes"), r#"{"node":"127.0.0.1:80"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = send("GET", &lb.mgmt_url("/1/lb/nodes"), "").await.json();
    assert_eq!(listed["nodes"].as_object().unwrap().len(), 1, "{listed}");
    // And on the command line: a usage error naming the flag.
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_fnlb")).args(["-nodes", "0x7f000001:80"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("-nodes") && err.contains("0x7f000001"), "{err}");
}

/// What "the same request" means between the two transports: the request line, and the header
/// fields as (lowercase name, value) in the order of their names (hyper lowercases names and
/// groups equal ones; values of one name keep their order).
fn fields(raw: &str) -> (String, Vec<(String, String)>) {
    let head = &raw[..raw.find("\r\n\r\n").expect("no head")];
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap().to_string();
    let mut f: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    f.sort_by(|a, b| a.0.cmp(&b.0));
    (line, f)
}

/// The differential test: the same request bytes once through the fast path and once through
/// the hyper path; the node must receive the same request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_transports_forward_the_same_request() {
    let node = RawNode::start(answer_ok).await;
    let lb = balancer(&node.addr).await;
    let tricky: &[&str] = &[
        "GET /r/app/d0 HTTP/1.1\r\nHost: fn.example\r\nUser-Agent: t\r\n\r\n",
        // Hop-by-hop fields, TE, credentials for the proxy.
        "GET /r/app/d1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9v\r\nTE: trailers, deflate\r\n\r\n",
        "GET /r/app/d2 HTTP/1.1\r\nHost: x\r\nTE: gzip\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        // Connection naming other fields (the fast path hands these to hyper).
        "GET /r/app/d3 HTTP/1.1\r\nHost: x\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\nX-Keep: yes\r\n\r\n",
        // X-Forwarded-For chains.
        "GET /r/app/d4 HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.9.9.9\r\nx-forwarded-for: 10.8.8.8, 10.7.7.7\r\n\r\n",
        // Trace context (not traced here: passed on), the wait header, Via chains.
        "GET /r/app/d5 HTTP/1.1\r\nHost: x\r\nb3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\nX-B3-TraceId: abc\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nXXX-FXLB-WAIT: 1ms\r\n\r\n",
        "GET /r/app/d6 HTTP/1.1\r\nHost: x\r\nVia: 1.0 edge, 1.1 other-lb\r\nVia: 1.1 cdn (Squid)\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
        // A body with a length; no Host at all (the node's address is the Host).
        "POST /r/app/d7 HTTP/1.1\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
        // Empty lines before the request line (skipped by both).
        "\r\n\r\nGET /r/app/d8 HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for (i, req) in tricky.iter().enumerate() {
        let path = format!("/r/app/d{i} ");
        exchange(lb.traffic, req.as_bytes()).await;
        let fast = node.wait_for(&path, |c| c.contains(&path)).await;
        node.calls.lock().unwrap().clear();
        via_hyper(lb.traffic, req.as_bytes()).await;
        let general = node.wait_for(&path, |c| c.contains(&path)).await;
        node.calls.lock().unwrap().clear();
        assert_eq!(fields(&fast), fields(&general), "request {i}: {req:?}\nfast:  {fast:?}\nhyper: {general:?}");
        assert_eq!(fast[fast.find("\r\n\r\n").unwrap()..], general[general.find("\r\n\r\n").unwrap()..], "body {i}");
    }
}

/// HTTP/2 may split `cookie` into several fields (RFC 9113 §8.2.3); an HTTP/1.1 node must get
/// one `Cookie` line, joined with `; `.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_fields_reach_the_node_as_one_line() {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls::pki_types::ServerName;

    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let node = RawNode::start(answer_ok).await;
    let (cert, key, nodes) = (cert.display().to_string(), key.display().to_string(), node.addr.to_string());
    let lb = Fnlb::start(&["-tls-cert", &cert, "-tls-key", &key, "-nodes", &nodes]);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(lb.traffic).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(format!("https://localhost:{}/r/app/cookies", lb.traffic.port()))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("Cookie", "c=3")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(LIMIT, sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let got = node.wait_for("the call", |c| c.contains("/r/app/cookies")).await;
    let cookies: Vec<&str> = got.lines().filter(|l| l.to_ascii_lowercase().starts_with("cookie:")).collect();
    assert_eq!(cookies.len(), 1, "{got}");
    assert_eq!(cookies[0].split_once(':').unwrap().1.trim(), "a=1; b=2; c=3", "{got}");
}
