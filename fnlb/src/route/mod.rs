//! Routing: the key of a request, the consistent order of nodes for a key ([`crate::node::table`]), and the
//! policies that pick one node of a [`Snapshot`]. Policies are pure over the snapshot plus the
//! per-node load counters; they never block and never allocate on the common path.
pub mod bounded;
pub mod chrlu;
pub mod classic;
pub mod goduration;
pub mod hermod;
pub mod openwhisk;
pub mod sketch;
pub mod spread;
pub mod wait;
pub mod warmth;

use std::sync::Arc;
use std::time::Duration;

use crate::node::{Node, Snapshot};

/// A routing policy: where a call for a key goes, given the nodes now and what they reported.
pub trait Policy: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// The policy's rule: an eligible node for the key's hash, skipping the ones in `tried`
    /// (earlier attempts of the same call). `None`: no node can take it. Callers use
    /// [`pick`](trait.Policy.html#method.pick) on `dyn Policy`, which opens the attempt the
    /// policy counts; `choose` alone is for the policy's own tests.
    fn choose(&self, snap: &Snapshot, hash: u64, tried: &[usize]) -> Option<usize>;

    /// A node answered a call for the key with this status, reporting this queue wait (if it
    /// said one). A 503 is Fn's "server busy".
    fn observe(&self, _node: &Node, _hash: u64, _wait: Option<Duration>, _status: http::StatusCode) {}

    /// A call picked onto `node` ended without an answer to observe: the node could not be
    /// reached or timed out, or the client left. A policy that counts its picks (`bounded`'s
    /// warmth table) stops counting this one.
    fn abandon(&self, _node: &Node, _hash: u64) {}

    /// Late binding's view of the rule: like [`choose`](Policy::choose), but a policy that can
    /// tell says [`Placement::Full`] when no node of the key's probe chain can take the call warm
    /// or with room for a new container, instead of settling for the least loaded one. Nothing
    /// is counted: the caller opens the attempt with [`open`](trait.Policy.html#method.open) on
    /// the node it settles for (now, or after waiting). The default wraps `choose` (which may
    /// count, as before: its [`commit`](Policy::commit) is then a no-op).
    fn place(&self, snap: &Snapshot, hash: u64, tried: &[usize]) -> Option<Placement> {
        self.choose(snap, hash, tried).map(Placement::Go)
    }

    /// The call for the key goes to node `index` after [`place`](Policy::place): count it as
    /// [`choose`](Policy::choose) counts its own picks.
    fn commit(&self, _snap: &Snapshot, _hash: u64, _index: usize) {}

    /// The policy's estimate of where functions are warm, if it keeps one (the waiting rule
    /// reads the function's calls in flight from it: the containers that will free).
    fn warmth(&self) -> Option<&warmth::Warmth> {
        None
    }
}

/// What [`Policy::place`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// This node can take the call (warm, as far as the policy can tell).
    Go(usize),
    /// This node has room for a new container: the call would start cold there (a policy that
    /// does not tell warm from cold says [`Placement::Go`]).
    Room(usize),
    /// No node of the probe chain can; this is the least loaded of them (where `choose` would
    /// have sent the call cold).
    Full(usize),
}

impl dyn Policy {
    /// Picks a node for the key's hash (see [`Policy::choose`]) and opens the attempt on it.
    /// The only way a caller gets a node: the returned guard closes the pick exactly once, so no
    /// call path can forget to.
    pub fn pick<'a>(&'a self, snap: &'a Snapshot, hash: u64, tried: &[usize]) -> Option<Attempt<'a>> {
        let index = self.choose(snap, hash, tried)?;
        Some(Attempt { policy: self, node: &snap.nodes()[index], index, hash, open: true })
    }

    /// Opens the attempt on node `index` of `snap` (from [`Policy::place`], or a node a waiting
    /// call was handed): counts it ([`Policy::commit`]) and returns the guard that closes it.
    pub(crate) fn open<'a>(&'a self, snap: &'a Snapshot, hash: u64, index: usize) -> Attempt<'a> {
        self.commit(snap, hash, index);
        Attempt { policy: self, node: &snap.nodes()[index], index, hash, open: true }
    }
}

/// One attempt of a call on a node, as the policy counts it. Every pick is closed exactly once:
/// by the node's answer ([`Attempt::answered`]), or by [`Policy::abandon`] when the attempt is
/// dropped unanswered — whichever way the proxy leaves it (retry, error, timeout, client gone).
pub struct Attempt<'a> {
    policy: &'a dyn Policy,
    node: &'a Arc<Node>,
    index: usize,
    hash: u64,
    open: bool,
}

impl<'a> Attempt<'a> {
    /// The node picked.
    pub(crate) fn node(&self) -> &'a Arc<Node> {
        self.node
    }

    /// The node's index in the snapshot it was picked from.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The node answered with this status and reported this queue wait (if it said one).
    pub fn answered(mut self, wait: Option<Duration>, status: http::StatusCode) {
        self.open = false;
        self.policy.observe(self.node, self.hash, wait, status);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.open {
            self.policy.abandon(self.node, self.hash);
        }
    }
}

/// Plain consistent hashing: the first eligible node in the key's order. A node that is down
/// hands its keys to their next choices; every other key stays where it is hot.
pub(crate) struct ConsistentHash;

impl Policy for ConsistentHash {
    fn name(&self) -> &'static str {
        "ch"
    }

    fn choose(&self, snap: &Snapshot, hash: u64, tried: &[usize]) -> Option<usize> {
        first_eligible(snap, hash, tried)
    }
}

/// The first node in the key's order that may take traffic and was not tried yet.
pub(crate) fn first_eligible(snap: &Snapshot, hash: u64, tried: &[usize]) -> Option<usize> {
    if snap.healthy_count() == 0 {
        return None;
    }
    snap.table().order(hash).find(|i| snap.is_eligible(*i) && !tried.contains(i))
}

/// A tiny shared random source for policies (xorshift64). Lock-free; a lost update under a race
/// only repeats a draw, which is harmless for load spreading.
pub(crate) struct Rng(std::sync::atomic::AtomicU64);

impl Rng {
    pub(crate) const fn new(seed: u64) -> Rng {
        Rng(std::sync::atomic::AtomicU64::new(seed))
    }

    pub(crate) fn next(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let mut x = self.0.load(Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.store(x, Relaxed);
        x
    }
}

/// How many balancers share the nodes: `-balancers`, or the live count (heartbeats in the shared
/// store, Ready pods in Kubernetes). Each balancer fills only its share of a node. One atomic,
/// written by whoever counts, read by the policies and the scale signal at every use.
#[derive(Clone, Debug)]
pub struct Balancers(Arc<std::sync::atomic::AtomicU32>);

impl Balancers {
    pub fn new(n: u32) -> Balancers {
        Balancers(Arc::new(std::sync::atomic::AtomicU32::new(n.max(1))))
    }

    /// At least 1.
    pub(crate) fn get(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::Relaxed).max(1)
    }

    pub(crate) fn set(&self, n: u32) {
        self.0.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }
}

/// A fixed count (tests, the simulator, a policy built without a live count).
impl From<u32> for Balancers {
    fn from(n: u32) -> Balancers {
        Balancers::new(n)
    }
}

/// What the policies need from the command line.
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    pub node_capacity: u32,
    pub balancers: Balancers,
    pub load_factor: f64,
    /// `-late-binding`: for `bounded`, also turns on [`bounded::Tuning::forget`] (a call that
    /// was sent warm and started cold caps the estimate), which pays only with waiting.
    pub late_binding: bool,
}

/// Every policy `-policy` accepts, in the order the help lists them: the one list that the
/// flag's validation, its help and [`policy_by_name`] agree on (a test checks the last).
pub const POLICIES: &[&str] =
    &["bounded", "ch", "fnlb-classic", "round-robin", "least-conn", "openwhisk", "ch-rlu", "hermod"];

/// Builds the policy named on the command line (`-policy`, one of [`POLICIES`]).
pub fn policy_by_name(name: &str, cfg: PolicyConfig) -> Option<Box<dyn Policy>> {
    let PolicyConfig { node_capacity, balancers, load_factor, late_binding } = cfg;
    Some(match name {
        "bounded" => {
            // Late binding itself lives in the call engine; what it changes here is `forget`.
            // Measured with routesim (docs/BENCHMARKS.md, "Late binding"): with waiting, a
            // warm bet that comes back cold is best forgotten (ρ 0.45, short seeds: 5.8× → 2.1×
            // the bound; ρ 0.3 1.10× → 1.07×); without it, forgetting sends more calls to new
            // containers (ρ 0.3: 1.82× → 2.03×), so it stays off.
            let tuning = bounded::Tuning { forget: late_binding, ..bounded::Tuning::default() };
            Box::new(bounded::Bounded::with_tuning(load_factor, node_capacity, balancers, tuning))
        }
        "ch" => Box::new(ConsistentHash),
        "fnlb-classic" => Box::<classic::Classic>::default(),
        "round-robin" => Box::<spread::RoundRobin>::default(),
        "least-conn" => Box::<spread::LeastConn>::default(),
        "openwhisk" => Box::new(openwhisk::OpenWhisk::new(node_capacity, balancers)),
        "ch-rlu" => Box::new(chrlu::ChRlu::new(node_capacity, balancers)),
        "hermod" => Box::new(hermod::Hermod::new(node_capacity, balancers)),
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use crate::node::table::Table;
    use crate::node::{Node, NodeAddr, Snapshot};

    /// A snapshot of `n` nodes (127.0.0.1:9001…), healthy as given (all when `healthy` is empty).
    pub(crate) fn snapshot(n: usize, healthy: &[bool]) -> Snapshot {
        let total = Arc::default();
        let mut addrs: Vec<NodeAddr> =
            (0..n).map(|i| NodeAddr::parse(&format!("127.0.0.1:{}", 9001 + i)).unwrap()).collect();
        addrs.sort();
        let nodes: Arc<[Arc<Node>]> = addrs.iter().map(|a| Node::new(a.clone(), Arc::clone(&total))).collect();
        let healthy: Box<[bool]> = if healthy.is_empty() { vec![true; n].into() } else { healthy.into() };
        Snapshot::new(nodes, Arc::new(Table::build(&addrs)), healthy, total)
    }

    /// The same nodes and table as `snap`, healthy as given. (Its count of calls in flight is a
    /// new one: for tests that answer each call before the next.)
    pub(crate) fn with_health(snap: &Snapshot, healthy: &[bool]) -> Snapshot {
        Snapshot::new(snap.nodes_arc().clone(), snap.table().clone(), healthy.into(), Arc::default())
    }

    pub(crate) fn key(i: usize) -> (Vec<u8>, u64) {
        let k = format!("/r/app/fn{i}").into_bytes();
        let h = crate::node::table::key_hash(&k);
        (k, h)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{key, snapshot};
    use super::*;

    #[test]
    fn ch_skips_unhealthy_and_tried_nodes_in_key_order() {
        let snap = snapshot(4, &[]);
        let (_, h) = key(7);
        let order: Vec<usize> = snap.table().order(h).collect();
        assert_eq!(ConsistentHash.choose(&snap, h, &[]), Some(order[0]));
        assert_eq!(ConsistentHash.choose(&snap, h, &[order[0]]), Some(order[1]));
        let mut healthy = vec![true; 4];
        healthy[order[0]] = false;
        let snap = snapshot(4, &healthy);
        assert_eq!(ConsistentHash.choose(&snap, h, &[]), Some(order[1]));
    }

    #[test]
    fn suspect_node_is_skipped_at_once() {
        let snap = snapshot(3, &[]);
        let (_, h) = key(1);
        let home = ConsistentHash.choose(&snap, h, &[]).unwrap();
        snap.nodes()[home].set_suspect(true);
        assert_ne!(ConsistentHash.choose(&snap, h, &[]), Some(home));
    }

    #[test]
    fn no_healthy_node_means_no_pick() {
        let snap = snapshot(3, &[false, false, false]);
        let (_, h) = key(1);
        for name in POLICIES {
            let p = policy_by_name(
                name,
                PolicyConfig {
                    node_capacity: 64,
                    balancers: Balancers::new(1),
                    load_factor: 1.25,
                    late_binding: false,
                },
            )
            .unwrap();
            assert_eq!(p.choose(&snap, h, &[]), None, "{name}");
            assert_eq!(p.name(), *name);
        }
    }

    #[test]
    fn every_listed_policy_is_built_and_answers_with_a_healthy_node() {
        assert!(policy_by_name("nope", cfg()).is_none());
        let snap = snapshot(4, &[false, true, true, true]);
        for name in POLICIES {
            let p = policy_by_name(name, cfg()).unwrap_or_else(|| panic!("{name} is listed but not built"));
            for i in 0..50 {
                let (_, h) = key(i);
                let picked = p.choose(&snap, h, &[]).unwrap();
                assert_ne!(picked, 0, "{name} picked the unhealthy node");
                p.abandon(&snap.nodes()[picked], h);
                // With every other node tried, the last healthy one (or nothing).
                let others: Vec<usize> = (1..4).filter(|j| *j != picked).collect();
                assert_eq!(p.choose(&snap, h, &others), Some(picked), "{name}");
                p.abandon(&snap.nodes()[picked], h);
            }
        }
    }

    fn cfg() -> PolicyConfig {
        PolicyConfig { node_capacity: 64, balancers: Balancers::new(1), load_factor: 1.25, late_binding: false }
    }

    #[test]
    fn round_robin_visits_every_healthy_node() {
        let snap = snapshot(4, &[true, false, true, true]);
        let rr = spread::RoundRobin::default();
        let (_, h) = key(0);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..8 {
            seen.insert(rr.choose(&snap, h, &[]).unwrap());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 2, 3]);
    }

    #[test]
    fn least_conn_prefers_the_idle_node() {
        let snap = snapshot(2, &[]);
        let lc = spread::LeastConn::default();
        let _busy: Vec<_> = (0..5).map(|_| snap.nodes()[0].start_call()).collect();
        let (_, h) = key(0);
        for _ in 0..20 {
            // Two candidates out of two nodes: whenever both are drawn, node 1 wins; never node 0
            // unless both draws were node 0.
            let p = lc.choose(&snap, h, &[]).unwrap();
            if p == 0 {
                continue;
            }
            assert_eq!(p, 1);
        }
        let picks: usize = (0..100).filter(|_| lc.choose(&snap, h, &[]) == Some(1)).count();
        assert!(picks >= 60, "idle node picked {picks}/100");
    }
}
