//! `openwhisk`: Apache OpenWhisk's ShardingContainerPoolBalancer, from its description (the
//! controller's scaladoc and the OpenWhisk papers), as a contender.
//!
//! - A function's *home* invoker is its hash modulo the number of invokers (all of them, healthy
//!   or not: a plain modulo, so a change of the node count moves most functions).
//! - Its *step size* is one of the numbers coprime to the number of invokers (and to each other),
//!   chosen by the same hash: walking home, home + step, home + 2·step, … (mod n) visits every
//!   invoker once, and functions with the same home walk different paths.
//! - Each controller owns a share of every invoker's slots: its capacity divided by the number of
//!   controllers (here: `-node-capacity` ÷ the live balancer count, at least one slot). The walk
//!   takes the first healthy invoker with a free slot in this balancer's share (its calls in
//!   flight there below the share).
//! - When every invoker is full, a random healthy one takes the call (overloading it).
//!
//! It knows nothing of warmth beyond the home: a function stays warm as long as its home has a
//! free slot, and spills along its step walk otherwise.
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::{Balancers, Policy, Rng};
use crate::node::Snapshot;

pub(crate) struct OpenWhisk {
    capacity: u32,
    balancers: Balancers,
    /// The step sizes for the last node count seen (computed when the count changes).
    steps: ArcSwapOption<Steps>,
    rng: Rng,
}

struct Steps {
    n: usize,
    sizes: Box<[usize]>,
}

/// The numbers in 1..=n that are coprime to n and to every smaller one chosen before (so
/// 1, then primes that do not divide n, and the like): OpenWhisk's step sizes for n invokers.
pub(crate) fn step_sizes(n: usize) -> Vec<usize> {
    fn gcd(mut a: usize, mut b: usize) -> usize {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }
    let mut sizes: Vec<usize> = Vec::new();
    for k in 1..=n.max(1) {
        if gcd(k, n) == 1 && sizes.iter().all(|s| gcd(*s, k) == 1) {
            sizes.push(k);
        }
    }
    sizes
}

impl OpenWhisk {
    pub(crate) fn new(capacity: u32, balancers: impl Into<Balancers>) -> OpenWhisk {
        OpenWhisk {
            capacity,
            balancers: balancers.into(),
            steps: ArcSwapOption::empty(),
            rng: Rng::new(0x6a09_e667_f3bc_c908),
        }
    }

    /// This balancer's slots on each node.
    fn share(&self) -> u32 {
        (self.capacity / self.balancers.get()).max(1)
    }

    fn step(&self, n: usize, hash: u64) -> usize {
        let cached = self.steps.load();
        let steps = match cached.as_ref() {
            Some(s) if s.n == n => Arc::clone(s),
            _ => {
                // A membership change: computed once, O(n²) at worst in the count of candidates.
                let s = Arc::new(Steps { n, sizes: step_sizes(n).into() });
                self.steps.store(Some(Arc::clone(&s)));
                s
            }
        };
        steps.sizes[(hash % steps.sizes.len() as u64) as usize]
    }
}

impl Policy for OpenWhisk {
    fn name(&self) -> &'static str {
        "openwhisk"
    }

    fn choose(&self, snap: &Snapshot, hash: u64, tried: &[usize]) -> Option<usize> {
        let n = snap.len();
        if snap.healthy_count() == 0 || n == 0 {
            return None;
        }
        let ok = |i: usize| snap.is_eligible(i) && !tried.contains(&i);
        let share = self.share();
        let home = (hash % n as u64) as usize;
        let step = self.step(n, hash);
        let mut i = home;
        for _ in 0..n {
            if ok(i) && snap.nodes()[i].in_flight() < share {
                return Some(i);
            }
            i = (i + step) % n;
        }
        // Every invoker is full: a random healthy one (walking on from a random start).
        let r = self.rng.next() as usize;
        (0..n).map(|k| (r + k) % n).find(|i| ok(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::testing::{key, snapshot};

    #[test]
    fn step_sizes_are_coprime_to_the_node_count() {
        assert_eq!(step_sizes(1), vec![1]);
        assert_eq!(step_sizes(8), vec![1, 3, 5, 7]);
        assert_eq!(step_sizes(10), vec![1, 3, 7]); // 9 shares a factor with 3
        assert_eq!(step_sizes(12), vec![1, 5, 7, 11]);
        // Each step size walks every node once.
        for n in [5usize, 8, 12, 30] {
            for step in step_sizes(n) {
                let mut seen: Vec<usize> = (0..n).map(|k| k * step % n).collect();
                seen.sort();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n {n} step {step}");
            }
        }
    }

    /// The node order the policy walks for a key on `n` nodes.
    fn walk(n: usize, h: u64) -> Vec<usize> {
        let sizes = step_sizes(n);
        let step = sizes[(h % sizes.len() as u64) as usize];
        (0..n).map(|k| ((h % n as u64) as usize + k * step) % n).collect()
    }

    #[test]
    fn home_by_hash_then_the_step_walk_past_full_shares() {
        let snap = snapshot(8, &[]);
        let p = OpenWhisk::new(4, 1); // four slots a node for this balancer
        let (_, h) = key(11);
        let w = walk(8, h);
        assert_eq!(p.choose(&snap, h, &[]), Some(w[0]));
        let _home: Vec<_> = (0..4).map(|_| snap.nodes()[w[0]].start_call()).collect();
        assert_eq!(p.choose(&snap, h, &[]), Some(w[1]), "home full: one step on");
        let _next: Vec<_> = (0..4).map(|_| snap.nodes()[w[1]].start_call()).collect();
        assert_eq!(p.choose(&snap, h, &[]), Some(w[2]));
        // A tried or unhealthy invoker is passed over like a full one.
        assert_eq!(p.choose(&snap, h, &[w[2]]), Some(w[3]));
    }

    #[test]
    fn the_share_follows_the_live_balancer_count() {
        let snap = snapshot(4, &[]);
        let count = Balancers::new(1);
        let p = OpenWhisk::new(8, count.clone());
        let (_, h) = key(2);
        let w = walk(4, h);
        let _calls: Vec<_> = (0..3).map(|_| snap.nodes()[w[0]].start_call()).collect();
        assert_eq!(p.choose(&snap, h, &[]), Some(w[0]), "3 of 8 slots");
        count.set(4);
        assert_eq!(p.choose(&snap, h, &[]), Some(w[1]), "3 of 2 slots");
    }

    #[test]
    fn all_full_goes_to_a_random_healthy_node() {
        let snap = snapshot(4, &[true, false, true, true]);
        let p = OpenWhisk::new(1, 1);
        let _calls: Vec<_> = snap.nodes().iter().map(crate::node::Node::start_call).collect();
        let (_, h) = key(5);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(p.choose(&snap, h, &[]).unwrap());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 2, 3]);
    }
}
