//! A client's request body under `-client-body-timeout`: each read must bring a byte within the
//! timeout of the previous one (nginx's `client_body_timeout`: the time between two reads, not
//! the whole upload). A body that stops arriving fails with [`ClientBodyTimeout`], which says it
//! is the client's fault: the call engine must not count it against the node it was going to.
//!
//! The clock runs only while someone waits for the body: a node that is slow to take the upload
//! (backpressure) does not make the client late. Over HTTP/2 every stream's body has its own
//! deadline, so one connection cannot park unfinished uploads on the nodes for as long as it
//! likes.
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// The error a [`TimedBody`] fails with when the client went quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientBodyTimeout(pub Duration);

impl fmt::Display for ClientBodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client body timeout: no byte of the request body for {}s", self.0.as_secs_f64())
    }
}

impl Error for ClientBodyTimeout {}

/// Whether `error`, or any error it wraps, is a [`ClientBodyTimeout`] (hyper wraps the body's
/// error when a send fails because of it).
pub fn is_client_body_timeout(error: &(dyn Error + 'static)) -> bool {
    let mut e = Some(error);
    while let Some(err) = e {
        if err.is::<ClientBodyTimeout>() || matches!(err.downcast_ref::<TimedError>(), Some(TimedError::Timeout(_))) {
            return true;
        }
        e = err.source();
    }
    false
}

/// The errors of a [`TimedBody`]: the client's stream failed, or went quiet.
#[derive(Debug)]
pub enum TimedError {
    Client(hyper::Error),
    Timeout(ClientBodyTimeout),
}

impl fmt::Display for TimedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimedError::Client(e) => e.fmt(f),
            TimedError::Timeout(t) => t.fmt(f),
        }
    }
}

/// Displays what it wraps, so its source is what that one's is (an error chain printed link by
/// link then says each thing once).
impl Error for TimedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            TimedError::Client(e) => e.source(),
            TimedError::Timeout(_) => None,
        }
    }
}

/// A request body with a per-read deadline.
pub struct TimedBody {
    inner: Incoming,
    timeout: Option<Duration>,
    /// Armed when a read finds nothing; re-armed after each frame. Boxed so the body stays
    /// `Unpin`, and allocated only for a body that ever has to wait.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer is counting (a frame arrived since it was last armed: it is not).
    armed: bool,
}

impl TimedBody {
    /// `timeout` None: no deadline (a body that is never waited for, or tests).
    pub fn new(inner: Incoming, timeout: Option<Duration>) -> TimedBody {
        TimedBody { inner, timeout, timer: None, armed: false }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = TimedError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, TimedError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                // Progress: the next wait starts its own deadline.
                this.armed = false;
                Poll::Ready(r.map(|r| r.map_err(TimedError::Client)))
            }
            Poll::Pending => {
                let Some(limit) = this.timeout else { return Poll::Pending };
                let deadline = Instant::now() + limit;
                let timer = match &mut this.timer {
                    Some(t) => {
                        if !this.armed {
                            t.as_mut().reset(deadline);
                        }
                        t
                    }
                    t @ None => t.insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                this.armed = true;
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(TimedError::Timeout(ClientBodyTimeout(limit))))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_timeout_is_found_and_others_are_not() {
        let t = ClientBodyTimeout(Duration::from_secs(2));
        assert!(t.to_string().starts_with("client body timeout"));
        let wrapped = TimedError::Timeout(t);
        assert!(is_client_body_timeout(&wrapped));
        assert_eq!(wrapped.to_string(), t.to_string());
        assert!(wrapped.source().is_none(), "said twice in a printed chain");
        // As hyper wraps a body's error: the error is the source of the send's.
        #[derive(Debug)]
        struct Send(TimedError);
        impl fmt::Display for Send {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("error from user's Body stream")
            }
        }
        impl Error for Send {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        assert!(is_client_body_timeout(&Send(wrapped)));
        assert!(!is_client_body_timeout(&std::io::Error::other("reset")));
    }
}
