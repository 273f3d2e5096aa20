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
//! Memory follows the cluster, not the paths: the table has room for every container the
//! cluster can hold ([`HEADROOM`] × nodes × `-node-capacity` entries, a power of two, in buckets
//! of [`WINDOW`]; entries with no call in flight and no recent peak are reused), so it stays flat
//! whatever the number of distinct paths, and a function that finds no entry is simply not known
//! to be warm.
//!
//! Layout: a (function, node) pair may take any entry of one bucket, chosen by its tag. A
//! bucket's 8 tags fill its first 64-byte line and its entries' counters (32 bytes each) the next
//! four, so a lookup reads one line of tags and, on a hit, one line of counters in the same page.
//! The table is 5 MB at 1,000 nodes, so its lines are rarely in the nearest caches: a miss (the
//! common case on a walk past the home: a node the function has not run on) costs one line, not
//! a scan of 8 entries across up to 5.
//!
//! When the node count changes, the next period builds a table of the new size and swaps it in
//! ([`ArcSwap`]), carrying over every live entry of a node still in the set; picks go on
//! meanwhile on the old table, lock-free (in a runtime the period's work runs on a blocking
//! thread, off the runtime's workers). A decision loads the table once for its pick and once for
//! the answer: each load is a locked write and its guard's release another.
use crate::node::{Node, Snapshot};
use arc_swap::ArcSwap;
use std::sync::atomic::Ordering::{self, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::Arc;

/// Peak lanes per entry (one byte each in a u64): the current period and seven before it.
pub(crate) const LANES: u64 = 8;
/// Entries a key may take: its bucket, whose tags fill one cache line.
const WINDOW: usize = 8;
/// Calls in flight counted for an entry untouched this long are forgotten (a call whose answer
/// never came: a dropped client, a failed connection), in idle timeouts.
const STALE_TIMEOUTS: u64 = 4;
/// Entries per container the cluster can hold. A (function, node) entry stands for at least one
/// container, so the table is at most half full when every slot of every node holds a different
/// function: a bucket of [`WINDOW`] entries then almost never lacks room for a key.
pub(crate) const HEADROOM: usize = 2;
/// The smallest table (a cluster of one small node, or none yet).
const MIN_ENTRIES: usize = 256;
/// A period's pass over a table this large runs on a blocking thread when there is a runtime.
const OFF_THREAD_ENTRIES: usize = 1 << 14;

/// The entries a key may take (chosen by its tag), tags first: the 8 tags (hash of (function,
/// node); 0 = free) fill the bucket's first 64-byte cache line, so a lookup reads that line and,
/// only when a tag matches, the line of that entry's counters, next to it in the same page.
#[repr(align(64))]
struct Bucket {
    tags: [AtomicU64; WINDOW],
    entries: [Entry; WINDOW],
}

/// An entry's counters (its tag is in its [`Bucket`]'s first line): 32 bytes, aligned so that
/// an entry is always within one cache line.
#[repr(align(32))]
struct Entry {
    /// The node's identity ([`node_id`]), for summing the nodes' footprints.
    node: AtomicU64,
    in_flight: AtomicU32,
    /// Calls in flight that were sent expecting an idle container (the estimate had one when
    /// they started): only such a call's cold start says the node evicted what the estimate
    /// holds ([`Slots::cold_seen`]); a call sent to start a container was expected cold. At most
    /// `in_flight + 1` (the call just finished, until its cold start is reported).
    bets: AtomicU32,
    /// Peak calls in flight per period, lane 0 the current one (u8 each, saturating).
    peaks: AtomicU64,
    touched_ms: AtomicU64,
}

impl Entry {
    fn free() -> Entry {
        Entry {
            node: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            bets: AtomicU32::new(0),
            peaks: AtomicU64::new(0),
            touched_ms: AtomicU64::new(0),
        }
    }

    /// No call in flight and no recent peak: the entry may be taken by another pair.
    fn is_idle(&self) -> bool {
        self.in_flight.load(Relaxed) == 0 && self.peaks.load(Relaxed) == 0
    }
}

/// What the table says about a function on a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Warm {
    /// This balancer's calls of the function in flight on the node.
    pub in_flight: u32,
    /// Containers the function probably holds there (busy and idle).
    pub containers: u32,
}

impl Warm {
    /// An idle container of the function is probably waiting on the node.
    pub(crate) fn has_idle(&self) -> bool {
        self.in_flight < self.containers
    }
}

/// One table of entries (what a pick reads; see [`Warmth::view`]): buckets of [`WINDOW`]
/// entries.
pub struct Slots {
    buckets: Box<[Bucket]>,
    /// Buckets - 1.
    mask: usize,
}

pub struct Warmth {
    shared: Arc<Shared>,
}

struct Shared {
    slots: ArcSwap<Slots>,
    /// Containers a node holds (`-node-capacity`); 0: the table keeps its size.
    per_node: usize,
    period_ms: u64,
    timeout_ms: u64,
    /// When the lanes move next (ms on the policy clock).
    next_roll_ms: AtomicU64,
    rolling: AtomicBool,
}

/// A node's identity while it is stored: its address in memory (nodes are shared between
/// snapshots for as long as they stay in the set).
pub(crate) fn node_id(node: &Node) -> u64 {
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

/// Entries for a cluster of `nodes` nodes of `per_node` containers each.
pub(crate) fn entries_for(nodes: usize, per_node: usize) -> usize {
    nodes.saturating_mul(per_node).saturating_mul(HEADROOM).max(MIN_ENTRIES).next_power_of_two()
}

impl Slots {
    fn new(size: usize) -> Slots {
        let buckets = size.max(WINDOW).next_power_of_two() / WINDOW;
        let bucket = || Bucket {
            tags: std::array::from_fn(|_| AtomicU64::new(0)),
            entries: std::array::from_fn(|_| Entry::free()),
        };
        Slots { buckets: (0..buckets).map(|_| bucket()).collect(), mask: buckets - 1 }
    }

    /// Entries in the table.
    pub(crate) fn len(&self) -> usize {
        self.buckets.len() * WINDOW
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The tag's bucket (bit 0 of a tag is always set: the bits above it choose).
    fn bucket(&self, t: u64) -> &Bucket {
        &self.buckets[(t >> 1) as usize & self.mask]
    }

    /// The entry tagged `t`: one line of tags read, and the entry's on a hit.
    fn find(&self, t: u64) -> Option<&Entry> {
        let b = self.bucket(t);
        b.tags.iter().position(|tag| tag.load(Relaxed) == t).map(|k| &b.entries[k])
    }

    /// The function's standing on the node.
    pub(crate) fn get(&self, hash: u64, node: &Node) -> Warm {
        match self.find(tag(hash, node_id(node))) {
            Some(e) => Warm { in_flight: e.in_flight.load(Relaxed), containers: max_lane(e.peaks.load(Relaxed)) },
            None => Warm::default(),
        }
    }

    /// A call of the function goes to the node: counts it, and the node's footprint grows when
    /// the call needs a container the function did not hold there.
    pub(crate) fn start(&self, hash: u64, node: &Node, now_ms: u64) {
        let id = node_id(node);
        let t = tag(hash, id);
        let Some(entry) = self.find(t).or_else(|| self.claim(t, id, now_ms)) else { return };
        entry.touched_ms.store(now_ms, Relaxed);
        let n = entry.in_flight.fetch_add(1, Relaxed) + 1;
        if n <= max_lane(entry.peaks.load(Relaxed)) {
            // The estimate holds an idle container for this call: a bet that it starts warm.
            entry.bets.fetch_add(1, Relaxed);
        }
        let lane0 = u64::from(n.min(255));
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

    /// A call of the function on the node is over (the node answered, or the attempt ended
    /// without an answer).
    pub(crate) fn finish(&self, hash: u64, node: &Node, now_ms: u64) {
        if let Some(e) = self.find(tag(hash, node_id(node))) {
            e.touched_ms.store(now_ms, Relaxed);
            let left = e.in_flight.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).map_or(0, |n| n - 1);
            // Which call ended is not known: keep the bets to what may still report. Most
            // answers find them there already (a read, not a locked write: `fetch_min` always
            // writes).
            if e.bets.load(Relaxed) > left + 1 {
                e.bets.fetch_min(left + 1, Relaxed);
            }
        }
    }

    /// A call of the function on the node reported a cold start (call after
    /// [`finish`](Self::finish)). When the call had been sent on the estimate's word that an idle
    /// container waited (a bet), the node held none when it came: evicted, or expired. The
    /// function then holds no more there than its calls in flight and the container of the call
    /// that just ended: caps the peaks at that; the node's footprint follows at the next tick. A
    /// call sent to start a container (a burst of first calls, each cold) proves nothing and
    /// leaves the estimate alone, so the containers it started are remembered.
    pub(crate) fn cold_seen(&self, hash: u64, node: &Node) {
        if let Some(e) = self.find(tag(hash, node_id(node))) {
            if e.bets.fetch_update(Relaxed, Relaxed, |b| b.checked_sub(1)).is_err() {
                return;
            }
            let now = e.in_flight.load(Relaxed);
            e.bets.fetch_min(now, Relaxed);
            let k = u64::from((now + 1).min(255));
            let _ = e.peaks.fetch_update(Relaxed, Relaxed, |p| {
                Some((0..LANES).map(|l| ((p >> (8 * l)) & 0xff).min(k) << (8 * l)).fold(0, |a, b| a | b))
            });
        }
    }

    /// Takes a free or spent entry of the key's bucket for `t`; when every entry is live, the
    /// one touched longest ago with no call in flight (a node evicts its least recently used
    /// idle container first, so that is the pair least likely to be warm still).
    fn claim(&self, t: u64, node: u64, now_ms: u64) -> Option<&Entry> {
        let b = self.bucket(t);
        let mut oldest: Option<(usize, u64, u64)> = None;
        for (k, (tag, e)) in b.tags.iter().zip(&b.entries).enumerate() {
            let old = tag.load(Relaxed);
            if old == 0 || e.is_idle() {
                if tag.compare_exchange(old, t, Relaxed, Relaxed).is_ok() {
                    return Some(Self::reset(e, node, now_ms));
                }
                continue;
            }
            let touched = e.touched_ms.load(Relaxed);
            if e.in_flight.load(Relaxed) == 0 && oldest.is_none_or(|(_, _, at)| touched < at) {
                oldest = Some((k, old, touched));
            }
        }
        let (k, old, _) = oldest?;
        b.tags[k].compare_exchange(old, t, Relaxed, Relaxed).ok()?;
        Some(Self::reset(&b.entries[k], node, now_ms))
    }

    fn reset(e: &Entry, node: u64, now_ms: u64) -> &Entry {
        e.node.store(node, Relaxed);
        e.in_flight.store(0, Relaxed);
        e.bets.store(0, Relaxed);
        e.peaks.store(0, Relaxed);
        e.touched_ms.store(now_ms, Relaxed);
        e
    }

    /// Every entry in use, with its tag.
    fn used(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.buckets
            .iter()
            .flat_map(|b| b.tags.iter().zip(&b.entries))
            .map(|(tag, e)| (tag.load(Relaxed), e))
            .filter(|(t, _)| *t != 0)
    }

    /// A table of `size` entries holding every live entry of `self` whose node is in `live`
    /// (sorted node ids). A call that starts or ends on `self` while this runs may be missed:
    /// its count is then off by one until the entry goes stale.
    fn rebuilt(&self, size: usize, live: &[u64]) -> Slots {
        let new = Slots::new(size);
        for (t, e) in self.used() {
            let node = e.node.load(Relaxed);
            if e.is_idle() || live.binary_search(&node).is_err() {
                continue;
            }
            if let Some(n) = new.claim(t, node, e.touched_ms.load(Relaxed)) {
                n.in_flight.store(e.in_flight.load(Relaxed), Relaxed);
                n.bets.store(e.bets.load(Relaxed), Relaxed);
                n.peaks.store(e.peaks.load(Relaxed), Relaxed);
            }
        }
        new
    }
}

/// What a period's work needs of a snapshot: (identity, node, eligible), by identity.
type Members = Vec<(u64, Arc<Node>, bool)>;

impl Warmth {
    /// A table sized to the cluster: [`entries_for`] the snapshot's nodes of `per_node`
    /// containers each, resized when their number changes; for nodes whose idle containers
    /// live `timeout_ms`.
    pub(crate) fn for_cluster(per_node: u32, timeout_ms: u64) -> Warmth {
        Warmth::build(entries_for(1, per_node as usize), per_node as usize, timeout_ms)
    }

    /// A table of `size` entries (rounded up to a power of two) that keeps its size.
    pub(crate) fn fixed(size: usize, timeout_ms: u64) -> Warmth {
        Warmth::build(size, 0, timeout_ms)
    }

    fn build(size: usize, per_node: usize, timeout_ms: u64) -> Warmth {
        Warmth {
            shared: Arc::new(Shared {
                slots: ArcSwap::from_pointee(Slots::new(size)),
                per_node,
                period_ms: (timeout_ms / (LANES - 1)).max(1),
                timeout_ms,
                next_roll_ms: AtomicU64::new(0),
                rolling: AtomicBool::new(false),
            }),
        }
    }

    /// The table now: one atomic load, for a pick's several lookups.
    pub(crate) fn view(&self) -> arc_swap::Guard<Arc<Slots>> {
        self.shared.slots.load()
    }

    /// The table for a pick at `now_ms`: its periods moved on first ([`Warmth::tick`]), then
    /// [`Warmth::view`].
    pub(crate) fn ticked(&self, snap: &Snapshot, now_ms: u64) -> arc_swap::Guard<Arc<Slots>> {
        self.tick(snap, now_ms);
        self.view()
    }

    /// Entries in the table now.
    pub fn len(&self) -> usize {
        self.view().len()
    }

    pub fn is_empty(&self) -> bool {
        self.view().is_empty()
    }

    #[cfg(test)]
    pub(crate) fn get(&self, hash: u64, node: &Node) -> Warm {
        self.view().get(hash, node)
    }

    pub(crate) fn start(&self, hash: u64, node: &Node, now_ms: u64) {
        self.view().start(hash, node, now_ms);
    }

    pub(crate) fn finish(&self, hash: u64, node: &Node, now_ms: u64) {
        self.view().finish(hash, node, now_ms);
    }

    /// See [`Slots::cold_seen`]: a reported cold start caps the pair's estimate.
    #[cfg(test)]
    pub(crate) fn cold_seen(&self, hash: u64, node: &Node) {
        self.view().cold_seen(hash, node);
    }

    /// Moves the lanes on when a period has passed (one caller does it; the others go on),
    /// resizes the table if the node count asks for another size, and recomputes the footprint
    /// of every node of `snap` from the table. Cost: nothing between periods; once a period, a
    /// pass over the table (on a blocking thread when there is a runtime and the table is large).
    pub(crate) fn tick(&self, snap: &Snapshot, now_ms: u64) {
        let s = &self.shared;
        let next = s.next_roll_ms.load(Relaxed);
        if now_ms < next || s.rolling.swap(true, Ordering::Acquire) {
            return;
        }
        if s.next_roll_ms.load(Relaxed) != next {
            s.rolling.store(false, Ordering::Release);
            return;
        }
        let mut members: Members =
            snap.nodes().iter().enumerate().map(|(i, n)| (node_id(n), Arc::clone(n), snap.is_eligible(i))).collect();
        members.sort_unstable_by_key(|m| m.0);
        let want = if s.per_node == 0 { s.slots.load().len() } else { entries_for(members.len(), s.per_node) };
        let big = want.max(s.slots.load().len()) >= OFF_THREAD_ENTRIES;
        let shared = Arc::clone(s);
        let work = move || {
            shared.period(&members, want, now_ms);
            shared.next_roll_ms.store(now_ms + shared.period_ms, Relaxed);
            shared.rolling.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if big => drop(rt.spawn_blocking(work)),
            _ => work(),
        }
    }
}

impl Shared {
    fn period(&self, members: &Members, want: usize, now_ms: u64) {
        let mut slots = self.slots.load_full();
        if slots.len() != want {
            let ids: Vec<u64> = members.iter().map(|m| m.0).collect();
            let new = Arc::new(slots.rebuilt(want, &ids));
            self.slots.store(Arc::clone(&new));
            slots = new;
        }
        self.roll(&slots, members, now_ms);
    }

    fn roll(&self, slots: &Slots, members: &Members, now_ms: u64) {
        let mut sums = vec![0u32; members.len()];
        let stale = self.timeout_ms.saturating_mul(STALE_TIMEOUTS);
        for (_, e) in slots.used() {
            let node = members.binary_search_by_key(&e.node.load(Relaxed), |m| m.0).ok();
            if node.is_some_and(|k| !members[k].2) {
                // A node that went down (or cannot be reached) lost its containers, or will be
                // found cold when it returns: forget what it held.
                e.in_flight.store(0, Relaxed);
                e.bets.store(0, Relaxed);
                e.peaks.store(0, Relaxed);
                continue;
            }
            if now_ms.saturating_sub(e.touched_ms.load(Relaxed)) > stale {
                // The bets go with the calls they were made for.
                e.in_flight.store(0, Relaxed);
                e.bets.store(0, Relaxed);
            }
            let in_flight = u64::from(e.in_flight.load(Relaxed).min(255));
            // Older lanes move up; the oldest is dropped; the new period starts with the calls
            // still running (they hold their containers).
            let _ = e.peaks.fetch_update(Relaxed, Relaxed, |p| Some((p << 8) | in_flight));
            if let Some(k) = node {
                sums[k] += max_lane(e.peaks.load(Relaxed));
            }
        }
        for (m, sum) in members.iter().zip(sums) {
            m.1.set_containers(sum);
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
        let w = Warmth::fixed(64, 7000); // a period of 1 s
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
    fn every_container_the_cluster_holds_has_an_entry() {
        // 4 nodes of 1,600 containers, 6,000 functions each warm on one node (a full cluster).
        // The table follows the cluster (4 × 1,600 × 2 → 16,384 entries) and knows all of them
        // but the few a full probing window loses (8 here);
        // the fixed 4,096-entry table it replaces lost a third, and with them a third of each
        // node's footprint, so cold calls went on evicting on nodes taken for half empty.
        let snap = snapshot(4, &[]);
        for (w, known_at_least) in [(Warmth::for_cluster(1600, 7000), 6000), (Warmth::fixed(4096, 7000), 0)] {
            w.tick(&snap, 1);
            for h in 0..6000u64 {
                let n = &snap.nodes()[(h % 4) as usize];
                w.start(h * 0x9e37_79b9, n, 2);
                w.finish(h * 0x9e37_79b9, n, 3);
            }
            let known = (0..6000u64)
                .filter(|h| w.get(h * 0x9e37_79b9, &snap.nodes()[(h % 4) as usize]).containers == 1)
                .count();
            w.tick(&snap, 1001);
            let footprint: u32 = snap.nodes().iter().map(|n| n.containers()).sum();
            if known_at_least == 6000 {
                assert_eq!(w.len(), 16384);
                assert!(known >= 5970 && footprint as usize == known, "knew {known}, footprint {footprint}");
            } else {
                assert!(known <= 4096 && footprint <= 4096, "the fixed table knew {known}");
            }
        }
    }

    #[test]
    fn the_table_follows_the_node_count_and_keeps_what_it_knew() {
        let eight = snapshot(8, &[]);
        let w = Warmth::for_cluster(64, 7000);
        w.tick(&eight, 1);
        assert_eq!(w.len(), 1024); // 8 × 64 × 2
        for (i, n) in eight.nodes().iter().enumerate() {
            w.start(i as u64, n, 2);
        }
        w.finish(0, &eight.nodes()[0], 3);
        // Four of the nodes leave: a smaller table, with the four others' entries (and their
        // calls in flight) carried over, and nothing of the nodes that left.
        let four = Snapshot::new(
            eight.nodes_arc()[..4].iter().cloned().collect(),
            std::sync::Arc::new(crate::node::table::Table::build(&[])),
            vec![true; 4].into(),
            Default::default(),
        );
        w.tick(&four, 1001);
        assert_eq!(w.len(), 512);
        assert_eq!(w.get(0, &eight.nodes()[0]), Warm { in_flight: 0, containers: 1 });
        assert_eq!(w.get(3, &eight.nodes()[3]), Warm { in_flight: 1, containers: 1 });
        assert_eq!(w.get(5, &eight.nodes()[5]), Warm::default());
        // A tick within the period does not resize; the next period grows it back.
        w.tick(&eight, 1500);
        assert_eq!(w.len(), 512);
        w.tick(&eight, 2001);
        assert_eq!(w.len(), 1024);
        assert_eq!(w.get(3, &eight.nodes()[3]), Warm { in_flight: 1, containers: 1 });
    }

    #[test]
    fn a_full_window_gives_way_to_the_newest_pair() {
        // One node, a table of 8 entries (one window): 8 functions warm, then a ninth. The
        // least recently used idle entry gives way, as the node's LRU container does.
        let snap = snapshot(1, &[]);
        let n = &snap.nodes()[0];
        let w = Warmth::fixed(8, 7000);
        for h in 1..=8u64 {
            w.start(h, n, 10 + h);
            if h != 1 {
                w.finish(h, n, 10 + h);
            }
        }
        // Function 1 still has its call in flight: function 2 (idle longest) gives way.
        w.start(9, n, 30);
        assert_eq!(w.get(9, n), Warm { in_flight: 1, containers: 1 });
        assert_eq!(w.get(2, n), Warm::default());
        assert_eq!(w.get(1, n).in_flight, 1);
    }

    #[test]
    fn a_cold_start_reported_caps_the_estimate_at_what_runs() {
        let snap = snapshot(1, &[]);
        let w = Warmth::fixed(64, 7000);
        let n = &snap.nodes()[0];
        w.tick(&snap, 1);
        for _ in 0..5 {
            w.start(42, n, 10);
        }
        for _ in 0..5 {
            w.finish(42, n, 20);
        }
        w.tick(&snap, 1001); // the peak of 5 moves to an older lane
        assert_eq!(w.get(42, n), Warm { in_flight: 0, containers: 5 });
        // A later call, alone, reports it started cold: the node had evicted the idle ones.
        w.start(42, n, 1005);
        w.finish(42, n, 1010);
        w.cold_seen(42, n);
        assert_eq!(w.get(42, n), Warm { in_flight: 0, containers: 1 });
    }

    #[test]
    fn a_burst_of_cold_calls_keeps_the_containers_it_started() {
        let snap = snapshot(1, &[]);
        let w = Warmth::fixed(64, 7000);
        let n = &snap.nodes()[0];
        w.tick(&snap, 1);
        // Three calls at once, each the function's first here (expected cold, and cold): three
        // containers now exist.
        for _ in 0..3 {
            w.start(42, n, 10);
        }
        for _ in 0..3 {
            w.finish(42, n, 20);
            w.cold_seen(42, n);
        }
        assert_eq!(w.get(42, n), Warm { in_flight: 0, containers: 3 });
        // Two calls sent warm on that word, and one of them reports cold: the node lost them.
        w.tick(&snap, 1001);
        w.start(42, n, 1005);
        w.start(42, n, 1005);
        w.finish(42, n, 1010);
        w.cold_seen(42, n);
        assert_eq!(w.get(42, n), Warm { in_flight: 1, containers: 2 });
        w.finish(42, n, 1010);
        assert_eq!(w.get(42, n), Warm { in_flight: 0, containers: 2 });
    }

    #[test]
    fn a_tick_within_the_period_does_nothing() {
        let snap = snapshot(1, &[]);
        let w = Warmth::fixed(64, 7000);
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
        let w = Warmth::fixed(16, 7000);
        let n = &snap.nodes()[0];
        // Far more functions than entries, each called once and finished.
        for h in 0..1000u64 {
            w.start(h, n, 5);
            w.finish(h, n, 5);
        }
        assert_eq!(w.len(), 16);
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
        let w = Warmth::fixed(64, 7000);
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
        let w = Warmth::fixed(64, 7000);
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
