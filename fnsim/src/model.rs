//! The simulated Fn node as a pure state machine: container slots, warm reuse, LRU eviction, the
//! FIFO wait queue and idle expiry (BENCHMARKS.md §2, "Node model").
//!
//! Nothing here sleeps or touches a socket: every method takes `now` and returns a decision, so the
//! rules can be unit-tested with a synthetic clock. The async shell in `server` does the sleeping
//! (cold start, execution) and calls [`NodeModel::finish`] when a container is released.
//!
//! Expiry is lazy: idle containers past the idle timeout are removed at the next event
//! (arrival, finish, stats read). That yields the same decisions as a timer would, because an
//! expired container only matters when some call could have reused or evicted it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// A function key (the URL path); shared so containers and queue entries do not copy strings.
pub type FnKey = Arc<str>;

/// What a node does with a call when every slot is busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueMode {
    /// Wait in a FIFO queue until a container frees (Fn's behaviour).
    Queue,
    /// Answer 503 at once.
    Reject,
}

/// A container handed to one call. Given back with [`NodeModel::finish`].
#[derive(Clone, Debug)]
pub struct Lease {
    /// Container identity; a warm start reuses the identity of the idle container it takes.
    pub container: u64,
    pub func: FnKey,
    /// True if the container is new: the call pays the cold-start time.
    pub cold: bool,
    /// The function whose idle container was evicted to make room, if any.
    pub evicted: Option<FnKey>,
    /// When the container became busy (cold start included in its busy time).
    pub started: Instant,
    /// Containers from before a [`NodeModel::reset`] are discarded instead of idled.
    generation: u64,
}

/// The decision for an arriving call.
#[derive(Debug)]
pub enum Arrival {
    /// Start now (warm or cold).
    Start(Lease),
    /// Wait; the ticket comes back from [`NodeModel::finish`] with a lease when it may start.
    Queued(u64),
    /// Every slot is busy and the node is in reject mode.
    Rejected,
}

/// Counters since start or the last [`NodeModel::reset_stats`], plus current occupancy.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeStats {
    pub calls: u64,
    pub warm_starts: u64,
    pub cold_starts: u64,
    pub evictions: u64,
    pub expiries: u64,
    /// Calls that had to wait in the queue.
    pub queued: u64,
    /// Sum over dispatched queued calls of their time in the queue.
    pub queue_wait_seconds: f64,
    /// Sum over finished calls of container-busy time (cold start + execution).
    pub busy_slot_seconds: f64,
    pub rejected: u64,
    /// Calls answered 500 by `--fail-rate` (counted by the shell; they never reach the model).
    pub failed: u64,
    /// Calls abandoned by their client while queued.
    pub cancelled: u64,
    /// Containers currently executing (or cold-starting).
    pub busy: usize,
    /// Idle (warm) containers right now.
    pub idle: usize,
    /// Calls waiting right now.
    pub queue_len: usize,
    /// Per function: calls and cold starts.
    pub functions: HashMap<String, FnCounts>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FnCounts {
    pub calls: u64,
    pub cold_starts: u64,
}

#[derive(Debug)]
struct Idle {
    container: u64,
    since: Instant,
}

#[derive(Debug)]
struct Waiting {
    ticket: u64,
    func: FnKey,
    since: Instant,
}

/// One node's containers and queue.
#[derive(Debug)]
pub struct NodeModel {
    slots: usize,
    idle_timeout: Duration,
    queue_mode: QueueMode,
    /// Containers currently leased.
    busy: usize,
    /// Idle containers per function, least recently idled at the front.
    idle_by_fn: HashMap<FnKey, VecDeque<Idle>>,
    /// All idle containers ordered by idle time: the first is the LRU eviction victim and the
    /// next to expire.
    lru: BTreeMap<(Instant, u64), FnKey>,
    queue: VecDeque<Waiting>,
    next_container: u64,
    next_ticket: u64,
    generation: u64,
    /// Interned keys and per-function counters.
    functions: HashMap<FnKey, FnCounts>,
    stats: NodeStats,
}

impl NodeModel {
    pub fn new(slots: usize, idle_timeout: Duration, queue_mode: QueueMode) -> Self {
        NodeModel {
            slots: slots.max(1),
            idle_timeout,
            queue_mode,
            busy: 0,
            idle_by_fn: HashMap::new(),
            lru: BTreeMap::new(),
            queue: VecDeque::new(),
            next_container: 0,
            next_ticket: 0,
            generation: 0,
            functions: HashMap::new(),
            stats: NodeStats::default(),
        }
    }

    /// A call for `func` arrives at `now`.
    pub fn arrive(&mut self, now: Instant, func: &str) -> Arrival {
        self.expire(now);
        let func = self.intern(func);
        self.stats.calls += 1;
        if let Some(c) = self.functions.get_mut(&func) {
            c.calls += 1;
        }
        // A non-empty queue means no container can be had (the head would have taken it), and
        // FIFO forbids overtaking anyway.
        if self.queue.is_empty() {
            if let Some(lease) = self.try_start(now, &func) {
                return Arrival::Start(lease);
            }
        }
        match self.queue_mode {
            QueueMode::Reject => {
                self.stats.rejected += 1;
                Arrival::Rejected
            }
            QueueMode::Queue => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.queue.push_back(Waiting { ticket, func, since: now });
                self.stats.queued += 1;
                Arrival::Queued(ticket)
            }
        }
    }

    /// The call holding `lease` is done at `now`: its container becomes idle, and queued calls
    /// that can now start are returned in FIFO order with their leases.
    pub fn finish(&mut self, now: Instant, lease: Lease) -> Vec<(u64, Lease)> {
        self.expire(now);
        self.busy -= 1;
        self.stats.busy_slot_seconds += now.saturating_duration_since(lease.started).as_secs_f64();
        if lease.generation == self.generation {
            self.idle_by_fn
                .entry(lease.func.clone())
                .or_default()
                .push_back(Idle { container: lease.container, since: now });
            self.lru.insert((now, lease.container), lease.func);
        }
        let mut started = Vec::new();
        while let Some(head) = self.queue.front() {
            let func = head.func.clone();
            let Some(lease) = self.try_start(now, &func) else {
                break;
            };
            let head = self.queue.pop_front().expect("queue head exists");
            self.stats.queue_wait_seconds += now.saturating_duration_since(head.since).as_secs_f64();
            started.push((head.ticket, lease));
        }
        started
    }

    /// The client of a queued call went away. Returns false if the ticket is no longer queued
    /// (it was already given a lease, which the caller must then `finish`).
    pub fn cancel(&mut self, ticket: u64) -> bool {
        match self.queue.iter().position(|w| w.ticket == ticket) {
            Some(i) => {
                self.queue.remove(i);
                self.stats.cancelled += 1;
                true
            }
            None => false,
        }
    }

    /// The node "restarts": every idle container is gone, and busy ones are discarded when they
    /// finish. Queued calls stay queued.
    pub fn reset(&mut self) {
        self.generation += 1;
        self.idle_by_fn.clear();
        self.lru.clear();
    }

    /// Removes idle containers whose idle timeout has passed at `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some((&(since, container), _)) = self.lru.first_key_value() {
            if since + self.idle_timeout > now {
                break;
            }
            let func = self.lru.remove(&(since, container)).expect("key exists");
            self.remove_idle(&func, container);
            self.stats.expiries += 1;
        }
    }

    /// Counts the call as failed without running it (the shell's `--fail-rate`).
    pub fn count_failed(&mut self) {
        self.stats.failed += 1;
    }

    /// Current counters and occupancy (expiring first, so `idle` is accurate).
    pub fn stats(&mut self, now: Instant) -> NodeStats {
        self.expire(now);
        let mut s = self.stats.clone();
        s.busy = self.busy;
        s.idle = self.lru.len();
        s.queue_len = self.queue.len();
        s.functions = self.functions.iter().filter(|(_, c)| c.calls > 0).map(|(k, c)| (k.to_string(), *c)).collect();
        s
    }

    /// Whether `func` has an idle (warm) container now (idle containers past the timeout may
    /// still count until the next event expires them).
    pub fn has_idle(&self, func: &str) -> bool {
        self.idle_by_fn.get(func).is_some_and(|l| !l.is_empty())
    }

    /// Containers that hold a slot now, busy or idle.
    pub fn occupied(&self) -> usize {
        self.busy + self.lru.len()
    }

    /// Zeroes the counters; containers and the queue are untouched.
    pub fn reset_stats(&mut self) {
        self.stats = NodeStats::default();
        for c in self.functions.values_mut() {
            *c = FnCounts::default();
        }
    }

    /// Takes a container for `func` if one can be had without waiting.
    fn try_start(&mut self, now: Instant, func: &FnKey) -> Option<Lease> {
        // Warm: the most recently idled container of this function, so older ones can expire.
        if let Some(idle) = self.idle_by_fn.get_mut(func).and_then(VecDeque::pop_back) {
            if self.idle_by_fn.get(func).is_some_and(VecDeque::is_empty) {
                self.idle_by_fn.remove(func);
            }
            self.lru.remove(&(idle.since, idle.container));
            self.busy += 1;
            self.stats.warm_starts += 1;
            return Some(self.lease(now, func, idle.container, false, None));
        }
        // Cold: a free slot, or evict the least recently used idle container (of another
        // function, since this one has none).
        let mut evicted = None;
        if self.busy + self.lru.len() >= self.slots {
            let ((_, container), victim) = self.lru.pop_first()?;
            self.remove_idle(&victim, container);
            self.stats.evictions += 1;
            evicted = Some(victim);
        }
        let container = self.next_container;
        self.next_container += 1;
        self.busy += 1;
        self.stats.cold_starts += 1;
        if let Some(c) = self.functions.get_mut(func) {
            c.cold_starts += 1;
        }
        Some(self.lease(now, func, container, true, evicted))
    }

    fn lease(&self, now: Instant, func: &FnKey, container: u64, cold: bool, evicted: Option<FnKey>) -> Lease {
        Lease { container, func: func.clone(), cold, evicted, started: now, generation: self.generation }
    }

    fn remove_idle(&mut self, func: &FnKey, container: u64) {
        if let Some(list) = self.idle_by_fn.get_mut(func) {
            if let Some(i) = list.iter().position(|c| c.container == container) {
                list.remove(i);
            }
            if list.is_empty() {
                self.idle_by_fn.remove(func);
            }
        }
    }

    fn intern(&mut self, func: &str) -> FnKey {
        if let Some((k, _)) = self.functions.get_key_value(func) {
            return k.clone();
        }
        let k: FnKey = Arc::from(func);
        self.functions.insert(k.clone(), FnCounts::default());
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(a: Arrival) -> Lease {
        match a {
            Arrival::Start(l) => l,
            other => panic!("expected a start, got {other:?}"),
        }
    }

    fn queued(a: Arrival) -> u64 {
        match a {
            Arrival::Queued(t) => t,
            other => panic!("expected queued, got {other:?}"),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn second_call_is_warm_and_reuses_the_container() {
        let t0 = Instant::now();
        let mut m = NodeModel::new(4, Duration::from_secs(30), QueueMode::Queue);
        let a = start(m.arrive(t0, "/r/app/f"));
        assert!(a.cold);
        let id = a.container;
        assert!(m.finish(t0 + ms(100), a).is_empty());
        let b = start(m.arrive(t0 + ms(200), "/r/app/f"));
        assert!(!b.cold);
        assert_eq!(b.container, id);
        let s = m.stats(t0 + ms(200));
        assert_eq!((s.calls, s.cold_starts, s.warm_starts), (2, 1, 1));
        assert_eq!(s.busy, 1);
        assert_eq!(s.functions["/r/app/f"], FnCounts { calls: 2, cold_starts: 1 });
    }

    #[test]
    fn warm_reuse_picks_the_most_recently_idled() {
        let t0 = Instant::now();
        let mut m = NodeModel::new(4, Duration::from_secs(30), QueueMode::Queue);
        let a = start(m.arrive(t0, "/f"));
        let b = start(m.arrive(t0, "/f"));
        let c = start(m.arrive(t0, "/f"));
        let (ida, idb, idc) = (a.container, b.container, c.container);
        m.finish(t0 + ms(10), b);
        m.finish(t0 + ms(20), c);
        m.finish(t0 + ms(30), a);
        // Idled in order b, c, a: reuse a, then c, then b.
        assert_eq!(start(m.arrive(t0 + ms(40), "/f")).container, ida);
        assert_eq!(start(m.arrive(t0 + ms(40), "/f")).container, idc);
        assert_eq!(start(m.arrive(t0 + ms(40), "/f")).container, idb);
        // All three busy again: a fourth call is a cold start in the free slot.
        assert!(start(m.arrive(t0 + ms(40), "/f")).cold);
    }

    #[test]
    fn full_node_evicts_the_least_recently_used_idle_container() {
        let t0 = Instant::now();
        let mut m = NodeModel::new(3, Duration::from_secs(30), QueueMode::Queue);
        let a = start(m.arrive(t0, "/a"));
        let b = start(m.arrive(t0, "/b"));
        let c = start(m.arrive(t0, "/c"));
        m.finish(t0 + ms(10), c);
        m.finish(t0 + ms(30), b);
        m.finish(t0 + ms(40), a);
        // Idle since: c@10, b@30, a@40. A new function evicts c.
        let d = start(m.arrive(t0 + ms(50), "/d"));
        assert!(d.cold);
        assert_eq!(d.evicted.as_deref(), Some("/c"));
        let e = start(m.arrive(t0 + ms(50), "/e"));
        assert_eq!(e.evicted.as_deref(), Some("/b"));
        // /a is still warm.
        let a2 = start(m.arrive(t0 + ms(50), "/a"));
        assert!(!a2.cold);
        assert_eq!(m.stats(t0 + ms(50)).evictions, 2);
    }

    #[test]
    fn queue_is_fifo_and_starts_calls_as_containers_free() {
        let t0 = Instant::now();
        let mut m = NodeModel::new(2, Duration::from_secs(30), QueueMode::Queue);
        let a = start(m.arrive(t0, "/a"));
        let b = start(m.arrive(t0, "/b"));
        let q1 = queued(m.arrive(t0 + ms(1), "/x"));
        let q2 = queued(m.arrive(t0 + ms(2), "/a"));
        let q3 = queued(m.arrive(t0 + ms(3), "/y"));
        assert_eq!(m.stats(t0 + ms(3)).queue_len, 3);

        // /a frees: FIFO says /x goes first, evicting /a's fresh idle container (cold), even
        // though the queued /a call could have had it warm.
        let out = m.finish(t0 + ms(100), a);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, q1);
        assert!(out[0].1.cold);
        assert_eq!(out[0].1.evicted.as_deref(), Some("/a"));

        let out = m.finish(t0 + ms(200), b);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, q2);
        assert_eq!(out[0].1.evicted.as_deref(), Some("/b"));

        let a2 = out.into_iter().next().unwrap().1;
        let (ticket, y) = m.finish(t0 + ms(300), a2).remove(0);
        assert_eq!(ticket, q3);
        assert!(y.cold);
        let s = m.stats(t0 + ms(300));
        assert_eq!((s.queued, s.queue_len), (3, 0));
        // Waits: 99 + 198 + 297 ms.
        assert!((s.queue_wait_seconds - 0.594).abs() < 1e-9, "{}", s.queue_wait_seconds);
    }

    #[test]
    fn queued_call_gets_a_warm_container_of_its_own_function() {
        let t0 = Instant::now();
        let mut m = NodeModel::new(1, Duration::from_secs(30), QueueMode::Queue);
        let a = start(m.arrive(t0, "/a"));
        let t = queued(m.arrive(t0, "/a"));
        let out = m.finish(t0 + ms(5), a);
        assert_eq!(out[0].0, t);
        assert!(!out[0].1.cold);
    }

    #[test]
    fn new_arrivals_do_not_overtake_the_queue() {
        let t0 = Instant::now();
        let mut m = NodeModel::new(1, Duration::from_secs(30), QueueMode::Queue);
        let a = start(m.arrive(t0, "/a"));
        let t1 = queued(m.arrive(t0, "/b"));
        let out = m.finish(t0 + ms(5), a);
        assert_eq!(out[0].0, t1);
        // The node is full again (the /b call holds the only slot): /a waits.
        queued(m.arrive(t0 + ms(6), "/a"));
    }

    #[test]
    fn cancelled_tickets_leave_the_queue() {
        let t0 = Instant::now();
        let mut m = NodeModel::new(1, Duration::from_secs(30), QueueMode::Queue);
        let a = start(m.arrive(t0, "/a"));
        let t1 = queued(m.arrive(t0, "/b"));
        let t2 = queued(m.arrive(t0, "/c"));
        assert!(m.cancel(t1));
        assert!(!m.cancel(t1));
        let out = m.finish(t0 + ms(5), a);
        assert_eq!(out[0].0, t2);
        assert!(!m.cancel(t2), "already started");
    }

    #[test]
    fn reject_mode_answers_at_once() {
        let t0 = Instant::now();
        let mut m = NodeModel::new(1, Duration::from_secs(30), QueueMode::Reject);
        let _a = start(m.arrive(t0, "/a"));
        assert!(matches!(m.arrive(t0, "/b"), Arrival::Rejected));
        let s = m.stats(t0);
        assert_eq!((s.rejected, s.queued, s.calls), (1, 0, 2));
    }

    #[test]
    fn idle_containers_expire_after_the_timeout() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(30);
        let mut m = NodeModel::new(4, timeout, QueueMode::Queue);
        let a = start(m.arrive(t0, "/a"));
        let b = start(m.arrive(t0, "/a"));
        m.finish(t0 + ms(1000), a);
        m.finish(t0 + ms(2000), b);
        // Just before the first expiry both are idle.
        assert_eq!(m.stats(t0 + ms(30_999)).idle, 2);
        // The one idled at 1 s expires at 31 s; the other stays warm.
        let s = m.stats(t0 + ms(31_000));
        assert_eq!((s.idle, s.expiries), (1, 1));
        let c = start(m.arrive(t0 + ms(31_500), "/a"));
        assert!(!c.cold);
        m.finish(t0 + ms(31_600), c);
        // Reused at 31.5 s, so it is now idle since 31.6 s and lives to 61.6 s.
        assert_eq!(m.stats(t0 + ms(61_599)).idle, 1);
        assert!(start(m.arrive(t0 + ms(61_600), "/a")).cold);
        assert_eq!(m.stats(t0 + ms(61_600)).expiries, 2);
    }

    #[test]
    fn expired_containers_free_their_slots() {
        let t0 = Instant::now();
        let mut m = NodeModel::new(1, Duration::from_secs(5), QueueMode::Queue);
        let a = start(m.arrive(t0, "/a"));
        m.finish(t0 + ms(10), a);
        let b = start(m.arrive(t0 + ms(6000), "/b"));
        assert!(b.cold);
        assert_eq!(b.evicted, None, "expired, not evicted");
        let s = m.stats(t0 + ms(6000));
        assert_eq!((s.expiries, s.evictions), (1, 0));
    }

    #[test]
    fn reset_discards_containers() {
        let t0 = Instant::now();
        let mut m = NodeModel::new(2, Duration::from_secs(30), QueueMode::Queue);
        let a = start(m.arrive(t0, "/a"));
        let b = start(m.arrive(t0, "/b"));
        m.finish(t0 + ms(1), a);
        m.reset();
        m.finish(t0 + ms(2), b);
        let s = m.stats(t0 + ms(3));
        assert_eq!((s.idle, s.busy), (0, 0));
        assert!(start(m.arrive(t0 + ms(3), "/a")).cold);
        assert!(start(m.arrive(t0 + ms(3), "/b")).cold);
    }

    #[test]
    fn busy_slot_seconds_include_cold_start_and_execution() {
        let t0 = Instant::now();
        let mut m = NodeModel::new(2, Duration::from_secs(30), QueueMode::Queue);
        let a = start(m.arrive(t0, "/a"));
        let b = start(m.arrive(t0 + ms(500), "/b"));
        m.finish(t0 + ms(1500), a);
        m.finish(t0 + ms(1000), b);
        let s = m.stats(t0 + ms(1500));
        assert!((s.busy_slot_seconds - 2.0).abs() < 1e-9);
        m.reset_stats();
        let s = m.stats(t0 + ms(1500));
        assert_eq!((s.calls, s.idle), (0, 2));
        assert!(s.functions.is_empty());
    }
}
