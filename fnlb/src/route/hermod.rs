//! `hermod`: the load balancing of Hermod (Kaffes et al., "Hermod: principled and practical
//! scheduling for serverless functions", SoCC 2022), from the paper's description, as a
//! contender.
//!
//! Hermod's finding is that no one rule wins at every load: at low load, *packing* (sending a
//! function's calls to few machines, where it is warm, until they are full) consolidates and
//! avoids cold starts; at high load, *least-loaded* balancing keeps queues short. It switches
//! between the two by the cluster's load, and binds each call early (to a node's queue, which
//! the node serves in processor sharing; Fn nodes queue calls themselves).
//! - The cluster's load: this balancer's calls in flight over its share of the healthy nodes'
//!   slots (`-node-capacity` ÷ the live balancer count, per node).
//! - Under [`HIGH_LOAD`]: among the first [`EARLY`] nodes of the key's order (the few nodes a
//!   function is bound to), the least loaded where the function has an idle container (by the
//!   same warmth estimate as `bounded`, [`super::warmth`]) and a free slot; else the first of them
//!   with a free slot (packing); else the least loaded of them.
//! - At or over it: power of two choices over every eligible node.
use super::warmth::Warmth;
use super::{Balancers, Policy, Rng};
use crate::clock;
use crate::node::{Node, Snapshot};

/// Nodes of a key's order a function packs onto at low load.
pub(crate) const EARLY: usize = 4;
/// The cluster load at which Hermod switches from packing to least-loaded.
pub(crate) const HIGH_LOAD: f64 = 0.5;
/// The nodes' idle timeout (Fn's default).
const IDLE_TIMEOUT_MS: u64 = 30_000;

pub(crate) struct Hermod {
    capacity: u32,
    balancers: Balancers,
    warmth: Warmth,
    rng: Rng,
}

impl Hermod {
    pub(crate) fn new(capacity: u32, balancers: impl Into<Balancers>) -> Hermod {
        Hermod {
            capacity,
            balancers: balancers.into(),
            warmth: Warmth::for_cluster(capacity, IDLE_TIMEOUT_MS),
            rng: Rng::new(0x3c6e_f372_fe94_f82b),
        }
    }

    fn pack(&self, snap: &Snapshot, hash: u64, tried: &[usize], share: u32) -> Option<usize> {
        let warmth = self.warmth.view();
        // (node, its load): the least loaded warm one, the first with a free slot, the least loaded.
        let mut warm: Option<(usize, u32)> = None;
        let mut first_free: Option<usize> = None;
        let mut least: Option<(usize, u32)> = None;
        let eligible = snap.table().order(hash).filter(|i| snap.is_eligible(*i) && !tried.contains(i));
        for i in eligible.take(EARLY) {
            let load = snap.nodes()[i].in_flight();
            if load < share {
                if warmth.get(hash, &snap.nodes()[i]).has_idle() && warm.is_none_or(|(_, l)| load < l) {
                    warm = Some((i, load));
                }
                first_free.get_or_insert(i);
            }
            if least.is_none_or(|(_, l)| load < l) {
                least = Some((i, load));
            }
        }
        warm.map(|(i, _)| i).or(first_free).or(least.map(|(i, _)| i))
    }

    fn least_loaded(&self, snap: &Snapshot, tried: &[usize]) -> Option<usize> {
        super::spread::two_choices(snap, tried, self.rng.next())
    }
}

impl Policy for Hermod {
    fn name(&self) -> &'static str {
        "hermod"
    }

    fn choose(&self, snap: &Snapshot, hash: u64, tried: &[usize]) -> Option<usize> {
        if snap.healthy_count() == 0 {
            return None;
        }
        let now = clock::now_ms();
        self.warmth.tick(snap, now);
        let share = (self.capacity / self.balancers.get()).max(1);
        let load = f64::from(snap.total_in_flight()) / (snap.healthy_count() as f64 * f64::from(share));
        let i = if load < HIGH_LOAD { self.pack(snap, hash, tried, share) } else { self.least_loaded(snap, tried) }?;
        self.warmth.start(hash, &snap.nodes()[i], now);
        Some(i)
    }

    fn observe(&self, node: &Node, hash: u64, _wait: Option<std::time::Duration>, _status: http::StatusCode) {
        self.warmth.finish(hash, node, clock::now_ms());
    }

    fn abandon(&self, node: &Node, hash: u64) {
        self.warmth.finish(hash, node, clock::now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::testing::{key, snapshot};

    fn load(snap: &Snapshot, i: usize, n: usize) -> Vec<crate::node::InFlight> {
        (0..n).map(|_| snap.nodes()[i].start_call()).collect()
    }

    #[test]
    fn at_low_load_it_packs_along_the_keys_order() {
        let snap = snapshot(8, &[]);
        let p = Hermod::new(8, 1);
        let (_, h) = key(6);
        let order: Vec<usize> = snap.table().order(h).collect();
        assert_eq!(p.choose(&snap, h, &[]), Some(order[0]));
        p.abandon(&snap.nodes()[order[0]], h);
        // The first node full (8 of 8), the cluster at 8/64: the next node of the order.
        let _full = load(&snap, order[0], 8);
        assert_eq!(p.choose(&snap, h, &[]), Some(order[1]));
    }

    #[test]
    fn at_low_load_a_warm_node_wins_over_an_idler_cold_one() {
        let snap = snapshot(8, &[]);
        let p = Hermod::new(8, 1);
        let (_, h) = key(6);
        let order: Vec<usize> = snap.table().order(h).collect();
        // The function ran on the third node of its order (and finished): warm there.
        p.warmth.start(h, &snap.nodes()[order[2]], clock::now_ms());
        p.warmth.finish(h, &snap.nodes()[order[2]], clock::now_ms());
        let _busier = load(&snap, order[2], 3);
        assert_eq!(p.choose(&snap, h, &[]), Some(order[2]), "warm, with a free slot");
        // Full there: packing again, on the first node with a free slot.
        let _full = load(&snap, order[2], 5);
        assert_eq!(p.choose(&snap, h, &[]), Some(order[0]));
    }

    #[test]
    fn at_high_load_it_takes_the_less_loaded_of_two() {
        let snap = snapshot(4, &[]);
        let p = Hermod::new(8, 1);
        // Cluster load 17/32 ≥ 0.5: least-loaded. Node 3 idle, the others loaded.
        let _a = load(&snap, 0, 6);
        let _b = load(&snap, 1, 6);
        let _c = load(&snap, 2, 5);
        let (_, h) = key(6);
        let picks: Vec<usize> = (0..200).map(|_| p.choose(&snap, h, &[]).unwrap()).collect();
        // Node 3 wins whenever it is drawn, and a loaded node only against another loaded one.
        let idle = picks.iter().filter(|i| **i == 3).count();
        assert!(idle > 60, "idle node picked {idle}/200");
        // Same key, same cluster, but at low load: packing keeps it on its order's first node.
        let quiet = snapshot(4, &[]);
        let order0 = quiet.table().home(h).unwrap();
        assert!((0..20).all(|_| p.choose(&quiet, h, &[]) == Some(order0)));
    }
}
