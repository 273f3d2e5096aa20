//! Properties of the fast path's parsers that must hold on any input: the fuzz targets
//! (`fuzz/fuzz_targets/h1_head.rs`, `chunked.rs`) and the bounded smoke test below check them,
//! the first with libFuzzer's coverage guidance, the second in every `cargo test`. Each
//! function panics on a violation and returns quietly otherwise.
use std::mem::MaybeUninit;

use super::framing::Chunked;
use super::head::{self, Request, Response, MAX_HEADERS};
use crate::proxy::rules::{self, Kind};

/// Lines of a head: each must end in CRLF, with no other CR or LF in it.
fn assert_crlf_lines(head: &[u8], what: &str) {
    let mut i = 0;
    while i < head.len() {
        match head[i] {
            b'\r' => {
                assert_eq!(
                    head.get(i + 1),
                    Some(&b'\n'),
                    "{what}: bare CR at {i} in {:?}",
                    String::from_utf8_lossy(head)
                );
                i += 2;
            }
            b'\n' => panic!("{what}: bare LF at {i} in {:?}", String::from_utf8_lossy(head)),
            _ => i += 1,
        }
    }
}

/// A request head from a client: the fast path either hands it to hyper, waits for more, or
/// writes the node's copy, which is then a well-formed head (CRLF lines, one request line with
/// no empty line before it, one `Via`, one `X-Forwarded-For`, no hop-by-hop field, nothing the
/// hyper path would refuse in the original).
pub fn request_head(data: &[u8]) {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let Request::Ready(h) = head::parse_request(data, &mut headers, &head::KnownHost::default()) else { return };
    assert!(h.len <= data.len());
    let mut out = Vec::new();
    let has_host = h.write_upstream(&mut out, b"127.0.0.1", false);
    head::upstream_host(&mut out, has_host, "10.0.0.1:8080");
    out.extend_from_slice(b"\r\n");
    assert_crlf_lines(&out, "node's request head");
    assert!(!out.starts_with(b"\r\n"), "an empty line before the request line reached the node");
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS + 4];
    let mut req = httparse::Request::new(&mut parsed);
    let n = match req.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("the node's head does not parse ({other:?}): {:?}", String::from_utf8_lossy(&out)),
    };
    assert_eq!(n, out.len());
    let (mut via, mut xff, mut hosts) = (0, 0, 0);
    for f in req.headers.iter() {
        let k = rules::kind(f.name.as_bytes());
        assert!(
            k == Kind::Te && f.value == b"trailers" || k == Kind::TransferEncoding || !rules::request_drops(k),
            "{} reached the node: {:?}",
            f.name,
            String::from_utf8_lossy(&out)
        );
        match k {
            Kind::Via if f.value == rules::via().as_bytes() => via += 1,
            Kind::Via => assert!(!rules::via_is_ours(f.value), "a looping call was forwarded"),
            Kind::ForwardedFor => xff += 1,
            Kind::Host => {
                hosts += 1;
                assert!(
                    rules::valid_host(f.value),
                    "an invalid Host was forwarded: {:?}",
                    String::from_utf8_lossy(f.value)
                );
            }
            _ => {}
        }
    }
    assert_eq!((via, xff, hosts), (1, 1, 1), "{:?}", String::from_utf8_lossy(&out));
    assert_ne!(req.method, Some("CONNECT"));
}

/// A response head from a node: either refused (502), interim, incomplete, or the client's copy
/// is a well-formed head with a status of 100-599 (not 101), no hop-by-hop field, no wait
/// report, and not both framing headers.
pub fn response_head(data: &[u8]) {
    for (head_request, close) in [(false, false), (true, true)] {
        let mut out = Vec::new();
        let Response::Ready(r) = head::parse_response(data, head_request, close, &mut out) else { continue };
        assert!(r.len <= data.len());
        assert!(rules::check_status(r.status).is_ok(), "status {} passed", r.status);
        assert_crlf_lines(&out, "client's response head");
        let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS + 4];
        let mut resp = httparse::Response::new(&mut parsed);
        match resp.parse(&out) {
            Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
            other => panic!("the client's head does not parse ({other:?}): {:?}", String::from_utf8_lossy(&out)),
        }
        assert_eq!(resp.code, Some(r.status));
        let (mut cl, mut te) = (false, false);
        for f in resp.headers.iter() {
            let k = rules::kind(f.name.as_bytes());
            cl |= k == Kind::ContentLength;
            te |= k == Kind::TransferEncoding;
            // The framing and `Connection: close` are the balancer's own.
            let ours = k == Kind::TransferEncoding || k == Kind::Connection && f.value == b"close";
            assert!(ours || !rules::response_drops(k), "{} reached the client", f.name);
        }
        assert!(!(cl && te), "both framing headers: {:?}", String::from_utf8_lossy(&out));
    }
}

/// A chunked body: scanning it whole or cut at `cut` finds the same end and sends on the same
/// bytes; what it sends on is itself a complete chunked body that scans to itself (so the
/// recipient sees one body, ending where ours did), with a trailer section of CRLF lines and no
/// field the rules refuse in trailers.
pub fn chunked(data: &[u8], cut: usize) {
    let whole = forward(data, &[data.len()]);
    let cut = cut % (data.len() + 1);
    let split = forward(data, &[cut, data.len()]);
    assert_eq!(whole, split, "cut at {cut} changed the outcome");
    let Some((out, used)) = whole else { return };
    assert!(used <= data.len());
    let again = forward(&out, &[out.len()]);
    assert_eq!(again.as_ref().map(|(o, u)| (o.as_slice(), *u)), Some((out.as_slice(), out.len())), "not stable");
    // The trailer section: from the last-chunk line ("0" + ext + CRLF) to the end.
    let last = out.len() - 2;
    let start = out[..last].windows(2).rposition(|w| w == b"\n0").map_or(0, |p| p + 1);
    let section = &out[start..];
    let section = &section[section.iter().position(|b| *b == b'\n').map_or(0, |p| p + 1)..];
    assert_crlf_lines(section, "trailer section");
    for line in section.split(|b| *b == b'\n').filter(|l| l.len() > 1) {
        let name = &line[..line.iter().position(|b| *b == b':').unwrap_or(0)];
        assert!(rules::trailer_passes(rules::kind(name)), "trailer {:?} passed", String::from_utf8_lossy(name));
    }
}

/// Feeds `data` to a scanner in pieces ending at `ends`; the bytes sent on and the bytes used,
/// or `None` when the body is invalid or incomplete.
fn forward(data: &[u8], ends: &[usize]) -> Option<(Vec<u8>, usize)> {
    let mut c = Chunked::default();
    let (mut out, mut at) = (Vec::new(), 0);
    for &end in ends {
        let piece = &data[at..end];
        let s = c.scan(piece).ok()?;
        assert!(s.pass <= s.used && s.used <= piece.len());
        out.extend_from_slice(&piece[..s.pass]);
        if s.done {
            out.extend_from_slice(c.tail());
            return Some((out, at + s.used));
        }
        assert_eq!(s.used, piece.len(), "an unfinished body left bytes unread");
        at = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    /// Inputs the mutations start from (the fuzz targets' seeds too).
    const HEADS: &[&[u8]] = &[
        b"GET /r/app/f HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\r\nPOST /r/f?x=1 HTTP/1.1\r\nHost: fn.example:8080\r\nContent-Length: 5\r\nConnection: close\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\nVia: 1.0 edge\r\n\r\nhello",
        b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nKeep-Alive: 5\r\nProxy-Authorization: x\r\nb3: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nXXX-FXLB-WAIT: 1ms\r\nConnection: keep-alive, x-a\r\nX-A: 1\r\n\r\nok",
        b"HTTP/1.0 204 No Content\nTransfer-Encoding: gzip, chunked\n\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n",
    ];
    const BODIES: &[&[u8]] = &[
        b"5\r\nhello\r\n0\r\n\r\n",
        b"3;ext=1\r\nabc\r\nA \r\n0123456789\r\n0\r\nX-Sum: 1\r\nXXX-FXLB-WAIT: 1ms\n\r\nNEXT",
        b"0\r\nX-T: y\n\n",
        b"0\r\nX-T: y\r\rGET /smuggled HTTP/1.1\r\n\r\n",
    ];
    /// Bytes the mutations insert: the ones the parsers decide on.
    const SPECIAL: &[u8] = b"\r\n\t :;,0aFxX@/[]\x00\x7f\xff";

    fn mutate(rng: &mut rand::rngs::StdRng, seed: &[u8]) -> Vec<u8> {
        let mut d = seed.to_vec();
        for _ in 0..rng.gen_range(1..6) {
            let at = rng.gen_range(0..=d.len());
            match rng.gen_range(0..4) {
                0 if at < d.len() => {
                    d.remove(at);
                }
                1 if at < d.len() => d[at] = SPECIAL[rng.gen_range(0..SPECIAL.len())],
                2 => d.insert(at, SPECIAL[rng.gen_range(0..SPECIAL.len())]),
                _ => {
                    // Splice a piece of another seed in.
                    let other = HEADS[rng.gen_range(0..HEADS.len())];
                    let from = rng.gen_range(0..other.len());
                    let to = (from + rng.gen_range(1..24)).min(other.len());
                    d.splice(at..at, other[from..to].iter().copied());
                }
            }
        }
        d
    }

    /// The fuzz targets' properties over a bounded number of seeded random mutations: a smoke
    /// run in every `cargo test` (the fuzz targets explore further, guided by coverage).
    #[test]
    fn fuzz_smoke_heads_and_chunked_bodies() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x05ee_df1b);
        for seed in HEADS {
            super::request_head(seed);
            super::response_head(seed);
        }
        for _ in 0..10_000 {
            let seed = HEADS[rng.gen_range(0..HEADS.len())];
            let d = mutate(&mut rng, seed);
            super::request_head(&d);
            super::response_head(&d);
        }
        for body in BODIES {
            for cut in 0..=body.len() {
                super::chunked(body, cut);
            }
        }
        for _ in 0..10_000 {
            let seed = BODIES[rng.gen_range(0..BODIES.len())];
            let d = mutate(&mut rng, seed);
            super::chunked(&d, rng.gen());
        }
    }
}
