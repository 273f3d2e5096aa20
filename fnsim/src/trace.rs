//! The FaaS workload of BENCHMARKS.md §2, generated deterministically from a seed so every
//! contender replays the same calls: Zipf popularity, Poisson arrivals at a target utilisation,
//! log-normal execution and cold-start times, the `bursty`/`ramp`/`spike`/`many` variants, and
//! the `azure` replay of the production trace ([`crate::azure`]). [`build`] makes any of them;
//! `fnsim drive` and fnlb's routesim both go through it, so a scenario means the same calls live
//! and in virtual time.
//!
//! The generator uses ChaCha8 (a portable, version-stable stream) so a seed means the same trace
//! on every machine and build.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::azure::{AzureConfig, AzureReplay};

/// Workload shape. `Overload` and `Churn` change nothing in the trace itself (the former only
/// raises the default ρ, the latter is carried out by the driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Steady,
    /// Every 10 s (after warm-up), two of the top-10 functions take 35 % of calls for 5 s.
    Bursty,
    /// One extra function's rate grows linearly from zero until it needs two nodes' slots.
    Ramp,
    /// Steady trace; the driver takes a node down a third of the way through the measured
    /// window and brings it back at two thirds (20 s and 40 s of 60 s).
    Churn,
    /// Steady trace at ρ 0.7 unless `--rho` says otherwise.
    Overload,
    /// Steady trace at twice the rate for [`SPIKE_LENGTH`] from a third of the measured window.
    Spike,
    /// Steady trace over [`MANY_FUNCTIONS`] functions unless `--functions` says otherwise.
    Many,
    /// A replay of the Azure Functions 2019 trace ([`crate::azure`]).
    Azure,
}

impl Variant {
    /// ρ when none is given.
    pub fn default_rho(self) -> f64 {
        if self == Variant::Overload {
            0.7
        } else {
            0.3
        }
    }

    /// Number of functions when none is given (the Azure trace brings its own).
    pub fn default_functions(self) -> usize {
        if self == Variant::Many {
            MANY_FUNCTIONS
        } else {
            200
        }
    }
}

impl std::str::FromStr for Variant {
    type Err = String;

    fn from_str(s: &str) -> Result<Variant, String> {
        <Variant as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| format!("unknown variant {s:?} (steady, bursty, ramp, churn, overload, spike, many, azure)"))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadConfig {
    pub seed: u64,
    pub variant: Variant,
    /// Target utilisation ρ = λ·E[exec] / (nodes·slots).
    pub rho: f64,
    pub nodes: usize,
    pub slots: usize,
    pub functions: usize,
    /// Zipf exponent of function popularity.
    pub zipf_s: f64,
    pub warmup: Duration,
    pub measured: Duration,
    /// The replay's window, speed and files; read only by [`Variant::Azure`].
    pub azure: AzureConfig,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            seed: 1,
            variant: Variant::Steady,
            rho: 0.3,
            nodes: 8,
            slots: 64,
            functions: 200,
            zipf_s: 1.1,
            warmup: Duration::from_secs(10),
            measured: Duration::from_secs(60),
            azure: AzureConfig::default(),
        }
    }
}

/// One function of the workload.
#[derive(Clone, Debug, Serialize)]
pub struct Function {
    /// The URL path, e.g. `/r/app3/fn042`.
    pub path: String,
    /// Median warm execution time of this function.
    pub exec_ms: f64,
    /// Cold-start time of this function.
    pub cold_ms: f64,
    /// Steady-state probability that a call is for this function.
    pub popularity: f64,
}

/// One scheduled call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Call {
    /// Offset from the start of the trace.
    pub at: Duration,
    /// Index into [`Trace::functions`].
    pub func: u32,
    /// This call's execution time (the function's median times a per-call factor).
    pub exec_ms: f64,
    /// This call's cold-start time, paid only if it starts a container.
    pub cold_ms: f64,
}

#[derive(Clone, Debug)]
pub struct Trace {
    pub config: WorkloadConfig,
    pub functions: Vec<Function>,
    /// Sorted by `at`.
    pub calls: Vec<Call>,
    /// Steady arrival rate λ (calls/s) derived from ρ.
    pub rate: f64,
    /// Popularity-weighted mean execution time in ms (per-call factor included), the E[exec]
    /// in ρ's definition.
    pub mean_exec_ms: f64,
    /// What the Azure replay did (window, speed); `None` for the synthetic workload.
    pub azure: Option<AzureReplay>,
}

impl Trace {
    pub fn duration(&self) -> Duration {
        self.config.warmup + self.config.measured
    }

    /// True for calls scheduled after the warm-up.
    pub fn measured(&self, call: &Call) -> bool {
        call.at >= self.config.warmup
    }

    /// The spike's start and end, for [`Variant::Spike`].
    pub fn spike_window(&self) -> Option<(Duration, Duration)> {
        (self.config.variant == Variant::Spike).then(|| spike_window(&self.config))
    }
}

/// Spike: the rate doubles for this long...
pub const SPIKE_LENGTH: Duration = Duration::from_secs(10);
/// ...by this factor.
pub const SPIKE_FACTOR: f64 = 2.0;
/// Functions of [`Variant::Many`].
pub const MANY_FUNCTIONS: usize = 5000;
/// Upper bound on a trace's calls, so a bad ρ or duration cannot take unbounded memory (the
/// driver keeps one outcome per call).
pub const MAX_CALLS: usize = crate::azure::MAX_CALLS;

/// A third of the way through the measured window, for [`SPIKE_LENGTH`].
fn spike_window(cfg: &WorkloadConfig) -> (Duration, Duration) {
    let start = cfg.warmup + cfg.measured / 3;
    (start, start + SPIKE_LENGTH)
}

const EXEC_MEDIAN_MS: f64 = 200.0;
const EXEC_SIGMA: f64 = 1.0;
const EXEC_CLIP_MS: (f64, f64) = (10.0, 3000.0);
const CALL_SIGMA: f64 = 0.3;
const COLD_MEDIAN_MS: f64 = 500.0;
const COLD_SIGMA: f64 = 0.4;
const COLD_CLIP_MS: (f64, f64) = (200.0, 2000.0);
/// Number of apps the functions are spread over (`/r/app{a}/...`).
const APPS: usize = 10;

const BURST_PERIOD: Duration = Duration::from_secs(10);
const BURST_LENGTH: Duration = Duration::from_secs(5);
const BURST_SHARE: f64 = 0.35;

/// A standard normal draw (Box–Muller; one of the pair is discarded for simplicity).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]: ln is finite
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn lognormal(rng: &mut impl Rng, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

fn exponential(rng: &mut impl Rng, rate: f64) -> f64 {
    -(1.0 - rng.gen::<f64>()).ln() / rate
}

/// Index drawn from a cumulative distribution (last entry 1.0).
fn pick(cdf: &[f64], u: f64) -> usize {
    cdf.partition_point(|&c| c <= u).min(cdf.len() - 1)
}

/// A function's cold-start time (ms): LogNormal(500 ms, σ 0.4) clipped to [200 ms, 2 s].
pub(crate) fn cold_ms(rng: &mut impl Rng) -> f64 {
    lognormal(rng, COLD_MEDIAN_MS, COLD_SIGMA).clamp(COLD_CLIP_MS.0, COLD_CLIP_MS.1)
}

/// Builds the trace of any variant: the Azure replay reads its files, the others are generated.
/// Same config, same trace. Errors name what is wrong (missing files, a window past the trace,
/// more than [`MAX_CALLS`] calls).
pub fn build(cfg: &WorkloadConfig) -> Result<Trace, String> {
    if cfg.nodes == 0 || cfg.slots == 0 || cfg.functions == 0 {
        return Err("nodes, slots and functions must be at least 1".into());
    }
    if cfg.variant == Variant::Azure {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        return crate::azure::generate(cfg, &mut rng);
    }
    // The expected calls, from the same rate `generate` derives (plus the spike's extra).
    let probe = generate(&WorkloadConfig { warmup: Duration::ZERO, measured: Duration::ZERO, ..cfg.clone() });
    let secs = (cfg.warmup + cfg.measured).as_secs_f64() + SPIKE_LENGTH.as_secs_f64();
    let expected = probe.rate * secs;
    if expected.is_nan() || expected >= MAX_CALLS as f64 {
        return Err(format!(
            "{:.0} calls/s for {secs:.0} s is more than {MAX_CALLS} calls: lower the rho or the duration",
            probe.rate
        ));
    }
    Ok(generate(cfg))
}

/// Builds the synthetic trace for `cfg` (every variant but [`Variant::Azure`], which needs
/// [`build`]). Same config, same trace.
pub fn generate(cfg: &WorkloadConfig) -> Trace {
    assert!(cfg.variant != Variant::Azure, "the Azure replay reads files: use trace::build");
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let n = cfg.functions.max(1);

    // Function properties, then a random popularity rank so popular functions are spread over
    // apps and have unrelated execution times.
    let mut functions: Vec<Function> = (0..n)
        .map(|i| Function {
            path: format!("/r/app{}/fn{:03}", i * APPS / n, i),
            exec_ms: lognormal(&mut rng, EXEC_MEDIAN_MS, EXEC_SIGMA).clamp(EXEC_CLIP_MS.0, EXEC_CLIP_MS.1),
            cold_ms: cold_ms(&mut rng),
            popularity: 0.0,
        })
        .collect();
    let mut by_rank: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        by_rank.swap(i, rng.gen_range(0..=i));
    }
    let harmonic: f64 = (1..=n).map(|k| (k as f64).powf(-cfg.zipf_s)).sum();
    for (rank, &f) in by_rank.iter().enumerate() {
        functions[f].popularity = ((rank + 1) as f64).powf(-cfg.zipf_s) / harmonic;
    }
    let mut cdf = Vec::with_capacity(n);
    let mut acc = 0.0;
    for &f in &by_rank {
        acc += functions[f].popularity;
        cdf.push(acc);
    }
    *cdf.last_mut().expect("at least one function") = 1.0;

    // E[factor] of LogNormal(0, σ) is exp(σ²/2).
    let factor_mean = (CALL_SIGMA * CALL_SIGMA / 2.0).exp();
    let mean_exec_ms = functions.iter().map(|f| f.popularity * f.exec_ms).sum::<f64>() * factor_mean;
    let capacity = (cfg.nodes * cfg.slots) as f64;
    let rate = cfg.rho * capacity / (mean_exec_ms / 1000.0);

    let total = (cfg.warmup + cfg.measured).as_secs_f64();
    let mut calls = Vec::with_capacity((rate * total * 1.1) as usize + 16);

    // Burst windows: each picks two distinct functions among the top ten.
    let top = n.min(10);
    let mut bursts: Vec<(f64, f64, [usize; 2])> = Vec::new();
    if cfg.variant == Variant::Bursty {
        let mut start = cfg.warmup.max(BURST_PERIOD).as_secs_f64();
        // Align to multiples of the period.
        start = (start / BURST_PERIOD.as_secs_f64()).ceil() * BURST_PERIOD.as_secs_f64();
        while start < total {
            let a = rng.gen_range(0..top);
            let mut b = rng.gen_range(0..top);
            if top > 1 {
                while b == a {
                    b = rng.gen_range(0..top);
                }
            }
            bursts.push((start, start + BURST_LENGTH.as_secs_f64(), [by_rank[a], by_rank[b]]));
            start += BURST_PERIOD.as_secs_f64();
        }
    }

    // The spike doubles the rate inside its window. Arrivals are memoryless, so a gap that
    // crosses a boundary of the window is redrawn from the boundary at the new rate: exact.
    let spike = (cfg.variant == Variant::Spike).then(|| {
        let (s, e) = spike_window(cfg);
        (s.as_secs_f64(), e.as_secs_f64())
    });
    let rate_at = |t: f64| match spike {
        Some((s, e)) if (s..e).contains(&t) => (rate * SPIKE_FACTOR, e),
        Some((s, _)) if t < s => (rate, s),
        _ => (rate, f64::INFINITY),
    };
    let mut t = 0.0;
    loop {
        let (r, boundary) = rate_at(t);
        let next = t + exponential(&mut rng, r);
        if next >= boundary && boundary < total {
            t = boundary;
            continue;
        }
        t = next;
        if t >= total {
            break;
        }
        let burst = bursts.iter().find(|(s, e, _)| (*s..*e).contains(&t));
        let f = match burst {
            Some((_, _, pair)) if rng.gen::<f64>() < BURST_SHARE => pair[rng.gen_range(0..2)],
            _ => by_rank[pick(&cdf, rng.gen())],
        };
        calls.push(call(&mut rng, &functions, f, t));
    }

    if cfg.variant == Variant::Ramp {
        add_ramp(cfg, &mut rng, &mut functions, &mut calls, total);
    }

    Trace { config: cfg.clone(), functions, calls, rate, mean_exec_ms, azure: None }
}

fn call(rng: &mut impl Rng, functions: &[Function], f: usize, t: f64) -> Call {
    Call {
        at: Duration::from_secs_f64(t),
        func: f as u32,
        exec_ms: functions[f].exec_ms * lognormal(rng, 1.0, CALL_SIGMA),
        cold_ms: functions[f].cold_ms,
    }
}

/// The ramp: an extra function (median exec 200 ms) whose rate grows linearly from zero at the
/// end of the warm-up to two nodes' worth of slots at the end, crossing one node's capacity
/// halfway through the measured window.
fn add_ramp(
    cfg: &WorkloadConfig,
    rng: &mut impl Rng,
    functions: &mut Vec<Function>,
    calls: &mut Vec<Call>,
    total: f64,
) {
    let f = functions.len();
    functions.push(Function {
        path: "/r/app0/ramp".into(),
        exec_ms: EXEC_MEDIAN_MS,
        cold_ms: cold_ms(rng),
        popularity: 0.0,
    });
    let start = cfg.warmup.as_secs_f64();
    let span = total - start;
    if span <= 0.0 {
        return;
    }
    let factor_mean = (CALL_SIGMA * CALL_SIGMA / 2.0).exp();
    let peak = 2.0 * cfg.slots as f64 / (EXEC_MEDIAN_MS * factor_mean / 1000.0);
    // Inhomogeneous Poisson by thinning a homogeneous one at the peak rate.
    let mut t = start;
    loop {
        t += exponential(rng, peak);
        if t >= total {
            break;
        }
        if rng.gen::<f64>() < (t - start) / span {
            calls.push(call(rng, functions, f, t));
        }
    }
    calls.sort_by_key(|c| c.at);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(variant: Variant) -> WorkloadConfig {
        WorkloadConfig {
            variant,
            warmup: Duration::from_secs(5),
            measured: Duration::from_secs(55),
            ..WorkloadConfig::default()
        }
    }

    #[test]
    fn same_seed_same_trace_other_seed_other_trace() {
        let a = generate(&small(Variant::Steady));
        let b = generate(&small(Variant::Steady));
        assert_eq!(a.calls, b.calls);
        assert_eq!(a.functions[7].path, b.functions[7].path);
        let c = generate(&WorkloadConfig { seed: 2, ..small(Variant::Steady) });
        assert_ne!(a.calls.len(), 0);
        assert_ne!(a.calls, c.calls);
    }

    #[test]
    fn arrival_rate_matches_rho() {
        for seed in 1..=3 {
            for rho in [0.1, 0.3, 0.5] {
                let t = generate(&WorkloadConfig { seed, rho, ..small(Variant::Steady) });
                let secs = t.duration().as_secs_f64();
                let observed = t.calls.len() as f64 / secs;
                assert!((observed / t.rate - 1.0).abs() < 0.05, "seed {seed} rho {rho}: {observed} vs {}", t.rate);
                // Offered work over capacity is ρ (execution times are random too, so looser).
                let work: f64 = t.calls.iter().map(|c| c.exec_ms / 1000.0).sum();
                let util = work / secs / (8.0 * 64.0);
                assert!((util / rho - 1.0).abs() < 0.15, "seed {seed} rho {rho}: {util}");
                // The benchmark's ballpark: about 140–720 calls/s for ρ 0.1–0.5.
                assert!((50.0..2000.0).contains(&t.rate), "{}", t.rate);
            }
        }
    }

    #[test]
    fn calls_are_sorted_and_in_range() {
        for v in [Variant::Steady, Variant::Bursty, Variant::Ramp] {
            let t = generate(&small(v));
            assert!(t.calls.windows(2).all(|w| w[0].at <= w[1].at), "{v:?}");
            assert!(t.calls.iter().all(|c| c.at < t.duration()));
            assert!(t.calls.iter().all(|c| (c.func as usize) < t.functions.len()));
        }
    }

    #[test]
    fn functions_follow_the_distributions() {
        let t = generate(&WorkloadConfig::default());
        assert_eq!(t.functions.len(), 200);
        assert_eq!(t.functions[42].path, "/r/app2/fn042");
        assert!(t.functions.iter().all(|f| (10.0..=3000.0).contains(&f.exec_ms)));
        assert!(t.functions.iter().all(|f| (200.0..=2000.0).contains(&f.cold_ms)));
        let total: f64 = t.functions.iter().map(|f| f.popularity).sum();
        assert!((total - 1.0).abs() < 1e-9);
        // The most popular function under Zipf(1.1) over 200 has about 20 % of the calls.
        let max = t.functions.iter().map(|f| f.popularity).fold(0.0, f64::max);
        assert!((0.15..0.3).contains(&max), "{max}");
        let mut medians: Vec<f64> = t.functions.iter().map(|f| f.exec_ms).collect();
        medians.sort_by(f64::total_cmp);
        assert!((120.0..330.0).contains(&medians[100]), "{}", medians[100]);
    }

    #[test]
    fn bursty_concentrates_calls_in_bursts() {
        let t = generate(&small(Variant::Bursty));
        let shares = |lo: f64, hi: f64| {
            let mut counts = vec![0f64; t.functions.len()];
            let mut n = 0.0;
            for c in t.calls.iter().filter(|c| (lo..hi).contains(&c.at.as_secs_f64())) {
                counts[c.func as usize] += 1.0;
                n += 1.0;
            }
            counts.into_iter().map(move |x| x / n)
        };
        for k in 1..5 {
            let start = 10.0 * k as f64;
            // Two functions each gain about 35 % / 2 of the calls during the burst, compared
            // with the quiet half of the period.
            let mut gains: Vec<f64> =
                shares(start, start + 5.0).zip(shares(start + 5.0, start + 10.0)).map(|(b, q)| b - q).collect();
            gains.sort_by(|a, b| b.total_cmp(a));
            assert!(gains[0] > 0.1 && gains[1] > 0.1, "burst at {start}: {:?}", &gains[..3]);
            assert!(gains[2] < 0.05, "burst at {start}: {:?}", &gains[..3]);
        }
    }

    #[test]
    fn ramp_grows_past_one_node() {
        let cfg = small(Variant::Ramp);
        let t = generate(&cfg);
        let ramp = t.functions.len() as u32 - 1;
        let rate_in = |lo: f64, hi: f64| {
            t.calls.iter().filter(|c| c.func == ramp && (lo..hi).contains(&c.at.as_secs_f64())).count() as f64
                / (hi - lo)
        };
        assert_eq!(rate_in(0.0, 5.0), 0.0, "nothing during warm-up");
        // Load (busy slots) of the ramp function at the end is about two nodes' slots.
        let end_load = rate_in(55.0, 60.0) * 0.2;
        assert!(end_load > 64.0 * 1.5, "{end_load}");
        assert!(rate_in(5.0, 10.0) < rate_in(50.0, 55.0));
    }

    #[test]
    fn pick_uses_the_cdf() {
        let cdf = [0.5, 0.75, 1.0];
        assert_eq!(pick(&cdf, 0.0), 0);
        assert_eq!(pick(&cdf, 0.49), 0);
        assert_eq!(pick(&cdf, 0.5), 1);
        assert_eq!(pick(&cdf, 0.8), 2);
        assert_eq!(pick(&cdf, 0.999_999), 2);
    }
}
