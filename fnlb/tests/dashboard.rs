//! The dashboard in a real browser: headless Chromium renders `/1/lb/dash` from a running fnlb
//! with traffic, and must show node and function data while requesting nothing off the machine.
//! What the page requested is read from Chromium's own network log (requests the page initiated);
//! the browser's background chatter (updates, sign-in) goes to a local sink and is not the page's.
//! Without `/usr/bin/chromium` the test prints SKIPPED, unless `FNLB_REQUIRE_BROWSER=1` (CI).
//! `FNLB_DASH_SCREENSHOT=path.png` also saves a screenshot (docs/dashboard.png is made this way).
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_available() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    let msg = format!("SKIPPED: dashboard browser test: {CHROMIUM} is missing (apt-get install chromium)");
    if std::env::var("FNLB_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("{msg}; FNLB_REQUIRE_BROWSER=1 makes this a failure");
    }
    eprintln!("{msg}");
    println!("{msg}");
    false
}

/// A proxy that answers nothing and remembers what reached it: Chromium sends every request for
/// a host other than loopback here, so nothing leaves the machine during the test.
async fn trap() -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let (count, seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
    let (c, s) = (count.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 512];
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf)).await {
                    let first = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string();
                    s.lock().unwrap().push(first);
                }
            });
        }
    });
    (addr, count, seen)
}

/// Runs headless Chromium with `extra` arguments on `url`; returns its stdout and its network log
/// (NetLog JSON). Killed after 90 s.
fn chromium(url: &str, proxy: &str, extra: &[&str]) -> (String, serde_json::Value) {
    let profile = tempfile::tempdir().unwrap();
    let netlog = profile.path().join("netlog.json");
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        "--metrics-recording-only",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--virtual-time-budget=6000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--proxy-server={proxy}"))
    .arg("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    .arg(format!("--log-net-log={}", netlog.display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("run chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let log = std::fs::read(&netlog).expect("chromium wrote no network log");
    (out, serde_json::from_slice(&log).expect("network log is JSON"))
}

/// Every URL request the page at `origin` initiated, from a NetLog: (method, url).
fn page_requests(netlog: &serde_json::Value, origin: &str) -> Vec<(String, String)> {
    let types = netlog["constants"]["logEventTypes"].as_object().expect("netlog constants");
    let start = types["URL_REQUEST_START_JOB"].as_u64().unwrap();
    netlog["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_u64() == Some(start) && e["params"]["initiator"] == origin)
        .map(|e| (e["params"]["method"].as_str().unwrap_or("").into(), e["params"]["url"].as_str().unwrap().into()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_nodes_and_functions_in_a_browser_and_stays_on_the_machine() {
    if !browser_available() {
        return;
    }
    let (a, b) = (FakeNode::start().await, FakeNode::start().await);
    let lb = Fnlb::start(&["-nodes", &format!("{},{}", a.name(), b.name())]);
    lb.wait_nodes(&[(&a.name(), "online"), (&b.name(), "online")]).await;
    let funcs = ["/r/shop/checkout", "/r/shop/cart", "/r/mail/send"];
    // A few seconds of traffic so the charts have a shape.
    for round in 0..4 {
        for (i, f) in funcs.iter().enumerate() {
            for _ in 0..(3 + 4 * i + round) {
                assert_eq!(send("POST", &lb.url(f), "x").await.status, 200);
            }
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let page = send("GET", &lb.mgmt_url("/1/lb/dash"), "").await.text();
    for needle in ["http://", "https://", "<link", " src="] {
        assert!(!page.contains(needle), "the page names something to load: {needle}");
    }

    let (proxy, reached, seen) = trap().await;
    let url = lb.mgmt_url("/1/lb/dash");
    let (dom, netlog) = tokio::task::spawn_blocking({
        let (url, proxy) = (url.clone(), proxy.clone());
        move || chromium(&url, &proxy, &["--dump-dom"])
    })
    .await
    .unwrap();
    assert!(dom.contains("id=\"nodes\""), "no DOM dumped:\n{dom}");
    for node in [a.name(), b.name()] {
        assert!(dom.matches(&node).count() >= 2, "node {node} not rendered:\n{dom}");
    }
    for f in funcs {
        assert!(dom.contains(f), "function {f} not rendered:\n{dom}");
    }
    assert!(dom.contains("class=\"ok\""), "the page never reached the balancer:\n{dom}");
    assert!(dom.contains("<svg") && dom.contains("<path"), "no chart drawn:\n{dom}");
    assert!(dom.contains(">online<"), "node states not rendered:\n{dom}");
    assert!(dom.contains("STEADY") || dom.contains("SCALE"), "no scale signal:\n{dom}");

    if let Ok(path) = std::env::var("FNLB_DASH_SCREENSHOT") {
        let shot = format!("--screenshot={path}");
        tokio::task::spawn_blocking({
            let (url, proxy) = (url.clone(), proxy.clone());
            move || chromium(&url, &proxy, &["--window-size=1440,1700", &shot])
        })
        .await
        .unwrap();
        assert!(std::fs::metadata(&path).map(|m| m.len() > 10_000).unwrap_or(false), "no screenshot at {path}");
    }

    // What the page asked for: its data, from this balancer, and nothing else.
    let origin = format!("http://{}", lb.mgmt);
    let requests = page_requests(&netlog, &origin);
    assert!(requests.iter().any(|(_, u)| u.ends_with("/1/lb/dash/data")), "the page fetched no data: {requests:?}");
    for (method, u) in &requests {
        assert!(u.starts_with(&format!("{origin}/")), "the page requested {method} {u} off this balancer");
    }
    eprintln!(
        "page requests: {}; browser background requests kept on the machine: {} {:?}",
        requests.len(),
        reached.load(Ordering::SeqCst),
        seen.lock().unwrap()
    );
}

/// The check above must be able to fail: a page that fetches from another host is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_off_machine_check_catches_a_page_that_leaves() {
    if !browser_available() {
        return;
    }
    use http_body_util::Full;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let page =
                        "<!doctype html><p>leaky</p><script>fetch('http://leak.invalid/x').catch(() => {});</script>";
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "text/html")
                            .body(Full::new(bytes::Bytes::from_static(page.as_bytes())))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let (proxy, _, _) = trap().await;
    let url = format!("{origin}/");
    let (_, netlog) = tokio::task::spawn_blocking(move || chromium(&url, &proxy, &["--dump-dom"])).await.unwrap();
    let requests = page_requests(&netlog, &origin);
    assert!(requests.iter().any(|(_, u)| u == "http://leak.invalid/x"), "the leak went unseen: {requests:?}");
}
