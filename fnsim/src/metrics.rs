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

#[cfg(test)]
mod tests {
    use super::*;

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
