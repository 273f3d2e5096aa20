//! Test helpers: run the `fnsim` binary as a subprocess and talk to it over real sockets.
#![allow(dead_code)] // Each test file uses a different subset.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

pub const STARTUP: Duration = Duration::from_secs(20);

/// A running `fnsim serve`; killed when dropped.
pub struct Sim {
    pub child: Child,
    pub addrs: Vec<SocketAddr>,
}

impl Sim {
    /// Starts `fnsim serve --port 0 <args>` (without `--port 0` if `args` list addresses) and
    /// waits (bounded) for its `fnsim ready` line.
    pub fn start(args: &[&str]) -> Sim {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fnsim"));
        cmd.arg("serve");
        if !args.contains(&"--addrs") {
            cmd.args(["--port", "0"]);
        }
        let mut child = cmd.args(args).stdout(Stdio::piped()).spawn().expect("spawn fnsim");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addrs = Vec::new();
        loop {
            let line = rx.recv_timeout(STARTUP).unwrap_or_else(|e| panic!("no ready line from fnsim {args:?}: {e}"));
            if line == "fnsim ready" {
                break;
            }
            let (head, addr) = line.split_once(" listening on ").expect("listening line");
            assert!(head.starts_with("fnsim node "), "{line}");
            addrs.push(addr.parse().expect("address"));
        }
        Sim { child, addrs }
    }

    pub fn url(&self, node: usize, path: &str) -> String {
        format!("http://{}{}", self.addrs[node], path)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A fully read response.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// A header as text. Not `to_str`: `XXX-FXLB-WAIT` may hold a raw UTF-8 `µ`, as Go sends it.
    pub fn header(&self, name: &str) -> &str {
        let v = self.headers.get(name).unwrap_or_else(|| panic!("no {name} header"));
        std::str::from_utf8(v.as_bytes()).expect("UTF-8 header")
    }

    /// `XXX-FXLB-WAIT` as a duration.
    pub fn wait(&self) -> Duration {
        let n = fnsim::godur::parse_nanos(self.header("xxx-fxlb-wait")).expect("Go duration");
        Duration::from_nanos(n as u64)
    }

    pub fn cold(&self) -> bool {
        match self.header("fn-call-cold") {
            "true" => true,
            "false" => false,
            other => panic!("Fn-Call-Cold: {other}"),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

pub async fn send(c: &HttpClient, req: Request<Full<Bytes>>) -> Answer {
    let resp: Response<_> = tokio::time::timeout(Duration::from_secs(20), c.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Answer { status, headers, body }
}

pub async fn get(c: &HttpClient, url: &str) -> Answer {
    send(c, Request::get(url).body(Full::default()).unwrap()).await
}

pub async fn post(c: &HttpClient, url: &str, body: &str) -> Answer {
    let req = Request::post(url).body(Full::new(Bytes::copy_from_slice(body.as_bytes()))).unwrap();
    send(c, req).await
}

/// Polls `check` every 10 ms until it holds, failing after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
