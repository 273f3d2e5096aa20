//! The `fnsim` command line: `serve` runs simulated Fn nodes, `drive` replays the benchmark
//! workload against balancers.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fnsim::azure::{self, Arrivals, AzureConfig};
use fnsim::drive::DriveConfig;
use fnsim::godur;
use fnsim::trace::{self, Variant, WorkloadConfig};
use fnsim::{Mode, NodeConfig, QueueMode, ServeConfig};

#[derive(Parser)]
#[command(name = "fnsim", about = "Simulated Fn servers for testing and benchmarking load balancers")]
struct Cli {
    /// Tokio worker threads (0: one per core).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run simulated Fn nodes. Prints `fnsim node <i> listening on <addr>` per node, then
    /// `fnsim ready`.
    Serve(ServeArgs),
    /// Replay the seeded FaaS workload (BENCHMARKS.md §2) or the Azure trace open loop against
    /// --target(s) and report cold starts versus the lower bound, latency and per-node load.
    Drive(DriveArgs),
}

#[derive(Args)]
struct DriveArgs {
    /// Base URL to send calls to (a balancer, or a node); repeat or comma-separate for
    /// several balancers (each call goes to one at random).
    #[arg(long = "target", value_delimiter = ',', required_unless_present = "dry_run")]
    targets: Vec<String>,
    /// Workload variant (scenario): spike doubles the rate for 10 s a third of the way through
    /// the measured window; many has 5,000 functions; azure replays the production trace.
    #[arg(long, alias = "scenario", value_enum, default_value_t = Variant::Steady)]
    variant: Variant,
    /// Utilisation ρ = λ·E[exec]/(nodes·slots) [default: 0.3, or 0.7 for overload]. For azure:
    /// the speed is chosen so the window's nominal utilisation is ρ.
    #[arg(long, value_parser = positive)]
    rho: Option<f64>,
    /// Trace seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Node count the utilisation is computed for.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Slots per node the utilisation is computed for (the nodes' --slots).
    #[arg(long, default_value_t = 64)]
    slots: usize,
    /// Number of functions [default: 200, or 5000 for many; azure: the trace's].
    #[arg(long)]
    functions: Option<usize>,
    /// Zipf exponent of function popularity.
    #[arg(long, default_value_t = 1.1, value_parser = non_negative)]
    zipf: f64,
    /// azure: the trace directory (traces/azure2019, whose 500/ set is read, or a directory
    /// with invocations.csv and durations.csv) [default: ../shared/traces/azure2019 beside the
    /// repository].
    #[arg(long)]
    trace_dir: Option<std::path::PathBuf>,
    /// azure: the trace minutes replayed, START:MINUTES (0-479).
    #[arg(long, default_value = "120:10", value_parser = azure::parse_window)]
    window: (usize, usize),
    /// azure: compress the trace's time by this factor (arrivals only) instead of choosing it
    /// from --rho.
    #[arg(long, value_parser = positive, conflicts_with = "rho")]
    speed: Option<f64>,
    /// azure: how each minute's calls are spread over it.
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    arrivals: Arrivals,
    /// azure: longer execution times are clipped to this (Fn's default function timeout).
    #[arg(long, default_value = "30s", value_parser = godur::parse_flag)]
    max_exec: Duration,
    /// Warm-up before the measured window (calls run, latency not counted); for azure, of the
    /// replay's time.
    #[arg(long, default_value = "10s", value_parser = godur::parse_flag)]
    warmup: Duration,
    /// Measured window.
    #[arg(long, default_value = "60s", value_parser = godur::parse_flag)]
    duration: Duration,
    /// The nodes' idle timeout (for the lower bound).
    #[arg(long, default_value = "30s", value_parser = godur::parse_flag)]
    idle_timeout: Duration,
    /// Base URL of an fnsim node that carries out churn's down/up commands
    /// (POST /fnsim/down?node=I&for_ms=..., /fnsim/up?node=I).
    #[arg(long)]
    admin: Option<String>,
    /// Index of the node churn takes down.
    #[arg(long, default_value_t = 0)]
    churn_node: usize,
    /// Node base URLs whose /fnsim/stats are reset before and reported after the run.
    #[arg(long = "nodes-url", value_delimiter = ',')]
    node_urls: Vec<String>,
    /// Per-call timeout, from the scheduled time.
    #[arg(long, default_value = "60s", value_parser = godur::parse_flag)]
    timeout: Duration,
    /// HTTP method of the calls.
    #[arg(long, default_value = "GET")]
    method: http::Method,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Only generate the trace and its lower bound; send nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// Number of nodes, listening on consecutive ports from --port.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// First port; 0 lets every node pick a free port (printed on the listening lines).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address the nodes listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// One node per host, all on --port (e.g. 127.0.0.2,127.0.0.3 like pod IPs).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["nodes", "host", "addrs"])]
    hosts: Vec<IpAddr>,
    /// Explicit listen addresses, one node each (e.g. 127.0.0.2:8080,127.0.0.3:8080).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["nodes", "port", "host"])]
    addrs: Vec<SocketAddr>,
    /// Index of the first node (Fn-Node header), so several processes can number uniquely.
    #[arg(long, default_value_t = 0)]
    first_index: usize,
    /// `model`: container slots, warm/cold starts, queueing. `fast`: answer every call at once
    /// (200, XXX-FXLB-WAIT: 1ms), no model, for proxy benchmarks.
    #[arg(long, value_enum, default_value_t = Mode::Model)]
    mode: Mode,
    /// Version answered by GET /version.
    #[arg(long = "version", default_value = "0.3.753")]
    fn_version: String,
    /// Delay before answering /version, in milliseconds (hanging health checks).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    version_delay_ms: f64,
    /// Container slots per node.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    slots: u32,
    /// Idle containers expire after this long (seconds, or a Go duration like 5s, 500ms).
    #[arg(long, default_value = "30s", value_parser = godur::parse_flag)]
    idle_timeout: Duration,
    /// When every slot is busy: `queue` (FIFO wait) or `reject` (503 at once).
    #[arg(long, value_enum, default_value_t = QueueMode::Queue)]
    queue_mode: QueueMode,
    /// Execution time in ms for calls without a Fnsim-Exec-Ms header.
    #[arg(long, default_value_t = 20.0, value_parser = non_negative)]
    exec_ms: f64,
    /// Cold-start time in ms for calls without a Fnsim-Cold-Ms header.
    #[arg(long, default_value_t = 500.0, value_parser = non_negative)]
    cold_ms: f64,
    /// Answer this many bytes (streamed from a static buffer) instead of a short greeting.
    #[arg(long)]
    body_size: Option<u64>,
    /// Fraction (0..1) of calls answered 500 without running.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    fail_rate: f64,
    /// Seed for --fail-rate.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a non-negative number")),
    }
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number between 0 and 1")),
    }
}

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v / 1000.0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if cli.threads > 0 {
        rt.worker_threads(cli.threads);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fnsim: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.cmd {
        Cmd::Serve(args) => rt.block_on(run_serve(args)),
        Cmd::Drive(args) => rt.block_on(run_drive(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fnsim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn listen_addrs(a: &ServeArgs) -> Result<Vec<SocketAddr>, String> {
    if !a.addrs.is_empty() {
        return Ok(a.addrs.clone());
    }
    if !a.hosts.is_empty() {
        return Ok(a.hosts.iter().map(|&h| SocketAddr::new(h, a.port)).collect());
    }
    if a.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    (0..a.nodes)
        .map(|i| {
            if a.port == 0 {
                return Ok(SocketAddr::new(a.host, 0));
            }
            u16::try_from(usize::from(a.port) + i)
                .map(|p| SocketAddr::new(a.host, p))
                .map_err(|_| format!("--port {} + --nodes {} runs past 65535", a.port, a.nodes))
        })
        .collect()
}

async fn run_serve(a: ServeArgs) -> Result<(), String> {
    let addrs = listen_addrs(&a)?;
    let cfg = ServeConfig {
        addrs,
        first_index: a.first_index,
        node: NodeConfig {
            mode: a.mode,
            version: a.fn_version,
            version_delay: ms(a.version_delay_ms),
            slots: a.slots as usize,
            idle_timeout: a.idle_timeout,
            queue_mode: a.queue_mode,
            exec: ms(a.exec_ms),
            cold: ms(a.cold_ms),
            body_size: a.body_size,
            fail_rate: a.fail_rate,
            seed: a.seed,
        },
    };
    let handle = fnsim::serve(cfg).await.map_err(|e| e.to_string())?;
    for (index, addr) in handle.indexes().into_iter().zip(handle.addrs()) {
        println!("fnsim node {index} listening on {addr}");
    }
    println!("fnsim ready");
    wait_for_signal().await;
    handle.shutdown().await;
    Ok(())
}

async fn run_drive(a: DriveArgs) -> Result<(), String> {
    let functions = a.functions.unwrap_or(a.variant.default_functions());
    if a.nodes == 0 || a.slots == 0 || functions == 0 {
        return Err("--nodes, --slots and --functions must be at least 1".into());
    }
    if a.variant == Variant::Churn && a.admin.is_none() && !a.dry_run {
        return Err("--variant churn needs --admin URL (an fnsim node that can take node --churn-node down)".into());
    }
    for t in a.targets.iter().chain(&a.node_urls).chain(&a.admin) {
        let uri: http::Uri = t.parse().map_err(|e| format!("bad URL {t:?}: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(format!("bad URL {t:?}: expected http://host:port"));
        }
    }
    let workload = WorkloadConfig {
        seed: a.seed,
        variant: a.variant,
        rho: a.rho.unwrap_or(a.variant.default_rho()),
        nodes: a.nodes,
        slots: a.slots,
        functions,
        zipf_s: a.zipf,
        warmup: a.warmup,
        measured: a.duration,
        azure: AzureConfig {
            trace_dir: a.trace_dir.unwrap_or_else(azure::default_trace_dir),
            start_minute: a.window.0,
            minutes: a.window.1,
            speed: a.speed,
            arrivals: a.arrivals,
            max_exec: a.max_exec,
        },
    };
    let trace = trace::build(&workload)?;
    if a.dry_run {
        let bound = fnsim::drive::bound_cold_starts(&trace, a.idle_timeout);
        let n = trace.calls.len();
        let ratio = if n == 0 { 0.0 } else { bound as f64 / n as f64 };
        // The trace's own config: for azure it holds the ρ reached and the replay's length.
        let workload = &trace.config;
        // A closed pipe (`| head -1`) ends the output, not the process with a panic.
        let mut out = std::io::stdout().lock();
        if a.json {
            let v = serde_json::json!({
                "workload": workload,
                "calls": n,
                "functions": trace.functions.len(),
                "rate": trace.rate,
                "mean_exec_ms": trace.mean_exec_ms,
                "duration_s": trace.duration().as_secs_f64(),
                "azure": trace.azure,
                "spike_window_s": trace.spike_window().map(|(s, e)| [s.as_secs_f64(), e.as_secs_f64()]),
                "bound_cold_starts": bound,
                "bound_cold_ratio": ratio,
            });
            let _ = writeln!(out, "{v}");
        } else {
            let _ = writeln!(
                out,
                "{:?} seed {} rho {:.2}: {n} calls over {:.0} s, {:.1} calls/s, E[exec] {:.0} ms, {} functions, bound {bound} cold starts ({:.2}%)",
                workload.variant, workload.seed, workload.rho, trace.duration().as_secs_f64(), trace.rate,
                trace.mean_exec_ms, trace.functions.len(), ratio * 100.0
            );
            if let Some(az) = &trace.azure {
                let _ = writeln!(
                    out,
                    "azure window {}:{}, speed {:.3}, {:?} arrivals, {} functions called, {} executions clipped",
                    az.start_minute, az.minutes, az.speed, az.arrivals, az.active_functions, az.clipped
                );
            }
        }
        return Ok(());
    }
    let cfg = DriveConfig {
        targets: a.targets,
        idle_timeout: a.idle_timeout,
        admin: a.admin,
        churn_node: a.churn_node,
        node_urls: a.node_urls,
        timeout: a.timeout,
        method: a.method,
    };
    let report = fnsim::drive::drive(&cfg, &trace).await;
    let mut out = std::io::stdout().lock();
    let _ = if a.json {
        writeln!(out, "{}", serde_json::to_string(&report).map_err(|e| e.to_string())?)
    } else {
        write!(out, "{}", report.render())
    };
    Ok(())
}

/// SIGINT or SIGTERM (Kubernetes stops pods with SIGTERM).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
