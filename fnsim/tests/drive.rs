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

// ---- Scenarios (issue 13 item 6): generated through the library, as the driver and routesim do.

use fnsim::azure::{AzureConfig, Quantiles};
use fnsim::trace::{self, Variant, WorkloadConfig};

/// The checked-in trace subset beside the repository (`../shared/traces/azure2019`).
fn azure_dir() -> std::path::PathBuf {
    let dir = fnsim::azure::default_trace_dir();
    assert!(dir.join("500").join("invocations.csv").is_file(), "the Azure trace is missing at {}", dir.display());
    dir
}

/// Per function, straight from the CSVs (independently of fnsim's reader): the counts of
/// minutes `start..start+minutes`, and the percentile columns.
fn azure_csv(start: usize, minutes: usize) -> Vec<(Vec<u64>, [f64; 7])> {
    let dir = azure_dir().join("500");
    let text = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let durations: std::collections::HashMap<String, [f64; 7]> = text("durations.csv")
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            let q: Vec<f64> = c[7..].iter().map(|x| x.parse().unwrap()).collect();
            (c[..3].join(","), q.try_into().unwrap())
        })
        .collect();
    text("invocations.csv")
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            let counts = c[4 + start..4 + start + minutes].iter().map(|x| x.parse().unwrap()).collect();
            (counts, durations[&c[..3].join(",")])
        })
        .collect()
}

fn azure_config(rho: f64, start: usize, minutes: usize) -> WorkloadConfig {
    WorkloadConfig {
        variant: Variant::Azure,
        rho,
        seed: 3,
        azure: AzureConfig { trace_dir: azure_dir(), start_minute: start, minutes, ..AzureConfig::default() },
        ..WorkloadConfig::default()
    }
}

#[test]
fn azure_replay_keeps_the_traces_minute_counts_and_percentiles() {
    let (start, minutes) = (200, 3);
    let t = trace::build(&azure_config(0.45, start, minutes)).expect("azure trace");
    let csv = azure_csv(start, minutes);
    let az = t.azure.clone().expect("replay info");
    assert_eq!(t.functions.len(), csv.len());
    // ρ 0.45 of 8 × 64 slots: the trace runs at about 0.08-0.1 natively, so it is compressed.
    assert!(az.speed > 3.0 && az.speed < 8.0, "{az:?}");
    assert!((az.minute_s - 60.0 / az.speed).abs() < 1e-9);
    assert!((t.duration().as_secs_f64() - minutes as f64 * az.minute_s).abs() < 1e-6);

    // Every function's calls in every (compressed) minute are the trace's count for that minute.
    let mut got = vec![vec![0u64; minutes]; csv.len()];
    for c in &t.calls {
        let m = (c.at.as_secs_f64() / az.minute_s) as usize;
        got[c.func as usize][m] += 1;
    }
    for (f, (counts, _)) in csv.iter().enumerate() {
        assert_eq!(&got[f], counts, "function {f}");
    }
    let total: u64 = csv.iter().flat_map(|(c, _)| c).sum();
    assert_eq!(t.calls.len() as u64, total);
    assert_eq!(az.per_minute.iter().sum::<u64>(), total);
    assert!((t.rate - total as f64 / t.duration().as_secs_f64()).abs() < 1e-6);
    assert!(t.calls.windows(2).all(|w| w[0].at <= w[1].at), "sorted");

    // Execution times stay between the function's 0th and 100th percentiles (clipped to 30 s),
    // and split at its median about half and half (the busiest function has thousands of calls).
    for c in &t.calls {
        let q = csv[c.func as usize].1;
        assert!(c.exec_ms >= q[0].min(30_000.0) - 1e-9 && c.exec_ms <= q[6].min(30_000.0) + 1e-9, "{c:?} vs {q:?}");
        assert!((200.0..=2000.0).contains(&c.cold_ms));
    }
    let busiest = (0..csv.len()).max_by_key(|&f| csv[f].0.iter().sum::<u64>()).unwrap();
    let q = csv[busiest].1;
    let mine: Vec<f64> = t.calls.iter().filter(|c| c.func as usize == busiest).map(|c| c.exec_ms).collect();
    let below = |x: f64| mine.iter().filter(|&&e| e <= x).count() as f64 / mine.len() as f64;
    if q[3] < q[4] && q[2] < q[3] {
        assert!((below(q[3]) - 0.5).abs() < 0.05, "median split {} of {}", below(q[3]), mine.len());
    }
    assert!(below(q[5]) >= 0.97, "{}", below(q[5]));

    // The offered work over the replay is ρ of the nodes' slots (execution times are random).
    let work_s: f64 = t.calls.iter().map(|c| c.exec_ms / 1000.0).sum();
    let util = work_s / t.duration().as_secs_f64() / (8.0 * 64.0);
    assert!((util / 0.45 - 1.0).abs() < 0.15, "{util}");
    // Its E[exec] is the exact mean of the interpolated percentiles.
    let expect: f64 =
        csv.iter().map(|(c, q)| c.iter().sum::<u64>() as f64 * Quantiles(*q).mean_clipped(30_000.0)).sum::<f64>()
            / total as f64;
    assert!((t.mean_exec_ms - expect).abs() < 1e-6, "{} vs {expect}", t.mean_exec_ms);

    // Same seed, same replay; another seed moves calls but keeps the counts.
    let again = trace::build(&azure_config(0.45, start, minutes)).unwrap();
    assert_eq!(again.calls, t.calls);
    let other = trace::build(&WorkloadConfig { seed: 4, ..azure_config(0.45, start, minutes) }).unwrap();
    assert_ne!(other.calls, t.calls);
    assert_eq!(other.calls.len(), t.calls.len());
}

#[test]
fn azure_speed_factor_compresses_time_and_uniform_arrivals_space_calls_evenly() {
    let mut cfg = azure_config(0.3, 0, 2);
    cfg.azure.speed = Some(2.0);
    cfg.azure.arrivals = fnsim::azure::Arrivals::Uniform;
    let t = trace::build(&cfg).unwrap();
    assert_eq!(t.duration(), Duration::from_secs(60));
    // Every function's calls in a minute are evenly spaced: n calls, gaps of 30 s / n.
    let csv = azure_csv(0, 2);
    let busiest = (0..csv.len()).max_by_key(|&f| csv[f].0[0]).unwrap();
    let n = csv[busiest].0[0] as f64;
    let times: Vec<f64> = t
        .calls
        .iter()
        .filter(|c| c.func as usize == busiest && c.at.as_secs_f64() < 30.0)
        .map(|c| c.at.as_secs_f64())
        .collect();
    assert_eq!(times.len() as f64, n);
    assert!(times.windows(2).all(|w| ((w[1] - w[0]) - 30.0 / n).abs() < 1e-6));
    // ρ follows from the speed: twice as fast, twice the utilisation of the native pace.
    let native =
        trace::build(&WorkloadConfig { azure: AzureConfig { speed: Some(1.0), ..cfg.azure.clone() }, ..cfg.clone() })
            .unwrap();
    assert!((t.config.rho / native.config.rho - 2.0).abs() < 1e-9);
}

#[test]
fn azure_errors_name_the_problem() {
    let mut cfg = azure_config(0.3, 0, 2);
    cfg.azure.trace_dir = "/nonexistent/azure2019".into();
    let e = trace::build(&cfg).unwrap_err();
    assert!(e.contains("invocations.csv") || e.contains("durations.csv"), "{e}");
    let e = trace::build(&azure_config(0.3, 470, 20)).unwrap_err();
    assert!(e.contains("480 minutes"), "{e}");
    // The CLI refuses a bad window, and --speed with --rho.
    let out = fnsim(&["drive", "--dry-run", "--variant", "azure", "--window", "470:20"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--window"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = fnsim(&["drive", "--dry-run", "--variant", "azure", "--rho", "0.3", "--speed", "2"]);
    assert!(!out.status.success());
}

#[test]
fn azure_dry_run_reports_the_window_speed_and_bound() {
    let dir = azure_dir();
    let r = json_out(&fnsim(&[
        "drive",
        "--dry-run",
        "--json",
        "--scenario",
        "azure",
        "--rho",
        "0.45",
        "--window",
        "120:2",
        "--trace-dir",
        dir.to_str().unwrap(),
    ]));
    let calls = r["calls"].as_u64().unwrap();
    let csv = azure_csv(120, 2);
    assert_eq!(calls, csv.iter().flat_map(|(c, _)| c).sum::<u64>(), "{r}");
    assert_eq!(r["azure"]["start_minute"], 120);
    assert!((r["workload"]["rho"].as_f64().unwrap() - 0.45).abs() < 1e-9, "{r}");
    let bound = r["bound_cold_ratio"].as_f64().unwrap();
    assert!(bound > 0.0 && bound < 0.2, "{r}");
}

#[test]
fn spike_doubles_the_rate_in_its_window_only() {
    let cfg = WorkloadConfig { variant: Variant::Spike, seed: 5, ..WorkloadConfig::default() };
    let t = trace::build(&cfg).unwrap();
    let (s, e) = t.spike_window().expect("a spike");
    // A third of the way through the 60 s measured window, for 10 s.
    assert_eq!((s, e), (Duration::from_secs(30), Duration::from_secs(40)));
    let rate =
        |lo: f64, hi: f64| t.calls.iter().filter(|c| (lo..hi).contains(&c.at.as_secs_f64())).count() as f64 / (hi - lo);
    let (before, during, after) = (rate(10.0, 30.0), rate(30.0, 40.0), rate(40.0, 70.0));
    assert!((before / t.rate - 1.0).abs() < 0.05, "{before} vs {}", t.rate);
    assert!((during / before - 2.0).abs() < 0.1, "{during} vs {before}");
    assert!((after / before - 1.0).abs() < 0.05, "{after} vs {before}");
    // Steady has no spike, on the same seed.
    let steady = trace::build(&WorkloadConfig { variant: Variant::Steady, ..cfg }).unwrap();
    assert!(steady.spike_window().is_none());
    let n = |t: &trace::Trace| t.calls.iter().filter(|c| (30.0..40.0).contains(&c.at.as_secs_f64())).count() as f64;
    assert!(n(&t) / n(&steady) > 1.8);
}

#[test]
fn many_functions_follow_zipf_1_1() {
    let cfg = WorkloadConfig {
        variant: Variant::Many,
        functions: Variant::Many.default_functions(),
        seed: 9,
        ..WorkloadConfig::default()
    };
    let t = trace::build(&cfg).unwrap();
    assert_eq!(t.functions.len(), 5000);
    // Zipf(1.1) over 5,000: the k-th most popular has k^-1.1 / H of the calls, H = Σ j^-1.1.
    let h: f64 = (1..=5000).map(|j| (j as f64).powf(-1.1)).sum();
    let mut counts = vec![0usize; t.functions.len()];
    for c in &t.calls {
        counts[c.func as usize] += 1;
    }
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let n = t.calls.len() as f64;
    let share = |k: usize| counts[..k].iter().sum::<usize>() as f64 / n;
    let predicted = |k: usize| (1..=k).map(|j| (j as f64).powf(-1.1)).sum::<f64>() / h;
    assert!((predicted(1) - 0.158).abs() < 0.002, "{}", predicted(1));
    // Binomial noise over ~36,000 calls is about 0.2 percentage points.
    assert!((share(1) - predicted(1)).abs() < 0.012, "top share {} vs {}", share(1), predicted(1));
    assert!((share(10) - predicted(10)).abs() < 0.02, "top-10 share {} vs {}", share(10), predicted(10));
    assert!((share(100) - predicted(100)).abs() < 0.02, "top-100 share {} vs {}", share(100), predicted(100));
    // The dry run picks 5,000 functions for the many scenario by itself.
    let r = json_out(&fnsim(&["drive", "--dry-run", "--json", "--variant", "many", "--duration", "5s"]));
    assert_eq!(r["functions"], 5000, "{r}");
}
