//! Node addresses (`-nodes`, `PUT /1/lb/nodes`, the store, Kubernetes). Never panics; what is
//! accepted is kept byte for byte, has a port 1-65535, is a valid `http://<addr>/` authority, and
//! an IP host is a socket address; refusals are bounded sentences.
#![no_main]
use std::net::SocketAddr;

use fnlb::node::NodeAddr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    match NodeAddr::parse(s) {
        Ok(a) => {
            assert_eq!(a.as_str(), s);
            assert_ne!(a.port(), 0);
            assert!(s.ends_with(&format!(":{}", a.port())), "{s:?}: port {}", a.port());
            assert_eq!(&s[..a.host().len()], a.host());
            assert_eq!(s.len(), a.host().len() + 1 + a.port().to_string().len());
            assert!(!a.host().is_empty());
            assert_eq!(a.authority().as_str(), s);
            let uri: http::Uri =
                format!("http://{s}/version").parse().expect("accepted address is not a URI authority");
            assert_eq!(uri.port_u16(), Some(a.port()));
            let host = a.host();
            if host.starts_with('[') || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                s.parse::<SocketAddr>().expect("an IP host that is no socket address");
            }
            let again = NodeAddr::parse(a.as_str()).expect("accepted once, refused twice");
            assert_eq!(again.as_str(), s);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && msg.len() < 1200, "unbounded error ({} bytes)", msg.len());
            assert!(!msg.contains('\n'), "multi-line error {msg:?}");
        }
    }
});
