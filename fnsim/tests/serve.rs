//! `fnsim serve` over real sockets: the binary, its ready lines, headers, the node model as seen
//! from outside, and the control endpoints.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

const LIMIT: Duration = Duration::from_secs(10);

async fn stats(c: &HttpClient, sim: &Sim, node: usize) -> serde_json::Value {
    let a = get(c, &sim.url(node, "/fnsim/stats")).await;
    assert_eq!(a.status, 200);
    a.json()
}

/// Waits until `node` has `busy` containers in use (so later requests arrive in a known order).
async fn until_busy(c: &HttpClient, sim: &Sim, node: usize, busy: u64) {
    eventually(LIMIT, "busy containers", || async { stats(c, sim, node).await["busy"] == busy }).await;
}

#[tokio::test]
async fn ready_lines_and_version() {
    let sim = Sim::start(&["--nodes", "3", "--version", "0.3.999"]);
    assert_eq!(sim.addrs.len(), 3);
    let mut ports: Vec<_> = sim.addrs.iter().map(|a| a.port()).collect();
    ports.dedup();
    assert_eq!(ports.len(), 3, "distinct ports: {:?}", sim.addrs);
    assert!(ports.iter().all(|&p| p != 0));

    let c = client();
    for node in 0..3 {
        let a = get(&c, &sim.url(node, "/version")).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-type"), "application/json");
        assert_eq!(a.json(), serde_json::json!({"version": "0.3.999"}));
        assert_eq!(a.header("fn-node"), node.to_string());
    }
}

#[tokio::test]
async fn health_knob_makes_version_fail_and_recover() {
    let sim = Sim::start(&["--nodes", "2"]);
    let c = client();
    let a = post(&c, &sim.url(0, "/fnsim/health"), r#"{"healthy":false}"#).await;
    assert_eq!(a.status, 200);
    assert_eq!(get(&c, &sim.url(0, "/version")).await.status, 503);
    assert_eq!(get(&c, &sim.url(1, "/version")).await.status, 200, "only node 0");
    // Bad bodies are refused.
    assert_eq!(post(&c, &sim.url(0, "/fnsim/health"), "{}").await.status, 400);
    // Node 1 can flip node 0 back.
    let a = post(&c, &sim.url(1, "/fnsim/health?node=0"), r#"{"healthy":true}"#).await;
    assert_eq!(a.status, 200);
    assert_eq!(get(&c, &sim.url(0, "/version")).await.status, 200);
}

#[tokio::test]
async fn version_delay_slows_version_only() {
    let sim = Sim::start(&["--version-delay-ms", "300", "--exec-ms", "0"]);
    let c = client();
    let t = Instant::now();
    assert_eq!(get(&c, &sim.url(0, "/version")).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(get(&c, &sim.url(0, "/r/app/fn")).await.status, 200);
    assert!(t.elapsed() < Duration::from_millis(1000), "calls are not delayed");
}

#[tokio::test]
async fn cold_then_warm_with_wait_header() {
    let sim = Sim::start(&["--cold-ms", "300", "--exec-ms", "10"]);
    let c = client();
    let url = sim.url(0, "/r/app/fn?x=1");

    let t = Instant::now();
    let a = get(&c, &url).await;
    assert_eq!(a.status, 200);
    assert!(a.cold());
    assert!(a.wait() >= Duration::from_millis(300), "{:?}", a.wait());
    assert!(a.wait() < Duration::from_millis(2000), "{:?}", a.wait());
    assert!(t.elapsed() >= Duration::from_millis(310));
    assert_eq!(a.header("fn-node"), "0");
    assert_eq!(&a.body[..], b"hello from node 0 (/r/app/fn)\n");

    // Same path, other query: same function, warm, no cold start in the wait.
    let a = get(&c, &sim.url(0, "/r/app/fn")).await;
    assert!(!a.cold());
    assert!(a.wait() < Duration::from_millis(200), "{:?}", a.wait());

    // Another function is cold again.
    assert!(get(&c, &sim.url(0, "/r/app/other")).await.cold());

    let s = stats(&c, &sim, 0).await;
    assert_eq!(s["calls"], 3);
    assert_eq!(s["cold_starts"], 2);
    assert_eq!(s["warm_starts"], 1);
    assert_eq!(s["functions"]["/r/app/fn"]["calls"], 2);
}

#[tokio::test]
async fn request_headers_set_exec_and_cold_times() {
    let sim = Sim::start(&["--cold-ms", "5000", "--exec-ms", "5000"]);
    let c = client();
    let req = || {
        Request::post(sim.url(0, "/r/app/fn"))
            .header("Fnsim-Exec-Ms", "100.5")
            .header("Fnsim-Cold-Ms", "150")
            .body(Full::new(Bytes::from_static(b"some payload")))
            .unwrap()
    };
    let t = Instant::now();
    let a = send(&c, req()).await;
    let took = t.elapsed();
    assert!(a.cold());
    assert!(a.wait() >= Duration::from_millis(150), "{:?}", a.wait());
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_millis(2000), "{took:?}");
    let a = send(&c, req()).await;
    assert!(!a.cold());
}

#[tokio::test]
async fn full_node_queues_fifo_and_evicts() {
    let sim = Sim::start(&["--slots", "1", "--cold-ms", "0", "--exec-ms", "300"]);
    let c = client();
    let first = tokio::spawn({
        let c = c.clone();
        let url = sim.url(0, "/r/app/a");
        async move { get(&c, &url).await }
    });
    until_busy(&c, &sim, 0, 1).await;
    let second = get(&c, &sim.url(0, "/r/app/b")).await;
    let first = first.await.unwrap();
    assert!(first.wait() < Duration::from_millis(250), "{:?}", first.wait());
    // The second call waited for the first to finish, then started cold on the evicted slot.
    assert!(second.cold());
    assert!(second.wait() >= Duration::from_millis(150), "{:?}", second.wait());

    let s = stats(&c, &sim, 0).await;
    assert_eq!(s["queued"], 1);
    assert_eq!(s["evictions"], 1);
    assert_eq!(s["cold_starts"], 2);
    assert!(s["queue_wait_seconds"].as_f64().unwrap() > 0.1);
    assert!(s["busy_slot_seconds"].as_f64().unwrap() >= 0.55);
}

#[tokio::test]
async fn reject_mode_answers_503_at_once() {
    let sim = Sim::start(&["--slots", "1", "--queue-mode", "reject", "--cold-ms", "0", "--exec-ms", "2000"]);
    let c = client();
    let first = tokio::spawn({
        let c = c.clone();
        let url = sim.url(0, "/r/app/a");
        async move { get(&c, &url).await }
    });
    until_busy(&c, &sim, 0, 1).await;
    let t = Instant::now();
    let a = get(&c, &sim.url(0, "/r/app/b")).await;
    assert_eq!(a.status, 503);
    assert!(t.elapsed() < Duration::from_millis(1000));
    assert_eq!(stats(&c, &sim, 0).await["rejected"], 1);
    assert_eq!(first.await.unwrap().status, 200);
}

#[tokio::test]
async fn stats_reset() {
    let sim = Sim::start(&["--cold-ms", "0", "--exec-ms", "0"]);
    let c = client();
    for _ in 0..5 {
        assert_eq!(get(&c, &sim.url(0, "/r/a/f")).await.status, 200);
    }
    let s = stats(&c, &sim, 0).await;
    assert_eq!((s["calls"].as_u64(), s["warm_starts"].as_u64()), (Some(5), Some(4)));
    assert_eq!(s["idle"], 1);
    assert_eq!(post(&c, &sim.url(0, "/fnsim/stats/reset"), "").await.status, 200);
    let s = stats(&c, &sim, 0).await;
    assert_eq!(s["calls"], 0);
    assert_eq!(s["idle"], 1, "containers survive a stats reset");
    assert_eq!(get(&c, &sim.url(0, "/fnsim/nope")).await.status, 404);
}

#[tokio::test]
async fn fast_mode_and_body_size() {
    let sim = Sim::start(&["--mode", "fast", "--body-size", "1048576"]);
    let c = client();
    let a = get(&c, &sim.url(0, "/r/app/fn")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), 1 << 20);
    assert_eq!(a.header("content-length"), "1048576");
    assert_eq!(a.header("xxx-fxlb-wait"), "1ms");
    assert!(!a.cold());
    assert_eq!(get(&c, &sim.url(0, "/version")).await.status, 200);
    assert_eq!(stats(&c, &sim, 0).await["calls"], 1);
}

#[tokio::test]
async fn fail_rate_one_fails_every_call() {
    let sim = Sim::start(&["--fail-rate", "1", "--exec-ms", "0"]);
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &sim.url(0, "/r/a/f")).await.status, 500);
    }
    assert_eq!(stats(&c, &sim, 0).await["failed"], 3);
}

#[tokio::test]
async fn down_closes_the_listener_and_up_rebinds() {
    let sim = Sim::start(&["--nodes", "2", "--exec-ms", "0", "--cold-ms", "0"]);
    let c = client();
    assert_eq!(get(&c, &sim.url(0, "/r/a/f")).await.status, 200);
    assert_eq!(post(&c, &sim.url(0, "/fnsim/down"), "").await.status, 200);
    let addr = sim.addrs[0];
    eventually(LIMIT, "connections refused", || async move { tokio::net::TcpStream::connect(addr).await.is_err() })
        .await;
    // Bring it back through node 1; it comes back without warm containers.
    assert_eq!(post(&c, &sim.url(1, "/fnsim/up?node=0"), "").await.status, 200);
    eventually(LIMIT, "node 0 back", || async move { tokio::net::TcpStream::connect(addr).await.is_ok() }).await;
    let a = get(&client(), &sim.url(0, "/r/a/f")).await;
    assert!(a.cold(), "a restarted node has no warm containers");

    // A timed down comes back by itself.
    let a = post(&c, &sim.url(1, "/fnsim/down?node=0&for_ms=300"), "").await;
    assert_eq!(a.status, 200);
    eventually(LIMIT, "down", || async move { tokio::net::TcpStream::connect(addr).await.is_err() }).await;
    eventually(LIMIT, "auto up", || async move { tokio::net::TcpStream::connect(addr).await.is_ok() }).await;
    assert_eq!(get(&client(), &sim.url(0, "/version")).await.status, 200);
}

#[tokio::test]
async fn explicit_addresses_and_first_index() {
    // Port 0 on an explicit address list; indexes start at 5.
    let mut sim = Sim::start(&["--addrs", "127.0.0.1:0,127.0.0.1:0", "--first-index", "5"]);
    assert_eq!(sim.addrs.len(), 2);
    let c = client();
    let a = get(&c, &sim.url(1, "/version")).await;
    assert_eq!(a.header("fn-node"), "6");

    // SIGTERM stops it cleanly.
    let status = std::process::Command::new("kill").args(["-TERM", &sim.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(st) = sim.child.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "fnsim did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn one_node_per_loopback_host() {
    let sim = Sim::start(&["--hosts", "127.0.0.2,127.0.0.3"]);
    assert_eq!(sim.addrs[0].ip().to_string(), "127.0.0.2");
    assert_eq!(sim.addrs[1].ip().to_string(), "127.0.0.3");
    let c = client();
    assert_eq!(get(&c, &sim.url(1, "/version")).await.header("fn-node"), "1");
}

#[tokio::test]
async fn library_serve_in_process() {
    let handle = fnsim::serve(fnsim::ServeConfig {
        addrs: vec!["127.0.0.1:0".parse().unwrap()],
        first_index: 0,
        node: fnsim::NodeConfig { cold: Duration::ZERO, exec: Duration::ZERO, ..Default::default() },
    })
    .await
    .unwrap();
    let url = format!("http://{}/r/a/f", handle.addrs()[0]);
    let c = client();
    assert!(get(&c, &url).await.cold());
    assert!(!get(&c, &url).await.cold());
    assert_eq!(handle.stats(0).warm_starts, 1);
    handle.set_healthy(0, false);
    assert_eq!(get(&c, &format!("http://{}/version", handle.addrs()[0])).await.status, 503);
    handle.shutdown().await;
}
