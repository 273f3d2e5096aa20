//! The workload driver: replays a [`Trace`] open loop against one or more balancers (or nodes)
//! and reports cold starts against the lower bound, latency, excess latency and per-node load.
//!
//! Open loop: each call is sent at its scheduled time whatever is still in flight, and its
//! latency counts from the scheduled time, so a slow system cannot slow the load down and
//! driver lag shows up as latency instead of hiding (`send_lag_ms` reports it separately).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::azure::AzureReplay;
use crate::bound;
use crate::metrics::{spike_recovery, SpikeRecovery, Summary};
use crate::server::{COLD_HEADER, COLD_RESPONSE_HEADER, EXEC_HEADER, NODE_HEADER};
use crate::trace::{Trace, Variant};

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

#[derive(Clone, Debug)]
pub struct DriveConfig {
    /// Base URLs (`http://127.0.0.1:8081`); each call goes to one at random.
    pub targets: Vec<String>,
    /// Must match the nodes' `--idle-timeout` for the bound to mean anything.
    pub idle_timeout: Duration,
    /// Base URL of an fnsim node used for `churn`'s down/up commands.
    pub admin: Option<String>,
    /// Index of the node taken down by `churn`.
    pub churn_node: usize,
    /// Node base URLs whose `/fnsim/stats` are reset before and read after the run.
    pub node_urls: Vec<String>,
    /// Per-call timeout (counted from the scheduled time).
    pub timeout: Duration,
    pub method: Method,
}

/// What happened to one call.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Answered { status: u16, cold: Option<bool>, node: Option<u32>, latency: Duration },
    Failed(&'static str),
}

/// Load seen on one node (from the `Fn-Node` header), measured window only.
#[derive(Clone, Debug, Serialize)]
pub struct NodeLoad {
    pub node: u32,
    pub calls: usize,
    /// Estimated busy-slot-seconds: execution plus cold start of the calls it served.
    pub busy_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub variant: Variant,
    pub seed: u64,
    pub rho: f64,
    /// Steady arrival rate of the trace (calls/s).
    pub rate: f64,
    pub mean_exec_ms: f64,
    /// Functions of the trace.
    pub functions: usize,
    /// The Azure replay's window and speed.
    pub azure: Option<AzureReplay>,
    pub warmup_s: f64,
    pub measured_s: f64,
    pub targets: usize,
    /// Calls in the whole trace, and after the warm-up.
    pub calls: usize,
    pub measured_calls: usize,
    /// Calls answered 2xx.
    pub ok: usize,
    /// Calls not answered 2xx (whole trace).
    pub errors: usize,
    /// Errors by HTTP status or transport failure (`connect`, `timeout`, `request`, `body`).
    pub errors_by_kind: BTreeMap<String, usize>,
    /// Calls answered with `Fn-Call-Cold: true`, over the whole trace.
    pub cold_starts: usize,
    pub cold_ratio: f64,
    pub bound_cold_starts: usize,
    pub bound_cold_ratio: f64,
    /// `cold_ratio / bound_cold_ratio`.
    pub cold_vs_bound: f64,
    /// Latency from the scheduled time to the end of the body, 2xx calls after the warm-up.
    pub latency_ms: Summary,
    /// Latency minus the call's own execution time.
    pub excess_ms: Summary,
    /// How late the driver sent calls (its own overload shows here).
    pub send_lag_ms: Summary,
    pub nodes: Vec<NodeLoad>,
    pub busy_max_s: f64,
    pub busy_mean_s: f64,
    /// `busy_max_s / busy_mean_s`: 1.0 is perfect balance.
    pub busy_max_over_mean: f64,
    /// `/fnsim/stats` of each `--nodes-url`, read after the run.
    pub node_stats: Vec<serde_json::Value>,
    /// Share of the measured calls (2xx, node known) served on their function's home node, the
    /// node that served most of that function's measured calls. Contender-neutral: it needs no
    /// knowledge of the balancer's hash, and is 1.0 when every function stays on one node.
    pub home_share: f64,
    /// Cold starts per [`TIMELINE_BUCKET`] of the measured window, to show spikes (churn).
    pub cold_timeline: Vec<ColdBucket>,
    /// What the churn variant did, with times relative to the start of the trace.
    pub churn: Vec<String>,
    /// Churn only: which functions changed node when the node left and when it came back.
    pub churn_keys: Option<ChurnKeys>,
    /// Spike only: how the cold-start ratio came back after the spike (2xx calls)...
    pub spike: Option<SpikeRecovery>,
    /// ...and the lower bound's own, on the same calls (an ideal pool pays for a spike too).
    pub bound_spike: Option<SpikeRecovery>,
}

/// Width of the cold-start timeline's buckets.
pub const TIMELINE_BUCKET: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ColdBucket {
    /// Start of the bucket, seconds from the start of the trace.
    pub from_s: f64,
    pub calls: usize,
    pub cold: usize,
}

/// Remapped functions around a churn event. A function's node in a window is the node that
/// served most of its calls there; only functions with calls in both windows compared count.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ChurnKeys {
    /// The node taken down (its `Fn-Node` index).
    pub node: u32,
    /// Functions seen both before the node left and while it was away.
    pub compared_down: usize,
    /// Of those, functions that were on the leaving node and moved (they had to).
    pub moved_off_leaving_node: usize,
    /// Functions that were on another node and moved anyway (collateral remapping).
    pub moved_elsewhere: usize,
    /// Functions that were on the leaving node before it left and have calls after it returned.
    pub compared_return: usize,
    /// Of those, functions back on it after it returned.
    pub returned_home: usize,
}

/// Churn's schedule: the node leaves a third of the way through the measured window and returns
/// at two thirds. Shared by the driver's actions and the report's windows.
fn churn_times(warmup: Duration, measured: Duration) -> (Duration, Duration) {
    (warmup + measured / 3, warmup + measured * 2 / 3)
}

fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    // Open loop means thousands of calls in flight: keep every connection for reuse.
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(usize::MAX)
        .build(http)
}

fn trim(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

/// The lower bound alone (no HTTP): for `--dry-run` and the report.
pub fn bound_cold_starts(trace: &Trace, idle_timeout: Duration) -> usize {
    bound::cold_starts(&trace.calls, idle_timeout)
}

/// Replays `trace` and builds the report.
pub async fn drive(cfg: &DriveConfig, trace: &Trace) -> Report {
    let client = client();
    let targets: Vec<String> = cfg.targets.iter().map(|t| trim(t)).collect();
    let node_urls: Vec<String> = cfg.node_urls.iter().map(|t| trim(t)).collect();
    for url in &node_urls {
        if let Err(e) = post(&client, &format!("{url}/fnsim/stats/reset")).await {
            tracing::warn!("cannot reset stats of {url}: {e}");
        }
    }

    // A little lead so the first calls are not late because of setup.
    let start = Instant::now() + Duration::from_millis(50);
    let churn = if trace.config.variant == Variant::Churn {
        cfg.admin.as_ref().map(|admin| {
            tokio::spawn(churn(
                client.clone(),
                trim(admin),
                cfg.churn_node,
                start,
                trace.config.warmup,
                trace.config.measured,
            ))
        })
    } else {
        None
    };

    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Outcome, Duration)>();
    let collector = tokio::spawn({
        let n = trace.calls.len();
        async move {
            let mut outcomes: Vec<Option<(Outcome, Duration)>> = vec![None; n];
            while let Some((i, o, lag)) = rx.recv().await {
                outcomes[i] = Some((o, lag));
            }
            outcomes
        }
    });

    // The target of each call is drawn up front from the seed, so multi-target runs are
    // reproducible too.
    let mut rng = ChaCha8Rng::seed_from_u64(trace.config.seed ^ 0x7461_7267_6574);
    let paths: Arc<Vec<String>> = Arc::new(trace.functions.iter().map(|f| f.path.clone()).collect());
    for (i, call) in trace.calls.iter().enumerate() {
        let when = start + call.at;
        tokio::time::sleep_until(when).await;
        let target = if targets.len() == 1 { 0 } else { rng.gen_range(0..targets.len()) };
        let uri = format!("{}{}", targets[target], paths[call.func as usize]);
        let (client, tx, method, timeout) = (client.clone(), tx.clone(), cfg.method.clone(), cfg.timeout);
        let (exec, cold) = (call.exec_ms, call.cold_ms);
        tokio::spawn(async move {
            let lag = when.elapsed();
            let outcome = one_call(&client, method, &uri, exec, cold, when, timeout).await;
            let _ = tx.send((i, outcome, lag));
        });
    }
    drop(tx);
    let outcomes = collector.await.expect("collector");
    let churn_events = match churn {
        Some(h) => h.await.unwrap_or_default(),
        None => Vec::new(),
    };

    let mut node_stats = Vec::new();
    for url in &node_urls {
        match get_json(&client, &format!("{url}/fnsim/stats")).await {
            Ok(v) => node_stats.push(v),
            Err(e) => {
                node_stats.push(serde_json::json!({ "url": url, "error": e }));
            }
        }
    }

    let churn_node = (trace.config.variant == Variant::Churn).then_some(cfg.churn_node as u32);
    let mut report = summarize(trace, cfg.idle_timeout, &outcomes, churn_node);
    report.targets = targets.len();
    report.node_stats = node_stats;
    report.churn = churn_events;
    report
}

async fn one_call(
    client: &HttpClient,
    method: Method,
    uri: &str,
    exec_ms: f64,
    cold_ms: f64,
    scheduled: Instant,
    timeout: Duration,
) -> Outcome {
    let req = match Request::builder()
        .method(method)
        .uri(uri)
        .header(EXEC_HEADER, format!("{exec_ms:.3}"))
        .header(COLD_HEADER, format!("{cold_ms:.3}"))
        .body(Empty::new())
    {
        Ok(r) => r,
        Err(_) => return Outcome::Failed("request"),
    };
    let work = async {
        let resp = client.request(req).await.map_err(|e| if e.is_connect() { "connect" } else { "request" })?;
        let status = resp.status().as_u16();
        let cold = resp.headers().get(COLD_RESPONSE_HEADER).and_then(|v| match v.as_bytes() {
            b"true" => Some(true),
            b"false" => Some(false),
            _ => None,
        });
        let node = resp.headers().get(NODE_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|_| "body")?;
        }
        Ok::<_, &'static str>((status, cold, node))
    };
    match tokio::time::timeout_at(scheduled + timeout, work).await {
        Ok(Ok((status, cold, node))) => Outcome::Answered { status, cold, node, latency: scheduled.elapsed() },
        Ok(Err(kind)) => Outcome::Failed(kind),
        Err(_) => Outcome::Failed("timeout"),
    }
}

/// Takes `node` down a third of the way through the measured window and back up at two thirds
/// (20 s and 40 s of the default 60 s). The down command carries its own duration, so the node
/// returns even if `admin` is the node that went down.
async fn churn(
    client: HttpClient,
    admin: String,
    node: usize,
    start: Instant,
    warmup: Duration,
    measured: Duration,
) -> Vec<String> {
    let (down_at, up_at) = churn_times(warmup, measured);
    let mut events = Vec::new();
    tokio::time::sleep_until(start + down_at).await;
    let for_ms = (up_at - down_at).as_millis();
    let url = format!("{admin}/fnsim/down?node={node}&for_ms={for_ms}");
    events.push(match post(&client, &url).await {
        Ok(()) => format!("{:.1}s: node {node} down", down_at.as_secs_f64()),
        Err(e) => format!("{:.1}s: node {node} down FAILED: {e}", down_at.as_secs_f64()),
    });
    tokio::time::sleep_until(start + up_at).await;
    let url = format!("{admin}/fnsim/up?node={node}");
    events.push(match post(&client, &url).await {
        Ok(()) => format!("{:.1}s: node {node} up", up_at.as_secs_f64()),
        // Expected when `admin` is the node itself: its timed down brings it back.
        Err(e) => format!("{:.1}s: node {node} up by timer ({e})", up_at.as_secs_f64()),
    });
    events
}

async fn post(client: &HttpClient, url: &str) -> Result<(), String> {
    let req = Request::post(url).body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

async fn get_json(client: &HttpClient, url: &str) -> Result<serde_json::Value, String> {
    let req = Request::get(url).body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// Per function, how many calls each node served in one time window.
struct Placement(Vec<BTreeMap<u32, usize>>);

impl Placement {
    fn new(functions: usize) -> Placement {
        Placement(vec![BTreeMap::new(); functions])
    }

    fn add(&mut self, func: u32, node: u32) {
        if let Some(per_node) = self.0.get_mut(func as usize) {
            *per_node.entry(node).or_default() += 1;
        }
    }

    /// The node that served most of the function's calls (lowest index on a tie), if any.
    fn home(&self, func: usize) -> Option<u32> {
        let per_node = self.0.get(func)?;
        per_node.iter().max_by_key(|(node, n)| (**n, std::cmp::Reverse(**node))).map(|(node, _)| *node)
    }

    /// Calls served on their function's home node, and calls placed at all.
    fn on_home(&self) -> (usize, usize) {
        let mut home = 0;
        let mut all = 0;
        for (f, per_node) in self.0.iter().enumerate() {
            all += per_node.values().sum::<usize>();
            home += self.home(f).and_then(|h| per_node.get(&h)).copied().unwrap_or(0);
        }
        (home, all)
    }
}

fn churn_keys(node: u32, before: &Placement, down: &Placement, after: &Placement) -> ChurnKeys {
    let mut k = ChurnKeys { node, ..ChurnKeys::default() };
    for f in 0..before.0.len() {
        let Some(b) = before.home(f) else { continue };
        if let Some(d) = down.home(f) {
            k.compared_down += 1;
            if d != b {
                if b == node {
                    k.moved_off_leaving_node += 1;
                } else {
                    k.moved_elsewhere += 1;
                }
            }
        }
        if b == node {
            if let Some(a) = after.home(f) {
                k.compared_return += 1;
                k.returned_home += usize::from(a == node);
            }
        }
    }
    k
}

/// Turns per-call outcomes (indexed like `trace.calls`; `None` = never completed) into the
/// report. `churn_node`: the node the churn variant took down. Separate from the I/O so it can
/// be tested.
fn summarize(
    trace: &Trace,
    idle_timeout: Duration,
    outcomes: &[Option<(Outcome, Duration)>],
    churn_node: Option<u32>,
) -> Report {
    let n = trace.calls.len();
    let bound_flags = bound::cold_flags(&trace.calls, idle_timeout);
    let bound = bound_flags.iter().filter(|&&c| c).count();
    let spike = trace.spike_window();
    let mut spike_calls: Vec<(f64, bool)> = Vec::new();
    let mut errors_by_kind: BTreeMap<String, usize> = BTreeMap::new();
    let (mut ok, mut cold_starts, mut measured_calls) = (0, 0, 0);
    let (mut latency, mut excess, mut lag) = (Vec::new(), Vec::new(), Vec::new());
    let mut loads: BTreeMap<u32, NodeLoad> = BTreeMap::new();
    let functions = trace.functions.len();
    let mut placement = Placement::new(functions);
    // Churn windows: before the node leaves, while it is away, after it returns.
    let (down_at, up_at) = churn_times(trace.config.warmup, trace.config.measured);
    let mut windows = [Placement::new(functions), Placement::new(functions), Placement::new(functions)];
    let bucket_of = |at: Duration| {
        ((at.saturating_sub(trace.config.warmup)).as_secs_f64() / TIMELINE_BUCKET.as_secs_f64()) as usize
    };
    // The last bucket may be partial.
    let buckets = (trace.config.measured.as_secs_f64() / TIMELINE_BUCKET.as_secs_f64()).ceil().max(1.0) as usize;
    let mut timeline: Vec<ColdBucket> = (0..buckets)
        .map(|b| ColdBucket {
            from_s: (trace.config.warmup + TIMELINE_BUCKET * b as u32).as_secs_f64(),
            calls: 0,
            cold: 0,
        })
        .collect();
    for (call, outcome) in trace.calls.iter().zip(outcomes) {
        let measured = trace.measured(call);
        measured_calls += usize::from(measured);
        let Some((outcome, send_lag)) = outcome else {
            *errors_by_kind.entry("lost".into()).or_default() += 1;
            continue;
        };
        lag.push(send_lag.as_secs_f64() * 1000.0);
        match *outcome {
            Outcome::Answered { status, cold, node, latency: l } if (200..300).contains(&status) => {
                ok += 1;
                let cold = cold == Some(true);
                cold_starts += usize::from(cold);
                if spike.is_some() {
                    spike_calls.push((call.at.as_secs_f64(), cold));
                }
                if measured {
                    let ms = l.as_secs_f64() * 1000.0;
                    latency.push(ms);
                    excess.push(ms - call.exec_ms);
                    if let Some(b) = timeline.get_mut(bucket_of(call.at)) {
                        b.calls += 1;
                        b.cold += usize::from(cold);
                    }
                    if let Some(node) = node {
                        placement.add(call.func, node);
                        let window = if call.at < down_at {
                            0
                        } else if call.at < up_at {
                            1
                        } else {
                            2
                        };
                        windows[window].add(call.func, node);
                        let load = loads.entry(node).or_insert(NodeLoad { node, calls: 0, busy_seconds: 0.0 });
                        load.calls += 1;
                        let cold_ms = if cold { call.cold_ms } else { 0.0 };
                        load.busy_seconds += (call.exec_ms + cold_ms) / 1000.0;
                    }
                }
            }
            Outcome::Answered { status, .. } => {
                *errors_by_kind.entry(status.to_string()).or_default() += 1;
            }
            Outcome::Failed(kind) => *errors_by_kind.entry(kind.into()).or_default() += 1,
        }
    }
    let ratio = |x: usize| if n == 0 { 0.0 } else { x as f64 / n as f64 };
    let nodes: Vec<NodeLoad> = loads.into_values().collect();
    let busy_max = nodes.iter().map(|l| l.busy_seconds).fold(0.0, f64::max);
    // Nodes that served nothing count in the mean too.
    let node_count = nodes.len().max(trace.config.nodes).max(1);
    let busy_mean = nodes.iter().map(|l| l.busy_seconds).sum::<f64>() / node_count as f64;
    let (on_home, placed) = placement.on_home();
    let churn_keys = churn_node.map(|n| churn_keys(n, &windows[0], &windows[1], &windows[2]));
    let warmup_s = trace.config.warmup.as_secs_f64();
    let recovery =
        |calls: Vec<(f64, bool)>| spike.map(|(s, e)| spike_recovery(calls, warmup_s, s.as_secs_f64(), e.as_secs_f64()));
    let bound_calls = trace.calls.iter().zip(&bound_flags).map(|(c, &cold)| (c.at.as_secs_f64(), cold)).collect();
    Report {
        variant: trace.config.variant,
        seed: trace.config.seed,
        rho: trace.config.rho,
        rate: trace.rate,
        mean_exec_ms: trace.mean_exec_ms,
        functions: trace.functions.len(),
        azure: trace.azure.clone(),
        warmup_s,
        measured_s: trace.config.measured.as_secs_f64(),
        targets: 0,
        calls: n,
        measured_calls,
        ok,
        errors: n - ok,
        errors_by_kind,
        cold_starts,
        cold_ratio: ratio(cold_starts),
        bound_cold_starts: bound,
        bound_cold_ratio: ratio(bound),
        cold_vs_bound: if bound == 0 { 0.0 } else { cold_starts as f64 / bound as f64 },
        latency_ms: Summary::of(latency),
        excess_ms: Summary::of(excess),
        send_lag_ms: Summary::of(lag),
        nodes,
        busy_max_s: busy_max,
        busy_mean_s: busy_mean,
        busy_max_over_mean: if busy_mean > 0.0 { busy_max / busy_mean } else { 0.0 },
        node_stats: Vec::new(),
        home_share: if placed == 0 { 0.0 } else { on_home as f64 / placed as f64 },
        cold_timeline: timeline,
        churn: Vec::new(),
        churn_keys,
        spike: recovery(spike_calls),
        bound_spike: if spike.is_some() { recovery(bound_calls) } else { None },
    }
}

impl Report {
    /// The human-readable table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let pct = |x: f64| format!("{:.2}%", x * 100.0);
        let dist = |d: &Summary| {
            format!("p50 {:>9.1}  p99 {:>9.1}  p99.9 {:>9.1}  max {:>9.1}  (ms)", d.p50, d.p99, d.p999, d.max)
        };
        let _ = writeln!(
            s,
            "workload     {:?} seed {} rho {:.2}: {:.1} calls/s, E[exec] {:.0} ms, {}s warm-up + {}s measured, {} target(s)",
            self.variant, self.seed, self.rho, self.rate, self.mean_exec_ms, self.warmup_s,
            self.measured_s, self.targets
        );
        if let Some(a) = &self.azure {
            let _ = writeln!(
                s,
                "azure        window {}:{} of {}, speed {:.2} ({:.1} s a trace minute), {:?} arrivals, {} of {} functions called, {} calls' execution clipped",
                a.start_minute, a.minutes, a.trace_dir, a.speed, a.minute_s, a.arrivals, a.active_functions,
                self.functions, a.clipped
            );
        }
        let _ = writeln!(s, "calls        {} ({} measured), {} ok", self.calls, self.measured_calls, self.ok);
        let kinds: Vec<String> = self.errors_by_kind.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(
            s,
            "errors       {}{}",
            self.errors,
            if kinds.is_empty() { String::new() } else { format!(" ({})", kinds.join(", ")) }
        );
        let _ = writeln!(
            s,
            "cold starts  {} ({})   bound {} ({})   x{:.2} the bound",
            self.cold_starts,
            pct(self.cold_ratio),
            self.bound_cold_starts,
            pct(self.bound_cold_ratio),
            self.cold_vs_bound
        );
        let _ = writeln!(s, "latency      {}", dist(&self.latency_ms));
        let _ = writeln!(s, "excess       {}", dist(&self.excess_ms));
        let _ = writeln!(s, "send lag     {}", dist(&self.send_lag_ms));
        let _ =
            writeln!(s, "home node    {} of measured calls on their function's most-used node", pct(self.home_share));
        let timeline: Vec<String> = self
            .cold_timeline
            .iter()
            .map(|b| {
                format!(
                    "{:.0}s {}",
                    b.from_s,
                    if b.calls == 0 { "-".into() } else { pct(b.cold as f64 / b.calls as f64) }
                )
            })
            .collect();
        let _ = writeln!(s, "cold/5s      {}", timeline.join("  "));
        let _ = writeln!(
            s,
            "node busy    max {:.1} s  mean {:.1} s  max/mean {:.2}",
            self.busy_max_s, self.busy_mean_s, self.busy_max_over_mean
        );
        for l in &self.nodes {
            let _ = writeln!(s, "  node {:<3}  {:>7} calls  {:>9.1} busy-slot-s", l.node, l.calls, l.busy_seconds);
        }
        for v in &self.node_stats {
            let get = |k: &str| v.get(k).cloned().unwrap_or(serde_json::Value::Null);
            let _ = writeln!(
                s,
                "  stats node {} ({}): calls {} cold {} warm {} evictions {} expiries {} queued {} rejected {} busy-slot-s {:.1}",
                get("node"), get("addr"), get("calls"), get("cold_starts"), get("warm_starts"),
                get("evictions"), get("expiries"), get("queued"), get("rejected"),
                get("busy_slot_seconds").as_f64().unwrap_or(0.0)
            );
        }
        for e in &self.churn {
            let _ = writeln!(s, "churn        {e}");
        }
        if let (Some(r), Some(b)) = (&self.spike, &self.bound_spike) {
            let _ = writeln!(s, "spike        {}", r.render());
            let _ = writeln!(s, "  bound      {}", b.render());
        }
        if let Some(k) = &self.churn_keys {
            let _ = writeln!(
                s,
                "churn keys   node {} away: of {} functions, {} moved off it, {} others moved; back: {} of its {} returned to it",
                k.node, k.compared_down, k.moved_off_leaving_node, k.moved_elsewhere, k.returned_home, k.compared_return
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Call, Function, WorkloadConfig};

    fn trace(calls: Vec<Call>) -> Trace {
        let azure = None;
        Trace {
            config: WorkloadConfig {
                nodes: 2,
                warmup: Duration::from_secs(1),
                measured: Duration::from_secs(1),
                ..WorkloadConfig::default()
            },
            functions: vec![Function { path: "/f".into(), exec_ms: 100.0, cold_ms: 500.0, popularity: 1.0 }],
            calls,
            rate: 2.0,
            mean_exec_ms: 100.0,
            azure,
        }
    }

    fn call(at_ms: u64) -> Call {
        Call { at: Duration::from_millis(at_ms), func: 0, exec_ms: 100.0, cold_ms: 500.0 }
    }

    fn answered(status: u16, cold: bool, node: u32, ms: u64) -> Option<(Outcome, Duration)> {
        Some((
            Outcome::Answered { status, cold: Some(cold), node: Some(node), latency: Duration::from_millis(ms) },
            Duration::ZERO,
        ))
    }

    #[test]
    fn summary_counts_errors_colds_and_loads() {
        let t = trace(vec![call(0), call(1200), call(1300), call(1400), call(1500)]);
        let outcomes = vec![
            answered(200, true, 0, 600),  // warm-up: counts for colds, not latency
            answered(200, true, 1, 700),  // measured, cold on node 1
            answered(200, false, 0, 150), // measured, warm
            answered(503, false, 0, 1),   // error
            Some((Outcome::Failed("connect"), Duration::ZERO)),
        ];
        let r = summarize(&t, Duration::from_secs(30), &outcomes, None);
        assert_eq!((r.calls, r.measured_calls, r.ok, r.errors), (5, 4, 3, 2));
        assert_eq!(r.errors_by_kind["503"], 1);
        assert_eq!(r.errors_by_kind["connect"], 1);
        assert_eq!(r.cold_starts, 2);
        assert_eq!(r.bound_cold_starts, 1);
        assert!((r.cold_vs_bound - 2.0).abs() < 1e-9);
        assert_eq!(r.latency_ms.count, 2);
        assert_eq!(r.latency_ms.max, 700.0);
        assert_eq!(r.excess_ms.p50, 50.0);
        assert_eq!(r.nodes.len(), 2);
        // Node 1 served one cold call: 0.1 s exec + 0.5 s cold start.
        assert!((r.nodes[1].busy_seconds - 0.6).abs() < 1e-9);
        assert!((r.busy_max_s - 0.6).abs() < 1e-9);
        assert!((r.busy_mean_s - 0.35).abs() < 1e-9);
        assert!(r.render().contains("cold starts  2 (40.00%)"));
    }

    #[test]
    fn churn_counts_moved_and_returned_functions_and_home_share() {
        let mut t = trace(Vec::new());
        t.config.variant = Variant::Churn;
        t.config.measured = Duration::from_secs(3); // node leaves at 2 s, returns at 3 s
        t.functions = (0..3)
            .map(|i| Function { path: format!("/f{i}"), exec_ms: 100.0, cold_ms: 500.0, popularity: 1.0 })
            .collect();
        let at = |ms: u64, func: u32| Call { at: Duration::from_millis(ms), func, exec_ms: 100.0, cold_ms: 500.0 };
        // (when, function, node): f0 lives on the leaving node 0, moves while it is away and
        // comes back; f1 moves from node 1 to node 2 although node 1 stayed; f2 stays put.
        let plan = [(1200, 0, 0), (2200, 0, 1), (3200, 0, 0), (1300, 1, 1), (2300, 1, 2), (1400, 2, 1), (2400, 2, 1)];
        t.calls = plan.iter().map(|(ms, f, _)| at(*ms, *f)).collect();
        let outcomes: Vec<_> = plan.iter().map(|(_, _, node)| answered(200, false, *node, 150)).collect();
        let r = summarize(&t, Duration::from_secs(30), &outcomes, Some(0));
        let k = r.churn_keys.clone().expect("churn report");
        assert_eq!(
            k,
            ChurnKeys {
                node: 0,
                compared_down: 3,
                moved_off_leaving_node: 1,
                moved_elsewhere: 1,
                compared_return: 1,
                returned_home: 1
            }
        );
        // f0: 2 of 3 on node 0; f1: 1 of 2 (tie, lower index); f2: 2 of 2.
        assert!((r.home_share - 5.0 / 7.0).abs() < 1e-9, "{}", r.home_share);
        assert_eq!(r.cold_timeline, vec![ColdBucket { from_s: 1.0, calls: 7, cold: 0 }]);
        assert!(r.render().contains("of 3 functions, 1 moved off it, 1 others moved; back: 1 of its 1 returned"));
    }

    #[test]
    fn spike_reports_when_the_cold_ratio_is_back() {
        let mut t = trace(Vec::new());
        t.config.variant = Variant::Spike;
        t.config.measured = Duration::from_secs(30); // spike from 11 s to 21 s
        t.calls = (0..400).map(|i| call(i * 100)).collect();
        // Cold during the spike and for 3 s after it, warm otherwise (but the very first call).
        let outcomes: Vec<_> = (0..400u64)
            .map(|i| {
                let at = i * 100;
                answered(200, at == 0 || (11_000..24_000).contains(&at), 0, 150)
            })
            .collect();
        let r = summarize(&t, Duration::from_secs(30), &outcomes, None);
        let s = r.spike.clone().expect("spike report");
        assert_eq!((s.start_s, s.end_s), (11.0, 21.0));
        assert_eq!(s.before_ratio, 0.0);
        assert_eq!(s.during_ratio, 1.0);
        assert_eq!(s.recovered_after_s, Some(3.0));
        // The bound: one function called every 100 ms stays warm after its first call.
        let b = r.bound_spike.clone().expect("bound's spike report");
        assert_eq!(b.recovered_after_s, Some(0.0));
        assert!(r.render().contains("back to it 3 s after the spike"), "{}", r.render());
        // Other variants have no spike report.
        t.config.variant = Variant::Steady;
        assert!(summarize(&t, Duration::from_secs(30), &outcomes, None).spike.is_none());
    }

    #[test]
    fn cold_timeline_buckets_the_measured_window() {
        let mut t = trace(Vec::new());
        t.config.measured = Duration::from_secs(12);
        t.calls = vec![call(1500), call(2000), call(7000), call(12_500)];
        let outcomes = vec![
            answered(200, true, 0, 600),
            answered(200, false, 0, 150),
            answered(200, true, 0, 600),
            answered(200, false, 0, 150),
        ];
        let r = summarize(&t, Duration::from_secs(30), &outcomes, None);
        assert!(r.churn_keys.is_none());
        let got: Vec<(f64, usize, usize)> = r.cold_timeline.iter().map(|b| (b.from_s, b.calls, b.cold)).collect();
        assert_eq!(got, vec![(1.0, 2, 1), (6.0, 1, 1), (11.0, 1, 0)]);
    }
}
