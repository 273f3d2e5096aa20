//! The flags' value parsers: each takes the text (from the flag, its variable or its default)
//! and says why it refuses it, in an [`InvalidValue`]; the caller adds the flag's name.
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::POLICIES;
use crate::discovery::db_url::DbUrl;
use crate::node::NodeAddr;
use crate::route::goduration::parse_go_duration;
use crate::telemetry::LogFormat;

/// More worker threads than this is a typo, not a configuration.
pub(crate) const MAX_THREADS: usize = 1024;

/// Why a flag's value was refused; the caller adds which flag and which value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

impl From<String> for InvalidValue {
    fn from(s: String) -> Self {
        InvalidValue(s)
    }
}

impl From<&str> for InvalidValue {
    fn from(s: &str) -> Self {
        InvalidValue(s.to_owned())
    }
}

/// `:PORT` (all interfaces, as in Go), `HOST:PORT`, `[IPv6]:PORT`; names are resolved now and the
/// first address is used. Port 0 asks the system for a free port.
pub(crate) fn parse_listen_addr(s: &str) -> Result<SocketAddr, InvalidValue> {
    const EXPECTED: &str = "expected :PORT, HOST:PORT or [IPv6]:PORT";
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("missing port: {EXPECTED}").into());
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {port:?}: {EXPECTED}").into());
    }
    let port: u16 = port.parse().map_err(|_| format!("port {port} is out of range (0 to 65535)"))?;
    if host.is_empty() {
        return Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)));
    }
    if host.contains(':') || host.starts_with('[') {
        return Err(format!("invalid host {host:?}: an IPv6 host goes in brackets, [::1]:PORT").into());
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        return Err(format!("invalid host {host:?}: {EXPECTED}").into());
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host:?} resolves to no address").into())
}

/// A comma-separated list of node addresses; spaces around items and empty items are ignored,
/// and repeats are dropped.
pub(crate) fn parse_nodes(s: &str) -> Result<Vec<NodeAddr>, InvalidValue> {
    let mut nodes: Vec<NodeAddr> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let node = NodeAddr::parse(item).map_err(|e| e.to_string())?;
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    Ok(nodes)
}

/// Non-negative seconds: an integer or decimal (the Go original took integers: `3`, `0.5`), or a
/// Go duration (`3s`, `500ms`, `1m30s`).
pub(crate) fn parse_seconds(s: &str) -> Result<Duration, InvalidValue> {
    const EXPECTED: &str = "expected seconds (3, 0.5) or a duration (3s, 500ms)";
    // The sign is handled here so that "-1" says "negative" rather than "invalid".
    let negative = s.starts_with('-');
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    let plain_number = !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let d = if plain_number { parse_go_duration(&format!("{unsigned}s")) } else { parse_go_duration(unsigned) }
        .ok_or(EXPECTED)?;
    if negative && !d.is_zero() {
        return Err("must not be negative".into());
    }
    Ok(d)
}

/// Like [`parse_seconds`], and not zero.
pub(crate) fn parse_positive_seconds(s: &str) -> Result<Duration, InvalidValue> {
    let d = parse_seconds(s)?;
    if d.is_zero() {
        return Err("must be greater than 0".into());
    }
    Ok(d)
}

/// An absolute path (and optional query) that can go in a request line.
pub(crate) fn parse_hc_path(s: &str) -> Result<String, InvalidValue> {
    if !s.starts_with('/') {
        return Err("must start with '/'".into());
    }
    s.parse::<http::uri::PathAndQuery>().map_err(|_| "not a valid URL path")?;
    if s.contains('#') {
        return Err("must not contain a fragment ('#')".into());
    }
    Ok(s.to_owned())
}

/// A count of consecutive checks: at least 1.
pub(crate) fn parse_count(s: &str) -> Result<u32, InvalidValue> {
    let n = parse_integer(s)?;
    if n < 1 {
        return Err("must be at least 1".into());
    }
    u32::try_from(n).map_err(|_| "too large".into())
}

/// A TCP port, 1–65535.
pub(crate) fn parse_port(s: &str) -> Result<u16, InvalidValue> {
    match parse_integer(s)? {
        n @ 1..=65535 => Ok(n as u16),
        _ => Err("must be a port from 1 to 65535".into()),
    }
}

/// Worker threads: 0 (one per CPU) up to [`MAX_THREADS`].
pub(crate) fn parse_threads(s: &str) -> Result<usize, InvalidValue> {
    let n = parse_integer(s)?;
    if n < 0 {
        return Err("must not be negative".into());
    }
    let n = usize::try_from(n).map_err(|_| "too large")?;
    if n > MAX_THREADS {
        return Err(format!("must be at most {MAX_THREADS}").into());
    }
    Ok(n)
}

pub(super) fn resolve_threads(n: usize) -> usize {
    if n > 0 {
        return n;
    }
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// A decimal integer, sign allowed so that callers can say "must not be negative".
fn parse_integer(s: &str) -> Result<i64, InvalidValue> {
    s.parse::<i64>().map_err(|_| InvalidValue::from("expected an integer"))
}

pub(crate) fn parse_version(s: &str) -> Result<semver::Version, InvalidValue> {
    semver::Version::parse(s).map_err(|e| e.to_string().into())
}

/// hyper needs at least 8 KiB of read buffer; more than 1 MiB of headers is no request.
pub(crate) fn parse_header_size(s: &str) -> Result<usize, InvalidValue> {
    match parse_integer(s)? {
        n @ 8192..=1_048_576 => Ok(n as usize),
        _ => Err("must be from 8192 to 1048576 bytes".into()),
    }
}

/// A share from 0 to 1.
pub(crate) fn parse_fraction(s: &str) -> Result<f64, InvalidValue> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err("expected a fraction from 0 to 1, such as 0.5".into()),
    }
}

/// Empty: no token. Otherwise printable ASCII without spaces (it travels in a header).
pub(crate) fn parse_token(s: &str) -> Result<Option<String>, InvalidValue> {
    if s.is_empty() {
        return Ok(None);
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".into());
    }
    Ok(Some(s.to_owned()))
}

/// Empty: not given. Otherwise a file path, read later.
pub(crate) fn parse_optional_path(s: &str) -> Result<Option<PathBuf>, InvalidValue> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.contains('\0') {
        return Err("a path cannot contain a NUL byte".into());
    }
    Ok(Some(PathBuf::from(s)))
}

/// A `-db` URL whose driver options are also valid (`sslmode=banana` is a flag error, exit 2,
/// not a failure to connect).
pub(super) fn parse_db(s: &str) -> Result<DbUrl, InvalidValue> {
    let db = DbUrl::parse(s)?;
    crate::discovery::sql::check_url(&db).map_err(InvalidValue::from)?;
    Ok(db)
}

/// The bounded-load factor: a number above 1 (1.25 is the literature's choice).
pub(crate) fn parse_load_factor(s: &str) -> Result<f64, InvalidValue> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 1.0 && f <= 100.0 => Ok(f),
        Ok(_) => Err("must be a number above 1 and at most 100".into()),
        Err(_) => Err("expected a number such as 1.25".into()),
    }
}

pub(crate) fn parse_policy(s: &str) -> Result<String, InvalidValue> {
    if POLICIES.contains(&s) {
        return Ok(s.to_owned());
    }
    Err(format!("unknown policy: expected one of {}", POLICIES.join(", ")).into())
}

/// Empty: no tracing. Otherwise an http:// URL with a host (the exporter has no TLS).
pub(crate) fn parse_zipkin(s: &str) -> Result<Option<String>, InvalidValue> {
    if s.is_empty() {
        return Ok(None);
    }
    const EXPECTED: &str = "must be an http:// URL, e.g. http://zipkin:9411/api/v2/spans";
    let url = url::Url::parse(s).map_err(|_| EXPECTED)?;
    if url.scheme() == "https" {
        // The exporter has no TLS: say so now rather than drop every span later.
        return Err("https collectors are not supported; use the collector's http:// URL (or a local agent)".into());
    }
    if url.scheme() != "http" || url.host_str().is_none_or(str::is_empty) {
        return Err(EXPECTED.into());
    }
    Ok(Some(s.to_owned()))
}

/// `-log-format`: `text` or `json`.
pub(crate) fn parse_log_format(s: &str) -> Result<LogFormat, InvalidValue> {
    LogFormat::parse(s).ok_or_else(|| "expected text or json".into())
}

/// A Go bool (`strconv.ParseBool`): 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False.
pub(crate) fn parse_bool(s: &str) -> Result<bool, InvalidValue> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// Empty: the balancer's own namespace. Otherwise a Kubernetes namespace name (an RFC 1123 label).
pub(crate) fn parse_namespace(s: &str) -> Result<Option<String>, InvalidValue> {
    if s.is_empty() {
        return Ok(None);
    }
    let valid = s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !valid {
        return Err("must be a Kubernetes namespace: at most 63 lower-case letters, digits and '-', \
             not starting or ending with '-'"
            .into());
    }
    Ok(Some(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_accepts_go_forms() {
        let p = |s| parse_listen_addr(s).unwrap();
        assert_eq!(p(":8081"), "0.0.0.0:8081".parse().unwrap());
        assert_eq!(p(":0"), "0.0.0.0:0".parse().unwrap());
        assert_eq!(p("127.0.0.1:1"), "127.0.0.1:1".parse().unwrap());
        assert_eq!(p("[::1]:2"), "[::1]:2".parse().unwrap());
        assert!(p("localhost:3").ip().is_loopback());
        assert_eq!(p("localhost:3").port(), 3);
    }

    #[test]
    fn listen_rejects_malformed_addresses() {
        for s in ["nonsense", "8081", "", ":", ":http", ":65536", ":-1", "::1:80", "a b:80", "h/x:80"] {
            assert!(parse_listen_addr(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn nodes_tolerate_spaces_and_empty_items() {
        let nodes = parse_nodes(" a:1 , ,b:2,,a:1, ").unwrap();
        assert_eq!(nodes, vec!["a:1", "b:2"]);
        assert!(parse_nodes("").unwrap().is_empty());
        assert!(parse_nodes(" , ").unwrap().is_empty());
        assert!(parse_nodes("a:1,b").is_err());
    }

    #[test]
    fn seconds_accept_integers_decimals_and_go_durations() {
        let p = |s| parse_seconds(s).unwrap();
        assert_eq!(p("3"), Duration::from_secs(3));
        assert_eq!(p("0.5"), Duration::from_millis(500));
        assert_eq!(p(".25"), Duration::from_millis(250));
        assert_eq!(p("+2"), Duration::from_secs(2));
        assert_eq!(p("3s"), Duration::from_secs(3));
        assert_eq!(p("500ms"), Duration::from_millis(500));
        assert_eq!(p("1m30s"), Duration::from_secs(90));
        assert_eq!(p("0"), Duration::ZERO);
        assert_eq!(p("-0"), Duration::ZERO);
        for bad in ["", "abc", "1e3", "3 s", ".", "1d", "--1", "9999999999999999999"] {
            assert_eq!(
                parse_seconds(bad),
                Err("expected seconds (3, 0.5) or a duration (3s, 500ms)".into()),
                "{bad:?}"
            );
        }
        for neg in ["-1", "-0.5", "-3s", "-1h"] {
            assert_eq!(parse_seconds(neg), Err("must not be negative".into()), "{neg}");
        }
    }

    #[test]
    fn counts_ports_and_threads_are_range_checked() {
        assert_eq!(parse_count("1"), Ok(1));
        assert!(parse_count("0").is_err());
        assert!(parse_count("-2").is_err());
        assert!(parse_count("99999999999").is_err());
        assert_eq!(parse_port("65535"), Ok(65535));
        assert!(parse_port("0").is_err());
        assert!(parse_port("65536").is_err());
        assert!(parse_port("http").is_err());
        assert_eq!(parse_threads("0"), Ok(0));
        assert_eq!(parse_threads("-1"), Err("must not be negative".into()));
        assert!(parse_threads("100000").is_err());
        assert!(resolve_threads(0) >= 1);
        assert_eq!(resolve_threads(5), 5);
    }

    #[test]
    fn hc_path_must_be_an_absolute_request_path() {
        assert_eq!(parse_hc_path("/version"), Ok("/version".to_owned()));
        assert!(parse_hc_path("version").is_err());
        assert!(parse_hc_path("").is_err());
        assert!(parse_hc_path("/a b").is_err());
        assert!(parse_hc_path("/a#b").is_err());
        assert!(parse_hc_path("http://x/version").is_err());
    }

    #[test]
    fn zipkin_must_be_an_http_url() {
        assert_eq!(parse_zipkin(""), Ok(None));
        assert!(parse_zipkin("http://z/api").unwrap().is_some());
        assert!(parse_zipkin("https://z/api").unwrap_err().to_string().contains("https"));
        for bad in ["z:9411", "ftp://z/", "http://", "/api/v2/spans"] {
            assert!(parse_zipkin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn optional_paths() {
        assert_eq!(parse_optional_path(""), Ok(None));
        assert_eq!(parse_optional_path("a/b.pem"), Ok(Some(PathBuf::from("a/b.pem"))));
        assert!(parse_optional_path("a\0b").is_err());
    }

    #[test]
    fn namespace_must_be_a_dns_label() {
        assert_eq!(parse_namespace(""), Ok(None));
        assert_eq!(parse_namespace("fn-prod").unwrap().as_deref(), Some("fn-prod"));
        for bad in ["Fn", "-a", "a-", "a_b", &"a".repeat(64)] {
            assert!(parse_namespace(bad).is_err(), "{bad}");
        }
    }
}
