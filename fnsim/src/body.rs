//! Response bodies: a small text, or `--body-size` bytes streamed from one static buffer so large
//! responses cost no allocation per request (proxy benchmarks send 1 MiB bodies at high rates).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Chunk size for synthetic bodies; also the size of the static buffer.
const CHUNK: usize = 64 * 1024;
static FILLER: [u8; CHUNK] = [b'x'; CHUNK];

/// A response body with an exact, known length.
#[derive(Debug)]
pub enum SimBody {
    /// One buffer (possibly empty), sent in a single frame.
    Full(Option<Bytes>),
    /// `remaining` filler bytes, sent in chunks of at most 64 KiB.
    Filler { remaining: u64 },
}

impl SimBody {
    pub fn empty() -> Self {
        SimBody::Full(None)
    }

    pub fn text(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        SimBody::Full((!b.is_empty()).then_some(b))
    }

    pub fn filler(len: u64) -> Self {
        SimBody::Filler { remaining: len }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this {
            SimBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Filler { remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = (*remaining).min(CHUNK as u64) as usize;
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILLER[..n])))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(b) => b.is_none(),
            SimBody::Filler { remaining } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            SimBody::Filler { remaining } => SizeHint::with_exact(*remaining),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn filler_body_has_the_exact_length() {
        let len = 3 * CHUNK as u64 + 17;
        let body = SimBody::filler(len);
        assert_eq!(body.size_hint().exact(), Some(len));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len() as u64, len);
        assert!(bytes.iter().all(|&b| b == b'x'));
    }

    #[tokio::test]
    async fn text_and_empty_bodies() {
        let b = SimBody::text("hi\n").collect().await.unwrap().to_bytes();
        assert_eq!(&b[..], b"hi\n");
        assert!(SimBody::empty().is_end_stream());
        assert!(SimBody::filler(0).is_end_stream());
    }
}
