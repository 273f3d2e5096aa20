//! The async shell around [`NodeModel`]: listeners, HTTP/1.1 connections, the sleeping (cold
//! start, execution), response headers, and the `/fnsim/*` control endpoints.
//!
//! One process hosts many nodes. Each node has its own listener, model and knobs (health,
//! up/down); the model sits behind a `std::sync::Mutex` that is never held across an `.await`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::body::SimBody;
use crate::godur;
use crate::model::{Arrival, Lease, NodeModel, NodeStats, QueueMode};

/// Request header: execution time of this call in (fractional) milliseconds.
pub const EXEC_HEADER: &str = "fnsim-exec-ms";
/// Request header: cold-start time of this call in (fractional) milliseconds, if it starts cold.
pub const COLD_HEADER: &str = "fnsim-cold-ms";
/// Response header: arrival to start of execution, cold start included, as a Go duration.
pub const WAIT_HEADER: &str = "xxx-fxlb-wait";
/// Response header: `true` if the call started a new container.
pub const COLD_RESPONSE_HEADER: &str = "fn-call-cold";
/// Response header: the index of the node that answered.
pub const NODE_HEADER: &str = "fn-node";

/// How long connections get to finish in-flight responses when their node goes down or the
/// server stops, before they are dropped (a crash does not wait for running calls).
const GRACE: Duration = Duration::from_millis(100);

/// How a node answers function calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The container model (slots, warm/cold, queue) with simulated sleeps.
    Model,
    /// No model: answer every call at once with `XXX-FXLB-WAIT: 1ms` (proxy benchmarks).
    Fast,
}

/// Knobs shared by every node of one `serve`.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub mode: Mode,
    /// Answered by `GET /version`.
    pub version: String,
    /// Delay before answering `/version` (hanging health checks).
    pub version_delay: Duration,
    pub slots: usize,
    pub idle_timeout: Duration,
    pub queue_mode: QueueMode,
    /// Execution time when the request has no `Fnsim-Exec-Ms`.
    pub exec: Duration,
    /// Cold-start time when the request has no `Fnsim-Cold-Ms`.
    pub cold: Duration,
    /// Response body size; `None` answers a short greeting.
    pub body_size: Option<u64>,
    /// Fraction of calls answered 500 without running.
    pub fail_rate: f64,
    pub seed: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            mode: Mode::Model,
            version: "0.3.753".into(),
            version_delay: Duration::ZERO,
            slots: 64,
            idle_timeout: Duration::from_secs(30),
            queue_mode: QueueMode::Queue,
            exec: Duration::from_millis(20),
            cold: Duration::from_millis(500),
            body_size: None,
            fail_rate: 0.0,
            seed: 1,
        }
    }
}

/// What to serve: one node per address.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Listen addresses; port 0 picks a free port.
    pub addrs: Vec<SocketAddr>,
    /// Index of the first node (`Fn-Node` header, `?node=` parameter); lets several processes
    /// number their nodes without clashes.
    pub first_index: usize,
    pub node: NodeConfig,
}

/// Per-node state the handlers share.
struct Node {
    index: usize,
    index_header: HeaderValue,
    /// The bound address; re-bound after `/fnsim/up`.
    addr: SocketAddr,
    cfg: Arc<NodeConfig>,
    version_body: Bytes,
    fast_body: Bytes,
    healthy: AtomicBool,
    state: Mutex<State>,
    /// Fast mode keeps counters without the model (and its lock).
    fast_calls: AtomicU64,
    fast_failed: AtomicU64,
    /// Draw counter for the failure injection stream.
    draws: AtomicU64,
    /// True while the node is "down": listener closed, connections dropped.
    down: watch::Sender<bool>,
    /// Bumped on every up/down so a timed `down?for_ms=` does not undo a later command.
    down_epoch: AtomicU64,
}

struct State {
    model: NodeModel,
    /// Queued calls waiting for a lease, by ticket.
    waiters: HashMap<u64, oneshot::Sender<Lease>>,
}

struct Cluster {
    nodes: Vec<Arc<Node>>,
}

impl Node {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the model consistent enough for a simulator.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deterministic failure injection: a splitmix64 stream seeded by `--seed` and the node index.
    fn draw_fail(&self) -> bool {
        let rate = self.cfg.fail_rate;
        if rate <= 0.0 {
            return false;
        }
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let stream = self.cfg.seed ^ (self.index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let x = splitmix64(stream.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        ((x >> 11) as f64 / (1u64 << 53) as f64) < rate
    }

    fn stats(&self) -> NodeStats {
        match self.cfg.mode {
            Mode::Model => self.lock().model.stats(Instant::now()),
            Mode::Fast => NodeStats {
                calls: self.fast_calls.load(Ordering::Relaxed),
                failed: self.fast_failed.load(Ordering::Relaxed),
                ..NodeStats::default()
            },
        }
    }

    fn reset_stats(&self) {
        self.fast_calls.store(0, Ordering::Relaxed);
        self.fast_failed.store(0, Ordering::Relaxed);
        self.lock().model.reset_stats();
    }

    /// Takes the node down (closing its listener and connections, losing its containers) or
    /// brings it back. `for_ms` brings it back by itself, so a driver can restart the very node
    /// it talks to.
    fn set_down(self: &Arc<Self>, down: bool, for_ms: Option<u64>) {
        let epoch = self.down_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        if down {
            self.lock().model.reset();
        }
        self.down.send_replace(down);
        if let (true, Some(ms)) = (down, for_ms) {
            let node = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if node.down_epoch.compare_exchange(epoch, epoch + 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    node.down.send_replace(false);
                }
            });
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A running set of nodes. Dropping it stops them (like [`ServerHandle::shutdown`], without
/// waiting).
pub struct ServerHandle {
    cluster: Arc<Cluster>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// The bound address of each node, in configuration order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.cluster.nodes.iter().map(|n| n.addr).collect()
    }

    /// The `Fn-Node` index of each node, in configuration order.
    pub fn indexes(&self) -> Vec<usize> {
        self.cluster.nodes.iter().map(|n| n.index).collect()
    }

    /// Counters of the node at position `pos`.
    pub fn stats(&self, pos: usize) -> NodeStats {
        self.cluster.nodes[pos].stats()
    }

    /// Makes `/version` of the node at `pos` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, pos: usize, healthy: bool) {
        self.cluster.nodes[pos].healthy.store(healthy, Ordering::SeqCst);
    }

    /// Takes the node at `pos` down or brings it back up.
    pub fn set_down(&self, pos: usize, down: bool) {
        self.cluster.nodes[pos].set_down(down, None);
    }

    /// Stops accepting, lets connections finish briefly, and waits for the listeners to close.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// Binds every node and starts serving. Fails if any address cannot be bound.
pub async fn serve(cfg: ServeConfig) -> io::Result<ServerHandle> {
    let node_cfg = Arc::new(cfg.node);
    let mut listeners = Vec::with_capacity(cfg.addrs.len());
    let mut nodes = Vec::with_capacity(cfg.addrs.len());
    for (pos, addr) in cfg.addrs.iter().enumerate() {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let index = cfg.first_index + pos;
        let version_body = serde_json::to_vec(&serde_json::json!({ "version": node_cfg.version })).expect("json");
        nodes.push(Arc::new(Node {
            index,
            index_header: HeaderValue::from(index),
            addr: listener.local_addr()?,
            cfg: node_cfg.clone(),
            version_body: version_body.into(),
            fast_body: format!("hello from node {index}\n").into(),
            healthy: AtomicBool::new(true),
            state: Mutex::new(State {
                model: NodeModel::new(node_cfg.slots, node_cfg.idle_timeout, node_cfg.queue_mode),
                waiters: HashMap::new(),
            }),
            fast_calls: AtomicU64::new(0),
            fast_failed: AtomicU64::new(0),
            draws: AtomicU64::new(0),
            down: watch::Sender::new(false),
            down_epoch: AtomicU64::new(0),
        }));
        listeners.push(listener);
    }
    let cluster = Arc::new(Cluster { nodes });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let tasks = listeners
        .into_iter()
        .enumerate()
        .map(|(pos, l)| tokio::spawn(accept_loop(cluster.clone(), pos, l, shutdown_rx.clone())))
        .collect();
    Ok(ServerHandle { cluster, shutdown, tasks })
}

/// Accepts connections for one node; closes the listener while the node is down and re-binds
/// the same address when it comes back.
async fn accept_loop(cluster: Arc<Cluster>, pos: usize, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let node = cluster.nodes[pos].clone();
    let mut down = node.down.subscribe();
    // Connections get their own receiver: `shutdown` is borrowed by the select below.
    let conn_shutdown = shutdown.clone();
    let mut listener = Some(listener);
    loop {
        if let Some(l) = listener.take() {
            loop {
                tokio::select! {
                    r = l.accept() => match r {
                        Ok((stream, _)) => {
                            tokio::spawn(serve_conn(
                                cluster.clone(),
                                pos,
                                stream,
                                node.down.subscribe(),
                                conn_shutdown.clone(),
                            ));
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            warn!(node = node.index, "accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    },
                    _ = until(&mut down, true) => break,
                    _ = stopping(&mut shutdown) => return,
                }
            }
            debug!(node = node.index, "down: listener closed");
        } else {
            tokio::select! {
                _ = until(&mut down, false) => {}
                _ = stopping(&mut shutdown) => return,
            }
            // The old socket is closed and listeners set SO_REUSEADDR, so this normally works at
            // once; retry in case another process grabbed the port meanwhile.
            loop {
                match TcpListener::bind(node.addr).await {
                    Ok(l) => {
                        debug!(node = node.index, "up: listening again on {}", node.addr);
                        listener = Some(l);
                        break;
                    }
                    Err(e) => {
                        warn!(node = node.index, "cannot re-bind {}: {e}", node.addr);
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            _ = stopping(&mut shutdown) => return,
                        }
                    }
                }
            }
        }
    }
}

/// Resolves when a node's down flag equals `want`. (The node owns the sender, so the channel
/// never closes while anyone listens.)
async fn until(down: &mut watch::Receiver<bool>, want: bool) {
    if down.wait_for(|d| *d == want).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves when the server is stopping (or its handle is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Serves one HTTP/1.1 connection until the client closes it or the node goes down.
async fn serve_conn(
    cluster: Arc<Cluster>,
    pos: usize,
    stream: TcpStream,
    mut down: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| {
        let cluster = cluster.clone();
        async move { Ok::<_, Infallible>(handle(&cluster, pos, req).await) }
    });
    let conn = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = until(&mut down, true) => {}
        _ = stopping(&mut shutdown) => {}
    }
    // Finish what is being written (e.g. the answer to `/fnsim/down` itself), then drop the
    // connection even if calls are still running: a dead node does not finish them.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(GRACE, conn).await;
}

async fn handle(cluster: &Cluster, pos: usize, req: Request<Incoming>) -> Response<SimBody> {
    let node = &cluster.nodes[pos];
    let path = req.uri().path();
    if path == "/version" {
        return version(node).await;
    }
    if path.starts_with("/v2/") {
        // Fn's management API, which fnlb reads for its trigger map: a simulated Fn has no apps
        // (and the read is not a call of the model).
        return json(node, StatusCode::OK, Bytes::from_static(br#"{"items":[]}"#));
    }
    if let Some(cmd) = path.strip_prefix("/fnsim/") {
        let cmd = cmd.to_owned();
        return control(cluster, node, &cmd, req).await;
    }
    match node.cfg.mode {
        Mode::Fast => fast_call(node, req).await,
        Mode::Model => model_call(node, req).await,
    }
}

async fn version(node: &Node) -> Response<SimBody> {
    if !node.cfg.version_delay.is_zero() {
        tokio::time::sleep(node.cfg.version_delay).await;
    }
    if node.healthy.load(Ordering::SeqCst) {
        json(node, StatusCode::OK, node.version_body.clone())
    } else {
        msg(node, StatusCode::SERVICE_UNAVAILABLE, "unhealthy (fnsim)")
    }
}

/// `--mode fast`: no model, no lock.
async fn fast_call(node: &Node, req: Request<Incoming>) -> Response<SimBody> {
    drain(req.into_body()).await;
    if node.draw_fail() {
        node.fast_failed.fetch_add(1, Ordering::Relaxed);
        return msg(node, StatusCode::INTERNAL_SERVER_ERROR, "injected failure (fnsim)");
    }
    node.fast_calls.fetch_add(1, Ordering::Relaxed);
    let body = match node.cfg.body_size {
        Some(n) => SimBody::filler(n),
        None => SimBody::text(node.fast_body.clone()),
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(WAIT_HEADER, HeaderValue::from_static("1ms"));
    h.insert(COLD_RESPONSE_HEADER, HeaderValue::from_static("false"));
    h.insert(NODE_HEADER, node.index_header.clone());
    resp
}

/// A function call through the container model.
async fn model_call(node: &Node, req: Request<Incoming>) -> Response<SimBody> {
    let arrival = Instant::now();
    let exec = header_ms(req.headers(), EXEC_HEADER).unwrap_or(node.cfg.exec);
    let cold = header_ms(req.headers(), COLD_HEADER).unwrap_or(node.cfg.cold);
    let func = req.uri().path().to_owned();
    // The whole request arrives before the function runs, as in Fn.
    drain(req.into_body()).await;

    if node.draw_fail() {
        node.lock().model.count_failed();
        return msg(node, StatusCode::INTERNAL_SERVER_ERROR, "injected failure (fnsim)");
    }

    let decision = {
        let mut st = node.lock();
        match st.model.arrive(Instant::now(), &func) {
            Arrival::Start(lease) => Ok(lease),
            Arrival::Queued(ticket) => {
                let (tx, rx) = oneshot::channel();
                st.waiters.insert(ticket, tx);
                Err(Some(Waiter { node, ticket, rx: Some(rx) }))
            }
            Arrival::Rejected => Err(None),
        }
    };
    let lease = match decision {
        Ok(lease) => lease,
        Err(Some(waiter)) => match waiter.wait().await {
            Some(lease) => lease,
            None => return msg(node, StatusCode::SERVICE_UNAVAILABLE, "node restarted (fnsim)"),
        },
        Err(None) => return msg(node, StatusCode::SERVICE_UNAVAILABLE, "too busy (fnsim)"),
    };
    let is_cold = lease.cold;
    let guard = LeaseGuard { node, lease: Some(lease) };
    if is_cold && !cold.is_zero() {
        tokio::time::sleep(cold).await;
    }
    let wait = arrival.elapsed();
    if !exec.is_zero() {
        tokio::time::sleep(exec).await;
    }
    // Free the container before writing the answer, as Fn does.
    drop(guard);

    let body = match node.cfg.body_size {
        Some(n) => SimBody::filler(n),
        None => SimBody::text(format!("hello from node {} ({func})\n", node.index)),
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(WAIT_HEADER, HeaderValue::from_str(&godur::format(wait)).expect("durations are header-safe"));
    h.insert(COLD_RESPONSE_HEADER, HeaderValue::from_static(if is_cold { "true" } else { "false" }));
    h.insert(NODE_HEADER, node.index_header.clone());
    resp
}

/// A queued call. If the client goes away (the future is dropped), the ticket leaves the queue,
/// or, if a lease was already handed over, the container is released at once.
struct Waiter<'a> {
    node: &'a Node,
    ticket: u64,
    rx: Option<oneshot::Receiver<Lease>>,
}

impl Waiter<'_> {
    async fn wait(mut self) -> Option<Lease> {
        let rx = self.rx.as_mut().expect("receiver present until completion");
        let lease = rx.await.ok();
        self.rx = None;
        lease
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut st = self.node.lock();
        st.waiters.remove(&self.ticket);
        if !st.model.cancel(self.ticket) {
            // Leases are sent under the lock, so if one was dispatched it is in the channel.
            if let Ok(lease) = rx.try_recv() {
                release(&mut st, lease);
            }
        }
    }
}

/// Gives a container back when the call ends, however it ends.
struct LeaseGuard<'a> {
    node: &'a Node,
    lease: Option<Lease>,
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            release(&mut self.node.lock(), lease);
        }
    }
}

/// Finishes a lease and hands freed containers to queued calls (under the lock, which is what
/// makes [`Waiter`]'s cancellation race-free).
fn release(st: &mut State, lease: Lease) {
    let now = Instant::now();
    let mut pending = vec![lease];
    while let Some(lease) = pending.pop() {
        for (ticket, next) in st.model.finish(now, lease) {
            match st.waiters.remove(&ticket) {
                Some(tx) => {
                    if let Err(next) = tx.send(next) {
                        pending.push(next);
                    }
                }
                None => pending.push(next),
            }
        }
    }
}

/// `/fnsim/<cmd>[?node=I]`: knobs and counters. `node` addresses another node of this process
/// by its index (so a node that is down can be brought back through another one).
async fn control(cluster: &Cluster, this: &Arc<Node>, cmd: &str, req: Request<Incoming>) -> Response<SimBody> {
    let query = parse_query(req.uri().query().unwrap_or(""));
    let node = match query.get("node") {
        None => this.clone(),
        Some(i) => match cluster.nodes.iter().find(|n| n.index.to_string() == *i) {
            Some(n) => n.clone(),
            None => return msg(this, StatusCode::NOT_FOUND, &format!("no node {i} here")),
        },
    };
    let method = req.method().clone();
    match (cmd, method) {
        ("health", Method::GET) => {
            json_value(this, StatusCode::OK, serde_json::json!({ "healthy": node.healthy.load(Ordering::SeqCst) }))
        }
        ("health", Method::POST) => {
            #[derive(serde::Deserialize)]
            struct Health {
                healthy: bool,
            }
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return msg(this, StatusCode::BAD_REQUEST, &e.to_string()),
            };
            match serde_json::from_slice::<Health>(&body) {
                Ok(h) => {
                    node.healthy.store(h.healthy, Ordering::SeqCst);
                    json_value(this, StatusCode::OK, serde_json::json!({ "healthy": h.healthy }))
                }
                Err(e) => msg(this, StatusCode::BAD_REQUEST, &format!("bad body: {e}")),
            }
        }
        ("stats", Method::GET) => {
            #[derive(Serialize)]
            struct Out {
                node: usize,
                addr: String,
                healthy: bool,
                down: bool,
                #[serde(flatten)]
                stats: NodeStats,
            }
            let out = Out {
                node: node.index,
                addr: node.addr.to_string(),
                healthy: node.healthy.load(Ordering::SeqCst),
                down: *node.down.borrow(),
                stats: node.stats(),
            };
            json_value(this, StatusCode::OK, serde_json::to_value(out).expect("json"))
        }
        ("stats/reset", Method::POST) => {
            node.reset_stats();
            msg(this, StatusCode::OK, "stats reset")
        }
        ("down", Method::POST) => {
            let for_ms = match query.get("for_ms").map(|v| v.parse::<u64>()) {
                None => None,
                Some(Ok(ms)) => Some(ms),
                Some(Err(_)) => return msg(this, StatusCode::BAD_REQUEST, "bad for_ms"),
            };
            node.set_down(true, for_ms);
            msg(this, StatusCode::OK, "down")
        }
        ("up", Method::POST) => {
            node.set_down(false, None);
            msg(this, StatusCode::OK, "up")
        }
        ("health" | "stats" | "stats/reset" | "down" | "up", _) => {
            msg(this, StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => msg(this, StatusCode::NOT_FOUND, "unknown fnsim command"),
    }
}

fn parse_query(q: &str) -> HashMap<&str, &str> {
    q.split('&').filter(|kv| !kv.is_empty()).map(|kv| kv.split_once('=').unwrap_or((kv, ""))).collect()
}

/// Reads and discards a request body.
async fn drain(mut body: Incoming) {
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
}

/// A millisecond header as a duration; absent, unparsable or negative values mean "use the
/// default" (negative is clamped to zero).
fn header_ms(headers: &HeaderMap, name: &str) -> Option<Duration> {
    let v: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
    if !v.is_finite() {
        return None;
    }
    Some(Duration::from_secs_f64(v.max(0.0) / 1000.0))
}

fn json(node: &Node, status: StatusCode, body: Bytes) -> Response<SimBody> {
    let mut resp = Response::new(SimBody::text(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(NODE_HEADER, node.index_header.clone());
    resp
}

fn json_value(node: &Node, status: StatusCode, v: serde_json::Value) -> Response<SimBody> {
    json(node, status, serde_json::to_vec(&v).expect("json").into())
}

/// `{"message": ...}`, like Fn's error bodies.
fn msg(node: &Node, status: StatusCode, text: &str) -> Response<SimBody> {
    json_value(node, status, serde_json::json!({ "message": text }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_ms_parses_fractions_and_ignores_garbage() {
        let mut h = HeaderMap::new();
        h.insert(EXEC_HEADER, HeaderValue::from_static("12.5"));
        h.insert(COLD_HEADER, HeaderValue::from_static("banana"));
        assert_eq!(header_ms(&h, EXEC_HEADER), Some(Duration::from_micros(12_500)));
        assert_eq!(header_ms(&h, COLD_HEADER), None);
        h.insert(COLD_HEADER, HeaderValue::from_static("-3"));
        assert_eq!(header_ms(&h, COLD_HEADER), Some(Duration::ZERO));
        assert_eq!(header_ms(&h, "absent"), None);
    }

    #[test]
    fn fail_rate_draws_match_the_rate() {
        let cfg = NodeConfig { fail_rate: 0.25, ..NodeConfig::default() };
        let node = Node {
            index: 3,
            index_header: HeaderValue::from(3),
            addr: "127.0.0.1:1".parse().unwrap(),
            cfg: Arc::new(cfg),
            version_body: Bytes::new(),
            fast_body: Bytes::new(),
            healthy: AtomicBool::new(true),
            state: Mutex::new(State {
                model: NodeModel::new(1, Duration::ZERO, QueueMode::Queue),
                waiters: HashMap::new(),
            }),
            fast_calls: AtomicU64::new(0),
            fast_failed: AtomicU64::new(0),
            draws: AtomicU64::new(0),
            down: watch::Sender::new(false),
            down_epoch: AtomicU64::new(0),
        };
        let fails = (0..20_000).filter(|_| node.draw_fail()).count();
        assert!((4_500..5_500).contains(&fails), "{fails}");
    }

    #[test]
    fn query_parsing() {
        let q = parse_query("node=2&for_ms=500&flag");
        assert_eq!(q.get("node"), Some(&"2"));
        assert_eq!(q.get("for_ms"), Some(&"500"));
        assert_eq!(q.get("flag"), Some(&""));
    }
}
