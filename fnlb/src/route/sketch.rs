//! A count-min sketch of calls per function: fixed memory (2 rows of [`WIDTH`] counters, 16 KiB)
//! whatever the number of distinct paths, lock-free, an estimate that can only be too high (by
//! about the calls of the functions sharing a counter: total / [`WIDTH`] on average).
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// Counters per row.
pub(crate) const WIDTH: usize = 2048;

pub(crate) struct CountMin {
    rows: [Box<[AtomicU32]>; 2],
    total: AtomicU64,
}

impl Default for CountMin {
    fn default() -> Self {
        CountMin::new()
    }
}

fn cells(hash: u64) -> [usize; 2] {
    // The key hash is SipHash: its low and high bits are independent enough for two rows.
    [(hash as usize) & (WIDTH - 1), ((hash >> 32) as usize) & (WIDTH - 1)]
}

impl CountMin {
    pub(crate) fn new() -> CountMin {
        let row = || (0..WIDTH).map(|_| AtomicU32::new(0)).collect::<Box<[AtomicU32]>>();
        CountMin { rows: [row(), row()], total: AtomicU64::new(0) }
    }

    /// Counts one call of the function; returns its estimated count and the total.
    pub(crate) fn add(&self, hash: u64) -> (u64, u64) {
        let [a, b] = cells(hash);
        let x = self.rows[0][a].fetch_add(1, Relaxed).saturating_add(1);
        let y = self.rows[1][b].fetch_add(1, Relaxed).saturating_add(1);
        let total = self.total.fetch_add(1, Relaxed) + 1;
        (u64::from(x.min(y)), total)
    }

    /// The function's estimated count.
    #[cfg(test)]
    pub(crate) fn get(&self, hash: u64) -> u64 {
        let [a, b] = cells(hash);
        u64::from(self.rows[0][a].load(Relaxed).min(self.rows[1][b].load(Relaxed)))
    }

    /// Halves every count: old calls weigh half as much as new ones. (Concurrent adds may be
    /// halved or not; an estimate off by one call does not matter.)
    pub(crate) fn halve(&self) {
        for row in &self.rows {
            for c in row {
                let _ = c.fetch_update(Relaxed, Relaxed, |v| Some(v / 2));
            }
        }
        let _ = self.total.fetch_update(Relaxed, Relaxed, |v| Some(v / 2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_never_under_and_halve() {
        let s = CountMin::new();
        for _ in 0..10 {
            s.add(42);
        }
        for h in 0..5000u64 {
            s.add(h.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        assert!(s.get(42) >= 10);
        assert!(s.get(42) <= 10 + 5010 / WIDTH as u64 * 4, "{}", s.get(42));
        let before = s.get(42);
        s.halve();
        assert_eq!(s.get(42), before / 2);
    }
}
