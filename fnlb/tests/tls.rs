//! TLS on the listeners (`-tls-cert`/`-tls-key`): HTTP/1.1 and HTTP/2 by ALPN to the same
//! HTTP/1.1 nodes, the management API, plain clients and silent ones, and bad flags. The
//! certificate is made here (rcgen) and trusted by a rustls client; everything runs over real
//! loopback sockets against the real binary.
mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};

const LIMIT: Duration = Duration::from_secs(20);

/// A self-signed certificate for `localhost` and 127.0.0.1, as PEM files in a temporary folder.
struct Certs {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        Certs { cert, key, der: ck.cert.der().clone(), dir }
    }

    /// `-tls-cert PATH -tls-key PATH`.
    fn flags(&self) -> Vec<String> {
        vec!["-tls-cert".into(), self.cert.display().to_string(), "-tls-key".into(), self.key.display().to_string()]
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

/// Starts fnlb with TLS and the given further flags.
fn start(certs: &Certs, args: &[&str]) -> Fnlb {
    let flags = certs.flags();
    let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    Fnlb::start(&all)
}

/// A TLS connection to `addr` trusting only `certs`, offering `alpn`.
async fn connect(addr: std::net::SocketAddr, certs: &Certs, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.der.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(LIMIT, TlsConnector::from(Arc::new(config)).connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake failed")
}

async fn collect(resp: hyper::Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(LIMIT, body.collect()).await.expect("body timed out").unwrap().to_bytes();
    Answer { status: parts.status.as_u16(), headers: parts.headers, body }
}

/// One HTTP/1.1 request over a new TLS connection.
async fn send_h1(
    addr: std::net::SocketAddr,
    certs: &Certs,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let tls = connect(addr, certs, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", format!("localhost:{}", addr.port()));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body.as_bytes()))).unwrap();
    let resp = tokio::time::timeout(LIMIT, sender.send_request(req)).await.expect("timed out").expect("failed");
    collect(resp).await
}

/// An HTTP/2 connection over TLS (ALPN offers h2 and http/1.1; the server must pick h2).
async fn h2(
    addr: std::net::SocketAddr,
    certs: &Certs,
) -> (hyper::client::conn::http2::SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>) {
    h2_with(addr, certs, None).await
}

/// Same, the client sending a PING every `ping` even while idle.
async fn h2_with(
    addr: std::net::SocketAddr,
    certs: &Certs,
    ping: Option<Duration>,
) -> (hyper::client::conn::http2::SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>) {
    let tls = connect(addr, certs, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new()).keep_alive_interval(ping).keep_alive_while_idle(true);
    let (sender, conn) = builder.handshake(TokioIo::new(tls)).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

async fn send_h2(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    method: &str,
    url: &str,
    body: &str,
) -> Answer {
    let req =
        Request::builder().method(method).uri(url).body(Full::new(Bytes::copy_from_slice(body.as_bytes()))).unwrap();
    tokio::time::timeout(LIMIT, sender.ready()).await.expect("timed out").expect("connection closed");
    let resp = tokio::time::timeout(LIMIT, sender.send_request(req)).await.expect("timed out").expect("failed");
    collect(resp).await
}

/// Waits (bounded) until the management API, over TLS, lists `node` online.
async fn wait_online(lb: &Fnlb, certs: &Certs, node: &str) {
    let mut last = String::new();
    for _ in 0..300 {
        let r = send_h1(lb.mgmt, certs, "GET", "/1/lb/nodes", &[], "").await;
        if r.status == 200 && r.json()["nodes"][node] == "online" {
            return;
        }
        last = r.text();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{node} never online; last {last}");
}

/// Reads until the server closes the connection; what came and how long it took.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<(Vec<u8>, Duration)> {
    let start = Instant::now();
    let mut out = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut out)).await {
        Ok(_) => Some((out, start.elapsed())),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_over_tls_reach_the_node_with_host_and_body() {
    let certs = Certs::new();
    let node = FakeNode::start().await;
    let lb = start(&certs, &["-nodes", &node.name()]);
    wait_online(&lb, &certs, &node.name()).await;

    // HTTP/1.1: the client's Host goes to the node as it was.
    let r = send_h1(lb.traffic, &certs, "POST", "/r/app/one", &[("host", "fn.example.com")], "ping").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-seen-host"], "fn.example.com");
    assert_eq!(r.headers["x-seen-body-len"], "4");
    assert_eq!(r.text(), format!("{} POST /r/app/one\n", node.name()));

    // HTTP/2: no Host header, the authority is the host; the node speaks HTTP/1.1 and sees it as
    // Host, with an origin-form path.
    let (mut sender, _conn) = h2(lb.traffic, &certs).await;
    let authority = format!("localhost:{}", lb.traffic.port());
    let r = send_h2(&mut sender, "POST", &format!("https://{authority}/r/app/two?x=1"), "hello over h2").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-seen-host"], authority.as_str());
    assert_eq!(r.headers["x-seen-body-len"], "13");
    assert_eq!(r.headers["x-seen-method"], "POST");
    assert_eq!(r.text(), format!("{} POST /r/app/two?x=1\n", node.name()));

    // Several calls at once on the one HTTP/2 connection.
    let calls = (0..8).map(|i| {
        let mut s = sender.clone();
        let url = format!("https://{authority}/r/app/many{i}");
        tokio::spawn(async move { send_h2(&mut s, "GET", &url, "").await })
    });
    for (i, call) in calls.enumerate() {
        let r = call.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("{} GET /r/app/many{i}\n", node.name()));
    }
    assert_eq!(node.calls.load(std::sync::atomic::Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_api_over_tls_on_its_own_listener() {
    let certs = Certs::new();
    let node = FakeNode::start().await;
    let lb = start(&certs, &["-mgmt-listen", "127.0.0.2:0", "-mgmt-token", "s3cret"]);
    assert_ne!(lb.traffic, lb.mgmt);

    let body = format!(r#"{{"node":"{}"}}"#, node.name());
    let r = send_h1(lb.mgmt, &certs, "PUT", "/1/lb/nodes", &[], &body).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = send_h1(lb.mgmt, &certs, "PUT", "/1/lb/nodes", &[("authorization", "Bearer s3cret")], &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_online(&lb, &certs, &node.name()).await;

    // The same over HTTP/2.
    let (mut sender, _conn) = h2(lb.mgmt, &certs).await;
    let r = send_h2(&mut sender, "GET", &format!("https://localhost:{}/1/lb/nodes", lb.mgmt.port()), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["nodes"][node.name()], "online");
    let r = send_h2(&mut sender, "GET", &format!("https://localhost:{}/r/app/x", lb.mgmt.port()), "").await;
    assert_eq!(r.status, 404, "management listener only: {}", r.text());

    // And the traffic listener speaks TLS too.
    let r = send_h1(lb.traffic, &certs, "GET", "/r/app/t", &[], "").await;
    assert_eq!((r.status, r.node()), (200, node.name()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_a_tls_port_is_a_400_and_the_port_keeps_serving() {
    let certs = Certs::new();
    let node = FakeNode::start().await;
    let lb = start(&certs, &["-nodes", &node.name()]);

    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    s.write_all(b"GET /r/app/plain HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (out, _) = read_until_closed(&mut s, LIMIT).await.expect("connection kept open");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.contains("speaks TLS"), "{out}");

    // Bytes that are neither TLS nor HTTP: closed without an answer.
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    s.write_all(&[0u8, 1, 2, 3, 0xff, 0xfe]).await.unwrap();
    let (out, _) = read_until_closed(&mut s, LIMIT).await.expect("connection kept open");
    assert!(out.is_empty(), "{out:?}");

    // A handshake record with garbage in it: the handshake fails, the connection closes.
    let mut s = TcpStream::connect(lb.traffic).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).await.unwrap();
    read_until_closed(&mut s, LIMIT).await.expect("connection kept open");

    let mut lb = lb;
    assert!(lb.child.try_wait().unwrap().is_none(), "fnlb exited; log:\n{}", lb.log());
    wait_online(&lb, &certs, &node.name()).await;
    let r = send_h1(lb.traffic, &certs, "GET", "/r/app/after", &[], "").await;
    assert_eq!(r.status, 200);
    assert!(!lb.log().contains("panicked"), "{}", lb.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_handshakes_is_cut_off_and_holds_a_connection_slot_meanwhile() {
    let certs = Arc::new(Certs::new());
    let lb = start(&certs, &["-client-header-timeout", "1", "-max-connections", "1"]);

    // Silent: opens TCP and sends nothing.
    let mut silent = TcpStream::connect(lb.traffic).await.unwrap();
    let started = Instant::now();
    // The only connection slot is taken: a real client waits for it.
    let next = tokio::spawn({
        let (addr, certs) = (lb.traffic, certs.clone());
        async move {
            let r = send_h1(addr, &certs, "GET", "/1/lb/nodes", &[], "").await;
            (r.status, started.elapsed())
        }
    });
    let (_, took) = read_until_closed(&mut silent, Duration::from_secs(10)).await.expect("never closed");
    assert!(took >= Duration::from_millis(900), "closed too early: {took:?}");
    let (status, waited) = tokio::time::timeout(LIMIT, next).await.expect("next client never served").unwrap();
    assert_eq!(status, 200);
    assert!(waited >= Duration::from_millis(900), "served while the slot was taken: {waited:?}");

    // A handshake begun and never finished is cut off too.
    let mut partial = TcpStream::connect(lb.traffic).await.unwrap();
    partial.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    let (_, took) = read_until_closed(&mut partial, Duration::from_secs(10)).await.expect("never closed");
    assert!(took >= Duration::from_millis(900), "closed too early: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_lives_past_the_header_timeout_until_the_keepalive_timeout() {
    let certs = Certs::new();
    let node = FakeNode::start().await;
    let lb = start(&certs, &["-nodes", &node.name(), "-client-header-timeout", "1", "-keepalive-timeout", "4"]);
    wait_online(&lb, &certs, &node.name()).await;
    // The client pings while idle: frames that are not requests.
    let (mut sender, conn) = h2_with(lb.traffic, &certs, Some(Duration::from_millis(200))).await;
    let url = format!("https://localhost:{}/r/app/idle", lb.traffic.port());
    assert_eq!(send_h2(&mut sender, "GET", &url, "").await.status, 200);
    // Idle for longer than the header timeout, pinging: the connection is still usable (frames
    // between requests do not start a request head's deadline).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(send_h2(&mut sender, "GET", &url, "").await.status, 200);
    // Then, with no request past the keep-alive timeout, the server closes it (GOAWAY), pings
    // or not.
    let idle_from = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), conn).await.expect("idle HTTP/2 connection kept open").unwrap();
    assert!(idle_from.elapsed() >= Duration::from_millis(3500), "closed too early: {:?}", idle_from.elapsed());
}

/// Runs the binary with these arguments and `FNLB_TLS_*` variables; its exit code and stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fnlb"));
    cmd.args(["-listen", "127.0.0.1:0"]).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd.env_remove("FNLB_TLS_CERT").env_remove("FNLB_TLS_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fnlb {args:?} {env:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_tls_flags_exit_2_with_one_line_naming_the_flag() {
    let certs = Certs::new();
    let other = Certs::new();
    let (cert, key) = (certs.cert.display().to_string(), certs.key.display().to_string());
    let other_key = other.key.display().to_string();
    let missing = certs.dir.path().join("missing.pem").display().to_string();
    let garbage = certs.write("garbage.pem", "not pem at all\n");
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case<'_>> = vec![
        (vec!["-tls-cert", &cert], vec![], "fnlb: -tls-cert needs -tls-key".into()),
        (vec!["--tls-key", &key], vec![], "fnlb: -tls-key needs -tls-cert".into()),
        (vec![], vec![("FNLB_TLS_CERT", &cert)], "fnlb: -tls-cert needs -tls-key".into()),
        (
            vec!["-tls-cert", &missing, "-tls-key", &key],
            vec![],
            format!("fnlb: invalid value {missing:?} for -tls-cert: cannot read the file"),
        ),
        (
            vec![],
            vec![("FNLB_TLS_CERT", &cert), ("FNLB_TLS_KEY", &missing)],
            format!("fnlb: invalid value {missing:?} for -tls-key (from FNLB_TLS_KEY): cannot read the file"),
        ),
        (
            vec!["-tls-cert", &garbage, "-tls-key", &key],
            vec![],
            format!("fnlb: invalid value {garbage:?} for -tls-cert: no CERTIFICATE"),
        ),
        (vec!["-tls-cert", &cert, "-tls-key", &cert], vec![], format!("fnlb: invalid value {cert:?} for -tls-key: ")),
        (
            vec!["-tls-cert", &cert, "-tls-key", &other_key],
            vec![],
            format!("fnlb: invalid value {other_key:?} for -tls-key: does not match the certificate"),
        ),
    ];
    for (args, env, want) in cases {
        let (code, err) = run(&args, &env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {err}");
        assert!(err.starts_with(&want), "{args:?} {env:?}: want {want:?}, got {err:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_flags_from_the_environment() {
    let certs = Certs::new();
    let (cert, key) = (certs.cert.display().to_string(), certs.key.display().to_string());
    let lb = Fnlb::start_raw(
        &["-listen", "127.0.0.1:0", "-mgmt-listen", "127.0.0.1:0"],
        &[("FNLB_TLS_CERT", &cert), ("FNLB_TLS_KEY", &key)],
    );
    let r = send_h1(lb.mgmt, &certs, "GET", "/1/lb/nodes", &[], "").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_http2_connection_runs_at_most_100_calls_at_once() {
    let certs = Certs::new();
    let node = FakeNode::start_with(NodeOpts { delay: Duration::from_secs(3), ..Default::default() }).await;
    // A node that runs 200 calls at once: late binding holds none of the 150 at the balancer, so
    // the stream limit alone bounds what reaches the node.
    let lb = start(&certs, &["-nodes", &node.name(), "-node-capacity", "200"]);
    wait_online(&lb, &certs, &node.name()).await;
    let (sender, _conn) = h2(lb.traffic, &certs).await;
    let url = format!("https://localhost:{}/r/app/many", lb.traffic.port());
    // 150 calls on one connection: the server allows 100 streams, the client queues the rest.
    let calls: Vec<_> = (0..150)
        .map(|_| {
            let mut sender = sender.clone();
            let url = url.clone();
            tokio::spawn(async move { send_h2(&mut sender, "GET", &url, "").await.status })
        })
        .collect();
    let calls_at_node = || node.calls.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + LIMIT;
    while calls_at_node() < 100 {
        assert!(Instant::now() < deadline, "only {} calls reached the node", calls_at_node());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each call takes 3 s at the node: for now, no more may have started.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(calls_at_node(), 100, "one HTTP/2 connection had more than 100 calls in flight");
    for c in calls {
        assert_eq!(tokio::time::timeout(LIMIT, c).await.unwrap().unwrap(), 200);
    }
    assert_eq!(calls_at_node(), 150);
}

/// A request body that sends one byte, then nothing, forever; or (`Stalled::Empty`) none.
enum Stalled {
    Fresh,
    Sent,
    Empty,
}

impl hyper::body::Body for Stalled {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match *self {
            Stalled::Fresh => {
                *self = Stalled::Sent;
                std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(b"x")))))
            }
            Stalled::Sent => std::task::Poll::Pending,
            Stalled::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Stalled::Empty)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_whose_body_stops_fails_alone_after_the_client_body_timeout() {
    let certs = Certs::new();
    let node = FakeNode::start().await;
    let lb = start(&certs, &["-nodes", &node.name(), "-client-body-timeout", "1"]);
    wait_online(&lb, &certs, &node.name()).await;
    let tls = connect(lb.traffic, &certs, &[b"h2"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let url = format!("https://localhost:{}/r/app/upload", lb.traffic.port());
    let stalled = Request::post(&url).body(Stalled::Fresh).unwrap();
    let started = Instant::now();
    let answer =
        tokio::time::timeout(LIMIT, sender.send_request(stalled)).await.expect("a stalled body was never cut off");
    // Answered with an error, or the stream reset: either way the call ended, and not early.
    if let Ok(resp) = answer {
        assert_ne!(resp.status(), 200);
    }
    assert!(started.elapsed() >= Duration::from_millis(900), "cut off too early: {:?}", started.elapsed());
    // Only that stream: the connection still carries calls.
    tokio::time::timeout(LIMIT, sender.ready()).await.unwrap().unwrap();
    let next = Request::get(&url).body(Stalled::Empty).unwrap();
    let resp = tokio::time::timeout(LIMIT, sender.send_request(next)).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
}

/// A node whose `/r/app/big` answer is 64 MiB and `/r/app/medium` 1 MiB, sent as fast as they
/// are taken; `open` counts those still being sent (one ends when its connection does). Other
/// calls get `ok`.
async fn big_node(open: Arc<std::sync::atomic::AtomicUsize>) -> std::net::SocketAddr {
    use std::sync::atomic::Ordering::SeqCst;
    /// 64 KiB at a time; counted in `open` until dropped.
    struct Big(usize, Arc<std::sync::atomic::AtomicUsize>);
    impl hyper::body::Body for Big {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(None);
            }
            self.0 -= 1;
            std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(vec![b'x'; 64 << 10])))))
        }
    }
    impl Drop for Big {
        fn drop(&mut self) {
            self.1.fetch_sub(1, SeqCst);
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let open = open.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body: http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible> =
                        match req.uri().path() {
                            "/version" => Full::new(Bytes::from_static(br#"{"version":"0.3.753"}"#)).boxed(),
                            "/r/app/big" => {
                                open.fetch_add(1, SeqCst);
                                Big(1024, open.clone()).boxed()
                            }
                            "/r/app/medium" => {
                                open.fetch_add(1, SeqCst);
                                Big(16, open.clone()).boxed()
                            }
                            _ => Full::new(Bytes::from_static(b"ok")).boxed(),
                        };
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(body)) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

/// The sum of the samples of `name` in the balancer's metrics.
async fn metric(lb: &Fnlb, certs: &Certs, name: &str) -> f64 {
    let text = send_h1(lb.mgmt, certs, "GET", "/1/lb/metrics", &[], "").await.text();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_whose_client_keeps_its_window_closed_is_reset_after_the_send_timeout() {
    use std::sync::atomic::Ordering::SeqCst;
    let certs = Certs::new();
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let node = big_node(open.clone()).await.to_string();
    let lb = start(&certs, &["-nodes", &node, "-function-keys=false", "-send-timeout", "1"]);
    wait_online(&lb, &certs, &node).await;
    // The client grants each stream 64 KiB and never more for a body it does not read; the
    // connection's window is wide, so that another stream still has room.
    let tls = connect(lb.traffic, &certs, &[b"h2"]).await;
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.initial_stream_window_size(65_535).initial_connection_window_size(16 << 20);
    let (mut sender, conn) = builder.handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let authority = format!("localhost:{}", lb.traffic.port());
    let req = Request::get(format!("https://{authority}/r/app/big")).body(Full::new(Bytes::new())).unwrap();
    let started = Instant::now();
    let resp = tokio::time::timeout(LIMIT, sender.send_request(req)).await.expect("timed out").expect("failed");
    assert_eq!(resp.status(), 200);
    assert_eq!(open.load(SeqCst), 1, "the node is sending the big answer");
    // Nothing of the body is read: the stream's window stays shut. After -send-timeout the
    // balancer gives the stream up, and with it the node's connection.
    let deadline = Instant::now() + LIMIT;
    while open.load(SeqCst) > 0 {
        assert!(Instant::now() < deadline, "the stalled stream kept its node connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(900), "given up too early: {:?}", started.elapsed());
    // The client finds the stream reset: what was sent, then an error, never the whole answer.
    let body = tokio::time::timeout(LIMIT, resp.into_body().collect()).await.expect("the stream was never reset");
    let error = body.err().map(|e| format!("{e:?}")).expect("a stream given up ended as if whole");
    assert!(error.contains("CANCEL"), "reset with CANCEL: {error}");
    // Only that stream: the connection carries the next call.
    let r = send_h2(&mut sender, "GET", &format!("https://{authority}/r/app/small"), "").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    // A client that reads slowly but steadily keeps its stream: each frame taken restarts the
    // deadline, though the whole answer takes longer than -send-timeout to read.
    let req = Request::get(format!("https://{authority}/r/app/medium")).body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(LIMIT, sender.send_request(req)).await.expect("timed out").expect("failed");
    let (mut body, mut got, slow_from) = (resp.into_body(), 0, Instant::now());
    while let Some(frame) = tokio::time::timeout(LIMIT, body.frame()).await.expect("a slow reader's stream stalled") {
        let n = frame.expect("a slow reader's stream was reset").into_data().map_or(0, |d| d.len());
        got += n;
        // About 500 kB/s: 2 s for the whole answer, some milliseconds per frame.
        tokio::time::sleep(Duration::from_micros(2 * n as u64)).await;
    }
    assert_eq!(got, 16 << 16, "the whole answer");
    assert!(slow_from.elapsed() > Duration::from_secs(1), "not slower than -send-timeout: {:?}", slow_from.elapsed());
    // The client's fault: no node error counted, and the node stays in rotation.
    assert_eq!(metric(&lb, &certs, "fnlb_upstream_errors_total").await, 0.0);
    let nodes = send_h1(lb.mgmt, &certs, "GET", "/1/lb/nodes", &[], "").await;
    assert_eq!(nodes.json()["nodes"][&node], "online", "{}", nodes.text());
}

/// A node that reads a call's head, answers 413 and closes, the body unread.
async fn early_413_node() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    if buf.starts_with(b"GET /version ") {
                        buf.drain(..end + 4);
                        let body = r#"{"version":"0.3.753"}"#;
                        let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        if sock.write_all(r.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let r = "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large";
                    let _ = sock.write_all(r.as_bytes()).await;
                    return;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_tls_gets_the_nodes_early_answer() {
    let certs = Certs::new();
    let node = early_413_node().await.to_string();
    let lb = start(&certs, &["-nodes", &node, "-function-keys=false"]);
    wait_online(&lb, &certs, &node).await;
    let (mut sender, _conn) = h2(lb.traffic, &certs).await;
    let url = format!("https://localhost:{}/r/app/upload", lb.traffic.port());
    let upload = "y".repeat(8 << 20);
    // Whether hyper reads the answer before its write fails is a race; each round is a draw.
    for round in 0..10 {
        let r = send_h2(&mut sender, "POST", &url, &upload).await;
        assert_eq!((r.status, r.text().as_str()), (413, "too large"), "round {round}");
        // And over TLS HTTP/1.1, the same hyper path. The client reads while it writes (as
        // curl does): the answer comes before the upload is over.
        let tls = connect(lb.traffic, &certs, &[b"http/1.1"]).await;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let head = format!("POST /r/app/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", upload.len());
        let body = upload.clone();
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(head.as_bytes()).await;
            let _ = wr.write_all(body.as_bytes()).await;
        });
        let mut out = Vec::new();
        let _ = tokio::time::timeout(LIMIT, rd.read_to_end(&mut out)).await;
        writer.abort();
        let answer = String::from_utf8_lossy(&out);
        assert!(answer.starts_with("HTTP/1.1 413 "), "round {round}, HTTP/1.1: {answer}");
        assert!(answer.ends_with("too large"), "round {round}, HTTP/1.1: {answer}");
    }
}
