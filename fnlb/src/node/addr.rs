//! Node addresses: the one place that decides what a valid `host:port` is.
//!
//! Every address that enters fnlb (`-nodes`, `PUT /1/lb/nodes`, the node store, Kubernetes) goes
//! through [`NodeAddr::parse`]; the rest of the program can rely on it being dialable. The
//! original stored anything (`""`, `{}`, `"not a host"`) and crashed later.
//!
//! The address is kept exactly as given once valid: no case folding, no IPv6 re-formatting. The
//! node store shares rows with the Go original, which compares strings, so `FN1:8080` and
//! `fn1:8080` stay two rows there and two nodes here.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use http::uri::Authority;

/// Longest DNS name (RFC 1035), without a trailing dot.
const MAX_DNS_NAME: usize = 253;
/// Longest DNS label (RFC 1035).
const MAX_DNS_LABEL: usize = 63;
/// How much of a rejected address an error message repeats: enough to recognise it, bounded so a
/// 64 KiB request body does not come back in a 400 answer.
const MAX_SHOWN: usize = 80;

/// A validated node address, `host:port`: host a DNS name, an IPv4 address or an `[IPv6]`
/// address in brackets; port 1–65535.
///
/// Cheap to clone (the text is shared, `Bytes`-backed). Equality, order and hash follow the text,
/// byte for byte.
#[derive(Clone)]
pub struct NodeAddr {
    /// The validated text; also what the HTTP client needs, so building a URI costs nothing.
    authority: Authority,
    /// Length of the host part of the text (brackets included for IPv6).
    host_len: usize,
    port: u16,
}

impl NodeAddr {
    /// Validates `s` as `host:port`.
    pub fn parse(s: &str) -> Result<NodeAddr, AddrError> {
        let (host, port) = split(s).map_err(|kind| AddrError::new(s, kind))?;
        // `split` enforces a subset of RFC 3986 authorities, so this never fails; mapping an error
        // anyway keeps a future loosening of `split` from turning into a panic.
        let authority =
            Authority::try_from(s).map_err(|_| AddrError::new(s, AddrErrorKind::InvalidHost("not a URI authority")))?;
        Ok(NodeAddr { authority, host_len: host.len(), port })
    }

    /// The address as given: `host:port`.
    pub fn as_str(&self) -> &str {
        self.authority.as_str()
    }

    /// The host part as written; an IPv6 host keeps its brackets (`[::1]`), as in a URI.
    pub fn host(&self) -> &str {
        &self.as_str()[..self.host_len]
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether dialing this address reaches one of `listeners` (a balancer's own listening
    /// sockets): same port, and the host is the listener's address, or any local address when
    /// the listener is bound to the unspecified one, or `localhost`. Other host names are not
    /// resolved here (a blocking lookup); `Via` catches what they hide, call by call.
    pub(crate) fn is_one_of(&self, listeners: &[std::net::SocketAddr]) -> bool {
        let host = self.host().trim_end_matches('.');
        let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::IpAddr>().ok(),
            None => host.parse::<std::net::IpAddr>().ok(),
        };
        let localhost = host.eq_ignore_ascii_case("localhost");
        listeners.iter().filter(|l| l.port() == self.port).any(|l| {
            let bound = l.ip();
            match ip {
                Some(ip) if ip == bound => true,
                // A listener on 0.0.0.0 (or [::]) takes calls on every local address.
                Some(ip) => bound.is_unspecified() && (ip.is_loopback() || ip.is_unspecified() || is_local(ip)),
                None => localhost && (bound.is_loopback() || bound.is_unspecified()),
            }
        })
    }

    /// Refuses a node that is one of `listeners` ([`NodeAddr::is_one_of`]): every call sent to
    /// it would come back to this balancer. The one check of `-nodes` and `PUT /1/lb/nodes`.
    pub(crate) fn refuse_loop(&self, listeners: &[std::net::SocketAddr]) -> Result<(), String> {
        if self.is_one_of(listeners) {
            return Err(format!("node {self} is this balancer's own listener: every call would loop back to it"));
        }
        Ok(())
    }

    /// The address as a URI authority, for building `http://<node>/...` requests. Cheap: a clone of
    /// the stored one.
    pub fn authority(&self) -> Authority {
        self.authority.clone()
    }
}

/// Whether `ip` is one of this host's addresses: only a local address can be bound.
fn is_local(ip: std::net::IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Splits and validates; the error says what is wrong, in the order an operator would fix it.
fn split(s: &str) -> Result<(&str, u16), AddrErrorKind> {
    use AddrErrorKind as K;
    if s.is_empty() {
        return Err(K::Empty);
    }
    if s.chars().any(char::is_control) {
        return Err(K::ControlCharacter);
    }
    if s.chars().any(char::is_whitespace) {
        return Err(K::Whitespace);
    }
    if s.contains("://") {
        return Err(K::Scheme);
    }
    if s.contains('@') {
        return Err(K::UserInfo);
    }
    if s.contains('/') {
        return Err(K::Path);
    }
    if s.contains('?') || s.contains('#') {
        return Err(K::Query);
    }

    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let close = rest.find(']').ok_or(K::InvalidIpv6)?;
        let host = &s[..close + 2];
        match &s[close + 2..] {
            "" => return Err(K::MissingPort),
            after => (host, after.strip_prefix(':').ok_or(K::InvalidIpv6)?),
        }
    } else {
        // A bare IPv6 address has colons of its own; say so rather than "bad port".
        if s.parse::<Ipv6Addr>().is_ok() {
            return Err(K::BareIpv6);
        }
        let (host, port) = s.rsplit_once(':').ok_or(K::MissingPort)?;
        if host.contains(':') {
            return Err(if host.parse::<Ipv6Addr>().is_ok() { K::BareIpv6 } else { K::InvalidHost("it contains ':'") });
        }
        (host, port)
    };

    let port = parse_port(port)?;
    check_host(host)?;
    Ok((host, port))
}

fn parse_port(port: &str) -> Result<u16, AddrErrorKind> {
    if port.is_empty() {
        return Err(AddrErrorKind::MissingPort);
    }
    // Only plain digits: `u16::from_str` would also take `+80`. A leading zero would make
    // `a:080` and `a:80` two different nodes for the same server.
    if !port.bytes().all(|b| b.is_ascii_digit()) || (port.len() > 1 && port.starts_with('0')) {
        return Err(AddrErrorKind::InvalidPort);
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(AddrErrorKind::PortOutOfRange),
        Ok(p) => Ok(p),
    }
}

fn check_host(host: &str) -> Result<(), AddrErrorKind> {
    use AddrErrorKind as K;
    if host.is_empty() {
        return Err(K::MissingHost);
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(K::InvalidIpv6)?;
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(K::InvalidIpv6),
        };
    }
    // All digits and dots: this is meant as IPv4 (a top-level domain is never numeric), so
    // `256.1.1.1`, `1.2.3` and octal-looking `01.2.3.4` are refused instead of looked up.
    // `Ipv4Addr` takes exactly four decimal parts without leading zeros.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(K::InvalidIpv4),
        };
    }
    check_dns_name(host)?;
    // A resolver (inet_aton) reads `0x7f.0.0.1`, `0x7f000001` or `017700000001` as 127.0.0.1:
    // one server would be registered under several names, each with its own share of keys
    // and capacity. A name whose last label starts with a letter is never read as a number.
    let last = host.strip_suffix('.').unwrap_or(host).rsplit('.').next().unwrap_or_default();
    if !last.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(K::InvalidHost(
            "the last label of a host name must start with a letter (else it may be read as an IPv4 address)",
        ));
    }
    Ok(())
}

/// RFC 1123 host name; one trailing dot (a fully-qualified name) is allowed.
fn check_dns_name(host: &str) -> Result<(), AddrErrorKind> {
    use AddrErrorKind as K;
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > MAX_DNS_NAME {
        return Err(K::InvalidHost("a DNS name is at most 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(K::InvalidHost("it has an empty label"));
        }
        if label.len() > MAX_DNS_LABEL {
            return Err(K::InvalidHost("a DNS label is at most 63 characters"));
        }
        if label.contains('_') {
            return Err(K::InvalidHost("'_' is not allowed in host names"));
        }
        if !label.is_ascii() {
            return Err(K::InvalidHost("it must be ASCII (use the punycode form of an international name)"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(K::InvalidHost("a host name has only letters, digits, '-' and '.'"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(K::InvalidHost("a label must not start or end with '-'"));
        }
    }
    Ok(())
}

/// Why an address was refused. Its `Display` is a complete sentence for a `400 {"msg":...}`
/// answer or a command-line error, quoting (a bounded prefix of) the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrError {
    shown: String,
    kind: AddrErrorKind,
}

/// The rule an address broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum AddrErrorKind {
    Empty,
    ControlCharacter,
    Whitespace,
    Scheme,
    UserInfo,
    Path,
    Query,
    MissingPort,
    InvalidPort,
    PortOutOfRange,
    MissingHost,
    BareIpv6,
    InvalidIpv6,
    InvalidIpv4,
    /// A host name that breaks RFC 1123; the text says which rule.
    InvalidHost(&'static str),
}

impl AddrError {
    fn new(input: &str, kind: AddrErrorKind) -> AddrError {
        let shown = match input.char_indices().nth(MAX_SHOWN) {
            Some((cut, _)) => format!("{:?}...", &input[..cut]),
            None => format!("{input:?}"),
        };
        AddrError { shown, kind }
    }

    #[cfg(test)]
    pub(crate) fn kind(&self) -> AddrErrorKind {
        self.kind
    }
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use AddrErrorKind as K;
        let a = &self.shown;
        match self.kind {
            K::Empty => write!(f, "node address is empty"),
            K::ControlCharacter => write!(f, "node address {a} contains a control character"),
            K::Whitespace => write!(f, "node address {a} contains whitespace"),
            K::Scheme => write!(f, "node address {a} must be host:port without a scheme"),
            K::UserInfo => write!(f, "node address {a} must be host:port without user info"),
            K::Path => write!(f, "node address {a} must be host:port without a path"),
            K::Query => write!(f, "node address {a} must be host:port without a query or fragment"),
            K::MissingPort => write!(f, "node address {a} has no port (expected host:port)"),
            K::InvalidPort => write!(f, "node address {a} has an invalid port: expected a number from 1 to 65535"),
            K::PortOutOfRange => write!(f, "node address {a} has a port out of range: expected 1 to 65535"),
            K::MissingHost => write!(f, "node address {a} has no host (expected host:port)"),
            K::BareIpv6 => write!(f, "node address {a} must put an IPv6 host in brackets, e.g. [::1]:8080"),
            K::InvalidIpv6 => write!(f, "node address {a} has an invalid IPv6 host"),
            K::InvalidIpv4 => write!(f, "node address {a} has an invalid IPv4 host"),
            K::InvalidHost(why) => write!(f, "node address {a} has an invalid host: {why}"),
        }
    }
}

impl std::error::Error for AddrError {}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NodeAddr").field(&self.as_str()).finish()
    }
}

impl FromStr for NodeAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeAddr::parse(s)
    }
}

impl TryFrom<&str> for NodeAddr {
    type Error = AddrError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        NodeAddr::parse(s)
    }
}

impl AsRef<str> for NodeAddr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// Lets maps keyed by `NodeAddr` be queried with a `&str`; sound because `Eq`, `Ord` and `Hash`
/// all follow the text.
impl Borrow<str> for NodeAddr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

// Not derived: `Authority` compares case-insensitively, and we compare the text exactly.
impl PartialEq for NodeAddr {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for NodeAddr {}

impl PartialEq<str> for NodeAddr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for NodeAddr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Hash for NodeAddr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for NodeAddr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NodeAddr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl serde::Serialize for NodeAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Deserializing validates: a `NodeAddr` is never invalid, whatever its source.
impl<'de> serde::Deserialize<'de> for NodeAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        NodeAddr::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn kind(s: &str) -> AddrErrorKind {
        NodeAddr::parse(s).expect_err(s).kind()
    }

    #[test]
    fn accepts_dns_name_ipv4_and_bracketed_ipv6() {
        for (s, host, port) in [
            ("localhost:8080", "localhost", 8080),
            ("fn-1.example.com:1", "fn-1.example.com", 1),
            ("FN1:65535", "FN1", 65535),
            ("127.0.0.1:9001", "127.0.0.1", 9001),
            ("[::1]:8080", "[::1]", 8080),
            ("[2001:db8::1]:80", "[2001:db8::1]", 80),
            ("example.com.:80", "example.com.", 80),
            ("a:80", "a", 80),
            ("1x.example:80", "1x.example", 80),
            ("fn-0x7f:80", "fn-0x7f", 80),
        ] {
            let a = NodeAddr::parse(s).unwrap();
            assert_eq!(a.as_str(), s);
            assert_eq!(a.host(), host);
            assert_eq!(a.port(), port);
            assert_eq!(a.to_string(), s);
            assert_eq!(a.authority().as_str(), s);
        }
    }

    #[test]
    fn rejects_scheme_in_node_address() {
        let e = NodeAddr::parse("http://a:1").unwrap_err();
        assert_eq!(e.kind(), AddrErrorKind::Scheme);
        assert_eq!(e.to_string(), r#"node address "http://a:1" must be host:port without a scheme"#);
    }

    #[test]
    fn rejects_empty_whitespace_and_control_characters() {
        assert_eq!(kind(""), AddrErrorKind::Empty);
        assert_eq!(NodeAddr::parse("").unwrap_err().to_string(), "node address is empty");
        assert_eq!(kind(" a:1"), AddrErrorKind::Whitespace);
        assert_eq!(kind("a:1 "), AddrErrorKind::Whitespace);
        assert_eq!(kind("a :1"), AddrErrorKind::Whitespace);
        assert_eq!(kind("a:1\n"), AddrErrorKind::ControlCharacter);
        assert_eq!(kind("a\0:1"), AddrErrorKind::ControlCharacter);
        assert_eq!(kind("a\u{a0}:1"), AddrErrorKind::Whitespace);
    }

    #[test]
    fn rejects_path_query_fragment_and_userinfo() {
        assert_eq!(kind("a:1/x"), AddrErrorKind::Path);
        assert_eq!(kind("a/x"), AddrErrorKind::Path);
        assert_eq!(kind("a:1?x=1"), AddrErrorKind::Query);
        assert_eq!(kind("a:1#f"), AddrErrorKind::Query);
        assert_eq!(kind("user@a:1"), AddrErrorKind::UserInfo);
        assert_eq!(kind("user:pw@a:1"), AddrErrorKind::UserInfo);
    }

    #[test]
    fn rejects_missing_or_bad_ports() {
        assert_eq!(kind("a"), AddrErrorKind::MissingPort);
        assert_eq!(kind("a:"), AddrErrorKind::MissingPort);
        assert_eq!(kind("[::1]"), AddrErrorKind::MissingPort);
        assert_eq!(kind("a:0"), AddrErrorKind::PortOutOfRange);
        assert_eq!(kind("a:65536"), AddrErrorKind::PortOutOfRange);
        assert_eq!(kind("a:99999999999999999999"), AddrErrorKind::PortOutOfRange);
        assert_eq!(kind("a:+80"), AddrErrorKind::InvalidPort);
        assert_eq!(kind("a:-80"), AddrErrorKind::InvalidPort);
        assert_eq!(kind("a:http"), AddrErrorKind::InvalidPort);
        assert_eq!(kind("a:080"), AddrErrorKind::InvalidPort);
        assert_eq!(kind("a:8o"), AddrErrorKind::InvalidPort);
    }

    #[test]
    fn rejects_missing_host() {
        assert_eq!(kind(":8080"), AddrErrorKind::MissingHost);
    }

    #[test]
    fn rejects_bare_ipv6() {
        assert_eq!(kind("::1"), AddrErrorKind::BareIpv6);
        assert_eq!(kind("::1:8080"), AddrErrorKind::BareIpv6);
        assert_eq!(kind("2001:db8::1:80"), AddrErrorKind::BareIpv6);
        assert_eq!(kind("fe80::1%eth0:80"), AddrErrorKind::InvalidHost("it contains ':'"));
        assert_eq!(kind("a:b:80"), AddrErrorKind::InvalidHost("it contains ':'"));
    }

    #[test]
    fn rejects_malformed_ip_addresses() {
        assert_eq!(kind("[::g]:80"), AddrErrorKind::InvalidIpv6);
        assert_eq!(kind("[127.0.0.1]:80"), AddrErrorKind::InvalidIpv6);
        assert_eq!(kind("[fe80::1%eth0]:80"), AddrErrorKind::InvalidIpv6);
        assert_eq!(kind("[::1:80"), AddrErrorKind::InvalidIpv6);
        assert_eq!(kind("[::1]x:80"), AddrErrorKind::InvalidIpv6);
        assert_eq!(kind("256.1.1.1:80"), AddrErrorKind::InvalidIpv4);
        assert_eq!(kind("1.2.3:80"), AddrErrorKind::InvalidIpv4);
        assert_eq!(kind("01.2.3.4:80"), AddrErrorKind::InvalidIpv4);
        assert_eq!(kind("1234:80"), AddrErrorKind::InvalidIpv4);
        // Integer and octal forms of 127.0.0.1 are numbers, not names.
        assert_eq!(kind("2130706433:80"), AddrErrorKind::InvalidIpv4);
        assert_eq!(kind("017700000001:80"), AddrErrorKind::InvalidIpv4);
        assert_eq!(kind("0177.0.0.1:80"), AddrErrorKind::InvalidIpv4);
    }

    #[test]
    fn rejects_names_breaking_rfc_1123() {
        for s in [
            "under_score:80",
            "-lead:80",
            "trail-:80",
            "a..b:80",
            ".a:80",
            "a.-b.c:80",
            "bücher.de:80",
            "a*b:80",
            "a%41:80",
            // Numbers a resolver reads as IPv4 (hex, octal, one integer) and other names whose
            // last label does not start with a letter.
            "0x7f.0.0.1:80",
            "0x7f000001:80",
            "0X7F000001:80",
            "127.0.0.0x1:80",
            "1x:80",
            "a.1b:80",
            "a.:80.",
        ] {
            assert!(
                matches!(NodeAddr::parse(s), Err(e) if matches!(e.kind(), AddrErrorKind::InvalidHost(_) | AddrErrorKind::InvalidPort)),
                "{s}"
            );
        }
        let label = "a".repeat(63);
        assert!(NodeAddr::parse(&format!("{label}:80")).is_ok());
        assert!(NodeAddr::parse(&format!("{label}a:80")).is_err());
        let name = [label.as_str(); 4].join(".");
        assert_eq!(name.len(), 255);
        assert!(NodeAddr::parse(&format!("{}:80", &name[..253])).is_ok());
        assert!(NodeAddr::parse(&format!("{}:80", &name[..254])).is_err());
    }

    #[test]
    fn error_quotes_a_bounded_prefix_of_long_input() {
        let long = format!("http://{}", "x".repeat(70_000));
        let msg = NodeAddr::parse(&long).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.contains("without a scheme"));
    }

    #[test]
    fn error_escapes_control_characters() {
        let msg = NodeAddr::parse("a\n:1").unwrap_err().to_string();
        assert_eq!(msg, r#"node address "a\n:1" contains a control character"#);
    }

    #[test]
    fn compares_text_exactly_and_looks_up_by_str() {
        let upper = NodeAddr::parse("FN:1").unwrap();
        let lower = NodeAddr::parse("fn:1").unwrap();
        assert_ne!(upper, lower);
        assert!(upper < lower);
        let mut map = HashMap::new();
        map.insert(lower.clone(), 1);
        assert_eq!(map.get("fn:1"), Some(&1));
        assert_eq!(map.get("FN:1"), None);
        assert_eq!(lower, "fn:1");
    }

    #[test]
    fn serializes_as_string_and_deserializing_validates() {
        let a = NodeAddr::parse("a:1").unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), r#""a:1""#);
        let back: NodeAddr = serde_json::from_str(r#""a:1""#).unwrap();
        assert_eq!(back, a);
        let err = serde_json::from_str::<NodeAddr>(r#""http://a:1""#).unwrap_err();
        assert!(err.to_string().contains("without a scheme"), "{err}");
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?"
            .prop_filter("not all digits", |l| !l.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The last label of a name starts with a letter.
    fn last_label() -> impl Strategy<Value = String> {
        "[a-zA-Z]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?"
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            (proptest::collection::vec(label(), 0..4), last_label()).prop_map(|(mut ls, last)| {
                ls.push(last);
                ls.join(".")
            }),
            any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
            any::<[u16; 8]>().prop_map(|s| format!("[{}]", Ipv6Addr::from(s))),
        ]
    }

    #[test]
    fn own_listeners_are_recognised() {
        let on = |a: &str, ls: &[&str]| {
            let ls: Vec<std::net::SocketAddr> = ls.iter().map(|l| l.parse().unwrap()).collect();
            NodeAddr::parse(a).unwrap().is_one_of(&ls)
        };
        assert!(on("127.0.0.1:8081", &["127.0.0.1:8081"]));
        assert!(on("localhost:8081", &["127.0.0.1:8081"]));
        assert!(on("LOCALHOST.:8081", &["0.0.0.0:8081"]));
        assert!(on("127.0.0.1:8081", &["0.0.0.0:8081"]));
        assert!(on("127.0.0.2:8081", &["0.0.0.0:8081"]));
        assert!(on("0.0.0.0:8081", &["0.0.0.0:8081"]));
        assert!(on("[::1]:8081", &["[::]:8081"]));
        assert!(on("[::1]:8081", &["[::1]:8081"]));
        assert!(on("127.0.0.1:9000", &["127.0.0.1:8081", "127.0.0.1:9000"]));
        // Another port, another address, or a name that is not localhost: not ours.
        assert!(!on("127.0.0.1:8082", &["127.0.0.1:8081"]));
        assert!(!on("127.0.0.2:8081", &["127.0.0.1:8081"]));
        assert!(!on("10.255.255.254:8081", &["0.0.0.0:8081"]) || is_local("10.255.255.254".parse().unwrap()));
        assert!(!on("fn1:8081", &["0.0.0.0:8081"]));
        assert!(!on("localhost:8081", &["10.0.0.1:8081"]));
        assert!(!on("127.0.0.1:8081", &[]));
    }

    proptest! {
        #[test]
        fn valid_addresses_round_trip(host in host(), port in 1u16..=65535) {
            let text = format!("{host}:{port}");
            let a = NodeAddr::parse(&text).unwrap();
            prop_assert_eq!(a.as_str(), text.as_str());
            prop_assert_eq!(a.host(), host.as_str());
            prop_assert_eq!(a.port(), port);
            let authority = a.authority();
            prop_assert_eq!(authority.as_str(), text.as_str());
            prop_assert_eq!(a.to_string().parse::<NodeAddr>().unwrap(), a);
        }

        #[test]
        fn never_panics_on_arbitrary_strings(s in "\\PC{0,40}") {
            let _ = NodeAddr::parse(&s);
        }

        #[test]
        fn never_panics_on_address_like_strings(s in "[a-z0-9.:\\[\\]_%@/-]{0,30}") {
            if let Ok(a) = NodeAddr::parse(&s) {
                prop_assert_eq!(a.as_str(), s.as_str());
            }
        }
    }
}
