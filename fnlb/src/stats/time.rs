//! Wall-clock helpers: microseconds since the Unix epoch, and RFC 3339 UTC text with microseconds
//! (`2026-11-26T15:33:57.239859Z`), the form the original's `/1/lb/stats` used.
#[cfg(any(test, not(target_os = "linux")))]
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (0 if the clock is before it).
#[cfg(any(test, not(target_os = "linux")))]
pub(crate) fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_micros().min(u128::from(u64::MAX)) as u64).unwrap_or(0)
}

/// Now, in microseconds since the Unix epoch (0 if the clock is before it). Read once per call
/// (the stats' window): on Linux straight from `CLOCK_REALTIME` in integers, where
/// `SystemTime::now()` and `duration_since` through a `u128` cost ~60 instructions more.
#[cfg(target_os = "linux")]
pub(crate) fn now_micros() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    u64::try_from(ts.tv_sec).map_or(0, |s| s * 1_000_000 + ts.tv_nsec as u64 / 1_000)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn now_micros() -> u64 {
    unix_micros(SystemTime::now())
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for microseconds since the epoch.
pub(crate) fn rfc3339_micros(us: u64) -> String {
    let secs = us / 1_000_000;
    let frac = us % 1_000_000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_the_system_clock_to_the_microsecond() {
        let before = unix_micros(std::time::SystemTime::now());
        let now = now_micros();
        let after = unix_micros(std::time::SystemTime::now());
        assert!(before <= now && now <= after, "{before} <= {now} <= {after}");
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        // 2026-11-26T15:33:57.239859Z, the SPEC's example.
        assert_eq!(rfc3339_micros(1_795_707_237_239_859), "2026-11-26T15:33:57.239859Z");
        // A leap day.
        assert_eq!(rfc3339_micros(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(rfc3339_micros(4_102_444_799_999_999), "2099-12-31T23:59:59.999999Z");
    }
}
