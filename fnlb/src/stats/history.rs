//! The last [`HISTORY_SECS`] seconds, second by second: per node the calls it answered, its busy
//! answers, the waits it reported and the mean number of calls in flight on it; per function (the
//! [`MAX_FUNCS`] busiest of the second, the rest pooled under [`OTHER`]) the same and which nodes
//! served it. The dashboard and the scale signal read it; only [`super::Stats`] writes it.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::{Entry, OTHER};
use crate::node::NodeAddr;

/// Five minutes.
pub(crate) const HISTORY_SECS: usize = 300;
/// Functions kept per second; the others are pooled under [`OTHER`].
pub(crate) const MAX_FUNCS: usize = 32;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NodeSec {
    pub addr: NodeAddr,
    pub calls: u32,
    pub busy: u32,
    pub wait_sum_us: u64,
    pub wait_n: u32,
    /// Sum and count of the in-flight samples taken during the second.
    pub inflight_sum: u64,
    pub samples: u32,
}

impl NodeSec {
    fn new(addr: NodeAddr) -> NodeSec {
        NodeSec { addr, calls: 0, busy: 0, wait_sum_us: 0, wait_n: 0, inflight_sum: 0, samples: 0 }
    }

    /// Mean calls in flight during the second (0 when it was not sampled).
    pub(crate) fn in_flight(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.inflight_sum as f64 / f64::from(self.samples)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FuncSec {
    pub name: Arc<str>,
    pub calls: u32,
    pub busy: u32,
    pub wait_sum_us: u64,
    pub wait_n: u32,
    /// (index into the second's `nodes`, calls that node served).
    pub by_node: Vec<(u16, u32)>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Second {
    /// Seconds since the epoch.
    pub t: u64,
    /// Sorted by address.
    pub nodes: Vec<NodeSec>,
    /// Busiest first.
    pub funcs: Vec<FuncSec>,
}

#[derive(Default)]
struct Open {
    entries: Vec<Entry>,
    inflight: HashMap<NodeAddr, (u64, u32)>,
}

#[derive(Default)]
pub(crate) struct History {
    ring: VecDeque<Second>,
    open: BTreeMap<u64, Open>,
    last_closed: Option<u64>,
}

impl History {
    /// Closed seconds, oldest first.
    pub(crate) fn seconds(&self) -> &VecDeque<Second> {
        &self.ring
    }

    /// The newest `n` closed seconds, oldest first.
    pub(crate) fn last(&self, n: usize) -> impl Iterator<Item = &Second> + '_ {
        self.ring.iter().skip(self.ring.len().saturating_sub(n))
    }

    fn is_closed(&self, sec: u64) -> bool {
        self.last_closed.is_some_and(|lc| sec <= lc)
    }

    pub(super) fn add_entries(&mut self, entries: &[Entry]) {
        for e in entries {
            // A window that closes after its second was summarised is still read through
            // `/1/lb/stats`; the history leaves it out.
            if !self.is_closed(e.second) {
                self.open.entry(e.second).or_default().entries.push(e.clone());
            }
        }
    }

    pub(super) fn sample(&mut self, sec: u64, in_flight: &[(NodeAddr, u32)]) {
        if self.is_closed(sec) {
            return;
        }
        let open = self.open.entry(sec).or_default();
        for (addr, n) in in_flight {
            let s = open.inflight.entry(addr.clone()).or_insert((0, 0));
            s.0 += u64::from(*n);
            s.1 += 1;
        }
    }

    /// Summarises every second before `sec`; seconds nobody saw (no call, no sample) come out
    /// empty so the series stays regular.
    pub(super) fn close_before(&mut self, sec: u64) {
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() >= sec {
                break;
            }
            let (t, open) = entry.remove_entry();
            if let Some(lc) = self.last_closed {
                let gap_from = (lc + 1).max(t.saturating_sub(HISTORY_SECS as u64));
                for g in gap_from..t {
                    self.push(Second { t: g, nodes: Vec::new(), funcs: Vec::new() });
                }
            }
            self.push(summarise(t, open));
            self.last_closed = Some(t);
        }
    }

    fn push(&mut self, s: Second) {
        if self.ring.len() == HISTORY_SECS {
            self.ring.pop_front();
        }
        self.ring.push_back(s);
    }
}

fn summarise(t: u64, open: Open) -> Second {
    let mut nodes: BTreeMap<NodeAddr, NodeSec> = BTreeMap::new();
    for (addr, (sum, n)) in open.inflight {
        let ns = nodes.entry(addr.clone()).or_insert_with(|| NodeSec::new(addr));
        ns.inflight_sum += sum;
        ns.samples += n;
    }
    for e in &open.entries {
        let ns = nodes.entry(e.node.clone()).or_insert_with(|| NodeSec::new(e.node.clone()));
        ns.calls += e.calls;
        ns.busy += e.busy;
        ns.wait_sum_us += e.wait_sum_us;
        ns.wait_n += e.wait_n;
    }
    let nodes: Vec<NodeSec> = nodes.into_values().collect();
    let index = |addr: &NodeAddr| nodes.binary_search_by(|n| n.addr.cmp(addr)).map_or(0, |i| i as u16);

    let mut funcs: HashMap<Arc<str>, FuncSec> = HashMap::new();
    for e in &open.entries {
        let f = funcs.entry(e.func.clone()).or_insert_with(|| FuncSec {
            name: e.func.clone(),
            calls: 0,
            busy: 0,
            wait_sum_us: 0,
            wait_n: 0,
            by_node: Vec::new(),
        });
        add_func(f, index(&e.node), e.calls, e.busy, e.wait_sum_us, e.wait_n);
    }
    let mut funcs: Vec<FuncSec> = funcs.into_values().collect();
    funcs.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.name.cmp(&b.name)));
    if funcs.len() > MAX_FUNCS {
        let rest = funcs.split_off(MAX_FUNCS - 1);
        let mut other = match funcs.iter().position(|f| &*f.name == OTHER) {
            Some(i) => funcs.remove(i),
            None => FuncSec { name: OTHER.into(), calls: 0, busy: 0, wait_sum_us: 0, wait_n: 0, by_node: Vec::new() },
        };
        for f in rest {
            for (i, c) in &f.by_node {
                add_func(&mut other, *i, *c, 0, 0, 0);
            }
            other.busy += f.busy;
            other.wait_sum_us += f.wait_sum_us;
            other.wait_n += f.wait_n;
        }
        funcs.push(other);
    }
    // The vector held every function of the second; keep only the room the kept ones need, or
    // five minutes of seconds would each hold thousands of empty slots.
    funcs.shrink_to_fit();
    Second { t, nodes, funcs }
}

fn add_func(f: &mut FuncSec, node: u16, calls: u32, busy: u32, wait_sum_us: u64, wait_n: u32) {
    f.calls += calls;
    f.busy += busy;
    f.wait_sum_us += wait_sum_us;
    f.wait_n += wait_n;
    match f.by_node.iter_mut().find(|(i, _)| *i == node) {
        Some((_, c)) => *c += calls,
        None => f.by_node.push((node, calls)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> NodeAddr {
        NodeAddr::parse(s).unwrap()
    }

    fn entry(second: u64, node: &str, func: &str, calls: u32) -> Entry {
        Entry {
            second,
            first_us: second * 1_000_000,
            node: addr(node),
            func: func.into(),
            calls,
            busy: 0,
            wait_sum_us: 1000 * u64::from(calls),
            wait_n: calls,
        }
    }

    #[test]
    fn summarises_nodes_functions_and_in_flight() {
        let mut h = History::default();
        h.sample(10, &[(addr("a:1"), 4), (addr("b:1"), 0)]);
        h.sample(10, &[(addr("a:1"), 2), (addr("b:1"), 1)]);
        h.add_entries(&[entry(10, "a:1", "/r/x", 5), entry(10, "b:1", "/r/x", 2), entry(10, "b:1", "/r/y", 1)]);
        h.close_before(11);
        let s = &h.seconds()[0];
        assert_eq!(s.t, 10);
        assert_eq!((s.nodes[0].addr.as_str(), s.nodes[0].calls, s.nodes[0].in_flight()), ("a:1", 5, 3.0));
        assert_eq!((s.nodes[1].calls, s.nodes[1].in_flight()), (3, 0.5));
        assert_eq!((&*s.funcs[0].name, s.funcs[0].calls), ("/r/x", 7));
        assert_eq!(s.funcs[0].by_node, vec![(0, 5), (1, 2)]);
    }

    #[test]
    fn gaps_are_filled_and_the_ring_is_bounded() {
        let mut h = History::default();
        h.sample(100, &[]);
        h.close_before(101);
        h.sample(105, &[]);
        h.close_before(106);
        let ts: Vec<u64> = h.seconds().iter().map(|s| s.t).collect();
        assert_eq!(ts, vec![100, 101, 102, 103, 104, 105]);
        for t in 106..1000 {
            h.sample(t, &[]);
            h.close_before(t + 1);
        }
        assert_eq!(h.seconds().len(), HISTORY_SECS);
        assert_eq!(h.seconds().back().unwrap().t, 999);
        // Late entries for a summarised second are left out.
        h.add_entries(&[entry(500, "a:1", "/r/x", 1)]);
        h.close_before(1000);
        assert_eq!(h.seconds().back().unwrap().t, 999);
    }

    #[test]
    fn functions_beyond_the_cap_are_pooled() {
        let mut h = History::default();
        let entries: Vec<Entry> =
            (0..MAX_FUNCS as u32 + 10).map(|i| entry(7, "a:1", &format!("/r/f{i:03}"), 100 - i)).collect();
        h.add_entries(&entries);
        h.close_before(8);
        let s = &h.seconds()[0];
        assert_eq!(s.funcs.len(), MAX_FUNCS);
        let total: u32 = s.funcs.iter().map(|f| f.calls).sum();
        assert_eq!(total, entries.iter().map(|e| e.calls).sum::<u32>());
        assert_eq!(&*s.funcs.last().unwrap().name, OTHER);
        assert_eq!(&*s.funcs[0].name, "/r/f000");
        assert!(s.funcs.capacity() <= MAX_FUNCS, "{} slots kept", s.funcs.capacity());
    }
}
