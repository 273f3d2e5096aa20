//! Wiring: builds the runtime, opens the node store, starts the node manager, the store poller
//! and the listeners, and shuts down gracefully on SIGTERM, SIGINT or SIGQUIT. Start reading here.
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::discovery::db_url::DbUrl;
use crate::discovery::fnapi::{self, FunctionKeys};
use crate::discovery::{self, balancers, k8s::K8sSource, sql::SqlStore, Store};
use crate::health::{probe::Prober, Thresholds};
use crate::mgmt::{Access, Mgmt};
use crate::node::manager::{self, HealthConfig, NodesHandle};
use crate::proxy::Proxy;
use crate::route;
use crate::server::{accept_loop, Listeners, Role, Services};
use crate::stats::scale::{Capacity, CountedBy};
use crate::stats::Stats;
use crate::telemetry::{zipkin::Tracer, Observers};

/// Runs the balancer until a shutdown signal; returns the process exit code.
pub fn main(cfg: Config) -> i32 {
    crate::telemetry::init_logging(cfg.log_format, cfg.access_log);
    let rt = if cfg.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cfg.threads).enable_all().build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fnlb: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => 0,
        Err(msg) => {
            error!("{msg}");
            eprintln!("fnlb: {msg}");
            1
        }
    }
}

async fn run(cfg: Config) -> Result<(), String> {
    // Kubernetes mode: the pods are the nodes, watched rather than polled; -nodes does not apply.
    let mut k8s = None;
    let mut sql = None;
    let store: Arc<dyn Store> = match &cfg.db {
        DbUrl::K8s => {
            let source = Arc::new(K8sSource::connect(&cfg).await?);
            k8s = Some(source.clone());
            source
        }
        db => {
            let s = Arc::new(SqlStore::connect(db).await?);
            sql = Some(s.clone());
            s
        }
    };
    if k8s.is_some() && !cfg.nodes.is_empty() {
        warn!("-nodes is ignored with -db=k8s: the nodes are the selected pods");
    }
    for node in cfg.nodes.iter().filter(|_| k8s.is_none()) {
        store.add(node).await.map_err(|e| format!("cannot add node {node} from -nodes: {e}"))?;
    }

    let nodes = manager::spawn(HealthConfig {
        interval: cfg.hc_interval,
        max_ejected: cfg.limits.max_ejected,
        thresholds: Thresholds { unhealthy: cfg.hc_unhealthy, healthy: cfg.hc_healthy },
        prober: Prober::new(cfg.hc_path.clone(), cfg.hc_timeout, cfg.min_api_version.clone()),
    });
    // The first read is synchronous so the balancer starts with its nodes known.
    let seq = nodes.mutation_seq();
    let initial = store.list().await.map_err(|e| format!("cannot read nodes from {}: {e}", cfg.db.redacted()))?;
    nodes.set_desired(initial, seq);
    // Serve once the stored nodes have had their first check (bounded: a hanging node is
    // decided by its check's timeout), so the first calls do not meet an empty node set.
    if tokio::time::timeout(cfg.hc_timeout + Duration::from_millis(500), nodes.when_checked()).await.is_err() {
        warn!("first health checks still running; serving anyway");
    }
    match &k8s {
        Some(source) => tokio::spawn(source.clone().watch(nodes.clone())),
        None => tokio::spawn(discovery::poll_store(store.clone(), nodes.clone(), cfg.hc_interval)),
    };

    // How many balancers share the nodes: -balancers when given, else counted live.
    let balancers = route::Balancers::new(cfg.balancers);
    let (leave_tx, leave_rx) = watch::channel(false);
    let mut heartbeat = None;
    let counted_by = if cfg.balancers_fixed {
        CountedBy::Flag
    } else if let Some(source) = &k8s {
        match source.balancer_selector(&cfg.balancer_selector).await {
            Ok(selector) => {
                let every = cfg.hc_interval.max(Duration::from_secs(2));
                tokio::spawn(source.clone().count_balancers(selector, balancers.clone(), every));
                CountedBy::Pods
            }
            Err(why) => {
                warn!(
                    reason = %why,
                    balancers = cfg.balancers,
                    "cannot tell which pods are the balancers; set -balancer-selector (or -balancers N)"
                );
                CountedBy::Flag
            }
        }
    } else if let Some(sql) = &sql {
        let id = balancers::balancer_id();
        heartbeat = Some(tokio::spawn(balancers::keep_heartbeat(
            sql.clone(),
            id,
            balancers.clone(),
            cfg.hc_interval,
            leave_rx,
        )));
        CountedBy::Heartbeats
    } else {
        CountedBy::Flag
    };

    // Routing keys by function: the trigger map, learned in the background from the nodes' API.
    // The call engine keys each call with `function_keys.key(path)`: trigger paths of a
    // function share its `/invoke/<id>` key.
    let function_keys = FunctionKeys::new(cfg.function_keys);
    tokio::spawn(fnapi::refresh(function_keys.clone(), nodes.clone(), fnapi::Refresh::default()));

    let policy = route::policy_by_name(
        &cfg.policy,
        route::PolicyConfig {
            node_capacity: cfg.node_capacity,
            balancers: balancers.clone(),
            load_factor: cfg.load_factor,
            late_binding: cfg.limits.late_binding,
        },
    )
    .ok_or_else(|| format!("-policy: unknown policy {:?}", cfg.policy))?;
    info!(policy = policy.name(), db = %cfg.db.redacted(), "routing policy");
    let obs = Arc::new(observers(&cfg, &nodes)?);
    // Bound before the services exist: the management API refuses our own addresses as nodes.
    let bind = |addr, flag: &'static str| async move {
        TcpListener::bind(addr).await.map_err(|e| format!("{flag}: cannot listen on {addr}: {e}"))
    };
    let mut listeners = vec![bind(cfg.listen, "-listen").await?];
    if !cfg.shares_listener() {
        listeners.push(bind(cfg.mgmt_listen, "-mgmt-listen").await?);
    }
    let addrs = listeners.iter().map(|l| l.local_addr().map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()?;
    let mut proxy = Proxy::new(nodes.clone(), policy, &cfg.limits).observed_by(obs.clone());
    proxy = proxy.keyed_by(function_keys.clone());
    if cfg.limits.late_binding {
        // A cold start goes only onto a node with fewer of this balancer's calls in flight than
        // its share of the node's slots, for the balancer count of the moment.
        proxy = proxy.binding_late(route::wait::WaitConfig::new(cfg.node_capacity), balancers.clone());
    }
    let wait_queue = proxy.wait_queue();
    let services = Arc::new(Services {
        proxy,
        mgmt: Mgmt::new(store.clone(), nodes.clone())
            .guarded(Access { token: cfg.mgmt_token.clone(), max_body: cfg.limits.mgmt_max_body })
            .observing(obs, Capacity { per_node: cfg.node_capacity, balancers: cfg.balancers, counted_by })
            .counting(balancers.clone(), counted_by)
            .keyed_by(function_keys.clone())
            .listening_on(addrs.clone())
            .waiting_in(wait_queue),
    });

    if cfg.shares_listener() && cfg.mgmt_token.is_none() && cfg.db != DbUrl::K8s {
        warn!("the management API shares the traffic listener and -mgmt-token is not set: anyone who can send a call can add a node");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Listeners {
        services: services.clone(),
        limits: cfg.limits.clone(),
        connections: Arc::new(Semaphore::new(cfg.limits.max_connections)),
        shed: Arc::default(),
        rings: Arc::default(),
        stop: stop_rx,
        tls: cfg.tls.as_ref().map(crate::tls::ServerTls::acceptor),
    };
    if let Some(tls) = &cfg.tls {
        info!(cert = %tls.cert_path.display(), "TLS on every listener (HTTP/2 and HTTP/1.1 by ALPN)");
    }
    if cfg.shares_listener() {
        info!(traffic = %addrs[0], mgmt = %addrs[0], "fnlb ready");
        tokio::spawn(accept_loop(listeners.remove(0), Role::Both, shared.clone()));
    } else {
        info!(traffic = %addrs[0], mgmt = %addrs[1], "fnlb ready");
        let (t, m) = (listeners.remove(0), listeners.remove(0));
        tokio::spawn(accept_loop(t, Role::Traffic, shared.clone()));
        tokio::spawn(accept_loop(m, Role::Mgmt, shared.clone()));
    }
    let hangup = shared.shed.clone();
    drop(shared);

    let signal = shutdown_signal().await;
    info!(signal, "shutting down: no new connections; finishing calls in flight");
    let _ = stop_tx.send(true);
    // After the send: a connection that hears this finds `stop` already true.
    hangup.notify_waiters();
    // Leave the count at once: the other balancers take over this one's share while it drains.
    let _ = leave_tx.send(true);
    // Every accept loop and connection holds a receiver: closed() resolves when all are done.
    match cfg.shutdown_timeout {
        None => stop_tx.closed().await,
        Some(limit) => {
            if tokio::time::timeout(limit, stop_tx.closed()).await.is_err() {
                warn!(?limit, "calls still in flight at the shutdown timeout; closing them");
            }
        }
    }
    if let Some(task) = heartbeat {
        // Bounded by the store's own query timeouts; this one only guards against a stuck task.
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    info!("stopped");
    Ok(())
}

/// Stats (with their sampling task), the Zipkin exporter when `-zipkin` is set, the access log.
fn observers(cfg: &Config, nodes: &NodesHandle) -> Result<Observers, String> {
    let stats = Arc::new(Stats::new());
    tokio::spawn(stats.clone().run(nodes.clone()));
    let tracer = match &cfg.zipkin {
        Some(url) => {
            let t = Tracer::spawn(url)?;
            info!(collector = %crate::discovery::db_url::redact_url(url), "tracing to zipkin");
            Some(t)
        }
        None => None,
    };
    Ok(Observers { stats, tracer, access_log: cfg.access_log })
}

/// Waits for SIGTERM (Kubernetes), SIGINT (a terminal) or SIGQUIT; the original ignored SIGTERM.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut quit = signal(SignalKind::quit()).ok();
    async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    tokio::select! {
        _ = recv(&mut term) => "SIGTERM",
        _ = recv(&mut int) => "SIGINT",
        _ = recv(&mut quit) => "SIGQUIT",
    }
}
