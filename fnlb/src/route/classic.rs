//! `fnlb-classic`: the Go original's wait-based rule, as it was, for comparison.
//!
//! Per node and function it keeps a moving average of the reported wait, whose *first* sample is
//! taken as is — usually a cold start of 0.5–2 s, which is why the original spilled spuriously at
//! low load. A node whose average is under 500 ms takes the call; between 500 ms and 2 s it takes
//! it with a probability falling from 40 % to 10 %; above 2 s with 10 %. If no node takes it, the
//! home node does. (The original walked its broken jump-hash order over the healthy nodes; here
//! the rule walks the key's consistent order, so the comparison is of the rule alone.)
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::StatusCode;

use super::{Policy, Rng};
use crate::node::{Node, Snapshot};

const LOWER: Duration = Duration::from_millis(500);
const UPPER: Duration = Duration::from_secs(2);
/// Per node+function averages kept; past this the map starts over (the original grew forever).
const MAX_ENTRIES: usize = 100_000;

pub(crate) struct Classic {
    /// (node identity, key hash) → average wait in nanoseconds.
    load: Mutex<HashMap<(usize, u64), u64>>,
    rng: Rng,
}

impl Default for Classic {
    fn default() -> Self {
        Classic { load: Mutex::new(HashMap::new()), rng: Rng::new(0x853c_49e6_748f_ea9b) }
    }
}

fn node_id(node: &Node) -> usize {
    node as *const Node as usize
}

impl Classic {
    /// A number in 0..100.
    fn percent(&self) -> u64 {
        self.rng.next() % 100
    }

    fn accepts(&self, node: &Node, hash: u64) -> bool {
        let load = {
            let map = self.load.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            map.get(&(node_id(node), hash)).copied().unwrap_or(0)
        };
        let load = Duration::from_nanos(load);
        if load < LOWER {
            return true;
        }
        if load > UPPER {
            return self.percent() < 10;
        }
        // Linear from 40 % at LOWER to 10 % at UPPER, as the original's translate().
        let span = (UPPER - LOWER).as_nanos() as f64;
        let x = 40.0 - 30.0 * ((load - LOWER).as_nanos() as f64 / span);
        (self.percent() as f64) < x
    }
}

impl Policy for Classic {
    fn name(&self) -> &'static str {
        "fnlb-classic"
    }

    fn choose(&self, snap: &Snapshot, hash: u64, tried: &[usize]) -> Option<usize> {
        if snap.healthy_count() == 0 {
            return None;
        }
        let mut first = None;
        for i in snap.table().order(hash) {
            if !snap.is_eligible(i) || tried.contains(&i) {
                continue;
            }
            first.get_or_insert(i);
            if self.accepts(&snap.nodes()[i], hash) {
                return Some(i);
            }
        }
        first
    }

    fn observe(&self, node: &Node, hash: u64, wait: Option<Duration>, _status: StatusCode) {
        let Some(wait) = wait else { return };
        let sample = wait.as_nanos().min(u128::from(u64::MAX)) as u64;
        let mut map = self.load.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.entry((node_id(node), hash))
            // The original's average: (old × 9 + new) / 10, but the first sample taken whole.
            .and_modify(|avg| *avg = (*avg / 10) * 9 + sample / 10)
            .or_insert(sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::testing::{key, snapshot};

    #[test]
    fn first_sample_is_taken_whole_so_one_cold_start_spills() {
        let snap = snapshot(4, &[]);
        let p = Classic::default();
        let (_, h) = key(1);
        let home = snap.table().home(h).unwrap();
        assert_eq!(p.choose(&snap, h, &[]), Some(home));
        // One 2.5 s cold start: the original's average jumps straight to it.
        p.observe(&snap.nodes()[home], h, Some(Duration::from_millis(2500)), StatusCode::OK);
        let away = (0..200).filter(|_| p.choose(&snap, h, &[]) != Some(home)).count();
        assert!(away > 150, "home kept {} of 200 calls after one cold start", 200 - away);
    }

    #[test]
    fn low_waits_keep_calls_home() {
        let snap = snapshot(4, &[]);
        let p = Classic::default();
        let (_, h) = key(1);
        let home = snap.table().home(h).unwrap();
        p.observe(&snap.nodes()[home], h, Some(Duration::from_millis(3)), StatusCode::OK);
        assert!((0..100).all(|_| p.choose(&snap, h, &[]) == Some(home)));
    }

    #[test]
    fn per_function_state_is_bounded() {
        let snap = snapshot(2, &[]);
        let p = Classic::default();
        for i in 0..(MAX_ENTRIES + 10) {
            let (_, h) = key(i);
            p.observe(&snap.nodes()[0], h, Some(Duration::from_millis(1)), StatusCode::OK);
        }
        assert!(p.load.lock().unwrap().len() <= MAX_ENTRIES);
    }
}
