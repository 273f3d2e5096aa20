//! Where a function is warm, as one balancer can tell from its own calls.
//!
//! A Fn node keeps a function's containers after a call (idle, warm) until they have been idle
//! for the idle timeout (30 s by default); a new call for the function takes an idle one (warm)
//! or starts a container (cold), evicting the least recently used idle container of another
//! function when every slot is taken. The node reuses the most recently idled container, so the
//! containers a function holds on a node are about the most of its calls that ran there at once
//! in the last idle timeout.
//!
//! The table counts, per (function, node), this balancer's calls in flight and their peak in
//! each of the last [`LANES`] periods of `timeout / (LANES - 1)`: the containers the function
//! holds there are estimated as the largest of those peaks, so a call finds an idle container
//! when the calls in flight are below it. Each node's [`Node::containers`] is the sum of its
//! functions' estimates: its slots' footprint, idle containers included.
//!
//! Memory is fixed (a table of [`Warmth::new`]'s size, linear probing over a short window;
//! entries with no call in flight and no recent peak are reused), so it stays flat whatever the
//! number of distinct paths: a function that finds no entry is simply not known to be warm.
use crate::node::{Node, Snapshot};
use std::sync::atomic::Ordering::{self, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

/// Peak lanes per entry (one byte each in a u64): the current period and seven before it.
pub const LANES: u64 = 8;
/// Slots looked at for a key before giving up on tracking it.
const WINDOW: usize = 8;
/// Calls in flight counted for an entry untouched this long are forgotten (a call whose answer
/// never came: a dropped client, a failed connection), in idle timeouts.
const STALE_TIMEOUTS: u64 = 4;

struct Entry {
    /// Hash of (function, node); 0 = free.
    tag: AtomicU64,
    /// The node's identity ([`node_id`]), for summing the nodes' footprints.
    node: AtomicU64,
    in_flight: AtomicU32,
    /// Peak calls in flight per period, lane 0 the current one (u8 each, saturating).
    peaks: AtomicU64,
    touched_ms: AtomicU64,
}

/// What the table says about a function on a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Warm {
    /// This balancer's calls of the function in flight on the node.
    pub in_flight: u32,
    /// Containers the function probably holds there (busy and idle).
    pub containers: u32,
}

impl Warm {
    /// An idle container of the function is probably waiting on the node.
    pub fn has_idle(&self) -> bool {
        self.in_flight < self.containers
    }
}

pub struct Warmth {
    entries: Box<[Entry]>,
    mask: usize,
    period_ms: u64,
    timeout_ms: u64,
    /// When the lanes move next (ms on the policy clock).
    next_roll_ms: AtomicU64,
    rolling: AtomicBool,
}

/// A node's identity while it is stored: its address in memory (nodes are shared between
/// snapshots for as long as they stay in the set).
pub fn node_id(node: &Node) -> u64 {
    node as *const Node as usize as u64
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn tag(hash: u64, node: u64) -> u64 {
    mix(hash ^ mix(node)) | 1
}

fn max_lane(peaks: u64) -> u32 {
    (0..LANES).map(|l| ((peaks >> (8 * l)) & 0xff) as u32).max().unwrap_or(0)
}

impl Warmth {
    /// A table of at least `size` entries (rounded up to a power of two) for nodes whose idle
    /// containers live `timeout_ms`.
    pub fn new(size: usize, timeout_ms: u64) -> Warmth {
        let size = size.max(WINDOW).next_power_of_two();
        let entries = (0..size)
            .map(|_| Entry {
                tag: AtomicU64::new(0),
                node: AtomicU64::new(0),
                in_flight: AtomicU32::new(0),
                peaks: AtomicU64::new(0),
                touched_ms: AtomicU64::new(0),
            })
            .collect();
        let period_ms = (timeout_ms / (LANES - 1)).max(1);
        Warmth {
            entries,
            mask: size - 1,
            period_ms,
            timeout_ms,
            next_roll_ms: AtomicU64::new(0),
            rolling: AtomicBool::new(false),
        }
    }

    fn find(&self, t: u64) -> Option<&Entry> {
        let start = t as usize & self.mask;
        (0..WINDOW).map(|k| &self.entries[(start + k) & self.mask]).find(|e| e.tag.load(Relaxed) == t)
    }

    /// The function's standing on the node.
    pub fn get(&self, hash: u64, node: &Node) -> Warm {
        match self.find(tag(hash, node_id(node))) {
            Some(e) => Warm { in_flight: e.in_flight.load(Relaxed), containers: max_lane(e.peaks.load(Relaxed)) },
            None => Warm::default(),
        }
    }

    /// A call of the function goes to the node: counts it, and the node's footprint grows when
    /// the call needs a container the function did not hold there.
    pub fn start(&self, hash: u64, node: &Node, now_ms: u64) {
        let id = node_id(node);
        let t = tag(hash, id);
        let entry = match self.find(t) {
            Some(e) => e,
            None => match self.claim(t, id, now_ms) {
                Some(e) => e,
                None => return,
            },
        };
        entry.touched_ms.store(now_ms, Relaxed);
        let n = entry.in_flight.fetch_add(1, Relaxed) + 1;
        let lane0 = n.min(255) as u64;
        let mut grew = 0;
        let _ = entry.peaks.fetch_update(Relaxed, Relaxed, |p| {
            if p & 0xff >= lane0 {
                grew = 0;
                return None;
            }
            let before = max_lane(p);
            let q = (p & !0xff) | lane0;
            grew = max_lane(q).saturating_sub(before);
            Some(q)
        });
        if grew > 0 {
            node.add_containers(grew);
        }
    }

    /// A call of the function on the node is over (the node answered).
    pub fn finish(&self, hash: u64, node: &Node, now_ms: u64) {
        if let Some(e) = self.find(tag(hash, node_id(node))) {
            e.touched_ms.store(now_ms, Relaxed);
            let _ = e.in_flight.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        }
    }

    /// A call of the function on the node reported a cold start: when it came, the node held no
    /// idle container of the function (evicted, or expired), so the function holds no more there
    /// than its calls in flight and the container of the call that just ended. Caps the peaks at
    /// that (call after [`finish`](Self::finish)); the node's footprint follows at the next tick.
    pub fn cold_seen(&self, hash: u64, node: &Node) {
        if let Some(e) = self.find(tag(hash, node_id(node))) {
            let k = (e.in_flight.load(Relaxed) + 1).min(255) as u64;
            let _ = e.peaks.fetch_update(Relaxed, Relaxed, |p| {
                Some((0..LANES).map(|l| ((p >> (8 * l)) & 0xff).min(k) << (8 * l)).fold(0, |a, b| a | b))
            });
        }
    }

    /// Takes a free or spent slot of the key's window for `t`.
    fn claim(&self, t: u64, node: u64, now_ms: u64) -> Option<&Entry> {
        let start = t as usize & self.mask;
        for k in 0..WINDOW {
            let e = &self.entries[(start + k) & self.mask];
            let old = e.tag.load(Relaxed);
            let spent = old == 0 || (e.in_flight.load(Relaxed) == 0 && e.peaks.load(Relaxed) == 0);
            if spent && e.tag.compare_exchange(old, t, Relaxed, Relaxed).is_ok() {
                e.node.store(node, Relaxed);
                e.in_flight.store(0, Relaxed);
                e.peaks.store(0, Relaxed);
                e.touched_ms.store(now_ms, Relaxed);
                return Some(e);
            }
        }
        None
    }

    /// Moves the lanes on when a period has passed (one caller does it; the others go on) and
    /// recomputes the footprint of every node of `snap` from the table. Cost: one pass over
    /// the table every period (about 4 s), none in between.
    pub fn tick(&self, snap: &Snapshot, now_ms: u64) {
        let next = self.next_roll_ms.load(Relaxed);
        if now_ms < next || self.rolling.swap(true, Ordering::Acquire) {
            return;
        }
        if self.next_roll_ms.load(Relaxed) == next {
            self.roll(snap, now_ms);
            self.next_roll_ms.store(now_ms + self.period_ms, Relaxed);
        }
        self.rolling.store(false, Ordering::Release);
    }

    fn roll(&self, snap: &Snapshot, now_ms: u64) {
        let mut ids: Vec<(u64, usize)> = snap.nodes().iter().enumerate().map(|(i, n)| (node_id(n), i)).collect();
        ids.sort_unstable();
        let mut sums = vec![0u32; ids.len()];
        let stale = self.timeout_ms.saturating_mul(STALE_TIMEOUTS);
        for e in self.entries.iter() {
            if e.tag.load(Relaxed) == 0 {
                continue;
            }
            let node = ids.binary_search_by_key(&e.node.load(Relaxed), |(id, _)| *id).ok().map(|k| ids[k].1);
            if node.is_some_and(|i| !snap.is_eligible(i)) {
                // A node that went down (or cannot be reached) lost its containers, or will be
                // found cold when it returns: forget what it held.
                e.in_flight.store(0, Relaxed);
                e.peaks.store(0, Relaxed);
                continue;
            }
            if now_ms.saturating_sub(e.touched_ms.load(Relaxed)) > stale {
                e.in_flight.store(0, Relaxed);
            }
            let in_flight = e.in_flight.load(Relaxed).min(255) as u64;
            // Older lanes move up; the oldest is dropped; the new period starts with the calls
            // still running (they hold their containers).
            let _ = e.peaks.fetch_update(Relaxed, Relaxed, |p| Some((p << 8) | in_flight));
            if let Some(i) = node {
                sums[i] += max_lane(e.peaks.load(Relaxed));
            }
        }
        for (node, sum) in snap.nodes().iter().zip(sums) {
            node.set_containers(sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::testing::snapshot;

    #[test]
    fn containers_follow_the_peak_and_expire_after_the_timeout() {
        let snap = snapshot(2, &[]);
        let w = Warmth::new(64, 7000); // a period of 1 s
        let n = &snap.nodes()[0];
        w.tick(&snap, 1);
        for _ in 0..3 {
            w.start(42, n, 10);
        }
        assert_eq!(w.get(42, n), Warm { in_flight: 3, containers: 3 });
        assert!(!w.get(42, n).has_idle());
        assert_eq!(n.containers(), 3);
        w.finish(42, n, 20);
        w.finish(42, n, 20);
        assert_eq!(w.get(42, n), Warm { in_flight: 1, containers: 3 });
        assert!(w.get(42, n).has_idle());
        // Another function, or the same one on another node, is not warm.
        assert_eq!(w.get(43, n), Warm::default());
        assert_eq!(w.get(42, &snap.nodes()[1]), Warm::default());
        // Seven periods later the peak of 3 is still remembered; after the eighth it is gone,
        // but the call still running holds its container.
        for s in 1..=7 {
            w.tick(&snap, 1 + s * 1000);
            assert_eq!(w.get(42, n).containers, 3, "after {s} periods");
        }
        w.tick(&snap, 1 + 8 * 1000);
        assert_eq!(w.get(42, n), Warm { in_flight: 1, containers: 1 });
        assert_eq!(n.containers(), 1);
    }

    #[test]
    fn a_cold_start_reported_caps_the_estimate_at_what_runs() {
        let snap = snapshot(1, &[]);
        let w = Warmth::new(64, 7000);
        let n = &snap.nodes()[0];
        w.tick(&snap, 1);
        for _ in 0..5 {
            w.start(42, n, 10);
        }
        for _ in 0..4 {
            w.finish(42, n, 20);
        }
        w.tick(&snap, 1001); // the peak of 5 moves to an older lane
        assert_eq!(w.get(42, n), Warm { in_flight: 1, containers: 5 });
        // The last call reports it started cold: the node had evicted the idle ones.
        w.finish(42, n, 1010);
        w.cold_seen(42, n);
        assert_eq!(w.get(42, n), Warm { in_flight: 0, containers: 1 });
    }

    #[test]
    fn a_tick_within_the_period_does_nothing() {
        let snap = snapshot(1, &[]);
        let w = Warmth::new(64, 7000);
        let n = &snap.nodes()[0];
        w.tick(&snap, 1);
        w.start(7, n, 2);
        w.finish(7, n, 3);
        w.tick(&snap, 500);
        w.tick(&snap, 999);
        assert_eq!(w.get(7, n).containers, 1);
        assert_eq!(n.containers(), 1);
    }

    #[test]
    fn memory_is_fixed_and_spent_entries_are_reused() {
        let snap = snapshot(1, &[]);
        let w = Warmth::new(16, 7000);
        let n = &snap.nodes()[0];
        // Far more functions than entries, each called once and finished.
        for h in 0..1000u64 {
            w.start(h, n, 5);
            w.finish(h, n, 5);
        }
        assert_eq!(w.entries.len(), 16);
        // Eight periods on, every peak is gone and new functions find room again.
        for s in 1..=9 {
            w.tick(&snap, s * 1000);
        }
        w.start(5000, n, 9001);
        assert_eq!(w.get(5000, n), Warm { in_flight: 1, containers: 1 });
    }

    #[test]
    fn a_node_that_goes_down_is_forgotten() {
        // Node 1 served the function, then went down (unhealthy in the snapshot of the tick).
        let snap = snapshot(2, &[true, false]);
        let w = Warmth::new(64, 7000);
        w.tick(&snap, 1);
        for n in snap.nodes() {
            w.start(3, n, 2);
            w.finish(3, n, 3);
        }
        assert_eq!(w.get(3, &snap.nodes()[1]).containers, 1);
        w.tick(&snap, 1001);
        assert_eq!(w.get(3, &snap.nodes()[0]), Warm { in_flight: 0, containers: 1 });
        assert_eq!(w.get(3, &snap.nodes()[1]), Warm::default());
        assert_eq!((snap.nodes()[0].containers(), snap.nodes()[1].containers()), (1, 0));
    }

    #[test]
    fn a_lost_answer_is_forgotten() {
        let snap = snapshot(1, &[]);
        let w = Warmth::new(64, 7000);
        let n = &snap.nodes()[0];
        w.tick(&snap, 1);
        w.start(9, n, 1);
        // No finish ever comes; after STALE_TIMEOUTS idle timeouts the call no longer counts.
        let mut t = 1;
        while t < 7000 * (STALE_TIMEOUTS + 2) {
            t += 1000;
            w.tick(&snap, t);
        }
        assert_eq!(w.get(9, n), Warm { in_flight: 0, containers: 0 });
    }
}
