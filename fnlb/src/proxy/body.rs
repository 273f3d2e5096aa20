//! Body types of the data path: the request body sent upstream (the client's stream, untouched)
//! and the response body sent back (the node's stream, or a short local answer). Streaming both
//! ways: nothing here buffers a whole body.
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::Sender;
use crate::node::InFlight;

pub enum ReqBody {
    Stream(Incoming),
    /// Used to resend a bodiless request whose first attempt failed.
    Empty,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Stream(b) => {
                let mut r = Pin::new(b).poll_frame(cx);
                // Hook: a client's trailers pass the same rules as on the fast path.
                if let Poll::Ready(Some(Ok(frame))) = &mut r {
                    if let Some(t) = frame.trailers_mut() {
                        super::headers::trailers(t);
                    }
                }
                r
            }
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Stream(b) => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Stream(b) => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A node's response body on its way to the client. When it has been read to the end, the
/// connection goes back to the node's pool; when it ends or is dropped, the call stops counting
/// as in flight. Dropped before its end (the client went away), the connection is mid-message
/// and is closed with it.
pub struct UpstreamBody {
    inner: Incoming,
    conn: Option<Sender>,
    call: Option<InFlight>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, conn: Sender, call: InFlight) -> UpstreamBody {
        let mut b = UpstreamBody { inner, conn: Some(conn), call: Some(call) };
        if b.inner.is_end_stream() {
            b.finish();
        }
        b
    }

    fn finish(&mut self) {
        if let Some(call) = self.call.take() {
            if let Some(conn) = self.conn.take() {
                call.node().pool.put_back(conn);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let mut r = Pin::new(&mut this.inner).poll_frame(cx);
        // Hook: a node's trailers pass the same rules as on the fast path (no wait report).
        if let Poll::Ready(Some(Ok(frame))) = &mut r {
            if let Some(t) = frame.trailers_mut() {
                super::headers::trailers(t);
            }
        }
        match &r {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(),
            Poll::Ready(Some(Err(e))) => {
                // The connection broke mid-body: it must not be reused, and the node is counted.
                if let Some(call) = &this.call {
                    // hyper reports bad chunked framing as an I/O error of its own making.
                    let framing = std::error::Error::source(e)
                        .and_then(|s| s.downcast_ref::<std::io::Error>())
                        .is_some_and(|io| {
                            matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput)
                        });
                    let kind = if e.is_parse() || framing {
                        crate::metrics::UpstreamError::InvalidResponse
                    } else {
                        crate::metrics::UpstreamError::Send
                    };
                    crate::metrics::get().node(&call.node().addr).error(kind);
                }
                this.conn = None;
                this.call = None;
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the client receives: a node's stream or a short answer made here.
pub enum RespBody {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl RespBody {
    pub fn full(b: impl Into<Bytes>) -> RespBody {
        RespBody::Full(Some(b.into()))
    }

    pub fn empty() -> RespBody {
        RespBody::Full(None)
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RespBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            RespBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Upstream(b) => b.is_end_stream(),
            RespBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Upstream(b) => b.size_hint(),
            RespBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RespBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
