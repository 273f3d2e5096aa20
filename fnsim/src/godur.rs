//! Go `time.Duration` text: formatting exactly like Go's `Duration.String()` and parsing like
//! `time.ParseDuration`.
//!
//! Fn nodes report their queue wait in `XXX-FXLB-WAIT` as a Go duration string, and balancers written
//! against the Go original parse it back, so the bytes must match Go's output exactly
//! (`502.0941ms`, `1.024709167s`, `0s`, `1µs`, `1h2m3.5s`).

use std::time::Duration;

const NANOSECOND: u64 = 1;
const MICROSECOND: u64 = 1_000 * NANOSECOND;
const MILLISECOND: u64 = 1_000 * MICROSECOND;
const SECOND: u64 = 1_000 * MILLISECOND;

/// Formats a `std::time::Duration` like Go. Go durations are `int64` nanoseconds, so longer
/// durations saturate at Go's maximum (about 292 years), which never happens for a queue wait.
pub fn format(d: Duration) -> String {
    let nanos = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    format_nanos(nanos)
}

/// Formats signed nanoseconds exactly like Go's `time.Duration(nanos).String()`.
///
/// This is a transliteration of Go's `Duration.format`: the digits are written right to left into
/// a fixed buffer.
pub fn format_nanos(nanos: i64) -> String {
    let mut buf = [0u8; 32];
    let mut w = buf.len();
    let neg = nanos < 0;
    let mut u = nanos.unsigned_abs();

    if u < SECOND {
        // Sub-second: a single unit (ns, µs or ms) with a fraction.
        let prec;
        w -= 1;
        buf[w] = b's';
        w -= 1;
        if u == 0 {
            buf[w] = b'0';
            return String::from_utf8_lossy(&buf[w..]).into_owned();
        } else if u < MICROSECOND {
            prec = 0;
            buf[w] = b'n';
        } else if u < MILLISECOND {
            prec = 3;
            // 'µ' is U+00B5, two bytes in UTF-8.
            w -= 1;
            buf[w..w + 2].copy_from_slice("µ".as_bytes());
        } else {
            prec = 6;
            buf[w] = b'm';
        }
        (w, u) = fmt_frac(&mut buf, w, u, prec);
        w = fmt_int(&mut buf, w, u);
    } else {
        w -= 1;
        buf[w] = b's';
        (w, u) = fmt_frac(&mut buf, w, u, 9);
        // u is now whole seconds.
        w = fmt_int(&mut buf, w, u % 60);
        u /= 60;
        if u > 0 {
            w -= 1;
            buf[w] = b'm';
            w = fmt_int(&mut buf, w, u % 60);
            u /= 60;
            if u > 0 {
                w -= 1;
                buf[w] = b'h';
                w = fmt_int(&mut buf, w, u);
            }
        }
    }
    if neg {
        w -= 1;
        buf[w] = b'-';
    }
    // Only ASCII and a whole 'µ' were written, so this is valid UTF-8.
    String::from_utf8_lossy(&buf[w..]).into_owned()
}

/// Writes the fraction of `v / 10^prec` ending at `w`, omitting trailing zeros (and the dot if the
/// fraction is zero). Returns the new start and `v / 10^prec`.
fn fmt_frac(buf: &mut [u8], mut w: usize, mut v: u64, prec: usize) -> (usize, u64) {
    let mut print = false;
    for _ in 0..prec {
        let digit = (v % 10) as u8;
        print = print || digit != 0;
        if print {
            w -= 1;
            buf[w] = digit + b'0';
        }
        v /= 10;
    }
    if print {
        w -= 1;
        buf[w] = b'.';
    }
    (w, v)
}

/// Writes the decimal digits of `v` ending at `w`; returns the new start.
fn fmt_int(buf: &mut [u8], mut w: usize, mut v: u64) -> usize {
    if v == 0 {
        w -= 1;
        buf[w] = b'0';
    } else {
        while v > 0 {
            w -= 1;
            buf[w] = (v % 10) as u8 + b'0';
            v /= 10;
        }
    }
    w
}

/// Parses a Go duration string (`300ms`, `1.5h`, `2h45m`, `1µs`, `1us`, `0`) into nanoseconds,
/// like Go's `time.ParseDuration`. Returns `None` for anything Go would reject or that overflows.
pub fn parse_nanos(s: &str) -> Option<i64> {
    let mut rest = s;
    let mut neg = false;
    if let Some(r) = rest.strip_prefix('-') {
        neg = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        // Integer part.
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        // Optional fraction.
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let frac_len = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &r[..frac_len];
            rest = &r[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        // Unit: everything up to the next digit or dot.
        let unit_len =
            rest.char_indices().find(|&(_, c)| c == '.' || c.is_ascii_digit()).map_or(rest.len(), |(i, _)| i);
        let unit = match &rest[..unit_len] {
            "ns" => NANOSECOND,
            "us" | "µs" | "μs" => MICROSECOND,
            "ms" => MILLISECOND,
            "s" => SECOND,
            "m" => 60 * SECOND,
            "h" => 3600 * SECOND,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let int: u128 = if int_part.is_empty() { 0 } else { int_part.parse().ok()? };
        let mut value = int.checked_mul(unit as u128)?;
        // The fraction is applied like Go's leadingFraction: digits accumulate as an integer
        // (later digits are dropped once it would overflow) and are scaled in floating point,
        // which Go needs to stay nanosecond-accurate for fractions of hours.
        let (mut frac, mut frac_scale, mut overflow) = (0u64, 1f64, false);
        for b in frac_part.bytes() {
            if overflow {
                continue;
            }
            if frac > (1u64 << 63) / 10 {
                overflow = true;
                continue;
            }
            let next = frac * 10 + u64::from(b - b'0');
            if next > 1u64 << 63 {
                overflow = true;
                continue;
            }
            frac = next;
            frac_scale *= 10.0;
        }
        if frac > 0 {
            value += (frac as f64 * (unit as f64 / frac_scale)) as u128;
        }
        total = total.checked_add(value)?;
        if total > i64::MAX as u128 + u128::from(neg) {
            return None;
        }
    }
    if neg {
        Some((total as i128).wrapping_neg() as i64)
    } else {
        Some(total as i64)
    }
}

/// Parses a Go duration, or a bare number meaning seconds (for command-line flags such as
/// `--idle-timeout 30`). Negative durations are rejected.
pub fn parse_flag(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("invalid duration {s:?}: must be a non-negative number of seconds"));
    }
    match parse_nanos(s) {
        Some(n) if n >= 0 => Ok(Duration::from_nanos(n as u64)),
        _ => Err(format!("invalid duration {s:?}: use seconds or a Go duration such as 30s, 500ms, 1m30s")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60 * SECOND as i64;
    const HOUR: i64 = 60 * MINUTE;
    const S: i64 = SECOND as i64;
    const MS: i64 = MILLISECOND as i64;
    const US: i64 = MICROSECOND as i64;

    /// Go's `durationTests` from `src/time/time_test.go` (TestDurationString).
    const GO_VECTORS: &[(&str, i64)] = &[
        ("0s", 0),
        ("1ns", 1),
        ("1.1µs", 1100),
        ("2.2ms", 2200 * US),
        ("3.3s", 3300 * MS),
        ("4m5s", 4 * MINUTE + 5 * S),
        ("4m5.001s", 4 * MINUTE + 5001 * MS),
        ("5h6m7.001s", 5 * HOUR + 6 * MINUTE + 7001 * MS),
        ("8m0.000000001s", 8 * MINUTE + 1),
        ("2562047h47m16.854775807s", i64::MAX),
        ("-2562047h47m16.854775808s", i64::MIN),
    ];

    #[test]
    fn go_duration_string_vectors() {
        for &(want, d) in GO_VECTORS {
            assert_eq!(format_nanos(d), want, "format({d})");
            if d > 0 {
                // Go's test also checks that negation only adds a sign.
                assert_eq!(format_nanos(-d), format!("-{want}"), "format(-{d})");
            }
        }
    }

    #[test]
    fn fn_style_examples() {
        assert_eq!(format(Duration::from_nanos(502_094_100)), "502.0941ms");
        assert_eq!(format(Duration::from_nanos(1_024_709_167)), "1.024709167s");
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_micros(1)), "1µs");
        assert_eq!(format(Duration::from_nanos(1500)), "1.5µs");
        assert_eq!(format(Duration::from_nanos(999)), "999ns");
        assert_eq!(format(Duration::from_millis(1)), "1ms");
        assert_eq!(format(Duration::from_millis(3_723_500)), "1h2m3.5s");
        assert_eq!(format(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format(Duration::from_secs(u64::MAX)), "2562047h47m16.854775807s");
    }

    #[test]
    fn parse_round_trips_go_vectors() {
        for &(s, d) in GO_VECTORS {
            assert_eq!(parse_nanos(s), Some(d), "parse({s})");
        }
    }

    #[test]
    fn parse_like_go() {
        // A selection of Go's parseDurationTests.
        assert_eq!(parse_nanos("0"), Some(0));
        assert_eq!(parse_nanos("5s"), Some(5 * S));
        assert_eq!(parse_nanos("30s"), Some(30 * S));
        assert_eq!(parse_nanos("1478s"), Some(1478 * S));
        assert_eq!(parse_nanos("-5s"), Some(-5 * S));
        assert_eq!(parse_nanos("+5s"), Some(5 * S));
        assert_eq!(parse_nanos("5.0s"), Some(5 * S));
        assert_eq!(parse_nanos("5.6s"), Some(5 * S + 600 * MS));
        assert_eq!(parse_nanos("5.s"), Some(5 * S));
        assert_eq!(parse_nanos(".5s"), Some(S / 2));
        assert_eq!(parse_nanos("1.004s"), Some(S + 4 * MS));
        assert_eq!(parse_nanos("100.00100s"), Some(100 * S + MS));
        assert_eq!(parse_nanos("10ns"), Some(10));
        assert_eq!(parse_nanos("11us"), Some(11 * US));
        assert_eq!(parse_nanos("12µs"), Some(12 * US));
        assert_eq!(parse_nanos("12μs"), Some(12 * US));
        assert_eq!(parse_nanos("13ms"), Some(13 * MS));
        assert_eq!(parse_nanos("14s"), Some(14 * S));
        assert_eq!(parse_nanos("15m"), Some(15 * MINUTE));
        assert_eq!(parse_nanos("16h"), Some(16 * HOUR));
        assert_eq!(parse_nanos("3h30m"), Some(3 * HOUR + 30 * MINUTE));
        assert_eq!(parse_nanos("10.5s4m"), Some(4 * MINUTE + 10 * S + 500 * MS));
        assert_eq!(parse_nanos("-2m3.4s"), Some(-(2 * MINUTE + 3 * S + 400 * MS)));
        assert_eq!(parse_nanos("1h2m3s4ms5us6ns"), Some(HOUR + 2 * MINUTE + 3 * S + 4 * MS + 5 * US + 6));
        assert_eq!(parse_nanos("39h9m14.425s"), Some(39 * HOUR + 9 * MINUTE + 14 * S + 425 * MS));
        assert_eq!(parse_nanos("52763797000ns"), Some(52763797000));
        assert_eq!(parse_nanos("0.3333333333333333333h"), Some(20 * MINUTE));
        assert_eq!(parse_nanos("9007199254740993ns"), Some((1 << 53) + 1));
        assert_eq!(parse_nanos("9223372036854775807ns"), Some(i64::MAX));
        assert_eq!(parse_nanos("-9223372036854775808ns"), Some(i64::MIN));
        for bad in [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "\u{85}\u{85}",
            "9223372036854775808ns",
            "-9223372036854775809ns",
            "3000000h",
        ] {
            assert_eq!(parse_nanos(bad), None, "parse({bad:?})");
        }
    }

    #[test]
    fn flag_durations() {
        assert_eq!(parse_flag("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_flag("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_flag("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_flag("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_flag("-1").is_err());
        assert!(parse_flag("banana").is_err());
    }
}
