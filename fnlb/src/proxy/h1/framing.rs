//! Message framing of HTTP/1.1 (RFC 9112 §6, §7.1), as pure functions over bytes: where a body
//! ends. Bodies pass through unchanged; only their end has to be found.

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
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
pub fn content_length(v: &[u8]) -> Option<u64> {
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
    /// LF of the final CRLF.
    EndLf,
    /// The body is complete.
    Done,
}

/// Finds the end of a chunked body (RFC 9112 §7.1) fed in pieces, without changing it: chunk
/// sizes, extensions and trailers are checked for framing only and passed on as they are.
#[derive(Clone, Debug, Default)]
pub struct Chunked {
    state: State,
    /// Size digits read so far, or data bytes left in the current chunk.
    left: u64,
    digits: u8,
    /// Bytes of extensions and trailers so far: bounded, since nothing else bounds them.
    meta: usize,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked framing")]
pub struct ChunkError;

/// Bytes of chunk extensions plus trailer fields a body may carry.
const MAX_META: usize = 64 * 1024;

impl Chunked {
    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans the next piece of the body. Returns how many of `data`'s bytes belong to it, and
    /// whether the body ended with them (the rest of `data` is whatever follows the body).
    pub fn scan(&mut self, data: &[u8]) -> Result<(usize, bool), ChunkError> {
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
                    b'\n' => return Err(ChunkError),
                    _ => self.trailer_byte()?,
                },
                State::TrailerLine => match b {
                    b'\n' => State::TrailerStart,
                    _ => self.trailer_byte()?,
                },
                State::EndLf => match b {
                    b'\n' => {
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

    fn trailer_byte(&mut self) -> Result<State, ChunkError> {
        self.meta += 1;
        if self.meta > MAX_META {
            return Err(ChunkError);
        }
        Ok(State::TrailerLine)
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

    /// Scans `body` split at every possible point; returns the length found.
    fn scan_split(body: &[u8]) -> Result<usize, ChunkError> {
        let mut found = None;
        for cut in 0..=body.len() {
            let mut c = Chunked::default();
            let (a, done) = c.scan(&body[..cut])?;
            let total = if done {
                a
            } else {
                assert_eq!(a, cut);
                let (b, done) = c.scan(&body[cut..])?;
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
            b"0\r\n\n",
            b"5 x\r\n",
        ] {
            let mut c = Chunked::default();
            assert!(c.scan(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn incomplete_bodies_are_not_done() {
        let mut c = Chunked::default();
        assert_eq!(c.scan(b"5\r\nhel").unwrap(), (6, false));
        assert_eq!(c.scan(b"lo\r\n0\r\n").unwrap(), (7, false));
        assert_eq!(c.scan(b"\r").unwrap(), (1, false));
        assert_eq!(c.scan(b"\nrest").unwrap(), (1, true));
    }

    #[test]
    fn big_chunks_are_skipped_not_scanned() {
        let mut c = Chunked::default();
        assert_eq!(c.scan(b"100000\r\n").unwrap(), (8, false));
        let data = vec![0u8; 0x100000];
        assert_eq!(c.scan(&data).unwrap(), (0x100000, false));
        assert_eq!(c.scan(b"\r\n0\r\n\r\n").unwrap(), (7, true));
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
                let (used, done) = c.scan(piece).unwrap();
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
