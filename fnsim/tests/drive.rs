//! `fnsim drive` end to end against `fnsim serve` nodes (used as targets directly, so each
//! call goes to a random node: the locality-blind baseline).

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn fnsim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fnsim")).args(args).output().expect("run fnsim")
}

fn json_out(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "fnsim failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// A small workload: 2 nodes of 8 slots, 10 functions, 3 seconds.
const SMALL: &[&str] = &[
    "--nodes",
    "2",
    "--slots",
    "8",
    "--functions",
    "10",
    "--warmup",
    "1s",
    "--duration",
    "2s",
    "--rho",
    "0.3",
    "--timeout",
    "20s",
];

#[test]
fn drive_reports_calls_colds_and_node_load() {
    let sim = Sim::start(&["--nodes", "2", "--slots", "8"]);
    let targets = format!("{},{}", sim.url(0, ""), sim.url(1, ""));
    let mut args = vec!["drive", "--json", "--target", &targets, "--nodes-url", &targets];
    args.extend_from_slice(SMALL);
    let r = json_out(&fnsim(&args));

    let calls = r["calls"].as_u64().unwrap();
    assert!(calls > 10, "{r}");
    assert_eq!(r["ok"], calls, "{r}");
    assert_eq!(r["errors"], 0);
    assert_eq!(r["targets"], 2);
    let cold = r["cold_starts"].as_u64().unwrap();
    let bound = r["bound_cold_starts"].as_u64().unwrap();
    assert!(cold >= 1 && bound >= 1, "{r}");
    assert!(r["latency_ms"]["count"].as_u64().unwrap() > 0);
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() >= 10.0);
    assert!(r["excess_ms"]["p50"].as_f64().unwrap() >= 0.0);
    assert_eq!(r["nodes"].as_array().unwrap().len(), 2, "both nodes served calls");

    // The nodes' own counters agree with what the driver saw.
    let stats = r["node_stats"].as_array().unwrap();
    assert_eq!(stats.len(), 2);
    let node_calls: u64 = stats.iter().map(|s| s["calls"].as_u64().unwrap()).sum();
    let node_colds: u64 = stats.iter().map(|s| s["cold_starts"].as_u64().unwrap()).sum();
    assert_eq!(node_calls, calls);
    assert_eq!(node_colds, cold);
}

#[test]
fn churn_takes_a_node_down_and_back() {
    let sim = Sim::start(&["--nodes", "2", "--slots", "8"]);
    let targets = format!("{},{}", sim.url(0, ""), sim.url(1, ""));
    let admin = sim.url(1, "");
    let mut args =
        vec!["drive", "--json", "--variant", "churn", "--target", &targets, "--admin", &admin, "--churn-node", "0"];
    args.extend_from_slice(SMALL);
    let r = json_out(&fnsim(&args));
    let events: Vec<&str> = r["churn"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert_eq!(events.len(), 2, "{r}");
    assert!(events[0].ends_with("node 0 down"), "{events:?}");
    assert!(events[1].ends_with("node 0 up"), "{events:?}");
    // Node 0 is back afterwards.
    let addr = sim.addrs[0];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        eventually(Duration::from_secs(10), "node 0 back", || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        assert_eq!(get(&client(), &sim.url(0, "/version")).await.status, 200);
    });
}

#[test]
fn dry_run_is_deterministic_by_seed() {
    let run = |seed: &str| json_out(&fnsim(&["drive", "--dry-run", "--json", "--seed", seed, "--duration", "20s"]));
    let a = run("7");
    assert_eq!(a, run("7"));
    assert_ne!(a["calls"], run("8")["calls"]);
    let ratio = a["bound_cold_ratio"].as_f64().unwrap();
    assert!(ratio > 0.0 && ratio < 0.5, "{a}");
}

#[test]
fn bad_drive_arguments_are_refused() {
    let out = fnsim(&["drive", "--variant", "churn", "--target", "http://127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin"));
    let out = fnsim(&["drive", "--target", "ftp://x"]);
    assert!(!out.status.success());
}
