//! The default policy: consistent hashing with bounded loads, shaped for functions.
//!
//! Each key walks its own order of nodes (home first) and takes the first node that is not full,
//! so a function stays on its home node while it fits there, and when it outgrows it the excess
//! lands on the key's *second* node, then third — always the same few nodes, which stay warm.
//!
//! "Full" has two parts. A node is never full below its capacity floor (a share of its container
//! slots): at low load a function's calls all stay home, however uneven the keys are — spilling a
//! call to a cold node costs a cold start, which is worse than a little imbalance. Above the floor
//! the bounded-load rule of Mirrokni, Thorup and Zadimoghaddam applies: at most `factor` × the mean
//! load (HAProxy's and Envoy's hash-balance-factor, 1.25). A node that answered 503 (Fn's "server
//! busy") or whose reported queue wait shows it is loaded by other balancers is full for a moment.
//! When every node of a short probe chain is full, the least loaded of them takes the call.
use std::time::Duration;

use http::StatusCode;

use super::Policy;
use crate::node::{Node, Snapshot};

/// Nodes of a key's order looked at before settling for the least loaded of them.
const PROBES: usize = 8;
/// How long a node that said 503 counts as full.
const BUSY_MS: u64 = 250;

pub struct Bounded {
    factor: f64,
    /// This balancer's calls a node takes before the mean-load bound applies at all.
    floor: u32,
    /// A node whose decayed reported wait exceeds this is queueing: treat it as full.
    wait_limit: Duration,
}

impl Bounded {
    /// `capacity`: calls a node runs well; `balancers`: how many balancers share the nodes
    /// (each sees only its own calls, so each may fill only its share of a node).
    pub fn new(factor: f64, capacity: u32, balancers: u32) -> Bounded {
        let share = (capacity as f64 / balancers.max(1) as f64 * FLOOR_SHARE).floor() as u32;
        Bounded { factor, floor: share.max(1), wait_limit: Duration::from_secs(1) }
    }

    /// The most calls a node may have before a new call spills past it.
    fn bound(&self, snap: &Snapshot) -> u32 {
        let healthy = snap.healthy_count().max(1) as f64;
        // +1: the call being placed counts, as in the paper.
        let mean = (snap.total_in_flight() as f64 + 1.0) / healthy;
        ((self.factor * mean).ceil() as u32).max(self.floor)
    }

    fn is_full(&self, node: &Node, bound: u32) -> bool {
        node.in_flight() >= bound || node.is_busy() || node.wait() > self.wait_limit
    }
}

/// The share of a node's capacity one balancer fills before balancing by mean load: half leaves
/// room for the idle warm containers of the node's other functions.
const FLOOR_SHARE: f64 = 0.5;

impl Policy for Bounded {
    fn name(&self) -> &'static str {
        "bounded"
    }

    fn pick(&self, snap: &Snapshot, _key: &[u8], hash: u64, tried: &[usize]) -> Option<usize> {
        if snap.healthy_count() == 0 {
            return None;
        }
        let bound = self.bound(snap);
        let mut least: Option<(usize, u32)> = None;
        let mut probed = 0;
        for i in snap.table().order(hash) {
            if !snap.is_eligible(i) || tried.contains(&i) {
                continue;
            }
            let node = &snap.nodes()[i];
            if !self.is_full(node, bound) {
                return Some(i);
            }
            let load = node.in_flight();
            if least.is_none_or(|(_, l)| load < l) {
                least = Some((i, load));
            }
            probed += 1;
            if probed == PROBES {
                break;
            }
        }
        least.map(|(i, _)| i)
    }

    fn observe(&self, node: &Node, _hash: u64, _wait: Option<Duration>, status: StatusCode) {
        if status == StatusCode::SERVICE_UNAVAILABLE {
            node.mark_busy(BUSY_MS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::testing::{key, snapshot};

    #[test]
    fn unloaded_home_keeps_every_call() {
        let snap = snapshot(8, &[]);
        let p = Bounded::new(1.25, 64, 1);
        let (k, h) = key(3);
        let home = snap.table().home(h).unwrap();
        // 31 calls in flight on the home node alone: under the floor (half of 64), still home,
        // although the mean-load bound alone (1.25 × 32/8 = 5) would have spilled long ago.
        let _calls: Vec<_> = (0..31).map(|_| snap.nodes()[home].start_call()).collect();
        assert_eq!(p.pick(&snap, &k, h, &[]), Some(home));
    }

    #[test]
    fn loaded_home_spills_along_the_keys_own_order() {
        let snap = snapshot(8, &[]);
        let p = Bounded::new(1.25, 64, 1);
        let (k, h) = key(3);
        let order: Vec<usize> = snap.table().order(h).collect();
        let _calls: Vec<_> = (0..32).map(|_| snap.nodes()[order[0]].start_call()).collect();
        assert_eq!(p.pick(&snap, &k, h, &[]), Some(order[1]), "spills to the second choice");
        let _more: Vec<_> = (0..32).map(|_| snap.nodes()[order[1]].start_call()).collect();
        assert_eq!(p.pick(&snap, &k, h, &[]), Some(order[2]), "then the third");
    }

    #[test]
    fn mean_load_bound_applies_above_the_floor() {
        let snap = snapshot(2, &[]);
        let p = Bounded::new(1.25, 8, 1); // floor 4
        let (k, h) = key(5);
        let order: Vec<usize> = snap.table().order(h).collect();
        let _a: Vec<_> = (0..10).map(|_| snap.nodes()[order[0]].start_call()).collect();
        let _b: Vec<_> = (0..6).map(|_| snap.nodes()[order[1]].start_call()).collect();
        // mean = 17/2 = 8.5, bound = ceil(10.6) = 11: home (10) still takes it.
        assert_eq!(p.pick(&snap, &k, h, &[]), Some(order[0]));
        let _c = snap.nodes()[order[0]].start_call();
        let _d = snap.nodes()[order[0]].start_call();
        // home 12, other 6: mean 9.5, bound 12: home is full.
        assert_eq!(p.pick(&snap, &k, h, &[]), Some(order[1]));
    }

    #[test]
    fn all_probes_full_goes_to_the_least_loaded_probe() {
        // 20 nodes; the key's first 8 carry all the load, so each is over 1.25 × the mean.
        let snap = snapshot(20, &[]);
        let p = Bounded::new(1.25, 2, 1); // floor 1
        let (k, h) = key(9);
        let order: Vec<usize> = snap.table().order(h).collect();
        let loads = [30, 28, 31, 29, 30, 33, 32, 34];
        let _calls: Vec<_> = order
            .iter()
            .zip(loads)
            .flat_map(|(i, n)| (0..n).map(|_| snap.nodes()[*i].start_call()).collect::<Vec<_>>())
            .collect();
        assert_eq!(p.pick(&snap, &k, h, &[]), Some(order[1]));
    }

    #[test]
    fn a_node_that_said_busy_is_passed_over() {
        let snap = snapshot(4, &[]);
        let p = Bounded::new(1.25, 64, 1);
        let (k, h) = key(2);
        let order: Vec<usize> = snap.table().order(h).collect();
        p.observe(&snap.nodes()[order[0]], h, None, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(p.pick(&snap, &k, h, &[]), Some(order[1]));
        p.observe(&snap.nodes()[order[1]], h, None, StatusCode::OK);
        assert_eq!(p.pick(&snap, &k, h, &[]), Some(order[1]));
    }

    #[test]
    fn one_cold_start_does_not_mark_a_node_loaded() {
        let snap = snapshot(4, &[]);
        let p = Bounded::new(1.25, 64, 1);
        let (k, h) = key(2);
        let home = snap.table().home(h).unwrap();
        // A 2 s cold start reported by the home node: the decayed wait starts at zero and moves
        // an eighth of the way.
        snap.nodes()[home].observe_wait(Duration::from_secs(2));
        assert_eq!(p.pick(&snap, &k, h, &[]), Some(home));
    }

    #[test]
    fn floor_scales_with_the_number_of_balancers() {
        assert_eq!(Bounded::new(1.25, 64, 1).floor, 32);
        assert_eq!(Bounded::new(1.25, 64, 3).floor, 10);
        assert_eq!(Bounded::new(1.25, 1, 8).floor, 1);
    }

    #[test]
    fn keys_with_unloaded_homes_never_leave_them() {
        // Property over many keys: with every node under the floor, pick == home.
        let snap = snapshot(8, &[]);
        let p = Bounded::new(1.25, 64, 1);
        for i in 0..2000 {
            let (k, h) = key(i);
            assert_eq!(p.pick(&snap, &k, h, &[]), snap.table().home(h));
        }
    }
}
