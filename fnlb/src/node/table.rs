//! The consistent-hash table: for every key, a fixed order of all stored nodes (its home first).
//!
//! A key's SipHash picks one of [`SLOTS`] slots; each slot orders the nodes by rendezvous
//! (highest-random-weight) hashing. Rendezvous hashing is what gives minimal disruption: removing
//! a node changes only the slots whose first choice it was, and adding one takes only the slots it
//! now wins (about 1/n). The slot indirection makes a lookup O(1) whatever the number of nodes:
//! the first [`KEPT`] choices of each slot are computed when the node set changes, off the request
//! path, and the rest of an order only when a call has to go that far.
use siphasher::sip::SipHasher24;
use std::hash::Hasher;

use crate::node::NodeAddr;

/// Number of slots. Each node's share of the slots is binomial: about 1 % relative deviation
/// for 8 nodes. A power of two so the slot is a mask of the key hash.
pub(crate) const SLOTS: usize = 1 << 16;
/// Choices per slot kept in the table; deeper choices are computed on demand (a sort over every
/// node, with an allocation). Eight covers the bounded policy's whole probe chain, so a loaded
/// cluster's spills stay on the table; at 16 bytes a slot the table is 1 MiB.
pub(crate) const KEPT: usize = 8;

/// SipHash-2-4 keys of the original fnlb (k1 spells "LaryBoat").
const K0: u64 = 0;
const K1: u64 = 0x4c61_7279_426f_6174;

/// The hash of a routing key (the URL path), as the original computed it.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h = SipHasher24::new_with_keys(K0, K1);
    h.write(key);
    h.finish()
}

/// splitmix64's finaliser: a cheap bijective mix, good enough to turn (slot, node) into a weight.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn weight(slot_seed: u64, node_seed: u64) -> u64 {
    mix(slot_seed ^ node_seed)
}

fn slot_seed(slot: usize) -> u64 {
    mix((slot as u64).wrapping_add(0x9e37_79b9_7f4a_7c15))
}

pub struct Table {
    /// Per node (same order as the snapshot's nodes): the node's seed, from its address only,
    /// so a node weighs the same in every balancer whatever else is in the set.
    seeds: Box<[u64]>,
    /// `SLOTS × kept` node indices, best first.
    choices: Choices,
    kept: usize,
}

/// Node indices, as narrow as the node count allows: 16 bits for up to 65,536 nodes halves the
/// table, and the table's size is what decides whether a lookup hits the CPU cache.
enum Choices {
    Narrow(Box<[u16]>),
    Wide(Box<[u32]>),
}

impl Choices {
    #[inline]
    fn get(&self, i: usize) -> usize {
        match self {
            Choices::Narrow(c) => c[i] as usize,
            Choices::Wide(c) => c[i] as usize,
        }
    }
}

impl Table {
    /// Builds the table over `addrs`, which must be in the snapshot's (sorted) order.
    pub fn build(addrs: &[NodeAddr]) -> Table {
        let seeds: Box<[u64]> = addrs.iter().map(|a| key_hash(a.as_str().as_bytes())).collect();
        let kept = KEPT.min(seeds.len());
        let mut choices = vec![0u32; SLOTS * kept];
        if kept > 0 {
            let mut best: Vec<(u64, u32)> = Vec::with_capacity(kept + 1);
            for slot in 0..SLOTS {
                let s = slot_seed(slot);
                best.clear();
                for (i, seed) in seeds.iter().enumerate() {
                    let w = weight(s, *seed);
                    if best.len() < kept || w > best[kept - 1].0 {
                        let at = best.partition_point(|(bw, _)| *bw >= w);
                        best.insert(at, (w, i as u32));
                        best.truncate(kept);
                    }
                }
                for (k, (_, i)) in best.iter().enumerate() {
                    choices[slot * kept + k] = *i;
                }
            }
        }
        let choices = if seeds.len() <= 1 << 16 {
            Choices::Narrow(choices.into_iter().map(|i| i as u16).collect())
        } else {
            Choices::Wide(choices.into_boxed_slice())
        };
        Table { seeds, choices, kept }
    }

    pub(crate) fn len(&self) -> usize {
        self.seeds.len()
    }

    pub(crate) fn slot(hash: u64) -> usize {
        (hash as usize) & (SLOTS - 1)
    }

    /// The home node of a key hash (None when there are no nodes).
    pub fn home(&self, hash: u64) -> Option<usize> {
        if self.kept == 0 {
            return None;
        }
        Some(self.choices.get(Self::slot(hash) * self.kept))
    }

    /// The key's full order of nodes, home first. The first choices come from the table; the
    /// rest are computed (O(n log n)) only if the caller iterates that far.
    pub fn order(&self, hash: u64) -> Order<'_> {
        let slot = Self::slot(hash);
        Order { table: self, slot, pos: 0, rest: None }
    }
}

/// Iterator over a key's node order.
pub struct Order<'a> {
    table: &'a Table,
    slot: usize,
    pos: usize,
    rest: Option<Vec<u32>>,
}

impl Iterator for Order<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let t = self.table;
        if self.pos >= t.len() {
            return None;
        }
        let i = if self.pos < t.kept {
            t.choices.get(self.slot * t.kept + self.pos)
        } else {
            let rest = self.rest.get_or_insert_with(|| {
                let s = slot_seed(self.slot);
                let mut all: Vec<(u64, u32)> =
                    t.seeds.iter().enumerate().map(|(i, seed)| (weight(s, *seed), i as u32)).collect();
                all.sort_unstable_by_key(|(w, _)| std::cmp::Reverse(*w));
                all.into_iter().map(|(_, i)| i).collect()
            });
            rest[self.pos] as usize
        };
        self.pos += 1;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<NodeAddr> {
        let mut v: Vec<NodeAddr> =
            (0..n).map(|i| NodeAddr::parse(&format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)).unwrap()).collect();
        v.sort();
        v
    }

    fn keys(n: usize) -> Vec<u64> {
        (0..n).map(|i| key_hash(format!("/r/app{}/fn{:05}", i % 17, i).as_bytes())).collect()
    }

    #[test]
    fn siphash_matches_the_original_keys() {
        // Reference value computed with Go's github.com/dchest/siphash Hash(0, 0x4c617279426f6174, ...)
        // is not available offline; instead check the keys are wired and the hash is stable.
        assert_eq!(key_hash(b"/r/app/fn"), key_hash(b"/r/app/fn"));
        assert_ne!(key_hash(b"/r/app/fn"), key_hash(b"/r/app/fn2"));
        let mut h = SipHasher24::new_with_keys(0, 0x4c617279426f6174);
        h.write(b"/r/app/fn");
        assert_eq!(key_hash(b"/r/app/fn"), h.finish());
    }

    #[test]
    fn keys_spread_evenly_over_eight_nodes() {
        // fnsim's default node ports and the benchmark's key shape. 10,000 keys in 8 bins have a
        // sampling deviation of 2.6 % per bin whatever the hash: over 40 random 8-node sets this
        // table averaged max/mean 1.040 (6 of 40 above 1.05), which is what a uniform hash gives.
        let mut addrs: Vec<NodeAddr> =
            (1..=8).map(|i| NodeAddr::parse(&format!("127.0.0.1:{}", 9000 + i)).unwrap()).collect();
        addrs.sort();
        let t = Table::build(&addrs);
        let mut count = [0usize; 8];
        for i in 0..10_000 {
            count[t.home(key_hash(format!("/r/app{}/fn{:03}", i % 50, i).as_bytes())).unwrap()] += 1;
        }
        let max = *count.iter().max().unwrap() as f64;
        let mean = 10_000.0 / 8.0;
        assert!(max / mean <= 1.05, "max/mean = {} ({count:?})", max / mean);
    }

    #[test]
    fn slots_spread_evenly_for_many_sizes() {
        for n in [2usize, 3, 5, 8, 16, 50] {
            let t = Table::build(&addrs(n));
            let mut count = vec![0usize; n];
            for slot in 0..SLOTS {
                count[t.home(slot as u64).unwrap()] += 1;
            }
            let max = *count.iter().max().unwrap() as f64;
            let mean = SLOTS as f64 / n as f64;
            // Binomial spread: a few standard deviations of sqrt(n/SLOTS).
            let bound = 1.0 + 4.0 * ((n as f64) / SLOTS as f64).sqrt();
            assert!(max / mean <= bound, "n={n}: max/mean {} > {bound}", max / mean);
            assert!(count.iter().all(|c| *c > 0), "n={n}: a node is never a home: {count:?}");
        }
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_keys() {
        let all = addrs(8);
        let before = Table::build(&all);
        for gone in 0..all.len() {
            let mut rest = all.clone();
            let gone_addr = rest.remove(gone);
            let after = Table::build(&rest);
            for k in keys(10_000) {
                let b = &all[before.home(k).unwrap()];
                let a = &rest[after.home(k).unwrap()];
                if *b != gone_addr {
                    assert_eq!(a, b, "a key not on the leaving node moved");
                } else {
                    // It goes to its second choice, which the old order already named.
                    let second = before.order(k).nth(1).unwrap();
                    assert_eq!(a, &all[second]);
                }
            }
        }
    }

    #[test]
    fn a_joining_node_takes_about_one_nth() {
        let all = addrs(9);
        for joining in 0..all.len() {
            let mut before_set = all.clone();
            let new = before_set.remove(joining);
            let before = Table::build(&before_set);
            let after = Table::build(&all);
            let ks = keys(10_000);
            let mut moved = 0;
            for k in &ks {
                let b = &before_set[before.home(*k).unwrap()];
                let a = &all[after.home(*k).unwrap()];
                if a != b {
                    assert_eq!(a, &new, "a key moved to an old node");
                    moved += 1;
                }
            }
            let share = f64::from(moved) / ks.len() as f64;
            assert!(share <= 1.0 / 9.0 + 0.02, "joining node took {share}");
        }
    }

    #[test]
    fn order_lists_every_node_once_home_first() {
        let t = Table::build(&addrs(13));
        for k in keys(200) {
            let order: Vec<usize> = t.order(k).collect();
            assert_eq!(order.len(), 13);
            assert_eq!(order[0], t.home(k).unwrap());
            let mut sorted = order.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 13);
        }
    }

    #[test]
    fn same_node_list_gives_same_homes() {
        let a = Table::build(&addrs(7));
        let b = Table::build(&addrs(7));
        for k in keys(1000) {
            assert_eq!(a.order(k).collect::<Vec<_>>(), b.order(k).collect::<Vec<_>>());
        }
    }

    #[test]
    fn two_nodes_both_get_keys() {
        // The original's integer-division jump hash sent every key to node 0 with two nodes.
        let t = Table::build(&addrs(2));
        let homes: Vec<usize> = keys(1000).into_iter().map(|k| t.home(k).unwrap()).collect();
        let ones = homes.iter().filter(|h| **h == 1).count();
        assert!((400..600).contains(&ones), "{ones} of 1000 keys on node 1");
    }

    #[test]
    fn empty_table_has_no_home() {
        let t = Table::build(&[]);
        assert_eq!(t.home(42), None);
        assert_eq!(t.order(42).count(), 0);
    }
}
