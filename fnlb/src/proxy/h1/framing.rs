//! Message framing of HTTP/1.1 (RFC 9112 §6, §7.1), as pure functions over bytes: where a body
//! ends. Chunk data passes through unchanged; only its end has to be found. The trailer section
//! of a chunked body is the exception: it is a head of its own, so it is held back, checked and
//! written anew (lines ending in a bare LF get CRLF, a bare CR is an error, fields
//! [`crate::proxy::rules::trailer_passes`] refuses are dropped) before it goes on.

use crate::proxy::rules;

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (bodiless request; HEAD answer, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`: a [`Chunked`] scanner finds the end.
    Chunked,
    /// Until the sender closes the connection (responses only).
    Close,
}

/// A `Content-Length` value: ASCII digits only (no sign, no list, no spaces), at most 18 of them.
pub(crate) fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Where the scanner is in a chunked body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    #[default]
    Size,
    /// Spaces or tabs after the size.
    SizeWs,
    /// A chunk extension, up to CR.
    Ext,
    /// LF after a size line.
    SizeLf,
    /// Chunk data; `left` bytes to go.
    Data,
    /// CR after chunk data.
    DataCr,
    /// LF after chunk data.
    DataLf,
    /// The start of a trailer line, or of the final CRLF.
    TrailerStart,
    /// Inside a trailer field line, up to LF.
    TrailerLine,
    /// LF after a CR in a trailer field line.
    TrailerLf,
    /// LF of the final CRLF.
    EndLf,
    /// The body is complete.
    Done,
}

/// Finds the end of a chunked body (RFC 9112 §7.1) fed in pieces: chunk sizes and extensions
/// are checked for framing only and passed on as they are; trailer fields are held back and
/// rewritten ([`Chunked::tail`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct Chunked {
    state: State,
    /// Size digits read so far, or data bytes left in the current chunk.
    left: u64,
    digits: u8,
    /// Bytes of extensions and trailers so far: bounded, since nothing else bounds them.
    meta: usize,
    /// Whether the trailer section is being held back (it has a field, or ends in a bare LF).
    holding: bool,
    /// The trailer section as it will be sent, kept lines with CRLF; the line being read last.
    held: Vec<u8>,
    /// Where the line being read starts in `held`.
    line_at: usize,
}

/// What one [`Chunked::scan`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// Bytes of the input that belong to the body.
    pub used: usize,
    /// The first `pass` of them go on as they are; the rest are trailer bytes held back.
    pub pass: usize,
    /// The body ended: what follows `used` is not the body's, and [`Chunked::tail`] (if not
    /// empty) goes on after the passed bytes.
    pub done: bool,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked framing")]
pub(crate) struct ChunkError;

/// Bytes of chunk extensions plus trailer fields a body may carry.
const MAX_META: usize = 64 * 1024;

impl Chunked {
    #[cfg(test)]
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The rewritten trailer section with its final CRLF, once the body is done; empty when the
    /// body had no trailer section to rewrite (its bytes were passed on).
    pub(crate) fn tail(&self) -> &[u8] {
        if self.state == State::Done {
            &self.held
        } else {
            &[]
        }
    }

    /// Scans the next piece of the body. Says how many of `data`'s bytes belong to it, how many
    /// of those go on unchanged, and whether the body ended with them (the rest of `data` is
    /// whatever follows the body).
    pub(crate) fn scan(&mut self, data: &[u8]) -> Result<Scanned, ChunkError> {
        let was_holding = self.holding;
        let mut pass = None;
        let (used, done) = self.scan_bytes(data, &mut pass)?;
        let pass = if was_holding { 0 } else { pass.unwrap_or(used) };
        Ok(Scanned { used, pass, done })
    }

    /// The framing state machine; `pass` is set where holding back starts.
    fn scan_bytes(&mut self, data: &[u8], pass: &mut Option<usize>) -> Result<(usize, bool), ChunkError> {
        let mut i = 0;
        while i < data.len() {
            if self.state == State::Data {
                let take = (data.len() - i).min(usize::try_from(self.left).unwrap_or(usize::MAX));
                i += take;
                self.left -= take as u64;
                if self.left == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = match self.state {
                State::Size => match hex(b) {
                    Some(d) => {
                        if self.digits == 15 {
                            return Err(ChunkError);
                        }
                        self.digits += 1;
                        self.left = self.left * 16 + u64::from(d);
                        State::Size
                    }
                    None if self.digits == 0 => return Err(ChunkError),
                    None => self.after_size(b)?,
                },
                State::SizeWs => self.after_size(b)?,
                State::Ext => match b {
                    b'\r' => State::SizeLf,
                    b'\n' => return Err(ChunkError),
                    _ => {
                        self.meta += 1;
                        if self.meta > MAX_META {
                            return Err(ChunkError);
                        }
                        State::Ext
                    }
                },
                State::SizeLf => match b {
                    b'\n' if self.left == 0 => State::TrailerStart,
                    b'\n' => State::Data,
                    _ => return Err(ChunkError),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(ChunkError),
                },
                State::DataLf => match b {
                    b'\n' => {
                        self.digits = 0;
                        State::Size
                    }
                    _ => return Err(ChunkError),
                },
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' => {
                        // The final line with a bare LF: the section is rewritten with a CRLF.
                        self.hold(i - 1, pass);
                        self.held.extend_from_slice(b"\r\n");
                        self.state = State::Done;
                        return Ok((i, true));
                    }
                    // obs-fold (RFC 9112 §5.2) has no place in trailers.
                    b' ' | b'\t' => return Err(ChunkError),
                    _ => {
                        self.hold(i - 1, pass);
                        self.trailer_byte(b)?
                    }
                },
                State::TrailerLine => match b {
                    b'\r' => State::TrailerLf,
                    // A line ending in a bare LF: rewritten with CRLF.
                    b'\n' => self.end_trailer_line()?,
                    _ => self.trailer_byte(b)?,
                },
                State::TrailerLf => match b {
                    b'\n' => self.end_trailer_line()?,
                    // A bare CR: a recipient that splits lines at CR sees another message.
                    _ => return Err(ChunkError),
                },
                State::EndLf => match b {
                    b'\n' => {
                        if self.holding {
                            self.held.extend_from_slice(b"\r\n");
                        }
                        self.state = State::Done;
                        return Ok((i, true));
                    }
                    _ => return Err(ChunkError),
                },
                State::Data => unreachable!("handled above"),
                State::Done => return Ok((i - 1, true)),
            };
        }
        Ok((i, self.state == State::Done))
    }

    fn after_size(&mut self, b: u8) -> Result<State, ChunkError> {
        match b {
            b' ' | b'\t' => Ok(State::SizeWs),
            b';' => Ok(State::Ext),
            b'\r' => Ok(State::SizeLf),
            _ => Err(ChunkError),
        }
    }

    /// Starts holding the trailer section back at `at` (an index in this scan's input).
    fn hold(&mut self, at: usize, pass: &mut Option<usize>) {
        if !self.holding {
            self.holding = true;
            *pass = Some(at);
        }
    }

    fn trailer_byte(&mut self, b: u8) -> Result<State, ChunkError> {
        self.meta += 1;
        if self.meta > MAX_META {
            return Err(ChunkError);
        }
        self.held.push(b);
        Ok(State::TrailerLine)
    }

    /// A trailer field line is complete: kept (with CRLF) if it is a valid field the rules pass,
    /// dropped if valid and not passed, an error if not a field at all.
    fn end_trailer_line(&mut self) -> Result<State, ChunkError> {
        let line = &self.held[self.line_at..];
        let colon = line.iter().position(|b| *b == b':').ok_or(ChunkError)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if !rules::is_token(name) || !rules::is_field_value(value) {
            return Err(ChunkError);
        }
        if rules::trailer_passes(rules::kind(name)) {
            self.held.extend_from_slice(b"\r\n");
        } else {
            self.held.truncate(self.line_at);
        }
        self.line_at = self.held.len();
        Ok(State::TrailerStart)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Chunked {
        /// `scan` as (used, done), for tests about where a body ends.
        fn ends(&mut self, data: &[u8]) -> Result<(usize, bool), ChunkError> {
            self.scan(data).map(|s| (s.used, s.done))
        }
    }

    /// What goes on to the recipient when `body` is fed in pieces of `step` bytes; the bytes
    /// used.
    fn forwarded(body: &[u8], step: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut c = Chunked::default();
        let mut out = Vec::new();
        let mut at = 0;
        for piece in body.chunks(step.max(1)) {
            let s = c.scan(piece)?;
            out.extend_from_slice(&piece[..s.pass]);
            at += s.used;
            if s.done {
                out.extend_from_slice(c.tail());
                return Ok((out, at));
            }
        }
        Err(ChunkError)
    }

    /// Scans `body` split at every possible point; returns the length found.
    fn scan_split(body: &[u8]) -> Result<usize, ChunkError> {
        let mut found = None;
        for cut in 0..=body.len() {
            let mut c = Chunked::default();
            let (a, done) = c.ends(&body[..cut])?;
            let total = if done {
                a
            } else {
                assert_eq!(a, cut);
                let (b, done) = c.ends(&body[cut..])?;
                if !done {
                    return Err(ChunkError);
                }
                a + b
            };
            assert!(c.is_done());
            assert!(found.is_none_or(|f| f == total), "cut {cut}: {total} vs {found:?}");
            found = Some(total);
        }
        found.ok_or(ChunkError)
    }

    #[test]
    fn finds_the_end_of_chunked_bodies_split_anywhere() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\nA \r\n0123456789\r\n0\r\n\r\n";
        let mut with_tail = body.to_vec();
        with_tail.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(scan_split(&with_tail).unwrap(), body.len());
        let trailers = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\nNEXT";
        assert_eq!(scan_split(trailers).unwrap(), trailers.len() - 4);
        assert_eq!(scan_split(b"0\r\n\r\n").unwrap(), 5);
        assert_eq!(scan_split(b"000\r\n\r\n").unwrap(), 7);
    }

    #[test]
    fn bad_chunked_framing_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\rX",
            b"5\nhello\r\n",
            b"fffffffffffffffff\r\n",
            b"-1\r\n",
            b"0\r\nX-T: y\r\rGET /smuggled HTTP/1.1\r\n\r\n",
            b"0\r\n\rX",
            b"0\r\nX-T y\r\n",
            b"0\r\nX T: y\r\n",
            b"0\r\n: y\r\n",
            b"0\r\n folded\r\n",
            b"0\r\nX-T: a\x00b\r\n",
            b"5 x\r\n",
        ] {
            let mut c = Chunked::default();
            assert!(c.ends(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn trailers_are_checked_rewritten_and_filtered_split_anywhere() {
        for (body, want) in [
            // No trailers: passed as they are.
            (&b"5\r\nhello\r\n0\r\n\r\n"[..], &b"5\r\nhello\r\n0\r\n\r\n"[..]),
            (b"0\r\nX-T: y\r\n\r\n", b"0\r\nX-T: y\r\n\r\n"),
            // A bare LF ends a trailer line, or the section: rewritten as CRLF.
            (b"0\r\nX-T: y\n\r\n", b"0\r\nX-T: y\r\n\r\n"),
            (b"0\r\nX-T: y\n\n", b"0\r\nX-T: y\r\n\r\n"),
            (b"0\r\n\n", b"0\r\n\r\n"),
            // Framing, routing and the wait report never pass in a trailer.
            (
                b"2\r\nok\r\n0\r\nXXX-FXLB-WAIT: 1ms\r\nX-Sum: 1\r\nContent-Length: 9\r\nHost: h\r\n\r\n",
                b"2\r\nok\r\n0\r\nX-Sum: 1\r\n\r\n",
            ),
            (b"0\r\nxxx-fxlb-wait: 1ms\n\r\n", b"0\r\n\r\n"),
        ] {
            let mut tail = body.to_vec();
            tail.extend_from_slice(b"NEXT");
            for step in 1..=tail.len() {
                let (out, used) = forwarded(&tail, step).unwrap();
                assert_eq!(used, body.len(), "{:?} by {step}", String::from_utf8_lossy(body));
                assert_eq!(out, want, "{:?} by {step}", String::from_utf8_lossy(body));
            }
        }
    }

    #[test]
    fn a_bare_cr_in_trailers_is_an_error_split_anywhere() {
        let body = b"0\r\nX-T: y\r\rGET /smuggled HTTP/1.1\r\n\r\n";
        for step in 1..=body.len() {
            assert_eq!(forwarded(body, step), Err(ChunkError), "by {step}");
        }
    }

    #[test]
    fn incomplete_bodies_are_not_done() {
        let mut c = Chunked::default();
        assert_eq!(c.ends(b"5\r\nhel").unwrap(), (6, false));
        assert_eq!(c.ends(b"lo\r\n0\r\n").unwrap(), (7, false));
        assert_eq!(c.ends(b"\r").unwrap(), (1, false));
        assert_eq!(c.ends(b"\nrest").unwrap(), (1, true));
    }

    #[test]
    fn big_chunks_are_skipped_not_scanned() {
        let mut c = Chunked::default();
        assert_eq!(c.ends(b"100000\r\n").unwrap(), (8, false));
        let data = vec![0u8; 0x100000];
        assert_eq!(c.ends(&data).unwrap(), (0x100000, false));
        assert_eq!(c.ends(b"\r\n0\r\n\r\n").unwrap(), (7, true));
    }

    proptest::proptest! {
        /// Any well-formed chunked body, with extensions and trailers, fed in any three pieces,
        /// ends exactly where it was written to end.
        #[test]
        fn chunked_bodies_end_where_they_end(
            sizes in proptest::collection::vec(0usize..3000, 0..8),
            ext in proptest::bool::ANY,
            trailers in 0usize..3,
            cuts in proptest::collection::vec(0usize..40_000, 2),
        ) {
            let mut body = Vec::new();
            for (i, n) in sizes.iter().filter(|n| **n > 0).enumerate() {
                body.extend_from_slice(format!("{n:X}").as_bytes());
                if ext {
                    body.extend_from_slice(format!(" ;x={i}").as_bytes());
                }
                body.extend_from_slice(b"\r\n");
                body.extend(std::iter::repeat_n(b'0' + (i % 10) as u8, *n));
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n");
            for t in 0..trailers {
                body.extend_from_slice(format!("X-T{t}: v\r\n").as_bytes());
            }
            body.extend_from_slice(b"\r\n");
            let end = body.len();
            body.extend_from_slice(b"POST /next HTTP/1.1\r\n");
            let (mut a, mut b) = (cuts[0] % (body.len() + 1), cuts[1] % (body.len() + 1));
            if a > b {
                std::mem::swap(&mut a, &mut b);
            }
            let mut c = Chunked::default();
            let mut at = 0;
            for piece in [&body[..a], &body[a..b], &body[b..]] {
                let (used, done) = c.ends(piece).unwrap();
                at += used;
                if done {
                    break;
                }
                proptest::prop_assert_eq!(used, piece.len());
            }
            proptest::prop_assert!(c.is_done());
            proptest::prop_assert_eq!(at, end);
        }
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"1048576"), Some(1_048_576));
        for bad in [&b""[..], b"-1", b"+1", b"1 ", b" 1", b"1,1", b"0x10", b"9999999999999999999"] {
            assert_eq!(content_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
