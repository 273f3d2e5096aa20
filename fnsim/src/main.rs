//! The `fnsim` command line: `serve` runs simulated Fn nodes.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fnsim::godur;
use fnsim::{Mode, NodeConfig, QueueMode, ServeConfig};

#[derive(Parser)]
#[command(
    name = "fnsim",
    about = "Simulated Fn servers for testing and benchmarking load balancers"
)]
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
        return Ok(a
            .hosts
            .iter()
            .map(|&h| SocketAddr::new(h, a.port))
            .collect());
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
