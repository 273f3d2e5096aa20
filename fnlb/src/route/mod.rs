//! Routing: the key of a request, the consistent order of nodes for a key ([`table`]), and the
//! policies that pick one node of a [`Snapshot`]. Policies are pure over the snapshot plus the
//! per-node load counters; they never block and never allocate on the common path.
pub mod goduration;
pub mod table;

use std::time::Duration;

use crate::node::{Node, Snapshot};

/// A routing policy: where a call for a key goes, given the nodes now and what they reported.
pub trait Policy: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Picks an eligible node for the key, skipping the ones in `tried` (earlier attempts of the
    /// same call). `None`: no node can take it.
    fn pick(&self, snap: &Snapshot, key: &[u8], hash: u64, tried: &[usize]) -> Option<usize>;

    /// A node answered a call for the key with this status, reporting this queue wait (if it
    /// said one). A 503 is Fn's "server busy".
    fn observe(&self, _node: &Node, _hash: u64, _wait: Option<Duration>, _status: http::StatusCode) {}
}

/// Plain consistent hashing: the first eligible node in the key's order. A node that is down
/// hands its keys to their next choices; every other key stays where it is hot.
pub struct ConsistentHash;

impl Policy for ConsistentHash {
    fn name(&self) -> &'static str {
        "ch"
    }

    fn pick(&self, snap: &Snapshot, _key: &[u8], hash: u64, tried: &[usize]) -> Option<usize> {
        first_eligible(snap, hash, tried)
    }
}

/// The first node in the key's order that may take traffic and was not tried yet.
pub fn first_eligible(snap: &Snapshot, hash: u64, tried: &[usize]) -> Option<usize> {
    if snap.healthy_count() == 0 {
        return None;
    }
    snap.table().order(hash).find(|i| snap.is_eligible(*i) && !tried.contains(i))
}

/// Builds the policy named on the command line.
pub fn policy_by_name(name: &str) -> Option<Box<dyn Policy>> {
    match name {
        "ch" | "bounded" => Some(Box::new(ConsistentHash)),
        _ => None,
    }
}
