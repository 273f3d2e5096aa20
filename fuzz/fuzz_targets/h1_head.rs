//! The fast path's raw head parser (`fnlb::proxy::h1::head`) on arbitrary bytes, as a client's
//! request head and as a node's response head. Never panics; what it forwards is a well-formed
//! head with CRLF lines, no empty line before the request line, exactly one Host (valid), one
//! X-Forwarded-For and our Via, nothing hop-by-hop, no status outside 100-599 or 101, no wait
//! report, never both framing headers. The properties live in `fnlb::proxy::h1::props`, which a
//! bounded smoke run also checks in `cargo test`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fnlb::proxy::h1::props::request_head(data);
    fnlb::proxy::h1::props::response_head(data);
});
