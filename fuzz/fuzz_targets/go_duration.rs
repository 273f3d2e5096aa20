//! `XXX-FXLB-WAIT` values: Go duration strings from the nodes, parsed on the proxy's hot path.
//! Never panics; the `&str` and bytes entry points agree; a sign behaves as in Go (`+X` is `X`,
//! `-X` is refused unless X is zero); a result is at most Go's `int64` nanoseconds and reads back
//! from its own `<n>ns` spelling.
#![no_main]
use std::time::Duration;

use fnlb::route::goduration::{parse_go_duration, parse_go_duration_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let got = parse_go_duration_bytes(data);
    if let Ok(s) = std::str::from_utf8(data) {
        assert_eq!(parse_go_duration(s), got, "str and bytes disagree on {s:?}");
    }
    if let Some(d) = got {
        assert!(d.as_nanos() < 1u128 << 63, "{d:?} exceeds Go's int64 nanoseconds");
        let ns = format!("{}ns", d.as_nanos());
        assert_eq!(parse_go_duration_bytes(ns.as_bytes()), Some(d), "{ns} does not read back");
    }
    if data.len() < 256 && !data.starts_with(b"+") && !data.starts_with(b"-") {
        let signed = |sign: u8| {
            let mut v = Vec::with_capacity(data.len() + 1);
            v.push(sign);
            v.extend_from_slice(data);
            parse_go_duration_bytes(&v)
        };
        assert_eq!(signed(b'+'), got, "+ changed the value of {data:?}");
        let neg = signed(b'-');
        assert_eq!(neg.is_some(), got == Some(Duration::ZERO), "-{data:?} gave {neg:?}, {data:?} gave {got:?}");
        assert!(neg.is_none_or(|d| d.is_zero()));
    }
});
