//! `ch-rlu`: consistent hashing with random load updates (Fuerst & Sharma, "Locality-aware
//! load-balancing for serverless clusters", HPDC 2022), from the paper's description, as a
//! contender.
//!
//! - A function's calls go to its home on the ring (here: the first node of its key's order) as
//!   long as the home is not overloaded: its load under a threshold (here: this balancer's calls
//!   in flight below its share of the node's slots, `-node-capacity` ÷ the live balancer count).
//!   An overloaded home passes the call along the ring, bounded-loads style, to the first node
//!   that is not overloaded (the least loaded of the first [`PROBES`] when all are).
//! - *Popular* functions may use up to [`POPULAR_CHAIN`] ring nodes. Their load check is
//!   randomised, as the paper's random load updates are: a node's load is taken with up to
//!   [`NOISE`] more added at random, so a popular function's calls start to spread over its
//!   chain before its home is quite full instead of herding there until it overflows. When no
//!   node of the chain passes, the least loaded of it takes the call.
//! - Popularity is detected online and bounded in memory (the paper samples reuse distances à la
//!   SHARDS): a count-min sketch of calls per function, halved every [`DECAY_MS`]. A function is
//!   popular when its share of recent calls is at least one in a node's slots — a reuse distance
//!   under a node's container count, so an LRU node keeps it warm.
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use super::{Balancers, Policy, Rng};
use crate::clock;
use crate::node::Snapshot;
use crate::route::sketch::CountMin;

/// Ring nodes a popular function may use.
pub(crate) const POPULAR_CHAIN: usize = 3;
/// Ring nodes an unpopular function's overloaded home may pass its call to.
pub(crate) const PROBES: usize = 8;
/// The randomised load check adds up to this share of the node's load.
pub(crate) const NOISE: f64 = 0.5;
/// The popularity counts halve this often (the paper's popularity window).
pub(crate) const DECAY_MS: u64 = 10_000;
/// Calls seen before any function counts as popular (the first calls say nothing).
const MIN_CALLS: u64 = 64;

pub(crate) struct ChRlu {
    capacity: u32,
    balancers: Balancers,
    popularity: CountMin,
    next_decay_ms: AtomicU64,
    rng: Rng,
}

impl ChRlu {
    pub(crate) fn new(capacity: u32, balancers: impl Into<Balancers>) -> ChRlu {
        ChRlu {
            capacity,
            balancers: balancers.into(),
            popularity: CountMin::new(),
            next_decay_ms: AtomicU64::new(0),
            rng: Rng::new(0xbb67_ae85_84ca_a73b),
        }
    }

    /// This balancer's share of a node's slots: at or over it, a node is overloaded.
    fn threshold(&self) -> u32 {
        (self.capacity / self.balancers.get()).max(1)
    }

    /// Counts the call; whether its function is popular.
    fn popular(&self, hash: u64, now_ms: u64) -> bool {
        let next = self.next_decay_ms.load(Relaxed);
        if now_ms >= next
            && self.next_decay_ms.compare_exchange(next, now_ms + DECAY_MS, Relaxed, Relaxed).is_ok()
            && next != 0
        {
            self.popularity.halve();
        }
        let (count, total) = self.popularity.add(hash);
        total >= MIN_CALLS && count.saturating_mul(u64::from(self.capacity.max(1))) >= total
    }

    /// The randomised load check: the load with up to [`NOISE`] of it added.
    fn passes(&self, load: u32, threshold: u32) -> bool {
        let r = (self.rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        f64::from(load) * (1.0 + NOISE * r) < f64::from(threshold)
    }
}

impl Policy for ChRlu {
    fn name(&self) -> &'static str {
        "ch-rlu"
    }

    fn choose(&self, snap: &Snapshot, hash: u64, tried: &[usize]) -> Option<usize> {
        if snap.healthy_count() == 0 {
            return None;
        }
        let popular = self.popular(hash, clock::now_ms());
        let threshold = self.threshold();
        let (limit, chain) = if popular { (POPULAR_CHAIN, true) } else { (PROBES, false) };
        let mut least: Option<(usize, u32)> = None;
        let eligible = snap.table().order(hash).filter(|i| snap.is_eligible(*i) && !tried.contains(i));
        for i in eligible.take(limit) {
            let load = snap.nodes()[i].in_flight();
            let ok = if chain { self.passes(load, threshold) } else { load < threshold };
            if ok {
                return Some(i);
            }
            if least.is_none_or(|(_, l)| load < l) {
                least = Some((i, load));
            }
        }
        least.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::testing::{key, snapshot};

    /// `n` calls in flight on node `i`.
    fn load(snap: &Snapshot, i: usize, n: usize) -> Vec<crate::node::InFlight> {
        (0..n).map(|_| snap.nodes()[i].start_call()).collect()
    }

    #[test]
    fn an_unpopular_function_stays_home_until_it_is_overloaded() {
        let snap = snapshot(8, &[]);
        let p = ChRlu::new(8, 1);
        let (_, h) = key(4);
        let order: Vec<usize> = snap.table().order(h).collect();
        let _home = load(&snap, order[0], 7);
        // Seven of eight slots: the home still takes every call (no randomness for it).
        assert!((0..50).all(|_| p.choose(&snap, h, &[]) == Some(order[0])));
        let _one_more = load(&snap, order[0], 1);
        assert_eq!(p.choose(&snap, h, &[]), Some(order[1]));
        // Past the first three ring nodes too, as bounded loads would.
        let _b = load(&snap, order[1], 8);
        let _c = load(&snap, order[2], 8);
        assert_eq!(p.choose(&snap, h, &[]), Some(order[3]));
    }

    #[test]
    fn a_popular_function_spreads_over_three_ring_nodes_and_no_further() {
        let snap = snapshot(8, &[]);
        let p = ChRlu::new(8, 1);
        let (_, hot) = key(1);
        let order: Vec<usize> = snap.table().order(hot).collect();
        // Half the recent calls are the hot function's: popular (1 in 2 ≥ 1 in 8).
        for i in 0..200 {
            let (_, h) = key(1000 + i);
            p.popularity.add(h);
            p.popularity.add(hot);
        }
        assert!(p.popular(hot, 1));
        let (_, cold) = key(999_999);
        assert!(!p.popular(cold, 1));
        // The home at 6 of 8: the randomised check sends some calls on to the second and third.
        let _home = load(&snap, order[0], 6);
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..300 {
            *seen.entry(p.choose(&snap, hot, &[]).unwrap()).or_insert(0) += 1;
        }
        assert!(seen[&order[0]] > 30 && seen[&order[0]] < 270, "{seen:?}");
        assert!(seen.keys().all(|i| order[..3].contains(i)), "only the chain: {seen:?}");
        // The whole chain overloaded: the least loaded of the three, never a fourth node.
        let _b = load(&snap, order[1], 9);
        let _c = load(&snap, order[2], 10);
        assert_eq!(p.choose(&snap, hot, &[]), Some(order[0]));
    }

    #[test]
    fn popularity_fades() {
        let p = ChRlu::new(8, 1);
        let (_, hot) = key(1);
        for i in 0..100 {
            p.popularity.add(key(2000 + i).1);
            p.popularity.add(hot);
        }
        assert!(p.popular(hot, 1));
        // Other functions' calls only, over a few windows: the hot one's count halves each time.
        let mut now = 1;
        for w in 0..6 {
            now += DECAY_MS;
            for i in 0..100 {
                p.popular(key(3000 + i + 100 * w).1, now);
            }
        }
        assert!(!p.popular(hot, now));
    }
}
