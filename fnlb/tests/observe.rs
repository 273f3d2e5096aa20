//! Observing the balancer end to end: `/1/lb/stats`, `/1/lb/metrics` (and `/metrics`, proxied on a
//! shared listener), `/1/lb/cluster`, the dashboard's feed, Zipkin export against a fake collector,
//! and the access log. The real binary in front of fake nodes on loopback.
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

async fn balancer_with(nodes: &[&FakeNode], extra: &[&str]) -> Fnlb {
    let list: Vec<String> = nodes.iter().map(|n| n.name()).collect();
    let joined = list.join(",");
    let mut args = vec!["-nodes", joined.as_str()];
    args.extend_from_slice(extra);
    let lb = Fnlb::start(&args);
    let want: Vec<(&str, &str)> = list.iter().map(|n| (n.as_str(), "online")).collect();
    lb.wait_nodes(&want).await;
    lb
}

/// Sleeps until the current one-second window has closed and been collected.
async fn next_window() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_nanos(u64::from(now.subsec_nanos()));
    tokio::time::sleep(Duration::from_secs(1) - into + Duration::from_millis(300)).await;
}

/// The value of one sample line of a Prometheus text page (`name{labels} value`).
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.parse().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_calls_per_node_and_function_and_drain_on_read() {
    let (a, b) = (FakeNode::start().await, FakeNode::start().await);
    let lb = balancer_with(&[&a, &b], &[]).await;
    // The first read drains whatever came before.
    send("GET", &lb.mgmt_url("/1/lb/stats"), "").await;
    let mut homes = HashMap::new();
    for (path, n) in [("/r/app/alpha", 19), ("/r/app/beta", 7)] {
        for _ in 0..n {
            let r = send("POST", &lb.url(path), "x").await;
            assert_eq!(r.status, 200);
            homes.insert(path, r.node());
        }
    }
    next_window().await;
    let r = send("GET", &lb.mgmt_url("/1/lb/stats"), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    let stats = v["stats"].as_array().unwrap();
    let mut tp: HashMap<String, u64> = HashMap::new();
    for s in stats {
        let func = s["func"].as_str().unwrap();
        assert_eq!(s["node"].as_str().unwrap(), homes[func], "{s}");
        assert!((s["wait"].as_f64().unwrap() - 0.0015).abs() < 1e-9, "the nodes report 1.5ms: {s}");
        let ts = s["timestamp"].as_str().unwrap();
        assert!(ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        *tp.entry(func.to_string()).or_default() += s["tp"].as_u64().unwrap();
    }
    assert_eq!(tp.get("/r/app/alpha"), Some(&19), "{v}");
    assert_eq!(tp.get("/r/app/beta"), Some(&7), "{v}");
    // Drained: nothing new since.
    let again = send("GET", &lb.mgmt_url("/1/lb/stats"), "").await;
    assert_eq!(again.text(), r#"{"stats":[]}"#);
    assert_eq!(send("POST", &lb.mgmt_url("/1/lb/stats"), "").await.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_errors_retries_and_node_state() {
    let (a, b) = (FakeNode::start().await, FakeNode::start().await);
    // Slow health checks: the dead node stays "healthy", so calls find out by failing to connect.
    let list = format!("{},{}", a.name(), b.name());
    let lb = Fnlb::start(&["-nodes", &list, "-hc-interval", "30", "-mgmt-listen", "127.0.0.2:0"]);
    lb.wait_nodes(&[(&a.name(), "online"), (&b.name(), "online")]).await;
    let mut per_node: HashMap<String, u32> = HashMap::new();
    for i in 0..20 {
        let r = send("GET", &lb.url(&format!("/r/app/m{i}")), "").await;
        assert_eq!(r.status, 200);
        *per_node.entry(r.node()).or_default() += 1;
    }
    let r = send("GET", &lb.mgmt_url("/metrics"), "").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let page = r.text();
    for (node, n) in &per_node {
        let l = format!("node=\"{node}\"");
        assert_eq!(sample(&page, &format!("fnlb_requests_total{{{l},class=\"2xx\"}}")), Some(f64::from(*n)), "{page}");
        assert_eq!(sample(&page, &format!("fnlb_upstream_duration_seconds_count{{{l}}}")), Some(f64::from(*n)));
        assert_eq!(sample(&page, &format!("fnlb_reported_wait_seconds_count{{{l}}}")), Some(f64::from(*n)));
        assert_eq!(sample(&page, &format!("fnlb_node_healthy{{{l}}}")), Some(1.0));
        assert_eq!(sample(&page, &format!("fnlb_node_in_flight{{{l}}}")), Some(0.0));
    }
    assert_eq!(sample(&page, "fnlb_nodes{state=\"online\"}"), Some(2.0));
    assert_eq!(sample(&page, "fnlb_request_duration_seconds_count{class=\"2xx\"}"), Some(20.0));
    assert!(page.contains("# TYPE fnlb_spills_total counter"), "{page}");
    assert!(page.contains("fnlb_cluster_utilisation "), "{page}");
    let recs: f64 = ["scale_out", "scale_in", "steady"]
        .iter()
        .map(|r| sample(&page, &format!("fnlb_cluster_recommendation{{recommendation=\"{r}\"}}")).unwrap())
        .sum();
    assert_eq!(recs, 1.0, "exactly one recommendation is current");

    // A node dies: its calls move on, and the metrics say what happened.
    b.stop();
    for i in 0..20 {
        assert_eq!(send("GET", &lb.url(&format!("/r/app/m{i}")), "").await.status, 200);
    }
    let page = send("GET", &lb.mgmt_url("/1/lb/metrics"), "").await.text();
    let errors = sample(&page, &format!("fnlb_upstream_errors_total{{node=\"{}\",kind=\"connect\"}}", b.name()));
    assert!(errors.unwrap_or(0.0) >= 1.0, "{page}");
    assert!(sample(&page, "fnlb_retries_total{reason=\"connect_failed\"}").unwrap() >= 1.0, "{page}");
    assert_eq!(sample(&page, "fnlb_unserved_requests_total{reason=\"no_nodes\"}"), Some(0.0));

    // The traffic listener proxies /metrics like any other path; the management listener
    // answers both names of fnlb's own page.
    let proxied = send("GET", &lb.url("/metrics"), "").await;
    assert_eq!(proxied.node(), a.name());
    let own = send("GET", &lb.mgmt_url("/1/lb/metrics"), "").await;
    assert_eq!(own.status, 200);
    assert!(own.text().contains("# TYPE fnlb_requests_total counter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_a_shared_listener_go_to_a_node_and_ours_are_under_1_lb() {
    let a = FakeNode::start().await;
    let lb = balancer_with(&[&a], &[]).await;
    // Fn nodes serve their own /metrics: on the shared listener (the default) it is a function
    // path like any other, on the fast path and on hyper's (HTTP/1.0 falls back to it).
    let proxied = send("GET", &lb.url("/metrics"), "").await;
    assert_eq!(proxied.status, 200);
    assert_eq!(proxied.node(), a.name());
    assert!(!proxied.text().contains("fnlb_requests_total"), "{}", proxied.text());
    let old = raw(lb.traffic, b"GET /metrics HTTP/1.0\r\n\r\n").await;
    assert!(old.contains(&a.name()), "{old}");
    assert!(!old.contains("fnlb_requests_total"), "{old}");
    // fnlb's own metrics, on the same listener.
    let own = send("GET", &lb.url("/1/lb/metrics"), "").await;
    assert_eq!(own.status, 200);
    assert!(own.headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    assert!(own.text().contains("# TYPE fnlb_requests_total counter"), "{}", own.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_the_balancer_answered_itself() {
    let lb = Fnlb::start(&[]);
    assert_eq!(send("GET", &lb.url("/r/app/none"), "").await.status, 503);
    let page = send("GET", &lb.mgmt_url("/1/lb/metrics"), "").await.text();
    assert_eq!(sample(&page, "fnlb_unserved_requests_total{reason=\"no_nodes\"}"), Some(1.0), "{page}");
    assert_eq!(sample(&page, "fnlb_request_duration_seconds_count{class=\"5xx\"}"), Some(1.0));
    assert_eq!(sample(&page, "fnlb_cluster_recommendation{recommendation=\"scale_out\"}"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_signal_reports_load_per_node_and_a_recommendation() {
    let (a, b) = (FakeNode::start().await, FakeNode::start().await);
    let lb = balancer_with(&[&a, &b], &["-node-capacity", "8"]).await;
    for i in 0..30 {
        assert_eq!(send("GET", &lb.url(&format!("/r/app/c{i}")), "").await.status, 200);
    }
    next_window().await;
    let r = send("GET", &lb.mgmt_url("/1/lb/cluster"), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    let c = r.json();
    assert_eq!(c["recommendation"], "steady", "{c}");
    assert!(c["reason"].as_str().unwrap().contains("observing"), "a fresh balancer has seen too little: {c}");
    assert_eq!(c["node_capacity"], 8);
    assert_eq!((c["nodes_stored"].as_u64(), c["nodes_healthy"].as_u64()), (Some(2), Some(2)));
    assert_eq!(c["suggested_nodes"], 2);
    assert!(c["calls_per_second"].as_f64().unwrap() > 0.0, "{c}");
    let nodes = c["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for n in nodes {
        assert!(n["node"] == a.name().as_str() || n["node"] == b.name().as_str());
        assert_eq!(n["healthy"], true);
        assert!(n["utilisation"].as_f64().unwrap() >= 0.0);
        assert!(n["wait"]["mean"].as_f64().is_some());
    }
    assert_eq!(c["thresholds"]["scale_out_utilisation"], 0.8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_feed_has_series_per_node_and_function() {
    let a = FakeNode::start().await;
    let lb = balancer_with(&[&a], &[]).await;
    for _ in 0..5 {
        send("GET", &lb.url("/r/app/dash"), "").await;
    }
    next_window().await;
    let page = send("GET", &lb.mgmt_url("/1/lb/dash"), "").await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let d = send("GET", &lb.mgmt_url("/1/lb/dash/data"), "").await.json();
    let t = d["t"].as_array().unwrap();
    assert!(!t.is_empty());
    let node = &d["nodes"][0];
    assert_eq!(node["node"], a.name().as_str());
    assert_eq!(node["state"], "online");
    assert_eq!(node["tp"].as_array().unwrap().len(), t.len());
    assert_eq!(node["tp"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum::<u64>(), 5, "{d}");
    let f = &d["funcs"][0];
    assert_eq!(f["func"], "/r/app/dash");
    assert_eq!(f["calls"], 5);
    assert_eq!(f["nodes"][0]["node"], a.name().as_str());
    assert!(d["cluster"]["recommendation"].is_string());
    // The feed drains nothing: /1/lb/stats still has the calls.
    let stats = send("GET", &lb.mgmt_url("/1/lb/stats"), "").await.json();
    let total: u64 = stats["stats"].as_array().unwrap().iter().map(|s| s["tp"].as_u64().unwrap()).sum();
    assert_eq!(total, 5);
}

// ---- Zipkin -------------------------------------------------------------------------------

/// A fake Zipkin collector: every POSTed JSON array of spans arrives on the channel.
async fn collector() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<Value>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let ok =
                            req.uri().path() == "/api/v2/spans" && req.headers()["content-type"] == "application/json";
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        if ok {
                            let _ = tx.send(serde_json::from_slice::<Vec<Value>>(&body).unwrap());
                        }
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(if ok { 202 } else { 400 })
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    (addr, rx)
}

/// A node that answers `/version` and echoes the trace headers it received as a JSON body.
async fn echo_node() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    if req.uri().path() == "/version" {
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(r#"{"version":"0.3.753"}"#))));
                    }
                    let mut seen = serde_json::Map::new();
                    for name in
                        ["b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "traceparent"]
                    {
                        if let Some(v) = req.headers().get(name) {
                            seen.insert(name.into(), v.to_str().unwrap().into());
                        }
                    }
                    let body = Value::Object(seen).to_string();
                    Ok(Response::builder().header("xxx-fxlb-wait", "2ms").body(Full::new(Bytes::from(body))).unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

/// Spans of `trace` that arrive within a few seconds, until `want` of them did.
async fn spans_of(rx: &mut mpsc::UnboundedReceiver<Vec<Value>>, trace: &str, want: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < want {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(batch)) => got.extend(batch.into_iter().filter(|s| s["traceId"] == trace)),
            _ => panic!("only {} of {want} spans of {trace} arrived: {got:?}", got.len()),
        }
    }
    got
}

fn by_name<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
}

const TRACE: &str = "463ac35c9f6413ad48485a3953bb6124";
const CALLER_SPAN: &str = "a2fb4a1d1a96d312";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipkin_spans_continue_the_callers_b3_trace_and_reach_the_node() {
    let (zipkin, mut rx) = collector().await;
    let node = echo_node().await;
    let url = format!("http://{zipkin}/api/v2/spans");
    let lb = Fnlb::start(&["-nodes", &node.to_string(), "-zipkin", &url]);
    lb.wait_nodes(&[(&node.to_string(), "online")]).await;
    let r = send_with(
        "GET",
        &lb.url("/r/app/traced?x=1"),
        &[("X-B3-TraceId", TRACE), ("X-B3-SpanId", CALLER_SPAN), ("X-B3-Sampled", "1")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = r.json();
    let spans = spans_of(&mut rx, TRACE, 3).await;
    let (serve, route, upstream) = (by_name(&spans, "serve"), by_name(&spans, "route"), by_name(&spans, "upstream"));
    for s in [serve, route, upstream] {
        assert_eq!(s["localEndpoint"]["serviceName"], "fnlb", "{s}");
        assert!(s["timestamp"].as_u64().unwrap() > 1_600_000_000_000_000, "{s}");
        assert!(s["duration"].as_u64().unwrap() >= 1, "{s}");
        assert_eq!(s["id"].as_str().unwrap().len(), 16);
    }
    assert_eq!(serve["parentId"], CALLER_SPAN);
    assert_eq!(serve["kind"], "SERVER");
    assert_eq!(serve["tags"]["http.method"], "GET");
    assert_eq!(serve["tags"]["http.path"], "/r/app/traced");
    assert_eq!(serve["tags"]["http.status_code"], "200");
    assert_eq!(serve["remoteEndpoint"]["ipv4"], "127.0.0.1");
    assert_eq!(route["parentId"], serve["id"]);
    assert_eq!(route["tags"]["fnlb.node"], node.to_string().as_str());
    assert_eq!(upstream["parentId"], serve["id"]);
    assert_eq!(upstream["kind"], "CLIENT");
    assert_eq!(upstream["tags"]["http.status_code"], "200");
    assert_eq!(upstream["remoteEndpoint"]["port"], node.port());
    // The node continues our upstream span.
    assert_eq!(seen["x-b3-traceid"], TRACE);
    assert_eq!(seen["x-b3-spanid"], upstream["id"]);
    assert_eq!(seen["x-b3-parentspanid"], serve["id"]);
    assert_eq!(seen["x-b3-sampled"], "1");
    assert_eq!(seen["traceparent"], format!("00-{TRACE}-{}-01", upstream["id"].as_str().unwrap()).as_str());

    // W3C trace context is continued too.
    let w3c_trace = "0af7651916cd43dd8448eb211c80319c";
    let r = send_with(
        "GET",
        &lb.url("/r/app/w3c"),
        &[("traceparent", &format!("00-{w3c_trace}-b7ad6b7169203331-01"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.json()["x-b3-traceid"], w3c_trace);
    let spans = spans_of(&mut rx, w3c_trace, 3).await;
    assert_eq!(by_name(&spans, "serve")["parentId"], "b7ad6b7169203331");

    // A caller that says "do not sample" is passed through untouched, and no span is made.
    let r = send_with("GET", &lb.url("/r/app/quiet"), &[("b3", "0")], Bytes::new()).await;
    let seen = r.json();
    assert_eq!(seen["b3"], "0");
    assert!(seen.get("x-b3-traceid").is_none(), "{seen}");

    // A call without a context starts a new trace with a 128-bit id.
    let r = send("GET", &lb.url("/r/app/fresh"), "").await;
    let fresh = r.json()["x-b3-traceid"].as_str().unwrap().to_string();
    assert_eq!(fresh.len(), 32);
    let spans = spans_of(&mut rx, &fresh, 3).await;
    assert!(by_name(&spans, "serve").get("parentId").is_none());

    // Counted once the collector has answered.
    let mut exported = 0.0;
    for _ in 0..100 {
        let page = send("GET", &lb.mgmt_url("/1/lb/metrics"), "").await.text();
        exported = sample(&page, "fnlb_trace_spans_total{outcome=\"exported\"}").unwrap();
        if exported >= 9.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(exported >= 9.0, "{exported}");
}

/// Sends `n` calls one after another; returns the slowest.
async fn slowest_of(lb: &Fnlb, n: usize) -> Duration {
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let t = Instant::now();
        let r = send("GET", &lb.url(&format!("/r/app/z{}", i % 7)), "").await;
        assert_eq!(r.status, 200);
        worst = worst.max(t.elapsed());
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_hanging_collector_costs_calls_nothing() {
    let a = FakeNode::start().await;
    // Dead: nothing listens on the collector's port.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // Hanging: accepts connections and never answers.
    let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    for collector in [dead, hang_addr] {
        let url = format!("http://{collector}/api/v2/spans");
        let lb = balancer_with(&[&a], &["-zipkin", &url]).await;
        let started = Instant::now();
        let worst = slowest_of(&lb, 300).await;
        assert!(worst < Duration::from_millis(500), "{collector}: a call took {worst:?}");
        assert!(started.elapsed() < Duration::from_secs(20), "{collector}: 300 calls took {:?}", started.elapsed());
        if collector == dead {
            // The failed exports are counted, not retried forever.
            let mut failed = 0.0;
            for _ in 0..50 {
                let page = send("GET", &lb.mgmt_url("/1/lb/metrics"), "").await.text();
                failed = sample(&page, "fnlb_trace_spans_total{outcome=\"export_failed\"}").unwrap();
                if failed > 0.0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(failed > 0.0);
            assert_eq!(lb.log().matches("cannot export spans to zipkin").count(), 1, "logged once:\n{}", lb.log());
        }
    }
}

/// fnlb with JSON logs (the test language reads the text form of the ready line): returns the
/// process, its address and its log so far.
struct JsonFnlb {
    child: std::process::Child,
    addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for JsonFnlb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_json(args: &[&str]) -> JsonFnlb {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fnlb"))
        .args(["-listen", "127.0.0.1:0", "-mgmt-listen", "127.0.0.1:0", "-hc-interval", "0.2", "-log-format", "json"])
        .args(args)
        .env("LOG_LEVEL", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == "fnlb ready" {
                    let _ = tx.send(v["traffic"].as_str().unwrap().to_string());
                }
            }
            let mut l = log2.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("ready").parse().unwrap();
    JsonFnlb { child, addr, log }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_in_json_has_one_line_per_call() {
    let a = FakeNode::start().await;
    let lb = start_json(&["-nodes", &a.name(), "-access-log"]);
    let url = |p: &str| format!("http://{}{p}", lb.addr);
    for _ in 0..300 {
        let v = send("GET", &url("/1/lb/nodes"), "").await.json();
        if v["nodes"][a.name()] == "online" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = send("POST", &url("/r/app/logged?secret=1"), "x").await;
    assert_eq!(r.status, 200);
    let text = || lb.log.lock().unwrap().clone();
    let mut line = None;
    for _ in 0..100 {
        line = text().lines().find(|l| l.contains("fnlb::access")).map(str::to_string);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = line.expect("an access log line");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/r/app/logged", "the query is not logged");
    assert_eq!(v["node"], a.name().as_str());
    assert_eq!(v["status"], 200);
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(v["wait_ms"], 1.5);
    for l in text().lines() {
        assert!(serde_json::from_str::<Value>(l).is_ok(), "not JSON: {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_access_log_unless_asked() {
    let a = FakeNode::start().await;
    let lb = balancer_with(&[&a], &[]).await;
    send("GET", &lb.url("/r/app/quiet"), "").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!lb.log().contains("fnlb::access"), "{}", lb.log());
}
