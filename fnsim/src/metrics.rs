//! Percentiles and summaries for the driver's report.

use serde::Serialize;

/// The `p`-th percentile (0..=100) of sorted data by the nearest-rank method: the smallest
/// value with at least p % of the data at or below it. `None` for no data.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Round away float noise first: 99.9 % of 1000 must be rank 999, not 999.0000000000001.
    let exact = p / 100.0 * sorted.len() as f64;
    let rank = if (exact - exact.round()).abs() < 1e-9 { exact.round() } else { exact.ceil() } as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Distribution summary, in the unit of the input.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(mut values: Vec<f64>) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        values.sort_by(f64::total_cmp);
        let p = |q| percentile(&values, q).unwrap_or(0.0);
        Summary {
            count: values.len(),
            mean: values.iter().sum::<f64>() / values.len() as f64,
            p50: p(50.0),
            p99: p(99.0),
            p999: p(99.9),
            max: *values.last().expect("non-empty"),
        }
    }
}

/// How a cold-start ratio came back after a rate spike (the `spike` variant).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SpikeRecovery {
    pub start_s: f64,
    pub end_s: f64,
    /// Cold-start ratio of the calls scheduled after the warm-up and before the spike.
    pub before_ratio: f64,
    /// Cold-start ratio of the calls scheduled during the spike.
    pub during_ratio: f64,
    /// Seconds from the spike's end to the start of the first [`RECOVERY_WINDOW`] whose
    /// cold-start ratio is back to `before_ratio` (within two standard errors of a binomial
    /// ratio over that window's calls, so noise alone does not delay it); `None`: not within
    /// the trace.
    pub recovered_after_s: Option<f64>,
    /// Cold-start ratio per second from 5 s before the spike to the end of the trace.
    pub per_second: Vec<f64>,
}

impl SpikeRecovery {
    /// One line: the levels and the recovery time.
    pub fn render(&self) -> String {
        let back = match self.recovered_after_s {
            Some(s) => format!("back to it {s:.0} s after the spike"),
            None => "not back by the end".into(),
        };
        format!(
            "{:.0}-{:.0} s: cold {:.2}% before, {:.2}% during, {back}",
            self.start_s,
            self.end_s,
            self.before_ratio * 100.0,
            self.during_ratio * 100.0
        )
    }
}

/// Width of the sliding window [`spike_recovery`] compares with the level before the spike.
pub const RECOVERY_WINDOW: usize = 5;

/// `calls` are (scheduled time in s, started cold); the spike is `[start_s, end_s)`. Calls
/// before `warmup_s` do not count for the level before the spike.
pub fn spike_recovery(
    calls: impl IntoIterator<Item = (f64, bool)>,
    warmup_s: f64,
    start_s: f64,
    end_s: f64,
) -> SpikeRecovery {
    // (calls, cold) per second of the trace.
    let mut secs: Vec<(usize, usize)> = Vec::new();
    let (mut before, mut during) = ((0usize, 0usize), (0usize, 0usize));
    for (at, cold) in calls {
        if !(at.is_finite() && at >= 0.0) {
            continue;
        }
        let s = at as usize;
        if secs.len() <= s {
            secs.resize(s + 1, (0, 0));
        }
        secs[s].0 += 1;
        secs[s].1 += usize::from(cold);
        let bucket = if (warmup_s..start_s).contains(&at) {
            Some(&mut before)
        } else if (start_s..end_s).contains(&at) {
            Some(&mut during)
        } else {
            None
        };
        if let Some(b) = bucket {
            b.0 += 1;
            b.1 += usize::from(cold);
        }
    }
    let ratio = |(n, c): (usize, usize)| if n == 0 { 0.0 } else { c as f64 / n as f64 };
    let before_ratio = ratio(before);
    // A level of zero still has some noise: count it as at most one cold start.
    let p = before_ratio.max(1.0 / before.0.max(1) as f64);
    let end = end_s.max(0.0) as usize;
    let mut recovered_after_s = None;
    for s in end..secs.len().saturating_sub(RECOVERY_WINDOW - 1) {
        let (n, c) = secs[s..s + RECOVERY_WINDOW].iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        if n == 0 {
            continue;
        }
        let tolerance = 2.0 * (p * (1.0 - p) / n as f64).sqrt();
        if ratio((n, c)) <= before_ratio + tolerance {
            recovered_after_s = Some(s as f64 - end_s);
            break;
        }
    }
    let from = (start_s.max(0.0) as usize).saturating_sub(RECOVERY_WINDOW);
    SpikeRecovery {
        start_s,
        end_s,
        before_ratio,
        during_ratio: ratio(during),
        recovered_after_s: recovered_after_s.map(|s: f64| s.max(0.0)),
        per_second: secs.iter().skip(from).map(|&b| ratio(b)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spike_recovery_finds_the_first_window_back_at_the_level() {
        // 100 calls a second; 2 % cold before the spike (10-20 s), 50 % during it (20-30 s),
        // 30 % for 7 s after, then 2 % again.
        let mut calls = Vec::new();
        for s in 0..60 {
            let cold_per_100 = match s {
                0..=19 => 2,
                20..=29 => 50,
                30..=36 => 30,
                _ => 2,
            };
            for k in 0..100 {
                calls.push((s as f64 + k as f64 / 100.0, k < cold_per_100));
            }
        }
        let r = spike_recovery(calls.iter().copied(), 10.0, 20.0, 30.0);
        assert!((r.before_ratio - 0.02).abs() < 1e-9);
        assert!((r.during_ratio - 0.5).abs() < 1e-9);
        // The first 5 s window without the 30 % seconds starts at 37 s.
        assert_eq!(r.recovered_after_s, Some(7.0));
        assert_eq!(r.per_second.len(), 45);
        assert!((r.per_second[5] - 0.5).abs() < 1e-9);
        // Never back: the ratio stays high to the end.
        let high: Vec<(f64, bool)> = calls.iter().map(|&(t, c)| (t, c || t >= 20.0)).collect();
        assert_eq!(spike_recovery(high, 10.0, 20.0, 30.0).recovered_after_s, None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(500.0));
        assert_eq!(percentile(&v, 99.0), Some(990.0));
        assert_eq!(percentile(&v, 99.9), Some(999.0));
        assert_eq!(percentile(&v, 100.0), Some(1000.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        let small = [10.0, 20.0, 30.0, 40.0, 50.0];
        assert_eq!(percentile(&small, 30.0), Some(20.0));
        assert_eq!(percentile(&small, 40.0), Some(20.0));
        assert_eq!(percentile(&small, 41.0), Some(30.0));
        assert_eq!(percentile(&small, 99.9), Some(50.0));
        assert_eq!(percentile(&[7.0], 50.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_sorts_and_summarises() {
        let s = Summary::of(vec![3.0, 1.0, 2.0, 4.0]);
        assert_eq!(s.count, 4);
        assert_eq!(s.mean, 2.5);
        assert_eq!(s.p50, 2.0);
        assert_eq!(s.p99, 4.0);
        assert_eq!(s.max, 4.0);
        assert_eq!(Summary::of(vec![]), Summary::default());
    }
}
