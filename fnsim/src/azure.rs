//! Replay of the Azure Functions 2019 trace subset in `../shared/traces/azure2019/` (see its
//! README): per-minute call counts and per-function execution-time percentiles, turned into a
//! [`Trace`] the driver and routesim replay like the synthetic one.
//!
//! - A window of the trace's 480 minutes (`start_minute`, `minutes`) is read; only its columns
//!   are kept, so memory is the window's calls (capped by [`MAX_CALLS`]).
//! - Time is compressed by a speed factor (arrivals only: execution times stay real), given or
//!   chosen so the window's nominal utilisation of nodes × slots is ρ.
//! - Each minute's calls are spread over that minute (compressed): `poisson` draws each call's
//!   time uniformly (a Poisson process given the count), `uniform` spaces them evenly with a
//!   random phase. Either way the per-minute counts are the trace's exactly.
//! - A call's execution time is drawn from the piecewise-linear interpolation of its function's
//!   percentiles (0, 1, 25, 50, 75, 99, 100), clipped to `max_exec`; cold starts are fnsim's
//!   per-function LogNormal (the data has none).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;

use crate::trace::{self, Call, Function, Trace, WorkloadConfig};

/// Minutes in the trace (480-959 of the day).
pub const TRACE_MINUTES: usize = 480;
/// Upper bound on the calls of one replay (the whole 500-function trace has 3.04 M), so a bad
/// window or speed cannot take unbounded memory.
pub const MAX_CALLS: usize = 4_000_000;
/// The percentiles of `durations.csv`'s `percentile_Average_*` columns, as fractions.
const PERCENTILES: [f64; 7] = [0.0, 0.01, 0.25, 0.50, 0.75, 0.99, 1.0];

/// How a minute's calls are spread over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Each call at a uniformly random time of its minute (Poisson given the count).
    Poisson,
    /// Evenly spaced over the minute, with a random phase.
    Uniform,
}

#[derive(Clone, Debug, Serialize)]
pub struct AzureConfig {
    /// `azure2019/` (its `500/` set is used) or a directory holding `invocations.csv` and
    /// `durations.csv` directly.
    pub trace_dir: PathBuf,
    /// First minute of the window, 0-479 (minute 480 + this of the day).
    pub start_minute: usize,
    pub minutes: usize,
    /// Compression of the trace's time; `None`: chosen from ρ.
    pub speed: Option<f64>,
    pub arrivals: Arrivals,
    /// Execution times above this are clipped (Fn's default function timeout is 30 s; the trace
    /// reaches 10 minutes, which a driver with a 60 s timeout would count as errors).
    pub max_exec: Duration,
}

impl Default for AzureConfig {
    fn default() -> Self {
        AzureConfig {
            trace_dir: default_trace_dir(),
            start_minute: 120,
            minutes: 10,
            speed: None,
            arrivals: Arrivals::Poisson,
            max_exec: Duration::from_secs(30),
        }
    }
}

/// `START:MINUTES`, e.g. `120:10`.
pub fn parse_window(s: &str) -> Result<(usize, usize), String> {
    let bad =
        || format!("{s:?} is not a window START:MINUTES (e.g. 120:10) within the trace's {TRACE_MINUTES} minutes");
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let (start, minutes): (usize, usize) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if minutes == 0 || start + minutes > TRACE_MINUTES {
        return Err(bad());
    }
    Ok((start, minutes))
}

/// `../shared/traces/azure2019` next to the repository (the nearest ancestor of the working
/// directory or of this crate's source that has `shared/traces/azure2019`), else that relative path.
pub fn default_trace_dir() -> PathBuf {
    let rel = Path::new("shared").join("traces").join("azure2019");
    let roots = std::env::current_dir().into_iter().chain([PathBuf::from(env!("CARGO_MANIFEST_DIR"))]);
    for root in roots {
        for dir in root.ancestors().skip(1) {
            let candidate = dir.join(&rel);
            if candidate.is_dir() {
                return candidate;
            }
        }
    }
    Path::new("..").join(rel)
}

/// What the replay did, reported with every figure (the README asks for window, speed, seed).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AzureReplay {
    pub trace_dir: String,
    pub start_minute: usize,
    pub minutes: usize,
    pub speed: f64,
    pub arrivals: Arrivals,
    /// Replayed seconds per trace minute (60 / speed).
    pub minute_s: f64,
    /// The trace's calls in each minute of the window (before compression).
    pub per_minute: Vec<u64>,
    /// Functions with at least one call in the window.
    pub active_functions: usize,
    /// Calls whose drawn execution time was clipped to `max_exec`.
    pub clipped: usize,
}

/// One function's execution-time percentiles (ms), in [`PERCENTILES`] order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantiles(pub [f64; 7]);

impl Quantiles {
    /// The execution time at cumulative probability `u` (0..=1): linear between percentiles.
    pub fn at(&self, u: f64) -> f64 {
        let q = &self.0;
        let u = u.clamp(0.0, 1.0);
        let i = PERCENTILES.partition_point(|&p| p <= u).clamp(1, PERCENTILES.len() - 1);
        let (p0, p1) = (PERCENTILES[i - 1], PERCENTILES[i]);
        q[i - 1] + (q[i] - q[i - 1]) * (u - p0) / (p1 - p0)
    }

    /// E[min(X, cap)] of the piecewise-linear distribution, exactly.
    pub fn mean_clipped(&self, cap: f64) -> f64 {
        let q = &self.0;
        (1..PERCENTILES.len())
            .map(|i| {
                let (m, a, b) = (PERCENTILES[i] - PERCENTILES[i - 1], q[i - 1], q[i]);
                if b <= cap {
                    m * (a + b) / 2.0
                } else if a >= cap {
                    m * cap
                } else {
                    // Linear from a to b: the part below the cap averages (a + cap) / 2.
                    let f = (cap - a) / (b - a);
                    m * (f * (a + cap) / 2.0 + (1.0 - f) * cap)
                }
            })
            .sum()
    }
}

/// One function of the window: its key columns, counts in the window, and percentiles.
struct Row {
    app: String,
    counts: Vec<u64>,
    quantiles: Quantiles,
}

fn set_dir(dir: &Path) -> PathBuf {
    if dir.join("invocations.csv").is_file() {
        dir.to_path_buf()
    } else {
        dir.join("500")
    }
}

fn open(path: &Path) -> Result<BufReader<File>, String> {
    File::open(path).map(BufReader::new).map_err(|e| {
        format!(
            "cannot read {}: {e} (--trace-dir points at traces/azure2019 or a directory with invocations.csv)",
            path.display()
        )
    })
}

/// Reads the window's counts and every function's percentiles, in `invocations.csv`'s row order.
fn read_rows(cfg: &AzureConfig) -> Result<Vec<Row>, String> {
    let dir = set_dir(&cfg.trace_dir);
    let (start, end) = (cfg.start_minute, cfg.start_minute + cfg.minutes);
    if cfg.minutes == 0 || end > TRACE_MINUTES {
        return Err(format!("window {start}:{} runs past the trace's {TRACE_MINUTES} minutes", cfg.minutes));
    }

    // durations.csv: HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,p0,p1,...,p100
    let path = dir.join("durations.csv");
    let mut quantiles = std::collections::HashMap::new();
    for (n, line) in open(&path)?.lines().enumerate().skip(1) {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        let cols: Vec<&str> = line.split(',').collect();
        let bad = || format!("{}:{}: expected 14 columns with numeric percentiles", path.display(), n + 1);
        if cols.len() != 14 {
            return Err(bad());
        }
        let mut q = [0.0; 7];
        for (i, c) in cols[7..].iter().enumerate() {
            q[i] = c.trim().parse::<f64>().map_err(|_| bad())?.max(0.0);
        }
        // Monotone, so the interpolation is a quantile function whatever the data says.
        for i in 1..7 {
            q[i] = q[i].max(q[i - 1]);
        }
        quantiles.insert((cols[0].to_owned(), cols[1].to_owned(), cols[2].to_owned()), Quantiles(q));
    }

    // invocations.csv: HashOwner,HashApp,HashFunction,Trigger,480,...,959
    let path = dir.join("invocations.csv");
    let mut rows = Vec::new();
    for (n, line) in open(&path)?.lines().enumerate().skip(1) {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() != 4 + TRACE_MINUTES {
            return Err(format!("{}:{}: expected {} columns", path.display(), n + 1, 4 + TRACE_MINUTES));
        }
        let counts = cols[4 + start..4 + end]
            .iter()
            .map(|c| c.trim().parse::<u64>())
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| format!("{}:{}: a count is not a number", path.display(), n + 1))?;
        let key = (cols[0].to_owned(), cols[1].to_owned(), cols[2].to_owned());
        let quantiles = *quantiles
            .get(&key)
            .ok_or_else(|| format!("{}:{}: function has no row in durations.csv", path.display(), n + 1))?;
        rows.push(Row { app: key.1, counts, quantiles });
    }
    if rows.is_empty() {
        return Err(format!("{}: no functions", path.display()));
    }
    Ok(rows)
}

/// Builds the replay of `cfg.azure` (seeded by `cfg.seed`, utilisation `cfg.rho` unless a
/// speed is given) for `cfg.nodes` × `cfg.slots`.
pub(crate) fn generate(cfg: &WorkloadConfig, rng: &mut impl Rng) -> Result<Trace, String> {
    let az = &cfg.azure;
    let rows = read_rows(az)?;
    let cap_ms = az.max_exec.as_secs_f64() * 1000.0;
    let window_calls: u64 = rows.iter().flat_map(|r| &r.counts).sum();
    if window_calls == 0 {
        return Err(format!("window {}:{} has no calls", az.start_minute, az.minutes));
    }
    if window_calls > MAX_CALLS as u64 {
        return Err(format!(
            "window {}:{} has {window_calls} calls, more than {MAX_CALLS}: choose a shorter --window",
            az.start_minute, az.minutes
        ));
    }
    // Expected busy-container-seconds of the window, at the trace's own pace.
    let work_s: f64 =
        rows.iter().map(|r| r.counts.iter().sum::<u64>() as f64 * r.quantiles.mean_clipped(cap_ms) / 1000.0).sum();
    let mean_exec_ms = work_s * 1000.0 / window_calls as f64;
    let native_s = az.minutes as f64 * 60.0;
    let capacity = (cfg.nodes * cfg.slots) as f64;
    let speed = match az.speed {
        Some(s) => s,
        None => cfg.rho * capacity * native_s / work_s.max(1e-9),
    };
    if !(speed.is_finite() && speed > 0.0) {
        return Err(format!("speed {speed} is not a positive number (a --rho of 0?)"));
    }
    let minute_s = 60.0 / speed;
    let total_s = native_s / speed;

    let mut apps: Vec<&str> = Vec::new();
    let functions: Vec<Function> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let app = apps.iter().position(|a| *a == r.app).unwrap_or_else(|| {
                apps.push(&r.app);
                apps.len() - 1
            });
            Function {
                path: format!("/r/az{app}/f{i:03}"),
                exec_ms: r.quantiles.0[3].min(cap_ms),
                cold_ms: trace::cold_ms(rng),
                popularity: r.counts.iter().sum::<u64>() as f64 / window_calls as f64,
            }
        })
        .collect();

    let mut calls = Vec::with_capacity(window_calls as usize);
    let mut clipped = 0;
    let mut per_minute = vec![0u64; az.minutes];
    for (m, in_minute) in per_minute.iter_mut().enumerate() {
        let from = m as f64 * minute_s;
        let first = calls.len();
        for (f, r) in rows.iter().enumerate() {
            let n = r.counts[m];
            *in_minute += n;
            let phase: f64 = rng.gen();
            for k in 0..n {
                let frac = match az.arrivals {
                    Arrivals::Poisson => rng.gen::<f64>(),
                    Arrivals::Uniform => (k as f64 + phase) / n as f64,
                };
                let raw = r.quantiles.at(rng.gen());
                if raw > cap_ms {
                    clipped += 1;
                }
                // Clamped inside the minute: float rounding must not move a call to the next.
                let at = (from + frac * minute_s).min(from + minute_s * (1.0 - 1e-12));
                calls.push(Call {
                    at: Duration::from_secs_f64(at),
                    func: f as u32,
                    exec_ms: raw.min(cap_ms),
                    cold_ms: functions[f].cold_ms,
                });
            }
        }
        calls[first..].sort_by_key(|c| c.at);
    }

    let warmup = cfg.warmup.min(Duration::from_secs_f64(total_s));
    let mut config = cfg.clone();
    config.warmup = warmup;
    config.measured = Duration::from_secs_f64(total_s).saturating_sub(warmup);
    config.functions = functions.len();
    config.rho = work_s / native_s * speed / capacity;
    let replay = AzureReplay {
        trace_dir: az.trace_dir.display().to_string(),
        start_minute: az.start_minute,
        minutes: az.minutes,
        speed,
        arrivals: az.arrivals,
        minute_s,
        per_minute,
        active_functions: functions.iter().filter(|f| f.popularity > 0.0).count(),
        clipped,
    };
    Ok(Trace { config, functions, rate: window_calls as f64 / total_s, mean_exec_ms, calls, azure: Some(replay) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Quantiles = Quantiles([0.0, 10.0, 20.0, 40.0, 80.0, 1000.0, 5000.0]);

    #[test]
    fn quantiles_interpolate_linearly_between_percentiles() {
        assert_eq!(Q.at(0.0), 0.0);
        assert_eq!(Q.at(0.01), 10.0);
        assert_eq!(Q.at(0.5), 40.0);
        assert!((Q.at(0.375) - 30.0).abs() < 1e-9);
        assert!((Q.at(0.995) - 3000.0).abs() < 1e-6);
        assert_eq!(Q.at(1.0), 5000.0);
        assert_eq!(Q.at(2.0), 5000.0);
    }

    #[test]
    fn clipped_mean_matches_a_numerical_integral() {
        for cap in [f64::INFINITY, 2000.0, 60.0, 5.0] {
            let n = 1_000_000;
            let numeric: f64 = (0..n).map(|i| Q.at((i as f64 + 0.5) / n as f64).min(cap)).sum::<f64>() / n as f64;
            let exact = Q.mean_clipped(cap);
            assert!((numeric / exact - 1.0).abs() < 1e-4, "cap {cap}: {numeric} vs {exact}");
        }
    }

    #[test]
    fn windows_parse_and_stay_in_the_trace() {
        assert_eq!(parse_window("120:10"), Ok((120, 10)));
        assert_eq!(parse_window("0:480"), Ok((0, 480)));
        for bad in ["120", "470:20", "5:0", "a:1", "-1:3"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }
}
