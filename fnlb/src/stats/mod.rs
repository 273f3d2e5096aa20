//! Call statistics: what `/1/lb/stats` drains (calls and mean reported wait per node and function
//! per one-second window), the per-second [`history`] behind the dashboard, and the [`scale`]
//! signal computed from it.
//!
//! The proxy records one answered call with [`Stats::record`]: one of 16 shard mutexes is held
//! for one hash-map update (never across an await), and a new allocation happens only for the first
//! call of a (node, function) pair in a second. Memory is bounded whatever the traffic: a shard
//! keeps at most [`KEYS_PER_SHARD`] pairs per second (the calls of any further function are pooled
//! under the function [`OTHER`] of their node and counted as overflow), closed windows wait for a
//! reader up to [`MAX_UNREAD`] entries (older ones are dropped and counted), and the history keeps
//! [`history::HISTORY_SECS`] seconds of at most [`history::MAX_FUNCS`] functions each.
pub mod dash;
pub mod history;
pub mod scale;
pub mod time;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::node::manager::NodesHandle;
use crate::node::{Node, NodeAddr};
use history::History;

const SHARDS: usize = 16;
/// Distinct (node, function) pairs one shard keeps per second: 8,192 over all shards.
pub(crate) const KEYS_PER_SHARD: usize = 512;
/// Closed window entries kept for the next `GET /1/lb/stats`; older ones are dropped (counted).
pub(crate) const MAX_UNREAD: usize = 16_384;
/// Longer function paths are cut to this many bytes (at a character boundary).
pub(crate) const MAX_FUNC_LEN: usize = 256;
/// The function under which calls are pooled once a window holds all the pairs it may.
pub(crate) const OTHER: &str = "(other)";
/// How often the background task samples in-flight calls and closes windows.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// Calls of one (node, function) pair in one second.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub second: u64,
    /// When the window's first call was answered, in microseconds since the epoch.
    pub first_us: u64,
    pub node: NodeAddr,
    pub func: Arc<str>,
    pub calls: u32,
    /// Calls the node answered 503 (Fn's "too busy").
    pub busy: u32,
    /// Sum and count of the waits the node reported (`XXX-FXLB-WAIT`); calls without one are not
    /// in the mean.
    pub wait_sum_us: u64,
    pub wait_n: u32,
}

impl Entry {
    /// Mean reported wait in seconds; 0 when no call reported one.
    pub(crate) fn mean_wait(&self) -> f64 {
        if self.wait_n == 0 {
            0.0
        } else {
            // Seconds to the tenth of a microsecond: the sum is in microseconds.
            (self.wait_sum_us as f64 * 10.0 / f64::from(self.wait_n)).round() / 1e7
        }
    }

    fn add(&mut self, busy: bool, wait_us: Option<u64>) {
        self.calls = self.calls.saturating_add(1);
        self.busy += u32::from(busy);
        if let Some(w) = wait_us {
            self.wait_sum_us = self.wait_sum_us.saturating_add(w);
            self.wait_n += 1;
        }
    }
}

/// Counters of what the bounds cost, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Calls pooled under [`OTHER`] because their window was full.
    pub overflow_calls: u64,
    /// Window entries dropped because nobody read `/1/lb/stats` in time.
    pub unread_entries: u64,
}

/// A shard's map is keyed by a hash already computed (the path's SipHash mixed with the node), so
/// hashing it again would be wasted work.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap = HashMap<u64, Entry, BuildHasherDefault<IdHasher>>;

struct Shard {
    /// The second `cur` counts.
    second: u64,
    cur: KeyMap,
    /// Windows closed by a call of a later second, waiting to be collected.
    closed: Vec<Entry>,
}

impl Shard {
    fn close_window(&mut self, now_sec: u64, dropped: &AtomicU64) {
        let room = (KEYS_PER_SHARD * 4).saturating_sub(self.closed.len());
        let n = self.cur.len();
        if n > room {
            dropped.fetch_add((n - room) as u64, Ordering::Relaxed);
        }
        self.closed.extend(self.cur.drain().map(|(_, e)| e).take(room));
        self.second = now_sec;
    }
}

struct Collected {
    unread: VecDeque<Entry>,
    history: History,
}

pub(crate) struct Stats {
    shards: Box<[Mutex<Shard>]>,
    collected: Mutex<Collected>,
    overflow: AtomicU64,
    unread_dropped: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Mixes a node's identity into a key hash. The node's address in memory is stable while it is a
/// member; a reused address after a removal is caught by comparing the node's name.
fn node_mix(node: &Node) -> u64 {
    (node as *const Node as usize as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

const OTHER_SALT: u64 = 0x6f74_6865_7266_6e6c;

/// `func` cut to [`MAX_FUNC_LEN`] bytes at a character boundary.
pub(crate) fn clip_func(func: &str) -> &str {
    if func.len() <= MAX_FUNC_LEN {
        return func;
    }
    let mut end = MAX_FUNC_LEN;
    while !func.is_char_boundary(end) {
        end -= 1;
    }
    &func[..end]
}

impl Stats {
    pub(crate) fn new() -> Stats {
        let shards =
            (0..SHARDS).map(|_| Mutex::new(Shard { second: 0, cur: KeyMap::default(), closed: Vec::new() })).collect();
        Stats {
            shards,
            collected: Mutex::new(Collected { unread: VecDeque::new(), history: History::default() }),
            overflow: AtomicU64::new(0),
            unread_dropped: AtomicU64::new(0),
        }
    }

    /// Records one call a node answered. `hash` is the key's hash the proxy already computed;
    /// `func` is the routing key (the path). Cheap: one short lock, no await.
    pub(crate) fn record(&self, node: &Node, hash: u64, func: &str, wait: Option<Duration>, busy: bool) {
        self.record_at(time::now_micros(), node, hash, func, wait, busy);
    }

    pub(crate) fn record_at(
        &self,
        now_us: u64,
        node: &Node,
        hash: u64,
        func: &str,
        wait: Option<Duration>,
        busy: bool,
    ) {
        let sec = now_us / 1_000_000;
        let func = clip_func(func);
        let wait_us = wait.map(|w| w.as_micros().min(u128::from(u64::MAX)) as u64);
        let mix = node_mix(node);
        let key = hash ^ mix;
        let mut s = lock(&self.shards[(key >> 60) as usize % SHARDS]);
        // A clock that stepped back keeps counting in the current window.
        if sec > s.second {
            s.close_window(sec, &self.unread_dropped);
        }
        let second = s.second;
        let new_entry = |func: &str| Entry {
            second,
            first_us: now_us,
            node: node.addr.clone(),
            func: func.into(),
            calls: 0,
            busy: 0,
            wait_sum_us: 0,
            wait_n: 0,
        };
        let full = s.cur.len() >= KEYS_PER_SHARD;
        match s.cur.get_mut(&key) {
            Some(e) if e.node == node.addr && *e.func == *func => return e.add(busy, wait_us),
            None if !full => {
                let mut e = new_entry(func);
                e.add(busy, wait_us);
                s.cur.insert(key, e);
                return;
            }
            // A full window, or (once in 2^64) two pairs with one key.
            _ => {}
        }
        self.overflow.fetch_add(1, Ordering::Relaxed);
        let e = s.cur.entry(mix ^ OTHER_SALT).or_insert_with(|| new_entry(OTHER));
        if e.node == node.addr {
            e.add(busy, wait_us);
        }
    }

    /// Samples calls in flight per node, and closes the windows of past seconds (the background
    /// task calls this every [`TICK`]).
    pub(crate) fn tick(&self, now_us: u64, in_flight: &[(NodeAddr, u32)]) {
        let mut c = self.collect(now_us);
        c.history.sample(now_us / 1_000_000, in_flight);
    }

    /// Closes every window of a second before `now_us`'s, hands the entries to the history and to
    /// the unread queue, and returns the collected state locked.
    fn collect(&self, now_us: u64) -> MutexGuard<'_, Collected> {
        let sec = now_us / 1_000_000;
        let mut fresh = Vec::new();
        for shard in &self.shards {
            let mut s = lock(shard);
            if s.second < sec && !s.cur.is_empty() {
                s.close_window(sec, &self.unread_dropped);
            }
            fresh.append(&mut s.closed);
        }
        let mut c = lock(&self.collected);
        c.history.add_entries(&fresh);
        c.history.close_before(sec);
        let over = (c.unread.len() + fresh.len()).saturating_sub(MAX_UNREAD);
        if over > 0 {
            self.unread_dropped.fetch_add(over as u64, Ordering::Relaxed);
            let from_old = over.min(c.unread.len());
            c.unread.drain(..from_old);
            fresh.drain(..over - from_old);
        }
        c.unread.extend(fresh);
        c
    }

    /// Every closed window since the previous call (drained), in time order.
    pub(crate) fn drain(&self) -> Vec<Entry> {
        self.drain_at(time::now_micros())
    }

    pub(crate) fn drain_at(&self, now_us: u64) -> Vec<Entry> {
        let mut c = self.collect(now_us);
        let mut out: Vec<Entry> = c.unread.drain(..).collect();
        drop(c);
        out.sort_by(|a, b| (a.second, &a.node, &a.func).cmp(&(b.second, &b.node, &b.func)));
        out
    }

    /// Runs `f` over the history (closing past windows first).
    pub(crate) fn with_history<R>(&self, now_us: u64, f: impl FnOnce(&History) -> R) -> R {
        let c = self.collect(now_us);
        f(&c.history)
    }

    pub(crate) fn dropped(&self) -> Dropped {
        Dropped {
            overflow_calls: self.overflow.load(Ordering::Relaxed),
            unread_entries: self.unread_dropped.load(Ordering::Relaxed),
        }
    }

    /// The background task: samples in-flight calls every [`TICK`] and closes windows on time.
    pub(crate) async fn run(self: Arc<Self>, nodes: NodesHandle) {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sample = Vec::new();
        loop {
            every.tick().await;
            sample.clear();
            {
                let snap = nodes.load();
                sample.extend(snap.nodes().iter().map(|n| (n.addr.clone(), n.in_flight())));
            }
            self.tick(time::now_micros(), &sample);
        }
    }
}

/// `/1/lb/stats`'s body for these entries: `{"stats":[{"timestamp":...,"tp":..,"node":..,"func":..,
/// "wait":..}]}`; an empty list is `[]`.
pub(crate) fn stats_json(entries: &[Entry]) -> String {
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "timestamp": time::rfc3339_micros(e.first_us),
                "tp": e.calls,
                "node": e.node.as_str(),
                "func": &*e.func,
                "wait": e.mean_wait(),
            })
        })
        .collect();
    serde_json::json!({ "stats": list }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::table::key_hash;

    const T0: u64 = 1_795_707_237_000_000;

    fn node(s: &str) -> Arc<Node> {
        Node::new(NodeAddr::parse(s).unwrap(), Default::default())
    }

    fn rec(st: &Stats, at: u64, n: &Node, f: &str, wait_ms: Option<u64>) {
        st.record_at(at, n, key_hash(f.as_bytes()), f, wait_ms.map(Duration::from_millis), false);
    }

    #[test]
    fn counts_calls_and_mean_wait_per_node_function_and_second() {
        let st = Stats::new();
        let (a, b) = (node("10.0.0.1:8080"), node("10.0.0.2:8080"));
        for i in 0..19 {
            rec(&st, T0 + 239_859 + i, &a, "/r/app/fn", Some(if i == 0 { 20 } else { 1 }));
        }
        rec(&st, T0 + 500_000, &b, "/r/app/fn", None);
        rec(&st, T0 + 1_200_000, &a, "/r/app/fn", Some(4));
        // Only closed seconds are read: the second starting at T0 + 1 s is still open.
        let got = st.drain_at(T0 + 1_500_000);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].node.as_str(), got[0].calls, got[0].wait_n), ("10.0.0.1:8080", 19, 19));
        assert!((got[0].mean_wait() - (20.0 + 18.0) / 19.0 / 1000.0).abs() < 1e-9);
        assert_eq!(got[0].first_us, T0 + 239_859);
        assert_eq!((got[1].node.as_str(), got[1].calls, got[1].mean_wait()), ("10.0.0.2:8080", 1, 0.0));
        let json: serde_json::Value = serde_json::from_str(&stats_json(&got)).unwrap();
        assert_eq!(json["stats"][0]["timestamp"], "2026-11-26T15:33:57.239859Z");
        assert_eq!(json["stats"][0]["tp"], 19);
        assert_eq!(json["stats"][0]["func"], "/r/app/fn");
        // Drained: the next read has only what closed since.
        let next = st.drain_at(T0 + 2_000_001);
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].calls, next[0].mean_wait()), (1, 0.004));
        assert!(st.drain_at(T0 + 3_000_000).is_empty());
        assert_eq!(stats_json(&[]), r#"{"stats":[]}"#);
    }

    #[test]
    fn distinct_functions_beyond_the_cap_are_pooled_and_counted() {
        let st = Stats::new();
        let a = node("10.0.0.1:8080");
        let n = KEYS_PER_SHARD * SHARDS * 3;
        for i in 0..n {
            rec(&st, T0 + i as u64, &a, &format!("/r/app/f{i}"), Some(1));
        }
        let got = st.drain_at(T0 + 1_000_000);
        assert!(got.len() <= KEYS_PER_SHARD * SHARDS + SHARDS, "{} entries", got.len());
        let total: u64 = got.iter().map(|e| u64::from(e.calls)).sum();
        assert_eq!(total, n as u64, "every call is counted, pooled or not");
        assert!(got.iter().any(|e| &*e.func == OTHER));
        assert!(st.dropped().overflow_calls >= (n - KEYS_PER_SHARD * SHARDS) as u64);
    }

    #[test]
    fn unread_windows_are_bounded() {
        let st = Stats::new();
        let a = node("10.0.0.1:8080");
        // 64 seconds of 512 functions each, never read.
        for s in 0..64u64 {
            for f in 0..512 {
                rec(&st, T0 + s * 1_000_000, &a, &format!("/r/app/f{f}"), None);
            }
            st.tick(T0 + s * 1_000_000 + 1, &[]);
        }
        let got = st.drain_at(T0 + 64 * 1_000_000);
        assert_eq!(got.len(), MAX_UNREAD);
        assert_eq!(st.dropped().unread_entries, (64 * 512 - MAX_UNREAD) as u64);
        // The newest survive.
        assert_eq!(got.last().unwrap().second, T0 / 1_000_000 + 63);
    }

    #[test]
    fn long_paths_are_clipped_at_a_character_boundary() {
        let long = "é".repeat(MAX_FUNC_LEN);
        let c = clip_func(&long);
        assert!(c.len() <= MAX_FUNC_LEN && c.len() >= MAX_FUNC_LEN - 1);
        assert_eq!(clip_func("/r/a/b"), "/r/a/b");
    }
}

#[cfg(test)]
mod cost {
    use super::*;

    /// Recording cost and memory bound under many distinct functions:
    /// `cargo test --release -p fnlb --lib record_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn record_cost() {
        let st = Arc::new(Stats::new());
        let nodes: Vec<Arc<Node>> = (1..=3)
            .map(|i| Node::new(NodeAddr::parse(&format!("10.0.0.{i}:8080")).unwrap(), Default::default()))
            .collect();
        let paths: Vec<(String, u64)> = (0..100_000)
            .map(|i| {
                let p = format!("/r/app/fn{i}");
                let h = crate::node::table::key_hash(p.as_bytes());
                (p, h)
            })
            .collect();
        for (threads, funcs) in [(1usize, 1_000usize), (2, 1_000), (1, 100_000), (2, 100_000)] {
            let paths = &paths[..funcs];
            let n = 2_000_000 / threads;
            let t = std::time::Instant::now();
            std::thread::scope(|s| {
                for k in 0..threads {
                    let (st, nodes) = (&st, &nodes);
                    s.spawn(move || {
                        for i in 0..n {
                            let (p, h) = &paths[(i * 7 + k) % paths.len()];
                            st.record(&nodes[i % 3], *h, p, Some(Duration::from_micros(1500)), false);
                        }
                    });
                }
            });
            let per = t.elapsed().as_nanos() as f64 / n as f64;
            println!("{threads} thread(s), {funcs} functions, 3 nodes: {per:.0} ns per record");
            st.drain();
        }
    }
}
