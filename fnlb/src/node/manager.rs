//! The node manager: the one task that owns the node set and every node's health. It takes the
//! desired set from discovery, adds and removes from the management API, reports of unreachable
//! nodes from the proxy, and probe results; it publishes an immutable [`Snapshot`] after every
//! change. Everyone else only reads snapshots.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::health::probe::{ProbeError, Prober};
use crate::health::{Health, HealthState, Thresholds};
use crate::node::{Node, NodeAddr, Snapshot};
use crate::route::table::Table;

enum Command {
    /// The full set discovery wants, read when the local mutation counter was `seq`.
    Desired {
        addrs: Vec<NodeAddr>,
        seq: u64,
    },
    Add {
        addr: NodeAddr,
        seq: u64,
        done: oneshot::Sender<()>,
    },
    Remove {
        addr: NodeAddr,
        seq: u64,
        done: oneshot::Sender<()>,
    },
    /// The proxy could not reach this node: check it now.
    Suspect(NodeAddr),
    /// Answer once every member has been checked at least once.
    WhenChecked(oneshot::Sender<()>),
}

/// The cheap, cloneable side of the manager that the rest of the balancer holds.
#[derive(Clone)]
pub struct NodesHandle {
    tx: mpsc::UnboundedSender<Command>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    mutations: Arc<AtomicU64>,
    /// Share of the nodes that may be skipped as unreachable at once (`-max-ejected`).
    max_ejected: f64,
}

impl NodesHandle {
    /// The current snapshot. Lock-free; hold the guard only while routing one call.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Read before reading the store, and pass to [`NodesHandle::set_desired`]: a store read that
    /// raced with a local add or delete is then recognised as stale and ignored.
    pub fn mutation_seq(&self) -> u64 {
        self.mutations.load(Ordering::SeqCst)
    }

    pub fn set_desired(&self, addrs: Vec<NodeAddr>, seq: u64) {
        let _ = self.tx.send(Command::Desired { addrs, seq });
    }

    /// Waits until every node known now has had its first health check, so a balancer that
    /// just started does not answer 503 while its nodes are still being checked. Commands are
    /// handled in order, so a `set_desired` sent before this is included.
    pub async fn when_checked(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::WhenChecked(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Adds a node that is now in the store; it is checked at once. Returns once it is a member.
    pub async fn add(&self, addr: NodeAddr) {
        let seq = self.mutations.fetch_add(1, Ordering::SeqCst) + 1;
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Add { addr, seq, done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// Removes a node that is no longer in the store. Returns once no new call can pick it.
    pub async fn remove(&self, addr: NodeAddr) {
        let seq = self.mutations.fetch_add(1, Ordering::SeqCst) + 1;
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Remove { addr, seq, done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// Marks a node the proxy could not reach: routing skips it from now on, and it is checked
    /// at once rather than at the next round.
    ///
    /// Passive ejection is bounded: when `-max-ejected` of the nodes are already skipped, the
    /// node is only checked, not skipped — if that many nodes fail at once, the fault is more
    /// likely between us and them, and routing around it would pile every call on the rest.
    pub fn report_unreachable(&self, node: &Node) {
        if node.is_suspect() {
            return;
        }
        let snap = self.snapshot.load();
        let skipped = snap.nodes().iter().filter(|n| n.is_suspect()).count();
        let allowed = (self.max_ejected * snap.len() as f64).floor() as usize;
        if skipped < allowed && node.set_suspect(true) {
            warn!(node = %node.addr, "node unreachable; skipping it until a check passes");
        } else {
            debug!(node = %node.addr, skipped, "node unreachable; not skipped: too many nodes skipped already");
        }
        let _ = self.tx.send(Command::Suspect(node.addr.clone()));
    }
}

pub struct HealthConfig {
    pub interval: Duration,
    /// See `NodesHandle::report_unreachable`.
    pub max_ejected: f64,
    pub thresholds: Thresholds,
    pub prober: Prober,
}

struct Member {
    node: Arc<Node>,
    health: HealthState,
    probing: bool,
}

struct Manager {
    members: BTreeMap<NodeAddr, Member>,
    /// The table over the current members; rebuilt only when membership changes.
    table: Arc<Table>,
    membership_changed: bool,
    health_changed: bool,
    last_local_seq: u64,
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// Shared by every node this manager creates (see `Node::total_in_flight`).
    total_in_flight: Arc<std::sync::atomic::AtomicU32>,
    cfg: HealthConfig,
    results: mpsc::UnboundedSender<(Arc<Node>, Result<semver::Version, ProbeError>)>,
    /// Waiting for every member's first check (see `NodesHandle::when_checked`).
    when_checked: Vec<oneshot::Sender<()>>,
}

/// Starts the manager task and returns its handle.
pub fn spawn(cfg: HealthConfig) -> NodesHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let max_ejected = cfg.max_ejected;
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
    let (results, results_rx) = mpsc::unbounded_channel();
    let manager = Manager {
        members: BTreeMap::new(),
        table: Arc::new(Table::build(&[])),
        membership_changed: false,
        health_changed: false,
        last_local_seq: 0,
        snapshot: snapshot.clone(),
        total_in_flight: Arc::default(),
        cfg,
        results,
        when_checked: Vec::new(),
    };
    tokio::spawn(manager.run(rx, results_rx));
    NodesHandle { tx, snapshot, mutations: Arc::new(AtomicU64::new(0)), max_ejected }
}

type ProbeResult = (Arc<Node>, Result<semver::Version, ProbeError>);

impl Manager {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut results: mpsc::UnboundedReceiver<ProbeResult>,
    ) {
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd, &mut waiting),
                    // Every handle is gone: the balancer is shutting down.
                    None => return,
                },
                Some((node, result)) = results.recv() => self.probe_done(node, result),
                _ = tick.tick() => self.probe_all(),
            }
            self.publish().await;
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
            if !self.when_checked.is_empty() && self.members.values().all(|m| m.health.health() != Health::Unknown) {
                for done in self.when_checked.drain(..) {
                    let _ = done.send(());
                }
            }
        }
    }

    fn command(&mut self, cmd: Command, waiting: &mut Vec<oneshot::Sender<()>>) {
        match cmd {
            Command::Desired { addrs, seq } => {
                if seq < self.last_local_seq {
                    debug!("ignoring a store read that raced with a local change");
                    return;
                }
                let wanted: std::collections::BTreeSet<NodeAddr> = addrs.into_iter().collect();
                let gone: Vec<NodeAddr> = self.members.keys().filter(|a| !wanted.contains(*a)).cloned().collect();
                for addr in gone {
                    self.remove(&addr);
                }
                for addr in wanted {
                    self.add(addr);
                }
            }
            Command::Add { addr, seq, done } => {
                self.last_local_seq = self.last_local_seq.max(seq);
                self.add(addr);
                waiting.push(done);
            }
            Command::Remove { addr, seq, done } => {
                self.last_local_seq = self.last_local_seq.max(seq);
                self.remove(&addr);
                waiting.push(done);
            }
            Command::WhenChecked(done) => self.when_checked.push(done),
            Command::Suspect(addr) => {
                if let Some(m) = self.members.get_mut(&addr) {
                    let node = m.node.clone();
                    Self::start_probe(&self.cfg.prober, &self.results, m, node);
                }
            }
        }
    }

    fn add(&mut self, addr: NodeAddr) {
        if self.members.contains_key(&addr) {
            return;
        }
        info!(node = %addr, "node added");
        let node = Node::new(addr.clone(), self.total_in_flight.clone());
        let mut member = Member { node: node.clone(), health: HealthState::default(), probing: false };
        Self::start_probe(&self.cfg.prober, &self.results, &mut member, node);
        self.members.insert(addr, member);
        self.membership_changed = true;
    }

    fn remove(&mut self, addr: &NodeAddr) {
        if self.members.remove(addr).is_some() {
            info!(node = %addr, "node removed");
            self.membership_changed = true;
        }
    }

    fn probe_all(&mut self) {
        for m in self.members.values_mut() {
            let node = m.node.clone();
            Self::start_probe(&self.cfg.prober, &self.results, m, node);
        }
    }

    /// Probes run as their own tasks so a node that hangs delays no other node's checks.
    fn start_probe(
        prober: &Prober,
        results: &mpsc::UnboundedSender<ProbeResult>,
        member: &mut Member,
        node: Arc<Node>,
    ) {
        if member.probing {
            return;
        }
        member.probing = true;
        let prober = prober.clone();
        let results = results.clone();
        tokio::spawn(async move {
            let r = prober.check(&node.addr).await;
            let _ = results.send((node, r));
        });
    }

    fn probe_done(&mut self, node: Arc<Node>, result: Result<semver::Version, ProbeError>) {
        // A result for a node that was removed (or removed and added again) is stale.
        let Some(m) = self.members.get_mut(&node.addr) else {
            return;
        };
        if !Arc::ptr_eq(&m.node, &node) {
            return;
        }
        m.probing = false;
        let passed = result.is_ok();
        if passed && node.set_suspect(false) {
            info!(node = %node.addr, "node reachable again");
        }
        match m.health.observe(passed, self.cfg.thresholds) {
            Some(Health::Healthy) => {
                info!(node = %node.addr, version = %result.as_ref().map(|v| v.to_string()).unwrap_or_default(), "node healthy");
                self.health_changed = true;
            }
            Some(_) => {
                let error = result.err().map(|e| e.to_string()).unwrap_or_default();
                warn!(node = %node.addr, %error, "node unhealthy");
                self.health_changed = true;
            }
            None => {
                if let Err(error) = result {
                    debug!(node = %node.addr, %error, "health check failed");
                }
            }
        }
    }

    async fn publish(&mut self) {
        if !self.membership_changed && !self.health_changed {
            return;
        }
        let nodes: Arc<[Arc<Node>]> = self.members.values().map(|m| m.node.clone()).collect();
        if self.membership_changed {
            let addrs: Vec<NodeAddr> = self.members.keys().cloned().collect();
            // Building is O(slots × nodes): off the runtime's workers, so traffic keeps flowing.
            self.table = match tokio::task::spawn_blocking(move || Table::build(&addrs)).await {
                Ok(t) => Arc::new(t),
                Err(e) => {
                    warn!(error = %e, "table build failed");
                    return;
                }
            };
        }
        let healthy: Box<[bool]> = self.members.values().map(|m| m.health.is_healthy()).collect();
        self.snapshot.store(Arc::new(Snapshot::new(nodes, self.table.clone(), healthy, self.total_in_flight.clone())));
        self.membership_changed = false;
        self.health_changed = false;
    }
}
