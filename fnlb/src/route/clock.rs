//! The policies' clock: milliseconds on the process-wide monotonic clock, or a virtual time set
//! by a simulation (`examples/routesim.rs` replays the benchmark in virtual time) or a test.
use std::sync::atomic::{AtomicU64, Ordering};

static VIRTUAL_MS: AtomicU64 = AtomicU64::new(0);

/// Now, in ms (never 0, so 0 can mean "never" in the policies' atomics).
pub(crate) fn now_ms() -> u64 {
    match VIRTUAL_MS.load(Ordering::Relaxed) {
        0 => crate::node::clock_ms(),
        v => v,
    }
}

/// Drives [`now_ms`] from outside (a simulation); 0 returns it to the real clock.
pub fn set_virtual_ms(ms: u64) {
    VIRTUAL_MS.store(ms, Ordering::Relaxed);
}
