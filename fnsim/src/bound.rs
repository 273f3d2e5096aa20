//! The cold-start lower bound of BENCHMARKS.md §2: replay each function's calls against one
//! cluster-wide pool with unlimited slots, where a call never waits, idle containers expire after
//! the idle timeout, and a call reuses the idle container closest to expiry (the oldest idle one,
//! which keeps younger containers alive longest). No balancer over real nodes can start fewer
//! containers.

use std::time::Duration;

use crate::trace::Call;

/// Cold starts the bound needs for `calls` (sorted by time).
pub fn cold_starts(calls: &[Call], idle_timeout: Duration) -> usize {
    let mut cold = 0;
    replay(calls, idle_timeout, |_, c| cold += usize::from(c));
    cold
}

/// Whether each call of `calls` starts cold in the bound, in order: the bound's own timeline
/// (e.g. how much a rate spike costs even an ideal pool).
pub fn cold_flags(calls: &[Call], idle_timeout: Duration) -> Vec<bool> {
    let mut flags = Vec::with_capacity(calls.len());
    replay(calls, idle_timeout, |_, c| flags.push(c));
    flags
}

/// Replays `calls` against the bound's pools, telling `each` (index, cold) per call.
fn replay(calls: &[Call], idle_timeout: Duration, mut each: impl FnMut(usize, bool)) {
    let timeout_ms = idle_timeout.as_secs_f64() * 1000.0;
    let functions = calls.iter().map(|c| c.func as usize + 1).max().unwrap_or(0);
    // Per function: the time each of its containers becomes free (ms). Functions never share
    // containers and slots are unlimited, so functions are independent.
    let mut pools: Vec<Vec<f64>> = vec![Vec::new(); functions];
    for (i, c) in calls.iter().enumerate() {
        let t = c.at.as_secs_f64() * 1000.0;
        let pool = &mut pools[c.func as usize];
        // Idle since `free`, expired once `free + timeout <= t` (as in the node model).
        pool.retain(|&free| free > t || free + timeout_ms > t);
        let oldest_idle =
            pool.iter().enumerate().filter(|(_, &free)| free <= t).min_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
        match oldest_idle {
            Some(k) => {
                pool[k] = t + c.exec_ms;
                each(i, false);
            }
            None => {
                pool.push(t + c.cold_ms + c.exec_ms);
                each(i, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(func: u32, at_ms: u64, exec_ms: f64, cold_ms: f64) -> Call {
        Call { at: Duration::from_millis(at_ms), func, exec_ms, cold_ms }
    }

    #[test]
    fn hand_made_trace() {
        let timeout = Duration::from_millis(1000);
        let calls = [
            call(0, 0, 100.0, 500.0),   // cold: busy until 600
            call(1, 0, 10.0, 500.0),    // cold (other function)
            call(0, 100, 100.0, 500.0), // cold: the first is still starting (busy until 700)
            call(0, 650, 100.0, 500.0), // warm on the first (idle since 600), busy until 750
            call(0, 800, 100.0, 500.0), // warm: both idle, takes the older (700), until 900
            call(0, 1750, 10.0, 500.0), // warm: the 750 one expired at 1750, the 900 one lives
            call(1, 5000, 10.0, 500.0), // cold: expired long ago
        ];
        assert_eq!(cold_starts(&calls, timeout), 4);
        assert_eq!(cold_flags(&calls, timeout), [true, true, true, false, false, false, true]);
    }

    #[test]
    fn reusing_the_container_closest_to_expiry_is_what_makes_it_a_bound() {
        let timeout = Duration::from_millis(1000);
        let calls = [
            call(0, 0, 100.0, 0.0),    // cold, free at 100
            call(0, 50, 550.0, 0.0),   // cold, free at 600
            call(0, 700, 10.0, 0.0),   // reuses the one idle since 100 (closest to expiry)
            call(0, 1550, 100.0, 0.0), // the one idle since 600 is alive until 1600
            call(0, 1560, 100.0, 0.0), // and the one idle since 710 too
        ];
        // Reusing the most recently idled container at 700 instead would let the other expire
        // at 1100 and cost a third cold start at 1560.
        assert_eq!(cold_starts(&calls, timeout), 2);
    }

    #[test]
    fn a_call_arriving_as_a_container_frees_reuses_it() {
        let calls = [call(0, 0, 100.0, 0.0), call(0, 100, 100.0, 0.0)];
        assert_eq!(cold_starts(&calls, Duration::from_secs(30)), 1);
        assert_eq!(cold_starts(&[], Duration::from_secs(30)), 0);
    }
}
