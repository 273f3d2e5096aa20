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
use crate::node::table::Table;
use crate::node::{Node, NodeAddr, Snapshot};

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
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
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
    pub(crate) async fn add(&self, addr: NodeAddr) {
        let seq = self.mutations.fetch_add(1, Ordering::SeqCst) + 1;
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Add { addr, seq, done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// Removes a node that is no longer in the store. Returns once no new call can pick it.
    pub(crate) async fn remove(&self, addr: NodeAddr) {
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
    pub(crate) fn report_unreachable(&self, node: &Node) {
        if node.is_suspect() {
            return;
        }
        let snap = self.snapshot.load();
        let skipped = snap.nodes().iter().filter(|n| n.is_suspect()).count();
        if may_skip_another(skipped, snap.len(), self.max_ejected) && node.set_suspect(true) {
            warn!(node = %node.addr, "node unreachable; skipping it until a check passes");
        } else {
            debug!(node = %node.addr, skipped, "node unreachable; not skipped: too many nodes skipped already");
        }
        let _ = self.tx.send(Command::Suspect(node.addr.clone()));
    }
}

/// Whether one more node may be skipped as unreachable when `skipped` of `nodes` already are:
/// at most `max_ejected` of them (rounded down) at once. A single node is never skipped unless
/// `-max-ejected` is 1: with nowhere else to go, a call is better tried than refused.
fn may_skip_another(skipped: usize, nodes: usize, max_ejected: f64) -> bool {
    let allowed = (max_ejected * nodes as f64).floor() as usize;
    skipped < allowed
}

/// Whether a store read taken when the local mutation counter was `read_at` predates the last
/// local add or delete the manager applied (`last_local`): such a read may not show it yet, and
/// applying it would undo that change.
fn is_stale_read(read_at: u64, last_local: u64) -> bool {
    read_at < last_local
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
                if is_stale_read(seq, self.last_local_seq) {
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
                info!(node = %node.addr, version = %result.as_ref().map(std::string::ToString::to_string).unwrap_or_default(), "node healthy");
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicBool;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    #[test]
    fn at_most_max_ejected_of_the_nodes_are_skipped() {
        // Half of 4: two may be skipped, a third may not.
        assert!(may_skip_another(0, 4, 0.5));
        assert!(may_skip_another(1, 4, 0.5));
        assert!(!may_skip_another(2, 4, 0.5));
        // Rounded down: half of 3 is one.
        assert!(may_skip_another(0, 3, 0.5));
        assert!(!may_skip_another(1, 3, 0.5));
        // A lone node stays routable unless every node may go.
        assert!(!may_skip_another(0, 1, 0.5));
        assert!(may_skip_another(0, 1, 1.0));
        assert!(!may_skip_another(1, 1, 1.0));
        // Zero: passive ejection off.
        assert!(!may_skip_another(0, 10, 0.0));
        assert!(!may_skip_another(0, 0, 0.5));
    }

    #[test]
    fn a_read_older_than_a_local_change_is_stale() {
        assert!(!is_stale_read(0, 0));
        assert!(is_stale_read(0, 1));
        assert!(!is_stale_read(1, 1));
        assert!(!is_stale_read(2, 1));
    }

    /// A node on loopback answering its health check with a version, or 503 when not `up`.
    async fn version_node(up: Arc<AtomicBool>) -> NodeAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { continue };
                let up = up.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (status, body) = if up.load(Ordering::SeqCst) {
                        ("200 OK", r#"{"version":"0.3.753"}"#)
                    } else {
                        ("503 Busy", "{}")
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        NodeAddr::parse(&addr.to_string()).unwrap()
    }

    /// An address where nothing listens: its checks fail at once.
    async fn dead_node() -> NodeAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        drop(listener);
        NodeAddr::parse(&addr.to_string()).unwrap()
    }

    /// A manager whose periodic checks are far apart: checks happen when a test causes them.
    fn manager(max_ejected: f64) -> NodesHandle {
        manager_every(max_ejected, Duration::from_secs(3600))
    }

    fn manager_every(max_ejected: f64, interval: Duration) -> NodesHandle {
        spawn(HealthConfig {
            interval,
            max_ejected,
            thresholds: Thresholds { unhealthy: 1, healthy: 1 },
            prober: Prober::new("/version".to_owned(), Duration::from_secs(2), semver::Version::new(0, 3, 0)),
        })
    }

    fn members(h: &NodesHandle) -> Vec<String> {
        h.load().nodes().iter().map(|n| n.addr.to_string()).collect()
    }

    fn sorted(mut addrs: Vec<String>) -> Vec<String> {
        addrs.sort();
        addrs
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn membership_follows_the_store_and_local_changes() {
        let up = Arc::new(AtomicBool::new(true));
        let (a, b, c) = (version_node(up.clone()).await, version_node(up.clone()).await, version_node(up).await);
        let h = manager(0.5);
        h.set_desired(vec![a.clone(), b.clone()], h.mutation_seq());
        tokio::time::timeout(LIMIT, h.when_checked()).await.unwrap();
        assert_eq!(members(&h), sorted(vec![a.to_string(), b.to_string()]));
        let snap = h.load_full();
        assert!((0..snap.len()).all(|i| snap.is_healthy(i)), "checked nodes that answer are healthy");

        tokio::time::timeout(LIMIT, h.add(c.clone())).await.unwrap();
        assert_eq!(members(&h), sorted(vec![a.to_string(), b.to_string(), c.to_string()]));
        // Adding a member again changes nothing (the same node, its state kept).
        let node_a = || h.load_full().nodes().iter().find(|n| n.addr == a).unwrap().clone();
        let before = node_a();
        tokio::time::timeout(LIMIT, h.add(a.clone())).await.unwrap();
        assert!(Arc::ptr_eq(&before, &node_a()), "adding a member again replaced it");
        assert_eq!(h.load().len(), 3);

        tokio::time::timeout(LIMIT, h.remove(a.clone())).await.unwrap();
        assert_eq!(members(&h), sorted(vec![b.to_string(), c.to_string()]));
        // The store now says only c: b goes.
        h.set_desired(vec![c.clone()], h.mutation_seq());
        tokio::time::timeout(LIMIT, h.when_checked()).await.unwrap();
        assert_eq!(members(&h), vec![c.to_string()]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_read_that_raced_with_a_local_add_does_not_undo_it() {
        let up = Arc::new(AtomicBool::new(true));
        let (a, b) = (version_node(up.clone()).await, version_node(up).await);
        let h = manager(0.5);
        h.set_desired(vec![a.clone()], h.mutation_seq());
        // Discovery reads the store (a only), then the API adds b before that read arrives.
        let read_at = h.mutation_seq();
        tokio::time::timeout(LIMIT, h.add(b.clone())).await.unwrap();
        h.set_desired(vec![a.clone()], read_at);
        tokio::time::timeout(LIMIT, h.when_checked()).await.unwrap();
        assert_eq!(members(&h), sorted(vec![a.to_string(), b.to_string()]), "a stale read removed b");
        // A read taken after the add is applied.
        h.set_desired(vec![a.clone()], h.mutation_seq());
        tokio::time::timeout(LIMIT, h.when_checked()).await.unwrap();
        assert_eq!(members(&h), vec![a.to_string()]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_reports_skip_at_most_max_ejected_and_a_passing_check_clears_them() {
        let mut addrs = Vec::new();
        for _ in 0..4 {
            addrs.push(dead_node().await);
        }
        let h = manager(0.5);
        h.set_desired(addrs, h.mutation_seq());
        tokio::time::timeout(LIMIT, h.when_checked()).await.unwrap();
        let snap = h.load_full();
        assert_eq!(snap.len(), 4);
        for n in snap.nodes() {
            h.report_unreachable(n);
        }
        // Every node failed, but only half of them are skipped: the rest are still tried.
        let suspects = snap.nodes().iter().filter(|n| n.is_suspect()).count();
        assert_eq!(suspects, 2, "-max-ejected 0.5 of 4 nodes");
        // A second report of the same nodes changes nothing.
        for n in snap.nodes() {
            h.report_unreachable(n);
        }
        assert_eq!(snap.nodes().iter().filter(|n| n.is_suspect()).count(), 2);

        // A node reported while its checks fail: skipped at once, kept skipped by failing
        // checks, and back when a check passes.
        let up = Arc::new(AtomicBool::new(true));
        let live = version_node(up.clone()).await;
        let h = manager_every(1.0, Duration::from_millis(100));
        h.set_desired(vec![live.clone()], h.mutation_seq());
        tokio::time::timeout(LIMIT, h.when_checked()).await.unwrap();
        let node = h.load_full().nodes()[0].clone();
        assert!(!node.is_suspect());
        // Checks fail from here on; once the node is seen unhealthy no passing check is still in
        // flight (one that began before the switch could otherwise clear the mark below).
        up.store(false, Ordering::SeqCst);
        eventually("a failing check is seen", || !h.load().is_healthy(0)).await;
        h.report_unreachable(&node);
        assert!(node.is_suspect(), "a reported node is skipped at once");
        // Five check intervals of failing checks (and the check the report asked for) keep it.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(node.is_suspect(), "a failing check cleared the suspect mark");
        }
        up.store(true, Ordering::SeqCst);
        eventually("a passing check clears the suspect mark", || !node.is_suspect()).await;
        assert!(h.load().is_healthy(0));
    }
}
