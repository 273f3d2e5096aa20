//! The proxy's header rules on arbitrary header maps (`fnlb::proxy::headers::request/response`).
//!
//! Input: a first byte picking the client address, then `name:value` records separated by `\n`
//! (names and values that `http` refuses are skipped, as hyper would have refused them).
//! Checks: nothing hop-by-hop reaches a node or a client, nor any header `Connection` named; `TE`
//! survives only as `trailers`; `X-Forwarded-For` is one value ending with the client (earlier
//! values passed on byte for byte, obs-text included); the internal wait header never reaches a
//! client and is handed back to the proxy; other headers pass untouched.
#![no_main]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fnlb::proxy::headers::{request, response};
use fnlb::route::goduration::parse_go_duration_bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const HOP: [&str; 6] = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "expect"];

fn build(data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in data.split(|b| *b == b'\n').take(200) {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) else { continue };
        map.append(name, value);
    }
    map
}

/// The names the `Connection` headers list (as the rules read them).
fn connection_named(map: &HeaderMap) -> Vec<HeaderName> {
    map.get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let client = match pick % 3 {
        0 => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        1 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        _ => IpAddr::V4(Ipv4Addr::new(10, pick, 9, 9)),
    };
    let original = build(rest);
    let named = connection_named(&original);

    // Request: client -> node.
    let mut h = original.clone();
    request(&mut h, client);
    for gone in HOP.iter().chain(&["proxy-authorization"]) {
        assert!(!h.contains_key(*gone), "{gone} reached the node");
    }
    for name in &named {
        if name != "te" && name != "x-forwarded-for" {
            assert!(!h.contains_key(name), "{name}, named by Connection, reached the node");
        }
    }
    let te: Vec<_> = h.get_all("te").iter().collect();
    assert!(te.is_empty() || te == [HeaderValue::from_static("trailers")], "TE {te:?} reached the node");
    let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "X-Forwarded-For must be one header");
    // Bytes, not text: earlier values may carry obs-text (bytes >= 0x80), which HTTP allows and
    // the rules pass on as they came.
    let (xff, me) = (xff[0].as_bytes(), client.to_string());
    assert!(xff == me.as_bytes() || xff.ends_with(format!(", {me}").as_bytes()), "X-Forwarded-For {xff:?}");
    for (name, value) in &original {
        let special = HOP.contains(&name.as_str())
            || ["te", "proxy-authorization", "x-forwarded-for"].contains(&name.as_str())
            || named.contains(name);
        if !special {
            assert!(h.get_all(name).iter().any(|v| v == value), "{name}: {value:?} was lost");
        }
    }

    // Response: node -> client.
    let mut h = original.clone();
    let wait = response(&mut h);
    assert!(!h.contains_key("xxx-fxlb-wait"), "the internal wait header reached the client");
    for gone in &HOP[..5] {
        assert!(!h.contains_key(*gone), "{gone} reached the client");
    }
    for name in &named {
        assert!(!h.contains_key(name), "{name}, named by Connection, reached the client");
    }
    let expected_wait =
        if named.iter().any(|n| n == "xxx-fxlb-wait") { None } else { original.get("xxx-fxlb-wait").cloned() };
    assert_eq!(wait, expected_wait);
    if let Some(w) = wait {
        let _ = parse_go_duration_bytes(w.as_bytes());
    }
});
