//! Body types of the data path: the request body sent upstream (the client's stream, untouched)
//! and the response body sent back (the node's stream, or a short local answer). Streaming both
//! ways: nothing here buffers a whole body. Also the per-stream send deadline of HTTP/2
//! ([`SendDeadline`]): a response body reports each frame it yields, so that a stream whose
//! client keeps its window closed is reset after -send-timeout.
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
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

/// Why a node's answer body did not reach the client whole: the node's fault.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeBodyError {
    #[error("response body: {0}")]
    Node(hyper::Error),
    #[error("node sent nothing for {}s mid-body", .0.as_secs_f64())]
    Stalled(Duration),
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

/// Where the upload stands, for the send's deadlines: when it was read to its end, and, while
/// it is not, whether hyper has taken a piece and not come back for the next (it asks for more
/// only as the node reads: it not asking is the node not reading).
#[derive(Default)]
pub(crate) struct Ended {
    at: std::sync::OnceLock<tokio::time::Instant>,
    /// [`crate::clock::real_ms`] when the last piece was handed to hyper; 0 while hyper waits
    /// for the client.
    handed_ms: AtomicU64,
}

impl Ended {
    pub(crate) fn at(&self) -> Option<tokio::time::Instant> {
        self.at.get().copied()
    }

    /// How long hyper has held the last piece of the upload without asking for the next: the
    /// node not reading. `None` while hyper waits for the client (its deadline governs).
    pub(crate) fn unread_for(&self) -> Option<Duration> {
        match self.handed_ms.load(Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(crate::clock::real_ms().saturating_sub(t))),
        }
    }
}

impl ClientBody {
    pub(crate) fn new(inner: Incoming, limit: Duration) -> (ClientBody, Arc<Ended>) {
        let ended = Arc::new(Ended::default());
        if inner.is_end_stream() {
            let _ = ended.at.set(tokio::time::Instant::now());
        }
        (ClientBody { inner, limit, timer: None, waiting: false, ended: ended.clone() }, ended)
    }

    fn end(&self) {
        let _ = self.ended.at.set(tokio::time::Instant::now());
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
                    Some(Ok(_)) => this.ended.handed_ms.store(crate::clock::real_ms(), Relaxed),
                    _ => {}
                }
                Poll::Ready(r.map(|f| f.map_err(BodyError::Client)))
            }
            Poll::Pending => {
                this.ended.handed_ms.store(0, Relaxed);
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
/// A node that sends nothing of it for `limit` (-upstream-timeout) is cut off, as on the fast path.
pub(crate) struct UpstreamBody {
    inner: Incoming,
    conn: Option<Conn>,
    call: Option<Held>,
    limit: Option<Duration>,
    /// Armed while the body waits for the node; one timer per body, reset per wait.
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, conn: Conn, call: Held, limit: Option<Duration>) -> UpstreamBody {
        let mut b = UpstreamBody { inner, conn: Some(conn), call: Some(call), limit, timer: None, waiting: false };
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

    /// The body broke: the connection is mid-message and must not be reused, and the node is
    /// counted.
    fn broke(&mut self, kind: crate::metrics::UpstreamError) {
        if let Some(call) = &self.call {
            crate::metrics::of(call.node()).error(kind);
        }
        self.conn = None;
        self.call = None;
    }

    /// Whether the node has sent nothing for the limit, waiting for it on this body's timer.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(limit) = self.limit else { return false };
        let deadline = tokio::time::Instant::now() + limit;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.waiting {
            self.waiting = true;
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = NodeBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, NodeBodyError>>> {
        let this = &mut *self;
        let mut r = Pin::new(&mut this.inner).poll_frame(cx);
        if r.is_pending() {
            if this.call.is_some() && this.stalled(cx) {
                this.broke(crate::metrics::UpstreamError::Timeout);
                return Poll::Ready(Some(Err(NodeBodyError::Stalled(this.limit.unwrap_or_default()))));
            }
            return Poll::Pending;
        }
        this.waiting = false;
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
                // hyper reports bad chunked framing as an I/O error of its own making.
                let framing =
                    std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>()).is_some_and(|io| {
                        matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput)
                    });
                let kind = if e.is_parse() || framing {
                    crate::metrics::UpstreamError::InvalidResponse
                } else {
                    crate::metrics::UpstreamError::Send
                };
                this.broke(kind);
            }
            _ => {}
        }
        r.map(|o| o.map(|f| f.map_err(NodeBodyError::Node)))
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
    type Error = NodeBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, NodeBodyError>>> {
        let r = match self.get_mut() {
            RespBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            RespBody::Local(b) => Pin::new(b).poll_frame(cx).map(|o| o.map(|f| f.map_err(NodeBodyError::Node))),
        };
        // On an HTTP/2 stream (the only place the slot is set), the stream's deadline hears of it.
        let owed = matches!(&r, Poll::Ready(Some(Ok(f))) if f.is_data());
        let _ = FRAMES.try_with(|f| f.polled(owed));
        r
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

tokio::task_local! {
    /// The frames of the response body sent on this task's HTTP/2 stream (set by
    /// [`SendDeadline`]; absent elsewhere).
    static FRAMES: Arc<Frames>;
}

/// What a response body tells its stream's deadline: how often it was polled, and whether the
/// last poll yielded a data frame that hyper has not yet sent (it comes back for the next frame
/// only once the client's flow-control window took that one).
#[derive(Default)]
struct Frames {
    polls: AtomicU64,
    owed: AtomicBool,
}

impl Frames {
    fn polled(&self, owed: bool) {
        self.polls.fetch_add(1, Relaxed);
        self.owed.store(owed, Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// -send-timeout for one HTTP/2 stream: the task that serves it (hyper spawns one per stream),
    /// watched. hyper polls a response body for its next frame only once the last one could be
    /// sent, i.e. once the client's window had room: a frame yielded and not followed by another
    /// poll for -send-timeout is a client that does not read this stream. The watch then drops the
    /// stream's task: h2 resets the stream (RST_STREAM CANCEL), and the response body goes with it,
    /// its node connection closed (mid-message, not pooled), its in-flight mark released. The node
    /// is not blamed: the call was observed when its answer came (as on HTTP/1, where the same
    /// timeout closes the connection). A body waiting for its node is not the client's stall: no
    /// deadline runs then.
    pub struct SendDeadline<F> {
        #[pin]
        inner: F,
        frames: Arc<Frames>,
        limit: Duration,
        // The poll count when the current stall was first seen.
        seen: u64,
        // Armed while a stall lasts; one timer per stream, made at its first stall.
        timer: Option<Pin<Box<Sleep>>>,
        armed: bool,
    }
}

impl<F: Future> SendDeadline<F> {
    /// `inner` (a stream's task), under a send deadline of `limit`. Run it as
    /// [`SendDeadline::run`]: the body reports to it through the task.
    pub fn new(inner: F, limit: Duration) -> SendDeadline<F> {
        SendDeadline { inner, frames: Arc::default(), limit, seen: 0, timer: None, armed: false }
    }

    /// Runs the task to its end, or until its stream has stalled for the limit (`None`).
    pub async fn run(self) -> Option<F::Output> {
        FRAMES.scope(self.frames.clone(), self).await
    }
}

impl<F: Future> Future for SendDeadline<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(Some(out));
        }
        if !this.frames.owed.load(Relaxed) {
            // Nothing waits for the client (the body waits for its node, or has not begun).
            *this.armed = false;
            return Poll::Pending;
        }
        let polls = this.frames.polls.load(Relaxed);
        if polls != *this.seen {
            // A frame sent and another yielded since: this stall starts now.
            *this.seen = polls;
            *this.armed = false;
        }
        let deadline = tokio::time::Instant::now() + *this.limit;
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !*this.armed {
            *this.armed = true;
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
