//! Test language for fnlb's end-to-end tests: fake Fn nodes on real loopback sockets, the real
//! fnlb binary as a child process, and a small HTTP client.
#![allow(dead_code)]

pub mod fnapi;
pub mod fnsim;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A fake Fn node: `/version` answers a version (or 503 when made unhealthy); every other path
/// answers 200 with a body naming the node, and echoes what it saw in `x-seen-*` headers.
pub struct FakeNode {
    pub addr: SocketAddr,
    pub healthy: Arc<AtomicBool>,
    pub calls: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
}

#[derive(Clone)]
pub struct NodeOpts {
    pub version: &'static str,
    /// Every call sleeps this long before answering.
    pub delay: Duration,
    pub wait_header: Option<&'static str>,
    pub status: u16,
    /// Fn's v2 API (`/v2/...`); `None`: an Fn with no apps. API requests are not calls.
    pub fn_api: Option<fnapi::FakeFnApi>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts { version: "0.3.753", delay: Duration::ZERO, wait_header: Some("1.5ms"), status: 200, fn_api: None }
    }
}

impl FakeNode {
    pub async fn start() -> FakeNode {
        Self::start_with(NodeOpts::default()).await
    }

    pub async fn start_with(opts: NodeOpts) -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, opts)
    }

    /// Starts on a given address (to bring a stopped node back on its port).
    pub async fn start_on(addr: SocketAddr, opts: NodeOpts) -> FakeNode {
        let mut tries = 0;
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return Self::serve(l, opts),
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebind {addr}: {e}"),
            }
        }
    }

    fn serve(listener: TcpListener, opts: NodeOpts) -> FakeNode {
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let calls = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = watch::channel(false);
        let (h, c) = (healthy.clone(), calls.clone());
        tokio::spawn(async move {
            let mut stop_accept = stop_rx.clone();
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop_accept.changed() => return,
                };
                let (h, c, opts) = (h.clone(), c.clone(), opts.clone());
                let mut stop_conn = stop_rx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (h, c, opts) = (h.clone(), c.clone(), opts.clone());
                        async move { Ok::<_, Infallible>(answer(req, addr, &h, &c, &opts).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    // Stopping the node drops its connections too, like a killed process.
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_conn.changed() => {}
                    }
                });
            }
        });
        FakeNode { addr, healthy, calls, stop }
    }

    pub fn name(&self) -> String {
        self.addr.to_string()
    }

    /// Closes the listener and every connection: the node is gone.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(
    req: Request<Incoming>,
    me: SocketAddr,
    healthy: &AtomicBool,
    calls: &AtomicUsize,
    opts: &NodeOpts,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/version" {
        if !healthy.load(Ordering::SeqCst) {
            return Response::builder().status(503).body(Full::new(Bytes::from_static(b"{}"))).unwrap();
        }
        let body = format!(r#"{{"version":"{}"}}"#, opts.version);
        return Response::builder().header("content-type", "application/json").body(Full::new(body.into())).unwrap();
    }
    if req.uri().path().starts_with("/v2/") {
        let (status, body) = match &opts.fn_api {
            Some(api) => api.answer(req.uri().path(), req.uri().query(), &me.to_string()),
            None if req.uri().path() == "/v2/apps" => (200, r#"{"items":[]}"#.to_string()),
            None => (404, r#"{"message":"Path not found"}"#.to_string()),
        };
        return Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .unwrap();
    }
    calls.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(http_body_util::Collected::to_bytes).unwrap_or_default();
    if !opts.delay.is_zero() {
        tokio::time::sleep(opts.delay).await;
    }
    let mut resp = Response::builder().status(opts.status).header("x-node", me.to_string());
    for (name, seen) in [
        ("host", "x-seen-host"),
        ("x-forwarded-for", "x-seen-xff"),
        ("connection", "x-seen-connection"),
        ("te", "x-seen-te"),
        ("proxy-authorization", "x-seen-proxy-authorization"),
        ("x-hop", "x-seen-x-hop"),
    ] {
        if let Some(v) = parts.headers.get(name) {
            resp = resp.header(seen, v.clone());
        }
    }
    if let Some(w) = opts.wait_header {
        resp = resp.header("xxx-fxlb-wait", w);
    }
    resp = resp.header("x-seen-body-len", body.len().to_string()).header("x-seen-method", parts.method.as_str());
    let text = format!("{} {} {}\n", me, parts.method, parts.uri);
    resp.body(Full::new(text.into())).unwrap()
}

/// The real fnlb binary, running until dropped.
pub struct Fnlb {
    pub child: Child,
    pub traffic: SocketAddr,
    pub mgmt: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Fnlb {
    /// Starts fnlb on ephemeral ports with fast health checks; `args` come after the defaults.
    /// fnlb checks its nodes before it says it is ready, so fake nodes must be served by other
    /// threads than the one blocked here: tests use the multi-threaded runtime.
    pub fn start(args: &[&str]) -> Fnlb {
        let mut all = vec!["-listen", "127.0.0.1:0", "-hc-interval", "0.2", "-hc-timeout", "1"];
        if !args.contains(&"-mgmt-listen") {
            // Equal to -listen: one listener serves both.
            all.extend_from_slice(&["-mgmt-listen", "127.0.0.1:0"]);
        }
        all.extend_from_slice(args);
        Self::start_raw(&all, &[])
    }

    pub fn start_raw(args: &[&str], env: &[(&str, &str)]) -> Fnlb {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fnlb"));
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped()).stdin(Stdio::null());
        cmd.env("LOG_LEVEL", "debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run fnlb");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("fnlb ready") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!("fnlb did not become ready; log:\n{}", log.lock().unwrap());
        };
        let field = |name: &str| -> SocketAddr {
            let start = line.find(&format!("{name}=")).expect("field") + name.len() + 1;
            let rest = &line[start..];
            let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
            rest[..end].parse().expect("address")
        };
        let (traffic, mgmt) = (field("traffic"), field("mgmt"));
        Fnlb { child, traffic, mgmt, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.traffic, path)
    }

    pub fn mgmt_url(&self, path: &str) -> String {
        format!("http://{}{}", self.mgmt, path)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").args(["-s", sig, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `GET /1/lb/nodes` shows exactly these nodes with these states.
    pub async fn wait_nodes(&self, want: &[(&str, &str)]) {
        let mut want: Vec<(String, String)> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        want.sort();
        let mut last = String::new();
        for _ in 0..300 {
            let r = send("GET", &self.mgmt_url("/1/lb/nodes"), "").await;
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let mut got: Vec<(String, String)> = v["nodes"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            got.sort();
            if got == want {
                return;
            }
            last = format!("{got:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("nodes never became {want:?}; last {last}");
    }
}

impl Drop for Fnlb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn node(&self) -> String {
        self.headers.get("x-node").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub async fn send(method: &str, url: &str, body: &str) -> Answer {
    send_with(method, url, &[], Bytes::copy_from_slice(body.as_bytes())).await
}

pub async fn send_with(method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req.body(Full::new(body)).unwrap()))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer { status: parts.status.as_u16(), headers: parts.headers, body }
}

/// Sends raw bytes on a new connection and reads until the server closes or `limit` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
