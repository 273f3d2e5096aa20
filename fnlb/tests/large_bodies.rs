//! Large `Content-Length` bodies on the fast path, which moves them between the sockets with
//! splice(2) on Linux (`proxy/h1/splice.rs`) and copies them elsewhere: whole and in order both
//! ways, the connections kept on both sides after them; and when they break, the fault is the
//! side that broke them, as on the copy path — a client that stops or aborts its upload (the node
//! not suspected), a node that dies mid-answer (the client gets every byte it sent, then the
//! close), a client that stops reading (-send-timeout). Raw sockets against the real binary and
//! a raw node.
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1024 * 1024;
const LIMIT: Duration = Duration::from_secs(20);

/// `len` bytes that no misplaced, lost or repeated piece leaves unchanged (xorshift).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a: the node reports the body it got by this sum.
fn sum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// 64 MiB, more than any socket buffers hold.
fn huge() -> &'static [u8] {
    static HUGE: OnceLock<Vec<u8>> = OnceLock::new();
    HUGE.get_or_init(|| pattern(64 * MIB, 7))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> usize {
    let lower = String::from_utf8_lossy(head).to_ascii_lowercase();
    lower.find("content-length: ").map_or(0, |i| lower[i + 16..].split("\r\n").next().unwrap().trim().parse().unwrap())
}

/// A raw node. Per path: `/r/app/echo` answers the request's body back, with its sum in
/// `X-Sum`; `/r/app/cut` declares 5 MiB, sends 1 MiB of [`pattern`] (seed 3) and closes;
/// `/r/app/huge` answers [`huge`]; anything else answers `ok`. Every answer names the node in
/// `X-Node`.
struct RawNode {
    addr: SocketAddr,
    /// Connections that carried function calls (health checks have their own).
    conns: Arc<AtomicUsize>,
    /// Calls whose head arrived.
    calls: Arc<AtomicUsize>,
}

async fn raw_node() -> RawNode {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (conns, calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, k) = (conns.clone(), calls.clone());
    tokio::spawn(async move {
        loop {
            let (sock, _) = l.accept().await.unwrap();
            tokio::spawn(serve_node(sock, addr, c.clone(), k.clone()));
        }
    });
    RawNode { addr, conns, calls }
}

async fn serve_node(mut sock: TcpStream, me: SocketAddr, conns: Arc<AtomicUsize>, calls: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut counted = false;
    loop {
        // A head.
        let end = loop {
            if let Some(e) = find(&buf, b"\r\n\r\n") {
                break e + 4;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        if path != "/version" {
            calls.fetch_add(1, Ordering::SeqCst);
            if !counted {
                counted = true;
                conns.fetch_add(1, Ordering::SeqCst);
            }
        }
        // Its body: a client that stops sending leaves the node waiting, until fnlb closes.
        let total = end + content_length(&buf[..end]);
        while buf.len() < total {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..total).skip(end).collect();
        let node = format!("X-Node: {me}\r\n");
        let written = match path.as_str() {
            "/version" => {
                let v = r#"{"version":"0.3.753"}"#;
                sock.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{v}", v.len()).as_bytes()).await
            }
            "/r/app/echo" => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\n{node}X-Sum: {:x}\r\nContent-Length: {}\r\n\r\n",
                    sum(&body),
                    body.len()
                );
                match sock.write_all(head.as_bytes()).await {
                    Ok(()) => sock.write_all(&body).await,
                    e => e,
                }
            }
            "/r/app/cut" => {
                let head = format!("HTTP/1.1 200 OK\r\n{node}Content-Length: {}\r\n\r\n", 5 * MIB);
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&pattern(MIB, 3)).await;
                return;
            }
            "/r/app/huge" => {
                let head = format!("HTTP/1.1 200 OK\r\n{node}Content-Length: {}\r\n\r\n", huge().len());
                match sock.write_all(head.as_bytes()).await {
                    Ok(()) => sock.write_all(huge()).await,
                    e => e,
                }
            }
            _ => sock.write_all(format!("HTTP/1.1 200 OK\r\n{node}Content-Length: 2\r\n\r\nok").as_bytes()).await,
        };
        if written.is_err() {
            return;
        }
    }
}

/// Reads one Content-Length response from a kept-alive connection: its head and body.
async fn response<R: AsyncRead + Unpin>(s: &mut R, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        if let Some(e) = find(buf, b"\r\n\r\n") {
            let total = e + 4 + content_length(&buf[..e + 4]);
            if buf.len() >= total {
                let head = String::from_utf8_lossy(&buf[..e + 4]).into_owned();
                let body = buf[e + 4..total].to_vec();
                buf.drain(..total);
                return (head, body);
            }
        }
        let n = tokio::time::timeout(LIMIT, s.read(&mut chunk)).await.expect("no response in time").unwrap();
        assert!(n > 0, "connection closed after {} bytes", buf.len());
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Everything until the balancer closes (false: still open at `limit`).
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, s.read_to_end(&mut out)).await.is_ok();
    (out, closed)
}

/// The value of one series in the balancer's metrics, summed over labels (0 when absent).
async fn metric(lb: &Fnlb, series: &str) -> f64 {
    let text = send("GET", &lb.mgmt_url("/metrics"), "").await.text();
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

async fn balancer(nodes: &[&RawNode], extra: &[&str]) -> Fnlb {
    let list = nodes.iter().map(|n| n.addr.to_string()).collect::<Vec<_>>().join(",");
    // A management listener of its own, for `/metrics`.
    let mgmt = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut args = vec!["-nodes", &list, "-policy", "ch", "-function-keys=false", "-mgmt-listen", &mgmt];
    args.extend_from_slice(extra);
    let lb = Fnlb::start(&args);
    let want: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let want: Vec<(&str, &str)> = want.iter().map(|a| (a.as_str(), "online")).collect();
    lb.wait_nodes(&want).await;
    lb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_mib_bodies_pass_whole_both_ways_and_both_connections_stay() {
    let node = raw_node().await;
    let lb = balancer(&[&node], &[]).await;
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    let mut buf = Vec::new();
    // Twice on one connection (its pipe is reused), each big body followed by a pipelined small
    // call in the same write: a sized body is read no further than its end.
    for seed in [1, 2] {
        let body = pattern(5 * MIB, seed);
        let mut req =
            format!("POST /r/app/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        req.extend_from_slice(&body);
        req.extend_from_slice(b"POST /r/app/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        // Written while the answers are read: the echo streams back only once the node has it all.
        let (mut rd, mut wr) = s.split();
        let write = async {
            wr.write_all(&req).await.unwrap();
        };
        let read = async {
            let big = response(&mut rd, &mut buf).await;
            let small = response(&mut rd, &mut buf).await;
            (big, small)
        };
        let (_, ((head, got), (small_head, small))) = tokio::join!(write, read);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains(&format!("x-sum: {:x}\r\n", sum(&body))),
            "the node got it whole: {head}"
        );
        assert_eq!(got.len(), body.len());
        assert!(got == body, "the answer came back whole and in order");
        assert!(small_head.starts_with("HTTP/1.1 200"), "{small_head}");
        assert_eq!(small, b"hello");
    }
    assert_eq!(node.calls.load(Ordering::SeqCst), 4);
    assert_eq!(node.conns.load(Ordering::SeqCst), 1, "every body ended cleanly: one node connection for all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_or_aborts_its_large_upload_is_at_fault_not_the_node() {
    let (a, b) = (raw_node().await, raw_node().await);
    let lb = balancer(&[&a, &b], &["-client-body-timeout", "1"]).await;
    let home = send("GET", &lb.url("/r/app/echo"), "").await.node();
    let head = format!("POST /r/app/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", 5 * MIB);
    let part = pattern(MIB, 4);
    for abort in [false, true] {
        let calls = a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst);
        let mut s = TcpStream::connect(lb.traffic).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&part).await.unwrap();
        if abort {
            // The head reaches the node before the client's fault shows.
            for _ in 0..200 {
                if a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst) > calls {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            drop(s);
        } else {
            // One fifth of the body, then nothing: -client-body-timeout answers.
            let (answer, closed) = read_to_close(&mut s, LIMIT).await;
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            assert!(closed, "the connection closes after a body that was not read to its end");
        }
        let next = send("GET", &lb.url("/r/app/echo"), "").await;
        assert_eq!(next.status, 200, "abort {abort}");
        assert_eq!(next.node(), home, "abort {abort}: the node stays in rotation");
    }
    assert_eq!(metric(&lb, "fnlb_upstream_errors_total").await, 0.0, "no upstream error counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_mid_answer_cuts_the_clients_body_after_every_byte_it_sent() {
    let node = raw_node().await;
    let lb = balancer(&[&node], &[]).await;
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    s.write_all(b"GET /r/app/cut HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (got, closed) = read_to_close(&mut s, LIMIT).await;
    assert!(closed, "the client's connection closes with the cut body");
    let end = find(&got, b"\r\n\r\n").expect("a head") + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got[..end]));
    assert_eq!(content_length(&got[..end]), 5 * MIB);
    assert_eq!(got.len() - end, MIB, "all the node sent, nothing more");
    assert!(got[end..] == pattern(MIB, 3)[..], "in order");
    // The node's fault: a broken connection after the request was sent.
    for _ in 0..200 {
        if metric(&lb, "fnlb_upstream_errors_total").await >= 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the broken answer was not counted against the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_large_answer_loses_its_connection() {
    let node = raw_node().await;
    let lb = balancer(&[&node], &["-send-timeout", "1"]).await;
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    s.write_all(b"GET /r/app/huge HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // Past the head and well into the spliced part of the body; then no reads.
    while buf.len() < 2 * MIB {
        let n = tokio::time::timeout(LIMIT, s.read(&mut chunk)).await.expect("the answer stalled").unwrap();
        assert!(n > 0, "closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
    let stopped = tokio::time::Instant::now();
    // Past the send deadline (1 s from the first blocked write), reading shows whether it was cut.
    tokio::time::sleep_until(stopped + Duration::from_secs(3)).await;
    let (rest, closed) = read_to_close(&mut s, LIMIT).await;
    assert!(closed, "a client that did not read kept its connection");
    let end = find(&buf, b"\r\n\r\n").unwrap() + 4;
    let body = buf.len() - end + rest.len();
    assert!(body < huge().len(), "the answer was cut ({body} bytes)");
    buf.extend_from_slice(&rest);
    assert!(buf[end..] == huge()[..body], "what came before the cut came whole and in order");
    // A client's fault: the node's connection was dropped, the node not counted against.
    assert_eq!(metric(&lb, "fnlb_upstream_errors_total").await, 0.0);
}

/// A small answer after large ones on a kept-alive client connection: the copy path and the
/// splice path take turns on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_and_large_answers_alternate_on_one_connection() {
    let node = raw_node().await;
    let lb = balancer(&[&node], &[]).await;
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    let mut buf = Vec::new();
    for len in [10, 200 * 1024, 100, 64 * 1024 + 1, 64 * 1024 - 1, 3 * MIB] {
        let body = pattern(len, len as u64);
        let mut req = format!("POST /r/app/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        req.extend_from_slice(&body);
        s.write_all(&req).await.unwrap();
        let (head, got) = response(&mut s, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{len}: {head}");
        assert!(got == body, "{len}: whole and in order");
    }
    assert_eq!(node.conns.load(Ordering::SeqCst), 1);
}
