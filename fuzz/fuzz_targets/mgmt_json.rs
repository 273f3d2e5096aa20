//! `PUT`/`DELETE /1/lb/nodes` bodies. Never panics; a body is accepted only when it is a JSON
//! object whose `node` string is exactly the address returned; refusals are bounded and one line.
#![no_main]
use fnlb::mgmt::parse_node;
use fnlb::node::NodeAddr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_node(data) {
        Ok(addr) => {
            let v: serde_json::Value = serde_json::from_slice(data).expect("accepted a body that is not JSON");
            assert_eq!(v["node"].as_str(), Some(addr.as_str()), "accepted {:?} from another field", addr.as_str());
            assert!(NodeAddr::parse(addr.as_str()).is_ok());
        }
        Err(msg) => {
            assert!(!msg.is_empty() && msg.len() < 1200, "unbounded error ({} bytes)", msg.len());
            assert!(!msg.contains('\n'), "multi-line error {msg:?}");
        }
    }
});
