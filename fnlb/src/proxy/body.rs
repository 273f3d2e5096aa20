//! Body types of the data path: the request body sent upstream (the client's stream, untouched)
//! and the response body sent back (the node's stream, or a short local answer). Streaming both
//! ways: nothing here buffers a whole body.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::call::Held;
use super::pool::{Conn, Pool};
use crate::answer::LocalBody;

/// A request body on its way to the node.
pub(crate) enum ReqBody {
    Stream(ClientBody),
    /// Used to resend a bodiless request whose first attempt failed.
    Empty,
}

/// Why a client's body did not reach its end: always the client's fault, never the node's. The
/// hyper client hands it back as the source of its error, where the call engine finds it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body did not arrive within the client body timeout")]
    Timeout,
    #[error("request body: {0}")]
    Client(hyper::Error),
}

impl BodyError {
    /// The client's body error in the source chain of an upstream error, if there is one.
    pub(crate) fn find<'e>(mut e: &'e (dyn std::error::Error + 'static)) -> Option<&'e BodyError> {
        loop {
            if let Some(b) = e.downcast_ref::<BodyError>() {
                return Some(b);
            }
            e = e.source()?;
        }
    }
}

/// The client's body, with a deadline between two reads (-client-body-timeout), and the moment
/// it was read to its end (when the node's time to answer starts).
pub(crate) struct ClientBody {
    inner: Incoming,
    limit: Duration,
    /// Armed while the body waits for the client; one timer per body, reset per wait.
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    ended: Arc<Ended>,
}

/// When a request body was read to its end, shared with the call waiting for the answer.
#[derive(Default)]
pub(crate) struct Ended(std::sync::OnceLock<tokio::time::Instant>);

impl Ended {
    pub(crate) fn at(&self) -> Option<tokio::time::Instant> {
        self.0.get().copied()
    }
}

impl ClientBody {
    pub(crate) fn new(inner: Incoming, limit: Duration) -> (ClientBody, Arc<Ended>) {
        let ended = Arc::new(Ended::default());
        if inner.is_end_stream() {
            let _ = ended.0.set(tokio::time::Instant::now());
        }
        (ClientBody { inner, limit, timer: None, waiting: false, ended: ended.clone() }, ended)
    }

    fn end(&self) {
        let _ = self.ended.0.set(tokio::time::Instant::now());
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.waiting = false;
                match &r {
                    None => this.end(),
                    Some(Ok(_)) if this.inner.is_end_stream() => this.end(),
                    _ => {}
                }
                Poll::Ready(r.map(|f| f.map_err(BodyError::Client)))
            }
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + this.limit;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.waiting {
                    this.waiting = true;
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Timeout))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
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
pub(crate) struct UpstreamBody {
    inner: Incoming,
    conn: Option<Conn>,
    call: Option<Held>,
}

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, conn: Conn, call: Held) -> UpstreamBody {
        let mut b = UpstreamBody { inner, conn: Some(conn), call: Some(call) };
        if b.inner.is_end_stream() {
            b.finish();
        }
        b
    }

    fn finish(&mut self) {
        if let Some(call) = self.call.take() {
            if let Some(conn) = self.conn.take() {
                Pool::of(call.node()).put_back(conn);
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
pub(crate) enum RespBody {
    Upstream(UpstreamBody),
    Local(LocalBody),
}

impl RespBody {
    pub(crate) fn empty() -> RespBody {
        RespBody::Local(LocalBody::empty())
    }
}

impl From<LocalBody> for RespBody {
    fn from(b: LocalBody) -> RespBody {
        RespBody::Local(b)
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RespBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            RespBody::Local(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Upstream(b) => b.is_end_stream(),
            RespBody::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Upstream(b) => b.size_hint(),
            RespBody::Local(b) => b.size_hint(),
        }
    }
}
