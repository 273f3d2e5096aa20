//! The default policy: consistent hashing with bounded loads, shaped for functions.
//!
//! Each key walks its own order of nodes (home first) and takes the first node that can take the
//! call, so a function stays on its home node while it fits there, and when it outgrows it the
//! excess lands on the key's *second* node, then third — always the same few nodes, which stay
//! warm.
//!
//! What a node can take depends on whether the call would be warm there. The policy keeps, per
//! (function, node), its calls in flight and an estimate of the containers the function holds
//! there, and per node the sum of those estimates: its slots' footprint, idle containers
//! included ([`super::warmth`]).
//! - A node where the function probably has an idle container takes the call while it has
//!   calls to spare (fewer in flight than its capacity): the call is warm and needs no slot.
//! - A call that needs a new container goes to a node with room for one — a footprint under the
//!   node's capacity, so nothing is evicted — and under the load bound. The load bound has two
//!   parts. A node is never full below its capacity floor (a share of its container slots): at
//!   low load a function's calls all stay home, however uneven the keys are. Above the floor the
//!   bounded-load rule of Mirrokni, Thorup and Zadimoghaddam applies: at most `factor` × the mean
//!   load (HAProxy's and Envoy's hash-balance-factor, 1.25).
//!
//! Counting only calls in flight, a home node at the floor still held the idle containers of
//! its other functions; a hot function's excess evicted them and every one came back cold.
//! Counting containers, the excess spills before it evicts, and a function goes back to the
//! nodes where it is warm.
//!
//! A node that answered 503 (Fn's "server busy") or whose reported queue wait shows it is
//! loaded by other balancers is full for a moment. When every node of a short probe chain is
//! full, the least loaded of them takes the call.
use std::time::Duration;

use http::StatusCode;

use super::warmth::{Slots, Warmth};
use super::{Balancers, Placement, Policy};
use crate::clock;
use crate::node::{Node, Snapshot};

/// How long a node that said 503 counts as full.
const BUSY_MS: u64 = 250;

/// The policy's knobs. `Tuning::default()` holds the defaults (chosen with `examples/routesim.rs`
/// over seeds 1–3 at ρ 0.3 and 0.45, steady, bursty and multi-lb; see docs/BENCHMARKS.md §1);
/// the simulator varies them.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Use the warmth table ([`super::warmth`]); `false` is the rule before it (calls in flight
    /// only), kept for comparison.
    pub warm: bool,
    /// A call that needs a new container goes to a node while the estimate of its containers is
    /// below this share of its capacity. Not divided among balancers: each one counts whole the
    /// containers of the functions it calls on the node, though the others' calls reuse them.
    pub cap_share: f64,
    /// A node where the function is warm takes its call while its calls in flight are below
    /// this share of this balancer's part of the capacity.
    pub warm_share: f64,
    /// A call that needs a new container also needs the node under the load bound.
    pub cold_bound: bool,
    /// The share of this balancer's part of a node's capacity below which a node is never
    /// loaded: half leaves room for the idle warm containers of the node's other functions.
    pub floor_share: f64,
    /// Nodes of a key's order looked at before settling for the least loaded of them.
    pub probes: usize,
    /// Entries of the warmth table: 0 sizes it to the cluster (nodes × capacity, resized when
    /// the node count changes); another number fixes it (the table before was 4,096).
    pub entries: usize,
    /// A reported wait that is a cold start, on a call sent expecting an idle container, caps
    /// the function's estimate on the node at what runs there ([`Warmth::cold_seen`]): the node
    /// had evicted its idle containers. On with `-late-binding` (see `route::policy_by_name`).
    pub forget: bool,
}

/// A reported wait at least this long is a cold start (a warm call reports about 0).
const COLD_WAIT: Duration = Duration::from_millis(50);

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            warm: true,
            cap_share: 1.0,
            warm_share: 1.0,
            cold_bound: true,
            floor_share: 0.5,
            probes: 8,
            entries: 0,
            forget: false,
        }
    }
}

/// The nodes' idle timeout (Fn's default).
const IDLE_TIMEOUT_MS: u64 = 30_000;

pub struct Bounded {
    factor: f64,
    /// Calls a node runs well (`-node-capacity`).
    capacity: u32,
    /// How many balancers share the nodes, read at every pick: each may fill only its share.
    balancers: Balancers,
    /// A node whose decayed reported wait exceeds this is queueing: treat it as full.
    wait_limit: Duration,
    tuning: Tuning,
    /// Containers (this balancer's estimate) a node may hold before a cold call spills.
    cap: u32,
    warmth: Warmth,
}

/// This balancer's part of a node, for the balancer count of the moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shares {
    /// This balancer's calls a node takes before the mean-load bound applies at all.
    floor: u32,
    /// Calls in flight a node may have and still take a warm call.
    warm_cap: u32,
}

impl Bounded {
    /// `capacity`: calls a node runs well; `balancers`: how many balancers share the nodes
    /// (each sees only its own calls, so each may fill only its share of a node), a live count
    /// another module may change at any time. The default knobs (the tests; `-policy bounded`
    /// sets `forget` from `-late-binding` through [`Bounded::with_tuning`]).
    #[cfg(test)]
    pub(crate) fn new(factor: f64, capacity: u32, balancers: impl Into<Balancers>) -> Bounded {
        Bounded::with_tuning(factor, capacity, balancers, Tuning::default())
    }

    pub fn with_tuning(factor: f64, capacity: u32, balancers: impl Into<Balancers>, tuning: Tuning) -> Bounded {
        let warmth = match tuning.entries {
            0 => Warmth::for_cluster(capacity, IDLE_TIMEOUT_MS),
            n => Warmth::fixed(n, IDLE_TIMEOUT_MS),
        };
        Bounded {
            factor,
            capacity,
            balancers: balancers.into(),
            wait_limit: Duration::from_secs(1),
            tuning,
            cap: ((f64::from(capacity) * tuning.cap_share).floor() as u32).max(1),
            warmth,
        }
    }

    /// One relaxed load and a division: cheap enough for every pick, so a change of the balancer
    /// count applies to the next call.
    fn shares(&self) -> Shares {
        let per_lb = f64::from(self.capacity) / f64::from(self.balancers.get());
        Shares {
            floor: ((per_lb * self.tuning.floor_share).floor() as u32).max(1),
            warm_cap: ((per_lb * self.tuning.warm_share).floor() as u32).max(1),
        }
    }

    /// The most calls a node may have before a new call spills past it.
    fn bound(&self, snap: &Snapshot, floor: u32) -> u32 {
        mean_bound(snap, self.factor).max(floor)
    }

    fn is_full(&self, node: &Node, bound: u32) -> bool {
        node.in_flight() >= bound || node.is_busy() || node.wait() > self.wait_limit
    }

    /// The first node of the key's order that can take the call: one where the function has
    /// an idle container and calls to spare, or one with room for a new container under the
    /// load bound; else the least loaded of the probes.
    fn pick_warm(&self, snap: &Snapshot, hash: u64, tried: &[usize], now: u64) -> Option<usize> {
        // One guard for the walk and the count (each load of the table is a locked write).
        let slots = self.warmth.ticked(snap, now);
        let i = match self.scan(&slots, snap, hash, tried)? {
            Placement::Go(i) | Placement::Room(i) | Placement::Full(i) => i,
        };
        slots.start(hash, &snap.nodes()[i], now);
        Some(i)
    }

    /// [`pick_warm`](Self::pick_warm)'s walk over `slots` (the warmth table, after its
    /// [`tick`](Warmth::tick)), counting nothing: the first node that can take the call (warm:
    /// [`Placement::Go`]; in a new container: [`Placement::Room`]), or [`Placement::Full`] with
    /// the least loaded probe.
    fn scan(&self, slots: &Slots, snap: &Snapshot, hash: u64, tried: &[usize]) -> Option<Placement> {
        let shares = self.shares();
        let bound = self.bound(snap, shares.floor);
        let mut least: Option<(usize, u32)> = None;
        let mut probed = 0;
        let mut chosen = None;
        for i in snap.table().order(hash) {
            if !snap.is_eligible(i) || tried.contains(&i) {
                continue;
            }
            let node = &snap.nodes()[i];
            let load = node.in_flight();
            if !node.is_busy() && node.wait() <= self.wait_limit {
                let warm = load < shares.warm_cap && slots.get(hash, node).has_idle();
                let room = node.containers() < self.cap && (!self.tuning.cold_bound || load < bound);
                if warm || room {
                    chosen = Some(if warm { Placement::Go(i) } else { Placement::Room(i) });
                    break;
                }
            }
            if least.is_none_or(|(_, l)| load < l) {
                least = Some((i, load));
            }
            probed += 1;
            if probed == self.tuning.probes {
                break;
            }
        }
        chosen.or(least.map(|(i, _)| Placement::Full(i)))
    }

    /// The rule before the warmth table: the first node under the load bound.
    fn pick_by_load(&self, snap: &Snapshot, hash: u64, tried: &[usize]) -> Option<usize> {
        let bound = self.bound(snap, self.shares().floor);
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
            if probed == self.tuning.probes {
                break;
            }
        }
        least.map(|(i, _)| i)
    }
}

impl Bounded {
    /// [`Policy::choose`] at `now_ms` on the policy clock (tests drive time themselves).
    fn choose_at(&self, snap: &Snapshot, hash: u64, tried: &[usize], now_ms: u64) -> Option<usize> {
        if snap.healthy_count() == 0 {
            return None;
        }
        if self.tuning.warm {
            self.pick_warm(snap, hash, tried, now_ms)
        } else {
            self.pick_by_load(snap, hash, tried)
        }
    }
}

/// The bounded-load rule's bound (Mirrokni, Thorup and Zadimoghaddam): `factor` × the mean calls
/// in flight per healthy node, the call being placed included.
pub(crate) fn mean_bound(snap: &Snapshot, factor: f64) -> u32 {
    let healthy = snap.healthy_count().max(1) as f64;
    // +1: the call being placed counts, as in the paper.
    let mean = (f64::from(snap.total_in_flight()) + 1.0) / healthy;
    (factor * mean).ceil() as u32
}

impl Policy for Bounded {
    fn name(&self) -> &'static str {
        "bounded"
    }

    fn choose(&self, snap: &Snapshot, hash: u64, tried: &[usize]) -> Option<usize> {
        self.choose_at(snap, hash, tried, clock::now_ms())
    }

    fn observe(&self, node: &Node, hash: u64, wait: Option<Duration>, status: StatusCode) {
        if self.tuning.warm {
            let slots = self.warmth.view();
            slots.finish(hash, node, clock::now_ms());
            if self.tuning.forget && wait.is_some_and(|w| w >= COLD_WAIT) {
                slots.cold_seen(hash, node);
            }
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            node.mark_busy(BUSY_MS);
        }
    }

    fn abandon(&self, node: &Node, hash: u64) {
        if self.tuning.warm {
            self.warmth.finish(hash, node, clock::now_ms());
        }
    }

    /// Late binding: [`Placement::Full`] when every probe is full, counting nothing until the
    /// call is [`commit`](Policy::commit)ted to a node.
    fn place(&self, snap: &Snapshot, hash: u64, tried: &[usize]) -> Option<Placement> {
        if snap.healthy_count() == 0 {
            return None;
        }
        if self.tuning.warm {
            self.scan(&self.warmth.ticked(snap, clock::now_ms()), snap, hash, tried)
        } else {
            self.pick_by_load(snap, hash, tried).map(Placement::Go)
        }
    }

    fn commit(&self, snap: &Snapshot, hash: u64, index: usize) {
        if self.tuning.warm {
            self.warmth.start(hash, &snap.nodes()[index], clock::now_ms());
        }
    }

    fn warmth(&self) -> Option<&Warmth> {
        self.tuning.warm.then_some(&self.warmth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::InFlight;
    use crate::route::testing::{key, snapshot};

    #[test]
    fn unloaded_home_keeps_every_call() {
        let snap = snapshot(8, &[]);
        let p = Bounded::new(1.25, 64, 1);
        let (_, h) = key(3);
        let home = snap.table().home(h).unwrap();
        // 31 calls in flight on the home node alone: under the floor (half of 64), still home,
        // although the mean-load bound alone (1.25 × 32/8 = 5) would have spilled long ago.
        let _calls: Vec<_> = (0..31).map(|_| snap.nodes()[home].start_call()).collect();
        assert_eq!(p.choose(&snap, h, &[]), Some(home));
    }

    #[test]
    fn loaded_home_spills_along_the_keys_own_order() {
        let snap = snapshot(8, &[]);
        let p = Bounded::new(1.25, 64, 1);
        let (_, h) = key(3);
        let order: Vec<usize> = snap.table().order(h).collect();
        let _calls: Vec<_> = (0..32).map(|_| snap.nodes()[order[0]].start_call()).collect();
        assert_eq!(p.choose(&snap, h, &[]), Some(order[1]), "spills to the second choice");
        let _more: Vec<_> = (0..32).map(|_| snap.nodes()[order[1]].start_call()).collect();
        assert_eq!(p.choose(&snap, h, &[]), Some(order[2]), "then the third");
    }

    #[test]
    fn mean_load_bound_applies_above_the_floor() {
        let snap = snapshot(2, &[]);
        let p = Bounded::new(1.25, 8, 1); // floor 4
        let (_, h) = key(5);
        let order: Vec<usize> = snap.table().order(h).collect();
        let _a: Vec<_> = (0..10).map(|_| snap.nodes()[order[0]].start_call()).collect();
        let _b: Vec<_> = (0..6).map(|_| snap.nodes()[order[1]].start_call()).collect();
        // mean = 17/2 = 8.5, bound = ceil(10.6) = 11: home (10) still takes it.
        assert_eq!(p.choose(&snap, h, &[]), Some(order[0]));
        let _c = snap.nodes()[order[0]].start_call();
        let _d = snap.nodes()[order[0]].start_call();
        // home 12, other 6: mean 9.5, bound 12: home is full.
        assert_eq!(p.choose(&snap, h, &[]), Some(order[1]));
    }

    #[test]
    fn all_probes_full_goes_to_the_least_loaded_probe() {
        // 20 nodes; the key's first 8 carry all the load, so each is over 1.25 × the mean.
        let snap = snapshot(20, &[]);
        let p = Bounded::new(1.25, 2, 1); // floor 1
        let (_, h) = key(9);
        let order: Vec<usize> = snap.table().order(h).collect();
        let loads = [30, 28, 31, 29, 30, 33, 32, 34];
        let _calls: Vec<_> = order
            .iter()
            .zip(loads)
            .flat_map(|(i, n)| (0..n).map(|_| snap.nodes()[*i].start_call()).collect::<Vec<_>>())
            .collect();
        assert_eq!(p.choose(&snap, h, &[]), Some(order[1]));
    }

    #[test]
    fn a_node_that_said_busy_is_passed_over() {
        let snap = snapshot(4, &[]);
        let p = Bounded::new(1.25, 64, 1);
        let (_, h) = key(2);
        let order: Vec<usize> = snap.table().order(h).collect();
        p.observe(&snap.nodes()[order[0]], h, None, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(p.choose(&snap, h, &[]), Some(order[1]));
        p.observe(&snap.nodes()[order[1]], h, None, StatusCode::OK);
        assert_eq!(p.choose(&snap, h, &[]), Some(order[1]));
    }

    #[test]
    fn one_cold_start_does_not_mark_a_node_loaded() {
        let snap = snapshot(4, &[]);
        let p = Bounded::new(1.25, 64, 1);
        let (_, h) = key(2);
        let home = snap.table().home(h).unwrap();
        // A 2 s cold start reported by the home node: the decayed wait starts at zero and moves
        // an eighth of the way.
        snap.nodes()[home].observe_wait(Duration::from_secs(2));
        assert_eq!(p.choose(&snap, h, &[]), Some(home));
    }

    #[test]
    fn floor_scales_with_the_number_of_balancers() {
        assert_eq!(Bounded::new(1.25, 64, 1).shares().floor, 32);
        assert_eq!(Bounded::new(1.25, 64, 3).shares().floor, 10);
        assert_eq!(Bounded::new(1.25, 1, 8).shares().floor, 1);
    }

    #[test]
    fn a_change_of_the_balancer_count_applies_to_the_next_pick() {
        let snap = snapshot(8, &[]);
        let count = Balancers::new(1);
        let p = Bounded::new(1.25, 64, count.clone());
        let (_, h) = key(3);
        let home = snap.table().home(h).unwrap();
        // 21 calls at home: under one balancer's floor (32), so home takes the next.
        let _calls: Vec<_> = (0..21).map(|_| snap.nodes()[home].start_call()).collect();
        assert_eq!(p.choose(&snap, h, &[]), Some(home));
        p.abandon(&snap.nodes()[home], h);
        // Three balancers now share the nodes: this one's floor is 10 (the mean-load bound,
        // 1.25 × 22/8, is lower still) and a warm call needs fewer than 21 in flight: home is
        // loaded, although the function is warm there.
        count.set(3);
        assert_eq!(p.shares(), Shares { floor: 10, warm_cap: 21 });
        assert_ne!(p.choose(&snap, h, &[]), Some(home));
    }

    #[test]
    fn keys_with_unloaded_homes_never_leave_them() {
        // Property over many keys: with every node under the floor and with room for another
        // container, pick == home.
        let snap = snapshot(8, &[]);
        for i in 0..2000 {
            let p = Bounded::new(1.25, 64, 1);
            let (_, h) = key(i);
            assert_eq!(p.choose(&snap, h, &[]), snap.table().home(h));
        }
        // One balancer, calls that come and go: the homes stay under 64 containers.
        let p = Bounded::new(1.25, 64, 1);
        for round in 0..3 {
            for i in 0..200 {
                let (_, h) = key(i);
                let home = snap.table().home(h);
                assert_eq!(p.choose(&snap, h, &[]), home, "key {i}, round {round}");
                p.observe(&snap.nodes()[home.unwrap()], h, None, StatusCode::OK);
            }
        }
    }

    /// `n` calls of the key placed through the policy, left running.
    fn run(p: &Bounded, snap: &Snapshot, i: usize, n: usize) -> Vec<(usize, InFlight)> {
        let (_, h) = key(i);
        (0..n)
            .map(|_| {
                let node = p.choose(snap, h, &[]).unwrap();
                (node, snap.nodes()[node].start_call())
            })
            .collect()
    }

    fn nodes(calls: &[(usize, InFlight)]) -> Vec<usize> {
        calls.iter().map(|(n, _)| *n).collect()
    }

    /// The calls end (the node answered).
    fn finish(p: &Bounded, snap: &Snapshot, i: usize, calls: Vec<(usize, InFlight)>) {
        let (_, h) = key(i);
        for (n, _call) in calls {
            p.observe(&snap.nodes()[n], h, None, StatusCode::OK);
        }
    }

    /// A key whose home is the given node.
    fn key_homed_on(snap: &Snapshot, node: usize, skip: usize) -> usize {
        (0..).filter(|i| snap.table().home(key(*i).1) == Some(node)).nth(skip).unwrap()
    }

    #[test]
    fn a_full_home_keeps_its_warm_functions_and_spills_cold_ones() {
        let snap = snapshot(4, &[]);
        let p = Bounded::new(1.25, 8, 1); // 8 containers a node, floor 4
        let home = 0;
        // Functions a, b and d ran 3, 4 and 1 at once on node 0 and finished: node 0 holds 8
        // containers, its capacity, all idle.
        let a = key_homed_on(&snap, home, 0);
        let b = key_homed_on(&snap, home, 1);
        let c = key_homed_on(&snap, home, 2);
        let d = key_homed_on(&snap, home, 3);
        for (f, n) in [(a, 3), (b, 4), (d, 1)] {
            let ran = run(&p, &snap, f, n);
            assert_eq!(nodes(&ran), vec![home; n]);
            finish(&p, &snap, f, ran);
        }
        assert_eq!(snap.nodes()[home].containers(), 8);
        // a is warm at home: it stays (three calls at once, one per idle container).
        let _a = run(&p, &snap, a, 3);
        assert_eq!(nodes(&_a), vec![home; 3]);
        // A fourth would need a new container on a full node: it goes to a's second choice, as
        // does c, which is cold everywhere.
        let second = |i: usize| snap.table().order(key(i).1).nth(1).unwrap();
        assert_eq!(nodes(&run(&p, &snap, a, 1)), vec![second(a)]);
        assert_eq!(nodes(&run(&p, &snap, c, 1)), vec![second(c)]);
    }

    #[test]
    fn a_warm_node_takes_calls_above_the_mean_load_bound() {
        let snap = snapshot(4, &[]);
        let p = Bounded::new(1.25, 8, 1);
        let f = key_homed_on(&snap, 0, 0);
        let order: Vec<usize> = snap.table().order(key(f).1).collect();
        // f outgrows its home: 4 calls at home (the floor), the fifth spills to its second node.
        let ran = run(&p, &snap, f, 5);
        assert_eq!(nodes(&ran), [vec![order[0]; 4], vec![order[1]]].concat());
        finish(&p, &snap, f, ran);
        // Another function takes the home to the floor (and its 8 containers).
        let g = key_homed_on(&snap, 0, 1);
        let _g = run(&p, &snap, g, 4);
        assert_eq!(nodes(&_g), vec![order[0]; 4]);
        // f still has 4 idle containers at home: its calls go there, past the floor, while the
        // node has calls to spare (8).
        let _f = run(&p, &snap, f, 4);
        assert_eq!(nodes(&_f), vec![order[0]; 4]);
        // Then home has neither an idle container of f nor room: the next node, where f is warm.
        assert_eq!(nodes(&run(&p, &snap, f, 1)), vec![order[1]]);
    }

    /// A node's rejoin, in virtual time: `functions` functions on 4 nodes of `capacity`
    /// containers, each function called every 2 s (one call at a time, answered at once): 30 s
    /// steady, node 0 down for 20 s, then back for 20 s. Returns the share of functions whose
    /// last call went to node 0, and the share homed there.
    fn rejoin(tuning: Tuning, functions: usize, capacity: u32) -> (f64, f64) {
        let up = snapshot(4, &[]);
        let down = crate::route::testing::with_health(&up, &[false, true, true, true]);
        let p = Bounded::with_tuning(1.25, capacity, 1, tuning);
        let hashes: Vec<u64> = (0..functions).map(|i| key(i).1).collect();
        let mut last = vec![usize::MAX; functions];
        for s in (0..70u64).step_by(2) {
            let snap = if (30..50).contains(&s) { &down } else { &up };
            for (f, h) in hashes.iter().enumerate() {
                // The calls spread over the 2 s.
                let now = 1 + s * 1000 + (f * 2000 / functions) as u64;
                let i = p.choose_at(snap, *h, &[], now).unwrap();
                p.warmth.finish(*h, &snap.nodes()[i], now);
                last[f] = i;
            }
        }
        let on_0 = last.iter().filter(|i| **i == 0).count() as f64 / functions as f64;
        let homed = hashes.iter().filter(|h| up.table().home(**h) == Some(0)).count() as f64 / functions as f64;
        (on_0, homed)
    }

    #[test]
    fn a_rejoining_node_takes_back_about_its_own_keys() {
        // 2,000 functions on 4 nodes of 500 containers (every slot holds a function), and 6,000
        // on 4 × 1,600: the returned node gets back its own keys (about 1/4) and no others.
        for (functions, capacity) in [(2000, 500), (6000, 1600)] {
            let (on_0, homed) = rejoin(Tuning::default(), functions, capacity);
            assert!((homed - 0.25).abs() < 0.03, "homed {homed}");
            assert!(
                on_0 <= homed + 0.02 && on_0 >= homed - 0.05,
                "{functions}: {on_0} on the returned node, {homed} homed"
            );
        }
    }

    #[test]
    fn place_says_full_where_choose_settles_for_the_least_loaded_and_counts_nothing() {
        let snap = snapshot(2, &[]);
        let p = Bounded::new(1.25, 2, 1); // 2 containers a node, floor 1
        let (_, h) = key(11);
        let order: Vec<usize> = snap.table().order(h).collect();
        let policy: &dyn Policy = &p;
        // Cold everywhere, room at home: a new container there.
        assert_eq!(policy.place(&snap, h, &[]), Some(Placement::Room(order[0])));
        // Other functions fill both nodes' containers; node order[1] has fewer calls.
        let g = (0..).map(key).find(|(_, g)| *g != h).unwrap().1;
        let _a: Vec<_> = (0..2).map(|_| policy.open(&snap, g, order[0])).collect();
        let _b = policy.open(&snap, g, order[1]);
        let _c = policy.open(&snap, g ^ 1, order[1]);
        let _calls: Vec<_> = [order[0], order[0], order[1]].iter().map(|i| snap.nodes()[*i].start_call()).collect();
        assert_eq!(policy.place(&snap, h, &[]), Some(Placement::Full(order[1])));
        assert_eq!(p.warmth.get(h, &snap.nodes()[order[1]]), Default::default(), "place counts nothing");
        // choose, as before, sends it cold to the least loaded probe and counts it there.
        assert_eq!(p.choose(&snap, h, &[]), Some(order[1]));
        assert_eq!(p.warmth.get(h, &snap.nodes()[order[1]]).in_flight, 1);
        // open counts too, and its guard closes it.
        let attempt = policy.open(&snap, h, order[1]);
        assert_eq!(p.warmth.get(h, &snap.nodes()[order[1]]).in_flight, 2);
        drop(attempt);
        assert_eq!(p.warmth.get(h, &snap.nodes()[order[1]]).in_flight, 1);
        // Where the function has an idle container, it goes warm.
        p.observe(&snap.nodes()[order[1]], h, None, StatusCode::OK);
        assert_eq!(policy.place(&snap, h, &[]), Some(Placement::Go(order[1])));
    }

    #[test]
    fn every_pick_is_closed_once_whether_answered_or_abandoned() {
        let snap = snapshot(4, &[]);
        let p = Bounded::new(1.25, 64, 1);
        let (_, h) = key(3);
        let home = snap.table().home(h).unwrap();
        let in_flight = || p.warmth.get(h, &snap.nodes()[home]).in_flight;
        for n in 0..10 {
            let policy: &dyn Policy = &p;
            let attempt = policy.pick(&snap, h, &[]).unwrap();
            assert_eq!(attempt.index(), home);
            assert_eq!(in_flight(), 1);
            if n % 2 == 0 {
                attempt.answered(None, StatusCode::OK);
            } else {
                drop(attempt); // a connect failure, a timeout, a client gone
            }
            assert_eq!(in_flight(), 0, "attempt {n} left counted");
        }
    }
}
