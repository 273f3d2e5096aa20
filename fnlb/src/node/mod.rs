//! Nodes: validated addresses, the per-node live counters the proxy updates, and the immutable
//! [`Snapshot`] of the node set that routing reads. Only [`manager`] builds snapshots.
pub mod addr;
pub mod manager;
pub mod table;

pub use addr::{AddrError, NodeAddr};

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use table::Table;

/// One Fn node as the data path sees it. Shared (`Arc`) between successive snapshots so its
/// counters and pooled connections survive membership and health changes.
pub struct Node {
    pub addr: NodeAddr,
    /// Calls this balancer has sent to the node and not yet finished.
    in_flight: AtomicU32,
    /// Set by the proxy when the node could not be reached; cleared by the next passing check.
    suspect: AtomicBool,
    /// Time-decayed mean of the node's reported `XXX-FXLB-WAIT`, in microseconds.
    wait_us: AtomicU64,
    /// Until when (ms on [`crate::clock::now_ms`], the policies' clock) the node said it is busy (503); 0 when it did not.
    busy_until_ms: AtomicU64,
    /// The policy's estimate of the containers (busy and idle) this balancer's calls keep on
    /// the node: its slots' footprint (see `route::warmth`).
    containers: AtomicU32,
    /// Calls in flight on every node of the set, shared by all of them: policies compare a
    /// node's load with the mean without summing over the nodes.
    total_in_flight: Arc<AtomicU32>,
    /// The proxy's kept-alive connections to this node (`proxy::pool::Pool::of`), which live as
    /// long as the node.
    pub attached: Attachment,
}

impl Node {
    pub fn new(addr: NodeAddr, total_in_flight: Arc<AtomicU32>) -> Arc<Node> {
        Arc::new(Node {
            attached: Attachment::default(),
            addr,
            in_flight: AtomicU32::new(0),
            suspect: AtomicBool::new(false),
            wait_us: AtomicU64::new(0),
            busy_until_ms: AtomicU64::new(0),
            containers: AtomicU32::new(0),
            total_in_flight,
        })
    }

    /// Whether the node said "busy" (503) in the last moments.
    pub(crate) fn is_busy(&self) -> bool {
        let until = self.busy_until_ms.load(Ordering::Relaxed);
        until != 0 && crate::clock::now_ms() < until
    }

    /// The node answered 503 (Fn's "server busy"): treat it as full for `for_ms`.
    pub(crate) fn mark_busy(&self, for_ms: u64) {
        self.busy_until_ms.store(crate::clock::now_ms() + for_ms, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Containers the policy estimates this balancer's calls keep on the node.
    pub(crate) fn containers(&self) -> u32 {
        self.containers.load(Ordering::Relaxed)
    }

    pub(crate) fn add_containers(&self, n: u32) {
        self.containers.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_containers(&self, n: u32) {
        self.containers.store(n, Ordering::Relaxed);
    }

    /// Counts a call as started; the guard counts it as finished when dropped.
    pub fn start_call(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.total_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub(crate) fn is_suspect(&self) -> bool {
        self.suspect.load(Ordering::Relaxed)
    }

    /// Returns true when this call changed the flag (so the caller reports it only once).
    pub(crate) fn set_suspect(&self, suspect: bool) -> bool {
        self.suspect.swap(suspect, Ordering::Relaxed) != suspect
    }

    /// The node's recent queue wait as it reports it (decayed mean, starts at zero).
    pub(crate) fn wait(&self) -> Duration {
        Duration::from_micros(self.wait_us.load(Ordering::Relaxed))
    }

    /// Folds one reported wait into the decayed mean. A lost update under a race is harmless:
    /// the mean is a hint, not an account.
    pub fn observe_wait(&self, wait: Duration) {
        let sample = wait.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.wait_us.load(Ordering::Relaxed);
        // Weight 1/8: one cold start moves the mean by an eighth of its wait, not all of it.
        let new = old - old / 8 + sample / 8;
        self.wait_us.store(new, Ordering::Relaxed);
    }
}

/// What other layers keep per node for the node's lifetime, each made at its first use. Their
/// types are those layers', so node/ depends on none of them: the proxy keeps its connection
/// pool here, the metrics their handles. Finding one costs a call what a field would plus a type
/// check or two, with no lock.
#[derive(Default)]
pub struct Attachment([OnceLock<Box<dyn Any + Send + Sync>>; ATTACHMENTS]);

/// Layers that attach a value to a node: the proxy's pool and the node's metric handles.
const ATTACHMENTS: usize = 2;

impl Attachment {
    /// The value of type `T`, made by `init` at the first call. Each type has one accessor, the
    /// layer that owns it; a type takes the first slot free when it is first asked for, so the
    /// slots fill in the order the layers first ask (racing layers each get a slot of their own).
    pub(crate) fn get_or_init<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> &T {
        let mut init = Some(init);
        for slot in &self.0 {
            let value = slot.get_or_init(|| Box::new(init.take().map(|f| f()).expect("made once")));
            if let Some(v) = value.downcast_ref() {
                return v;
            }
        }
        panic!("more layers attach values to a node than ATTACHMENTS");
    }
}

/// Marks one call in flight on a node until dropped.
pub struct InFlight(Arc<Node>);

impl InFlight {
    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.total_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The node set at one moment: every stored node (sorted by address, which is what makes every
/// balancer agree on the hash) and which of them are healthy. Never mutated once published.
pub struct Snapshot {
    nodes: Arc<[Arc<Node>]>,
    /// The consistent-hash table over `nodes`; shared between snapshots that differ in health only.
    table: Arc<Table>,
    healthy: Box<[bool]>,
    healthy_count: usize,
    total_in_flight: Arc<AtomicU32>,
}

impl Snapshot {
    pub(crate) fn empty() -> Snapshot {
        Snapshot::new(Arc::from(Vec::new()), Arc::new(Table::build(&[])), Box::new([]), Arc::default())
    }

    /// `total_in_flight` must be the counter every node in `nodes` was created with.
    pub fn new(
        nodes: Arc<[Arc<Node>]>,
        table: Arc<Table>,
        healthy: Box<[bool]>,
        total_in_flight: Arc<AtomicU32>,
    ) -> Snapshot {
        debug_assert_eq!(nodes.len(), healthy.len());
        let healthy_count = healthy.iter().filter(|h| **h).count();
        Snapshot { nodes, table, healthy, healthy_count, total_in_flight }
    }

    /// Calls this balancer has in flight on all nodes.
    pub(crate) fn total_in_flight(&self) -> u32 {
        self.total_in_flight.load(Ordering::Relaxed)
    }

    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    #[cfg(test)]
    pub(crate) fn nodes_arc(&self) -> &Arc<[Arc<Node>]> {
        &self.nodes
    }

    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub(crate) fn is_healthy(&self, i: usize) -> bool {
        self.healthy[i]
    }

    pub(crate) fn healthy_count(&self) -> usize {
        self.healthy_count
    }

    /// A node may take traffic: healthy by its checks and not just seen failing by the proxy.
    pub(crate) fn is_eligible(&self, i: usize) -> bool {
        self.healthy[i] && !self.nodes[i].is_suspect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_layer_gets_its_own_attachment_made_once() {
        let node = Node::new(NodeAddr::parse("127.0.0.1:1").unwrap(), Arc::default());
        let pool: &String = node.attached.get_or_init(|| "pool".to_string());
        let handles: &u64 = node.attached.get_or_init(|| 7);
        assert_eq!((pool.as_str(), *handles), ("pool", 7));
        // Asked again, each type finds its own value; the init is not run.
        let again: &u64 = node.attached.get_or_init(|| unreachable!());
        let pool_again: &String = node.attached.get_or_init(|| unreachable!());
        assert_eq!((pool_again.as_str(), *again), ("pool", 7));
        assert!(std::ptr::eq(pool, pool_again));
    }
}
