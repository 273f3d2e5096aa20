//! The fast path's chunked framing scanner (`fnlb::proxy::h1::framing::Chunked`) on arbitrary
//! bytes, fed whole and cut in two at a point the first two input bytes choose. Never panics;
//! the cut does not change where the body ends or what is sent on; what is sent on is itself a
//! complete chunked body that scans to itself, its trailer section in CRLF lines without the
//! fields the rules refuse in trailers (the wait report, framing, Host, ...).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((cut, body)) = data.split_first_chunk::<2>() else { return };
    fnlb::proxy::h1::props::chunked(body, usize::from(u16::from_le_bytes(*cut)));
});
