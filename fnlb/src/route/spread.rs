//! Locality-blind policies, for comparison and for operators who want them: `round-robin` and
//! `least-conn` (power of two choices over this balancer's calls in flight).
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Policy, Rng};
use crate::node::Snapshot;

#[derive(Default)]
pub(crate) struct RoundRobin {
    next: AtomicUsize,
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn choose(&self, snap: &Snapshot, _hash: u64, tried: &[usize]) -> Option<usize> {
        let n = snap.len();
        if snap.healthy_count() == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|k| (start + k) % n).find(|i| snap.is_eligible(*i) && !tried.contains(i))
    }
}

pub(crate) struct LeastConn {
    rng: Rng,
}

impl Default for LeastConn {
    fn default() -> Self {
        LeastConn { rng: Rng::new(0x2545_f491_4f6c_dd1d) }
    }
}

impl Policy for LeastConn {
    fn name(&self) -> &'static str {
        "least-conn"
    }

    fn choose(&self, snap: &Snapshot, _hash: u64, tried: &[usize]) -> Option<usize> {
        let n = snap.len();
        if snap.healthy_count() == 0 || n == 0 {
            return None;
        }
        two_choices(snap, tried, self.rng.next())
    }
}

/// The power of two choices: of two random eligible nodes not in `tried` (found by walking on
/// from two random starts taken from `r`), the one with fewer calls in flight.
pub(crate) fn two_choices(snap: &Snapshot, tried: &[usize], r: u64) -> Option<usize> {
    let n = snap.len();
    let ok = |i: usize| snap.is_eligible(i) && !tried.contains(&i);
    let a = (0..n).map(|k| (r as usize + k) % n).find(|i| ok(*i))?;
    let b = (0..n).map(|k| ((r >> 32) as usize + k) % n).find(|i| ok(*i)).unwrap_or(a);
    let load = |i: usize| snap.nodes()[i].in_flight();
    Some(if load(b) < load(a) { b } else { a })
}
