//! The one clock of routing decisions and node marks, in ms: the policies' windows and
//! warmth periods, the waiting rule's deadlines, a node's busy mark. It reads the process-wide
//! coarse monotonic clock ([`real_ms`]) unless a simulation or a test has set a virtual time
//! ([`set_virtual_ms`]: `examples/routesim.rs` replays the benchmark in virtual time), so every
//! part of a decision sees the same "now". Transport deadlines (a connection's idle and send
//! timeouts, in `server.rs`) read [`real_ms`]: sockets do not run on virtual time.
use std::sync::atomic::{AtomicU64, Ordering};

static VIRTUAL_MS: AtomicU64 = AtomicU64::new(0);

/// Now, in ms (never 0, so 0 can mean "never" in the policies' and the nodes' atomics).
pub fn now_ms() -> u64 {
    match VIRTUAL_MS.load(Ordering::Relaxed) {
        0 => real_ms(),
        v => v,
    }
}

/// Drives [`now_ms`] from outside (a simulation); 0 returns it to the real clock.
pub fn set_virtual_ms(ms: u64) {
    VIRTUAL_MS.store(ms, Ordering::Relaxed);
}

/// Milliseconds on a monotonic clock: `CLOCK_MONOTONIC_COARSE` on Linux, the time of the last
/// tick, read without touching the clock source (callgrind put `Instant::now` plus `elapsed` at
/// ~130 instructions per proxied request). Its resolution of a few ms is plenty for marks that
/// last hundreds of ms. Never 0.
#[cfg(target_os = "linux")]
pub(crate) fn real_ms() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000 + 1
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn real_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_clock_is_never_zero_and_never_goes_back() {
        let a = real_ms();
        let b = real_ms();
        assert!(a > 0 && b >= a);
    }
}
