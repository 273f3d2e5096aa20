//! Go duration strings (`time.ParseDuration`), as Fn nodes write them in `XXX-FXLB-WAIT`.
//!
//! Runs on the proxy hot path: parses in place, never allocates, never panics. It mirrors Go's
//! algorithm step by step (including its float arithmetic for fractions) so that every string Go
//! accepts gives the same number of nanoseconds here.
//!
//! One deliberate difference: a strictly negative duration is `None`, because a negative wait
//! carries no information. A negative zero (`-0`, `-0s`, `-0.0h`) is zero, as in Go.

use std::time::Duration;

/// 2^63: Go durations are `int64` nanoseconds; the magnitude may reach 2^63 only when negative.
const LIMIT: u64 = 1 << 63;

/// Parses a Go duration string (`300ms`, `-1.5h`, `2h45m`, `1µs`) into a non-negative duration.
///
/// Returns `None` for anything Go's `time.ParseDuration` rejects, and for negative durations.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    parse_go_duration_bytes(s.as_bytes())
}

/// Like [`parse_go_duration`], over raw bytes: header values are bytes, and `µs` is not visible
/// ASCII, so `HeaderValue::to_str` would refuse it. Invalid UTF-8 never matches a unit and is
/// rejected, as in Go.
pub fn parse_go_duration_bytes(s: &[u8]) -> Option<Duration> {
    let mut s = s;
    let mut neg = false;
    if let Some((&c, rest)) = s.split_first() {
        if c == b'-' || c == b'+' {
            neg = c == b'-';
            s = rest;
        }
    }
    // Go special-cases a bare "0" (which has no unit).
    if s == b"0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }

    let mut total: u64 = 0;
    while !s.is_empty() {
        // The next character must be [0-9.].
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return None;
        }
        let before = s.len();
        let (mut v, rest) = leading_int(s)?;
        s = rest;
        let pre = before != s.len();

        let mut f: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut post = false;
        if let Some((&b'.', rest)) = s.split_first() {
            s = rest;
            let before = s.len();
            let (frac, frac_scale, rest) = leading_fraction(s);
            f = frac;
            scale = frac_scale;
            s = rest;
            post = before != s.len();
        }
        if !pre && !post {
            // No digits at all, e.g. ".s" or "-.".
            return None;
        }

        let unit_len = s.iter().position(|&c| c == b'.' || c.is_ascii_digit()).unwrap_or(s.len());
        if unit_len == 0 {
            return None; // missing unit
        }
        let unit = unit_nanos(&s[..unit_len])?;
        s = &s[unit_len..];

        if v > LIMIT / unit {
            return None;
        }
        v *= unit;
        if f > 0 {
            // Go uses float64 here to stay nanosecond-accurate for fractions of hours; doing the
            // same keeps results identical to Go's. The product is at most 3.6e12 (ns per hour),
            // so the cast never saturates.
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return None;
            }
        }
        // Both are <= 2^63, so the sum can just reach 2^64; Go wraps there, we refuse.
        total = match total.checked_add(v) {
            Some(t) if t <= LIMIT => t,
            _ => return None,
        };
    }

    if neg {
        return (total == 0).then_some(Duration::ZERO);
    }
    if total > LIMIT - 1 {
        return None;
    }
    Some(Duration::from_nanos(total))
}

/// Consumes the leading `[0-9]*`; `None` when the value exceeds 2^63 (Go's overflow error).
fn leading_int(s: &[u8]) -> Option<(u64, &[u8])> {
    let mut x: u64 = 0;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        if x > LIMIT / 10 {
            return None;
        }
        x = x * 10 + u64::from(s[i] - b'0');
        if x > LIMIT {
            return None;
        }
        i += 1;
    }
    Some((x, &s[i..]))
}

/// Consumes the leading `[0-9]*` of a fraction. Never fails: once more digits would overflow it
/// stops gaining precision and skips the rest, as Go does.
fn leading_fraction(s: &[u8]) -> (u64, f64, &[u8]) {
    let mut x: u64 = 0;
    let mut scale = 1.0;
    let mut overflow = false;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        if !overflow {
            if x > (LIMIT - 1) / 10 {
                overflow = true;
            } else {
                let y = x * 10 + u64::from(s[i] - b'0');
                if y > LIMIT {
                    overflow = true;
                } else {
                    x = y;
                    scale *= 10.0;
                }
            }
        }
        i += 1;
    }
    (x, scale, &s[i..])
}

/// Nanoseconds per unit, for Go's unit names.
fn unit_nanos(unit: &[u8]) -> Option<u64> {
    Some(match unit {
        b"ns" => 1,
        b"us" => 1_000,
        b"\xc2\xb5s" => 1_000, // "µs", U+00B5 micro sign
        b"\xce\xbcs" => 1_000, // "μs", U+03BC Greek small letter mu
        b"ms" => 1_000_000,
        b"s" => 1_000_000_000,
        b"m" => 60 * 1_000_000_000,
        b"h" => 3_600 * 1_000_000_000,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NS: u64 = 1;
    const US: u64 = 1_000 * NS;
    const MS: u64 = 1_000 * US;
    const S: u64 = 1_000 * MS;
    const M: u64 = 60 * S;
    const H: u64 = 60 * M;

    fn nanos(s: &str) -> Option<u64> {
        parse_go_duration(s).map(|d| d.as_nanos() as u64)
    }

    /// Go's `parseDurationTests` (time_test.go), non-negative results.
    #[test]
    fn accepts_go_test_vectors() {
        let cases: &[(&str, u64)] = &[
            // simple
            ("0", 0),
            ("5s", 5 * S),
            ("30s", 30 * S),
            ("1478s", 1478 * S),
            // sign
            ("+5s", 5 * S),
            ("-0", 0),
            ("+0", 0),
            // decimal
            ("5.0s", 5 * S),
            ("5.6s", 5 * S + 600 * MS),
            ("5.s", 5 * S),
            (".5s", 500 * MS),
            ("1.0s", S),
            ("1.00s", S),
            ("1.004s", S + 4 * MS),
            ("1.0040s", S + 4 * MS),
            ("100.00100s", 100 * S + MS),
            // different units
            ("10ns", 10 * NS),
            ("11us", 11 * US),
            ("12µs", 12 * US),
            ("12μs", 12 * US),
            ("13ms", 13 * MS),
            ("14s", 14 * S),
            ("15m", 15 * M),
            ("16h", 16 * H),
            // composite durations
            ("3h30m", 3 * H + 30 * M),
            ("10.5s4m", 4 * M + 10 * S + 500 * MS),
            ("1h2m3s4ms5us6ns", H + 2 * M + 3 * S + 4 * MS + 5 * US + 6 * NS),
            ("39h9m14.425s", 39 * H + 9 * M + 14 * S + 425 * MS),
            // large value
            ("52763797000ns", 52763797000 * NS),
            // more than 9 digits after the decimal point (golang.org/issue/6617)
            ("0.3333333333333333333h", 20 * M),
            // 1<<53+1 cannot be stored precisely in a float64
            ("9007199254740993ns", (1 << 53) + 1),
            // the largest duration an int64 of nanoseconds holds
            ("9223372036854775807ns", (1 << 63) - 1),
            ("9223372036854775.807us", (1 << 63) - 1),
            ("9223372036s854ms775us807ns", (1 << 63) - 1),
            // huge string (golang.org/issue/15011)
            ("0.100000000000000000000h", 6 * M),
            // the first overflow check in leadingFraction
            ("0.830103483285477580700h", 49 * M + 48 * S + 372539827 * NS),
        ];
        for &(input, want) in cases {
            assert_eq!(nanos(input), Some(want), "input {input:?}");
        }
    }

    /// Go accepts these; a negative wait means nothing to us, so they are `None`.
    #[test]
    fn rejects_negative_durations_go_accepts() {
        for input in [
            "-5s",
            "-2m3.4s",
            "-9223372036854775808ns",
            "-9223372036854775.808us",
            "-9223372036s854ms775us808ns",
            "-2562047h47m16.854775808s",
            "-1.5h",
            "-1ns",
        ] {
            assert_eq!(parse_go_duration(input), None, "input {input:?}");
        }
    }

    #[test]
    fn negative_zero_is_zero() {
        for input in ["-0", "-0s", "-0.0h", "-0ms0s"] {
            assert_eq!(parse_go_duration(input), Some(Duration::ZERO), "input {input:?}");
        }
    }

    /// Go's `parseDurationErrorTests` (time_test.go).
    #[test]
    fn rejects_go_error_vectors() {
        let cases: &[&[u8]] = &[
            b"",
            b"3",
            b"-",
            b"s",
            b".",
            b"-.",
            b".s",
            b"+.s",
            b"1d",
            b"\x85\x85",
            b"\xffff",
            b"hello \xffff world",
            "\u{FFFD}".as_bytes(),
            "\u{FFFD} hello \u{FFFD} world".as_bytes(),
            // overflow
            b"9223372036854775810ns",
            b"9223372036854775808ns",
            b"-9223372036854775809ns",
            b"9223372036854776us",
            b"3000000h",
            b"9223372036854775.808us",
            b"9223372036854ms775us808ns",
        ];
        for &input in cases {
            assert_eq!(parse_go_duration_bytes(input), None, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn accepts_values_fnsim_and_fn_emit() {
        assert_eq!(nanos("502.0941ms"), Some(502_094_100));
        assert_eq!(nanos("1.024709167s"), Some(1_024_709_167));
        assert_eq!(nanos("1µs"), Some(US));
        assert_eq!(nanos("1us"), Some(US));
        assert_eq!(nanos("0s"), Some(0));
        assert_eq!(nanos("1h2m3.5s"), Some(H + 2 * M + 3 * S + 500 * MS));
    }

    #[test]
    fn rejects_spaces_and_trailing_garbage() {
        for input in [" 1s", "1s ", "1 s", "1s\n", "1sx", "1S", "1.2.3s", "0x10s"] {
            assert_eq!(parse_go_duration(input), None, "input {input:?}");
        }
    }

    /// Go's sum wraps to 0 here; an overflow is an error for us.
    #[test]
    fn rejects_sum_reaching_two_to_the_64() {
        assert_eq!(parse_go_duration("-9223372036854775808ns9223372036854775808ns"), None);
    }

    #[test]
    fn bytes_and_str_forms_agree_on_micro_sign() {
        assert_eq!(parse_go_duration_bytes("7µs".as_bytes()), Some(Duration::from_micros(7)));
        // A lone byte of the two-byte micro sign is not a unit.
        assert_eq!(parse_go_duration_bytes(b"7\xb5s"), None);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = parse_go_duration_bytes(&bytes);
        }

        #[test]
        fn never_panics_on_duration_like_strings(s in "[-+]?[0-9.]{0,25}(ns|us|µs|ms|s|m|h|d)?([0-9.]{0,22}(ns|s|h))?") {
            let _ = parse_go_duration(&s);
        }

        /// Formatting whole units the way Go does round-trips.
        #[test]
        fn round_trips_composed_units(h in 0u64..1000, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
            let text = format!("{h}h{m}m{s}s{ms}ms");
            prop_assert_eq!(nanos(&text), Some(h * H + m * M + s * S + ms * MS));
        }

        #[test]
        fn round_trips_decimal_seconds(secs in 0u64..1_000_000, frac in 0u64..1_000_000_000) {
            let text = format!("{secs}.{frac:09}s");
            prop_assert_eq!(nanos(&text), Some(secs * S + frac));
        }
    }
}
