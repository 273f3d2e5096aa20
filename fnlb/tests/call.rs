//! The call engine end to end (`proxy/call.rs`): a function call runs at most once, failures are
//! judged by whose fault they are, resends are bounded by the retry budget, abandoned calls are
//! observed, and slow clients lose their connection. Each on both transports where they differ:
//! the fast path (plain HTTP/1.1) and the hyper path (forced with HTTP/1.0 or `Expect`).
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a [`RawNode`] does with a function call (health checks get a version).
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Reads the call and drops the connection without a word: a node killed mid-call, or a
    /// call that kills its node.
    Die,
    /// Answers 200 with a length, then closes without saying `Connection: close`.
    AnswerAndClose,
    /// Reads only the head, answers 413 with `Connection: close`, and closes.
    Early413,
    /// Answers 200 with a 32 MiB body.
    Big,
    /// Reads only the head, then neither reads, answers nor closes.
    StopReading,
    /// Reads the call, sends the head and 10 bytes of a body of this length, then nothing more,
    /// the connection left open.
    StallBody(usize),
}

/// The silent close comes a moment after the answer, so that it may cross the next call.
const CLOSE_AFTER_US: u64 = 500;

struct RawNode {
    addr: SocketAddr,
    /// Function calls received (heads read).
    calls: Arc<AtomicUsize>,
}

async fn raw_node(b: Behaviour) -> RawNode {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else { return };
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some((head, body_len)) = read_head(&mut sock, &mut buf).await else { return };
                    if head.starts_with("GET /version ") {
                        let body = r#"{"version":"0.3.753"}"#;
                        let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        if sock.write_all(r.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    match b {
                        Behaviour::Die => return,
                        Behaviour::Early413 => {
                            let r = "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large";
                            let _ = sock.write_all(r.as_bytes()).await;
                            return;
                        }
                        Behaviour::StopReading => std::future::pending::<()>().await,
                        Behaviour::AnswerAndClose | Behaviour::Big | Behaviour::StallBody(_) => {
                            // Read the body, if any.
                            while buf.len() < body_len {
                                let mut chunk = [0u8; 65536];
                                match sock.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                            buf.drain(..body_len);
                            if let Behaviour::StallBody(len) = b {
                                let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n0123456789");
                                let _ = sock.write_all(r.as_bytes()).await;
                                std::future::pending::<()>().await;
                            }
                            if b == Behaviour::AnswerAndClose {
                                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                                tokio::time::sleep(Duration::from_micros(CLOSE_AFTER_US)).await;
                                return;
                            }
                            let size = 32 << 20;
                            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
                            if sock.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            let block = vec![b'x'; 1 << 20];
                            for _ in 0..32 {
                                if sock.write_all(&block).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    RawNode { addr, calls }
}

/// Reads a request head from `buf` + the socket; returns it (removed from `buf`) and its body's
/// Content-Length (0 without one).
async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, usize)> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            buf.drain(..end + 4);
            let lower = head.to_ascii_lowercase();
            let len = lower
                .split("\r\n")
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            return Some((head, len));
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn balancer(nodes: &[SocketAddr], extra: &[&str]) -> Fnlb {
    let list = nodes.iter().map(std::string::ToString::to_string).collect::<Vec<_>>().join(",");
    // A management listener of its own: `/metrics` there is the balancer's, wherever a shared
    // listener sends it.
    let mgmt = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    // The raw nodes count every request: the function-key refresher's API reads stay out.
    let mut args = vec!["-nodes", &list, "-policy", "ch", "-function-keys=false"];
    if !extra.contains(&"-max-connections") {
        // (Under -max-connections, one shared listener: the test counts its connections.)
        args.extend_from_slice(&["-mgmt-listen", &mgmt]);
    }
    args.extend_from_slice(extra);
    let lb = Fnlb::start(&args);
    let want: Vec<(String, &str)> = nodes.iter().map(|a| (a.to_string(), "online")).collect();
    let want: Vec<(&str, &str)> = want.iter().map(|(a, s)| (a.as_str(), *s)).collect();
    lb.wait_nodes(&want).await;
    lb
}

/// Sends raw bytes and reads the whole answer (the server closes, or 10 s pass).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A GET on the fast path (HTTP/1.1, closing) and the same on the hyper path (HTTP/1.0).
const GET_FAST: &[u8] = b"GET /r/app/fn HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
const GET_HYPER: &[u8] = b"GET /r/app/fn HTTP/1.0\r\nHost: x\r\n\r\n";

fn status_of(answer: &str) -> u16 {
    answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The value of one series in the balancer's metrics (0 when absent).
async fn metric(lb: &Fnlb, series: &str) -> f64 {
    let text = send("GET", &lb.mgmt_url("/metrics"), "").await.text();
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

async fn poll(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_node_dies_mid_call_is_not_resent_on_either_path() {
    for (path, req) in [("fast", GET_FAST), ("hyper", GET_HYPER)] {
        let (a, b) = (raw_node(Behaviour::Die).await, raw_node(Behaviour::Die).await);
        let lb = balancer(&[a.addr, b.addr], &[]).await;
        let answer = exchange(lb.traffic, req).await;
        assert_eq!(status_of(&answer), 502, "{path}: {answer}");
        assert!(answer.contains("may have run"), "{path}: {answer}");
        assert!(!answer.contains("no node could be reached"), "{path}: {answer}");
        let got = a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst);
        assert_eq!(got, 1, "{path}: the call reached one node only (a poison call kills one node, not the fleet)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_idempotent_resends_a_get_within_the_retry_budget() {
    let (a, b) = (raw_node(Behaviour::Die).await, raw_node(Behaviour::Die).await);
    // No node is ever skipped as unreachable: every call meets both failing nodes.
    let lb = balancer(&[a.addr, b.addr], &["-retry-idempotent=true", "-max-ejected", "0"]).await;
    let received = || a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst);
    let answer = exchange(lb.traffic, GET_FAST).await;
    assert_eq!(status_of(&answer), 502, "{answer}");
    assert_eq!(received(), 2, "resent once to the other node");
    // A POST is never resent, even so.
    exchange(lb.traffic, b"POST /r/app/fn HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        .await;
    assert_eq!(received(), 3);
    // A failing fleet: without a budget, 300 calls would be 600 deliveries.
    let calls = 300;
    for i in 0..calls {
        let req = if i % 2 == 0 { GET_FAST } else { GET_HYPER };
        let answer = exchange(lb.traffic, req).await;
        assert_eq!(status_of(&answer), 502, "{answer}");
    }
    let fleet = received() - 3;
    assert!(fleet >= calls, "{fleet}");
    assert!(fleet < 2 * calls - 50, "the budget bounded resends: {fleet} deliveries for {calls} calls");
    assert!(metric(&lb, "fnlb_unserved_requests_total{reason=\"budget\"}").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_close_kept_alive_connections_silently_cost_no_call() {
    let node = raw_node(Behaviour::AnswerAndClose).await;
    let lb = balancer(&[node.addr], &[]).await;
    // Fast path: one kept-alive client connection.
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..300 {
        s.write_all(b"GET /r/app/fn HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let head = read_answer(&mut s, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200"), "fast path, call {i}: {head}");
    }
    // Hyper path: an `Expect` hands the client connection to the general server for good.
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..300 {
        let expect = if i == 0 { "Expect: 100-continue\r\n" } else { "" };
        s.write_all(format!("GET /r/app/fn HTTP/1.1\r\nHost: x\r\n{expect}\r\n").as_bytes()).await.unwrap();
        let head = read_answer(&mut s, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200"), "hyper path, call {i}: {head}");
    }
}

/// Reads one answer with a Content-Length body from a kept-alive connection.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            if head.starts_with("HTTP/1.1 1") {
                buf.drain(..end + 4);
                continue;
            }
            let len: usize = head
                .to_ascii_lowercase()
                .split("\r\n")
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let whole = String::from_utf8_lossy(&buf[..end + 4 + len]).to_string();
                buf.drain(..end + 4 + len);
                return whole;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_broken_body_never_counts_against_the_node() {
    let (a, b) = (FakeNode::start().await, FakeNode::start().await);
    let lb = balancer(&[a.addr, b.addr], &[]).await;
    let home = send("GET", &lb.url("/r/app/fn"), "").await.node();
    let head = "POST /r/app/fn HTTP/1.1\r\nHost: x\r\n";
    for (what, first, rest) in [
        ("malformed chunked (fast)", format!("{head}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"), "zz\r\n"),
        ("aborted upload (fast)", format!("{head}Content-Length: 1000\r\n\r\n0123456789"), ""),
        (
            "malformed chunked (hyper)",
            format!("{head}Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
            "zz\r\n",
        ),
        ("aborted upload (hyper)", format!("{head}Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n0123456789"), ""),
    ] {
        let calls = a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst);
        let mut s = TcpStream::connect(lb.traffic).await.unwrap();
        s.write_all(first.as_bytes()).await.unwrap();
        // The head reaches the node before the client's fault shows.
        poll("the call reached a node", async || {
            a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst) > calls
        })
        .await;
        if rest.is_empty() {
            drop(s);
        } else {
            s.write_all(rest.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        }
        let before = send("GET", &lb.url("/r/app/fn"), "").await;
        assert_eq!(before.status, 200, "{what}");
        assert_eq!(before.node(), home, "{what}: the node stays in rotation");
    }
    assert_eq!(metric(&lb, "fnlb_upstream_errors_total").await, 0.0, "no upstream error counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_client_abandons_is_observed_as_499() {
    let node = FakeNode::start_with(NodeOpts { delay: Duration::from_secs(3), ..NodeOpts::default() }).await;
    let lb = balancer(&[node.addr], &["-access-log=true"]).await;
    let series = format!("fnlb_requests_total{{node=\"{}\",class=\"4xx\"}}", node.addr);
    for (i, req) in [GET_FAST, GET_HYPER].into_iter().enumerate() {
        let mut s = TcpStream::connect(lb.traffic).await.unwrap();
        s.write_all(req).await.unwrap();
        let calls = node.calls.clone();
        poll("the call reached the node", async || calls.load(Ordering::SeqCst) > i).await;
        drop(s);
        poll("499 counted", async || metric(&lb, &series).await >= (i + 1) as f64).await;
    }
    assert!(lb.log().contains("status=499"), "{}", lb.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_loses_its_connection_and_permit() {
    let node = FakeNode::start().await;
    let lb = balancer(&[node.addr], &["-client-body-timeout", "1", "-max-connections", "2"]).await;
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(lb.traffic).await.unwrap();
        s.write_all(b"POST /r/app/fn HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nx").await.unwrap();
        slow.push(s);
    }
    // Each stalled client is cut (its answer, if any, then the close) ...
    for mut s in slow {
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(r.is_ok(), "a stalled body kept its connection");
    }
    // ... and a third client is served.
    let r = tokio::time::timeout(Duration::from_secs(10), send("GET", &lb.url("/r/app/fn"), "")).await;
    assert_eq!(r.expect("third client not served").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_after_the_send_timeout() {
    let node = raw_node(Behaviour::Big).await;
    let lb = balancer(&[node.addr], &["-send-timeout", "1", "-max-connections", "1"]).await;
    let mut stuck = TcpStream::connect(lb.traffic).await.unwrap();
    stuck.write_all(b"GET /r/app/big HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let calls = node.calls.clone();
    poll("the call reached the node", async || calls.load(Ordering::SeqCst) > 0).await;
    // The only permit is the stuck client's until the send timeout frees it.
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    s.write_all(b"GET /r/app/other HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut b = [0u8; 12];
    let r = tokio::time::timeout(Duration::from_secs(15), s.read_exact(&mut b)).await;
    assert!(matches!(r, Ok(Ok(12))), "a second client was never served");
    assert_eq!(&b, b"HTTP/1.1 200");
    drop(stuck);
}

/// Sends an upload of `size` bytes with `version` ("1.1": the fast path; "1.0": the hyper path)
/// and returns what the client got (the balancer closes, or 10 s pass).
async fn upload(lb: &Fnlb, version: &str, size: usize) -> String {
    let s = TcpStream::connect(lb.traffic).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = format!("POST /r/app/fn HTTP/{version}\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let block = vec![b'y'; 64 << 10];
        for _ in 0..(size / block.len()) {
            if wr.write_all(&block).await.is_err() {
                return;
            }
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_early_answer_reaches_the_client() {
    let node = raw_node(Behaviour::Early413).await;
    let lb = balancer(&[node.addr], &[]).await;
    let answer = upload(&lb, "1.1", 8 << 20).await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert!(answer.ends_with("too large"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_early_answer_reaches_the_client_on_the_hyper_path() {
    let node = raw_node(Behaviour::Early413).await;
    let lb = balancer(&[node.addr], &[]).await;
    // Whether the node's close beats the body write is a draw each round: five rounds.
    for round in 0..5 {
        let answer = upload(&lb, "1.0", 8 << 20).await;
        assert_eq!(status_of(&answer), 413, "round {round}: {answer}");
        assert!(answer.ends_with("too large"), "{answer}");
    }
}

/// The node's timeout errors in the balancer's metrics.
async fn node_timeouts(lb: &Fnlb, node: SocketAddr) -> f64 {
    metric(lb, &format!("fnlb_upstream_errors_total{{node=\"{node}\",kind=\"timeout\"}}")).await
}

/// A node that stops reading an upload without answering or closing: the call ends after
/// -upstream-timeout with a 504 that says so (not resent: it may have run), on both paths, and
/// the node's timeout is counted. Before, both waited for as long as the node held on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_reading_an_upload_is_given_up_after_the_upstream_timeout() {
    let node = raw_node(Behaviour::StopReading).await;
    let lb = balancer(&[node.addr], &["-upstream-timeout", "1"]).await;
    for (round, version) in ["1.1", "1.0"].into_iter().enumerate() {
        // More than every socket buffer between the client and the node can hold.
        let answer = upload(&lb, version, 64 << 20).await;
        assert_eq!(status_of(&answer), 504, "HTTP/{version}: {answer}");
        assert!(answer.contains("took no byte of the request body for 1s; the call may have run"), "{answer}");
        assert_eq!(node_timeouts(&lb, node.addr).await, (round + 1) as f64, "HTTP/{version}");
        assert_eq!(node.calls.load(Ordering::SeqCst), round + 1, "not sent again");
    }
}

/// A node that stops sending its answer's body without closing: the client's connection is cut
/// after -upstream-timeout (its head is out, so there is no 504 to give), on both paths, and the
/// node's timeout is counted. A 1,000-byte body goes through the fast path's copy loop, a 1 MiB
/// one through its splice loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stalls_mid_answer_is_cut_off_after_the_upstream_timeout() {
    for len in [1000, 1 << 20] {
        stalls_mid_answer(len).await;
    }
}

async fn stalls_mid_answer(len: usize) {
    let node = raw_node(Behaviour::StallBody(len)).await;
    let lb = balancer(&[node.addr], &["-upstream-timeout", "1"]).await;
    for (round, get) in [GET_FAST, GET_HYPER].into_iter().enumerate() {
        let mut s = TcpStream::connect(lb.traffic).await.unwrap();
        s.write_all(get).await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        let answer = String::from_utf8_lossy(&out).into_owned();
        assert!(read.is_ok(), "{len} bytes, round {round}: the connection stayed open: {answer}");
        assert_eq!(status_of(&answer), 200, "{answer}");
        assert!(answer.ends_with("0123456789"), "the part that came is passed on: {answer}");
        assert_eq!(node_timeouts(&lb, node.addr).await, (round + 1) as f64, "round {round}");
    }
}
