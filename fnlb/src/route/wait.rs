//! Late binding: a call that no node can take warm or with room waits briefly at the balancer
//! for one of its function's containers to free, instead of going cold onto a full node.
//!
//! Why: at saturation with short functions, the first seconds' cold starts need more slots than
//! the cluster has. Sent onto full nodes, calls queue there, a queued call takes whatever
//! container frees (evicting it: cold again), and the cluster stays there (91 % cold, BENCHMARKS
//! "Late binding"). Held at the balancer instead, a call is handed the container its own
//! function just freed (warm), and cold starts go only where a slot is free — as fast as the
//! cluster frees slots, never faster.
//!
//! Two parts, both free of I/O and of the clock (every method takes `now_ms`):
//! - [`WaitRule`]: given [`Placement::Full`](super::Placement::Full) for a call, decide
//!   [`Decision::Wait`], [`Decision::Cold`] or [`Decision::Refuse`] from the snapshot, the
//!   policy's warmth table and what the queue says about the function.
//! - [`WaitQueue`]: bounded per function and in total; [`WaitQueue::on_call_end`] hands the node
//!   where a call of the function just ended to its oldest waiter (warm),
//!   [`WaitQueue::on_room`] hands a node with a free slot to the oldest waiter whose cold
//!   deadline has passed. A [`Waiter`] is awaited by the call; dropping it (the client left, the
//!   call gave up) removes it without trace: nothing is counted in the warmth table until the
//!   call is opened on a node.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::warmth::Warmth;
use super::Placement;
use crate::node::Snapshot;
use crate::route::Balancers;

/// Late binding's knobs (defaults tuned with `examples/routesim.rs --late-binding`, see
/// docs/BENCHMARKS.md "Late binding (routesim)").
#[derive(Clone, Copy, Debug)]
pub struct WaitConfig {
    /// Calls a node runs at once (`-node-capacity`): a cold start is admitted only onto a node
    /// with fewer of this balancer's calls in flight than its share of them (÷ the balancer
    /// count of the moment, [`WaitRule::shared_by`]), so it never queues there.
    pub slots: u32,
    /// The cold deadline is the estimated cold start, clamped to these bounds (ms).
    pub min_wait_ms: u64,
    pub max_wait_ms: u64,
    /// The longest a call waits at the balancer in all before it is refused (503).
    pub give_up_ms: u64,
    /// Waiters per function and in total.
    pub per_function: usize,
    pub total: usize,
    /// Nodes of the key's order whose calls of the function count as containers that will free.
    pub probes: usize,
}

impl WaitConfig {
    pub fn new(slots: u32) -> WaitConfig {
        WaitConfig {
            slots: slots.max(1),
            min_wait_ms: 250,
            max_wait_ms: 2000,
            give_up_ms: 4000,
            per_function: 256,
            total: 4096,
            probes: 8,
        }
    }
}

/// What to do with a call no node can take warm or with room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Enqueue it ([`WaitQueue::enqueue`] with `cold_at_ms`). Before `cold_at_ms` only a
    /// container of its own function is handed to it; from then on also a node with room.
    /// At `cold_at_ms` (if still waiting) ask [`WaitRule::at_deadline`]; at `give_up_ms` the
    /// call is refused if no node has room.
    Wait { cold_at_ms: u64, give_up_ms: u64 },
    /// Send it cold to this node (it has a free slot: the cold start does not queue).
    Cold(usize),
    /// Answer `503 {"msg": ...}` with `Retry-After: retry_after_s`.
    Refuse { retry_after_s: u32 },
}

/// What the queue knows about a function, for the rule ([`WaitQueue::view`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FnView {
    /// Calls of the function waiting now.
    pub waiting: usize,
    /// Mean time between two ends of the function's calls while it had waiters (ms): how fast
    /// its containers free.
    pub gap_ms: Option<u64>,
    /// The function's or the whole queue's bound is reached.
    pub full: bool,
}

/// The waiting rule, plus the one thing it learns: how long a cold start takes.
pub struct WaitRule {
    pub cfg: WaitConfig,
    /// How many balancers share the nodes, read at every use (live: heartbeats or pods).
    balancers: Balancers,
    /// Decayed mean of reported waits long enough to be a cold start (µs; 0 = none seen).
    cold_us: AtomicU64,
    /// Per function, where it is known: a direct-mapped table of [`COLD_ENTRIES`] words, each
    /// the key hash's top 24 bits, the function's cold start and its execution time (ms, 20 bits
    /// each). Cold starts differ by function (0.2–2 s in the benchmark); a function that lost its
    /// entry to another uses the cluster's mean cold start and is not known to free soon.
    cold_by_fn: Box<[AtomicU64]>,
}

/// Entries of the per-function table (8 KiB, flat in the number of paths).
const COLD_ENTRIES: usize = 1024;
/// A 20-bit field of an entry (ms: up to 17 minutes).
const FIELD: u64 = (1 << 20) - 1;

/// A reported wait at least this long is a cold start (a warm call reports about 0).
const COLD_SEEN: Duration = Duration::from_millis(50);
/// Until a cold start was seen: Fn's typical one.
const COLD_GUESS_MS: u64 = 500;

impl WaitRule {
    pub fn new(cfg: WaitConfig) -> WaitRule {
        let cold_by_fn = (0..COLD_ENTRIES).map(|_| AtomicU64::new(0)).collect();
        WaitRule { cfg, balancers: Balancers::new(1), cold_us: AtomicU64::new(0), cold_by_fn }
    }

    /// The nodes' slots are shared with the balancers `balancers` counts (one by default).
    pub fn shared_by(mut self, balancers: Balancers) -> WaitRule {
        self.balancers = balancers;
        self
    }

    fn entry(&self, hash: u64) -> (&AtomicU64, u64) {
        (&self.cold_by_fn[(hash as usize) % COLD_ENTRIES], hash >> 40)
    }

    /// The function's (cold start, execution) in ms, 0 where unknown.
    fn known(&self, hash: u64) -> (u64, u64) {
        let (entry, tag) = self.entry(hash);
        let word = entry.load(Relaxed);
        if word >> 40 != tag {
            return (0, 0);
        }
        ((word >> 20) & FIELD, word & FIELD)
    }

    /// Folds a sample into one of the function's fields (`shift` 20: cold, 0: execution).
    fn fold(&self, hash: u64, shift: u32, ms: u64) {
        let (entry, tag) = self.entry(hash);
        let word = entry.load(Relaxed);
        let word = if word >> 40 == tag { word } else { tag << 40 };
        let old = (word >> shift) & FIELD;
        let ms = ms.clamp(1, FIELD);
        let new = if old == 0 { ms } else { old - old / 4 + ms / 4 };
        entry.store((word & !(FIELD << shift)) | (new << shift), Relaxed);
    }

    /// A call of the function ran this long on its node (its answer's time less the wait it
    /// reported): how soon its busy containers free.
    pub fn observe_exec(&self, hash: u64, exec: Duration) {
        self.fold(hash, 0, exec.as_millis().min(u128::from(FIELD)) as u64);
    }

    /// A node reported this wait for a call of the function (`XXX-FXLB-WAIT`). A lost update
    /// under a race is harmless: these are hints.
    pub fn observe_wait(&self, hash: u64, wait: Duration) {
        if wait < COLD_SEEN {
            return;
        }
        let sample = wait.as_micros().min(u128::from(u64::MAX) / 2) as u64;
        let old = self.cold_us.load(Relaxed);
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        self.cold_us.store(new, Relaxed);
        self.fold(hash, 20, sample / 1000);
    }

    /// The cold deadline for the function: a cold start long, as the nodes report it for the
    /// function (or, unknown, for all), within the bounds.
    pub(crate) fn cold_ms(&self, hash: u64) -> u64 {
        let est = match (self.known(hash).0, self.cold_us.load(Relaxed) / 1000) {
            (0, 0) => COLD_GUESS_MS,
            (0, seen) => seen,
            (own, _) => own,
        };
        est.clamp(self.cfg.min_wait_ms, self.cfg.max_wait_ms)
    }

    /// Whether node `i` can start a container now without queueing it.
    pub fn has_slot(&self, snap: &Snapshot, i: usize) -> bool {
        snap.is_eligible(i) && snap.nodes()[i].in_flight() < (self.cfg.slots / self.balancers.get()).max(1)
    }

    /// This balancer's calls of the function in flight on its probe chain: the containers that
    /// will free for it.
    fn busy(&self, snap: &Snapshot, warmth: Option<&Warmth>, hash: u64) -> u32 {
        let Some(w) = warmth else { return 0 };
        // One guard for every probe's read (each load of the table is a locked write).
        let slots = w.view();
        snap.table()
            .order(hash)
            .filter(|i| snap.is_eligible(*i))
            .take(self.cfg.probes)
            .map(|i| slots.get(hash, &snap.nodes()[i]).in_flight)
            .sum()
    }

    fn refuse(&self) -> Decision {
        Decision::Refuse { retry_after_s: self.cfg.give_up_ms.div_ceil(1000).max(1) as u32 }
    }

    /// How long until one of the function's containers frees for a new waiter: each waiter
    /// ahead takes one; they free one per `gap` seen while it had waiters, or one per its
    /// execution time ÷ its calls in flight. `None`: not known; `u64::MAX`: none will.
    fn predicted(&self, busy: u32, view: FnView, hash: u64) -> Option<u64> {
        let ahead = view.waiting as u64 + 1;
        match (busy, view.gap_ms, self.known(hash).1) {
            (0, _, _) => Some(u64::MAX),
            (_, Some(gap), _) => Some(ahead.saturating_mul(gap)),
            (_, None, 0) => None,
            (b, None, exec) => Some(ahead.saturating_mul(exec) / u64::from(b)),
        }
    }

    /// A call for `hash` that the policy would not send warm: [`Placement::Full`] (every probe
    /// full; `best` the least loaded) or [`Placement::Room`] (a cold start on that node).
    ///
    /// Full: wait for one of the function's containers while that is predicted to cost less
    /// than a cold start (unknown: up to the deadline, a cold start long); else go cold to
    /// `best` if it has a free slot, or wait for one; refuse when the queue is full and no slot
    /// is free. Room: wait only when one of its containers is predicted to free within half a
    /// cold start (for up to twice the prediction); else start the container.
    pub fn decide(
        &self,
        snap: &Snapshot,
        warmth: Option<&Warmth>,
        hash: u64,
        placement: Placement,
        view: FnView,
        now_ms: u64,
    ) -> Decision {
        let cold = self.cold_ms(hash);
        let give_up_ms = now_ms + self.cfg.give_up_ms;
        let busy = self.busy(snap, warmth, hash);
        let best = match placement {
            Placement::Go(i) => return Decision::Cold(i),
            Placement::Room(i) => {
                return match self.predicted(busy, view, hash) {
                    Some(p) if !view.full && p.saturating_mul(2) <= cold => {
                        Decision::Wait { cold_at_ms: now_ms + p.saturating_mul(2).max(1), give_up_ms }
                    }
                    _ => Decision::Cold(i),
                };
            }
            Placement::Full(best) => best,
        };
        let predicted = self.predicted(busy, view, hash).unwrap_or(0);
        let slot = self.has_slot(snap, best);
        if predicted > cold || view.full {
            if slot {
                return Decision::Cold(best);
            }
            if view.full {
                return self.refuse();
            }
            return Decision::Wait { cold_at_ms: now_ms, give_up_ms };
        }
        Decision::Wait { cold_at_ms: now_ms + cold, give_up_ms }
    }

    /// A waiting call reached its cold deadline (or its give-up time) unserved, and the policy
    /// still finds every probe full (`best` the least loaded): cold if `best` has a free slot;
    /// else wait on (for a slot) until `give_up_ms`, then refuse.
    pub fn at_deadline(&self, snap: &Snapshot, best: usize, give_up_ms: u64, now_ms: u64) -> Decision {
        if self.has_slot(snap, best) {
            Decision::Cold(best)
        } else if now_ms >= give_up_ms {
            self.refuse()
        } else {
            Decision::Wait { cold_at_ms: now_ms, give_up_ms }
        }
    }
}

/// What a waiter is handed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover<N> {
    /// Where to send the call.
    pub node: N,
    /// A call of its own function just ended there (its container is idle); else the node had
    /// room and the call starts cold.
    pub warm: bool,
    /// How long it waited.
    pub waited_ms: u64,
}

/// The queue was full: refuse the call ([`WaitRule::decide`] with `view.full` says how).
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

/// Counters for /metrics, /1/lb/stats and the dashboard (monotonic except `waiting`).
#[derive(Default)]
pub struct WaitStats {
    /// Calls that waited at the balancer.
    pub waits: AtomicU64,
    /// Handed a container of their own function (warm).
    pub handed_warm: AtomicU64,
    /// Handed a node with room (cold).
    pub handed_room: AtomicU64,
    /// Sum of the waits that ended with a handover or a cold start at the deadline (ms).
    pub waited_ms: AtomicU64,
    /// Left at their deadline to go cold.
    pub went_cold: AtomicU64,
    /// Gave up (refused with 503 after waiting).
    pub gave_up: AtomicU64,
    /// Refused at once: the queue was full.
    pub refused_full: AtomicU64,
    /// Their client left (or the call was dropped) while waiting.
    pub left: AtomicU64,
    /// Waiting now.
    pub waiting: AtomicUsize,
}

/// [`WaitStats`] read at one moment (for `/1/lb/cluster`'s `waiting` and `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct WaitCounts {
    /// Waiting now.
    pub now: usize,
    pub waits: u64,
    pub handed_warm: u64,
    pub handed_room: u64,
    pub went_cold: u64,
    pub gave_up: u64,
    pub refused_full: u64,
    pub left: u64,
    /// Sum of the waits that ended with a node (ms).
    pub waited_ms: u64,
}

impl WaitStats {
    pub(crate) fn counts(&self) -> WaitCounts {
        WaitCounts {
            now: self.waiting.load(Relaxed),
            waits: self.waits.load(Relaxed),
            handed_warm: self.handed_warm.load(Relaxed),
            handed_room: self.handed_room.load(Relaxed),
            went_cold: self.went_cold.load(Relaxed),
            gave_up: self.gave_up.load(Relaxed),
            refused_full: self.refused_full.load(Relaxed),
            left: self.left.load(Relaxed),
            waited_ms: self.waited_ms.load(Relaxed),
        }
    }
}

/// Why a waiter leaves the queue without a handover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leave {
    /// Its deadline passed and it goes cold (to a node [`WaitRule::at_deadline`] named).
    Cold,
    /// It is refused (503).
    GaveUp,
    /// Its client left.
    Gone,
}

struct Slot<N> {
    ticket: u64,
    since_ms: u64,
    tx: oneshot::Sender<Handover<N>>,
}

struct FnQueue<N> {
    waiters: VecDeque<Slot<N>>,
    last_end_ms: u64,
    gap_ms: Option<u64>,
}

struct State<N> {
    fns: HashMap<u64, FnQueue<N>>,
    /// Every waiter by ticket (oldest first): its function and cold deadline, for `on_room`.
    order: BTreeMap<u64, (u64, u64)>,
    next_ticket: u64,
}

struct Inner<N> {
    cfg: WaitConfig,
    state: Mutex<State<N>>,
    stats: WaitStats,
}

/// The balancer's wait queue. `N` is what a waiter is handed: the node (`Arc<Node>` in the
/// proxy, an index in the simulator). One mutex, held for a few map operations and never
/// across an await; a call end costs one atomic load while nobody waits.
pub struct WaitQueue<N> {
    inner: Arc<Inner<N>>,
}

impl<N> Clone for WaitQueue<N> {
    fn clone(&self) -> Self {
        WaitQueue { inner: Arc::clone(&self.inner) }
    }
}

/// A call waiting at the balancer. Await [`Waiter::handed`]; drop it to leave (nothing stays).
pub struct Waiter<N> {
    ticket: u64,
    hash: u64,
    since_ms: u64,
    rx: oneshot::Receiver<Handover<N>>,
    inner: Arc<Inner<N>>,
    /// Set once it left the queue another way than by being dropped.
    done: bool,
}

impl<N: Clone + Send + 'static> WaitQueue<N> {
    pub fn new(cfg: WaitConfig) -> WaitQueue<N> {
        let state = State { fns: HashMap::new(), order: BTreeMap::new(), next_ticket: 1 };
        WaitQueue { inner: Arc::new(Inner { cfg, state: Mutex::new(state), stats: WaitStats::default() }) }
    }

    pub fn stats(&self) -> &WaitStats {
        &self.inner.stats
    }

    fn lock(&self) -> MutexGuard<'_, State<N>> {
        self.inner.lock()
    }

    /// What the rule needs to know about the function's waiters.
    pub fn view(&self, hash: u64) -> FnView {
        let total = self.inner.stats.waiting.load(Relaxed);
        let full_total = total >= self.inner.cfg.total;
        if total == 0 {
            return FnView { full: full_total, ..FnView::default() };
        }
        let st = self.lock();
        match st.fns.get(&hash) {
            Some(q) => FnView {
                waiting: q.waiters.len(),
                gap_ms: q.gap_ms,
                full: full_total || q.waiters.len() >= self.inner.cfg.per_function,
            },
            None => FnView { full: full_total, ..FnView::default() },
        }
    }

    /// Adds a waiter for the function; from `cold_at_ms` on, [`on_room`](Self::on_room) may
    /// hand it a node to go cold.
    pub fn enqueue(&self, hash: u64, now_ms: u64, cold_at_ms: u64) -> Result<Waiter<N>, Full> {
        let cfg = &self.inner.cfg;
        let mut st = self.lock();
        if st.order.len() >= cfg.total || st.fns.get(&hash).is_some_and(|q| q.waiters.len() >= cfg.per_function) {
            drop(st);
            self.inner.stats.refused_full.fetch_add(1, Relaxed);
            return Err(Full);
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        let (tx, rx) = oneshot::channel();
        st.fns
            .entry(hash)
            .or_insert_with(|| FnQueue { waiters: VecDeque::new(), last_end_ms: 0, gap_ms: None })
            .waiters
            .push_back(Slot { ticket, since_ms: now_ms, tx });
        st.order.insert(ticket, (hash, cold_at_ms));
        drop(st);
        self.inner.stats.waits.fetch_add(1, Relaxed);
        self.inner.stats.waiting.fetch_add(1, Relaxed);
        Ok(Waiter { ticket, hash, since_ms: now_ms, rx, inner: Arc::clone(&self.inner), done: false })
    }

    /// A call of the function ended on `node`, which has a slot free (its container is idle):
    /// hand it to the function's oldest waiter. Returns the ticket handed, if any.
    pub fn on_call_end(&self, hash: u64, node: &N, now_ms: u64) -> Option<u64> {
        if self.inner.stats.waiting.load(Relaxed) == 0 {
            return None;
        }
        let mut st = self.lock();
        let q = st.fns.get_mut(&hash)?;
        if q.last_end_ms != 0 {
            let gap = now_ms.saturating_sub(q.last_end_ms);
            q.gap_ms = Some(q.gap_ms.map_or(gap, |g| g - g / 4 + gap / 4));
        }
        q.last_end_ms = now_ms;
        loop {
            let q = st.fns.get_mut(&hash)?;
            let slot = q.waiters.pop_front()?;
            if q.waiters.is_empty() {
                st.fns.remove(&hash);
            }
            st.order.remove(&slot.ticket);
            // Err: its client left between being dropped and deregistering: the next one.
            if let Some(t) = self.inner.hand(slot, node.clone(), true, now_ms) {
                return Some(t);
            }
        }
    }

    /// `node` has a free slot that no waiter of its last function took: hand it to the oldest
    /// waiter whose cold deadline has passed. Returns the ticket handed, if any.
    pub fn on_room(&self, node: &N, now_ms: u64) -> Option<u64> {
        if self.inner.stats.waiting.load(Relaxed) == 0 {
            return None;
        }
        let mut st = self.lock();
        loop {
            let (ticket, hash) =
                st.order.iter().find(|(_, (_, cold_at))| *cold_at <= now_ms).map(|(t, (h, _))| (*t, *h))?;
            st.order.remove(&ticket);
            let q = st.fns.get_mut(&hash).expect("a ticket's function has a queue");
            let at = q.waiters.iter().position(|s| s.ticket == ticket).expect("a ticket has a slot");
            let slot = q.waiters.remove(at).expect("position is in range");
            if q.waiters.is_empty() {
                st.fns.remove(&hash);
            }
            if let Some(t) = self.inner.hand(slot, node.clone(), false, now_ms) {
                return Some(t);
            }
        }
    }

    /// Waiting now.
    pub(crate) fn len(&self) -> usize {
        self.inner.stats.waiting.load(Relaxed)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<N> Inner<N> {
    fn lock(&self) -> MutexGuard<'_, State<N>> {
        // A panic while holding it leaves maps that are still consistent (every update is a
        // single insert or remove): go on with them.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends the handover; `None` if the waiter's receiver is gone.
    fn hand(&self, slot: Slot<N>, node: N, warm: bool, now_ms: u64) -> Option<u64> {
        let waited_ms = now_ms.saturating_sub(slot.since_ms);
        match slot.tx.send(Handover { node, warm, waited_ms }) {
            Ok(()) => {
                self.stats.waiting.fetch_sub(1, Relaxed);
                let handed = if warm { &self.stats.handed_warm } else { &self.stats.handed_room };
                handed.fetch_add(1, Relaxed);
                self.stats.waited_ms.fetch_add(waited_ms, Relaxed);
                Some(slot.ticket)
            }
            Err(_) => {
                // Out of the queue now, so its Drop finds nothing: count it here.
                self.stats.waiting.fetch_sub(1, Relaxed);
                self.stats.left.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Removes the waiter if it is still queued. Returns whether it was.
    fn remove(&self, ticket: u64, hash: u64) -> bool {
        let mut st = self.lock();
        if st.order.remove(&ticket).is_none() {
            return false;
        }
        if let Some(q) = st.fns.get_mut(&hash) {
            q.waiters.retain(|s| s.ticket != ticket);
            if q.waiters.is_empty() {
                st.fns.remove(&hash);
            }
        }
        drop(st);
        self.stats.waiting.fetch_sub(1, Relaxed);
        true
    }
}

impl<N> Waiter<N> {
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// The node it is handed, when it is; `None` if the queue went away.
    pub(crate) async fn handed(&mut self) -> Option<Handover<N>> {
        let h = (&mut self.rx).await.ok();
        self.done = h.is_some();
        h
    }

    /// The node it was handed, if it was (for a caller that is not async: the simulator).
    pub fn try_handed(&mut self) -> Option<Handover<N>> {
        let h = self.rx.try_recv().ok();
        self.done |= h.is_some();
        h
    }

    /// Leaves the queue without a handover, counted as `why`. If a handover raced in, it is
    /// returned (the caller may use it, or drop it: nothing was counted for it yet).
    pub fn leave(mut self, why: Leave, now_ms: u64) -> Option<Handover<N>> {
        self.done = true;
        if !self.inner.remove(self.ticket, self.hash) {
            return self.rx.try_recv().ok();
        }
        let s = &self.inner.stats;
        match why {
            Leave::Cold => {
                s.went_cold.fetch_add(1, Relaxed);
                s.waited_ms.fetch_add(now_ms.saturating_sub(self.since_ms), Relaxed);
            }
            Leave::GaveUp => {
                s.gave_up.fetch_add(1, Relaxed);
            }
            Leave::Gone => {
                s.left.fetch_add(1, Relaxed);
            }
        }
        None
    }
}

impl<N> Drop for Waiter<N> {
    fn drop(&mut self) {
        if !self.done && self.inner.remove(self.ticket, self.hash) {
            self.inner.stats.left.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::testing::{key, snapshot};

    fn rule() -> WaitRule {
        WaitRule::new(WaitConfig::new(4))
    }

    fn queue(per_function: usize, total: usize) -> WaitQueue<usize> {
        WaitQueue::new(WaitConfig { per_function, total, ..WaitConfig::new(4) })
    }

    /// `n` calls of the key in flight on node `i`, as the warmth table and the node count them.
    fn busy(snap: &Snapshot, w: &Warmth, h: u64, i: usize, n: usize) -> Vec<crate::node::InFlight> {
        (0..n)
            .map(|_| {
                w.start(h, &snap.nodes()[i], 1);
                snap.nodes()[i].start_call()
            })
            .collect()
    }

    #[test]
    fn a_node_s_slots_follow_the_live_balancer_count() {
        let snap = snapshot(1, &[]);
        let balancers = Balancers::new(1);
        let r = WaitRule::new(WaitConfig::new(4)).shared_by(balancers.clone());
        let _calls: Vec<_> = (0..2).map(|_| snap.nodes()[0].start_call()).collect();
        // Alone, this balancer may run 4 calls on the node: 2 leave room.
        assert!(r.has_slot(&snap, 0));
        // A second balancer joins (a heartbeat, a pod): its share is 2, and they are taken.
        balancers.set(2);
        assert!(!r.has_slot(&snap, 0));
        // Never less than one call, however many balancers count themselves.
        balancers.set(8);
        let alone = snapshot(1, &[]);
        assert!(r.has_slot(&alone, 0));
        balancers.set(1);
        assert!(r.has_slot(&snap, 0));
    }

    #[test]
    fn a_function_with_busy_containers_waits_a_cold_start_long() {
        let snap = snapshot(4, &[]);
        let w = Warmth::fixed(64, 30_000);
        let (_, h) = key(1);
        let home = snap.table().home(h).unwrap();
        let _calls = busy(&snap, &w, h, home, 2);
        let r = rule();
        assert_eq!(
            r.decide(&snap, Some(&w), h, Placement::Full(home), FnView::default(), 1000),
            Decision::Wait { cold_at_ms: 1500, give_up_ms: 5000 }
        );
        // The nodes report 1.2 s cold starts: the deadline follows, within its bounds.
        for _ in 0..64 {
            r.observe_wait(h, Duration::from_millis(1200));
            r.observe_wait(h, Duration::from_millis(3)); // warm: not a cold start
        }
        assert_eq!(r.cold_ms(h), 1200);
        assert!(matches!(
            r.decide(&snap, Some(&w), h, Placement::Full(home), FnView::default(), 0),
            Decision::Wait { cold_at_ms: 1200, .. }
        ));
        for _ in 0..64 {
            r.observe_wait(h, Duration::from_secs(9));
        }
        assert_eq!(r.cold_ms(h), 2000);
        for _ in 0..256 {
            r.observe_wait(h, Duration::from_millis(60));
        }
        assert_eq!(r.cold_ms(h), 250);
        // Another function with 800 ms cold starts has its own deadline; one never seen cold
        // gets the cluster's mean.
        let (_, g) = key(2);
        for _ in 0..16 {
            r.observe_wait(g, Duration::from_millis(800));
        }
        assert_eq!(r.cold_ms(g), 800);
        assert_eq!(r.cold_ms(h), 250);
        let (_, unseen) = key(9);
        assert!((250..=800).contains(&r.cold_ms(unseen)), "{}", r.cold_ms(unseen));
    }

    #[test]
    fn a_function_with_nothing_to_free_goes_cold_at_once_where_a_slot_is_free() {
        let snap = snapshot(4, &[]);
        let w = Warmth::fixed(64, 30_000);
        let (_, h) = key(2);
        let r = rule();
        assert_eq!(r.decide(&snap, Some(&w), h, Placement::Full(3), FnView::default(), 10), Decision::Cold(3));
        // No slot free on the best node (4 calls, the node's share): wait for room, cold-ready now.
        let _full: Vec<_> = (0..4).map(|_| snap.nodes()[3].start_call()).collect();
        assert_eq!(
            r.decide(&snap, Some(&w), h, Placement::Full(3), FnView::default(), 10),
            Decision::Wait { cold_at_ms: 10, give_up_ms: 4010 }
        );
        // A policy without a warmth table: nothing known to free either.
        assert_eq!(r.decide(&snap, None, h, Placement::Full(0), FnView::default(), 10), Decision::Cold(0));
    }

    #[test]
    fn a_long_line_for_few_containers_goes_cold_instead() {
        let snap = snapshot(4, &[]);
        let w = Warmth::fixed(64, 30_000);
        let (_, h) = key(3);
        let home = snap.table().home(h).unwrap();
        let _calls = busy(&snap, &w, h, home, 1);
        let r = rule();
        let other = (home + 1) % 4;
        // Its containers free every 100 ms: 4 ahead means 500 ms, a cold start: still waits.
        let view = FnView { waiting: 4, gap_ms: Some(100), full: false };
        assert!(matches!(
            r.decide(&snap, Some(&w), h, Placement::Full(other), view, 0),
            Decision::Wait { cold_at_ms: 500, .. }
        ));
        // 5 ahead: 600 ms > 500 ms: cold now.
        let view = FnView { waiting: 5, ..view };
        assert_eq!(r.decide(&snap, Some(&w), h, Placement::Full(other), view, 0), Decision::Cold(other));
    }

    #[test]
    fn room_for_a_cold_start_waits_only_for_a_container_about_to_free() {
        let snap = snapshot(4, &[]);
        let w = Warmth::fixed(64, 30_000);
        let (_, h) = key(5);
        let home = snap.table().home(h).unwrap();
        let r = rule();
        let room = Placement::Room(home);
        // Nothing known about how fast its containers free: the container starts.
        let _calls = busy(&snap, &w, h, home, 4);
        assert_eq!(r.decide(&snap, Some(&w), h, room, FnView::default(), 0), Decision::Cold(home));
        // Its calls run 200 ms and 4 are in flight: one frees in about 50 ms, well within half
        // a cold start (500 ms): wait, twice the prediction at most.
        r.observe_exec(h, Duration::from_millis(200));
        assert_eq!(
            r.decide(&snap, Some(&w), h, room, FnView::default(), 0),
            Decision::Wait { cold_at_ms: 100, give_up_ms: 4000 }
        );
        // With 5 already waiting (300 ms) it is not worth it.
        let view = FnView { waiting: 5, ..FnView::default() };
        assert_eq!(r.decide(&snap, Some(&w), h, room, view, 0), Decision::Cold(home));
        // A function with no call in flight has nothing to wait for.
        let (_, g) = key(6);
        r.observe_exec(g, Duration::from_millis(10));
        assert_eq!(r.decide(&snap, Some(&w), g, Placement::Room(1), FnView::default(), 0), Decision::Cold(1));
        // Warm goes at once.
        assert_eq!(r.decide(&snap, Some(&w), h, Placement::Go(2), FnView::default(), 0), Decision::Cold(2));
    }

    #[test]
    fn a_full_queue_and_no_slot_refuses_with_retry_after() {
        let snap = snapshot(2, &[]);
        let w = Warmth::fixed(64, 30_000);
        let (_, h) = key(4);
        let _a: Vec<_> = (0..4).map(|_| snap.nodes()[0].start_call()).collect();
        let r = rule();
        let full = FnView { full: true, ..FnView::default() };
        assert_eq!(r.decide(&snap, Some(&w), h, Placement::Full(0), full, 0), Decision::Refuse { retry_after_s: 4 });
        assert_eq!(r.decide(&snap, Some(&w), h, Placement::Full(1), full, 0), Decision::Cold(1));
    }

    #[test]
    fn at_the_deadline_cold_if_a_slot_is_free_else_wait_then_refuse() {
        let snap = snapshot(2, &[]);
        let r = rule();
        assert_eq!(r.at_deadline(&snap, 1, 4000, 500), Decision::Cold(1));
        let _full: Vec<_> = (0..4).map(|_| snap.nodes()[1].start_call()).collect();
        assert_eq!(r.at_deadline(&snap, 1, 4000, 500), Decision::Wait { cold_at_ms: 500, give_up_ms: 4000 });
        assert_eq!(r.at_deadline(&snap, 1, 4000, 4000), Decision::Refuse { retry_after_s: 4 });
        // A node that went down is never a place for a cold start.
        let snap = snapshot(2, &[true, false]);
        assert_eq!(r.at_deadline(&snap, 1, 4000, 500), Decision::Wait { cold_at_ms: 500, give_up_ms: 4000 });
    }

    #[test]
    fn a_call_end_hands_its_node_to_the_oldest_waiter_of_that_function() {
        let q = queue(8, 64);
        let mut a1 = q.enqueue(1, 10, 510).unwrap();
        let mut b1 = q.enqueue(2, 11, 511).unwrap();
        let mut a2 = q.enqueue(1, 12, 512).unwrap();
        assert_eq!(q.view(1), FnView { waiting: 2, gap_ms: None, full: false });
        // A call of function 2 ended on node 7: b1 gets it, warm, though a1 is older.
        assert_eq!(q.on_call_end(2, &7, 100), Some(b1.ticket()));
        assert_eq!(b1.try_handed(), Some(Handover { node: 7, warm: true, waited_ms: 89 }));
        assert_eq!(q.on_call_end(2, &7, 101), None, "nobody else waits for function 2");
        assert_eq!(q.on_call_end(1, &5, 200), Some(a1.ticket()));
        assert_eq!(a1.try_handed().unwrap().node, 5);
        assert_eq!(q.on_call_end(1, &6, 260), Some(a2.ticket()));
        assert_eq!(a2.try_handed(), Some(Handover { node: 6, warm: true, waited_ms: 248 }));
        assert!(q.is_empty());
        let s = q.stats();
        assert_eq!((s.waits.load(Relaxed), s.handed_warm.load(Relaxed)), (3, 3));
        assert_eq!(s.waited_ms.load(Relaxed), 89 + 190 + 248);
    }

    #[test]
    fn the_function_learns_how_fast_its_containers_free() {
        let q = queue(8, 64);
        let _w: Vec<_> = (0..4).map(|i| q.enqueue(1, i, 1000).unwrap()).collect();
        q.on_call_end(1, &0, 100);
        q.on_call_end(1, &0, 200);
        assert_eq!(q.view(1), FnView { waiting: 2, gap_ms: Some(100), full: false });
        q.on_call_end(1, &0, 500); // gap 300: the mean moves a quarter of the way
        assert_eq!(q.view(1).gap_ms, Some(150));
    }

    #[test]
    fn room_goes_to_the_oldest_waiter_past_its_cold_deadline() {
        let q = queue(8, 64);
        let young = q.enqueue(1, 0, 900).unwrap();
        let mut ready = q.enqueue(2, 5, 400).unwrap();
        let mut later = q.enqueue(3, 6, 450).unwrap();
        assert_eq!(q.on_room(&4, 300), None, "nobody's deadline has passed");
        assert_eq!(q.on_room(&4, 460), Some(ready.ticket()));
        assert_eq!(ready.try_handed(), Some(Handover { node: 4, warm: false, waited_ms: 455 }));
        assert_eq!(q.on_room(&4, 460), Some(later.ticket()));
        assert!(later.try_handed().is_some());
        assert_eq!(q.on_room(&4, 460), None);
        assert_eq!(q.len(), 1);
        drop(young);
        assert_eq!(q.stats().handed_room.load(Relaxed), 2);
    }

    #[test]
    fn the_queue_is_bounded_per_function_and_in_total() {
        let q = queue(2, 3);
        let a = q.enqueue(1, 0, 0).unwrap();
        let _b = q.enqueue(1, 0, 0).unwrap();
        assert!(q.view(1).full);
        assert!(q.enqueue(1, 0, 0).is_err(), "two per function");
        let _c = q.enqueue(2, 0, 0).unwrap();
        assert!(q.view(3).full);
        assert_eq!(q.enqueue(3, 0, 0).err(), Some(Full));
        assert_eq!(q.stats().refused_full.load(Relaxed), 2);
        drop(a);
        assert!(!q.view(1).full);
        assert!(q.enqueue(1, 0, 0).is_ok(), "a dropped waiter frees its place");
    }

    #[test]
    fn a_waiter_whose_client_left_is_gone_without_trace() {
        let snap = snapshot(2, &[]);
        let w = Warmth::fixed(64, 30_000);
        let q = queue(8, 64);
        let gone = q.enqueue(1, 0, 0).unwrap();
        let mut stays = q.enqueue(1, 1, 0).unwrap();
        drop(gone);
        assert_eq!(q.len(), 1);
        assert_eq!(q.view(1).waiting, 1);
        // The next container of the function goes to the one still there.
        assert_eq!(q.on_call_end(1, &0, 50), Some(stays.ticket()));
        assert_eq!(stays.try_handed().unwrap().node, 0);
        assert!(q.is_empty());
        assert_eq!(q.stats().left.load(Relaxed), 1);
        // Nothing was counted for either in the warmth table (only opening an attempt counts).
        assert_eq!(w.get(1, &snap.nodes()[0]), Default::default());
    }

    #[test]
    fn a_waiter_whose_receiver_is_gone_is_skipped_for_the_next() {
        // The receiver dropped while its waiter is still registered (a race with Drop): the
        // handover falls through to the next waiter.
        let q = queue(8, 64);
        let first = q.enqueue(1, 0, 0).unwrap();
        let mut second = q.enqueue(1, 0, 0).unwrap();
        let mut first = first;
        first.rx.close();
        assert_eq!(q.on_call_end(1, &3, 10), Some(second.ticket()));
        assert_eq!(second.try_handed().unwrap().node, 3);
        assert_eq!(q.len(), 0);
        drop(first);
        assert_eq!(q.stats().left.load(Relaxed), 1, "counted once, when it was skipped");
    }

    #[test]
    fn leaving_at_the_deadline_counts_once_and_returns_a_racing_handover() {
        let q = queue(8, 64);
        let w = q.enqueue(1, 0, 100).unwrap();
        assert_eq!(w.leave(Leave::Cold, 500), None);
        let w2 = q.enqueue(1, 0, 100).unwrap();
        q.on_call_end(1, &9, 600);
        // Handed just as it gave up: the caller gets the node back to use.
        assert_eq!(w2.leave(Leave::GaveUp, 600).map(|h| h.node), Some(9));
        let w3 = q.enqueue(2, 0, 100).unwrap();
        assert_eq!(w3.leave(Leave::GaveUp, 700), None);
        let s = q.stats();
        assert_eq!(
            (s.went_cold.load(Relaxed), s.gave_up.load(Relaxed), s.left.load(Relaxed), s.waited_ms.load(Relaxed)),
            (1, 1, 0, 500 + 600)
        );
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn an_awaiting_call_is_woken_with_its_node() {
        let q: WaitQueue<usize> = queue(8, 64);
        let mut w = q.enqueue(5, 0, 1000).unwrap();
        let q2 = q.clone();
        let t = tokio::spawn(async move { w.handed().await });
        tokio::task::yield_now().await;
        q2.on_call_end(5, &2, 40);
        assert_eq!(t.await.unwrap(), Some(Handover { node: 2, warm: true, waited_ms: 40 }));
    }
}
